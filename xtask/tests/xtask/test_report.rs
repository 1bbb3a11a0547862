//! The end of `scripts/test.sh` (`scripts/test_report.py`): a phase table, the test count
//! against the floor, the ten slowest tests, and the failed tests as the very last lines, with
//! an exit status that fails the run when a test failed or tests went missing.

use std::path::Path;
use std::process::{Command, Output};

const JUNIT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="nextest-run" tests="3" failures="1" errors="0">
  <testsuite name="xtask::xtask" tests="3" failures="1">
    <testcase name="up::runs" classname="xtask::xtask" time="75.5"/>
    <testcase name="bake::smoke" classname="xtask::xtask" time="1.25"/>
    <testcase name="verify::broken" classname="xtask::xtask" time="3.0">
      <failure type="test failure">assertion failed</failure>
    </testcase>
  </testsuite>
</testsuites>
"#;

fn report(dir: &Path, junit: &str, floor: u32, phases: &[&str]) -> Output {
    std::fs::write(dir.join("junit.xml"), junit).unwrap();
    std::fs::write(dir.join("floor"), format!("{floor}\n")).unwrap();
    Command::new(testkit::require_tool("python3"))
        .arg(testkit::workspace_root().join("scripts/test_report.py"))
        .arg("--junit")
        .arg(dir.join("junit.xml"))
        .arg("--floor")
        .arg(dir.join("floor"))
        .args(phases)
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_failed_test_fails_the_run_and_is_named_in_the_last_lines() {
    let dir = tempfile::tempdir().unwrap();
    let output = report(
        dir.path(),
        JUNIT,
        3,
        &["install=62", "fmt=1", "build + clippy=301", "tests=445"],
    );
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    let last: Vec<&str> = out.lines().rev().take(2).collect();
    assert_eq!(
        last,
        ["  xtask::xtask verify::broken", "FAILED: 1 test(s):"],
        "{out}"
    );
    // The table: every phase with its time, and the total.
    for line in [
        "  install         1m 02s",
        "  build + clippy  5m 01s",
        "  tests           7m 25s",
        "  total           13m 29s",
    ] {
        assert!(out.contains(line), "no `{line}` in:\n{out}");
    }
    assert!(
        out.contains("tests run: 3 (2 passed, 1 failed; floor 3)"),
        "{out}"
    );
    // Slowest first.
    let up = out.find("1m 16s  xtask::xtask up::runs").expect(&out);
    let verify = out.find("0m 03s  xtask::xtask verify::broken").expect(&out);
    assert!(up < verify, "{out}");
}

#[test]
fn fewer_tests_than_the_floor_fail_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let passing = JUNIT.replace(
        r#"<failure type="test failure">assertion failed</failure>"#,
        "",
    );
    let output = report(dir.path(), &passing, 3, &["tests=10"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let output = report(dir.path(), &passing, 4, &["tests=10"]);
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(out.contains("3 tests ran, fewer than the 4"), "{out}");
}
