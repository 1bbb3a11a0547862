//! The role spec, `<spec-dir>/<role>/role.toml` (format in images/README.md): which peers a
//! role reads, which templates it renders to which files, and which secrets it needs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::data::DataSpec;
use crate::error::AgentError;
use crate::tags;

/// File name of a role's spec inside its directory.
pub const SPEC_FILE: &str = "role.toml";

/// A parsed and checked role spec.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    pub role: String,
    #[serde(default)]
    pub peers: BTreeMap<String, PeerSpec>,
    #[serde(default)]
    pub files: Vec<FileSpec>,
    #[serde(default)]
    pub secrets: Vec<SecretSpec>,
    #[serde(default)]
    pub generated: Vec<GeneratedSpec>,
    /// Where the role keeps its state: the EBS data volume the `mount` step mounts.
    #[serde(default)]
    pub data: Option<DataSpec>,
    /// What the image ships and runs: read by xtask and the image checks, not the agent.
    #[serde(default, rename = "image")]
    _image: serde::de::IgnoredAny,
    #[serde(default, rename = "services")]
    _services: serde::de::IgnoredAny,
    /// The service users' fixed ids: the provisioners' business; the agent resolves owners
    /// by name on the instance.
    #[serde(default, rename = "users")]
    _users: serde::de::IgnoredAny,
    /// How `cargo xtask deploy` rolls the role out: xtask's, not the agent's.
    #[serde(default, rename = "deploy")]
    _deploy: serde::de::IgnoredAny,
    /// The directory holding role.toml; template paths are relative to it.
    #[serde(skip)]
    pub dir: PathBuf,
}

/// A peer read from the tag `obstack:peer:<name>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSpec {
    /// Used when the tag's value has no port.
    pub port: u16,
    /// `render` waits for a required peer and never renders without it.
    #[serde(default)]
    pub required: bool,
    /// A required peer is not required on an instance carrying this tag (Prometheus' app
    /// peer when the app is a fleet found by EC2 discovery: there is no single address).
    #[serde(default)]
    pub unless_tag: Option<String>,
}

impl PeerSpec {
    /// Whether an instance with `tags` must have this peer's address tag.
    pub fn is_required(&self, tags: &tags::Tags) -> bool {
        self.required
            && !self
                .unless_tag
                .as_ref()
                .is_some_and(|key| tags.contains_key(key))
    }
}

/// A file rendered from a template.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub template: PathBuf,
    pub path: String,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default = "default_file_mode")]
    pub mode: Mode,
    #[serde(default)]
    pub services: Vec<String>,
}

/// A secret fetched from SSM Parameter Store; the tag `name_tag` holds the parameter name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSpec {
    pub name_tag: String,
    pub path: String,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default = "default_secret_mode")]
    pub mode: Mode,
    #[serde(default)]
    pub services: Vec<String>,
    /// Fetched only when `name_tag` is present, and never waited for (a webhook URL the
    /// operator may or may not have). Templates see `secrets.<stem>_path` only then.
    #[serde(default)]
    pub optional: bool,
    /// What the parameter must hold; checked before anything is written.
    #[serde(default)]
    pub format: SecretFormat,
    /// With `format = "url"`: hosts the URL must not point to, each with the reason and fix
    /// (a Slack incoming webhook where Alertmanager would post its own JSON).
    #[serde(default)]
    pub refuse_hosts: BTreeMap<String, String>,
}

impl SecretSpec {
    /// Whether this instance needs the secret: always, or (optional) when its tag is there.
    pub fn is_wanted(&self, tags: &tags::Tags) -> bool {
        !self.optional || tags.contains_key(&self.name_tag)
    }
}

/// The shape a `[[secrets]]` value must have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretFormat {
    /// Anything (a password); written as fetched.
    #[default]
    Text,
    /// One `http://` or `https://` URL; a trailing line break is dropped.
    Url,
}

/// A random secret created once (hex of `bytes` random bytes) and never overwritten.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratedSpec {
    pub path: String,
    pub bytes: usize,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default = "default_secret_mode")]
    pub mode: Mode,
    #[serde(default)]
    pub services: Vec<String>,
}

/// A Unix file mode, written in role.toml as an octal string (`"0640"`) or a TOML integer
/// (`0o640`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "ModeRepr")]
pub struct Mode(pub u32);

#[derive(Deserialize)]
#[serde(untagged)]
enum ModeRepr {
    Text(String),
    Number(u32),
}

impl TryFrom<ModeRepr> for Mode {
    type Error = String;

    fn try_from(repr: ModeRepr) -> Result<Self, Self::Error> {
        let bits = match repr {
            ModeRepr::Number(bits) => bits,
            ModeRepr::Text(text) => u32::from_str_radix(&text, 8)
                .map_err(|_| format!("mode `{text}` is not an octal number like \"0640\""))?,
        };
        if bits > 0o7777 {
            return Err(format!("mode {bits:o} is larger than 7777"));
        }
        Ok(Mode(bits))
    }
}

fn default_file_mode() -> Mode {
    Mode(0o644)
}

fn default_secret_mode() -> Mode {
    Mode(0o600)
}

impl RoleSpec {
    /// Loads and checks `<spec_dir>/<role>/role.toml`.
    pub fn load(spec_dir: &Path, role: &str) -> Result<RoleSpec, AgentError> {
        let dir = spec_dir.join(role);
        let path = dir.join(SPEC_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            AgentError::spec(
                &path,
                format!("cannot read it ({e}); is `{role}` a role under --spec-dir?"),
            )
        })?;
        let mut spec: RoleSpec = toml::from_str(&text).map_err(|e| AgentError::spec(&path, e))?;
        spec.dir = dir;
        spec.check()
            .map_err(|message| AgentError::spec(&path, message))?;
        if spec.role != role {
            return Err(AgentError::spec(
                &path,
                format!("declares role `{}` but was loaded as `{role}`", spec.role),
            ));
        }
        Ok(spec)
    }

    /// The tags `render` must see before it may write anything: required peers and the
    /// tags naming secrets that are not optional.
    pub fn required_tags(&self) -> Vec<String> {
        let peers = self
            .peers
            .iter()
            .filter(|(_, peer)| peer.required)
            .map(|(name, _)| tags::peer_key(name));
        let secrets = self
            .secrets
            .iter()
            .filter(|s| !s.optional)
            .map(|s| s.name_tag.clone());
        peers.chain(secrets).collect()
    }

    /// Internal consistency: valid tag keys, absolute unique output paths, unique secret stems.
    fn check(&self) -> Result<(), String> {
        for (name, peer) in &self.peers {
            tags::check_key(&tags::peer_key(name))?;
            if let Some(key) = &peer.unless_tag {
                tags::check_key(key)?;
                if !peer.required {
                    return Err(format!(
                        "peer `{name}` has `unless_tag` but is not required; the tag only \
                         excuses a required peer: set `required = true` or drop `unless_tag`"
                    ));
                }
            }
        }
        for secret in &self.secrets {
            tags::check_key(&secret.name_tag)?;
            if !secret.refuse_hosts.is_empty() && secret.format != SecretFormat::Url {
                return Err(format!(
                    "secret `{}` has `refuse_hosts` but is not `format = \"url\"`",
                    secret.path
                ));
            }
            if let Some(host) = secret
                .refuse_hosts
                .keys()
                .find(|h| h.is_empty() || *h != &h.to_ascii_lowercase())
            {
                return Err(format!(
                    "secret `{}`: refused host `{host}` must be a lowercase host name",
                    secret.path
                ));
            }
        }
        let outputs = self
            .files
            .iter()
            .map(|f| f.path.as_str())
            .chain(self.secrets.iter().map(|s| s.path.as_str()))
            .chain(self.generated.iter().map(|g| g.path.as_str()));
        let mut seen = BTreeSet::new();
        for path in outputs {
            check_output_path(path)?;
            if !seen.insert(path) {
                return Err(format!("output path `{path}` is listed twice"));
            }
        }
        let mut stems = BTreeSet::new();
        for path in self.secret_paths() {
            let stem = secret_stem(path)?;
            if !stems.insert(stem.clone()) {
                return Err(format!(
                    "two secret files share the stem `{stem}`; templates could not tell them apart"
                ));
            }
        }
        for file in &self.files {
            if file.template.is_absolute()
                || file
                    .template
                    .components()
                    .any(|c| c == Component::ParentDir)
            {
                return Err(format!(
                    "template `{}` must be a relative path inside the role directory",
                    file.template.display()
                ));
            }
        }
        if let Some(data) = &self.data {
            data.check()?;
        }
        for generated in &self.generated {
            if generated.bytes == 0 || generated.bytes > 4096 {
                return Err(format!(
                    "generated secret `{}` asks for {} bytes; use 1 to 4096",
                    generated.path, generated.bytes
                ));
            }
        }
        Ok(())
    }

    /// Paths of every secret file, fetched or generated (they share the `secrets` context).
    pub fn secret_paths(&self) -> impl Iterator<Item = &str> {
        self.secrets
            .iter()
            .map(|s| s.path.as_str())
            .chain(self.generated.iter().map(|g| g.path.as_str()))
    }

    /// Paths of the secret files an instance with `tags` has: every generated one, and each
    /// fetched one it wants (an optional one only when its tag is present).
    pub fn wanted_secret_paths<'a>(
        &'a self,
        tags: &'a tags::Tags,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.secrets
            .iter()
            .filter(|s| s.is_wanted(tags))
            .map(|s| s.path.as_str())
            .chain(self.generated.iter().map(|g| g.path.as_str()))
    }
}

/// The template variable name a secret file is known by: its file stem + `_path`.
pub fn secret_stem(path: &str) -> Result<String, String> {
    Path::new(path)
        .file_stem()
        .and_then(|s| s.to_str())
        .map(|stem| format!("{stem}_path"))
        .ok_or_else(|| format!("secret path `{path}` has no file name"))
}

fn check_output_path(path: &str) -> Result<(), String> {
    let parsed = Path::new(path);
    if !parsed.is_absolute() {
        return Err(format!("output path `{path}` must be absolute"));
    }
    if parsed.components().any(|c| c == Component::ParentDir) {
        return Err(format!("output path `{path}` must not contain `..`"));
    }
    if path.ends_with('/') {
        return Err(format!(
            "output path `{path}` names a directory, not a file"
        ));
    }
    Ok(())
}

/// Prefixes an absolute output path with `root` (`""` on EC2).
pub fn rooted(root: &str, path: &str) -> PathBuf {
    PathBuf::from(format!("{}{path}", root.trim_end_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(), String> {
        let spec: RoleSpec = toml::from_str(text).map_err(|e| e.to_string())?;
        spec.check()
    }

    #[test]
    fn the_readme_example_parses() {
        let text = r#"
            role = "grafana"
            [peers.prometheus]
            port = 9090
            required = true
            [[files]]
            template = "templates/datasources.yaml.j2"
            path = "/etc/grafana/provisioning/datasources/obstack.yaml"
            owner = "root"
            group = "grafana"
            mode = "0640"
            services = ["grafana-server.service"]
            [[secrets]]
            name_tag = "obstack:grafana-admin-password-param"
            path = "/etc/grafana/secrets/admin_password"
            [[generated]]
            path = "/var/lib/grafana/secret_key"
            bytes = 32
            mode = 0o600
        "#;
        let spec: RoleSpec = toml::from_str(text).unwrap();
        spec.check().unwrap();
        assert_eq!(spec.files[0].mode, Mode(0o640));
        assert_eq!(spec.generated[0].mode, Mode(0o600));
        assert_eq!(
            spec.required_tags(),
            [
                "obstack:peer:prometheus",
                "obstack:grafana-admin-password-param"
            ]
        );
    }

    #[test]
    fn inconsistent_specs_are_refused() {
        let relative = "role = \"x\"\n[[files]]\ntemplate = \"t\"\npath = \"etc/x\"";
        assert!(parse(relative).unwrap_err().contains("absolute"));
        let twice = "role = \"x\"\n[[files]]\ntemplate = \"t\"\npath = \"/x\"\n\
                     [[generated]]\npath = \"/x\"\nbytes = 4";
        assert!(parse(twice).unwrap_err().contains("twice"));
        let bad_peer = "role = \"x\"\n[peers.\"a b\"]\nport = 1";
        assert!(parse(bad_peer).unwrap_err().contains("tag key"));
        let escape = "role = \"x\"\n[[files]]\ntemplate = \"../t\"\npath = \"/x\"";
        assert!(parse(escape).unwrap_err().contains("relative"));
        assert!(parse("role = \"x\"\nunknown = 1").is_err());
        assert!(
            parse("role = \"x\"\n[[files]]\ntemplate = \"t\"\npath = \"/x\"\nmode = \"9\"")
                .is_err()
        );
    }

    #[test]
    fn optional_secrets_are_not_required_and_refuse_hosts_only_for_urls() {
        let text = "role = \"x\"\n[[secrets]]\nname_tag = \"obstack:hook\"\n\
                    path = \"/etc/x/hook_url\"\noptional = true\nformat = \"url\"\n\
                    refuse_hosts = { \"hooks.example.com\" = \"use the other tag\" }\n";
        let spec: RoleSpec = toml::from_str(text).unwrap();
        spec.check().unwrap();
        assert!(spec.required_tags().is_empty());
        let secret = &spec.secrets[0];
        assert_eq!(secret.format, SecretFormat::Url);
        assert!(!secret.is_wanted(&tags::Tags::new()));
        let tagged = tags::Tags::from([("obstack:hook".into(), "/p".into())]);
        assert!(secret.is_wanted(&tagged));
        let required = text.replace("optional = true\n", "");
        let spec: RoleSpec = toml::from_str(&required).unwrap();
        assert_eq!(spec.required_tags(), ["obstack:hook"]);
        assert!(spec.secrets[0].is_wanted(&tags::Tags::new()));
        let text_format = text.replace("format = \"url\"\n", "");
        assert!(parse(&text_format).unwrap_err().contains("refuse_hosts"));
        let upper = text.replace("hooks.example.com", "Hooks.example.com");
        assert!(parse(&upper).unwrap_err().contains("lowercase"));
        assert!(parse(&text.replace("\"url\"", "\"uri\"")).is_err());
    }

    #[test]
    fn unless_tag_excuses_a_required_peer_only_where_tagged() {
        let text = "role = \"x\"\n[peers.app]\nport = 5000\nrequired = true\n\
                    unless_tag = \"obstack:app-fleet-desired\"\n";
        let spec: RoleSpec = toml::from_str(text).unwrap();
        spec.check().unwrap();
        let peer = &spec.peers["app"];
        assert!(peer.is_required(&tags::Tags::new()));
        let fleet = tags::Tags::from([("obstack:app-fleet-desired".into(), "3".into())]);
        assert!(!peer.is_required(&fleet));
        let optional = text.replace("required = true", "required = false");
        assert!(parse(&optional).unwrap_err().contains("not required"));
        let bad_key = text.replace("obstack:app-fleet-desired", "obstack app");
        assert!(parse(&bad_key).unwrap_err().contains("tag key"));
    }

    #[test]
    fn root_prefixes_paths() {
        assert_eq!(rooted("", "/etc/x"), PathBuf::from("/etc/x"));
        assert_eq!(rooted("/tmp/s/", "/etc/x"), PathBuf::from("/tmp/s/etc/x"));
    }
}
