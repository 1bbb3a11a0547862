//! Running the Packer builds: one per role, in parallel, output streamed with a role prefix
//! under a progress display, the full output kept per role, the AMI id read from Packer's
//! manifest.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::interrupt::Interrupt;

/// One role's build.
#[derive(Debug, Clone)]
pub struct Job {
    pub role: String,
    /// The one template directory (`images/common/packer`); the var file picks the role.
    pub template_dir: PathBuf,
    pub var_file: PathBuf,
    /// Everything Packer printed.
    pub log_file: PathBuf,
    /// Where the template's manifest post-processor writes the AMI id.
    pub manifest_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Built { ami_id: String },
    Failed { error: String },
    Interrupted,
}

/// Runs every job at once; returns each job's outcome and duration, in the jobs' order.
pub fn run_all(
    jobs: &[Job],
    smoke: bool,
    interrupt: &Arc<Interrupt>,
) -> Vec<(Outcome, SystemTime, Duration)> {
    let progress = MultiProgress::new();
    let width = jobs.iter().map(|j| j.role.len()).max().unwrap_or(0);
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|job| {
                let bar = progress.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner} {prefix:.bold} {elapsed:>4} {wide_msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_prefix(format!("{:>width$}", job.role));
                bar.enable_steady_tick(Duration::from_millis(120));
                let progress = &progress;
                scope.spawn(move || {
                    let (started, wall_clock) = (Instant::now(), SystemTime::now());
                    let outcome = match run_one(job, smoke, interrupt, progress, &bar, width) {
                        Ok(outcome) => outcome,
                        Err(error) => Outcome::Failed {
                            error: crate::report::one_line(&error),
                        },
                    };
                    bar.finish_with_message(match &outcome {
                        Outcome::Built { ami_id } => format!("built {ami_id}"),
                        Outcome::Failed { .. } => format!("FAILED, see {}", job.log_file.display()),
                        Outcome::Interrupted => "interrupted".to_string(),
                    });
                    (outcome, wall_clock, started.elapsed())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle.join().unwrap_or_else(|_| {
                    (
                        Outcome::Failed {
                            error: "the build thread panicked".to_string(),
                        },
                        SystemTime::now(),
                        Duration::ZERO,
                    )
                })
            })
            .collect()
    })
}

fn run_one(
    job: &Job,
    smoke: bool,
    interrupt: &Interrupt,
    progress: &MultiProgress,
    bar: &ProgressBar,
    width: usize,
) -> anyhow::Result<Outcome> {
    if interrupt.is_triggered() {
        return Ok(Outcome::Interrupted);
    }
    // The manifest post-processor appends; a stale file would name an older AMI.
    let _ = std::fs::remove_file(&job.manifest_file);
    let mut log = std::fs::File::create(&job.log_file)
        .with_context(|| format!("cannot create {}", job.log_file.display()))?;
    let command = crate::packer::build_command(&job.template_dir, &job.var_file, smoke);
    writeln!(log, "$ {command}")?;
    let reader = command
        .expression()
        .stdin_null()
        .stderr_to_stdout()
        .unchecked()
        // Its own process group: a terminal's Ctrl-C reaches us only, and we forward it once.
        .before_spawn(|command| {
            command.process_group(0);
            Ok(())
        })
        .reader()
        .with_context(|| format!("cannot start `{command}`"))?;
    let group = reader.pids().first().copied();
    if let Some(group) = group {
        interrupt.register(group);
    }
    let mut lines = BufReader::new(&reader);
    let mut last_error = None;
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match lines.read_until(b'\n', &mut buffer) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) => {
                last_error = Some(format!("reading packer's output: {error}"));
                break;
            }
        }
        let _ = log.write_all(&buffer);
        let line = String::from_utf8_lossy(&buffer);
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if line.contains("rror") {
            last_error = Some(line.trim().to_string());
        }
        bar.set_message(line.trim().to_string());
        progress.suspend(|| eprintln!("{:>width$} | {line}", job.role));
    }
    let status = reader
        .try_wait()
        .context("cannot wait for packer")?
        .map(|output| output.status);
    if let Some(group) = group {
        interrupt.unregister(group);
    }
    let success = status.is_some_and(|s| s.success());
    if !success {
        if interrupt.is_triggered() {
            return Ok(Outcome::Interrupted);
        }
        let code = status
            .and_then(|s| s.code())
            .map_or("a signal".to_string(), |c| c.to_string());
        let detail = last_error.unwrap_or_else(|| "no error line".to_string());
        return Ok(Outcome::Failed {
            error: format!(
                "packer exited with {code}: {detail} (full log: {})",
                job.log_file.display()
            ),
        });
    }
    let ami_id = read_manifest(&job.manifest_file)?;
    Ok(Outcome::Built { ami_id })
}

/// The AMI id of the last build recorded in a Packer manifest (`"artifact_id": "region:ami-..."`).
pub fn read_manifest(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "packer succeeded but wrote no manifest at {}",
            path.display()
        )
    })?;
    let manifest: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    manifest["builds"]
        .as_array()
        .and_then(|builds| builds.last())
        .and_then(|build| build["artifact_id"].as_str())
        .and_then(|artifact| artifact.split(',').next())
        .and_then(|artifact| artifact.rsplit(':').next())
        .filter(|id| id.starts_with("ami-"))
        .map(str::to_string)
        .with_context(|| format!("{} names no AMI", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_names_the_last_builds_ami() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        std::fs::write(
            &path,
            r#"{"builds":[{"name":"smoke","artifact_id":"us-east-1:ami-0aaa"},{"name":"smoke","artifact_id":"us-east-1:ami-0bbb"}]}"#,
        )
        .unwrap();
        assert_eq!(read_manifest(&path).unwrap(), "ami-0bbb");
        std::fs::write(&path, r#"{"builds":[]}"#).unwrap();
        assert!(read_manifest(&path).is_err());
    }
}
