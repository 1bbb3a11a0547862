//! `render` against a tag file: what it writes, what it refuses, and the exit codes.

use crate::common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::*;
use stack_agent::{render_role, AgentError};

const QUICK: &[&str] = &[
    "--wait-timeout",
    "0.5",
    "--min-delay",
    "0.05",
    "--max-delay",
    "0.1",
];

fn file_flag(path: &std::path::Path) -> String {
    format!("file:{}", path.display())
}

#[test]
fn renders_the_app_role_from_a_tag_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let tags = dir.path().join("tags.json");
    write_tags(
        &tags,
        &[
            ("obstack:peer:loki", "10.0.1.12"),
            ("obstack:bind-address", "127.0.0.1"),
        ],
    );
    let from = file_flag(&tags);
    let output = run(
        &mut agent("render", "app", &root, &["--tags-from", &from]),
        Duration::from_secs(30),
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let promtail = read(&root.join("etc/promtail/config.yaml"));
    assert!(
        promtail.contains("- url: http://10.0.1.12:3100/loki/api/v1/push\n"),
        "{promtail}"
    );
    assert!(
        promtail.contains("http_listen_address: 127.0.0.1\n"),
        "{promtail}"
    );
    assert!(promtail.contains(&format!(
        "filename: {}/var/lib/promtail/positions.yaml",
        root.display()
    )));
    assert!(promtail.contains("instance: local\n"), "{promtail}");
    assert!(
        !promtail.contains("grafana at"),
        "absent optional peer must not render: {promtail}"
    );
    assert_eq!(mode(&root.join("etc/promtail/config.yaml")), 0o644);
    let env = read(&root.join("etc/default/demo-app"));
    assert!(env.starts_with("DEMO_APP_LISTEN=127.0.0.1:5000\n"), "{env}");
    assert!(stderr(&output).contains("wrote "), "{}", stderr(&output));
}

#[test]
fn optional_peers_and_ports_in_tags_are_used() {
    let dir = tempfile::tempdir().unwrap();
    let tags = dir.path().join("tags.toml");
    std::fs::write(
        &tags,
        "\"obstack:peer:loki\" = \"[fd00::5]:3101\"\n\"obstack:peer:grafana\" = \"grafana.internal\"\n",
    )
    .unwrap();
    let from = file_flag(&tags);
    let output = run(
        &mut agent(
            "render",
            "app",
            dir.path(),
            &["--tags-from", &from, "--instance-id", "i-0abc"],
        ),
        Duration::from_secs(30),
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let promtail = read(&dir.path().join("etc/promtail/config.yaml"));
    assert!(
        promtail.contains("- url: http://[fd00::5]:3101/loki/api/v1/push"),
        "{promtail}"
    );
    assert!(
        promtail.contains("# grafana at grafana.internal:3000"),
        "{promtail}"
    );
    assert!(promtail.contains("instance: i-0abc"), "{promtail}");
    assert!(
        promtail.contains("http_listen_address: 0.0.0.0"),
        "default bind: {promtail}"
    );
}

#[test]
fn bad_values_are_refused_and_leave_the_previous_config_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let tags = dir.path().join("tags.json");
    let from = file_flag(&tags);
    write_tags(&tags, &[("obstack:peer:loki", "10.0.0.1")]);
    let first = run(
        &mut agent("render", "app", &root, &["--tags-from", &from]),
        Duration::from_secs(30),
    );
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let config = root.join("etc/promtail/config.yaml");
    let before = read(&config);
    let over_long = "a".repeat(300);
    for bad in [
        "10.0.0.1\nfoo: bar",
        "",
        "10.0.0.1 foo",
        over_long.as_str(),
        "10.0.0.1:99999",
    ] {
        write_tags(&tags, &[("obstack:peer:loki", bad)]);
        let output = run(
            &mut agent("render", "app", &root, &["--tags-from", &from]),
            Duration::from_secs(30),
        );
        let log = stderr(&output);
        assert_eq!(output.status.code(), Some(4), "value {bad:?}: {log}");
        assert!(
            log.contains("obstack:peer:loki"),
            "the error must name the tag: {log}"
        );
        assert!(
            !log.contains("foo: bar"),
            "the raw value must not reach the log: {log}"
        );
        assert_eq!(read(&config), before, "value {bad:?} changed the config");
    }
    // A bad optional tag is refused too: no rendering on a half-valid tag set.
    write_tags(
        &tags,
        &[
            ("obstack:peer:loki", "10.0.0.1"),
            ("obstack:bind-address", "0.0.0.0\nx"),
        ],
    );
    let output = run(
        &mut agent("render", "app", &root, &["--tags-from", &from]),
        Duration::from_secs(30),
    );
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("obstack:bind-address"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_missing_required_tag_times_out_without_writing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let tags = dir.path().join("tags.json");
    write_tags(
        &tags,
        &[
            ("obstack:role", "app"),
            ("obstack:peer:grafana", "10.0.0.9"),
        ],
    );
    let from = file_flag(&tags);
    let mut args = vec!["--tags-from", from.as_str()];
    args.extend_from_slice(QUICK);
    let output = run(
        &mut agent("render", "app", &root, &args),
        Duration::from_secs(30),
    );
    let log = stderr(&output);
    assert_eq!(output.status.code(), Some(3), "{log}");
    assert!(
        log.contains("waiting for tag(s) obstack:peer:loki"),
        "{log}"
    );
    assert!(log.contains("timed out"), "{log}");
    assert!(
        !root.exists(),
        "nothing may be written without the required peer"
    );
}

#[test]
fn an_unchanged_output_is_not_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let tags = dir.path().join("tags.json");
    write_tags(&tags, &[("obstack:peer:loki", "10.0.0.1")]);
    let from = file_flag(&tags);
    let config = dir.path().join("etc/promtail/config.yaml");
    let first = run(
        &mut agent("render", "app", dir.path(), &["--tags-from", &from]),
        Duration::from_secs(30),
    );
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let inode = std::fs::metadata(&config).unwrap().ino();
    let second = run(
        &mut agent("render", "app", dir.path(), &["--tags-from", &from]),
        Duration::from_secs(30),
    );
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    assert_eq!(
        std::fs::metadata(&config).unwrap().ino(),
        inode,
        "rewritten although unchanged"
    );
    assert!(
        stderr(&second).contains("unchanged "),
        "{}",
        stderr(&second)
    );
    assert!(!stderr(&second).contains("wrote "), "{}", stderr(&second));
}

#[test]
fn dry_run_prints_the_files_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let tags = dir.path().join("tags.json");
    write_tags(
        &tags,
        &[
            ("obstack:peer:loki", "10.0.0.3"),
            ("obstack:peer:prometheus", "10.0.0.2"),
            (
                "obstack:grafana-admin-password-param",
                "/obstack/grafana/admin",
            ),
        ],
    );
    let from = file_flag(&tags);
    let output = run(
        &mut agent(
            "render",
            "grafana",
            &root,
            &["--tags-from", &from, "--dry-run"],
        ),
        Duration::from_secs(30),
    );
    let printed = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(printed.contains("url: http://10.0.0.2:9090"), "{printed}");
    assert!(printed.contains("would write secret"), "{printed}");
    assert!(printed.contains("/obstack/grafana/admin"), "{printed}");
    assert!(printed.contains("would generate secret"), "{printed}");
    assert!(!root.exists(), "dry-run wrote something");
}

#[test]
fn a_template_error_is_a_render_error() {
    let dir = tempfile::tempdir().unwrap();
    let tags = dir.path().join("tags.json");
    write_tags(&tags, &[]);
    let from = file_flag(&tags);
    let output = run(
        &mut agent("render", "broken", dir.path(), &["--tags-from", &from]),
        Duration::from_secs(30),
    );
    let log = stderr(&output);
    assert_eq!(output.status.code(), Some(5), "{log}");
    assert!(log.contains("templates/bad.yaml.j2"), "{log}");
    assert!(!dir.path().join("etc").exists());

    let output = run(
        &mut agent(
            "render",
            "no-such-role",
            dir.path(),
            &["--tags-from", &from],
        ),
        Duration::from_secs(30),
    );
    assert_eq!(output.status.code(), Some(5), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no-such-role"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn bad_command_lines_exit_2_and_help_documents_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(
        &mut agent("render", "app", dir.path(), &["--tags-from", "imdsv1"]),
        Duration::from_secs(30),
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("imdsv1"));
    let help = run(
        std::process::Command::new(env!("CARGO_BIN_EXE_stack-agent")).args(["render", "--help"]),
        Duration::from_secs(30),
    );
    let text = stdout(&help);
    assert!(text.contains("3  timed out waiting"), "{text}");
    assert!(text.contains("4  a tag has a bad value"), "{text}");
    assert!(text.contains("5  render error"), "{text}");
}

#[test]
fn render_role_is_pure_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    let mut tags = BTreeMap::new();
    let missing = render_role(&spec_dir(), "grafana", &tags, &root, "i-1").unwrap_err();
    assert!(
        matches!(&missing, AgentError::MissingTags(keys) if keys.contains(&"obstack:peer:loki".to_string())),
        "{missing:?}"
    );
    tags.insert("obstack:peer:loki".to_string(), "10.0.0.3".to_string());
    tags.insert(
        "obstack:peer:prometheus".to_string(),
        "10.0.0.2:9091".to_string(),
    );
    let files = render_role(&spec_dir(), "grafana", &tags, &root, "i-1").unwrap();
    let paths: Vec<_> = files.iter().map(|f| f.path.clone()).collect();
    assert_eq!(
        paths,
        [
            dir.path()
                .join("etc/grafana/provisioning/datasources/obstack.yaml"),
            dir.path().join("etc/grafana/grafana.ini")
        ]
    );
    assert!(files[0].contents.contains("url: http://10.0.0.2:9091\n"));
    assert_eq!(
        (files[0].mode, files[0].services.clone()),
        (0o640, vec!["grafana-server.service".to_string()])
    );
    let secret_path = dir.path().join("etc/grafana/secrets/admin_password");
    assert!(
        files[1].contents.contains(&format!(
            "admin_password = $__file{{{}}}\n",
            secret_path.display()
        )),
        "{}",
        files[1].contents
    );
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "render_role wrote files"
    );

    tags.insert(
        "obstack:peer:loki".to_string(),
        "10.0.0.3\nx: y".to_string(),
    );
    let bad = render_role(&spec_dir(), "grafana", &tags, &root, "i-1").unwrap_err();
    assert!(
        matches!(&bad, AgentError::BadTag { key, .. } if key == "obstack:peer:loki"),
        "{bad:?}"
    );
}
