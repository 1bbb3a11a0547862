//! Packer, as the bake drives it: its version, `packer init` and `packer build` commands.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The oldest Packer the templates are tested with (Debian's package).
pub const MINIMUM: Version = Version(1, 6, 6);
/// From this version on the Amazon builder is an external plugin, installed by `packer init`.
pub const PLUGINS_SINCE: Version = Version(1, 7, 0);
/// From this version on `packer init` fetches official plugins from releases.hashicorp.com,
/// the only place the Amazon plugin is published since 1.3.10: an older Packer falls back
/// to 1.3.9 on GitHub, or fails, instead of installing the pin in images/plugins.pkr.hcl.
pub const RELEASE_SITE_PLUGINS_SINCE: Version = Version(1, 14, 0);

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

/// Whether `version` can run this bake. A golden bake builds with the Amazon plugin pinned in
/// images/plugins.pkr.hcl (a bake input), so it needs a Packer that installs that pin; a
/// smoke bake may also use a Packer with the builder built in (Debian's 1.6.6, the tests').
pub fn check_for_bake(version: Version, smoke: bool) -> anyhow::Result<()> {
    if version >= RELEASE_SITE_PLUGINS_SINCE || (smoke && version < PLUGINS_SINCE) {
        return Ok(());
    }
    let want = format!(
        "install Packer >= {RELEASE_SITE_PLUGINS_SINCE} (https://developer.hashicorp.com/packer/install)"
    );
    if version < PLUGINS_SINCE {
        anyhow::bail!(
            "Packer {version} has its own old Amazon builder built in, not the plugin pinned in images/plugins.pkr.hcl that a golden bake uses: {want} (Debian's Packer is for the tests and --smoke)"
        );
    }
    anyhow::bail!(
        "Packer {version} cannot install the Amazon plugin pinned in images/plugins.pkr.hcl (published only on releases.hashicorp.com, where Packer looks for plugins from {RELEASE_SITE_PLUGINS_SINCE} on): {want}"
    )
}

/// Where the bake's Packer installs and loads plugins: a directory of its own, so a build
/// loads the pinned plugin and never a newer one the user installed (without
/// `required_plugins` in the template, Packer picks the highest version it finds).
pub fn plugin_dir() -> PathBuf {
    crate::project::target_dir()
        .join("bake")
        .join("packer-plugins")
}

/// `packer init` on the plugins file when this Packer loads builders as plugins (>= 1.7);
/// older ones have the Amazon builder built in and reject `required_plugins`.
pub fn init_if_needed(version: Version, images_dir: &Path) -> anyhow::Result<()> {
    if version < PLUGINS_SINCE {
        return Ok(());
    }
    let plugins = plugin_dir();
    std::fs::create_dir_all(&plugins)
        .with_context(|| format!("cannot create {}", plugins.display()))?;
    crate::cmd::Cmd::new("packer", ["init".into(), images_dir.join("plugins.pkr.hcl")])
        .map(|e| {
            e.env("CHECKPOINT_DISABLE", "1")
                .env("PACKER_PLUGIN_PATH", &plugins)
                .stdout_to_stderr()
        })
        .run()
        .context("`packer init` could not install the Amazon plugin; check your network access to releases.hashicorp.com")?;
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
    crate::cmd::Cmd::new("packer", args).map(|e| {
        e.env("CHECKPOINT_DISABLE", "1")
            .env("PACKER_PLUGIN_PATH", plugin_dir())
    })
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

    #[test]
    fn a_golden_bake_needs_a_packer_that_installs_the_pinned_plugin() {
        let modern = Version(1, 14, 3);
        assert!(check_for_bake(modern, false).is_ok());
        assert!(check_for_bake(modern, true).is_ok());
        // Debian's 1.6.6: its built-in builder serves smoke bakes only.
        assert!(check_for_bake(MINIMUM, true).is_ok());
        let debian = check_for_bake(MINIMUM, false).unwrap_err().to_string();
        assert!(
            debian.contains("Packer 1.6.6") && debian.contains(">= 1.14.0"),
            "{debian}"
        );
        // 1.7 to 1.13 load plugins but cannot fetch the pin: refused for both.
        for smoke in [false, true] {
            let error = check_for_bake(Version(1, 11, 2), smoke)
                .unwrap_err()
                .to_string();
            assert!(error.contains("releases.hashicorp.com"), "{error}");
        }
    }
}
