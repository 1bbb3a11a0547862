//! Virtual machines for the boot tests (and, later, a local stack of VMs): a golden image's
//! root booted under qemu, as close to an EC2 instance as this machine allows.
//!
//! - [`accel`]: KVM when it works, else TCG (software emulation), and which one ran;
//! - [`machine`]: one qemu process: kernel and initramfs from the root, the root disk
//!   (virtio), EBS-like data volumes (NVMe, serial = the volume id without its dash), a
//!   restricted user-mode NIC on link-local space (nothing leaves the machine) with
//!   forwarded ports both ways, a serial console log and a QMP socket;
//! - [`imds`] and [`ssm`]: the instance's AWS side on the host's loopback: IMDSv2 with the
//!   instance's tags and role credentials, and the SSM parameters its role may read;
//! - [`disk`]: root images (`mkfs.ext4 -d`), blank volumes, snapshots, filesystem UUIDs;
//! - [`guest`]: what the test adds to a root before it boots (network, the probe), never
//!   part of an image;
//! - [`probe`]: the host's side of the probe (a command run in the guest, its output);
//! - [`console`]: reading the serial console log (journal lines, exit codes).

pub mod accel;
pub mod console;
pub mod disk;
pub mod guest;
pub mod imds;
pub mod machine;
pub mod probe;
mod qmp;
pub mod ssm;

use std::net::Ipv4Addr;

pub use accel::Accel;
pub use machine::{GuestForward, Machine, MachineSpec, NvmeDisk};

/// The VMs' network, qemu's user-mode NIC restricted to the forwards it is given: the
/// link-local /24 holding the instance metadata address, as on EC2. qemu's default network
/// (10.0.2.0/24) refuses a forward to 169.254.169.254.
pub const NETWORK: &str = "169.254.169.0/24";
/// qemu's own address on it (the guest's gateway).
pub const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 2);
/// The address qemu's DHCP server hands the guest (the first of its range).
pub const GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 15);
/// The instance metadata service, where every AWS SDK and the agent look for it.
pub const IMDS_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// Where the guest reaches the stand-in AWS API endpoint (SSM). Not EC2's DNS resolver
/// (169.254.169.253), to keep the two apart.
pub const AWS_API_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 250);

/// The guest-side port of the probe (see [`guest`] and [`probe`]).
pub const PROBE_PORT: u16 = 7999;

/// The qemu binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// How to get what the VMs need, for error messages.
pub const INSTALL_HINT: &str = "install qemu-system-x86 and socat (scripts/test.sh does: on Debian 12 from bookworm-backports)";
