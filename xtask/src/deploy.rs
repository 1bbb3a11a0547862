//! `cargo xtask deploy`, `destroy` and `status` (being built).

use crate::cli::{DeployArgs, DestroyArgs, StatusArgs};

pub fn run_deploy(_args: DeployArgs) -> anyhow::Result<()> {
    anyhow::bail!("`cargo xtask deploy` is not implemented yet")
}

pub fn run_destroy(_args: DestroyArgs) -> anyhow::Result<()> {
    anyhow::bail!("`cargo xtask destroy` is not implemented yet")
}

pub fn run_status(_args: StatusArgs) -> anyhow::Result<()> {
    anyhow::bail!("`cargo xtask status` is not implemented yet")
}
