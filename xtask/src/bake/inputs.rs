//! The bake's inputs for commands that need this checkout's hashes without baking
//! (`deploy` picks the AMIs baked from them). Computing them builds the release binaries
//! and resolves the base AMI, exactly as `cargo xtask bake` does; `status` and `images`
//! never call this.

use std::collections::BTreeMap;

use anyhow::Context;

use crate::hash::{self, HashInputs};
use crate::roles::Registry;
use crate::versions::Manifest;

/// The current input hash of each role in `roles`.
pub async fn checkout_hashes(
    client: &aws_sdk_ec2::Client,
    registry: &Registry,
    roles: &[&str],
) -> anyhow::Result<BTreeMap<String, String>> {
    let roles = roles
        .iter()
        .map(|name| registry.role(name))
        .collect::<Result<Vec<_>, _>>()?;
    let manifest = Manifest::load(&registry.images_dir().join("versions.toml"))?;
    let for_build = registry.clone();
    let artifacts_dir =
        tokio::task::spawn_blocking(move || super::artifacts::build_release(&for_build))
            .await
            .context("the release build panicked")??;
    let base = super::base::resolve(client, &super::base::BaseAmiFilter::from_env()).await?;
    let inputs = HashInputs {
        images_dir: registry.images_dir().to_path_buf(),
        manifest,
        artifacts_dir,
        base_ami_id: base.id,
    };
    roles
        .iter()
        .map(|role| Ok((role.name.clone(), hash::role_input_hash(role, &inputs)?)))
        .collect()
}
