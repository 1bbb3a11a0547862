//! Alertmanager for the tests: the Prometheus role's configs rendered by the agent's own
//! renderer (the shipped templates, with a webhook URL supplied as SSM would), and real
//! Alertmanager and Prometheus processes on free loopback ports.
//!
//! Each test binary uses only part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use stack_agent::RenderedFile;

/// The ARN the tests tag, and its region.
pub const TOPIC_ARN: &str = "arn:aws:sns:eu-west-1:123456789012:obstack-alerts";
pub const TOPIC_REGION: &str = "eu-west-1";

/// Where the agent writes Alertmanager's config on the image.
pub const CONFIG_PATH: &str = "/etc/alertmanager/alertmanager.yml";

/// The Prometheus role's files for `tags`, with the webhook URL (the SSM SecureString's
/// value on EC2) when given.
pub fn render_prometheus_role(
    tags: &BTreeMap<String, String>,
    webhook: Option<&str>,
    root: &Path,
) -> Vec<RenderedFile> {
    let spec = stack_agent::RoleSpec::load(&image_checks::images_dir(), "prometheus")
        .unwrap_or_else(|e| panic!("the prometheus role spec: {e}"));
    let mut values = BTreeMap::new();
    if let Some(url) = webhook {
        values.insert("alert_webhook_url".to_string(), url.to_string());
    }
    let root = root
        .to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", root.display()));
    stack_agent::render_spec_with_secrets(&spec, tags, &values, root, "i-0123456789abcdef0")
        .unwrap_or_else(|e| panic!("rendering the prometheus role failed: {e}"))
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
