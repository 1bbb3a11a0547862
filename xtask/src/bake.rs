//! `cargo xtask bake`: content-addressed, parallel AMI bakes.
//!
//! Order matters: every check that can fail cheaply (roles, Packer, credentials, pinned
//! checksums) runs before anything is built or created, then the release binaries are
//! built, the base AMI resolved, each role hashed, and only roles without an AMI carrying
//! their hash are handed to Packer, all at once.

pub mod artifacts;
pub mod base;
mod bench;
mod build;
mod interrupt;
mod plan;
mod summary;
mod vars;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use aws_sdk_ec2::types::{AttributeValue, Tag};

pub use bench::bench;
use build::{Job, Outcome};
use plan::{Action, RolePlan};
use summary::{RoleResult, State, Summary};

use crate::ami;
use crate::cli::BakeArgs;
use crate::hash::{self, HashInputs, InputDigests};
use crate::versions::Manifest;

pub fn run(args: BakeArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let roles = selected_roles(&args.only)?;
    let images_dir = hash::images_dir();
    let manifest = Manifest::load(&images_dir.join("versions.toml"))?;
    let real_bake = !args.smoke && !args.dry_run;
    if real_bake {
        // A golden image must never download an unverified release.
        for role in &roles {
            for (name, component) in manifest.for_role(role) {
                component.verified_sha256(name, "amd64")?;
            }
        }
    }
    let packer_version = if args.dry_run {
        None
    } else {
        Some(crate::packer::check_installed()?)
    };

    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let client = match runtime.block_on(connect(args.region.as_deref())) {
        Ok(client) => Some(client),
        Err(error) if args.dry_run => {
            eprintln!("note: AWS is not reachable ({error:#}); the plan shows input digests only");
            None
        }
        Err(error) => return Err(error),
    };

    let artifacts_dir = artifacts::build_release()?;
    let base_filter = base::BaseAmiFilter::from_env();
    let base = match &client {
        Some(client) => match runtime.block_on(base::resolve(client, &base_filter)) {
            Ok(base) => Some(base),
            Err(error) if args.dry_run => {
                eprintln!("note: {error:#}; the plan shows input digests only");
                None
            }
            Err(error) => return Err(error),
        },
        None => None,
    };
    let inputs = HashInputs {
        images_dir: images_dir.clone(),
        manifest: manifest.clone(),
        artifacts_dir: artifacts_dir.clone(),
        base_ami_id: base
            .as_ref()
            .map_or_else(|| "unresolved".to_string(), |b| b.id.clone()),
    };
    let digests: Vec<(String, InputDigests)> = roles
        .iter()
        .map(|role| Ok((role.clone(), hash::role_input_digests(role, &inputs)?)))
        .collect::<anyhow::Result<_>>()?;

    let (Some(client), Some(base)) = (client, base) else {
        return print_offline_plan(&digests, args.json);
    };
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
        return report(&summary, args.json);
    }

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
            .map(|plan| prepare_job(plan, &images_dir, &manifest, &common))
            .collect::<anyhow::Result<Vec<Job>>>()?;
        if let Some(version) = packer_version {
            crate::packer::init_if_needed(version, &images_dir)?;
        }
        let interrupt = interrupt::Interrupt::install(&runtime)?;
        let results = build::run_all(&jobs, args.smoke, &interrupt);
        for ((job, plan), (outcome, started_at, duration)) in
            jobs.iter().zip(&to_build).zip(results)
        {
            if let Outcome::Built { ami_id } = &outcome {
                // Lets a later dry run say which inputs changed since this AMI.
                let tagged = runtime.block_on(
                    client
                        .create_tags()
                        .resources(ami_id)
                        .tags(
                            Tag::builder()
                                .key(ami::TAG_INPUT_DIGESTS)
                                .value(plan.digests.to_tag())
                                .build(),
                        )
                        .send(),
                );
                if let Err(error) = tagged {
                    eprintln!(
                        "warning: {}: cannot tag {ami_id} with its input digests: {error}",
                        job.role
                    );
                }
                // Packer 1.6.6 has no `imds_support`: mark golden AMIs IMDSv2-only here, so
                // any instance launched from one refuses IMDSv1 even without Terraform's
                // metadata_options. (Smoke AMIs in a local endpoint are never launched.)
                if !args.smoke {
                    let marked = runtime.block_on(
                        client
                            .modify_image_attribute()
                            .image_id(ami_id)
                            .imds_support(AttributeValue::builder().value("v2.0").build())
                            .send(),
                    );
                    if let Err(error) = marked {
                        eprintln!(
                            "warning: {}: cannot mark {ami_id} IMDSv2-only ({error}); run \
                             `aws ec2 modify-image-attribute --image-id {ami_id} --imds-support v2.0`",
                            job.role
                        );
                    }
                }
            }
            outcomes.insert(
                job.role.clone(),
                (outcome, started_at, duration, job.log_file.clone()),
            );
        }
    }

    let roles_result = plans
        .iter()
        .map(|plan| match outcomes.remove(&plan.role) {
            None => planned_result(plan, false),
            Some((outcome, started_at, duration, log)) => {
                let mut result = planned_result(plan, false);
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
        })
        .collect();
    let summary = Summary {
        dry_run: false,
        smoke: args.smoke,
        base_ami: Some(base.id),
        roles: roles_result,
    };
    report(&summary, args.json)?;
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
    Ok(())
}

/// `--only` validated, deduplicated, in the project's role order; every role when empty.
fn selected_roles(only: &[String]) -> anyhow::Result<Vec<String>> {
    for role in only {
        hash::check_role(role)?;
    }
    Ok(crate::project::ROLES
        .iter()
        .filter(|role| only.is_empty() || only.iter().any(|o| o == *role))
        .map(|role| role.to_string())
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
    images_dir: &Path,
    manifest: &Manifest,
    common: &vars::Common,
) -> anyhow::Result<Job> {
    let dir = crate::project::target_dir().join("bake").join(&plan.role);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let manifest_file = dir.join("manifest.json");
    let var_file = dir.join("vars.pkrvars.json");
    vars::VarFile::new(
        &plan.role,
        &plan.input_hash,
        manifest,
        common,
        &manifest_file,
    )?
    .write(&var_file)?;
    Ok(Job {
        role: plan.role.clone(),
        template_dir: crate::packer::template_dir(images_dir),
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
    for (role, d) in digests {
        println!("{role}: input hash unknown until the base AMI is resolved; inputs:");
        for (label, value) in &d.entries {
            println!("  {label:<16} {value}");
        }
    }
    Ok(())
}

fn report(summary: &Summary, json: bool) -> anyhow::Result<()> {
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
