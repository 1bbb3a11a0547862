//! Every shell script under images/ passes shellcheck (following `source`d files), and every
//! script that runs on its own fails fast (`set -euo pipefail`), as images/README.md promises.
//! The developer scripts (scripts/*.sh, .ci/run) pass shellcheck too.

use std::path::{Path, PathBuf};
use std::process::Command;

fn images_dir() -> PathBuf {
    testkit::workspace_root().join("images")
}

/// Every `*.sh` under images/, relative to the workspace root (shellcheck resolves the
/// scripts' `# shellcheck source=images/...` directives from there).
fn scripts() -> Vec<PathBuf> {
    let root = testkit::workspace_root();
    let mut scripts: Vec<PathBuf> = walkdir::WalkDir::new(images_dir())
        .into_iter()
        .filter_entry(|e| e.file_name() != "target" && e.file_name() != "node_modules")
        .map(|e| e.unwrap().into_path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "sh"))
        .map(|p| p.strip_prefix(&root).unwrap().to_path_buf())
        .collect();
    scripts.sort();
    scripts
}

fn shellcheck(scripts: &[PathBuf], cwd: &Path) -> std::process::Output {
    Command::new(testkit::require_tool("shellcheck"))
        .current_dir(cwd)
        .args(["--external-sources", "--severity=style", "--format=gcc"])
        .args(scripts)
        .output()
        .expect("run shellcheck")
}

#[test]
fn every_script_under_images_passes_shellcheck() {
    let scripts = scripts();
    // The shared provisioners plus an install and a self-check per role.
    assert!(
        scripts.len() >= 14,
        "expected the provisioning scripts, found {scripts:?}"
    );
    let output = shellcheck(&scripts, &testkit::workspace_root());
    assert!(
        output.status.success(),
        "shellcheck found problems:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_test_command_and_ci_entry_point_pass_shellcheck() {
    let root = testkit::workspace_root();
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(root.join("scripts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .map(|p| p.strip_prefix(&root).unwrap().to_path_buf())
        .collect();
    scripts.push(PathBuf::from(".ci/run"));
    assert!(
        scripts.iter().any(|p| p.ends_with("test.sh")),
        "{scripts:?}"
    );
    let output = shellcheck(&scripts, &root);
    assert!(
        output.status.success(),
        "shellcheck found problems:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn shellcheck_as_run_here_catches_a_real_mistake() {
    // Guards the harness: the flags above must not silence what they are meant to find.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.sh"),
        "#!/usr/bin/env bash\nrm -rf $1/*\n",
    )
    .unwrap();
    let output = shellcheck(&[PathBuf::from("bad.sh")], dir.path());
    assert!(
        !output.status.success(),
        "shellcheck accepted an unquoted rm -rf"
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("SC2086"));
}

#[test]
fn every_runnable_script_fails_fast() {
    let root = testkit::workspace_root();
    for script in scripts() {
        let text = std::fs::read_to_string(root.join(&script)).unwrap();
        assert!(
            text.starts_with("#!/usr/bin/env bash\n"),
            "{}: bash shebang",
            script.display()
        );
        // A library says so in its header (as the tidy test reads it too): it is only ever
        // sourced by scripts that set the options themselves.
        if text
            .lines()
            .take(3)
            .any(|l| l.contains("Sourced, never run"))
        {
            continue;
        }
        assert!(
            text.lines().any(|l| l.trim() == "set -euo pipefail"),
            "{}: missing `set -euo pipefail`",
            script.display()
        );
    }
}
