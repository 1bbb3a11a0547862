//! The sample deployment shared by `render.rs`, `rules.rs` and `dashboards.rs`: the tags each
//! role is rendered with, and helpers to render a role through the boot agent's own renderer
//! and put the results on disk.
//!
//! Each test binary uses only part of this module.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub use image_checks::{images_dir, registry, roles};
use serde_json::Value;
use stack_agent::RenderedFile;

/// The peers' private addresses in the sample deployment.
pub const APP_IP: &str = "10.0.1.10";
pub const LOKI_IP: &str = "10.0.1.11";
pub const PROMETHEUS_IP: &str = "10.0.1.12";
pub const GRAFANA_IP: &str = "10.0.1.13";

/// The instance id the sample renders use.
pub const INSTANCE_ID: &str = "i-0123456789abcdef0";

/// The SSM parameter *name* tagged on Grafana (never a password): [`sample_parameter`]'s
/// name for its admin password file.
pub const GRAFANA_PASSWORD_PARAM: &str = "/obstack/grafana/admin-password";

/// The sample SSM parameter name of a role's secret file: `/obstack/<role>/<file-name>`,
/// `_` written as `-`.
pub fn sample_parameter(role: &str, secret_path: &str) -> String {
    let name = secret_path.rsplit('/').next().unwrap_or(secret_path);
    format!("/obstack/{role}/{}", name.replace('_', "-"))
}

/// `role`'s private address in the sample deployment: the named ones above, and one of
/// 10.0.2.0/24 (by its place in the registry) for any other role.
pub fn sample_ip(role: &str) -> String {
    let named = [
        ("app", APP_IP),
        ("loki", LOKI_IP),
        ("prometheus", PROMETHEUS_IP),
        ("grafana", GRAFANA_IP),
    ];
    match named.iter().find(|(name, _)| *name == role) {
        Some((_, ip)) => ip.to_string(),
        None => {
            let index = roles()
                .iter()
                .position(|r| *r == role)
                .unwrap_or_else(|| panic!("no role `{role}` in the registry"));
            format!("10.0.2.{}", 10 + index)
        }
    }
}

/// The tags Terraform puts on `role`'s instance: a peer tag for every peer of its role.toml
/// (the registry's `peers`, optional ones included), and the parameter name of every secret.
pub fn sample_tags(role: &str) -> BTreeMap<String, String> {
    let spec = registry().role(role).unwrap_or_else(|e| panic!("{e}"));
    let mut tags: BTreeMap<String, String> = spec
        .peers
        .keys()
        .map(|peer| (format!("obstack:peer:{peer}"), sample_ip(peer)))
        .collect();
    tags.insert("obstack:role".into(), role.into());
    tags.insert("obstack:project".into(), "obstack".into());
    let agent_spec = stack_agent::RoleSpec::load(&images_dir(), role)
        .unwrap_or_else(|e| panic!("role `{role}`: {e}"));
    for secret in &agent_spec.secrets {
        tags.insert(
            secret.name_tag.clone(),
            sample_parameter(role, &secret.path),
        );
    }
    tags
}

/// Renders `role` with `tags` for a machine rooted at `root`, failing the test on an error.
pub fn render(role: &str, tags: &BTreeMap<String, String>, root: &Path) -> Vec<RenderedFile> {
    stack_agent::render_role(&images_dir(), role, tags, &root_str(root), INSTANCE_ID)
        .unwrap_or_else(|e| panic!("rendering role `{role}` failed: {e}"))
}

/// Renders `role` with its sample tags.
pub fn render_sample(role: &str, root: &Path) -> Vec<RenderedFile> {
    render(role, &sample_tags(role), root)
}

/// `root` as the agent takes it.
pub fn root_str(root: &Path) -> String {
    root.to_str()
        .unwrap_or_else(|| panic!("temp dir {} is not UTF-8", root.display()))
        .to_string()
}

/// The rendered file that lands at `path` (as on the machine, e.g. `/etc/loki/config.yaml`).
pub fn file<'a>(files: &'a [RenderedFile], root: &Path, path: &str) -> &'a RenderedFile {
    let wanted = PathBuf::from(format!("{}{path}", root_str(root)));
    files.iter().find(|f| f.path == wanted).unwrap_or_else(|| {
        let got: Vec<_> = files.iter().map(|f| f.path.display().to_string()).collect();
        panic!(
            "no rendered file at {}; rendered: {got:?}",
            wanted.display()
        )
    })
}

/// Parses YAML into a JSON value, which is easy to index in assertions.
pub fn yaml(text: &str) -> serde_json::Value {
    serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("invalid YAML ({e}):\n{text}"))
}

/// Writes rendered files where the agent would (their paths already carry the root).
pub fn install(files: &[RenderedFile]) {
    for rendered in files {
        if let Some(dir) = rendered.path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(&rendered.path, &rendered.contents).unwrap();
    }
}

/// Copies `images/<role>/rootfs/<sub>` to `<root>/<sub>`, as the bake does.
pub fn install_rootfs(role: &str, sub: &str, root: &Path) {
    let from = images_dir().join(role).join("rootfs").join(sub);
    copy_tree(&from, &root.join(sub));
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The Prometheus alert rules file, as in the image.
pub fn rules_file() -> PathBuf {
    images_dir().join("prometheus/rootfs/etc/prometheus/rules/obstack.yml")
}

/// The rules' unit tests, as in the image.
pub fn rules_test_file() -> PathBuf {
    images_dir().join("prometheus/rootfs/etc/prometheus/tests/obstack.test.yml")
}

/// The dashboards directory, as in the image.
pub fn dashboards_dir() -> PathBuf {
    images_dir().join("grafana/rootfs/etc/grafana/dashboards")
}

/// Runs a tool and returns (success, stdout + stderr).
pub fn run(tool: &Path, args: &[&std::ffi::OsStr]) -> (bool, String) {
    let output = std::process::Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", tool.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The labels Promtail puts on the streams it pushes: the static ones (minus the reserved
/// `__` ones), plus those set by `labels` stages, minus those dropped by `labeldrop`.
/// `filename` is added by Promtail itself to every file target.
pub fn promtail_stream_labels(config: &Value) -> BTreeSet<String> {
    let mut labels = BTreeSet::from(["filename".to_string()]);
    for job in config["scrape_configs"].as_array().unwrap() {
        for target in job["static_configs"].as_array().unwrap() {
            for key in target["labels"].as_object().unwrap().keys() {
                if !key.starts_with("__") {
                    labels.insert(key.clone());
                }
            }
        }
        for stage in job["pipeline_stages"].as_array().into_iter().flatten() {
            if let Some(set) = stage["labels"].as_object() {
                labels.extend(set.keys().cloned());
            }
            if let Some(dropped) = stage["labeldrop"].as_array() {
                for name in dropped {
                    labels.remove(name.as_str().unwrap());
                }
            }
        }
    }
    labels
}

/// job name → every target of its static configs.
pub fn scrape_targets(config: &Value) -> BTreeMap<String, BTreeSet<String>> {
    config["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| {
            let targets = job["static_configs"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|s| s["targets"].as_array().unwrap())
                .map(|t| t.as_str().unwrap().to_string())
                .collect();
            (job["job_name"].as_str().unwrap().to_string(), targets)
        })
        .collect()
}

/// The deployment name the sample app fleet carries (tag `obstack:deployment`).
pub const DEPLOYMENT: &str = "obstack-demo";

/// Prometheus' sample tags when the app runs as an Auto Scaling group wanting `desired`
/// instances: the fleet tags instead of `obstack:peer:app`, as Terraform writes them.
pub fn fleet_tags(desired: u32) -> BTreeMap<String, String> {
    let mut tags = sample_tags("prometheus");
    tags.remove("obstack:peer:app");
    tags.insert("obstack:app-fleet-desired".into(), desired.to_string());
    tags.insert("obstack:deployment".into(), DEPLOYMENT.into());
    tags
}

/// Points every `ec2_sd_configs` entry of a rendered Prometheus config at `endpoint` in
/// `region`, as a test's EC2 API (moto) needs: the rendered file names neither (on EC2,
/// Prometheus asks the instance metadata for its region). Returns the edited YAML.
pub fn with_ec2_endpoint(config: &str, endpoint: &str, region: &str) -> String {
    let mut config: serde_yaml_ng::Value = serde_yaml_ng::from_str(config)
        .unwrap_or_else(|e| panic!("the rendered config is not YAML ({e}):\n{config}"));
    let mut edited = 0;
    let jobs = config["scrape_configs"]
        .as_sequence_mut()
        .expect("scrape_configs is a list");
    for job in jobs {
        let Some(discoveries) = job
            .get_mut("ec2_sd_configs")
            .and_then(|d| d.as_sequence_mut())
        else {
            continue;
        };
        for discovery in discoveries {
            let discovery = discovery
                .as_mapping_mut()
                .expect("an ec2_sd_configs entry is a mapping");
            discovery.insert("endpoint".into(), endpoint.into());
            discovery.insert("region".into(), region.into());
            edited += 1;
        }
    }
    assert!(
        edited > 0,
        "the config has no ec2_sd_configs to point at {endpoint}"
    );
    serde_yaml_ng::to_string(&config).unwrap()
}
