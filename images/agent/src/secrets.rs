//! Secrets: SSM SecureStrings named by a tag, and random secrets generated once.
//! Their contents only ever live in memory and in their 0600 files, never in a log line.

use aws_sdk_ssm::error::DisplayErrorContext;
use rand::RngCore;

use crate::error::AgentError;
use crate::render::RenderedFile;
use crate::spec::{rooted, RoleSpec, SecretSpec};
use crate::tags::Tags;
use crate::value::{self, SecretText};
use crate::write::{self, Ownership};

/// Fetches every `[[secrets]]` entry (decrypted). The caller has checked that the name tags
/// are present and valid.
pub async fn fetch(
    spec: &RoleSpec,
    tags: &Tags,
    root: &str,
    ssm: &aws_sdk_ssm::Client,
) -> Result<Vec<RenderedFile>, AgentError> {
    let mut files = Vec::with_capacity(spec.secrets.len());
    for secret in &spec.secrets {
        let parameter = parameter_name(secret, tags)?;
        let value = ssm
            .get_parameter()
            .name(parameter)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| secret_error(secret, parameter, DisplayErrorContext(&e)))?
            .parameter
            .and_then(|p| p.value)
            .ok_or_else(|| secret_error(secret, parameter, "the parameter has no value"))?;
        files.push(RenderedFile {
            path: rooted(root, &secret.path),
            contents: value,
            mode: secret.mode.0,
            owner: secret.owner.clone(),
            group: secret.group.clone(),
            services: secret.services.clone(),
            sensitive: true,
        });
    }
    Ok(files)
}

/// Fetches every `[[secret_values]]` entry whose name tag is present (decrypted), checked
/// to be safe inside a quoted config string. The caller has validated the name tags.
pub async fn fetch_values(
    spec: &RoleSpec,
    tags: &Tags,
    ssm: &aws_sdk_ssm::Client,
) -> Result<std::collections::BTreeMap<String, SecretText>, AgentError> {
    let mut values = std::collections::BTreeMap::new();
    for wanted in &spec.secret_values {
        let Some(parameter) = tags.get(&wanted.name_tag) else {
            continue;
        };
        let error = |message: String| AgentError::Secret {
            tag: wanted.name_tag.clone(),
            parameter: parameter.clone(),
            message,
        };
        let text = ssm
            .get_parameter()
            .name(parameter)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| error(DisplayErrorContext(&e).to_string()))?
            .parameter
            .and_then(|p| p.value)
            .ok_or_else(|| error("the parameter has no value".into()))?;
        let text = text.trim_end_matches(['\n', '\r']);
        value::check_inline_secret(text)
            .map_err(|reason| error(format!("{reason}; store the bare URL as a SecureString")))?;
        values.insert(wanted.name.clone(), SecretText::new(text));
    }
    Ok(values)
}

/// The parameter name held by the secret's tag.
pub fn parameter_name<'t>(secret: &SecretSpec, tags: &'t Tags) -> Result<&'t str, AgentError> {
    tags.get(&secret.name_tag)
        .map(String::as_str)
        .ok_or_else(|| AgentError::MissingTags(vec![secret.name_tag.clone()]))
}

fn secret_error(secret: &SecretSpec, parameter: &str, message: impl ToString) -> AgentError {
    AgentError::Secret {
        tag: secret.name_tag.clone(),
        parameter: parameter.to_string(),
        message: message.to_string(),
    }
}

/// A generated secret that was just created (and so may need its services restarted).
#[derive(Debug, Clone)]
pub struct Created {
    pub path: std::path::PathBuf,
    pub services: Vec<String>,
}

/// Creates each `[[generated]]` file that does not exist yet: hex of `bytes` random bytes
/// from the OS generator. Existing files are never touched.
pub fn ensure_generated(
    spec: &RoleSpec,
    root: &str,
    ownership: Ownership,
) -> Result<Vec<Created>, AgentError> {
    let mut created = Vec::new();
    for generated in &spec.generated {
        let path = rooted(root, &generated.path);
        if path.exists() {
            continue;
        }
        let mut bytes = vec![0u8; generated.bytes];
        rand::rng().fill_bytes(&mut bytes);
        let file = RenderedFile {
            path: path.clone(),
            contents: hex::encode(&bytes),
            mode: generated.mode.0,
            owner: generated.owner.clone(),
            group: generated.group.clone(),
            services: generated.services.clone(),
            sensitive: true,
        };
        if write::create_new(&file, ownership)? {
            created.push(Created {
                path,
                services: generated.services.clone(),
            });
        }
    }
    Ok(created)
}
