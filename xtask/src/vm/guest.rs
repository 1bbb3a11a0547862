//! What a test adds to an image's root before booting it as a VM, and nothing an image ever
//! ships: each file says so in its first line.
//!
//! - the network: systemd-networkd takes the user-mode NIC's DHCP lease (on EC2, cloud-init
//!   writes the network config; here cloud-init is off, see [`KERNEL_ARGS`]);
//! - the probe: a socket-activated unit on [`super::PROBE_PORT`] that runs one command per
//!   connection as root and answers with its output and exit status ([`super::probe`] is
//!   the host's side). The port is reached only through a loopback forward on the host;
//! - where the AWS SDK finds its API (`AWS_ENDPOINT_URL`, for the units that call one): the
//!   stand-in endpoint on [`super::AWS_API_ADDR`], since nothing reaches AWS from here.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;

use crate::cmd::Cmd;

/// Kernel command line words for a VM booting a golden image's root:
/// - cloud-init stays off: it would probe for a datasource (this is not EC2 to it) and
///   write network config; nothing of the stack needs it at boot;
/// - every journal line is copied to the serial console, the log a failure message quotes;
/// - the kernel logs only warnings and worse there.
pub const KERNEL_ARGS: &[&str] = &[
    "cloud-init=disabled",
    "systemd.journald.forward_to_console=1",
    "loglevel=4",
];

/// The probe's program: the request is a bash script's length in bytes on one line, then
/// the script; the answer its output (stdout and stderr), then `obstack-probe-exit: STATUS`.
const PROBE: &str = r#"#!/bin/bash
# Added by the boot test (xtask/src/vm/guest.rs); never part of an image.
# One command per connection from the host: a bash script's length, then the script; its
# output, then its exit status.
IFS= read -r -t 30 length || exit 0
case $length in
  '' | *[!0-9]*)
    echo "obstack-probe: the request does not start with a length"
    echo "obstack-probe-exit: 255"
    exit 0
    ;;
esac
script=$(head -c "$length")
bash -c "$script" </dev/null 2>&1
echo "obstack-probe-exit: $?"
"#;

const PROBE_SOCKET: &str =
    "# Added by the boot test (xtask/src/vm/guest.rs); never part of an image.
[Unit]
Description=obstack test VM probe (the host's window into this VM)

[Socket]
ListenStream=7999
Accept=yes

[Install]
WantedBy=sockets.target
";

const PROBE_SERVICE: &str =
    "# Added by the boot test (xtask/src/vm/guest.rs); never part of an image.
[Unit]
Description=obstack test VM probe: one command from the host

[Service]
ExecStart=/usr/local/lib/obstack-vm/probe
StandardInput=socket
StandardOutput=socket
StandardError=journal
";

const NETWORK: &str = "# Added by the boot test (xtask/src/vm/guest.rs); never part of an image.
# The VM's one NIC takes qemu's DHCP lease, as an instance's takes the VPC's.
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
# IPv4 only, as the VPC subnet: no IPv6 link-local address for network-online.target to
# wait for (seconds of duplicate address detection under emulation).
LinkLocalAddressing=no
IPv6AcceptRA=no
";

/// Adds the network config and the probe to the root at `root`, and points
/// `aws_units`' AWS SDK at `aws_endpoint` (e.g. `http://169.254.169.250`).
pub fn install(root: &Path, aws_endpoint: &str, aws_units: &[&str]) -> anyhow::Result<()> {
    let write = |path: &str, contents: &str, mode: u32| -> anyhow::Result<()> {
        let file = root.join(path.trim_start_matches('/'));
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&file, contents)
            .with_context(|| format!("cannot write {}", file.display()))?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot chmod {}", file.display()))
    };
    write("/etc/systemd/network/80-obstack-vm.network", NETWORK, 0o644)?;
    write("/usr/local/lib/obstack-vm/probe", PROBE, 0o755)?;
    write(
        "/etc/systemd/system/obstack-probe.socket",
        PROBE_SOCKET,
        0o644,
    )?;
    write(
        "/etc/systemd/system/obstack-probe@.service",
        PROBE_SERVICE,
        0o644,
    )?;
    for unit in aws_units {
        write(
            &format!("/etc/systemd/system/{unit}.d/zz-obstack-vm.conf"),
            &format!(
                "# Added by the boot test (xtask/src/vm/guest.rs); never part of an image.\n\
                 # The AWS API this VM can reach: the test's stand-in, not AWS.\n\
                 [Service]\nEnvironment=AWS_ENDPOINT_URL={aws_endpoint}\n"
            ),
            0o644,
        )?;
    }
    // `systemctl --root` writes the links without a running systemd.
    Cmd::new(
        "systemctl",
        [
            format!("--root={}", root.display()),
            "enable".into(),
            "systemd-networkd.service".into(),
            "systemd-networkd-wait-online.service".into(),
            "obstack-probe.socket".into(),
        ],
    )
    .read_quietly()
    .map(|_| ())
    .with_context(|| format!("cannot enable the VM's units in {}", root.display()))
}
