//! `state.json`: what a local stack runs, written by `up` and read by `down` and `ps`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackState {
    /// True when `up --detach` returned, leaving the stack running.
    pub detached: bool,
    /// The `xtask up` process that supervises a foreground stack.
    pub supervisor_pid: u32,
    pub components: Vec<Running>,
    /// Components that could not be had, with how to provide them.
    #[serde(default)]
    pub unavailable: Vec<Unavailable>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    pub name: String,
    pub pid: u32,
    /// The kernel's start time of `pid` (clock ticks since boot), so a recycled pid is
    /// never mistaken for the component.
    pub start_time: u64,
    pub port: u16,
    pub url: String,
    pub health_url: String,
    pub binary: PathBuf,
    pub log: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unavailable {
    pub name: String,
    pub reason: String,
}

impl StackState {
    /// `None` when no state file exists.
    pub fn load(path: &Path) -> anyhow::Result<Option<StackState>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(error).with_context(|| format!("cannot read {}", path.display()))
            }
        };
        serde_json::from_str(&text).map(Some).with_context(|| {
            format!(
                "{} is not a stack state file; stop any stack processes by hand and delete it",
                path.display()
            )
        })
    }

    /// Writes atomically, so `ps` never reads half a file.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text =
            serde_json::to_string_pretty(self).context("cannot serialise the stack state")?;
        crate::atomic::write(path, text)
    }

    pub fn remove(path: &Path) -> anyhow::Result<()> {
        match std::fs::remove_file(path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(error).with_context(|| format!("cannot remove {}", path.display()))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_a_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert!(StackState::load(&path).unwrap().is_none());
        let state = StackState {
            detached: true,
            supervisor_pid: 42,
            components: vec![Running {
                name: "app".into(),
                pid: 7,
                start_time: 99,
                port: 5000,
                url: "http://127.0.0.1:5000".into(),
                health_url: "http://127.0.0.1:5000/health".into(),
                binary: "/bin/app".into(),
                log: "/tmp/app.log".into(),
            }],
            unavailable: vec![Unavailable {
                name: "loki".into(),
                reason: "offline".into(),
            }],
        };
        state.save(&path).unwrap();
        let loaded = StackState::load(&path).unwrap().unwrap();
        assert_eq!(loaded.components, state.components);
        assert_eq!(loaded.unavailable, state.unavailable);
        StackState::remove(&path).unwrap();
        assert!(!path.exists());
        StackState::remove(&path).unwrap();
    }

    #[test]
    fn a_corrupt_state_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{").unwrap();
        let error = format!("{:#}", StackState::load(&path).unwrap_err());
        assert!(error.contains("not a stack state file"), "{error}");
    }
}
