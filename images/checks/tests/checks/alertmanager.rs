//! Alertmanager on the Prometheus image, against the real programs: the config the agent
//! renders passes `amtool check-config`, routes each severity where it should
//! (`amtool config routes test`), names the tagged SNS topic, and, end to end, a real
//! Prometheus firing a rule through a real Alertmanager reaches this test's own webhook
//! receiver: firing, then resolved, and never the warning a critical alert inhibits.

use crate::alerting;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use alerting::{
    render_prometheus_role, rendered, replace_checked, start_alertmanager, start_prometheus,
    CONFIG_PATH, TOPIC_ARN, TOPIC_REGION,
};
use serde_json::Value;
use testkit::http::{Response, TestServer};

/// The tags of the Prometheus instance, plus `extra`.
fn tags(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut tags: BTreeMap<String, String> = [
        ("obstack:role", "prometheus"),
        ("obstack:peer:app", "10.0.1.10"),
        ("obstack:peer:loki", "10.0.1.11"),
        ("obstack:peer:grafana", "10.0.1.13"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (key, value) in extra {
        tags.insert(key.to_string(), value.to_string());
    }
    tags
}

const WEBHOOK: &str = "https://hooks.example.com/services/T000/B000/XXXX";

/// The four receiver set-ups: none, the topic, the webhook, both.
fn variants() -> Vec<(&'static str, BTreeMap<String, String>, Option<&'static str>)> {
    let sns = [("obstack:alert-sns-topic-arn", TOPIC_ARN)];
    vec![
        ("no receiver", tags(&[]), None),
        ("SNS only", tags(&sns), None),
        ("webhook only", tags(&[]), Some(WEBHOOK)),
        ("SNS and webhook", tags(&sns), Some(WEBHOOK)),
    ]
}

/// Renders Alertmanager's config into a temp dir and returns (dir, config path, text).
fn rendered_config(
    tags: &BTreeMap<String, String>,
    webhook: Option<&str>,
) -> (tempfile::TempDir, std::path::PathBuf, String) {
    let root = tempfile::tempdir().unwrap();
    let files = render_prometheus_role(tags, webhook, root.path());
    let file = rendered(&files, root.path(), CONFIG_PATH);
    let path = root.path().join("alertmanager.yml");
    std::fs::write(&path, &file.contents).unwrap();
    (root, path, file.contents.clone())
}

fn amtool(args: &[&OsStr]) -> (bool, String) {
    let output = std::process::Command::new(testkit::require_tool("amtool"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn check_config(path: &std::path::Path) -> (bool, String) {
    amtool(&[OsStr::new("check-config"), path.as_os_str()])
}

#[test]
fn every_receiver_set_up_passes_amtool_check_config() {
    for (what, tags, webhook) in variants() {
        let (_root, path, text) = rendered_config(&tags, webhook);
        let (ok, output) = check_config(&path);
        assert!(ok, "{what}: amtool check-config failed:\n{output}\n{text}");
        assert!(output.contains("3 receivers"), "{what}: {output}");
        assert!(output.contains("1 inhibit rules"), "{what}: {output}");
    }
}

#[test]
fn amtool_refuses_a_broken_config() {
    // The check above must be able to fail: the same config with a bad duration.
    let (_root, path, text) = rendered_config(&tags(&[]), None);
    std::fs::write(
        &path,
        replace_checked(&text, "group_wait: 30s", "group_wait: soon"),
    )
    .unwrap();
    let (ok, output) = check_config(&path);
    assert!(!ok, "amtool accepted a broken config:\n{output}");
}

/// The receiver `amtool config routes test` picks for `labels`.
fn route(path: &std::path::Path, labels: &[&str]) -> String {
    let config = format!("--config.file={}", path.display());
    let mut args = vec![
        OsStr::new("config"),
        OsStr::new("routes"),
        OsStr::new("test"),
        OsStr::new(&config),
    ];
    args.extend(labels.iter().map(OsStr::new));
    let (ok, output) = amtool(&args);
    assert!(ok, "amtool config routes test {labels:?} failed:\n{output}");
    output
        .lines()
        .filter(|line| !line.starts_with("Warning:"))
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

#[test]
fn each_severity_reaches_its_receiver_and_any_other_the_default() {
    for (what, tags, webhook) in variants() {
        let (_root, path, _) = rendered_config(&tags, webhook);
        for (labels, receiver) in [
            (&["alertname=AppDown", "severity=critical"][..], "page"),
            (
                &["alertname=TargetMissing", "severity=warning"][..],
                "ticket",
            ),
            (&["alertname=Something", "severity=info"][..], "default"),
            (&["alertname=Unlabelled"][..], "default"),
        ] {
            assert_eq!(route(&path, labels), receiver, "{what}: {labels:?}");
        }
    }
}

#[test]
fn the_sns_receiver_names_the_tagged_topic_and_its_region() {
    let (_root, _, text) =
        rendered_config(&tags(&[("obstack:alert-sns-topic-arn", TOPIC_ARN)]), None);
    let config: Value = serde_yaml_ng::from_str(&text).unwrap();
    let receivers = config["receivers"].as_array().unwrap();
    for name in ["page", "ticket", "default"] {
        let receiver = receivers.iter().find(|r| r["name"] == name).unwrap();
        let sns = &receiver["sns_configs"][0];
        assert_eq!(sns["topic_arn"], TOPIC_ARN, "{name}: {receiver}");
        assert_eq!(sns["sigv4"]["region"], TOPIC_REGION, "{name}: {receiver}");
        // Signed with the instance role: no keys anywhere in the config.
        assert!(sns["sigv4"]["access_key"].is_null(), "{receiver}");
        assert!(receiver["webhook_configs"].is_null(), "{name}: {receiver}");
    }
    assert!(!text.contains("secret_key"), "{text}");
}

#[test]
fn the_webhook_url_makes_the_file_a_secret_and_pages_go_to_both_integrations() {
    let root = tempfile::tempdir().unwrap();
    let tags = tags(&[("obstack:alert-sns-topic-arn", TOPIC_ARN)]);
    let files = render_prometheus_role(&tags, Some(WEBHOOK), root.path());
    let file = rendered(&files, root.path(), CONFIG_PATH);
    assert!(
        file.sensitive,
        "the file holding the webhook URL is not a secret"
    );
    assert_eq!(file.mode, 0o640);
    assert_eq!(file.group.as_deref(), Some("alertmanager"));
    let config: Value = serde_yaml_ng::from_str(&file.contents).unwrap();
    let receivers = config["receivers"].as_array().unwrap();
    let page = receivers.iter().find(|r| r["name"] == "page").unwrap();
    assert_eq!(page["webhook_configs"][0]["url"], WEBHOOK, "{page}");
    assert_eq!(page["sns_configs"][0]["topic_arn"], TOPIC_ARN, "{page}");
    let ticket = receivers.iter().find(|r| r["name"] == "ticket").unwrap();
    assert_eq!(ticket["webhook_configs"][0]["url"], WEBHOOK, "{ticket}");
    assert!(ticket["sns_configs"].is_null(), "{ticket}");
    // Without the URL, the same file is an ordinary config.
    let files = render_prometheus_role(&tags, None, root.path());
    assert!(!rendered(&files, root.path(), CONFIG_PATH).sensitive);
    // A value that could break out of its quoted string is refused, and not quoted back.
    let spec = stack_agent::RoleSpec::load(&image_checks::images_dir(), "prometheus").unwrap();
    let bad = "https://x\"\n  - name: evil";
    let values = BTreeMap::from([("alert_webhook_url".to_string(), bad.to_string())]);
    let error = stack_agent::render_spec_with_secrets(&spec, &tags, &values, "/r", "i-1")
        .unwrap_err()
        .to_string();
    assert!(!error.contains("evil"), "{error}");
}

#[test]
fn prometheus_sends_to_and_scrapes_the_alertmanager_beside_it() {
    let root = tempfile::tempdir().unwrap();
    let files = render_prometheus_role(
        &tags(&[("obstack:bind-address", "10.0.1.12")]),
        None,
        root.path(),
    );
    let config: Value = serde_yaml_ng::from_str(
        &rendered(&files, root.path(), "/etc/prometheus/prometheus.yml").contents,
    )
    .unwrap();
    let targets = &config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"];
    assert_eq!(targets, &serde_json::json!(["10.0.1.12:9093"]), "{config}");
    let job = config["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_name"] == "alertmanager")
        .unwrap_or_else(|| panic!("no alertmanager job: {config}"));
    assert_eq!(job["static_configs"][0]["targets"], *targets);
    let env = rendered(&files, root.path(), "/etc/default/alertmanager");
    assert!(
        env.contents
            .contains("ALERTMANAGER_LISTEN_ADDRESS=10.0.1.12:9093\n"),
        "{}",
        env.contents
    );
    // A stack that runs no Alertmanager (a local one without the binary) has neither.
    let files = render_prometheus_role(
        &tags(&[("obstack:absent", "alertmanager")]),
        None,
        root.path(),
    );
    let text = &rendered(&files, root.path(), "/etc/prometheus/prometheus.yml").contents;
    assert!(
        !text.contains("alerting:") && !text.contains("9093"),
        "{text}"
    );
}

// ---- End to end.

/// What the test's webhook receiver got: (when, the notification).
type Received = Arc<Mutex<Vec<(SystemTime, Value)>>>;

/// The demo-app stand-in (its /metrics has the switch the test rules watch) and the
/// webhook receiver, on one loopback server.
fn app_and_receiver(switch: Arc<AtomicBool>, received: Received) -> TestServer {
    TestServer::start(
        move |request| match (request.method.as_str(), request.path.as_str()) {
            ("GET", "/metrics") => {
                let on = u8::from(switch.load(Ordering::SeqCst));
                Response::ok(format!("# TYPE e2e_switch gauge\ne2e_switch {on}\n"))
                    .header("Content-Type", "text/plain; version=0.0.4")
            }
            ("POST", "/alerts") => {
                let at = SystemTime::now();
                match serde_json::from_slice::<Value>(&request.body) {
                    Ok(body) => {
                        if let Ok(mut list) = received.lock() {
                            list.push((at, body));
                        }
                        Response::ok("")
                    }
                    Err(_) => Response::status(400),
                }
            }
            _ => Response::not_found(),
        },
    )
}

/// The test's rules: one alert firing at both severities (the warning must be inhibited)
/// and one warning alone (which must arrive, so the inhibition is what stops the other).
const E2E_RULES: &str = r#"groups:
  - name: e2e
    rules:
      - alert: E2EPage
        expr: e2e_switch{job="demo-app"} == 1
        labels:
          severity: critical
      - alert: E2EPage
        expr: e2e_switch{job="demo-app"} == 1
        labels:
          severity: warning
      - alert: E2ETicket
        expr: e2e_switch{job="demo-app"} == 1
        labels:
          severity: warning
"#;

/// (receiver, status, alertname, severity) of every alert received so far.
fn deliveries(received: &Received) -> Vec<(String, String, String, String, Value)> {
    let list = received.lock().unwrap();
    list.iter()
        .flat_map(|(_, body)| {
            body["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|alert| {
                    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
                    (
                        text(&body["receiver"]),
                        text(&alert["status"]),
                        text(&alert["labels"]["alertname"]),
                        text(&alert["labels"]["severity"]),
                        alert.clone(),
                    )
                })
        })
        .collect()
}

fn wait_for(received: &Received, what: &str, timeout: Duration, check: impl Fn(&Received) -> bool) {
    let deadline = Instant::now() + timeout;
    while !check(received) {
        assert!(
            Instant::now() < deadline,
            "{what} did not arrive within {timeout:?}; got: {:#?}",
            received
                .lock()
                .unwrap()
                .iter()
                .map(|(_, b)| b)
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn has(received: &Received, receiver: &str, status: &str, alert: &str, severity: &str) -> bool {
    deliveries(received)
        .iter()
        .any(|(r, s, a, sev, _)| r == receiver && s == status && a == alert && sev == severity)
}

#[test]
fn a_firing_rule_reaches_the_webhook_then_resolves_and_the_inhibited_warning_never_does() {
    let switch = Arc::new(AtomicBool::new(true));
    let received: Received = Arc::default();
    let server = app_and_receiver(switch.clone(), received.clone());
    let app = server.url().trim_start_matches("http://").to_string();
    let webhook = format!("{}/alerts", server.url());

    // The shipped templates, rendered by the agent's renderer with the webhook URL as the
    // SSM parameter's value; only the intervals and ports change, in this test's copy.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    // Only loopback: the optional peers are left out, and what does not run is absent.
    let mut tags = tags(&[
        ("obstack:peer:app", app.as_str()),
        ("obstack:bind-address", "127.0.0.1"),
        ("obstack:absent", "node_exporter,promtail"),
    ]);
    tags.remove("obstack:peer:loki");
    tags.remove("obstack:peer:grafana");
    let files = render_prometheus_role(&tags, Some(&webhook), &root);
    let mut am_config = rendered(&files, &root, CONFIG_PATH).contents.clone();
    for (from, to) in [
        ("group_wait: 30s", "group_wait: 1s"),
        ("group_interval: 5m", "group_interval: 1s"),
    ] {
        am_config = replace_checked(&am_config, from, to);
    }
    let am_path = dir.path().join("alertmanager.yml");
    std::fs::write(&am_path, &am_config).unwrap();
    let alertmanager = start_alertmanager(&am_path, dir.path());

    let prometheus_addr = alerting::free_addr();
    let (am_addr, prom_addr) = (alertmanager.addr.to_string(), prometheus_addr.to_string());
    let mut prom_config = rendered(&files, &root, "/etc/prometheus/prometheus.yml")
        .contents
        .clone();
    for (from, to) in [
        ("scrape_interval: 15s", "scrape_interval: 1s"),
        ("scrape_timeout: 10s", "scrape_timeout: 1s"),
        ("evaluation_interval: 15s", "evaluation_interval: 1s"),
        ("127.0.0.1:9093", am_addr.as_str()),
        ("127.0.0.1:9090", prom_addr.as_str()),
    ] {
        prom_config = replace_checked(&prom_config, from, to);
    }
    let rules = root.join("etc/prometheus/rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("e2e.yml"), E2E_RULES).unwrap();
    let prom_path = dir.path().join("prometheus.yml");
    std::fs::write(&prom_path, &prom_config).unwrap();
    let prometheus = start_prometheus(&prom_path, dir.path(), prometheus_addr);

    let bound = Duration::from_secs(60);
    let diagnostics = || format!("{}\n{}", prometheus.output(), alertmanager.output());
    wait_for(&received, "the critical alert at `page`", bound, |r| {
        has(r, "page", "firing", "E2EPage", "critical")
    });
    wait_for(&received, "the lone warning at `ticket`", bound, |r| {
        has(r, "ticket", "firing", "E2ETicket", "warning")
    });

    // The alert arrives with its labels: the rule's, the target's and the stack's.
    let page = deliveries(&received)
        .into_iter()
        .find(|(r, s, a, sev, _)| {
            r == "page" && s == "firing" && a == "E2EPage" && sev == "critical"
        })
        .unwrap()
        .4;
    assert_eq!(page["labels"]["job"], "demo-app", "{page}");
    assert_eq!(page["labels"]["instance"], app.as_str(), "{page}");
    assert_eq!(page["labels"]["role"], "app", "{page}");
    assert_eq!(page["labels"]["stack"], "obstack", "{page}");

    // Prometheus sees the Alertmanager it sends to.
    let client = reqwest::blocking::Client::new();
    let seen: Value = client
        .get(format!("{}/api/v1/alertmanagers", prometheus.url()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let active = seen["data"]["activeAlertmanagers"].to_string();
    assert!(active.contains(&alertmanager.addr.to_string()), "{seen}");

    // The figure: from the rule's first evaluation (the alert's start) to its delivery.
    let starts_at = page["startsAt"].as_str().unwrap();
    let started =
        humantime::parse_rfc3339(starts_at).unwrap_or_else(|e| panic!("startsAt {starts_at}: {e}"));
    let delivered = received
        .lock()
        .unwrap()
        .iter()
        .find(|(_, body)| body["receiver"] == "page" && body["status"] == "firing")
        .map(|(at, _)| *at)
        .unwrap();
    let latency = delivered.duration_since(started).unwrap_or_default();
    eprintln!(
        "FIGURE: rule first evaluated (startsAt {starts_at}) -> webhook received the alert: {:.2} s \
         (evaluation_interval 1s, group_wait 1s in this test's config)",
        latency.as_secs_f64()
    );

    // Switched off: the next evaluation resolves it, and the resolution arrives too.
    switch.store(false, Ordering::SeqCst);
    wait_for(
        &received,
        "the resolved critical alert at `page`",
        bound,
        |r| has(r, "page", "resolved", "E2EPage", "critical"),
    );
    let inhibited: Vec<Value> = deliveries(&received)
        .into_iter()
        .filter(|(_, _, a, sev, _)| a == "E2EPage" && sev == "warning")
        .map(|d| d.4)
        .collect();
    assert!(
        inhibited.is_empty(),
        "the warning the critical alert inhibits was delivered: {inhibited:#?}\n{}",
        diagnostics()
    );
}
