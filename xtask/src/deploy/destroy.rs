//! `cargo xtask destroy`: the stack goes, its data stays, unless the operator asks for the
//! data to go too (`--delete-data`).
//!
//! The data is what a deployment leaves that someone may need after it: the data volumes'
//! snapshots (the daily ones and the final one each volume leaves when destroyed), Loki's
//! bucket, and the data key that encrypts both (a snapshot or an object whose key is
//! deleted can never be read again). Keeping it, destroy asks Terraform for a plan that
//! destroys every resource in the state but [`KEPT`] (`plan -destroy -target=...`): the key
//! and the bucket stay in the state, so the next deploy of the same name uses them again,
//! and a later `destroy --delete-data` deletes them. Before anything happens it prints what
//! goes and what stays, and asks.

use std::time::SystemTime;

use anyhow::{bail, Context};

use super::terraform::{Outputs, Terraform};
use super::{confirm, deploy_dir, generated_vars_path, terraform_dir, tfvars, user_var_files};
use crate::cli::DestroyArgs;
use crate::snapshots::{self, Snapshot};

/// What a plain destroy keeps, by resource address (without the instance key): the data
/// key and its alias, and Loki's bucket with its encryption, access settings, policy and
/// lifecycle. None of them refers to a resource that is destroyed, so the targeted destroy
/// never reaches them (a test checks it against terraform/).
pub const KEPT: [&str; 8] = [
    "aws_kms_key.data",
    "aws_kms_alias.data",
    "aws_s3_bucket.loki",
    "aws_s3_bucket_server_side_encryption_configuration.loki",
    "aws_s3_bucket_public_access_block.loki",
    "aws_s3_bucket_ownership_controls.loki",
    "aws_s3_bucket_policy.loki",
    "aws_s3_bucket_lifecycle_configuration.loki",
];

/// Whether `address` (`aws_s3_bucket.loki[0]`) is one of [`KEPT`].
pub fn is_kept(address: &str) -> bool {
    let resource = address.split('[').next().unwrap_or(address);
    KEPT.contains(&resource)
}

/// The resources a destroy deletes and keeps, and the options of its `terraform plan`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestroyPlan {
    pub destroyed: Vec<String>,
    pub kept: Vec<String>,
    /// `-destroy`, then one `-target=` per destroyed resource when something is kept.
    pub plan_options: Vec<String>,
}

/// The plan for a state holding `addresses` (`terraform state list`; data sources are not
/// destroyed and never targeted).
pub fn plan(addresses: &[String], delete_data: bool) -> DestroyPlan {
    let resources = addresses.iter().filter(|a| !a.starts_with("data."));
    let (kept, destroyed): (Vec<String>, Vec<String>) = if delete_data {
        (Vec::new(), resources.cloned().collect())
    } else {
        resources.cloned().partition(|a| is_kept(a))
    };
    let mut plan_options = vec!["-destroy".to_string()];
    if !kept.is_empty() {
        plan_options.extend(destroyed.iter().map(|a| format!("-target={a}")));
    }
    DestroyPlan {
        destroyed,
        kept,
        plan_options,
    }
}

pub fn run(args: DestroyArgs) -> anyhow::Result<()> {
    let user_vars = user_var_files(args.var_file.as_deref())?;
    let generated = generated_vars_path();
    // Destroy needs the same variables as the deploy (they are validated), not fresh AMIs.
    let vars = tfvars::read(&generated).context(
        "nothing to destroy from this checkout, or its generated variables are gone; \
         run `cargo xtask deploy --plan-only` to regenerate them first",
    )?;
    let mut var_files = user_vars;
    var_files.push(generated);
    let terraform = Terraform::locate(&terraform_dir(), var_files)?;
    terraform.init(None)?;
    let addresses = terraform.state_list()?;
    let outputs = terraform.outputs()?;
    let destroy = plan(&addresses, args.delete_data);
    if destroy.destroyed.is_empty() {
        if destroy.kept.is_empty() {
            bail!("nothing to destroy: Terraform's state is empty");
        }
        bail!(
            "nothing to destroy but the data an earlier destroy kept ({}); delete it with \
             `cargo xtask destroy --delete-data`",
            destroy.kept.join(", ")
        );
    }
    let region = vars.region.as_str();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let client = runtime.block_on(crate::ami::ec2_client(Some(region)))?;
    let before = match &outputs.deployment {
        Some(deployment) => {
            runtime.block_on(snapshots::of_deployment(&client, region, deployment, None))?
        }
        None => {
            eprintln!(
                "warning: Terraform's state has no `deployment` output (written before it \
                 existed): the data volumes' snapshots are not listed"
            );
            Vec::new()
        }
    };
    if !args.delete_data {
        runtime.block_on(refuse_snapshots_under_the_stack_key(&client, &outputs))?;
    }

    let name = outputs.deployment.as_deref().unwrap_or("(unnamed)");
    println!(
        "destroying deployment {name} in {region}{}:",
        if args.delete_data {
            ", its data included (--delete-data)"
        } else {
            ", keeping its data"
        }
    );
    print!(
        "{}",
        crate::table::render(
            &["WHAT", "ID", "AFTER DESTROY"],
            fates(&outputs, &before, &destroy, args.delete_data)
        )
    );
    if !args.auto_approve {
        let question = if args.delete_data {
            format!(
                "Destroy deployment {name} in {region} AND DELETE ITS DATA ({} snapshots, the \
                 bucket and the data key, as listed)?",
                before.len()
            )
        } else {
            format!("Destroy deployment {name} in {region}, keeping its data as listed?")
        };
        confirm(&question)?;
    }

    let plan_path = deploy_dir().join("obstack.tfplan");
    terraform.plan_with(&plan_path, &destroy.plan_options)?;
    terraform.apply(&plan_path)?;
    if plan_path.exists() {
        std::fs::remove_file(&plan_path)
            .with_context(|| format!("cannot remove {}", plan_path.display()))?;
    }

    let Some(deployment) = &outputs.deployment else {
        eprintln!("destroyed");
        return Ok(());
    };
    // The volumes' final snapshots exist now (the provider waits for them).
    let after = runtime.block_on(snapshots::of_deployment(&client, region, deployment, None))?;
    if args.delete_data {
        for snapshot in &after {
            runtime.block_on(snapshots::delete(&client, &snapshot.id))?;
            println!("deleted snapshot {} ({})", snapshot.id, role_of(snapshot));
        }
        println!("destroyed, with its data");
        return Ok(());
    }
    println!(
        "destroyed; kept {} of its data volumes' snapshots{}{}:",
        after.len(),
        outputs
            .loki_bucket
            .as_ref()
            .map(|bucket| format!(", Loki's bucket {bucket}"))
            .unwrap_or_default(),
        outputs
            .data_key_arn
            .as_ref()
            .map(|key| format!(" and the data key {key}"))
            .unwrap_or_default(),
    );
    print!("{}", snapshot_table(&after));
    println!(
        "A deploy of the same name uses the key and the bucket again; `cargo xtask restore \
         --role ROLE --snapshot ID` then brings a volume back. `cargo xtask destroy \
         --delete-data` deletes them."
    );
    Ok(())
}

/// A volume still encrypted with the stack's key (made before the data key existed) would
/// leave a final snapshot nobody can read once the stack's key is deleted: refuse, naming
/// the way out.
async fn refuse_snapshots_under_the_stack_key(
    client: &aws_sdk_ec2::Client,
    outputs: &Outputs,
) -> anyhow::Result<()> {
    if outputs.data_volume_ids.is_empty() {
        return Ok(());
    }
    // By filter, not by id: a volume already gone (deleted by hand) leaves no snapshot to
    // worry about, and must not stop the destroy.
    let described = client
        .describe_volumes()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("volume-id")
                .set_values(Some(outputs.data_volume_ids.values().cloned().collect()))
                .build(),
        )
        .send()
        .await
        .context("cannot describe the data volumes (ec2:DescribeVolumes)")?;
    for volume in described.volumes() {
        let id = volume.volume_id().unwrap_or_default();
        let role = outputs
            .data_volume_ids
            .iter()
            .find(|(_, v)| v.as_str() == id)
            .map_or("?", |(role, _)| role.as_str());
        let key = volume.kms_key_id().unwrap_or("(none)");
        if outputs.data_key_arn.as_deref() != Some(key) {
            bail!(
                "{role}'s data volume {id} is encrypted with {key}, not the data key: its final \
                 snapshot would be unreadable once destroy deletes that key; move it onto the \
                 data key first (`cargo xtask deploy`, then `cargo xtask restore --role {role} \
                 --latest`), or pass --delete-data"
            );
        }
    }
    Ok(())
}

/// The rows of what goes and what stays.
fn fates(
    outputs: &Outputs,
    snapshots: &[Snapshot],
    destroy: &DestroyPlan,
    delete_data: bool,
) -> Vec<[String; 3]> {
    let mut rows = Vec::new();
    for (role, volume) in &outputs.data_volume_ids {
        rows.push([
            format!("data volume ({role})"),
            volume.clone(),
            if delete_data {
                "deleted, and its final snapshot".to_string()
            } else {
                "deleted; its final snapshot is kept".to_string()
            },
        ]);
    }
    for snapshot in snapshots {
        rows.push([
            format!("snapshot ({})", role_of(snapshot)),
            format!("{} ({})", snapshot.id, snapshot.started),
            if delete_data { "deleted" } else { "kept" }.to_string(),
        ]);
    }
    if let Some(bucket) = &outputs.loki_bucket {
        rows.push([
            "Loki's bucket".to_string(),
            bucket.clone(),
            if delete_data {
                "deleted, with every object".to_string()
            } else {
                "kept, with its logs (its lifecycle still expires them)".to_string()
            },
        ]);
    }
    if let Some(key) = &outputs.data_key_arn {
        rows.push([
            "data key".to_string(),
            key.clone(),
            if delete_data {
                "deletion scheduled (30-day window)".to_string()
            } else {
                "kept (the snapshots and the bucket need it)".to_string()
            },
        ]);
    }
    let others = destroy
        .destroyed
        .iter()
        .filter(|a| !a.starts_with("aws_ebs_volume.data") && !is_kept(a))
        .count();
    rows.push([
        "everything else".to_string(),
        format!(
            "{others} resources (instances, network, IAM, the Grafana password, the stack's key)"
        ),
        "deleted".to_string(),
    ]);
    rows
}

fn role_of(snapshot: &Snapshot) -> &str {
    snapshot.role.as_deref().unwrap_or("?")
}

/// The snapshots as a table: role, id, when, size.
fn snapshot_table(snapshots: &[Snapshot]) -> String {
    let now = SystemTime::now();
    crate::table::render(
        &["ROLE", "SNAPSHOT", "TAKEN", "AGE", "SIZE"],
        snapshots.iter().map(|s| {
            [
                role_of(s).to_string(),
                s.id.clone(),
                s.started.clone(),
                s.age(now),
                format!("{} GiB", s.size_gib),
            ]
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses() -> Vec<String> {
        [
            "data.aws_caller_identity.current",
            "aws_instance.role[\"loki\"]",
            "aws_ebs_volume.data[\"loki\"]",
            "aws_kms_key.stack",
            "aws_kms_key.data",
            "aws_kms_alias.data",
            "aws_s3_bucket.loki[0]",
            "aws_s3_bucket_policy.loki[0]",
            "aws_iam_role_policy.loki_uses_bucket[0]",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn keeping_the_data_targets_everything_but_the_data_key_and_the_bucket() {
        let keep = plan(&addresses(), false);
        assert_eq!(
            keep.kept,
            [
                "aws_kms_key.data",
                "aws_kms_alias.data",
                "aws_s3_bucket.loki[0]",
                "aws_s3_bucket_policy.loki[0]"
            ]
        );
        assert_eq!(
            keep.plan_options,
            [
                "-destroy",
                "-target=aws_instance.role[\"loki\"]",
                "-target=aws_ebs_volume.data[\"loki\"]",
                "-target=aws_kms_key.stack",
                "-target=aws_iam_role_policy.loki_uses_bucket[0]",
            ]
        );
        let delete = plan(&addresses(), true);
        assert!(delete.kept.is_empty());
        assert_eq!(delete.plan_options, ["-destroy"], "no target: everything");
        assert_eq!(delete.destroyed.len(), 8, "data sources are not destroyed");
    }
}
