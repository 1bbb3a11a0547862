//! Repository hygiene, checked on every test run (after rust-analyzer's `tidy.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    testkit::workspace_root()
}

/// Files git tracks or would track (untracked but not ignored), relative to the root.
fn repo_files() -> Vec<PathBuf> {
    let output = Command::new("git")
        .current_dir(root())
        .args([
            "ls-files",
            "--cached",
            "--others",
            "--exclude-standard",
            "-z",
        ])
        .output()
        .expect("run git ls-files");
    assert!(output.status.success(), "git ls-files failed");
    output
        .stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
        .filter(|p| root().join(p).is_file())
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_default()
}

#[test]
fn every_workspace_crate_describes_itself() {
    let manifests: Vec<PathBuf> = repo_files()
        .into_iter()
        .filter(|p| {
            p.file_name().is_some_and(|n| n == "Cargo.toml") && p.parent() != Some(Path::new(""))
        })
        .collect();
    assert!(
        manifests.len() >= 4,
        "expected the workspace crates, found {manifests:?}"
    );
    for manifest in manifests {
        let text = read(&manifest);
        assert!(
            text.contains("\ndescription = "),
            "{} has no `description`",
            manifest.display()
        );
        // One MSRV for the workspace, checked by clippy's incompatible_msrv in scripts/test.sh.
        assert!(
            text.contains("\nrust-version.workspace = true"),
            "{} does not inherit the workspace's rust-version",
            manifest.display()
        );
    }
}

#[test]
fn shell_scripts_are_executable_and_strict() {
    use std::os::unix::fs::PermissionsExt;
    let scripts: Vec<PathBuf> = repo_files()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "sh") || p.starts_with(".ci"))
        .collect();
    assert!(!scripts.is_empty());
    for script in scripts {
        let text = read(&script);
        let mode = std::fs::metadata(root().join(&script))
            .unwrap()
            .permissions()
            .mode();
        // A library says so in its header; the scripts that source it set the shell options,
        // and it must not look runnable on its own.
        if text
            .lines()
            .take(3)
            .any(|l| l.contains("Sourced, never run"))
        {
            assert!(
                mode & 0o111 == 0,
                "{} is a sourced library but executable (chmod -x)",
                script.display()
            );
            continue;
        }
        assert!(
            text.starts_with("#!"),
            "{} has no shebang",
            script.display()
        );
        assert!(
            text.contains("set -euo pipefail"),
            "{} lacks `set -euo pipefail`",
            script.display()
        );
        assert!(
            mode & 0o111 != 0,
            "{} is not executable (chmod +x)",
            script.display()
        );
    }
}

#[test]
fn no_credentials_or_private_keys_are_committed() {
    // An AWS access key id, a private key block, or a literal password assignment.
    let access_key = |s: &str| {
        s.match_indices("AKIA").any(|(i, _)| {
            s[i + 4..]
                .chars()
                .take(16)
                .filter(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
                .count()
                == 16
        })
    };
    for file in repo_files() {
        let text = read(&file);
        assert!(
            !access_key(&text),
            "{} contains what looks like an AWS access key id",
            file.display()
        );
        assert!(
            !text.contains(&["-----BEGIN", " PRIVATE KEY-----"].concat())
                && !text.contains(&["-----BEGIN RSA", " PRIVATE KEY-----"].concat()),
            "{} contains a private key",
            file.display()
        );
    }
}

#[test]
fn every_xtask_command_is_documented_in_the_readme() {
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("--help")
        .output()
        .expect("run xtask --help");
    let help = String::from_utf8_lossy(&output.stdout);
    let readme = read(Path::new("README.md"));
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // A command's line is indented by two spaces; wrapped descriptions by more.
        .filter(|l| !l[2..].starts_with(' '))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(
        commands.len() >= 10,
        "could not read the command list from --help:\n{help}"
    );
    let missing: Vec<&&str> = commands
        .iter()
        .filter(|c| !readme.contains(&format!("cargo xtask {c}")))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md never shows `cargo xtask <cmd>` for: {missing:?}"
    );
}
