//! The util-linux and e2fsprogs/xfsprogs programs the mount step runs.
//!
//! Why programs and not a crate: formatting has no maintained Rust implementation
//! (mkfs.ext4/mkfs.xfs are the reference), and libblkid's probing — every filesystem,
//! RAID member and partition table it knows — is what decides "this device is blank", so
//! the step asks `blkid`/`wipefs` themselves rather than a partial re-implementation. All
//! of them ship in Ubuntu's base image (util-linux, e2fsprogs, xfsprogs).

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};

use crate::log;

/// A finished program: its exit code and output (as text, for messages and parsing).
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// stderr (or stdout) as one line, for an error message.
    pub fn reason(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
        match self.code {
            Some(code) => format!("exit code {code}: {line}"),
            None => format!("killed by a signal: {line}"),
        }
    }
}

/// Runs `program args...` with no stdin (so a program that would ask a question fails
/// instead of hanging the boot). `echo` logs the command line first, shell-quoted.
pub fn run<I, S>(program: &str, args: I, echo: bool) -> Result<Ran, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    if echo {
        log::event(format_args!("running {}", quoted(program, &args)));
    }
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e} (is it installed and on PATH?)"))?;
    Ok(Ran {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// Like [`run`], but any exit code other than 0 is an error naming the command.
pub fn check<I, S>(program: &str, args: I) -> Result<Ran, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let ran = run(program, &args, true)?;
    if ran.success() {
        Ok(ran)
    } else {
        Err(format!(
            "{} failed ({})",
            quoted(program, &args),
            ran.reason()
        ))
    }
}

fn quoted(program: &str, args: &[std::ffi::OsString]) -> String {
    let words = std::iter::once(program.to_string())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()));
    let words: Vec<String> = words.collect();
    shlex::try_join(words.iter().map(String::as_str)).unwrap_or_else(|_| words.join(" "))
}
