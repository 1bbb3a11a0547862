//! Atomic, idempotent file writes: a temp file in the target's own directory, fsync, rename,
//! fsync of the directory. A reader (or a crash) sees the old file or the new one, never half.

use std::fs::{self, File, Permissions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::unistd::{geteuid, Group, User};

use crate::error::AgentError;
use crate::render::RenderedFile;

/// Whether owner and group from the spec are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// chown to the spec's owner and group (needs root; the users must exist).
    Apply,
    /// Leave files owned by whoever runs the agent.
    Ignore,
}

impl Ownership {
    /// Applied only on a real machine: running as root with no `--root` prefix. A local run
    /// or a test renders into a scratch directory where `grafana` and friends need not exist.
    pub fn for_root(root: &str) -> Ownership {
        if geteuid().is_root() && root.trim_end_matches('/').is_empty() {
            Ownership::Apply
        } else {
            Ownership::Ignore
        }
    }
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The file was created or its contents replaced.
    Written,
    /// The file already held exactly these bytes and was left alone.
    Unchanged,
}

/// Writes `file` unless it already holds the same bytes.
pub fn write_file(file: &RenderedFile, ownership: Ownership) -> Result<WriteOutcome, AgentError> {
    if is_unchanged(&file.path, file.contents.as_bytes()) {
        return Ok(WriteOutcome::Unchanged);
    }
    let temp = prepare(file, ownership)?;
    temp.persist(&file.path)
        .map_err(|e| AgentError::write(&file.path, e.error))?;
    sync_parent(&file.path)?;
    Ok(WriteOutcome::Written)
}

/// Creates `file` only if nothing exists at its path yet (for generated secrets, which
/// must survive every later run). Returns whether it was created.
pub fn create_new(file: &RenderedFile, ownership: Ownership) -> Result<bool, AgentError> {
    if file.path.exists() {
        return Ok(false);
    }
    let temp = prepare(file, ownership)?;
    match temp.persist_noclobber(&file.path) {
        Ok(_) => {
            sync_parent(&file.path)?;
            Ok(true)
        }
        // Someone created it between our check and the rename: theirs wins.
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(AgentError::write(&file.path, e.error)),
    }
}

/// Writes every file in order, stopping at the first failure; returns each one's outcome.
pub fn write_files(
    files: &[RenderedFile],
    ownership: Ownership,
) -> Result<Vec<WriteOutcome>, AgentError> {
    files.iter().map(|f| write_file(f, ownership)).collect()
}

/// Whether `path` already holds exactly `contents`.
pub fn is_unchanged(path: &Path, contents: &[u8]) -> bool {
    fs::read(path).is_ok_and(|existing| existing == contents)
}

/// A fully written, synced temp file next to the target, with the final mode and owner.
/// The temp file starts at 0600, so a secret is never readable by others, even briefly.
fn prepare(
    file: &RenderedFile,
    ownership: Ownership,
) -> Result<tempfile::NamedTempFile, AgentError> {
    let path = &file.path;
    let dir = parent_dir(path)?;
    fs::create_dir_all(&dir).map_err(|e| AgentError::write(path, e))?;
    let mut temp = tempfile::Builder::new()
        .prefix(".stack-agent-")
        .tempfile_in(&dir)
        .map_err(|e| AgentError::write(path, e))?;
    temp.write_all(file.contents.as_bytes())
        .map_err(|e| AgentError::write(path, e))?;
    if ownership == Ownership::Apply {
        let (uid, gid) = resolve_owner(file)?;
        std::os::unix::fs::fchown(temp.as_file(), uid, gid)
            .map_err(|e| AgentError::write(path, format!("chown: {e}")))?;
    }
    temp.as_file()
        .set_permissions(Permissions::from_mode(file.mode))
        .map_err(|e| AgentError::write(path, e))?;
    temp.as_file()
        .sync_all()
        .map_err(|e| AgentError::write(path, e))?;
    Ok(temp)
}

fn parent_dir(path: &Path) -> Result<PathBuf, AgentError> {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .ok_or_else(|| AgentError::write(path, "has no parent directory"))
}

/// Makes the rename itself durable.
fn sync_parent(path: &Path) -> Result<(), AgentError> {
    let dir = parent_dir(path)?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AgentError::write(path, format!("fsync of {}: {e}", dir.display())))
}

fn resolve_owner(file: &RenderedFile) -> Result<(Option<u32>, Option<u32>), AgentError> {
    let uid = match &file.owner {
        Some(name) => Some(
            User::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| AgentError::write(&file.path, format!("no user `{name}`")))?
                .uid
                .as_raw(),
        ),
        None => None,
    };
    let gid = match &file.group {
        Some(name) => Some(
            Group::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| AgentError::write(&file.path, format!("no group `{name}`")))?
                .gid
                .as_raw(),
        ),
        None => None,
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn file(path: PathBuf, contents: &str, mode: u32) -> RenderedFile {
        RenderedFile {
            path,
            contents: contents.into(),
            mode,
            owner: None,
            group: None,
            services: vec![],
            sensitive: false,
        }
    }

    #[test]
    fn writes_with_mode_and_skips_identical_contents() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("etc/x/config.yaml");
        let first = file(target.clone(), "a: 1\n", 0o640);
        assert_eq!(
            write_file(&first, Ownership::Ignore).unwrap(),
            WriteOutcome::Written
        );
        assert_eq!(fs::read_to_string(&target).unwrap(), "a: 1\n");
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o7777, 0o640);
        let inode = fs::metadata(&target).unwrap().ino();
        assert_eq!(
            write_file(&first, Ownership::Ignore).unwrap(),
            WriteOutcome::Unchanged
        );
        assert_eq!(
            fs::metadata(&target).unwrap().ino(),
            inode,
            "must not be rewritten"
        );
        let second = file(target.clone(), "a: 2\n", 0o640);
        assert_eq!(
            write_file(&second, Ownership::Ignore).unwrap(),
            WriteOutcome::Written
        );
        assert_eq!(fs::read_to_string(&target).unwrap(), "a: 2\n");
        let leftovers = fs::read_dir(target.parent().unwrap()).unwrap().count();
        assert_eq!(leftovers, 1, "no temp files left behind");
    }

    #[test]
    fn create_new_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("secret");
        assert!(create_new(&file(target.clone(), "one", 0o600), Ownership::Ignore).unwrap());
        assert!(!create_new(&file(target.clone(), "two", 0o600), Ownership::Ignore).unwrap());
        assert_eq!(fs::read_to_string(&target).unwrap(), "one");
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o7777, 0o600);
    }
}
