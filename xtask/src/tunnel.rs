//! Session Manager port forwarding: a port on 127.0.0.1 that reaches a port of one of the
//! stack's instances through `aws ssm start-session --document-name
//! AWS-StartPortForwardingSession`, with no inbound rule on the instance and no address to
//! allow-list. `cargo xtask open` keeps one in the foreground for a person; deploy's health
//! gate, `verify` and `status` open them when a stack has no direct route ([`reach`]); any
//! other command (a CI job's) can do the same with [`Tunnel::open`].
//!
//! A tunnel is one process group: the AWS CLI and the Session Manager plugin it runs (which
//! listens on the local port). Closing it sends the group SIGINT, which the plugin handles
//! by ending the session (the CLI ignores it and waits for the plugin), then SIGKILL to
//! whatever is left. Tunnels close when dropped, so on every error path too, and on Ctrl-C
//! or SIGTERM through [`interrupt`].

pub mod find;
pub mod interrupt;
pub mod reach;
pub mod tools;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::cmd::Cmd;
pub use tools::Tools;

/// The AWS-owned Session Manager document that forwards a local port to a port of the
/// instance (its `localhost`).
pub const PORT_FORWARDING_DOCUMENT: &str = "AWS-StartPortForwardingSession";

/// How long the plugin gets to end its session after SIGINT before it is killed.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Output lines kept for error messages.
const KEPT_LINES: usize = 20;

/// Why a tunnel could not be had. Every message is one line naming the tunnel.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The AWS CLI or the Session Manager plugin is not installed (the message says which
    /// and how to install it).
    #[error("{0}")]
    MissingTools(String),
    #[error("cannot find a free port on 127.0.0.1: {0}")]
    NoFreePort(std::io::Error),
    #[error(
        "port {0} on 127.0.0.1 is in use: pass another --port, or leave it out for a free one"
    )]
    PortTaken(u16),
    #[error("cannot start `{command}`: {source}")]
    Start {
        command: String,
        source: std::io::Error,
    },
    #[error("the Session Manager tunnel to {target} ended before it listened: {reason}")]
    Ended { target: String, reason: String },
    #[error("the Session Manager tunnel to {target} did not listen within {seconds}s: {reason}")]
    Timeout {
        target: String,
        seconds: u64,
        reason: String,
    },
    #[error("cannot watch for Ctrl-C to close the tunnels: {0}")]
    Interrupt(String),
}

/// Where a tunnel goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// What the port is, for messages: `grafana`.
    pub service: String,
    pub instance_id: String,
    /// The port on the instance.
    pub remote_port: u16,
    pub region: String,
}

impl Forward {
    /// `grafana (i-0abc, port 3000)`.
    pub fn describe(&self) -> String {
        format!(
            "{} ({}, port {})",
            self.service, self.instance_id, self.remote_port
        )
    }
}

/// An open tunnel: `http://127.0.0.1:<local_port>` reaches the forwarded port.
pub struct Tunnel {
    forward: Forward,
    local_port: u16,
    child: Child,
    group: i32,
    output: Arc<Output>,
    closed: bool,
}

/// How a tunnel in the foreground ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Ctrl-C (or SIGTERM): the tunnel was closed.
    Interrupted,
    /// The session ended by itself (idle timeout, instance gone); the reason, when known.
    SessionEnded(String),
}

impl Tunnel {
    /// Starts the session and waits up to `timeout` until the plugin listens on a free local
    /// port. Every tunnel of this process is closed on Ctrl-C or SIGTERM ([`interrupt`]).
    pub fn open(
        tools: &Tools,
        forward: &Forward,
        timeout: Duration,
    ) -> Result<Tunnel, TunnelError> {
        Tunnel::open_on(tools, forward, LocalPort::Any, timeout)
    }

    /// [`Tunnel::open`] on the local port `local` asks for.
    pub fn open_on(
        tools: &Tools,
        forward: &Forward,
        local: LocalPort,
        timeout: Duration,
    ) -> Result<Tunnel, TunnelError> {
        interrupt::install()?;
        let local_port = local.choose()?;
        let args = session_args(forward, local_port);
        let line = Cmd::new("aws", &args).line().to_string();
        eprintln!("$ {line}");
        let mut command = Command::new(tools.aws());
        command
            .args(&args)
            .env("PATH", tools.search_path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group: one signal reaches the CLI and the plugin, and the terminal's
            // Ctrl-C reaches only us (we then close it).
            .process_group(0);
        let mut child = command.spawn().map_err(|source| TunnelError::Start {
            command: line.clone(),
            source,
        })?;
        let group = i32::try_from(child.id()).unwrap_or(i32::MAX);
        interrupt::register(group);
        let output = Arc::new(Output::default());
        if let Some(stdout) = child.stdout.take() {
            output.follow(stdout);
        }
        if let Some(stderr) = child.stderr.take() {
            output.follow(stderr);
        }
        let mut tunnel = Tunnel {
            forward: forward.clone(),
            local_port,
            child,
            group,
            output,
            closed: false,
        };
        match tunnel.wait_listening(timeout) {
            Ok(()) => Ok(tunnel),
            Err(error) => {
                tunnel.close();
                Err(error)
            }
        }
    }

    pub fn forward(&self) -> &Forward {
        &self.forward
    }

    pub fn local_port(&self) -> u16 {
        self.local_port
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.local_port)
    }

    /// Why the session ended, or `None` while it is open.
    pub fn ended(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => Some(self.output.reason().unwrap_or_else(|| status.to_string())),
            Err(error) => Some(error.to_string()),
        }
    }

    /// Blocks until Ctrl-C (or SIGTERM) or until the session ends by itself; closes it.
    /// For a tunnel in the foreground: call [`interrupt::hold`] first.
    pub fn wait(mut self) -> Ending {
        loop {
            if interrupt::interrupted() {
                self.close();
                return Ending::Interrupted;
            }
            if let Some(reason) = self.ended() {
                self.close();
                return Ending::SessionEnded(reason);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ends the session: SIGINT to the group (the plugin ends the session), then SIGKILL to
    /// whatever is left after a grace period. Idempotent; also what dropping does.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        stop_group(self.group, &mut self.child);
        interrupt::unregister(self.group);
    }

    fn wait_listening(&mut self, timeout: Duration) -> Result<(), TunnelError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.output.wait_listening(Duration::from_millis(100)) {
                return Ok(());
            }
            if let Some(reason) = self.ended() {
                return Err(TunnelError::Ended {
                    target: self.forward.describe(),
                    reason,
                });
            }
            if Instant::now() >= deadline {
                return Err(TunnelError::Timeout {
                    target: self.forward.describe(),
                    seconds: timeout.as_secs(),
                    reason: self
                        .output
                        .reason()
                        .unwrap_or_else(|| "the AWS CLI printed nothing".into()),
                });
            }
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.close();
    }
}

/// `aws` arguments for a port-forwarding session to `forward`, listening on `local_port`.
pub fn session_args(forward: &Forward, local_port: u16) -> Vec<String> {
    vec![
        "ssm".into(),
        "start-session".into(),
        "--region".into(),
        forward.region.clone(),
        "--target".into(),
        forward.instance_id.clone(),
        "--document-name".into(),
        PORT_FORWARDING_DOCUMENT.into(),
        "--parameters".into(),
        format!(
            "portNumber={},localPortNumber={local_port}",
            forward.remote_port
        ),
    ]
}

/// A port the kernel says is free on 127.0.0.1 now; the plugin binds it a moment later.
/// Which port on 127.0.0.1 a tunnel listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalPort {
    /// Any free one (machines: nobody types it).
    Any,
    /// This one when it is free, else any free one (people: Grafana on :3000 is the address
    /// alert notifications link to when Grafana has no public name).
    Preferably(u16),
    /// Exactly this one (`open --port`): an error when something else holds it.
    Exactly(u16),
}

impl LocalPort {
    fn choose(self) -> Result<u16, TunnelError> {
        match self {
            LocalPort::Any => free_port(),
            LocalPort::Preferably(port) if is_free(port) => Ok(port),
            LocalPort::Preferably(_) => free_port(),
            LocalPort::Exactly(port) if is_free(port) => Ok(port),
            LocalPort::Exactly(port) => Err(TunnelError::PortTaken(port)),
        }
    }
}

fn is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn free_port() -> Result<u16, TunnelError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(TunnelError::NoFreePort)
}

/// SIGINT to `group`, up to [`CLOSE_GRACE`] for it to empty, then SIGKILL; reaps `child`.
fn stop_group(group: i32, child: &mut Child) {
    let pgid = Pid::from_raw(group);
    let _ = killpg(pgid, Signal::SIGINT);
    let deadline = Instant::now() + CLOSE_GRACE;
    while Instant::now() < deadline {
        let leader_done = !matches!(child.try_wait(), Ok(None));
        // Signal 0 only asks whether anything is left in the group (the plugin, if the CLI
        // went first).
        if leader_done && killpg(pgid, None).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = killpg(pgid, Signal::SIGKILL);
    let _ = child.wait();
}

/// What the CLI and the plugin printed: the last lines (for errors), and whether the plugin
/// has said it listens.
#[derive(Default)]
struct Output {
    state: Mutex<OutputState>,
    changed: Condvar,
}

#[derive(Default)]
struct OutputState {
    lines: VecDeque<String>,
    listening: bool,
}

impl Output {
    /// Reads `stream` line by line on a thread of its own until it closes: the plugin keeps
    /// printing a line per connection, and a full pipe would stop it.
    fn follow(self: &Arc<Self>, stream: impl Read + Send + 'static) {
        let output = Arc::clone(self);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                output.push(line);
            }
        });
    }

    fn lock(&self) -> MutexGuard<'_, OutputState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, line: String) {
        let mut state = self.lock();
        // The plugin's "Port 54321 opened for sessionId <id>." (before "Waiting for
        // connections..."): it listens.
        if line.contains("opened for sessionId") {
            state.listening = true;
        }
        if !line.trim().is_empty() {
            state.lines.push_back(line.trim().to_string());
            if state.lines.len() > KEPT_LINES {
                state.lines.pop_front();
            }
        }
        self.changed.notify_all();
    }

    /// True once the plugin listens; waits up to `wait` for it.
    fn wait_listening(&self, wait: Duration) -> bool {
        let state = self.lock();
        if state.listening {
            return true;
        }
        let (state, _) = self
            .changed
            .wait_timeout(state, wait)
            .unwrap_or_else(|e| e.into_inner());
        state.listening
    }

    /// The most telling line printed: the AWS CLI's error (`An error occurred (...) when
    /// calling the StartSession operation: ...`) or else the last one.
    fn reason(&self) -> Option<String> {
        let state = self.lock();
        state
            .lines
            .iter()
            .rev()
            .find(|l| l.contains("error") || l.contains("Error"))
            .or_else(|| state.lines.back())
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preferred_port_is_taken_when_free_and_another_when_not() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = held.local_addr().unwrap().port();
        let other = LocalPort::Preferably(busy).choose().unwrap();
        assert_ne!(other, busy);
        assert!(matches!(
            LocalPort::Exactly(busy).choose(),
            Err(TunnelError::PortTaken(port)) if port == busy
        ));
        drop(held);
        // Free now: asked for, it is the one chosen.
        assert_eq!(LocalPort::Preferably(busy).choose().unwrap(), busy);
        assert_eq!(LocalPort::Exactly(busy).choose().unwrap(), busy);
    }

    #[test]
    fn the_session_asks_for_the_port_forwarding_document_the_target_and_both_ports() {
        let forward = Forward {
            service: "grafana".into(),
            instance_id: "i-0123456789abcdef0".into(),
            remote_port: 3000,
            region: "eu-west-1".into(),
        };
        assert_eq!(
            Cmd::new("aws", session_args(&forward, 54321)).line(),
            "aws ssm start-session --region eu-west-1 --target i-0123456789abcdef0 \
             --document-name AWS-StartPortForwardingSession \
             --parameters 'portNumber=3000,localPortNumber=54321'"
        );
        assert_eq!(
            forward.describe(),
            "grafana (i-0123456789abcdef0, port 3000)"
        );
    }

    #[test]
    fn the_reason_is_the_clis_error_line_or_the_last_line() {
        let output = Output::default();
        assert_eq!(output.reason(), None);
        output.push("Starting session with SessionId: me-1".into());
        assert_eq!(
            output.reason().as_deref(),
            Some("Starting session with SessionId: me-1")
        );
        output.push(
            "An error occurred (TargetNotConnected) when calling the StartSession operation: \
             i-1 is not connected."
                .into(),
        );
        output.push("".into());
        assert!(output.reason().unwrap().contains("TargetNotConnected"));
        assert!(!output.wait_listening(Duration::from_millis(1)));
        output.push("Port 54321 opened for sessionId me-1.".into());
        assert!(output.wait_listening(Duration::from_millis(1)));
    }
}
