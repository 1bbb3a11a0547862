//! An ext4 data volume before it is mounted, through e2fsprogs: what its superblock says,
//! the repair after an unclean shutdown (`e2fsck -p`), and growing it to its device.
//!
//! Why before mounting: the kernel mounts a filesystem whose journal needs recovery (it
//! replays the journal itself) and one marked "not clean" (it only warns), so an ext4 that
//! went down with its instance, or comes from a snapshot of a running one, would be used
//! unchecked. Growing happens here too, offline: the services have not started, resize2fs
//! on an unmounted, freshly checked filesystem is its most conservative path, and it needs
//! no CAP_SYS_RESOURCE (which the kernel's online resize asks for), so the same code runs
//! on EC2 and in the loop-device tests.

use std::path::Path;
use std::time::{Duration, Instant};

use super::tools;

/// What `dumpe2fs -h` reports about a filesystem, as far as the mount step needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// `clean`, `not clean`, `clean with errors`, ...
    pub state: String,
    /// `has_journal`, `needs_recovery`, ...
    pub features: Vec<String>,
    pub block_count: u64,
    pub block_size: u64,
}

impl Superblock {
    /// The filesystem's size in bytes.
    pub fn size(&self) -> u64 {
        self.block_count.saturating_mul(self.block_size)
    }

    /// Why the filesystem was not cleanly unmounted; `None` when it was.
    pub fn unclean(&self) -> Option<String> {
        let recovery = self.features.iter().any(|f| f == "needs_recovery");
        match (self.state == "clean", recovery) {
            (true, false) => None,
            (true, true) => Some("its journal needs recovery".to_string()),
            (false, false) => Some(format!("its state is `{}`", self.state)),
            (false, true) => Some(format!(
                "its state is `{}` and its journal needs recovery",
                self.state
            )),
        }
    }
}

/// Reads the superblock with `dumpe2fs -h` (read-only).
pub fn superblock(device: &Path) -> Result<Superblock, String> {
    let ran = tools::run("dumpe2fs", ["-h".as_ref(), device.as_os_str()], false)?;
    if !ran.success() {
        return Err(format!("dumpe2fs -h cannot read it ({})", ran.reason()));
    }
    parse(&ran.stdout)
}

fn parse(text: &str) -> Result<Superblock, String> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .ok_or_else(|| format!("dumpe2fs -h printed no `{name}`"))
    };
    let number = |name: &str| {
        field(name)?
            .parse::<u64>()
            .map_err(|_| format!("dumpe2fs -h printed a `{name}` that is not a number"))
    };
    Ok(Superblock {
        state: field("Filesystem state")?.to_string(),
        features: field("Filesystem features")?
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        block_count: number("Block count")?,
        block_size: number("Block size")?,
    })
}

/// Why a check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckError {
    /// e2fsck found what it will not fix without a person answering its questions.
    NeedsPerson(String),
    /// e2fsck itself failed (an operational error, not a verdict on the filesystem).
    Failed(String),
}

/// A finished check: e2fsck's summary line and how long it took.
#[derive(Debug, Clone)]
pub struct Checked {
    /// `/dev/nvme1n1: 62/65536 files (0.0% non-contiguous), 13006/262144 blocks`.
    pub summary: String,
    /// Whether e2fsck changed anything (journal replayed, errors fixed).
    pub changed: bool,
    pub elapsed: Duration,
}

/// `e2fsck -p` (preen: fixes what is safe without asking, never more), forced to a full
/// check with `full`.
pub fn check(device: &Path, full: bool) -> Result<Checked, CheckError> {
    let started = Instant::now();
    let flags: &[&str] = if full { &["-f", "-p"] } else { &["-p"] };
    let args: Vec<&std::ffi::OsStr> = flags
        .iter()
        .map(|f| f.as_ref())
        .chain(std::iter::once(device.as_os_str()))
        .collect();
    let ran = tools::run("e2fsck", &args, true).map_err(CheckError::Failed)?;
    let text = format!("{}\n{}", ran.stdout, ran.stderr);
    let device_name = device.display().to_string();
    // e2fsck's own lines about this device, without its advice to run it by hand.
    let findings: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with(&device_name) && !line.contains("RUN fsck MANUALLY"))
        .collect();
    let summary = findings.last().copied().unwrap_or_default().to_string();
    // e2fsck's exit status is a bit mask (e2fsck(8)): 1 errors corrected, 2 corrected and a
    // reboot wanted (only for a mounted root), 4 errors left uncorrected, 8 operational
    // error, 16 usage, 32 cancelled, 128 shared-library error.
    match ran.code {
        Some(code) if code & !0b11 == 0 => Ok(Checked {
            summary,
            changed: code != 0,
            elapsed: started.elapsed(),
        }),
        Some(code) if code & 4 != 0 && code & !0b111 == 0 => Err(CheckError::NeedsPerson(format!(
            "e2fsck -p exit code {code}: {}",
            findings.join("; ")
        ))),
        // e2fsck says why first (`/dev/nvme1n1 is in use.`), then `Cannot continue, aborting.`
        _ => Err(CheckError::Failed(format!(
            "e2fsck {} {device_name} failed ({}{})",
            flags.join(" "),
            findings
                .iter()
                .map(|line| format!("{line}; "))
                .collect::<String>(),
            ran.reason()
        ))),
    }
}

/// Grows the (unmounted, just checked) filesystem to the whole device with `resize2fs`.
pub fn grow(device: &Path) -> Result<(), String> {
    tools::check("resize2fs", [device.as_os_str()]).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIRTY: &str = "\
Filesystem volume name:   <none>
Filesystem UUID:          eb8fbdeb-8cb1-4cdc-81c1-67b2828bd335
Filesystem features:      has_journal ext_attr resize_inode dir_index filetype needs_recovery extent 64bit
Filesystem state:         clean
Block count:              262144
Block size:               4096
";

    #[test]
    fn the_superblock_says_whether_the_filesystem_was_cleanly_unmounted() {
        let dirty = parse(DIRTY).unwrap();
        assert_eq!(dirty.size(), 1 << 30);
        assert_eq!(
            dirty.unclean().as_deref(),
            Some("its journal needs recovery")
        );
        let clean = parse(&DIRTY.replace(" needs_recovery", "")).unwrap();
        assert_eq!(clean.unclean(), None);
        let errors = parse(
            &DIRTY
                .replace(" needs_recovery", "")
                .replace("state:         clean", "state:         clean with errors"),
        )
        .unwrap();
        assert_eq!(
            errors.unclean().as_deref(),
            Some("its state is `clean with errors`")
        );
        let error = parse(&DIRTY.replace("Block size", "Block sighs")).unwrap_err();
        assert!(error.contains("`Block size`"), "{error}");
    }
}
