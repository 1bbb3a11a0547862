//! `cargo xtask bench` (being built).

use crate::cli::BenchArgs;

pub fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("`cargo xtask bench` is not implemented yet")
}
