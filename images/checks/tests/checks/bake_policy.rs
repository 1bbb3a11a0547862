//! The bake role's permissions: images/bake-policy.json (the file the README has people
//! create the role from) must allow exactly what the nightly's bake role calls, no less (the
//! bake would stop in AWS) and no more (least privilege).
//!
//! Two halves, because one of them cannot run here:
//! - xtask's own calls are *enforced*: `bake --smoke --release`, `releases`, `promote`,
//!   `rollback` and `prune` run against moto with the keys of a user holding exactly the
//!   policy (testkit::Moto::start_enforcing), with Packer's smoke source making its EC2
//!   calls too; any refused call fails the command, and every call moto allowed is recorded;
//! - a golden bake's calls (an instance built over Session Manager, which moto cannot boot)
//!   are derived from the golden source's settings in the Packer template (each rule below
//!   names the Amazon plugin step that makes the calls, read in hashicorp/packer-plugin-amazon,
//!   builder/ebs/builder.go and builder/common/step_*.go). A setting the rules do not know
//!   fails the test, so a new feature cannot slip in without its permissions.
//!
//! Every (action, resource) the policy grants must then be one of those: called in the
//! enforced run, or derived for the golden source.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output};

use hcl::{Block, Body, Expression};
use image_checks::images_dir;
use serde_json::Value;
use testkit::iam::Decision;

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

/// One (action, resource pattern) an Allow statement grants.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Grant {
    sid: String,
    action: String,
    resource: String,
}

fn policy_text() -> String {
    let path = images_dir().join("bake-policy.json");
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; the bake role's policy lives there",
            path.display()
        )
    })
}

fn strings(value: &Value, what: &str) -> Vec<String> {
    match value {
        Value::String(one) => vec![one.clone()],
        Value::Array(many) => many
            .iter()
            .map(|a| {
                a.as_str()
                    .unwrap_or_else(|| panic!("{what}: {a}"))
                    .to_string()
            })
            .collect(),
        other => panic!("{what} is {other}"),
    }
}

/// Every (action, resource) the policy's Allow statements grant; a statement allowing a
/// whole service, or written with NotAction/NotResource, fails the test.
fn grants(policy: &str) -> Vec<Grant> {
    let policy: Value =
        serde_json::from_str(policy).unwrap_or_else(|e| panic!("the policy is not JSON: {e}"));
    assert_eq!(policy["Version"], "2012-10-17");
    let statements = policy["Statement"].as_array().expect("a Statement list");
    let mut grants = Vec::new();
    for statement in statements {
        assert_eq!(statement["Effect"], "Allow", "{statement}");
        assert!(
            statement.get("NotAction").is_none() && statement.get("NotResource").is_none(),
            "{statement}"
        );
        let sid = statement["Sid"].as_str().unwrap_or("?").to_string();
        for action in strings(&statement["Action"], "Action") {
            assert!(
                action.contains(':') && !action.ends_with(":*") && action != "*",
                "`{action}` allows a whole service"
            );
            for resource in strings(&statement["Resource"], "Resource") {
                grants.push(Grant {
                    sid: sid.clone(),
                    action: action.clone(),
                    resource,
                });
            }
        }
    }
    grants
}

/// The policy without `action` (statements left with no action dropped).
fn without(policy: &str, action: &str) -> String {
    let mut policy: Value = serde_json::from_str(policy).unwrap();
    let statements = policy["Statement"].as_array_mut().unwrap();
    for statement in statements.iter_mut() {
        let kept: Vec<String> = strings(&statement["Action"], "Action")
            .into_iter()
            .filter(|a| a != action)
            .collect();
        statement["Action"] = kept.into_iter().map(Value::from).collect();
    }
    statements.retain(|s| !s["Action"].as_array().unwrap().is_empty());
    policy.to_string()
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

/// What the policy lacks and what it grants beyond what is needed, in words: `derived` are
/// the golden bake's actions (on whatever resource), `called` what the enforced run asked.
fn compare(grants: &[Grant], derived: &Needs, called: &[Decision]) -> Vec<String> {
    let mut problems = Vec::new();
    for (action, why) in derived {
        if !grants.iter().any(|g| matches(&g.action, action)) {
            let why: Vec<&str> = why.iter().map(String::as_str).collect();
            problems.push(format!("missing {action} (for {})", why.join("; ")));
        }
    }
    for call in called {
        let granted = grants
            .iter()
            .any(|g| matches(&g.action, &call.action) && matches(&g.resource, &call.resource));
        if !call.allowed || !granted {
            problems.push(format!("missing {} on {}", call.action, call.resource));
        }
    }
    for grant in grants {
        let derived = derived.keys().any(|a| matches(&grant.action, a));
        let used = called.iter().any(|c| {
            c.allowed && matches(&grant.action, &c.action) && matches(&grant.resource, &c.resource)
        });
        if !derived && !used {
            problems.push(format!(
                "{}: {} on {} is allowed but nothing calls it",
                grant.sid, grant.action, grant.resource
            ));
        }
    }
    problems
}

/// What the smoke source calls and the golden one does not: with no communicator, Packer
/// still opens the (unused) port 0 of its temporary security group to `builder_cidrs`; the
/// golden source reaches its builder through Session Manager, which needs no rule. The
/// enforced run's user holds this on top of the policy, and it is kept out of the comparison.
const SMOKE_ONLY: &str = r#"{"Sid": "SmokeSourceOnly", "Effect": "Allow", "Action": "ec2:AuthorizeSecurityGroupIngress", "Resource": "*"}"#;

/// `policy` plus [`SMOKE_ONLY`]: what the enforced run's user holds.
fn with_smoke_only(policy: &str) -> String {
    let mut policy: Value = serde_json::from_str(policy).unwrap();
    policy["Statement"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::from_str(SMOKE_ONLY).unwrap());
    policy.to_string()
}

/// The bake role's commands against a moto that enforces `policy` (and [`SMOKE_ONLY`]) for
/// the user `bake`.
struct Night {
    moto: testkit::Moto,
    dir: tempfile::TempDir,
}

impl Night {
    fn new(policy: &str) -> Night {
        testkit::require_tool("packer");
        let moto = testkit::Moto::start_enforcing(&[("bake", &with_smoke_only(policy))]);
        let dir = tempfile::tempdir().unwrap();
        let artifacts = dir.path().join("artifacts");
        std::fs::create_dir_all(&artifacts).unwrap();
        // Stand-ins for the binaries a bake ships, so it builds nothing.
        for binary in image_checks::registry().workspace_binaries() {
            std::fs::write(artifacts.join(&binary), format!("stand-in {binary}")).unwrap();
        }
        Night { moto, dir }
    }

    /// `xtask ARGS` signed with `user`'s keys (the admin's may do anything).
    fn xtask(&self, user: &str, args: &[&str]) -> Output {
        let home = self.dir.path().join("home");
        let mut command = Command::new(testkit::workspace_bin("xtask", "xtask"));
        self.moto.apply_user_env(&mut command, user);
        command
            .args(args)
            .env("OBSTACK_ARTIFACTS_DIR", self.dir.path().join("artifacts"))
            .env("OBSTACK_BASE_AMI_NAME", xtask::moto::BASE_AMI_NAME)
            .env("CARGO_TARGET_DIR", self.dir.path().join("target"))
            .env("HOME", &home)
            .env("PACKER_CACHE_DIR", home.join("packer-cache"))
            .env("PACKER_CONFIG_DIR", &home)
            .env("CHECKPOINT_DISABLE", "1")
            .env_remove("PACKER_LOG")
            .env_remove("OBSTACK_STACK");
        command
            .output()
            .unwrap_or_else(|e| panic!("cannot run xtask {args:?}: {e}"))
    }

    fn ok(&self, user: &str, args: &[&str]) -> String {
        let output = self.xtask(user, args);
        assert!(
            output.status.success(),
            "xtask {args:?} as {user}: {}",
            describe(&output)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The ids of the project's AMIs, as the admin sees them.
    fn images(&self) -> BTreeSet<String> {
        let listed: Value =
            serde_json::from_str(&self.ok(testkit::iam::ADMIN, &["images", "--json"])).unwrap();
        let mut ids = BTreeSet::new();
        collect_ami_ids(&listed, &mut ids);
        ids
    }
}

/// Every `ami-...` string in a JSON document.
fn collect_ami_ids(value: &Value, ids: &mut BTreeSet<String>) {
    match value {
        Value::String(s) if s.starts_with("ami-") => {
            ids.insert(s.clone());
        }
        Value::Array(items) => items.iter().for_each(|v| collect_ami_ids(v, ids)),
        Value::Object(map) => map.values().for_each(|v| collect_ami_ids(v, ids)),
        _ => {}
    }
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Release ids are unique to the second: a second release in the same second would clash.
fn next_second() {
    std::thread::sleep(std::time::Duration::from_millis(1100));
}

/// The role's commands as the nightly and an operator run them, as `bake`: two nights'
/// bakes recorded as releases and promoted, the listing, a rollback, then two bakes nobody
/// released and a prune that deletes the older of them. Returns the AMIs of the bake prune
/// had to delete and those it had to keep.
fn rehearse(night: &Night) -> (BTreeSet<String>, BTreeSet<String>) {
    let bake = "bake";
    night.ok(
        bake,
        &[
            "bake",
            "--smoke",
            "--json",
            "--release",
            "--channel",
            "candidate",
        ],
    );
    night.ok(bake, &["promote", "candidate", "--to", "stable"]);
    next_second();
    night.ok(
        bake,
        &[
            "bake",
            "--smoke",
            "--force",
            "--json",
            "--release",
            "--channel",
            "candidate",
        ],
    );
    night.ok(bake, &["promote", "candidate", "--to", "stable"]);
    night.ok(bake, &["releases", "--json"]);
    night.ok(bake, &["rollback", "--channel", "stable"]);
    let released = night.images();
    night.ok(bake, &["bake", "--smoke", "--force", "--json"]);
    let older = &night.images() - &released;
    night.ok(bake, &["bake", "--smoke", "--force", "--json"]);
    let kept = night.images();
    night.ok(
        bake,
        &["prune", "--keep", "1", "--keep-channel-history", "0"],
    );
    (older, kept)
}

#[test]
fn the_bake_role_runs_the_nightly_commands_with_exactly_its_policy() {
    let night = Night::new(&policy_text());
    let (older, before_prune) = rehearse(&night);
    let after = night.images();
    assert!(!older.is_empty());
    assert!(
        older.iter().all(|ami| !after.contains(ami)),
        "prune deleted the unreleased older bake"
    );
    assert_eq!(
        after.len(),
        before_prune.len() - older.len(),
        "and nothing else"
    );

    let called: Vec<Decision> = night
        .moto
        .decisions()
        .into_iter()
        .filter(|d| d.user == "bake" && d.action != "ec2:AuthorizeSecurityGroupIngress")
        .collect();
    let problems = compare(
        &grants(&policy_text()),
        &plugin_needs(&golden_source()),
        &called,
    );
    assert!(
        problems.is_empty(),
        "images/bake-policy.json against the golden source's settings and what the bake role called:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn a_missing_permission_stops_the_command_that_needs_it_naming_the_call() {
    // (the permission taken away, what the admin sets up first, the bake role's command)
    type Case<'a> = (&'a str, &'a [&'a [&'a str]], &'a [&'a str]);
    let cases: [Case; 3] = [
        (
            "ssm:AddTagsToResource",
            &[],
            &["bake", "--smoke", "--release", "--channel", "candidate"],
        ),
        (
            "ssm:GetParameterHistory",
            &[
                &["bake", "--smoke", "--release", "--channel", "stable"],
                &[
                    "bake",
                    "--smoke",
                    "--force",
                    "--release",
                    "--channel",
                    "stable",
                ],
            ],
            &["rollback", "--channel", "stable"],
        ),
        (
            "ec2:DeregisterImage",
            &[&["bake", "--smoke"], &["bake", "--smoke", "--force"]],
            &["prune", "--keep", "1"],
        ),
    ];
    for (action, setup, command) in cases {
        let night = Night::new(&without(&policy_text(), action));
        for step in setup {
            night.ok(testkit::iam::ADMIN, step);
            next_second();
        }
        let output = night.xtask("bake", command);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{command:?} without {action}: {}",
            describe(&output)
        );
        assert!(
            stderr.contains(&format!("not authorized to perform: {action}")),
            "{command:?} without {action} must name it: {}",
            describe(&output)
        );
    }
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
fn the_comparison_reports_missing_and_extra_grants() {
    let derived = plugin_needs(&golden_source());
    let called = |action: &str, resource: &str, allowed: bool| Decision {
        user: "bake".into(),
        action: action.into(),
        resource: resource.into(),
        allowed,
    };
    let parameter = "arn:aws:ssm:us-east-1:123456789012:parameter/obstack/obstack/releases/r1";
    let mut granted = grants(&policy_text());
    granted.retain(|g| g.action != "ec2:CreateTags");
    granted.push(Grant {
        sid: "Extra".into(),
        action: "ec2:AttachVolume".into(),
        resource: "*".into(),
    });
    let problems = compare(
        &granted,
        &derived,
        &[
            called("ssm:PutParameter", parameter, true),
            called("ssm:DeleteParameter", parameter, false),
        ],
    )
    .join("\n");
    assert!(problems.contains("missing ec2:CreateTags"), "{problems}");
    assert!(
        problems.contains("missing ssm:DeleteParameter on arn:aws:ssm:"),
        "{problems}"
    );
    assert!(
        problems.contains("Extra: ec2:AttachVolume on * is allowed but nothing calls it"),
        "{problems}"
    );
    // A grant is used only on the resources it names: the channel parameters' PutParameter
    // is not exercised by a release's, and the history read is exercised by no call here.
    assert!(
        problems.contains("ssm:PutParameter on arn:aws:ssm:*:*:parameter/obstack/*/channels/* is allowed but nothing calls it"),
        "{problems}"
    );
    assert!(
        !problems.contains("ssm:PutParameter on arn:aws:ssm:*:*:parameter/obstack/*/releases/* is"),
        "{problems}"
    );
    assert!(matches("ec2:Describe*", "ec2:DescribeImages"));
    assert!(matches("EC2:describeimages", "ec2:DescribeImages"));
    assert!(!matches("ec2:Describe*", "ec2:DeleteSnapshot"));
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
