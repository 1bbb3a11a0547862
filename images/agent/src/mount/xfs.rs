//! An XFS data volume once it is mounted, through xfsprogs: its size and growing it.
//!
//! XFS replays its own log when mounted (there is no offline check to run at boot:
//! xfs_repair is for a person), and grows only while mounted (`xfs_growfs`).

use std::path::Path;

use super::tools;

/// The size in bytes of the data section of the XFS filesystem mounted at `mount_point`.
pub fn data_size(mount_point: &Path) -> Result<u64, String> {
    let ran = tools::run("xfs_info", [mount_point.as_os_str()], false)?;
    if !ran.success() {
        return Err(format!(
            "xfs_info {} failed ({})",
            mount_point.display(),
            ran.reason()
        ));
    }
    parse_data_size(&ran.stdout)
}

/// `data     =                       bsize=4096   blocks=262144, imaxpct=25`.
fn parse_data_size(text: &str) -> Result<u64, String> {
    let line = text
        .lines()
        .find(|line| line.trim_start().starts_with("data"))
        .ok_or("xfs_info printed no data section")?;
    let value = |key: &str| {
        line.split(|c: char| c.is_whitespace() || c == ',')
            .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
            .and_then(|number| number.parse::<u64>().ok())
            .ok_or_else(|| format!("xfs_info's data section has no {key}"))
    };
    Ok(value("bsize")?.saturating_mul(value("blocks")?))
}

/// `xfs_growfs -d`: the data section to the whole device, online.
pub fn grow(mount_point: &Path) -> Result<(), String> {
    tools::check("xfs_growfs", ["-d".as_ref(), mount_point.as_os_str()]).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_section_size_is_read_from_xfs_info() {
        let text = "\
meta-data=/dev/loop0             isize=512    agcount=4, agsize=65536 blks
         =                       sectsz=512   attr=2, projid32bit=1
data     =                       bsize=4096   blocks=262144, imaxpct=25
naming   =version 2              bsize=4096   ascii-ci=0, ftype=1
log      =internal log           bsize=4096   blocks=16384, version=2
";
        assert_eq!(parse_data_size(text), Ok(1 << 30));
        assert!(parse_data_size("meta-data=x\n").is_err());
    }
}
