//! Where tags come from: instance metadata (IMDSv2), the EC2 API, or a local file.

mod ec2;
mod file;
mod imds;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use tokio::sync::OnceCell;

use crate::aws::AwsConfig;
use crate::error::AgentError;
use crate::tags::Tags;

/// The `--tags-from` choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagSource {
    /// Instance metadata tags through IMDSv2 (the default on EC2).
    Imds,
    /// `DescribeTags` for the instance id, for instances without metadata tags.
    Ec2,
    /// A flat TOML or JSON key/value file (local runs and tests).
    File(PathBuf),
}

impl FromStr for TagSource {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "imds" => Ok(TagSource::Imds),
            "ec2" => Ok(TagSource::Ec2),
            _ => match text.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(TagSource::File(PathBuf::from(path))),
                _ => Err(format!(
                    "unknown tag source `{text}`; use `imds`, `ec2` or `file:PATH`"
                )),
            },
        }
    }
}

impl fmt::Display for TagSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TagSource::Imds => f.write_str("imds"),
            TagSource::Ec2 => f.write_str("ec2"),
            TagSource::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

/// Reads tags from one source, creating its clients once and reusing them across polls.
pub struct TagReader {
    source: TagSource,
    aws: Arc<AwsConfig>,
    imds: OnceCell<imds::Imds>,
    instance_id: OnceCell<String>,
}

impl TagReader {
    /// `instance_id` overrides the one IMDS would report (and is `local` for files).
    pub fn new(source: TagSource, instance_id: Option<String>, aws: Arc<AwsConfig>) -> TagReader {
        let known_id = match (&source, instance_id) {
            (_, Some(id)) => OnceCell::new_with(Some(id)),
            (TagSource::File(_), None) => OnceCell::new_with(Some("local".to_string())),
            _ => OnceCell::new(),
        };
        TagReader {
            source,
            aws,
            imds: OnceCell::new(),
            instance_id: known_id,
        }
    }

    pub fn source(&self) -> &TagSource {
        &self.source
    }

    /// The instance id: from `--instance-id`, else from IMDS (asked once).
    pub async fn instance_id(&self) -> Result<String, AgentError> {
        self.instance_id
            .get_or_try_init(|| async { self.imds().await.instance_id().await })
            .await
            .cloned()
    }

    /// Every tag of this instance, fresh from the source.
    pub async fn read(&self) -> Result<Tags, AgentError> {
        match &self.source {
            TagSource::Imds => self.imds().await.tags().await,
            TagSource::Ec2 => {
                let id = self.instance_id().await?;
                ec2::tags(self.aws.ec2().await, &id).await
            }
            TagSource::File(path) => file::tags(path),
        }
    }

    async fn imds(&self) -> &imds::Imds {
        self.imds.get_or_init(|| async { imds::Imds::new() }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_from_the_flag() {
        assert_eq!("imds".parse(), Ok(TagSource::Imds));
        assert_eq!("ec2".parse(), Ok(TagSource::Ec2));
        assert_eq!(
            "file:/t/x.toml".parse(),
            Ok(TagSource::File("/t/x.toml".into()))
        );
        assert!("file:".parse::<TagSource>().is_err());
        assert!("imdsv1".parse::<TagSource>().is_err());
    }
}
