//! Starting and stopping the stack's processes. Each runs in its own process group, so
//! Ctrl-C reaches only `xtask up` (which then stops everything in order) and a stop
//! signal reaches any helper process a component forks. Stopping is SIGTERM, a grace
//! period, then SIGKILL for whatever is left.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// How long components get to exit after SIGTERM before they are killed.
pub const STOP_GRACE: Duration = Duration::from_secs(15);

/// One process to start.
pub struct Launch<'a> {
    pub name: &'a str,
    pub binary: &'a Path,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    pub cwd: &'a Path,
}

/// Starts `launch` with stdout and stderr appended to its log file.
pub fn spawn(launch: &Launch) -> anyhow::Result<Child> {
    if let Some(dir) = launch.log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&launch.log)
        .with_context(|| format!("cannot open {}", launch.log.display()))?;
    let stderr = log
        .try_clone()
        .with_context(|| format!("cannot open {}", launch.log.display()))?;
    Command::new(launch.binary)
        .args(&launch.args)
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir(launch.cwd)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {} ({})", launch.name, launch.binary.display()))
}

/// The kernel's start time of a live process `pid`, or `None` when it is gone. A zombie
/// (exited, not yet reaped by its parent) counts as gone: it runs nothing and holds no port.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// Parses `/proc/<pid>/stat`: the command name (field 2) may hold spaces and parentheses,
/// so fields are counted from the last `)`. Field 3 is the state, field 22 the start time.
fn parse_stat(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// True while the process that had `start_time` still runs as `pid`.
pub fn is_alive(pid: u32, start_time: u64) -> bool {
    self::start_time(pid) == Some(start_time)
}

/// A process to stop.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub pid: u32,
    pub start_time: u64,
}

/// Stops `targets`: SIGTERM to each process group, up to `grace` for them to exit, then
/// SIGKILL. `reap` is called while waiting so a parent can collect its exited children.
/// Returns the names that had to be killed.
pub fn stop(targets: &[Target], grace: Duration, mut reap: impl FnMut()) -> Vec<String> {
    let alive = |target: &&Target| is_alive(target.pid, target.start_time);
    for target in targets.iter().filter(alive) {
        signal_group(target.pid, Signal::SIGTERM);
    }
    wait_until_gone(targets, grace, &mut reap);
    let stubborn: Vec<&Target> = targets.iter().filter(alive).collect();
    for target in &stubborn {
        signal_group(target.pid, Signal::SIGKILL);
    }
    wait_until_gone(targets, Duration::from_secs(5), &mut reap);
    stubborn.iter().map(|target| target.name.clone()).collect()
}

fn wait_until_gone(targets: &[Target], limit: Duration, reap: &mut impl FnMut()) {
    let deadline = Instant::now() + limit;
    loop {
        reap();
        let any_alive = targets.iter().any(|t| is_alive(t.pid, t.start_time));
        if !any_alive || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Signals the process group led by `pid` (each component leads its own), falling back to
/// the process alone if the group is gone.
fn signal_group(pid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    let pid = Pid::from_raw(raw);
    if signal::killpg(pid, signal).is_err() {
        let _ = signal::kill(pid, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_parsed_from_the_last_parenthesis() {
        let line = "1234 (we ird) name)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(parse_stat(line), Some(987654));
        let zombie = "1234 (app) Z 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 0 0";
        assert_eq!(parse_stat(zombie), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id();
        let started = start_time(me).unwrap();
        assert!(is_alive(me, started));
        assert!(!is_alive(me, started + 1));
    }

    #[test]
    fn stop_terminates_a_process_group_and_kills_what_ignores_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let sh = Path::new("/bin/sh");
        let launch = |name: &'static str, script: &str| Launch {
            name,
            binary: sh,
            args: vec!["-c".into(), script.into()],
            env: vec![],
            log: dir.path().join(format!("{name}.log")),
            cwd: dir.path(),
        };
        let mut polite = spawn(&launch("polite", "exec sleep 30")).unwrap();
        // Traps SIGTERM and keeps a child in its group: only SIGKILL ends it.
        let mut stubborn = spawn(&launch(
            "stubborn",
            "trap '' TERM; sleep 30 & wait; sleep 30",
        ))
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let targets: Vec<Target> = [("polite", &polite), ("stubborn", &stubborn)]
            .iter()
            .map(|(name, child)| Target {
                name: name.to_string(),
                pid: child.id(),
                start_time: start_time(child.id()).unwrap(),
            })
            .collect();
        let killed = stop(&targets, Duration::from_millis(500), || {
            let _ = polite.try_wait();
            let _ = stubborn.try_wait();
        });
        assert_eq!(killed, vec!["stubborn".to_string()]);
        for target in &targets {
            assert!(
                !is_alive(target.pid, target.start_time),
                "{} survived",
                target.name
            );
        }
        assert!(polite.wait().is_ok() && stubborn.wait().is_ok());
    }
}
