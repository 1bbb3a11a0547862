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

use std::collections::BTreeMap;
use std::path::Path;

pub use agent::{Agent, AgentOptions, WaitPolicy};
pub use context::Context;
pub use error::AgentError;
pub use render::RenderedFile;
pub use restart::Restarter;
pub use secrets::{ensure_generated, Created};
pub use source::TagSource;
pub use spec::RoleSpec;
pub use value::{AppFleet, HttpsHost, LokiS3, PeerAddress, SecretText, SnsTopic};
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

/// [`render_role`] for an already loaded spec.
pub fn render_spec(
    spec: &RoleSpec,
    tags: &tags::Tags,
    root: &str,
    instance_id: &str,
) -> Result<Vec<RenderedFile>, AgentError> {
    render_spec_with_secrets(spec, tags, &BTreeMap::new(), root, instance_id)
}

/// [`render_spec`] with the values of the spec's `[[secret_values]]` given by the caller
/// (on EC2 the agent fetches them from SSM; `xtask up` and tests supply their own), by
/// name. Each is checked like a fetched one; a file holding one comes back sensitive.
pub fn render_spec_with_secrets(
    spec: &RoleSpec,
    tags: &tags::Tags,
    secret_values: &BTreeMap<String, String>,
    root: &str,
    instance_id: &str,
) -> Result<Vec<RenderedFile>, AgentError> {
    let mut context = context::build(spec, tags, root, instance_id)?;
    for (name, text) in secret_values {
        let wanted = spec
            .secret_values
            .iter()
            .find(|v| &v.name == name)
            .ok_or_else(|| {
                AgentError::spec(
                    &spec.dir,
                    format!("has no [[secret_values]] named `{name}`"),
                )
            })?;
        value::check_inline_secret(text).map_err(|message| AgentError::Secret {
            tag: wanted.name_tag.clone(),
            parameter: format!("(local value of {name})"),
            message,
        })?;
        context
            .secret_values
            .insert(name.clone(), SecretText::new(text.as_str()));
    }
    render::render_files(spec, &context)
}
