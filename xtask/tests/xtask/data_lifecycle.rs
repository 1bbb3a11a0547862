//! The data's life around the stack, as the operator meets it: `destroy` keeps the
//! snapshots, Loki's bucket and the data key unless `--delete-data`, `restore` makes a
//! role's volume from a snapshot and refuses the wrong ones, `status` shows each role's
//! newest snapshot. EC2 is moto (volumes, snapshots and their tags, in two regions);
//! Terraform is the stand-in, whose recorded calls show the plan each command asked for.

use std::collections::BTreeMap;
use std::process::{Command, Output};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_ec2::config::Credentials;
use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use serde_json::json;

const REGION: &str = "us-east-1";
const DEPLOYMENT: &str = "obstack";
const DATA_KEY: &str =
    "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555";
const STACK_KEY: &str =
    "arn:aws:kms:us-east-1:123456789012:key/99999999-8888-7777-6666-555555555555";
const BUCKET: &str = "obstack-obstack-loki-123456789012";
const STATEFUL: [&str; 3] = ["grafana", "loki", "prometheus"];
const RUNNING: [(&str, &str); 4] = [
    ("app", "ami-0000000000000000a"),
    ("grafana", "ami-0000000000000000b"),
    ("loki", "ami-0000000000000000c"),
    ("prometheus", "ami-0000000000000000d"),
];

/// What `terraform state list` prints for a deployed stack with Loki on S3 (a sample of
/// every kind of resource, the data key and the bucket's settings among them).
const STATE: &[&str] = &[
    "data.aws_caller_identity.current",
    "data.aws_partition.current",
    "aws_vpc.main",
    "aws_subnet.public",
    "aws_security_group.role[\"loki\"]",
    "aws_instance.role[\"grafana\"]",
    "aws_instance.role[\"loki\"]",
    "aws_instance.role[\"prometheus\"]",
    "aws_ebs_volume.data[\"grafana\"]",
    "aws_ebs_volume.data[\"loki\"]",
    "aws_ebs_volume.data[\"prometheus\"]",
    "aws_volume_attachment.data[\"loki\"]",
    "aws_dlm_lifecycle_policy.data",
    "aws_iam_role.snapshots",
    "aws_kms_key.stack",
    "aws_kms_alias.stack",
    "aws_kms_key.data",
    "aws_kms_alias.data",
    "aws_ssm_parameter.grafana_admin_password",
    "aws_s3_bucket.loki[0]",
    "aws_s3_bucket_server_side_encryption_configuration.loki[0]",
    "aws_s3_bucket_public_access_block.loki[0]",
    "aws_s3_bucket_ownership_controls.loki[0]",
    "aws_s3_bucket_policy.loki[0]",
    "aws_s3_bucket_lifecycle_configuration.loki[0]",
    "aws_iam_role_policy.loki_uses_bucket[0]",
];

/// A deployed stack: its data volumes in moto, the stand-in Terraform answering with its
/// outputs and state, and the variables a deploy from this checkout left.
struct Stack {
    moto: testkit::Moto,
    dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    terraform: testkit::FakeTerraform,
    volumes: BTreeMap<String, String>,
    var_file: String,
}

impl Stack {
    /// The stack, each role's volume encrypted with `key(role)`.
    fn new(key: impl Fn(&str) -> &'static str) -> Stack {
        let moto = testkit::Moto::start();
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let client = ec2(&moto, REGION);
        let mut volumes = BTreeMap::new();
        for role in STATEFUL {
            let volume = runtime.block_on(async {
                client
                    .create_volume()
                    .availability_zone("us-east-1a")
                    .size(20)
                    .encrypted(true)
                    .kms_key_id(key(role))
                    .send()
                    .await
                    .unwrap()
                    .volume_id()
                    .unwrap()
                    .to_string()
            });
            volumes.insert(role.to_string(), volume);
        }
        let generated = dir.path().join("deploy/obstack.auto.tfvars.json");
        std::fs::create_dir_all(generated.parent().unwrap()).unwrap();
        let amis: BTreeMap<&str, &str> = RUNNING.into_iter().collect();
        std::fs::write(
            &generated,
            json!({"region": REGION, "ami_ids": amis}).to_string(),
        )
        .unwrap();
        let var_file = dir.path().join("mine.tfvars");
        std::fs::write(&var_file, "allowed_web_cidrs = [\"198.51.100.7/32\"]\n").unwrap();
        let terraform = testkit::FakeTerraform::install(dir.path(), &RUNNING)
            .with_outputs(json!({
                "deployment": DEPLOYMENT,
                "data_volume_ids": volumes,
                "data_key_arn": DATA_KEY,
                "loki_bucket": BUCKET,
            }))
            .with_state(STATE)
            .allowing_apply();
        Stack {
            moto,
            runtime,
            terraform,
            volumes,
            var_file: var_file.display().to_string(),
            dir,
        }
    }

    /// A completed snapshot of a `role` volume of `deployment` in `region`, tagged as DLM
    /// and the provider tag them; its id.
    fn snapshot(&self, region: &str, role: &str, deployment: &str) -> String {
        let client = ec2(&self.moto, region);
        let volume = self.runtime.block_on(async {
            client
                .create_volume()
                .availability_zone(format!("{region}a"))
                .size(20)
                .send()
                .await
                .unwrap()
                .volume_id()
                .unwrap()
                .to_string()
        });
        self.snapshot_of(region, &volume, role, deployment)
    }

    /// A completed, tagged snapshot of `volume`; its id.
    fn snapshot_of(&self, region: &str, volume: &str, role: &str, deployment: &str) -> String {
        let client = ec2(&self.moto, region);
        self.runtime.block_on(async {
            let tags = TagSpecification::builder()
                .resource_type(ResourceType::Snapshot)
                .tags(Tag::builder().key("obstack:role").value(role).build())
                .tags(
                    Tag::builder()
                        .key("obstack:deployment")
                        .value(deployment)
                        .build(),
                )
                .build();
            client
                .create_snapshot()
                .volume_id(volume)
                .tag_specifications(tags)
                .send()
                .await
                .unwrap()
                .snapshot_id()
                .unwrap()
                .to_string()
        })
    }

    /// The ids of every snapshot of any deployment in `region` (moto's own, of its
    /// built-in images, carry no such tag).
    fn snapshot_ids(&self, region: &str) -> Vec<String> {
        let client = ec2(&self.moto, region);
        let mut ids: Vec<String> = self.runtime.block_on(async {
            client
                .describe_snapshots()
                .owner_ids("self")
                .filters(
                    aws_sdk_ec2::types::Filter::builder()
                        .name("tag-key")
                        .values("obstack:deployment")
                        .build(),
                )
                .send()
                .await
                .unwrap()
                .snapshots()
                .iter()
                .filter_map(|s| s.snapshot_id().map(str::to_string))
                .collect()
        });
        ids.sort();
        ids
    }

    /// `xtask ARGS` against this stack: moto, the stand-in Terraform, the scratch target.
    fn xtask(&self, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
        command
            .args(args)
            .env("CARGO_TARGET_DIR", self.dir.path())
            .env("AWS_REGION", REGION)
            .env_remove("TF_VAR_allowed_web_cidrs");
        self.moto.apply_env(&mut command);
        self.terraform.apply_env(&mut command);
        command.output().unwrap()
    }

    /// The `terraform plan ...` line the command asked for, if any.
    fn plan(&self) -> Option<String> {
        self.terraform
            .command_lines()
            .into_iter()
            .find(|line| line.contains(" plan "))
    }
}

fn ec2(moto: &testkit::Moto, region: &str) -> aws_sdk_ec2::Client {
    let config = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .endpoint_url(moto.endpoint())
        .credentials_provider(Credentials::new("test", "test", None, None, "moto"))
        .build();
    aws_sdk_ec2::Client::from_conf(config)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "stderr:\n{}\nstdout:\n{}",
        text(&output.stderr),
        text(&output.stdout)
    );
    text(&output.stdout)
}

/// The single error line of a failed command.
fn error_line(output: &Output) -> String {
    assert!(!output.status.success(), "the command succeeded");
    let stderr = text(&output.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "one error line:\n{stderr}");
    errors[0].to_string()
}

/// The line of the table (or text) naming `id`.
fn line_of<'a>(stdout: &'a str, id: &str) -> &'a str {
    stdout
        .lines()
        .find(|line| line.contains(id))
        .unwrap_or_else(|| panic!("{id} is not listed:\n{stdout}"))
}

#[test]
fn destroy_keeps_the_snapshots_the_bucket_and_the_data_key_and_plans_nothing_else() {
    let stack = Stack::new(|_| DATA_KEY);
    let loki = stack.snapshot(REGION, "loki", DEPLOYMENT);
    let prometheus = stack.snapshot(REGION, "prometheus", DEPLOYMENT);
    let other = stack.snapshot(REGION, "loki", "staging");

    let stdout =
        succeeded(&stack.xtask(&["destroy", "--auto-approve", "--var-file", &stack.var_file]));
    for id in [&loki, &prometheus] {
        assert!(line_of(&stdout, id).contains("kept"), "{stdout}");
    }
    assert!(
        !stdout.contains(&other),
        "another deployment's snapshot:\n{stdout}"
    );
    assert!(
        line_of(&stdout, BUCKET).contains("kept, with its logs"),
        "{stdout}"
    );
    assert!(line_of(&stdout, DATA_KEY).contains("kept"), "{stdout}");
    for volume in stack.volumes.values() {
        assert!(
            line_of(&stdout, volume).contains("its final snapshot is kept"),
            "{stdout}"
        );
    }

    // The plan: a destroy of every resource but the data key and the bucket's.
    let plan = stack.plan().expect("a plan");
    assert!(plan.contains(" -destroy "), "{plan}");
    for destroyed in [
        "aws_vpc.main",
        "aws_instance.role[\"loki\"]",
        "aws_ebs_volume.data[\"loki\"]",
        "aws_dlm_lifecycle_policy.data",
        "aws_kms_key.stack",
        "aws_ssm_parameter.grafana_admin_password",
        "aws_iam_role_policy.loki_uses_bucket[0]",
    ] {
        assert!(
            plan.contains(&format!("-target={destroyed}")),
            "{destroyed}: {plan}"
        );
    }
    for kept in [
        "aws_kms_key.data",
        "aws_kms_alias.data",
        "aws_s3_bucket.loki",
        "aws_s3_bucket_server_side_encryption_configuration.loki",
        "aws_s3_bucket_public_access_block.loki",
        "aws_s3_bucket_ownership_controls.loki",
        "aws_s3_bucket_policy.loki",
        "aws_s3_bucket_lifecycle_configuration.loki",
        "data.",
    ] {
        assert!(!plan.contains(&format!("-target={kept}")), "{kept}: {plan}");
    }
    let lines = stack.terraform.command_lines();
    let planned = lines.iter().position(|l| l.contains(" plan ")).unwrap();
    assert!(
        lines[planned + 1..].iter().any(|l| l.contains(" apply ")),
        "the plan is applied: {lines:#?}"
    );
    let mut all = vec![loki, prometheus, other];
    all.sort();
    assert_eq!(
        stack.snapshot_ids(REGION),
        all,
        "every snapshot is still there"
    );
}

#[test]
fn destroy_with_delete_data_plans_everything_and_deletes_the_deployments_snapshots() {
    let stack = Stack::new(|_| DATA_KEY);
    let loki = stack.snapshot(REGION, "loki", DEPLOYMENT);
    let grafana = stack.snapshot(REGION, "grafana", DEPLOYMENT);
    let other = stack.snapshot(REGION, "loki", "staging");

    let stdout = succeeded(&stack.xtask(&[
        "destroy",
        "--delete-data",
        "--auto-approve",
        "--var-file",
        &stack.var_file,
    ]));
    assert!(
        line_of(&stdout, BUCKET).contains("deleted, with every object"),
        "{stdout}"
    );
    assert!(
        line_of(&stdout, DATA_KEY).contains("deletion scheduled"),
        "{stdout}"
    );
    let plan = stack.plan().expect("a plan");
    assert!(plan.contains(" -destroy "), "{plan}");
    assert!(
        !plan.contains("-target="),
        "everything, the data too: {plan}"
    );
    for id in [&loki, &grafana] {
        assert!(
            stdout.contains(&format!("deleted snapshot {id}")),
            "{id}:\n{stdout}"
        );
    }
    assert_eq!(
        stack.snapshot_ids(REGION),
        [other],
        "only another deployment's snapshot is left"
    );
}

#[test]
fn destroy_refuses_to_keep_a_final_snapshot_whose_key_it_deletes() {
    // Loki's volume predates the data key: it is still under the stack's key.
    let stack = Stack::new(|role| if role == "loki" { STACK_KEY } else { DATA_KEY });
    let output = stack.xtask(&["destroy", "--auto-approve", "--var-file", &stack.var_file]);
    let line = error_line(&output);
    assert!(
        line.contains(&format!("loki's data volume {}", stack.volumes["loki"])),
        "{line}"
    );
    assert!(
        line.contains("cargo xtask restore --role loki --latest"),
        "{line}"
    );
    assert!(line.contains("--delete-data"), "{line}");
    assert_eq!(stack.plan(), None, "nothing was planned");
}

#[test]
fn restore_refuses_a_snapshot_of_another_role_deployment_or_region_in_one_line() {
    let stack = Stack::new(|_| DATA_KEY);
    let grafanas = stack.snapshot(REGION, "grafana", DEPLOYMENT);
    let stagings = stack.snapshot(REGION, "loki", "staging");
    let elsewhere = stack.snapshot("us-west-2", "loki", DEPLOYMENT);
    let arn = format!("arn:aws:ec2:us-west-2::snapshot/{elsewhere}");
    let cases: [(&[&str], String); 6] = [
        (
            &["--role", "loki", "--snapshot", &grafanas],
            format!("snapshot {grafanas} holds grafana's data, not loki's"),
        ),
        (
            &["--role", "loki", "--snapshot", &stagings],
            format!("snapshot {stagings} belongs to deployment staging, not to obstack"),
        ),
        (
            &["--role", "loki", "--snapshot", &elsewhere],
            format!("snapshot {elsewhere} is in us-west-2, the stack in us-east-1"),
        ),
        (
            &["--role", "loki", "--snapshot", &arn],
            format!("snapshot {elsewhere} is in us-west-2, the stack in us-east-1"),
        ),
        (
            &["--role", "prometheus", "--latest"],
            "no completed snapshot of prometheus's data volume in deployment obstack".into(),
        ),
        (
            &["--role", "app", "--latest"],
            "role app keeps no data".into(),
        ),
    ];
    for (args, expected) in cases {
        let mut argv = vec!["restore", "--var-file", &stack.var_file];
        argv.extend_from_slice(args);
        let line = error_line(&stack.xtask(&argv));
        assert!(line.contains(&expected), "{args:?}: {line}");
    }
    assert_eq!(stack.plan(), None, "nothing was planned");
}

#[test]
fn restore_plans_the_roles_volume_from_its_newest_snapshot_and_a_new_instance() {
    let stack = Stack::new(|_| DATA_KEY);
    let _older = stack.snapshot(REGION, "loki", DEPLOYMENT);
    // EC2 (and moto) stamp a snapshot's start to the second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let newest = stack.snapshot(REGION, "loki", DEPLOYMENT);
    let _grafanas = stack.snapshot(REGION, "grafana", DEPLOYMENT);

    let stdout = succeeded(&stack.xtask(&[
        "restore",
        "--role",
        "loki",
        "--latest",
        "--plan-only",
        "--var-file",
        &stack.var_file,
    ]));
    assert!(
        line_of(&stdout, &newest).contains(&stack.volumes["loki"]),
        "{stdout}"
    );
    let plan = stack.plan().expect("a plan");
    assert!(
        plan.contains("-replace=aws_ebs_volume.data[\"loki\"]")
            && plan.contains("-replace=aws_instance.role[\"loki\"]"),
        "{plan}"
    );
    let vars = stack
        .terraform
        .var_file_of(" plan ", "obstack.auto.tfvars.json")
        .expect("the generated variables");
    assert_eq!(vars["data_volume_snapshot_ids"], json!({"loki": newest}));
    let running: BTreeMap<&str, &str> = RUNNING.into_iter().collect();
    assert_eq!(vars["ami_ids"], json!(running), "no image is rolled out");
    assert!(
        !stack
            .terraform
            .command_lines()
            .iter()
            .any(|l| l.contains(" apply ")),
        "--plan-only applies nothing"
    );
}

#[test]
fn status_lists_each_stateful_roles_newest_snapshot_and_its_age() {
    let stack = Stack::new(|_| DATA_KEY);
    let _older = stack.snapshot(REGION, "prometheus", DEPLOYMENT);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let newest = stack.snapshot(REGION, "prometheus", DEPLOYMENT);
    let lokis = stack.snapshot(REGION, "loki", DEPLOYMENT);
    let _other = stack.snapshot(REGION, "grafana", "staging");
    // status describes the instances Terraform names: real ones, in moto.
    let client = ec2(&stack.moto, REGION);
    let instances: BTreeMap<String, String> = stack.runtime.block_on(async {
        let image = client
            .describe_images()
            .owners("amazon")
            .send()
            .await
            .unwrap()
            .images()[0]
            .image_id()
            .unwrap()
            .to_string();
        let mut ids = BTreeMap::new();
        for role in STATEFUL {
            let run = client
                .run_instances()
                .image_id(&image)
                .min_count(1)
                .max_count(1)
                .send()
                .await
                .unwrap();
            ids.insert(
                role.to_string(),
                run.instances()[0].instance_id().unwrap().to_string(),
            );
        }
        ids
    });
    let stack = Stack {
        terraform: testkit::FakeTerraform::install(stack.dir.path(), &RUNNING)
            .with_outputs(json!({"deployment": DEPLOYMENT, "instance_ids": instances})),
        ..stack
    };

    let stdout = succeeded(&stack.xtask(&["status", "--region", REGION]));
    assert!(stdout.contains("NEWEST SNAPSHOT"), "{stdout}");
    let prometheus = line_of(&stdout, &newest);
    assert!(prometheus.contains("prometheus"), "{stdout}");
    assert!(prometheus.contains("under a minute"), "{stdout}");
    assert!(prometheus.contains("completed"), "{stdout}");
    assert!(line_of(&stdout, &lokis).contains("loki"), "{stdout}");
    let grafana = stdout
        .lines()
        .find(|l| l.contains("grafana") && l.contains("none yet"))
        .unwrap_or_else(|| panic!("grafana has none of its own:\n{stdout}"));
    assert!(!grafana.contains("snap-"), "{grafana}");
}

#[test]
fn restore_applies_then_passes_the_roles_health_gate_and_its_checks_and_names_the_way_back() {
    let stack = Stack::new(|_| DATA_KEY);
    let chosen = stack.snapshot(REGION, "loki", DEPLOYMENT);
    // What the replaced volume leaves (the stand-in Terraform destroys nothing).
    let final_snapshot = stack.snapshot_of(REGION, &stack.volumes["loki"], "loki", DEPLOYMENT);
    // The roles that read Loki, on loopback: the app, and Prometheus scraping it.
    let services = tempfile::tempdir().unwrap();
    let (_app, app_port) = testkit::services::start_app(services.path());
    let (_prometheus, prometheus_port) =
        testkit::services::start_prometheus(services.path(), app_port);
    let stack = Stack {
        terraform: stack.terraform.with_outputs(json!({
            "urls": {
                "app": format!("http://127.0.0.1:{app_port}"),
                "prometheus": format!("http://127.0.0.1:{prometheus_port}"),
            },
            "exposed": {"app": true, "prometheus": true, "loki": false, "grafana": false},
        })),
        ..stack
    };

    let stdout = succeeded(&stack.xtask(&[
        "restore",
        "--role",
        "loki",
        "--snapshot",
        &chosen,
        "--auto-approve",
        "--health-timeout",
        "2m",
        // The stand-ins answer only part of verify's checks; the rest need not be waited for.
        "--verify-deadline",
        "5s",
        "--var-file",
        &stack.var_file,
    ]));
    let lines = stack.terraform.command_lines();
    let planned = lines
        .iter()
        .position(|l| l.contains(" plan "))
        .expect("a plan");
    assert!(lines[planned].contains("-replace=aws_ebs_volume.data[\"loki\"]"));
    assert!(
        lines[planned + 1..].iter().any(|l| l.contains(" apply ")),
        "{lines:#?}"
    );
    // Loki's own checks of `verify` ran (Loki is not reachable from here: not checked).
    assert!(stdout.contains("request logged in loki"), "{stdout}");
    assert!(
        !stdout.contains("prometheus targets"),
        "only loki's checks: {stdout}"
    );
    assert!(
        stdout.contains(&format!("loki restored from {chosen}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "`cargo xtask restore --role loki --snapshot {final_snapshot}` puts it back"
        )),
        "{stdout}"
    );
}
