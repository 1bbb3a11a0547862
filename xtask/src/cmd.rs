//! Every external process goes through here: it is logged before it runs, and when it
//! fails the error repeats the command line, since it may have scrolled off the screen.

use anyhow::Context;

use crate::cargo_env::is_set_by_cargo_for_a_crate;

/// Builds a duct expression for `program args...`.
pub fn cmd<I, S>(program: &str, args: I) -> duct::Expression
where
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString>,
{
    duct::cmd(program, args)
}

/// `cargo ARGS` from inside a cargo-run process (`cargo xtask ...`, a test): the same cargo,
/// without the variables cargo set for the crate it ran. Some build scripts (ring's) rerun
/// when `CARGO_MANIFEST_DIR` changes, so passing those on would make every nested build
/// recompile ring and everything above it, and the next ordinary build do it again.
pub fn cargo<I, S>(args: I) -> duct::Expression
where
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString>,
{
    let program = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| is_set_by_cargo_for_a_crate(name))
        .fold(duct::cmd(program, args), |expression, name| {
            expression.env_remove(name)
        })
}

/// Extension methods that log an expression and name it in errors.
pub trait ExpressionExt {
    /// Runs the command with inherited stdio, failing on a non-zero exit.
    fn run_logged(&self) -> anyhow::Result<std::process::Output>;
    /// Runs the command and returns its trimmed stdout, failing on a non-zero exit.
    fn read_logged(&self) -> anyhow::Result<String>;
}

impl ExpressionExt for duct::Expression {
    fn run_logged(&self) -> anyhow::Result<std::process::Output> {
        eprintln!("$ {self:?}");
        self.run()
            .with_context(|| format!("command failed: {self:?}"))
    }

    fn read_logged(&self) -> anyhow::Result<String> {
        eprintln!("$ {self:?}");
        self.read()
            .with_context(|| format!("command failed: {self:?}"))
    }
}

/// Fails with an install hint when `tool` is not on PATH.
pub fn require_tool(tool: &str, install_hint: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("`{tool}` is not on PATH: {install_hint}"))
}
