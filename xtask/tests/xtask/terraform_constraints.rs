//! The values `terraform/` sends to AWS, checked against AWS's documented constraints, which
//! the provider does not check and `terraform plan` cannot run here to show (no provider can
//! be downloaded). The configuration's own expressions are evaluated by an offline
//! `terraform console` (see terraform_support): the variables' validations on good and bad
//! sample values, and the names and descriptions the security groups and rules would get.
//! The sources of the constraints are listed in terraform/README.md.

use crate::terraform_support;

use std::collections::BTreeSet;

use hcl::{Block, Body, Expression};
use serde_json::Value;
use terraform_support::{
    attr, parsed_files, references, replace_reference, resources, variable, Console, Outcome,
};

/// Why EC2 would refuse `text` as a security group name or description or a rule
/// description (CreateSecurityGroup GroupName and Description; IpRange, UserIdGroupPair
/// and the security group rule Description): at most 255 characters of a-z, A-Z, 0-9,
/// spaces and `._-:/()#,@[]+=&;{}!$*`.
fn ec2_text_problem(text: &str) -> Option<String> {
    const PUNCTUATION: &str = "._-:/()#,@[]+=&;{}!$*";
    let length = text.chars().count();
    if length > 255 {
        return Some(format!("{length} characters, EC2 allows 255"));
    }
    let refused: Vec<char> = text
        .chars()
        .filter(|c| !(c.is_ascii_alphanumeric() || *c == ' ' || PUNCTUATION.contains(*c)))
        .collect();
    if refused.is_empty() {
        None
    } else {
        Some(format!("characters EC2 refuses: {refused:?}"))
    }
}

/// Values for the variables that have no default, with every UI exposed so that every
/// security group rule exists, and `name` as given.
fn deployment_vars(name: &str) -> Vec<(&'static str, String)> {
    vec![
        ("region", "eu-west-1".to_string()),
        (
            "ami_ids",
            r#"{app="ami-0123456789abcdef0",prometheus="ami-0123456789abcdef1",loki="ami-0123456789abcdef2",grafana="ami-0123456789abcdef3"}"#
                .to_string(),
        ),
        (
            "allowed_web_cidrs",
            r#"["198.51.100.0/24","203.0.113.7/32"]"#.to_string(),
        ),
        ("expose_prometheus", "true".to_string()),
        ("expose_loki", "true".to_string()),
        ("expose_app", "true".to_string()),
        ("name", name.to_string()),
    ]
}

fn as_refs<'a>(vars: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    vars.iter().map(|(n, v)| (*n, v.as_str())).collect()
}

/// Values the configuration sends to EC2, as (where, value).
type Texts = Vec<(String, Value)>;

/// Every security group name (first) and description and every rule description (second)
/// the configuration would send to EC2 with `name`.
fn ec2_texts(
    console: &Console,
    files: &std::collections::BTreeMap<String, Body>,
    name: &str,
) -> (Texts, Texts) {
    let vars = deployment_vars(name);
    let vars = as_refs(&vars);
    let mut names = Vec::new();
    let mut descriptions = Vec::new();
    let evaluate =
        |out: &mut Vec<(String, Value)>, resource: &Block, key: &str, expr: &Expression| {
            let at = format!("{}.{key}", terraform_support::address(resource));
            for value in console.per_instance(&vars, resource, expr) {
                out.push((at.clone(), value));
            }
        };
    for kind in ["aws_security_group", "aws_default_security_group"] {
        for group in resources(files, kind) {
            for key in ["name", "name_prefix"] {
                if let Some(expr) = attr(group.body(), key) {
                    evaluate(&mut names, group, key, expr);
                }
            }
            if let Some(expr) = attr(group.body(), "description") {
                evaluate(&mut descriptions, group, "description", expr);
            }
            for inline in group
                .body()
                .blocks()
                .filter(|b| b.identifier() == "ingress" || b.identifier() == "egress")
            {
                if let Some(expr) = attr(inline.body(), "description") {
                    evaluate(&mut descriptions, group, "inline rule description", expr);
                }
            }
        }
    }
    for kind in [
        "aws_vpc_security_group_ingress_rule",
        "aws_vpc_security_group_egress_rule",
        "aws_security_group_rule",
    ] {
        for rule in resources(files, kind) {
            if let Some(expr) = attr(rule.body(), "description") {
                evaluate(&mut descriptions, rule, "description", expr);
            }
        }
    }
    (names, descriptions)
}

#[test]
fn every_security_group_name_and_description_and_rule_description_is_one_ec2_accepts() {
    let files = parsed_files();
    let console = Console::new(&files);
    let longest = format!("a{}", "b".repeat(30));
    let mut problems = Vec::new();
    for name in ["obstack", longest.as_str()] {
        assert!(
            console.accepts("name", name),
            "sample name {name:?} is refused by the validation; update the test's samples"
        );
        let (names, descriptions) = ec2_texts(&console, &files, name);
        assert!(
            names.len() >= 4,
            "expected a name for each role's security group, found {names:?}"
        );
        assert!(
            descriptions.len() > names.len(),
            "expected group and rule descriptions, found {descriptions:?}"
        );
        for (at, value) in names.iter().chain(&descriptions) {
            match value.as_str() {
                Some(text) => {
                    if let Some(problem) = ec2_text_problem(text) {
                        problems.push(format!("{at} = {text:?} (name = {name:?}): {problem}"));
                    }
                }
                None => problems.push(format!("{at} is not a string: {value}")),
            }
        }
    }
    assert!(
        problems.is_empty(),
        "EC2 would refuse these (CreateSecurityGroup; IpRange/UserIdGroupPair Description):\n{}",
        problems.join("\n")
    );
}

#[test]
fn no_name_the_validation_accepts_makes_a_security_group_name_starting_with_sg() {
    let files = parsed_files();
    let console = Console::new(&files);
    let samples = [
        "sg-x",
        "sg-",
        "sg-prod",
        "sg-0a1b2c3d",
        "sgx",
        "sg",
        "prod",
        "obstack",
        "x-sg-",
    ];
    let mut accepted = Vec::new();
    let mut problems = Vec::new();
    for name in samples {
        if !console.accepts("name", name) {
            continue;
        }
        accepted.push(name);
        let (names, _) = ec2_texts(&console, &files, name);
        assert!(!names.is_empty(), "no security group name found");
        for (at, value) in names {
            let text = value.as_str().unwrap_or_default().to_string();
            if text.to_ascii_lowercase().starts_with("sg-") {
                problems.push(format!(
                    "name = {name:?} is accepted and makes {at} = {text:?}, which CreateSecurityGroup refuses (starts with sg-)"
                ));
            }
            if let Some(problem) = ec2_text_problem(&text) {
                problems.push(format!("name = {name:?}: {at} = {text:?}: {problem}"));
            }
        }
    }
    for ordinary in ["prod", "obstack"] {
        assert!(
            accepted.contains(&ordinary),
            "the name validation refuses the ordinary name {ordinary:?}"
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Runs the variable's validations on every sample: the good ones must pass, the bad ones
/// must be refused by a validation (not accepted, nor left to break the plan later).
fn check_samples(console: &Console, variable: &str, good: &[&str], bad: &[&str]) {
    let mut problems = Vec::new();
    for sample in good {
        let outcome = console.validate(&[(variable, sample)]);
        if outcome != Outcome::Accepted {
            problems.push(format!("{variable} = {sample} is valid, but: {outcome:?}"));
        }
    }
    for sample in bad {
        match console.validate(&[(variable, sample)]) {
            Outcome::Refused(refused) if refused.contains(variable) => {}
            Outcome::AcceptedThenBroken(error) => problems.push(format!(
                "{variable} = {sample} passes the validations, then breaks the plan: {}",
                error.lines().next().unwrap_or_default()
            )),
            other => problems.push(format!(
                "{variable} = {sample} is accepted ({other:?}) but AWS would refuse it"
            )),
        }
    }
    assert!(
        problems.is_empty(),
        "the validations of {variable}:\n{}",
        problems.join("\n")
    );
}

#[test]
fn vpc_cidr_must_be_a_canonical_ipv4_cidr_from_16_to_28() {
    let console = Console::new(&parsed_files());
    check_samples(
        &console,
        "vpc_cidr",
        &[
            "10.42.0.0/16",
            "172.16.0.0/16",
            "192.168.0.0/20",
            "10.0.0.0/28",
        ],
        &[
            "10.0.0.0/8",     // larger than AWS's largest VPC, /16
            "10.0.0.0/15",    //
            "10.0.0.0/29",    // smaller than AWS's smallest VPC, /28
            "10.0.0.0/32",    //
            "203.0.113.7/24", // host bits set: not a network address
            "10.42.0.1/16",   //
            "10.42.1.0/16",   //
            "10.42.0.0",      // no prefix length
            "not-a-cidr",     //
            "fd00:1234::/56", // not IPv4
        ],
    );
}

#[test]
fn public_subnet_cidr_must_be_a_canonical_ipv4_cidr_from_16_to_28() {
    let console = Console::new(&parsed_files());
    check_samples(
        &console,
        "public_subnet_cidr",
        &["10.42.1.0/24", "10.42.0.0/16", "10.42.255.240/28"],
        &[
            "10.42.0.0/15",   // larger than AWS's largest subnet, /16
            "10.42.1.0/29",   // smaller than AWS's smallest subnet, /28
            "10.42.1.7/24",   // host bits set
            "203.0.113.7/24", //
            "10.42.1.0",      // no prefix length
            "subnet",         //
            "fd00:1234::/64", // not IPv4
        ],
    );
}

#[test]
fn second_public_subnet_cidr_must_be_a_canonical_ipv4_cidr_from_16_to_28() {
    let console = Console::new(&parsed_files());
    check_samples(
        &console,
        "second_public_subnet_cidr",
        &["10.42.2.0/24", "10.42.128.0/17", "10.42.255.240/28"],
        &[
            "10.42.0.0/15",   // larger than AWS's largest subnet, /16
            "10.42.2.0/29",   // smaller than AWS's smallest subnet, /28
            "10.42.2.7/24",   // host bits set
            "10.42.2.0",      // no prefix length
            "subnet",         //
            "fd00:1234::/64", // not IPv4
        ],
    );
}

#[test]
fn allowed_web_cidrs_must_be_canonical_and_distinct() {
    let console = Console::new(&parsed_files());
    check_samples(
        &console,
        "allowed_web_cidrs",
        &[
            "[]", // the default: nothing published, every UI through a tunnel
            r#"["203.0.113.7/32"]"#,
            r#"["198.51.100.0/24","203.0.113.7/32"]"#,
        ],
        &[
            r#"["203.0.113.7/24"]"#,                    // host bits set
            r#"["198.51.100.0/24","198.51.100.1/24"]"#, //
            r#"["203.0.113.7/32","203.0.113.7/32"]"#,   // a duplicate for_each key
            r#"["198.51.100.0/24","203.0.113.7/32","198.51.100.0/24"]"#,
            r#"["0.0.0.0/0"]"#, // the whole internet
            r#"["my-laptop"]"#, //
        ],
    );
}

#[test]
fn every_cidr_variable_has_its_validations_sampled() {
    let files = parsed_files();
    let cidr_variables: BTreeSet<&str> = terraform_support::top_blocks(&files, "variable")
        .iter()
        .map(|v| v.labels()[0].as_str())
        .filter(|name| name.contains("cidr"))
        .collect();
    assert_eq!(
        cidr_variables,
        BTreeSet::from([
            "allowed_web_cidrs",
            "public_subnet_cidr",
            "second_public_subnet_cidr",
            "vpc_cidr"
        ]),
        "a new CIDR variable needs good and bad samples in this file"
    );
}

#[test]
fn the_public_subnet_must_lie_inside_the_vpc() {
    let files = parsed_files();
    let plan = terraform_support::offline_plan(&files);
    // Whether plan would go on as far as the first subnet is concerned (without the fleet:
    // its second subnet, which must also stay apart from this one, and its /27 minimum are
    // sampled in terraform_fleet.rs).
    let plan_accepts = |vpc: &str, subnet: &str| -> bool {
        let mut vars = deployment_vars("obstack");
        vars.extend([
            ("app_fleet", "false".to_string()),
            ("vpc_cidr", vpc.to_string()),
            ("public_subnet_cidr", subnet.to_string()),
        ]);
        !plan
            .failed_preconditions(&as_refs(&vars))
            .iter()
            .any(|m| m.starts_with("aws_subnet.public"))
    };
    let mut problems = Vec::new();
    for (vpc, subnet) in [
        ("10.42.0.0/16", "10.42.1.0/24"),
        ("10.42.0.0/16", "10.42.0.0/16"),
        ("10.42.0.0/16", "10.42.255.240/28"),
        ("10.42.0.0/24", "10.42.0.0/24"),
    ] {
        if !plan_accepts(vpc, subnet) {
            problems.push(format!("subnet {subnet} in VPC {vpc} is refused"));
        }
    }
    for (vpc, subnet) in [
        ("10.42.0.0/16", "10.43.1.0/24"), // another network
        ("10.42.0.0/16", "10.4.0.0/24"),  //
        ("10.42.0.0/24", "10.42.0.0/16"), // larger than the VPC
        ("10.42.0.0/24", "10.42.1.0/28"), // next to it
    ] {
        if plan_accepts(vpc, subnet) {
            problems.push(format!(
                "subnet {subnet} in VPC {vpc} passes every validation and precondition, but CreateSubnet refuses a CIDR outside its VPC"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A Packer variable's default, from a `.pkr.hcl` file of images/common/packer.
fn packer_default(file: &str, name: &str) -> Expression {
    let path = testkit::workspace_root()
        .join("images/common/packer")
        .join(file);
    let body = hcl::parse(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
    let v = body
        .blocks()
        .find(|b| b.identifier() == "variable" && b.labels()[0].as_str() == name)
        .unwrap_or_else(|| panic!("{}: no variable {name}", path.display()));
    attr(v.body(), "default")
        .unwrap_or_else(|| panic!("{}: variable {name} has no default", path.display()))
        .clone()
}

/// Every attribute `key` anywhere in `body`, with the blocks it is nested in.
fn attributes_named(
    body: &Body,
    key: &str,
    path: &mut Vec<String>,
    out: &mut Vec<(String, String)>,
) {
    if let Some(expr) = attr(body, key) {
        out.push((path.join("."), expr.to_string()));
    }
    for b in body.blocks() {
        path.push(b.identifier().to_string());
        attributes_named(b.body(), key, path, out);
        path.pop();
    }
}

#[test]
fn the_smallest_root_volume_allowed_is_at_least_the_amis() {
    // The AMIs' root volume: Packer's volume_size, which the template's block device uses.
    let ami_gib = match packer_default("variables.pkr.hcl", "volume_size") {
        Expression::Number(n) => n.as_u64().expect("volume_size is a whole number"),
        other => panic!("volume_size's default is not a number: {other}"),
    };
    let template = testkit::workspace_root().join("images/common/packer/image.pkr.hcl");
    let template = hcl::parse(&std::fs::read_to_string(&template).unwrap()).unwrap();
    let mut sizes = Vec::new();
    attributes_named(&template, "volume_size", &mut Vec::new(), &mut sizes);
    assert!(
        !sizes.is_empty() && sizes.iter().all(|(_, v)| v == "var.volume_size"),
        "the Packer template's root volume is not var.volume_size: {sizes:?}"
    );

    let files = parsed_files();
    let console = Console::new(&files);
    let validations: Vec<String> = variable(&files, "root_volume_size_gb")
        .body()
        .blocks()
        .filter(|b| b.identifier() == "validation")
        .map(|v| attr(v.body(), "condition").unwrap().to_string())
        .collect();
    assert!(
        !validations.is_empty(),
        "root_volume_size_gb has no validation"
    );
    // Every size up to 17407 GiB (gp3's largest is 16 TiB): the validations with the size
    // substituted, in blocks of 1024 (the most `range` makes at once).
    let checks: Vec<String> = validations
        .iter()
        .map(|c| {
            assert!(
                c.contains("var.root_volume_size_gb"),
                "a root_volume_size_gb validation that does not read it: {c}"
            );
            format!(
                "try(({}) == true, false)",
                replace_reference(c, "var.root_volume_size_gb", "(high * 1024 + low)")
            )
        })
        .collect();
    let allowed = console.eval(
        &[],
        &format!(
            "flatten([for high in range(17) : [for low in range(1024) : alltrue([{}])]])",
            checks.join(", ")
        ),
    );
    let allowed: Vec<bool> = allowed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_bool().unwrap())
        .collect();
    let smallest = allowed
        .iter()
        .position(|ok| *ok)
        .expect("root_volume_size_gb accepts no size at all");
    // The substitution agrees with Terraform's own validation at the boundary.
    assert!(console.accepts("root_volume_size_gb", &smallest.to_string()));
    if smallest > 0 {
        assert!(!console.accepts("root_volume_size_gb", &(smallest - 1).to_string()));
    }
    assert!(
        smallest as u64 >= ami_gib,
        "root_volume_size_gb accepts {smallest} GiB, but the AMIs' root volume is {ami_gib} GiB \
         (images/common/packer/variables.pkr.hcl volume_size): RunInstances refuses a volume \
         smaller than its snapshot"
    );
    let default = attr(variable(&files, "root_volume_size_gb").body(), "default")
        .expect("root_volume_size_gb has a default")
        .to_string();
    assert!(console.accepts("root_volume_size_gb", &default));
}

#[test]
fn the_console_helpers_replace_whole_references_and_match_iam_actions() {
    assert_eq!(
        replace_reference(
            "${each.value.role} each.values x.each.value each.value",
            "each.value",
            "v"
        ),
        "${v.role} each.values x.each.value v"
    );
    assert!(references("a = var.x", "var"));
    assert!(!references("a = myvar.x", "var"));
    assert!(terraform_support::iam_action_matches(
        "ssm:Get*",
        "ssm:GetParameter"
    ));
    assert!(terraform_support::iam_action_matches(
        "SSM:getparameter?",
        "ssm:GetParameters"
    ));
    assert!(!terraform_support::iam_action_matches(
        "ssm:GetParameters",
        "ssm:GetParameter"
    ));
    assert_eq!(
        ec2_text_problem("Promtail pushes the app logs to Loki"),
        None
    );
    assert!(ec2_text_problem("Promtail pushes the app's logs to Loki").is_some());
    assert!(ec2_text_problem(&"x".repeat(256)).is_some());
}
