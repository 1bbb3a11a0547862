//! Which environment variables cargo sets for the crate it is building or running, as
//! opposed to the user's own cargo settings. A nested cargo build must not inherit them:
//! some build scripts (ring's) rerun when `CARGO_MANIFEST_DIR` changes, so passing them on
//! makes every nested build recompile ring and everything above it.
//!
//! xtask's `cmd::Cmd::cargo` and testkit's `workspace_bin` both use this list.

/// Whether cargo set `name` for the crate it runs (not a user setting like `CARGO_HOME`).
pub fn is_set_by_cargo_for_a_crate(name: &str) -> bool {
    const EXACT: [&str; 8] = [
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
    ];
    EXACT.contains(&name) || name.starts_with("CARGO_PKG_") || name.starts_with("CARGO_BIN_EXE_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_crates_own_cargo_variables_are_dropped() {
        for name in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_BIN_EXE_xtask",
        ] {
            assert!(is_set_by_cargo_for_a_crate(name), "{name}");
        }
        for name in [
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_PROFILE_RELEASE_LTO",
            "PATH",
        ] {
            assert!(!is_set_by_cargo_for_a_crate(name), "{name}");
        }
    }
}
