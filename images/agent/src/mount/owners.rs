//! Who owns the files on a data volume, kept in step with the image's users.
//!
//! The volume outlives every image, and the numeric ids of the services' users are an
//! image's choice: if they ever differ between the image that wrote the files and the one
//! mounting them, the services would meet their own data owned by a stranger (Prometheus'
//! blocks, Loki's chunks, grafana.db and its secret_key: permission denied). systemd's
//! `StateDirectory=` does not help: it repairs ownership recursively only when the top
//! directory is owned wrongly, and the mount step sets that on every boot.
//!
//! So the volume records, in [`RECORD`] at its top, the ids its files were last given for
//! each directory of the role's `[data]` (the mount point and `[data.dirs]`). When the ids
//! this image resolves differ from the record (or there is none: a volume from before the
//! record existed), every file is given the owner of the deepest such directory it lies
//! in, once, and the new record is written. A later boot with the same ids walks nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::unistd::{Group, User};

use crate::data::DataSpec;

/// The record's file name, at the top of the volume. Root's, 0644: the services ignore it.
pub const RECORD: &str = ".stack-agent-owners";
/// ext4's directory for fsck's finds: root's, and left so.
const LOST_AND_FOUND: &str = "lost+found";

/// The owner one directory of the volume (and everything below it) must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Relative to the mount point; empty for the mount point itself.
    pub dir: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// `prometheus:prometheus`, for the log and the record.
    pub names: String,
}

/// What a repair did.
#[derive(Debug, Clone)]
pub struct Reowned {
    /// Why it ran: no record, or which ids changed.
    pub reason: String,
    /// Files and directories looked at, and how many got a new owner.
    pub files: u64,
    pub changed: u64,
    pub elapsed: Duration,
}

/// The owners `data` asks for, with the ids this machine gives their names.
pub fn expected(data: &DataSpec) -> Result<Vec<Owner>, String> {
    let mut owners = vec![resolve(Path::new(""), &data.owner, &data.group)?];
    for dir in &data.dirs {
        let relative = Path::new(&dir.path)
            .strip_prefix(&data.mount_point)
            .map_err(|_| format!("{} is not under {}", dir.path, data.mount_point))?;
        let owner = dir.owner.as_deref().unwrap_or(&data.owner);
        let group = dir.group.as_deref().unwrap_or(&data.group);
        owners.push(resolve(relative, owner, group)?);
    }
    Ok(owners)
}

/// A user's and a group's ids by name.
pub fn ids(owner: &str, group: &str) -> Result<(u32, u32), String> {
    let uid = User::from_name(owner)
        .ok()
        .flatten()
        .ok_or_else(|| format!("no user `{owner}`"))?
        .uid;
    let gid = Group::from_name(group)
        .ok()
        .flatten()
        .ok_or_else(|| format!("no group `{group}`"))?
        .gid;
    Ok((uid.as_raw(), gid.as_raw()))
}

fn resolve(dir: &Path, owner: &str, group: &str) -> Result<Owner, String> {
    let (uid, gid) =
        ids(owner, group).map_err(|e| format!("{e} for the data directory {}", shown(dir)))?;
    Ok(Owner {
        dir: dir.to_path_buf(),
        uid,
        gid,
        names: format!("{owner}:{group}"),
    })
}

fn shown(dir: &Path) -> String {
    if dir.as_os_str().is_empty() {
        ".".to_string()
    } else {
        dir.display().to_string()
    }
}

/// The record's text: a comment, then `<dir> <uid>:<gid> <user>:<group>` per directory.
pub fn record_text(owners: &[Owner]) -> String {
    let mut text = String::from(
        "# Written by `stack-agent mount`: the owner each data directory's files were last \
         given.\n# When this image's ids differ, the next mount gives every file its owner \
         again.\n",
    );
    for owner in owners {
        let _ = writeln!(
            text,
            "{} {}:{} {}",
            shown(&owner.dir),
            owner.uid,
            owner.gid,
            owner.names
        );
    }
    text
}

/// The recorded ids by directory; `None` when there is no readable record.
fn read_record(mount_point: &Path) -> Option<BTreeMap<String, (u32, u32)>> {
    let text = std::fs::read_to_string(mount_point.join(RECORD)).ok()?;
    let mut recorded = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let mut words = line.split_whitespace();
        let (dir, ids) = (words.next()?, words.next()?);
        let (uid, gid) = ids.split_once(':')?;
        recorded.insert(dir.to_string(), (uid.parse().ok()?, gid.parse().ok()?));
    }
    Some(recorded)
}

/// Why the files need new owners (the record is missing or names other ids), or `None`
/// when the record matches `owners`.
pub fn stale(mount_point: &Path, owners: &[Owner]) -> Option<String> {
    let Some(recorded) = read_record(mount_point) else {
        return Some(format!(
            "no ownership record ({RECORD}): a volume from before fixed ids, or a new one"
        ));
    };
    let wanted: BTreeMap<String, (u32, u32)> = owners
        .iter()
        .map(|o| (shown(&o.dir), (o.uid, o.gid)))
        .collect();
    if recorded == wanted {
        return None;
    }
    let describe = |ids: &BTreeMap<String, (u32, u32)>| {
        ids.iter()
            .map(|(dir, (uid, gid))| format!("{dir} {uid}:{gid}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Some(format!(
        "its files were given {} and this image's ids are {}",
        describe(&recorded),
        describe(&wanted)
    ))
}

/// Gives every file under `mount_point` (this filesystem only; `lost+found` and the record
/// aside) the owner of the deepest directory of `owners` it lies in, then writes the record.
/// Symbolic links are changed themselves, never followed.
pub fn repair(mount_point: &Path, owners: &[Owner], reason: String) -> Result<Reowned, String> {
    let started = Instant::now();
    let mut files = 0u64;
    let mut changed = 0u64;
    let skipped = [mount_point.join(LOST_AND_FOUND), mount_point.join(RECORD)];
    let walk = walkdir::WalkDir::new(mount_point)
        .same_file_system(true)
        .follow_links(false)
        .into_iter()
        .filter_entry(|entry| !skipped.iter().any(|s| s == entry.path()));
    for entry in walk {
        let entry = entry.map_err(|e| format!("cannot walk {}: {e}", mount_point.display()))?;
        let path = entry.path();
        let relative = path.strip_prefix(mount_point).unwrap_or(path);
        // The deepest directory holding it; the mount point (first) holds everything.
        let Some(owner) = owners
            .iter()
            .filter(|o| relative.starts_with(&o.dir))
            .max_by_key(|o| o.dir.components().count())
        else {
            continue;
        };
        let meta = entry
            .metadata()
            .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
        files += 1;
        if (meta.uid(), meta.gid()) != (owner.uid, owner.gid) {
            std::os::unix::fs::lchown(path, Some(owner.uid), Some(owner.gid))
                .map_err(|e| format!("cannot chown {}: {e}", path.display()))?;
            changed += 1;
        }
    }
    write_record(mount_point, owners)?;
    Ok(Reowned {
        reason,
        files,
        changed,
        elapsed: started.elapsed(),
    })
}

/// Writes the record atomically (a whole file or the old one, never half of one).
pub fn write_record(mount_point: &Path, owners: &[Owner]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let fail =
        |e: std::io::Error| format!("cannot write {}: {e}", mount_point.join(RECORD).display());
    let mut file = tempfile::NamedTempFile::new_in(mount_point).map_err(fail)?;
    file.write_all(record_text(owners).as_bytes())
        .map_err(fail)?;
    file.as_file().sync_all().map_err(fail)?;
    std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o644)).map_err(fail)?;
    file.persist(mount_point.join(RECORD))
        .map_err(|e| fail(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(dir: &str, uid: u32) -> Owner {
        Owner {
            dir: PathBuf::from(dir),
            uid,
            gid: uid,
            names: format!("u{uid}:g{uid}"),
        }
    }

    #[test]
    fn a_record_matching_the_ids_needs_nothing_and_any_change_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let owners = [owner("", 453), owner("alertmanager", 454)];
        let missing = stale(dir.path(), &owners).unwrap();
        assert!(missing.contains("no ownership record"), "{missing}");

        std::fs::write(dir.path().join(RECORD), record_text(&owners)).unwrap();
        assert_eq!(stale(dir.path(), &owners), None);

        let rebaked = [owner("", 998), owner("alertmanager", 454)];
        let changed = stale(dir.path(), &rebaked).unwrap();
        assert!(changed.contains(". 453:453"), "{changed}");
        assert!(changed.contains(". 998:998"), "{changed}");

        // An unreadable record is no record: the files are checked.
        std::fs::write(dir.path().join(RECORD), ". x:y\n").unwrap();
        assert!(stale(dir.path(), &owners).is_some());
    }
}
