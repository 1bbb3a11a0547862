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

/// The Prometheus instance's tags, plus `extra`, in a tag file under `dir`.
fn prometheus_tags(dir: &Path, extra: &[(&str, &str)]) -> std::path::PathBuf {
    let path = dir.join("tags.json");
    let mut tags = vec![
        ("obstack:peer:app", "10.0.1.10"),
        ("obstack:bind-address", "127.0.0.1"),
    ];
    tags.extend_from_slice(extra);
    write_tags(&path, &tags);
    path
}

#[test]
fn a_bad_sns_topic_arn_is_refused_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [
        "arn:aws:sns:us-east-1:1234:obstack-alerts",
        "arn:aws:sqs:us-east-1:123456789012:obstack-alerts",
        "obstack-alerts",
        "arn:aws:sns:us-east-1:123456789012:obstack-alerts\n  - name: evil",
    ] {
        let tags = prometheus_tags(dir.path(), &[("obstack:alert-sns-topic-arn", bad)]);
        let root = dir.path().join("root");
        let output = run(
            &mut real_agent("prometheus", &tags, &root, &[]),
            Duration::from_secs(30),
        );
        assert_eq!(
            output.status.code(),
            Some(4),
            "{bad:?}: {}",
            stderr(&output)
        );
        let stderr = stderr(&output);
        assert!(
            stderr.contains("obstack:alert-sns-topic-arn"),
            "the error does not name the tag: {stderr}"
        );
        assert_eq!(
            stderr.trim_end().lines().count(),
            2,
            "{bad:?}: not one error line after the start line: {stderr}"
        );
        assert!(!root.exists(), "{bad:?}: something was written");
    }
}

#[test]
fn without_a_receiver_alertmanager_is_rendered_and_a_warning_logged() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bare");
    let output = render_real("prometheus", &prometheus_tags(dir.path(), &[]), &root);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let config = read(&root.join("etc/alertmanager/alertmanager.yml"));
    assert!(config.contains("receiver: default"), "{config}");
    let warned = stderr(&output);
    assert!(
        warned.contains("warning:") && warned.contains("no alert receiver is configured"),
        "{warned}"
    );

    // With the topic tagged there is nothing to warn about, and the topic is in the config.
    let arn = "arn:aws:sns:eu-west-1:123456789012:obstack-alerts";
    let root = dir.path().join("sns");
    let tags = prometheus_tags(dir.path(), &[("obstack:alert-sns-topic-arn", arn)]);
    let output = render_real("prometheus", &tags, &root);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(!stderr(&output).contains("warning:"), "{}", stderr(&output));
    let config = read(&root.join("etc/alertmanager/alertmanager.yml"));
    assert!(
        config.contains(&format!("topic_arn: \"{arn}\"")),
        "{config}"
    );
    assert!(config.contains("region: eu-west-1"), "{config}");
}
