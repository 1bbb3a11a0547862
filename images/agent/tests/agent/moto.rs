//! The agent against moto (a real EC2/SSM API on loopback): the EC2 tag source, waiting for
//! late tags, watch mode with restarts, and SSM secrets.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use common::*;
use testkit::Moto;

/// Blocking wrappers over the SDK calls the tests make against moto.
struct Aws {
    runtime: tokio::runtime::Runtime,
    ec2: aws_sdk_ec2::Client,
    ssm: aws_sdk_ssm::Client,
}

impl Aws {
    fn new(moto: &Moto) -> Aws {
        let credentials = Credentials::new("test", "test", None, None, "moto");
        let ec2 = aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(moto.endpoint())
            .region(Region::new("us-east-1"))
            .credentials_provider(credentials.clone())
            .build();
        let ssm = aws_sdk_ssm::Config::builder()
            .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
            .endpoint_url(moto.endpoint())
            .region(aws_sdk_ssm::config::Region::new("us-east-1"))
            .credentials_provider(credentials)
            .build();
        Aws {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            ec2: aws_sdk_ec2::Client::from_conf(ec2),
            ssm: aws_sdk_ssm::Client::from_conf(ssm),
        }
    }

    /// Launches one instance with `tags` and returns its id.
    fn launch(&self, tags: &[(&str, &str)]) -> String {
        let spec = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .set_tags(Some(tags.iter().map(|(k, v)| tag(k, v)).collect()))
            .build();
        let reservation = self
            .runtime
            .block_on(
                self.ec2
                    .run_instances()
                    .image_id("ami-12345678")
                    .min_count(1)
                    .max_count(1)
                    .tag_specifications(spec)
                    .send(),
            )
            .unwrap();
        reservation.instances()[0]
            .instance_id()
            .unwrap()
            .to_string()
    }

    /// Adds or overwrites tags on an instance.
    fn tag(&self, instance: &str, tags: &[(&str, &str)]) {
        let mut request = self.ec2.create_tags().resources(instance);
        for (k, v) in tags {
            request = request.tags(tag(k, v));
        }
        self.runtime.block_on(request.send()).unwrap();
    }

    /// Removes tags (by key) from an instance.
    fn untag(&self, instance: &str, keys: &[&str]) {
        let mut request = self.ec2.delete_tags().resources(instance);
        for key in keys {
            request = request.tags(Tag::builder().key(*key).build());
        }
        self.runtime.block_on(request.send()).unwrap();
    }

    fn put_secure_string(&self, name: &str, value: &str) {
        self.runtime
            .block_on(
                self.ssm
                    .put_parameter()
                    .name(name)
                    .value(value)
                    .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
                    .overwrite(true)
                    .send(),
            )
            .unwrap();
    }
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

/// The agent pointed at moto, reading tags through the EC2 API for `instance`.
fn agent_on_moto(
    moto: &Moto,
    mode: &str,
    role: &str,
    root: &Path,
    instance: &str,
    extra: &[&str],
) -> Command {
    let mut args = vec!["--tags-from", "ec2", "--instance-id", instance];
    args.extend_from_slice(extra);
    let mut command = agent(mode, role, root, &args);
    moto.apply_env(&mut command);
    command
}

#[test]
fn renders_from_ec2_tags() {
    let moto = Moto::start();
    let aws = Aws::new(&moto);
    let instance = aws.launch(&[("obstack:role", "app"), ("obstack:peer:loki", "10.0.1.12")]);
    let _other = aws.launch(&[("obstack:peer:loki", "10.9.9.9")]);
    let root = tempfile::tempdir().unwrap();
    let output = run(
        &mut agent_on_moto(&moto, "render", "app", root.path(), &instance, &[]),
        Duration::from_secs(60),
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let promtail = read(&root.path().join("etc/promtail/config.yaml"));
    assert!(
        promtail.contains("url: http://10.0.1.12:3100/loki/api/v1/push"),
        "{promtail}"
    );
    assert!(
        promtail.contains(&format!("instance: {instance}")),
        "{promtail}"
    );
}

#[test]
fn tags_added_late_are_picked_up() {
    let moto = Moto::start();
    let aws = Aws::new(&moto);
    let instance = aws.launch(&[("obstack:role", "app")]);
    let root = tempfile::tempdir().unwrap();
    let extra = [
        "--wait-timeout",
        "60",
        "--min-delay",
        "0.05",
        "--max-delay",
        "0.2",
    ];
    let mut running = Running::spawn(&mut agent_on_moto(
        &moto,
        "render",
        "app",
        root.path(),
        &instance,
        &extra,
    ));
    running.wait_for_lines(
        "waiting for tag(s) obstack:peer:loki",
        3,
        Duration::from_secs(30),
    );
    assert!(
        !root.path().join("etc").exists(),
        "wrote before the required tag existed"
    );
    aws.tag(&instance, &[("obstack:peer:loki", "10.0.4.4:3101")]);
    let code = running.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{}", running.seen.join("\n"));
    let promtail = read(&root.path().join("etc/promtail/config.yaml"));
    assert!(
        promtail.contains("url: http://10.0.4.4:3101/"),
        "{promtail}"
    );
}

#[test]
fn watch_rerenders_and_restarts_only_the_affected_unit() {
    let moto = Moto::start();
    let aws = Aws::new(&moto);
    let instance = aws.launch(&[("obstack:peer:loki", "10.0.0.3")]);
    let root = tempfile::tempdir().unwrap();
    let first = run(
        &mut agent_on_moto(&moto, "render", "app", root.path(), &instance, &[]),
        Duration::from_secs(60),
    );
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let env_file = root.path().join("etc/default/demo-app");
    let env_before = std::fs::read(&env_file).unwrap();
    let config = root.path().join("etc/promtail/config.yaml");

    let scratch = tempfile::tempdir().unwrap();
    let restarts = scratch.path().join("restarts.log");
    let restart_command = format!("echo >> '{}'", restarts.display());
    let extra = [
        "--interval",
        "0.1",
        "--restart-command",
        restart_command.as_str(),
    ];
    let mut watch = Running::spawn(&mut agent_on_moto(
        &moto,
        "watch",
        "app",
        root.path(),
        &instance,
        &extra,
    ));
    watch.wait_for_lines("watching role app", 1, Duration::from_secs(30));
    // Several polls over unchanged tags: nothing rewritten, nothing restarted.
    std::thread::sleep(Duration::from_millis(600));
    assert!(!restarts.exists(), "restarted although nothing changed");

    aws.tag(&instance, &[("obstack:peer:loki", "10.0.0.99")]);
    eventually(Duration::from_secs(30), "the new Loki address", || {
        read(&config).contains("http://10.0.0.99:3100/")
    });
    watch.wait_for_lines("restarted promtail.service", 1, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        read(&restarts),
        "promtail.service\n",
        "only promtail's file changed"
    );
    assert_eq!(std::fs::read(&env_file).unwrap(), env_before);

    // A bad value is refused in watch mode: the current config stays, nothing restarts.
    let before = read(&config);
    aws.tag(&instance, &[("obstack:peer:loki", "10.0.0.1\nfoo: bar")]);
    watch.wait_for_lines("has a bad value", 1, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(read(&config), before);
    assert_eq!(read(&restarts), "promtail.service\n");
    watch.drain();
    let bad_lines = watch
        .seen
        .iter()
        .filter(|l| l.contains("has a bad value"))
        .count();
    assert_eq!(
        bad_lines, 1,
        "a lasting problem is logged once: {:?}",
        watch.seen
    );
}

#[test]
fn ssm_secret_is_written_0600_and_never_logged() {
    let moto = Moto::start();
    let aws = Aws::new(&moto);
    let password = "Sup3r-s3cret-Gr4fana-pw";
    aws.put_secure_string("/obstack/grafana/admin-password", password);
    let instance = aws.launch(&[
        ("obstack:peer:prometheus", "10.0.0.2"),
        ("obstack:peer:loki", "10.0.0.3"),
        (
            "obstack:grafana-admin-password-param",
            "/obstack/grafana/admin-password",
        ),
    ]);
    let root = tempfile::tempdir().unwrap();
    let output = run(
        &mut agent_on_moto(&moto, "render", "grafana", root.path(), &instance, &[]),
        Duration::from_secs(60),
    );
    let (log, printed) = (stderr(&output), stdout(&output));
    assert_eq!(output.status.code(), Some(0), "{log}");
    let secret = root.path().join("etc/grafana/secrets/admin_password");
    assert_eq!(read(&secret), password, "decrypted value expected");
    assert_eq!(mode(&secret), 0o600);
    assert!(log.contains("wrote secret"), "{log}");
    assert!(
        !log.contains(password) && !printed.contains(password),
        "secret leaked: {log}{printed}"
    );
    let ini = read(&root.path().join("etc/grafana/grafana.ini"));
    assert!(
        !ini.contains(password),
        "the password must stay out of configs"
    );
    assert!(
        ini.contains(&format!("$__file{{{}}}", secret.display())),
        "{ini}"
    );

    let key_path = root.path().join("var/lib/grafana/secret_key");
    let key = read(&key_path);
    assert_eq!(key.len(), 64, "32 random bytes in hex");
    assert!(key.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(mode(&key_path), 0o600);
    assert!(!log.contains(&key), "generated secret leaked: {log}");

    // A second run keeps the generated secret and rewrites nothing.
    let again = run(
        &mut agent_on_moto(&moto, "render", "grafana", root.path(), &instance, &[]),
        Duration::from_secs(60),
    );
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(read(&key_path), key, "generated secret overwritten");
    assert!(!stderr(&again).contains("wrote "), "{}", stderr(&again));
}

#[test]
fn a_missing_ssm_parameter_fails_after_the_wait() {
    let moto = Moto::start();
    let aws = Aws::new(&moto);
    let instance = aws.launch(&[
        ("obstack:peer:prometheus", "10.0.0.2"),
        ("obstack:peer:loki", "10.0.0.3"),
        ("obstack:grafana-admin-password-param", "/obstack/none"),
    ]);
    let root = tempfile::tempdir().unwrap();
    let extra = [
        "--wait-timeout",
        "0.3",
        "--min-delay",
        "0.1",
        "--max-delay",
        "0.1",
    ];
    let output = run(
        &mut agent_on_moto(&moto, "render", "grafana", root.path(), &instance, &extra),
        Duration::from_secs(60),
    );
    let log = stderr(&output);
    assert_eq!(output.status.code(), Some(6), "{log}");
    assert!(log.contains("/obstack/none"), "{log}");
    assert!(
        !root.path().join("etc").exists(),
        "wrote configs without the secret"
    );
}

/// The real Prometheus role (images/prometheus), not a fixture, against moto.
fn prometheus_on_moto(moto: &Moto, root: &Path, instance: &str, extra: &[&str]) -> Command {
    let images = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("images/agent has a parent");
    let mut command = Command::new(env!("CARGO_BIN_EXE_stack-agent"));
    command
        .args(["render", "--role", "prometheus", "--spec-dir"])
        .arg(images)
        .arg("--root")
        .arg(root)
        .args(["--tags-from", "ec2", "--instance-id", instance])
        .args(extra)
        .env_remove("STACK_AGENT_SPEC_DIR")
        .env_remove("AWS_PROFILE")
        .stdin(std::process::Stdio::null());
    moto.apply_env(&mut command);
    command
}

#[test]
fn the_alert_urls_come_from_ssm_into_their_own_files_and_no_log() {
    let moto = Moto::start();
    let aws = Aws::new(&moto);
    let slack = "https://hooks.slack.com/services/T0SECRET/B0SECRET/xyzzy";
    let webhook = "https://events.example.com/v1/SECRET-token";
    aws.put_secure_string("/obstack/test/alert-slack-url", &format!("{slack}\n"));
    aws.put_secure_string("/obstack/test/alert-webhook-url", webhook);
    let instance = aws.launch(&[
        ("obstack:role", "prometheus"),
        ("obstack:peer:app", "10.0.1.10"),
        (
            "obstack:alert-slack-url-param",
            "/obstack/test/alert-slack-url",
        ),
        (
            "obstack:alert-webhook-url-param",
            "/obstack/test/alert-webhook-url",
        ),
    ]);
    let root = tempfile::tempdir().unwrap();
    let slack_file = root.path().join("etc/alertmanager/secrets/slack_url");
    let webhook_file = root.path().join("etc/alertmanager/secrets/webhook_url");

    // Dry-run: nothing fetched; the config, which names the files only, is printed.
    let dry = run(
        &mut prometheus_on_moto(&moto, root.path(), &instance, &["--dry-run"]),
        Duration::from_secs(60),
    );
    assert_eq!(dry.status.code(), Some(0), "{}", stderr(&dry));
    let printed = stdout(&dry);
    for wanted in [
        format!(
            "would write secret {} from SSM parameter /obstack/test/alert-slack-url",
            slack_file.display()
        ),
        format!("api_url_file: \"{}\"", slack_file.display()),
        format!("url_file: \"{}\"", webhook_file.display()),
    ] {
        assert!(printed.contains(&wanted), "`{wanted}` not in:\n{printed}");
    }
    assert!(!printed.contains("SECRET"), "{printed}");

    let output = run(
        &mut prometheus_on_moto(&moto, root.path(), &instance, &[]),
        Duration::from_secs(60),
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    // The trailing line break of the parameter is not part of the URL.
    assert_eq!(read(&slack_file), slack);
    assert_eq!(read(&webhook_file), webhook);
    assert_eq!((mode(&slack_file), mode(&webhook_file)), (0o600, 0o600));
    let config_path = root.path().join("etc/alertmanager/alertmanager.yml");
    let config = read(&config_path);
    assert!(!config.contains("SECRET"), "{config}");
    let logged = format!("{}{}", stderr(&output), stdout(&output));
    assert!(!logged.contains("SECRET"), "a URL was logged: {logged}");
    assert!(
        logged.contains("wrote secret ") && !logged.contains("warning:"),
        "{logged}"
    );

    let quick = [
        "--wait-timeout",
        "0.3",
        "--min-delay",
        "0.05",
        "--max-delay",
        "0.1",
    ];
    // A Slack URL where Alertmanager posts its own JSON is refused, naming the parameter
    // and the fix but not the value; every file keeps its last good contents.
    aws.put_secure_string("/obstack/test/alert-webhook-url", slack);
    let refused = run(
        &mut prometheus_on_moto(&moto, root.path(), &instance, &quick),
        Duration::from_secs(60),
    );
    assert_ne!(refused.status.code(), Some(0));
    let message = stderr(&refused);
    for wanted in [
        "/obstack/test/alert-webhook-url",
        "400 no_text",
        "alert_slack_webhook_url_parameter",
    ] {
        assert!(message.contains(wanted), "`{wanted}` not in: {message}");
    }
    assert!(
        !message.contains("SECRET"),
        "the value was logged: {message}"
    );
    assert_eq!(read(&webhook_file), webhook);
    assert_eq!(read(&config_path), config);

    // The webhook's tag removed: its file goes, and the config no longer names it.
    aws.untag(&instance, &["obstack:alert-webhook-url-param"]);
    let untagged = run(
        &mut prometheus_on_moto(&moto, root.path(), &instance, &quick),
        Duration::from_secs(60),
    );
    assert_eq!(untagged.status.code(), Some(0), "{}", stderr(&untagged));
    assert!(!webhook_file.exists(), "the unused URL stays on disk");
    assert!(
        stderr(&untagged).contains(&format!("removed secret {}", webhook_file.display())),
        "{}",
        stderr(&untagged)
    );
    let config = read(&config_path);
    assert!(!config.contains("webhook_configs"), "{config}");
    assert!(config.contains("slack_configs"), "{config}");
}
