//! The two programs a tunnel needs: the AWS CLI (`aws ssm start-session` calls StartSession)
//! and the Session Manager plugin it runs (which opens the local port). Both are looked up
//! before anything else, so a missing one is one line naming it and how to install it.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use super::TunnelError;

const AWS_CLI: &str = "aws";
const AWS_CLI_INSTALL: &str =
    "AWS CLI v2 (https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html)";
const PLUGIN: &str = "session-manager-plugin";
const PLUGIN_INSTALL: &str = "the Session Manager plugin for the AWS CLI \
     (https://docs.aws.amazon.com/systems-manager/latest/userguide/session-manager-working-with-install-plugin.html)";

/// Where the AWS CLI and the Session Manager plugin are.
#[derive(Debug, Clone)]
pub struct Tools {
    aws: PathBuf,
    plugin: PathBuf,
    search_path: OsString,
}

impl Tools {
    /// Both programs on `PATH`, or an error naming the missing one(s) and how to install them.
    pub fn on_path() -> Result<Tools, TunnelError> {
        Tools::search(&std::env::var_os("PATH").unwrap_or_default())
    }

    /// Both programs in the directories of `path` (a `PATH`-style list).
    pub fn search(path: &OsStr) -> Result<Tools, TunnelError> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let find = |name: &str| which::which_in(name, Some(path), &cwd).ok();
        match (find(AWS_CLI), find(PLUGIN)) {
            (Some(aws), Some(plugin)) => {
                // The CLI runs the plugin by name: the one found here goes first on its PATH.
                let dirs = plugin
                    .parent()
                    .map(Path::to_path_buf)
                    .into_iter()
                    .chain(std::env::split_paths(path));
                let search_path =
                    std::env::join_paths(dirs).unwrap_or_else(|_| path.to_os_string());
                Ok(Tools {
                    aws,
                    plugin,
                    search_path,
                })
            }
            (None, Some(_)) => Err(TunnelError::MissingTools(format!(
                "`{AWS_CLI}` (the AWS CLI) is not on PATH; the Session Manager tunnels run \
                 `aws ssm start-session`: install {AWS_CLI_INSTALL}"
            ))),
            (Some(_), None) => Err(TunnelError::MissingTools(format!(
                "`{PLUGIN}` is not on PATH; the AWS CLI needs it for Session Manager tunnels: \
                 install {PLUGIN_INSTALL}"
            ))),
            (None, None) => Err(TunnelError::MissingTools(format!(
                "neither `{AWS_CLI}` (the AWS CLI) nor `{PLUGIN}` is on PATH; the Session \
                 Manager tunnels need both: install {AWS_CLI_INSTALL} and {PLUGIN_INSTALL}"
            ))),
        }
    }

    pub fn aws(&self) -> &Path {
        &self.aws
    }

    pub fn plugin(&self) -> &Path {
        &self.plugin
    }

    /// The `PATH` the CLI runs with: the plugin's directory first.
    pub fn search_path(&self) -> &OsStr {
        &self.search_path
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn program(dir: &Path, name: &str) {
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn a_missing_program_is_named_with_how_to_install_it() {
        let cli = tempfile::tempdir().unwrap();
        let plugin = tempfile::tempdir().unwrap();
        let empty = tempfile::tempdir().unwrap();
        program(cli.path(), "aws");
        program(plugin.path(), "session-manager-plugin");
        let path = |dirs: &[&Path]| std::env::join_paths(dirs).unwrap();

        let found = Tools::search(&path(&[cli.path(), plugin.path()])).unwrap();
        assert_eq!(found.aws(), cli.path().join("aws"));
        assert_eq!(
            std::env::split_paths(found.search_path()).next().as_deref(),
            Some(plugin.path()),
            "the plugin found here is the one the CLI runs"
        );

        let error = Tools::search(&path(&[cli.path(), empty.path()])).unwrap_err();
        let line = error.to_string();
        assert!(
            line.starts_with("`session-manager-plugin` is not on PATH"),
            "{line}"
        );
        assert!(
            line.contains("session-manager-working-with-install-plugin"),
            "{line}"
        );

        let line = Tools::search(&path(&[plugin.path()]))
            .unwrap_err()
            .to_string();
        assert!(
            line.starts_with("`aws` (the AWS CLI) is not on PATH"),
            "{line}"
        );
        assert!(line.contains("getting-started-install"), "{line}");

        let line = Tools::search(&path(&[empty.path()]))
            .unwrap_err()
            .to_string();
        assert!(line.contains("neither `aws`"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }
}
