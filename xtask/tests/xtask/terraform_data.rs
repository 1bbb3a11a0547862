//! The data outlives the stack: the data volumes (so their snapshots) and Loki's bucket are
//! encrypted with a data key of their own, not the stack's; `cargo xtask destroy` keeps that
//! key and the bucket by destroying every other resource (xtask's `KEPT`), which works only
//! while none of them refers to a resource that goes; and `cargo xtask restore` sets a
//! role's snapshot through `data_volume_snapshot_ids`. Read with hcl-rs, the values
//! evaluated by the offline `terraform console` (terraform_support).

use crate::terraform_support;

use std::collections::{BTreeMap, BTreeSet};

use hcl::{Body, Expression};
use serde_json::{json, Value};
use terraform_support::{
    address, attr, local_expr, parsed_files, policy_document, resource, resources, statements,
    string_list, top_blocks, Console, Outcome,
};
use xtask::deploy::destroy::{is_kept, KEPT};

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

fn text(expr: Option<&Expression>) -> String {
    expr.map(ToString::to_string).unwrap_or_default()
}

/// Every `type.name` resource address of the configuration.
fn addresses(files: &BTreeMap<String, Body>) -> Vec<String> {
    top_blocks(files, "resource")
        .into_iter()
        .map(address)
        .collect()
}

/// Whether `text` refers to `name` (`aws_kms_key.data`, `local.x`) as a whole reference:
/// not the tail of a longer name, not the start of one.
fn refers_to(text: &str, name: &str) -> bool {
    let continues = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    text.match_indices(name).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + name.len()..].chars().next();
        !before.is_some_and(|c| continues(c) || c == '.') && !after.is_some_and(continues)
    })
}

/// The resources `text` refers to, directly or through the locals it uses.
fn resources_referred(files: &BTreeMap<String, Body>, text: &str) -> BTreeSet<String> {
    let locals: Vec<String> = top_blocks(files, "locals")
        .iter()
        .flat_map(|b| b.body().attributes())
        .map(|a| a.key().to_string())
        .collect();
    let mut found = BTreeSet::new();
    let mut pending = vec![text.to_string()];
    let mut seen_locals = BTreeSet::new();
    while let Some(text) = pending.pop() {
        for resource in addresses(files) {
            if refers_to(&text, &resource) {
                found.insert(resource);
            }
        }
        for local in &locals {
            if refers_to(&text, &format!("local.{local}")) && seen_locals.insert(local.clone()) {
                pending.push(local_expr(files, local));
            }
        }
    }
    found
}

#[test]
fn the_data_is_encrypted_with_a_key_of_its_own_that_outlives_the_stack() {
    let files = parsed_files();
    let key = resource(&files, "aws_kms_key", "data");
    let body = key.body();
    assert_eq!(
        attr(body, "enable_key_rotation"),
        Some(&Expression::from(true))
    );
    // The provider's validator allows 7 to 30 days; the longest gives a plain
    // `terraform destroy` the most time to be undone.
    assert_eq!(
        attr(body, "deletion_window_in_days"),
        Some(&Expression::from(30))
    );
    let policy = policy_document(body, "policy").expect("a key policy");
    for statement in statements(&policy) {
        assert_eq!(
            string_list(&statement["Principal"]["AWS"]),
            ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"],
            "only the account, which delegates to IAM: {statement}"
        );
    }

    // The volumes (so their snapshots) and the bucket use it; nothing of the data uses the
    // stack's key, which goes with the stack.
    let volume = resource(&files, "aws_ebs_volume", "data");
    assert_eq!(
        text(attr(volume.body(), "kms_key_id")),
        "aws_kms_key.data.arn"
    );
    let sse = resource(
        &files,
        "aws_s3_bucket_server_side_encryption_configuration",
        "loki",
    );
    let sse_text = hcl::to_string(sse.body()).unwrap();
    assert!(
        sse_text.contains("aws_kms_key.data.arn") && !sse_text.contains("aws_kms_key.stack"),
        "{sse_text}"
    );
    // Loki reads and writes its objects, and DLM snapshots the volumes, with the data key.
    let loki = resource(&files, "aws_iam_role_policy", "loki_uses_bucket");
    let loki_kms: Vec<String> = statements(&policy_document(loki.body(), "policy").unwrap())
        .into_iter()
        .filter(|s| {
            string_list(&s["Action"])
                .iter()
                .any(|a| a.starts_with("kms:"))
        })
        .flat_map(|s| string_list(&s["Resource"]))
        .collect();
    assert_eq!(loki_kms, ["aws_kms_key.data.arn"]);
    let snapshot_grants: Vec<Value> = resources(&files, "aws_iam_role_policy")
        .into_iter()
        .filter(|p| text(attr(p.body(), "role")).starts_with("aws_iam_role.snapshots."))
        .flat_map(|p| {
            statements(&policy_document(p.body(), "policy").unwrap())
                .into_iter()
                .cloned()
                .collect::<Vec<_>>()
        })
        .filter(|s| string_list(&s["Action"]).contains(&"kms:CreateGrant".to_string()))
        .collect();
    let data_grant = snapshot_grants
        .iter()
        .find(|s| string_list(&s["Resource"]) == ["aws_kms_key.data.arn"])
        .unwrap_or_else(|| {
            panic!("the snapshot role may not use the data key: {snapshot_grants:?}")
        });
    assert_eq!(
        data_grant["Condition"]["Bool"]["kms:GrantIsForAWSResource"],
        json!("true")
    );
    assert!(
        data_grant["Condition"]["StringEquals"]["kms:ViaService"]
            .as_str()
            .is_some_and(|s| s.starts_with("ec2.")),
        "{data_grant}"
    );
}

#[test]
fn what_destroy_keeps_is_the_data_key_and_the_bucket_and_nothing_it_keeps_needs_what_goes() {
    let files = parsed_files();
    let all = addresses(&files);
    for kept in KEPT {
        assert!(
            all.contains(&kept.to_string()),
            "{kept} is not in terraform/"
        );
    }
    // Every setting of Loki's bucket stays with it (a bucket without its public access block
    // or its TLS-only policy is not kept as it was).
    for bucket_setting in top_blocks(&files, "resource").into_iter().filter(|r| {
        r.labels()[0].as_str().starts_with("aws_s3_bucket")
            && hcl::to_string(r.body())
                .unwrap()
                .contains("aws_s3_bucket.loki[0].id")
    }) {
        assert!(
            is_kept(&address(bucket_setting)),
            "{} configures the kept bucket but would be destroyed",
            address(bucket_setting)
        );
    }
    // The targeted destroy of everything else reaches a kept resource only if it refers to
    // a destroyed one (directly or through a local): none may.
    for kept in KEPT {
        let (kind, name) = kept.split_once('.').unwrap();
        let body = hcl::to_string(resource(&files, kind, name).body()).unwrap();
        let referred = resources_referred(&files, &body);
        let destroyed: Vec<&String> = referred.iter().filter(|r| !is_kept(r)).collect();
        assert!(
            destroyed.is_empty(),
            "{kept} refers to {destroyed:?}, which destroy deletes: the targeted destroy would \
             take {kept} with it"
        );
    }
    // And the volumes, the instances and the stack's key are not kept.
    for gone in [
        "aws_ebs_volume.data",
        "aws_instance.role",
        "aws_kms_key.stack",
    ] {
        assert!(!is_kept(gone), "{gone}");
    }
}

#[test]
fn a_snapshot_per_stateful_role_makes_its_volume_and_bad_ones_are_refused() {
    let files = parsed_files();
    let console = Console::new(&files);
    let volume = resource(&files, "aws_ebs_volume", "data");
    let snapshot_id = attr(volume.body(), "snapshot_id").expect("snapshot_id");
    let values = console.per_instance(
        &with(&[(
            "data_volume_snapshot_ids",
            r#"{loki="snap-0123456789abcdef0"}"#,
        )]),
        volume,
        snapshot_id,
    );
    // for_each over the stateful roles, in key order: grafana, loki, prometheus.
    assert_eq!(
        values,
        [Value::Null, json!("snap-0123456789abcdef0"), Value::Null]
    );
    let nothing = console.per_instance(&with(&[]), volume, snapshot_id);
    assert_eq!(nothing, [Value::Null, Value::Null, Value::Null]);

    for (value, accepted) in [
        (r#"{grafana="snap-0123456789abcdef0"}"#, true),
        (r#"{prometheus="snap-01234567"}"#, true),
        (r#"{app="snap-0123456789abcdef0"}"#, false),
        (r#"{loki="vol-0123456789abcdef0"}"#, false),
        (r#"{loki="snap-0123456789ABCDEF0"}"#, false),
        (r#"{loki="snap-0123456789abcdef"}"#, false),
        (r#"{loki=""}"#, false),
    ] {
        let outcome = console.validate(&with(&[("data_volume_snapshot_ids", value)]));
        assert_eq!(
            outcome == Outcome::Accepted,
            accepted,
            "{value}: {outcome:?}"
        );
    }
}
