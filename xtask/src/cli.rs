//! The whole command-line surface of `cargo xtask`, in one place.
//! Flag names here are a contract with the README, CI workflows and tests.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "Bake, launch and run the observability stack",
    after_help = "Examples:\n  cargo xtask up                 # the whole stack on this machine, no AWS\n  cargo xtask bake --dry-run     # what would be baked, and why\n  cargo xtask bake               # bake the AMIs whose inputs changed\n  cargo xtask deploy             # launch the baked AMIs with Terraform\n  cargo xtask open grafana       # Grafana of the deployed stack on 127.0.0.1"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Benchmark the demo app against a bare warp server on loopback.
    Bench(BenchArgs),
    /// Bake the golden AMIs whose inputs changed (content-addressed: unchanged inputs are never rebaked).
    Bake(BakeArgs),
    /// List the baked AMIs per role, with their input hash and whether an instance uses them.
    Images(ImagesArgs),
    /// Deregister old AMIs and delete their snapshots, keeping the newest N per role and any in use.
    Prune(PruneArgs),
    /// Pin upstream components: read each release's published checksums and rewrite images/versions.toml.
    Pin(PinArgs),
    /// Launch the stack on AWS from the AMIs that match this checkout, and wait until it is healthy.
    Deploy(DeployArgs),
    /// Destroy the deployed stack, keeping its data (snapshots, Loki's bucket, the data key) unless --delete-data.
    Destroy(DestroyArgs),
    /// Replace a stateful role's data volume with one made from a snapshot, then prove the role healthy.
    Restore(RestoreArgs),
    /// Show the deployed instances, the AMIs they run and the health of each service.
    Status(StatusArgs),
    /// Run the whole stack on this machine (127.0.0.1), no AWS and no Docker.
    Up(UpArgs),
    /// Stop a stack started with `cargo xtask up --detach`.
    Down(DownArgs),
    /// Show what a local stack is running.
    Ps(PsArgs),
    /// Record a release: every role's AMI, input hash and the git revision, in SSM.
    Release(ReleaseArgs),
    /// List the releases of a stack and the channels pointing at them.
    Releases(ReleasesArgs),
    /// Point a channel at a release (or at the release another channel points at).
    Promote(PromoteArgs),
    /// Move a channel back to the release it pointed at before.
    Rollback(RollbackArgs),
    /// Verify a stack end to end: a request through the app, Loki, Prometheus and Grafana.
    Verify(VerifyArgs),
    /// Open a UI of the deployed stack on 127.0.0.1 through a Session Manager tunnel (no open port needed).
    Open(OpenArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchTarget {
    /// The demo app versus a bare warp server.
    App,
    /// A no-op `bake` of all four roles against a local moto server.
    Bake,
    /// The boot agent's data-volume mount step on loop devices (root): first and later boot, repair of a dirty 8 GiB ext4, growth from 8 to 16 GiB.
    Mount,
    /// Each role's image booted as a VM (root, qemu): seconds to every unit active and to
    /// healthy, first boot and replacement, and whether KVM or TCG ran.
    Boot,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cargo xtask bench app\n  cargo xtask bench app --duration 5s --rounds 5\n  cargo xtask bench mount   # as root: it formats and mounts a loop device\n  cargo xtask bench boot    # as root, with qemu: boots every role's image as a VM\n  cargo xtask bench boot --role loki --role grafana"
)]
pub struct BenchArgs {
    /// What to benchmark.
    pub target: BenchTarget,
    /// `boot` only: boot this role (repeatable; default every role).
    #[arg(long = "role", value_name = "ROLE")]
    pub roles: Vec<String>,
    /// How long each load run lasts, e.g. `10s` (at least 1s).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Interleaved rounds of runs for `app` (volumes per role for `mount`); more rounds
    /// average out a noisy machine.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cargo xtask bake --dry-run\n  cargo xtask bake --only app --only grafana\n  cargo xtask bake --json > bake.json\n  cargo xtask bake --release --channel candidate\n  AWS_ENDPOINT_URL=http://127.0.0.1:4566 cargo xtask bake --smoke   # against moto_server -p 4566"
)]
pub struct BakeArgs {
    /// Bake only this role (repeatable): app, prometheus, loki, grafana.
    #[arg(long = "only", value_name = "ROLE")]
    pub only: Vec<String>,
    /// Bake even when an AMI with the same input hash exists.
    #[arg(long)]
    pub force: bool,
    /// Print the plan (hashes, what would be built and why) and build nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the summary as JSON on stdout (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// AWS region (default: the standard AWS settings).
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,
    /// Build with the images' smoke source: registers an AMI without provisioning (moto, credential checks).
    #[arg(long)]
    pub smoke: bool,
    /// After a successful bake, record the AMIs of every role as a release (`cargo xtask releases`).
    #[arg(long, conflicts_with_all = ["only", "dry_run"])]
    pub release: bool,
    /// With --release: point this channel at the new release, e.g. `candidate`.
    #[arg(long, requires = "release", value_name = "NAME")]
    pub channel: Option<String>,
    /// With --release: the stack whose releases these are (SSM `/obstack/<stack>/`).
    #[arg(
        long,
        env = "OBSTACK_STACK",
        default_value = "obstack",
        value_name = "NAME"
    )]
    pub stack: String,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
    /// AWS region (default: the standard AWS settings).
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cargo xtask prune --keep 5 --dry-run\n  cargo xtask prune --keep 5\n  cargo xtask prune --keep 3 --keep-channel-history 10 --stack production"
)]
pub struct PruneArgs {
    /// How many of the newest AMIs to keep per role.
    #[arg(long)]
    pub keep: usize,
    /// Also keep every AMI of the releases each channel pointed at in its last N moves (and now).
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub keep_channel_history: usize,
    /// The stack whose channels protect AMIs (SSM `/obstack/<stack>/channels/`).
    #[arg(
        long,
        env = "OBSTACK_STACK",
        default_value = "obstack",
        value_name = "NAME"
    )]
    pub stack: String,
    /// Print what would be deleted and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// AWS region (default: the standard AWS settings).
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cargo xtask pin                  # re-read the checksums of every pinned version\n  cargo xtask pin prometheus@3.13.1\n  cargo xtask pin --check          # offline: list entries that lack a verified checksum"
)]
pub struct PinArgs {
    /// Components to pin, as NAME or NAME@VERSION (default: all, at their current versions).
    #[arg(value_name = "COMPONENT[@VERSION]")]
    pub components: Vec<String>,
    /// Only report entries without a verified checksum; change nothing, fetch nothing.
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cargo xtask deploy --plan-only\n  cargo xtask deploy --auto-approve --var-file prod.tfvars\n  cargo xtask deploy --latest\n  cargo xtask deploy --channel stable\n  cargo xtask deploy --release 20261203-034012-1a2b3c4 --stack staging\n  cargo xtask deploy --backend-config s3.tfbackend   # shared state in S3\n  cargo xtask deploy --tunnel --auto-approve   # health gate through Session Manager (a CI runner)"
)]
pub struct DeployArgs {
    /// Apply without asking for confirmation.
    #[arg(long)]
    pub auto_approve: bool,
    /// Show the roll-out (which applies, in which order, with which AMIs) and Terraform's plan of the first apply, and stop.
    #[arg(long)]
    pub plan_only: bool,
    /// Replace every role whose AMI changes in one apply, as for a first deploy, instead of one role at a time with a health gate after each.
    #[arg(long)]
    pub all_at_once: bool,
    /// Keep the Terraform state in S3: a file with the S3 backend's settings (bucket, key, region, use_lockfile = true); see terraform/README.md.
    #[arg(long, value_name = "FILE")]
    pub backend_config: Option<PathBuf>,
    /// An extra Terraform variable file (e.g. allowed_web_cidrs).
    #[arg(long, value_name = "FILE")]
    pub var_file: Option<PathBuf>,
    /// Use the newest AMI of each role instead of the one matching this checkout's hashes.
    #[arg(long, conflicts_with = "ami")]
    pub latest: bool,
    /// An explicit AMI for a role, as ROLE=ami-... (repeatable).
    #[arg(long, value_name = "ROLE=AMI")]
    pub ami: Vec<String>,
    /// Deploy the release a channel points at (`cargo xtask releases`), e.g. `stable`.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["ami", "latest", "release"])]
    pub channel: Option<String>,
    /// Deploy one release by id (`cargo xtask releases`), e.g. the candidate a pipeline verified: a channel may move meanwhile, an id does not.
    #[arg(long, value_name = "ID", conflicts_with_all = ["ami", "latest"])]
    pub release: Option<String>,
    /// With --channel or --release: the stack whose releases these are (SSM `/obstack/<stack>/`).
    #[arg(
        long,
        env = "OBSTACK_STACK",
        default_value = "obstack",
        value_name = "NAME"
    )]
    pub stack: String,
    /// How long to wait for the stack to become healthy, e.g. `10m`.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub health_timeout: Duration,
    /// Run the health gate through Session Manager tunnels even where a direct route answers (by default a tunnel is opened only for what cannot be reached directly).
    #[arg(long)]
    pub tunnel: bool,
    /// AWS region (default: the standard AWS settings).
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cargo xtask destroy --var-file my.tfvars                 # keeps the snapshots, Loki's bucket and the data key\n  cargo xtask destroy --var-file my.tfvars --delete-data   # deletes them too (asks first)"
)]
pub struct DestroyArgs {
    /// Destroy without asking for confirmation.
    #[arg(long)]
    pub auto_approve: bool,
    /// The same extra Terraform variable file given to deploy.
    #[arg(long, value_name = "FILE")]
    pub var_file: Option<PathBuf>,
    /// Delete the data too: every snapshot of the data volumes, Loki's bucket with its logs, and the data key (scheduled, 30 days). Without it they are kept.
    #[arg(long)]
    pub delete_data: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cargo xtask restore --role loki --latest --plan-only\n  cargo xtask restore --role prometheus --snapshot snap-0123456789abcdef0\n  cargo xtask restore --role grafana --latest --auto-approve --var-file prod.tfvars"
)]
pub struct RestoreArgs {
    /// The stateful role whose data volume is replaced: prometheus, loki or grafana.
    #[arg(long)]
    pub role: String,
    /// The snapshot to restore: its id, snap-... (`cargo xtask status` lists each role's newest), or its ARN.
    #[arg(long, value_name = "SNAPSHOT", required_unless_present = "latest")]
    pub snapshot: Option<String>,
    /// The newest completed snapshot of the role's volume in this deployment (daily or final), found by its tags.
    #[arg(long, conflicts_with = "snapshot")]
    pub latest: bool,
    /// Print what would be done and Terraform's plan; change nothing.
    #[arg(long)]
    pub plan_only: bool,
    /// Apply without asking for confirmation.
    #[arg(long)]
    pub auto_approve: bool,
    /// The same extra Terraform variable file given to deploy.
    #[arg(long, value_name = "FILE")]
    pub var_file: Option<PathBuf>,
    /// How long to wait for the role and the roles that read it to become healthy, e.g. `10m`.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub health_timeout: Duration,
    /// How long the role's checks of `verify` wait for the test request's log line and for scrapes, e.g. `60s`.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub verify_deadline: Duration,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cargo xtask status\n  cargo xtask status --tunnel --json   # health through Session Manager tunnels only"
)]
pub struct StatusArgs {
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
    /// Check health through Session Manager tunnels even where a direct route answers (by default a tunnel is opened only for what cannot be reached directly).
    #[arg(long)]
    pub tunnel: bool,
    /// AWS region (default: the standard AWS settings).
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cargo xtask up\n  cargo xtask up --detach && cargo xtask ps && cargo xtask down\n  cargo xtask up --prometheus /usr/bin/prometheus --require-all"
)]
pub struct UpArgs {
    /// Return once every component is healthy, leaving the stack running (stop it with `cargo xtask down`).
    #[arg(long)]
    pub detach: bool,
    /// Fail if any component cannot be had, instead of running the rest.
    #[arg(long)]
    pub require_all: bool,
    /// Never download a pinned release; use only explicit paths and PATH.
    #[arg(long)]
    pub offline: bool,
    /// Path to a Prometheus binary.
    #[arg(long, env = "STACK_PROMETHEUS_BIN", value_name = "PATH")]
    pub prometheus: Option<PathBuf>,
    /// Path to a Loki binary.
    #[arg(long, env = "STACK_LOKI_BIN", value_name = "PATH")]
    pub loki: Option<PathBuf>,
    /// Path to a Promtail binary.
    #[arg(long, env = "STACK_PROMTAIL_BIN", value_name = "PATH")]
    pub promtail: Option<PathBuf>,
    /// Path to a Grafana server binary.
    #[arg(long, env = "STACK_GRAFANA_BIN", value_name = "PATH")]
    pub grafana: Option<PathBuf>,
    /// Path to a node_exporter binary (Debian's is `prometheus-node-exporter`, found on PATH).
    #[arg(long, env = "STACK_NODE_EXPORTER_BIN", value_name = "PATH")]
    pub node_exporter: Option<PathBuf>,
    /// Where downloaded releases are cached (default ~/.cache/obstack).
    #[arg(long, env = "STACK_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// How long to wait for the stack to become healthy, e.g. `90s`.
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct DownArgs {}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Every duration flag: humantime's syntax (`90s`, `10m`, `1h 30m`), checked when the
/// command line is parsed, with one message for all of them.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        Ok(_) => Err("a duration of zero would never wait; write e.g. 90s, 10m or 1h".into()),
        Err(error) => Err(format!("{error}; write a duration like 90s, 10m or 1h")),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_are_parsed_when_the_command_line_is() {
        let cli = Cli::try_parse_from(["cargo xtask", "up", "--timeout", "2m 30s"]).unwrap();
        let Command::Up(args) = cli.command else {
            panic!("parsed as another command");
        };
        assert_eq!(args.timeout, Duration::from_secs(150));
        for flags in [
            ["up", "--timeout", "soon"],
            ["deploy", "--health-timeout", "10"],
            ["bench", "--duration", "0s"],
        ] {
            let mut argv = vec!["cargo xtask"];
            argv.extend(flags);
            if argv[1] == "bench" {
                argv.insert(2, "app");
            }
            let error = Cli::try_parse_from(&argv).unwrap_err().to_string();
            assert!(error.contains("90s, 10m or 1h"), "{error}");
            assert!(error.contains(flags[1]), "{error}");
        }
    }
}

/// Which stack's releases and channels: they live in SSM under `/obstack/<stack>/`.
#[derive(Debug, Args)]
pub struct StackArgs {
    /// The stack's name (Terraform's `name` variable).
    #[arg(
        long,
        env = "OBSTACK_STACK",
        default_value = "obstack",
        value_name = "NAME"
    )]
    pub stack: String,
    /// AWS region (default: the standard AWS settings).
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    #[command(subcommand)]
    pub command: ReleaseCommand,
}

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Record the AMIs baked from this checkout (or the newest, or named ones) as a new release.
    Create(ReleaseCreateArgs),
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cargo xtask release create --channel candidate\n  cargo xtask release create --latest --stack staging\n  cargo xtask release create --ami grafana=ami-0123456789abcdef0 --latest"
)]
pub struct ReleaseCreateArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    /// Also point this channel at the new release, e.g. `candidate`.
    #[arg(long, value_name = "NAME")]
    pub channel: Option<String>,
    /// Use the newest AMI of each role instead of the one matching this checkout's hashes.
    #[arg(long)]
    pub latest: bool,
    /// An explicit AMI for a role, as ROLE=ami-... (repeatable).
    #[arg(long, value_name = "ROLE=AMI")]
    pub ami: Vec<String>,
    /// Print the release record as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cargo xtask releases\n  cargo xtask releases --stack staging --json"
)]
pub struct ReleasesArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cargo xtask promote candidate --to stable\n  cargo xtask promote 20261203-034012-1a2b3c4 --to stable\n  cargo xtask promote 20261203-034012-1a2b3c4 --to stable --force   # even though it was rolled back"
)]
pub struct PromoteArgs {
    /// A release id, or a channel whose current release is promoted.
    #[arg(value_name = "RELEASE|CHANNEL")]
    pub source: String,
    /// The channel to point at it.
    #[arg(long, value_name = "CHANNEL")]
    pub to: String,
    /// Promote a release even though it was rejected (a rollback moved a channel away from it).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub stack: StackArgs,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cargo xtask rollback --channel stable\n  cargo xtask deploy --channel stable   # then roll the stack back to it"
)]
pub struct RollbackArgs {
    /// The channel to move back. The release it leaves is marked rejected: `promote` refuses
    /// it (unless --force), so a nightly pipeline cannot put it back.
    #[arg(long, value_name = "NAME")]
    pub channel: String,
    #[command(flatten)]
    pub stack: StackArgs,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cargo xtask up --detach && cargo xtask verify\n  cargo xtask verify --deployed --require-all --json > verify.json\n  cargo xtask verify --deployed --tunnel   # through Session Manager tunnels (a CI runner)\n  cargo xtask verify --log-deadline 2m"
)]
pub struct VerifyArgs {
    /// Verify the local stack of `cargo xtask up --detach` (the default when one runs).
    #[arg(long, conflicts_with = "deployed")]
    pub local: bool,
    /// Verify the stack Terraform deployed from this checkout (the default otherwise).
    #[arg(long)]
    pub deployed: bool,
    /// Fail when a component could not be checked (not running locally, not reachable).
    #[arg(long)]
    pub require_all: bool,
    /// How long the test request's log line may take to reach Loki, e.g. `60s`.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub log_deadline: Duration,
    /// How long to wait for scrapes and rule evaluations (targets, request counter, rules, panels).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub metrics_deadline: Duration,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Reach a deployed stack through Session Manager tunnels even where a direct route answers (by default a tunnel is opened only for what cannot be reached directly).
    #[arg(long)]
    pub tunnel: bool,
    /// AWS region of a deployed stack (default: the one the last deploy used).
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cargo xtask open grafana    # prints http://127.0.0.1:3000 (another port if 3000 is taken), and the password command\n  cargo xtask open grafana --port 8443\n  cargo xtask open prometheus --stack staging --region eu-west-1\n  cargo xtask open app --instance i-0123456789abcdef0\n\nNeeds the AWS CLI and its Session Manager plugin, and the IAM permissions of Terraform's output operator_access_policy. Ctrl-C closes the tunnel."
)]
pub struct OpenArgs {
    /// The UI to open: grafana, prometheus, alertmanager, loki, app or promtail.
    #[arg(value_name = "SERVICE")]
    pub service: String,
    /// This instance of the role (e.g. one app fleet instance) instead of the best running one.
    #[arg(long, value_name = "ID")]
    pub instance: Option<String>,
    /// Listen on this port of 127.0.0.1 (default: the service's own port, e.g. 3000 for
    /// Grafana, when it is free, else any free port).
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    #[command(flatten)]
    pub stack: StackArgs,
}
