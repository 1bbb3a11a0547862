//! The base image every role starts from, resolved to one AMI id (part of every input hash).

use anyhow::Context;
use aws_sdk_ec2::types::Filter;

/// Canonical's Ubuntu 24.04 LTS amd64 server images.
pub const DEFAULT_NAME: &str = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*";
/// Canonical's AWS account.
pub const DEFAULT_OWNER: &str = "099720109477";

/// A DescribeImages name filter and owner; the newest match is the base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseAmiFilter {
    pub name: String,
    pub owner: String,
}

impl BaseAmiFilter {
    /// The defaults, overridden by `OBSTACK_BASE_AMI_NAME` / `OBSTACK_BASE_AMI_OWNER`.
    pub fn from_env() -> BaseAmiFilter {
        let var = |key: &str, default: &str| {
            std::env::var(key)
                .ok()
                .filter(|value| !value.is_empty())
                .unwrap_or_else(|| default.to_string())
        };
        BaseAmiFilter {
            name: var("OBSTACK_BASE_AMI_NAME", DEFAULT_NAME),
            owner: var("OBSTACK_BASE_AMI_OWNER", DEFAULT_OWNER),
        }
    }
}

/// The resolved base image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseAmi {
    pub id: String,
    /// Its exact name: passed to Packer as the `base_ami_name` filter, so Packer starts
    /// from this very image even if a newer one appears mid-bake.
    pub name: String,
    pub owner: String,
}

/// The newest available image matching `filter`.
pub async fn resolve(
    client: &aws_sdk_ec2::Client,
    filter: &BaseAmiFilter,
) -> anyhow::Result<BaseAmi> {
    let output = client
        .describe_images()
        .owners(&filter.owner)
        .filters(Filter::builder().name("name").values(&filter.name).build())
        .filters(Filter::builder().name("state").values("available").build())
        .send()
        .await
        .context("cannot look up the base AMI (ec2:DescribeImages); check your AWS credentials and region")?;
    output
        .images()
        .iter()
        .filter(|image| image.image_id().is_some() && image.name().is_some())
        .max_by(|a, b| {
            a.creation_date()
                .cmp(&b.creation_date())
                .then_with(|| a.name().cmp(&b.name()))
        })
        .map(|image| BaseAmi {
            id: image.image_id().unwrap_or_default().to_string(),
            name: image.name().unwrap_or_default().to_string(),
            owner: filter.owner.clone(),
        })
        .with_context(|| {
            format!(
                "no base AMI named `{}` owned by {} in this region; set OBSTACK_BASE_AMI_NAME / OBSTACK_BASE_AMI_OWNER",
                filter.name, filter.owner
            )
        })
}
