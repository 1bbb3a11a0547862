//! The real `demo-app` binary: log rotation and completeness, graceful shutdown, bad flags.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_demo-app");

/// A running `demo-app`, killed on drop if a test failed half-way.
struct App {
    child: Child,
    addr: SocketAddr,
    log_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl App {
    fn start(extra: &[&str]) -> App {
        let dir = tempfile::tempdir().unwrap();
        let log_file = dir.path().join("log/app.log");
        let addr: SocketAddr = format!("127.0.0.1:{}", testkit::free_port())
            .parse()
            .unwrap();
        let child = Command::new(BIN)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--log-file")
            .arg(&log_file)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        testkit::wait_for_port(addr, Duration::from_secs(20));
        App {
            child,
            addr,
            log_file,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "demo-app did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The live file's parsed lines.
    fn log_lines(&self) -> Vec<Value> {
        parse_lines(&self.log_file)
    }

    fn in_flight(&self, client: &reqwest::blocking::Client) -> i64 {
        let text = client
            .get(self.url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("app_requests_in_flight "))
            .unwrap();
        // The /metrics request itself is in flight while it is answered.
        line.rsplit(' ').next().unwrap().parse::<i64>().unwrap() - 1
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{} ends mid-line",
        path.display()
    );
    text.lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("unparseable line in {}: {e}: {line}", path.display()))
        })
        .collect()
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn wait_for_in_flight(app: &App, client: &reqwest::blocking::Client, expected: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.in_flight(client) < expected {
        assert!(Instant::now() < deadline, "requests never got in flight");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn every_request_is_logged_once_across_rotations() {
    const MAX_BYTES: u64 = 2048;
    const KEEP: usize = 5;
    const REQUESTS: usize = 400;
    let mut app = App::start(&[
        "--log-max-bytes",
        &MAX_BYTES.to_string(),
        "--log-keep",
        &KEEP.to_string(),
    ]);
    let client = client();
    let mut ids = Vec::new();
    for i in 0..REQUESTS {
        let response = client.get(app.url(&format!("/probe/{i}"))).send().unwrap();
        assert_eq!(response.status(), 404);
        ids.push(
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    app.signal("TERM");
    assert!(app.wait_exit(Duration::from_secs(15)).success());

    // Oldest first: app.log.5 ... app.log.1, then the live file.
    let dir = app.log_file.parent().unwrap();
    let mut files: Vec<PathBuf> = (1..=KEEP)
        .rev()
        .map(|n| dir.join(format!("app.log.{n}")))
        .collect();
    files.push(app.log_file.clone());
    assert!(
        !dir.join(format!("app.log.{}", KEEP + 1)).exists(),
        "kept more than --log-keep"
    );
    let mut lines = Vec::new();
    for file in &files {
        assert!(
            file.exists(),
            "{} missing: fewer than {KEEP} rotations",
            file.display()
        );
        let meta = std::fs::metadata(file).unwrap();
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o640,
            "{}",
            file.display()
        );
        // Rotation happens between whole-line batches of at most MAX_BYTES plus a line.
        assert!(
            meta.len() <= 2 * MAX_BYTES + 1024,
            "{} is {} bytes",
            file.display(),
            meta.len()
        );
        lines.extend(parse_lines(file));
    }

    let logged: Vec<(usize, String)> = lines
        .iter()
        .filter(|l| l["msg"] == "request")
        .map(|l| {
            let path = l["path"].as_str().unwrap();
            let index = path.strip_prefix("/probe/").unwrap().parse().unwrap();
            (index, l["request_id"].as_str().unwrap().to_owned())
        })
        .collect();
    // What survived is exactly the newest requests, in order, each once: whatever is
    // missing fell off the oldest end, never out of the middle.
    let first = logged.first().unwrap().0;
    assert!(
        first > 0,
        "expected the oldest lines to have been rotated away"
    );
    let expected: Vec<(usize, String)> = (first..REQUESTS).map(|i| (i, ids[i].clone())).collect();
    assert_eq!(logged, expected);
    let last = lines.last().unwrap();
    assert_eq!(last["msg"], "shutdown complete");
    for line in lines.iter().filter(|l| l["msg"] == "request") {
        for field in [
            "time",
            "level",
            "method",
            "route",
            "status",
            "duration_ms",
            "peer",
        ] {
            assert!(!line[field].is_null(), "{field} missing in {line}");
        }
    }
}

/// Sends one keep-alive request on a raw connection and reads the whole response.
fn keep_alive_request(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while !received.ends_with(b"}") {
        let n = stream.read(&mut buffer).unwrap();
        assert!(n > 0, "connection closed before the response");
        received.extend_from_slice(&buffer[..n]);
    }
    stream
}

#[test]
fn sigterm_lets_in_flight_requests_finish_and_exits_zero() {
    const GRACE: Duration = Duration::from_secs(8);
    let mut app = App::start(&["--max-simulated-delay", "5s", "--shutdown-grace", "8s"]);
    let client = client();
    let idle = keep_alive_request(app.addr);

    let slow: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            let url = app.url("/api/data?delay_ms=1500");
            std::thread::spawn(move || {
                let response = client.get(url).send().unwrap();
                (response.status(), response.text().unwrap())
            })
        })
        .collect();
    wait_for_in_flight(&app, &client, 4);

    let signalled = Instant::now();
    app.signal("TERM");
    // The idle keep-alive connection is closed promptly, not kept until the grace ends.
    let mut idle = idle;
    let mut buffer = [0u8; 64];
    assert_eq!(
        idle.read(&mut buffer).unwrap(),
        0,
        "idle connection not closed"
    );
    assert!(
        signalled.elapsed() < Duration::from_millis(1400),
        "idle connection closed late"
    );
    // New connections are refused while the slow requests are still running.
    assert!(
        TcpStream::connect(app.addr).is_err(),
        "still accepting after SIGTERM"
    );

    for handle in slow {
        let (status, body) = handle.join().unwrap();
        assert_eq!(status, 200);
        assert!(body.contains("\"timestamp\""));
    }
    let status = app.wait_exit(GRACE);
    assert!(status.success(), "{status:?}");

    let lines = app.log_lines();
    let messages: Vec<&str> = lines.iter().map(|l| l["msg"].as_str().unwrap()).collect();
    let received = messages
        .iter()
        .position(|m| *m == "shutdown signal received")
        .unwrap();
    assert_eq!(lines[received]["signal"], "SIGTERM");
    assert_eq!(lines[received]["in_flight"], 4);
    let slow_logged = lines
        .iter()
        .filter(|l| l["path"] == "/api/data" && l["status"] == 200)
        .count();
    assert_eq!(slow_logged, 4);
    assert_eq!(messages.last(), Some(&"shutdown complete"));
}

#[test]
fn sigint_also_stops_the_app() {
    let mut app = App::start(&[]);
    app.signal("INT");
    assert!(app.wait_exit(Duration::from_secs(10)).success());
    let lines = app.log_lines();
    assert!(lines
        .iter()
        .any(|l| l["msg"] == "shutdown signal received" && l["signal"] == "SIGINT"));
}

#[test]
fn an_expired_grace_period_abandons_requests_and_says_so() {
    let mut app = App::start(&["--max-simulated-delay", "30s", "--shutdown-grace", "300ms"]);
    let client = client();
    let url = app.url("/api/data?delay_ms=20000");
    let stuck_client = client.clone();
    let stuck = std::thread::spawn(move || stuck_client.get(url).send().is_err());
    wait_for_in_flight(&app, &client, 1);
    app.signal("TERM");
    let status = app.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    assert!(stuck.join().unwrap(), "the abandoned request should fail");
    let lines = app.log_lines();
    let expired = lines
        .iter()
        .find(|l| l["msg"] == "shutdown grace period expired; abandoning requests")
        .unwrap();
    assert_eq!(expired["abandoned"], 1);
}

fn run_expecting_failure(args: &[&str]) -> String {
    let output = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn bad_flags_fail_with_a_message_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let log = log.to_str().unwrap();
    let stderr = run_expecting_failure(&["--log-file", log, "--log-max-bytes", "0"]);
    assert!(stderr.contains("--log-max-bytes"), "{stderr}");
    let stderr = run_expecting_failure(&["--log-file", log, "--shutdown-grace", "soon"]);
    assert!(stderr.contains("--shutdown-grace"), "{stderr}");

    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "").unwrap();
    let nested = blocker.join("app.log");
    let stderr = run_expecting_failure(&[
        "--log-file",
        nested.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(stderr.contains("cannot create log directory"), "{stderr}");
}

#[test]
fn a_busy_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let stderr = run_expecting_failure(&["--listen", &addr, "--log-file", log.to_str().unwrap()]);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}
