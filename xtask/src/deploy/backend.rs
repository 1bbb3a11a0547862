//! Shared Terraform state in S3, opt-in: `cargo xtask deploy --backend-config FILE`.
//!
//! A backend block cannot be conditional, and one in `terraform/` would make S3 mandatory
//! for a try-out. So `terraform/` declares none (local state), and the first deploy with
//! `--backend-config` writes `terraform/backend_override.tf` (git-ignored): an override
//! file that adds an empty `backend "s3" {}` (a partial configuration), which `terraform
//! init -backend-config=FILE` completes. Terraform keeps those settings in `.terraform/`,
//! so later deploys, `status` and `destroy` use the same state without the flag.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The override file, inside `terraform/`.
pub const OVERRIDE_FILE: &str = "backend_override.tf";

const OVERRIDE: &str = "\
# Written by `cargo xtask deploy --backend-config FILE`: the state lives in S3, with the
# settings of FILE (kept by Terraform in .terraform/). Delete this file and run
# `terraform -chdir=terraform init -migrate-state` to go back to local state.
terraform {
  backend \"s3\" {}
}
";

/// The settings a backend file must give: where the state lives, and S3's own locking
/// (`use_lockfile`), so two deploys can never write the state at once.
const REQUIRED: [&str; 2] = ["bucket", "key"];

/// Checks the `--backend-config` file before anything runs: it parses and names the
/// bucket and key, and turns S3 locking on.
pub fn check_config(file: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    let Some(file) = file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("--backend-config {}: cannot read it", file.display()))?;
    let body: hcl::Body = hcl::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "--backend-config {}: not a Terraform backend file ({}); write lines like bucket = \"my-state\"",
            file.display(),
            e.to_string().lines().next().unwrap_or("parse error")
        )
    })?;
    let value = |key: &str| {
        body.attributes()
            .find(|a| a.key() == key)
            .map(|a| a.expr().clone())
    };
    let missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|key| value(key).is_none())
        .collect();
    if !missing.is_empty() {
        bail!(
            "--backend-config {}: sets no {}; see terraform/README.md (shared state)",
            file.display(),
            missing.join(" and ")
        );
    }
    if value("use_lockfile") != Some(hcl::Expression::Bool(true)) {
        bail!(
            "--backend-config {}: add use_lockfile = true, so two deploys never write the state at once",
            file.display()
        );
    }
    Ok(Some(file.to_path_buf()))
}

/// Writes `terraform/backend_override.tf`, which switches `terraform/` to the S3 backend.
pub fn enable(terraform_dir: &Path) -> anyhow::Result<()> {
    let path = terraform_dir.join(OVERRIDE_FILE);
    if std::fs::read_to_string(&path).is_ok_and(|text| text == OVERRIDE) {
        return Ok(());
    }
    crate::atomic::write(&path, OVERRIDE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> anyhow::Result<Option<PathBuf>> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s3.tfbackend");
        std::fs::write(&file, text).unwrap();
        check_config(Some(&file))
    }

    #[test]
    fn a_complete_backend_file_passes() {
        let ok = "bucket = \"obstack-state\"\nkey = \"obstack/terraform.tfstate\"\nregion = \"eu-west-1\"\nuse_lockfile = true\n";
        assert!(check(ok).unwrap().is_some());
        assert!(check_config(None).unwrap().is_none());
    }

    #[test]
    fn a_backend_file_without_locking_or_a_bucket_is_refused() {
        let error = check("bucket = \"b\"\nkey = \"k\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("add use_lockfile = true"), "{error}");
        let error = check("bucket = \"b\"\nkey = \"k\"\nuse_lockfile = false\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("use_lockfile"), "{error}");
        let error = check("use_lockfile = true\n").unwrap_err().to_string();
        assert!(error.contains("sets no bucket and key"), "{error}");
        let error = check("bucket = \n").unwrap_err().to_string();
        assert!(error.contains("not a Terraform backend file"), "{error}");
        assert!(!error.contains('\n'), "{error}");
        let error = check_config(Some(Path::new("/nonexistent/s3.tfbackend")))
            .unwrap_err()
            .to_string();
        assert!(error.contains("cannot read it"), "{error}");
    }

    #[test]
    fn the_override_adds_an_empty_s3_backend() {
        let dir = tempfile::tempdir().unwrap();
        enable(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(OVERRIDE_FILE)).unwrap();
        let body: hcl::Body = hcl::from_str(&text).unwrap();
        let terraform = body.blocks().next().unwrap();
        assert_eq!(terraform.identifier(), "terraform");
        let backend = terraform.body().blocks().next().unwrap();
        assert_eq!(backend.identifier(), "backend");
        assert_eq!(backend.labels()[0].as_str(), "s3");
        assert_eq!(
            backend.body().iter().count(),
            0,
            "partial: all settings from the file"
        );
    }
}
