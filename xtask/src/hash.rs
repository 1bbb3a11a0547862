//! The content hash of a role's inputs: an AMI is rebaked exactly when this changes.
//!
//! Definition (v1, documented in the README). Let `lp(x)` be the length of `x` as a
//! big-endian u64 followed by the bytes of `x`. A role's inputs are named digests:
//!
//! | label | value |
//! |---|---|
//! | `base-ami` | the resolved base AMI id, e.g. `ami-0abc...` |
//! | `bin:<name>` | hex SHA-256 of each shipped binary: `stack-agent`, plus `demo-app` for `app` |
//! | `files:common` | tree digest of `images/common/` |
//! | `files:role` | tree digest of `images/<role>/` |
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

use crate::versions::Manifest;

const DOMAIN: &str = "obstack-input-hash/v1";

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
    std::env::var_os("OBSTACK_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(crate::project::images_dir)
}

/// The binaries an image of `role` ships, by file name in the artifacts directory.
pub fn shipped_binaries(role: &str) -> &'static [&'static str] {
    if role == "app" {
        &["demo-app", "stack-agent"]
    } else {
        &["stack-agent"]
    }
}

/// Fails with the list of valid roles when `role` is not one of them.
pub fn check_role(role: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        crate::project::ROLES.contains(&role),
        "unknown role `{role}`: expected one of {}",
        crate::project::ROLES.join(", ")
    );
    Ok(())
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
                let short = if label == "base-ami" { value.as_str() } else { &value[..value.len().min(12)] };
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
        "base-ami" => "the base AMI".to_string(),
        other => match other.strip_prefix("bin:") {
            Some(binary) => format!("the {binary} binary"),
            None => other.to_string(),
        },
    }
}

/// The named digests of `role`'s inputs.
pub fn role_input_digests(role: &str, inputs: &HashInputs) -> anyhow::Result<InputDigests> {
    check_role(role)?;
    let mut entries = BTreeMap::new();
    entries.insert("base-ami".to_string(), inputs.base_ami_id.clone());
    for binary in shipped_binaries(role) {
        let path = inputs.artifacts_dir.join(binary);
        let bytes = std::fs::read(&path)
            .with_context(|| format!("cannot read the {binary} binary at {}", path.display()))?;
        entries.insert(format!("bin:{binary}"), hex::encode(Sha256::digest(&bytes)));
    }
    entries.insert("files:common".to_string(), tree_digest(&inputs.images_dir, "common")?);
    entries.insert("files:role".to_string(), tree_digest(&inputs.images_dir, role)?);
    let versions: BTreeMap<&str, &crate::versions::Component> = inputs.manifest.for_role(role).collect();
    let json = serde_json::to_vec(&versions).context("cannot serialise the role's versions entries")?;
    entries.insert("versions".to_string(), hex::encode(Sha256::digest(&json)));
    Ok(InputDigests { entries })
}

/// The input hash of `role` (hex SHA-256); see the module documentation.
pub fn role_input_hash(role: &str, inputs: &HashInputs) -> anyhow::Result<String> {
    Ok(role_input_digests(role, inputs)?.hash())
}

/// The current input hash of every role in `roles`: builds the release binaries and resolves
/// the base AMI exactly as `cargo xtask bake` does (for `deploy`, to find this checkout's AMIs).
pub async fn current_role_hashes(
    client: &aws_sdk_ec2::Client,
    roles: &[&str],
) -> anyhow::Result<BTreeMap<String, String>> {
    for role in roles {
        check_role(role)?;
    }
    let images_dir = images_dir();
    let manifest = Manifest::load(&images_dir.join("versions.toml"))?;
    let artifacts_dir = tokio::task::spawn_blocking(crate::bake::artifacts::build_release)
        .await
        .context("the release build panicked")??;
    let base = crate::bake::base::BaseAmiFilter::from_env();
    let base_ami = crate::bake::base::resolve(client, &base).await?;
    let inputs = HashInputs { images_dir, manifest, artifacts_dir, base_ami_id: base_ami.id };
    roles
        .iter()
        .map(|role| Ok((role.to_string(), role_input_hash(role, &inputs)?)))
        .collect()
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
        let Some(kind) = entry.file_type() else { continue };
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
            let target = std::fs::read_link(path).with_context(|| format!("cannot read the link {}", path.display()))?;
            let target = target
                .to_str()
                .with_context(|| format!("the target of {} is not valid UTF-8", path.display()))?;
            entries.push((name, target.as_bytes().to_vec(), b'l'));
        } else if kind.is_file() {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
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
