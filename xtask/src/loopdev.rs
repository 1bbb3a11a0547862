//! File-backed loop devices: real block devices standing in for an EBS data volume, for the
//! agent's mount-step tests and `cargo xtask bench mount`. Creating one needs root and
//! loop device support (`/dev/loop-control`).

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::cmd::Cmd;

/// A loop device over a sparse file; detached (and anything mounted from it unmounted)
/// when dropped.
pub struct LoopDevice {
    device: PathBuf,
    backing: PathBuf,
}

impl LoopDevice {
    /// Makes `backing` a sparse file of `size` bytes and attaches it to a free loop device.
    pub fn create(backing: &Path, size: u64) -> anyhow::Result<LoopDevice> {
        let file = std::fs::File::create(backing)
            .with_context(|| format!("cannot create {}", backing.display()))?;
        file.set_len(size)
            .with_context(|| format!("cannot size {} to {size} bytes", backing.display()))?;
        LoopDevice::attach(backing)
    }

    /// Attaches an existing file (a copy of another volume's, standing in for a volume made
    /// from a snapshot) to a free loop device.
    pub fn attach(backing: &Path) -> anyhow::Result<LoopDevice> {
        let device = Cmd::new(
            "losetup",
            ["--find".as_ref(), "--show".as_ref(), backing.as_os_str()],
        )
        .read_quietly()
        .with_context(|| {
            format!(
                "cannot create a loop device over {}: the data-volume tests and benchmark \
                     format and mount a real block device, so they need root and loop devices \
                     (/dev/loop-control, `modprobe loop`); run them as root on a machine or a \
                     --privileged container that has them",
                backing.display()
            )
        })?;
        Ok(LoopDevice {
            device: PathBuf::from(device),
            backing: backing.to_path_buf(),
        })
    }

    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.device
    }

    /// The loop device's name in /dev and sysfs (`loopN`).
    pub fn name(&self) -> String {
        self.device
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// After the filesystem on it was unmounted, waits (up to `timeout`) until nothing holds
    /// it open any more. A mount namespace another process made while it was mounted (a
    /// provisioning rehearsal's command, a container, anything on the machine) keeps a copy
    /// of the mount, and the filesystem open, until its last process exits: its journal then
    /// still reads "in use", which no EBS volume detached from a stopped instance does.
    pub fn wait_until_closed(&self, timeout: std::time::Duration) -> anyhow::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            // O_EXCL on a block device: refused (EBUSY) while any namespace has it mounted.
            let opened = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_EXCL)
                .open(&self.device);
            match opened {
                Ok(_) => return Ok(()),
                Err(error)
                    if error.raw_os_error() == Some(nix::libc::EBUSY)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                Err(error) => {
                    return Err(error).with_context(|| {
                        format!(
                            "{} is still in use {:.0?} after its filesystem was unmounted",
                            self.device.display(),
                            timeout
                        )
                    })
                }
            }
        }
    }

    /// Enlarges the backing file to `size` bytes and makes the device see it, as EBS shows
    /// an attached volume its new size after `ModifyVolume`.
    pub fn grow_to(&self, size: u64) -> anyhow::Result<()> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.backing)
            .and_then(|file| file.set_len(size))
            .with_context(|| format!("cannot size {} to {size} bytes", self.backing.display()))?;
        Cmd::new(
            "losetup",
            ["--set-capacity".as_ref(), self.device.as_os_str()],
        )
        .read_quietly()
        .map(|_| ())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        // Whatever is still mounted from it (a failed test) goes first, or detaching fails.
        if let Ok(targets) = Cmd::new(
            "findmnt",
            [
                "--noheadings".as_ref(),
                "--output".as_ref(),
                "TARGET".as_ref(),
                "--source".as_ref(),
                self.device.as_os_str(),
            ],
        )
        .read_quietly()
        {
            for target in targets.lines().rev() {
                let _ = Cmd::new("umount", [target]).read_quietly();
            }
        }
        if let Err(e) =
            Cmd::new("losetup", ["--detach".as_ref(), self.device.as_os_str()]).read_quietly()
        {
            eprintln!("warning: {e:#}");
        }
    }
}
