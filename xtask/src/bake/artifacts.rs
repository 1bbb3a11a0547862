//! The release binaries every image ships, built before anything is hashed or baked.

use std::path::PathBuf;

use anyhow::Context;

use crate::roles::Registry;

/// Where the release build goes: its own target directory, because it is built with
/// `--remap-path-prefix` flags (so the binaries, and with them the input hashes, do not
/// depend on where the checkout or the cargo home is) and must not thrash `target/release`.
pub fn cargo_target_dir() -> PathBuf {
    crate::project::target_dir().join("bake").join("cargo")
}

/// Builds every workspace binary an image ships (the registry's) in release mode and
/// returns the directory holding them.
///
/// `OBSTACK_ARTIFACTS_DIR` names a directory of prebuilt binaries instead (used by tests
/// and by CI jobs that built them in an earlier step); nothing is built then.
pub fn build_release(registry: &Registry) -> anyhow::Result<PathBuf> {
    let binaries = registry.workspace_binaries();
    if let Some(dir) = std::env::var_os("OBSTACK_ARTIFACTS_DIR") {
        let dir = PathBuf::from(dir);
        for binary in &binaries {
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
    // Each binary is its package's (the workspace names packages after their binaries).
    let mut args: Vec<std::ffi::OsString> = ["build", "--release", "--locked"]
        .map(std::ffi::OsString::from)
        .to_vec();
    for binary in &binaries {
        args.extend(["-p".into(), binary.into()]);
    }
    args.extend(["--target-dir".into(), target_dir.clone().into_os_string()]);
    crate::cmd::Cmd::cargo(args)
        .map(|e| {
            e.dir(&root)
                // Unit-separated, so a path with spaces stays one flag.
                .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\u{1f}"))
                .env_remove("RUSTFLAGS")
                .stdout_to_stderr()
        })
        .run()
        .with_context(|| format!("the release build of {} failed", binaries.join(", ")))?;
    Ok(target_dir.join("release"))
}
