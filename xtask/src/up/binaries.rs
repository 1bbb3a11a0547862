//! Finding an upstream component's binary, in order: the explicit path (flag or env var),
//! the PATH (e.g. Debian's `/usr/bin/prometheus`), then the release pinned in
//! `images/versions.toml` (the AMIs' pins), downloaded once into the cache and verified.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::download::{self, DownloadError, Release};
use crate::report::one_line;
use crate::versions::Manifest;

/// A binary that was found, and how (shown to the user).
#[derive(Debug, Clone)]
pub struct Found {
    pub path: PathBuf,
    pub origin: String,
}

/// How a user names a component's binary: its `up` flag (when it has one) and its
/// environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provide {
    pub flag: Option<String>,
    pub env_var: String,
}

impl Provide {
    /// What to do about a missing binary: `pass --loki PATH or set STACK_LOKI_BIN`.
    pub fn hint(&self) -> String {
        match &self.flag {
            Some(flag) => format!("pass {flag} PATH or set {}", self.env_var),
            None => format!("set {}", self.env_var),
        }
    }

    /// `--loki or STACK_LOKI_BIN`.
    fn given_by(&self) -> String {
        match &self.flag {
            Some(flag) => format!("{flag} or {}", self.env_var),
            None => self.env_var.clone(),
        }
    }

    /// Shown as where an explicit binary came from.
    fn origin(&self) -> String {
        self.flag.clone().unwrap_or_else(|| self.env_var.clone())
    }
}

/// An upstream component's binary to find.
#[derive(Debug, Clone)]
pub struct Upstream<'a> {
    /// The entry in `images/versions.toml`.
    pub component: &'a str,
    /// Names to look for on PATH, in order (distribution packages rename some).
    pub path_names: &'a [String],
    /// Names of the executable inside the release archive.
    pub archive_names: &'a [String],
    pub provide: Provide,
}

pub struct Resolver {
    pub offline: bool,
    pub cache_dir: PathBuf,
    /// `None` when the manifest cannot be read; downloads are then unavailable.
    pub manifest: Option<Manifest>,
}

impl Resolver {
    /// `Ok(Ok(found))`, or `Ok(Err(why))` when the component cannot be had (why, without
    /// the hint [`Provide::hint`] adds), or `Err` when something is wrong that must stop
    /// `up`: an explicit path that is not an executable, or a download failing its checksum.
    pub fn resolve(
        &self,
        upstream: &Upstream,
        explicit: Option<&Path>,
    ) -> anyhow::Result<Result<Found, String>> {
        if let Some(path) = explicit {
            if !is_executable(path) {
                anyhow::bail!(
                    "{} (given by {}) is not an executable file; fix the path or drop it to use \
                     the PATH or the pinned release",
                    path.display(),
                    upstream.provide.given_by()
                );
            }
            return Ok(Ok(Found {
                path: path.to_path_buf(),
                origin: upstream.provide.origin(),
            }));
        }
        if let Some(path) = upstream
            .path_names
            .iter()
            .find_map(|name| crate::cmd::find_tool(name))
        {
            return Ok(Ok(Found {
                path,
                origin: "PATH".into(),
            }));
        }
        if self.offline {
            return Ok(Err("not on PATH, no download with --offline".into()));
        }
        self.download(upstream)
    }

    fn download(&self, upstream: &Upstream) -> anyhow::Result<Result<Found, String>> {
        let name = upstream.component;
        let Some(manifest) = &self.manifest else {
            return Ok(Err(
                "not on PATH, and images/versions.toml could not be read".into(),
            ));
        };
        let Some(component) = manifest.components.get(name) else {
            return Ok(Err(format!(
                "not on PATH, and images/versions.toml pins no `{name}`"
            )));
        };
        let Some(arch) = release_arch() else {
            return Ok(Err(format!(
                "not on PATH, and no release is pinned for this CPU ({})",
                std::env::consts::ARCH
            )));
        };
        let sha256 = match component.verified_sha256(name, arch) {
            Ok(sum) => sum.to_string(),
            // The message carries the `cargo xtask pin` hint.
            Err(unverified) => {
                return Ok(Err(format!("not on PATH, and {}", one_line(&unverified))))
            }
        };
        let release = Release {
            id: format!("{name}-{}-{arch}", component.version),
            url: component.download_url(arch),
            sha256,
        };
        let dir = match download::install(&self.cache_dir, &release) {
            Ok(dir) => dir,
            Err(error @ DownloadError::ChecksumMismatch { .. }) => return Err(error.into()),
            Err(error) => return Ok(Err(format!("not on PATH, and {}", one_line(&error.into())))),
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

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn thing() -> Upstream<'static> {
        Upstream {
            component: "thing",
            path_names: vec!["obstack-test-no-such-binary".to_string()].leak(),
            archive_names: vec!["thing".to_string()].leak(),
            provide: Provide {
                flag: Some("--thing".into()),
                env_var: "STACK_THING_BIN".into(),
            },
        }
    }

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
        let found = resolver.resolve(&thing(), Some(sh)).unwrap().unwrap();
        assert_eq!(found.path, sh);
        assert_eq!(found.origin, "--thing");
        let error = resolver
            .resolve(&thing(), Some(Path::new("/nonexistent/thing")))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("/nonexistent/thing") && error.contains("--thing or STACK_THING_BIN"),
            "{error}"
        );
    }

    #[test]
    fn the_path_is_searched_by_every_name() {
        let (_cache, resolver) = resolver(true, None);
        let names = vec!["obstack-test-no-such-binary".to_string(), "sh".to_string()];
        let upstream = Upstream {
            path_names: &names,
            ..thing()
        };
        let found = resolver.resolve(&upstream, None).unwrap().unwrap();
        assert!(found.path.ends_with("sh"), "{}", found.path.display());
        assert_eq!(found.origin, "PATH");
    }

    #[test]
    fn offline_and_not_on_path_is_unavailable_and_the_hint_names_the_flag() {
        let (_cache, resolver) = resolver(true, Some(manifest(&"a".repeat(64))));
        let why = resolver.resolve(&thing(), None).unwrap().unwrap_err();
        assert_eq!(why, "not on PATH, no download with --offline");
        assert_eq!(
            thing().provide.hint(),
            "pass --thing PATH or set STACK_THING_BIN"
        );
        let no_flag = Provide {
            flag: None,
            env_var: "STACK_OTHER_BIN".into(),
        };
        assert_eq!(no_flag.hint(), "set STACK_OTHER_BIN");
    }

    #[test]
    fn an_unverified_pin_is_refused_with_the_pin_hint() {
        let (cache, resolver) = resolver(false, Some(manifest("unverified")));
        let why = resolver.resolve(&thing(), None).unwrap().unwrap_err();
        assert!(why.contains("cargo xtask pin thing@1.0"), "{why}");
        assert!(!why.contains('\n'), "{why}");
        assert!(std::fs::read_dir(cache.path()).unwrap().next().is_none());
    }

    #[test]
    fn a_failed_download_is_unavailable_not_fatal() {
        let (_cache, resolver) = resolver(false, Some(manifest(&"a".repeat(64))));
        let why = resolver.resolve(&thing(), None).unwrap().unwrap_err();
        assert!(why.contains("cannot download"), "{why}");
        assert!(!why.contains('\n'), "{why}");
    }

    #[test]
    fn a_missing_pin_is_unavailable() {
        let (_cache, resolver) = resolver(
            false,
            Some(Manifest {
                components: BTreeMap::new(),
            }),
        );
        let why = resolver.resolve(&thing(), None).unwrap().unwrap_err();
        assert!(why.contains("pins no `thing`"), "{why}");
    }
}
