//! One boot of one image: the VM starts from a fresh copy of the image with the role's data
//! volume and its deployment's stand-ins; the host waits for systemd to settle (through the
//! probe), then checks that every unit the image enables is active and none failed, then
//! that each service answers its health path through a forwarded port.
//!
//! When something is wrong, the [`BootFailure`] says what, then quotes, for each unit that
//! is not active, its journal (`journalctl -u`, through the probe) and how its process
//! ended (the exit status systemd logged on the serial console: the agent's exit codes are
//! documented in `stack-agent --help`), then the agent's own lines from the console, then
//! the console's last lines: never just "timeout".

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use stack_agent::mount::VolumeId;
use xtask::roles::Role;
use xtask::vm::{self, probe::Probe, Machine, MachineSpec, NvmeDisk};

use super::deployment::{Deployment, Instance};
use super::image::BootImage;
use super::{image_units, registry, scratch, Slot};

/// Memory per VM: the Prometheus image (Prometheus, Alertmanager, node_exporter, the
/// agent) runs in it with room to spare.
const MEMORY_MIB: u32 = 512;

/// How long systemd may take to settle (every boot job done). TCG on a busy two-core
/// machine needs a few minutes at worst; KVM seconds.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(420);
/// How long the services may take to answer their health paths once the boot settled.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the guest may take to power off after the ACPI button.
const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(120);

/// A failed boot, with everything needed to see why.
pub struct BootFailure {
    pub message: String,
}

impl fmt::Display for BootFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for BootFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A unit's state as `systemctl show` reports it.
#[derive(Debug, Clone, Default)]
pub struct UnitState {
    pub active: String,
    pub sub: String,
    pub result: String,
    pub exec_main_status: String,
}

/// How a boot went so far, for timings.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// From qemu's start to every boot job done (all units active).
    pub settled: Option<Duration>,
    /// From qemu's start to every service answering its health path.
    pub healthy: Option<Duration>,
}

/// A booted (or booting) VM of a role.
pub struct Boot {
    pub role: Role,
    /// `first`, `replacement`, ...
    pub label: String,
    pub machine: Machine,
    pub instance: Instance,
    probe: Probe,
    pub timings: Timings,
    /// qemu's CPU time when the VM was stopped.
    cpu: Option<Duration>,
    root_disk: PathBuf,
    accel_why: String,
    _slot: Slot,
}

/// What a boot starts from besides the image.
pub struct BootOptions<'a> {
    pub label: &'a str,
    /// Another data volume than the deployment's (a volume restored from a snapshot): its
    /// file and its id, which the instance's tag then names.
    pub volume: Option<(PathBuf, VolumeId)>,
    /// Another NVMe serial than the volume id's (a volume that is not the tagged one).
    pub serial: Option<String>,
}

impl<'a> BootOptions<'a> {
    pub fn new(label: &'a str) -> BootOptions<'a> {
        BootOptions {
            label,
            volume: None,
            serial: None,
        }
    }
}

impl Boot {
    /// Starts `image` as a new instance of its role in `deployment`.
    pub fn start(image: &BootImage, deployment: &Deployment, options: BootOptions) -> Boot {
        let role = registry().role(&image.role).unwrap().clone();
        let slot = Slot::take();
        let instance = deployment.instance(&role);
        let dir = scratch().join(format!("{}-{}", role.name, options.label));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let root_disk = image.fresh_disk(&dir.join("root.img"));
        let mut nvme = Vec::new();
        if let Some(volume) = deployment.volume(&role.name) {
            let (path, id) = options
                .volume
                .unwrap_or_else(|| (volume.path.clone(), volume.id.clone()));
            instance.imds.set_tag("obstack:data-volume", id.as_str());
            nvme.push(NvmeDisk {
                path,
                serial: options.serial.unwrap_or_else(|| id.serial()),
            });
        }
        let mut host_ports = vec![vm::PROBE_PORT];
        host_ports.extend(super::deployment::ports(&role));
        let spec = MachineSpec {
            name: format!("{} ({})", role.name, options.label),
            dir,
            kernel: image.kernel.clone(),
            initrd: image.initrd.clone(),
            root_disk: root_disk.clone(),
            nvme,
            memory_mib: MEMORY_MIB,
            kernel_args: vm::guest::KERNEL_ARGS
                .iter()
                .map(|a| a.to_string())
                .collect(),
            guest_forwards: deployment.forwards(&role.name, &instance),
            host_ports,
        };
        let choice = vm::accel::choose(&image.kernel, scratch());
        let machine =
            Machine::start(&spec, choice.accel).unwrap_or_else(|e| panic!("{}: {e:#}", spec.name));
        let probe = Probe::new(machine.host_addr(vm::PROBE_PORT).unwrap());
        // Why KVM or TCG: once per process.
        static SAID_WHY: std::sync::Once = std::sync::Once::new();
        SAID_WHY.call_once(|| eprintln!("boot: VMs run under {}: {}", choice.accel, choice.why));
        eprintln!(
            "boot: {} started under {}; console: {}",
            spec.name,
            choice.accel,
            machine.console_path().display()
        );
        Boot {
            role,
            label: options.label.to_string(),
            machine,
            instance,
            probe,
            timings: Timings::default(),
            cpu: None,
            root_disk,
            accel_why: choice.why,
            _slot: slot,
        }
    }

    pub fn name(&self) -> String {
        format!(
            "{} ({}, {})",
            self.role.name,
            self.label,
            self.machine.accel()
        )
    }

    /// Runs `script` in the guest; a probe that cannot be reached is a boot failure.
    pub fn run(&mut self, script: &str) -> Result<vm::probe::Ran, BootFailure> {
        self.probe
            .run(script, Duration::from_secs(60))
            .map_err(|e| self.failure(&format!("the probe failed: {e:#}"), &[]))
    }

    /// Like [`Boot::run`], for a command that must succeed: its output.
    pub fn output(&mut self, script: &str) -> Result<String, BootFailure> {
        let ran = self.run(script)?;
        if ran.success() {
            Ok(ran.output)
        } else {
            Err(self.failure(
                &format!(
                    "`{script}` failed in the guest (exit {}): {}",
                    ran.status, ran.output
                ),
                &[],
            ))
        }
    }

    /// Waits for systemd to finish booting, then checks every unit the image enables is
    /// active and none failed.
    pub fn settle(&mut self) -> Result<Duration, BootFailure> {
        let started = Instant::now();
        // In slices, so a VM that died (a kernel panic, qemu failing) is seen at once.
        let waited = loop {
            let slice = SETTLE_TIMEOUT
                .saturating_sub(started.elapsed())
                .min(Duration::from_secs(20));
            let ran = self.probe.run("systemctl is-system-running --wait", slice);
            if ran.is_ok() || started.elapsed() >= SETTLE_TIMEOUT {
                break ran;
            }
            if let Some(status) = self.machine.exited() {
                break Err(anyhow::anyhow!("qemu exited ({status})"));
            }
        };
        let state =
            match waited {
                Ok(ran) => ran.output.trim().to_string(),
                Err(e) => {
                    let jobs = self
                        .probe
                        .run(
                            "systemctl list-jobs --no-legend --plain",
                            Duration::from_secs(20),
                        )
                        .map(|ran| ran.output)
                        .unwrap_or_default();
                    let stuck: Vec<String> = jobs
                        .lines()
                        .filter_map(|line| line.split_whitespace().nth(1).map(str::to_string))
                        .collect();
                    return Err(self.failure(
                        &format!(
                        "systemd did not finish booting within {}s ({e:#}); jobs still waiting: {}",
                        started.elapsed().as_secs(),
                        if stuck.is_empty() { "unknown".into() } else { stuck.join(", ") }
                    ),
                        &stuck,
                    ));
                }
            };
        let settled = self.machine.elapsed();
        self.timings.settled = Some(settled);
        let units = image_units(&self.role.name);
        let states = self.states(&units)?;
        let failed = self.failed_units()?;
        let mut bad: Vec<String> = units
            .iter()
            .filter(|unit| states.get(*unit).is_none_or(|s| s.active != "active"))
            .cloned()
            .collect();
        for unit in &failed {
            if !bad.contains(unit) {
                bad.push(unit.clone());
            }
        }
        if !bad.is_empty() {
            let described: Vec<String> = bad
                .iter()
                .map(|unit| describe_state(unit, states.get(unit)))
                .collect();
            return Err(self.failure(
                &format!(
                    "booted to `{state}` after {:.0}s, but: {}",
                    settled.as_secs_f64(),
                    described.join("; ")
                ),
                &bad,
            ));
        }
        eprintln!(
            "boot: {} settled ({state}) after {:.1}s: {} active, none failed",
            self.name(),
            settled.as_secs_f64(),
            units.join(", ")
        );
        Ok(settled)
    }

    /// `systemctl show` of each unit.
    pub fn states(&mut self, units: &[String]) -> Result<BTreeMap<String, UnitState>, BootFailure> {
        let script = format!(
            "systemctl show --property=Id,ActiveState,SubState,Result,ExecMainStatus {}",
            units.join(" ")
        );
        let output = self.output(&script)?;
        let mut states = BTreeMap::new();
        for block in output.split("\n\n") {
            let mut state = UnitState::default();
            let mut id = String::new();
            for line in block.lines() {
                match line.split_once('=') {
                    Some(("Id", v)) => id = v.to_string(),
                    Some(("ActiveState", v)) => state.active = v.to_string(),
                    Some(("SubState", v)) => state.sub = v.to_string(),
                    Some(("Result", v)) => state.result = v.to_string(),
                    Some(("ExecMainStatus", v)) => state.exec_main_status = v.to_string(),
                    _ => {}
                }
            }
            if !id.is_empty() {
                states.insert(id, state);
            }
        }
        Ok(states)
    }

    /// `systemctl --failed`: every failed unit of the system, not only the image's.
    pub fn failed_units(&mut self) -> Result<Vec<String>, BootFailure> {
        let output = self.output("systemctl list-units --failed --all --no-legend --plain")?;
        Ok(output
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .map(str::to_string)
            .collect())
    }

    /// Waits until every service of the role (and the common ones) answers its health path
    /// with 2xx through its forwarded port.
    pub fn wait_healthy(&mut self) -> Result<Duration, BootFailure> {
        let services: Vec<(String, String, u16, String)> = self
            .role
            .services
            .iter()
            .chain(registry().common_services())
            .map(|s| (s.name.clone(), s.unit.clone(), s.port, s.health.clone()))
            .collect();
        // Generous: node_exporter's /metrics gathers every collector, seconds under TCG.
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let deadline = Instant::now() + HEALTH_TIMEOUT;
        let mut healthy = std::collections::BTreeSet::new();
        let mut waiting: Vec<(String, String, String)> = Vec::new();
        loop {
            waiting.clear();
            for (name, unit, port, health) in &services {
                if healthy.contains(name) {
                    continue;
                }
                let addr = self.machine.host_addr(*port).unwrap();
                let url = format!("http://{addr}{health}");
                let answer = match client.get(&url).send() {
                    Ok(response) if response.status().is_success() => None,
                    Ok(response) => Some(format!("{health} answered {}", response.status())),
                    Err(e) => Some(format!("{health}: {}", one_line(&e))),
                };
                match answer {
                    Some(why) => waiting.push((name.clone(), unit.clone(), why)),
                    None => {
                        healthy.insert(name.clone());
                    }
                }
            }
            if waiting.is_empty() {
                let healthy = self.machine.elapsed();
                self.timings.healthy = Some(healthy);
                eprintln!(
                    "boot: {} healthy after {:.1}s",
                    self.name(),
                    healthy.as_secs_f64()
                );
                return Ok(healthy);
            }
            if Instant::now() > deadline || self.machine.exited().is_some() {
                let units: Vec<String> = waiting.iter().map(|(_, unit, _)| unit.clone()).collect();
                let states = self.states(&units).unwrap_or_default();
                let described: Vec<String> = waiting
                    .iter()
                    .map(|(name, unit, why)| {
                        format!("{name} ({why}; {})", describe_state(unit, states.get(unit)))
                    })
                    .collect();
                return Err(self.failure(
                    &format!(
                        "not healthy {}s after it settled: {}",
                        HEALTH_TIMEOUT.as_secs(),
                        described.join("; ")
                    ),
                    &units,
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Presses the power button and waits for the guest to power off cleanly.
    pub fn power_off(&mut self) -> Result<Duration, BootFailure> {
        self.cpu = self.machine.cpu_time();
        let result = self.machine.power_off(POWER_OFF_TIMEOUT);
        let _ = std::fs::remove_file(&self.root_disk);
        result.map_err(|e| self.failure(&format!("{e:#}"), &[]))
    }

    /// Records this boot's figures (see [`super::record_timing`]).
    pub fn record_timing(&self) {
        let seconds = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 10.0).round() / 10.0);
        super::record_timing(&serde_json::json!({
            "role": self.role.name,
            "boot": self.label,
            "accel": self.machine.accel().to_string(),
            "accel_why": self.accel_why,
            "units_active_s": seconds(self.timings.settled),
            "healthy_s": seconds(self.timings.healthy),
            "qemu_cpu_s": seconds(self.cpu),
            "guest": self.machine.console().startup_finished().unwrap_or("").to_string(),
        }));
    }

    /// A failure of this boot: `summary`, then for each of `units` its journal and how its
    /// process ended, the agent's lines and the console's tail.
    pub fn failure(&mut self, summary: &str, units: &[String]) -> BootFailure {
        let console = self.machine.console();
        let mut message = format!("{}: {summary}\n", self.name());
        for unit in units {
            let exits = console.exit_statuses(unit);
            message.push_str(&format!(
                "\n--- {unit}: {}\n",
                match exits.last() {
                    Some(status) if exits.len() == 1 => {
                        format!("its process exited with {status} (the console)")
                    }
                    Some(status) => format!(
                        "its process exited with {status} (the console: {} exits, the first with {})",
                        exits.len(),
                        exits[0]
                    ),
                    None => "no exit logged on the console".to_string(),
                }
            ));
            let journal = self
                .probe
                .run(
                    &format!("journalctl --boot --no-pager --output=short-monotonic --lines=40 --unit={unit}"),
                    Duration::from_secs(20),
                )
                .map(|ran| ran.output)
                .unwrap_or_else(|e| {
                    // Without the probe, the console holds systemd's lines about the unit.
                    format!(
                        "(no journal through the probe: {e:#}; the console's lines about it:)\n{}",
                        console.about_unit(unit).join("\n")
                    )
                });
            message.push_str(&indent(&journal));
        }
        let agent = console.messages_of("stack-agent");
        if !agent.is_empty() {
            message.push_str("\n--- the agent's lines on the console:\n");
            message.push_str(&indent(&agent.join("\n")));
        }
        if let Some(status) = self.machine.exited() {
            message.push_str(&format!(
                "\n--- qemu has exited ({status}): {}\n",
                self.machine.qemu_log().trim()
            ));
        }
        message.push_str(&format!(
            "\n--- the console's last lines ({}):\n",
            self.machine.console_path().display()
        ));
        message.push_str(&indent(&console.tail(25)));
        BootFailure { message }
    }
}

impl Drop for Boot {
    fn drop(&mut self) {
        // qemu keeps the file open until it ends; the space is freed then.
        let _ = std::fs::remove_file(&self.root_disk);
    }
}

/// `unit` with its state, e.g. `stack-agent-render.service failed (exit-code, status 5)`.
fn describe_state(unit: &str, state: Option<&UnitState>) -> String {
    match state {
        None => format!("{unit} unknown to systemd"),
        Some(state) => {
            let mut text = format!("{unit} {}", state.active);
            if !state.sub.is_empty() && state.sub != state.active {
                text.push_str(&format!("/{}", state.sub));
            }
            if !state.result.is_empty() && state.result != "success" {
                text.push_str(&format!(" ({}", state.result));
                if state.exec_main_status != "0" && !state.exec_main_status.is_empty() {
                    text.push_str(&format!(", exit code {}", state.exec_main_status));
                }
                text.push(')');
            }
            text
        }
    }
}

fn indent(text: &str) -> String {
    let mut out: String = text
        .trim_end()
        .lines()
        .map(|line| format!("    {line}\n"))
        .collect();
    if out.is_empty() {
        out.push_str("    (nothing)\n");
    }
    out
}

/// An error and its causes on one line.
pub fn one_line(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
