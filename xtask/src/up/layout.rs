//! Where a local stack keeps its files: everything under one directory (default
//! `target/stack/`), so `rm -rf target/stack` forgets a stack completely.

use std::path::{Path, PathBuf};

/// Overrides the stack directory; tests point it at a temporary directory.
pub const STACK_DIR_ENV: &str = "OBSTACK_STACK_DIR";

#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// `$OBSTACK_STACK_DIR`, else `target/stack` in the checkout.
    pub fn from_env() -> Layout {
        let dir = std::env::var_os(STACK_DIR_ENV)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::project::target_dir().join("stack"));
        Layout::at(dir)
    }

    pub fn at(dir: PathBuf) -> Layout {
        // Configs name absolute paths under the root, so it must not depend on the cwd.
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        Layout { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The machine's filesystem as the agent renders it: `<root>/etc/...`, `<root>/var/lib/...`.
    /// Every role shares it, as if the four instances were one host.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// Stdout and stderr of each component.
    pub fn log(&self, component: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{component}.log"))
    }

    /// The tags file the agent reads instead of the instance's EC2 tags.
    pub fn tags_file(&self) -> PathBuf {
        self.dir.join("tags.json")
    }

    /// What runs, for `down` and `ps`.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// A path the configs name (e.g. `/var/lib/loki`), under the stack's root.
    pub fn in_root(&self, absolute: &str) -> PathBuf {
        self.root().join(absolute.trim_start_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_the_configs_name_land_under_the_root() {
        let layout = Layout::at(PathBuf::from("/tmp/stack"));
        assert_eq!(
            layout.in_root("/var/lib/loki"),
            PathBuf::from("/tmp/stack/root/var/lib/loki")
        );
        assert_eq!(layout.log("app"), PathBuf::from("/tmp/stack/logs/app.log"));
    }

    #[test]
    fn a_relative_stack_dir_is_made_absolute() {
        let layout = Layout::at(PathBuf::from("relative/stack"));
        assert!(layout.dir().is_absolute(), "{}", layout.dir().display());
    }
}
