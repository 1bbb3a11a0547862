//! images/README.md's recipe for a new role, proven on a scratch fifth role (`tempo`, in
//! fixtures/fifth_role/): in a copy of `images/` with its directory and its versions.toml
//! entries added and nothing else changed, the role is in the registry in start order,
//! hashed, planned by `cargo xtask bake --dry-run` against moto, taken by the Packer
//! template and the boot agent, and Terraform's missing map entries are all that the
//! Terraform check reports.

use crate::bake_support;
use crate::registry_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use bake_support::{copy_images, describe, write_stand_in_binaries};
use registry_support::{checkout_registry, disagreements, parse_terraform, terraform_dir};
use stack_agent::{AgentError, RoleSpec};
use xtask::hash::{role_input_hash, HashInputs};
use xtask::roles::Registry;
use xtask::versions::Manifest;

const ROLE: &str = "tempo";

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fifth_role")
}

/// A copy of the checkout's `images/` with the scratch role added by the recipe: its
/// directory, and its versions.toml entry (node_exporter's `roles = ["*"]` covers it).
struct FiveRoles {
    dir: tempfile::TempDir,
}

impl FiveRoles {
    fn new() -> FiveRoles {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        copy_images(&testkit::workspace_root().join("images"), &images);
        copy_tree(&fixture_dir().join(ROLE), &images.join(ROLE));

        let versions = images.join("versions.toml");
        let doc = std::fs::read_to_string(&versions).unwrap();
        let entries = std::fs::read_to_string(fixture_dir().join("versions.toml")).unwrap();
        std::fs::write(&versions, format!("{doc}\n{entries}")).unwrap();

        write_stand_in_binaries(&dir.path().join("artifacts"), &checkout_registry());
        FiveRoles { dir }
    }

    fn images(&self) -> PathBuf {
        self.dir.path().join("images")
    }

    fn artifacts(&self) -> PathBuf {
        self.dir.path().join("artifacts")
    }

    fn registry(&self) -> Registry {
        Registry::load(&self.images()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn hashes(&self, base_ami_id: &str) -> BTreeMap<String, String> {
        let registry = self.registry();
        let inputs = HashInputs {
            images_dir: self.images(),
            manifest: Manifest::load(&self.images().join("versions.toml")).unwrap(),
            artifacts_dir: self.artifacts(),
            base_ami_id: base_ami_id.to_string(),
        };
        registry
            .roles()
            .iter()
            .map(|role| {
                let hash = role_input_hash(role, &inputs).unwrap_or_else(|e| panic!("{e:#}"));
                (role.name.clone(), hash)
            })
            .collect()
    }
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry.unwrap();
        let target = to.join(entry.path().strip_prefix(from).unwrap());
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
        } else {
            // std::fs::copy keeps the scripts' executable bit.
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn the_new_role_is_in_the_registry_in_start_order() {
    let five = FiveRoles::new();
    let registry = five.registry();
    let names = registry.names();
    let four = checkout_registry();
    assert_eq!(names.len(), four.names().len() + 1, "{names:?}");
    assert_eq!(
        names
            .iter()
            .filter(|n| **n != ROLE)
            .copied()
            .collect::<Vec<_>>(),
        four.names(),
        "the other roles keep their order"
    );
    let tempo = registry.role(ROLE).unwrap();
    let position = |name: &str| names.iter().position(|n| *n == name).unwrap();
    for (peer, spec) in &tempo.peers {
        assert!(spec.required, "the fixture's peer is required");
        assert!(
            position(peer) < position(ROLE),
            "{ROLE} starts after {peer}, which it requires: {names:?}"
        );
    }
    assert!(!tempo.peers.is_empty());
    assert_eq!(tempo.main_service().map(|s| s.port), Some(3200));
    assert_eq!(tempo.shipped_binaries(), ["stack-agent"]);
    assert!(
        registry
            .services()
            .iter()
            .any(|(role, service)| role.name == ROLE && service.unit == "tempo.service"),
        "its service is one of the stack's"
    );
}

#[test]
fn the_new_role_is_hashed_from_its_own_inputs() {
    let five = FiveRoles::new();
    let before = five.hashes("ami-0123456789abcdef0");
    assert_eq!(before.len(), five.registry().roles().len());
    let distinct: BTreeSet<&String> = before.values().collect();
    assert_eq!(
        distinct.len(),
        before.len(),
        "one hash per role: {before:#?}"
    );

    // Its directory counts for it and for no other role.
    let template = five.images().join(ROLE).join("templates/tempo.yaml.j2");
    let mut text = std::fs::read_to_string(&template).unwrap();
    text.push_str("# changed\n");
    std::fs::write(&template, text).unwrap();
    let after = five.hashes("ami-0123456789abcdef0");
    for (role, hash) in &after {
        assert_eq!(hash != &before[role], role == ROLE, "{role}'s hash");
    }
}

#[test]
fn bake_dry_run_plans_the_new_role_against_moto() {
    let five = FiveRoles::new();
    let moto = testkit::Moto::start();
    let home = five.dir.path().join("home");
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    moto.apply_env(&mut command);
    let output = command
        .args(["bake", "--dry-run", "--json"])
        .env("OBSTACK_IMAGES_DIR", five.images())
        .env("OBSTACK_ARTIFACTS_DIR", five.artifacts())
        .env("OBSTACK_BASE_AMI_NAME", xtask::moto::BASE_AMI_NAME)
        .env("CARGO_TARGET_DIR", five.dir.path().join("target"))
        .env("HOME", &home)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("no JSON summary ({e}):\n{}", describe(&output)));
    let planned: Vec<(&str, &str, &str)> = summary["roles"]
        .as_array()
        .unwrap_or_else(|| panic!("no roles in {summary:#}"))
        .iter()
        .map(|r| {
            (
                r["role"].as_str().unwrap(),
                r["state"].as_str().unwrap(),
                r["input_hash"].as_str().unwrap(),
            )
        })
        .collect();
    let registry = five.registry();
    assert_eq!(
        planned.iter().map(|p| p.0).collect::<Vec<_>>(),
        registry.names(),
        "every role, in the registry's order: {summary:#}"
    );
    for (role, state, _) in &planned {
        assert_eq!(*state, "would-build", "{role}: {summary:#}");
    }
    // The plan's hash is the library's, from the base AMI moto resolved.
    let base = summary["base_ami"]
        .as_str()
        .unwrap_or_else(|| panic!("no base AMI in {summary:#}"));
    let hashes = five.hashes(base);
    let (_, _, tempo_hash) = planned.iter().find(|p| p.0 == ROLE).unwrap();
    assert_eq!(*tempo_hash, hashes[ROLE]);
    assert!(
        !five.dir.path().join("target/bake/cargo").exists(),
        "a dry run with OBSTACK_ARTIFACTS_DIR built something"
    );
}

#[test]
fn the_agent_renders_the_new_role_and_accepts_its_sections() {
    let five = FiveRoles::new();
    // The agent's own parser and checks (what `stack-agent render` runs on the instance):
    // it skips `[image]` and `[[services]]`, the registry's sections.
    let spec = RoleSpec::load(&five.images(), ROLE).unwrap_or_else(|e| panic!("{e}"));
    let root = tempfile::tempdir().unwrap();
    let root_text = root.path().to_str().unwrap();
    let mut tags = BTreeMap::from([
        ("obstack:role".to_string(), ROLE.to_string()),
        (
            "obstack:peer:prometheus".to_string(),
            "10.0.1.12".to_string(),
        ),
    ]);
    let files = stack_agent::render_spec(&spec, &tags, root_text, "i-0123456789abcdef0")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(files.len(), 1, "{files:?}");
    let config = &files[0];
    assert_eq!(config.path, root.path().join("etc/tempo/config.yaml"));
    assert_eq!(config.services, ["tempo.service"]);
    assert!(
        config
            .contents
            .contains("- url: \"http://10.0.1.12:9090/api/v1/write\"\n"),
        "{}",
        config.contents
    );
    assert!(!config.contents.contains("{{"), "{}", config.contents);

    // Its required peer is waited for like any other role's.
    tags.remove("obstack:peer:prometheus");
    match stack_agent::render_spec(&spec, &tags, root_text, "i-0123456789abcdef0") {
        Err(AgentError::MissingTags(missing)) => {
            assert_eq!(missing, ["obstack:peer:prometheus"])
        }
        other => panic!("rendered without its required peer: {other:?}"),
    }

    // And the validation is real: a misspelt section is refused by the agent and the registry.
    let path = five.images().join(ROLE).join("role.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("[image]", "[imgae]")).unwrap();
    let agent = RoleSpec::load(&five.images(), ROLE)
        .unwrap_err()
        .to_string();
    assert!(agent.contains("imgae"), "{agent}");
    let registry = Registry::load(&five.images()).unwrap_err().to_string();
    assert!(registry.contains("imgae"), "{registry}");
}

#[test]
fn packer_validate_takes_the_new_role_with_the_bakes_var_file() {
    let packer = testkit::require_tool("packer");
    let five = FiveRoles::new();
    let registry = five.registry();
    let manifest = Manifest::load(&five.images().join("versions.toml")).unwrap();
    let base = xtask::bake::base::BaseAmi {
        id: "ami-0123456789abcdef0".to_string(),
        name: xtask::bake::base::DEFAULT_NAME.to_string(),
        owner: xtask::bake::base::DEFAULT_OWNER.to_string(),
    };
    let common = xtask::bake::vars::Common {
        region: "us-east-1",
        git_revision: "0123456789abcdef0123456789abcdef01234567",
        artifacts_dir: &five.artifacts(),
        base: &base,
        ec2_endpoint: "",
        // The scratch role's checksums are unverified, as for a smoke bake.
        require_verified: false,
    };
    let var_file = five.dir.path().join("tempo.pkrvars.json");
    xtask::bake::vars::VarFile::new(
        registry.role(ROLE).unwrap(),
        &"e".repeat(64),
        &manifest,
        &common,
        &five.dir.path().join("tempo-manifest.json"),
    )
    .unwrap()
    .write(&var_file)
    .unwrap();
    let home = five.dir.path().join("home");
    let output = Command::new(packer)
        .current_dir(five.images())
        .env("HOME", &home)
        .env("PACKER_CACHE_DIR", home.join("cache"))
        .env("PACKER_CONFIG_DIR", &home)
        .env("CHECKPOINT_DISABLE", "1")
        .arg("validate")
        .arg(format!("-var-file={}", var_file.display()))
        .arg(xtask::packer::template_dir(&five.images()))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe(&output));
}

#[test]
fn terraform_lacks_only_the_new_roles_entries() {
    let five = FiveRoles::new();
    let problems = disagreements(&parse_terraform(&terraform_dir()), &five.registry());
    assert!(
        !problems.is_empty(),
        "Terraform cannot know the scratch role"
    );
    for problem in &problems {
        assert!(problem.contains(ROLE), "not about {ROLE}: {problem}");
    }
    for place in [
        "security.tf local.roles",
        "instances.tf local.peer_tags",
        "security.tf local.peer_flows",
        "outputs.tf output.urls",
        "variables.tf var.ami_ids",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(place)),
            "{place} is part of the recipe:\n{}",
            problems.join("\n")
        );
    }
}

#[test]
fn the_new_roles_scripts_pass_shellcheck_like_the_others() {
    let shellcheck = testkit::require_tool("shellcheck");
    let five = FiveRoles::new();
    let scripts: Vec<PathBuf> = ["install.sh", "self-check.sh"]
        .iter()
        .map(|s| Path::new("images").join(ROLE).join("provisioners").join(s))
        .collect();
    // As images/checks/tests/checks/shellcheck.rs runs it: from the root, following `source`.
    let output = Command::new(shellcheck)
        .current_dir(five.dir.path())
        .args(["--external-sources", "--severity=style", "--format=gcc"])
        .args(&scripts)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe(&output));
}

#[test]
fn the_new_role_rolls_out_in_its_registry_place_and_is_gated() {
    use xtask::deploy::{health, rollout};

    let five = FiveRoles::new();
    let registry = five.registry();
    // Its role.toml's `[deploy] rollout_order = 25` puts it after Prometheus (20), before
    // Grafana (30): no list in Rust names it.
    assert_eq!(
        registry.rollout_order(),
        ["loki", "prometheus", ROLE, "grafana", "app"]
    );
    // Its health gate: Prometheus' targets (every role's node_exporter and service).
    let gate = rollout::gate_roles(&registry, ROLE);
    let endpoints = health::StackEndpoints {
        urls: [(
            "prometheus".to_string(),
            "http://192.0.2.1:9090".to_string(),
        )]
        .into(),
        exposed: [("prometheus".to_string(), true)].into(),
        grafana_auth: None,
    };
    let checks = health::checks_for_roles(&endpoints, &gate);
    assert!(
        checks
            .iter()
            .any(|c| matches!(c, health::Check::PrometheusTargets { .. })),
        "{gate:?}: {checks:?}"
    );

    // `cargo xtask deploy --plan-only` on a copy of images/ with the role: every role gets a
    // new AMI, and the printed roll-out is one apply per role in the registry's order.
    let moto = testkit::Moto::start();
    let scratch = tempfile::tempdir().unwrap();
    let names = registry.names();
    let old: Vec<(String, String)> = names
        .iter()
        .enumerate()
        .map(|(n, role)| (role.to_string(), format!("ami-{:08x}", n + 1)))
        .collect();
    let running: Vec<(&str, &str)> = old.iter().map(|(r, a)| (r.as_str(), a.as_str())).collect();
    let terraform = testkit::FakeTerraform::install(scratch.path(), &running);
    let vars = scratch.path().join("mine.tfvars");
    std::fs::write(&vars, "allowed_web_cidrs = [\"198.51.100.7/32\"]\n").unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    moto.apply_env(&mut command);
    terraform.apply_env(&mut command);
    command
        .args(["deploy", "--plan-only", "--var-file"])
        .arg(&vars)
        .env("OBSTACK_IMAGES_DIR", five.images())
        .env("CARGO_TARGET_DIR", scratch.path().join("target"));
    for (n, role) in names.iter().enumerate() {
        command
            .arg("--ami")
            .arg(format!("{role}=ami-{:08x}", n + 101));
    }
    let output = command.output().unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let steps: Vec<&str> = stderr
        .lines()
        .filter_map(|line| {
            // The roll-out table: STEP ROLE FROM TO HEALTH GATE, e.g. `3/5 tempo ami-... ...`.
            let mut cells = line.split_whitespace();
            let step = cells.next()?;
            step.ends_with("/5").then(|| cells.next()).flatten()
        })
        .collect();
    assert_eq!(
        steps,
        ["loki", "prometheus", ROLE, "grafana", "app"],
        "{stderr}"
    );
    // The first apply changes Loki only; the new role keeps its running AMI until its turn.
    let planned = terraform.planned_ami_ids().unwrap();
    assert_eq!(
        planned[ROLE],
        old.iter().find(|(r, _)| r == ROLE).unwrap().1
    );
    assert_ne!(
        planned["loki"],
        old.iter().find(|(r, _)| r == "loki").unwrap().1
    );
}
