//! Rendering the stack's files exactly as the images do: each role's static `rootfs/` is
//! copied and its templates are rendered by the agent's own library from a local tag set
//! (peers on 127.0.0.1) instead of the instance's EC2 tags. All four roles share one root
//! directory, as if they were one machine.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use stack_agent::tags::{self, Tags};
use stack_agent::{Ownership, RenderedFile, RoleSpec};

use super::components::Component;
use super::layout::Layout;

/// The instance id templates see locally.
const INSTANCE_ID: &str = "local";

/// The tags a local stack would carry on EC2: every peer on loopback, at its AMI port.
pub fn local_tags(role: &str, components: &[Component]) -> Tags {
    let mut tags = Tags::new();
    tags.insert(tags::ROLE.into(), role.into());
    tags.insert(tags::BIND_ADDRESS.into(), "127.0.0.1".into());
    for component in components.iter().filter(|c| c.role == c.name) {
        tags.insert(
            tags::peer_key(component.name),
            format!("127.0.0.1:{}", component.port),
        );
    }
    tags
}

/// Copies static files and renders the configs of `roles` under the layout's root.
pub fn render_roles(
    layout: &Layout,
    images_dir: &Path,
    roles: &[&str],
    components: &[Component],
) -> anyhow::Result<()> {
    let root = layout.root();
    let root_text = root
        .to_str()
        .with_context(|| format!("the stack directory {} is not valid UTF-8", root.display()))?;
    copy_tree(&images_dir.join("common/rootfs"), &root)?;
    // Kept for reference: `stack-agent render --tags-from file:<this>` reads the same tags.
    write_tags_file(&layout.tags_file(), &local_tags("", components))?;
    for role in roles {
        copy_tree(&images_dir.join(role).join("rootfs"), &root)?;
        let tags = local_tags(role, components);
        let spec = RoleSpec::load(images_dir, role)
            .with_context(|| format!("cannot load the {role} role spec"))?;
        let files = stack_agent::render_spec(&spec, &tags, root_text, INSTANCE_ID)
            .with_context(|| format!("cannot render the {role} role's configs"))?;
        // Locally nothing is chowned: the files belong to whoever runs `up`.
        stack_agent::write_files(&files, Ownership::Ignore)
            .with_context(|| format!("cannot write the {role} role's configs"))?;
        write_local_secrets(&spec, layout)?;
        stack_agent::ensure_generated(&spec, root_text, Ownership::Ignore)
            .with_context(|| format!("cannot generate the {role} role's secrets"))?;
    }
    Ok(())
}

/// On EC2 the agent fetches `[[secrets]]` from SSM; locally each is a random value created
/// once in its 0600 file and kept, so a restarted Grafana keeps its admin password.
fn write_local_secrets(spec: &RoleSpec, layout: &Layout) -> anyhow::Result<()> {
    for secret in &spec.secrets {
        let path = layout.in_root(&secret.path);
        if path.exists() {
            continue;
        }
        let file = RenderedFile {
            path: path.clone(),
            contents: random_password(),
            mode: secret.mode.0,
            owner: None,
            group: None,
            services: secret.services.clone(),
            sensitive: true,
        };
        stack_agent::write_file(&file, Ownership::Ignore)
            .with_context(|| format!("cannot write the local secret {}", path.display()))?;
    }
    Ok(())
}

/// 24 characters from an unambiguous alphabet: easy to type, ~138 bits of entropy.
fn random_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..24)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

fn write_tags_file(path: &Path, tags: &Tags) -> anyhow::Result<()> {
    let json: BTreeMap<&str, &str> = tags
        .iter()
        .filter(|(key, _)| key.as_str() != tags::ROLE)
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    let text = serde_json::to_string_pretty(&json).context("cannot serialise the tags")?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

/// Copies every file under `from` to the same relative path under `to` (skipping a missing
/// `from`). Existing files are overwritten so an edited dashboard or rule shows up.
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    if !from.is_dir() {
        return Ok(());
    }
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry.with_context(|| format!("cannot read {}", from.display()))?;
        let relative = entry.path().strip_prefix(from).unwrap_or(entry.path());
        let target = to.join(relative);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&target)
                .with_context(|| format!("cannot create {}", target.display()))?;
        } else if entry.file_type().is_file() {
            std::fs::copy(entry.path(), &target).with_context(|| {
                format!(
                    "cannot copy {} to {}",
                    entry.path().display(),
                    target.display()
                )
            })?;
        }
    }
    Ok(())
}

/// Reads a systemd `EnvironmentFile` (KEY=VALUE lines, `#` comments, optional quotes).
pub fn read_env_file(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    };
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with(';'))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| {
            let value = value.trim();
            let unquoted = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            (key.trim().to_string(), unquoted.to_string())
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::up::components::COMPONENTS;

    #[test]
    fn local_tags_put_every_role_on_loopback() {
        let tags = local_tags("prometheus", &COMPONENTS);
        assert_eq!(tags["obstack:peer:app"], "127.0.0.1:5000");
        assert_eq!(tags["obstack:peer:loki"], "127.0.0.1:3100");
        assert_eq!(tags["obstack:peer:prometheus"], "127.0.0.1:9090");
        assert_eq!(tags["obstack:peer:grafana"], "127.0.0.1:3000");
        assert_eq!(tags["obstack:bind-address"], "127.0.0.1");
        assert!(!tags.contains_key("obstack:peer:promtail"));
        for key in tags.keys() {
            assert_eq!(tags::check_key(key), Ok(()), "{key}");
        }
    }

    #[test]
    fn every_role_renders_under_the_root_with_a_local_grafana_password() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::at(dir.path().to_path_buf());
        let roles = crate::project::ROLES;
        render_roles(&layout, &crate::project::images_dir(), &roles, &COMPONENTS).unwrap();
        let root = layout.root();
        let prometheus =
            std::fs::read_to_string(root.join("etc/prometheus/prometheus.yml")).unwrap();
        assert!(prometheus.contains("127.0.0.1:5000"), "{prometheus}");
        assert!(
            prometheus.contains(&root.display().to_string()),
            "{prometheus}"
        );
        assert!(root.join("etc/loki/config.yaml").is_file());
        assert!(root.join("etc/promtail/config.yaml").is_file());
        let env = read_env_file(&root.join("etc/default/demo-app")).unwrap();
        assert!(
            env.iter()
                .any(|(k, v)| k == "DEMO_APP_LISTEN" && v == "127.0.0.1:5000"),
            "{env:?}"
        );

        let password_file = root.join("etc/grafana/secrets/admin_password");
        let password = std::fs::read_to_string(&password_file).unwrap();
        assert_eq!(password.len(), 24);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&password_file)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let ini = std::fs::read_to_string(root.join("etc/grafana/grafana.ini")).unwrap();
        assert!(
            ini.contains(&format!("$__file{{{}}}", password_file.display())),
            "{ini}"
        );

        // A second render keeps the password (Grafana stored it on first start).
        render_roles(&layout, &crate::project::images_dir(), &roles, &COMPONENTS).unwrap();
        assert_eq!(std::fs::read_to_string(&password_file).unwrap(), password);
    }

    #[test]
    fn env_files_are_parsed_like_systemd() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env");
        std::fs::write(&path, "# comment\n\nA=1\nB=\"two words\"\n  C = x \n").unwrap();
        let env = read_env_file(&path).unwrap();
        assert_eq!(
            env,
            vec![
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "two words".to_string()),
                ("C".to_string(), "x".to_string())
            ]
        );
        assert!(read_env_file(&dir.path().join("missing"))
            .unwrap()
            .is_empty());
    }
}
