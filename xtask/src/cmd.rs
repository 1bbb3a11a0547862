//! Every external process goes through here: it is echoed as a shell would show it before
//! it runs (`$ cargo build --release -p demo-app`), and when it fails the error repeats that
//! line, since it may have scrolled off the screen.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::PathBuf;

use anyhow::Context;

use crate::cargo_env::is_set_by_cargo_for_a_crate;

/// A command line and the duct expression that runs it. The line is what a person would
/// type: program and arguments, shell-quoted, without the environment the expression sets.
#[derive(Clone)]
pub struct Cmd {
    line: String,
    expression: duct::Expression,
}

impl Cmd {
    /// `program args...`.
    pub fn new<I, S>(program: impl AsRef<OsStr>, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let line = std::iter::once(program.as_ref())
            .chain(args.iter().map(OsString::as_os_str))
            .map(quote)
            .collect::<Vec<_>>()
            .join(" ");
        Cmd {
            line,
            expression: duct::cmd(program.as_ref(), args),
        }
    }

    /// `cargo ARGS` from inside a cargo-run process (`cargo xtask ...`, a test): the same
    /// cargo, without the variables cargo set for the crate it ran. Some build scripts
    /// (ring's) rerun when `CARGO_MANIFEST_DIR` changes, so passing those on would make
    /// every nested build recompile ring and everything above it.
    pub fn cargo<I, S>(args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Cmd::new(&program, args);
        // Echo `cargo`, not the toolchain's full path.
        command.line = match command.line.split_once(' ') {
            Some((_, rest)) => format!("cargo {rest}"),
            None => "cargo".to_string(),
        };
        command.map(|expression| {
            std::env::vars_os()
                .filter_map(|(name, _)| name.into_string().ok())
                .filter(|name| is_set_by_cargo_for_a_crate(name))
                .fold(expression, |expression, name| expression.env_remove(name))
        })
    }

    /// Changes how it runs (environment, directory, redirections) but not what it is.
    pub fn map(self, change: impl FnOnce(duct::Expression) -> duct::Expression) -> Cmd {
        Cmd {
            line: self.line,
            expression: change(self.expression),
        }
    }

    /// The command line, shell-quoted.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// The expression, for callers that need duct's finer control (e.g. `start`).
    pub fn expression(&self) -> &duct::Expression {
        &self.expression
    }

    /// Echoes and runs it with inherited stdio; a non-zero exit is an error naming it.
    pub fn run(&self) -> anyhow::Result<std::process::Output> {
        self.echo();
        let output = self
            .expression
            .unchecked()
            .run()
            .with_context(|| format!("cannot run `{}`", self.line))?;
        self.check(&output)?;
        Ok(output)
    }

    /// Echoes and runs it, returning its stdout without the trailing newline.
    pub fn read(&self) -> anyhow::Result<String> {
        self.echo();
        let output = self
            .expression
            .stdout_capture()
            .unchecked()
            .run()
            .with_context(|| format!("cannot run `{}`", self.line))?;
        self.check(&output)?;
        let text = String::from_utf8(output.stdout)
            .with_context(|| format!("`{}` printed something that is not UTF-8", self.line))?;
        Ok(text.trim_end_matches(['\n', '\r']).to_string())
    }

    /// Runs it without echoing (for commands whose output is the point, like `version`
    /// probes), returning stdout; a non-zero exit is still an error naming it.
    pub fn read_quietly(&self) -> anyhow::Result<String> {
        let output = self
            .expression
            .stdout_capture()
            .stderr_capture()
            .unchecked()
            .run()
            .with_context(|| format!("cannot run `{}`", self.line))?;
        self.check(&output)?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .trim_end()
            .to_string())
    }

    /// Echoes and starts it in the background.
    pub fn start(&self) -> anyhow::Result<duct::Handle> {
        self.echo();
        self.expression
            .unchecked()
            .start()
            .with_context(|| format!("cannot start `{}`", self.line))
    }

    fn echo(&self) {
        eprintln!("$ {}", self.line);
    }

    fn check(&self, output: &std::process::Output) -> anyhow::Result<()> {
        if output.status.success() {
            return Ok(());
        }
        let how = match output.status.code() {
            Some(code) => format!("exited with status {code}"),
            None => "was killed by a signal".to_string(),
        };
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        match last {
            // Captured stderr never reached the terminal: its last line says why.
            Some(last) => anyhow::bail!("`{}` {how}: {}", self.line, last.trim()),
            None => anyhow::bail!("`{}` {how}", self.line),
        }
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line)
    }
}

/// One word as a POSIX shell would need it written.
fn quote(word: &OsStr) -> String {
    let text = word.to_string_lossy();
    // A NUL byte cannot be passed to a process anyway (and shlex refuses to quote it):
    // show it as the two characters `\0`, then quote the rest as usual.
    let text = text.replace('\0', "\\0");
    match shlex::try_quote(&text) {
        Ok(quoted) => quoted.into_owned(),
        Err(_) => text,
    }
}

/// The full path of `tool` on PATH, like a shell's lookup.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    which::which(tool).ok()
}

/// The full path of `tool` on PATH, or an error with how to install it.
pub fn require_tool(tool: &str, install_hint: &str) -> anyhow::Result<PathBuf> {
    find_tool(tool).with_context(|| {
        if install_hint.is_empty() {
            format!("`{tool}` is not on PATH")
        } else {
            format!("`{tool}` is not on PATH: {install_hint}")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_is_what_a_shell_user_would_type() {
        let command = Cmd::new("packer", ["build", "-var-file=/tmp/a b.json", "it's", "x"])
            .map(|e| e.env("CHECKPOINT_DISABLE", "1").dir("/"));
        assert_eq!(
            command.line(),
            "packer build '-var-file=/tmp/a b.json' \"it's\" x"
        );
        assert_eq!(Cmd::new("echo", ["a\0b"]).line(), r#"echo "a\\0b""#);
        let cargo = Cmd::cargo(["build", "--release", "-p", "demo-app"]);
        assert_eq!(cargo.line(), "cargo build --release -p demo-app");
    }

    #[test]
    fn a_failure_names_the_command_and_its_exit_status_not_duct_internals() {
        let error = Cmd::new("sh", ["-c", "echo oops >&2; exit 3"])
            .map(|e| e.stderr_capture())
            .run()
            .unwrap_err();
        let text = crate::report::one_line(&error);
        assert_eq!(
            text,
            "`sh -c 'echo oops >&2; exit 3'` exited with status 3: oops"
        );
        let missing = Cmd::new("/nonexistent/tool", ["x"]).run().unwrap_err();
        let text = crate::report::one_line(&missing);
        assert!(
            text.starts_with("cannot run `/nonexistent/tool x`"),
            "{text}"
        );
        for noise in ["Io(", "EnvRemove", "Cmd("] {
            assert!(!text.contains(noise), "{text}");
        }
        assert_eq!(Cmd::new("echo", ["hi"]).read().unwrap(), "hi");
    }
}
