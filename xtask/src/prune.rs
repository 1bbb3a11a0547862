//! `cargo xtask prune --keep N`: deregister old AMIs and delete their snapshots. Never the
//! newest N of a role, never one an instance (pending, running, stopping or stopped) uses,
//! never one of a release a channel points at or pointed at in its last moves
//! (`--keep-channel-history`): that is what a rollback goes back to.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;

use crate::ami::{self, Ami};
use crate::cli::PruneArgs;

pub fn run(args: PruneArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.keep >= 1,
        "--keep must be at least 1: the newest AMI of each role is what `cargo xtask deploy --latest` launches"
    );
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(prune(args))
}

async fn prune(args: PruneArgs) -> anyhow::Result<()> {
    let client = ami::ec2_client(args.region.as_deref()).await?;
    let amis = ami::list(&client, None).await?;
    let mut used = ami::in_use(&client).await?;
    let store = crate::release::store::Store::connect(args.region.as_deref(), &args.stack).await?;
    let released = crate::release::protected_amis(&store, args.keep_channel_history).await?;
    for (ami_id, why) in &released {
        if amis.iter().any(|a| &a.id == ami_id) && used.insert(ami_id.clone()) {
            eprintln!("keeping {ami_id}: release of channel {why}");
        }
    }
    let doomed = select(&amis, args.keep, &used);
    if doomed.is_empty() {
        println!(
            "nothing to prune: every role has at most {} AMIs not in use",
            args.keep
        );
        return Ok(());
    }
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleting"
    };
    let mut failures = Vec::new();
    for ami in &doomed {
        println!(
            "{verb} {} ({}, {}, snapshots: {})",
            ami.id,
            ami.role,
            ami.created,
            ami.snapshot_ids.join(" ")
        );
        if args.dry_run {
            continue;
        }
        if let Err(error) = delete(&client, ami).await {
            eprintln!("error: {}: {}", ami.id, crate::report::one_line(&error));
            failures.push(ami.id.clone());
        }
    }
    anyhow::ensure!(
        failures.is_empty(),
        "could not delete {}; rerun prune to retry",
        failures.join(", ")
    );
    Ok(())
}

/// The AMIs to delete: per role, all but the newest `keep` (`amis` is newest first), and
/// never one in `used`.
pub fn select<'a>(amis: &'a [Ami], keep: usize, used: &BTreeSet<String>) -> Vec<&'a Ami> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    amis.iter()
        .filter(|ami| {
            let rank = seen.entry(ami.role.as_str()).or_insert(0);
            *rank += 1;
            *rank > keep && !used.contains(&ami.id)
        })
        .collect()
}

/// Deregisters the image first: EC2 refuses to delete a snapshot a registered image uses.
async fn delete(client: &aws_sdk_ec2::Client, ami: &Ami) -> anyhow::Result<()> {
    client
        .deregister_image()
        .image_id(&ami.id)
        .send()
        .await
        .context("ec2:DeregisterImage failed")?;
    for snapshot in &ami.snapshot_ids {
        client
            .delete_snapshot()
            .snapshot_id(snapshot)
            .send()
            .await
            .with_context(|| format!("ec2:DeleteSnapshot {snapshot} failed"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ami(id: &str, role: &str) -> Ami {
        Ami {
            id: id.to_string(),
            name: id.to_string(),
            role: role.to_string(),
            input_hash: String::new(),
            git_revision: None,
            created: String::new(),
            snapshot_ids: vec![],
            size_gib: 8,
            tags: BTreeMap::new(),
        }
    }

    #[test]
    fn keeps_the_newest_per_role_and_anything_in_use() {
        let amis = vec![
            ami("a3", "app"),
            ami("l2", "loki"),
            ami("a2", "app"),
            ami("l1", "loki"),
            ami("a1", "app"),
        ];
        let ids = |selected: Vec<&Ami>| selected.iter().map(|a| a.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(select(&amis, 1, &BTreeSet::new())), ["a2", "l1", "a1"]);
        assert_eq!(ids(select(&amis, 2, &BTreeSet::new())), ["a1"]);
        assert_eq!(
            ids(select(&amis, 1, &BTreeSet::from(["a1".to_string()]))),
            ["a2", "l1"]
        );
        assert!(select(&amis, 3, &BTreeSet::new()).is_empty());
    }
}
