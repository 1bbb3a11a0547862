//! The data volumes' snapshots as EC2 sees them: the daily ones (the DLM policy copies the
//! volume's tags onto each) and the final one a destroyed or replaced volume leaves (the
//! provider tags it like the volume). Both carry the volume's role (`obstack:role`) and
//! deployment (`obstack:deployment`, the provider's default tag), which is how `restore`,
//! `status` and `destroy` find them.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::primitives::DateTimeFormat;
use aws_sdk_ec2::types::Filter;
use aws_sdk_ec2::Client;
use serde::Serialize;

use crate::ami::TAG_ROLE;

/// The tag Terraform's default tags put on everything a deployment makes.
pub const TAG_DEPLOYMENT: &str = "obstack:deployment";

/// One snapshot of a data volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub id: String,
    pub region: String,
    /// The role whose volume it was taken from (`obstack:role`), if tagged.
    pub role: Option<String>,
    /// The deployment it belongs to (`obstack:deployment`), if tagged.
    pub deployment: Option<String>,
    pub volume_id: Option<String>,
    /// `pending`, `completed`, `error`, ...
    pub state: String,
    /// `42%`.
    pub progress: String,
    /// When it was taken: RFC 3339, and milliseconds since the epoch.
    pub started: String,
    #[serde(skip)]
    pub started_millis: i64,
    /// The size of the volume it was taken from, GiB.
    pub size_gib: i32,
}

impl Snapshot {
    fn from_sdk(snapshot: &aws_sdk_ec2::types::Snapshot, region: &str) -> Option<Snapshot> {
        let tag = |key: &str| {
            snapshot
                .tags()
                .iter()
                .find(|t| t.key() == Some(key))
                .and_then(|t| t.value())
                .map(str::to_string)
        };
        let started = snapshot.start_time();
        Some(Snapshot {
            id: snapshot.snapshot_id()?.to_string(),
            region: region.to_string(),
            role: tag(TAG_ROLE),
            deployment: tag(TAG_DEPLOYMENT),
            volume_id: snapshot.volume_id().map(str::to_string),
            state: snapshot
                .state()
                .map_or("unknown", |s| s.as_str())
                .to_string(),
            progress: snapshot.progress().unwrap_or_default().to_string(),
            started: started
                .and_then(|t| t.fmt(DateTimeFormat::DateTime).ok())
                .unwrap_or_default(),
            started_millis: started.and_then(|t| t.to_millis().ok()).unwrap_or(0),
            size_gib: snapshot.volume_size().unwrap_or_default(),
        })
    }

    pub fn is_completed(&self) -> bool {
        self.state == "completed"
    }

    /// How long ago it was taken, to the minute: `3h 12m`, `2days 1h`.
    pub fn age(&self, now: SystemTime) -> String {
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let started = u64::try_from(self.started_millis / 1000).unwrap_or(0);
        let seconds = now.saturating_sub(started);
        if seconds < 60 {
            return "under a minute".to_string();
        }
        humantime::format_duration(Duration::from_secs(seconds / 60 * 60)).to_string()
    }
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

/// The data-volume snapshots of `deployment` this account owns in the client's region
/// (only `role`'s if given), newest first.
pub async fn of_deployment(
    client: &Client,
    region: &str,
    deployment: &str,
    role: Option<&str>,
) -> anyhow::Result<Vec<Snapshot>> {
    let role_filter = match role {
        Some(role) => filter(&format!("tag:{TAG_ROLE}"), role),
        None => Filter::builder().name("tag-key").values(TAG_ROLE).build(),
    };
    let mut pages = client
        .describe_snapshots()
        .owner_ids("self")
        .filters(filter(&format!("tag:{TAG_DEPLOYMENT}"), deployment))
        .filters(role_filter)
        .into_paginator()
        .send();
    let mut snapshots = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.context(
            "cannot list the data volumes' snapshots (ec2:DescribeSnapshots); check your AWS \
             credentials",
        )?;
        snapshots.extend(
            page.snapshots()
                .iter()
                .filter_map(|s| Snapshot::from_sdk(s, region)),
        );
    }
    // The filters are the contract, not an optimisation to trust.
    snapshots.retain(|s| {
        s.deployment.as_deref() == Some(deployment)
            && s.role.is_some()
            && role.is_none_or(|r| s.role.as_deref() == Some(r))
    });
    sort_newest_first(&mut snapshots);
    Ok(snapshots)
}

/// Newest first; ties by id, so the order is stable.
pub fn sort_newest_first(snapshots: &mut [Snapshot]) {
    snapshots.sort_by(|a, b| {
        b.started_millis
            .cmp(&a.started_millis)
            .then_with(|| b.id.cmp(&a.id))
    });
}

/// The newest snapshot of each of `roles`, from a newest-first list.
pub fn newest_per_role<'a>(
    snapshots: &'a [Snapshot],
    roles: &[&str],
) -> BTreeMap<String, &'a Snapshot> {
    roles
        .iter()
        .filter_map(|role| {
            snapshots
                .iter()
                .find(|s| s.role.as_deref() == Some(*role))
                .map(|s| (role.to_string(), s))
        })
        .collect()
}

/// Snapshot `id` in the client's region, `None` when it is not there.
pub async fn find(client: &Client, region: &str, id: &str) -> anyhow::Result<Option<Snapshot>> {
    match client.describe_snapshots().snapshot_ids(id).send().await {
        Ok(output) => Ok(output
            .snapshots()
            .iter()
            .find_map(|s| Snapshot::from_sdk(s, region))),
        Err(error)
            if error
                .as_service_error()
                .and_then(|e| e.code())
                .is_some_and(|code| code == "InvalidSnapshot.NotFound") =>
        {
            Ok(None)
        }
        Err(error) => Err(error).with_context(|| {
            format!("cannot describe snapshot {id} in {region} (ec2:DescribeSnapshots)")
        }),
    }
}

/// The region other than `home` where snapshot `id` is, looking in every region the
/// account has enabled; `None` when it is nowhere.
pub async fn find_elsewhere(
    config: &aws_config::SdkConfig,
    home: &str,
    id: &str,
) -> anyhow::Result<Option<Snapshot>> {
    let regions = Client::new(config)
        .describe_regions()
        .send()
        .await
        .context("cannot list the account's regions (ec2:DescribeRegions)")?;
    for region in regions.regions().iter().filter_map(|r| r.region_name()) {
        if region == home {
            continue;
        }
        let client = Client::from_conf(
            aws_sdk_ec2::config::Builder::from(config)
                .region(aws_config::Region::new(region.to_string()))
                .build(),
        );
        // A region this account cannot read is not where the snapshot is.
        if let Ok(Some(snapshot)) = find(&client, region, id).await {
            return Ok(Some(snapshot));
        }
    }
    Ok(None)
}

/// Deletes snapshot `id`.
pub async fn delete(client: &Client, id: &str) -> anyhow::Result<()> {
    client
        .delete_snapshot()
        .snapshot_id(id)
        .send()
        .await
        .with_context(|| format!("cannot delete snapshot {id} (ec2:DeleteSnapshot)"))?;
    Ok(())
}

/// A snapshot named on the command line: `snap-...`, or its ARN (which names its region).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub id: String,
    pub region: Option<String>,
}

/// Reads `snap-0123456789abcdef0` or `arn:aws:ec2:eu-west-1::snapshot/snap-0123...`.
pub fn parse_reference(text: &str) -> Result<Reference, String> {
    let (region, id) = match text.strip_prefix("arn:") {
        Some(rest) => {
            // partition:ec2:region:account:snapshot/id (the account is empty for snapshots).
            let fields: Vec<&str> = rest.splitn(5, ':').collect();
            match fields.as_slice() {
                [_, "ec2", region, _, resource] if !region.is_empty() => (
                    Some(region.to_string()),
                    resource.strip_prefix("snapshot/").unwrap_or_default(),
                ),
                _ => (None, ""),
            }
        }
        None => (None, text),
    };
    let digits = id.strip_prefix("snap-").unwrap_or_default();
    let valid = matches!(digits.len(), 8 | 17)
        && digits
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
    if !valid {
        return Err(format!(
            "`{text}` is not an EBS snapshot: give its id (snap- and 17 hex digits, as \
             `cargo xtask status` lists them) or its ARN (arn:aws:ec2:REGION::snapshot/snap-...)"
        ));
    }
    Ok(Reference {
        id: id.to_string(),
        region,
    })
}

/// Why snapshot `id`, in region `there`, cannot be restored in `here`, and what to do.
pub fn in_another_region(id: &str, there: &str, here: &str) -> String {
    format!(
        "snapshot {id} is in {there}, the stack in {here}: copy it here first (aws ec2 \
         copy-snapshot --source-region {there} --source-snapshot-id {id} --region {here}) and \
         restore the copy"
    )
}

/// Whether `snapshot` may become `role`'s data volume in `deployment`'s `region`: one line
/// saying why not.
pub fn check_restorable(
    snapshot: &Snapshot,
    role: &str,
    deployment: &str,
    region: &str,
) -> Result<(), String> {
    let id = &snapshot.id;
    if snapshot.region != region {
        return Err(in_another_region(id, &snapshot.region, region));
    }
    match snapshot.role.as_deref() {
        None => {
            return Err(format!(
                "snapshot {id} is not a data-volume snapshot of an obstack stack (it has no \
                 {TAG_ROLE} tag)"
            ))
        }
        Some(other) if other != role => {
            return Err(format!(
                "snapshot {id} holds {other}'s data, not {role}'s: restore it with --role \
                 {other}, or pick one of {role}'s (`cargo xtask status` lists the newest)"
            ))
        }
        Some(_) => {}
    }
    match snapshot.deployment.as_deref() {
        Some(other) if other == deployment => {}
        other => {
            return Err(format!(
                "snapshot {id} belongs to deployment {}, not to {deployment}, the one deployed \
                 from here",
                other.unwrap_or("(none: no obstack:deployment tag)")
            ))
        }
    }
    match snapshot.state.as_str() {
        "completed" => Ok(()),
        "pending" => Err(format!(
            "snapshot {id} is still pending ({}); wait until it completes (aws ec2 wait \
             snapshot-completed --snapshot-ids {id} --region {region}) and run this again",
            if snapshot.progress.is_empty() {
                "no progress reported yet"
            } else {
                &snapshot.progress
            }
        )),
        state => Err(format!(
            "snapshot {id} is in state `{state}`: only a completed snapshot can be restored"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(id: &str, role: &str, started_secs: i64) -> Snapshot {
        Snapshot {
            id: id.to_string(),
            region: "eu-west-1".into(),
            role: Some(role.into()),
            deployment: Some("obstack".into()),
            volume_id: Some("vol-0123456789abcdef0".into()),
            state: "completed".into(),
            progress: "100%".into(),
            started: String::new(),
            started_millis: started_secs * 1000,
            size_gib: 20,
        }
    }

    #[test]
    fn a_snapshot_of_another_role_deployment_or_region_or_one_not_completed_is_refused() {
        let good = snapshot("snap-0123456789abcdef0", "loki", 0);
        assert_eq!(
            check_restorable(&good, "loki", "obstack", "eu-west-1"),
            Ok(())
        );
        let refused = |s: &Snapshot, role: &str| {
            check_restorable(s, role, "obstack", "eu-west-1").unwrap_err()
        };
        let line = refused(&good, "grafana");
        assert!(line.contains("holds loki's data, not grafana's"), "{line}");
        let mut other = good.clone();
        other.deployment = Some("staging".into());
        let line = refused(&other, "loki");
        assert!(
            line.contains("belongs to deployment staging, not to obstack"),
            "{line}"
        );
        let mut elsewhere = good.clone();
        elsewhere.region = "us-east-1".into();
        let line = refused(&elsewhere, "loki");
        assert!(
            line.contains("is in us-east-1, the stack in eu-west-1"),
            "{line}"
        );
        assert!(
            line.contains("copy-snapshot --source-region us-east-1"),
            "{line}"
        );
        let mut pending = good.clone();
        pending.state = "pending".into();
        pending.progress = "42%".into();
        let line = refused(&pending, "loki");
        assert!(line.contains("is still pending (42%)"), "{line}");
        assert!(line.contains("aws ec2 wait snapshot-completed"), "{line}");
        let mut failed = good.clone();
        failed.state = "error".into();
        assert!(refused(&failed, "loki").contains("state `error`"));
        let mut untagged = good;
        untagged.role = None;
        assert!(refused(&untagged, "loki").contains("no obstack:role tag"));
        for line in [refused(&pending, "loki"), refused(&other, "loki")] {
            assert!(!line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn a_snapshot_is_named_by_id_or_arn() {
        assert_eq!(
            parse_reference("snap-0123456789abcdef0"),
            Ok(Reference {
                id: "snap-0123456789abcdef0".into(),
                region: None
            })
        );
        assert_eq!(
            parse_reference("arn:aws:ec2:us-west-2::snapshot/snap-0123456789abcdef0"),
            Ok(Reference {
                id: "snap-0123456789abcdef0".into(),
                region: Some("us-west-2".into())
            })
        );
        for bad in [
            "",
            "snap-",
            "snap-XYZ",
            "vol-0123456789abcdef0",
            "arn:aws:ec2:us-west-2::volume/vol-0123456789abcdef0",
            "arn:aws:s3:::bucket",
        ] {
            assert!(
                parse_reference(bad)
                    .unwrap_err()
                    .contains("is not an EBS snapshot"),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_newest_of_each_role_and_its_age() {
        let mut all = vec![
            snapshot("snap-00000001", "loki", 1_000),
            snapshot("snap-00000002", "loki", 90_000),
            snapshot("snap-00000003", "grafana", 50_000),
        ];
        sort_newest_first(&mut all);
        let newest = newest_per_role(&all, &["loki", "grafana", "prometheus"]);
        assert_eq!(newest["loki"].id, "snap-00000002");
        assert_eq!(newest["grafana"].id, "snap-00000003");
        assert!(!newest.contains_key("prometheus"));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(90_000 + 3 * 3600 + 12 * 60 + 5);
        assert_eq!(newest["loki"].age(now), "3h 12m");
    }
}
