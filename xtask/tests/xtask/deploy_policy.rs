//! The deploy role's permissions: terraform/deploy-policy.json (the README has people create
//! the role the nightly's staging job assumes from it) must allow what that job calls, and no
//! more. Three parts, each checked as far as it can be here:
//! - xtask's own calls (statements `Xtask...`) are *enforced*: `releases`, `deploy --release`
//!   and `--channel` (the AMI selection) and `verify --deployed` (its AWS look-up, Grafana's
//!   password) run against moto with the keys of a user holding exactly the policy, and every
//!   grant must be used by a call moto allowed;
//! - Terraform's (statements `Terraform...`) are *derived*, since no provider can run here:
//!   each resource and data source type of `terraform/` maps below to the calls the AWS
//!   provider makes to create, read, update and delete it, and the policy must grant exactly
//!   those; a new type fails the test until its calls are added. The state statements are the
//!   S3 backend's documented needs with `use_lockfile`;
//! - the Session Manager tunnels (`Tunnels...`) belong to the tunnel commands and are checked
//!   there; here only their shape.

use crate::bake_support;
use crate::terraform_support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;

use bake_support::{describe, roles, Sandbox};
use serde_json::Value;
use terraform_support::{iam_action_matches, parsed_files, top_blocks};
use testkit::iam::Decision;

/// The calls the AWS provider makes for each resource and data source type `terraform/`
/// uses (create, read, update, delete; tags through the service's own tagging calls).
const TERRAFORM_NEEDS: &[(&str, &[&str])] = &[
    (
        "aws_vpc",
        &[
            "ec2:CreateVpc",
            "ec2:DeleteVpc",
            "ec2:DescribeVpcs",
            "ec2:DescribeVpcAttribute",
            "ec2:ModifyVpcAttribute",
            "ec2:DescribeNetworkAcls",
            "ec2:DescribeRouteTables",
            "ec2:DescribeSecurityGroups",
            "ec2:CreateTags",
            "ec2:DeleteTags",
        ],
    ),
    (
        "aws_subnet",
        &[
            "ec2:CreateSubnet",
            "ec2:DeleteSubnet",
            "ec2:DescribeSubnets",
            "ec2:ModifySubnetAttribute",
            "ec2:DescribeNetworkInterfaces",
            "ec2:CreateTags",
            "ec2:DeleteTags",
        ],
    ),
    (
        "aws_internet_gateway",
        &[
            "ec2:CreateInternetGateway",
            "ec2:AttachInternetGateway",
            "ec2:DetachInternetGateway",
            "ec2:DeleteInternetGateway",
            "ec2:DescribeInternetGateways",
            "ec2:CreateTags",
            "ec2:DeleteTags",
        ],
    ),
    (
        "aws_route_table",
        &[
            "ec2:CreateRouteTable",
            "ec2:DeleteRouteTable",
            "ec2:DescribeRouteTables",
            "ec2:CreateTags",
            "ec2:DeleteTags",
        ],
    ),
    (
        "aws_route",
        &[
            "ec2:CreateRoute",
            "ec2:ReplaceRoute",
            "ec2:DeleteRoute",
            "ec2:DescribeRouteTables",
        ],
    ),
    (
        "aws_route_table_association",
        &[
            "ec2:AssociateRouteTable",
            "ec2:DisassociateRouteTable",
            "ec2:ReplaceRouteTableAssociation",
            "ec2:DescribeRouteTables",
        ],
    ),
    (
        "aws_default_security_group",
        &[
            "ec2:DescribeSecurityGroups",
            "ec2:DescribeSecurityGroupRules",
            "ec2:AuthorizeSecurityGroupIngress",
            "ec2:AuthorizeSecurityGroupEgress",
            "ec2:RevokeSecurityGroupIngress",
            "ec2:RevokeSecurityGroupEgress",
            "ec2:CreateTags",
            "ec2:DeleteTags",
        ],
    ),
    (
        "aws_security_group",
        &[
            "ec2:CreateSecurityGroup",
            "ec2:DeleteSecurityGroup",
            "ec2:DescribeSecurityGroups",
            "ec2:DescribeSecurityGroupRules",
            "ec2:RevokeSecurityGroupEgress",
            "ec2:RevokeSecurityGroupIngress",
            "ec2:DescribeNetworkInterfaces",
            "ec2:CreateTags",
            "ec2:DeleteTags",
        ],
    ),
    (
        "aws_vpc_security_group_ingress_rule",
        &[
            "ec2:AuthorizeSecurityGroupIngress",
            "ec2:RevokeSecurityGroupIngress",
            "ec2:ModifySecurityGroupRules",
            "ec2:DescribeSecurityGroupRules",
            "ec2:CreateTags",
            "ec2:DeleteTags",
        ],
    ),
    (
        "aws_vpc_security_group_egress_rule",
        &[
            "ec2:AuthorizeSecurityGroupEgress",
            "ec2:RevokeSecurityGroupEgress",
            "ec2:ModifySecurityGroupRules",
            "ec2:DescribeSecurityGroupRules",
            "ec2:CreateTags",
            "ec2:DeleteTags",
        ],
    ),
    (
        "aws_instance",
        &[
            "ec2:RunInstances",
            "ec2:DescribeInstances",
            "ec2:DescribeInstanceAttribute",
            "ec2:DescribeInstanceTypes",
            "ec2:DescribeInstanceCreditSpecifications",
            "ec2:DescribeVolumes",
            "ec2:DescribeTags",
            "ec2:DescribeImages",
            "ec2:ModifyInstanceAttribute",
            "ec2:ModifyInstanceMetadataOptions",
            "ec2:MonitorInstances",
            "ec2:UnmonitorInstances",
            "ec2:StopInstances",
            "ec2:StartInstances",
            "ec2:TerminateInstances",
            "ec2:CreateTags",
            "ec2:DeleteTags",
            "iam:PassRole",
        ],
    ),
    (
        "aws_ec2_tag",
        &["ec2:CreateTags", "ec2:DeleteTags", "ec2:DescribeTags"],
    ),
    (
        "aws_launch_template",
        &[
            "ec2:CreateLaunchTemplate",
            "ec2:CreateLaunchTemplateVersion",
            "ec2:ModifyLaunchTemplate",
            "ec2:DeleteLaunchTemplate",
            "ec2:DescribeLaunchTemplates",
            "ec2:DescribeLaunchTemplateVersions",
            "ec2:CreateTags",
            "ec2:DeleteTags",
            "iam:PassRole",
        ],
    ),
    (
        "aws_autoscaling_group",
        &[
            "autoscaling:CreateAutoScalingGroup",
            "autoscaling:UpdateAutoScalingGroup",
            "autoscaling:DeleteAutoScalingGroup",
            "autoscaling:DescribeAutoScalingGroups",
            "autoscaling:DescribeScalingActivities",
            "autoscaling:DescribeLoadBalancerTargetGroups",
            "autoscaling:AttachLoadBalancerTargetGroups",
            "autoscaling:DetachLoadBalancerTargetGroups",
            "autoscaling:StartInstanceRefresh",
            "autoscaling:DescribeInstanceRefreshes",
            "autoscaling:CancelInstanceRefresh",
            "autoscaling:CreateOrUpdateTags",
            "autoscaling:DeleteTags",
            "ec2:DescribeLaunchTemplateVersions",
            "ec2:RunInstances",
            "iam:PassRole",
            "iam:CreateServiceLinkedRole",
        ],
    ),
    (
        "aws_lb",
        &[
            "elasticloadbalancing:CreateLoadBalancer",
            "elasticloadbalancing:DeleteLoadBalancer",
            "elasticloadbalancing:DescribeLoadBalancers",
            "elasticloadbalancing:DescribeLoadBalancerAttributes",
            "elasticloadbalancing:ModifyLoadBalancerAttributes",
            "elasticloadbalancing:SetSecurityGroups",
            "elasticloadbalancing:SetSubnets",
            "elasticloadbalancing:AddTags",
            "elasticloadbalancing:RemoveTags",
            "elasticloadbalancing:DescribeTags",
            "ec2:DescribeAccountAttributes",
            "ec2:DescribeAddresses",
            "ec2:DescribeInternetGateways",
            "ec2:DescribeVpcs",
            "ec2:DescribeSubnets",
            "ec2:DescribeSecurityGroups",
            "ec2:DescribeNetworkInterfaces",
            "iam:CreateServiceLinkedRole",
        ],
    ),
    (
        "aws_lb_listener",
        &[
            "elasticloadbalancing:CreateListener",
            "elasticloadbalancing:ModifyListener",
            "elasticloadbalancing:DeleteListener",
            "elasticloadbalancing:DescribeListeners",
            "elasticloadbalancing:DescribeListenerAttributes",
            "elasticloadbalancing:ModifyListenerAttributes",
            "elasticloadbalancing:AddTags",
            "elasticloadbalancing:RemoveTags",
            "elasticloadbalancing:DescribeTags",
        ],
    ),
    (
        // internal/service/elbv2/listener_rule.go: create, read, priority and rule
        // updates, delete, tags.
        "aws_lb_listener_rule",
        &[
            "elasticloadbalancing:CreateRule",
            "elasticloadbalancing:DescribeRules",
            "elasticloadbalancing:ModifyRule",
            "elasticloadbalancing:SetRulePriorities",
            "elasticloadbalancing:DeleteRule",
            "elasticloadbalancing:AddTags",
            "elasticloadbalancing:RemoveTags",
            "elasticloadbalancing:DescribeTags",
        ],
    ),
    (
        // internal/service/elbv2/listener_certificate.go.
        "aws_lb_listener_certificate",
        &[
            "elasticloadbalancing:AddListenerCertificates",
            "elasticloadbalancing:DescribeListenerCertificates",
            "elasticloadbalancing:RemoveListenerCertificates",
        ],
    ),
    (
        // internal/service/elbv2/target_group_attachment.go.
        "aws_lb_target_group_attachment",
        &[
            "elasticloadbalancing:RegisterTargets",
            "elasticloadbalancing:DescribeTargetHealth",
            "elasticloadbalancing:DeregisterTargets",
        ],
    ),
    (
        "aws_lb_target_group",
        &[
            "elasticloadbalancing:CreateTargetGroup",
            "elasticloadbalancing:ModifyTargetGroup",
            "elasticloadbalancing:ModifyTargetGroupAttributes",
            "elasticloadbalancing:DeleteTargetGroup",
            "elasticloadbalancing:DescribeTargetGroups",
            "elasticloadbalancing:DescribeTargetGroupAttributes",
            "elasticloadbalancing:AddTags",
            "elasticloadbalancing:RemoveTags",
            "elasticloadbalancing:DescribeTags",
        ],
    ),
    (
        "aws_ebs_volume",
        &[
            "ec2:CreateVolume",
            "ec2:ModifyVolume",
            "ec2:DeleteVolume",
            "ec2:DescribeVolumes",
            "ec2:DescribeVolumesModifications",
            "ec2:CreateSnapshot",
            "ec2:DescribeSnapshots",
            "ec2:CreateTags",
            "ec2:DeleteTags",
            "kms:CreateGrant",
            "kms:DescribeKey",
            "kms:GenerateDataKeyWithoutPlaintext",
            "kms:Decrypt",
        ],
    ),
    (
        "aws_volume_attachment",
        &[
            "ec2:AttachVolume",
            "ec2:DetachVolume",
            "ec2:DescribeVolumes",
            "ec2:DescribeInstances",
            "ec2:StopInstances",
            "ec2:StartInstances",
        ],
    ),
    (
        "aws_dlm_lifecycle_policy",
        &[
            "dlm:CreateLifecyclePolicy",
            "dlm:GetLifecyclePolicy",
            "dlm:UpdateLifecyclePolicy",
            "dlm:DeleteLifecyclePolicy",
            "dlm:TagResource",
            "dlm:UntagResource",
            "dlm:ListTagsForResource",
            "iam:PassRole",
        ],
    ),
    (
        "aws_flow_log",
        &[
            "ec2:CreateFlowLogs",
            "ec2:DescribeFlowLogs",
            "ec2:DeleteFlowLogs",
            "ec2:CreateTags",
            "ec2:DeleteTags",
            "iam:PassRole",
        ],
    ),
    (
        "aws_cloudwatch_log_group",
        &[
            "logs:CreateLogGroup",
            "logs:DeleteLogGroup",
            "logs:DescribeLogGroups",
            "logs:PutRetentionPolicy",
            "logs:DeleteRetentionPolicy",
            "logs:AssociateKmsKey",
            "logs:DisassociateKmsKey",
            "logs:TagResource",
            "logs:UntagResource",
            "logs:ListTagsForResource",
        ],
    ),
    (
        "aws_iam_role",
        &[
            "iam:CreateRole",
            "iam:GetRole",
            "iam:DeleteRole",
            "iam:UpdateRole",
            "iam:UpdateAssumeRolePolicy",
            "iam:TagRole",
            "iam:UntagRole",
            "iam:ListRolePolicies",
            "iam:ListAttachedRolePolicies",
            "iam:ListInstanceProfilesForRole",
        ],
    ),
    (
        "aws_iam_role_policy",
        &[
            "iam:PutRolePolicy",
            "iam:GetRolePolicy",
            "iam:DeleteRolePolicy",
        ],
    ),
    (
        "aws_iam_instance_profile",
        &[
            "iam:CreateInstanceProfile",
            "iam:GetInstanceProfile",
            "iam:DeleteInstanceProfile",
            "iam:AddRoleToInstanceProfile",
            "iam:RemoveRoleFromInstanceProfile",
            "iam:TagInstanceProfile",
            "iam:UntagInstanceProfile",
        ],
    ),
    (
        "aws_kms_key",
        &[
            "kms:CreateKey",
            "kms:DescribeKey",
            "kms:GetKeyPolicy",
            "kms:PutKeyPolicy",
            "kms:GetKeyRotationStatus",
            "kms:EnableKeyRotation",
            "kms:DisableKeyRotation",
            "kms:UpdateKeyDescription",
            "kms:ListResourceTags",
            "kms:TagResource",
            "kms:UntagResource",
            "kms:ScheduleKeyDeletion",
        ],
    ),
    (
        "aws_kms_alias",
        &[
            "kms:CreateAlias",
            "kms:UpdateAlias",
            "kms:DeleteAlias",
            "kms:ListAliases",
        ],
    ),
    (
        "aws_ssm_parameter",
        &[
            "ssm:PutParameter",
            "ssm:GetParameter",
            "ssm:DescribeParameters",
            "ssm:DeleteParameter",
            "ssm:AddTagsToResource",
            "ssm:RemoveTagsFromResource",
            "ssm:ListTagsForResource",
            "kms:Encrypt",
            "kms:Decrypt",
            "kms:GenerateDataKey",
        ],
    ),
    (
        "aws_sns_topic",
        &[
            "sns:CreateTopic",
            "sns:DeleteTopic",
            "sns:GetTopicAttributes",
            "sns:SetTopicAttributes",
            "sns:TagResource",
            "sns:UntagResource",
            "sns:ListTagsForResource",
        ],
    ),
    (
        "aws_sns_topic_policy",
        &["sns:GetTopicAttributes", "sns:SetTopicAttributes"],
    ),
    (
        "aws_sns_topic_subscription",
        &[
            "sns:Subscribe",
            "sns:Unsubscribe",
            "sns:GetSubscriptionAttributes",
            "sns:SetSubscriptionAttributes",
            "sns:ListSubscriptionsByTopic",
        ],
    ),
    (
        "aws_s3_bucket",
        &[
            "s3:CreateBucket",
            "s3:DeleteBucket",
            "s3:ListBucket",
            "s3:ListBucketVersions",
            "s3:DeleteObject",
            "s3:DeleteObjectVersion",
            "s3:GetBucketAcl",
            "s3:GetBucketCORS",
            "s3:GetBucketWebsite",
            "s3:GetBucketVersioning",
            "s3:GetAccelerateConfiguration",
            "s3:GetBucketRequestPayment",
            "s3:GetBucketLogging",
            "s3:GetLifecycleConfiguration",
            "s3:GetReplicationConfiguration",
            "s3:GetEncryptionConfiguration",
            "s3:GetBucketObjectLockConfiguration",
            "s3:GetBucketTagging",
            "s3:PutBucketTagging",
            "s3:GetBucketPolicy",
        ],
    ),
    (
        "aws_s3_bucket_lifecycle_configuration",
        &[
            "s3:PutLifecycleConfiguration",
            "s3:GetLifecycleConfiguration",
        ],
    ),
    (
        "aws_s3_bucket_ownership_controls",
        &[
            "s3:PutBucketOwnershipControls",
            "s3:GetBucketOwnershipControls",
        ],
    ),
    (
        "aws_s3_bucket_policy",
        &[
            "s3:PutBucketPolicy",
            "s3:GetBucketPolicy",
            "s3:DeleteBucketPolicy",
        ],
    ),
    (
        "aws_s3_bucket_public_access_block",
        &[
            "s3:PutBucketPublicAccessBlock",
            "s3:GetBucketPublicAccessBlock",
        ],
    ),
    (
        "aws_s3_bucket_server_side_encryption_configuration",
        &[
            "s3:PutEncryptionConfiguration",
            "s3:GetEncryptionConfiguration",
        ],
    ),
    (
        "data.aws_availability_zones",
        &["ec2:DescribeAvailabilityZones"],
    ),
    // sts:GetCallerIdentity needs no permission; aws_partition calls nothing; the random
    // provider's password is made by Terraform itself.
    (
        "data.aws_ec2_instance_type_offerings",
        &["ec2:DescribeInstanceTypeOfferings"],
    ),
    ("data.aws_caller_identity", &[]),
    ("data.aws_partition", &[]),
    ("random_password", &[]),
];

/// The S3 backend with `use_lockfile` (Terraform's "S3 backend" documentation, "Permissions
/// required"): list the bucket, read and write the state object, and read, write and delete
/// the lock file beside it.
const STATE_NEEDS: &[&str] = &[
    "s3:ListBucket",
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
];

/// IAM's quota for a role's inline policies (IAM and AWS STS quotas: "Role policy size",
/// 10,240 characters, whitespace not counted): the README has people `put-role-policy` it.
const INLINE_POLICY_LIMIT: usize = 10_240;

const STATE_BUCKET: &str = "obstack-test-state";
const STACK: &str = "obstack";

fn policy_text() -> String {
    let path = testkit::workspace_root().join("terraform/deploy-policy.json");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; the deploy role's policy lives there",
                path.display()
            )
        })
        // The README has people name their state bucket in it.
        .replace("STATE_BUCKET", STATE_BUCKET)
}

/// One (action, resource) an Allow statement grants.
#[derive(Debug, Clone)]
struct Grant {
    sid: String,
    action: String,
    resource: String,
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(one) => vec![one.clone()],
        Value::Array(many) => many
            .iter()
            .map(|v| {
                v.as_str()
                    .unwrap_or_else(|| panic!("not a string: {v}"))
                    .to_string()
            })
            .collect(),
        other => panic!("not a string or a list: {other}"),
    }
}

fn grants(policy: &str) -> Vec<Grant> {
    let policy: Value = serde_json::from_str(policy).unwrap();
    assert_eq!(policy["Version"], "2012-10-17");
    let mut grants = Vec::new();
    for statement in policy["Statement"].as_array().unwrap() {
        assert_eq!(statement["Effect"], "Allow", "{statement}");
        assert!(
            statement.get("NotAction").is_none() && statement.get("NotResource").is_none(),
            "{statement}"
        );
        let sid = statement["Sid"]
            .as_str()
            .expect("every statement has a Sid")
            .to_string();
        for action in strings(&statement["Action"]) {
            assert!(
                action.contains(':') && !action.contains('*'),
                "{sid}: `{action}` is a wildcard; name each call"
            );
            for resource in strings(&statement["Resource"]) {
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

fn without(policy: &str, sid: &str) -> String {
    let mut policy: Value = serde_json::from_str(policy).unwrap();
    policy["Statement"]
        .as_array_mut()
        .unwrap()
        .retain(|s| s["Sid"] != sid);
    policy.to_string()
}

/// Every resource and data source type `terraform/` uses (`data.` before data sources).
fn terraform_types() -> BTreeSet<String> {
    let files = parsed_files();
    let resources = top_blocks(&files, "resource")
        .into_iter()
        .map(|b| b.labels()[0].as_str().to_string());
    let data = top_blocks(&files, "data")
        .into_iter()
        .map(|b| format!("data.{}", b.labels()[0].as_str()));
    resources.chain(data).collect()
}

/// What the Terraform statements lack of, or grant beyond, the calls of `types`.
fn terraform_problems(grants: &[Grant], types: &BTreeSet<String>) -> Vec<String> {
    let table: BTreeMap<&str, &[&str]> = TERRAFORM_NEEDS.iter().copied().collect();
    let mut problems = Vec::new();
    let mut needed: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for kind in types {
        match table.get(kind.as_str()) {
            Some(actions) => {
                for action in *actions {
                    needed.entry(action).or_default().push(kind);
                }
            }
            None => problems.push(format!(
                "terraform/ uses {kind}, which TERRAFORM_NEEDS does not know: read the provider's \
                 code for it and add its calls there and to terraform/deploy-policy.json"
            )),
        }
    }
    let terraform: Vec<&Grant> = grants
        .iter()
        .filter(|g| g.sid.starts_with("Terraform") && !g.sid.starts_with("TerraformState"))
        .collect();
    for (action, kinds) in &needed {
        if !terraform
            .iter()
            .any(|g| iam_action_matches(&g.action, action))
        {
            problems.push(format!("missing {action} (for {})", kinds.join(", ")));
        }
    }
    for grant in &terraform {
        if !needed.keys().any(|a| iam_action_matches(&grant.action, a)) {
            problems.push(format!(
                "{}: {} is granted but no resource type of terraform/ needs it",
                grant.sid, grant.action
            ));
        }
    }
    problems
}

#[test]
fn terraforms_part_grants_exactly_what_the_provider_calls_for_the_configurations_types() {
    let granted = grants(&policy_text());
    let types = terraform_types();
    let problems = terraform_problems(&granted, &types);
    assert!(
        problems.is_empty(),
        "terraform/deploy-policy.json against terraform/'s resource types:\n  {}",
        problems.join("\n  ")
    );

    // The check can fail: a type nobody mapped, a call taken away, a call nobody needs.
    let mut more = types.clone();
    more.insert("aws_nat_gateway".into());
    let problems = terraform_problems(&granted, &more).join("\n");
    assert!(problems.contains("uses aws_nat_gateway"), "{problems}");
    let fewer: Vec<Grant> = granted
        .iter()
        .filter(|g| g.action != "ec2:CreateVpc")
        .cloned()
        .collect();
    let problems = terraform_problems(&fewer, &types).join("\n");
    assert!(
        problems.contains("missing ec2:CreateVpc (for aws_vpc)"),
        "{problems}"
    );
    let mut extra = granted.clone();
    extra.push(Grant {
        sid: "TerraformExtra".into(),
        action: "rds:CreateDBInstance".into(),
        resource: "*".into(),
    });
    let problems = terraform_problems(&extra, &types).join("\n");
    assert!(
        problems.contains("rds:CreateDBInstance is granted but"),
        "{problems}"
    );
}

#[test]
fn the_state_and_tunnel_statements_are_scoped_and_the_policy_fits_an_inline_role_policy() {
    let granted = grants(&policy_text());
    let state: BTreeSet<&str> = granted
        .iter()
        .filter(|g| g.sid.starts_with("TerraformState"))
        .map(|g| g.action.as_str())
        .collect();
    assert_eq!(state, STATE_NEEDS.iter().copied().collect());
    for grant in granted
        .iter()
        .filter(|g| g.sid.starts_with("TerraformState"))
    {
        let bucket = format!("arn:aws:s3:::{STATE_BUCKET}");
        let objects = format!("{bucket}/obstack/*");
        let expected = if grant.action == "s3:ListBucket" {
            &bucket
        } else {
            &objects
        };
        assert_eq!(&grant.resource, expected, "{grant:?}");
    }
    let tunnels: BTreeSet<&str> = granted
        .iter()
        .filter(|g| g.sid.starts_with("Tunnels"))
        .map(|g| g.action.as_str())
        .collect();
    assert_eq!(
        tunnels,
        BTreeSet::from(["ssm:StartSession", "ssm:TerminateSession"])
    );
    for grant in &granted {
        assert!(
            ["Xtask", "Terraform", "Tunnels"]
                .iter()
                .any(|p| grant.sid.starts_with(p)),
            "{}: every statement says whose calls it grants (Xtask, Terraform, Tunnels)",
            grant.sid
        );
    }
    for file in ["terraform/deploy-policy.json", "images/bake-policy.json"] {
        let text = std::fs::read_to_string(testkit::workspace_root().join(file)).unwrap();
        let size = text.chars().filter(|c| !c.is_whitespace()).count();
        assert!(
            size <= INLINE_POLICY_LIMIT,
            "{file} has {size} characters, over IAM's {INLINE_POLICY_LIMIT} for a role's inline policies"
        );
    }
}

/// One AMI per role, a release of them pointed at by `candidate` (as the admin), and
/// Grafana's password where Terraform puts it.
fn staged(sandbox: &Sandbox) -> String {
    let mut args = vec!["release".to_string(), "create".into(), "--json".into()];
    for role in roles() {
        let hash = "1".repeat(64);
        let ami = sandbox.register(
            role,
            &hash,
            &format!("obstack-{role}-{}-20261201000000", &hash[..12]),
        );
        args.extend(["--ami".to_string(), format!("{role}={ami}")]);
    }
    args.extend(["--channel".to_string(), "candidate".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = sandbox.xtask(&args).output().unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    let record: Value = serde_json::from_slice(&output.stdout).unwrap();
    let env: BTreeMap<&str, String> = sandbox.moto.env().into_iter().collect();
    let config = aws_sdk_ssm::Config::builder()
        .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
        .region(aws_sdk_ssm::config::Region::new("us-east-1"))
        .endpoint_url(sandbox.moto.endpoint())
        .credentials_provider(aws_sdk_ssm::config::Credentials::new(
            &env["AWS_ACCESS_KEY_ID"],
            &env["AWS_SECRET_ACCESS_KEY"],
            None,
            None,
            "moto",
        ))
        .build();
    let ssm = aws_sdk_ssm::Client::from_conf(config);
    sandbox.runtime.block_on(async {
        ssm.put_parameter()
            .name(GRAFANA_PASSWORD)
            .value("not-a-real-password")
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .send()
            .await
            .unwrap();
    });
    record["id"].as_str().unwrap().to_string()
}

const GRAFANA_PASSWORD: &str = "/obstack/obstack-staging/grafana/admin-password";

/// The staging job's xtask commands as `deploy`, against a stand-in Terraform whose stack
/// runs nothing yet and whose Grafana (at a closed port) has its password in SSM.
fn staging_commands(sandbox: &Sandbox, release: &str) -> Vec<(String, Output)> {
    let scratch = tempfile::tempdir().unwrap();
    let terraform = testkit::FakeTerraform::install(scratch.path(), &[("grafana", "ami-00000000")]);
    terraform.set_output("grafana_admin_password_parameter", GRAFANA_PASSWORD.into());
    terraform.set_output(
        "urls",
        serde_json::json!({"grafana": format!("http://127.0.0.1:{}", testkit::free_port())}),
    );
    let vars = scratch.path().join("staging.tfvars");
    std::fs::write(&vars, "allowed_web_cidrs = [\"198.51.100.7/32\"]\n").unwrap();
    let vars = vars.to_str().unwrap().to_string();
    let runs: [&[&str]; 4] = [
        &["releases", "--stack", STACK, "--json"],
        &[
            "deploy",
            "--plan-only",
            "--release",
            release,
            "--stack",
            STACK,
            "--var-file",
            &vars,
        ],
        &[
            "deploy",
            "--plan-only",
            "--channel",
            "candidate",
            "--stack",
            STACK,
            "--var-file",
            &vars,
        ],
        &[
            "verify",
            "--deployed",
            "--json",
            "--log-deadline",
            "1s",
            "--metrics-deadline",
            "1s",
        ],
    ];
    runs.iter()
        .map(|args| {
            let mut command = sandbox.xtask_as("deploy", args);
            terraform.apply_env(&mut command);
            (args.join(" "), command.output().unwrap())
        })
        .collect()
}

#[test]
fn the_deploy_role_runs_the_staging_commands_with_exactly_its_policy() {
    let sandbox = Sandbox::enforcing(&[("deploy", &policy_text())]);
    let release = staged(&sandbox);
    for (command, output) in staging_commands(&sandbox, &release) {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stderr.contains("not authorized")
                && !stderr.contains("cannot read Grafana's admin password"),
            "{command}: {}",
            describe(&output)
        );
        // verify fails here (no Grafana answers); its AWS look-up is what is checked.
        if !command.starts_with("verify") {
            assert!(output.status.success(), "{command}: {}", describe(&output));
        }
    }
    let called: Vec<Decision> = sandbox
        .moto
        .decisions()
        .into_iter()
        .filter(|d| d.user == "deploy")
        .collect();
    assert!(
        called.iter().any(|d| d.action == "ssm:GetParameter"
            && d.resource.ends_with(GRAFANA_PASSWORD)
            && d.allowed),
        "verify read Grafana's password: {called:#?}"
    );
    let granted = grants(&policy_text());
    let mut problems = Vec::new();
    for call in &called {
        let matched = granted.iter().any(|g| {
            iam_action_matches(&g.action, &call.action)
                && iam_action_matches(&g.resource, &call.resource)
        });
        if !call.allowed || !matched {
            problems.push(format!("missing {} on {}", call.action, call.resource));
        }
    }
    for grant in granted.iter().filter(|g| g.sid.starts_with("Xtask")) {
        let used = called.iter().any(|c| {
            c.allowed
                && iam_action_matches(&grant.action, &c.action)
                && iam_action_matches(&grant.resource, &c.resource)
        });
        if !used {
            problems.push(format!(
                "{}: {} on {} is granted but no staging command calls it",
                grant.sid, grant.action, grant.resource
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "terraform/deploy-policy.json against the staging commands:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn a_missing_permission_stops_the_staging_command_that_needs_it_naming_the_call() {
    for (sid, command, action) in [
        (
            "XtaskListsReleasesChannelsAndRejections",
            "releases",
            "ssm:GetParametersByPath",
        ),
        (
            "XtaskReadsReleasesAndChannels",
            "deploy --plan-only --release",
            "ssm:GetParameter",
        ),
    ] {
        let sandbox = Sandbox::enforcing(&[("deploy", &without(&policy_text(), sid))]);
        let release = staged(&sandbox);
        let (_, output) = staging_commands(&sandbox, &release)
            .into_iter()
            .find(|(c, _)| c.starts_with(command))
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{command} without {sid}: {}",
            describe(&output)
        );
        assert!(
            stderr.contains(&format!("not authorized to perform: {action}")),
            "{command} without {sid} must name {action}: {}",
            describe(&output)
        );
    }
}
