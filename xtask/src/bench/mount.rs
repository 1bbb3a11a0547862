//! `cargo xtask bench mount`: how long the agent's mount step takes, from its start to a
//! mounted data directory with its owner and mode, on a real block device (a sparse
//! file-backed loop device the size of each stateful role's `[data] min_size_gib`):
//!
//! - first boot: a blank volume, probed, formatted, mounted, laid out;
//! - later boot: a new instance (fresh root) mounting the same, now formatted, volume;
//! - repair: an 8 GiB ext4 copied while mounted (as an instance that died with it, or a
//!   snapshot of a running one, leaves it: its journal needs recovery), checked with
//!   `e2fsck -p` before it is mounted;
//! - grow: that volume enlarged from 8 to 16 GiB, grown by the next boot (a full
//!   `e2fsck -f -p`, then `resize2fs`).
//!
//! It runs the agent's own code (`stack_agent::mount::prepare`), so it needs what the step
//! needs: root, loop devices, blkid, wipefs, mkfs.ext4 and mount. The volume's owner is
//! root here: the roles' users exist only on their images.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use stack_agent::data::DataSpec;
use stack_agent::mount::{self, Lookup, MountOptions, VolumeId};

use crate::cmd::Cmd;
use crate::loopdev::LoopDevice;
use crate::roles::Registry;

const VOLUME: &str = "vol-0b0e0c0a0d0f00001";
/// The copy of [`VOLUME`] a crash leaves, attached as another volume.
const CRASHED: &str = "vol-0b0e0c0a0d0f00002";
const GIB: u64 = 1 << 30;
/// The repair and grow cases: Prometheus' and Loki's smallest volume, then twice that.
const REPAIR_GIB: u64 = 8;
const GROWN_GIB: u64 = 16;
/// What the services wrote before the crash: files of this size, so many, in 20 directories.
const FILE_BYTES: usize = 64 << 10;
const FILES: usize = 2000;

pub fn run(rounds: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "bench mount formats and mounts a loop device: run it as root"
    );
    let registry = Registry::load_default()?;
    let mut rows = Vec::new();
    for role in registry.roles() {
        let Some(data) = &role.data else { continue };
        let data = owned_by_root(data);
        let mut first = Vec::new();
        let mut later = Vec::new();
        for _ in 0..rounds {
            let (formatted, mounted) =
                one_volume(&data).with_context(|| format!("bench mount, role {}", role.name))?;
            first.push(formatted);
            later.push(mounted);
        }
        rows.push([
            role.name.clone(),
            format!("{} GiB {}", data.min_size_gib, data.filesystem.name()),
            millis(median(&mut first)),
            millis(median(&mut later)),
        ]);
    }
    println!(
        "bench mount: mount step start to a mounted, owned data directory (median of {rounds})"
    );
    print!(
        "{}",
        crate::table::render(
            &["ROLE", "VOLUME", "FIRST BOOT (FORMAT)", "LATER BOOT"],
            rows
        )
    );

    let data = registry
        .roles()
        .iter()
        .filter_map(|r| r.data.as_ref())
        .find(|d| d.filesystem == stack_agent::data::Filesystem::Ext4)
        .map(owned_by_root)
        .context("no role keeps its data on ext4")?;
    let mut samples: Vec<Measured> = Vec::new();
    for _ in 0..rounds {
        samples.push(repair_and_grow(&data).context("bench mount, repair and grow")?);
    }
    let median_of = |pick: fn(&Measured) -> Duration| {
        let mut values: Vec<Duration> = samples.iter().map(pick).collect();
        millis(median(&mut values))
    };
    println!(
        "\nbench mount: an unclean {REPAIR_GIB} GiB ext4 ({FILES} files of {} KiB written \
         before the crash) and its growth to {GROWN_GIB} GiB (median of {rounds})",
        FILE_BYTES >> 10
    );
    print!(
        "{}",
        crate::table::render(
            &["CASE", "MOUNT STEP", "OF WHICH"],
            [
                [
                    format!("repair: dirty {REPAIR_GIB} GiB ext4"),
                    median_of(|m| m.repair_step),
                    format!("e2fsck -p {}", median_of(|m| m.repair)),
                ],
                [
                    format!("grow: {REPAIR_GIB} -> {GROWN_GIB} GiB ext4"),
                    median_of(|m| m.grow_step),
                    format!("e2fsck -f -p + resize2fs {}", median_of(|m| m.grow)),
                ],
            ]
        )
    );
    Ok(())
}

/// One round of the repair and grow cases, each timed by the step itself.
struct Measured {
    repair: Duration,
    repair_step: Duration,
    grow: Duration,
    grow_step: Duration,
}

fn repair_and_grow(data: &DataSpec) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir()?;
    let device = LoopDevice::create(&dir.path().join("volume.img"), REPAIR_GIB * GIB)?;
    let options = options(dir.path(), &[(VOLUME, device.path())])?;
    let volume = VolumeId::parse(VOLUME).map_err(anyhow::Error::msg)?;
    let root = |name: &str| dir.path().join(name).display().to_string();

    // A first boot formats it; the services write; the instance dies with it mounted.
    let first = mount::prepare(data, &volume, &root("first"), &options)?;
    write_files(&first.mount_point)?;
    Cmd::new("sync", Vec::<String>::new()).read_quietly()?;
    let crashed_image = dir.path().join("crashed.img");
    Cmd::new(
        "cp",
        [
            "--sparse=always".as_ref(),
            device.backing().as_os_str(),
            crashed_image.as_os_str(),
        ],
    )
    .read_quietly()?;
    unmount(&first.mount_point, &device)?;

    // What the crash left, attached as a volume and mounted by the next boot.
    let crashed = LoopDevice::attach(&crashed_image)?;
    let crashed_options = options_for(dir.path(), "crashed-by-id", &[(CRASHED, crashed.path())])?;
    let crashed_volume = VolumeId::parse(CRASHED).map_err(anyhow::Error::msg)?;
    let repaired = mount::prepare(
        data,
        &crashed_volume,
        &root("after-crash"),
        &crashed_options,
    )?;
    unmount(&repaired.mount_point, &crashed)?;
    drop(crashed);
    let repair = repaired
        .repaired
        .as_ref()
        .map(|r| r.elapsed)
        .context("the crashed copy was mounted without a check")?;

    // The operator enlarges the (cleanly unmounted) volume; the next boot grows it.
    device.grow_to(GROWN_GIB * GIB)?;
    let grown = mount::prepare(data, &volume, &root("bigger"), &options)?;
    unmount(&grown.mount_point, &device)?;
    let grow = grown
        .grown
        .as_ref()
        .map(|g| g.elapsed)
        .context("the enlarged volume was not grown")?;
    drop(device);
    Ok(Measured {
        repair,
        repair_step: repaired.elapsed,
        grow,
        grow_step: grown.elapsed,
    })
}

/// [`FILES`] files of [`FILE_BYTES`] under `dir`, as TSDB blocks or Loki chunks are.
fn write_files(dir: &Path) -> anyhow::Result<()> {
    let contents: Vec<u8> = (0..FILE_BYTES).map(|i| (i % 251) as u8).collect();
    for n in 0..FILES {
        let path = dir.join(format!("block-{:02}/chunk-{n:05}", n % 20));
        std::fs::create_dir_all(path.parent().unwrap_or(dir))?;
        std::fs::write(&path, &contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// How the step finds `devices` (volume id, device): their udev links under `dir/by-id`.
fn options(dir: &Path, devices: &[(&str, &Path)]) -> anyhow::Result<MountOptions> {
    options_for(dir, "by-id", devices)
}

fn options_for(dir: &Path, links: &str, devices: &[(&str, &Path)]) -> anyhow::Result<MountOptions> {
    let by_id = dir.join(links);
    std::fs::create_dir_all(&by_id)?;
    for (id, device) in devices {
        let volume = VolumeId::parse(id).map_err(anyhow::Error::msg)?;
        std::os::unix::fs::symlink(device, by_id.join(volume.by_id_name()))?;
    }
    Ok(MountOptions {
        lookup: Lookup {
            devices_dir: by_id,
            sysfs_dir: dir.join("no-sysfs"),
        },
        device_timeout: Duration::from_secs(10),
        poll: Duration::from_millis(250),
        late_timeout: Duration::ZERO,
        late_max_delay: Duration::ZERO,
        dry_run: false,
    })
}

/// One volume's first boot and a later boot, each timed by the step itself.
fn one_volume(data: &DataSpec) -> anyhow::Result<(Duration, Duration)> {
    let dir = tempfile::tempdir()?;
    let device = LoopDevice::create(&dir.path().join("volume.img"), data.min_size_gib * GIB)?;
    let volume = VolumeId::parse(VOLUME).map_err(anyhow::Error::msg)?;
    let options = options(dir.path(), &[(VOLUME, device.path())])?;
    let boot = |name: &str| -> anyhow::Result<Duration> {
        let root = dir.path().join(name);
        let mounted = mount::prepare(data, &volume, &root.display().to_string(), &options)?;
        unmount(&mounted.mount_point, &device)?;
        Ok(mounted.elapsed)
    };
    let first = boot("first")?;
    let later = boot("later")?;
    drop(device);
    Ok((first, later))
}

/// Unmounts, and waits until the filesystem is closed everywhere
/// ([`LoopDevice::wait_until_closed`]): the next boot must find it as a stopped instance
/// leaves it.
fn unmount(path: &Path, device: &LoopDevice) -> anyhow::Result<()> {
    Cmd::new("umount", [path]).read_quietly()?;
    device.wait_until_closed(Duration::from_secs(600))
}

/// The role's `[data]` with root as every owner (the role's users are not on this machine).
fn owned_by_root(data: &DataSpec) -> DataSpec {
    let mut data = data.clone();
    data.owner = "root".into();
    data.group = "root".into();
    for dir in &mut data.dirs {
        dir.owner = None;
        dir.group = None;
    }
    data
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn millis(duration: Duration) -> String {
    format!("{:.0} ms", duration.as_secs_f64() * 1000.0)
}
