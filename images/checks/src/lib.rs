//! Checks over the image definitions live in `tests/`; this library holds what every one of
//! them starts from: the role registry of the `images/` tree under test.

use std::path::PathBuf;
use std::sync::OnceLock;

use xtask::roles::Registry;

/// `images/` in the checkout, or `OBSTACK_IMAGES_DIR` when set (as for xtask: to check a
/// copy, e.g. one with a fifth role).
pub fn images_dir() -> PathBuf {
    xtask::project::images_dir()
}

/// The role registry of [`images_dir`], read once per test binary.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        Registry::load(&images_dir()).unwrap_or_else(|e| panic!("the role registry: {e}"))
    })
}

/// Every role's name, in the registry's (start) order.
pub fn roles() -> Vec<&'static str> {
    registry().names()
}
