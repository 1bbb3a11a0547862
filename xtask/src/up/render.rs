//! Rendering the stack's files exactly as the images do: each role's static `rootfs/` is
//! copied and its templates are rendered by the agent's own library from a local tag set
//! (peers on 127.0.0.1) instead of the instance's EC2 tags. All roles share one root
//! directory, as if they were one machine.
//!
//! The local tags tell the truth about what runs: a peer is tagged only when its service
//! runs, and every service that does not is named in `obstack:absent`, so Prometheus
//! scrapes only what runs, and only the files of running services are rendered.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Context;
use stack_agent::tags::{self, Tags};
use stack_agent::{Ownership, RenderedFile, RoleSpec};

use super::layout::Layout;
use crate::roles::Registry;

/// The instance id templates see locally.
const INSTANCE_ID: &str = "local";

/// The SSM parameter name the local Slack tag names: nothing fetches it, `up` writes the
/// stand-in's URL into the secret's file itself.
const LOCAL_SLACK_PARAMETER: &str = "/obstack/local/alert-slack-url";

/// The tags a local stack running the services `running` would carry on EC2: the peers that
/// run on loopback at their AMI ports, and the services that do not in `obstack:absent`.
pub fn local_tags(registry: &Registry, role: &str, running: &BTreeSet<&str>) -> Tags {
    let mut tags = Tags::new();
    tags.insert(tags::ROLE.into(), role.into());
    tags.insert(tags::BIND_ADDRESS.into(), "127.0.0.1".into());
    for peer in registry.roles() {
        if let Some(service) = peer.main_service() {
            if running.contains(service.name.as_str()) {
                tags.insert(
                    tags::peer_key(&peer.name),
                    format!("127.0.0.1:{}", service.port),
                );
            }
        }
    }
    let absent: Vec<&str> = registry
        .services()
        .into_iter()
        .map(|(_, service)| service.name.as_str())
        .filter(|name| !running.contains(name))
        .collect();
    if !absent.is_empty() {
        tags.insert(tags::ABSENT.into(), absent.join(","));
    }
    tags
}

/// Copies static files and renders, under the layout's root, the configs of every role that
/// runs one of `running` (service names); a file no running service reads is left out.
///
/// `slack` is the URL of the local stand-in for a Slack incoming webhook (on EC2, an SSM
/// SecureString's value): the role reading tag `obstack:alert-slack-url-param` gets the tag
/// and the URL in its secret's file. Without one the rendered config has no Slack receiver.
pub fn render_roles(
    layout: &Layout,
    registry: &Registry,
    running: &BTreeSet<&str>,
    slack: Option<&str>,
) -> anyhow::Result<()> {
    let images_dir = registry.images_dir();
    let root = layout.root();
    let root_text = root
        .to_str()
        .with_context(|| format!("the stack directory {} is not valid UTF-8", root.display()))?;
    copy_tree(&images_dir.join("common/rootfs"), &root)?;
    // Kept for reference: `stack-agent render --tags-from file:<this>` reads the same tags.
    write_tags_file(&layout.tags_file(), &local_tags(registry, "", running))?;
    let common_units = registry
        .common_services()
        .iter()
        .filter(|s| running.contains(s.name.as_str()))
        .map(|s| s.unit.as_str());
    let common_units: Vec<&str> = common_units.collect();
    for role in registry.roles() {
        let units: BTreeSet<&str> = role
            .services
            .iter()
            .filter(|s| running.contains(s.name.as_str()))
            .map(|s| s.unit.as_str())
            .collect();
        if units.is_empty() {
            continue;
        }
        let role_name = role.name.as_str();
        copy_tree(&role.dir.join("rootfs"), &root)?;
        let mut tags = local_tags(registry, role_name, running);
        let mut spec = RoleSpec::load(images_dir, role_name)
            .with_context(|| format!("cannot load the {role_name} role spec"))?;
        write_local_slack_url(&spec, &mut tags, root_text, slack)?;
        spec.files.retain(|file| {
            file.services.is_empty()
                || file.services.iter().any(|unit| {
                    units.contains(unit.as_str()) || common_units.contains(&unit.as_str())
                })
        });
        let files = stack_agent::render_spec(&spec, &tags, root_text, INSTANCE_ID)
            .with_context(|| format!("cannot render the {role_name} role's configs"))?;
        // Locally nothing is chowned: the files belong to whoever runs `up`.
        stack_agent::write_files(&files, Ownership::Ignore)
            .with_context(|| format!("cannot write the {role_name} role's configs"))?;
        write_local_secrets(&spec, layout)?;
        stack_agent::ensure_generated(&spec, root_text, Ownership::Ignore)
            .with_context(|| format!("cannot generate the {role_name} role's secrets"))?;
    }
    Ok(())
}

/// When the role reads a Slack URL and `up` runs a stand-in: the tag, and the stand-in's URL
/// in the secret's file, as the agent would write it from SSM.
fn write_local_slack_url(
    spec: &RoleSpec,
    tags: &mut Tags,
    root: &str,
    slack: Option<&str>,
) -> anyhow::Result<()> {
    let Some(url) = slack else {
        return Ok(());
    };
    let Some(secret) = spec
        .secrets
        .iter()
        .find(|s| s.name_tag == tags::ALERT_SLACK_URL_PARAM)
    else {
        return Ok(());
    };
    let file = stack_agent::secret_file(secret, root, url)
        .with_context(|| format!("cannot use {url} as the local Slack webhook"))?;
    stack_agent::write_file(&file, Ownership::Ignore)
        .with_context(|| format!("cannot write {}", file.path.display()))?;
    tags.insert(
        tags::ALERT_SLACK_URL_PARAM.into(),
        LOCAL_SLACK_PARAMETER.into(),
    );
    Ok(())
}

/// On EC2 the agent fetches `[[secrets]]` from SSM; locally each required one is a random
/// value created once in its 0600 file and kept, so a restarted Grafana keeps its admin
/// password. Optional ones (webhook URLs) exist only where `up` has a value for them.
fn write_local_secrets(spec: &RoleSpec, layout: &Layout) -> anyhow::Result<()> {
    for secret in spec.secrets.iter().filter(|s| !s.optional) {
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
    crate::atomic::write(path, text + "\n")
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

    fn registry() -> Registry {
        Registry::load_default().unwrap()
    }

    fn all_services(registry: &Registry) -> BTreeSet<&str> {
        registry
            .services()
            .into_iter()
            .map(|(_, s)| s.name.as_str())
            .collect()
    }

    /// `(job, target)` of every scrape target in a rendered prometheus.yml (the template's
    /// one-target-per-line layout).
    fn scrape_targets(config: &str) -> Vec<(String, String)> {
        let mut job = String::new();
        let mut targets = Vec::new();
        // `alerting:` (before `scrape_configs:`) lists targets too, Alertmanager's.
        let scrape = config.find("\nscrape_configs:").unwrap_or(0);
        for line in config[scrape..].lines().map(str::trim) {
            if let Some(name) = line.strip_prefix("- job_name:") {
                job = name.trim().to_string();
            } else if let Some(list) = line.strip_prefix("- targets:") {
                let list = list.trim().trim_start_matches('[').trim_end_matches(']');
                for target in list.split(',') {
                    targets.push((job.clone(), target.trim().trim_matches('"').to_string()));
                }
            }
        }
        targets
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn local_tags_put_running_peers_on_loopback_and_name_the_rest_absent() {
        let registry = registry();
        let all = all_services(&registry);
        let tags = local_tags(&registry, "prometheus", &all);
        assert_eq!(tags["obstack:peer:app"], "127.0.0.1:5000");
        assert_eq!(tags["obstack:peer:loki"], "127.0.0.1:3100");
        assert_eq!(tags["obstack:peer:prometheus"], "127.0.0.1:9090");
        assert_eq!(tags["obstack:peer:grafana"], "127.0.0.1:3000");
        assert_eq!(tags["obstack:bind-address"], "127.0.0.1");
        assert!(!tags.contains_key("obstack:peer:promtail"));
        assert!(!tags.contains_key("obstack:absent"), "everything runs");
        for key in tags.keys() {
            assert_eq!(tags::check_key(key), Ok(()), "{key}");
        }

        let running = BTreeSet::from(["app", "prometheus"]);
        let tags = local_tags(&registry, "prometheus", &running);
        let peers: Vec<&str> = tags
            .keys()
            .filter_map(|k| k.strip_prefix("obstack:peer:"))
            .collect();
        assert_eq!(peers, ["app", "prometheus"]);
        assert_eq!(
            tags["obstack:absent"], "loki,promtail,alertmanager,grafana,node_exporter",
            "start order"
        );
        assert!(tags::parse_absent(&tags["obstack:absent"]).is_ok());
    }

    #[test]
    fn a_stack_of_app_prometheus_and_node_exporter_scrapes_exactly_those_once() {
        let registry = registry();
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::at(dir.path().to_path_buf());
        let running = BTreeSet::from(["app", "prometheus", "node_exporter"]);
        render_roles(&layout, &registry, &running, None).unwrap();
        let root = layout.root();
        let config = std::fs::read_to_string(root.join("etc/prometheus/prometheus.yml")).unwrap();
        assert_eq!(
            scrape_targets(&config),
            pairs(&[
                ("demo-app", "127.0.0.1:5000"),
                ("prometheus", "127.0.0.1:9090"),
                ("node", "127.0.0.1:9100"),
            ]),
            "{config}"
        );
        // Only the running services' files: no Loki, Promtail or Grafana config.
        assert!(root.join("etc/default/demo-app").is_file());
        assert!(root.join("etc/default/prometheus").is_file());
        for path in [
            "etc/promtail/config.yaml",
            "etc/loki/config.yaml",
            "etc/grafana/grafana.ini",
        ] {
            assert!(!root.join(path).exists(), "{path} rendered");
        }
        let tags = std::fs::read_to_string(layout.tags_file()).unwrap();
        assert!(
            tags.contains(r#""obstack:absent": "loki,promtail,alertmanager,grafana""#),
            "{tags}"
        );

        // Without node_exporter there is no node job at all (and so nothing to miss).
        let running = BTreeSet::from(["app", "prometheus"]);
        render_roles(&layout, &registry, &running, None).unwrap();
        let config = std::fs::read_to_string(root.join("etc/prometheus/prometheus.yml")).unwrap();
        assert_eq!(
            scrape_targets(&config),
            pairs(&[
                ("demo-app", "127.0.0.1:5000"),
                ("prometheus", "127.0.0.1:9090"),
            ]),
            "{config}"
        );
    }

    #[test]
    fn the_whole_stack_renders_under_the_root_with_one_node_target_and_a_local_password() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::at(dir.path().to_path_buf());
        let registry = registry();
        let all = all_services(&registry);
        render_roles(&layout, &registry, &all, None).unwrap();
        let root = layout.root();
        let prometheus =
            std::fs::read_to_string(root.join("etc/prometheus/prometheus.yml")).unwrap();
        assert!(
            prometheus.contains(&root.display().to_string()),
            "{prometheus}"
        );
        // One machine: its node_exporter is scraped once, not once per role.
        assert_eq!(
            scrape_targets(&prometheus),
            pairs(&[
                ("demo-app", "127.0.0.1:5000"),
                ("prometheus", "127.0.0.1:9090"),
                ("alertmanager", "127.0.0.1:9093"),
                ("node", "127.0.0.1:9100"),
                ("promtail", "127.0.0.1:9080"),
                ("loki", "127.0.0.1:3100"),
                ("grafana", "127.0.0.1:3000"),
            ]),
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
        render_roles(&layout, &registry, &all, None).unwrap();
        assert_eq!(std::fs::read_to_string(&password_file).unwrap(), password);
    }

    #[test]
    fn alertmanager_posts_to_the_local_receiver_as_to_slack_when_there_is_one() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::at(dir.path().to_path_buf());
        let registry = registry();
        let running = BTreeSet::from(["app", "prometheus", "alertmanager"]);
        let url = "http://127.0.0.1:40404/services/local";
        render_roles(&layout, &registry, &running, Some(url)).unwrap();
        let config = layout.in_root("/etc/alertmanager/alertmanager.yml");
        let text = std::fs::read_to_string(&config).unwrap();
        // The config names the file, the file holds the URL (0600), as the agent writes it.
        let url_file = layout.in_root("/etc/alertmanager/secrets/slack_url");
        assert!(
            text.contains(&format!("- api_url_file: \"{}\"", url_file.display())),
            "{text}"
        );
        assert!(!text.contains(url), "{text}");
        assert!(!text.contains("webhook_configs"), "{text}");
        assert_eq!(std::fs::read_to_string(&url_file).unwrap(), url);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&url_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let prometheus =
            std::fs::read_to_string(layout.in_root("/etc/prometheus/prometheus.yml")).unwrap();
        assert!(
            prometheus.contains("- targets: [\"127.0.0.1:9093\"]"),
            "{prometheus}"
        );

        // Without a receiver (a detached stack) the config has no Slack receiver at all.
        render_roles(&layout, &registry, &running, None).unwrap();
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(!text.contains("slack_configs"), "{text}");
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
