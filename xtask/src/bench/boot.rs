//! `cargo xtask bench boot`: how long each role's image takes to boot as a VM, from qemu's
//! start to every unit active (systemd's boot jobs all done) and to every service answering
//! its health path, on its first boot and when a new instance takes over its data volume,
//! and whether KVM or TCG (software emulation) ran.
//!
//! The figures come from the boot test itself (images/checks/tests/checks/boot.rs), which
//! provisions each role's root with the rehearsal and boots it: this command builds the
//! suite's test binaries, runs that one test with `OBSTACK_BOOT_TIMINGS` naming a file the
//! test writes one JSON line per boot into, and prints them. It needs what the test needs:
//! root, debootstrap, qemu and socat.

use std::path::PathBuf;

use anyhow::Context;
use serde_json::Value;

use crate::cmd::Cmd;
use crate::roles::Registry;

/// The test that boots every role, first boot and replacement.
const BOOT_TEST: &str = "boot::every_role_boots_serves_and_a_replacement_keeps_its_data";

pub fn run(roles: &[String]) -> anyhow::Result<()> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "bench boot provisions roots (debootstrap, chroot) and boots them: run it as root"
    );
    let registry = Registry::load_default()?;
    for role in roles {
        registry.role(role)?;
    }
    for tool in [crate::vm::QEMU, "socat"] {
        crate::cmd::require_tool(tool, crate::vm::INSTALL_HINT)?;
    }
    crate::cmd::require_tool("debootstrap", "install debootstrap (scripts/test.sh does)")?;
    let test_binary = build_checks()?;
    let timings = tempfile::NamedTempFile::new().context("cannot create the timings file")?;
    let mut command = Cmd::new(
        &test_binary,
        ["--exact", BOOT_TEST, "--nocapture", "--test-threads=1"],
    )
    .map(|e| {
        e.dir(crate::project::images_dir().join("checks"))
            .env("OBSTACK_BOOT_TIMINGS", timings.path())
            .stdout_to_stderr()
    });
    if !roles.is_empty() {
        let list = roles.join(",");
        command = command.map(|e| e.env("OBSTACK_BOOT_ROLES", list));
    }
    command
        .run()
        .context("the boot test failed (its output is above)")?;
    let text = std::fs::read_to_string(timings.path())?;
    let records: Vec<Value> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("the boot test wrote a timing that is not JSON")?;
    anyhow::ensure!(!records.is_empty(), "the boot test recorded no boot");
    let seconds = |value: &Value| {
        value
            .as_f64()
            .map(|s| format!("{s:.1} s"))
            .unwrap_or_else(|| "-".into())
    };
    let rows: Vec<[String; 5]> = records
        .iter()
        .map(|record| {
            [
                record["role"].as_str().unwrap_or("?").to_string(),
                record["boot"].as_str().unwrap_or("?").to_string(),
                seconds(&record["units_active_s"]),
                seconds(&record["healthy_s"]),
                record["guest"]
                    .as_str()
                    .unwrap_or("")
                    .trim_start_matches("Startup finished in ")
                    .trim_end_matches('.')
                    .to_string(),
            ]
        })
        .collect();
    let accel = &records[0];
    println!(
        "bench boot: seconds from the VM's start (qemu) to every unit active and to every service healthy, under {} ({})",
        accel["accel"].as_str().unwrap_or("?"),
        accel["accel_why"].as_str().unwrap_or("?")
    );
    print!(
        "{}",
        crate::table::render(
            &["ROLE", "BOOT", "UNITS ACTIVE", "HEALTHY", "GUEST (SYSTEMD)"],
            rows
        )
    );
    Ok(())
}

/// Builds the suite's test binaries (as `scripts/test.sh` does) and returns the image
/// checks' one.
fn build_checks() -> anyhow::Result<PathBuf> {
    let output = Cmd::cargo([
        "test",
        "--workspace",
        "--all-targets",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ])
    .map(|e| e.dir(crate::project::root()))
    .read()?;
    output
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| {
            message["target"]["name"] == "checks"
                && message["target"]["kind"]
                    .as_array()
                    .is_some_and(|kinds| kinds.iter().any(|k| k == "test"))
        })
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .context("cargo built no `checks` test binary (images/checks/tests/checks)")
}
