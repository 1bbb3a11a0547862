//! The Terraform variables `cargo xtask deploy` generates: the region and each role's AMI.
//! They live in `target/deploy/` (never committed; `*.auto.tfvars.json` is git-ignored
//! too) and are passed with `-var-file`, so `destroy` can reuse them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::select::Selected;

/// The generated variables, as `terraform/variables.tf` declares them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeneratedVars {
    pub region: String,
    /// role → AMI id.
    pub ami_ids: BTreeMap<String, String>,
    /// role → the snapshot its data volume is made from (`cargo xtask restore` only; a
    /// role left out keeps its volume, so deploy never writes this).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data_volume_snapshot_ids: BTreeMap<String, String>,
}

impl GeneratedVars {
    pub fn new(region: &str, selected: &[Selected]) -> GeneratedVars {
        GeneratedVars {
            region: region.to_string(),
            ami_ids: selected
                .iter()
                .map(|s| (s.role.clone(), s.ami_id.clone()))
                .collect(),
            data_volume_snapshot_ids: BTreeMap::new(),
        }
    }
}

/// Where deploy writes them: `target/deploy/obstack.auto.tfvars.json`.
pub fn default_path(target_dir: &Path) -> PathBuf {
    target_dir.join("deploy").join("obstack.auto.tfvars.json")
}

/// Writes `vars` as JSON, atomically (a half-written file never replaces a good one).
pub fn write(path: &Path, vars: &GeneratedVars) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(vars).context("cannot serialise the variables")?;
    crate::atomic::write(path, json + "\n")
}

/// Reads variables written by [`write`].
pub fn read(path: &Path) -> anyhow::Result<GeneratedVars> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {} (written by `cargo xtask deploy`)",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not valid generated variables; delete it and run `cargo xtask deploy` again",
            path.display()
        )
    })
}
