//! What surrounds one booted instance, as a deployment gives it on EC2:
//!
//! - its tags, as Terraform writes them ([`tags`]): the provider's default tags, the
//!   instance's own (`Name`, `obstack:role`, its data volume), one `obstack:peer:<peer>` per
//!   peer its role.toml reads (terraform/instances.tf's `peer_tags`, which
//!   xtask/tests/xtask/roles.rs keeps equal to the registry), the name of each SSM
//!   parameter it reads, and on the instance running Alertmanager the SNS topic's ARN;
//! - an IMDS stand-in serving those tags, and an SSM stand-in serving the parameters to the
//!   instance role's credentials (xtask::vm);
//! - its data volume: a sparse file the size of the role's `min_size_gib`, attached as an
//!   NVMe disk whose serial is the volume id;
//! - its peers: every other role gets an address on the VM network, and every port of it a
//!   guest forward to one stand-in HTTP server on the host ([`Peers`]), which answers
//!   health checks and scrapes, and records the log lines pushed to it.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use stack_agent::mount::VolumeId;
use stack_agent::RoleSpec;
use testkit::http::{Response, TestServer};
use xtask::roles::Role;
use xtask::vm::{self, imds, GuestForward};

use super::{images_dir, registry};

/// The region every stand-in deployment is in.
pub const REGION: &str = "us-east-1";
/// The account in ARNs.
const ACCOUNT: &str = "123456789012";

/// A deployment around the VMs of one test: its name, the addresses its roles have on the
/// VM network, its secrets, its data volumes, and stand-ins for whatever does not run as a
/// VM.
pub struct Deployment {
    pub name: String,
    addresses: BTreeMap<String, Ipv4Addr>,
    parameters: BTreeMap<String, String>,
    volumes: BTreeMap<String, Volume>,
    pub peers: Peers,
}

/// A role's EBS data volume.
pub struct Volume {
    pub id: VolumeId,
    pub path: PathBuf,
}

impl Deployment {
    /// A deployment named `name` (2-31 of `a-z 0-9 -`, as Terraform's `name`): every role
    /// gets an address, stateful roles a blank volume under `dir`, and the SSM parameters
    /// (the Grafana admin password) random values.
    pub fn new(name: &str, dir: &Path) -> Deployment {
        let mut addresses = BTreeMap::new();
        let mut volumes = BTreeMap::new();
        for (index, role) in registry().roles().iter().enumerate() {
            addresses.insert(
                role.name.clone(),
                Ipv4Addr::new(169, 254, 169, 20 + index as u8),
            );
            if let Some(data) = &role.data {
                let id = VolumeId::parse(&format!("vol-0{}", random_hex(8)))
                    .expect("a made-up volume id is valid");
                let path = dir.join(format!("{}-{}.img", role.name, id));
                vm::disk::blank_volume(&path, data.min_size_gib)
                    .unwrap_or_else(|e| panic!("{e:#}"));
                volumes.insert(role.name.clone(), Volume { id, path });
            }
        }
        let mut parameters = BTreeMap::new();
        for role in registry().roles() {
            for secret in required_secrets(&role.name) {
                parameters.insert(
                    parameter_name(name, &role.name, &secret.name_tag),
                    random_hex(12),
                );
            }
        }
        Deployment {
            name: name.to_string(),
            addresses,
            parameters,
            volumes,
            peers: Peers::start(),
        }
    }

    pub fn address(&self, role: &str) -> Ipv4Addr {
        self.addresses[role]
    }

    pub fn volume(&self, role: &str) -> Option<&Volume> {
        self.volumes.get(role)
    }

    /// The value of the parameter `role`'s `tag` names.
    pub fn parameter(&self, role: &str, tag: &str) -> Option<&str> {
        self.parameters
            .get(&parameter_name(&self.name, role, tag))
            .map(String::as_str)
    }

    /// The tags Terraform gives `role`'s instance in this deployment.
    pub fn tags(&self, role: &Role) -> BTreeMap<String, String> {
        let mut tags = BTreeMap::from([
            ("Name".to_string(), format!("{}-{}", self.name, role.name)),
            ("obstack:role".to_string(), role.name.clone()),
            ("obstack:project".to_string(), "obstack".to_string()),
            ("obstack:deployment".to_string(), self.name.clone()),
        ]);
        if let Some(volume) = self.volume(&role.name) {
            tags.insert("obstack:data-volume".into(), volume.id.to_string());
        }
        for peer in role.peers.keys() {
            tags.insert(
                format!("obstack:peer:{peer}"),
                self.address(peer).to_string(),
            );
        }
        for secret in required_secrets(&role.name) {
            tags.insert(
                secret.name_tag.clone(),
                parameter_name(&self.name, &role.name, &secret.name_tag),
            );
        }
        if role.services.iter().any(|s| s.name == "alertmanager") {
            tags.insert(
                "obstack:alert-sns-topic-arn".into(),
                format!("arn:aws:sns:{REGION}:{ACCOUNT}:{}-alerts", self.name),
            );
        }
        tags
    }

    /// A new instance of `role`: its IMDS (a new instance id, this deployment's tags) and
    /// the SSM endpoint its role may read.
    pub fn instance(&self, role: &Role) -> Instance {
        let imds = imds::Imds::start(imds::Instance {
            instance_id: format!("i-0{}", random_hex(8)),
            region: REGION.to_string(),
            role_name: format!("{}-{}", self.name, role.name),
            tags: self.tags(role),
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
        let ssm = vm::ssm::Ssm::start(self.parameters.clone(), imds.credentials(), REGION)
            .unwrap_or_else(|e| panic!("{e:#}"));
        Instance { imds, ssm }
    }

    /// The guest forwards `role`'s VM gets: IMDS, the AWS API, and every port of every other
    /// role to the peers' stand-in.
    pub fn forwards(&self, role: &str, instance: &Instance) -> Vec<GuestForward> {
        let mut forwards = vec![
            GuestForward {
                guest: SocketAddrV4::new(vm::IMDS_ADDR, 80),
                host: instance.imds.addr(),
            },
            GuestForward {
                guest: SocketAddrV4::new(vm::AWS_API_ADDR, 80),
                host: instance.ssm.addr(),
            },
        ];
        for other in registry().roles().iter().filter(|r| r.name != role) {
            for port in ports(other) {
                forwards.push(GuestForward {
                    guest: SocketAddrV4::new(self.address(&other.name), port),
                    host: self.peers.addr(),
                });
            }
        }
        forwards
    }
}

/// One instance's AWS side.
pub struct Instance {
    pub imds: imds::Imds,
    pub ssm: vm::ssm::Ssm,
}

/// Every port `role`'s instance serves: its services' and the common ones'.
pub fn ports(role: &Role) -> Vec<u16> {
    role.services
        .iter()
        .chain(registry().common_services())
        .map(|s| s.port)
        .collect()
}

/// The agent's spec of `role`.
pub fn spec(role: &str) -> RoleSpec {
    RoleSpec::load(&images_dir(), role).unwrap_or_else(|e| panic!("{e}"))
}

/// Terraform's name for the parameter a secret tag names: the Grafana admin password is
/// `/obstack/<deployment>/grafana/admin-password` (terraform/secrets.tf).
/// The secrets every deployment of `role` has; the optional ones (the alert webhooks' URLs)
/// are left out, as Terraform leaves their tags out by default.
fn required_secrets(role: &str) -> Vec<stack_agent::SecretSpec> {
    spec(role)
        .secrets
        .into_iter()
        .filter(|secret| !secret.optional)
        .collect()
}

fn parameter_name(deployment: &str, role: &str, tag: &str) -> String {
    let what = tag
        .strip_prefix("obstack:")
        .and_then(|t| t.strip_prefix(&format!("{role}-")))
        .unwrap_or(tag)
        .trim_end_matches("-param");
    format!("/obstack/{deployment}/{role}/{what}")
}

pub fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").unwrap(),
        &mut buffer,
    )
    .unwrap();
    hex::encode(buffer)
}

/// The host-side stand-in for every peer that is not booted: it answers health paths and
/// scrapes (a metric of its own), and keeps every log line pushed to it (Loki's push API,
/// JSON), so a test can see what a VM's Promtail shipped.
pub struct Peers {
    server: TestServer,
    pushed: Arc<Mutex<Vec<String>>>,
}

impl Peers {
    fn start() -> Peers {
        let pushed = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&pushed);
        let server = TestServer::start(move |request| {
            let path = request.path.split('?').next().unwrap_or_default();
            match (request.method.as_str(), path) {
                ("GET", "/metrics") => {
                    Response::ok("# TYPE obstack_peer_standin gauge\nobstack_peer_standin 1\n")
                        .header("Content-Type", "text/plain; version=0.0.4")
                }
                ("GET", "/health" | "/ready" | "/-/ready" | "/-/healthy" | "/api/health") => {
                    Response::ok("ok\n")
                }
                ("POST", "/loki/api/v1/push") => {
                    let lines = pushed_lines(&request.body);
                    keep.lock().unwrap().extend(lines);
                    Response::status(204)
                }
                _ => Response::not_found(),
            }
        });
        Peers { server, pushed }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server
            .url()
            .trim_start_matches("http://")
            .parse()
            .expect("the stand-in's address")
    }

    /// Every log line pushed so far.
    pub fn pushed(&self) -> Vec<String> {
        self.pushed.lock().unwrap().clone()
    }
}

/// The lines of a Loki JSON push.
fn pushed_lines(body: &[u8]) -> Vec<String> {
    let Ok(push) = serde_json::from_slice::<serde_json::Value>(body) else {
        return vec![format!("(not JSON: {} bytes)", body.len())];
    };
    push["streams"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|stream| stream["values"].as_array().into_iter().flatten())
        .filter_map(|value| value[1].as_str().map(str::to_string))
        .collect()
}
