//! Instance metadata tags through aws-config's IMDS client, which speaks IMDSv2 only: every
//! request carries a session token from `PUT /latest/api/token`, and if no token is issued
//! the client fails rather than falling back to IMDSv1. The endpoint follows the standard
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT` override.

use std::time::Duration;

use aws_config::imds::client::error::ImdsError;
use aws_config::imds::Client;

use crate::error::AgentError;
use crate::tags::{self, Tags};

const TAGS_PATH: &str = "/latest/meta-data/tags/instance";
const INSTANCE_ID_PATH: &str = "/latest/meta-data/instance-id";

pub struct Imds {
    client: Client,
}

impl Imds {
    pub fn new() -> Imds {
        // Short timeouts: IMDS is link-local, and `render` retries on its own schedule.
        let client = Client::builder()
            .max_attempts(2)
            .connect_timeout(Duration::from_secs(1))
            .read_timeout(Duration::from_secs(2))
            .build();
        Imds { client }
    }

    pub async fn instance_id(&self) -> Result<String, AgentError> {
        let id = self.get(INSTANCE_ID_PATH).await?;
        Ok(id.trim().to_string())
    }

    /// Lists the tag keys, then reads each value.
    pub async fn tags(&self) -> Result<Tags, AgentError> {
        let listing = self.get(TAGS_PATH).await?;
        let mut tags = Tags::new();
        for key in listing.lines().map(str::trim).filter(|k| !k.is_empty()) {
            // IMDS only lists valid keys; checking keeps a strange listing out of the URL.
            tags::check_key(key).map_err(source_error)?;
            let value = self.get(&format!("{TAGS_PATH}/{key}")).await?;
            tags.insert(key.to_string(), value);
        }
        Ok(tags)
    }

    async fn get(&self, path: &str) -> Result<String, AgentError> {
        match self.client.get(path).await {
            Ok(value) => Ok(value.into()),
            Err(ImdsError::ErrorResponse(e)) if e.response().status().as_u16() == 404 => {
                Err(source_error(if path.starts_with(TAGS_PATH) {
                    format!(
                        "{path} not found: instance metadata tags look disabled \
                         (enable InstanceMetadataTags or use --tags-from ec2)"
                    )
                } else {
                    format!("{path} not found")
                }))
            }
            Err(e @ ImdsError::FailedToLoadToken(_)) => Err(source_error(format!(
                "no IMDSv2 session token ({}); refusing to continue without one",
                e.source_chain()
            ))),
            Err(e) => Err(source_error(format!("{path}: {}", e.source_chain()))),
        }
    }
}

fn source_error(message: impl Into<String>) -> AgentError {
    AgentError::TagSource {
        source_name: "imds".into(),
        message: message.into(),
    }
}

/// Display of an error with its causes, on one line.
trait SourceChain {
    fn source_chain(&self) -> String;
}

impl<E: std::error::Error> SourceChain for E {
    fn source_chain(&self) -> String {
        let mut message = self.to_string();
        let mut source = self.source();
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        message
    }
}
