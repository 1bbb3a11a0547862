//! Prometheus' EC2 service discovery of the app fleet, for real: the config the agent renders
//! for a fleet, pointed at moto (a real EC2 API on loopback), run by `promtool check
//! service-discovery` against instances of this deployment, of another deployment, stopped
//! ones and other roles. Exactly this deployment's running app instances must be found,
//! labelled as the dashboards and rules expect. Discovery only: nothing is scraped.

use crate::stack;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::{Placement, ResourceType, Tag, TagSpecification};
use serde_json::Value;
use stack::{fleet_tags, install, install_rootfs, render, with_ec2_endpoint, DEPLOYMENT, LOKI_IP};
use testkit::Moto;

const REGION: &str = "us-east-1";

/// How long promtool collects discovery results (it always waits this long). moto answers
/// on loopback within milliseconds; this leaves room for a loaded machine.
const DISCOVERY_WINDOW: &str = "--timeout=20s";

/// Blocking wrappers over the EC2 calls the test makes against moto.
struct Ec2 {
    runtime: tokio::runtime::Runtime,
    client: aws_sdk_ec2::Client,
}

/// An instance the test launched: its id, private address and zone.
#[derive(Debug, Clone)]
struct Launched {
    id: String,
    private_ip: String,
    zone: String,
}

impl Ec2 {
    fn new(moto: &Moto) -> Ec2 {
        let config = aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(moto.endpoint())
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new("test", "test", None, None, "moto"))
            .build();
        Ec2 {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            client: aws_sdk_ec2::Client::from_conf(config),
        }
    }

    /// Launches one instance in `zone` with `tags` on the instance, as the launch template's
    /// tag specifications (or Terraform's default tags) put them.
    fn launch(&self, zone: &str, tags: &[(&str, &str)]) -> Launched {
        let spec = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .set_tags(Some(
                tags.iter()
                    .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
                    .collect(),
            ))
            .build();
        let reservation = self
            .runtime
            .block_on(
                self.client
                    .run_instances()
                    .image_id("ami-12345678")
                    .min_count(1)
                    .max_count(1)
                    .placement(Placement::builder().availability_zone(zone).build())
                    .tag_specifications(spec)
                    .send(),
            )
            .unwrap();
        let instance = &reservation.instances()[0];
        Launched {
            id: instance.instance_id().unwrap().to_string(),
            private_ip: instance.private_ip_address().unwrap().to_string(),
            zone: instance
                .placement()
                .and_then(|p| p.availability_zone())
                .unwrap()
                .to_string(),
        }
    }

    fn stop(&self, instance: &Launched) {
        self.runtime
            .block_on(
                self.client
                    .stop_instances()
                    .instance_ids(&instance.id)
                    .send(),
            )
            .unwrap();
    }
}

/// The tags of an app fleet instance of `deployment` (the contract's launch template tags).
fn app_tags(deployment: &str) -> Vec<(&str, &str)> {
    vec![
        ("Name", "fleet-app"),
        ("obstack:role", "app"),
        ("obstack:deployment", deployment),
        ("obstack:project", "obstack"),
        ("obstack:peer:loki", LOKI_IP),
    ]
}

/// What moto holds: this deployment's running app instances, and everything that must not
/// be found.
struct Estate {
    fleet: Vec<Launched>,
    others: usize,
}

fn launch_estate(ec2: &Ec2) -> Estate {
    let zones = ["us-east-1a", "us-east-1b", "us-east-1c"];
    let fleet: Vec<Launched> = (0..4)
        .map(|i| ec2.launch(zones[i % zones.len()], &app_tags(DEPLOYMENT)))
        .collect();
    let mut others = 0;
    // The same app in another deployment (another stack in the same account and region).
    for zone in &zones[..2] {
        ec2.launch(zone, &app_tags("obstack-other"));
        others += 1;
    }
    // A stopped instance of this fleet: it has a private address but serves nothing.
    let stopped = ec2.launch("us-east-1a", &app_tags(DEPLOYMENT));
    ec2.stop(&stopped);
    others += 1;
    // The other roles of this deployment.
    for role in ["prometheus", "loki", "grafana"] {
        ec2.launch(
            "us-east-1a",
            &[
                ("obstack:role", role),
                ("obstack:deployment", DEPLOYMENT),
                ("obstack:project", "obstack"),
            ],
        );
        others += 1;
    }
    // An app instance that is not part of any deployment (no deployment tag).
    ec2.launch("us-east-1b", &[("obstack:role", "app")]);
    others += 1;
    Estate { fleet, others }
}

/// Renders Prometheus' files with `tags` into `root`, with the discovery pointed at moto;
/// returns the config's path.
fn rendered_config(
    root: &Path,
    moto: &Moto,
    tags: &BTreeMap<String, String>,
) -> std::path::PathBuf {
    install(&render("prometheus", tags, root));
    install_rootfs("prometheus", "etc/prometheus", root);
    let config = root.join("etc/prometheus/prometheus.yml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, with_ec2_endpoint(&text, &moto.endpoint(), REGION)).unwrap();
    config
}

/// `promtool check service-discovery <config> <job>`: the relabelled labels of every target
/// found, each as label → value. Fails the test when promtool fails or a target has an error.
fn discover(config: &Path, job: &str, moto: &Moto) -> Vec<BTreeMap<String, String>> {
    let promtool = testkit::require_tool("promtool");
    let mut command = Command::new(&promtool);
    command.args([
        OsStr::new("check"),
        OsStr::new("service-discovery"),
        OsStr::new(DISCOVERY_WINDOW),
        config.as_os_str(),
        OsStr::new(job),
    ]);
    // Credentials for moto; no profile, no instance metadata.
    moto.apply_env(&mut command);
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", promtool.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "promtool check service-discovery {job} failed:\n{stdout}{stderr}"
    );
    let results: Vec<Value> = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("promtool's answer for {job} is not JSON ({e}):\n{stdout}"));
    results
        .iter()
        .map(|result| {
            assert!(
                result.get("error").is_none_or(Value::is_null),
                "{job}: {result}"
            );
            result["labels"]
                .as_object()
                .unwrap_or_else(|| panic!("{job}: a result without labels: {result}"))
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .collect()
}

/// A copy of `config` (beside it) whose `job` lacks `without` (`static_configs` or
/// `ec2_sd_configs`); returns its path.
fn only(config: &Path, job: &str, without: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(config).unwrap();
    let mut yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let jobs = yaml["scrape_configs"].as_sequence_mut().unwrap();
    let found = jobs
        .iter_mut()
        .find(|j| j["job_name"].as_str() == Some(job))
        .unwrap_or_else(|| panic!("no job `{job}`"));
    let removed = found.as_mapping_mut().unwrap().remove(without);
    assert!(removed.is_some(), "job `{job}` has no {without}");
    let path = config.with_file_name(format!("{job}-without-{without}.yml"));
    std::fs::write(&path, serde_yaml_ng::to_string(&yaml).unwrap()).unwrap();
    path
}

/// The labels a discovered fleet target must carry after relabelling.
fn expected(instance: &Launched, job: &str, port: u16) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "__address__".into(),
            format!("{}:{port}", instance.private_ip),
        ),
        ("instance".into(), format!("{}:{port}", instance.private_ip)),
        ("instance_id".into(), instance.id.clone()),
        ("availability_zone".into(), instance.zone.clone()),
        // The AMI every test instance is launched from (Aws::launch).
        ("ami".into(), "ami-12345678".into()),
        ("role".into(), "app".into()),
        ("job".into(), job.into()),
    ])
}

/// The labels of `found` that `expected` names (promtool adds __scheme__ and the like).
fn comparable(found: &[BTreeMap<String, String>], keys: &BTreeSet<&String>) -> TargetSet {
    found
        .iter()
        .map(|labels| {
            labels
                .iter()
                .filter(|(k, _)| keys.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .collect()
}

/// Runs `promtool check service-discovery` for every `(config, job)` at once (each waits
/// out its whole timeout), in order.
fn discover_all(runs: &[(&Path, &str)], moto: &Moto) -> Vec<Vec<BTreeMap<String, String>>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = runs
            .iter()
            .map(|(config, job)| scope.spawn(move || discover(config, job, moto)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| panic!("a discovery run failed"))
            })
            .collect()
    })
}

/// Targets by the labels compared: each target's (label, value) pairs.
type TargetSet = BTreeSet<Vec<(String, String)>>;

/// The targets `found`, and those `fleet` must give for `job`, by the labels
/// [`expected`] names: (found, wanted).
fn fleet_targets(
    found: &[BTreeMap<String, String>],
    fleet: &[Launched],
    job: &str,
    port: u16,
) -> (TargetSet, TargetSet) {
    let wanted: Vec<BTreeMap<String, String>> =
        fleet.iter().map(|i| expected(i, job, port)).collect();
    let keys: BTreeSet<&String> = wanted[0].keys().collect();
    (comparable(found, &keys), comparable(&wanted, &keys))
}

#[test]
fn prometheus_discovers_exactly_the_deployments_running_app_instances() {
    let moto = Moto::start();
    let ec2 = Ec2::new(&moto);
    let estate = launch_estate(&ec2);
    let root = tempfile::tempdir().unwrap();
    let config = rendered_config(root.path(), &moto, &fleet_tags(4));
    // node_exporter: the fleet's are discovered; the other roles' are static, left as they
    // were by the job's relabelling. promtool (2.42) cannot run a job mixing static and
    // EC2 targets (its static discoverer closes the channel they share: "send on closed
    // channel"; Prometheus itself gives each its own), so each half of the job runs on its
    // own, with the job's one relabelling.
    let node_discovered = only(&config, "node", "static_configs");
    let node_static = only(&config, "node", "ec2_sd_configs");
    let found = discover_all(
        &[
            (&config, "demo-app"),
            (&config, "promtail"),
            (&node_discovered, "node"),
            (&node_static, "node"),
        ],
        &moto,
    );

    for ((job, port), found) in [("demo-app", 5000), ("promtail", 9080), ("node", 9100)]
        .into_iter()
        .zip(&found)
    {
        let (got, wanted) = fleet_targets(found, &estate.fleet, job, port);
        assert_eq!(got, wanted, "{job}: found {found:?}");
        eprintln!(
            "{job}: {} targets discovered; {} instances in EC2, {} of them this deployment's \
             running app instances",
            found.len(),
            estate.fleet.len() + estate.others,
            estate.fleet.len()
        );
    }
    let static_roles: BTreeMap<String, String> = found[3]
        .iter()
        .map(|labels| (labels["role"].clone(), labels["__address__"].clone()))
        .collect();
    assert_eq!(
        static_roles,
        BTreeMap::from([
            ("grafana".into(), format!("{}:9100", stack::GRAFANA_IP)),
            ("loki".into(), format!("{LOKI_IP}:9100")),
            ("prometheus".into(), "127.0.0.1:9100".into()),
        ])
    );
    for labels in &found[3] {
        for label in ["instance_id", "availability_zone"] {
            assert!(!labels.contains_key(label), "{labels:?}");
        }
    }
}

#[test]
fn discovery_keeps_to_its_own_deployment() {
    // The check above must be able to fail: in an account where this deployment runs no
    // app instance, its config finds nothing, while the same config rendered for the other
    // deployment finds that one's instance.
    let moto = Moto::start();
    let ec2 = Ec2::new(&moto);
    let other = ec2.launch("us-east-1a", &app_tags("obstack-other"));
    ec2.launch(
        "us-east-1a",
        &[("obstack:role", "loki"), ("obstack:deployment", DEPLOYMENT)],
    );
    let ours_root = tempfile::tempdir().unwrap();
    let ours = rendered_config(ours_root.path(), &moto, &fleet_tags(1));
    let mut other_tags = fleet_tags(1);
    other_tags.insert("obstack:deployment".into(), "obstack-other".into());
    let theirs_root = tempfile::tempdir().unwrap();
    let theirs = rendered_config(theirs_root.path(), &moto, &other_tags);
    let found = discover_all(&[(&ours, "demo-app"), (&theirs, "demo-app")], &moto);
    assert!(found[0].is_empty(), "{:?}", found[0]);
    let (got, wanted) = fleet_targets(&found[1], &[other], "demo-app", 5000);
    assert_eq!(got, wanted);
}
