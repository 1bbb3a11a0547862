//! What a block device holds, decided by libblkid: nothing at all, a filesystem, or
//! something else (a partition table, a RAID member, several signatures). Only "nothing at
//! all" may be formatted.

use std::path::Path;

use serde::Deserialize;

use super::tools;

/// A device's contents as far as its signatures tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contents {
    /// No signature of any kind: `blkid -p` finds nothing and `wipefs` lists nothing.
    Blank,
    /// One filesystem, by blkid's type name (`ext4`, `xfs`, `vfat`, ...).
    Filesystem(String),
    /// Anything else, described for the error message.
    Other(String),
}

/// Probes `device` with `blkid -p` (low-level probing of superblocks and partition tables,
/// bypassing the cache), and, when it finds nothing, asks `wipefs` too: a device is blank
/// only if neither knows any signature on it.
pub fn probe(device: &Path) -> Result<Contents, String> {
    let ran = tools::run(
        "blkid",
        [
            "-p".as_ref(),
            "-o".as_ref(),
            "export".as_ref(),
            device.as_os_str(),
        ],
        false,
    )?;
    match ran.code {
        // blkid's documented codes: 0 found, 2 nothing found, 8 ambivalent (several).
        Some(0) => Ok(from_export(&ran.stdout)),
        Some(2) => wipefs_signatures(device).map(|found| {
            if found.is_empty() {
                Contents::Blank
            } else {
                Contents::Other(format!("signatures wipefs knows ({})", found.join(", ")))
            }
        }),
        Some(8) => Ok(Contents::Other(
            "several signatures (blkid: ambivalent probing result)".to_string(),
        )),
        _ => Err(format!("blkid -p cannot probe it ({})", ran.reason())),
    }
}

/// Reads `blkid -o export`'s KEY=value lines.
fn from_export(text: &str) -> Contents {
    let value = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    };
    match (value("PTTYPE"), value("TYPE"), value("USAGE")) {
        (Some(table), _, _) => Contents::Other(format!("a partition table ({table})")),
        (None, Some(kind), Some(usage)) if usage == "filesystem" => Contents::Filesystem(kind),
        (None, Some(kind), usage) => Contents::Other(format!(
            "a {kind} signature ({})",
            usage.unwrap_or_else(|| "unknown use".to_string())
        )),
        (None, None, _) => Contents::Other("a signature blkid cannot name".to_string()),
    }
}

#[derive(Deserialize)]
struct Wipefs {
    #[serde(default)]
    signatures: Vec<Signature>,
}

#[derive(Deserialize)]
struct Signature {
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// The signature types `wipefs --no-act` lists (it changes nothing).
fn wipefs_signatures(device: &Path) -> Result<Vec<String>, String> {
    let ran = tools::run(
        "wipefs",
        ["--no-act".as_ref(), "--json".as_ref(), device.as_os_str()],
        false,
    )?;
    if !ran.success() {
        return Err(format!("wipefs cannot probe it ({})", ran.reason()));
    }
    // No signature at all: wipefs prints nothing.
    if ran.stdout.trim().is_empty() {
        return Ok(Vec::new());
    }
    let parsed: Wipefs = serde_json::from_str(&ran.stdout)
        .map_err(|e| format!("wipefs printed JSON this agent cannot read: {e}"))?;
    Ok(parsed
        .signatures
        .into_iter()
        .map(|s| s.kind.unwrap_or_else(|| "unknown".to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkid_export_lines_are_classified() {
        let ext4 = "DEVNAME=/dev/loop0\nUUID=x\nVERSION=1.0\nBLOCK_SIZE=4096\nTYPE=ext4\nUSAGE=filesystem\n";
        assert_eq!(from_export(ext4), Contents::Filesystem("ext4".into()));
        let table = "DEVNAME=/dev/loop0\nPTUUID=1\nPTTYPE=dos\n";
        assert_eq!(
            from_export(table),
            Contents::Other("a partition table (dos)".into())
        );
        let raid = "DEVNAME=/dev/loop0\nTYPE=linux_raid_member\nUSAGE=raid\n";
        assert_eq!(
            from_export(raid),
            Contents::Other("a linux_raid_member signature (raid)".into())
        );
        assert!(matches!(
            from_export("DEVNAME=/dev/x\n"),
            Contents::Other(_)
        ));
    }
}
