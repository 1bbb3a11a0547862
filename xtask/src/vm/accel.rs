//! KVM when it works, else TCG. `/dev/kvm` existing is not enough: under some nested
//! hypervisors (a PVM device, say) a stock kernel aborts on an MSR or hangs. So KVM is tried
//! once per process by booting the kernel itself to its first panic (no root disk: it
//! panics right after its own initialisation, a second or two with KVM); anything else
//! falls back to TCG, software emulation, slower but the same machine.
//!
//! `OBSTACK_VM_ACCEL=kvm|tcg` skips the probe.

use std::fmt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context;

/// The accelerator a VM runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// qemu's `-accel` and `-cpu` for it. TCG gets a bigger translation cache than its
    /// default 32 MiB only up to 64 MiB (RSS per VM), and one vCPU: every vCPU is a host
    /// thread, and VMs share two cores.
    pub fn qemu_args(self) -> Vec<&'static str> {
        match self {
            Accel::Kvm => vec!["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => vec!["-accel", "tcg,tb-size=64"],
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
        })
    }
}

/// The accelerator, and why (for the test output and `bench boot`).
#[derive(Debug, Clone)]
pub struct Choice {
    pub accel: Accel,
    pub why: String,
}

/// The accelerator for VMs booting `kernel`, decided once per process.
pub fn choose(kernel: &Path, scratch: &Path) -> Choice {
    static CHOICE: OnceLock<Choice> = OnceLock::new();
    CHOICE.get_or_init(|| decide(kernel, scratch)).clone()
}

fn decide(kernel: &Path, scratch: &Path) -> Choice {
    match std::env::var("OBSTACK_VM_ACCEL").as_deref() {
        Ok("kvm") => {
            return Choice {
                accel: Accel::Kvm,
                why: "OBSTACK_VM_ACCEL=kvm".into(),
            }
        }
        Ok("tcg") => {
            return Choice {
                accel: Accel::Tcg,
                why: "OBSTACK_VM_ACCEL=tcg".into(),
            }
        }
        _ => {}
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return Choice {
            accel: Accel::Tcg,
            why: format!("/dev/kvm is not usable ({e})"),
        };
    }
    match kvm_boots(kernel, scratch) {
        Ok(elapsed) => Choice {
            accel: Accel::Kvm,
            why: format!(
                "the kernel ran under KVM ({:.1}s to its first panic)",
                elapsed.as_secs_f64()
            ),
        },
        Err(e) => Choice {
            accel: Accel::Tcg,
            why: format!("/dev/kvm is there but a kernel does not run under it: {e:#}"),
        },
    }
}

/// How long the probe may take: KVM needs a second or two; a hang is not worth more.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// Boots `kernel` with KVM and no root: it must print its banner and reach the panic that
/// says it found no root filesystem, then qemu exits (`-no-reboot`).
fn kvm_boots(kernel: &Path, scratch: &Path) -> anyhow::Result<Duration> {
    let console = scratch.join("kvm-probe-console.log");
    let _ = std::fs::remove_file(&console);
    let started = Instant::now();
    let mut child = Command::new(super::QEMU)
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(Accel::Kvm.qemu_args())
        .args(["-m", "256", "-no-reboot", "-kernel"])
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", super::QEMU))?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > PROBE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "the kernel did not finish booting within {}s",
                PROBE_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    if text.contains("Kernel panic") {
        return Ok(started.elapsed());
    }
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    let last = stderr
        .lines()
        .chain(text.lines())
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("no output");
    anyhow::bail!("qemu exited ({status}) before the kernel finished booting: {last}")
}
