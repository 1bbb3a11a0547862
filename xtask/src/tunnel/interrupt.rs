//! Ctrl-C, SIGTERM and SIGHUP while tunnels are open: each tunnel is a process group of its
//! own (the terminal's Ctrl-C does not reach it), so this process closes them. By default
//! the handler closes every open tunnel and exits with status 130, as an interrupted command
//! does; a command that keeps a tunnel in the foreground (`cargo xtask open`) calls [`hold`]
//! and ends itself when [`interrupted`] turns true.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use super::TunnelError;

/// The process groups of the open tunnels.
static OPEN: Mutex<Vec<i32>> = Mutex::new(Vec::new());
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static HOLD: AtomicBool = AtomicBool::new(false);
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

/// How long the tunnels get to end their sessions before the process exits anyway.
const GRACE: Duration = Duration::from_secs(5);

/// Installs the handler, once per process.
pub fn install() -> Result<(), TunnelError> {
    INSTALLED
        .get_or_init(|| ctrlc::set_handler(on_signal).map_err(|e| e.to_string()))
        .clone()
        .map_err(TunnelError::Interrupt)
}

/// From now on an interrupt only sets [`interrupted`]: the caller closes its tunnels.
pub fn hold() {
    HOLD.store(true, Ordering::SeqCst);
}

/// Whether Ctrl-C (or SIGTERM, SIGHUP) arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub(super) fn register(group: i32) {
    open().push(group);
}

pub(super) fn unregister(group: i32) {
    open().retain(|g| *g != group);
}

fn open() -> std::sync::MutexGuard<'static, Vec<i32>> {
    OPEN.lock().unwrap_or_else(|e| e.into_inner())
}

fn on_signal() {
    INTERRUPTED.store(true, Ordering::SeqCst);
    if HOLD.load(Ordering::SeqCst) {
        return;
    }
    let groups: Vec<i32> = open().drain(..).collect();
    for group in &groups {
        let _ = killpg(Pid::from_raw(*group), Signal::SIGINT);
    }
    let deadline = Instant::now() + GRACE;
    let gone = |group: &i32| {
        // Each group's leader is the CLI, our child: reap it, or it lingers as a zombie
        // that still counts as a member of its group.
        let _ = waitpid(Pid::from_raw(*group), Some(WaitPidFlag::WNOHANG));
        killpg(Pid::from_raw(*group), None).is_err()
    };
    while Instant::now() < deadline && !groups.iter().all(gone) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for group in &groups {
        let _ = killpg(Pid::from_raw(*group), Signal::SIGKILL);
    }
    if !groups.is_empty() {
        eprintln!(
            "interrupted: closed {} Session Manager tunnel{}",
            groups.len(),
            if groups.len() == 1 { "" } else { "s" }
        );
    }
    std::process::exit(130);
}
