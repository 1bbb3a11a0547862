//! `stack-agent`: thin CLI over the library. Parses flags, runs a mode, maps errors to the
//! exit codes documented in `--help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use stack_agent::mount::{Lookup, MountOptions};
use stack_agent::{Agent, AgentError, AgentOptions, Restarter, TagSource, WaitPolicy};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  unexpected error
  2  bad command line
  3  timed out waiting for required tags (render)
  4  a tag has a bad value (nothing was written)
  5  render error: broken role spec or template, or a file could not be written
  6  tag source or AWS error that outlasted the wait (no IMDSv2 token, EC2/SSM API failure)
  7  mount: the data volume never appeared (not attached within --device-timeout and
     --late-timeout); nothing was mounted
  8  mount: the data volume holds another filesystem, a partition table or other
     signatures; it is never formatted, and was not mounted
  9  mount: the data volume is smaller than the role's [data] min_size_gib; not mounted
 10  mount: formatting, checking, growing, mounting or preparing the data volume failed;
     not left mounted
 11  mount: the data volume's filesystem has errors `e2fsck -p` does not repair on its own;
     neither mounted nor formatted (repair it by hand: e2fsck -f DEVICE, then reboot)";

/// Boot agent: renders this instance's service configs from its EC2 tags.
#[derive(Debug, Parser)]
#[command(name = "stack-agent", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Render once (a systemd oneshot before the role's services); waits for required tags.
    #[command(after_help = EXIT_CODES)]
    Render {
        #[command(flatten)]
        common: Common,
        /// Give up waiting for required tags after this many seconds.
        #[arg(long, value_name = "SECS", default_value = "600", value_parser = seconds)]
        wait_timeout: Duration,
        /// First delay between attempts, in seconds; it doubles up to --max-delay.
        #[arg(long, value_name = "SECS", default_value = "1", value_parser = seconds)]
        min_delay: Duration,
        /// Longest delay between attempts, in seconds.
        #[arg(long, value_name = "SECS", default_value = "30", value_parser = seconds)]
        max_delay: Duration,
    },
    /// Mount this role's EBS data volume (the tag `obstack:data-volume` names it) at its
    /// `[data]` mount point, formatting it only when it holds nothing at all; a oneshot
    /// before `render` and the role's services. A role without `[data]` has nothing to do.
    #[command(after_help = EXIT_CODES)]
    Mount {
        #[command(flatten)]
        common: Common,
        /// Give up waiting for the `obstack:data-volume` tag after this many seconds.
        #[arg(long, value_name = "SECS", default_value = "600", value_parser = seconds)]
        wait_timeout: Duration,
        /// First delay between tag reads, in seconds; it doubles up to --max-delay.
        #[arg(long, value_name = "SECS", default_value = "1", value_parser = seconds)]
        min_delay: Duration,
        /// Longest delay between tag reads, in seconds.
        #[arg(long, value_name = "SECS", default_value = "30", value_parser = seconds)]
        max_delay: Duration,
        /// How long to wait for the volume's block device (its attachment), looking every
        /// quarter second.
        #[arg(long, value_name = "SECS", default_value = "300", value_parser = seconds)]
        device_timeout: Duration,
        /// After --device-timeout, keep looking for a late attachment (an interrupted or
        /// targeted `terraform apply` finished later) this many seconds more, with backoff
        /// up to a minute between looks; then give up (exit code 7). 0: give up at once.
        #[arg(long, value_name = "SECS", default_value = "21600", value_parser = seconds)]
        late_timeout: Duration,
        /// Where udev links NVMe devices by serial (nvme-Amazon_Elastic_Block_Store_vol...).
        #[arg(long, value_name = "DIR", default_value = "/dev/disk/by-id")]
        devices_dir: PathBuf,
        /// sysfs, scanned for the volume's NVMe serial when the link is not there (yet).
        #[arg(long, value_name = "DIR", default_value = "/sys")]
        sysfs: PathBuf,
    },
    /// Poll the tags; on a change, re-render and restart only the affected services.
    #[command(after_help = EXIT_CODES)]
    Watch {
        #[command(flatten)]
        common: Common,
        /// Seconds between polls.
        #[arg(long, value_name = "SECS", default_value = "30", value_parser = seconds)]
        interval: Duration,
        /// Shell command that restarts a unit; the unit name is appended as one argument.
        /// Default: `systemctl reload-or-restart UNIT`.
        #[arg(long, value_name = "CMD")]
        restart_command: Option<String>,
    },
}

#[derive(Debug, Args)]
struct Common {
    /// This instance's role (a directory under --spec-dir).
    #[arg(long)]
    role: String,
    /// Where tags come from: `imds` (IMDSv2), `ec2` (DescribeTags) or `file:PATH` (TOML/JSON).
    #[arg(long, value_name = "SOURCE", default_value = "imds")]
    tags_from: TagSource,
    /// Instance id (default: from IMDS; `local` for file sources).
    #[arg(long, value_name = "ID")]
    instance_id: Option<String>,
    /// Prefix for every output path, e.g. a scratch directory for a local run.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Directory holding <role>/role.toml and its templates.
    #[arg(
        long,
        value_name = "DIR",
        env = "STACK_AGENT_SPEC_DIR",
        default_value = "/usr/share/stack-agent/roles"
    )]
    spec_dir: PathBuf,
    /// Print what would be written (secrets are neither fetched nor shown) and change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// How often `mount` looks for the data volume's device: an attachment shows up within
/// seconds, and a look is two directory reads.
const DEVICE_POLL: Duration = Duration::from_millis(250);
/// The longest pause between two looks for a late attachment.
const LATE_MAX_DELAY: Duration = Duration::from_secs(60);

fn seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| format!("`{text}` is not a number of seconds"))
}

impl Common {
    fn into_options(self) -> anyhow::Result<AgentOptions> {
        let root = match self.root {
            // Templates embed the root in absolute paths, so make it absolute too.
            Some(dir) => std::path::absolute(&dir)?.display().to_string(),
            None => String::new(),
        };
        Ok(AgentOptions {
            spec_dir: self.spec_dir,
            role: self.role,
            source: self.tags_from,
            instance_id: self.instance_id,
            root,
            dry_run: self.dry_run,
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("stack-agent: error: {error:#}");
            ExitCode::from(exit_code(&error))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Render {
            common,
            wait_timeout,
            min_delay,
            max_delay,
        } => {
            let agent = Agent::new(common.into_options()?)?;
            let policy = WaitPolicy {
                timeout: wait_timeout,
                min_delay,
                max_delay: max_delay.max(min_delay),
            };
            agent.render(policy).await?;
            Ok(())
        }
        Command::Mount {
            common,
            wait_timeout,
            min_delay,
            max_delay,
            device_timeout,
            late_timeout,
            devices_dir,
            sysfs,
        } => {
            let dry_run = common.dry_run;
            let agent = Agent::new(common.into_options()?)?;
            let policy = WaitPolicy {
                timeout: wait_timeout,
                min_delay,
                max_delay: max_delay.max(min_delay),
            };
            let options = MountOptions {
                lookup: Lookup {
                    devices_dir,
                    sysfs_dir: sysfs,
                },
                device_timeout,
                poll: DEVICE_POLL,
                late_timeout,
                late_max_delay: LATE_MAX_DELAY,
                dry_run,
            };
            agent.mount(policy, options).await?;
            Ok(())
        }
        Command::Watch {
            common,
            interval,
            restart_command,
        } => {
            let dry_run = common.dry_run;
            let agent = Agent::new(common.into_options()?)?;
            let restarter = match (dry_run, restart_command) {
                (true, _) => Restarter::DryRun,
                (false, Some(command)) => Restarter::Command(command),
                (false, None) => Restarter::Systemd,
            };
            agent.watch(interval, &restarter).await?;
            Ok(())
        }
    }
}

fn exit_code(error: &anyhow::Error) -> u8 {
    match error.downcast_ref::<AgentError>() {
        Some(AgentError::TimedOut { .. } | AgentError::MissingTags(_)) => 3,
        Some(AgentError::BadTag { .. }) => 4,
        Some(AgentError::Spec { .. } | AgentError::Template { .. } | AgentError::Write { .. }) => 5,
        Some(AgentError::TagSource { .. } | AgentError::Secret { .. }) => 6,
        Some(AgentError::VolumeMissing { .. }) => 7,
        Some(AgentError::VolumeForeign { .. }) => 8,
        Some(AgentError::VolumeTooSmall { .. }) => 9,
        Some(AgentError::Mount { .. }) => 10,
        Some(AgentError::NeedsRepair { .. }) => 11,
        None => 1,
    }
}
