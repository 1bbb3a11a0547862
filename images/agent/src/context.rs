//! Turns raw tags into the validated template context (table in images/README.md).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::AgentError;
use crate::spec::{rooted, secret_stem, RoleSpec};
use crate::tags::{self, Tags};
use crate::value::{self, PeerAddress};

/// What every template sees. Field names are the template variables.
#[derive(Debug, Clone, Serialize)]
pub struct Context {
    pub role: String,
    pub instance_id: String,
    pub root: String,
    pub bind_address: String,
    /// Only peers whose tag is present; test optional ones with `is defined`.
    pub peers: BTreeMap<String, PeerAddress>,
    /// `<file-stem>_path` → rendered path of each secret file (fetched or generated).
    pub secrets: BTreeMap<String, String>,
}

/// Validates every tag this role reads and builds the context.
///
/// Bad values are reported before missing ones: a bad value never fixes itself, so waiting
/// for the other tags would only delay the error. Missing required peers are an error here;
/// the tags naming secrets are checked when present but their absence is left to the caller,
/// which is the one fetching secrets.
pub fn build(
    spec: &RoleSpec,
    tags: &Tags,
    root: &str,
    instance_id: &str,
) -> Result<Context, AgentError> {
    let bind_address = match tags.get(tags::BIND_ADDRESS) {
        Some(raw) => value::parse_bind_address(raw)
            .map_err(|reason| AgentError::bad_tag(tags::BIND_ADDRESS, reason))?
            .to_string(),
        None => tags::DEFAULT_BIND_ADDRESS.to_string(),
    };
    for secret in &spec.secrets {
        if let Some(name) = tags.get(&secret.name_tag) {
            value::check_parameter_name(name)
                .map_err(|reason| AgentError::bad_tag(&secret.name_tag, reason))?;
        }
    }
    let mut peers = BTreeMap::new();
    let mut missing = Vec::new();
    for (name, peer) in &spec.peers {
        let key = tags::peer_key(name);
        match tags.get(&key) {
            Some(raw) => {
                let address = PeerAddress::parse(raw, peer.port)
                    .map_err(|reason| AgentError::bad_tag(&key, reason))?;
                peers.insert(name.clone(), address);
            }
            None if peer.required => missing.push(key),
            None => {}
        }
    }
    if !missing.is_empty() {
        return Err(AgentError::MissingTags(missing));
    }
    let mut secrets = BTreeMap::new();
    for path in spec.secret_paths() {
        // The spec was checked on load, so every secret path has a stem.
        let stem = secret_stem(path).map_err(|m| AgentError::spec(&spec.dir, m))?;
        secrets.insert(stem, rooted(root, path).display().to_string());
    }
    Ok(Context {
        role: spec.role.clone(),
        instance_id: instance_id.to_string(),
        root: root.trim_end_matches('/').to_string(),
        bind_address,
        peers,
        secrets,
    })
}

/// Every required tag (peers and secret names) absent from `tags`, for the wait loop.
pub fn missing_tags(spec: &RoleSpec, tags: &Tags) -> Vec<String> {
    spec.required_tags()
        .into_iter()
        .filter(|key| !tags.contains_key(key))
        .collect()
}
