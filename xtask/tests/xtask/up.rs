//! `cargo xtask up --detach`, `ps` and `down`, then `up` in the foreground and Ctrl-C, end to end, with Debian's Prometheus and the
//! demo app built from the checkout. The stack uses the AMIs' fixed ports, so every step
//! runs in this one test, in order; the stack's files go to a temporary directory.

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Runs the xtask binary against a private stack directory and download cache.
struct Xtask {
    stack_dir: tempfile::TempDir,
    cache_dir: tempfile::TempDir,
}

impl Xtask {
    fn new() -> Xtask {
        Xtask {
            stack_dir: tempfile::tempdir().unwrap(),
            cache_dir: tempfile::tempdir().unwrap(),
        }
    }

    fn command(&self, stack_dir: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
        command.args(args);
        // Only PATH may provide binaries here, as on a fresh machine.
        testkit::services::isolate_local_stack(&mut command, stack_dir, self.cache_dir.path());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_in(self.stack_dir.path(), args)
    }

    fn run_in(&self, stack_dir: &Path, args: &[&str]) -> Output {
        self.command(stack_dir, args).output().unwrap()
    }

    fn ps(&self) -> Value {
        let output = self.run(&["ps", "--json"]);
        assert!(
            output.status.success(),
            "ps failed: {}",
            text(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }
}

/// Stops the stack even when an assertion fails, so no process outlives the test.
struct StopOnDrop<'a>(&'a Xtask);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["down"]);
    }
}

/// A foreground `up` that gets Ctrl-C (SIGINT, so it stops what it started) if the test fails
/// while it runs: no stack outlives a failed test and holds the fixed ports for the next one.
struct Foreground(std::process::Child);

impl Drop for Foreground {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(None)) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .unwrap()
}

/// Polls `check` every half second until it returns `Some`, or panics after `limit`.
fn eventually<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn get_json(client: &reqwest::blocking::Client, url: &str) -> Option<Value> {
    client.get(url).send().ok()?.json().ok()
}

/// True while `pid` is a live process (an unreaped zombie runs nothing and counts as gone).
fn is_running(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next();
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

/// After `how` stopped the stack: none of `pids` runs, the ports are free, no state is left.
fn assert_stopped(xtask: &Xtask, pids: &[u64], how: &str) {
    for pid in pids {
        assert!(!is_running(*pid), "pid {pid} survived {how}");
    }
    for port in [5000, 9090] {
        TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .unwrap_or_else(|e| panic!("port {port} still taken after {how}: {e}"));
    }
    assert!(!xtask.stack_dir.path().join("state.json").exists());
}

fn component<'a>(ps: &'a Value, name: &str) -> &'a Value {
    ps["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("ps lists no {name}: {ps}"))
}

#[test]
fn up_runs_the_app_and_prometheus_detached_and_in_the_foreground_and_stops_cleanly() {
    testkit::require_tool("prometheus");
    let xtask = Xtask::new();
    let _stop = StopOnDrop(&xtask);

    // Up, offline: the app from the checkout, Prometheus from PATH.
    let up = xtask.run(&["up", "--detach", "--offline", "--timeout", "180s"]);
    let up_stderr = text(&up.stderr);
    assert!(
        up.status.success(),
        "up failed:\n{up_stderr}\n{}",
        text(&up.stdout)
    );
    let summary = text(&up.stdout);
    assert!(summary.contains("http://127.0.0.1:5000"), "{summary}");
    assert!(summary.contains("http://127.0.0.1:9090"), "{summary}");

    // ps: both run and are healthy; what cannot be had offline is listed with its flag.
    let ps = xtask.ps();
    assert_eq!(ps["running"], true, "{ps}");
    for name in ["app", "prometheus"] {
        let entry = component(&ps, name);
        assert_eq!(entry["running"], true, "{name}: {ps}");
        assert_eq!(entry["healthy"], true, "{name}: {ps}");
    }
    assert_eq!(component(&ps, "app")["port"], 5000);
    assert_eq!(component(&ps, "prometheus")["port"], 9090);
    let unavailable = ps["unavailable"].as_array().unwrap();
    for (name, tool, flag) in [
        ("loki", "loki", "--loki"),
        ("promtail", "promtail", "--promtail"),
        ("grafana", "grafana", "--grafana"),
    ] {
        if testkit::find_on_path(tool).is_some() {
            continue;
        }
        let entry = unavailable
            .iter()
            .find(|u| u["name"] == name)
            .unwrap_or_else(|| panic!("{name} not reported unavailable: {ps}"));
        let reason = entry["reason"].as_str().unwrap();
        assert!(
            reason.contains(flag) && reason.contains("--offline"),
            "{reason}"
        );
        // Reported once, on one line, with the flag that provides it.
        let line = format!("{name}: not available (");
        let output = format!("{up_stderr}{summary}");
        assert_eq!(output.matches(&line).count(), 1, "{output}");
        let reported = up_stderr.lines().find(|l| l.starts_with(&line)).unwrap();
        assert!(
            reported.contains(&format!("pass {flag} PATH or set STACK_")),
            "{reported}"
        );
    }
    for noise in ["Io(", "EnvRemove", "Cmd("] {
        assert!(!up_stderr.contains(noise), "{up_stderr}");
    }
    let running: Vec<&str> = ps["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();

    // `ps` as a person reads it: aligned columns.
    let table = xtask.run(&["ps"]);
    assert!(table.status.success(), "{}", text(&table.stderr));
    let table = text(&table.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("COMPONENT"), "{table}");
    let status_column = lines[0].find("STATUS").unwrap();
    for name in &running {
        let row = lines
            .iter()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("ps lists no {name}:\n{table}"));
        assert_eq!(row.find("healthy"), Some(status_column), "{table}");
    }

    // Prometheus, configured by the prometheus role's template, scrapes the app.
    let client = http();
    eventually(
        "Prometheus reports the demo-app target up",
        Duration::from_secs(90),
        || {
            let targets = get_json(&client, "http://127.0.0.1:9090/api/v1/targets")?;
            targets["data"]["activeTargets"]
                .as_array()?
                .iter()
                .find(|t| t["labels"]["job"] == "demo-app" && t["health"] == "up")
                .map(|t| assert_eq!(t["scrapeUrl"], "http://127.0.0.1:5000/metrics"))
        },
    );
    // Prometheus scrapes exactly what runs, each target once: nothing that is not running
    // shows as a target that is down.
    let targets = get_json(&client, "http://127.0.0.1:9090/api/v1/targets").unwrap();
    let mut scraped: Vec<(String, String)> = targets["data"]["activeTargets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let job = t["labels"]["job"].as_str().unwrap().to_string();
            (job, t["scrapeUrl"].as_str().unwrap().to_string())
        })
        .collect();
    scraped.sort();
    fn job_of(component: &str) -> &str {
        match component {
            "app" => "demo-app",
            "node_exporter" => "node",
            other => other,
        }
    }
    let mut expected: Vec<(String, String)> = ps["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap();
            (
                job_of(name).to_string(),
                format!("http://127.0.0.1:{}/metrics", c["port"]),
            )
        })
        .collect();
    expected.sort();
    assert_eq!(scraped, expected, "{targets}");
    for _ in 0..5 {
        let response = client.get("http://127.0.0.1:5000/api/data").send().unwrap();
        assert!(response.status().is_success());
    }
    let series = eventually(
        "app_requests_total is queryable",
        Duration::from_secs(90),
        || {
            let answer = get_json(
                &client,
                "http://127.0.0.1:9090/api/v1/query?query=app_requests_total",
            )?;
            let result = answer["data"]["result"].as_array()?.clone();
            (!result.is_empty()).then_some(result)
        },
    );
    assert!(
        series.iter().all(|s| s["metric"]["job"] == "demo-app"),
        "{series:?}"
    );

    // A second stack on the same ports gets a clear one-line error and creates nothing.
    let other_dir = tempfile::tempdir().unwrap();
    let clash = xtask.run_in(other_dir.path(), &["up", "--detach", "--offline"]);
    assert!(!clash.status.success());
    let clash_error = text(&clash.stderr);
    assert!(
        clash_error.contains("port 5000") && clash_error.contains("app cannot start"),
        "{clash_error}"
    );
    assert!(!other_dir.path().join("state.json").exists());
    // And `up` again on the running stack says so.
    let again = xtask.run(&["up", "--detach", "--offline"]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already running"),
        "{}",
        text(&again.stderr)
    );

    // Down: every process is gone, the ports are free, ps shows nothing.
    let pids: Vec<u64> = ps["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["pid"].as_u64().unwrap())
        .collect();
    assert!(pids.iter().all(|&pid| is_running(pid)), "{ps}");
    let down = xtask.run(&["down"]);
    assert!(down.status.success(), "down failed: {}", text(&down.stderr));
    assert_stopped(&xtask, &pids, "`down`");
    let ps = xtask.ps();
    assert_eq!(ps["running"], false, "{ps}");
    assert_eq!(ps["components"].as_array().unwrap().len(), 0, "{ps}");

    // In the foreground, up runs until Ctrl-C and then stops everything it started.
    let log_path = xtask.stack_dir.path().join("foreground.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut foreground = Foreground(
        xtask
            .command(
                xtask.stack_dir.path(),
                &["up", "--offline", "--timeout", "180s"],
            )
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let foreground = &mut foreground.0;
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let ps = eventually(
        "the foreground stack is healthy",
        Duration::from_secs(180),
        || {
            assert!(
                foreground.try_wait().unwrap().is_none(),
                "foreground up exited:\n{}",
                log_text()
            );
            let ps = xtask.ps();
            let components = ps["components"].as_array()?;
            let healthy = ["app", "prometheus"].iter().all(|name| {
                components
                    .iter()
                    .any(|c| c["name"] == *name && c["healthy"] == true)
            });
            // `ps` can see the stack healthy before `up`'s own health loop does; Ctrl-C in
            // between is an interrupted start, not a stop. `up` says when it supervises.
            let supervising = log_text().contains("Press Ctrl-C to stop the stack.");
            (healthy && supervising).then(|| ps.clone())
        },
    );
    let pids: Vec<u64> = ps["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["pid"].as_u64().unwrap())
        .collect();
    let status = Command::new("kill")
        .args(["-INT", &foreground.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = eventually("up stops after Ctrl-C", Duration::from_secs(60), || {
        foreground.try_wait().unwrap()
    });
    assert!(exit.success(), "up after Ctrl-C: {exit}\n{}", log_text());
    assert_stopped(&xtask, &pids, "Ctrl-C");
}
