//! `cargo xtask bench mount`: how long the agent's mount step takes, from its start to a
//! mounted data directory with its owner and mode, on a real block device (a sparse
//! file-backed loop device the size of each stateful role's `[data] min_size_gib`):
//!
//! - first boot: a blank volume, probed, formatted, mounted, laid out;
//! - later boot: a new instance (fresh root) mounting the same, now formatted, volume.
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
    Ok(())
}

/// One volume's first boot and a later boot, each timed by the step itself.
fn one_volume(data: &DataSpec) -> anyhow::Result<(Duration, Duration)> {
    let dir = tempfile::tempdir()?;
    let device = LoopDevice::create(&dir.path().join("volume.img"), data.min_size_gib << 30)?;
    let volume = VolumeId::parse(VOLUME).map_err(anyhow::Error::msg)?;
    let by_id = dir.path().join("by-id");
    std::fs::create_dir_all(&by_id)?;
    std::os::unix::fs::symlink(device.path(), by_id.join(volume.by_id_name()))?;
    let options = MountOptions {
        lookup: Lookup {
            devices_dir: by_id,
            sysfs_dir: dir.path().join("no-sysfs"),
        },
        device_timeout: Duration::from_secs(10),
        poll: Duration::from_millis(250),
        late_timeout: Duration::ZERO,
        late_max_delay: Duration::ZERO,
        dry_run: false,
    };
    let boot = |name: &str| -> anyhow::Result<Duration> {
        let root = dir.path().join(name);
        let mounted = mount::prepare(data, &volume, &root.display().to_string(), &options)?;
        unmount(&mounted.mount_point)?;
        Ok(mounted.elapsed)
    };
    let first = boot("first")?;
    let later = boot("later")?;
    drop(device);
    Ok((first, later))
}

fn unmount(path: &Path) -> anyhow::Result<()> {
    Cmd::new("umount", [path]).read_quietly().map(|_| ())
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
