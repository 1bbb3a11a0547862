//! The app fleet against moto: an Auto Scaling group launches instances from a launch
//! template whose instance tags are the fleet's (terraform/fleet.tf, `app_fleet_tags`), and
//! the real `stack-agent` on each of them renders Promtail's config from those tags alone.
//!
//! The Auto Scaling calls go through boto3 (moto depends on it, so it is wherever moto is)
//! rather than aws-sdk-autoscaling: one more generated AWS SDK would add minutes to every
//! clean build for a handful of calls in one test.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;
use testkit::Moto;

const DEPLOYMENT: &str = "team-a";
const FLEET_SIZE: usize = 3;

/// Creates, against moto at argv[1], Loki's instance, then a launch template whose instance
/// (and volume) tag specifications are exactly argv[2] with Loki's private IP added as
/// `obstack:peer:loki`, and an Auto Scaling group of argv[3] instances from it. Prints
/// `{"loki_ip", "group_instances", "tags": {instance id: {key: value}}}`.
const ASG_SCRIPT: &str = r#"
import json, sys
import boto3

endpoint, fleet_tags, size = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
session = boto3.session.Session(
    aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")
ec2 = session.client("ec2", endpoint_url=endpoint)
autoscaling = session.client("autoscaling", endpoint_url=endpoint)

def tag_list(tags):
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]

loki = ec2.run_instances(
    ImageId="ami-12345678", MinCount=1, MaxCount=1,
    TagSpecifications=[{"ResourceType": "instance", "Tags": tag_list(
        {"obstack:role": "loki", "obstack:deployment": fleet_tags["obstack:deployment"]})}],
)["Instances"][0]
fleet_tags["obstack:peer:loki"] = loki["PrivateIpAddress"]

ec2.create_launch_template(
    LaunchTemplateName=fleet_tags["Name"],
    LaunchTemplateData={
        "ImageId": "ami-12345678",
        "InstanceType": "t3.small",
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled",
                            "HttpPutResponseHopLimit": 1, "InstanceMetadataTags": "enabled"},
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": tag_list(fleet_tags)},
            {"ResourceType": "volume", "Tags": tag_list(fleet_tags)},
        ],
    },
)
autoscaling.create_auto_scaling_group(
    AutoScalingGroupName=fleet_tags["Name"],
    LaunchTemplate={"LaunchTemplateName": fleet_tags["Name"], "Version": "$Latest"},
    MinSize=size, MaxSize=size, DesiredCapacity=size,
    AvailabilityZones=["us-east-1a", "us-east-1b"],
)
group = autoscaling.describe_auto_scaling_groups(
    AutoScalingGroupNames=[fleet_tags["Name"]])["AutoScalingGroups"][0]
ids = [i["InstanceId"] for i in group["Instances"]]
tags = {}
for reservation in ec2.describe_instances(InstanceIds=ids)["Reservations"]:
    for instance in reservation["Instances"]:
        tags[instance["InstanceId"]] = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
print(json.dumps({"loki_ip": loki["PrivateIpAddress"], "group_instances": ids, "tags": tags}))
"#;

/// The tags every fleet instance launches with (the contract of issue 19), without Loki's
/// address, which the script adds once Loki's instance exists.
fn fleet_tags() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("Name".to_string(), format!("{DEPLOYMENT}-app")),
        ("obstack:role".to_string(), "app".to_string()),
        ("obstack:deployment".to_string(), DEPLOYMENT.to_string()),
        ("obstack:project".to_string(), "obstack".to_string()),
    ])
}

/// Runs [`ASG_SCRIPT`] with moto's own Python and returns its answer.
fn launch_fleet(moto: &Moto) -> Value {
    let python = testkit::require_tool("python3");
    let tags = serde_json::to_string(&fleet_tags()).unwrap();
    let output = Command::new(python)
        .args(["-c", ASG_SCRIPT, &moto.endpoint(), &tags])
        .arg(FLEET_SIZE.to_string())
        .env_remove("AWS_PROFILE")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the Auto Scaling script failed (python3 needs boto3, which moto installs): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "the script's answer is not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn images_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("images/agent has a parent")
}

/// `stack-agent render` of the real app role for `instance`, reading its tags from moto's
/// EC2 API, into `root`.
fn render_app_on(moto: &Moto, instance: &str, root: &Path) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stack-agent"));
    command
        .args(["render", "--role", "app", "--tags-from", "ec2"])
        .args(["--instance-id", instance, "--spec-dir"])
        .arg(images_dir())
        .arg("--root")
        .arg(root)
        .env_remove("STACK_AGENT_SPEC_DIR")
        .stdin(Stdio::null());
    moto.apply_env(&mut command);
    run(&mut command, Duration::from_secs(60))
}

#[test]
fn an_auto_scaling_group_launches_tagged_instances_whose_agent_renders_promtail() {
    let moto = Moto::start();
    let fleet = launch_fleet(&moto);
    let loki_ip = fleet["loki_ip"].as_str().unwrap().to_string();
    let launched: Vec<String> = fleet["group_instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_string())
        .collect();
    assert_eq!(launched.len(), FLEET_SIZE, "{fleet}");

    let mut expected = fleet_tags();
    expected.insert("obstack:peer:loki".into(), loki_ip.clone());
    // Counted rather than asserted one by one, so the figure is measured even when it is bad.
    let mut problems: Vec<String> = Vec::new();
    let mut tagged_correctly = 0;
    for id in &launched {
        // AWS adds its own `aws:` tags (group name, template id); ours must be exactly the
        // template's.
        let ours: BTreeMap<String, String> = fleet["tags"][id]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(key, _)| !key.starts_with("aws:"))
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
        if ours == expected {
            tagged_correctly += 1;
        } else {
            problems.push(format!("{id} is tagged {ours:?}, not {expected:?}"));
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let push_url = format!("http://{loki_ip}:3100/loki/api/v1/push");
    let mut rendered_correctly = 0;
    for id in &launched {
        let root = dir.path().join(id);
        let output = render_app_on(&moto, id, &root);
        if output.status.code() != Some(0) {
            problems.push(format!("{id}: the agent failed: {}", stderr(&output)));
            continue;
        }
        let text = read(&root.join("etc/promtail/config.yaml"));
        let config: Value = serde_yaml_ng::from_str(&text)
            .unwrap_or_else(|e| panic!("{id}: invalid YAML ({e}):\n{text}"));
        let urls: Vec<&str> = config["clients"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|client| client["url"].as_str().unwrap_or_default())
            .collect();
        let labels = &config["scrape_configs"][0]["static_configs"][0]["labels"];
        if urls == [push_url.as_str()]
            && labels["instance"] == id.as_str()
            && labels.get("host").is_none()
        {
            rendered_correctly += 1;
        } else {
            problems.push(format!(
                "{id}: Promtail pushes to [{}] with labels {labels}, not to {push_url} with \
                 instance = {id}",
                urls.join(", ")
            ));
        }
    }
    // The figure for the issue's closing note.
    eprintln!(
        "fleet: {} instances launched by the group, {tagged_correctly} tagged as the launch \
         template says, {rendered_correctly} rendered Promtail pushing to Loki at {loki_ip} \
         with their own instance id",
        launched.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
