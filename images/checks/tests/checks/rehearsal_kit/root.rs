//! The rehearsal root: a Debian root made once per machine with `debootstrap --variant=minbase`
//! (plus what Ubuntu's noble cloud image has and minbase lacks; cached by
//! [`crate::debian_root`]), overlaid per rehearsal, and commands run in it with `chroot`.
//!
//! Every command runs in its own mount and PID namespaces (`unshare --mount --pid`), where
//! /proc and a read-only /sys are mounted into the root: the mounts (and any process left
//! running) die with the command, so a failing or killed test never leaves one on the host, and no cleanup can ever delete through a
//! mount into the host's /proc or /sys. /proc/sys is read-only in there as well: a script
//! that tried to apply sysctl settings would fail instead of changing the host's kernel.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Condvar, Mutex, OnceLock};

use crate::debian_root::{self, Recipe};

/// The Debian release of the rehearsal root: the host's (the test binaries, built here, run
/// inside it) and, like Ubuntu 24.04, systemd-based with the same tools the scripts use.
pub const SUITE: &str = "bookworm";
pub const MIRROR: &str = "http://deb.debian.org/debian";

/// The rehearsal's base: a minbase root plus what Ubuntu's noble cloud image has and minbase
/// lacks, that the bake uses: systemctl/systemd-analyze, sudo (Packer's execute_command),
/// sysctl, python3 (unzip_to), curl and CA certificates (the downloads), and cloud-init
/// (installed with apt after debootstrap, which cannot resolve its virtual dependencies:
/// the scripts wait for it and clean its state). Like the cloud image it also boots: a
/// kernel with its initramfs (Debian's cloud flavour, the closest to AWS's), systemd as init,
/// udev (the NVMe data volume's device) and dbus (logind's ACPI power-off), so the very
/// roots the rehearsal provisions boot as virtual machines (`boot_kit`).
pub const BASE: Recipe = Recipe {
    name: "rehearsal-base",
    suite: SUITE,
    mirror: MIRROR,
    include: &[
        "systemd",
        "systemd-sysv",
        "udev",
        "dbus",
        "sudo",
        "procps",
        "python3",
        "ca-certificates",
        "curl",
    ],
    apt_install: &["cloud-init", "linux-image-cloud-amd64"],
    apt_sources: &[],
    finish: no_finish,
    revision: 1,
};

fn no_finish(_: &Path) {}

/// No rehearsal command may hang a test run forever (a `cloud-init status --wait` that never
/// sees a finished boot, say); it is killed after this long and fails.
const COMMAND_TIMEOUT_SECS: u32 = 1800;

/// Where rehearsal roots live: the target directory's scratch space (never the developer's
/// /tmp).
pub fn scratch() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("rehearsal");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The base root, from the machine's root cache (built there on first use, see
/// [`crate::debian_root`]). It is only ever the read-only lower layer of overlays.
pub fn base() -> &'static Path {
    static BASE_ROOT: OnceLock<PathBuf> = OnceLock::new();
    BASE_ROOT.get_or_init(|| {
        testkit::require_tool("unshare");
        debian_root::cached(&BASE)
    })
}

pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// At most this many rehearsal roots at once: each holds its own writes (packages, debug
/// builds of the shipped binaries), and the machine has 2 cores.
const MAX_ROOTS: usize = 3;

static SLOTS: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// A private, writable view of the base root for one rehearsal: an overlay mount (the base
/// read-only below, this rehearsal's writes in its own directory), so a rehearsal costs only
/// what it changes. Dropped, it unmounts the overlay and deletes its directory; if anything
/// is still mounted below it, it leaves the directory alone rather than delete through a
/// mount.
pub struct Root {
    dir: Option<PathBuf>,
    merged: PathBuf,
}

impl Root {
    pub fn copy_of_base() -> Root {
        let base = base();
        {
            let (count, freed) = &SLOTS;
            let mut count = count.lock().unwrap_or_else(|e| e.into_inner());
            while *count >= MAX_ROOTS {
                count = freed.wait(count).unwrap_or_else(|e| e.into_inner());
            }
            *count += 1;
        }
        let dir = tempfile::Builder::new()
            .prefix("root-")
            .tempdir_in(scratch())
            .unwrap()
            .keep();
        let root = Root {
            merged: dir.join("merged"),
            dir: Some(dir.clone()),
        };
        for sub in ["upper", "work", "merged"] {
            std::fs::create_dir(dir.join(sub)).unwrap();
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            base.display(),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        let output = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &options])
            .arg(&root.merged)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "mount overlay {options}: {}",
            describe(&output)
        );
        root
    }

    pub fn path(&self) -> &Path {
        &self.merged
    }

    /// `path` (absolute inside the root) on the host.
    pub fn join(&self, path: &str) -> PathBuf {
        self.path().join(path.trim_start_matches('/'))
    }

    pub fn chroot(&self) -> Chroot<'_> {
        Chroot::new(self.path())
    }
}

/// Mount points at or below `dir` in this process's namespace, deepest first.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|point| point.starts_with(dir))
        .collect();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    mounts
}

impl Drop for Root {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        let (count, freed) = &SLOTS;
        *count.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        freed.notify_one();
        for point in mounts_below(&dir) {
            let _ = Command::new("umount").arg(&point).status();
        }
        for point in mounts_below(&dir) {
            let _ = Command::new("umount").arg("--lazy").arg(&point).status();
        }
        let left = mounts_below(&dir);
        if !left.is_empty() {
            eprintln!(
                "rehearsal: {} still has mounts ({left:?}); not deleting it",
                dir.display()
            );
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != ErrorKind::NotFound {
                eprintln!("rehearsal: cannot delete {}: {e}", dir.display());
            }
        }
    }
}

/// Runs commands inside a root.
pub struct Chroot<'a> {
    root: &'a Path,
}

/// What the mount namespace gets before `chroot`: the root's own /proc (with /proc/sys
/// read-only) and a read-only /sys. The root's /dev holds the device nodes debootstrap made.
const SETUP: &str = r#"set -e
root=$1
shift
mount -t proc proc "$root/proc"
mount --bind "$root/proc/sys" "$root/proc/sys"
mount -o remount,bind,ro "$root/proc/sys"
mount -t sysfs -o ro sysfs "$root/sys"
exec chroot "$@"
"#;

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl<'a> Chroot<'a> {
    pub fn new(root: &'a Path) -> Chroot<'a> {
        Chroot { root }
    }

    /// `command` by bash as root, with a clean environment plus `env`.
    pub fn run_root(&self, command: &str, env: &[(&str, &str)]) -> Output {
        self.run(None, command, env)
    }

    /// `command` by `user`'s login shell (bash), as Packer's SSH communicator runs it.
    pub fn run_as(&self, user: &str, command: &str) -> Output {
        self.run(Some(user), command, &[])
    }

    fn run(&self, user: Option<&str>, command: &str, env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("unshare");
        // A PID namespace too, whose PID 1 (`timeout`) stays outside the chroot: systemd's
        // tools find the chroot by comparing / with /proc/1/root, which they may not read
        // for the host's PID 1 (then systemctl acts as if booted and fails on the bus, and
        // `systemd-detect-virt --chroot` says no). Anything left running dies with PID 1.
        cmd.args([
            "--mount",
            "--pid",
            "--fork",
            "--propagation",
            "private",
            "--",
        ])
        .arg("timeout")
        .arg("--kill-after=30")
        .arg(COMMAND_TIMEOUT_SECS.to_string())
        .args(["sh", "-c", SETUP, "rehearsal-setup"])
        .arg(self.root);
        let home = match user {
            Some(user) => {
                cmd.arg(format!("--userspec={user}:{user}"));
                format!("/home/{user}")
            }
            None => "/root".to_string(),
        };
        cmd.arg(self.root).arg("env").arg("-i");
        cmd.arg(format!("PATH={PATH}"))
            .arg(format!("HOME={home}"))
            .arg(format!("USER={}", user.unwrap_or("root")))
            .arg("LANG=C.UTF-8")
            .arg("TERM=dumb");
        for (name, value) in env {
            cmd.arg(format!("{name}={value}"));
        }
        cmd.args(["/bin/bash", "-c", command]);
        cmd.env_clear().env("PATH", PATH);
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run unshare/chroot: {e}"))
    }
}
