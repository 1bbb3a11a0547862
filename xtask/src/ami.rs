//! The baked AMIs as EC2 sees them: the tag keys of the images contract
//! (images/README.md), and the few EC2 queries bake, deploy, images and prune share.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use aws_sdk_ec2::types::Filter;
use aws_sdk_ec2::Client;
use serde::Serialize;

/// The value of [`TAG_PROJECT`] on everything this project creates.
pub const PROJECT: &str = "obstack";
/// Tag keys on every AMI and its snapshots (set by the Packer templates; the component
/// versions are `obstack:version:<component>`).
pub const TAG_PROJECT: &str = "obstack:project";
pub const TAG_ROLE: &str = "obstack:role";
pub const TAG_INPUT_HASH: &str = "obstack:input-hash";
pub const TAG_GIT_REVISION: &str = "obstack:git-revision";
/// Set by `cargo xtask bake` after a build (not by Packer): one short digest per input,
/// so a later `bake --dry-run` can say *which* inputs changed. See [`crate::hash::InputDigests`].
pub const TAG_INPUT_DIGESTS: &str = "obstack:input-digests";

/// `ami-` and 8 or 17 hex digits, as EC2 names images (checked in `--ami` flags and in
/// release records).
pub fn is_ami_id(id: &str) -> bool {
    id.strip_prefix("ami-").is_some_and(|hex| {
        matches!(hex.len(), 8 | 17) && hex.chars().all(|c| c.is_ascii_hexdigit())
    })
}

/// One baked image of this project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ami {
    pub id: String,
    pub name: String,
    pub role: String,
    pub input_hash: String,
    pub git_revision: Option<String>,
    /// RFC 3339, as EC2 reports it (e.g. `2026-11-26T02:15:12.000Z`): sorts as text.
    pub created: String,
    pub snapshot_ids: Vec<String>,
    /// Total size of the image's EBS volumes, GiB.
    pub size_gib: i64,
    /// Every tag, including the ones above.
    pub tags: BTreeMap<String, String>,
}

impl Ami {
    fn from_image(image: &aws_sdk_ec2::types::Image) -> Option<Ami> {
        let tags: BTreeMap<String, String> = image
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
            .collect();
        let devices = image.block_device_mappings();
        Some(Ami {
            id: image.image_id()?.to_string(),
            name: image.name().unwrap_or_default().to_string(),
            role: tags.get(TAG_ROLE)?.clone(),
            input_hash: tags.get(TAG_INPUT_HASH).cloned().unwrap_or_default(),
            git_revision: tags.get(TAG_GIT_REVISION).cloned(),
            created: image.creation_date().unwrap_or_default().to_string(),
            snapshot_ids: devices
                .iter()
                .filter_map(|d| d.ebs()?.snapshot_id().map(str::to_string))
                .collect(),
            size_gib: devices
                .iter()
                .filter_map(|d| d.ebs()?.volume_size())
                .map(i64::from)
                .sum(),
            tags,
        })
    }
}

/// An EC2 client from the standard AWS settings (`AWS_PROFILE`, `AWS_REGION`,
/// `AWS_ENDPOINT_URL`, ...); `region` overrides the configured region.
pub async fn ec2_client(region: Option<&str>) -> anyhow::Result<Client> {
    Ok(Client::new(&sdk_config(region).await?))
}

/// The standard AWS settings, with `region` overriding the configured region.
pub async fn sdk_config(region: Option<&str>) -> anyhow::Result<aws_config::SdkConfig> {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_string()));
    }
    let config = loader.load().await;
    anyhow::ensure!(
        config.region().is_some(),
        "no AWS region configured: pass --region, or set AWS_REGION or a profile's region"
    );
    Ok(config)
}

fn filter(name: &str, values: &[&str]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.iter().map(|v| v.to_string()).collect()))
        .build()
}

/// The project's available AMIs owned by this account, newest first; only `role`'s if given.
pub async fn list(client: &Client, role: Option<&str>) -> anyhow::Result<Vec<Ami>> {
    query(client, role, None).await
}

/// The newest available AMI of `role` whose input hash is `hash`.
pub async fn find_by_hash(client: &Client, role: &str, hash: &str) -> anyhow::Result<Option<Ami>> {
    Ok(query(client, Some(role), Some(hash))
        .await?
        .into_iter()
        .next())
}

async fn query(
    client: &Client,
    role: Option<&str>,
    hash: Option<&str>,
) -> anyhow::Result<Vec<Ami>> {
    let mut filters = vec![
        filter(&format!("tag:{TAG_PROJECT}"), &[PROJECT]),
        filter("state", &["available"]),
    ];
    if let Some(role) = role {
        filters.push(filter(&format!("tag:{TAG_ROLE}"), &[role]));
    }
    if let Some(hash) = hash {
        filters.push(filter(&format!("tag:{TAG_INPUT_HASH}"), &[hash]));
    }
    let output = client
        .describe_images()
        .owners("self")
        .set_filters(Some(filters))
        .send()
        .await
        .context("cannot list AMIs (ec2:DescribeImages); check your AWS credentials and region")?;
    let mut amis: Vec<Ami> = output.images().iter().filter_map(Ami::from_image).collect();
    // Filter again locally: the tag filters are the contract, not an optimisation to trust.
    amis.retain(|a| role.is_none_or(|r| a.role == r) && hash.is_none_or(|h| a.input_hash == h));
    sort_newest_first(&mut amis);
    Ok(amis)
}

/// Newest first; AMIs created in the same second are ordered by name (which ends in a timestamp).
pub fn sort_newest_first(amis: &mut [Ami]) {
    amis.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.name.cmp(&a.name)));
}

/// AMI ids used by any instance that is pending, running, stopping or stopped.
pub async fn in_use(client: &Client) -> anyhow::Result<BTreeSet<String>> {
    let mut used = BTreeSet::new();
    let mut pages = client
        .describe_instances()
        .filters(filter(
            "instance-state-name",
            &["pending", "running", "stopping", "stopped"],
        ))
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.context("cannot list instances (ec2:DescribeInstances)")?;
        for reservation in page.reservations() {
            for instance in reservation.instances() {
                if let Some(id) = instance.image_id() {
                    used.insert(id.to_string());
                }
            }
        }
    }
    Ok(used)
}
