//! Finding an upstream component's binary, in order: the explicit path (flag or env var),
//! the PATH (e.g. Debian's `/usr/bin/prometheus`), then the release pinned in
//! `images/versions.toml` (the AMIs' pins), downloaded once into the cache and verified.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::components::Upstream;
use super::download::{self, DownloadError, Release};
use crate::versions::Manifest;

/// A binary that was found, and how (shown to the user).
#[derive(Debug, Clone)]
pub struct Found {
    pub path: PathBuf,
    pub origin: String,
}

pub struct Resolver {
    pub offline: bool,
    pub cache_dir: PathBuf,
    /// `None` when the manifest cannot be read; downloads are then unavailable.
    pub manifest: Option<Manifest>,
}

impl Resolver {
    /// `Ok(Ok(found))`, or `Ok(Err(reason))` when the component cannot be had (the reason
    /// says how to provide it), or `Err` when something is wrong that must stop `up`:
    /// an explicit path that is not an executable, or a download failing its checksum.
    pub fn resolve(
        &self,
        upstream: &Upstream,
        explicit: Option<&Path>,
    ) -> anyhow::Result<Result<Found, String>> {
        if let Some(path) = explicit {
            if !is_executable(path) {
                anyhow::bail!(
                    "{} (given by {} or {}) is not an executable file; fix the path or drop it \
                     to use the PATH or the pinned release",
                    path.display(),
                    upstream.flag,
                    upstream.env_var
                );
            }
            return Ok(Ok(Found {
                path: path.to_path_buf(),
                origin: upstream.flag.to_string(),
            }));
        }
        if let Some(path) = upstream
            .path_names
            .iter()
            .find_map(|name| find_on_path(name))
        {
            return Ok(Ok(Found {
                path,
                origin: "PATH".into(),
            }));
        }
        let provide = format!(
            "provide it with `{} PATH` (or {}=PATH)",
            upstream.flag, upstream.env_var
        );
        if self.offline {
            return Ok(Err(format!(
                "not on PATH and --offline forbids downloading; {provide}"
            )));
        }
        match self.download(upstream) {
            Ok(Ok(found)) => Ok(Ok(found)),
            Ok(Err(reason)) => Ok(Err(format!("{reason}; {provide}"))),
            Err(error) => Err(error),
        }
    }

    fn download(&self, upstream: &Upstream) -> anyhow::Result<Result<Found, String>> {
        let name = upstream.manifest_name;
        let Some(manifest) = &self.manifest else {
            return Ok(Err(
                "not on PATH and the versions manifest could not be read".into(),
            ));
        };
        let Some(component) = manifest.components.get(name) else {
            return Ok(Err(format!(
                "not on PATH and images/versions.toml pins no `{name}`"
            )));
        };
        let Some(arch) = release_arch() else {
            return Ok(Err(format!(
                "not on PATH and no release is pinned for this CPU ({})",
                std::env::consts::ARCH
            )));
        };
        let sha256 = match component.verified_sha256(name, arch) {
            Ok(sum) => sum.to_string(),
            // The message carries the `cargo xtask pin` hint.
            Err(unverified) => return Ok(Err(format!("not on PATH and {unverified:#}"))),
        };
        let release = Release {
            id: format!("{name}-{}-{arch}", component.version),
            url: component.download_url(arch),
            sha256,
        };
        let dir = match download::install(&self.cache_dir, &release) {
            Ok(dir) => dir,
            Err(error @ DownloadError::ChecksumMismatch { .. }) => return Err(error.into()),
            Err(error) => return Ok(Err(format!("not on PATH and {error:#}"))),
        };
        let path = download::find_executable(&dir, upstream.archive_names)
            .with_context(|| format!("the pinned {name} release has an unexpected layout"))?;
        Ok(Ok(Found {
            path,
            origin: format!(
                "pinned {} (cache {})",
                component.version,
                self.cache_dir.display()
            ),
        }))
    }
}

/// Upstream's name for this machine's architecture.
fn release_arch() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Some("amd64"),
        "aarch64" => Some("arm64"),
        _ => None,
    }
}

/// The default download cache: `$XDG_CACHE_HOME/obstack`, `~/.cache/obstack`, or
/// `target/stack-cache` when neither is known.
pub fn default_cache_dir() -> PathBuf {
    let home_cache = || std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache"));
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
        .or_else(home_cache)
        .map(|cache| cache.join("obstack"))
        .unwrap_or_else(|| crate::project::target_dir().join("stack-cache"))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const THING: Upstream = Upstream {
        manifest_name: "thing",
        flag: "--thing",
        env_var: "STACK_THING_BIN",
        path_names: &["obstack-test-no-such-binary"],
        archive_names: &["thing"],
    };

    fn manifest(sha256: &str) -> Manifest {
        let component = crate::versions::Component {
            version: "1.0".into(),
            roles: vec!["app".into()],
            url: "http://127.0.0.1:9/{version}/{arch}.tar.gz".into(),
            checksums_url: "http://127.0.0.1:9/sums".into(),
            sha256: BTreeMap::from([
                ("amd64".into(), sha256.into()),
                ("arm64".into(), sha256.into()),
            ]),
            note: None,
        };
        Manifest {
            components: BTreeMap::from([("thing".into(), component)]),
        }
    }

    fn resolver(offline: bool, manifest: Option<Manifest>) -> (tempfile::TempDir, Resolver) {
        let cache = tempfile::tempdir().unwrap();
        let resolver = Resolver {
            offline,
            cache_dir: cache.path().to_path_buf(),
            manifest,
        };
        (cache, resolver)
    }

    #[test]
    fn an_explicit_path_wins_and_a_bad_one_is_an_error() {
        let (_cache, resolver) = resolver(true, None);
        let sh = Path::new("/bin/sh");
        let found = resolver.resolve(&THING, Some(sh)).unwrap().unwrap();
        assert_eq!(found.path, sh);
        assert_eq!(found.origin, "--thing");
        let error = resolver
            .resolve(&THING, Some(Path::new("/nonexistent/thing")))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("/nonexistent/thing") && error.contains("--thing"),
            "{error}"
        );
    }

    #[test]
    fn offline_and_not_on_path_is_unavailable_with_how_to_provide_it() {
        let (_cache, resolver) = resolver(true, Some(manifest(&"a".repeat(64))));
        let reason = resolver.resolve(&THING, None).unwrap().unwrap_err();
        assert!(reason.contains("--offline"), "{reason}");
        assert!(
            reason.contains("--thing PATH") && reason.contains("STACK_THING_BIN"),
            "{reason}"
        );
    }

    #[test]
    fn an_unverified_pin_is_refused_with_the_pin_hint() {
        let (cache, resolver) = resolver(false, Some(manifest("unverified")));
        let reason = resolver.resolve(&THING, None).unwrap().unwrap_err();
        assert!(reason.contains("cargo xtask pin thing@1.0"), "{reason}");
        assert!(std::fs::read_dir(cache.path()).unwrap().next().is_none());
    }

    #[test]
    fn a_failed_download_is_unavailable_not_fatal() {
        let (_cache, resolver) = resolver(false, Some(manifest(&"a".repeat(64))));
        let reason = resolver.resolve(&THING, None).unwrap().unwrap_err();
        assert!(reason.contains("cannot download"), "{reason}");
        assert!(reason.contains("--thing PATH"), "{reason}");
    }

    #[test]
    fn a_missing_pin_is_unavailable() {
        let (_cache, resolver) = resolver(
            false,
            Some(Manifest {
                components: BTreeMap::new(),
            }),
        );
        let reason = resolver.resolve(&THING, None).unwrap().unwrap_err();
        assert!(reason.contains("pins no `thing`"), "{reason}");
    }
}
