//! `terraform/` stays formatted, passes checkov with zero failed checks, and keeps its
//! hardening and least-privilege IAM: checked statically with hcl-rs (no provider download
//! needed). The values checked against AWS's constraints by evaluating them are in
//! terraform_constraints.rs.

use crate::terraform_support;

use std::collections::BTreeMap;
use std::process::Command;

use hcl::{Body, Expression};
use serde_json::Value;
use terraform_support::{
    address, attr, block, depends_on, iam_action_matches, identity_policies, parsed_files,
    policy_document, resource, resources, statements, string_list, terraform_dir,
};

#[test]
fn terraform_is_formatted() {
    let terraform = testkit::require_tool("terraform");
    let output = Command::new(terraform)
        .current_dir(testkit::workspace_root())
        .args(["fmt", "-check", "-recursive", "-diff", "terraform/"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "run `terraform fmt -recursive terraform/`:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn checkov_finds_no_failed_check_and_every_skip_says_why() {
    let checkov = testkit::require_tool("checkov");
    let output = Command::new(checkov)
        .current_dir(testkit::workspace_root())
        .args([
            "-d",
            "terraform",
            "--skip-download",
            "--quiet",
            "--compact",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("checkov did not print JSON ({e}):\n{stdout}"));
    let summary = &report["summary"];
    assert!(
        summary["passed"].as_u64().unwrap_or(0) > 50,
        "checkov checked suspiciously little: {summary}"
    );
    assert_eq!(
        summary["failed"].as_u64(),
        Some(0),
        "checkov failed checks:\n{}",
        serde_json::to_string_pretty(&report["results"]["failed_checks"]).unwrap()
    );
    assert!(
        output.status.success(),
        "checkov exited with {}",
        output.status
    );

    // Every inline skip names a check and carries a real reason.
    for entry in std::fs::read_dir(terraform_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "tf") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines().filter(|l| l.contains("checkov:skip")) {
            let rest = line.split("checkov:skip=").nth(1).unwrap_or("");
            let (id, reason) = rest.split_once(':').unwrap_or((rest, ""));
            assert!(
                id.starts_with("CKV_AWS_") || id.starts_with("CKV2_AWS_"),
                "{}: skip without a check id: {line}",
                path.display()
            );
            assert!(
                reason.trim().len() >= 20,
                "{}: skip without a reason: {line}",
                path.display()
            );
        }
    }
}

#[test]
fn every_instance_is_imdsv2_only_encrypted_monitored_and_tagged() {
    let files = parsed_files();
    let instances = resources(&files, "aws_instance");
    assert!(!instances.is_empty(), "no aws_instance found");
    for instance in instances {
        let name = instance.labels()[1].as_str();
        let body = instance.body();
        let metadata = block(body, "metadata_options")
            .unwrap_or_else(|| panic!("aws_instance.{name} has no metadata_options"));
        assert_eq!(
            attr(metadata, "http_tokens"),
            Some(&Expression::from("required")),
            "{name}"
        );
        assert_eq!(
            attr(metadata, "http_put_response_hop_limit"),
            Some(&Expression::from(1)),
            "{name}"
        );
        assert_eq!(
            attr(metadata, "instance_metadata_tags"),
            Some(&Expression::from("enabled")),
            "{name}"
        );
        let root = block(body, "root_block_device")
            .unwrap_or_else(|| panic!("aws_instance.{name} has no root_block_device"));
        assert_eq!(
            attr(root, "encrypted"),
            Some(&Expression::from(true)),
            "{name}"
        );
        assert_eq!(
            attr(root, "volume_type"),
            Some(&Expression::from("gp3")),
            "{name}"
        );
        assert_eq!(
            attr(body, "monitoring"),
            Some(&Expression::from(true)),
            "{name}"
        );
        assert_eq!(
            attr(body, "ebs_optimized"),
            Some(&Expression::from(true)),
            "{name}"
        );
        assert!(
            attr(body, "iam_instance_profile").is_some(),
            "{name}: no instance profile"
        );
        assert!(
            attr(body, "key_name").is_none(),
            "{name}: SSH key pairs are not used"
        );
        assert!(
            attr(body, "user_data").is_none(),
            "{name}: nothing is installed at boot"
        );
        let Some(tags) = attr(body, "tags") else {
            panic!("aws_instance.{name} has no tags");
        };
        let keys = literal_object_keys(tags);
        assert!(
            !keys.is_empty(),
            "aws_instance.{name}: tags hold no literal object"
        );
        for wanted in ["Name", "obstack:role"] {
            assert!(
                keys.iter().any(|k| k == wanted),
                "{name}: tag {wanted} missing in {keys:?}"
            );
        }
    }
}

#[test]
fn peer_addresses_and_the_password_name_are_tagged_after_launch() {
    let files = parsed_files();
    let tags = resources(&files, "aws_ec2_tag");
    let keys: Vec<String> = tags
        .iter()
        .filter_map(|t| attr(t.body(), "key"))
        .map(|e| e.to_string())
        .collect();
    assert!(keys.iter().any(|k| k.contains("obstack:peer:")), "{keys:?}");
    assert!(
        keys.iter()
            .any(|k| k.contains("obstack:grafana-admin-password-param")),
        "{keys:?}"
    );
    // The password's value never goes into a tag: only the parameter's name.
    for tag in &tags {
        let value = attr(tag.body(), "value")
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            !value.contains("random_password"),
            "a tag carries a secret: {value}"
        );
    }
}

#[test]
fn peers_are_reached_by_security_group_and_people_only_from_allowed_cidrs() {
    let files = parsed_files();
    for kind in [
        "aws_vpc_security_group_ingress_rule",
        "aws_vpc_security_group_egress_rule",
    ] {
        for rule in resources(&files, kind) {
            let name = rule.labels()[1].as_str();
            let body = rule.body();
            assert!(
                attr(body, "description").is_some(),
                "{kind}.{name} has no description"
            );
            if let Some(cidr) = attr(body, "cidr_ipv4") {
                let cidr = cidr.to_string();
                let for_each = attr(body, "for_each")
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                let allowed = (kind.ends_with("ingress_rule") && cidr == "each.value.cidr" && name == "web")
                        || (kind.ends_with("ingress_rule")
                            && cidr == "each.value"
                            && name == "alertmanager_web"
                            && for_each.contains("toset(var.allowed_web_cidrs)"))
                        // The app fleet's load balancer (terraform_fleet.rs evaluates its flows).
                        || (kind.ends_with("ingress_rule")
                            && cidr == "each.value.cidr"
                            && name == "alb_web"
                            && for_each.contains("var.allowed_web_cidrs"))
                        || (kind.ends_with("egress_rule")
                            && cidr == "local.any_ipv4"
                            && name == "aws_apis");
                assert!(allowed, "{kind}.{name} opens to {cidr}");
            } else {
                assert!(
                    attr(body, "referenced_security_group_id").is_some(),
                    "{kind}.{name} names neither a security group nor allowed CIDRs"
                );
            }
        }
    }
    // HTTPS to the AWS APIs is the only rule that reaches "anywhere", and only on 443.
    let aws_apis = resources(&files, "aws_vpc_security_group_egress_rule")
        .into_iter()
        .find(|r| r.labels()[1].as_str() == "aws_apis")
        .expect("the SSM egress rule");
    assert_eq!(
        attr(aws_apis.body(), "from_port"),
        Some(&Expression::from(443))
    );
    assert_eq!(
        attr(aws_apis.body(), "to_port"),
        Some(&Expression::from(443))
    );
    // The old-style inline and CIDR rule resources are not used at all.
    assert!(resources(&files, "aws_security_group_rule").is_empty());
    for group in resources(&files, "aws_security_group") {
        assert!(
            block(group.body(), "ingress").is_none(),
            "inline ingress in {:?}",
            group.labels()
        );
    }
}

/// Dotted-quad IPv4 addresses in `text` (with or without a prefix length).
fn ipv4_literals(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts_token =
            i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'.');
        if starts_token && bytes[i].is_ascii_digit() {
            let mut end = i;
            let mut groups = 0;
            loop {
                let digits = bytes[end..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                if digits == 0 || digits > 3 {
                    break;
                }
                end += digits;
                groups += 1;
                if groups == 4 || bytes.get(end) != Some(&b'.') {
                    break;
                }
                end += 1;
            }
            if groups == 4 {
                found.push(text[i..end].to_string());
                i = end;
                continue;
            }
        }
        i += 1;
    }
    found
}

#[test]
fn the_ip_literal_scanner_finds_addresses_and_nothing_else() {
    assert_eq!(ipv4_literals(r#"cidr = "10.42.0.0/16""#), ["10.42.0.0"]);
    assert_eq!(ipv4_literals("x 203.0.113.7, y"), ["203.0.113.7"]);
    assert!(ipv4_literals("version ~> 5.0, ami-12345678, v1.2.3, t3.small").is_empty());
}

/// Where an IP literal is allowed (see terraform/README.md): the VPC's own address plan as
/// variable defaults (with the app fleet's second subnet), "anywhere" for the default
/// route and HTTPS egress, and the loopback address `cargo xtask open grafana` serves
/// Grafana at, which alert notifications link to when Grafana has no HTTPS name.
fn allowed_literal(file: &str, path: &[String], key: &str, value: &str) -> bool {
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    match (file, path.as_slice(), key) {
        (
            "variables.tf",
            ["variable", "vpc_cidr" | "public_subnet_cidr" | "second_public_subnet_cidr"],
            "default",
        ) => true,
        ("network.tf", ["locals"], "any_ipv4") => value == "\"0.0.0.0/0\"",
        ("alerting.tf", ["resource", "aws_ec2_tag", "grafana_url"], "value")
        | ("variables.tf", ["variable", "alert_grafana_url"], "description") => {
            ipv4_literals(value) == ["127.0.0.1"]
        }
        _ => false,
    }
}

fn scan_body(file: &str, path: &mut Vec<String>, body: &Body, offenders: &mut Vec<String>) {
    for attribute in body.attributes() {
        let value = attribute.expr().to_string();
        if !ipv4_literals(&value).is_empty()
            && !allowed_literal(file, path, attribute.key(), &value)
        {
            offenders.push(format!(
                "{file}: {} {} = {value}",
                path.join("."),
                attribute.key()
            ));
        }
    }
    for block in body.blocks() {
        let depth = path.len();
        path.push(block.identifier().to_string());
        path.extend(block.labels().iter().map(|l| l.as_str().to_string()));
        scan_body(file, path, block.body(), offenders);
        path.truncate(depth);
    }
}

#[test]
fn no_ip_address_literal_outside_the_documented_exceptions() {
    let files = parsed_files();
    let mut offenders = Vec::new();
    for (file, body) in &files {
        scan_body(file, &mut Vec::new(), body, &mut offenders);
    }
    assert!(
        offenders.is_empty(),
        "IP literals in terraform/:\n{}",
        offenders.join("\n")
    );

    // The exceptions exist and are exactly what the README says.
    let mut seen = Vec::new();
    for (file, body) in &files {
        for block in body.blocks() {
            for attribute in block.body().attributes() {
                let value = attribute.expr().to_string();
                if !ipv4_literals(&value).is_empty() {
                    seen.push(format!(
                        "{file} {} {}",
                        block.labels().first().map_or("", |l| l.as_str()),
                        attribute.key()
                    ));
                }
            }
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "alerting.tf aws_ec2_tag value",
            "network.tf  any_ipv4",
            "variables.tf alert_grafana_url description",
            "variables.tf public_subnet_cidr default",
            "variables.tf second_public_subnet_cidr default",
            "variables.tf vpc_cidr default"
        ]
    );
}

#[test]
fn allowed_web_cidrs_defaults_to_nobody() {
    let files = parsed_files();
    let variable = files["variables.tf"]
        .blocks()
        .find(|b| b.identifier() == "variable" && b.labels()[0].as_str() == "allowed_web_cidrs")
        .expect("variable allowed_web_cidrs");
    assert_eq!(
        attr(variable.body(), "default"),
        Some(&Expression::Array(Vec::new())),
        "nothing is published by default: every UI is reached through a tunnel"
    );
    assert!(block(variable.body(), "validation").is_some());
}

#[test]
fn every_variable_is_typed_described_and_every_output_described() {
    let files = parsed_files();
    for (file, body) in &files {
        for b in body.blocks() {
            let label = b.labels().first().map_or("", |l| l.as_str());
            match b.identifier() {
                "variable" => {
                    assert!(
                        attr(b.body(), "type").is_some(),
                        "{file}: variable {label} has no type"
                    );
                    assert!(
                        attr(b.body(), "description").is_some(),
                        "{file}: variable {label} has no description"
                    );
                    assert_eq!(
                        file, "variables.tf",
                        "variable {label} outside variables.tf"
                    );
                }
                "output" => {
                    assert!(
                        attr(b.body(), "description").is_some(),
                        "{file}: output {label} has no description"
                    );
                    assert_eq!(file, "outputs.tf", "output {label} outside outputs.tf");
                }
                _ => {}
            }
        }
    }
}

/// Every IAM action that reads a parameter's value.
const PARAMETER_READS: [&str; 4] = [
    "ssm:GetParameter",
    "ssm:GetParameters",
    "ssm:GetParametersByPath",
    "ssm:GetParameterHistory",
];

/// Every attachment of an AWS-managed policy (`arn:...:iam::aws:policy/...`), as
/// (resource address, role expression, policy ARN expression).
fn aws_managed_attachments(files: &BTreeMap<String, Body>) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    let mut add = |at: String, role: String, arns: &Expression| {
        let arns = match arns {
            Expression::Array(items) => items.iter().map(|e| e.to_string()).collect(),
            other => vec![other.to_string()],
        };
        for arn in arns {
            if arn.contains("iam::aws:policy/") {
                found.push((at.clone(), role.clone(), arn));
            }
        }
    };
    for (kind, role_key, arn_key) in [
        ("aws_iam_role_policy_attachment", "role", "policy_arn"),
        ("aws_iam_policy_attachment", "roles", "policy_arn"),
        (
            "aws_iam_role_policy_attachments_exclusive",
            "role_name",
            "policy_arns",
        ),
        ("aws_iam_role", "name", "managed_policy_arns"),
    ] {
        for r in resources(files, kind) {
            let body = r.body();
            let role = if kind == "aws_iam_role" {
                format!("aws_iam_role.{}", r.labels()[1].as_str())
            } else {
                attr(body, role_key)
                    .map(|e| e.to_string())
                    .unwrap_or_default()
            };
            if let Some(arns) = attr(body, arn_key) {
                add(address(r), role, arns);
            }
        }
    }
    found
}

fn allows(statement: &Value) -> bool {
    statement["Effect"] == "Allow"
}

#[test]
fn no_instance_role_holds_an_aws_managed_policy() {
    let files = parsed_files();
    let offenders: Vec<String> = aws_managed_attachments(&files)
        .into_iter()
        .filter(|(_, role, _)| role.contains("aws_iam_role.instance"))
        .map(|(at, role, arn)| format!("{at}: {role} holds {arn}"))
        .collect();
    assert!(
        offenders.is_empty(),
        "instance roles hold AWS-managed policies, whose content is not reviewed here; \
         AmazonSSMManagedInstanceCore (like AmazonSSMFullAccess, AmazonSSMReadOnlyAccess and \
         AmazonEC2RoleforSSM) grants ssm:GetParameter(s) on \"*\", i.e. every parameter of the \
         account. Grant the Session Manager actions inline instead:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_only_parameters_read_are_grafanas_password_and_prometheus_webhook_url() {
    let files = parsed_files();
    let mut grants = Vec::new();
    for (at, _, arn) in aws_managed_attachments(&files) {
        grants.push(format!(
            "{at}: AWS-managed {arn}, which may read parameters on \"*\""
        ));
    }
    for (at, role, document) in identity_policies(&files) {
        for statement in statements(&document) {
            assert!(
                statement["NotAction"].is_null() && statement["NotResource"].is_null(),
                "{at}: NotAction/NotResource are not reviewed by this test"
            );
            if !allows(statement) {
                continue;
            }
            let actions = string_list(&statement["Action"]);
            let reads: Vec<&str> = PARAMETER_READS
                .iter()
                .copied()
                .filter(|read| actions.iter().any(|a| iam_action_matches(a, read)))
                .collect();
            if !reads.is_empty() {
                grants.push(format!(
                    "{at}: role {role} may {reads:?} on {:?}",
                    string_list(&statement["Resource"])
                ));
            }
        }
    }
    grants.sort();
    assert_eq!(
        grants,
        [
            "aws_iam_role_policy.grafana_reads_admin_password: role aws_iam_role.instance[\"grafana\"].id may [\"ssm:GetParameter\"] on [\"aws_ssm_parameter.grafana_admin_password.arn\"]",
            "aws_iam_role_policy.prometheus_reads_alert_urls: role aws_iam_role.instance[\"prometheus\"].id may [\"ssm:GetParameter\"] on [\"local.alert_url_parameter_arns\"]"
        ],
        "only Grafana may read a parameter, its admin password, and Prometheus the alert \
         webhooks' URLs (terraform/alerting.tf)"
    );
}

#[test]
fn grafana_decrypts_its_password_only_through_ssm() {
    let files = parsed_files();
    let policy = resource(
        &files,
        "aws_iam_role_policy",
        "grafana_reads_admin_password",
    );
    let document = policy_document(policy.body(), "policy").unwrap();
    let decrypts: Vec<&Value> = statements(&document)
        .into_iter()
        .filter(|s| {
            allows(s)
                && string_list(&s["Action"])
                    .iter()
                    .any(|a| iam_action_matches(a, "kms:Decrypt"))
        })
        .collect();
    assert_eq!(decrypts.len(), 1, "{document:#}");
    let decrypt = decrypts[0];
    assert_eq!(
        string_list(&decrypt["Resource"]),
        ["aws_kms_key.stack.arn"],
        "{decrypt:#}"
    );
    let equals = &decrypt["Condition"]["StringEquals"];
    let via = equals["kms:ViaService"].as_str().unwrap_or_default();
    assert!(
        via.starts_with("ssm.${var.region}."),
        "kms:Decrypt must be conditioned on kms:ViaService = ssm.<region>...: {decrypt:#}"
    );
    assert_eq!(
        equals["kms:EncryptionContext:PARAMETER_ARN"],
        "aws_ssm_parameter.grafana_admin_password.arn",
        "{decrypt:#}"
    );
}

/// The SSM agent's actions for Session Manager, as AWS documents them for a minimal
/// instance profile.
const SESSION_MANAGER_ACTIONS: [&str; 11] = [
    "ssm:UpdateInstanceInformation",
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
    "ec2messages:AcknowledgeMessage",
    "ec2messages:DeleteMessage",
    "ec2messages:FailMessage",
    "ec2messages:GetEndpoint",
    "ec2messages:GetMessages",
    "ec2messages:SendReply",
];

#[test]
fn every_instance_role_gets_exactly_the_session_manager_actions() {
    let files = parsed_files();
    let mut actions = Vec::new();
    for r in resources(&files, "aws_iam_role_policy") {
        let body = r.body();
        let for_every_role = attr(body, "for_each").map(|e| e.to_string())
            == Some("local.roles".to_string())
            && attr(body, "role").is_some_and(|e| {
                let role = e.to_string();
                role == "aws_iam_role.instance[each.key].id"
                    || role == "aws_iam_role.instance[each.key].name"
            });
        if for_every_role {
            let document = policy_document(body, "policy").unwrap();
            for statement in statements(&document).into_iter().filter(|s| allows(s)) {
                actions.extend(string_list(&statement["Action"]));
            }
        }
    }
    actions.sort();
    let mut expected: Vec<String> = SESSION_MANAGER_ACTIONS.map(String::from).to_vec();
    expected.sort();
    assert_eq!(
        actions, expected,
        "the policy every instance role gets (for_each = local.roles) must hold exactly the \
         Session Manager actions of AWS's minimal instance profile"
    );
}

#[test]
fn the_flow_log_role_has_the_documented_permissions_and_trusts_only_this_accounts_flow_logs() {
    let files = parsed_files();
    let role = resource(&files, "aws_iam_role", "flow_logs");
    let trust = policy_document(role.body(), "assume_role_policy").unwrap();
    for statement in statements(&trust) {
        let conditions = statement["Condition"].as_object();
        for key in ["aws:SourceAccount", "aws:SourceArn"] {
            assert!(
                conditions.is_some_and(|c| c.values().any(|op| !op[key].is_null())),
                "the flow-log role's trust policy has no {key} condition (confused deputy): {statement:#}"
            );
        }
    }
    let mut actions = Vec::new();
    for (_, policy_role, document) in identity_policies(&files) {
        if policy_role.starts_with("aws_iam_role.flow_logs") {
            for statement in statements(&document).into_iter().filter(|s| allows(s)) {
                actions.extend(string_list(&statement["Action"]));
            }
        }
    }
    for needed in [
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "logs:DescribeLogGroups",
        "logs:DescribeLogStreams",
    ] {
        assert!(
            actions.iter().any(|a| iam_action_matches(a, needed)),
            "the flow-log role lacks {needed}, which AWS's flow-log IAM role page requires: {actions:?}"
        );
    }
}

#[test]
fn every_role_a_service_assumes_is_limited_to_this_accounts_resources() {
    // The confused deputy: a role any instance of the service may assume (another account's
    // DLM policy, flow log, ...) unless the trust policy names this account and its resources
    // (IAM User Guide, "The confused deputy problem"). EC2 passes neither key when it
    // assumes an instance profile's role, so instance roles are the exception.
    let files = parsed_files();
    let mut checked = Vec::new();
    let mut problems = Vec::new();
    for role in resources(&files, "aws_iam_role") {
        let trust = policy_document(role.body(), "assume_role_policy").unwrap();
        for statement in statements(&trust) {
            let services = string_list(&statement["Principal"]["Service"]);
            if services.is_empty() || services.iter().all(|s| s == "ec2.amazonaws.com") {
                continue;
            }
            checked.push(address(role));
            let conditions = statement["Condition"].as_object();
            for key in ["aws:SourceAccount", "aws:SourceArn"] {
                if !conditions.is_some_and(|c| c.values().any(|op| !op[key].is_null())) {
                    problems.push(format!(
                        "{} trusts {services:?} without a {key} condition",
                        address(role)
                    ));
                }
            }
        }
    }
    for expected in ["aws_iam_role.flow_logs", "aws_iam_role.snapshots"] {
        assert!(
            checked.iter().any(|c| c == expected),
            "{expected} not found among the service roles: {checked:?}"
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn what_needs_a_permission_waits_for_it() {
    let files = parsed_files();
    let policies: Vec<(String, String, String)> = resources(&files, "aws_iam_role_policy")
        .into_iter()
        .map(|p| {
            (
                address(p),
                attr(p.body(), "role").unwrap().to_string(),
                attr(p.body(), "policy").unwrap().to_string(),
            )
        })
        .collect();
    let mut checked = 0;
    let mut problems = Vec::new();
    // A tag naming a parameter is what tells the instance to read it.
    for tag in resources(&files, "aws_ec2_tag") {
        let value = attr(tag.body(), "value").unwrap().to_string();
        let Some(parameter) = value.strip_suffix(".name") else {
            continue;
        };
        if !parameter.starts_with("aws_ssm_parameter.") {
            continue;
        }
        checked += 1;
        let waits = depends_on(tag.body());
        for (policy, _, document) in &policies {
            if document.contains(&format!("{parameter}.arn")) && !waits.contains(policy) {
                problems.push(format!(
                    "{} tags {parameter} before {policy} lets the instance read it",
                    address(tag)
                ));
            }
        }
    }
    // A flow log delivers with its role's permissions from its first minute.
    for flow_log in resources(&files, "aws_flow_log") {
        let role_arn = attr(flow_log.body(), "iam_role_arn").unwrap().to_string();
        let role = role_arn.split('[').next().unwrap().trim_end_matches(".arn");
        checked += 1;
        let waits = depends_on(flow_log.body());
        for (policy, policy_role, _) in &policies {
            let for_this_role = policy_role.starts_with(&format!("{role}["))
                || policy_role.starts_with(&format!("{role}."));
            if for_this_role && !waits.contains(policy) {
                problems.push(format!(
                    "{} may be created before {policy} gives its role its permissions",
                    address(flow_log)
                ));
            }
        }
    }
    assert!(checked >= 2, "found no password tag or flow log to check");
    assert!(
        problems.is_empty(),
        "add depends_on:\n{}",
        problems.join("\n")
    );
}

/// Paths under `xtask/tests/` that a README cites.
fn cited_test_paths(text: &str) -> Vec<String> {
    text.match_indices("xtask/tests/")
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "_./-".contains(*c))
                .collect::<String>()
                .trim_end_matches('.')
                .to_string()
        })
        .collect()
}

#[test]
fn the_readmes_cite_only_test_files_that_exist() {
    let terraform_readme = terraform_dir().join("README.md");
    let mut cited = Vec::new();
    for readme in [
        terraform_readme.clone(),
        testkit::workspace_root().join("README.md"),
    ] {
        let text = std::fs::read_to_string(&readme).unwrap();
        for path in cited_test_paths(&text) {
            cited.push((readme.display().to_string(), path));
        }
    }
    assert!(
        cited
            .iter()
            .any(|(readme, _)| *readme == terraform_readme.display().to_string()),
        "terraform/README.md cites none of its tests"
    );
    let missing: Vec<String> = cited
        .iter()
        .filter(|(_, path)| !testkit::workspace_root().join(path).exists())
        .map(|(readme, path)| format!("{readme} cites {path}, which does not exist"))
        .collect();
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// The keys of every literal object in `expression`: the object itself, or the objects a
/// `merge(...)` (or a conditional inside it) combines, as tags built from a fixed part and
/// a per-role part are written.
fn literal_object_keys(expression: &Expression) -> Vec<String> {
    match expression {
        Expression::Object(object) => object
            .keys()
            .map(|k| k.to_string().trim_matches('"').to_string())
            .collect(),
        Expression::FuncCall(call) => call.args.iter().flat_map(literal_object_keys).collect(),
        Expression::Conditional(conditional) => [&conditional.true_expr, &conditional.false_expr]
            .into_iter()
            .flat_map(literal_object_keys)
            .collect(),
        Expression::Parenthesis(inner) => literal_object_keys(inner),
        _ => Vec::new(),
    }
}
