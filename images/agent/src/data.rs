//! A role's `[data]` section: where its state lives on the instance's EBS data volume, which
//! the `mount` step mounts before any of the role's services start (images/README.md).
//!
//! Read by the agent (to mount) and by xtask's role registry and the image checks (to keep
//! every service's data path under the mount point, and the units ordered after the mount).

use std::collections::BTreeSet;
use std::path::{Component, Path};

use serde::Deserialize;

use crate::spec::Mode;

/// Where a role's data volume is mounted and what is made on it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// Absolute path the volume is mounted at (the services' own data directory).
    pub mount_point: String,
    /// The filesystem a blank volume is formatted with, and the only one mounted.
    #[serde(default)]
    pub filesystem: Filesystem,
    /// Owner, group and mode of the volume's top directory.
    pub owner: String,
    pub group: String,
    #[serde(default = "default_dir_mode")]
    pub mode: Mode,
    /// The smallest volume, in GiB, the role's services can run on; a smaller one is refused.
    pub min_size_gib: u64,
    /// The systemd units that keep their data there: they wait for the mount.
    pub services: Vec<String>,
    /// Directories created on the volume (missing ones only; owner and mode always set).
    #[serde(default)]
    pub dirs: Vec<DataDir>,
}

/// A directory on the data volume.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataDir {
    /// Absolute path under the mount point.
    pub path: String,
    /// Default: the volume's owner and group.
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default = "default_dir_mode")]
    pub mode: Mode,
}

/// The filesystems the mount step formats and mounts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    #[default]
    Ext4,
    Xfs,
}

impl Filesystem {
    /// The name blkid reports and `mount -t` takes.
    pub fn name(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
        }
    }
}

fn default_dir_mode() -> Mode {
    Mode(0o750)
}

/// Directories a data volume must never be mounted over: the system would lose them.
const SYSTEM_DIRS: &[&str] = &[
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/opt", "/proc", "/root", "/run",
    "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/var/lib", "/var/log",
];

impl DataSpec {
    /// Internal consistency: absolute paths, dirs inside the mount point, a usable size.
    pub fn check(&self) -> Result<(), String> {
        check_path(&self.mount_point, "data mount_point")?;
        let trimmed = match self.mount_point.trim_end_matches('/') {
            "" => "/",
            path => path,
        };
        if SYSTEM_DIRS.contains(&trimmed) {
            return Err(format!(
                "data mount_point `{}` is a system directory; mount the volume at the \
                 service's own data directory, like /var/lib/<service>",
                self.mount_point
            ));
        }
        if self.min_size_gib == 0 {
            return Err("data min_size_gib must be at least 1".to_string());
        }
        if self.owner.is_empty() || self.group.is_empty() {
            return Err("data owner and group must name a user and a group".to_string());
        }
        if self.services.is_empty() {
            return Err(
                "data services must name the units that keep their data on the volume".into(),
            );
        }
        let mut seen = BTreeSet::new();
        for dir in &self.dirs {
            check_path(&dir.path, "data dir")?;
            if !self.holds(&dir.path) || Path::new(&dir.path) == Path::new(&self.mount_point) {
                return Err(format!(
                    "data dir `{}` is not under the mount point `{}`",
                    dir.path, self.mount_point
                ));
            }
            if !seen.insert(dir.path.trim_end_matches('/')) {
                return Err(format!("data dir `{}` is listed twice", dir.path));
            }
        }
        Ok(())
    }

    /// Whether `path` is the mount point or lies under it (component-wise, so
    /// `/var/lib/lokix` is not under `/var/lib/loki`).
    pub fn holds(&self, path: &str) -> bool {
        Path::new(path).starts_with(&self.mount_point)
    }
}

fn check_path(path: &str, what: &str) -> Result<(), String> {
    let parsed = Path::new(path);
    if !parsed.is_absolute() {
        return Err(format!("{what} `{path}` must be absolute"));
    }
    if parsed.components().any(|c| c == Component::ParentDir) {
        return Err(format!("{what} `{path}` must not contain `..`"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DataSpec, String> {
        let spec: DataSpec = toml::from_str(text).map_err(|e| e.to_string())?;
        spec.check().map(|()| spec)
    }

    const GOOD: &str = r#"
        mount_point = "/var/lib/grafana"
        owner = "grafana"
        group = "grafana"
        min_size_gib = 1
        services = ["grafana-server.service"]
        [[dirs]]
        path = "/var/lib/grafana/plugins"
        mode = "0700"
    "#;

    #[test]
    fn a_data_section_parses_with_defaults() {
        let spec = parse(GOOD).unwrap();
        assert_eq!(spec.filesystem, Filesystem::Ext4);
        assert_eq!(spec.mode, Mode(0o750));
        assert_eq!(spec.dirs[0].mode, Mode(0o700));
        assert!(spec.holds("/var/lib/grafana/grafana.db"));
        assert!(!spec.holds("/var/lib/grafana2"));
        assert!(!spec.holds("/var/log/grafana"));
        let xfs = parse(&format!("filesystem = \"xfs\"\n{GOOD}")).unwrap();
        assert_eq!(xfs.filesystem.name(), "xfs");
    }

    #[test]
    fn mistakes_are_refused_with_the_reason() {
        for (from, to, why) in [
            (
                "\"/var/lib/grafana\"\n",
                "\"var/lib/grafana\"\n",
                "absolute",
            ),
            (
                "\"/var/lib/grafana\"\n",
                "\"/var/lib\"\n",
                "system directory",
            ),
            ("\"/var/lib/grafana\"\n", "\"/\"\n", "system directory"),
            ("min_size_gib = 1", "min_size_gib = 0", "at least 1"),
            (
                "\"/var/lib/grafana/plugins\"",
                "\"/var/lib/other\"",
                "not under",
            ),
            (
                "\"/var/lib/grafana/plugins\"",
                "\"/var/lib/grafana\"",
                "not under",
            ),
            (
                "\"/var/lib/grafana/plugins\"",
                "\"/var/lib/grafana/../x\"",
                "`..`",
            ),
            ("[\"grafana-server.service\"]", "[]", "units"),
            ("owner = \"grafana\"", "owner = \"\"", "owner and group"),
            (
                "min_size_gib = 1",
                "min_size_gib = 1\nsize = 3",
                "unknown field",
            ),
            (
                "group = \"grafana\"",
                "group = \"grafana\"\nfilesystem = \"vfat\"",
                "unknown variant",
            ),
        ] {
            assert!(GOOD.contains(from), "{from}");
            let error = parse(&GOOD.replacen(from, to, 1)).unwrap_err();
            assert!(error.contains(why), "{to}: {error}");
        }
        let twice = format!("{GOOD}[[dirs]]\npath = \"/var/lib/grafana/plugins/\"\n");
        assert!(parse(&twice).unwrap_err().contains("twice"));
    }
}
