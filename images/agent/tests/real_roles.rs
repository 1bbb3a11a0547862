//! The agent binary over the real role specs and templates in images/<role>/ (not the
//! fixtures): every role renders from a full tag set, and Prometheus' config passes promtool.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn images_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("images/agent has a parent")
}

/// `stack-agent render` of a real role from a tag file, into `root`.
fn real_agent(role: &str, tags: &Path, root: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stack-agent"));
    command
        .args(["render", "--role", role, "--tags-from"])
        .arg(format!("file:{}", tags.display()))
        .arg("--spec-dir")
        .arg(images_dir())
        .arg("--root")
        .arg(root)
        .args(extra);
    command
}

fn render_real(role: &str, tags: &Path, root: &Path) -> std::process::Output {
    let dry = run(
        &mut real_agent(role, tags, root, &["--dry-run"]),
        Duration::from_secs(30),
    );
    assert_eq!(
        dry.status.code(),
        Some(0),
        "{role} dry-run: {}",
        stderr(&dry)
    );
    assert!(!root.exists(), "{role} dry-run wrote files");
    run(
        &mut real_agent(role, tags, root, &[]),
        Duration::from_secs(30),
    )
}

#[test]
fn every_real_role_renders_and_prometheus_passes_promtool() {
    let promtool = testkit::require_tool("promtool");
    let dir = tempfile::tempdir().unwrap();
    let tags = dir.path().join("tags.json");
    write_tags(
        &tags,
        &[
            ("obstack:peer:app", "10.0.1.10"),
            ("obstack:peer:prometheus", "10.0.1.11"),
            ("obstack:peer:loki", "10.0.1.12"),
            ("obstack:peer:grafana", "10.0.1.13"),
            ("obstack:bind-address", "127.0.0.1"),
        ],
    );
    // Grafana's admin password needs SSM (covered by the moto tests); the others are local.
    for (role, expected) in [
        ("app", "etc/promtail/config.yaml"),
        ("loki", "etc/loki/config.yaml"),
        ("prometheus", "etc/prometheus/prometheus.yml"),
    ] {
        let root = dir.path().join(role);
        let output = render_real(role, &tags, &root);
        assert_eq!(output.status.code(), Some(0), "{role}: {}", stderr(&output));
        assert!(
            root.join(expected).is_file(),
            "{role} did not write {expected}"
        );
    }
    let config = dir.path().join("prometheus/etc/prometheus/prometheus.yml");
    assert!(
        read(&config).contains("10.0.1.10:5000"),
        "the app's address is scraped"
    );
    let check = Command::new(promtool)
        .args(["check", "config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "promtool rejected the rendered config: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}
