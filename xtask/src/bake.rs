//! `cargo xtask bake`: content-addressed, parallel AMI bakes, as a pipeline read top to
//! bottom in [`run`]:
//!
//! 1. inputs: the release binaries (`artifacts`), the base AMI (`base`), each role's
//!    input digests (`crate::hash`, pure);
//! 2. plan: what to build and why (`plan`, pure);
//! 3. execute: the Packer builds, all at once (`build`);
//! 4. record: tags on the new AMIs (`record`);
//! 5. report: the summary table or JSON (`summary`).
//!
//! Every check that can fail cheaply (roles, Packer, credentials, pinned checksums) runs
//! before step 1, so nothing is built or created for a bake that cannot happen.

pub mod artifacts;
pub mod base;
mod bench;
mod build;
mod interrupt;
pub mod plan;
mod record;
pub mod summary;
pub mod vars;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

pub use bench::bench;
use build::{Job, Outcome};
use plan::{Action, RolePlan};
use summary::{RoleResult, State, Summary};

use crate::ami;
use crate::cli::BakeArgs;
use crate::hash::{self, HashInputs, InputDigests};
use crate::report;
use crate::roles::{Registry, Role};
use crate::versions::Manifest;

pub fn run(args: BakeArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let registry = Registry::load_default()?;
    let roles = selected_roles(&registry, &args.only)?;
    let manifest = Manifest::load(&registry.images_dir().join("versions.toml"))?;

    // Checks that fail cheaply, before anything is built or created.
    if !args.smoke && !args.dry_run {
        // A golden image must never download an unverified release.
        for role in &roles {
            for (name, component) in manifest.for_role(&role.name) {
                component.verified_sha256(name, "amd64")?;
            }
        }
    }
    let packer_version = if args.dry_run {
        None
    } else {
        let version = crate::packer::check_installed()?;
        crate::packer::check_for_bake(version, args.smoke)?;
        Some(version)
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let client = match runtime.block_on(connect(args.region.as_deref())) {
        Ok(client) => Some(client),
        Err(error) if args.dry_run => {
            eprintln!(
                "note: AWS is not reachable ({}); the plan shows input digests only",
                report::one_line(&error)
            );
            None
        }
        Err(error) => return Err(error),
    };

    // 1. Inputs: the release binaries, the base AMI, each role's input digests.
    let artifacts_dir = artifacts::build_release(&registry)?;
    let base = match &client {
        Some(client) => match runtime.block_on(base::resolve(client, &base_filter(args.smoke))) {
            Ok(base) => Some(base),
            Err(error) if args.dry_run => {
                eprintln!(
                    "note: {}; the plan shows input digests only",
                    report::one_line(&error)
                );
                None
            }
            Err(error) => return Err(error),
        },
        None => None,
    };
    let inputs = HashInputs {
        images_dir: registry.images_dir().to_path_buf(),
        manifest: manifest.clone(),
        artifacts_dir: artifacts_dir.clone(),
        base_ami_id: base
            .as_ref()
            .map_or_else(|| "unresolved".to_string(), |b| b.id.clone()),
    };
    let digests: Vec<(String, InputDigests)> = roles
        .iter()
        .map(|role| Ok((role.name.clone(), hash::role_input_digests(role, &inputs)?)))
        .collect::<anyhow::Result<_>>()?;
    let (Some(client), Some(base)) = (client, base) else {
        return print_offline_plan(&digests, args.json);
    };

    // 2. Plan: what to build and why, from the digests and the AMIs that exist.
    let existing = runtime.block_on(ami::list(&client, None))?;
    let plans: Vec<RolePlan> = digests
        .into_iter()
        .map(|(role, digests)| plan::decide(&role, digests, &existing, args.force))
        .collect();
    if args.dry_run {
        let summary = Summary {
            dry_run: true,
            smoke: args.smoke,
            base_ami: Some(base.id.clone()),
            roles: plans.iter().map(|p| planned_result(p, true)).collect(),
        };
        return print_summary(&summary, args.json);
    }

    // 3. Execute: one Packer build per role that needs one, all at once.
    let to_build: Vec<&RolePlan> = plans
        .iter()
        .filter(|p| matches!(p.action, Action::Build { .. }))
        .collect();
    let mut outcomes = BTreeMap::new();
    if !to_build.is_empty() {
        let region = client
            .config()
            .region()
            .map(|r| r.to_string())
            .context("no AWS region configured: pass --region or set AWS_REGION")?;
        let endpoint = if args.smoke {
            ec2_endpoint()
        } else {
            String::new()
        };
        let common = vars::Common {
            region: &region,
            git_revision: &vars::git_revision(),
            artifacts_dir: &artifacts_dir,
            base: &base,
            ec2_endpoint: &endpoint,
            require_verified: !args.smoke,
        };
        let jobs = to_build
            .iter()
            .map(|plan| prepare_job(plan, &registry, &manifest, &common))
            .collect::<anyhow::Result<Vec<Job>>>()?;
        if let Some(version) = packer_version {
            crate::packer::init_if_needed(version, registry.images_dir())?;
        }
        let interrupt = interrupt::Interrupt::install(&runtime)?;
        let results = build::run_all(&jobs, args.smoke, &interrupt);

        // 4. Record: tag what was built, so later plans can say what changed.
        for ((job, plan), (outcome, started_at, duration)) in
            jobs.iter().zip(&to_build).zip(results)
        {
            if let Outcome::Built { ami_id } = &outcome {
                let marks = record::Marks {
                    digests: &plan.digests,
                    imdsv2_only: !args.smoke,
                };
                for warning in runtime.block_on(record::mark_built(&client, ami_id, &marks)) {
                    eprintln!("warning: {}: {warning}", job.role);
                }
            }
            outcomes.insert(
                job.role.clone(),
                (outcome, started_at, duration, job.log_file.clone()),
            );
        }
    }

    // 5. Report.
    let summary = Summary {
        dry_run: false,
        smoke: args.smoke,
        base_ami: Some(base.id),
        roles: plans
            .iter()
            .map(|plan| finished_result(plan, outcomes.remove(&plan.role)))
            .collect(),
    };
    print_summary(&summary, args.json)?;
    eprintln!("bake finished in {:.1}s", started.elapsed().as_secs_f64());
    let failed = summary.failed_roles();
    if !failed.is_empty() {
        let finished: Vec<&str> = summary
            .roles
            .iter()
            .filter(|r| matches!(r.state, State::Built | State::UpToDate))
            .map(|r| r.role.as_str())
            .collect();
        anyhow::bail!(
            "{} did not bake (finished: {}); see target/bake/<role>/packer.log",
            failed.join(", "),
            if finished.is_empty() {
                "none".to_string()
            } else {
                finished.join(", ")
            }
        );
    }
    if args.release {
        let chosen = summary
            .roles
            .iter()
            .filter_map(|r| Some((r.role.clone(), r.ami_id.clone()?)))
            .collect();
        runtime.block_on(async {
            let store =
                crate::release::store::Store::connect(args.region.as_deref(), &args.stack).await?;
            crate::release::create(&store, &client, &chosen, args.channel.as_deref()).await
        })?;
    }
    Ok(())
}

/// The base image filter: the environment's, or for a smoke bake without one, moto's
/// stand-in (a fresh moto has no Ubuntu 24.04 image).
fn base_filter(smoke: bool) -> base::BaseAmiFilter {
    let mut filter = base::BaseAmiFilter::from_env();
    let name_set = std::env::var_os("OBSTACK_BASE_AMI_NAME").is_some_and(|v| !v.is_empty());
    if smoke && !name_set {
        filter.name = crate::moto::BASE_AMI_NAME.to_string();
    }
    filter
}

/// A role's line of the summary once its build (if any) finished.
fn finished_result(
    plan: &RolePlan,
    outcome: Option<(Outcome, std::time::SystemTime, std::time::Duration, PathBuf)>,
) -> RoleResult {
    let mut result = planned_result(plan, false);
    let Some((outcome, started_at, duration, log)) = outcome else {
        return result;
    };
    result.duration_secs = duration.as_secs_f64();
    result.started_at_unix = started_at
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs_f64());
    result.log = Some(log.display().to_string());
    match outcome {
        Outcome::Built { ami_id } => {
            result.state = State::Built;
            result.ami_id = Some(ami_id);
        }
        Outcome::Failed { error } => {
            result.state = State::Failed;
            result.error = Some(error);
        }
        Outcome::Interrupted => result.state = State::Interrupted,
    }
    result
}

/// `--only` validated, deduplicated, in the registry's order; every role when empty.
fn selected_roles<'a>(registry: &'a Registry, only: &[String]) -> anyhow::Result<Vec<&'a Role>> {
    for role in only {
        registry.role(role)?;
    }
    Ok(registry
        .roles()
        .iter()
        .filter(|role| only.is_empty() || only.contains(&role.name))
        .collect())
}

/// An EC2 client whose credentials resolve: a one-line error now rather than a Packer failure later.
async fn connect(region: Option<&str>) -> anyhow::Result<aws_sdk_ec2::Client> {
    use aws_sdk_ec2::config::ProvideCredentials;
    let config = ami::sdk_config(region).await?;
    let provider = config
        .credentials_provider()
        .context("no AWS credentials: set AWS_PROFILE (after `aws configure` or `aws sso login`) or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")?;
    provider.provide_credentials().await.map_err(|error| {
        anyhow::anyhow!(
            "no AWS credentials ({error}): set AWS_PROFILE (after `aws configure` or `aws sso login`) or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        )
    })?;
    Ok(aws_sdk_ec2::Client::new(&config))
}

/// The custom EC2 endpoint from the standard settings, for the smoke source.
fn ec2_endpoint() -> String {
    ["AWS_ENDPOINT_URL_EC2", "AWS_ENDPOINT_URL"]
        .iter()
        .find_map(|key| std::env::var(key).ok().filter(|v| !v.is_empty()))
        .unwrap_or_default()
}

/// Writes the role's var file under `target/bake/<role>/` and describes its build.
fn prepare_job(
    plan: &RolePlan,
    registry: &Registry,
    manifest: &Manifest,
    common: &vars::Common,
) -> anyhow::Result<Job> {
    let dir = crate::project::target_dir().join("bake").join(&plan.role);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let manifest_file = dir.join("manifest.json");
    let var_file = dir.join("vars.pkrvars.json");
    vars::VarFile::new(
        registry.role(&plan.role)?,
        &plan.input_hash,
        manifest,
        common,
        &manifest_file,
    )?
    .write(&var_file)?;
    Ok(Job {
        role: plan.role.clone(),
        template_dir: crate::packer::template_dir(registry.images_dir()),
        var_file,
        log_file: dir.join("packer.log"),
        manifest_file,
    })
}

fn planned_result(plan: &RolePlan, dry_run: bool) -> RoleResult {
    let (state, ami_id, reasons) = match &plan.action {
        Action::UpToDate { ami } => (State::UpToDate, Some(ami.id.clone()), vec![]),
        Action::Build { reasons } => (
            if dry_run {
                State::WouldBuild
            } else {
                State::Failed
            },
            None,
            reasons.clone(),
        ),
    };
    RoleResult {
        role: plan.role.clone(),
        input_hash: Some(plan.input_hash.clone()),
        ami_id,
        state,
        duration_secs: 0.0,
        started_at_unix: None,
        reasons,
        error: None,
        log: None,
    }
}

/// The plan when AWS cannot be asked: the per-input digests, which already show what a
/// change touches.
fn print_offline_plan(digests: &[(String, InputDigests)], json: bool) -> anyhow::Result<()> {
    if json {
        let value: BTreeMap<&str, &BTreeMap<String, String>> = digests
            .iter()
            .map(|(role, d)| (role.as_str(), &d.entries))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "dry_run": true, "offline": true, "inputs": value })
            )?
        );
        return Ok(());
    }
    println!("input hashes are unknown until the base AMI is resolved; the inputs so far:");
    let rows = digests.iter().flat_map(|(role, d)| {
        d.entries
            .iter()
            .map(move |(label, value)| [role.as_str(), label.as_str(), value.as_str()])
    });
    print!(
        "{}",
        crate::table::render(&["ROLE", "INPUT", "DIGEST"], rows)
    );
    Ok(())
}

fn print_summary(summary: &Summary, json: bool) -> anyhow::Result<()> {
    if json {
        eprint!("{}", summary.table());
        println!(
            "{}",
            serde_json::to_string_pretty(summary).context("cannot serialise the summary")?
        );
    } else {
        print!("{}", summary.table());
    }
    Ok(())
}
