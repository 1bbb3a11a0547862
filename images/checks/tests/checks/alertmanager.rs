//! Alertmanager on the Prometheus image, against the real programs: the config the agent
//! renders passes `amtool check-config` for every set of integrations (none, SNS, Slack, a
//! generic webhook and each mix), sends warnings and criticals to a receiver that accepts
//! them in each (`amtool config routes test`, then what that receiver's integrations post
//! to), and names the webhook URLs' files, never a URL. End to end, a real Prometheus firing
//! a rule through a real Alertmanager reaches stand-ins that answer like Slack (400 `no_text`
//! to a message without text) and like a generic webhook: firing, then resolved, never the
//! warning a critical alert inhibits; and a receiver that answers 400 fires
//! `AlertNotificationsFailing`, which reaches a person through the other one.
//!
//! Debian's Alertmanager 0.25 runs here; the image pins a newer one. The only difference in
//! what these tests run is `alerting::for_installed_alertmanager`'s.

use crate::alerting;
use crate::stack::{dashboards_dir, rules_file, yaml};

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alerting::{
    render_prometheus_role, rendered, replace_checked, start_alertmanager, start_prometheus,
    write_config, Deliveries, Delivery, Process, SlackMode, Urls, CONFIG_PATH, SLACK_URL_PATH,
    TOPIC_ARN, TOPIC_REGION, WEBHOOK_URL_PATH,
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

const SLACK: &str = "https://hooks.slack.com/services/T000/B000/XXXX";
const WEBHOOK: &str = "https://events.example.com/v1/alertmanager";
const GRAFANA: &str = "https://grafana.example.com";

/// Which integrations an instance has: its tags and SSM parameters.
#[derive(Debug, Clone, Copy)]
struct Setup {
    sns: bool,
    slack: bool,
    webhook: bool,
}

impl Setup {
    /// Every combination: none, each alone, each pair, all three.
    fn all() -> Vec<Setup> {
        (0..8)
            .map(|bits| Setup {
                sns: bits & 1 != 0,
                slack: bits & 2 != 0,
                webhook: bits & 4 != 0,
            })
            .collect()
    }

    fn name(&self) -> String {
        let names = self.integrations();
        if names.is_empty() {
            "no receiver".into()
        } else {
            names.into_iter().collect::<Vec<_>>().join(" + ")
        }
    }

    /// The integrations configured, as Alertmanager names their sections' kinds.
    fn integrations(&self) -> BTreeSet<&'static str> {
        [
            (self.sns, "sns"),
            (self.slack, "slack"),
            (self.webhook, "webhook"),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| name)
        .collect()
    }

    fn tags(&self) -> BTreeMap<String, String> {
        if self.sns {
            tags(&[("obstack:alert-sns-topic-arn", TOPIC_ARN)])
        } else {
            tags(&[])
        }
    }

    fn urls(&self) -> Urls<'static> {
        Urls {
            slack: self.slack.then_some(SLACK),
            webhook: self.webhook.then_some(WEBHOOK),
        }
    }
}

/// Renders the role for `setup` into a temp root; returns (root, config as the installed
/// Alertmanager takes it, the config as the image has it).
fn rendered_config(setup: Setup) -> (tempfile::TempDir, PathBuf, String) {
    let root = tempfile::tempdir().unwrap();
    let files = render_prometheus_role(&setup.tags(), setup.urls(), root.path());
    let text = rendered(&files, root.path(), CONFIG_PATH).contents.clone();
    let path = write_config(&files, root.path(), root.path(), &[]);
    (root, path, text)
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

fn check_config(path: &Path) -> (bool, String) {
    amtool(&[OsStr::new("check-config"), path.as_os_str()])
}

#[test]
fn every_set_of_integrations_passes_amtool_check_config() {
    for setup in Setup::all() {
        let (_root, path, _) = rendered_config(setup);
        let (ok, output) = check_config(&path);
        let what = setup.name();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(ok, "{what}: amtool check-config failed:\n{output}\n{text}");
        assert!(output.contains("3 receivers"), "{what}: {output}");
        assert!(output.contains("1 inhibit rules"), "{what}: {output}");
    }
}

#[test]
fn amtool_refuses_a_broken_config() {
    // The check above must be able to fail: the same config with a bad duration, and one
    // with a field Alertmanager does not know.
    let (_root, path, _) = rendered_config(Setup::all()[7]);
    let text = std::fs::read_to_string(&path).unwrap();
    for broken in [
        replace_checked(&text, "group_wait: 30s", "group_wait: soon"),
        replace_checked(
            &text,
            "send_resolved: true",
            "send_resolved: true\n        spam: 1",
        ),
    ] {
        std::fs::write(&path, broken).unwrap();
        let (ok, output) = check_config(&path);
        assert!(!ok, "amtool accepted a broken config:\n{output}");
    }
}

/// The receiver `amtool config routes test` picks for `labels`.
fn route(path: &Path, labels: &[&str]) -> String {
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

/// The integrations of receiver `name` in `config` (as the image has it), each checked to
/// post to what accepts its format: `slack_configs` read the Slack URL's file, and
/// `webhook_configs` the generic webhook's (whose file holds that URL, never Slack's), and
/// `sns_configs` name the tagged topic. A URL written into the config is a failure.
fn accepting_integrations(config: &Value, name: &str, root: &Path) -> BTreeSet<String> {
    let receivers = config["receivers"].as_array().unwrap();
    let receiver = receivers
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no receiver {name}: {config}"));
    let file = |path: &str| format!("{}{path}", root.display());
    let holds = |path: &str| std::fs::read_to_string(file(path)).unwrap_or_default();
    let mut kinds = BTreeSet::new();
    for (key, entries) in receiver.as_object().unwrap() {
        if key == "name" {
            continue;
        }
        let kind = key
            .strip_suffix("_configs")
            .unwrap_or_else(|| panic!("{name}: unexpected `{key}`"));
        for entry in entries.as_array().unwrap() {
            match kind {
                "slack" => {
                    assert_eq!(entry["api_url_file"], file(SLACK_URL_PATH), "{entry}");
                    assert_eq!(holds(SLACK_URL_PATH), SLACK, "the Slack file");
                    assert!(entry["api_url"].is_null(), "{name}: a URL inline: {entry}");
                    assert_eq!(entry["send_resolved"], true, "{entry}");
                }
                "webhook" => {
                    assert_eq!(entry["url_file"], file(WEBHOOK_URL_PATH), "{entry}");
                    assert_eq!(holds(WEBHOOK_URL_PATH), WEBHOOK, "the webhook file");
                    assert!(entry["url"].is_null(), "{name}: a URL inline: {entry}");
                    assert_eq!(entry["send_resolved"], true, "{entry}");
                }
                "sns" => assert_eq!(entry["topic_arn"], TOPIC_ARN, "{entry}"),
                other => panic!("{name}: an integration nobody configured: {other}"),
            }
            kinds.insert(kind.to_string());
        }
    }
    kinds
}

#[test]
fn warnings_and_criticals_reach_a_receiver_that_accepts_them_in_every_combination() {
    for setup in Setup::all() {
        let (root, path, text) = rendered_config(setup);
        let config = yaml(&text);
        let what = setup.name();
        let configured: BTreeSet<String> =
            setup.integrations().into_iter().map(String::from).collect();
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
            let reached = accepting_integrations(&config, receiver, root.path());
            // With any integration configured, nothing is left in the UI alone; pages go
            // everywhere a person is reachable.
            assert_eq!(
                reached.is_empty(),
                configured.is_empty(),
                "{what}: {labels:?} reaches {reached:?}"
            );
            assert!(reached.is_subset(&configured), "{what}: {reached:?}");
            if receiver == "page" {
                assert_eq!(reached, configured, "{what}: a page misses an integration");
            }
        }
    }
}

#[test]
fn the_sns_receiver_names_the_tagged_topic_and_its_region() {
    let setup = Setup {
        sns: true,
        slack: false,
        webhook: false,
    };
    let (_root, _, text) = rendered_config(setup);
    let config = yaml(&text);
    let receivers = config["receivers"].as_array().unwrap();
    for name in ["page", "ticket", "default"] {
        let receiver = receivers.iter().find(|r| r["name"] == name).unwrap();
        let sns = &receiver["sns_configs"][0];
        assert_eq!(sns["topic_arn"], TOPIC_ARN, "{name}: {receiver}");
        assert_eq!(sns["sigv4"]["region"], TOPIC_REGION, "{name}: {receiver}");
        // Signed with the instance role: no keys anywhere in the config.
        assert!(sns["sigv4"]["access_key"].is_null(), "{receiver}");
    }
    assert!(!text.contains("secret_key"), "{text}");
}

#[test]
fn the_urls_live_in_0600_files_and_the_config_names_only_the_files() {
    let root = tempfile::tempdir().unwrap();
    let files = render_prometheus_role(
        &tags(&[("obstack:grafana-url", GRAFANA)]),
        Urls {
            slack: Some(SLACK),
            webhook: Some(WEBHOOK),
        },
        root.path(),
    );
    let file = rendered(&files, root.path(), CONFIG_PATH);
    assert!(!file.contents.contains(SLACK) && !file.contents.contains(WEBHOOK));
    assert!(
        !file.sensitive,
        "the config holds no secret and may be printed"
    );
    assert_eq!(file.mode, 0o640);
    assert_eq!(file.group.as_deref(), Some("alertmanager"));
    use std::os::unix::fs::PermissionsExt;
    for (path, url) in [(SLACK_URL_PATH, SLACK), (WEBHOOK_URL_PATH, WEBHOOK)] {
        let on_disk = PathBuf::from(format!("{}{path}", root.path().display()));
        assert_eq!(std::fs::read_to_string(&on_disk).unwrap(), url);
        let mode = std::fs::metadata(&on_disk).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{path}");
    }
    let spec = stack_agent::RoleSpec::load(&image_checks::images_dir(), "prometheus").unwrap();
    let secret = |tag: &str| {
        spec.secrets
            .iter()
            .find(|s| s.name_tag == tag)
            .unwrap_or_else(|| panic!("no secret named by {tag}"))
    };
    for tag in [alerting::SLACK_TAG, alerting::WEBHOOK_TAG] {
        let secret = secret(tag);
        assert!(secret.optional, "{tag} must not be waited for");
        assert_eq!(
            (secret.owner.as_deref(), secret.mode.0),
            (Some("alertmanager"), 0o600),
            "{tag}"
        );
        // A value that is not a URL is refused, and not quoted back.
        let error = stack_agent::secret_file(secret, "/r", "https://x evil")
            .unwrap_err()
            .to_string();
        assert!(!error.contains("evil"), "{error}");
    }
    // The mistake this stack once made: a Slack URL for Alertmanager's webhook JSON.
    let error = stack_agent::secret_file(secret(alerting::WEBHOOK_TAG), "/r", SLACK)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("400 no_text") && error.contains("alert_slack_webhook_url_parameter"),
        "{error}"
    );
    assert!(!error.contains("XXXX"), "{error}");

    // The Slack message links to a dashboard Grafana has.
    let config = yaml(&file.contents);
    let link = config["receivers"][0]["slack_configs"][0]["title_link"]
        .as_str()
        .unwrap_or_else(|| panic!("no title_link: {config}"))
        .to_string();
    let uid = link
        .strip_prefix(&format!("{GRAFANA}/d/"))
        .unwrap_or_else(|| panic!("{link} is not a dashboard of {GRAFANA}"));
    assert!(
        dashboard_uids().contains(uid),
        "{link}: no shipped dashboard has uid {uid} ({:?})",
        dashboard_uids()
    );
}

/// The uids of the dashboards Grafana provisions.
fn dashboard_uids() -> BTreeSet<String> {
    std::fs::read_dir(dashboards_dir())
        .unwrap()
        .map(|entry| {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            let json: Value = serde_json::from_str(&text).unwrap();
            json["uid"].as_str().unwrap_or_default().to_string()
        })
        .collect()
}

#[test]
fn prometheus_sends_to_and_scrapes_the_alertmanager_beside_it() {
    let root = tempfile::tempdir().unwrap();
    let files = render_prometheus_role(
        &tags(&[("obstack:bind-address", "10.0.1.12")]),
        Urls::default(),
        root.path(),
    );
    let config = yaml(&rendered(&files, root.path(), "/etc/prometheus/prometheus.yml").contents);
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
        Urls::default(),
        root.path(),
    );
    let text = &rendered(&files, root.path(), "/etc/prometheus/prometheus.yml").contents;
    assert!(
        !text.contains("alerting:") && !text.contains("9093"),
        "{text}"
    );
}

// ---- End to end: real Prometheus, real Alertmanager, stand-in receivers.

/// The demo-app stand-in: its /metrics has the switch the test rules watch.
fn app(switch: Arc<AtomicBool>) -> TestServer {
    TestServer::start(move |request| match request.path.as_str() {
        "/metrics" => {
            let on = u8::from(switch.load(Ordering::SeqCst));
            Response::ok(format!("# TYPE e2e_switch gauge\ne2e_switch {on}\n"))
                .header("Content-Type", "text/plain; version=0.0.4")
        }
        _ => Response::not_found(),
    })
}

/// A running stack: the app stand-in, the receivers, Alertmanager and Prometheus with the
/// shipped templates (intervals shortened) and `rules`.
struct Stack {
    switch: Arc<AtomicBool>,
    slack: Deliveries,
    hook: Deliveries,
    app: String,
    prometheus: Process,
    alertmanager: Process,
    _servers: (TestServer, TestServer),
    _dir: tempfile::TempDir,
}

impl Stack {
    fn start(mode: SlackMode, rules: &str) -> Stack {
        let switch = Arc::new(AtomicBool::new(true));
        let (slack, hook) = (Deliveries::default(), Deliveries::default());
        let app_server = app(switch.clone());
        let receivers = alerting::receivers(mode, slack.clone(), hook.clone());
        let app = app_server.url().trim_start_matches("http://").to_string();
        let slack_url = format!("{}/slack/services/T0/B0/X", receivers.url());
        let hook_url = format!("{}/hook", receivers.url());

        // The shipped templates, rendered by the agent's renderer with the URLs written to
        // their files as from SSM; only the intervals and ports change, in this test's copy.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        // Only loopback: the optional peers are left out, and what does not run is absent.
        let mut tags = tags(&[
            ("obstack:peer:app", app.as_str()),
            ("obstack:bind-address", "127.0.0.1"),
            ("obstack:absent", "node_exporter,promtail"),
            ("obstack:grafana-url", GRAFANA),
        ]);
        tags.remove("obstack:peer:loki");
        tags.remove("obstack:peer:grafana");
        let urls = Urls {
            slack: Some(&slack_url),
            webhook: Some(&hook_url),
        };
        let files = render_prometheus_role(&tags, urls, &root);
        let am_path = write_config(
            &files,
            &root,
            dir.path(),
            &[
                ("group_wait: 30s", "group_wait: 1s"),
                ("group_interval: 5m", "group_interval: 1s"),
            ],
        );
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
        let rules_dir = root.join("etc/prometheus/rules");
        std::fs::create_dir_all(&rules_dir).unwrap();
        std::fs::write(rules_dir.join("e2e.yml"), rules).unwrap();
        let prom_path = dir.path().join("prometheus.yml");
        std::fs::write(&prom_path, &prom_config).unwrap();
        let prometheus = start_prometheus(&prom_path, dir.path(), prometheus_addr);
        Stack {
            switch,
            slack,
            hook,
            app,
            prometheus,
            alertmanager,
            _servers: (app_server, receivers),
            _dir: dir,
        }
    }

    fn diagnostics(&self) -> String {
        format!(
            "{}\n{}\nSlack got: {:#?}\nthe webhook got: {:#?}",
            self.prometheus.output(),
            self.alertmanager.output(),
            bodies(&self.slack),
            bodies(&self.hook)
        )
    }

    /// Waits (up to a minute) until `check` holds.
    fn wait_for(&self, what: &str, check: impl Fn(&Stack) -> bool) {
        let bound = Duration::from_secs(60);
        let deadline = Instant::now() + bound;
        while !check(self) {
            assert!(
                Instant::now() < deadline,
                "{what} did not arrive within {bound:?}\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn bodies(deliveries: &Deliveries) -> Vec<(u16, Value)> {
    deliveries
        .lock()
        .unwrap()
        .iter()
        .map(|d| (d.status, d.body.clone()))
        .collect()
}

/// The Slack messages the stand-in accepted, as Slack would show them.
fn slack_messages(stack: &Stack) -> Vec<(Delivery, xtask::slack::Message)> {
    let list = stack.slack.lock().unwrap();
    list.iter()
        .filter(|d| d.status == 200)
        .filter_map(|d| {
            let bytes = serde_json::to_vec(&d.body).ok()?;
            let message = xtask::slack::receive(&bytes).ok()?;
            Some((d.clone(), message))
        })
        .collect()
}

/// The accepted Slack message whose attachment title starts with `title`.
fn slack_message(stack: &Stack, title: &str) -> Option<(Delivery, xtask::slack::Message)> {
    slack_messages(stack)
        .into_iter()
        .find(|(_, m)| m.attachments.iter().any(|a| a.title.starts_with(title)))
}

/// (receiver, status, alertname, severity, alert) of every alert the webhook accepted.
fn webhook_alerts(stack: &Stack) -> Vec<(String, String, String, String, Value)> {
    let list = stack.hook.lock().unwrap();
    list.iter()
        .filter(|d| d.status == 200)
        .flat_map(|d| {
            let receiver = d.body["receiver"].as_str().unwrap_or_default().to_string();
            d.body["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |alert| {
                    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
                    (
                        receiver.clone(),
                        text(&alert["status"]),
                        text(&alert["labels"]["alertname"]),
                        text(&alert["labels"]["severity"]),
                        alert.clone(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn hook_has(stack: &Stack, receiver: &str, status: &str, alert: &str, severity: &str) -> bool {
    webhook_alerts(stack)
        .iter()
        .any(|(r, s, a, sev, _)| r == receiver && s == status && a == alert && sev == severity)
}

/// The test's rules: one alert firing at both severities (the warning must be inhibited)
/// and one warning alone (which must arrive, so the inhibition is what stops the other).
/// The warning comes first: Prometheus sends each rule's alerts right after evaluating it,
/// so when the switch goes off the warning's resolution reaches Alertmanager before the
/// critical's. The other order leaves a moment (long on a loaded machine) in which the
/// warning still fires and nothing inhibits it. Firing, the group's wait covers the order.
const E2E_RULES: &str = r#"groups:
  - name: e2e
    rules:
      - alert: E2EPage
        expr: e2e_switch{job="demo-app"} == 1
        labels:
          severity: warning
        annotations:
          summary: the e2e switch is on
      - alert: E2EPage
        expr: e2e_switch{job="demo-app"} == 1
        labels:
          severity: critical
        annotations:
          summary: the e2e switch is on
      - alert: E2ETicket
        expr: e2e_switch{job="demo-app"} == 1
        labels:
          severity: warning
        annotations:
          summary: a ticket for the e2e switch
          description: Opened by the end-to-end test.
"#;

#[test]
fn a_firing_rule_reaches_slack_and_the_webhook_as_each_accepts_then_resolves_and_the_inhibited_warning_never_does(
) {
    let stack = Stack::start(SlackMode::AsSlack, E2E_RULES);
    let app = stack.app.clone();
    let page_title = format!("[FIRING:1] E2EPage (critical) on {app}");
    stack.wait_for("the critical alert in Slack", |s| {
        slack_message(s, &page_title).is_some()
    });
    stack.wait_for("the lone warning in Slack", |s| {
        slack_message(s, "[FIRING:1] E2ETicket (warning)").is_some()
    });
    stack.wait_for("the critical alert at the webhook's `page`", |s| {
        hook_has(s, "page", "firing", "E2EPage", "critical")
    });
    stack.wait_for("the lone warning at the webhook's `ticket`", |s| {
        hook_has(s, "ticket", "firing", "E2ETicket", "warning")
    });

    // Slack shows the alert's name, severity, instance and summary, and links to Grafana.
    let (delivered, page) = slack_message(&stack, &page_title).unwrap();
    let attachment = &page.attachments[0];
    let text = page.all_text();
    for wanted in [
        "*E2EPage* is firing: the e2e switch is on",
        "severity: critical",
        &format!("instance: {app}"),
        &format!("<{GRAFANA}/d/obstack-demo-app|"),
    ] {
        assert!(text.contains(wanted), "`{wanted}` is not in:\n{text}");
    }
    assert_eq!(attachment.color, "danger", "{attachment:?}");
    assert_eq!(
        attachment.title_link,
        format!("{GRAFANA}/d/obstack-demo-app")
    );
    assert_eq!(attachment.fallback, attachment.title, "{attachment:?}");
    let (_, ticket) = slack_message(&stack, "[FIRING:1] E2ETicket (warning)").unwrap();
    assert!(
        ticket.all_text().contains("Opened by the end-to-end test."),
        "{ticket:?}"
    );
    assert_eq!(ticket.attachments[0].color, "warning");

    // The webhook gets Alertmanager's JSON with the alert's labels: the rule's, the
    // target's and the stack's.
    let alert = webhook_alerts(&stack)
        .into_iter()
        .find(|(r, s, a, sev, _)| {
            r == "page" && s == "firing" && a == "E2EPage" && sev == "critical"
        })
        .unwrap()
        .4;
    assert_eq!(alert["labels"]["job"], "demo-app", "{alert}");
    assert_eq!(alert["labels"]["instance"], app.as_str(), "{alert}");
    assert_eq!(alert["labels"]["role"], "app", "{alert}");
    assert_eq!(alert["labels"]["stack"], "obstack", "{alert}");

    // Prometheus sees the Alertmanager it sends to.
    let seen: Value = reqwest::blocking::Client::new()
        .get(format!("{}/api/v1/alertmanagers", stack.prometheus.url()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let active = seen["data"]["activeAlertmanagers"].to_string();
    assert!(
        active.contains(&stack.alertmanager.addr.to_string()),
        "{seen}"
    );

    // The figure: from the rule's first evaluation (the alert's start) to Slack.
    let starts_at = alert["startsAt"].as_str().unwrap();
    let started =
        humantime::parse_rfc3339(starts_at).unwrap_or_else(|e| panic!("startsAt {starts_at}: {e}"));
    let latency = delivered.at.duration_since(started).unwrap_or_default();
    eprintln!(
        "FIGURE: rule first evaluated (startsAt {starts_at}) -> Slack stand-in accepted the \
         message: {:.2} s (evaluation_interval 1s, group_wait 1s in this test's config)",
        latency.as_secs_f64()
    );

    // Switched off: the next evaluation resolves it, and the resolution reaches both.
    stack.switch.store(false, Ordering::SeqCst);
    stack.wait_for("the resolved critical alert in Slack", |s| {
        slack_message(s, &format!("[RESOLVED] E2EPage (critical) on {app}")).is_some()
    });
    stack.wait_for("the resolved critical alert at the webhook", |s| {
        hook_has(s, "page", "resolved", "E2EPage", "critical")
    });
    let (_, resolved) =
        slack_message(&stack, &format!("[RESOLVED] E2EPage (critical) on {app}")).unwrap();
    assert_eq!(resolved.attachments[0].color, "good");
    assert!(
        resolved.all_text().contains("*E2EPage* is resolved"),
        "{resolved:?}"
    );

    // Nothing was refused: every post was in a format its receiver accepts.
    for (who, deliveries) in [("Slack", &stack.slack), ("the webhook", &stack.hook)] {
        let refused: Vec<(u16, Value)> = bodies(deliveries)
            .into_iter()
            .filter(|(status, _)| *status != 200)
            .collect();
        assert!(refused.is_empty(), "{who} refused: {refused:#?}");
    }
    let inhibited = webhook_alerts(&stack)
        .into_iter()
        .filter(|(_, _, a, sev, _)| a == "E2EPage" && sev == "warning")
        .count()
        + slack_messages(&stack)
            .iter()
            .filter(|(_, m)| {
                m.attachments
                    .iter()
                    .any(|a| a.title.contains("E2EPage (warning)"))
            })
            .count();
    assert_eq!(
        inhibited,
        0,
        "the warning the critical alert inhibits was delivered\n{}",
        stack.diagnostics()
    );
}

/// The shipped `AlertNotificationsFailing` rule, alone, without its `for` (5 minutes, which
/// the rules' promtool tests cover), beside a critical alert that keeps notifying.
fn notifications_failing_rules() -> String {
    let shipped = yaml(&std::fs::read_to_string(rules_file()).unwrap());
    let mut rule = shipped["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["alert"] == "AlertNotificationsFailing")
        .cloned()
        .expect("the shipped rules have AlertNotificationsFailing");
    assert_eq!(rule["for"], "5m", "{rule}");
    rule["for"] = Value::from("0s");
    let trigger = yaml(E2E_RULES)["groups"][0]["rules"][0].clone();
    let rules = serde_json::json!({
        "groups": [{"name": "failing", "rules": [rule, trigger]}],
    });
    serde_yaml_ng::to_string(&rules).unwrap()
}

#[test]
fn a_receiver_answering_400_fires_alert_notifications_failing_which_reaches_the_other() {
    let stack = Stack::start(SlackMode::Refusing, &notifications_failing_rules());
    stack.wait_for("AlertNotificationsFailing for Slack at the webhook", |s| {
        webhook_alerts(s).iter().any(|(r, status, a, sev, alert)| {
            r == "page"
                && status == "firing"
                && a == "AlertNotificationsFailing"
                && sev == "critical"
                && alert["labels"]["integration"] == "slack"
        })
    });
    // Slack answered only 400s: every notification to it failed, and nothing else did.
    let statuses: BTreeSet<u16> = bodies(&stack.slack).iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, BTreeSet::from([400]), "{}", stack.diagnostics());
    let failing: Value = reqwest::blocking::Client::new()
        .get(format!("{}/api/v1/alerts", stack.prometheus.url()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let integrations: BTreeSet<String> = failing["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["labels"]["alertname"] == "AlertNotificationsFailing")
        .filter(|a| a["state"] == "firing")
        .map(|a| {
            a["labels"]["integration"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(
        integrations,
        BTreeSet::from(["slack".to_string()]),
        "{failing}"
    );
}
