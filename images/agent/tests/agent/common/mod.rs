//! Helpers shared by the agent's integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// The test role specs (fixtures, not the real images/<role> ones).
pub fn spec_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/roles")
}

/// `stack-agent <mode> --role <role> --spec-dir <fixtures> --root <root> <extra...>`, with
/// no AWS environment leaking in from the developer's machine.
pub fn agent(mode: &str, role: &str, root: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stack-agent"));
    command
        .arg(mode)
        .args(["--role", role, "--spec-dir"])
        .arg(spec_dir())
        .arg("--root")
        .arg(root)
        .args(extra)
        .env_remove("STACK_AGENT_SPEC_DIR")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .stdin(Stdio::null());
    command
}

/// Runs to completion, with a hard deadline so a hung agent fails the test.
pub fn run(command: &mut Command, timeout: Duration) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stack-agent");
    let id = child.id();
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(timeout) {
        Ok(output) => output.expect("wait for stack-agent"),
        Err(_) => {
            let _ = Command::new("kill").arg(id.to_string()).status();
            panic!("stack-agent did not finish within {timeout:?}");
        }
    }
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A running agent whose stderr lines arrive on a channel (and are kept for later checks).
pub struct Running {
    pub child: Child,
    lines: Receiver<String>,
    pub seen: Vec<String>,
}

impl Running {
    pub fn spawn(command: &mut Command) -> Running {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn stack-agent");
        let stderr = child.stderr.take().expect("piped stderr");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until `count` stderr lines (in total) contain `needle`.
    pub fn wait_for_lines(&mut self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.seen.iter().filter(|l| l.contains(needle)).count() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "fewer than {count} lines containing {needle:?} within {timeout:?}; got:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Collects whatever was logged so far without blocking.
    pub fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// Waits for the process to exit (bounded) and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll child") {
                // Let the reader thread deliver the last lines.
                std::thread::sleep(Duration::from_millis(50));
                self.drain();
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "stack-agent still running after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Writes a JSON tag file (JSON so that values with line breaks are easy to express).
pub fn write_tags(path: &Path, tags: &[(&str, &str)]) {
    let map: std::collections::BTreeMap<&str, &str> = tags.iter().copied().collect();
    std::fs::write(path, serde_json::to_string(&map).unwrap()).unwrap();
}
