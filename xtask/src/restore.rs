//! `cargo xtask restore`: a stateful role's data back from a snapshot.
//!
//! The role's data volume is replaced by one Terraform makes from the snapshot (the
//! variable `data_volume_snapshot_ids`, `snapshot_id` on `aws_ebs_volume.data`), and its
//! instance with it (`-replace`), so the new instance boots with the new volume's id in its
//! tag and mounts it (the agent checks the snapshot's filesystem, which was taken while the
//! services ran, and grows it when the volume is larger than the snapshot). The replaced
//! volume leaves its final snapshot: a restore can itself be undone. Then the role goes
//! through the roll-out's health gate (it and the roles that read it) and the role's checks
//! of `verify`.
//!
//! A snapshot is refused, in one line, when it holds another role's data, belongs to
//! another deployment, is in another region or is not completed yet.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use aws_sdk_ec2::Client;

use crate::cli::RestoreArgs;
use crate::deploy::health::{self, Checker};
use crate::deploy::rollout;
use crate::deploy::terraform::Terraform;
use crate::deploy::{self, tfvars};
use crate::roles::Registry;
use crate::snapshots::{self, Reference, Snapshot};
use crate::verify;

pub fn run(args: RestoreArgs) -> anyhow::Result<()> {
    let registry = Registry::load_default()?;
    let role = registry.role(&args.role)?;
    if role.data.is_none() {
        let stateful: Vec<&str> = registry
            .roles()
            .iter()
            .filter(|r| r.data.is_some())
            .map(|r| r.name.as_str())
            .collect();
        bail!(
            "role {} keeps no data: there is nothing to restore (the stateful roles: {})",
            role.name,
            stateful.join(", ")
        );
    }
    let reference = args
        .snapshot
        .as_deref()
        .map(snapshots::parse_reference)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let user_vars = deploy::user_var_files(args.var_file.as_deref())?;
    let generated = deploy::generated_vars_path();
    let vars = tfvars::read(&generated).context(
        "nothing is deployed from this checkout (its generated variables are gone): restore \
         works on a deployed stack; run `cargo xtask deploy` first",
    )?;
    let mut var_files = user_vars;
    var_files.push(generated.clone());
    let terraform = Terraform::locate(&deploy::terraform_dir(), var_files)?;
    terraform.init(None)?;
    let outputs = terraform.outputs()?;
    if outputs.is_empty() {
        bail!("nothing is deployed (Terraform's state has no instances): run `cargo xtask deploy`");
    }
    let deployment = outputs.deployment.clone().context(
        "Terraform's state has no `deployment` output (it was written before restore \
         existed): run `cargo xtask deploy` once, then restore",
    )?;
    let volume = outputs
        .data_volume_ids
        .get(&role.name)
        .cloned()
        .with_context(|| format!("Terraform's state has no data volume for {}", role.name))?;
    let region = vars.region.clone();

    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let config = runtime.block_on(crate::ami::sdk_config(Some(&region)))?;
    let client = Client::new(&config);
    let snapshot = runtime.block_on(choose(
        &client,
        &config,
        &region,
        &deployment,
        &role.name,
        reference.as_ref(),
    ))?;
    snapshots::check_restorable(&snapshot, &role.name, &deployment, &region)
        .map_err(anyhow::Error::msg)?;
    let volume_size = runtime.block_on(volume_size(&client, &volume))?;
    if snapshot.size_gib > volume_size {
        bail!(
            "snapshot {} is of a {} GiB volume, larger than {}'s {volume_size} GiB: set \
             data_volume_size_gb = {{ {} = {} }} (or more) in your variable file, deploy, and \
             run this again",
            snapshot.id,
            snapshot.size_gib,
            role.name,
            role.name,
            snapshot.size_gib
        );
    }

    print_plan(
        &registry,
        &role.name,
        &deployment,
        &region,
        &volume,
        volume_size,
        &snapshot,
    );
    // The AMIs the instances run now: a restore rolls no image out.
    let mut restore_vars = vars.clone();
    if !outputs.ami_ids.is_empty() {
        restore_vars.ami_ids = outputs.ami_ids.clone();
    }
    restore_vars.data_volume_snapshot_ids =
        BTreeMap::from([(role.name.clone(), snapshot.id.clone())]);
    tfvars::write(&generated, &restore_vars)?;
    let plan_path = deploy::deploy_dir().join("obstack.tfplan");
    terraform.plan_with(&plan_path, &replacements(&role.name))?;
    if args.plan_only {
        eprintln!("nothing applied (--plan-only)");
        return Ok(());
    }
    if !args.auto_approve {
        deploy::confirm(&format!(
            "Replace {}'s data volume {volume} and its instance with ones made from {}?",
            role.name, snapshot.id
        ))?;
    }
    terraform.apply(&plan_path)?;

    // The roll-out's gate for this role: it and the roles that read it.
    let outputs = terraform.outputs()?;
    let auth = runtime.block_on(deploy::grafana_auth(&region, &outputs));
    let endpoints = deploy::stack_endpoints(&outputs, auth);
    let gate = rollout::gate_roles(&registry, &role.name);
    let mut checks = health::checks_for_roles(&endpoints, &gate);
    if checks.is_empty() {
        // As deploy's gate: what can be checked from here, when nothing speaks for the role.
        checks = health::stack_checks(&endpoints);
    }
    deploy::wait_for_health(
        &Checker::new(deploy::HEALTH_REQUEST_TIMEOUT)?,
        &checks,
        args.health_timeout,
    )
    .with_context(|| {
        format!(
            "{} runs on the volume from {}, but the health gate failed",
            role.name, snapshot.id
        )
    })?;

    // Then the role's own checks of `verify`.
    let target = verify::target::Target::deployed(&registry, &endpoints)?;
    let options = verify::Options {
        log_deadline: args.verify_deadline,
        metrics_deadline: args.verify_deadline,
        require_all: false,
    };
    let report = verify::verify(&target, &options);
    let rows: Vec<verify::report::Row> = report
        .checks
        .into_iter()
        .filter(|row| row.component == role.name)
        .collect();
    let own = verify::report::Report::new("deployed", rows, false, Duration::ZERO, None);
    print!("{}", own.table());
    verify::report::verdict(&own.checks, false).map_err(|problems| {
        anyhow::anyhow!(
            "{} runs on the volume from {}, but its checks failed: {problems}",
            role.name,
            snapshot.id
        )
    })?;

    let replaced = runtime.block_on(snapshots::of_deployment(
        &client,
        &region,
        &deployment,
        Some(&role.name),
    ))?;
    println!(
        "{} restored from {} (taken {}).",
        role.name, snapshot.id, snapshot.started
    );
    if let Some(last) = replaced
        .iter()
        .find(|s| s.volume_id.as_deref() == Some(volume.as_str()) && s.id != snapshot.id)
    {
        println!(
            "The volume it replaced, {volume}, left its final snapshot {}: `cargo xtask restore \
             --role {} --snapshot {}` puts it back.",
            last.id, role.name, last.id
        );
    }
    Ok(())
}

/// The snapshot to restore: the one named (looked for in other regions too, so the refusal
/// can say where it is), or the newest completed one of the role in this deployment.
async fn choose(
    client: &Client,
    config: &aws_config::SdkConfig,
    region: &str,
    deployment: &str,
    role: &str,
    reference: Option<&Reference>,
) -> anyhow::Result<Snapshot> {
    let Some(reference) = reference else {
        let all = snapshots::of_deployment(client, region, deployment, Some(role)).await?;
        return all
            .into_iter()
            .find(Snapshot::is_completed)
            .with_context(|| {
                format!(
                    "no completed snapshot of {role}'s data volume in deployment {deployment} \
                 ({region}): the daily ones are taken at 03:00 UTC; name one with --snapshot"
                )
            });
    };
    let id = &reference.id;
    if let Some(there) = reference.region.as_deref().filter(|r| *r != region) {
        bail!("{}", snapshots::in_another_region(id, there, region));
    }
    if let Some(snapshot) = snapshots::find(client, region, id).await? {
        return Ok(snapshot);
    }
    match snapshots::find_elsewhere(config, region, id).await? {
        Some(snapshot) => Ok(snapshot),
        None => bail!(
            "snapshot {id} is neither in {region} nor in any other region this account can \
             read; `cargo xtask status` lists the newest of each role"
        ),
    }
}

/// The size in GiB of `volume`.
async fn volume_size(client: &Client, volume: &str) -> anyhow::Result<i32> {
    let described = client
        .describe_volumes()
        .volume_ids(volume)
        .send()
        .await
        .with_context(|| {
            format!("cannot describe the data volume {volume} (ec2:DescribeVolumes)")
        })?;
    described
        .volumes()
        .first()
        .and_then(|v| v.size())
        .with_context(|| format!("EC2 does not know the data volume {volume}"))
}

/// Terraform's `-replace` options: the role's volume (made anew from the snapshot, even
/// when the state already names that snapshot) and its instance (which boots with the new
/// volume's id in its tag).
pub fn replacements(role: &str) -> Vec<String> {
    vec![
        format!("-replace=aws_ebs_volume.data[\"{role}\"]"),
        format!("-replace=aws_instance.role[\"{role}\"]"),
    ]
}

fn print_plan(
    registry: &Registry,
    role: &str,
    deployment: &str,
    region: &str,
    volume: &str,
    volume_size: i32,
    snapshot: &Snapshot,
) {
    println!("restore {role} of deployment {deployment} in {region}:");
    print!(
        "{}",
        crate::table::render(
            &[
                "ROLE",
                "DATA VOLUME NOW",
                "FROM SNAPSHOT",
                "TAKEN",
                "AGE",
                "OF"
            ],
            [[
                role.to_string(),
                format!("{volume} ({volume_size} GiB)"),
                snapshot.id.clone(),
                snapshot.started.clone(),
                snapshot.age(SystemTime::now()),
                format!(
                    "{} ({} GiB)",
                    snapshot.volume_id.as_deref().unwrap_or("?"),
                    snapshot.size_gib
                ),
            ]]
        )
    );
    let gate: Vec<String> = rollout::gate_roles(registry, role).into_iter().collect();
    println!(
        "then: 1. terraform apply: a {volume_size} GiB volume made from {}, replacing {volume} \
         (which leaves a final snapshot), and a new {role} instance that mounts it\n      \
         2. health gate: {}\n      3. verify: {role}'s checks",
        snapshot.id,
        gate.join(", ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_volume_and_the_instance_are_replaced() {
        assert_eq!(
            replacements("loki"),
            [
                "-replace=aws_ebs_volume.data[\"loki\"]",
                "-replace=aws_instance.role[\"loki\"]"
            ]
        );
    }
}
