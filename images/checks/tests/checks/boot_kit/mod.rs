//! Booting the rehearsal's provisioned roots as virtual machines (images/README.md, "Booting
//! the images"), the pieces the boot tests are made of:
//!
//! - [`image`]: a role's root, provisioned by the rehearsal (same base, same scripts, same
//!   stand-in downloads), with the test's additions ([`xtask::vm::guest`]), as a root image,
//!   kernel and initramfs; variants with edits (a broken unit) made from the same root;
//! - [`deployment`]: what surrounds one instance: its tags as Terraform writes them, its
//!   IMDS and SSM stand-ins, its data volume, and stand-ins for its peers on the host;
//! - [`boot`]: one boot of one image: the VM, the wait for systemd to settle, the unit and
//!   health checks, and a failure message that quotes the failing units' journals and exit
//!   codes;
//! - [`checks`]: what a booted instance must show: configs rendered from its tags, its data
//!   on its volume with the right owners, and each service doing its job.
//!
//! Everything here runs as root (debootstrap, overlays, mkfs) with qemu and socat.

pub mod boot;
pub mod checks;
pub mod deployment;
pub mod image;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::fcntl::{Flock, FlockArg};

use crate::rehearsal_kit;

pub use image_checks::{images_dir, registry};

/// At most this many of the boot tests' VMs run on the machine at once, whatever the number
/// of test processes (`OBSTACK_VM_SLOTS` changes it): under TCG each takes a core, and the
/// machine has two; a third keeps them busy while another VM waits on the host (its disk
/// copy, a health poll, its power-off). About half a GiB each.
fn vm_slots() -> usize {
    std::env::var("OBSTACK_VM_SLOTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(3)
}

/// A VM slot: an exclusive lock on one of [`vm_slots`] files shared by every test process of
/// the machine, held while a VM runs (the kernel releases it if the process dies).
pub struct Slot {
    _lock: Flock<File>,
}

impl Slot {
    pub fn take() -> Slot {
        let dir = std::env::temp_dir().join("obstack-vm-slots");
        std::fs::create_dir_all(&dir).unwrap();
        loop {
            for index in 0..vm_slots() {
                let path = dir.join(format!("slot-{index}.lock"));
                let file = File::create(&path)
                    .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
                if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                    return Slot { _lock: lock };
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }
}

/// How long the console logs of a test process that ended are kept.
const KEEP_LOGS: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// This process's directory for VM disks and console logs, under the target directory.
/// Disks are deleted after each boot; console logs stay for a look after a failure: when a
/// later test process starts, the disks and images of those that ended are deleted, and
/// their logs after a day.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let parent = rehearsal_kit::root::scratch().join("boot");
        std::fs::create_dir_all(&parent).unwrap();
        for entry in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
            let ended = entry
                .file_name()
                .to_str()
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
            if !ended {
                continue;
            }
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| modified.elapsed().ok())
                .is_some_and(|age| age > KEEP_LOGS);
            if old {
                let _ = std::fs::remove_dir_all(entry.path());
                continue;
            }
            for file in walkdir::WalkDir::new(entry.path()).into_iter().flatten() {
                let keep = file
                    .path()
                    .extension()
                    .is_some_and(|e| e == "log" || e == "cmdline");
                if file.file_type().is_file() && !keep {
                    let _ = std::fs::remove_file(file.path());
                }
            }
        }
        let dir = parent.join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// The units an image enables: every unit file of images/common/rootfs and the role's
/// rootfs (drop-in directories aside), as the provisioners enable each of them.
pub fn image_units(role: &str) -> Vec<String> {
    let mut units = Vec::new();
    for tree in [
        images_dir().join("common/rootfs/etc/systemd/system"),
        images_dir().join(role).join("rootfs/etc/systemd/system"),
    ] {
        for entry in std::fs::read_dir(&tree).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_unit = [".service", ".socket", ".timer"]
                .iter()
                .any(|suffix| name.ends_with(suffix));
            if is_unit && entry.path().is_file() && !units.contains(&name) {
                units.push(name);
            }
        }
    }
    units.sort();
    units
}

/// The agent's units (they call AWS: the SSM stand-in's endpoint goes into them).
pub fn agent_units() -> Vec<String> {
    image_units(registry().names()[0])
        .into_iter()
        .filter(|unit| unit.starts_with("stack-agent-"))
        .collect()
}

/// One boot's figures, printed by every boot test and collected by `cargo xtask bench boot`
/// (it sets `OBSTACK_BOOT_TIMINGS` to a file that gets one JSON line per boot).
pub fn record_timing(record: &serde_json::Value) {
    eprintln!("boot timing: {record}");
    if let Some(path) = std::env::var_os("OBSTACK_BOOT_TIMINGS") {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("OBSTACK_BOOT_TIMINGS={}: {e}", path.display()));
        writeln!(file, "{record}").unwrap();
    }
}
