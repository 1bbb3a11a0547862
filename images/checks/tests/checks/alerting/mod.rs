//! Alertmanager for the tests: the Prometheus role's configs rendered by the agent's own
//! renderer (the shipped templates, with the webhook URLs written to their files as the
//! agent writes them from SSM), the config adapted to the installed Alertmanager when it
//! predates a field the pinned one has, stand-ins for Slack and a generic webhook, and real
//! Alertmanager and Prometheus processes on free loopback ports.
//!
//! Each test binary uses only part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use stack_agent::RenderedFile;
use testkit::http::{Response, TestServer};

/// The ARN the tests tag, and its region.
pub const TOPIC_ARN: &str = "arn:aws:sns:eu-west-1:123456789012:obstack-alerts";
pub const TOPIC_REGION: &str = "eu-west-1";

/// Where the agent writes Alertmanager's config on the image.
pub const CONFIG_PATH: &str = "/etc/alertmanager/alertmanager.yml";

/// The tags naming the webhook URLs' SSM parameters, and the files the agent writes them to.
pub const SLACK_TAG: &str = "obstack:alert-slack-url-param";
pub const WEBHOOK_TAG: &str = "obstack:alert-webhook-url-param";
pub const SLACK_URL_PATH: &str = "/etc/alertmanager/secrets/slack_url";
pub const WEBHOOK_URL_PATH: &str = "/etc/alertmanager/secrets/webhook_url";

/// The webhook URLs an instance has (each the value of its SSM parameter on EC2).
#[derive(Debug, Clone, Copy, Default)]
pub struct Urls<'a> {
    pub slack: Option<&'a str>,
    pub webhook: Option<&'a str>,
}

/// The Prometheus role's files for `tags` and `urls`: the URL tags come from `urls` alone
/// (any in `tags` are dropped), and each URL is written to its file under `root` (0600), as
/// the agent writes what it fetched, so a real Alertmanager can read it.
pub fn render_prometheus_role(
    tags: &BTreeMap<String, String>,
    urls: Urls,
    root: &Path,
) -> Vec<RenderedFile> {
    let spec = stack_agent::RoleSpec::load(&image_checks::images_dir(), "prometheus")
        .unwrap_or_else(|e| panic!("the prometheus role spec: {e}"));
    let root_text = root
        .to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", root.display()));
    let mut tags = tags.clone();
    for (tag, url) in [(SLACK_TAG, urls.slack), (WEBHOOK_TAG, urls.webhook)] {
        tags.remove(tag);
        let Some(url) = url else { continue };
        tags.insert(
            tag.to_string(),
            format!("/obstack/test/{}", tag.replace(':', "-")),
        );
        let secret = spec
            .secrets
            .iter()
            .find(|s| s.name_tag == tag)
            .unwrap_or_else(|| panic!("images/prometheus/role.toml reads no {tag}"));
        let file = stack_agent::secret_file(secret, root_text, url)
            .unwrap_or_else(|e| panic!("the {tag} URL: {e}"));
        stack_agent::write_file(&file, stack_agent::Ownership::Ignore).unwrap();
    }
    stack_agent::render_spec(&spec, &tags, root_text, "i-0123456789abcdef0")
        .unwrap_or_else(|e| panic!("rendering the prometheus role failed: {e}"))
}

/// The installed Alertmanager's (major, minor) version, from `alertmanager --version`.
pub fn installed_version() -> (u32, u32) {
    let output = Command::new(alertmanager_binary())
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("alertmanager --version: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let version = text
        .split_whitespace()
        .skip_while(|word| *word != "version")
        .nth(1)
        .unwrap_or_else(|| panic!("no version in `alertmanager --version`: {text}"));
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Alertmanager's config as the installed Alertmanager takes it. The image pins a newer
/// release than Debian's 0.25, which the tests run; 0.25 lacks `webhook_configs.url_file`
/// (added in 0.26; `slack_configs.api_url_file` is in both): for it each
/// `url_file: "PATH"` line becomes `url: "<PATH's contents>"`. Nothing else changes, and
/// this fails if any other line would.
pub fn for_installed_alertmanager(config: &str) -> String {
    if installed_version() >= (0, 26) {
        return config.to_string();
    }
    let mut changed = 0;
    let lines: Vec<String> = config
        .lines()
        .map(|line| {
            let key = line.trim_start().trim_start_matches("- ");
            let Some(rest) = key.strip_prefix("url_file: ") else {
                return line.to_string();
            };
            let indent = &line[..line.len() - key.len()];
            let path = rest.trim().trim_matches('"');
            let url = std::fs::read_to_string(path)
                .unwrap_or_else(|e| panic!("the webhook URL file {path}: {e}"));
            changed += 1;
            format!("{indent}url: \"{url}\"")
        })
        .collect();
    let adapted = lines.join("\n") + "\n";
    assert_eq!(
        adapted.matches("url_file").count(),
        adapted.matches("api_url_file").count(),
        "a url_file was not adapted:\n{adapted}"
    );
    assert_eq!(
        changed > 0,
        config.contains("webhook_configs:"),
        "a webhook without its url_file:\n{config}"
    );
    adapted
}

/// Writes the rendered Alertmanager config, as the installed Alertmanager takes it, to
/// `dir/alertmanager.yml`, after `edits` (each `(from, to)` must apply); returns its path.
pub fn write_config(
    files: &[RenderedFile],
    root: &Path,
    dir: &Path,
    edits: &[(&str, &str)],
) -> PathBuf {
    let mut text = rendered(files, root, CONFIG_PATH).contents.clone();
    for (from, to) in edits {
        text = replace_checked(&text, from, to);
    }
    let path = dir.join("alertmanager.yml");
    std::fs::write(&path, for_installed_alertmanager(&text)).unwrap();
    path
}

// ---- Stand-ins for where notifications go.

/// One request a stand-in received: when, its body, and the status it answered.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub at: SystemTime,
    pub body: Value,
    pub status: u16,
}

/// What a stand-in received so far.
pub type Deliveries = Arc<Mutex<Vec<Delivery>>>;

/// How the stand-in for a Slack incoming webhook answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlackMode {
    /// As Slack does (`xtask::slack`): 200 `ok` for a message with text, 400 `no_text` for
    /// JSON without, 400 `invalid_payload` for anything else.
    AsSlack,
    /// 400 to everything (a revoked webhook, say): every notification fails.
    Refusing,
}

/// Answers a POST to the Slack stand-in, recording it.
pub fn slack_answer(body: &[u8], mode: SlackMode, log: &Deliveries) -> Response {
    let (status, answer) = match (mode, xtask::slack::receive(body)) {
        (SlackMode::Refusing, _) => (400, "invalid_payload"),
        (SlackMode::AsSlack, Ok(_)) => (200, xtask::slack::ACCEPTED),
        (SlackMode::AsSlack, Err(refusal)) => (refusal.status, refusal.error),
    };
    record(log, body, status);
    Response::status(status)
        .header("Content-Type", "text/plain")
        .body(answer)
}

/// Answers a POST to the generic webhook stand-in, recording it: 200 to Alertmanager's
/// webhook JSON (version 4, with alerts), 400 to anything else.
pub fn webhook_answer(body: &[u8], log: &Deliveries) -> Response {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let accepted = json
        .as_ref()
        .is_some_and(|j| j["version"] == "4" && j["alerts"].is_array());
    let status = if accepted { 200 } else { 400 };
    record(log, body, status);
    Response::status(status)
}

fn record(log: &Deliveries, body: &[u8], status: u16) {
    let body = serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
    if let Ok(mut list) = log.lock() {
        list.push(Delivery {
            at: SystemTime::now(),
            body,
            status,
        });
    }
}

/// Stand-ins for a Slack webhook at `/slack/services/T0/B0/X` and a generic webhook at
/// `/hook` on one loopback server, recording into `slack` and `hook`.
pub fn receivers(mode: SlackMode, slack: Deliveries, hook: Deliveries) -> TestServer {
    TestServer::start(
        move |request| match (request.method.as_str(), request.path.as_str()) {
            ("POST", "/slack/services/T0/B0/X") => slack_answer(&request.body, mode, &slack),
            ("POST", "/hook") => webhook_answer(&request.body, &hook),
            _ => Response::not_found(),
        },
    )
}

/// The rendered file at `path` (a path on the machine, e.g. [`CONFIG_PATH`]).
pub fn rendered<'a>(files: &'a [RenderedFile], root: &Path, path: &str) -> &'a RenderedFile {
    let wanted = PathBuf::from(format!("{}{path}", root.display()));
    files
        .iter()
        .find(|f| f.path == wanted)
        .unwrap_or_else(|| panic!("no rendered file at {}", wanted.display()))
}

/// Alertmanager's binary: upstream's name, or Debian's (package prometheus-alertmanager).
pub fn alertmanager_binary() -> PathBuf {
    ["alertmanager", "prometheus-alertmanager"]
        .iter()
        .find_map(|name| testkit::find_on_path(name))
        .unwrap_or_else(|| {
            panic!(
                "required test tool `alertmanager` (or Debian's `prometheus-alertmanager`) is not \
                 on PATH; run the README's test command (scripts/test.sh) once to install every \
                 test dependency"
            )
        })
}

/// A child process killed when dropped, its output kept in a file for failure messages.
pub struct Process {
    child: Child,
    log: PathBuf,
    pub addr: SocketAddr,
}

impl Process {
    /// Starts `command` (which must listen on `addr`) and waits until it accepts connections.
    pub fn start(mut command: Command, addr: SocketAddr, log: PathBuf) -> Process {
        let out = File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        let process = Process { child, log, addr };
        testkit::wait_for_port(addr, Duration::from_secs(30));
        process
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback address.
pub fn free_addr() -> SocketAddr {
    format!("127.0.0.1:{}", testkit::free_port())
        .parse()
        .unwrap()
}

/// A real Alertmanager with `config`, its state in `dir`, its cluster port off (as on the
/// image).
pub fn start_alertmanager(config: &Path, dir: &Path) -> Process {
    let addr = free_addr();
    let data = dir.join("alertmanager-data");
    std::fs::create_dir_all(&data).unwrap();
    let mut command = Command::new(alertmanager_binary());
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", data.display()))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--cluster.listen-address=");
    Process::start(command, addr, dir.join("alertmanager.log"))
}

/// A real Prometheus with `config`, its TSDB in `dir`.
pub fn start_prometheus(config: &Path, dir: &Path, addr: SocketAddr) -> Process {
    let data = dir.join("prometheus-data");
    std::fs::create_dir_all(&data).unwrap();
    let mut command = Command::new(testkit::require_tool("prometheus"));
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address={addr}"));
    Process::start(command, addr, dir.join("prometheus.log"))
}

/// `text` with `from` replaced by `to`, failing when `from` is not there (the template
/// changed and the test would silently test something else).
pub fn replace_checked(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "`{from}` is not in:\n{text}");
    text.replace(from, to)
}
