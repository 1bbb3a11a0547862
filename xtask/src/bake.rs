//! `cargo xtask bake`: content-addressed, parallel AMI bakes.

pub mod artifacts;
pub mod base;

use crate::cli::BakeArgs;

pub fn run(_args: BakeArgs) -> anyhow::Result<()> {
    anyhow::bail!("`cargo xtask bake` is not implemented yet")
}
