//! The bake role's permissions: images/bake-policy.json (the file the README has people
//! create the role from) must allow exactly what a nightly bake calls, no less (the bake
//! would stop in AWS) and no more (least privilege).
//!
//! What a bake calls is derived, not listed: from the golden source's settings in the Packer
//! template (each rule below names the Amazon plugin step that makes the calls, read in
//! hashicorp/packer-plugin-amazon, builder/ebs/builder.go and builder/common/step_*.go), plus
//! the EC2 operations xtask's bake and prune code calls. A setting the rules do not know
//! fails the test, so a new feature cannot slip in without its permissions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use hcl::{Block, Body, Expression};
use image_checks::images_dir;
use serde_json::Value;

/// Settings of the golden source that make the plugin call nothing beyond the builder's
/// own calls (or whose calls another rule covers).
const NO_EXTRA_CALLS: &[&str] = &[
    "region",
    "instance_type",
    "ami_name",
    "source_ami_filter",
    "ssh_username",
    "ssh_clear_authorized_keys",
    "temporary_security_group_source_cidrs",
    "communicator",
    "launch_block_device_mappings",
];

/// action -> why it is needed.
type Needs = BTreeMap<String, BTreeSet<String>>;

fn need(needs: &mut Needs, why: &str, actions: &[&str]) {
    for action in actions {
        needs
            .entry(action.to_string())
            .or_default()
            .insert(why.to_string());
    }
}

fn attribute<'a>(block: &'a Block, key: &str) -> Option<&'a Expression> {
    block
        .body()
        .attributes()
        .find(|a| a.key() == key)
        .map(|a| a.expr())
}

fn has(block: &Block, key: &str) -> bool {
    attribute(block, key).is_some() || block.body().blocks().any(|b| b.identifier() == key)
}

fn is_true(block: &Block, key: &str) -> bool {
    matches!(attribute(block, key), Some(Expression::Bool(true)))
}

fn string(block: &Block, key: &str) -> Option<String> {
    match attribute(block, key) {
        Some(Expression::String(s)) => Some(s.clone()),
        _ => None,
    }
}

/// Every setting (attribute or block) the source uses, by name.
fn settings(block: &Block) -> BTreeSet<String> {
    block
        .body()
        .attributes()
        .map(|a| a.key().to_string())
        .chain(block.body().blocks().map(|b| b.identifier().to_string()))
        .collect()
}

/// Whether any nested block sets `key` (e.g. a kms_key_id in a launch block device).
fn nested_has(block: &Block, key: &str) -> bool {
    block
        .body()
        .blocks()
        .any(|b| has(b, key) || nested_has(b, key))
}

/// The IAM actions the Amazon plugin calls for the amazon-ebs source `source`.
fn plugin_needs(source: &Block) -> Needs {
    let mut needs = Needs::new();
    let mut known: BTreeSet<&str> = NO_EXTRA_CALLS.iter().copied().collect();
    // A rule: any of `keys` set means `actions` are needed.
    fn rule(
        source: &Block,
        needs: &mut Needs,
        known: &mut BTreeSet<&'static str>,
        keys: &[&'static str],
        why: &str,
        actions: &[&str],
    ) {
        known.extend(keys.iter().copied());
        if keys.iter().any(|k| has(source, k)) {
            need(needs, why, actions);
        }
    }

    // Every amazon-ebs build: StepPreValidate, StepSourceAMIInfo and StepNetworkInfo look the
    // image, AMI name, VPC and subnet up; StepRunSourceInstance launches and waits; the
    // builder terminates the instance; stepCreateAMI creates the AMI and, when a build fails
    // after that, deregisters it and deletes its snapshots; StepCleanupVolumes deletes
    // volumes the source AMI left behind.
    need(
        &mut needs,
        "every amazon-ebs build",
        &[
            "ec2:DescribeImages",
            "ec2:DescribeInstances",
            "ec2:DescribeInstanceStatus",
            "ec2:DescribeRegions",
            "ec2:DescribeSecurityGroups",
            "ec2:DescribeSubnets",
            "ec2:DescribeVpcs",
            "ec2:DescribeVolumes",
            "ec2:RunInstances",
            "ec2:TerminateInstances",
            "ec2:CreateImage",
            "ec2:DeregisterImage",
            "ec2:DeleteSnapshot",
            "ec2:DeleteVolume",
        ],
    );
    // StepStopEBSBackedInstance.
    known.insert("disable_stop_instance");
    if !is_true(source, "disable_stop_instance") {
        need(
            &mut needs,
            "the builder is stopped before the AMI is made",
            &["ec2:StopInstances"],
        );
    }

    // StepKeyPair: a temporary key pair unless the template brings its own.
    known.extend(["ssh_keypair_name", "ssh_private_key_file"]);
    let ssh = string(source, "communicator").is_none_or(|c| c == "ssh");
    if ssh && !has(source, "ssh_keypair_name") && !has(source, "ssh_private_key_file") {
        need(
            &mut needs,
            "a temporary SSH key pair",
            &["ec2:CreateKeyPair", "ec2:DeleteKeyPair"],
        );
    }

    // StepIamInstanceProfile: a temporary role and instance profile (created, waited for
    // with GetInstanceProfile/GetRole, deleted), tagged with run_tags when there are some;
    // StepRunSourceInstance passes the role to the instance.
    let temporary_profile = has(source, "temporary_iam_instance_profile_policy_document");
    rule(
        source,
        &mut needs,
        &mut known,
        &["temporary_iam_instance_profile_policy_document"],
        "a temporary instance profile",
        &[
            "iam:CreateInstanceProfile",
            "iam:GetInstanceProfile",
            "iam:CreateRole",
            "iam:GetRole",
            "iam:PutRolePolicy",
            "iam:AddRoleToInstanceProfile",
            "iam:RemoveRoleFromInstanceProfile",
            "iam:DeleteRolePolicy",
            "iam:DeleteRole",
            "iam:DeleteInstanceProfile",
            "iam:PassRole",
        ],
    );
    rule(
        source,
        &mut needs,
        &mut known,
        &["iam_instance_profile"],
        "an existing instance profile",
        &["iam:GetInstanceProfile", "iam:PassRole"],
    );

    // StepCreateSSMTunnel: a port-forwarding session, terminated at the end.
    known.insert("ssh_interface");
    let session_manager = string(source, "ssh_interface").as_deref() == Some("session_manager");
    if session_manager {
        need(
            &mut needs,
            "SSH through Session Manager",
            &["ssm:StartSession", "ssm:TerminateSession"],
        );
    }

    // StepSecurityGroup: a temporary group unless one is given; its SSH rule is skipped
    // when Session Manager carries SSH (SSMAgentEnabled: session_manager and a profile).
    known.extend([
        "security_group_id",
        "security_group_ids",
        "security_group_filter",
    ]);
    if !has(source, "security_group_id")
        && !has(source, "security_group_ids")
        && !has(source, "security_group_filter")
    {
        need(
            &mut needs,
            "a temporary security group",
            &["ec2:CreateSecurityGroup", "ec2:DeleteSecurityGroup"],
        );
        let ssm_agent =
            session_manager && (temporary_profile || has(source, "iam_instance_profile"));
        if !ssm_agent {
            need(
                &mut needs,
                "an SSH rule in the temporary security group",
                &["ec2:AuthorizeSecurityGroupIngress"],
            );
        }
    }

    // Tags: StepCreateTags on the AMI and snapshots; run tags are set at creation
    // (TagSpecifications, which needs ec2:CreateTags) on the instance, volumes, key pair and
    // group, and on the temporary role and profile (iam:TagRole, iam:TagInstanceProfile).
    rule(
        source,
        &mut needs,
        &mut known,
        &["tags", "snapshot_tags", "run_tags", "run_volume_tags"],
        "tags on the AMI, snapshots or builder resources",
        &["ec2:CreateTags"],
    );
    if has(source, "run_tags") && temporary_profile {
        need(
            &mut needs,
            "run_tags on the temporary role and instance profile",
            &["iam:TagRole", "iam:TagInstanceProfile"],
        );
    }

    // StepModifyEBSBackedInstance: ena_support (true or false) and sriov_support.
    known.insert("sriov_support");
    rule(
        source,
        &mut needs,
        &mut known,
        &["ena_support"],
        "ena_support (ModifyInstanceAttribute before the AMI is made)",
        &["ec2:ModifyInstanceAttribute"],
    );
    if is_true(source, "sriov_support") {
        need(
            &mut needs,
            "sriov_support",
            &["ec2:ModifyInstanceAttribute"],
        );
    }

    // StepAMIRegionCopy: encrypt_boot, a KMS key or more regions copy the AMI.
    known.insert("encrypt_boot");
    if is_true(source, "encrypt_boot") {
        need(
            &mut needs,
            "encrypt_boot (an encrypted copy of an intermediate AMI)",
            &["ec2:CopyImage"],
        );
    }
    rule(
        source,
        &mut needs,
        &mut known,
        &["kms_key_id", "ami_regions", "region_kms_key_ids"],
        "an AMI copy (KMS key or more regions)",
        &["ec2:CopyImage"],
    );

    // StepModifyAMIAttributes.
    rule(
        source,
        &mut needs,
        &mut known,
        &[
            "ami_description",
            "ami_users",
            "ami_groups",
            "ami_org_arns",
            "ami_ou_arns",
            "ami_product_codes",
            "imds_support",
        ],
        "AMI attributes (description, launch permissions, IMDS support)",
        &["ec2:ModifyImageAttribute"],
    );
    rule(
        source,
        &mut needs,
        &mut known,
        &["snapshot_users", "snapshot_groups"],
        "snapshot permissions",
        &["ec2:ModifySnapshotAttribute"],
    );
    rule(
        source,
        &mut needs,
        &mut known,
        &["deprecate_at"],
        "AMI deprecation",
        &["ec2:EnableImageDeprecation"],
    );
    rule(
        source,
        &mut needs,
        &mut known,
        &["deregistration_protection"],
        "deregistration protection",
        &["ec2:EnableImageDeregistrationProtection"],
    );
    rule(
        source,
        &mut needs,
        &mut known,
        &["force_deregister", "force_delete_snapshot"],
        "replacing an AMI of the same name",
        &["ec2:DeregisterImage", "ec2:DeleteSnapshot"],
    );
    rule(
        source,
        &mut needs,
        &mut known,
        &["spot_price", "spot_instance_types"],
        "a spot builder (StepRunSpotInstance)",
        &[
            "ec2:CreateLaunchTemplate",
            "ec2:DeleteLaunchTemplate",
            "ec2:CreateFleet",
        ],
    );

    // A customer-managed KMS key on the launch volumes: the caller uses the key itself. The
    // account's EBS key (no kms_key_id) needs nothing: its key policy admits EBS callers.
    if nested_has(source, "kms_key_id") {
        need(
            &mut needs,
            "a customer-managed KMS key on a launch volume",
            &[
                "kms:CreateGrant",
                "kms:Decrypt",
                "kms:DescribeKey",
                "kms:GenerateDataKeyWithoutPlaintext",
            ],
        );
    }

    let unknown: Vec<String> = settings(source)
        .into_iter()
        .filter(|s| !known.contains(s.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "the golden source uses {unknown:?}, which this test has no permission rule for: read \
         the Amazon plugin's step for it and add a rule (or add it to NO_EXTRA_CALLS)"
    );
    needs
}

/// The files whose AWS calls a bake or prune makes (xtask's `bake` and `prune` commands).
fn xtask_sources() -> Vec<PathBuf> {
    let src = testkit::workspace_root().join("xtask/src");
    let mut files = vec![
        src.join("bake.rs"),
        src.join("prune.rs"),
        src.join("ami.rs"),
    ];
    let mut bake: Vec<PathBuf> = std::fs::read_dir(src.join("bake"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    bake.sort();
    files.extend(bake);
    files
}

/// Operation names an AWS SDK client call starts with (`client.describe_images()`).
const VERBS: &[&str] = &[
    "describe",
    "create",
    "delete",
    "deregister",
    "register",
    "modify",
    "run",
    "terminate",
    "stop",
    "start",
    "copy",
    "enable",
    "disable",
];

/// The EC2 operations called in `code` (before its `#[cfg(test)]` module): every
/// `.verb_object()` with no arguments, the SDK's fluent-builder shape, as an IAM action.
fn ec2_operations(code: &str) -> BTreeSet<String> {
    let code = code.split("#[cfg(test)]").next().unwrap_or_default();
    let mut found = BTreeSet::new();
    for (dot, _) in code.match_indices('.') {
        let rest = &code[dot + 1..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        let Some((verb, _)) = name.split_once('_') else {
            continue;
        };
        if !VERBS.contains(&verb) || !rest[name.len()..].starts_with("()") {
            continue;
        }
        let action: String = name
            .split('_')
            .map(|word| {
                let mut chars = word.chars();
                chars
                    .next()
                    .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                    .unwrap_or_default()
            })
            .collect();
        found.insert(format!("ec2:{action}"));
    }
    found
}

fn xtask_needs() -> Needs {
    let mut needs = Needs::new();
    for file in xtask_sources() {
        let code = std::fs::read_to_string(&file).unwrap();
        // Every call found is taken as EC2's: true only while these files use no other SDK.
        for line in code.lines().filter(|l| l.contains("aws_sdk_")) {
            assert!(
                !line.contains("aws_sdk_") || line.contains("aws_sdk_ec2"),
                "{}: uses an AWS SDK other than EC2 ({line}); map its calls to their service",
                file.display()
            );
        }
        let why = format!("xtask {}", file.display());
        for action in ec2_operations(&code) {
            need(&mut needs, &why, &[&action]);
        }
    }
    needs
}

/// IAM's action matching: case-insensitive, `*` matches any run of characters.
fn matches(pattern: &str, action: &str) -> bool {
    fn go(p: &[u8], a: &[u8]) -> bool {
        match p.split_first() {
            None => a.is_empty(),
            Some((b'*', rest)) => (0..=a.len()).any(|i| go(rest, &a[i..])),
            Some((c, rest)) => a
                .split_first()
                .is_some_and(|(d, tail)| c.eq_ignore_ascii_case(d) && go(rest, tail)),
        }
    }
    go(pattern.as_bytes(), action.as_bytes())
}

/// The Allow statements' actions of the policy at `path`.
fn policy_actions(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; the bake role's policy lives there",
            path.display()
        )
    });
    let policy: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    assert_eq!(policy["Version"], "2012-10-17");
    let statements = policy["Statement"].as_array().expect("a Statement list");
    let mut actions = BTreeSet::new();
    for statement in statements {
        assert_eq!(statement["Effect"], "Allow", "{statement}");
        assert!(
            statement.get("NotAction").is_none() && statement.get("NotResource").is_none(),
            "{statement}"
        );
        let listed = match &statement["Action"] {
            Value::String(one) => vec![one.clone()],
            Value::Array(many) => many
                .iter()
                .map(|a| a.as_str().expect("an action string").to_string())
                .collect(),
            other => panic!("Action is {other}"),
        };
        for action in listed {
            assert!(
                action.contains(':') && !action.ends_with(":*") && action != "*",
                "`{action}` allows a whole service"
            );
            actions.insert(action);
        }
    }
    actions
}

fn golden_source() -> Block {
    let path = images_dir().join("common/packer/image.pkr.hcl");
    let body: Body = hcl::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
    body.blocks()
        .find(|b| {
            b.identifier() == "source"
                && b.labels()
                    .iter()
                    .map(|l| l.as_str())
                    .eq(["amazon-ebs", "golden"])
        })
        .cloned()
        .expect("source \"amazon-ebs\" \"golden\"")
}

/// What `policy` lacks of `needed` and what it allows beyond it, in words.
fn compare(needed: &Needs, policy: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for (action, why) in needed {
        if !policy.iter().any(|p| matches(p, action)) {
            let why: Vec<&str> = why.iter().map(String::as_str).collect();
            problems.push(format!("missing {action} (for {})", why.join("; ")));
        }
    }
    for pattern in policy {
        if !needed.keys().any(|a| matches(pattern, a)) {
            problems.push(format!("{pattern} is allowed but nothing calls it"));
        }
    }
    problems
}

fn everything_a_bake_calls() -> Needs {
    let mut needs = plugin_needs(&golden_source());
    for (action, why) in xtask_needs() {
        needs.entry(action).or_default().extend(why);
    }
    needs
}

#[test]
fn the_bake_policy_allows_exactly_what_a_bake_calls() {
    let needed = everything_a_bake_calls();
    let policy = policy_actions(&images_dir().join("bake-policy.json"));
    let problems = compare(&needed, &policy);
    assert!(
        problems.is_empty(),
        "images/bake-policy.json against the template's settings and xtask's calls:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_derivation_follows_the_templates_features() {
    // The same rules on a source with the features the first bake would have tripped over.
    let body: Body = hcl::parse(
        r#"source "amazon-ebs" "x" {
             encrypt_boot = true
             ena_support  = true
             run_tags     = { a = "b" }
             temporary_iam_instance_profile_policy_document {
               Version = "2012-10-17"
             }
           }"#,
    )
    .unwrap();
    let source = body.blocks().next().unwrap();
    let needs = plugin_needs(source);
    for action in [
        "ec2:CopyImage",
        "ec2:ModifyInstanceAttribute",
        "iam:GetRole",
        "iam:TagRole",
        "iam:TagInstanceProfile",
        "ec2:CreateKeyPair",
        "ec2:AuthorizeSecurityGroupIngress",
    ] {
        assert!(
            needs.contains_key(action),
            "{action} not derived: {needs:?}"
        );
    }
    // Without those features, none of their actions.
    let plain: Body = hcl::parse(r#"source "amazon-ebs" "x" { ami_name = "n" }"#).unwrap();
    let needs = plugin_needs(plain.blocks().next().unwrap());
    for action in [
        "ec2:CopyImage",
        "ec2:ModifyInstanceAttribute",
        "iam:TagRole",
    ] {
        assert!(!needs.contains_key(action), "{action} derived for nothing");
    }
    // An unknown setting is refused rather than silently given no permissions.
    let new: Body = hcl::parse(
        "source \"amazon-ebs\" \"x\" {\n  fast_launch {\n    enable_fast_launch = true\n  }\n}\n",
    )
    .unwrap();
    let refused = std::panic::catch_unwind(|| plugin_needs(new.blocks().next().unwrap()));
    assert!(refused.is_err(), "an unknown setting was accepted");
}

#[test]
fn the_comparison_reports_missing_and_extra_actions() {
    let needed = everything_a_bake_calls();
    let mut policy = policy_actions(&images_dir().join("bake-policy.json"));
    policy.remove("ec2:CreateTags");
    policy.insert("ec2:AttachVolume".to_string());
    let problems = compare(&needed, &policy).join("\n");
    assert!(problems.contains("missing ec2:CreateTags"), "{problems}");
    assert!(
        problems.contains("ec2:AttachVolume is allowed but nothing calls it"),
        "{problems}"
    );
    assert!(matches("ec2:Describe*", "ec2:DescribeImages"));
    assert!(matches("EC2:describeimages", "ec2:DescribeImages"));
    assert!(!matches("ec2:Describe*", "ec2:DeleteSnapshot"));
}

#[test]
fn xtasks_ec2_calls_are_found() {
    let found = ec2_operations(
        "client.describe_images().owners(\"self\").send(); x.create_dir_all(p); c.delete_snapshot()\n#[cfg(test)]\nc.run_instances()",
    );
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        ["ec2:DeleteSnapshot", "ec2:DescribeImages"]
    );
    let needs = xtask_needs();
    for action in [
        "ec2:DescribeImages",
        "ec2:CreateTags",
        "ec2:DeregisterImage",
    ] {
        assert!(needs.contains_key(action), "{action}: {needs:?}");
    }
}

#[test]
fn the_readme_points_to_the_policy_file_instead_of_listing_actions() {
    let readme = std::fs::read_to_string(testkit::workspace_root().join("README.md")).unwrap();
    assert!(
        readme.contains("images/bake-policy.json"),
        "the README must point to images/bake-policy.json"
    );
    for listed in ["`ec2:RunInstances`", "`iam:CreateRole`", "`ec2:CopyImage`"] {
        assert!(
            !readme.contains(listed),
            "the README lists {listed}: a second copy of the policy would drift from the checked one"
        );
    }
}
