//! The per-role Packer var file (images/README.md, "Packer templates"). It holds versions,
//! URLs, checksums, paths and hashes: nothing secret.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use super::base::BaseAmi;
use crate::roles::Role;
use crate::versions::Manifest;

/// Every variable the bake passes to a role's template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VarFile {
    pub role: String,
    /// Our own binaries the image ships, by file name in `artifacts_dir`.
    pub artifacts: Vec<String>,
    pub region: String,
    pub input_hash: String,
    pub git_revision: String,
    pub artifacts_dir: String,
    pub component_versions: BTreeMap<String, String>,
    pub component_urls: BTreeMap<String, String>,
    pub component_sha256: BTreeMap<String, String>,
    /// Each service user the image creates → its fixed uid, also its group's gid (the
    /// registry's `[users]`, the role's and images/common's).
    pub service_ids: BTreeMap<String, u32>,
    pub base_ami_name: String,
    pub base_ami_owners: Vec<String>,
    pub ami_name_prefix: String,
    pub ec2_endpoint: String,
    pub manifest_path: String,
}

/// The settings shared by every role's var file.
pub struct Common<'a> {
    pub region: &'a str,
    pub git_revision: &'a str,
    pub artifacts_dir: &'a Path,
    pub base: &'a BaseAmi,
    pub ec2_endpoint: &'a str,
    /// A real bake refuses unverified checksums; the smoke source downloads nothing.
    pub require_verified: bool,
}

impl VarFile {
    pub fn new(
        role: &Role,
        input_hash: &str,
        manifest: &Manifest,
        common: &Common,
        manifest_path: &Path,
    ) -> anyhow::Result<VarFile> {
        let mut versions = BTreeMap::new();
        let mut urls = BTreeMap::new();
        let mut sums = BTreeMap::new();
        for (name, component) in manifest.for_role(&role.name) {
            let sum = if common.require_verified {
                component.verified_sha256(name, "amd64")?.to_string()
            } else {
                component.sha256.get("amd64").cloned().unwrap_or_default()
            };
            versions.insert(name.to_string(), component.version.clone());
            urls.insert(name.to_string(), component.download_url("amd64"));
            sums.insert(name.to_string(), sum);
        }
        Ok(VarFile {
            role: role.name.clone(),
            artifacts: role.shipped_binaries(),
            region: common.region.to_string(),
            input_hash: input_hash.to_string(),
            git_revision: common.git_revision.to_string(),
            artifacts_dir: common.artifacts_dir.display().to_string(),
            component_versions: versions,
            component_urls: urls,
            component_sha256: sums,
            service_ids: role.image_users(),
            // The exact name, not the pattern: Packer starts from the very image we hashed.
            base_ami_name: common.base.name.clone(),
            base_ami_owners: vec![common.base.owner.clone()],
            ami_name_prefix: "obstack".to_string(),
            ec2_endpoint: common.ec2_endpoint.to_string(),
            manifest_path: manifest_path.display().to_string(),
        })
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_vec_pretty(self).context("cannot serialise a Packer var file")?;
        crate::atomic::write(path, json)
    }
}

/// The checkout's revision for the `obstack:git-revision` tag, `-dirty` when it has
/// uncommitted changes, `unknown` outside git.
pub fn git_revision() -> String {
    let root = crate::project::root();
    let git = |args: &[&str]| {
        crate::cmd::Cmd::new("git", args)
            .map(|e| e.dir(&root))
            .read_quietly()
    };
    let Ok(head) = git(&["rev-parse", "HEAD"]) else {
        return "unknown".to_string();
    };
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
        .map(|status| !status.trim().is_empty())
        .unwrap_or(false);
    if dirty {
        format!("{head}-dirty")
    } else {
        head
    }
}
