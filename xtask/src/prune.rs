//! `cargo xtask prune` (being built).

use crate::cli::PruneArgs;

pub fn run(_args: PruneArgs) -> anyhow::Result<()> {
    anyhow::bail!("`cargo xtask prune` is not implemented yet")
}
