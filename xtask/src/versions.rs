//! `images/versions.toml`: every upstream component the images ship, pinned by version
//! and SHA-256 per architecture. The bake verifies downloads against it; `xtask up`
//! uses the same pins; `xtask pin` rewrites it from upstream's published checksum files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The marker for a checksum nobody has verified against upstream's published file.
pub const UNVERIFIED: &str = "unverified";

/// In a component's `roles`: every role the registry has, so a new role needs no edit here.
pub const EVERY_ROLE: &str = "*";

/// CPU architectures, named as upstream release files name them.
pub const ARCHES: [&str; 2] = ["amd64", "arm64"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Components by name, e.g. `prometheus`.
    pub components: BTreeMap<String, Component>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    pub version: String,
    /// The image roles that ship this component; [`EVERY_ROLE`] for all of them.
    pub roles: Vec<String>,
    /// Download URL template; `{version}` and `{arch}` are substituted.
    pub url: String,
    /// URL template of upstream's published checksum file, read by `xtask pin`.
    pub checksums_url: String,
    /// Hex SHA-256 per architecture, or [`UNVERIFIED`].
    pub sha256: BTreeMap<String, String>,
    /// Why this component is pinned where it is (e.g. end of life), shown to users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Manifest {
    pub fn path() -> PathBuf {
        crate::project::images_dir().join("versions.toml")
    }

    pub fn load(path: &Path) -> anyhow::Result<Manifest> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the versions manifest {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("{} is not a valid versions manifest", path.display()))
    }

    /// The components a role ships, by name.
    pub fn for_role<'a>(&'a self, role: &'a str) -> impl Iterator<Item = (&'a str, &'a Component)> {
        self.components
            .iter()
            .filter(move |(_, c)| c.roles.iter().any(|r| r == role || r == EVERY_ROLE))
            .map(|(name, c)| (name.as_str(), c))
    }
}

impl Component {
    fn expand(template: &str, version: &str, arch: &str) -> String {
        template
            .replace("{version}", version)
            .replace("{arch}", arch)
    }

    pub fn download_url(&self, arch: &str) -> String {
        Self::expand(&self.url, &self.version, arch)
    }

    /// True when upstream publishes one checksum file per architecture (a bare hash each,
    /// like Grafana's `.sha256` files) rather than one file naming every archive.
    pub fn checksums_per_arch(&self) -> bool {
        self.checksums_url.contains("{arch}")
    }

    /// The checksum file that covers `arch`'s download.
    pub fn checksums_url_for(&self, arch: &str) -> String {
        Self::expand(&self.checksums_url, &self.version, arch)
    }

    /// The file name of `arch`'s download, as upstream's checksum files name it.
    pub fn download_file_name(&self, arch: &str) -> String {
        let url = self.download_url(arch);
        url.rsplit('/').next().unwrap_or(&url).to_string()
    }

    /// The verified checksum for `arch`, or an error telling the user to run `pin`.
    pub fn verified_sha256(&self, name: &str, arch: &str) -> anyhow::Result<&str> {
        match self.sha256.get(arch).map(String::as_str) {
            Some(sum) if sum != UNVERIFIED && is_sha256_hex(sum) => Ok(sum),
            _ => anyhow::bail!(
                "{name} {} has no verified SHA-256 for {arch} in images/versions.toml; \
                 run `cargo xtask pin {name}@{}` on a machine with internet access",
                self.version,
                self.version
            ),
        }
    }
}

/// True for 64 lowercase hex digits.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checked_in_manifest_parses_and_every_role_is_known() {
        let manifest = Manifest::load(&Manifest::path()).unwrap();
        let registry = crate::roles::Registry::load_default().unwrap();
        assert!(!manifest.components.is_empty());
        for (name, component) in &manifest.components {
            for role in &component.roles {
                assert!(
                    role == EVERY_ROLE || registry.contains(role),
                    "{name}: unknown role {role}"
                );
            }
            for arch in ARCHES {
                let sum = component
                    .sha256
                    .get(arch)
                    .unwrap_or_else(|| panic!("{name}: no sha256 entry for {arch}"));
                assert!(
                    sum == UNVERIFIED || is_sha256_hex(sum),
                    "{name}/{arch}: {sum:?} is neither a SHA-256 nor {UNVERIFIED:?}"
                );
            }
            assert!(
                component.download_url("amd64").starts_with("https://"),
                "{name}: download over https only"
            );
        }
    }

    #[test]
    fn unverified_checksums_are_refused_with_a_pin_hint() {
        let component = Component {
            version: "1.0.0".into(),
            roles: vec!["app".into()],
            url: "https://example.invalid/{version}/{arch}.tar.gz".into(),
            checksums_url: "https://example.invalid/{version}/sha256sums.txt".into(),
            sha256: BTreeMap::from([("amd64".into(), UNVERIFIED.into())]),
            note: None,
        };
        let error = component
            .verified_sha256("thing", "amd64")
            .unwrap_err()
            .to_string();
        assert!(error.contains("cargo xtask pin thing@1.0.0"), "{error}");
        assert!(component.verified_sha256("thing", "arm64").is_err());
        assert_eq!(
            component.download_url("arm64"),
            "https://example.invalid/1.0.0/arm64.tar.gz"
        );
    }
}
