//! The GitHub workflows, rehearsed here (workflow_support): every job in `needs` order, every
//! `run:` step with bash as a non-root user, `uses:` steps by stand-ins.
//!
//! - `nightly-bake.yml` against moto enforcing the roles' policies (the credentials stand-in
//!   hands out the keys of the moto user of the role asked for, and refuses a session longer
//!   than the README tells people to allow), Terraform's stand-in (testkit::FakeTerraform) and
//!   a loopback Grafana for deploy's health gate. Its `cargo` runs the suite's xtask binary on
//!   the job's checkout; it adds `--smoke` to `bake` (moto cannot boot a builder), drops
//!   `--tunnel` once the command's help lists it (no Session Manager here: the tunnels are
//!   rehearsed by tunnels.rs and open.rs), and makes `verify` check
//!   its command line, then report the verdict the test chose (no stack answers here). Over
//!   four nights: a release is baked, staged, destroyed and promoted; a new one replaces it; a
//!   night that bakes nothing stages the candidate from its own older revision; a person rolls
//!   `stable` back, and the next night leaves it there.
//! - `ci.yml` as a user with sudo, as GitHub's runners have: scripts/test.sh with stand-ins for
//!   the toolchain (each checking the version asked for); its `cargo nextest run` records who
//!   ran which tests, so the test checks that the tests needing root ran as root and the rest
//!   as the runner user.
//!
//! These tests create a system user: they need root (test group root-users).

use crate::workflow_support::{JobRun, Outcome, Rehearsal, SystemUser, UsesCall, UsesEffect};

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

const BAKE_ROLE: &str = "arn:aws:iam::123456789012:role/obstack-nightly-bake";
const DEPLOY_ROLE: &str = "arn:aws:iam::123456789012:role/obstack-nightly-deploy";
const STATE_BUCKET: &str = "obstack-rehearsal-state";
const STAGING_NAME: &str = "obstack-staging";
/// IAM's default MaxSessionDuration: what a role allows unless the README says to raise it.
const DEFAULT_SESSION: u64 = 3600;

fn root() -> PathBuf {
    testkit::workspace_root()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn nightly() -> String {
    read(&root().join(".github/workflows/nightly-bake.yml"))
}

fn deploy_policy() -> String {
    read(&root().join("terraform/deploy-policy.json")).replace("STATE_BUCKET", STATE_BUCKET)
}

fn without_statement(policy: &str, sid: &str) -> String {
    let mut policy: Value = serde_json::from_str(policy).unwrap();
    policy["Statement"]
        .as_array_mut()
        .unwrap()
        .retain(|s| s["Sid"] != sid);
    policy.to_string()
}

/// The bake policy plus what only the smoke source calls (its unused port-0 rule in the
/// temporary security group; images/checks/tests/checks/bake_policy.rs, SMOKE_ONLY, says why):
/// the rehearsal's bake is a smoke bake.
fn with_smoke_only(policy: &str) -> String {
    let mut policy: Value = serde_json::from_str(policy).unwrap();
    policy["Statement"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "Sid": "SmokeSourceOnly",
            "Effect": "Allow",
            "Action": "ec2:AuthorizeSecurityGroupIngress",
            "Resource": "*"
        }));
    policy.to_string()
}

/// The repository variables of a repository set up as README.md, "Nightly bake", says.
fn nightly_vars() -> BTreeMap<String, String> {
    [
        ("AWS_REGION", "us-east-1"),
        ("AWS_BAKE_ROLE_ARN", BAKE_ROLE),
        ("AWS_DEPLOY_ROLE_ARN", DEPLOY_ROLE),
        ("OBSTACK_STACK", "obstack"),
        ("OBSTACK_STATE_BUCKET", STATE_BUCKET),
        ("OBSTACK_STAGING_NAME", STAGING_NAME),
        (
            "OBSTACK_STAGING_TFVARS",
            "allowed_web_cidrs = [\"198.51.100.7/32\"]",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn secrets() -> BTreeMap<String, String> {
    BTreeMap::from([("GITHUB_TOKEN".to_string(), "rehearsal-token".to_string())])
}

/// The MaxSessionDuration README.md, "Nightly bake", tells people to give the role whose ARN
/// is the repository variable `variable` (IAM's default when it says nothing).
fn documented_max_session(variable: &str) -> u64 {
    let readme = read(&root().join("README.md"));
    readme
        .lines()
        .filter(|line| line.starts_with('|') && line.contains(&format!("`{variable}`")))
        .flat_map(|line| line.split('|').map(str::trim).collect::<Vec<_>>())
        .find_map(|cell| cell.strip_suffix(" s").and_then(|n| n.parse().ok()))
        .unwrap_or(DEFAULT_SESSION)
}

fn write_executable(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A copy of the checkout (what `git ls-files` holds, as it is on disk now) committed in a
/// repository `user` owns: the "origin" the checkout stand-in clones.
fn origin_repository(user: &SystemUser, dir: &Path) {
    let files = Command::new("git")
        .current_dir(root())
        .args(["ls-files", "-co", "--exclude-standard", "-z"])
        .output()
        .unwrap();
    for name in String::from_utf8_lossy(&files.stdout).split('\0') {
        let from = root().join(name);
        if name.is_empty() || !from.is_file() {
            continue;
        }
        let to = dir.join(name);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&from, &to).unwrap();
    }
    user.own(dir);
    git(user, dir, &["init", "-q", "-b", "main"]);
    git(user, dir, &["add", "-A"]);
    commit(user, dir, "the checkout");
}

fn git(user: &SystemUser, dir: &Path, args: &[&str]) -> String {
    let output = user
        .command("git")
        .current_dir(dir)
        .env("HOME", &user.home)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn commit(user: &SystemUser, dir: &Path, message: &str) {
    git(
        user,
        dir,
        &[
            "-c",
            "user.name=rehearsal",
            "-c",
            "user.email=rehearsal@example.invalid",
            "commit",
            "-q",
            "-m",
            message,
        ],
    );
}

/// `actions/checkout`: a clone of the origin in the job's (empty) workspace, at `ref` when given.
fn checkout(call: &UsesCall, origin: &Path) -> Result<UsesEffect, String> {
    let clone = call
        .user
        .command("git")
        .current_dir(call.workspace)
        .env("HOME", &call.user.home)
        .args(["clone", "-q"])
        .arg(origin)
        .arg(".")
        .output()
        .map_err(|e| e.to_string())?;
    if !clone.status.success() {
        return Err(format!(
            "git clone: {}",
            String::from_utf8_lossy(&clone.stderr)
        ));
    }
    if let Some(reference) = call.with.get("ref") {
        if reference.is_empty() {
            return Err(
                "with.ref is empty: the checkout would silently take the default branch".into(),
            );
        }
        let checkout = call
            .user
            .command("git")
            .current_dir(call.workspace)
            .env("HOME", &call.user.home)
            .args(["checkout", "-q", reference])
            .output()
            .map_err(|e| e.to_string())?;
        if !checkout.status.success() {
            return Err(format!(
                "git checkout {reference}: {}",
                String::from_utf8_lossy(&checkout.stderr)
            ));
        }
    }
    Ok(UsesEffect::default())
}

/// `dtolnay/rust-toolchain@<version>`: it must install rust-toolchain.toml's version and
/// components (the images' binaries are built with it).
fn toolchain(call: &UsesCall) -> Result<UsesEffect, String> {
    let pinned: toml::Value = toml::from_str(&read(&root().join("rust-toolchain.toml")))
        .map_err(|e| format!("rust-toolchain.toml: {e}"))?;
    let channel = pinned["toolchain"]["channel"].as_str().unwrap_or_default();
    let asked = call.with.get("toolchain").cloned().unwrap_or_else(|| {
        call.action
            .rsplit('@')
            .next()
            .unwrap_or_default()
            .to_string()
    });
    if asked != channel {
        return Err(format!(
            "{} installs Rust `{asked}`, rust-toolchain.toml pins `{channel}`",
            call.action
        ));
    }
    let components: Vec<&str> = pinned["toolchain"]["components"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c.as_str()).collect())
        .unwrap_or_default();
    for component in call
        .with
        .get("components")
        .map(|c| c.split(',').map(str::trim).collect::<Vec<_>>())
        .unwrap_or_default()
    {
        if !components.contains(&component) {
            return Err(format!(
                "component {component} is not in rust-toolchain.toml"
            ));
        }
    }
    Ok(UsesEffect::default())
}

fn version_of(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text
        .trim()
        .trim_start_matches('v')
        .split('.')
        .map(|p| p.parse().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// The version a real tool on PATH reports, e.g. `packer version`.
fn installed_version(program: &str, args: &[&str]) -> Option<(u32, u32, u32)> {
    let output = Command::new(program).args(args).output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace().find_map(version_of)
}

/// The credentials action: the keys of the moto user of the role asked for, if the session
/// asked for fits the MaxSessionDuration the README documents for that role.
fn credentials(
    call: &UsesCall,
    moto: &testkit::Moto,
    roles: &BTreeMap<&str, (&str, &str)>,
) -> Result<UsesEffect, String> {
    let role = call.with.get("role-to-assume").cloned().unwrap_or_default();
    let Some((user, variable)) = roles.get(role.as_str()) else {
        return Err(format!(
            "role-to-assume `{role}` is none of the repository's roles"
        ));
    };
    let region = call.with.get("aws-region").cloned().unwrap_or_default();
    if region.is_empty() {
        return Err("aws-region is empty".into());
    }
    let asked: u64 = match call.with.get("role-duration-seconds") {
        Some(seconds) => seconds
            .parse()
            .map_err(|e| format!("role-duration-seconds: {e}"))?,
        None => DEFAULT_SESSION,
    };
    let allowed = documented_max_session(variable);
    if asked > allowed {
        return Err(format!(
            "the session asks for {asked} s but README.md documents MaxSessionDuration {allowed} s for the role in {variable}: AssumeRoleWithWebIdentity would be refused"
        ));
    }
    let mut effect = UsesEffect::default();
    for (key, value) in moto.user_env(user) {
        if !value.is_empty() {
            effect.env.push((key.to_string(), value));
        }
    }
    effect.env.push(("AWS_REGION".into(), region.clone()));
    effect.env.push(("AWS_DEFAULT_REGION".into(), region));
    Ok(effect)
}

const NIGHTLY_CARGO: &str = r#"#!/usr/bin/env bash
# The rehearsal's cargo: `cargo xtask ARGS` runs the suite's xtask binary on this job's checkout,
# as `cargo xtask` would build and run it. Its liberties are said on stderr.
set -euo pipefail
printf '%s\t%s\n' "$(id -u)" "$*" >> "$REHEARSAL_LOG"
if [ "${1:-}" != xtask ]; then
  echo "rehearsal cargo: only \`cargo xtask\` is rehearsed, not \`cargo $*\`" >&2
  exit 101
fi
shift
args=()
for arg in "$@"; do
  if [ "$arg" = --tunnel ]; then
    if ! "$REHEARSAL_XTASK" "$1" --help | grep -q -- '--tunnel'; then
      echo "rehearsal cargo: \`cargo xtask $1\` has no --tunnel" >&2
      exit 2
    fi
    echo "rehearsal cargo: --tunnel dropped (no Session Manager here)" >&2
  else
    args+=("$arg")
  fi
done
export OBSTACK_PROJECT_ROOT="$GITHUB_WORKSPACE"
export OBSTACK_ARTIFACTS_DIR="$REHEARSAL_ARTIFACTS"
export OBSTACK_BASE_AMI_NAME="$REHEARSAL_BASE_AMI_NAME"
case "${args[0]:-}" in
  bake)
    echo "rehearsal cargo: bake --smoke (moto cannot boot a builder)" >&2
    args+=(--smoke)
    ;;
  verify)
    "$REHEARSAL_XTASK" "${args[@]}" --help > /dev/null
    echo "rehearsal cargo: verify's command line is good; the verdict is the test's" >&2
    cat "$REHEARSAL_VERIFY_REPORT"
    exit "$(cat "$REHEARSAL_VERIFY_EXIT")"
    ;;
esac
exec "$REHEARSAL_XTASK" "${args[@]}"
"#;

/// Where the nights happen: moto enforcing the two roles' policies, the system user the
/// jobs run as, the origin repository, Terraform's stand-in and a loopback Grafana.
struct World {
    moto: testkit::Moto,
    user: SystemUser,
    dir: PathBuf,
    origin: PathBuf,
    terraform: testkit::FakeTerraform,
    _grafana: testkit::http::TestServer,
    nights: std::cell::Cell<usize>,
}

impl World {
    fn new(deploy_policy: &str) -> World {
        testkit::require_tool("packer");
        testkit::require_tool("jq");
        let bake_policy = with_smoke_only(&read(&root().join("images/bake-policy.json")));
        let moto = testkit::Moto::start_enforcing(&[
            ("bake", bake_policy.as_str()),
            ("deploy", deploy_policy),
        ]);
        let user = SystemUser::create();
        let dir = user.home.join("rehearsal");
        let origin = dir.join("origin");
        std::fs::create_dir_all(&origin).unwrap();
        origin_repository(&user, &origin);

        let bin = dir.join("bin");
        write_executable(&bin.join("cargo"), NIGHTLY_CARGO);
        // GitHub's ubuntu-24.04 image ships the plugin; here, the version AWS requires.
        write_executable(
            &bin.join("session-manager-plugin"),
            "#!/bin/sh\necho 1.2.764.0\n",
        );
        let artifacts = dir.join("artifacts");
        std::fs::create_dir_all(&artifacts).unwrap();
        for binary in crate::bake_support::registry().workspace_binaries() {
            std::fs::write(artifacts.join(&binary), format!("stand-in {binary}")).unwrap();
        }
        std::fs::write(dir.join("verify.json"), "{\"passed\": true}\n").unwrap();
        std::fs::write(dir.join("verify-exit"), "0").unwrap();
        // deploy's health gate checks Grafana: a loopback one that is always healthy.
        let grafana = testkit::http::TestServer::start(|_| testkit::http::Response::ok("{}"));
        let terraform_dir = dir.join("terraform");
        std::fs::create_dir_all(&terraform_dir).unwrap();
        let terraform = testkit::FakeTerraform::install(&terraform_dir, &[]);
        terraform.allow_apply();
        // What a deployed stack's state lists, for the destroy step.
        terraform.set_state(&[
            "aws_vpc.main",
            "aws_instance.role[\"grafana\"]",
            "aws_ebs_volume.data[\"loki\"]",
            "aws_kms_key.data",
            "aws_s3_bucket.loki[0]",
        ]);
        terraform.set_output("urls", serde_json::json!({"grafana": grafana.url()}));
        terraform.set_output("exposed", serde_json::json!({"grafana": true}));
        user.own(&dir);
        World {
            moto,
            user,
            dir,
            origin,
            terraform,
            _grafana: grafana,
            nights: std::cell::Cell::new(0),
        }
    }

    fn base_env(&self) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = [
            (
                "PATH",
                format!(
                    "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    self.dir.join("bin").display()
                ),
            ),
            ("HOME", self.user.home.display().to_string()),
            ("USER", self.user.name.clone()),
            ("LANG", "C.UTF-8".into()),
            ("CHECKPOINT_DISABLE", "1".into()),
            (
                "REHEARSAL_LOG",
                self.dir.join("cargo.log").display().to_string(),
            ),
            ("REHEARSAL_XTASK", env!("CARGO_BIN_EXE_xtask").into()),
            (
                "REHEARSAL_ARTIFACTS",
                self.dir.join("artifacts").display().to_string(),
            ),
            ("REHEARSAL_BASE_AMI_NAME", xtask::moto::BASE_AMI_NAME.into()),
            (
                "REHEARSAL_VERIFY_REPORT",
                self.dir.join("verify.json").display().to_string(),
            ),
            (
                "REHEARSAL_VERIFY_EXIT",
                self.dir.join("verify-exit").display().to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (key, value) in self.terraform.env() {
            env.insert(key.to_string(), value.display().to_string());
        }
        env
    }

    /// One run of `workflow` (the text of nightly-bake.yml, perhaps changed by the test).
    fn night(&self, workflow: &str) -> Result<BTreeMap<String, JobRun>, String> {
        let yaml: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(workflow).map_err(|e| e.to_string())?;
        let n = self.nights.get() + 1;
        self.nights.set(n);
        let night = self.dir.join(format!("night-{n}"));
        let temp = night.join("temp");
        std::fs::create_dir_all(&temp).unwrap();
        self.user.own(&night);
        let roles = BTreeMap::from([
            (BAKE_ROLE, ("bake", "AWS_BAKE_ROLE_ARN")),
            (DEPLOY_ROLE, ("deploy", "AWS_DEPLOY_ROLE_ARN")),
        ]);
        let origin = self.origin.clone();
        let terraform_bin = self.terraform.bin_dir().to_path_buf();
        let stand_in = |call: &UsesCall| -> Result<UsesEffect, String> {
            let (action, _) = call.action.split_once('@').ok_or("a uses: without @ref")?;
            match action {
                "actions/checkout" => checkout(call, &origin),
                "dtolnay/rust-toolchain" => toolchain(call),
                "Swatinem/rust-cache" | "actions/upload-artifact" => Ok(UsesEffect::default()),
                "hashicorp/setup-packer" => {
                    // The real bake needs a Packer that fetches plugins from HashiCorp's
                    // release site; the smoke bake here runs Debian's 1.6.6 on PATH.
                    let asked = call.with.get("version").and_then(|v| version_of(v));
                    let needed = xtask::packer::RELEASE_SITE_PLUGINS_SINCE;
                    match asked {
                        Some((a, b, c)) if xtask::packer::Version(a, b, c) >= needed => {
                            Ok(UsesEffect::default())
                        }
                        _ => Err(format!(
                            "setup-packer installs {:?}; a bake needs an exact version >= {needed}",
                            call.with.get("version")
                        )),
                    }
                }
                "hashicorp/setup-terraform" => {
                    let asked = call
                        .with
                        .get("terraform_version")
                        .and_then(|v| version_of(v));
                    if asked.is_none_or(|v| v < (1, 10, 0)) {
                        return Err(format!("setup-terraform installs {:?}; use_lockfile needs an exact version >= 1.10.0", call.with.get("terraform_version")));
                    }
                    if call.with.get("terraform_wrapper").map(String::as_str) != Some("false") {
                        return Err(
                            "terraform_wrapper must be false: xtask reads `terraform output -json`"
                                .into(),
                        );
                    }
                    Ok(UsesEffect {
                        path: vec![terraform_bin.clone()],
                        ..UsesEffect::default()
                    })
                }
                "aws-actions/configure-aws-credentials" => credentials(call, &self.moto, &roles),
                other => Err(format!("no stand-in for {other}")),
            }
        };
        let rehearsal = Rehearsal {
            workflow: &yaml,
            user: &self.user,
            vars: nightly_vars(),
            secrets: secrets(),
            base_env: self.base_env(),
            workspaces: night.join("jobs"),
            temp,
            stand_in: &stand_in,
            step_timeout: Duration::from_secs(600),
        };
        std::fs::create_dir_all(night.join("jobs")).unwrap();
        self.user.own(&night);
        rehearsal.run()
    }

    /// A change to one role's inputs, committed to the origin: the next bake rebakes it.
    fn change_a_role(&self, night: usize) {
        let template = self.origin.join("images/app/templates/promtail.yaml.j2");
        let mut text = read(&template);
        text.push_str(&format!("# night {night}\n"));
        std::fs::write(&template, text).unwrap();
        self.user.own(&template);
        git(&self.user, &self.origin, &["add", "-A"]);
        commit(&self.user, &self.origin, &format!("night {night}"));
    }

    fn head(&self) -> String {
        git(&self.user, &self.origin, &["rev-parse", "HEAD"])
    }

    /// `xtask ARGS` with the keys of moto user `user`, on the origin checkout.
    fn xtask(&self, user: &str, args: &[&str]) -> std::process::Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
        self.moto.apply_user_env(&mut command, user);
        command
            .args(args)
            .env("OBSTACK_PROJECT_ROOT", &self.origin)
            .env("CARGO_TARGET_DIR", self.dir.join("operator-target"));
        command.output().unwrap()
    }

    fn channel(&self, name: &str) -> Option<String> {
        let output = self.xtask(testkit::iam::ADMIN, &["releases", "--json"]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let listing: Value = serde_json::from_slice(&output.stdout).unwrap();
        listing["channels"][name].as_str().map(str::to_string)
    }

    fn cargo_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("cargo.log")).unwrap_or_default()
    }
}

fn results(runs: &BTreeMap<String, JobRun>) -> BTreeMap<&str, Outcome> {
    runs.iter()
        .map(|(job, run)| (job.as_str(), run.result))
        .collect()
}

fn logs(runs: &BTreeMap<String, JobRun>) -> String {
    runs.iter()
        .map(|(job, run)| format!("##### {job}: {:?}\n{}", run.result, run.log))
        .collect()
}

#[test]
fn four_nights_bake_stage_and_promote_and_a_rollback_stays_rolled_back() {
    let world = World::new(&deploy_policy());

    // Night 1: the first bake is the first candidate; staged, verified, destroyed, promoted.
    let runs = world.night(&nightly()).unwrap_or_else(|e| panic!("{e}"));
    let all_passed = BTreeMap::from([
        ("bake", Outcome::Success),
        ("candidate", Outcome::Success),
        ("staging", Outcome::Success),
        ("promote", Outcome::Success),
    ]);
    assert_eq!(results(&runs), all_passed, "{}", logs(&runs));
    let first = runs["candidate"].outputs["release"].clone();
    assert_eq!(world.channel("stable"), Some(first.clone()));
    assert_eq!(runs["staging"].outputs["release"], first);
    // Staging ran from the release's revision, under its own name and state key, and was
    // destroyed after verify.
    assert_eq!(runs["candidate"].outputs["revision"], world.head());
    let calls = world.terraform.calls();
    assert!(
        calls.contains(&format!("name = \"{STAGING_NAME}\"")),
        "{calls}"
    );
    // destroy: a plan that destroys all but the data (targeted), then its apply.
    assert!(
        calls.contains(" -destroy -target=aws_vpc.main ")
            && !calls.contains("-target=aws_kms_key.data"),
        "{calls}"
    );
    let log = logs(&runs);
    assert!(
        log.contains("--tunnel dropped"),
        "deploy and verify ask for the tunnels: {log}"
    );
    assert_eq!(
        world.cargo_log().matches("--tunnel").count(),
        2,
        "deploy and verify, each once: {}",
        world.cargo_log()
    );

    // Night 2: a change to the app's image makes a new release, which replaces the first.
    world.change_a_role(2);
    let runs = world.night(&nightly()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(results(&runs), all_passed, "{}", logs(&runs));
    let second = runs["candidate"].outputs["release"].clone();
    assert_ne!(second, first);
    assert_eq!(world.channel("stable"), Some(second.clone()));

    // Night 3: only the README changed, so nothing is baked and the candidate is still the
    // second release, made from the previous commit: staging runs that commit, not tonight's.
    let readme = world.origin.join("README.md");
    let mut text = read(&readme);
    text.push_str("\n<!-- night 3 -->\n");
    std::fs::write(&readme, text).unwrap();
    world.user.own(&readme);
    let baked_from = world.head();
    git(&world.user, &world.origin, &["add", "-A"]);
    commit(&world.user, &world.origin, "night 3: documentation only");
    let runs = world.night(&nightly()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(results(&runs), all_passed, "{}", logs(&runs));
    assert_eq!(runs["candidate"].outputs["release"], second);
    assert_eq!(runs["candidate"].outputs["revision"], baked_from);
    assert_ne!(baked_from, world.head());
    let staged = git(
        &world.user,
        &world.dir.join("night-3/jobs/staging"),
        &["rev-parse", "HEAD"],
    );
    assert_eq!(
        staged, baked_from,
        "staging deploys and verifies the release's own revision"
    );

    // The second release misbehaves in production: a person rolls stable back.
    let rolled = world.xtask("bake", &["rollback", "--channel", "stable"]);
    assert!(
        rolled.status.success(),
        "{}",
        String::from_utf8_lossy(&rolled.stderr)
    );
    assert_eq!(world.channel("stable"), Some(first.clone()));

    // Night 4: nothing changed, so the candidate is still the rolled-back release. It is
    // neither staged nor promoted: the rollback holds.
    let runs = world.night(&nightly()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(runs["bake"].result, Outcome::Success, "{}", logs(&runs));
    assert_eq!(
        runs["candidate"].result,
        Outcome::Success,
        "{}",
        logs(&runs)
    );
    assert_eq!(runs["candidate"].outputs["release"], "", "{}", logs(&runs));
    assert_eq!(runs["staging"].result, Outcome::Skipped);
    assert_eq!(runs["promote"].result, Outcome::Skipped);
    assert_eq!(world.channel("stable"), Some(first), "{}", logs(&runs));
    assert_eq!(world.channel("candidate"), Some(second));
}

#[test]
fn the_rehearsal_catches_unset_outputs_unknown_commands_and_flags_and_missing_permissions() {
    let world = World::new(&deploy_policy());
    let workflow = nightly();

    // An output nobody sets.
    let broken = workflow.replace("steps.pin.outputs.release", "steps.pin.outputs.release_id");
    let error = world.night(&broken).unwrap_err();
    assert!(
        error
            .contains("steps.pin.outputs.release_id is read, but step `pin` never sets release_id"),
        "{error}"
    );

    // A flag and a command that do not exist.
    let broken = workflow
        .replace("--keep-channel-history 5", "--keep-channel-histroy 5")
        .replace(
            "cargo xtask promote \"$RELEASE\"",
            "cargo xtask promot \"$RELEASE\"",
        );
    let runs = world.night(&broken).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(runs["bake"].result, Outcome::Failure, "{}", logs(&runs));
    assert!(
        runs["bake"].log.contains("--keep-channel-histroy"),
        "{}",
        runs["bake"].log
    );
    let broken = workflow.replace(
        "cargo xtask promote \"$RELEASE\"",
        "cargo xtask promot \"$RELEASE\"",
    );
    let runs = world.night(&broken).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(runs["promote"].result, Outcome::Failure, "{}", logs(&runs));
    assert!(
        runs["promote"].log.contains("promot"),
        "{}",
        runs["promote"].log
    );

    // A session longer than the README tells people to allow.
    let broken = workflow.replace("role-duration-seconds: 5400", "role-duration-seconds: 9000");
    let runs = world.night(&broken).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(runs["staging"].result, Outcome::Failure, "{}", logs(&runs));
    assert!(
        runs["staging"].log.contains("MaxSessionDuration"),
        "{}",
        runs["staging"].log
    );
    assert_eq!(runs["promote"].result, Outcome::Skipped);

    // A permission the deploy role lacks.
    let world = World::new(&without_statement(
        &deploy_policy(),
        "XtaskListsReleasesChannelsAndRejections",
    ));
    let runs = world.night(&workflow).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        runs["candidate"].result,
        Outcome::Failure,
        "{}",
        logs(&runs)
    );
    assert!(
        runs["candidate"]
            .log
            .contains("not authorized to perform: ssm:GetParametersByPath"),
        "{}",
        runs["candidate"].log
    );
    assert_eq!(runs["staging"].result, Outcome::Skipped);
    assert_eq!(runs["promote"].result, Outcome::Skipped);
}

#[test]
fn every_variable_secret_and_role_the_workflows_read_is_in_the_readmes_nightly_section() {
    let readme = read(&root().join("README.md"));
    let section = readme
        .split("### Nightly bake")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("README.md has a Nightly bake section");
    let mut missing = Vec::new();
    for file in ["nightly-bake.yml", "ci.yml"] {
        let text = read(&root().join(".github/workflows").join(file));
        for context in ["vars.", "secrets."] {
            for (at, _) in text.match_indices(context) {
                let name: String = text[at + context.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !section.contains(&format!("`{name}`")) {
                    missing.push(format!("{file}: {context}{name}"));
                }
            }
        }
        let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        for (_, job) in yaml["jobs"].as_mapping().unwrap() {
            if let Some(environment) = job["environment"].as_str() {
                if !section.contains(&format!("`{environment}`")) {
                    missing.push(format!("{file}: environment {environment}"));
                }
            }
        }
    }
    for policy in ["images/bake-policy.json", "terraform/deploy-policy.json"] {
        if !section.contains(policy) {
            missing.push(format!("the policy file {policy}"));
        }
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "README.md, \"Nightly bake\", does not list: {missing:?}"
    );
}

// ---- ci.yml ---------------------------------------------------------------------------

const CI_CARGO: &str = r#"#!/usr/bin/env bash
# The rehearsal's cargo for ci.yml: records who ran what; `nextest run` writes the JUnit report
# of the tests its filter selects (lists the test made with the real cargo-nextest beforehand).
# Its files are found beside it: sudo resets the environment.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
REHEARSAL_LOG=$here/cargo.log
REHEARSAL_LISTS=$here/lists
printf '%s\t%s\n' "$(id -u)" "$*" >> "$REHEARSAL_LOG"
[ "${1:-}" = nextest ] || exit 0
[ "${2:-}" = --version ] && { echo "cargo-nextest 0.9.143"; exit 0; }
[ "${2:-}" = run ] || exit 0
profile=default filter="" build_only=""
shift 2
while [ $# -gt 0 ]; do
  case $1 in
    --profile) profile=$2; shift ;;
    -E) filter=$2; shift ;;
    --no-run) build_only=1 ;;
  esac
  shift
done
[ -z "$build_only" ] || exit 0
list="$REHEARSAL_LISTS/$(printf '%s' "$filter" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$list" ]; then
  echo "rehearsal cargo: no test list for the filter '$filter'" >&2
  exit 101
fi
printf '%s\tran\t%s\n' "$(id -u)" "$filter" >> "$REHEARSAL_LOG"
mkdir -p "target/nextest/$profile"
{
  echo '<testsuites><testsuite name="rehearsal">'
  while IFS=' ' read -r binary name; do
    printf '<testcase classname="%s" name="%s" time="0.0"/>\n' "$binary" "$name"
  done < "$list"
  echo '</testsuite></testsuites>'
} > "target/nextest/$profile/junit.xml"
"#;

/// The tests `cargo nextest run -E filter` selects (every test with no filter), as
/// `binary-id test-name` lines, from the real cargo-nextest on this checkout.
fn nextest_list(filter: Option<&str>) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if xtask::cargo_env::is_set_by_cargo_for_a_crate(&name) {
            command.env_remove(name.as_ref());
        }
    }
    command.current_dir(root()).args([
        "nextest",
        "list",
        "--workspace",
        "--all-targets",
        "--message-format",
        "json",
    ]);
    if let Some(filter) = filter {
        command.args(["-E", filter]);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "cargo nextest list: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listing: Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut tests = Vec::new();
    for (binary, suite) in listing["rust-suites"].as_object().unwrap() {
        for (name, case) in suite["testcases"].as_object().unwrap() {
            if case["filter-match"]["status"] == "matches" {
                tests.push(format!("{binary} {name}"));
            }
        }
    }
    tests
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

#[test]
fn ci_runs_the_suite_as_the_runner_user_and_only_the_tests_that_need_root_under_sudo() {
    let mut user = SystemUser::create();
    user.allow_sudo();
    let dir = user.home.join("rehearsal");
    let origin = dir.join("origin");
    std::fs::create_dir_all(&origin).unwrap();
    origin_repository(&user, &origin);

    // The tests each filter scripts/test.sh uses selects, and which need root.
    let script = read(&root().join("scripts/test.sh"));
    let root_filter = script
        .lines()
        .find_map(|l| l.trim().strip_prefix("root_tests='")?.strip_suffix('\''))
        .map(str::to_string);
    let lists = dir.join("lists");
    std::fs::create_dir_all(&lists).unwrap();
    let mut filters: Vec<(String, Option<String>)> = vec![(String::new(), None)];
    if let Some(root_filter) = &root_filter {
        filters.push((root_filter.clone(), Some(root_filter.clone())));
        filters.push((
            format!("not {root_filter}"),
            Some(format!("not {root_filter}")),
        ));
    }
    for (key, filter) in &filters {
        std::fs::write(
            lists.join(sha256_hex(key)),
            nextest_list(filter.as_deref()).join("\n") + "\n",
        )
        .unwrap();
    }
    let needs_root: BTreeSet<String> = nextest_list(Some("group(/^root-/)")).into_iter().collect();
    assert!(
        needs_root.len() >= 10,
        "the root-* groups hold the rehearsal and mount tests"
    );
    let every_test: BTreeSet<String> = nextest_list(None).into_iter().collect();

    // Stand-ins: the toolchain (its cargo, a rustc, clippy denying the probe's warning), pip's
    // installs, npm ci.
    let bin = dir.join("bin");
    write_executable(&bin.join("cargo"), CI_CARGO);
    let sysroot = dir.join("sysroot");
    write_executable(
        &bin.join("rustc"),
        &format!(
            "#!/bin/sh\n[ \"$1\" = --print ] && {{ echo {}; exit 0; }}\necho rustc 1.95.0\n",
            sysroot.display()
        ),
    );
    write_executable(&sysroot.join("bin/clippy-driver"), "#!/bin/sh\nexit 1\n");
    let python = dir.join("python-bin");
    write_executable(
        &python.join("python3"),
        "#!/bin/sh\n[ \"$1 $2\" = \"-m pip\" ] && { echo \"pip (stand-in): $*\" >&2; exit 0; }\nexec /usr/bin/python3 \"$@\"\n",
    );
    for tool in ["moto_server", "checkov"] {
        write_executable(&python.join(tool), "#!/bin/sh\nexit 0\n");
    }
    let node = dir.join("node-bin");
    write_executable(
        &node.join("npm"),
        "#!/bin/sh\necho \"npm (stand-in): $*\" >&2\n",
    );
    testkit::require_tool("node");
    user.own(&dir);

    let workflow: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read(&root().join(".github/workflows/ci.yml"))).unwrap();
    let base_env: BTreeMap<String, String> = [
        (
            "PATH",
            format!(
                "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                bin.display()
            ),
        ),
        ("HOME", user.home.display().to_string()),
        ("USER", user.name.clone()),
        ("LANG", "C.UTF-8".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let stand_in = |call: &UsesCall| -> Result<UsesEffect, String> {
        let (action, _) = call.action.split_once('@').ok_or("a uses: without @ref")?;
        let exactly = |input: &str, program: &str, args: &[&str]| -> Result<(), String> {
            let asked = call.with.get(input).and_then(|v| version_of(v));
            let here = installed_version(program, args);
            if asked.is_some() && asked == here {
                Ok(())
            } else {
                Err(format!(
                    "{action} asks for {:?}; {program} here is {here:?}",
                    call.with.get(input)
                ))
            }
        };
        match action {
            "actions/checkout" => checkout(call, &origin),
            "dtolnay/rust-toolchain" => toolchain(call),
            "Swatinem/rust-cache" => Ok(UsesEffect::default()),
            "taiki-e/install-action" => match call.with.get("tool").map(String::as_str) {
                Some("cargo-nextest") => Ok(UsesEffect::default()),
                other => Err(format!("install-action installs {other:?}")),
            },
            "hashicorp/setup-packer" => {
                exactly("version", "packer", &["version"]).map(|()| UsesEffect::default())
            }
            "hashicorp/setup-terraform" => {
                exactly("terraform_version", "terraform", &["version"])?;
                Ok(UsesEffect::default())
            }
            "actions/setup-python" => match call.with.get("python-version") {
                Some(v) if version_of(v).is_some() => Ok(UsesEffect {
                    path: vec![python.clone()],
                    ..UsesEffect::default()
                }),
                other => Err(format!("setup-python asks for {other:?}")),
            },
            "actions/setup-node" => {
                let asked = call
                    .with
                    .get("node-version")
                    .and_then(|v| v.parse::<u32>().ok());
                let here = installed_version("node", &["--version"]).map(|v| v.0);
                if asked.is_some() && asked == here {
                    Ok(UsesEffect {
                        path: vec![node.clone()],
                        ..UsesEffect::default()
                    })
                } else {
                    Err(format!(
                        "setup-node asks for {asked:?}; node here is {here:?}"
                    ))
                }
            }
            other => Err(format!("no stand-in for {other}")),
        }
    };
    let temp = dir.join("temp");
    std::fs::create_dir_all(&temp).unwrap();
    std::fs::create_dir_all(dir.join("jobs")).unwrap();
    user.own(&dir);
    let rehearsal = Rehearsal {
        workflow: &workflow,
        user: &user,
        vars: BTreeMap::new(),
        secrets: secrets(),
        base_env,
        workspaces: dir.join("jobs"),
        temp,
        stand_in: &stand_in,
        step_timeout: Duration::from_secs(600),
    };
    let runs = rehearsal.run().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        runs["test"].result,
        Outcome::Success,
        "{}",
        runs["test"].log
    );

    // Who ran which tests.
    let log = read(&dir.join("cargo.log"));
    let mut ran_as: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for line in log.lines() {
        let mut fields = line.splitn(3, '\t');
        let (Some(uid), Some("ran"), Some(filter)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let list = read(&lists.join(sha256_hex(filter)));
        for test in list.lines().filter(|l| !l.is_empty()) {
            ran_as
                .entry(test.to_string())
                .or_default()
                .push(uid.parse().unwrap());
        }
    }
    let mut problems = Vec::new();
    for test in &every_test {
        let expected = if needs_root.contains(test) {
            0
        } else {
            user.uid
        };
        match ran_as.get(test).map(Vec::as_slice) {
            Some([uid]) if *uid == expected => {}
            other => problems.push(format!(
                "{test}: ran as {other:?}, should run once as uid {expected}"
            )),
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} tests ran as the wrong user (or not once):\n  {}",
        problems.len(),
        every_test.len(),
        problems
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    // The root run handed target/ back to the runner user.
    let target = dir.join("jobs/test/target");
    let owner = std::fs::metadata(&target).map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    assert_eq!(
        owner.ok(),
        Some(user.uid),
        "target/ belongs to the runner user after the run"
    );
}
