//! The two modes: `render` (once, waiting with backoff for required tags) and `watch`
//! (poll, re-render, restart what changed). Both share one poll: read tags, validate,
//! render everything in memory, and only then write.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use crate::aws::AwsConfig;
use crate::context;
use crate::error::AgentError;
use crate::log;
use crate::mount::{self, MountOptions, Mounted, VolumeId};
use crate::render::{self, RenderedFile};
use crate::restart::Restarter;
use crate::secrets;
use crate::source::{TagReader, TagSource};
use crate::spec::{rooted, RoleSpec};
use crate::tags;
use crate::write::{self, Ownership, WriteOutcome};

/// What the agent renders, from where, to where.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub spec_dir: PathBuf,
    pub role: String,
    pub source: TagSource,
    /// Overrides the id IMDS reports (`local` for file sources when absent).
    pub instance_id: Option<String>,
    /// Prefix of every output path (`""` on EC2).
    pub root: String,
    /// Print instead of writing or restarting.
    pub dry_run: bool,
}

/// How long and how often `render` waits for required tags.
#[derive(Debug, Clone, Copy)]
pub struct WaitPolicy {
    /// Total time spent sleeping between attempts before giving up.
    pub timeout: Duration,
    /// First delay; it doubles (with jitter) up to `max_delay`.
    pub min_delay: Duration,
    pub max_delay: Duration,
}

/// Everything one poll would write.
struct Plan {
    files: Vec<RenderedFile>,
    /// Warnings the templates raised, by output path: logged with the file.
    warnings: Vec<(PathBuf, String)>,
    /// In dry-run, secrets are not fetched: (output path, parameter name).
    unfetched_secrets: Vec<(PathBuf, String)>,
    /// Optional secret files whose tag is gone: (path, services), removed by `apply`.
    orphaned_secrets: Vec<(PathBuf, Vec<String>)>,
}

pub struct Agent {
    spec: RoleSpec,
    root: String,
    reader: TagReader,
    aws: Arc<AwsConfig>,
    dry_run: bool,
    ownership: Ownership,
}

impl Agent {
    /// Loads the role spec; fails on a broken spec before any tag is read.
    pub fn new(options: AgentOptions) -> Result<Agent, AgentError> {
        let spec = RoleSpec::load(&options.spec_dir, &options.role)?;
        let aws = Arc::new(AwsConfig::default());
        let reader = TagReader::new(options.source, options.instance_id, aws.clone());
        Ok(Agent {
            ownership: write::Ownership::for_root(&options.root),
            spec,
            root: options.root,
            reader,
            aws,
            dry_run: options.dry_run,
        })
    }

    /// Renders once. Waits (exponential backoff, bounded by `policy.timeout`) while tags are
    /// missing or AWS is unreachable; fails at once on a bad value or a broken template.
    /// Returns the paths it wrote.
    pub async fn render(&self, policy: WaitPolicy) -> Result<Vec<PathBuf>, AgentError> {
        log::event(format_args!(
            "rendering role {} from tags via {}",
            self.spec.role,
            self.reader.source()
        ));
        let plan = while_waiting(policy, || self.plan()).await?;
        let written = self.apply(&plan, true)?;
        Ok(written.into_iter().map(|(path, _)| path).collect())
    }

    /// Polls every `interval` forever. Every change is written and its services restarted;
    /// problems (missing or bad tags, AWS errors) are logged once and the current files kept.
    pub async fn watch(&self, interval: Duration, restarter: &Restarter) -> Result<(), AgentError> {
        log::event(format_args!(
            "watching role {} via {} every {:.1}s",
            self.spec.role,
            self.reader.source(),
            interval.as_secs_f64()
        ));
        let mut last_problem: Option<String> = None;
        loop {
            match self.plan().await.and_then(|plan| self.apply(&plan, false)) {
                Ok(written) => {
                    last_problem = None;
                    let units: BTreeSet<&str> = written
                        .iter()
                        .flat_map(|(_, services)| services.iter().map(String::as_str))
                        .collect();
                    for unit in units {
                        restarter.restart(unit);
                    }
                }
                Err(error) => {
                    let message = match &error {
                        AgentError::BadTag { .. } => format!("{error}; keeping the current files"),
                        other => waiting_message(other),
                    };
                    if last_problem.as_deref() != Some(message.as_str()) {
                        log::event(&message);
                        last_problem = Some(message);
                    }
                }
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// One poll: read tags, validate them, render every file in memory, fetch secrets.
    async fn plan(&self) -> Result<Plan, AgentError> {
        let tags = self.reader.read().await?;
        let instance_id = self.reader.instance_id().await?;
        let context = match context::build(&self.spec, &tags, &self.root, &instance_id) {
            // Report every missing tag (secret names too), not just the peers.
            Err(AgentError::MissingTags(_)) => {
                return Err(AgentError::MissingTags(context::missing_tags(
                    &self.spec, &tags,
                )))
            }
            other => other?,
        };
        let missing = context::missing_tags(&self.spec, &tags);
        if !missing.is_empty() {
            return Err(AgentError::MissingTags(missing));
        }
        let rendered = render::render_with_warnings(&self.spec, &context)?;
        // Secrets first: a config never names a file that is not written yet.
        let mut files = Vec::new();
        let wanted = self.spec.secrets.iter().filter(|s| s.is_wanted(&tags));
        let mut unfetched_secrets = Vec::new();
        if self.dry_run {
            for secret in wanted {
                let parameter = secrets::parameter_name(secret, &tags)?;
                unfetched_secrets.push((rooted(&self.root, &secret.path), parameter.to_string()));
            }
        } else if wanted.count() > 0 {
            let ssm = self.aws.ssm().await;
            files = secrets::fetch(&self.spec, &tags, &self.root, ssm).await?;
        }
        files.extend(rendered.files);
        Ok(Plan {
            files,
            warnings: rendered.warnings,
            unfetched_secrets,
            orphaned_secrets: secrets::orphaned(&self.spec, &tags, &self.root),
        })
    }

    /// Writes (or, in dry-run, prints) a plan; returns each written path with its services.
    fn apply(
        &self,
        plan: &Plan,
        log_unchanged: bool,
    ) -> Result<Vec<(PathBuf, Vec<String>)>, AgentError> {
        if self.dry_run {
            return Ok(self.print(plan));
        }
        let mut written = Vec::new();
        for file in &plan.files {
            let report = match write::write_file(file, self.ownership)? {
                WriteOutcome::Written => {
                    log::event(format_args!("wrote {}", describe_file(file)));
                    written.push((file.path.clone(), file.services.clone()));
                    true
                }
                WriteOutcome::Unchanged if log_unchanged => {
                    log::event(format_args!("unchanged {}", file.path.display()));
                    true
                }
                WriteOutcome::Unchanged => false,
            };
            if report {
                log_warnings(plan, &file.path);
            }
        }
        for (path, services) in &plan.orphaned_secrets {
            std::fs::remove_file(path).map_err(|e| AgentError::write(path, e))?;
            log::event(format_args!(
                "removed secret {}: its tag is gone and no config names it",
                path.display()
            ));
            written.push((path.clone(), services.clone()));
        }
        for created in secrets::ensure_generated(&self.spec, &self.root, self.ownership)? {
            log::event(format_args!("generated secret {}", created.path.display()));
            written.push((created.path, created.services));
        }
        Ok(written)
    }

    /// Dry-run output on stdout: each file's header, then its contents (never a secret's).
    fn print(&self, plan: &Plan) -> Vec<(PathBuf, Vec<String>)> {
        let mut would_write = Vec::new();
        for file in &plan.files {
            let unchanged = write::is_unchanged(&file.path, file.contents.as_bytes());
            let verdict = if unchanged {
                "unchanged"
            } else {
                "would write"
            };
            println!("--- {verdict} {}", describe_file(file));
            log_warnings(plan, &file.path);
            if !file.sensitive {
                print!("{}", file.contents);
                if !file.contents.ends_with('\n') {
                    println!();
                }
            }
            if !unchanged {
                would_write.push((file.path.clone(), file.services.clone()));
            }
        }
        for (path, parameter) in &plan.unfetched_secrets {
            println!(
                "--- would write secret {} from SSM parameter {parameter} (not fetched in dry-run)",
                path.display()
            );
        }
        for (path, _) in &plan.orphaned_secrets {
            println!(
                "--- would remove secret {}: its tag is gone",
                path.display()
            );
            would_write.push((path.clone(), Vec::new()));
        }
        for generated in &self.spec.generated {
            let path = rooted(&self.root, &generated.path);
            if !path.exists() {
                println!(
                    "--- would generate secret {} ({} random bytes, hex)",
                    path.display(),
                    generated.bytes
                );
            }
        }
        would_write
    }

    /// The `mount` step: waits (like `render`) for the `obstack:data-volume` tag, then mounts
    /// that volume as the role's `[data]` says ([`mount::prepare`]). `Ok(None)` for a role
    /// without `[data]`, which has nothing to mount.
    pub async fn mount(
        &self,
        policy: WaitPolicy,
        options: MountOptions,
    ) -> Result<Option<Mounted>, AgentError> {
        let Some(data) = self.spec.data.clone() else {
            log::event(format_args!(
                "role {} keeps no data: nothing to mount",
                self.spec.role
            ));
            return Ok(None);
        };
        let value = while_waiting(policy, || async {
            let tags = self.reader.read().await?;
            tags.get(tags::DATA_VOLUME)
                .cloned()
                .ok_or_else(|| AgentError::MissingTags(vec![tags::DATA_VOLUME.to_string()]))
        })
        .await?;
        let volume = VolumeId::parse(&value)
            .map_err(|reason| AgentError::bad_tag(tags::DATA_VOLUME, reason))?;
        let root = self.root.clone();
        // Polling a device and running mkfs block: off the async runtime's threads.
        tokio::task::spawn_blocking(move || mount::prepare(&data, &volume, &root, &options))
            .await
            .map_err(|e| AgentError::Mount {
                volume: value,
                message: format!("the mount step stopped: {e}"),
            })?
            .map(Some)
    }
}

/// Runs `attempt` until it succeeds, retrying with exponential backoff (bounded by
/// `policy.timeout`) while its error is transient: tags missing, AWS unreachable. Missing
/// tags at the end become [`AgentError::TimedOut`].
async fn while_waiting<T, F, Fut>(policy: WaitPolicy, attempt: F) -> Result<T, AgentError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, AgentError>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(policy.min_delay)
        .with_max_delay(policy.max_delay)
        .with_jitter()
        .without_max_times()
        .with_total_delay(Some(policy.timeout));
    let mut tries = 0u32;
    attempt
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(AgentError::is_transient)
        .notify(|error, delay| {
            tries += 1;
            log::event(format_args!(
                "{}; attempt {tries}, retrying in {:.1}s",
                waiting_message(error),
                delay.as_secs_f64()
            ));
        })
        .await
        .map_err(|error| match error {
            AgentError::MissingTags(missing) => AgentError::TimedOut {
                waited: policy.timeout,
                missing,
            },
            other => other,
        })
}

/// `/etc/x (0640 root:grafana, services a, b)`, plus `secret` for sensitive files.
fn describe_file(file: &RenderedFile) -> String {
    let owner = match (&file.owner, &file.group) {
        (None, None) => String::new(),
        (owner, group) => format!(
            " {}:{}",
            owner.as_deref().unwrap_or("-"),
            group.as_deref().unwrap_or("-")
        ),
    };
    let services = if file.services.is_empty() {
        String::new()
    } else {
        format!(", services {}", file.services.join(" "))
    };
    let kind = if file.sensitive { "secret " } else { "" };
    format!(
        "{kind}{} ({:04o}{owner}{services})",
        file.path.display(),
        file.mode
    )
}

/// The warnings the templates raised for the file at `path`, one line each.
fn log_warnings(plan: &Plan, path: &std::path::Path) {
    for (_, message) in plan.warnings.iter().filter(|(p, _)| p == path) {
        log::event(format_args!("warning: {}: {message}", path.display()));
    }
}

fn waiting_message(error: &AgentError) -> String {
    match error {
        AgentError::MissingTags(missing) => format!("waiting for tag(s) {}", missing.join(", ")),
        other => format!("waiting: {other}"),
    }
}
