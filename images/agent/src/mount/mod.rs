//! The `mount` step: makes a role's EBS data volume its data directory before any of its
//! services start (the role's `[data]` section, [`DataSpec`]).
//!
//! In order: wait for the volume's block device (found by the volume id in its NVMe serial,
//! [`device`]): a short, densely polled wait for the usual attachment, then a long one with
//! backoff for a late one; probe what it holds ([`probe`]); format it only when it holds no
//! signature at all; refuse one that holds anything else, or is smaller than the role
//! needs; check an ext4 that was not cleanly unmounted and grow one smaller than its device
//! ([`ext4`]); mount it; grow an XFS one ([`xfs`]); give its directories their owner and
//! mode, and every file its owner when the image's ids changed ([`owners`]). On any failure
//! nothing is left mounted, so the services (which `Require` this step) never start on the
//! root disk.

pub mod device;
mod ext4;
pub mod owners;
mod probe;
mod tools;
mod xfs;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::data::{DataSpec, Filesystem};
use crate::error::AgentError;
use crate::log;
use crate::spec::rooted;

pub use device::{Lookup, VolumeId};
pub use owners::Reowned;
pub use probe::Contents;

/// Mount options of every data volume: it holds data, never programs or device nodes, and
/// access times would only cost writes.
pub const MOUNT_OPTIONS: &str = "nodev,nosuid,noexec,noatime";

const GIB: u64 = 1 << 30;

/// A filesystem is grown when its device is larger by at least this much. EBS volumes grow
/// in whole GiB; below this, resize2fs may have nothing it can add (a partial last group)
/// and the check would run again on every boot.
const GROW_THRESHOLD: u64 = 64 << 20;

/// How the device is looked for and how long it is waited for.
#[derive(Debug, Clone)]
pub struct MountOptions {
    pub lookup: Lookup,
    /// The usual wait for the attachment, polled every `poll`.
    pub device_timeout: Duration,
    /// Time between two looks for the device during `device_timeout`.
    pub poll: Duration,
    /// After `device_timeout`, how much longer to keep looking, with backoff (up to
    /// `late_max_delay` between looks); then the step gives up (exit code 7).
    pub late_timeout: Duration,
    pub late_max_delay: Duration,
    /// Print what would be done; format, mount and change nothing.
    pub dry_run: bool,
}

/// What the step did (or, in dry-run, would do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The device was blank: formatted, then mounted.
    Formatted,
    /// The device held the role's filesystem: mounted as it is.
    Mounted,
    /// The device was already mounted there (the step ran before during this boot).
    AlreadyMounted,
    WouldFormat,
    WouldMount,
}

/// An unclean filesystem, checked and repaired before it was mounted.
#[derive(Debug, Clone)]
pub struct Repaired {
    /// Why: `its journal needs recovery`, `its state is ...`.
    pub reason: String,
    /// e2fsck's summary line.
    pub summary: String,
    pub elapsed: Duration,
}

/// A filesystem grown to its device.
#[derive(Debug, Clone, Copy)]
pub struct Grown {
    pub from: u64,
    pub to: u64,
    /// The check that must precede an offline grow (ext4), and the grow itself.
    pub elapsed: Duration,
}

/// The outcome of a successful step.
#[derive(Debug, Clone)]
pub struct Mounted {
    pub device: PathBuf,
    pub mount_point: PathBuf,
    pub action: Action,
    /// Set when the filesystem had to be checked before mounting.
    pub repaired: Option<Repaired>,
    /// Set when the filesystem was smaller than its device and grew.
    pub grown: Option<Grown>,
    /// Set when the files' owners were repaired (the ids changed, or no record).
    pub reowned: Option<Reowned>,
    /// From the step's start to a mounted volume with its directories in place.
    pub elapsed: Duration,
}

/// Mounts `volume` at `data.mount_point` (under `root`, `""` on EC2) and lays out its
/// directories. Needs root: it formats, checks, mounts and chowns, even under a `root` prefix.
pub fn prepare(
    data: &DataSpec,
    volume: &VolumeId,
    root: &str,
    options: &MountOptions,
) -> Result<Mounted, AgentError> {
    let started = Instant::now();
    let mount_point = rooted(root, &data.mount_point);
    let fail = |message: String| AgentError::Mount {
        volume: volume.to_string(),
        message,
    };

    let device = find_device(volume, options)?;
    let shown = device.display().to_string();
    let size = device::block_size(&device).map_err(|e| fail(format!("{shown} {e}")))?;
    log::event(format_args!(
        "data volume {volume} is {shown} ({}) after {:.2}s",
        gib(size),
        started.elapsed().as_secs_f64()
    ));
    let mut outcome = Mounted {
        device: device.clone(),
        mount_point: mount_point.clone(),
        action: Action::AlreadyMounted,
        repaired: None,
        grown: None,
        reowned: None,
        elapsed: Duration::ZERO,
    };

    if is_mounted_at(&device, &mount_point).map_err(&fail)? {
        if options.dry_run {
            println!(
                "--- {shown} is already mounted at {}",
                mount_point.display()
            );
            outcome.elapsed = started.elapsed();
            return Ok(outcome);
        }
    } else {
        let filesystem = data.filesystem;
        let blank = match probe::probe(&device).map_err(|e| fail(format!("{shown}: {e}")))? {
            Contents::Blank => true,
            Contents::Filesystem(kind) if kind == filesystem.name() => false,
            Contents::Filesystem(kind) => {
                return Err(foreign(
                    volume,
                    &shown,
                    format!(
                        "a {kind} filesystem, not the {} this role uses",
                        filesystem.name()
                    ),
                ))
            }
            Contents::Other(found) => return Err(foreign(volume, &shown, found)),
        };
        if size < data.min_size_gib * GIB {
            return Err(AgentError::VolumeTooSmall {
                volume: volume.to_string(),
                device: shown,
                size: gib(size),
                min_gib: data.min_size_gib,
            });
        }
        if options.dry_run {
            outcome.action = if blank {
                Action::WouldFormat
            } else {
                Action::WouldMount
            };
            print_plan(data, &device, size, blank, &mount_point);
            outcome.elapsed = started.elapsed();
            return Ok(outcome);
        }
        if blank {
            log::event(format_args!(
                "{shown} holds no filesystem or partition table: formatting it as {}",
                filesystem.name()
            ));
            format(&device, filesystem).map_err(&fail)?;
            outcome.action = Action::Formatted;
        } else {
            outcome.action = Action::Mounted;
            if filesystem == Filesystem::Ext4 {
                let (repaired, grown) = check_and_grow_ext4(volume, &device, size)?;
                outcome.repaired = repaired;
                outcome.grown = grown;
            }
        }
        std::fs::create_dir_all(&mount_point)
            .map_err(|e| fail(format!("cannot create {}: {e}", mount_point.display())))?;
        tools::check(
            "mount",
            [
                "-t".as_ref(),
                filesystem.name().as_ref(),
                "-o".as_ref(),
                MOUNT_OPTIONS.as_ref(),
                device.as_os_str(),
                mount_point.as_os_str(),
            ],
        )
        .map_err(&fail)?;
        if filesystem == Filesystem::Xfs && !blank {
            outcome.grown = grow_xfs(volume, &shown, &mount_point, size);
        }
    }

    let formatted = outcome.action == Action::Formatted;
    match lay_out(data, root, &mount_point, formatted) {
        Ok(reowned) => outcome.reowned = reowned,
        Err(message) => {
            // Never leave the volume mounted half prepared; the next boot starts over.
            let undone = match tools::check("umount", [mount_point.as_os_str()]) {
                Ok(_) => "unmounted it again".to_string(),
                Err(e) => format!("and could not unmount it: {e}"),
            };
            return Err(fail(format!("{message}; {undone}")));
        }
    }
    outcome.elapsed = started.elapsed();
    log::event(format_args!(
        "data volume {volume} ({shown}) {} at {} in {:.2}s",
        match outcome.action {
            Action::Formatted => "formatted and mounted",
            Action::AlreadyMounted => "was already mounted",
            _ => "mounted",
        },
        mount_point.display(),
        outcome.elapsed.as_secs_f64()
    ));
    Ok(outcome)
}

/// The volume's device: at once if attached, else after the usual wait, else after the
/// late one (or [`AgentError::VolumeMissing`]).
fn find_device(volume: &VolumeId, options: &MountOptions) -> Result<PathBuf, AgentError> {
    if let Some(device) = options.lookup.find(volume) {
        return Ok(device);
    }
    log::event(format_args!(
        "waiting up to {:.0}s for data volume {volume} to be attached",
        options.device_timeout.as_secs_f64()
    ));
    if let Some(device) = options
        .lookup
        .wait(volume, options.device_timeout, options.poll)
    {
        return Ok(device);
    }
    let waited = options.device_timeout + options.late_timeout;
    if !options.late_timeout.is_zero() {
        log::event(format_args!(
            "data volume {volume} is not attached after {:.0}s (an interrupted or targeted \
             terraform apply attaches it later); looking again, up to {:.0}s apart, for {:.0}s \
             more",
            options.device_timeout.as_secs_f64(),
            options.late_max_delay.as_secs_f64(),
            options.late_timeout.as_secs_f64()
        ));
        let first_look = Instant::now();
        let found = options.lookup.wait_late(
            volume,
            options.late_timeout,
            options.poll.max(Duration::from_secs(1)),
            options.late_max_delay,
            |delay| {
                log::event(format_args!(
                    "data volume {volume} still not attached; next look in {:.1}s",
                    delay.as_secs_f64()
                ))
            },
        );
        if let Some(device) = found {
            log::event(format_args!(
                "data volume {volume} attached late: found {} after {:.1}s more",
                device.display(),
                first_look.elapsed().as_secs_f64()
            ));
            return Ok(device);
        }
    }
    Err(AgentError::VolumeMissing {
        volume: volume.to_string(),
        waited,
        link: options
            .lookup
            .devices_dir
            .join(volume.by_id_name())
            .display()
            .to_string(),
        serial: volume.serial(),
    })
}

/// Before mounting an ext4 volume: `e2fsck -p` when it was not cleanly unmounted, and
/// growth to the device (a full check, then resize2fs) when the device is larger.
fn check_and_grow_ext4(
    volume: &VolumeId,
    device: &Path,
    device_size: u64,
) -> Result<(Option<Repaired>, Option<Grown>), AgentError> {
    let shown = device.display().to_string();
    let fail = |message: String| AgentError::Mount {
        volume: volume.to_string(),
        message,
    };
    let check_failed = |error: ext4::CheckError| match error {
        ext4::CheckError::NeedsPerson(detail) => AgentError::NeedsRepair {
            volume: volume.to_string(),
            device: shown.clone(),
            detail,
        },
        ext4::CheckError::Failed(message) => fail(message),
    };
    let superblock = ext4::superblock(device).map_err(|e| fail(format!("{shown}: {e}")))?;
    let mut repaired = None;
    if let Some(reason) = superblock.unclean() {
        log::event(format_args!(
            "data volume {volume} ({shown}, {} ext4 on a {} device) was not cleanly unmounted: \
             {reason}; checking it with e2fsck -p before mounting",
            gib(superblock.size()),
            gib(device_size)
        ));
        let checked = ext4::check(device, false).map_err(check_failed)?;
        log::event(format_args!(
            "e2fsck -p {shown} finished in {:.2}s{}: {}",
            checked.elapsed.as_secs_f64(),
            if checked.changed {
                ", errors corrected"
            } else {
                ""
            },
            checked.summary
        ));
        repaired = Some(Repaired {
            reason,
            summary: checked.summary,
            elapsed: checked.elapsed,
        });
    }
    let from = superblock.size();
    if device_size < from.saturating_add(GROW_THRESHOLD) {
        return Ok((repaired, None));
    }
    log::event(format_args!(
        "data volume {volume} ({shown}): its ext4 filesystem ({}) is smaller than its device \
         ({}); growing it before mounting (e2fsck -f -p, then resize2fs)",
        gib(from),
        gib(device_size)
    ));
    let started = Instant::now();
    ext4::check(device, true).map_err(check_failed)?;
    ext4::grow(device).map_err(|e| {
        fail(format!(
            "{e}; the filesystem may need a check by hand (e2fsck -f {shown}) before the next boot"
        ))
    })?;
    let to = ext4::superblock(device)
        .map_err(|e| fail(format!("{shown}: {e}")))?
        .size();
    let grown = Grown {
        from,
        to,
        elapsed: started.elapsed(),
    };
    log::event(format_args!(
        "grew the ext4 filesystem on {shown} from {} to {} (device {}) in {:.2}s",
        gib(from),
        gib(to),
        gib(device_size),
        grown.elapsed.as_secs_f64()
    ));
    Ok((repaired, Some(grown)))
}

/// After mounting an XFS volume: `xfs_growfs` when its device is larger. A failure is a
/// warning: the filesystem is intact at its old size, and the services can run on it.
fn grow_xfs(volume: &VolumeId, shown: &str, mount_point: &Path, device_size: u64) -> Option<Grown> {
    let warn = |e: String| {
        log::event(format_args!(
            "warning: data volume {volume} ({shown}): cannot grow its XFS filesystem: {e}"
        ))
    };
    let from = xfs::data_size(mount_point).map_err(warn).ok()?;
    if device_size < from.saturating_add(GROW_THRESHOLD) {
        return None;
    }
    log::event(format_args!(
        "data volume {volume} ({shown}): its XFS filesystem ({}) is smaller than its device \
         ({}); growing it online (xfs_growfs)",
        gib(from),
        gib(device_size)
    ));
    let started = Instant::now();
    xfs::grow(mount_point).map_err(warn).ok()?;
    let to = xfs::data_size(mount_point).map_err(warn).ok()?;
    let grown = Grown {
        from,
        to,
        elapsed: started.elapsed(),
    };
    log::event(format_args!(
        "grew the XFS filesystem on {shown} from {} to {} (device {}) in {:.2}s",
        gib(from),
        gib(to),
        gib(device_size),
        grown.elapsed.as_secs_f64()
    ));
    Some(grown)
}

/// Dry-run: what a real run would do with this device.
fn print_plan(data: &DataSpec, device: &Path, size: u64, blank: bool, mount_point: &Path) {
    let shown = device.display();
    let name = data.filesystem.name();
    let verb = if blank {
        format!("format {shown} as {name}")
    } else {
        format!("mount {shown} ({name})")
    };
    println!(
        "--- would {verb} at {} ({MOUNT_OPTIONS}), owned {}:{}",
        mount_point.display(),
        data.owner,
        data.group
    );
    if blank || data.filesystem != Filesystem::Ext4 {
        return;
    }
    // Read-only: what the superblock says the real run would do first.
    if let Ok(superblock) = ext4::superblock(device) {
        if let Some(reason) = superblock.unclean() {
            println!("--- would check it first with e2fsck -p: {reason}");
        }
        if size >= superblock.size().saturating_add(GROW_THRESHOLD) {
            println!(
                "--- would grow its filesystem from {} to the device's {}",
                gib(superblock.size()),
                gib(size)
            );
        }
    }
}

fn foreign(volume: &VolumeId, device: &str, found: String) -> AgentError {
    AgentError::VolumeForeign {
        volume: volume.to_string(),
        device: device.to_string(),
        found,
    }
}

/// `12.0 GiB`.
fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / GIB as f64)
}

/// Formats a blank device. No discard: a new EBS volume is already empty, and discarding
/// a large one would only delay the first boot.
fn format(device: &Path, filesystem: Filesystem) -> Result<(), String> {
    let (program, flags): (&str, &[&str]) = match filesystem {
        Filesystem::Ext4 => ("mkfs.ext4", &["-q", "-E", "nodiscard"]),
        Filesystem::Xfs => ("mkfs.xfs", &["-q", "-K"]),
    };
    let args = flags
        .iter()
        .map(|f| f.as_ref())
        .chain(std::iter::once(device.as_os_str()));
    tools::check(program, args).map(|_| ())
}

/// Whether `device` is what is mounted at `mount_point`; an error when something else is.
fn is_mounted_at(device: &Path, mount_point: &Path) -> Result<bool, String> {
    let ran = tools::run(
        "findmnt",
        [
            "--noheadings".as_ref(),
            "--output".as_ref(),
            "MAJ:MIN".as_ref(),
            "--mountpoint".as_ref(),
            mount_point.as_os_str(),
        ],
        false,
    )?;
    // findmnt exits 1 when nothing is mounted there.
    if ran.code == Some(1) && ran.stdout.trim().is_empty() {
        return Ok(false);
    }
    if !ran.success() {
        return Err(format!(
            "cannot tell what is mounted at {}: findmnt {}",
            mount_point.display(),
            ran.reason()
        ));
    }
    let rdev = std::fs::metadata(device)
        .map_err(|e| format!("cannot stat {}: {e}", device.display()))?
        .rdev();
    let ours = format!(
        "{}:{}",
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev)
    );
    // The last line is the top mount, the one a service would see.
    match ran.stdout.lines().last().map(str::trim) {
        Some(found) if found == ours => Ok(true),
        found => Err(format!(
            "{} is already a mount point of device {}, not of {}; unmount it first",
            mount_point.display(),
            found.unwrap_or("?"),
            device.display()
        )),
    }
}

/// The volume's top directory and `[data].dirs` with their owner and mode, then every
/// file's owner when the ids recorded on the volume are not this image's
/// ([`owners::repair`], once per change, logged). A volume just `formatted` holds no file
/// to repair: it only gets its record.
fn lay_out(
    data: &DataSpec,
    root: &str,
    mount_point: &Path,
    formatted: bool,
) -> Result<Option<Reowned>, String> {
    let expected = owners::expected(data)?;
    set_owner(mount_point, &expected[0], data.mode.0)?;
    for (dir, owner) in data.dirs.iter().zip(&expected[1..]) {
        let path = rooted(root, &dir.path);
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        set_owner(&path, owner, dir.mode.0)?;
    }
    if formatted {
        owners::write_record(mount_point, &expected)?;
        return Ok(None);
    }
    let Some(reason) = owners::stale(mount_point, &expected) else {
        return Ok(None);
    };
    log::event(format_args!(
        "{}: {reason}; giving every file the owner of its data directory",
        mount_point.display()
    ));
    let reowned = owners::repair(mount_point, &expected, reason)?;
    log::event(format_args!(
        "{}: {} of {} files and directories got a new owner in {:.2}s; ownership recorded in {}",
        mount_point.display(),
        reowned.changed,
        reowned.files,
        reowned.elapsed.as_secs_f64(),
        owners::RECORD
    ));
    Ok(Some(reowned))
}

fn set_owner(path: &Path, owner: &owners::Owner, mode: u32) -> Result<(), String> {
    std::os::unix::fs::chown(path, Some(owner.uid), Some(owner.gid))
        .map_err(|e| format!("cannot chown {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot chmod {}: {e}", path.display()))
}
