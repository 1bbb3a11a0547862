//! Disks for the VMs, as files: a root image made from a root directory without mounting
//! anything (`mkfs.ext4 -d`), blank data volumes (sparse, like a new EBS volume that reads
//! as zeros), a volume's snapshot (a sparse copy), and the filesystem UUID a volume holds.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::cmd::Cmd;

const MIB: u64 = 1 << 20;

/// Free space a root image gets beyond its contents: the journal, logs, the first boot's
/// writes.
const ROOT_HEADROOM: u64 = 768 * MIB;

/// Makes `image`, an ext4 filesystem holding `tree` (owners, modes, links as they are),
/// sized to the tree plus headroom. Returns its size in bytes.
pub fn root_image(tree: &Path, image: &Path) -> anyhow::Result<u64> {
    let used = Cmd::new(
        "du",
        [
            "-s".into(),
            "-x".into(),
            "--block-size=1".into(),
            tree.as_os_str().to_owned(),
        ],
    )
    .read_quietly()?;
    let used: u64 = used
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("cannot read the size of {}", tree.display()))?;
    // ext4's metadata and block rounding take a good tenth more than the files.
    let size = (used + used / 5 + ROOT_HEADROOM).div_ceil(MIB) * MIB;
    let _ = std::fs::remove_file(image);
    Cmd::new(
        crate::cmd::require_tool("mkfs.ext4", "install e2fsprogs")?,
        [
            "-q".into(),
            "-F".into(),
            "-L".into(),
            "root".into(),
            "-d".into(),
            tree.as_os_str().to_owned(),
            image.as_os_str().to_owned(),
            format!("{}M", size / MIB).into(),
        ],
    )
    .read_quietly()
    .with_context(|| format!("cannot make the root image {}", image.display()))?;
    Ok(size)
}

/// A blank volume of `gib` GiB: a sparse file that reads as zeros, as a new EBS volume.
pub fn blank_volume(path: &Path, gib: u64) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)
        .with_context(|| format!("cannot create the volume {}", path.display()))?;
    file.set_len(gib << 30)
        .with_context(|| format!("cannot size the volume {}", path.display()))
}

/// A copy of `volume` as it is now (an EBS snapshot of it, restored): sparse, so a mostly
/// empty 8 GiB volume costs only what it holds. The VM using it must be paused or off.
pub fn snapshot(volume: &Path, copy: &Path) -> anyhow::Result<()> {
    Cmd::new(
        "cp",
        [
            "--sparse=always".into(),
            "--reflink=auto".into(),
            volume.as_os_str().to_owned(),
            copy.as_os_str().to_owned(),
        ],
    )
    .read_quietly()
    .map(|_| ())
}

/// The filesystem UUID on `image`, read with libblkid's low-level probe (no loop device,
/// no mount), or `None` when it holds no filesystem.
pub fn filesystem_uuid(image: &Path) -> anyhow::Result<Option<String>> {
    let output = Cmd::new(
        crate::cmd::require_tool("blkid", "install util-linux")?,
        [
            "-p".into(),
            "-o".into(),
            "value".into(),
            "-s".into(),
            "UUID".into(),
            image.as_os_str().to_owned(),
        ],
    )
    .map(|e| e.unchecked())
    .read_quietly()?;
    let uuid = output.trim();
    Ok((!uuid.is_empty()).then(|| uuid.to_string()))
}

/// The kernel and initramfs a root boots with: `/vmlinuz` and `/initrd.img`, Debian's links
/// to the newest installed ones in `/boot`, resolved inside the root.
pub fn kernel_of(root: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let resolve = |link: &str| -> anyhow::Result<PathBuf> {
        let path = root.join(link);
        let target = std::fs::read_link(&path).with_context(|| {
            format!(
                "{} has no /{link}: install a kernel (linux-image-*) in it",
                root.display()
            )
        })?;
        // The links are relative (`boot/vmlinuz-...`) or absolute inside the root.
        let inside = target.strip_prefix("/").unwrap_or(&target);
        let resolved = root.join(inside);
        anyhow::ensure!(
            resolved.is_file(),
            "/{link} in {} points at {}, which is not there",
            root.display(),
            target.display()
        );
        Ok(resolved)
    };
    Ok((resolve("vmlinuz")?, resolve("initrd.img")?))
}
