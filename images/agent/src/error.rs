//! The agent's typed errors. Each variant maps to one of the binary's exit codes, so a
//! systemd unit (or a test) can tell "still waiting" from "bad input" from "broken image".

use std::path::PathBuf;

/// Everything that can go wrong while turning tags into files.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The role spec (role.toml) or one of its templates could not be read or is invalid.
    /// That is a broken image, not a deployment problem.
    #[error("role spec {path}: {message}")]
    Spec { path: PathBuf, message: String },

    /// A tag the role requires is absent. `render` keeps waiting while this is the error.
    #[error("missing required tag(s): {}", .0.join(", "))]
    MissingTags(Vec<String>),

    /// `render` gave up waiting for required tags.
    #[error("timed out after {}s waiting for tag(s): {}", .waited.as_secs_f64(), .missing.join(", "))]
    TimedOut {
        waited: std::time::Duration,
        missing: Vec<String>,
    },

    /// A tag is present but its value is unusable. Never retried: the value would not fix itself.
    #[error("tag `{key}` has a bad value: {reason}")]
    BadTag { key: String, reason: String },

    /// A template failed to render (undefined variable, syntax error, ...).
    #[error("template {template}: {message}")]
    Template { template: String, message: String },

    /// Reading the tags failed (IMDS refused us, EC2 API error, unreadable tag file).
    #[error("tag source {source_name}: {message}")]
    TagSource {
        source_name: String,
        message: String,
    },

    /// Fetching a secret from SSM Parameter Store failed. The message never holds the value.
    #[error("SSM parameter `{parameter}` (from tag `{tag}`): {message}")]
    Secret {
        tag: String,
        parameter: String,
        message: String,
    },

    /// Writing an output file failed.
    #[error("writing {path}: {message}")]
    Write { path: PathBuf, message: String },

    /// `mount`: the data volume's device never appeared; nothing was mounted.
    #[error(
        "data volume {volume} did not appear within {}s (no {link}, no NVMe device with serial \
         {serial}); check that the volume is attached to this instance (aws_volume_attachment)",
        .waited.as_secs_f64()
    )]
    VolumeMissing {
        volume: String,
        waited: std::time::Duration,
        link: String,
        serial: String,
    },

    /// `mount`: the data volume holds something that is not the role's filesystem. It is
    /// never formatted and not mounted.
    #[error(
        "data volume {volume} ({device}) holds {found}; it is neither formatted nor mounted. \
         Attach the role's own volume, or, if nothing on it is needed, erase it yourself \
         (wipefs -a {device}) and reboot"
    )]
    VolumeForeign {
        volume: String,
        device: String,
        found: String,
    },

    /// `mount`: the data volume is smaller than the role's `[data] min_size_gib`.
    #[error(
        "data volume {volume} ({device}) is {size}, below the {min_gib} GiB this role needs \
         (role.toml [data] min_size_gib); give it a bigger volume (Terraform \
         data_volume_size_gb); nothing was mounted"
    )]
    VolumeTooSmall {
        volume: String,
        device: String,
        size: String,
        min_gib: u64,
    },

    /// `mount`: the data volume's filesystem was not cleanly unmounted and `e2fsck -p` found
    /// errors it does not repair without a person answering its questions. It is neither
    /// mounted nor formatted: that is a person's call.
    #[error(
        "data volume {volume} ({device}): its filesystem has errors that e2fsck -p does not \
         repair on its own ({detail}); it was neither mounted nor formatted. Repair it by hand \
         on this instance (SSM session): e2fsck -f {device}, then reboot"
    )]
    NeedsRepair {
        volume: String,
        device: String,
        detail: String,
    },

    /// `mount`: formatting, mounting or preparing the data volume failed.
    #[error("data volume {volume}: {message}")]
    Mount { volume: String, message: String },
}

impl AgentError {
    /// Whether waiting could help: tags may still be added, AWS may come back.
    /// A bad value, a broken template or a failed write will not fix themselves.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            AgentError::MissingTags(_) | AgentError::TagSource { .. } | AgentError::Secret { .. }
        )
    }

    pub(crate) fn spec(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        AgentError::Spec {
            path: path.into(),
            message: message.to_string(),
        }
    }

    pub(crate) fn write(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        AgentError::Write {
            path: path.into(),
            message: message.to_string(),
        }
    }

    pub(crate) fn bad_tag(key: &str, reason: impl Into<String>) -> Self {
        AgentError::BadTag {
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}
