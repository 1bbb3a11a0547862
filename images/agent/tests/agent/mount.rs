//! `stack-agent mount` against real block devices: file-backed loop devices standing in for
//! the EBS data volume, found through a test directory holding the udev link
//! (`nvme-Amazon_Elastic_Block_Store_vol...`) or a test sysfs holding the NVMe serial.
//!
//! These tests run as root (CI does) and need loop devices: without them they fail, saying
//! so; they never skip. Everything is mounted under a temporary `--root`, never over the
//! machine's own /var/lib, and unmounted and detached when a test ends, passed or not.

use crate::common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use testkit::loopdev::LoopDevice;

const VOLUME: &str = "vol-0123456789abcdef0";
/// The volume made from a snapshot of [`VOLUME`]: a new volume id, the same filesystem.
const RESTORED: &str = "vol-0123456789abcdef1";
const GIB: u64 = 1 << 30;
const LIMIT: Duration = Duration::from_secs(120);

/// A loop device standing in for a data volume, and the directories the agent is pointed
/// at. The loop device is declared first so it is detached (and unmounted) before the
/// directory holding its backing file goes.
struct Volume {
    device: LoopDevice,
    id: &'static str,
    dir: tempfile::TempDir,
}

impl Volume {
    fn new(size: u64) -> Volume {
        let dir = tempfile::tempdir().unwrap();
        let device = LoopDevice::create(&dir.path().join("volume.img"), size)
            .unwrap_or_else(|e| panic!("{e:#}"));
        Volume::with(device, VOLUME, dir)
    }

    /// A new volume `id` of `size` bytes holding a copy of `image` (a snapshot), as EBS
    /// makes a volume from a snapshot: the same blocks, then the rest of the size.
    fn restored(image: &Path, size: u64, id: &'static str) -> Volume {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("volume.img");
        copy_sparse(image, &backing);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&backing)
            .and_then(|file| file.set_len(size))
            .unwrap();
        let device = LoopDevice::attach(&backing).unwrap_or_else(|e| panic!("{e:#}"));
        Volume::with(device, id, dir)
    }

    fn with(device: LoopDevice, id: &'static str, dir: tempfile::TempDir) -> Volume {
        std::fs::create_dir_all(dir.path().join("by-id")).unwrap();
        std::fs::create_dir_all(dir.path().join("sys/block")).unwrap();
        write_tags(
            &dir.path().join("tags.json"),
            &[("obstack:data-volume", id)],
        );
        Volume { device, id, dir }
    }

    /// The NVMe serial EBS gives the volume.
    fn serial(&self) -> String {
        self.id.replacen('-', "", 1)
    }

    /// Attaches it: the udev link EBS volumes get on Ubuntu, to the loop device.
    fn attach(&self) {
        std::os::unix::fs::symlink(
            self.device.path(),
            self.by_id()
                .join(format!("nvme-Amazon_Elastic_Block_Store_{}", self.serial())),
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

    /// `stack-agent mount --role <role>` pointed at this volume's link and sysfs; no late
    /// wait unless `extra` asks for one.
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
        if !extra.contains(&"--late-timeout") {
            args.extend_from_slice(&["--late-timeout", "0"]);
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

    /// `dumpe2fs -h`: the ext4 superblock.
    fn superblock(&self) -> String {
        let output = Command::new(testkit::require_tool("dumpe2fs"))
            .arg("-h")
            .arg(self.device.path())
            .output()
            .unwrap();
        assert!(output.status.success(), "dumpe2fs: {}", stderr(&output));
        stdout(&output)
    }
}

/// `cp --sparse=always`: a copy of a volume's backing file, holes kept (EBS copies only the
/// blocks written, too).
fn copy_sparse(from: &Path, to: &Path) {
    // What the kernel still holds for the file reaches it first, as a snapshot sees the
    // blocks the volume has been sent.
    let sync = Command::new("sync").output().unwrap();
    assert!(sync.status.success(), "{}", stderr(&sync));
    let output = Command::new(testkit::require_tool("cp"))
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(output.status.success(), "cp: {}", stderr(&output));
}

fn assert_ok(output: &Output) -> String {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    text
}

/// Unmounts `path` (from `device`), as an instance that stops does, and waits until the
/// filesystem is really closed (a mount namespace made meanwhile keeps it open).
fn umount(path: &Path, device: &LoopDevice) {
    let output = Command::new("umount").arg(path).output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    device
        .wait_until_closed(Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Every file and directory under `dir` (the mount step's record and `lost+found` aside),
/// by relative path: its contents (a link's target) and owner.
fn tree(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32, u32)> {
    walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| {
            let name = e.file_name().to_string_lossy();
            !(e.depth() == 1 && (name == "lost+found" || name == ".stack-agent-owners"))
        })
        .map(|entry| {
            let entry = entry.unwrap();
            let meta = entry.path().symlink_metadata().unwrap();
            let contents = if meta.file_type().is_symlink() {
                std::fs::read_link(entry.path())
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else if meta.is_file() {
                std::fs::read(entry.path()).unwrap()
            } else {
                Vec::new()
            };
            let relative = entry.path().strip_prefix(dir).unwrap().to_path_buf();
            (relative, (contents, meta.uid(), meta.gid()))
        })
        .collect()
}

/// What a service writes: files in nested directories, a large one, a link, each owned by
/// `uid:gid` (`private/`'s by `private_ids`).
fn write_service_data(data: &Path, ids: (u32, u32), private_ids: (u32, u32)) {
    let files: [(&str, Vec<u8>); 5] = [
        (
            "tsdb/01HZX/chunks/000001",
            (0..=255u8).cycle().take(3 << 20).collect(),
        ),
        ("tsdb/01HZX/meta.json", b"{\"ulid\":\"01HZX\"}".to_vec()),
        ("wal/00000042", vec![7u8; 100_000]),
        ("shared/cache/entry", b"cached".to_vec()),
        ("private/secret_key", b"0123456789abcdef".to_vec()),
    ];
    for (path, contents) in files {
        let path = data.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
    }
    std::os::unix::fs::symlink("tsdb/01HZX", data.join("latest")).unwrap();
    for entry in walkdir::WalkDir::new(data).min_depth(1) {
        let entry = entry.unwrap();
        let relative = entry.path().strip_prefix(data).unwrap();
        if relative.starts_with("lost+found") || relative == Path::new(".stack-agent-owners") {
            continue;
        }
        let (uid, gid) = if relative.starts_with("private") {
            private_ids
        } else {
            ids
        };
        std::os::unix::fs::lchown(entry.path(), Some(uid), Some(gid)).unwrap();
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
    umount(&data, &volume.device);
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
    assert!(
        stderr(&output).contains(&volume.serial()),
        "{}",
        stderr(&output)
    );
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
    std::fs::write(&serial, format!("{}    \n", volume.serial())).unwrap();
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

#[test]
fn a_volume_attached_after_the_first_wait_expired_is_still_found_and_mounted() {
    let volume = Volume::new(GIB);
    let root = volume.root("root");
    let output = std::thread::scope(|scope| {
        // The attachment comes later than the first wait (an apply finished late).
        scope.spawn(|| {
            std::thread::sleep(Duration::from_secs(3));
            volume.attach();
        });
        volume.mount(
            "stateful",
            &root,
            &["--device-timeout", "1", "--late-timeout", "60"],
        )
    });
    let text = assert_ok(&output);
    assert!(text.contains("is not attached after 1s"), "{text}");
    assert!(text.contains("attached late"), "{text}");
    let device = volume.device.path().display().to_string();
    assert_eq!(
        mounted_at(&root.join("var/lib/stateful")).as_deref(),
        Some(device.as_str())
    );
}

#[test]
fn an_ext4_volume_not_cleanly_unmounted_is_checked_before_it_is_mounted() {
    let volume = Volume::new(GIB);
    volume.attach();
    let running = volume.root("running");
    assert_ok(&volume.mount("stateful", &running, &[]));
    let data = running.join("var/lib/stateful");
    let (nobody, nogroup) = ids("nobody", "nogroup");
    let (daemon, daemon_group) = ids("daemon", "daemon");
    write_service_data(&data, (nobody, nogroup), (daemon, daemon_group));
    let written = tree(&data);

    // The instance goes down with the volume mounted: what is on the disk then.
    let crashed_image = volume.dir.path().join("crashed.img");
    copy_sparse(volume.device.backing(), &crashed_image);
    let crashed = Volume::restored(&crashed_image, GIB, RESTORED);
    crashed.attach();
    let superblock = crashed.superblock();
    assert!(superblock.contains("needs_recovery"), "{superblock}");

    let next = crashed.root("next");
    let text = assert_ok(&crashed.mount("stateful", &next, &[]));
    let device = crashed.device.path().display().to_string();
    assert!(
        text.contains("was not cleanly unmounted: its journal needs recovery"),
        "{text}"
    );
    assert!(text.contains(&format!("e2fsck -p {device}")), "{text}");
    assert!(!text.contains("formatting"), "{text}");
    assert_eq!(tree(&next.join("var/lib/stateful")), written);
    // Checked once: unmounted cleanly, the next boot mounts it without a check.
    umount(&next.join("var/lib/stateful"), &crashed.device);
    let text = assert_ok(&crashed.mount("stateful", &crashed.root("later"), &[]));
    assert!(!text.contains("e2fsck"), "{text}");
}

#[test]
fn an_ext4_volume_e2fsck_cannot_repair_on_its_own_is_neither_mounted_nor_formatted() {
    let volume = Volume::new(GIB);
    volume.attach();
    volume.tool("mkfs.ext4", &["-q"]);
    // A broken root directory, on a filesystem marked not clean: what -p must leave to a person.
    let device = volume.device.path().display().to_string();
    for request in ["clri <2>", "ssv state 0"] {
        let output = Command::new(testkit::require_tool("debugfs"))
            .args(["-w", "-R", request, &device])
            .output()
            .unwrap();
        assert!(output.status.success(), "debugfs: {}", stderr(&output));
    }
    let before = value(&volume.blkid(), "UUID").map(str::to_string);
    let root = volume.root("root");
    let output = volume.mount("stateful", &root, &[]);
    assert_exit(&output, 11, "e2fsck -p does not repair on its own");
    let text = stderr(&output);
    assert!(text.contains(&format!("e2fsck -f {device}")), "{text}");
    assert!(text.contains("neither mounted nor formatted"), "{text}");
    assert!(mounted_at(&root.join("var/lib/stateful")).is_none());
    assert_eq!(
        value(&volume.blkid(), "UUID").map(str::to_string),
        before,
        "the volume was reformatted"
    );
}

#[test]
fn a_volume_larger_than_its_filesystem_is_grown_and_the_log_says_by_how_much() {
    for (role, label) in [("stateful", "ext4"), ("stateful-xfs", "XFS")] {
        let volume = Volume::new(GIB);
        volume.attach();
        let first = volume.root("first");
        assert_ok(&volume.mount(role, &first, &[]));
        let data = first.join("var/lib/stateful");
        std::fs::write(data.join("kept"), "before the volume grew").unwrap();
        umount(&data, &volume.device);

        // The operator enlarges the volume (data_volume_size_gb); a new instance mounts it.
        volume.device.grow_to(2 * GIB).unwrap();
        let second = volume.root("second");
        let text = assert_ok(&volume.mount(role, &second, &[]));
        let device = volume.device.path().display().to_string();
        assert!(
            text.contains(&format!(
                "grew the {label} filesystem on {device} from 1.0 GiB to 2.0 GiB"
            )),
            "{role}: {text}"
        );
        let data = second.join("var/lib/stateful");
        let stats = nix::sys::statvfs::statvfs(&data).unwrap();
        let size = stats.blocks() as u64 * stats.fragment_size() as u64;
        assert!(size > GIB * 3 / 2, "{role}: {size} bytes after growing");
        assert_eq!(read(&data.join("kept")), "before the volume grew");

        // Grown once: the next boot finds nothing to grow.
        umount(&data, &volume.device);
        let text = assert_ok(&volume.mount(role, &volume.root("third"), &[]));
        assert!(!text.contains("grew"), "{role}: {text}");
    }
}

#[test]
fn files_written_under_other_ids_end_up_owned_by_the_service_once() {
    let volume = Volume::new(GIB);
    volume.attach();
    // The image before: the volume's owner had another id (daemon's), and its services
    // wrote their data under it.
    let old = volume.root("old");
    assert_ok(&volume.mount("stateful-old-ids", &old, &[]));
    let (daemon, daemon_group) = ids("daemon", "daemon");
    let data = old.join("var/lib/stateful");
    write_service_data(&data, (daemon, daemon_group), (daemon, daemon_group));
    umount(&data, &volume.device);

    // The rebaked image: the same data directories, the owner's id moved (now nobody's).
    let new = volume.root("new");
    let text = assert_ok(&volume.mount("stateful", &new, &[]));
    assert!(
        text.contains("giving every file the owner of its data directory"),
        "{text}"
    );
    assert!(text.contains("got a new owner"), "{text}");
    let data = new.join("var/lib/stateful");
    let (nobody, nogroup) = ids("nobody", "nogroup");
    let files = tree(&data);
    assert!(files.len() >= 12, "{files:?}");
    for (path, (_, uid, gid)) in &files {
        let expected = if path.starts_with("private") {
            (daemon, daemon_group)
        } else {
            (nobody, nogroup)
        };
        assert_eq!((*uid, *gid), expected, "{}", path.display());
    }
    // The link itself, not what it points at.
    let link = data.join("latest").symlink_metadata().unwrap();
    assert_eq!((link.uid(), link.gid()), (nobody, nogroup));

    // Once: the next boot with the same ids walks nothing (a stray owner stays).
    std::os::unix::fs::lchown(data.join("wal/00000042"), Some(4242), Some(4242)).unwrap();
    umount(&data, &volume.device);
    let again = volume.root("again");
    let text = assert_ok(&volume.mount("stateful", &again, &[]));
    assert!(!text.contains("giving every file"), "{text}");
    let data = again.join("var/lib/stateful");
    assert_eq!(owner(&data.join("wal/00000042")).0, 4242);

    // A volume from before the record (none on it) is walked, once.
    std::fs::remove_file(data.join(".stack-agent-owners")).unwrap();
    umount(&data, &volume.device);
    let later = volume.root("later");
    let text = assert_ok(&volume.mount("stateful", &later, &[]));
    assert!(text.contains("no ownership record"), "{text}");
    let data = later.join("var/lib/stateful");
    assert_eq!(owner(&data.join("wal/00000042")).0, nobody);
    let record = read(&data.join(".stack-agent-owners"));
    assert!(
        record.contains(&format!(". {nobody}:{nogroup} nobody:nogroup")),
        "{record}"
    );
    assert_eq!(owner(&data.join(".stack-agent-owners")), (0, 0, 0o644));
}

/// The restore drill: a snapshot of a running volume, restored into a bigger volume and
/// mounted by a new instance, comes back whole: the same files, owners and filesystem
/// UUID (a volume from a snapshot keeps it), the journal replayed, the filesystem grown.
#[test]
fn restore_drill_a_snapshot_of_a_running_volume_comes_back_whole_on_a_bigger_volume() {
    // The running instance: the agent formats and mounts its volume; the services write.
    let volume = Volume::new(GIB);
    volume.attach();
    let old = volume.root("old");
    assert_ok(&volume.mount("stateful", &old, &[]));
    let data = old.join("var/lib/stateful");
    let (nobody, nogroup) = ids("nobody", "nogroup");
    let (daemon, daemon_group) = ids("daemon", "daemon");
    write_service_data(&data, (nobody, nogroup), (daemon, daemon_group));
    let written = tree(&data);
    let uuid = value(&volume.blkid(), "UUID").unwrap().to_string();

    // The daily snapshot, taken while the services run (crash-consistent, as EBS's).
    let snapshot = volume.dir.path().join("snapshot.img");
    copy_sparse(volume.device.backing(), &snapshot);

    // `cargo xtask restore`: a new volume from the snapshot, at the role's (now larger)
    // size, attached to a new instance, which mounts it at boot.
    let restored = Volume::restored(&snapshot, 2 * GIB, RESTORED);
    restored.attach();
    let new = restored.root("new");
    let text = assert_ok(&restored.mount("stateful", &new, &[]));
    let device = restored.device.path().display().to_string();
    assert!(!text.contains("formatting"), "{text}");
    assert!(text.contains("its journal needs recovery"), "{text}");
    assert!(
        text.contains(&format!(
            "grew the ext4 filesystem on {device} from 1.0 GiB to 2.0 GiB"
        )),
        "{text}"
    );
    let restored_data = new.join("var/lib/stateful");
    assert_eq!(mounted_at(&restored_data).as_deref(), Some(device.as_str()));
    assert_eq!(tree(&restored_data), written, "files, contents and owners");
    assert_eq!(
        value(&restored.blkid(), "UUID"),
        Some(uuid.as_str()),
        "a volume from a snapshot keeps its filesystem's UUID"
    );
    // The original is untouched by its restored copy.
    assert_eq!(tree(&data), written);
}
