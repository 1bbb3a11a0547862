//! What would stop the first real bake or trouble the first boot, each checked where it is
//! decided: the nightly workflow's Packer and the exact Amazon plugin pin, the runner the
//! shipped binaries are built on, the AWS session's length, the dpkg lock wait of every
//! apt-get in a provisioner, the cloud-init wait's exit codes (run, with a stand-in
//! cloud-init), cleanup.sh leaving journald's files alone (run, on a stand-in /var/log),
//! and Grafana's first start (no plugin downloads, every provisioning folder present).

use crate::stack;

use std::path::{Path, PathBuf};
use std::process::Command;

use hcl::{Block, Body, Expression};
use serde_yaml_ng::Value;
use stack::{file, images_dir, render_sample};

/// From this Packer on, `packer init` fetches plugins from releases.hashicorp.com, the only
/// place the Amazon plugin is published since 1.3.10 (its changelog; hashicorp/setup-packer#148).
const PACKER_FETCHING_RELEASE_SITE: (u32, u32, u32) = (1, 14, 0);

fn workspace() -> PathBuf {
    testkit::workspace_root()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn nightly() -> Value {
    let path = workspace().join(".github/workflows/nightly-bake.yml");
    serde_yaml_ng::from_str(&read(&path)).unwrap()
}

fn version(text: &str) -> (u32, u32, u32) {
    let parts: Vec<u32> = text
        .trim()
        .split('.')
        .map(|p| {
            p.parse()
                .unwrap_or_else(|_| panic!("`{text}` is not an exact x.y.z version"))
        })
        .collect();
    assert_eq!(parts.len(), 3, "`{text}` is not an exact x.y.z version");
    (parts[0], parts[1], parts[2])
}

fn attribute<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes().find(|a| a.key() == key).map(|a| a.expr())
}

fn text(expr: Option<&Expression>) -> Option<String> {
    match expr {
        Some(Expression::String(s)) => Some(s.clone()),
        _ => None,
    }
}

#[test]
fn the_nightly_bake_installs_a_packer_that_fetches_the_exactly_pinned_plugin() {
    let workflow = nightly();
    let job = &workflow["jobs"]["bake"];
    let packer = job["env"]["PACKER_VERSION"]
        .as_str()
        .expect("jobs.bake.env.PACKER_VERSION");
    assert!(
        version(packer) >= PACKER_FETCHING_RELEASE_SITE,
        "the nightly bake installs Packer {packer}: before 1.14.0 `packer init` cannot fetch the Amazon plugin from releases.hashicorp.com"
    );
    let setup = job["steps"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|s| {
            s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("hashicorp/setup-packer@"))
        })
        .expect("a hashicorp/setup-packer step");
    assert_eq!(setup["with"]["version"], "${{ env.PACKER_VERSION }}");
    assert!(
        job["env"]["PACKER_GITHUB_API_TOKEN"].as_str().is_some(),
        "packer init needs PACKER_GITHUB_API_TOKEN (GitHub's API is rate-limited without it)"
    );

    // The plugin: one exact version, and a Packer floor that can install it.
    let plugins: Body = hcl::parse(&read(&images_dir().join("plugins.pkr.hcl"))).unwrap();
    let packer_block: &Block = plugins
        .blocks()
        .find(|b| b.identifier() == "packer")
        .expect("a packer block");
    let required =
        text(attribute(packer_block.body(), "required_version")).expect("packer.required_version");
    let floor = required
        .strip_prefix(">=")
        .map(version)
        .unwrap_or_else(|| panic!("required_version `{required}` is not `>= x.y.z`"));
    assert!(
        floor >= PACKER_FETCHING_RELEASE_SITE,
        "required_version {required}"
    );
    let plugins_block = packer_block
        .body()
        .blocks()
        .find(|b| b.identifier() == "required_plugins")
        .expect("required_plugins");
    let Some(Expression::Object(amazon)) = attribute(plugins_block.body(), "amazon") else {
        panic!("required_plugins.amazon is not an object");
    };
    let field = |name: &str| {
        amazon
            .iter()
            .find(|(k, _)| {
                matches!(k, hcl::ObjectKey::Identifier(i) if i.as_str() == name)
                    || matches!(k, hcl::ObjectKey::Expression(Expression::String(s)) if s == name)
            })
            .and_then(|(_, v)| text(Some(v)))
            .unwrap_or_else(|| panic!("required_plugins.amazon.{name}"))
    };
    assert_eq!(field("source"), "github.com/hashicorp/amazon");
    let pin = field("version");
    let exact = pin.strip_prefix('=').map(str::trim).unwrap_or_else(|| {
        panic!("the Amazon plugin is `{pin}`: pin one exact version (`= x.y.z`)")
    });
    assert!(
        version(exact) >= (1, 3, 10),
        "plugin {exact}: only 1.3.10 on is on releases.hashicorp.com"
    );
}

#[test]
fn the_plugin_pin_is_a_bake_input() {
    // The README's input-hash table and the hash code name it; xtask's unit tests show a new
    // pin changes every role's hash.
    let readme = read(&workspace().join("README.md"));
    assert!(
        readme.contains("| `packer-plugins` |"),
        "the README's input-hash table lacks packer-plugins"
    );
    assert!(read(&workspace().join("xtask/src/hash.rs")).contains("plugins.pkr.hcl"));
}

#[test]
fn the_binaries_are_built_on_the_images_ubuntu_and_the_session_outlives_the_job() {
    let workflow = nightly();
    let job = &workflow["jobs"]["bake"];
    // The shipped binaries link against the runner's glibc: the runner is the images'
    // Ubuntu, which the template's base image filter names.
    let runner = job["runs-on"].as_str().expect("runs-on");
    let variables = read(&images_dir().join("common/packer/variables.pkr.hcl"));
    assert_eq!(
        runner, "ubuntu-24.04",
        "runs-on must be pinned, not {runner}"
    );
    assert!(
        variables.contains("ubuntu-noble-24.04"),
        "the base image is not 24.04 any more"
    );

    let timeout = job["timeout-minutes"].as_u64().expect("timeout-minutes");
    let credentials = job["steps"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|s| {
            s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("aws-actions/configure-aws-credentials@"))
        })
        .expect("the credentials step");
    let duration = credentials["with"]["role-duration-seconds"]
        .as_u64()
        .expect("role-duration-seconds: the default session lasts one hour");
    assert!(
        duration >= timeout * 60,
        "the AWS session ({duration} s) ends before the job may ({timeout} min)"
    );
    assert!(duration <= 43_200, "IAM caps a session at 12 hours");
    let readme = read(&workspace().join("README.md"));
    assert!(
        readme.contains("MaxSessionDuration") && readme.contains(&duration.to_string()),
        "the README must say the role's MaxSessionDuration must allow {duration} s"
    );
}

/// Every provisioning script the template runs (common and each role's).
fn provisioner_scripts() -> Vec<PathBuf> {
    let mut scripts = Vec::new();
    for dir in std::iter::once(images_dir().join("common/provisioners")).chain(
        image_checks::roles()
            .into_iter()
            .map(|r| images_dir().join(r).join("provisioners")),
    ) {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "sh") {
                scripts.push(path);
            }
        }
    }
    scripts.sort();
    assert!(scripts.len() >= 10, "{scripts:?}");
    scripts
}

/// The logical lines of a shell script (continuations joined), comments dropped.
fn shell_lines(script: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in script.lines() {
        let code = if line.trim_start().starts_with('#') {
            ""
        } else {
            line
        };
        match code.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(code);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    lines
}

/// The apt calls in `script` that do not wait for the dpkg lock.
fn apt_calls_without_lock_wait(script: &str) -> Vec<String> {
    shell_lines(script)
        .into_iter()
        .filter(|line| {
            line.split(|c: char| c.is_whitespace() || c == ';' || c == '(' || c == '{')
                .any(|word| matches!(word, "apt-get" | "apt" | "aptitude"))
        })
        .filter(|line| {
            let waits = line
                .split_whitespace()
                .filter_map(|w| {
                    let lower = w.to_ascii_lowercase();
                    lower
                        .strip_prefix("dpkg::lock::timeout=")
                        .map(|v| v.to_string())
                })
                .any(|seconds| seconds.parse::<u32>().is_ok_and(|s| s > 0));
            !waits || !line.contains("apt-get")
        })
        .map(|line| line.trim().to_string())
        .collect()
}

#[test]
fn every_apt_get_in_a_provisioner_waits_for_the_dpkg_lock() {
    let mut offenders = Vec::new();
    let mut calls = 0;
    for script in provisioner_scripts() {
        let text = read(&script);
        calls += shell_lines(&text)
            .iter()
            .filter(|l| l.contains("apt-get") || l.contains("apt_get"))
            .count();
        for line in apt_calls_without_lock_wait(&text) {
            offenders.push(format!("{}: {line}", script.display()));
        }
    }
    assert!(calls > 0, "no apt call found: the scan is broken");
    assert!(
        offenders.is_empty(),
        "apt calls that fail at once when apt-daily holds the dpkg lock (add -o DPkg::Lock::Timeout=N, or use lib.sh's apt_get):\n  {}",
        offenders.join("\n  ")
    );
    // The scan itself: a bare call is caught, a waiting one is not.
    assert_eq!(
        apt_calls_without_lock_wait("apt-get update\nfoo() { apt-get -o DPkg::Lock::Timeout=600 \"$@\"; }\n# apt-get in a comment\napt install x\n"),
        ["apt-get update", "apt install x"]
    );
}

/// The template's inline commands that wait for cloud-init, as Packer runs inline lines:
/// a script under `sh -e`.
fn cloud_init_wait() -> String {
    let body: Body = hcl::parse(&read(&images_dir().join("common/packer/image.pkr.hcl"))).unwrap();
    let build = body.blocks().find(|b| b.identifier() == "build").unwrap();
    let lines: Vec<String> = build
        .body()
        .blocks()
        .filter(|b| b.identifier() == "provisioner")
        .filter_map(|p| match attribute(p.body(), "inline") {
            Some(Expression::Array(lines)) => Some(lines.clone()),
            _ => None,
        })
        .flatten()
        .filter_map(|e| text(Some(&e)))
        .filter(|line| line.contains("cloud-init"))
        .collect();
    assert!(!lines.is_empty(), "no inline step waits for cloud-init");
    lines.join("\n")
}

/// Runs `commands` under `sh -e` with a cloud-init that exits `code`; true if they succeed.
fn run_with_cloud_init_exiting(commands: &str, code: i32) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("cloud-init");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\necho \"status: stand-in, exit {code}\"\nexit {code}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let script = dir.path().join("inline.sh");
    std::fs::write(&script, format!("#!/bin/sh -e\n{commands}\n")).unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = Command::new("sh")
        .arg("-e")
        .arg(&script)
        .env("PATH", path)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

#[test]
fn the_cloud_init_wait_accepts_a_degraded_boot_and_nothing_else() {
    let commands = cloud_init_wait();
    for (code, expected) in [(0, true), (2, true), (1, false), (3, false), (127, false)] {
        let (ok, stderr) = run_with_cloud_init_exiting(&commands, code);
        assert_eq!(
            ok,
            expected,
            "cloud-init exiting {code}: the wait {} ({stderr})",
            if ok { "passed" } else { "failed" }
        );
        if !expected {
            assert!(
                stderr.contains(&format!("exit {code}")),
                "the failure must name cloud-init's exit code: {stderr}"
            );
        }
    }
}

#[test]
fn cleanup_empties_the_logs_but_leaves_journald_files_alone() {
    // cleanup.sh's log commands, run on a stand-in /var/log.
    let cleanup = read(&images_dir().join("common/provisioners/cleanup.sh"));
    let log_commands: Vec<String> = shell_lines(&cleanup)
        .into_iter()
        .filter(|l| l.trim_start().starts_with("find /var/log"))
        .collect();
    assert!(log_commands.len() >= 2, "{log_commands:?}");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let journal = log.join("journal/0123456789abcdef");
    std::fs::create_dir_all(&journal).unwrap();
    std::fs::create_dir_all(log.join("apt")).unwrap();
    for (path, bytes) in [
        (journal.join("system.journal"), "LPKSHHRH live journal"),
        (journal.join("user-1000.journal"), "LPKSHHRH user journal"),
        (log.join("syslog"), "bake output"),
        (log.join("syslog.1"), "rotated"),
        (log.join("apt/history.log"), "apt"),
    ] {
        std::fs::write(path, bytes).unwrap();
    }
    let script = log_commands
        .join("\n")
        .replace("/var/log", &log.display().to_string());
    let status = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .status()
        .unwrap();
    assert!(status.success(), "{script}");
    assert_eq!(
        read(&journal.join("system.journal")),
        "LPKSHHRH live journal"
    );
    assert_eq!(
        read(&journal.join("user-1000.journal")),
        "LPKSHHRH user journal"
    );
    assert_eq!(read(&log.join("syslog")), "");
    assert_eq!(read(&log.join("apt/history.log")), "");
    assert!(!log.join("syslog.1").exists());
}

#[test]
fn grafana_starts_without_downloading_plugins_or_missing_a_provisioning_folder() {
    let root = tempfile::tempdir().unwrap();
    let files = render_sample("grafana", root.path());
    let ini = &file(&files, root.path(), "/etc/grafana/grafana.ini").contents;
    let mut section = String::new();
    let mut disabled = None;
    for line in ini.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
        } else if let Some((key, value)) = line.split_once('=') {
            if section == "plugins" && key.trim() == "preinstall_disabled" {
                disabled = Some(value.trim().to_string());
            }
        }
    }
    assert_eq!(
        disabled.as_deref(),
        Some("true"),
        "grafana.ini must set [plugins] preinstall_disabled = true"
    );

    // Grafana reads these provisioning folders and logs an error for each one missing.
    let install = shell_lines(&read(&images_dir().join("grafana/provisioners/install.sh")));
    let made: Vec<&str> = install
        .iter()
        .filter(|l| l.trim_start().starts_with("install -d"))
        .flat_map(|l| l.split_whitespace())
        .collect();
    for folder in ["datasources", "dashboards", "alerting", "plugins"] {
        let path = format!("/etc/grafana/provisioning/{folder}");
        assert!(
            made.contains(&path.as_str()),
            "install.sh does not create {path}"
        );
    }
}

/// Retention stays the `--storage.tsdb.retention.time` flag on purpose. Prometheus 3.8
/// deprecated it for the config file's `storage.tsdb.retention`, but a deprecated flag keeps
/// working for the whole 3.x line (Prometheus' stability promise covers flags within a
/// major version), while that config key would make the rendered `prometheus.yml`
/// unverifiable: `cargo xtask up`, `promtool check config` and every rendering test run
/// Debian's Prometheus 2.42, which refuses the unknown key. This guard fails the day the
/// pinned Prometheus leaves 3.x, or the unit and `up` stop agreeing on the flag, so the
/// decision is made again then rather than forgotten.
#[test]
fn prometheus_retention_is_the_flag_while_the_pinned_prometheus_is_3_x() {
    let versions: toml::Value = toml::from_str(&read(&images_dir().join("versions.toml"))).unwrap();
    let pinned = versions["components"]["prometheus"]["version"]
        .as_str()
        .expect("images/versions.toml pins prometheus");
    let (major, _, _) = version(pinned);
    assert_eq!(
        major, 3,
        "Prometheus {pinned} is pinned: a new major version may drop the deprecated \
         --storage.tsdb.retention.time flag; move retention into prometheus.yml's \
         storage.tsdb.retention and render it only for the image"
    );
    let unit = read(&images_dir().join("prometheus/rootfs/etc/systemd/system/prometheus.service"));
    let role = read(&images_dir().join("prometheus/role.toml"));
    let flag = |text: &str| {
        text.split(|c: char| c.is_whitespace() || c == '"')
            .find(|word| word.starts_with("--storage.tsdb.retention.time="))
            .map(str::to_string)
    };
    assert_eq!(
        flag(&unit),
        Some("--storage.tsdb.retention.time=15d".to_string())
    );
    assert_eq!(
        flag(&unit),
        flag(&role),
        "the image and `cargo xtask up` keep the same retention"
    );
    let template = read(&images_dir().join("prometheus/templates/prometheus.yml.j2"));
    assert!(
        !template.contains("retention"),
        "retention is set twice: the flag and the config file"
    );
}
