//! `cargo xtask up`, `down` and `ps` (being built).

use crate::cli::{DownArgs, PsArgs, UpArgs};

pub fn run_up(_args: UpArgs) -> anyhow::Result<()> {
    anyhow::bail!("`cargo xtask up` is not implemented yet")
}

pub fn run_down(_args: DownArgs) -> anyhow::Result<()> {
    anyhow::bail!("`cargo xtask down` is not implemented yet")
}

pub fn run_ps(_args: PsArgs) -> anyhow::Result<()> {
    anyhow::bail!("`cargo xtask ps` is not implemented yet")
}
