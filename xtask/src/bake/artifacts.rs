//! The release binaries every image ships, built before anything is hashed or baked.

use std::path::PathBuf;

use anyhow::Context;

use crate::cmd::ExpressionExt;

/// Where the release build goes: its own target directory, because it is built with
/// `--remap-path-prefix` flags (so the binaries, and with them the input hashes, do not
/// depend on where the checkout or the cargo home is) and must not thrash `target/release`.
pub fn cargo_target_dir() -> PathBuf {
    crate::project::target_dir().join("bake").join("cargo")
}

/// Builds release `demo-app` and `stack-agent` and returns the directory holding both.
///
/// `OBSTACK_ARTIFACTS_DIR` names a directory of prebuilt binaries instead (used by tests
/// and by CI jobs that built them in an earlier step); nothing is built then.
pub fn build_release() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("OBSTACK_ARTIFACTS_DIR") {
        let dir = PathBuf::from(dir);
        for binary in ["demo-app", "stack-agent"] {
            anyhow::ensure!(
                dir.join(binary).is_file(),
                "OBSTACK_ARTIFACTS_DIR={} has no `{binary}` binary; unset it to build the release binaries",
                dir.display()
            );
        }
        return Ok(dir);
    }
    let root = crate::project::root();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    let mut rustflags = vec![format!("--remap-path-prefix={}=/obstack", root.display())];
    if let Some(cargo_home) = cargo_home {
        rustflags.push(format!(
            "--remap-path-prefix={}=/cargo",
            cargo_home.display()
        ));
    }
    let target_dir = cargo_target_dir();
    crate::cmd::cargo(
        [
            "build",
            "--release",
            "--locked",
            "-p",
            "demo-app",
            "-p",
            "stack-agent",
            "--target-dir",
        ]
        .map(std::ffi::OsString::from)
        .into_iter()
        .chain([target_dir.clone().into_os_string()]),
    )
    .dir(&root)
    // Unit-separated, so a path with spaces stays one flag.
    .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\u{1f}"))
    .env_remove("RUSTFLAGS")
    .stdout_to_stderr()
    .run_logged()
    .context("the release build of demo-app and stack-agent failed")?;
    Ok(target_dir.join("release"))
}
