//! `stack-agent`: the boot agent baked into every image.
//!
//! It reads the instance's own tags (IMDSv2, the EC2 API, or a file), validates every value
//! it will use, renders the role's config templates (role spec and template context in
//! images/README.md) and writes them atomically. `render` runs once at boot and waits for
//! required tags; `watch` keeps polling and restarts only the services whose files changed.
//!
//! Other crates (`xtask up`, image checks) use [`render_role`] and [`write_files`] directly.

mod agent;
mod aws;
mod context;
pub mod data;
mod error;
mod log;
pub mod mount;
mod render;
mod restart;
mod secrets;
mod source;
mod spec;
pub mod tags;
mod value;
mod write;

use std::path::Path;

pub use agent::{Agent, AgentOptions, WaitPolicy};
pub use context::Context;
pub use error::AgentError;
pub use render::RenderedFile;
pub use restart::Restarter;
pub use secrets::{ensure_generated, Created};
pub use source::TagSource;
pub use spec::{RoleSpec, SecretFormat, SecretSpec};
pub use value::{AppFleet, HttpsHost, LokiS3, PeerAddress, SnsTopic};
pub use write::{write_file, write_files, Ownership, WriteOutcome};

/// Renders `role`'s templates from `tags`, in memory. Pure: validates the tags (a bad value
/// is [`AgentError::BadTag`], a missing required peer [`AgentError::MissingTags`]) and writes
/// nothing. Paths in the result are prefixed with `root`. Secrets (SSM, generated) are not
/// part of the result; the binary handles them.
pub fn render_role(
    spec_dir: &Path,
    role: &str,
    tags: &tags::Tags,
    root: &str,
    instance_id: &str,
) -> Result<Vec<RenderedFile>, AgentError> {
    let spec = RoleSpec::load(spec_dir, role)?;
    render_spec(&spec, tags, root, instance_id)
}

/// [`render_role`] for an already loaded spec. Optional secrets are referenced (their
/// `secrets.<stem>_path`) when their tag is present; writing their files is the caller's.
pub fn render_spec(
    spec: &RoleSpec,
    tags: &tags::Tags,
    root: &str,
    instance_id: &str,
) -> Result<Vec<RenderedFile>, AgentError> {
    let context = context::build(spec, tags, root, instance_id)?;
    render::render_files(spec, &context)
}

/// The file a `[[secrets]]` entry would be written to with `value` (as the agent writes what
/// it fetched from SSM), after the entry's `format` check; `xtask up` and tests use it to
/// supply their own values. The error names the tag and never quotes the value.
pub fn secret_file(
    secret: &spec::SecretSpec,
    root: &str,
    value: &str,
) -> Result<RenderedFile, AgentError> {
    let contents =
        secrets::checked(secret, value.to_string()).map_err(|message| AgentError::Secret {
            tag: secret.name_tag.clone(),
            parameter: "(a local value)".into(),
            message,
        })?;
    Ok(secrets::secret_file(secret, root, contents))
}
