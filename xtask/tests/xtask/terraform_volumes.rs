//! The stack survives its own updates (issue 16): every stateful role keeps its data on an
//! encrypted EBS volume of its own that outlives the instance, moves to the successor only
//! after the old instance stopped, reaches the instance as a launch tag, and is snapshotted
//! daily by a policy whose role can do nothing else. Read with hcl-rs; the values that need
//! no provider (which roles get a volume, the tag the instance carries, the validations)
//! are evaluated by an offline `terraform console` (terraform_support).

use crate::terraform_support;

use std::collections::BTreeSet;

use hcl::{Block, Expression};
use serde_json::json;
use terraform_support::{
    attr, block, iam_action_matches, parsed_files, policy_document, replace_reference, resource,
    resources, statements, string_list, top_blocks, Console, Outcome,
};

/// The roles whose data must survive a new AMI; the app keeps none.
const STATEFUL: [&str; 3] = ["grafana", "loki", "prometheus"];

/// The variables without a default, so the console can evaluate anything.
const DEPLOYMENT: [(&str, &str); 3] = [
    ("region", "eu-west-1"),
    (
        "ami_ids",
        r#"{app="ami-0123456789abcdef0",prometheus="ami-0123456789abcdef1",loki="ami-0123456789abcdef2",grafana="ami-0123456789abcdef3"}"#,
    ),
    ("allowed_web_cidrs", r#"["198.51.100.0/24"]"#),
];

fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    DEPLOYMENT.iter().chain(extra).copied().collect()
}

/// The `for_each` of a resource, evaluated: the sorted keys it creates.
fn instance_keys(console: &Console, resource: &Block) -> Vec<String> {
    let for_each = attr(resource.body(), "for_each")
        .unwrap_or_else(|| panic!("{} has no for_each", terraform_support::address(resource)));
    let value = eval(
        console,
        &with(&[]),
        &format!("sort(keys({{for k, v in ({for_each}) : k => v}}))"),
    );
    serde_json::from_value(value).unwrap()
}

/// `console.eval` of an expression that may span lines (the console reads one line): it is
/// written as a local into the console's directory first.
fn eval(console: &Console, vars: &[(&str, &str)], expr: &str) -> serde_json::Value {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    std::fs::write(
        console.dir().join(format!("probe_{n}.tf")),
        format!("locals {{\n  probe_{n} = {expr}\n}}\n"),
    )
    .unwrap();
    console.eval(vars, &format!("local.probe_{n}"))
}

fn text(expr: Option<&Expression>) -> String {
    expr.map(ToString::to_string).unwrap_or_default()
}

#[test]
fn each_stateful_role_has_an_encrypted_gp3_volume_with_a_final_snapshot_and_the_app_none() {
    let files = parsed_files();
    let console = Console::new(&files);
    let volumes = resources(&files, "aws_ebs_volume");
    assert_eq!(
        volumes.len(),
        1,
        "one aws_ebs_volume resource, for_each over the roles"
    );
    let volume = volumes[0];
    assert_eq!(
        instance_keys(&console, volume),
        STATEFUL,
        "the app keeps no data"
    );

    let body = volume.body();
    assert_eq!(attr(body, "encrypted"), Some(&Expression::from(true)));
    assert_eq!(attr(body, "final_snapshot"), Some(&Expression::from(true)));
    assert_eq!(attr(body, "type"), Some(&Expression::from("gp3")));
    assert_eq!(
        text(attr(body, "kms_key_id")),
        "aws_kms_key.data.arn",
        "encrypted with the data key, which destroy keeps (terraform_data.rs)"
    );
    assert_eq!(
        text(attr(body, "availability_zone")),
        "aws_subnet.public.availability_zone",
        "in the zone of the instances' subnet, or it could never attach"
    );
    // Nothing in the volume's lifecycle may make a new AMI replace it; it only keeps a
    // volume made before the data key on its key rather than replacing it with an empty one.
    if let Some(lifecycle) = block(body, "lifecycle") {
        let settings: Vec<String> = lifecycle
            .attributes()
            .map(|a| format!("{} = {}", a.key(), a.expr()))
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(settings, ["ignore_changes = [ kms_key_id ]"]);
        assert_eq!(lifecycle.blocks().count(), 0);
    }

    // Tagged with its role; the provider's default tags add the stack.
    let tags = eval(
        &console,
        &with(&[]),
        &format!(
            "{{for role in {:?} : role => {}}}",
            STATEFUL,
            replace_reference(&text(attr(body, "tags")), "each.key", "role")
        ),
    );
    for role in STATEFUL {
        assert_eq!(tags[role]["obstack:role"], json!(role), "{tags}");
    }
    let provider = top_blocks(&files, "provider")
        .into_iter()
        .find(|p| p.labels()[0].as_str() == "aws")
        .expect("provider aws");
    let default_tags = text(block(provider.body(), "default_tags").and_then(|b| attr(b, "tags")));
    assert!(
        default_tags.contains("\"obstack:deployment\" = var.name"),
        "{default_tags}"
    );

    // Sizes: defaults per role, the operator's override, gp3's limits, stateful roles only.
    let sizes = eval(
        &console,
        &with(&[("data_volume_size_gb", "{loki=100}")]),
        "local.data_volume_size_gb",
    );
    assert_eq!(sizes, json!({"grafana": 5, "loki": 100, "prometheus": 20}));
    for (value, accepted) in [
        ("{prometheus=1}", true),
        ("{grafana=16384}", true),
        ("{loki=0}", false),
        ("{loki=16385}", false),
        ("{loki=2.5}", false),
        ("{app=5}", false),
    ] {
        let outcome = console.validate(&with(&[("data_volume_size_gb", value)]));
        assert_eq!(
            outcome == Outcome::Accepted,
            accepted,
            "data_volume_size_gb = {value}: {outcome:?}"
        );
    }
}

#[test]
fn each_volume_attaches_to_its_own_role_and_only_to_a_stopped_instance() {
    let files = parsed_files();
    let console = Console::new(&files);
    let attachments = resources(&files, "aws_volume_attachment");
    assert_eq!(
        attachments.len(),
        1,
        "one aws_volume_attachment, for_each over the roles"
    );
    let attachment = attachments[0];
    assert_eq!(instance_keys(&console, attachment), STATEFUL);
    let body = attachment.body();
    assert_eq!(
        attr(body, "stop_instance_before_detaching"),
        Some(&Expression::from(true)),
        "a volume must never be pulled from a running Prometheus, Loki or Grafana"
    );
    assert_eq!(
        text(attr(body, "volume_id")),
        "aws_ebs_volume.data[each.key].id"
    );
    assert_eq!(
        text(attr(body, "instance_id")),
        "aws_instance.role[each.key].id"
    );
    for forbidden in ["force_detach", "skip_destroy"] {
        assert!(
            attr(body, forbidden).is_none(),
            "{forbidden} would detach under a running service or leave the old attachment"
        );
    }
    // A name EC2 accepts for an extra EBS volume on Linux (/dev/sd[f-p]).
    let device = text(attr(body, "device_name"));
    let letter = device
        .trim_matches('"')
        .strip_prefix("/dev/sd")
        .unwrap_or_else(|| panic!("device_name {device}"));
    assert!(
        letter.len() == 1 && ("f"..="p").contains(&letter),
        "device_name {device}"
    );

    // The instance that keeps a volume is replaced, never created before its predecessor
    // is gone: the volume attaches to one instance at a time.
    let instance = resource(&files, "aws_instance", "role");
    let cbd = block(instance.body(), "lifecycle").and_then(|l| attr(l, "create_before_destroy"));
    assert_ne!(cbd, Some(&Expression::from(true)));
}

#[test]
fn each_stateful_instance_launches_with_its_volume_id_tag_and_the_app_without() {
    let files = parsed_files();
    let console = Console::new(&files);
    let instance = resource(&files, "aws_instance", "role");
    let tags = text(attr(instance.body(), "tags"));
    // The tags with the volumes' ids known (as they are before the instances launch).
    let fake_volumes = r#"{grafana={id="vol-0g"},loki={id="vol-0l"},prometheus={id="vol-0p"}}"#;
    let expr = format!(
        "{{for role in keys(var.ami_ids) : role => {}}}",
        replace_reference(
            &replace_reference(&tags, "each.key", "role"),
            "aws_ebs_volume.data",
            fake_volumes
        )
    );
    let evaluated = eval(&console, &with(&[]), &expr);
    for (role, volume) in [
        ("grafana", "vol-0g"),
        ("loki", "vol-0l"),
        ("prometheus", "vol-0p"),
    ] {
        assert_eq!(
            evaluated[role]["obstack:data-volume"],
            json!(volume),
            "{role}: {evaluated}"
        );
    }
    assert_eq!(
        evaluated["app"].get("obstack:data-volume"),
        None,
        "{evaluated}"
    );

    // The tag is not one the provider is told to ignore (the peer tags are).
    let provider = top_blocks(&files, "provider")
        .into_iter()
        .find(|p| p.labels()[0].as_str() == "aws")
        .expect("provider aws");
    if let Some(ignore) = block(provider.body(), "ignore_tags") {
        let ignored = eval(
            &console,
            &with(&[]),
            &format!(
                "[{}, {}]",
                attr(ignore, "keys").map_or("[]".into(), ToString::to_string),
                attr(ignore, "key_prefixes").map_or("[]".into(), ToString::to_string)
            ),
        );
        for key in string_list(&ignored[0]) {
            assert_ne!(key, "obstack:data-volume");
        }
        for prefix in string_list(&ignored[1]) {
            assert!(
                !"obstack:data-volume".starts_with(&prefix),
                "ignored by {prefix}"
            );
        }
    }
}

#[test]
fn a_daily_policy_snapshots_exactly_the_data_volumes_and_keeps_the_retention() {
    let files = parsed_files();
    let console = Console::new(&files);
    let policies = resources(&files, "aws_dlm_lifecycle_policy");
    assert_eq!(policies.len(), 1);
    let body = policies[0].body();
    assert_eq!(
        text(attr(body, "execution_role_arn")),
        "aws_iam_role.snapshots.arn"
    );
    if let Some(state) = attr(body, "state") {
        assert_eq!(state, &Expression::from("ENABLED"));
    }
    let details = block(body, "policy_details").expect("policy_details");
    assert_eq!(
        attr(details, "resource_types"),
        Some(&Expression::from(vec![Expression::from("VOLUME")]))
    );
    let schedule = block(details, "schedule").expect("schedule");
    let create = block(schedule, "create_rule").expect("create_rule");
    assert_eq!(
        attr(create, "interval"),
        Some(&Expression::from(24)),
        "daily"
    );
    let retain = block(schedule, "retain_rule").expect("retain_rule");
    assert_eq!(text(attr(retain, "count")), "var.snapshot_retention_count");

    // The policy's target tags select the data volumes (the volumes carry them), and no
    // other stack's: the value names the deployment.
    let volume = resource(&files, "aws_ebs_volume", "data");
    let volume_tags = text(attr(volume.body(), "tags"));
    let target_tags = text(attr(details, "target_tags"));
    for name in ["alpha", "beta"] {
        let vars = with(&[("name", name)]);
        let targets = eval(&console, &vars, &target_tags);
        let tags = eval(
            &console,
            &vars,
            &replace_reference(&volume_tags, "each.key", "\"loki\""),
        );
        let targets = targets.as_object().expect("target_tags is a map");
        assert!(!targets.is_empty());
        for (key, value) in targets {
            assert_eq!(&tags[key], value, "the volumes carry the target tag {key}");
            assert!(
                value.as_str().is_some_and(|v| v.contains(name)),
                "the target tag {key}={value} names the deployment {name}"
            );
        }
    }

    assert_eq!(
        eval(&console, &with(&[]), "var.snapshot_retention_count"),
        json!(7)
    );
    for (value, accepted) in [
        ("1", true),
        ("1000", true),
        ("0", false),
        ("1001", false),
        ("1.5", false),
    ] {
        let outcome = console.validate(&with(&[("snapshot_retention_count", value)]));
        assert_eq!(
            outcome == Outcome::Accepted,
            accepted,
            "snapshot_retention_count = {value}: {outcome:?}"
        );
    }
}

/// The actions of the AWS managed policy AWSDataLifecycleManagerServiceRole that concern
/// EBS snapshots (the EBS user guide, "AWS managed policies for Amazon Data Lifecycle
/// Manager"): the snapshot role may hold no EC2 action outside them.
const DLM_SERVICE_ROLE_EC2: [&str; 15] = [
    "ec2:CreateSnapshot",
    "ec2:CreateSnapshots",
    "ec2:DeleteSnapshot",
    "ec2:DescribeInstances",
    "ec2:DescribeVolumes",
    "ec2:DescribeSnapshots",
    "ec2:EnableFastSnapshotRestores",
    "ec2:DescribeFastSnapshotRestores",
    "ec2:DisableFastSnapshotRestores",
    "ec2:CopySnapshot",
    "ec2:ModifySnapshotAttribute",
    "ec2:DescribeSnapshotAttribute",
    "ec2:ModifySnapshotTier",
    "ec2:DescribeSnapshotTierStatus",
    "ec2:CreateTags",
];

#[test]
fn the_snapshot_role_trusts_only_dlm_and_holds_only_snapshot_actions_on_this_stack() {
    let files = parsed_files();
    let role = resource(&files, "aws_iam_role", "snapshots");
    let trust = policy_document(role.body(), "assume_role_policy").expect("trust policy");
    for statement in statements(&trust) {
        assert_eq!(
            statement["Principal"],
            json!({"Service": "dlm.amazonaws.com"})
        );
        assert_eq!(string_list(&statement["Action"]), ["sts:AssumeRole"]);
    }
    assert!(attr(role.body(), "managed_policy_arns").is_none());
    for attachment in resources(&files, "aws_iam_role_policy_attachment") {
        assert!(
            !text(attr(attachment.body(), "role")).contains("aws_iam_role.snapshots"),
            "no managed policy on the snapshot role"
        );
    }

    let policies: Vec<&Block> = resources(&files, "aws_iam_role_policy")
        .into_iter()
        .filter(|p| text(attr(p.body(), "role")).starts_with("aws_iam_role.snapshots."))
        .collect();
    assert!(
        !policies.is_empty(),
        "an inline policy on the snapshot role"
    );
    let documents: Vec<serde_json::Value> = policies
        .iter()
        .map(|p| policy_document(p.body(), "policy").expect("policy"))
        .collect();
    let mut granted = BTreeSet::new();
    for statement in documents.iter().flat_map(statements) {
        assert_eq!(statement["Effect"], json!("Allow"));
        let resources = string_list(&statement["Resource"]);
        for action in string_list(&statement["Action"]) {
            assert!(
                !action.contains('*') || action == "kms:ReEncrypt*",
                "wildcard action {action}"
            );
            granted.insert(action.clone());
            let is_describe = action.starts_with("ec2:Describe");
            if action.starts_with("ec2:") {
                assert!(
                    DLM_SERVICE_ROLE_EC2
                        .iter()
                        .any(|a| iam_action_matches(&action, a)),
                    "{action} is not an action of AWSDataLifecycleManagerServiceRole"
                );
                if !is_describe {
                    assert!(
                        !resources.iter().any(|r| r == "*"),
                        "{action} must be scoped, not on *: {statement}"
                    );
                }
            } else {
                assert!(
                    action.starts_with("kms:"),
                    "{action} is neither EC2 nor KMS"
                );
                assert!(
                    resources == ["aws_kms_key.data.arn"] || resources == ["aws_kms_key.stack.arn"],
                    "one of the stack's keys: {statement}"
                );
                assert!(
                    statement["Condition"]["StringEquals"]["kms:ViaService"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("ec2.")),
                    "{action} only through EC2: {statement}"
                );
            }
            if action == "ec2:CreateSnapshot" {
                assert!(
                    resources.iter().any(|r| r.contains("aws_ebs_volume.data")),
                    "snapshots of the data volumes only: {statement}"
                );
                assert!(
                    !resources.iter().any(|r| r.contains(":volume/*")),
                    "not of every volume: {statement}"
                );
            }
            if action == "ec2:DeleteSnapshot" {
                let condition = &statement["Condition"]["StringEquals"];
                assert!(
                    condition.as_object().is_some_and(|c| c
                        .keys()
                        .any(|k| k.trim_matches('"').starts_with("aws:ResourceTag/"))),
                    "only snapshots the policy tagged may be deleted: {statement}"
                );
            }
            if action == "kms:CreateGrant" {
                assert_eq!(
                    statement["Condition"]["Bool"]["kms:GrantIsForAWSResource"],
                    json!("true"),
                    "{statement}"
                );
            }
        }
    }
    for needed in [
        "ec2:CreateSnapshot",
        "ec2:DeleteSnapshot",
        "ec2:DescribeVolumes",
        "ec2:CreateTags",
        "kms:CreateGrant",
    ] {
        assert!(
            granted.contains(needed),
            "the snapshot role lacks {needed}: {granted:?}"
        );
    }
}

#[test]
fn the_snapshot_role_tags_only_the_snapshots_it_creates() {
    // Without the condition the role could tag any snapshot of the account with this
    // policy's tag, then delete it (ExpireOwnSnapshots deletes by that tag).
    let files = parsed_files();
    let policy = resource(&files, "aws_iam_role_policy", "snapshots");
    let document = policy_document(policy.body(), "policy").expect("policy");
    let tagging: Vec<&serde_json::Value> = statements(&document)
        .into_iter()
        .filter(|s| {
            string_list(&s["Action"])
                .iter()
                .any(|a| iam_action_matches(a, "ec2:CreateTags"))
        })
        .collect();
    assert!(
        !tagging.is_empty(),
        "the snapshot role cannot tag its snapshots"
    );
    for statement in tagging {
        assert_eq!(
            statement["Condition"]["StringEquals"]["ec2:CreateAction"],
            json!("CreateSnapshot"),
            "ec2:CreateTags only as part of CreateSnapshot: {statement:#}"
        );
    }
}
