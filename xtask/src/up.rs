//! `cargo xtask up`, `down` and `ps`: the whole stack as local processes on 127.0.0.1,
//! configured by the images' own templates (rendered by the agent's library from a local
//! tag set), on the AMIs' ports, with everything it writes under `target/stack/`.

mod binaries;
mod components;
mod download;
mod health;
mod layout;
mod ports;
mod render;
mod state;
mod supervisor;

use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::cli::{DownArgs, PsArgs, UpArgs};
use crate::cmd::ExpressionExt;
use crate::versions::Manifest;
use binaries::{Found, Resolver};
use components::{Component, Source, COMPONENTS};
use layout::Layout;
use state::{Running, StackState, Unavailable};
use supervisor::Target;

pub fn run_up(args: UpArgs) -> anyhow::Result<()> {
    let timeout = humantime::parse_duration(&args.timeout).with_context(|| {
        format!(
            "--timeout {:?} is not a duration like 90s or 5m",
            args.timeout
        )
    })?;
    let layout = Layout::from_env();
    refuse_if_running(&layout)?;

    let manifest = Manifest::load(&Manifest::path()).ok();
    let (mut planned, unavailable) = resolve_all(&args, manifest.clone())?;
    if args.require_all && !unavailable.is_empty() {
        let missing: Vec<String> = unavailable
            .iter()
            .map(|u| format!("{}: {}", u.name, u.reason))
            .collect();
        anyhow::bail!("--require-all: {}", missing.join("; "));
    }
    for (component, _) in &planned {
        ports::check_free(component.name, component.port)?;
    }
    build_workspace_binaries(&mut planned)?;

    let mut roles: Vec<&str> = planned.iter().map(|(c, _)| c.role).collect();
    roles.dedup();
    render::render_roles(&layout, &crate::project::images_dir(), &roles, &COMPONENTS)?;

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
            unavailable,
        },
    };
    let started = stack
        .start_all(&planned)
        .and_then(|()| stack.wait_healthy(timeout, &interrupted));
    if let Err(error) = started {
        stack.stop_all();
        return Err(error);
    }
    print_summary(&stack.state, &planned, &layout, manifest.as_ref());
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
        eprintln!("{:14} {how} (pid {})", target.name, target.pid);
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
    println!(
        "{:14} {:>8} {:>6}  {:10} URL",
        "COMPONENT", "PID", "PORT", "STATUS"
    );
    for row in &rows {
        let status = match (row["running"] == true, row["healthy"] == true) {
            (true, true) => "healthy",
            (true, false) => "unhealthy",
            _ => "stopped",
        };
        println!(
            "{:14} {:>8} {:>6}  {:10} {}",
            row["name"].as_str().unwrap_or("?"),
            row["pid"],
            row["port"],
            status,
            row["url"].as_str().unwrap_or("")
        );
    }
    for item in unavailable {
        println!(
            "{:14} {:>8} {:>6}  {:10} {}",
            item.name, "-", "-", "unavailable", item.reason
        );
    }
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
            let log = self.layout.log(component.name);
            let launch = supervisor::Launch {
                name: component.name,
                binary: &found.path,
                args: component.args(&found.path, &self.layout, &env),
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
                name: component.name.to_string(),
                pid,
                start_time,
                port: component.port,
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
                "{name} ignored SIGTERM for {:?} and was killed",
                supervisor::STOP_GRACE
            );
        }
        if let Err(error) = StackState::remove(&self.layout.state_file()) {
            eprintln!("warning: {error:#}");
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
type Planned = Vec<(Component, Found)>;

/// Finds every component's binary; workspace binaries get their path when they are built.
fn resolve_all(
    args: &UpArgs,
    manifest: Option<Manifest>,
) -> anyhow::Result<(Planned, Vec<Unavailable>)> {
    let resolver = Resolver {
        offline: args.offline,
        cache_dir: args
            .cache_dir
            .clone()
            .unwrap_or_else(binaries::default_cache_dir),
        manifest,
    };
    let mut planned = Vec::new();
    let mut unavailable = Vec::new();
    for component in COMPONENTS {
        let upstream = match &component.source {
            Source::Workspace { .. } => {
                let pending = Found {
                    path: PathBuf::new(),
                    origin: "built from the checkout".into(),
                };
                planned.push((component, pending));
                continue;
            }
            Source::Upstream(upstream) => upstream,
        };
        match resolver.resolve(upstream, explicit_path(args, component.name))? {
            Ok(found) => planned.push((component, found)),
            Err(reason) => unavailable.push(Unavailable {
                name: component.name.to_string(),
                reason,
            }),
        }
    }
    for item in &unavailable {
        eprintln!("{} is unavailable: {}", item.name, item.reason);
    }
    Ok((planned, unavailable))
}

fn explicit_path<'a>(args: &'a UpArgs, name: &str) -> Option<&'a std::path::Path> {
    match name {
        "prometheus" => args.prometheus.as_deref(),
        "loki" => args.loki.as_deref(),
        "promtail" => args.promtail.as_deref(),
        "grafana" => args.grafana.as_deref(),
        "node_exporter" => args.node_exporter.as_deref(),
        _ => None,
    }
}

/// Builds the checkout's binaries (debug profile: quick, and shared with the test suite)
/// and fills in their paths.
fn build_workspace_binaries(planned: &mut [(Component, Found)]) -> anyhow::Result<()> {
    for (component, found) in planned.iter_mut() {
        if let Source::Workspace { package, bin } = component.source {
            crate::cmd::cargo(["build", "--quiet", "-p", package, "--bin", bin])
                .dir(crate::project::root())
                .run_logged()
                .with_context(|| format!("cannot build {package}"))?;
            found.path = crate::project::target_dir().join("debug").join(bin);
        }
    }
    Ok(())
}

fn print_summary(
    state: &StackState,
    planned: &[(Component, Found)],
    layout: &Layout,
    manifest: Option<&Manifest>,
) {
    println!("\nThe stack runs on 127.0.0.1:");
    for (component, found) in planned {
        let extra = if component.name == "grafana" {
            format!(
                "  login admin, password: cat {}",
                layout
                    .in_root("/etc/grafana/secrets/admin_password")
                    .display()
            )
        } else {
            String::new()
        };
        println!(
            "  {:14} {:24} {} {}{extra}",
            component.name,
            component.url(),
            found.origin,
            found.path.display()
        );
    }
    if !state.unavailable.is_empty() {
        println!("Not running:");
        for item in &state.unavailable {
            println!("  {:14} {}", item.name, item.reason);
        }
    }
    for (name, component) in manifest.iter().flat_map(|m| &m.components) {
        if let Some(note) = &component.note {
            println!("Note ({name}): {note}");
        }
    }
    println!(
        "Configs and data: {}; logs: {}",
        layout.root().display(),
        layout.dir().join("logs").display()
    );
}
