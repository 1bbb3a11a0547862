//! What a bake records on each AMI it built, so later runs can explain themselves: the
//! per-input digests (a dry run says which inputs changed since), and the IMDSv2-only mark.

use aws_sdk_ec2::types::{AttributeValue, Tag};

use crate::ami;
use crate::hash::InputDigests;

/// What to record on a new AMI.
pub struct Marks<'a> {
    pub digests: &'a InputDigests,
    /// Golden AMIs refuse IMDSv1. Smoke AMIs in a local endpoint are never launched.
    pub imdsv2_only: bool,
}

/// Records `marks` on `ami_id`; each failure is returned as a warning with the command
/// that does the same by hand (the AMI itself is good).
pub async fn mark_built(
    client: &aws_sdk_ec2::Client,
    ami_id: &str,
    marks: &Marks<'_>,
) -> Vec<String> {
    let mut warnings = Vec::new();
    let tagged = client
        .create_tags()
        .resources(ami_id)
        .tags(
            Tag::builder()
                .key(ami::TAG_INPUT_DIGESTS)
                .value(marks.digests.to_tag())
                .build(),
        )
        .send()
        .await;
    if let Err(error) = tagged {
        warnings.push(format!(
            "cannot tag {ami_id} with its input digests ({})",
            aws_sdk_ec2::error::DisplayErrorContext(&error)
        ));
    }
    // Packer 1.6.6 has no `imds_support`: mark golden AMIs IMDSv2-only here, so any
    // instance launched from one refuses IMDSv1 even without Terraform's metadata_options.
    if marks.imdsv2_only {
        let marked = client
            .modify_image_attribute()
            .image_id(ami_id)
            .imds_support(AttributeValue::builder().value("v2.0").build())
            .send()
            .await;
        if let Err(error) = marked {
            warnings.push(format!(
                "cannot mark {ami_id} IMDSv2-only ({}); run `aws ec2 modify-image-attribute \
                 --image-id {ami_id} --imds-support v2.0`",
                aws_sdk_ec2::error::DisplayErrorContext(&error)
            ));
        }
    }
    warnings
}
