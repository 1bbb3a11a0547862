//! Read-only commands never build: `cargo xtask images` against moto answers with `cargo`
//! made unrunnable, and prints no duct internals.

use std::process::Command;

#[test]
fn images_runs_no_cargo_build() {
    let moto = testkit::Moto::start();
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    moto.apply_env(&mut command)
        .arg("images")
        // Any nested build would run this and fail.
        .env("CARGO", "/nonexistent/cargo")
        .env_remove("OBSTACK_ARTIFACTS_DIR");
    let output = command.output().expect("run xtask images");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("no obstack AMIs"), "{stdout}");
    assert!(
        !stderr.contains("$ cargo"),
        "it echoed a cargo command: {stderr}"
    );
    for noise in ["Io(", "EnvRemove"] {
        assert!(!stderr.contains(noise), "{stderr}");
        assert!(!stdout.contains(noise), "{stdout}");
    }
}
