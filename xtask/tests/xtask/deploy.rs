//! `cargo xtask deploy` / `destroy` / `status` as a user meets them: bad input and missing
//! AMIs end in one actionable line, before anything is created. AMI selection and the
//! generated variables are tested against moto inside the crate (deploy/select.rs).

use std::path::Path;
use std::process::{Command, Output};

fn xtask(target_dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command
        .args(args)
        // Generated files go to a scratch target dir, never the checkout's.
        .env("CARGO_TARGET_DIR", target_dir)
        .env_remove("TF_VAR_allowed_web_cidrs");
    command
}

/// The single error line, after checking the command failed.
fn error_line(output: &Output) -> String {
    assert!(!output.status.success(), "the command succeeded");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .rfind(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no `error:` line in:\n{stderr}"))
        .to_string();
    // clap ends its own (parse-time) errors with a pointer to --help.
    let last = stderr
        .lines()
        .rfind(|l| !l.trim().is_empty() && !l.starts_with("For more information, try"));
    assert_eq!(last, Some(line.as_str()), "the error is the last line");
    line
}

fn var_file(dir: &Path) -> String {
    let path = dir.join("mine.tfvars");
    std::fs::write(&path, "allowed_web_cidrs = [\"198.51.100.7/32\"]\n").unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn deploy_without_a_bake_says_to_bake_and_writes_nothing() {
    testkit::require_tool("terraform");
    let moto = testkit::Moto::start();
    let scratch = tempfile::tempdir().unwrap();
    let vars = var_file(scratch.path());
    let mut command = xtask(
        scratch.path(),
        &["deploy", "--latest", "--auto-approve", "--var-file", &vars],
    );
    moto.apply_env(&mut command);
    let output = command.output().unwrap();
    let line = error_line(&output);
    let registry = xtask::roles::Registry::load(&testkit::workspace_root().join("images")).unwrap();
    for role in registry.names() {
        assert!(line.contains(&format!("no AMI for role {role}")), "{line}");
    }
    assert!(line.contains("run `cargo xtask bake` first"), "{line}");
    assert!(
        !scratch.path().join("deploy").exists(),
        "nothing is generated before the AMIs are known"
    );
}

#[test]
fn bad_flags_are_refused_before_touching_aws() {
    let scratch = tempfile::tempdir().unwrap();
    let vars = var_file(scratch.path());
    let cases: [(&[&str], &str); 4] = [
        (
            &["deploy", "--ami", "web=ami-12345678", "--var-file", &vars],
            "unknown role `web`",
        ),
        (
            &["deploy", "--ami", "app=nope", "--var-file", &vars],
            "not an AMI id",
        ),
        (
            &["deploy", "--health-timeout", "soon", "--var-file", &vars],
            "invalid value 'soon' for '--health-timeout <HEALTH_TIMEOUT>': expected number at 0; write a duration like 90s, 10m or 1h",
        ),
        (
            &["deploy", "--var-file", "/nonexistent/x.tfvars"],
            "--var-file /nonexistent/x.tfvars: no such file",
        ),
    ];
    for (args, expected) in cases {
        // Point AWS at a closed port: a test that reached AWS would fail differently.
        let output = xtask(scratch.path(), args)
            .env(
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", testkit::free_port()),
            )
            .env("AWS_REGION", "us-east-1")
            .output()
            .unwrap();
        let line = error_line(&output);
        assert!(line.contains(expected), "{args:?}: {line}");
    }
}

#[test]
fn destroy_without_a_deployment_from_here_says_so() {
    testkit::require_tool("terraform");
    let scratch = tempfile::tempdir().unwrap();
    let vars = var_file(scratch.path());
    let output = xtask(
        scratch.path(),
        &["destroy", "--auto-approve", "--var-file", &vars],
    )
    .output()
    .unwrap();
    let line = error_line(&output);
    assert!(
        line.contains("nothing to destroy from this checkout"),
        "{line}"
    );
    assert!(line.contains("obstack.auto.tfvars.json"), "{line}");
}
