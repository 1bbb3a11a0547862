//! `stack-agent mount` against real block devices: file-backed loop devices standing in for
//! the EBS data volume, found through a test directory holding the udev link
//! (`nvme-Amazon_Elastic_Block_Store_vol...`) or a test sysfs holding the NVMe serial.
//!
//! These tests run as root (CI does) and need loop devices: without them they fail, saying
//! so; they never skip. Everything is mounted under a temporary `--root`, never over the
//! machine's own /var/lib, and unmounted and detached when a test ends, passed or not.

use crate::common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use testkit::loopdev::LoopDevice;

const VOLUME: &str = "vol-0123456789abcdef0";
const SERIAL: &str = "vol0123456789abcdef0";
const GIB: u64 = 1 << 30;
const LIMIT: Duration = Duration::from_secs(120);

/// A loop device standing in for the data volume, and the directories the agent is pointed
/// at. The loop device is declared first so it is detached (and unmounted) before the
/// directory holding its backing file goes.
struct Volume {
    device: LoopDevice,
    dir: tempfile::TempDir,
}

impl Volume {
    fn new(size: u64) -> Volume {
        let dir = tempfile::tempdir().unwrap();
        let device = LoopDevice::create(&dir.path().join("volume.img"), size)
            .unwrap_or_else(|e| panic!("{e:#}"));
        std::fs::create_dir_all(dir.path().join("by-id")).unwrap();
        std::fs::create_dir_all(dir.path().join("sys/block")).unwrap();
        write_tags(
            &dir.path().join("tags.json"),
            &[("obstack:data-volume", VOLUME)],
        );
        Volume { device, dir }
    }

    /// Attaches it: the udev link EBS volumes get on Ubuntu, to the loop device.
    fn attach(&self) {
        std::os::unix::fs::symlink(
            self.device.path(),
            self.by_id()
                .join(format!("nvme-Amazon_Elastic_Block_Store_{SERIAL}")),
        )
        .unwrap();
    }

    fn by_id(&self) -> PathBuf {
        self.dir.path().join("by-id")
    }

    fn sysfs(&self) -> PathBuf {
        self.dir.path().join("sys")
    }

    /// A fresh `--root` (a new instance's root disk).
    fn root(&self, name: &str) -> PathBuf {
        let root = self.dir.path().join(name);
        std::fs::create_dir_all(&root).unwrap();
        root
    }

    /// `stack-agent mount --role <role>` pointed at this volume's link and sysfs.
    fn mount(&self, role: &str, root: &Path, extra: &[&str]) -> Output {
        let tags = format!("file:{}", self.dir.path().join("tags.json").display());
        let by_id = self.by_id().display().to_string();
        let sysfs = self.sysfs().display().to_string();
        let mut args = vec![
            "--tags-from",
            &tags,
            "--devices-dir",
            &by_id,
            "--sysfs",
            &sysfs,
            "--wait-timeout",
            "0.5",
            "--min-delay",
            "0.05",
            "--max-delay",
            "0.1",
        ];
        if !extra.contains(&"--device-timeout") {
            args.extend_from_slice(&["--device-timeout", "10"]);
        }
        args.extend_from_slice(extra);
        run(&mut agent("mount", role, root, &args), LIMIT)
    }

    fn blkid(&self) -> String {
        let output = Command::new(testkit::require_tool("blkid"))
            .args(["-p", "-o", "export"])
            .arg(self.device.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn tool(&self, tool: &str, args: &[&str]) {
        let output = Command::new(testkit::require_tool(tool))
            .args(args)
            .arg(self.device.path())
            .output()
            .unwrap();
        assert!(output.status.success(), "{tool}: {}", stderr(&output));
    }
}

/// What is mounted at `path` (its source device), if anything.
fn mounted_at(path: &Path) -> Option<String> {
    let output = Command::new(testkit::require_tool("findmnt"))
        .args(["--noheadings", "--output", "SOURCE", "--mountpoint"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (output.status.success() && !text.is_empty()).then_some(text)
}

fn owner(path: &Path) -> (u32, u32, u32) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.uid(), meta.gid(), meta.mode() & 0o7777)
}

fn ids(user: &str, group: &str) -> (u32, u32) {
    let uid = nix::unistd::User::from_name(user)
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    let gid = nix::unistd::Group::from_name(group)
        .unwrap()
        .unwrap()
        .gid
        .as_raw();
    (uid, gid)
}

fn value<'a>(blkid: &'a str, key: &str) -> Option<&'a str> {
    blkid
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

fn assert_exit(output: &Output, code: i32, needle: &str) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(code), "{text}");
    assert!(text.contains(needle), "expected {needle:?} in:\n{text}");
    assert_eq!(
        text.trim_end()
            .lines()
            .filter(|l| l.contains("error:"))
            .count(),
        1,
        "one error line:\n{text}"
    );
}

#[test]
fn first_boot_formats_and_a_new_instance_mounts_the_same_data_without_formatting() {
    let volume = Volume::new(GIB);
    volume.attach();
    let first = volume.root("first");
    let data = first.join("var/lib/stateful");

    let output = volume.mount("stateful", &first, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("formatting it as ext4"),
        "{}",
        stderr(&output)
    );
    let probe = volume.blkid();
    assert_eq!(value(&probe, "TYPE"), Some("ext4"), "{probe}");
    let uuid = value(&probe, "UUID").unwrap().to_string();
    let device = volume.device.path().display().to_string();
    assert_eq!(mounted_at(&data).as_deref(), Some(device.as_str()));
    let (nobody, nogroup) = ids("nobody", "nogroup");
    let (daemon, daemon_group) = ids("daemon", "daemon");
    assert_eq!(owner(&data), (nobody, nogroup, 0o750));
    assert_eq!(owner(&data.join("private")), (daemon, daemon_group, 0o700));
    assert_eq!(owner(&data.join("shared/cache")), (nobody, nogroup, 0o750));

    // The services write; a second run in the same boot changes nothing.
    std::fs::write(data.join("private/tsdb"), "15 days of samples").unwrap();
    let again = volume.mount("stateful", &first, &[]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("already mounted"),
        "{}",
        stderr(&again)
    );

    // The old instance stops: unmounted, detached. A new one (fresh root disk) gets it.
    let umount = Command::new("umount").arg(&data).output().unwrap();
    assert!(umount.status.success(), "{}", stderr(&umount));
    let second = volume.root("second");
    let data = second.join("var/lib/stateful");
    // Ownership is enforced on every boot, not only after formatting.
    std::fs::create_dir_all(&data).unwrap();
    let output = volume.mount("stateful", &second, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        !stderr(&output).contains("formatting"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        value(&volume.blkid(), "UUID"),
        Some(uuid.as_str()),
        "reformatted"
    );
    assert_eq!(mounted_at(&data).as_deref(), Some(device.as_str()));
    assert_eq!(read(&data.join("private/tsdb")), "15 days of samples");
    assert_eq!(owner(&data), (nobody, nogroup, 0o750));
    assert!(mounted_at(&first.join("var/lib/stateful")).is_none());

    let options = Command::new("findmnt")
        .args(["--noheadings", "--output", "OPTIONS", "--mountpoint"])
        .arg(&data)
        .output()
        .unwrap();
    let options = String::from_utf8_lossy(&options.stdout);
    for option in ["nodev", "nosuid", "noexec", "noatime"] {
        assert!(options.split(',').any(|o| o.trim() == option), "{options}");
    }
}

#[test]
fn a_device_holding_another_filesystem_or_a_partition_table_is_never_formatted() {
    // Another filesystem.
    let volume = Volume::new(GIB);
    volume.attach();
    volume.tool("mkfs.xfs", &["-q"]);
    let before = volume.blkid();
    let root = volume.root("root");
    let output = volume.mount("stateful", &root, &[]);
    assert_exit(
        &output,
        8,
        "holds a xfs filesystem, not the ext4 this role uses",
    );
    assert!(stderr(&output).contains("wipefs -a"), "{}", stderr(&output));
    assert_eq!(volume.blkid(), before, "the device was changed");
    assert!(mounted_at(&root.join("var/lib/stateful")).is_none());

    // A partition table (a whole-disk partition, as someone may have made by hand).
    let volume = Volume::new(GIB);
    volume.attach();
    let sfdisk = Command::new(testkit::require_tool("sfdisk"))
        .args(["--quiet", "--no-reread", "--label", "dos"])
        .arg(volume.device.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b",,L\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(sfdisk.status.success(), "{}", stderr(&sfdisk));
    let before = volume.blkid();
    assert_eq!(value(&before, "PTTYPE"), Some("dos"), "{before}");
    let root = volume.root("root");
    let output = volume.mount("stateful", &root, &[]);
    assert_exit(&output, 8, "holds a partition table (dos)");
    assert_eq!(volume.blkid(), before, "the device was changed");
    assert!(mounted_at(&root.join("var/lib/stateful")).is_none());
}

#[test]
fn a_volume_that_never_appears_times_out_with_its_code_and_nothing_is_mounted() {
    let volume = Volume::new(GIB);
    // Not attached: no link, no serial in sysfs.
    let root = volume.root("root");
    let output = volume.mount("stateful", &root, &["--device-timeout", "1"]);
    assert_exit(
        &output,
        7,
        &format!("data volume {VOLUME} did not appear within 1s"),
    );
    assert!(stderr(&output).contains(SERIAL), "{}", stderr(&output));
    assert!(mounted_at(&root.join("var/lib/stateful")).is_none());
    assert_eq!(volume.blkid(), "", "the unattached device was touched");
}

#[test]
fn a_volume_too_small_for_its_role_is_reported_not_used() {
    // An ext4 volume of 512 MiB for a role that needs 1 GiB.
    let volume = Volume::new(GIB / 2);
    volume.attach();
    volume.tool("mkfs.ext4", &["-q"]);
    let root = volume.root("root");
    let output = volume.mount("stateful", &root, &[]);
    assert_exit(&output, 9, "is 0.5 GiB, below the 1 GiB this role needs");
    assert!(mounted_at(&root.join("var/lib/stateful")).is_none());

    // A blank one is not formatted either.
    let volume = Volume::new(GIB / 2);
    volume.attach();
    let output = volume.mount("stateful", &volume.root("root"), &[]);
    assert_exit(&output, 9, "below the 1 GiB");
    assert_eq!(volume.blkid(), "", "a too small volume was formatted");
}

#[test]
fn the_volume_is_found_by_its_nvme_serial_in_sysfs_and_formatted_as_the_role_says() {
    let volume = Volume::new(GIB);
    // No udev link yet, but sysfs shows the controller's space-padded serial.
    let serial = volume
        .sysfs()
        .join("block")
        .join(volume.device.name())
        .join("device/serial");
    std::fs::create_dir_all(serial.parent().unwrap()).unwrap();
    std::fs::write(&serial, format!("{SERIAL}    \n")).unwrap();
    let root = volume.root("root");
    let output = volume.mount("stateful-xfs", &root, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(value(&volume.blkid(), "TYPE"), Some("xfs"));
    let device = volume.device.path().display().to_string();
    assert_eq!(
        mounted_at(&root.join("var/lib/stateful")).as_deref(),
        Some(device.as_str())
    );
}

#[test]
fn dry_run_probes_but_formats_and_mounts_nothing() {
    let volume = Volume::new(GIB);
    volume.attach();
    let root = volume.root("root");
    let output = volume.mount("stateful", &root, &["--dry-run"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let device = volume.device.path().display().to_string();
    assert!(
        stdout(&output).contains(&format!("would format {device} as ext4")),
        "{}",
        stdout(&output)
    );
    assert_eq!(volume.blkid(), "");
    assert!(mounted_at(&root.join("var/lib/stateful")).is_none());
}

#[test]
fn a_failure_after_mounting_leaves_nothing_mounted() {
    let volume = Volume::new(GIB);
    volume.attach();
    let root = volume.root("root");
    let output = volume.mount("stateful-nouser", &root, &[]);
    assert_exit(&output, 10, "no user `obstack-no-such-user`");
    assert!(
        stderr(&output).contains("unmounted it again"),
        "{}",
        stderr(&output)
    );
    assert!(mounted_at(&root.join("var/lib/stateful")).is_none());
}

#[test]
fn the_tag_is_waited_for_and_checked_and_a_role_without_data_has_nothing_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let tags = dir.path().join("tags.json");
    let from = format!("file:{}", tags.display());
    let quick = [
        "--tags-from",
        &from,
        "--wait-timeout",
        "0.3",
        "--min-delay",
        "0.05",
        "--max-delay",
        "0.1",
        "--device-timeout",
        "0.1",
    ];

    write_tags(&tags, &[]);
    let output = run(&mut agent("mount", "stateful", &root, &quick), LIMIT);
    assert_exit(&output, 3, "obstack:data-volume");

    write_tags(&tags, &[("obstack:data-volume", "/dev/sda1")]);
    let output = run(&mut agent("mount", "stateful", &root, &quick), LIMIT);
    assert_exit(&output, 4, "is not an EBS volume id");

    // The app keeps no data: done at once, whatever the tags.
    std::fs::remove_file(&tags).unwrap();
    let output = run(&mut agent("mount", "app", &root, &quick), LIMIT);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("keeps no data"),
        "{}",
        stderr(&output)
    );
}
