//! Restarting the services whose files changed, in watch mode.

use std::process::Command;

use crate::log;

/// How units are restarted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restarter {
    /// `systemctl reload-or-restart UNIT`: reloads what can reload, restarts the rest, and
    /// starts a unit that is not running (e.g. one whose boot render timed out).
    Systemd,
    /// A shell command given with `--restart-command`, run as `sh -c 'CMD "$1"' _ UNIT`,
    /// so the unit name arrives as one argument and is never parsed by the shell.
    Command(String),
    /// `--dry-run`: say what would be restarted.
    DryRun,
}

impl Restarter {
    /// Restarts `unit`; a failure is logged, not fatal (the next change retries).
    pub fn restart(&self, unit: &str) {
        let mut command = match self {
            Restarter::DryRun => {
                println!("would restart {unit}");
                return;
            }
            Restarter::Systemd => {
                let mut command = Command::new("systemctl");
                command.args(["reload-or-restart", unit]);
                command
            }
            Restarter::Command(shell) => {
                let mut command = Command::new("sh");
                command.args(["-c", &format!("{shell} \"$1\""), "stack-agent", unit]);
                command
            }
        };
        match command.status() {
            Ok(status) if status.success() => log::event(format_args!("restarted {unit}")),
            Ok(status) => log::event(format_args!("restarting {unit} failed: {status}")),
            Err(e) => log::event(format_args!("restarting {unit} failed to start: {e}")),
        }
    }
}
