//! The content hash of a role's inputs: an AMI is rebaked exactly when this changes.
//!
//! Definition (v1, documented in the README). Let `lp(x)` be the length of `x` as a
//! big-endian u64 followed by the bytes of `x`. A role's inputs are named digests:
//!
//! | label | value |
//! |---|---|
//! | `base-ami` | the resolved base AMI id, e.g. `ami-0abc...` |
//! | `bin:<name>` | hex SHA-256 of each shipped binary: `stack-agent`, plus the role.toml's `[image] binaries` |
//! | `files:common` | tree digest of `images/common/` (the Packer template included) |
//! | `files:role` | tree digest of `images/<role>/` |
//! | `packer-plugins` | hex SHA-256 of `images/plugins.pkr.hcl` (the pinned Amazon plugin that builds every image) |
//! | `versions` | hex SHA-256 of the JSON (sorted keys) of the role's entries in `images/versions.toml` |
//!
//! A tree digest is the hex SHA-256 of, for every file in the directory sorted by its path
//! relative to `images/` (`/`-separated, byte order): `f lp(path) lp(content)`, or for a
//! symbolic link `l lp(path) lp(target)`. Files git would ignore (`.gitignore` rules in the
//! tree) and `target/` directories are left out. The role hash is the hex SHA-256 of
//! `lp("obstack-input-hash/v1")` followed by `lp(label) lp(value)` for every input in label
//! order. The agent's source (`images/agent/`) counts through the `stack-agent` binary it
//! builds; `images/checks/` (tests) and other roles' directories never count.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::roles::Role;
use crate::versions::Manifest;

const DOMAIN: &str = "obstack-input-hash/v1";
/// The Packer plugin pin, relative to `images/`; outside `common/` because Packer 1.6.6
/// rejects it in the template directory.
const PLUGINS_FILE: &str = "plugins.pkr.hcl";

/// Everything a role's hash depends on besides the files under `images_dir`.
#[derive(Debug, Clone)]
pub struct HashInputs {
    /// The `images/` tree (see [`images_dir`]).
    pub images_dir: PathBuf,
    pub manifest: Manifest,
    /// Directory holding the release `demo-app` and `stack-agent` binaries.
    pub artifacts_dir: PathBuf,
    /// The resolved base AMI id.
    pub base_ami_id: String,
}

/// `images/` in the checkout, or `OBSTACK_IMAGES_DIR` when set (tests bake from a copy).
pub fn images_dir() -> PathBuf {
    crate::project::images_dir()
}

/// A role's inputs as named digests (label → value); their combination is the role hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputDigests {
    pub entries: BTreeMap<String, String>,
}

impl InputDigests {
    /// The role's input hash (hex SHA-256).
    pub fn hash(&self) -> String {
        let mut hasher = Sha256::new();
        length_prefixed(&mut hasher, DOMAIN.as_bytes());
        for (label, value) in &self.entries {
            length_prefixed(&mut hasher, label.as_bytes());
            length_prefixed(&mut hasher, value.as_bytes());
        }
        hex::encode(hasher.finalize())
    }

    /// A compact form for the `obstack:input-digests` AMI tag (at most 256 characters):
    /// `label=first-12-hex-digits` (the base AMI id in full), space-separated.
    pub fn to_tag(&self) -> String {
        self.entries
            .iter()
            .map(|(label, value)| {
                let short = if label == "base-ami" {
                    value.as_str()
                } else {
                    &value[..value.len().min(12)]
                };
                format!("{label}={short}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The labels whose value differs from a previous [`InputDigests::to_tag`] (added,
    /// removed or changed), with what changed in words.
    pub fn changed_since(&self, old_tag: &str) -> Vec<String> {
        let old: BTreeMap<&str, &str> = old_tag
            .split_whitespace()
            .filter_map(|pair| pair.split_once('='))
            .collect();
        let new = parse_tag_owned(&self.to_tag());
        let mut changes = Vec::new();
        for (label, value) in &new {
            match old.get(label.as_str()) {
                None => changes.push(format!("{} is new", describe(label))),
                Some(previous) if previous != value => {
                    if label == "base-ami" {
                        changes.push(format!("base AMI {previous} -> {value}"));
                    } else {
                        changes.push(format!("{} changed", describe(label)));
                    }
                }
                Some(_) => {}
            }
        }
        for label in old.keys() {
            if !new.contains_key(*label) {
                changes.push(format!("{} removed", describe(label)));
            }
        }
        changes
    }
}

fn parse_tag_owned(tag: &str) -> BTreeMap<String, String> {
    tag.split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Words for an input label, for the dry-run plan.
fn describe(label: &str) -> String {
    match label {
        "files:common" => "images/common/".to_string(),
        "files:role" => "the role's directory".to_string(),
        "versions" => "its images/versions.toml entries".to_string(),
        "packer-plugins" => "the Packer plugin pin (images/plugins.pkr.hcl)".to_string(),
        "base-ami" => "the base AMI".to_string(),
        other => match other.strip_prefix("bin:") {
            Some(binary) => format!("the {binary} binary"),
            None => other.to_string(),
        },
    }
}

/// The named digests of `role`'s inputs.
pub fn role_input_digests(role: &Role, inputs: &HashInputs) -> anyhow::Result<InputDigests> {
    let mut entries = BTreeMap::new();
    entries.insert("base-ami".to_string(), inputs.base_ami_id.clone());
    for binary in role.shipped_binaries() {
        let path = inputs.artifacts_dir.join(&binary);
        let bytes = std::fs::read(&path)
            .with_context(|| format!("cannot read the {binary} binary at {}", path.display()))?;
        entries.insert(format!("bin:{binary}"), hex::encode(Sha256::digest(&bytes)));
    }
    entries.insert(
        "files:common".to_string(),
        tree_digest(&inputs.images_dir, "common")?,
    );
    entries.insert(
        "files:role".to_string(),
        tree_digest(&inputs.images_dir, &role.name)?,
    );
    let plugins = inputs.images_dir.join(PLUGINS_FILE);
    let bytes = std::fs::read(&plugins).with_context(|| {
        format!(
            "cannot read {}: it pins the Packer plugin every image is built with",
            plugins.display()
        )
    })?;
    entries.insert(
        "packer-plugins".to_string(),
        hex::encode(Sha256::digest(&bytes)),
    );
    let versions: BTreeMap<&str, &crate::versions::Component> =
        inputs.manifest.for_role(&role.name).collect();
    let json =
        serde_json::to_vec(&versions).context("cannot serialise the role's versions entries")?;
    entries.insert("versions".to_string(), hex::encode(Sha256::digest(&json)));
    Ok(InputDigests { entries })
}

/// The input hash of `role` (hex SHA-256); see the module documentation.
pub fn role_input_hash(role: &Role, inputs: &HashInputs) -> anyhow::Result<String> {
    Ok(role_input_digests(role, inputs)?.hash())
}

fn length_prefixed(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

/// The tree digest of `images_dir/<dir>` (see the module documentation). A missing
/// directory is an error: every role has one, and so does `common`.
pub fn tree_digest(images_dir: &Path, dir: &str) -> anyhow::Result<String> {
    let root = images_dir.join(dir);
    anyhow::ensure!(
        root.is_dir(),
        "{} does not exist; every role needs images/<role>/ and images/common/",
        root.display()
    );
    let mut entries: Vec<(String, Vec<u8>, u8)> = Vec::new();
    let walker = ignore::WalkBuilder::new(&root)
        .hidden(false)
        .git_ignore(true)
        .require_git(false)
        // A developer's global excludes must not change the hash on their machine only.
        .git_global(false)
        .git_exclude(false)
        .ignore(false)
        .parents(true)
        .filter_entry(|entry| !matches!(entry.file_name().to_str(), Some("target" | ".git")))
        .build();
    for entry in walker {
        let entry = entry.with_context(|| format!("cannot walk {}", root.display()))?;
        let path = entry.path();
        let Some(kind) = entry.file_type() else {
            continue;
        };
        let relative = path
            .strip_prefix(images_dir)
            .with_context(|| format!("{} is outside {}", path.display(), images_dir.display()))?;
        let name = relative
            .components()
            .map(|c| c.as_os_str().to_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .with_context(|| format!("{} is not valid UTF-8; rename it", path.display()))?
            .join("/");
        if kind.is_symlink() {
            let target = std::fs::read_link(path)
                .with_context(|| format!("cannot read the link {}", path.display()))?;
            let target = target
                .to_str()
                .with_context(|| format!("the target of {} is not valid UTF-8", path.display()))?;
            entries.push((name, target.as_bytes().to_vec(), b'l'));
        } else if kind.is_file() {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            entries.push((name, bytes, b'f'));
        }
    }
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut hasher = Sha256::new();
    for (name, content, kind) in &entries {
        hasher.update([*kind]);
        length_prefixed(&mut hasher, name.as_bytes());
        length_prefixed(&mut hasher, content);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;
    use crate::roles::Registry;
    use crate::versions::Component;

    fn write(path: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    fn component(version: &str, role: &str) -> Component {
        Component {
            version: version.into(),
            roles: vec![role.into()],
            url: "https://example.invalid/{version}/{arch}.tar.gz".into(),
            checksums_url: "https://example.invalid/{version}/sums".into(),
            sha256: BTreeMap::from([("amd64".into(), "unverified".into())]),
            note: None,
        }
    }

    /// The real registry's role names: the fixture has the same roles.
    fn role_names() -> Vec<String> {
        Registry::load_default()
            .unwrap()
            .names()
            .iter()
            .map(|n| n.to_string())
            .collect()
    }

    /// A small images tree (each role shipping the real registry's binaries), manifest and
    /// artifacts, like the real ones in shape.
    fn fixture(dir: &Path) -> HashInputs {
        let real = Registry::load_default().unwrap();
        let images = dir.join("images");
        write(
            &images.join("common/provisioners/base.sh"),
            b"#!/bin/sh\necho base\n",
        );
        write(
            &images.join("plugins.pkr.hcl"),
            b"packer { required_plugins { amazon = { version = \"= 1.8.0\" } } }\n",
        );
        for role in real.roles() {
            let binaries: Vec<String> = role
                .image
                .binaries
                .iter()
                .map(|b| format!("\"{b}\""))
                .collect();
            let name = &role.name;
            write(
                &images.join(name).join("role.toml"),
                format!(
                    // Ends in a comment without a newline, so flipping its last byte keeps it TOML.
                    "role = \"{name}\"\n[image]\nbinaries = [{}]\n# fixture",
                    binaries.join(", ")
                )
                .as_bytes(),
            );
            write(&images.join(name).join("rootfs/etc/motd"), name.as_bytes());
        }
        write(&images.join("checks/src/lib.rs"), b"// tests\n");
        write(&images.join("agent/src/main.rs"), b"fn main() {}\n");
        let artifacts = dir.join("artifacts");
        write(&artifacts.join("demo-app"), b"demo-app bytes");
        write(&artifacts.join("stack-agent"), b"agent bytes");
        let manifest = Manifest {
            components: role_names()
                .iter()
                .map(|r| (format!("{r}-thing"), component("1.0.0", r)))
                .collect(),
        };
        HashInputs {
            images_dir: images,
            manifest,
            artifacts_dir: artifacts,
            base_ami_id: "ami-0base".into(),
        }
    }

    fn hashes(inputs: &HashInputs) -> BTreeMap<String, String> {
        let registry = Registry::load(&inputs.images_dir).unwrap();
        registry
            .roles()
            .iter()
            .map(|r| (r.name.clone(), role_input_hash(r, inputs).unwrap()))
            .collect()
    }

    fn digests_of(role: &str, inputs: &HashInputs) -> InputDigests {
        let registry = Registry::load(&inputs.images_dir).unwrap();
        role_input_digests(registry.role(role).unwrap(), inputs).unwrap()
    }

    /// The roles whose hash differs between two snapshots.
    fn changed(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
        role_names()
            .into_iter()
            .filter(|r| before[r] != after[r])
            .collect()
    }

    fn flip_last_byte(path: &Path) {
        let mut bytes = std::fs::read(path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn hashes_are_deterministic_distinct_and_independent_of_the_checkout_path() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let first = hashes(&fixture(a.path()));
        assert_eq!(first, hashes(&fixture(a.path())));
        assert_eq!(
            first,
            hashes(&fixture(b.path())),
            "the checkout's location must not count"
        );
        let distinct: std::collections::BTreeSet<_> = first.values().collect();
        assert_eq!(distinct.len(), role_names().len(), "{first:?}");
        assert!(first.values().all(|h| crate::versions::is_sha256_hex(h)));
    }

    #[test]
    fn one_byte_in_one_roles_file_changes_only_that_role() {
        let dir = tempfile::tempdir().unwrap();
        let inputs = fixture(dir.path());
        for role in role_names() {
            for file in ["role.toml", "rootfs/etc/motd"] {
                let before = hashes(&inputs);
                flip_last_byte(&inputs.images_dir.join(&role).join(file));
                assert_eq!(
                    changed(&before, &hashes(&inputs)),
                    vec![role.clone()],
                    "{role}/{file}"
                );
            }
        }
    }

    #[test]
    fn common_files_the_base_ami_and_the_agent_binary_change_every_role() {
        let dir = tempfile::tempdir().unwrap();
        let mut inputs = fixture(dir.path());
        let before = hashes(&inputs);
        flip_last_byte(&inputs.images_dir.join("common/provisioners/base.sh"));
        assert_eq!(changed(&before, &hashes(&inputs)), role_names());

        let before = hashes(&inputs);
        flip_last_byte(&inputs.images_dir.join("plugins.pkr.hcl"));
        assert_eq!(
            changed(&before, &hashes(&inputs)),
            role_names(),
            "a new Amazon plugin pin rebakes every role"
        );

        let before = hashes(&inputs);
        inputs.base_ami_id = "ami-0newer".into();
        assert_eq!(changed(&before, &hashes(&inputs)), role_names());

        let before = hashes(&inputs);
        flip_last_byte(&inputs.artifacts_dir.join("stack-agent"));
        assert_eq!(changed(&before, &hashes(&inputs)), role_names());

        let before = hashes(&inputs);
        flip_last_byte(&inputs.artifacts_dir.join("demo-app"));
        assert_eq!(changed(&before, &hashes(&inputs)), ["app"]);
    }

    #[test]
    fn a_versions_entry_changes_only_the_roles_that_ship_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut inputs = fixture(dir.path());
        let before = hashes(&inputs);
        inputs
            .manifest
            .components
            .get_mut("prometheus-thing")
            .unwrap()
            .version = "1.0.1".into();
        assert_eq!(changed(&before, &hashes(&inputs)), ["prometheus"]);

        let before = hashes(&inputs);
        inputs.manifest.components.insert(
            "shared".into(),
            Component {
                roles: vec!["loki".into(), "grafana".into()],
                ..component("2.0.0", "loki")
            },
        );
        assert_eq!(changed(&before, &hashes(&inputs)), ["loki", "grafana"]);
    }

    #[test]
    fn tests_agent_sources_ignored_and_target_files_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let inputs = fixture(dir.path());
        let before = hashes(&inputs);
        flip_last_byte(&inputs.images_dir.join("checks/src/lib.rs"));
        flip_last_byte(&inputs.images_dir.join("agent/src/main.rs"));
        write(
            &inputs.images_dir.join("app/target/debug/junk"),
            b"build output",
        );
        write(&inputs.images_dir.join("grafana/.gitignore"), b"*.swp\n");
        let after_gitignore = hashes(&inputs);
        assert_eq!(
            changed(&before, &after_gitignore),
            ["grafana"],
            "the .gitignore itself is an input"
        );
        write(
            &inputs.images_dir.join("grafana/dashboards.json.swp"),
            b"editor swap",
        );
        assert_eq!(after_gitignore, hashes(&inputs));
    }

    #[test]
    fn paths_count_so_a_rename_or_a_moved_boundary_changes_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let inputs = fixture(dir.path());
        let loki = inputs.images_dir.join("loki");
        let before = tree_digest(&inputs.images_dir, "loki").unwrap();
        std::fs::rename(loki.join("role.toml"), loki.join("role2.toml")).unwrap();
        let renamed = tree_digest(&inputs.images_dir, "loki").unwrap();
        assert_ne!(before, renamed);
        // "ab" + "c" versus "a" + "bc": the length prefixes keep them apart.
        write(&loki.join("x/ab"), b"c");
        let one = tree_digest(&inputs.images_dir, "loki").unwrap();
        std::fs::remove_file(loki.join("x/ab")).unwrap();
        write(&loki.join("x/a"), b"bc");
        assert_ne!(one, tree_digest(&inputs.images_dir, "loki").unwrap());
    }

    #[test]
    fn the_digest_tag_fits_an_aws_tag_and_names_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let mut inputs = fixture(dir.path());
        let old = digests_of("app", &inputs);
        assert!(old.to_tag().len() <= 256, "{}", old.to_tag());
        assert!(old.changed_since(&old.to_tag()).is_empty());
        inputs
            .manifest
            .components
            .get_mut("app-thing")
            .unwrap()
            .version = "9".into();
        let new = digests_of("app", &inputs);
        assert_eq!(
            new.changed_since(&old.to_tag()),
            ["its images/versions.toml entries changed"]
        );
        let registry = Registry::load(&inputs.images_dir).unwrap();
        assert!(registry
            .role("nope")
            .unwrap_err()
            .to_string()
            .contains("unknown role `nope`"));
    }
}
