//! `cargo xtask images` (being built).

use crate::cli::ImagesArgs;

pub fn run(_args: ImagesArgs) -> anyhow::Result<()> {
    anyhow::bail!("`cargo xtask images` is not implemented yet")
}
