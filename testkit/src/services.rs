//! Real services on loopback for the deploy tests: the workspace's demo app and Debian's
//! Prometheus, each killed when its guard is dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A child process killed when dropped, so a failing test leaves nothing running.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The demo app on a free port, logging into `dir`; returns its guard and port.
pub fn start_app(dir: &Path) -> (Running, u16) {
    let port = crate::free_port();
    let child = Command::new(crate::workspace_bin("demo-app", "demo-app"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--log-file")
        .arg(dir.join("app.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start demo-app");
    let running = Running(child);
    crate::wait_for_port(loopback(port), Duration::from_secs(30));
    (running, port)
}

/// Prometheus scraping the app on `app_port` every second as job `app`.
pub fn start_prometheus(dir: &Path, app_port: u16) -> (Running, u16) {
    start_prometheus_with(
        dir,
        &format!(
            "  - job_name: app\n    static_configs:\n      - targets: ['127.0.0.1:{app_port}']\n"
        ),
    )
}

/// Prometheus with `scrape_configs` (YAML list items, indented by two spaces), scraping every
/// second, its data in `dir`; returns its guard and port.
pub fn start_prometheus_with(dir: &Path, scrape_configs: &str) -> (Running, u16) {
    let prometheus = crate::require_tool("prometheus");
    let port = crate::free_port();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{scrape_configs}"),
    )
    .expect("write prometheus.yml");
    let child = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let running = Running(child);
    crate::wait_for_port(loopback(port), Duration::from_secs(30));
    (running, port)
}

/// Points `command` (`cargo xtask up`, `verify`, `down`) at a scratch stack directory and
/// binary cache, and leaves `PATH` the only source of service binaries, as on a fresh
/// machine: every `STACK_<NAME>_BIN` override in the caller's environment is removed.
pub fn isolate_local_stack<'a>(
    command: &'a mut Command,
    stack_dir: &Path,
    cache_dir: &Path,
) -> &'a mut Command {
    let app = crate::workspace_bin("demo-app", "demo-app");
    command
        .env("OBSTACK_STACK_DIR", stack_dir)
        .env("STACK_CACHE_DIR", cache_dir)
        // The suite's own build of the checkout's binaries: `up` builds nothing.
        .env(
            xtask::up::WORKSPACE_BIN_DIR_ENV,
            app.parent().unwrap_or(std::path::Path::new(".")),
        );
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("STACK_") && name.ends_with("_BIN") {
            command.env_remove(name.as_ref());
        }
    }
    command
}
