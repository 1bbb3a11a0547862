//! Tags through the EC2 API (`DescribeTags` filtered by resource id), for instances whose
//! metadata tags are off. Honours `AWS_ENDPOINT_URL` like every SDK client.

use aws_sdk_ec2::error::DisplayErrorContext;
use aws_sdk_ec2::types::Filter;

use crate::error::AgentError;
use crate::tags::Tags;

pub async fn tags(client: &aws_sdk_ec2::Client, instance_id: &str) -> Result<Tags, AgentError> {
    let filter = Filter::builder()
        .name("resource-id")
        .values(instance_id)
        .build();
    let descriptions = client
        .describe_tags()
        .filters(filter)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .map_err(|e| AgentError::TagSource {
            source_name: "ec2".into(),
            message: format!(
                "DescribeTags for {instance_id}: {}",
                DisplayErrorContext(&e)
            ),
        })?;
    Ok(descriptions
        .into_iter()
        .filter_map(|tag| Some((tag.key?, tag.value.unwrap_or_default())))
        .collect())
}
