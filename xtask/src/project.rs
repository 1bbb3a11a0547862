//! Where things are in the checkout.

use std::path::{Path, PathBuf};

/// The workspace root, resolved from this crate's manifest so `cargo xtask` works from
/// any directory inside the checkout. `OBSTACK_PROJECT_ROOT` names another copy of the
/// checkout (the workflow rehearsal runs the suite's xtask binary on one).
pub fn root() -> PathBuf {
    if let Some(root) = std::env::var_os("OBSTACK_PROJECT_ROOT").filter(|r| !r.is_empty()) {
        return PathBuf::from(root);
    }
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest_dir.to_path_buf())
}

/// `images/` in the checkout, or `OBSTACK_IMAGES_DIR` when set (tests bake from a copy).
pub fn images_dir() -> PathBuf {
    std::env::var_os("OBSTACK_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("images"))
}

/// `target/` in the checkout (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}
