//! The role-by-role roll-out (issue 16) as a user meets it:
//! - its health gate against real services on loopback (the demo app and Debian's
//!   Prometheus scraping it): healthy steps pass, and when the app dies the roll-out stops
//!   at that step, names the role and the failing check, and applies nothing after it;
//! - `cargo xtask deploy --plan-only` with new AMIs for every role, against a recording
//!   stand-in for `terraform` (no provider can be downloaded here): the sequence it prints
//!   and the AMI map Terraform's plan of the first apply gets;
//! - the S3 backend override with real Terraform against moto's S3: the state lands in the
//!   bucket, and a held lock file stops a second writer.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use testkit::services::{start_app, start_prometheus, start_prometheus_with};
use xtask::deploy::health::{self, Check, Checker, PrometheusApi, StackEndpoints, WaitOptions};
use xtask::deploy::rollout::{self, Step};
use xtask::roles::Registry;

fn amis(suffix: &str) -> BTreeMap<String, String> {
    ["app", "grafana", "loki", "prometheus"]
        .iter()
        .map(|role| (role.to_string(), format!("ami-{role}{suffix}")))
        .collect()
}

#[test]
fn the_gate_passes_on_healthy_services_then_a_dead_app_stops_the_roll_out_at_its_step() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::load_default().unwrap();
    let (app, app_port) = start_app(dir.path());
    let (_prometheus, prometheus_port) = start_prometheus(dir.path(), app_port);
    // What deploy reads from Terraform's outputs, here on loopback: the app and Prometheus
    // exposed, Loki and Grafana not deployed in this test.
    let endpoints = StackEndpoints {
        urls: [("app", app_port), ("prometheus", prometheus_port)]
            .iter()
            .map(|(role, port)| (role.to_string(), format!("http://127.0.0.1:{port}")))
            .collect(),
        exposed: [("app".to_string(), true), ("prometheus".to_string(), true)].into(),
        grafana_auth: None,
    };
    let checker = Checker::new(Duration::from_secs(2)).unwrap();

    let steps = rollout::plan(&registry.rollout_order(), &amis("1"), &amis("2"), false).unwrap();
    let mut app = Some(app);
    let mut applied = Vec::new();
    let mut passed = Vec::new();
    // Long while everything is up; short once the app is gone (the wait must time out).
    let timeout = std::cell::Cell::new(Duration::from_secs(60));
    let stopped = rollout::execute(
        &steps,
        |step: &Step| {
            applied.push(step.label());
            // Grafana's new AMI "breaks" the app it is scraped next to: the app dies.
            if step.roles == ["grafana"] {
                drop(app.take());
                timeout.set(Duration::from_secs(4));
                // A real apply takes minutes; here, wait (bounded) until Prometheus has
                // scraped the dead app once, or its targets would still say up.
                let targets = health::Check::PrometheusTargets {
                    name: "targets".into(),
                    api: health::PrometheusApi::Direct(format!(
                        "http://127.0.0.1:{prometheus_port}"
                    )),
                };
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while checker.run(&targets).is_ok() && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            Ok(())
        },
        |step: &Step| {
            let gate = rollout::step_gate_roles(&registry, step);
            let checks = health::checks_for_roles(&endpoints, &gate);
            anyhow::ensure!(!checks.is_empty(), "no check for {gate:?}");
            let options = WaitOptions {
                timeout: timeout.get(),
                interval: Duration::from_millis(300),
                progress: false,
            };
            health::wait_until_healthy(&checker, &checks, &options)?;
            passed.push(step.label());
            Ok(())
        },
        |step: &Step| format!("rollback {}", rollout::rollback_amis(step)["grafana"]),
    )
    .expect_err("the dead app fails grafana's gate (Prometheus scrapes it)");

    assert_eq!(
        passed,
        ["loki", "prometheus"],
        "healthy steps pass their gate"
    );
    assert_eq!(
        applied,
        ["loki", "prometheus", "grafana"],
        "app is never applied"
    );
    let line = stopped.to_string();
    assert!(
        line.starts_with("roll-out stopped at grafana (apply 3 of 4): health gate failed:"),
        "{line}"
    );
    assert!(
        line.contains("prometheus targets up: 1 of 1 targets not up: app"),
        "the failing check and why: {line}"
    );
    assert!(line.contains("app stays on its old AMI"), "{line}");
    assert!(
        line.ends_with("roll grafana back with: rollback ami-grafana1"),
        "{line}"
    );
}

/// Two app instances as a fleet's Prometheus sees them: job `demo-app`, each labelled with
/// the AMI it runs (EC2 discovery's `ami` label; static labels stand in for it here).
fn fleet_prometheus(dir: &Path, amis: [&str; 2]) -> (Vec<testkit::services::Running>, u16) {
    let (first, first_port) = start_app(&subdir(dir, "a"));
    let (second, second_port) = start_app(&subdir(dir, "b"));
    let (prometheus, port) = start_prometheus_with(
        dir,
        &format!(
            "  - job_name: demo-app\n    static_configs:\n      \
             - targets: ['127.0.0.1:{first_port}']\n        labels: {{ami: {}, instance_id: i-1}}\n      \
             - targets: ['127.0.0.1:{second_port}']\n        labels: {{ami: {}, instance_id: i-2}}\n",
            amis[0], amis[1]
        ),
    );
    let checker = Checker::new(Duration::from_secs(2)).unwrap();
    let options = WaitOptions {
        timeout: Duration::from_secs(60),
        interval: Duration::from_millis(500),
        progress: false,
    };
    let targets = Check::PrometheusTargets {
        name: "targets up".into(),
        api: PrometheusApi::Direct(format!("http://127.0.0.1:{port}")),
    };
    health::wait_until_healthy(&checker, &[targets], &options).unwrap();
    (vec![first, second, prometheus], port)
}

/// `dir/name`, created.
fn subdir(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(&path).unwrap();
    path
}

#[test]
fn the_app_fleet_gate_waits_for_every_instance_on_the_new_ami_through_real_prometheus() {
    let stack = |port: u16| StackEndpoints {
        urls: [("prometheus".to_string(), format!("http://127.0.0.1:{port}"))].into(),
        exposed: [("prometheus".to_string(), true)].into(),
        grafana_auth: None,
    };
    let checker = Checker::new(Duration::from_secs(2)).unwrap();

    // Mid-refresh: one instance is still on the old AMI. The gate holds and names it.
    let refreshing = tempfile::tempdir().unwrap();
    let (running, port) = fleet_prometheus(refreshing.path(), ["ami-new", "ami-old"]);
    let check = health::app_fleet_check(&stack(port), "ami-new").unwrap();
    let error = checker.run(&check).unwrap_err();
    assert!(
        error.contains("1 of 2") && error.contains("i-2 (ami-old, up)"),
        "{error}"
    );
    drop(running);

    // Refresh done: both instances up on the new AMI.
    let done = tempfile::tempdir().unwrap();
    let (_running, port) = fleet_prometheus(done.path(), ["ami-new", "ami-new"]);
    let check = health::app_fleet_check(&stack(port), "ami-new").unwrap();
    assert_eq!(
        checker.run(&check).unwrap(),
        "2 app instances up on ami-new"
    );
}

#[test]
fn plan_only_prints_one_apply_per_role_data_stores_first_and_applies_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let terraform = testkit::FakeTerraform::install(
        scratch.path(),
        &[
            ("app", "ami-0aaaaaaaaaaaaaaa1"),
            ("grafana", "ami-0bbbbbbbbbbbbbbb1"),
            ("loki", "ami-0111111111111111a"),
            ("prometheus", "ami-0ccccccccccccccc1"),
        ],
    );
    let vars = scratch.path().join("mine.tfvars");
    std::fs::write(&vars, "allowed_web_cidrs = [\"198.51.100.7/32\"]\n").unwrap();
    let new = [
        ("app", "ami-0aaaaaaaaaaaaaaa2"),
        ("grafana", "ami-0bbbbbbbbbbbbbbb2"),
        ("loki", "ami-0111111111111111b"),
        ("prometheus", "ami-0ccccccccccccccc2"),
    ];
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command
        .arg("deploy")
        .arg("--plan-only")
        .arg("--var-file")
        .arg(&vars)
        .env("CARGO_TARGET_DIR", scratch.path().join("target"))
        .env("AWS_REGION", "eu-west-1")
        // AWS is never needed (every AMI is explicit): a closed port proves it.
        .env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", testkit::free_port()),
        );
    terraform.apply_env(&mut command);
    for (role, ami) in new {
        command.arg("--ami").arg(format!("{role}={ami}"));
    }
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    println!("{stderr}");

    // The table: one row per apply, in order, with the AMI each role leaves and gets.
    let rows: Vec<&str> = stderr
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()) && l.contains("/4"))
        .collect();
    assert_eq!(rows.len(), 4, "{stderr}");
    for (row, (role, from, to)) in rows.iter().zip([
        ("loki", "ami-0111111111111111a", "ami-0111111111111111b"),
        (
            "prometheus",
            "ami-0ccccccccccccccc1",
            "ami-0ccccccccccccccc2",
        ),
        ("grafana", "ami-0bbbbbbbbbbbbbbb1", "ami-0bbbbbbbbbbbbbbb2"),
        ("app", "ami-0aaaaaaaaaaaaaaa1", "ami-0aaaaaaaaaaaaaaa2"),
    ]) {
        let words: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&words[1..4], [role, from, to], "{row}");
    }
    assert!(
        stderr.contains("4 applies to roll out; nothing applied"),
        "{stderr}"
    );

    // Terraform planned the first apply only, with only Loki's AMI changed, and applied nothing.
    let calls = terraform.calls();
    assert!(!calls.contains(" apply"), "{calls}");
    for call in [" init ", " output ", " plan "] {
        assert!(calls.contains(call), "terraform{call}was run: {calls}");
    }
    assert_eq!(
        terraform.planned_ami_ids(),
        Some(serde_json::json!({
            "app": "ami-0aaaaaaaaaaaaaaa1",
            "grafana": "ami-0bbbbbbbbbbbbbbb1",
            "loki": "ami-0111111111111111b",
            "prometheus": "ami-0ccccccccccccccc1"
        })),
        "{calls}"
    );
}

#[test]
fn the_s3_backend_override_keeps_the_state_in_the_bucket_under_a_lock() {
    let terraform = testkit::require_tool("terraform");
    let moto = testkit::Moto::start();
    let http = reqwest::blocking::Client::new();
    let bucket = format!("{}/obstack-state", moto.endpoint());
    assert!(http.put(&bucket).send().unwrap().status().is_success());

    let dir = tempfile::tempdir().unwrap();
    // A configuration that needs no provider, with the override deploy writes.
    std::fs::write(
        dir.path().join("main.tf"),
        "output \"x\" {\n  value = 1\n}\n",
    )
    .unwrap();
    xtask::deploy::backend::enable(dir.path()).unwrap();
    let config = dir.path().join("s3.tfbackend");
    std::fs::write(
        &config,
        format!(
            "bucket = \"obstack-state\"\nkey = \"obstack/terraform.tfstate\"\nregion = \"us-east-1\"\n\
             use_lockfile = true\nendpoints = {{ s3 = \"{}\" }}\nuse_path_style = true\n\
             skip_credentials_validation = true\nskip_requesting_account_id = true\n\
             skip_metadata_api_check = true\n",
            moto.endpoint()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let mut command = Command::new(&terraform);
        command
            .current_dir(dir.path())
            .args(args)
            .env("TF_IN_AUTOMATION", "1")
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_CLI_CONFIG_FILE", "/dev/null")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test");
        command.output().unwrap()
    };
    let init = run(&[
        "init",
        "-input=false",
        "-no-color",
        &format!("-backend-config={}", config.display()),
    ]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    assert!(String::from_utf8_lossy(&init.stdout).contains("backend \"s3\""));
    let apply = run(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    assert!(
        apply.status.success(),
        "{}",
        String::from_utf8_lossy(&apply.stderr)
    );
    // moto serves the listing to anyone (its objects need the owner's signature).
    let listing = http.get(&bucket).send().unwrap().text().unwrap();
    assert!(
        listing.contains("<Key>obstack/terraform.tfstate</Key>"),
        "the state is in the bucket: {listing}"
    );
    let pulled = run(&["state", "pull"]);
    assert!(String::from_utf8_lossy(&pulled.stdout).contains("\"outputs\""));
    assert!(
        !dir.path().join("terraform.tfstate").exists(),
        "no local state next to it"
    );

    // Another deploy holds the lock: this one must not write.
    let lock = http
        .put(format!("{bucket}/obstack/terraform.tfstate.tflock"))
        .body(r#"{"ID":"held-by-a-test","Operation":"OperationTypeApply","Who":"test"}"#)
        .send()
        .unwrap();
    assert!(lock.status().is_success());
    let blocked = run(&[
        "apply",
        "-auto-approve",
        "-input=false",
        "-no-color",
        "-lock-timeout=0s",
    ]);
    let stderr = String::from_utf8_lossy(&blocked.stderr);
    assert!(!blocked.status.success(), "a held lock stops the apply");
    assert!(
        stderr.contains("Error acquiring the state lock"),
        "{stderr}"
    );
}
