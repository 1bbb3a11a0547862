//! `cargo xtask pin` (being built).

use crate::cli::PinArgs;

pub fn run(_args: PinArgs) -> anyhow::Result<()> {
    anyhow::bail!("`cargo xtask pin` is not implemented yet")
}
