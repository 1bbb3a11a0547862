//! `cargo xtask up`, `down` and `ps`: the whole stack as local processes on 127.0.0.1,
//! configured by the images' own templates (rendered by the agent's library from a local
//! tag set), on the AMIs' ports, with everything it writes under `target/stack/`.

mod binaries;
mod components;
mod download;
mod health;
pub(crate) mod layout;
mod ports;
mod receiver;
pub(crate) mod render;
pub(crate) mod state;
mod supervisor;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::cli::{DownArgs, PsArgs, UpArgs};
use crate::report::one_line;
use crate::roles::{Binary, Registry, Service};
use crate::versions::Manifest;
use binaries::{Found, Provide, Resolver, Upstream};
use components::Component;
use layout::Layout;
use state::{Running, StackState, Unavailable};
use supervisor::Target;

/// The service whose Slack messages `up` receives.
const ALERTMANAGER: &str = "alertmanager";

pub fn run_up(args: UpArgs) -> anyhow::Result<()> {
    let timeout = args.timeout;
    let layout = Layout::from_env();
    refuse_if_running(&layout)?;

    let registry = Registry::load_default()?;
    let manifest = Manifest::load(&Manifest::path()).ok();
    let (mut planned, left_out) = resolve_all(&args, &registry, manifest.clone())?;
    // Each left-out component once, on one line, with what provides it.
    for item in &left_out {
        eprintln!("{}", item.line());
    }
    if args.require_all && !left_out.is_empty() {
        let names: Vec<&str> = left_out.iter().map(|l| l.name.as_str()).collect();
        anyhow::bail!(
            "--require-all, and {} cannot run (see above)",
            names.join(", ")
        );
    }
    for (component, _) in &planned {
        ports::check_free(component.name(), component.port())?;
    }
    build_workspace_binaries(&mut planned)?;

    let running: BTreeSet<&str> = planned.iter().map(|(c, _)| c.name()).collect();
    // Alertmanager posts to a receiver in this process (a stand-in for a Slack incoming
    // webhook), so only while `up` stays in the foreground; a detached stack keeps its alerts
    // in Alertmanager's UI.
    let alert_receiver = if running.contains(ALERTMANAGER) && !args.detach {
        Some(receiver::Receiver::start(layout.log("alert-receiver"))?)
    } else {
        None
    };
    let slack = alert_receiver.as_ref().map(receiver::Receiver::url);
    render::render_roles(&layout, &registry, &running, slack)?;

    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;

    let mut stack = Stack {
        layout: layout.clone(),
        children: Vec::new(),
        state: StackState {
            detached: args.detach,
            supervisor_pid: std::process::id(),
            components: Vec::new(),
            unavailable: left_out.iter().map(LeftOut::unavailable).collect(),
        },
    };
    let started = stack
        .start_all(&planned)
        .and_then(|()| stack.wait_healthy(timeout, &interrupted));
    if let Err(error) = started {
        stack.stop_all();
        return Err(error);
    }
    print_summary(&planned, &left_out, &layout, manifest.as_ref());
    if let Some(url) = slack {
        println!(
            "Alertmanager posts alerts to {url}, a stand-in for a Slack incoming webhook; each \
             message is printed here as Slack would show it, and in {}",
            layout.log("alert-receiver").display()
        );
    }
    if args.detach {
        eprintln!("\nDetached: `cargo xtask ps` shows the stack, `cargo xtask down` stops it.");
        return Ok(());
    }
    eprintln!("\nPress Ctrl-C to stop the stack.");
    let outcome = stack.supervise(&interrupted);
    stack.stop_all();
    outcome
}

pub fn run_down(_args: DownArgs) -> anyhow::Result<()> {
    let layout = Layout::from_env();
    let Some(state) = StackState::load(&layout.state_file())? else {
        eprintln!(
            "No local stack is running (no {}).",
            layout.state_file().display()
        );
        return Ok(());
    };
    // A foreground `up` stops its own stack on SIGTERM; let it, then sweep what is left.
    if !state.detached && state.supervisor_pid != std::process::id() {
        if let Some(started) = supervisor::start_time(state.supervisor_pid) {
            let up = Target {
                name: "xtask up".into(),
                pid: state.supervisor_pid,
                start_time: started,
            };
            supervisor::stop(&[up], supervisor::STOP_GRACE * 2, || {});
        }
    }
    let targets = targets(&state.components);
    let killed = supervisor::stop(&targets, supervisor::STOP_GRACE, || {});
    let survivors: Vec<&Target> = targets
        .iter()
        .filter(|t| supervisor::is_alive(t.pid, t.start_time))
        .collect();
    if !survivors.is_empty() {
        let pids: Vec<String> = survivors
            .iter()
            .map(|t| format!("{} ({})", t.name, t.pid))
            .collect();
        anyhow::bail!(
            "could not stop {}; kill them by hand, then delete {}",
            pids.join(", "),
            layout.state_file().display()
        );
    }
    StackState::remove(&layout.state_file())?;
    for target in &targets {
        let how = if killed.contains(&target.name) {
            "killed after the grace period"
        } else {
            "stopped"
        };
        eprintln!("{}: {how} (pid {})", target.name, target.pid);
    }
    Ok(())
}

pub fn run_ps(args: PsArgs) -> anyhow::Result<()> {
    let layout = Layout::from_env();
    let state = StackState::load(&layout.state_file())?;
    let client = health::client()?;
    let rows: Vec<serde_json::Value> = state
        .iter()
        .flat_map(|state| &state.components)
        .map(|component| {
            let running = supervisor::is_alive(component.pid, component.start_time);
            let healthy = running && health::probe(&client, &component.health_url);
            serde_json::json!({
                "name": component.name,
                "pid": component.pid,
                "port": component.port,
                "url": component.url,
                "running": running,
                "healthy": healthy,
                "log": component.log,
            })
        })
        .collect();
    let unavailable: Vec<&Unavailable> = state.iter().flat_map(|s| &s.unavailable).collect();
    if args.json {
        let report = serde_json::json!({
            "running": rows.iter().any(|row| row["running"] == true),
            "stack_dir": layout.dir(),
            "components": rows,
            "unavailable": unavailable,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if state.is_none() {
        println!("No local stack is running (start one with `cargo xtask up`).");
        return Ok(());
    }
    let mut table: Vec<[String; 5]> = rows
        .iter()
        .map(|row| {
            let status = match (row["running"] == true, row["healthy"] == true) {
                (true, true) => "healthy",
                (true, false) => "unhealthy",
                _ => "stopped",
            };
            [
                row["name"].as_str().unwrap_or("?").to_string(),
                row["pid"].to_string(),
                row["port"].to_string(),
                status.to_string(),
                row["url"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    table.extend(unavailable.iter().map(|item| {
        [
            item.name.clone(),
            "-".into(),
            "-".into(),
            "unavailable".into(),
            item.reason.clone(),
        ]
    }));
    print!(
        "{}",
        crate::table::render(&["COMPONENT", "PID", "PORT", "STATUS", "URL"], table)
    );
    Ok(())
}

/// A stack being started or run by this process.
struct Stack {
    layout: Layout,
    /// Parallel to `state.components`.
    children: Vec<Child>,
    state: StackState,
}

impl Stack {
    fn start_all(&mut self, planned: &[(Component, Found)]) -> anyhow::Result<()> {
        for (component, found) in planned {
            for dir in component.data_dirs() {
                let dir = self.layout.in_root(dir);
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let env = match component.env_file() {
                Some(file) => render::read_env_file(&self.layout.in_root(file))?,
                None => Vec::new(),
            };
            let log = self.layout.log(component.name());
            let launch = supervisor::Launch {
                name: component.name(),
                binary: &found.path,
                args: component.args(&found.path, &self.layout, &env)?,
                env,
                log: log.clone(),
                cwd: self.layout.dir(),
            };
            let child = supervisor::spawn(&launch)?;
            let pid = child.id();
            self.children.push(child);
            // Read right after spawning; `None` means it already exited, which the health
            // wait reports with its exit status.
            let start_time = supervisor::start_time(pid).unwrap_or_default();
            self.state.components.push(Running {
                name: component.name().to_string(),
                pid,
                start_time,
                port: component.port(),
                url: component.url(),
                health_url: component.health_url(),
                binary: found.path.clone(),
                log,
            });
            // Saved after every start, so an interrupted `up` leaves nothing `down` cannot find.
            self.state.save(&self.layout.state_file())?;
        }
        Ok(())
    }

    fn wait_healthy(&mut self, timeout: Duration, interrupted: &AtomicBool) -> anyhow::Result<()> {
        let checks: Vec<health::Check> = self
            .state
            .components
            .iter()
            .map(|c| health::Check {
                name: c.name.clone(),
                health_url: c.health_url.clone(),
                log: c.log.clone(),
            })
            .collect();
        let children = &mut self.children;
        health::wait_all(&checks, timeout, interrupted, |i| {
            exit_status(&mut children[i])
        })
    }

    /// Runs until Ctrl-C (or SIGTERM from `down`); a component that exits stops the stack.
    fn supervise(&mut self, interrupted: &AtomicBool) -> anyhow::Result<()> {
        loop {
            if interrupted.load(Ordering::SeqCst) {
                eprintln!("\nStopping the stack...");
                return Ok(());
            }
            for (i, child) in self.children.iter_mut().enumerate() {
                if let Some(how) = exit_status(child) {
                    let component = &self.state.components[i];
                    anyhow::bail!(
                        "{} exited ({how}); its output is in {}; stopped the rest of the stack",
                        component.name,
                        component.log.display()
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Stops every started component and forgets the stack.
    fn stop_all(&mut self) {
        let targets = targets(&self.state.components);
        let children = &mut self.children;
        let killed = supervisor::stop(&targets, supervisor::STOP_GRACE, || {
            for child in children.iter_mut() {
                let _ = child.try_wait();
            }
        });
        for name in killed {
            eprintln!(
                "{name} ignored SIGTERM for {} and was killed",
                humantime::format_duration(supervisor::STOP_GRACE)
            );
        }
        if let Err(error) = StackState::remove(&self.layout.state_file()) {
            eprintln!("warning: {}", one_line(&error));
        }
    }
}

/// Why a child is no longer running, or `None` while it runs.
fn exit_status(child: &mut Child) -> Option<String> {
    match child.try_wait() {
        Ok(Some(status)) => Some(status.to_string()),
        Ok(None) => None,
        Err(error) => Some(format!("cannot be waited for: {error}")),
    }
}

fn targets(components: &[Running]) -> Vec<Target> {
    components
        .iter()
        .map(|c| Target {
            name: c.name.clone(),
            pid: c.pid,
            start_time: c.start_time,
        })
        .collect()
}

/// Fails when a stack from this directory still runs; forgets one whose processes are gone.
fn refuse_if_running(layout: &Layout) -> anyhow::Result<()> {
    let Some(state) = StackState::load(&layout.state_file())? else {
        return Ok(());
    };
    let alive: Vec<String> = state
        .components
        .iter()
        .filter(|c| supervisor::is_alive(c.pid, c.start_time))
        .map(|c| format!("{} (pid {})", c.name, c.pid))
        .collect();
    if !alive.is_empty() {
        anyhow::bail!(
            "a local stack is already running ({}); `cargo xtask ps` shows it, `cargo xtask down` stops it",
            alive.join(", ")
        );
    }
    StackState::remove(&layout.state_file())
}

/// The components to start, each with its binary.
type Planned<'a> = Vec<(Component<'a>, Found)>;

/// A component `up` does not start, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LeftOut {
    name: String,
    /// `not available` (no binary) or `not started` (something it needs does not run).
    what: &'static str,
    why: String,
    /// What provides it, when that is the fix.
    hint: Option<String>,
}

impl LeftOut {
    /// `loki: not available (not on PATH, no download with --offline); pass --loki PATH or
    /// set STACK_LOKI_BIN`.
    fn line(&self) -> String {
        let hint = self
            .hint
            .as_ref()
            .map(|hint| format!("; {hint}"))
            .unwrap_or_default();
        format!("{}: {} ({}){hint}", self.name, self.what, self.why)
    }

    /// As `state.json` and `ps` keep it.
    fn unavailable(&self) -> Unavailable {
        let reason = match &self.hint {
            Some(hint) => format!("{}; {hint}", self.why),
            None => self.why.clone(),
        };
        Unavailable {
            name: self.name.clone(),
            reason,
        }
    }
}

/// The `up` flags naming a binary, by the service they provide (clap also reads each one's
/// `STACK_<NAME>_BIN`). A service without a flag here is given by its variable alone.
fn binary_flags(args: &UpArgs) -> BTreeMap<&'static str, Option<&Path>> {
    BTreeMap::from([
        ("prometheus", args.prometheus.as_deref()),
        ("loki", args.loki.as_deref()),
        ("promtail", args.promtail.as_deref()),
        ("grafana", args.grafana.as_deref()),
        ("node_exporter", args.node_exporter.as_deref()),
    ])
}

/// How `service`'s binary is given, and the explicit path if it is.
fn explicit_binary(
    flags: &BTreeMap<&'static str, Option<&Path>>,
    service: &Service,
) -> (Provide, Option<PathBuf>) {
    let env_var = service.up_env_var();
    match flags.get(service.name.as_str()) {
        Some(path) => (
            Provide {
                flag: Some(service.up_flag()),
                env_var,
            },
            path.map(Path::to_path_buf),
        ),
        None => {
            let path = std::env::var_os(&env_var)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from);
            (
                Provide {
                    flag: None,
                    env_var,
                },
                path,
            )
        }
    }
}

/// Finds every component's binary (workspace binaries get their path when they are built),
/// then leaves out whatever needs a component that does not run. Both lists keep the
/// registry's start order.
fn resolve_all<'a>(
    args: &UpArgs,
    registry: &'a Registry,
    manifest: Option<Manifest>,
) -> anyhow::Result<(Planned<'a>, Vec<LeftOut>)> {
    let resolver = Resolver {
        offline: args.offline,
        cache_dir: args
            .cache_dir
            .clone()
            .unwrap_or_else(binaries::default_cache_dir),
        manifest,
    };
    let flags = binary_flags(args);
    let (components, not_runnable) = Component::all(registry);
    let mut planned = Vec::new();
    let mut left_out: Vec<LeftOut> = not_runnable
        .iter()
        .map(|service| LeftOut {
            name: service.name.clone(),
            what: "not started",
            why: "its role.toml has no [services.up] saying how to run it locally".into(),
            hint: None,
        })
        .collect();
    for component in components {
        let (upstream, explicit) = match component.binary()? {
            Binary::Workspace { .. } => {
                let pending = Found {
                    path: PathBuf::new(),
                    origin: "built from the checkout".into(),
                };
                planned.push((component, pending));
                continue;
            }
            Binary::Upstream {
                component: manifest_name,
                path_names,
                archive_names,
            } => {
                let (provide, explicit) = explicit_binary(&flags, component.service);
                let upstream = Upstream {
                    component: manifest_name,
                    path_names,
                    archive_names,
                    provide,
                };
                (upstream, explicit)
            }
        };
        match resolver.resolve(&upstream, explicit.as_deref())? {
            Ok(found) => planned.push((component, found)),
            Err(why) => left_out.push(LeftOut {
                name: component.name().to_string(),
                what: "not available",
                why,
                hint: Some(upstream.provide.hint()),
            }),
        }
    }
    leave_out_unmet_needs(&mut planned, &mut left_out);
    let order: Vec<&str> = registry
        .services()
        .into_iter()
        .map(|(_, s)| s.name.as_str())
        .collect();
    left_out.sort_by_key(|item| order.iter().position(|name| *name == item.name));
    Ok((planned, left_out))
}

/// Moves to `left_out` every planned component that needs one that does not run, until
/// nothing changes (leaving one out may leave out what needs it).
fn leave_out_unmet_needs(planned: &mut Planned, left_out: &mut Vec<LeftOut>) {
    loop {
        let runs: BTreeSet<&str> = planned.iter().map(|(c, _)| c.name()).collect();
        let unmet = |component: &Component| -> Vec<String> {
            component
                .needs()
                .iter()
                .filter(|need| !runs.contains(need.as_str()))
                .cloned()
                .collect()
        };
        let Some((index, missing)) = planned
            .iter()
            .enumerate()
            .map(|(index, (component, _))| (index, unmet(component)))
            .find(|(_, missing)| !missing.is_empty())
        else {
            return;
        };
        let (component, _) = planned.remove(index);
        left_out.push(LeftOut {
            name: component.name().to_string(),
            what: "not started",
            why: format!(
                "it needs {}, which {} not run",
                missing.join(" and "),
                if missing.len() == 1 { "does" } else { "do" }
            ),
            hint: None,
        });
    }
}

/// Where `up` takes the checkout's binaries from instead of building them: a directory
/// holding them already built (the test suite points it at its own debug build, so a test
/// never starts a second build of the dependencies with another feature set).
pub const WORKSPACE_BIN_DIR_ENV: &str = "OBSTACK_WORKSPACE_BIN_DIR";

/// Builds the checkout's binaries (debug profile: quick, and shared with the test suite)
/// and fills in their paths; with [`WORKSPACE_BIN_DIR_ENV`] set, takes them from there.
fn build_workspace_binaries(planned: &mut [(Component, Found)]) -> anyhow::Result<()> {
    let prebuilt = std::env::var_os(WORKSPACE_BIN_DIR_ENV)
        .filter(|dir| !dir.is_empty())
        .map(std::path::PathBuf::from);
    for (component, found) in planned.iter_mut() {
        if let Binary::Workspace { package, bin } = component.binary()? {
            if let Some(dir) = &prebuilt {
                let path = dir.join(bin);
                anyhow::ensure!(
                    path.is_file(),
                    "{WORKSPACE_BIN_DIR_ENV}={} has no `{bin}` binary: build it (cargo build -p {package}) or unset {WORKSPACE_BIN_DIR_ENV}",
                    dir.display()
                );
                found.path = path;
                continue;
            }
            crate::cmd::Cmd::cargo(["build", "--quiet", "-p", package, "--bin", bin])
                .map(|e| e.dir(crate::project::root()))
                .run()
                .with_context(|| format!("cannot build {package}"))?;
            found.path = crate::project::target_dir().join("debug").join(bin);
        }
    }
    Ok(())
}

fn print_summary(
    planned: &[(Component, Found)],
    left_out: &[LeftOut],
    layout: &Layout,
    manifest: Option<&Manifest>,
) {
    println!("\nThe stack runs on 127.0.0.1:");
    let rows = planned.iter().map(|(component, found)| {
        [
            component.name().to_string(),
            component.url(),
            format!("{} ({})", found.path.display(), found.origin),
        ]
    });
    print!(
        "{}",
        crate::table::render(&["COMPONENT", "URL", "BINARY"], rows)
    );
    if planned.iter().any(|(c, _)| c.name() == "grafana") {
        println!(
            "Grafana: login admin, password: cat {}",
            layout
                .in_root("/etc/grafana/secrets/admin_password")
                .display()
        );
    }
    if !left_out.is_empty() {
        let names: Vec<&str> = left_out.iter().map(|l| l.name.as_str()).collect();
        println!("Not running: {} (see above)", names.join(", "));
    }
    let running: BTreeSet<&str> = planned.iter().map(|(c, _)| c.name()).collect();
    for (name, component) in manifest.iter().flat_map(|m| &m.components) {
        if let Some(note) = &component.note {
            if running.contains(name.as_str()) {
                println!("Note ({name}): {note}");
            }
        }
    }
    println!(
        "Configs and data: {}; logs: {}",
        layout.root().display(),
        layout.dir().join("logs").display()
    );
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::cli::{Cli, Command};

    fn up_args(argv: &[&str]) -> UpArgs {
        let argv = ["xtask", "up"].iter().chain(argv);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Up(args) => args,
            _ => unreachable!("parsed `up`"),
        }
    }

    #[test]
    fn each_binary_flag_is_the_services_flag_and_variable() {
        let registry = Registry::load_default().unwrap();
        let cli = Cli::command();
        let up = cli.find_subcommand("up").unwrap();
        let args = up_args(&[]);
        for name in binary_flags(&args).keys() {
            let (_, service) = registry
                .services()
                .into_iter()
                .find(|(_, s)| s.name == *name)
                .unwrap_or_else(|| panic!("`{name}` is not a service of the registry"));
            let flag = service.up_flag();
            let arg = up
                .get_arguments()
                .find(|a| a.get_long().map(|l| format!("--{l}")) == Some(flag.clone()))
                .unwrap_or_else(|| panic!("`up` has no {flag}"));
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(service.up_env_var().as_str()),
                "{flag}"
            );
            let given = up_args(&[&flag, "/opt/x"]);
            let (provide, path) = explicit_binary(&binary_flags(&given), service);
            assert_eq!(path.as_deref(), Some(Path::new("/opt/x")), "{flag}");
            assert_eq!(provide.flag.as_deref(), Some(flag.as_str()));
        }
    }

    #[test]
    fn a_service_without_a_flag_is_given_by_its_variable() {
        let service = Service {
            name: "obstack_test_thing".into(),
            unit: "thing.service".into(),
            port: 1,
            health: "/".into(),
            up: None,
        };
        let (provide, path) = explicit_binary(&binary_flags(&up_args(&[])), &service);
        assert_eq!(provide.flag, None);
        assert_eq!(provide.env_var, "STACK_OBSTACK_TEST_THING_BIN");
        assert_eq!(provide.hint(), "set STACK_OBSTACK_TEST_THING_BIN");
        assert_eq!(path, None);
    }

    #[test]
    fn a_component_left_out_is_one_line_with_what_provides_it() {
        let loki = LeftOut {
            name: "loki".into(),
            what: "not available",
            why: "not on PATH, no download with --offline".into(),
            hint: Some("pass --loki PATH or set STACK_LOKI_BIN".into()),
        };
        assert_eq!(
            loki.line(),
            "loki: not available (not on PATH, no download with --offline); pass --loki PATH \
             or set STACK_LOKI_BIN"
        );
        assert_eq!(
            loki.unavailable().reason,
            "not on PATH, no download with --offline; pass --loki PATH or set STACK_LOKI_BIN"
        );
    }

    #[test]
    fn what_needs_a_missing_component_is_left_out_too() {
        let registry = Registry::load_default().unwrap();
        let found = || Found {
            path: "/bin/true".into(),
            origin: "test".into(),
        };
        let without = |missing: &[&str]| {
            let mut planned: Planned = Component::all(&registry)
                .0
                .into_iter()
                .filter(|c| !missing.contains(&c.name()))
                .map(|c| (c, found()))
                .collect();
            let mut left_out = Vec::new();
            leave_out_unmet_needs(&mut planned, &mut left_out);
            let runs: Vec<&str> = planned.iter().map(|(c, _)| c.name()).collect();
            let lines: Vec<String> = left_out.iter().map(LeftOut::line).collect();
            (runs.join(" "), lines)
        };
        assert_eq!(
            without(&[]).0,
            "loki app promtail prometheus alertmanager grafana node_exporter"
        );
        let (runs, lines) = without(&["loki"]);
        assert_eq!(runs, "app prometheus alertmanager node_exporter");
        assert_eq!(
            lines,
            [
                "promtail: not started (it needs loki, which does not run)",
                "grafana: not started (it needs loki, which does not run)"
            ]
        );
        let (runs, lines) = without(&["loki", "prometheus"]);
        assert_eq!(runs, "app alertmanager node_exporter");
        assert_eq!(
            lines[1],
            "grafana: not started (it needs prometheus and loki, which do not run)"
        );
    }
}
