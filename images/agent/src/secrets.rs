//! Secrets: SSM SecureStrings named by a tag, and random secrets generated once.
//! Their contents only ever live in memory and in their 0600 files, never in a log line.

use aws_sdk_ssm::error::DisplayErrorContext;
use rand::RngCore;

use crate::error::AgentError;
use crate::render::RenderedFile;
use crate::spec::{rooted, RoleSpec, SecretFormat, SecretSpec};
use crate::tags::Tags;
use crate::value;
use crate::write::{self, Ownership};

/// Fetches every `[[secrets]]` entry this instance wants (decrypted; an optional one only
/// when its tag is present), each checked against its `format`. The caller has checked that
/// the name tags are valid and the required ones present.
pub async fn fetch(
    spec: &RoleSpec,
    tags: &Tags,
    root: &str,
    ssm: &aws_sdk_ssm::Client,
) -> Result<Vec<RenderedFile>, AgentError> {
    let mut files = Vec::with_capacity(spec.secrets.len());
    for secret in spec.secrets.iter().filter(|s| s.is_wanted(tags)) {
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
        let contents = checked(secret, value).map_err(|m| secret_error(secret, parameter, m))?;
        files.push(secret_file(secret, root, contents));
    }
    Ok(files)
}

/// The file a fetched secret is written to (0600 unless the spec says otherwise).
pub fn secret_file(secret: &SecretSpec, root: &str, contents: String) -> RenderedFile {
    RenderedFile {
        path: rooted(root, &secret.path),
        contents,
        mode: secret.mode.0,
        owner: secret.owner.clone(),
        group: secret.group.clone(),
        services: secret.services.clone(),
        sensitive: true,
    }
}

/// A fetched value as it will be written, or why it is refused (never quoting the value):
/// a `url` loses its trailing line break, then must be an http(s) URL to none of the
/// `refuse_hosts`.
pub fn checked(secret: &SecretSpec, value: String) -> Result<String, String> {
    match secret.format {
        SecretFormat::Text => Ok(value),
        SecretFormat::Url => {
            let url = value.trim_end_matches(['\n', '\r']);
            value::check_secret_url(url)
                .map_err(|reason| format!("{reason}; store the bare URL as a SecureString"))?;
            let host = value::url_host(url).unwrap_or_default();
            if let Some(why) = secret.refuse_hosts.get(&host) {
                return Err(format!("the URL points to {host}: {why}"));
            }
            Ok(url.to_string())
        }
    }
}

/// Optional secret files whose tag is gone: the config no longer names them, and a
/// credential nobody uses should not stay on disk. (path, services).
pub fn orphaned(
    spec: &RoleSpec,
    tags: &Tags,
    root: &str,
) -> Vec<(std::path::PathBuf, Vec<String>)> {
    spec.secrets
        .iter()
        .filter(|s| !s.is_wanted(tags))
        .map(|s| (rooted(root, &s.path), s.services.clone()))
        .filter(|(path, _)| path.exists())
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(extra: &str) -> SecretSpec {
        toml::from_str(&format!(
            "name_tag = \"obstack:hook\"\npath = \"/etc/x/hook_url\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn a_url_secret_loses_its_line_break_and_refuses_what_is_not_a_url() {
        let url = secret("format = \"url\"\n");
        assert_eq!(
            checked(&url, "https://hooks.example.com/T0/B0/x\n".into()).as_deref(),
            Ok("https://hooks.example.com/T0/B0/x")
        );
        for bad in ["hunter2", "https://a b/x", "", "https://x\ny"] {
            let error = checked(&url, bad.into()).unwrap_err();
            assert!(error.contains("store the bare URL"), "{bad:?}: {error}");
        }
        // Text is written as fetched.
        let text = secret("");
        assert_eq!(checked(&text, "pw\n".into()).as_deref(), Ok("pw\n"));
    }

    #[test]
    fn a_refused_host_names_the_fix_and_not_the_url() {
        let hook = secret(
            "format = \"url\"\nrefuse_hosts = { \"hooks.slack.com\" = \"use tag obstack:slack\" }\n",
        );
        for slack in [
            "https://hooks.slack.com/services/T0/B0/SECRET",
            "https://Hooks.Slack.com:443/services/T0/B0/SECRET",
        ] {
            let error = checked(&hook, slack.into()).unwrap_err();
            assert!(
                error.contains("hooks.slack.com: use tag obstack:slack"),
                "{error}"
            );
            assert!(!error.contains("SECRET"), "{error}");
        }
        assert!(checked(&hook, "https://events.example.com/v2/enqueue".into()).is_ok());
    }
}
