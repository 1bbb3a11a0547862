//! The serial console log of a VM, read as text: kernel messages, systemd's status lines and,
//! with `systemd.journald.forward_to_console=1` on the kernel command line, every journal
//! line as `[ 12.345678] IDENTIFIER[PID]: MESSAGE`. It is what is left to read when the
//! guest cannot be asked anything (no network, a hung boot), so failure messages quote it.

use std::path::Path;

/// One VM's console output.
#[derive(Debug, Clone, Default)]
pub struct Console {
    lines: Vec<String>,
}

/// A journal line forwarded to the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalLine<'a> {
    /// The syslog identifier: `systemd`, `stack-agent`, `prometheus`, ...
    pub identifier: &'a str,
    pub message: &'a str,
}

impl Console {
    /// The console log at `path` (empty if it cannot be read), without terminal colours.
    pub fn read(path: &Path) -> Console {
        let bytes = std::fs::read(path).unwrap_or_default();
        Console::parse(&String::from_utf8_lossy(&bytes))
    }

    pub fn parse(text: &str) -> Console {
        Console {
            lines: text
                .split('\n')
                .map(|line| strip_escapes(line).trim_end().to_string())
                .filter(|line| !line.is_empty())
                .collect(),
        }
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The forwarded journal lines, in order.
    pub fn journal(&self) -> impl Iterator<Item = JournalLine<'_>> {
        self.lines.iter().filter_map(|line| journal_line(line))
    }

    /// Messages logged under `identifier` (e.g. `stack-agent`).
    pub fn messages_of(&self, identifier: &str) -> Vec<&str> {
        self.journal()
            .filter(|line| line.identifier == identifier)
            .map(|line| line.message)
            .collect()
    }

    /// systemd's messages about `unit` (starting, exiting, failing), without its prefix.
    pub fn about_unit(&self, unit: &str) -> Vec<&str> {
        let prefix = format!("{unit}: ");
        self.messages_of("systemd")
            .into_iter()
            .filter(|message| message.starts_with(&prefix) || message.contains(unit))
            .collect()
    }

    /// How each of `unit`'s main processes ended, as systemd logged it: `status=5/NOTINSTALLED`,
    /// `signal=KILL`, oldest first.
    pub fn exit_statuses(&self, unit: &str) -> Vec<String> {
        let prefix = format!("{unit}: Main process exited, ");
        self.messages_of("systemd")
            .into_iter()
            .filter_map(|message| message.strip_prefix(&prefix))
            .map(|rest| {
                rest.split(", ")
                    .find(|part| part.starts_with("status="))
                    .unwrap_or(rest)
                    .to_string()
            })
            .collect()
    }

    /// systemd's "Startup finished in ..." line, when the boot got there.
    pub fn startup_finished(&self) -> Option<&str> {
        self.messages_of("systemd")
            .into_iter()
            .find(|message| message.starts_with("Startup finished in"))
    }

    /// The last `n` lines, for a failure message.
    pub fn tail(&self, n: usize) -> String {
        let start = self.lines.len().saturating_sub(n);
        self.lines[start..].join("\n")
    }
}

/// `[ 12.345678] ident[123]: message` as a journal line. The timestamp may come after other
/// output on the same console line (a login prompt printed just before), and may be absent.
fn journal_line(line: &str) -> Option<JournalLine<'_>> {
    let rest = after_timestamp(line).unwrap_or(line);
    let (head, message) = rest.split_once("]: ")?;
    let (identifier, pid) = head.split_once('[')?;
    let plausible = !identifier.is_empty()
        && !identifier.contains(' ')
        && !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit());
    plausible.then_some(JournalLine {
        identifier,
        message,
    })
}

/// What follows the first `[ SECONDS.MICROS] ` in `line`.
fn after_timestamp(line: &str) -> Option<&str> {
    let mut from = 0;
    while let Some(open) = line[from..].find('[').map(|i| from + i) {
        let rest = &line[open + 1..];
        if let Some(close) = rest.find("] ") {
            let stamp = rest[..close].trim_start();
            let is_time =
                stamp.contains('.') && stamp.bytes().all(|b| b.is_ascii_digit() || b == b'.');
            if is_time {
                return Some(&rest[close + 2..]);
            }
        }
        from = open + 1;
    }
    None
}

/// The line without ANSI escape sequences (systemd colours its status lines) and carriage
/// returns.
fn strip_escapes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // Parameters, then one final byte in @..~.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
[    0.000000] Linux version 6.1.0-28-cloud-amd64
\u{1b}[0;1;31mFAILED\u{1b}[0m] Failed to start \u{1b}[0;1;39mstack-agent-render.service\u{1b}[0m.\r
vm login: [   21.503311] stack-agent[412]: stack-agent: error: writing /etc/grafana/grafana.ini: Read-only file system (os error 30)
[   21.611002] systemd[1]: stack-agent-render.service: Main process exited, code=exited, status=5/NOTINSTALLED
[   21.611100] systemd[1]: stack-agent-render.service: Failed with result 'exit-code'.
[   30.000001] systemd[1]: Startup finished in 2.504s (kernel) + 27.100s (userspace) = 29.604s.
";

    #[test]
    fn journal_lines_exit_statuses_and_startup_are_found() {
        let console = Console::parse(LOG);
        assert_eq!(
            console.messages_of("stack-agent"),
            ["stack-agent: error: writing /etc/grafana/grafana.ini: Read-only file system (os error 30)"]
        );
        assert_eq!(
            console.exit_statuses("stack-agent-render.service"),
            ["status=5/NOTINSTALLED"]
        );
        assert_eq!(console.about_unit("stack-agent-render.service").len(), 2);
        assert!(console
            .exit_statuses("stack-agent-mount.service")
            .is_empty());
        assert!(console.startup_finished().unwrap().contains("29.604s"));
        assert!(console.lines()[1].starts_with("FAILED] Failed to start stack-agent-render"));
        assert_eq!(console.tail(1), console.lines()[5]);
    }
}
