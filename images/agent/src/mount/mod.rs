//! The `mount` step: makes a role's EBS data volume its data directory before any of its
//! services start (the role's `[data]` section, [`DataSpec`]).
//!
//! In order: wait, bounded, for the volume's block device (found by the volume id in its NVMe
//! serial, [`device`]); probe what it holds ([`probe`]); format it only when it holds no
//! signature at all; refuse one that holds anything else, or is smaller than the role
//! needs; mount it; give its directories their owner and mode. On any failure nothing is
//! left mounted, so the services (which `Require` this step) never start on the root disk.

pub mod device;
mod probe;
mod tools;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::unistd::{Group, User};

use crate::data::{DataSpec, Filesystem};
use crate::error::AgentError;
use crate::log;
use crate::spec::rooted;

pub use device::{Lookup, VolumeId};
pub use probe::Contents;

/// Mount options of every data volume: it holds data, never programs or device nodes, and
/// access times would only cost writes.
pub const MOUNT_OPTIONS: &str = "nodev,nosuid,noexec,noatime";

const GIB: u64 = 1 << 30;

/// How the device is looked for and how long it is waited for.
#[derive(Debug, Clone)]
pub struct MountOptions {
    pub lookup: Lookup,
    /// Give up when the device has not appeared after this long.
    pub device_timeout: Duration,
    /// Time between two looks for the device.
    pub poll: Duration,
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

/// The outcome of a successful step.
#[derive(Debug, Clone)]
pub struct Mounted {
    pub device: PathBuf,
    pub mount_point: PathBuf,
    pub action: Action,
    /// From the step's start to a mounted volume with its directories in place.
    pub elapsed: Duration,
}

/// Mounts `volume` at `data.mount_point` (under `root`, `""` on EC2) and lays out its
/// directories. Needs root: it formats, mounts and chowns, even under a `root` prefix.
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

    let device = match options.lookup.find(volume) {
        Some(device) => device,
        None => {
            log::event(format_args!(
                "waiting up to {:.0}s for data volume {volume} to be attached",
                options.device_timeout.as_secs_f64()
            ));
            options
                .lookup
                .wait(volume, options.device_timeout, options.poll)
                .ok_or_else(|| AgentError::VolumeMissing {
                    volume: volume.to_string(),
                    waited: options.device_timeout,
                    link: options
                        .lookup
                        .devices_dir
                        .join(volume.by_id_name())
                        .display()
                        .to_string(),
                    serial: volume.serial(),
                })?
        }
    };
    let shown = device.display().to_string();
    let size = device::block_size(&device).map_err(|e| fail(format!("{shown} {e}")))?;
    log::event(format_args!(
        "data volume {volume} is {shown} ({}) after {:.2}s",
        gib(size),
        started.elapsed().as_secs_f64()
    ));

    let action = if is_mounted_at(&device, &mount_point).map_err(&fail)? {
        if options.dry_run {
            println!(
                "--- {shown} is already mounted at {}",
                mount_point.display()
            );
            return Ok(Mounted {
                device,
                mount_point,
                action: Action::AlreadyMounted,
                elapsed: started.elapsed(),
            });
        }
        Action::AlreadyMounted
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
            let (action, verb) = if blank {
                (
                    Action::WouldFormat,
                    format!("format {shown} as {}", filesystem.name()),
                )
            } else {
                (
                    Action::WouldMount,
                    format!("mount {shown} ({})", filesystem.name()),
                )
            };
            println!(
                "--- would {verb} at {} ({MOUNT_OPTIONS}), owned {}:{}",
                mount_point.display(),
                data.owner,
                data.group
            );
            return Ok(Mounted {
                device,
                mount_point,
                action,
                elapsed: started.elapsed(),
            });
        }
        if blank {
            log::event(format_args!(
                "{shown} holds no filesystem or partition table: formatting it as {}",
                filesystem.name()
            ));
            format(&device, filesystem).map_err(&fail)?;
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
        if blank {
            Action::Formatted
        } else {
            Action::Mounted
        }
    };

    if let Err(message) = lay_out(data, root, &mount_point) {
        // Never leave the volume mounted half prepared; the next boot starts over.
        let undone = match tools::check("umount", [mount_point.as_os_str()]) {
            Ok(_) => "unmounted it again".to_string(),
            Err(e) => format!("and could not unmount it: {e}"),
        };
        return Err(fail(format!("{message}; {undone}")));
    }
    let elapsed = started.elapsed();
    log::event(format_args!(
        "data volume {volume} ({shown}) {} at {} in {:.2}s",
        match action {
            Action::Formatted => "formatted and mounted",
            Action::AlreadyMounted => "was already mounted",
            _ => "mounted",
        },
        mount_point.display(),
        elapsed.as_secs_f64()
    ));
    Ok(Mounted {
        device,
        mount_point,
        action,
        elapsed,
    })
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

/// The volume's top directory and `[data].dirs`, with their owner and mode.
fn lay_out(data: &DataSpec, root: &str, mount_point: &Path) -> Result<(), String> {
    set_owner(mount_point, &data.owner, &data.group, data.mode.0)?;
    for dir in &data.dirs {
        let path = rooted(root, &dir.path);
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let owner = dir.owner.as_deref().unwrap_or(&data.owner);
        let group = dir.group.as_deref().unwrap_or(&data.group);
        set_owner(&path, owner, group, dir.mode.0)?;
    }
    Ok(())
}

fn set_owner(path: &Path, owner: &str, group: &str, mode: u32) -> Result<(), String> {
    let uid = User::from_name(owner)
        .ok()
        .flatten()
        .ok_or_else(|| format!("no user `{owner}` for {}", path.display()))?
        .uid;
    let gid = Group::from_name(group)
        .ok()
        .flatten()
        .ok_or_else(|| format!("no group `{group}` for {}", path.display()))?
        .gid;
    std::os::unix::fs::chown(path, Some(uid.as_raw()), Some(gid.as_raw()))
        .map_err(|e| format!("cannot chown {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot chmod {}: {e}", path.display()))
}
