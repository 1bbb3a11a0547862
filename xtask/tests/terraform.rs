//! `terraform/` stays formatted, passes checkov with zero failed checks, and keeps its
//! hardening: checked statically with hcl-rs (no provider download needed).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use hcl::{Block, Body, Expression};

fn terraform_dir() -> PathBuf {
    testkit::workspace_root().join("terraform")
}

/// Every `.tf` file, parsed, by file name.
fn parsed_files() -> BTreeMap<String, Body> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(terraform_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "tf") {
            let text = std::fs::read_to_string(&path).unwrap();
            let body = hcl::parse(&text)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            files.insert(name, body);
        }
    }
    assert!(
        files.len() >= 6,
        "expected the terraform files, found {:?}",
        files.keys()
    );
    files
}

fn resources<'a>(files: &'a BTreeMap<String, Body>, kind: &str) -> Vec<&'a Block> {
    files
        .values()
        .flat_map(|body| body.blocks())
        .filter(|b| b.identifier() == "resource" && b.labels()[0].as_str() == kind)
        .collect()
}

fn attr<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes().find(|a| a.key() == key).map(|a| a.expr())
}

fn block<'a>(body: &'a Body, identifier: &str) -> Option<&'a Body> {
    body.blocks()
        .find(|b| b.identifier() == identifier)
        .map(|b| b.body())
}

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
        let Some(Expression::Object(tags)) = attr(body, "tags") else {
            panic!("aws_instance.{name} has no tags object");
        };
        let keys: Vec<String> = tags
            .keys()
            .map(|k| k.to_string().trim_matches('"').to_string())
            .collect();
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
                let allowed =
                    (kind.ends_with("ingress_rule") && cidr == "each.value.cidr" && name == "web")
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
/// variable defaults, and "anywhere" for the default route and HTTPS egress.
fn allowed_literal(file: &str, path: &[String], key: &str, value: &str) -> bool {
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    match (file, path.as_slice(), key) {
        ("variables.tf", ["variable", "vpc_cidr" | "public_subnet_cidr"], "default") => true,
        ("network.tf", ["locals"], "any_ipv4") => value == "\"0.0.0.0/0\"",
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
            "network.tf  any_ipv4",
            "variables.tf public_subnet_cidr default",
            "variables.tf vpc_cidr default"
        ]
    );
}

#[test]
fn allowed_web_cidrs_has_no_default() {
    let files = parsed_files();
    let variable = files["variables.tf"]
        .blocks()
        .find(|b| b.identifier() == "variable" && b.labels()[0].as_str() == "allowed_web_cidrs")
        .expect("variable allowed_web_cidrs");
    assert!(attr(variable.body(), "default").is_none());
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
