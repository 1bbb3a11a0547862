//! `cargo xtask bake` (being built).

use crate::cli::BakeArgs;

pub fn run(_args: BakeArgs) -> anyhow::Result<()> {
    anyhow::bail!("`cargo xtask bake` is not implemented yet")
}
