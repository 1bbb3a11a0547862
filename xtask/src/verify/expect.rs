//! What a healthy stack must show, taken from the checkout rather than from the stack:
//! the scrape jobs and Grafana datasources the images' templates render for the services
//! that run (rendered by the agent's own library, as `up` does), and the dashboards the
//! Grafana image ships.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;
use stack_agent::RoleSpec;

use crate::roles::Registry;
use crate::up::render::local_tags;

/// The job Promtail labels the app's log lines with and Prometheus scrapes the app as
/// (images/app/templates/promtail.yaml.j2, images/prometheus/templates/prometheus.yml.j2).
pub const APP_JOB: &str = "demo-app";
/// The app's request counter (app/src/metrics.rs): every answered request adds one.
pub const APP_REQUEST_COUNTER: &str = "app_requests_total";

/// Where the rendered configs say they live; `verify` only reads them from memory.
const RENDER_ROOT: &str = "/";
const PROMETHEUS_CONFIG: &str = "/etc/prometheus/prometheus.yml";
const DATASOURCES_CONFIG: &str = "/etc/grafana/provisioning/datasources/obstack.yaml";
/// The Grafana image's dashboards (images/grafana/rootfs).
const DASHBOARDS_DIR: &str = "grafana/rootfs/etc/grafana/dashboards";

/// A provisioned Grafana datasource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datasource {
    pub name: String,
    pub kind: String,
    pub uid: String,
}

/// A dashboard the Grafana image ships.
#[derive(Debug, Clone)]
pub struct Dashboard {
    pub uid: String,
    pub title: String,
    /// The checkout's JSON, used for the panel queries when Grafana cannot be asked.
    pub json: Value,
}

#[derive(Debug, Clone)]
pub struct Expected {
    /// Prometheus' scrape jobs; `Err` says why they are not known.
    pub jobs: Result<Vec<String>, String>,
    pub datasources: Result<Vec<Datasource>, String>,
    pub dashboards: Result<Vec<Dashboard>, String>,
}

impl Expected {
    /// What a stack running the services `running` must show.
    pub fn for_services(registry: &Registry, running: &BTreeSet<&str>) -> Expected {
        let rendered = |role: &str, path: &str| render(registry, running, role, path);
        Expected {
            jobs: rendered("prometheus", PROMETHEUS_CONFIG).and_then(|yaml| scrape_jobs(&yaml)),
            datasources: rendered("grafana", DATASOURCES_CONFIG)
                .and_then(|yaml| datasources(&yaml)),
            dashboards: dashboards(&registry.images_dir().join(DASHBOARDS_DIR)),
        }
    }

    /// The datasource of `kind` (`prometheus`, `loki`), if one is provisioned.
    pub fn datasource(&self, kind: &str) -> Option<&Datasource> {
        self.datasources
            .as_ref()
            .ok()?
            .iter()
            .find(|d| d.kind == kind)
    }
}

/// The file at `path` of `role`, rendered from the tags a stack running `running` has.
fn render(
    registry: &Registry,
    running: &BTreeSet<&str>,
    role: &str,
    path: &str,
) -> Result<String, String> {
    let spec = RoleSpec::load(registry.images_dir(), role)
        .map_err(|e| format!("cannot load the {role} role spec: {e}"))?;
    let tags = local_tags(registry, role, running);
    let files = stack_agent::render_spec(&spec, &tags, RENDER_ROOT, "verify")
        .map_err(|e| format!("cannot render the {role} role's configs: {e}"))?;
    files
        .into_iter()
        .find(|file| file.path == Path::new(path))
        .map(|file| file.contents)
        .ok_or_else(|| format!("the {role} role renders no {path}"))
}

/// `job_name` of every scrape config in a rendered prometheus.yml.
pub fn scrape_jobs(yaml: &str) -> Result<Vec<String>, String> {
    let config: Value = serde_yaml_ng::from_str(yaml)
        .map_err(|e| format!("the rendered prometheus.yml is not YAML: {e}"))?;
    let jobs: Vec<String> = config["scrape_configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|job| job["job_name"].as_str().map(str::to_string))
        .collect();
    if jobs.is_empty() {
        return Err("the rendered prometheus.yml has no scrape jobs".into());
    }
    Ok(jobs)
}

/// The datasources of a rendered Grafana provisioning file.
pub fn datasources(yaml: &str) -> Result<Vec<Datasource>, String> {
    let config: Value = serde_yaml_ng::from_str(yaml)
        .map_err(|e| format!("the rendered datasources file is not YAML: {e}"))?;
    config["datasources"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|ds| {
            let text = |key: &str| {
                ds[key]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("a provisioned datasource has no {key}: {ds}"))
            };
            Ok(Datasource {
                name: text("name")?,
                kind: text("type")?,
                uid: text("uid")?,
            })
        })
        .collect()
}

/// Every dashboard JSON in `dir`, by file name.
fn dashboards(dir: &Path) -> Result<Vec<Dashboard>, String> {
    let read = || -> anyhow::Result<Vec<Dashboard>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let json: Value = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON", path.display()))?;
                let uid = json["uid"]
                    .as_str()
                    .with_context(|| format!("{} has no uid", path.display()))?
                    .to_string();
                let title = json["title"].as_str().unwrap_or(&uid).to_string();
                Ok(Dashboard { uid, title, json })
            })
            .collect()
    };
    read().map_err(|e| crate::report::one_line(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_stack_scrapes_every_service_and_provisions_its_datasources() {
        let registry = Registry::load_default().unwrap();
        let expected = Expected::for_services(&registry, &registry.service_names());
        let jobs = expected.jobs.clone().unwrap();
        for job in [APP_JOB, "prometheus", "node", "promtail", "loki", "grafana"] {
            assert!(jobs.iter().any(|j| j == job), "{job} not in {jobs:?}");
        }
        assert_eq!(expected.datasource("prometheus").unwrap().uid, "prometheus");
        assert_eq!(expected.datasource("loki").unwrap().uid, "loki");
        let dashboards = expected.dashboards.unwrap();
        assert!(!dashboards.is_empty());
        assert!(dashboards.iter().all(|d| !d.uid.is_empty()));
    }

    #[test]
    fn a_stack_without_loki_scrapes_no_loki_and_has_no_grafana_config() {
        let registry = Registry::load_default().unwrap();
        let running = BTreeSet::from(["app", "prometheus"]);
        let expected = Expected::for_services(&registry, &running);
        let jobs = expected.jobs.unwrap();
        assert!(jobs.contains(&APP_JOB.to_string()), "{jobs:?}");
        assert!(!jobs.contains(&"loki".to_string()), "{jobs:?}");
        assert!(!jobs.contains(&"promtail".to_string()), "{jobs:?}");
    }

    #[test]
    fn the_app_names_verify_relies_on_are_the_ones_the_checkout_uses() {
        let root = crate::project::root();
        let read = |path: &str| std::fs::read_to_string(root.join(path)).unwrap();
        assert!(read("app/src/metrics.rs").contains(&format!("\"{APP_REQUEST_COUNTER}\"")));
        assert!(read("images/app/templates/promtail.yaml.j2").contains(&format!("job: {APP_JOB}")));
        assert!(read("images/prometheus/templates/prometheus.yml.j2")
            .contains(&format!("job_name: {APP_JOB}")));
    }
}
