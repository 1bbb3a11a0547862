//! Finding the block device of an EBS volume by its id.
//!
//! On Nitro instances the attachment's device name (`/dev/sdf`) is not the device's name
//! (`/dev/nvme1n1`, numbered in attach order). The volume id is in the NVMe controller's
//! serial number instead, without its dash (`vol0123456789abcdef0`). Ubuntu's udev rules
//! link it as `/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol...`, and sysfs shows it as
//! `/sys/block/nvme*/device/serial`: both work without amazon-ec2-utils' ebsnvme-id.

use std::fmt;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A validated EBS volume id (`vol-` and 8 or 17 lowercase hex digits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeId(String);

impl VolumeId {
    /// Checks a tag's value; the error says what a volume id looks like.
    pub fn parse(value: &str) -> Result<VolumeId, String> {
        let digits = value.strip_prefix("vol-").unwrap_or_default();
        let valid = matches!(digits.len(), 8 | 17)
            && digits
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
        if valid {
            Ok(VolumeId(value.to_string()))
        } else {
            Err(format!(
                "`{value}` is not an EBS volume id (`vol-` and 17 lowercase hex digits, like \
                 vol-0123456789abcdef0)"
            ))
        }
    }

    /// The NVMe serial number EBS gives the volume: the id without its dash.
    pub fn serial(&self) -> String {
        self.0.replacen('-', "", 1)
    }

    /// The udev link to the volume under `/dev/disk/by-id`.
    pub fn by_id_name(&self) -> String {
        format!("nvme-Amazon_Elastic_Block_Store_{}", self.serial())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where to look for the volume's device.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// Holds the udev `nvme-Amazon_Elastic_Block_Store_<serial>` links (`/dev/disk/by-id`).
    pub devices_dir: PathBuf,
    /// sysfs (`/sys`), scanned for the serial when the link is not there (yet).
    pub sysfs_dir: PathBuf,
}

impl Lookup {
    /// The volume's block device if it is attached now: the udev link first, then sysfs.
    pub fn find(&self, volume: &VolumeId) -> Option<PathBuf> {
        let link = self.devices_dir.join(volume.by_id_name());
        if let Ok(device) = std::fs::canonicalize(&link) {
            return Some(device);
        }
        let serial = volume.serial();
        let block = self.sysfs_dir.join("block");
        for entry in std::fs::read_dir(&block).ok()?.flatten() {
            // The controller's serial is space-padded to its fixed width.
            let found = std::fs::read_to_string(entry.path().join("device/serial"))
                .is_ok_and(|text| text.trim() == serial);
            if found {
                return Some(Path::new("/dev").join(entry.file_name()));
            }
        }
        None
    }

    /// Polls [`Lookup::find`] until the volume shows up or `timeout` has passed. The EBS
    /// attachment is made after the instance starts, so a first boot usually waits.
    pub fn wait(&self, volume: &VolumeId, timeout: Duration, poll: Duration) -> Option<PathBuf> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(device) = self.find(volume) {
                return Some(device);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            std::thread::sleep(poll.min(left));
        }
    }

    /// After [`Lookup::wait`] gave up: keeps looking, with exponential backoff (`min_delay`
    /// doubling, jittered, up to `max_delay` apart), for `timeout` more. An attachment can
    /// come long after the instance (an interrupted or targeted `terraform apply` finished
    /// later); finding it then brings the role up without a reboot. `notify` hears of each
    /// look that found nothing, with the delay before the next.
    pub fn wait_late(
        &self,
        volume: &VolumeId,
        timeout: Duration,
        min_delay: Duration,
        max_delay: Duration,
        mut notify: impl FnMut(Duration),
    ) -> Option<PathBuf> {
        use backon::{BlockingRetryable, ExponentialBuilder};
        let backoff = ExponentialBuilder::default()
            .with_min_delay(min_delay)
            .with_max_delay(max_delay.max(min_delay))
            .with_jitter()
            .without_max_times()
            .with_total_delay(Some(timeout));
        (|| self.find(volume).ok_or(NotAttached))
            .retry(backoff)
            .sleep(std::thread::sleep)
            .notify(|_, delay| notify(delay))
            .call()
            .ok()
    }
}

/// The volume's device is not there (yet).
#[derive(Debug)]
struct NotAttached;

/// Checks that `device` is a block device and returns its size in bytes.
pub fn block_size(device: &Path) -> Result<u64, String> {
    let metadata = std::fs::metadata(device).map_err(|e| format!("cannot stat it: {e}"))?;
    if !metadata.file_type().is_block_device() {
        return Err("is not a block device".to_string());
    }
    // Seeking to the end of a block device yields its size, without an ioctl.
    File::open(device)
        .and_then(|mut file| file.seek(SeekFrom::End(0)))
        .map_err(|e| format!("cannot read its size: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_ids_are_checked_and_give_the_nvme_serial() {
        let id = VolumeId::parse("vol-0123456789abcdef0").unwrap();
        assert_eq!(id.serial(), "vol0123456789abcdef0");
        assert_eq!(
            id.by_id_name(),
            "nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0"
        );
        assert_eq!(
            VolumeId::parse("vol-1a2b3c4d").unwrap().serial(),
            "vol1a2b3c4d"
        );
        for bad in [
            "",
            "vol-",
            "vol-0123456789ABCDEF0",
            "vol-0123456789abcdef",
            "snap-0123456789abcdef0",
            "vol-0123456789abcdefg",
            "vol-0123456789abcdef0/../x",
        ] {
            let error = VolumeId::parse(bad).unwrap_err();
            assert!(error.contains("not an EBS volume id"), "{bad}: {error}");
        }
    }

    #[test]
    fn the_device_is_found_by_link_or_by_sysfs_serial() {
        let dir = tempfile::tempdir().unwrap();
        let volume = VolumeId::parse("vol-0123456789abcdef0").unwrap();
        let lookup = Lookup {
            devices_dir: dir.path().join("by-id"),
            sysfs_dir: dir.path().join("sys"),
        };
        assert_eq!(lookup.find(&volume), None);
        assert_eq!(
            lookup.wait(
                &volume,
                Duration::from_millis(30),
                Duration::from_millis(10)
            ),
            None
        );

        let serial_file = dir.path().join("sys/block/nvme1n1/device/serial");
        std::fs::create_dir_all(serial_file.parent().unwrap()).unwrap();
        std::fs::write(&serial_file, "vol0123456789abcdef0    \n").unwrap();
        assert_eq!(lookup.find(&volume), Some(PathBuf::from("/dev/nvme1n1")));
        let other = VolumeId::parse("vol-0123456789abcdef1").unwrap();
        assert_eq!(lookup.find(&other), None);

        // The udev link wins, resolved to the device it points at.
        let target = dir.path().join("nvme2n1");
        std::fs::write(&target, "").unwrap();
        std::fs::create_dir_all(&lookup.devices_dir).unwrap();
        std::os::unix::fs::symlink(&target, lookup.devices_dir.join(volume.by_id_name())).unwrap();
        assert_eq!(lookup.find(&volume), Some(target.canonicalize().unwrap()));
        assert_eq!(block_size(&target).unwrap_err(), "is not a block device");
    }
}
