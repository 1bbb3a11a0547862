//! The agent binary over the real role specs and templates in images/<role>/ (not the
//! fixtures): every role renders from a full tag set, and Prometheus' config passes promtool.

use crate::common;

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

/// Loki's tags for S3 storage, with `extra` added or overriding, in a tag file under `dir`.
fn loki_s3_tags(dir: &Path, extra: &[(&str, &str)]) -> std::path::PathBuf {
    let path = dir.join("loki-tags.json");
    let mut tags: std::collections::BTreeMap<&str, &str> = [
        ("obstack:bind-address", "127.0.0.1"),
        ("obstack:loki-s3-bucket", "obstack-team-a-loki-123456789012"),
        ("obstack:loki-s3-region", "eu-central-1"),
        ("obstack:loki-s3-from", "2027-01-15"),
    ]
    .into();
    tags.extend(extra.iter().copied());
    let pairs: Vec<(&str, &str)> = tags.into_iter().collect();
    write_tags(&path, &pairs);
    path
}

#[test]
fn loki_renders_s3_storage_and_refuses_partial_or_bad_s3_tags_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("good");
    let output = render_real("loki", &loki_s3_tags(dir.path(), &[]), &root);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let config = read(&root.join("etc/loki/config.yaml"));
    assert!(config.contains("from: \"2027-01-15\""), "{config}");
    assert!(config.contains("object_store: s3\n"), "{config}");

    let cases: [(&[(&str, &str)], &str); 6] = [
        (&[("obstack:loki-s3-bucket", "")], "obstack:loki-s3-bucket"),
        (
            &[("obstack:loki-s3-bucket", "Not_A_Bucket")],
            "obstack:loki-s3-bucket",
        ),
        (
            &[("obstack:loki-s3-region", "eu-central-1\nx: y")],
            "obstack:loki-s3-region",
        ),
        (
            &[("obstack:loki-s3-from", "2027-02-30")],
            "obstack:loki-s3-from",
        ),
        (
            &[("obstack:loki-s3-from", "2024-03-01")],
            "obstack:loki-s3-from",
        ),
        (
            &[("obstack:loki-s3-from", "tomorrow")],
            "obstack:loki-s3-from",
        ),
    ];
    for (extra, named) in cases {
        let root = dir.path().join("bad");
        let tags = loki_s3_tags(dir.path(), extra);
        let output = run(
            &mut real_agent("loki", &tags, &root, &[]),
            Duration::from_secs(30),
        );
        let log = stderr(&output);
        assert_eq!(output.status.code(), Some(4), "{extra:?}: {log}");
        assert!(
            log.contains(named),
            "{extra:?}: the error does not name {named}: {log}"
        );
        assert!(
            !log.contains("x: y"),
            "the raw value reached the log: {log}"
        );
        assert!(!root.exists(), "{extra:?}: something was written");
    }

    // Some but not all of the three: refused the same way, naming the missing tag.
    for dropped in [
        "obstack:loki-s3-bucket",
        "obstack:loki-s3-region",
        "obstack:loki-s3-from",
    ] {
        let root = dir.path().join("partial");
        let path = loki_s3_tags(dir.path(), &[]);
        let mut tags: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&read(&path)).unwrap();
        tags.remove(dropped);
        std::fs::write(&path, serde_json::Value::Object(tags).to_string()).unwrap();
        let output = run(
            &mut real_agent("loki", &path, &root, &[]),
            Duration::from_secs(30),
        );
        let log = stderr(&output);
        assert_eq!(output.status.code(), Some(4), "without {dropped}: {log}");
        assert!(
            log.contains(&format!("comes without {dropped}")),
            "{dropped}: {log}"
        );
        assert!(!root.exists(), "without {dropped}: something was written");
    }
}

#[test]
fn with_the_fleet_tag_prometheus_does_not_wait_for_the_app_address() {
    let dir = tempfile::tempdir().unwrap();
    let quick = [
        "--wait-timeout",
        "0.5",
        "--min-delay",
        "0.05",
        "--max-delay",
        "0.1",
    ];
    // No fleet tag, no app address: still waited for (exit 3), nothing written.
    let single = dir.path().join("single.json");
    write_tags(&single, &[("obstack:bind-address", "127.0.0.1")]);
    let root = dir.path().join("single");
    let output = run(
        &mut real_agent("prometheus", &single, &root, &quick),
        Duration::from_secs(30),
    );
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("obstack:peer:app"),
        "{}",
        stderr(&output)
    );
    assert!(!root.exists());

    // The fleet tag without the deployment: that one is waited for instead.
    let fleet = dir.path().join("fleet.json");
    write_tags(
        &fleet,
        &[
            ("obstack:bind-address", "127.0.0.1"),
            ("obstack:app-fleet-desired", "3"),
        ],
    );
    let root = dir.path().join("no-deployment");
    let output = run(
        &mut real_agent("prometheus", &fleet, &root, &quick),
        Duration::from_secs(30),
    );
    let log = stderr(&output);
    assert_eq!(output.status.code(), Some(3), "{log}");
    assert!(log.contains("obstack:deployment"), "{log}");
    assert!(!log.contains("obstack:peer:app"), "{log}");
    assert!(!root.exists());

    // With both, Prometheus renders without any app address.
    write_tags(
        &fleet,
        &[
            ("obstack:bind-address", "127.0.0.1"),
            ("obstack:app-fleet-desired", "3"),
            ("obstack:deployment", "team-a"),
        ],
    );
    let root = dir.path().join("fleet");
    let output = render_real("prometheus", &fleet, &root);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(root.join("etc/prometheus/prometheus.yml").is_file());
}
