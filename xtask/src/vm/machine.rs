//! One virtual machine: a qemu process booting a root image like an EC2 instance boots its
//! AMI, and the handles the host keeps on it.
//!
//! - the kernel and initramfs come from the root itself (`-kernel`/`-initrd`), the root is a
//!   virtio disk (`/dev/vda`);
//! - each data volume is an NVMe disk whose serial is the EBS volume id without its dash,
//!   as Nitro presents EBS volumes (`/sys/block/nvme0n1/device/serial`); qemu's model name
//!   (`QEMU NVMe Ctrl`) cannot be changed, so udev's by-id link differs from EC2's;
//! - one NIC, qemu's user-mode network restricted to the forwards given here (nothing the
//!   guest sends leaves this machine): `guest_forwards` carry the guest's connections to an
//!   address of [`super::NETWORK`] to a loopback port on the host, one `socat` per
//!   connection; `host_ports` make guest ports reachable on the host's 127.0.0.1;
//! - the serial console goes to `console.log` in the machine's directory, and a QMP socket
//!   lets the host press the power button, pause and resume.

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::accel::Accel;
use super::qmp;

/// An EBS-like data volume: a raw image presented as an NVMe controller with this serial.
#[derive(Debug, Clone)]
pub struct NvmeDisk {
    pub path: PathBuf,
    /// The volume id without its dash, e.g. `vol0123456789abcdef0` (at most 20 characters).
    pub serial: String,
}

/// The guest's connections to `guest` go to `host` on this machine.
#[derive(Debug, Clone, Copy)]
pub struct GuestForward {
    pub guest: SocketAddrV4,
    pub host: SocketAddr,
}

/// What to boot and how it is wired.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    /// For messages, e.g. `prometheus (replacement)`.
    pub name: String,
    /// Holds `console.log` and `qemu.log`.
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// A raw ext4 image, the guest's `/dev/vda`.
    pub root_disk: PathBuf,
    pub nvme: Vec<NvmeDisk>,
    pub memory_mib: u32,
    /// Kernel command line words after `root=/dev/vda rw console=ttyS0 panic=-1`.
    pub kernel_args: Vec<String>,
    pub guest_forwards: Vec<GuestForward>,
    /// Guest TCP ports to forward from the host's loopback (ports picked when it starts).
    pub host_ports: Vec<u16>,
}

/// A running VM. Dropping it kills qemu.
pub struct Machine {
    name: String,
    child: Child,
    accel: Accel,
    started: Instant,
    console: PathBuf,
    qemu_log: PathBuf,
    /// Holds the QMP socket: a short path (a Unix socket's is limited to 107 bytes).
    sockets: tempfile::TempDir,
    host_ports: BTreeMap<u16, u16>,
}

/// How many times a start is retried when a picked host port was taken meanwhile.
const START_ATTEMPTS: usize = 3;

impl Machine {
    /// Starts qemu and returns once it runs (its QMP socket is up): the guest is booting.
    pub fn start(spec: &MachineSpec, accel: Accel) -> anyhow::Result<Machine> {
        crate::cmd::require_tool(super::QEMU, super::INSTALL_HINT)?;
        if !spec.guest_forwards.is_empty() {
            crate::cmd::require_tool("socat", super::INSTALL_HINT)?;
        }
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            match Machine::try_start(spec, accel) {
                Ok(machine) => return Ok(machine),
                Err(StartError::PortTaken(e)) => last_error = Some(e),
                Err(StartError::Other(e)) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("qemu did not start")))
    }

    fn try_start(spec: &MachineSpec, accel: Accel) -> Result<Machine, StartError> {
        std::fs::create_dir_all(&spec.dir)
            .with_context(|| format!("cannot create {}", spec.dir.display()))?;
        let sockets = tempfile::Builder::new()
            .prefix("obstack-vm-")
            .tempdir()
            .context("cannot create a directory for the QMP socket")?;
        let qmp_socket = sockets.path().join("qmp.sock");
        let console = spec.dir.join("console.log");
        let qemu_log = spec.dir.join("qemu.log");
        let host_ports: BTreeMap<u16, u16> = spec
            .host_ports
            .iter()
            .map(|&guest| free_port().map(|host| (guest, host)))
            .collect::<anyhow::Result<_>>()?;

        let mut args: Vec<String> = [
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-machine",
            "pc",
            "-smp",
            "1",
            "-no-reboot",
        ]
        .map(String::from)
        .to_vec();
        args.extend(accel.qemu_args().into_iter().map(String::from));
        args.extend(["-m".into(), spec.memory_mib.to_string()]);
        args.extend(["-kernel".into(), path_arg(&spec.kernel)?]);
        args.extend(["-initrd".into(), path_arg(&spec.initrd)?]);
        let mut cmdline = vec![
            "root=/dev/vda".to_string(),
            "rw".into(),
            "console=ttyS0".into(),
            "panic=-1".into(),
        ];
        cmdline.extend(spec.kernel_args.iter().cloned());
        args.extend(["-append".into(), cmdline.join(" ")]);
        // The root is throwaway: qemu may skip its flushes. Data volumes keep theirs.
        args.extend([
            "-drive".into(),
            format!(
                "file={},if=virtio,format=raw,cache=unsafe",
                path_arg(&spec.root_disk)?
            ),
        ]);
        for (index, disk) in spec.nvme.iter().enumerate() {
            let valid = !disk.serial.is_empty()
                && disk.serial.len() <= 20
                && disk.serial.chars().all(|c| c.is_ascii_alphanumeric());
            if !valid {
                return Err(StartError::Other(anyhow::anyhow!(
                    "NVMe serial `{}` must be 1-20 letters and digits",
                    disk.serial
                )));
            }
            args.extend([
                "-drive".into(),
                format!(
                    "file={},if=none,id=data{index},format=raw",
                    path_arg(&disk.path)?
                ),
                "-device".into(),
                format!("nvme,serial={},drive=data{index}", disk.serial),
            ]);
        }
        // Entropy from the host, as EC2's CPUs give it (RDRAND): without it, early boot
        // waits seconds under TCG for the kernel's pool.
        args.extend([
            "-object".into(),
            "rng-random,id=rng0,filename=/dev/urandom".into(),
            "-device".into(),
            "virtio-rng-pci,rng=rng0".into(),
        ]);
        let mut netdev = format!("user,id=net0,restrict=on,net={}", super::NETWORK);
        for (guest, host) in &host_ports {
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
        }
        for forward in &spec.guest_forwards {
            netdev.push_str(&format!(
                ",guestfwd=tcp:{}-cmd:socat - TCP:{}",
                forward.guest, forward.host
            ));
        }
        args.extend([
            "-netdev".into(),
            netdev,
            "-device".into(),
            "virtio-net-pci,netdev=net0".into(),
        ]);
        args.extend(["-serial".into(), format!("file:{}", path_arg(&console)?)]);
        args.extend([
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", path_arg(&qmp_socket)?),
        ]);

        let log = std::fs::File::create(&qemu_log)
            .with_context(|| format!("cannot create {}", qemu_log.display()))?;
        std::fs::write(
            spec.dir.join("qemu.cmdline"),
            format!("{} {}\n", super::QEMU, args.join(" ")),
        )
        .context("cannot write the qemu command line")?;
        let started = Instant::now();
        let mut command = Command::new(super::QEMU);
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("qemu's log")?)
            .stderr(log);
        // SAFETY: between fork and exec only prctl(2) runs, which is async-signal-safe. The
        // VM must not outlive the thread that started it (a test killed mid-boot, a Ctrl-C):
        // the kernel kills qemu when that thread ends.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot run {}", super::QEMU))?;
        // Running once its QMP socket is there; a bad option or a taken port ends it first.
        let deadline = started + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().context("qemu")? {
                let log = std::fs::read_to_string(&qemu_log).unwrap_or_default();
                let message = format!(
                    "qemu for {} exited at once ({status}): {}",
                    spec.name,
                    log.trim()
                );
                return Err(if log.contains("forwarding rule") {
                    StartError::PortTaken(anyhow::anyhow!(message))
                } else {
                    StartError::Other(anyhow::anyhow!(message))
                });
            }
            // The socket is made before the devices: the machine runs once QMP answers
            // (a device that fails, say a disk another VM holds, ends qemu before that).
            if qmp_socket.exists() && qmp::execute(&qmp_socket, "query-status").is_ok() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(StartError::Other(anyhow::anyhow!(
                    "qemu for {} did not answer on its QMP socket within 30s",
                    spec.name
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Machine {
            name: spec.name.clone(),
            child,
            accel,
            started,
            console,
            qemu_log,
            sockets,
            host_ports,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// Time since qemu started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The host's loopback port that reaches `guest_port`.
    pub fn host_port(&self, guest_port: u16) -> Option<u16> {
        self.host_ports.get(&guest_port).copied()
    }

    /// `127.0.0.1:PORT` reaching `guest_port`.
    pub fn host_addr(&self, guest_port: u16) -> Option<SocketAddr> {
        self.host_port(guest_port)
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
    }

    pub fn console_path(&self) -> &Path {
        &self.console
    }

    /// The serial console so far (empty if unreadable).
    pub fn console(&self) -> super::console::Console {
        super::console::Console::read(&self.console)
    }

    /// qemu's own output (errors about the machine, not the guest's).
    pub fn qemu_log(&self) -> String {
        std::fs::read_to_string(&self.qemu_log).unwrap_or_default()
    }

    /// qemu's exit status, if it has ended (the guest powered off, or it crashed).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn qmp(&self, command: &str) -> anyhow::Result<serde_json::Value> {
        qmp::execute(&self.sockets.path().join("qmp.sock"), command)
            .with_context(|| format!("VM {}", self.name))
    }

    /// The host CPU time qemu has used so far (user and system), while it runs: what a
    /// boot costs under TCG, whatever else the machine is doing.
    pub fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // After `(comm)`, utime and stime are the 12th and 13th fields.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|t| *t > 0)? as u64;
        Some(Duration::from_millis(ticks * 1000 / per_second))
    }

    /// Stops the guest's CPUs (its disks stay as they are until [`Machine::resume`]).
    pub fn pause(&self) -> anyhow::Result<()> {
        self.qmp("stop").map(|_| ())
    }

    pub fn resume(&self) -> anyhow::Result<()> {
        self.qmp("cont").map(|_| ())
    }

    /// Presses the ACPI power button (as EC2 stops an instance) and waits for the guest to
    /// power off. Past `timeout` qemu is killed and this is an error.
    pub fn power_off(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let asked = Instant::now();
        if self.exited().is_none() {
            self.qmp("system_powerdown")?;
        }
        loop {
            if self.exited().is_some() {
                return Ok(asked.elapsed());
            }
            if asked.elapsed() > timeout {
                self.kill();
                anyhow::bail!(
                    "VM {} did not power off within {}s of the ACPI power button; killed it",
                    self.name,
                    timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Ends qemu at once (a pulled plug).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.kill();
        }
    }
}

enum StartError {
    /// A host port picked for a forward was taken before qemu bound it: try other ports.
    PortTaken(anyhow::Error),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(error: anyhow::Error) -> StartError {
        StartError::Other(error)
    }
}

/// A free port on 127.0.0.1 (the kernel's pick; qemu binds it a moment later).
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// A path as a qemu option value: commas separate options there, so a path holding one
/// would be misread.
fn path_arg(path: &Path) -> anyhow::Result<String> {
    let text = path
        .to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))?;
    anyhow::ensure!(
        !text.contains(','),
        "{text} holds a comma, which qemu's options cannot take; use another directory"
    );
    Ok(text.to_string())
}
