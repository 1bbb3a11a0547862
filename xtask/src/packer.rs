//! Packer, as the bake drives it: its version, `packer init` and `packer build` commands.

use std::path::Path;

use anyhow::Context;

/// The oldest Packer the templates are tested with (Debian's package).
pub const MINIMUM: Version = Version(1, 6, 6);
/// From this version on the Amazon builder is an external plugin, installed by `packer init`.
pub const PLUGINS_SINCE: Version = Version(1, 7, 0);

const INSTALL_HINT: &str = "install Packer >= 1.6.6 (https://developer.hashicorp.com/packer/install or `apt-get install packer`)";

/// A Packer version, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl Version {
    /// Parses the first line of `packer version`, e.g. `Packer v1.6.6` or `Packer v1.11.2`.
    pub fn parse(output: &str) -> Option<Version> {
        let first = output.lines().next()?;
        let text = first
            .split_whitespace()
            .find_map(|word| word.strip_prefix('v'))?;
        let mut parts = text.split(['.', '-', '+']).map(str::parse::<u32>);
        Some(Version(
            parts.next()?.ok()?,
            parts.next()?.ok()?,
            parts.next()?.ok()?,
        ))
    }
}

/// The installed Packer's version; a one-line error when it is missing or too old.
pub fn check_installed() -> anyhow::Result<Version> {
    crate::cmd::require_tool("packer", INSTALL_HINT)?;
    let output = crate::cmd::Cmd::new("packer", ["version"])
        .map(|e| e.env("CHECKPOINT_DISABLE", "1"))
        .read_quietly()
        .context("`packer version` failed; reinstall Packer")?;
    let version = Version::parse(&output).with_context(|| {
        format!(
            "cannot read the Packer version from `{}`; {INSTALL_HINT}",
            output.lines().next().unwrap_or_default()
        )
    })?;
    anyhow::ensure!(
        version >= MINIMUM,
        "Packer {version} is too old: {INSTALL_HINT}"
    );
    Ok(version)
}

/// `packer init` on the plugins file when this Packer loads builders as plugins (>= 1.7);
/// older ones have the Amazon builder built in and reject `required_plugins`.
pub fn init_if_needed(version: Version, images_dir: &Path) -> anyhow::Result<()> {
    if version < PLUGINS_SINCE {
        return Ok(());
    }
    crate::cmd::Cmd::new("packer", ["init".into(), images_dir.join("plugins.pkr.hcl")])
        .map(|e| e.env("CHECKPOINT_DISABLE", "1").stdout_to_stderr())
        .run()
        .context("`packer init` could not install the Amazon plugin; check your network access to github.com")?;
    Ok(())
}

/// The directory of the one template every role is built from (`-var role=...` picks the role).
pub fn template_dir(images_dir: &Path) -> std::path::PathBuf {
    images_dir.join("common").join("packer")
}

/// `packer build` of the template directory with a generated var file.
pub fn build_command(template_dir: &Path, var_file: &Path, smoke: bool) -> crate::cmd::Cmd {
    let mut args = vec![
        "build".to_string(),
        "-color=false".to_string(),
        format!("-var-file={}", var_file.display()),
    ];
    if smoke {
        args.push("-only=amazon-ebs.smoke".to_string());
    } else {
        args.push("-only=amazon-ebs.golden".to_string());
    }
    args.push(template_dir.display().to_string());
    crate::cmd::Cmd::new("packer", args).map(|e| e.env("CHECKPOINT_DISABLE", "1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_compare() {
        assert_eq!(Version::parse("Packer v1.6.6\n"), Some(Version(1, 6, 6)));
        assert_eq!(
            Version::parse("Packer v1.11.2\n\nYour version of Packer is out of date!"),
            Some(Version(1, 11, 2))
        );
        assert_eq!(Version::parse("Packer v1.9.0-dev"), Some(Version(1, 9, 0)));
        assert_eq!(Version::parse("nonsense"), None);
        assert!(Version(1, 6, 6) < PLUGINS_SINCE);
        assert!(Version(1, 10, 0) > PLUGINS_SINCE);
        assert!(Version(1, 5, 9) < MINIMUM);
    }
}
