//! Every value `terraform/` sends to AWS, checked against the constraint AWS applies to it,
//! since `terraform plan` cannot run here (no provider can be downloaded).
//!
//! terraform/constraints.toml names, for every resource type and every argument the
//! configuration sets to a string, the constraint: from botocore's service models (read at
//! test time) or, where botocore has none, written out with the provider's validator or the
//! API reference as its source. The whole configuration is evaluated offline
//! (terraform_support/offline_plan.rs) for representative layouts and `name`s (the shortest
//! and longest the validation accepts, with hyphens and digits), and every argument's value
//! is checked. A string argument, or a resource type, the table does not list fails the test:
//! a new resource cannot skip the check.

use crate::terraform_support;

use std::collections::{BTreeMap, BTreeSet};

use hcl::Body;
use serde_json::Value;
use terraform_support::aws_constraints::{table_path, Constraints, Rule, Spec};
use terraform_support::offline_plan::{OfflinePlan, Values};
use terraform_support::{
    attr, parsed_files, parsed_files_in, replace_reference, variable, Console,
};

/// One set of variable values the configuration is evaluated with.
struct Sample {
    what: String,
    vars: Vec<(&'static str, String)>,
}

impl Sample {
    fn vars(&self) -> Vec<(&str, &str)> {
        self.vars.iter().map(|(n, v)| (*n, v.as_str())).collect()
    }
}

const CERTIFICATE: &str =
    "arn:aws:acm:eu-west-1:123456789012:certificate/0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d";
/// Grafana's own certificate (another one than the app's: a listener certificate is added).
const GRAFANA_CERTIFICATE: &str =
    "arn:aws:acm:eu-west-1:123456789012:certificate/9f8e7d6c-5b4a-4398-8776-655443322110";

/// The variables without a default, and `name` and `region`.
fn base(name: &str, region: &str) -> Vec<(&'static str, String)> {
    vec![
        ("name", name.to_string()),
        ("region", region.to_string()),
        (
            "ami_ids",
            r#"{app="ami-0123456789abcdef0",prometheus="ami-0123456789abcdef1",loki="ami-0123456789abcdef2",grafana="ami-0123456789abcdef3"}"#
                .to_string(),
        ),
        (
            "allowed_web_cidrs",
            r#"["198.51.100.0/24","203.0.113.7/32"]"#.to_string(),
        ),
    ]
}

/// Every optional resource on: the fleet with HTTPS, flow logs, Loki on S3, both alert
/// channels, every UI exposed, instance types of two families.
fn everything(name: &str, region: &str) -> Vec<(&'static str, String)> {
    let mut vars = base(name, region);
    vars.extend([
        ("app_fleet", "true".to_string()),
        ("app_certificate_arn", CERTIFICATE.to_string()),
        ("grafana_certificate_arn", GRAFANA_CERTIFICATE.to_string()),
        (
            "grafana_host_name",
            "grafana.monitoring-team.example.com".to_string(),
        ),
        ("enable_flow_logs", "true".to_string()),
        ("loki_storage", "s3".to_string()),
        ("loki_s3_from", "2026-01-15".to_string()),
        ("alert_email", "oncall+alerts@example.com".to_string()),
        (
            "alert_webhook_url_parameter",
            "/obstack/alerts/webhook-url".to_string(),
        ),
        (
            "alert_slack_webhook_url_parameter",
            "/obstack/alerts/slack-url".to_string(),
        ),
        ("expose_prometheus", "true".to_string()),
        ("expose_loki", "true".to_string()),
        ("expose_app", "true".to_string()),
        ("expose_alertmanager", "true".to_string()),
        (
            "instance_types",
            r#"{app="t3.micro",prometheus="m7i-flex.large"}"#.to_string(),
        ),
    ]);
    vars
}

/// The single-instance layout: no fleet, everything optional off.
fn single(name: &str, region: &str) -> Vec<(&'static str, String)> {
    let mut vars = base(name, region);
    vars.push(("app_fleet", "false".to_string()));
    vars
}

/// Which of `candidates` the `name` variable's validations accept, evaluated in one console
/// run with the validations' own conditions (`var.name` replaced by each candidate).
fn names_accepted(files: &BTreeMap<String, Body>, candidates: &[String]) -> Vec<bool> {
    let console = Console::new(files);
    let conditions: Vec<String> = variable(files, "name")
        .body()
        .blocks()
        .filter(|b| b.identifier() == "validation")
        .map(|v| attr(v.body(), "condition").unwrap().to_string())
        .collect();
    assert!(
        !conditions.is_empty(),
        "the name variable has no validation"
    );
    let checks: Vec<String> = conditions
        .iter()
        .map(|c| {
            format!(
                "try(({}) == true, false)",
                replace_reference(c, "var.name", "candidate")
            )
        })
        .collect();
    let quoted: Vec<String> = candidates.iter().map(|c| format!("{c:?}")).collect();
    let accepted = console.eval_expr(
        &[],
        &format!(
            "[for candidate in [{}] : alltrue([{}])]",
            quoted.join(", "),
            checks.join(", ")
        ),
    );
    accepted
        .as_array()
        .unwrap()
        .iter()
        .map(|ok| ok.as_bool() == Some(true))
        .collect()
}

/// The shortest and longest `name` the variable's validations accept (every length up to 64).
fn name_lengths(files: &BTreeMap<String, Body>) -> (usize, usize) {
    let candidates: Vec<String> = (1..=64)
        .map(|n| format!("a{}", "b".repeat(n - 1)))
        .collect();
    let lengths: Vec<usize> = names_accepted(files, &candidates)
        .into_iter()
        .zip(&candidates)
        .filter(|(ok, _)| *ok)
        .map(|(_, c)| c.len())
        .collect();
    let (Some(shortest), Some(longest)) = (lengths.first(), lengths.last()) else {
        panic!("the name validation accepts no name of letters")
    };
    (*shortest, *longest)
}

/// The layouts and names every value is checked for: the shortest and longest names the
/// validation accepts, with hyphens and digits, in four regions of three partitions, with
/// every optional resource and without the fleet, with zones chosen and named.
fn samples(files: &BTreeMap<String, Body>) -> Vec<Sample> {
    let (shortest, longest) = name_lengths(files);
    let short = format!("a{}", "b".repeat(shortest - 1));
    let short_hyphen = format!("a{}", "-".repeat(shortest - 1));
    let digits: String = "a"
        .chars()
        .chain("-1-2-3-4-5-6-7-8-9".chars().cycle())
        .take(longest)
        .collect();
    let hyphens = format!("a{}", "-".repeat(longest - 1));
    let long_letters = format!(
        "z{}",
        "y9".repeat(longest)
            .chars()
            .take(longest - 1)
            .collect::<String>()
    );
    let mut named_zones = everything(&hyphens, "us-gov-west-1");
    named_zones.push(("availability_zone", "us-gov-west-1b".to_string()));
    named_zones.push(("second_availability_zone", "us-gov-west-1c".to_string()));
    vec![
        Sample {
            what: format!("everything, name = {short:?}, eu-west-1"),
            vars: everything(&short, "eu-west-1"),
        },
        Sample {
            what: format!("everything, name = {digits:?}, ap-southeast-2"),
            vars: everything(&digits, "ap-southeast-2"),
        },
        Sample {
            what: format!("everything, zones named, name = {hyphens:?}, us-gov-west-1"),
            vars: named_zones,
        },
        Sample {
            what: format!("no fleet, name = {long_letters:?}, cn-north-1"),
            vars: single(&long_letters, "cn-north-1"),
        },
        Sample {
            what: format!("no fleet, name = {short_hyphen:?}, eu-west-1"),
            vars: single(&short_hyphen, "eu-west-1"),
        },
    ]
}

/// A value the check skips: a string AWS made itself (an id or ARN passed on verbatim).
fn without_aws_made(value: &Value, aws_made: &BTreeSet<String>) -> Value {
    match value {
        Value::String(s) if aws_made.contains(s) => Value::Null,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| without_aws_made(v, aws_made))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Whether a value holds a string (or a map, whose keys are strings) to check.
fn holds_text(value: &Value) -> bool {
    match value {
        Value::String(_) => true,
        Value::Array(items) => items.iter().any(holds_text),
        Value::Object(_) => true,
        _ => false,
    }
}

fn shown(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 160 {
        format!("{}...", text.chars().take(160).collect::<String>())
    } else {
        text
    }
}

/// What the check found: every problem, and which table entries the samples used.
struct Findings {
    problems: Vec<String>,
    used: BTreeSet<(String, String)>,
    created: BTreeSet<String>,
}

/// Checks every argument of the configuration in `files` against `constraints`, for each
/// sample: the values AWS would refuse, and the string arguments and resource types the
/// table lacks (with where to add them).
fn check(
    files: &BTreeMap<String, Body>,
    constraints: &Constraints,
    samples: &[Sample],
) -> Findings {
    let plan = OfflinePlan::new(files, &constraints.table.returned);
    let table = table_path();
    let mut problems = BTreeSet::new();
    let mut used = BTreeSet::new();
    let mut created = BTreeSet::new();
    for node in &plan.nodes {
        if !constraints.table.resource.contains_key(&node.kind) {
            problems.insert(format!(
                "terraform/{}: {} is a {}, which {} does not list: add [resource.{}] with a constraint for each string argument it sets and `tags` (a tag rule, or {{ not_sent = \"why\" }} for a type without tags)",
                node.file, node.address, node.kind, table.display(), quoted(&node.kind)
            ));
        }
    }
    for sample in samples {
        let vars = sample.vars();
        let failed = plan.failed_preconditions(&vars);
        assert!(
            failed.is_empty(),
            "sample ({}) fails preconditions, so plan would stop; fix the sample:\n{}",
            sample.what,
            failed.join("\n")
        );
        let values: Values = plan.evaluate(&vars);
        let default_tags: Option<Value> = plan
            .arguments
            .iter()
            .position(|a| a.address == "provider.aws" && a.path == "default_tags.tags")
            .and_then(|i| values.by_argument[i].first().cloned());
        for node in &plan.nodes {
            if plan_instances(&plan, &values, &node.address) > 0 {
                created.insert(node.address.clone());
            }
        }
        let mut own_tags: BTreeSet<String> = BTreeSet::new();
        for (argument, argument_values) in plan.arguments.iter().zip(&values.by_argument) {
            let Some(kind_table) = constraints.table.resource.get(&argument.kind) else {
                continue;
            };
            let spec = kind_table.get(&argument.path);
            for value in argument_values {
                let value = without_aws_made(value, &values.aws_made);
                if !holds_text(&value) {
                    continue;
                }
                let Some(spec) = spec else {
                    problems.insert(format!(
                        "terraform/{}: {}.{} = {} reaches AWS, but [resource.{}] in {} has no \"{}\": add \"{}\" = {{ botocore = \"<service> <Operation> <Member.Path>\" }}, or a pattern/min/max/one_of with its source (the provider's validator or the API reference)",
                        argument.file, argument.address, argument.path, shown(&value),
                        quoted(&argument.kind), table.display(), argument.path, argument.path
                    ));
                    continue;
                };
                used.insert((argument.kind.clone(), argument.path.clone()));
                if constraints.not_sent(spec).is_some() {
                    continue;
                }
                // What AWS receives as tags: the provider's default tags, then the resource's.
                let value = match (&argument.path[..], &default_tags, &value) {
                    ("tags", Some(Value::Object(defaults)), Value::Object(own)) => {
                        own_tags.insert(argument.address.clone());
                        let mut merged = defaults.clone();
                        merged.extend(own.clone());
                        Value::Object(merged)
                    }
                    _ => value,
                };
                for problem in constraints.problems(spec, &value) {
                    problems.insert(format!(
                        "terraform/{}: {}.{} = {} ({}): {problem}",
                        argument.file,
                        argument.address,
                        argument.path,
                        shown(&value),
                        sample.what
                    ));
                }
            }
        }
        // A taggable resource without tags of its own still gets the default tags.
        for node in &plan.nodes {
            if own_tags.contains(&node.address)
                || plan_instances(&plan, &values, &node.address) == 0
            {
                continue;
            }
            let Some(spec) = constraints
                .table
                .resource
                .get(&node.kind)
                .and_then(|t| t.get("tags"))
            else {
                if constraints.table.resource.contains_key(&node.kind)
                    && node.kind.starts_with("aws_")
                {
                    problems.insert(format!(
                        "terraform/{}: [resource.{}] in {} has no `tags`: the provider's default tags reach every taggable resource; add tags = <a tag rule> (or {{ not_sent = \"why\" }} if it takes no tags)",
                        node.file, quoted(&node.kind), table.display()
                    ));
                }
                continue;
            };
            used.insert((node.kind.clone(), "tags".to_string()));
            if constraints.not_sent(spec).is_some() {
                continue;
            }
            if let Some(defaults) = &default_tags {
                for problem in constraints.problems(spec, defaults) {
                    problems.insert(format!(
                        "terraform/versions.tf: the provider's default tags on {} ({}): {problem}",
                        node.address, sample.what
                    ));
                }
            }
        }
    }
    Findings {
        problems: problems.into_iter().collect(),
        used,
        created,
    }
}

fn plan_instances(plan: &OfflinePlan, values: &Values, address: &str) -> usize {
    if address.starts_with("provider.") {
        return 1;
    }
    plan.instance_count(values, address)
}

/// A kind as a TOML key (`data.aws_partition` needs quotes).
fn quoted(kind: &str) -> String {
    if kind.contains('.') {
        format!("\"{kind}\"")
    } else {
        kind.to_string()
    }
}

#[test]
fn every_string_terraform_sends_to_aws_is_one_aws_accepts() {
    let files = parsed_files();
    let constraints = Constraints::load();
    let samples = samples(&files);
    let findings = check(&files, &constraints, &samples);
    assert!(
        findings.problems.is_empty(),
        "{} value(s) AWS would refuse or not listed in {}:\n{}",
        findings.problems.len(),
        table_path().display(),
        findings.problems.join("\n")
    );

    // Every resource is created by some sample (or its values went unchecked), and every
    // entry of the table is still used (a stale one would hide a renamed argument).
    let plan_nodes = terraform_support::offline_plan::nodes(&files);
    let unchecked: Vec<&String> = plan_nodes
        .iter()
        .map(|n| &n.address)
        .filter(|a| !findings.created.contains(*a))
        .collect();
    assert!(
        unchecked.is_empty(),
        "no sample layout creates {unchecked:?}: add one to samples() in this file"
    );
    let mut stale = Vec::new();
    for (kind, arguments) in &constraints.table.resource {
        for path in arguments.keys() {
            if !findings.used.contains(&(kind.clone(), path.clone())) {
                stale.push(format!("[resource.{}] \"{path}\"", quoted(kind)));
            }
        }
    }
    let kinds: BTreeSet<&str> = plan_nodes.iter().map(|n| n.kind.as_str()).collect();
    for kind in constraints.table.returned.keys() {
        if !kinds.contains(kind.as_str()) {
            stale.push(format!("[returned.{}]", quoted(kind)));
        }
    }
    assert!(
        stale.is_empty(),
        "{} lists what the configuration no longer sets (remove it): {stale:?}",
        table_path().display()
    );
}

/// Names that begin like a prefix some AWS value may not start with (every `not_prefix` of
/// the table: `aws:`, `sg-`, `alias/aws`, `xn--`, ...): `name` is embedded at the start of
/// many values, so such a name could make one of them reserved.
fn reserved_prefix_names(constraints: &Constraints) -> Vec<String> {
    fn prefixes(spec: &Spec, constraints: &Constraints, out: &mut Vec<String>) {
        match spec {
            Spec::Named(name) => rule_prefixes(&constraints.table.rule[name], constraints, out),
            Spec::Inline(rule) => rule_prefixes(rule, constraints, out),
            Spec::All(all) => all.iter().for_each(|s| prefixes(s, constraints, out)),
        }
    }
    fn rule_prefixes(rule: &Rule, constraints: &Constraints, out: &mut Vec<String>) {
        out.extend(rule.not_prefix.iter().flatten().cloned());
        for spec in [&rule.keys, &rule.values].into_iter().flatten() {
            prefixes(spec, constraints, out);
        }
    }
    let mut found = Vec::new();
    for arguments in constraints.table.resource.values() {
        for spec in arguments.values() {
            prefixes(spec, constraints, &mut found);
        }
    }
    let mut names = BTreeSet::new();
    for prefix in found {
        let lower = prefix.to_lowercase();
        for run in
            lower.split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
        {
            if run.is_empty() {
                continue;
            }
            names.insert(run.to_string());
            names.insert(format!("{run}x"));
            names.insert(format!("{run}-x"));
        }
    }
    names.into_iter().collect()
}

#[test]
fn no_name_the_validation_accepts_makes_a_value_start_with_a_reserved_prefix() {
    let files = parsed_files();
    let constraints = Constraints::load();
    let candidates = reserved_prefix_names(&constraints);
    assert!(
        candidates.iter().any(|c| c == "aws") && candidates.iter().any(|c| c == "sg-x"),
        "the table's reserved prefixes were not found: {candidates:?}"
    );
    let accepted: Vec<&String> = candidates
        .iter()
        .zip(names_accepted(&files, &candidates))
        .filter(|(_, ok)| *ok)
        .map(|(c, _)| c)
        .collect();
    let samples: Vec<Sample> = accepted
        .iter()
        .map(|name| Sample {
            what: format!("everything, name = {name:?}, eu-west-1"),
            vars: everything(name, "eu-west-1"),
        })
        .collect();
    let findings = check(&files, &constraints, &samples);
    assert!(
        findings.problems.is_empty(),
        "names the validation accepts ({accepted:?}) make values AWS refuses; refuse them in the name validation (variables.tf):\n{}",
        findings.problems.join("\n")
    );
}

/// A copy of terraform/ with `edit` applied to one file, checked with the first samples.
fn check_mutation(file: &str, from: &str, to: &str, samples: &[Sample]) -> Vec<String> {
    let source = terraform_support::terraform_dir();
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let target = copy.path().join(file);
    let text = std::fs::read_to_string(&target).unwrap();
    assert!(
        text.contains(from),
        "{file} no longer contains {from:?}: update the mutation"
    );
    std::fs::write(&target, text.replacen(from, to, 1)).unwrap();
    let files = parsed_files_in(copy.path());
    let constraints = Constraints::load_from(&copy.path().join("constraints.toml"));
    check(&files, &constraints, samples).problems
}

fn assert_caught(problems: &[String], needle: &str, mutation: &str) {
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "{mutation}: the check did not report {needle:?}; it found:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_check_refuses_each_kind_of_mistake() {
    let files = parsed_files();
    // The longest name with every optional resource: the most that can go wrong at once.
    let all = samples(&files);
    let samples = &all[1..2];

    // The snapshot policy's description before the fix: DLM refuses the colon.
    let problems = check_mutation(
        "volumes.tf",
        "\"obstack ${var.name} daily snapshots of the data volumes\"",
        "\"obstack ${var.name}: daily snapshots of the data volumes\"",
        samples,
    );
    assert_caught(
        &problems,
        "aws_dlm_lifecycle_policy.data.description",
        "a colon in the DLM description",
    );

    // A description with an apostrophe: EC2 refuses it in a security group.
    let problems = check_mutation(
        "security.tf",
        "description = \"obstack Prometheus\"",
        "description = \"obstack's Prometheus\"",
        samples,
    );
    assert_caught(
        &problems,
        "aws_security_group.prometheus.description",
        "an apostrophe",
    );

    // A name over the limit: the load balancer's, cut too late.
    let problems = check_mutation(
        "fleet.tf",
        "substr(var.name, 0, 21)",
        "substr(var.name, 0, 28)",
        samples,
    );
    assert_caught(
        &problems,
        "aws_lb.app.name",
        "a load balancer name over 32 characters",
    );
    assert_caught(
        &problems,
        "aws_lb_target_group.app.name",
        "a target group name over 32 characters",
    );

    // A path without its slash: the health check's.
    let problems = check_mutation(
        "fleet.tf",
        "path                = \"/health\"",
        "path                = \"health\"",
        samples,
    );
    assert_caught(
        &problems,
        "aws_lb_target_group.app.health_check.path",
        "a health check path without its slash",
    );

    // A new resource type the table does not list, and a new argument of a listed one.
    let problems = check_mutation(
        "secrets.tf",
        "resource \"random_password\"",
        "resource \"aws_sqs_queue\" \"probe\" {\n  name = \"${var.name}-probe\"\n}\n\nresource \"aws_ssm_parameter\" \"probe\" {\n  name  = \"/obstack/${var.name}/probe\"\n  type  = \"String\"\n  value = \"probe\"\n  tier  = \"Standard\"\n}\n\nresource \"random_password\"",
        samples,
    );
    assert_caught(
        &problems,
        "add [resource.aws_sqs_queue]",
        "a resource type the table lacks",
    );
    assert_caught(
        &problems,
        "aws_ssm_parameter.probe.tier",
        "an argument the table lacks",
    );
}

#[test]
fn the_constraint_checks_follow_aws_rules() {
    let constraints = Constraints::load();
    let named = |name: &str| Spec::Named(name.to_string());
    let text = |s: &str| Value::String(s.to_string());
    // botocore's DLM description pattern, read from the model at test time.
    let dlm = Spec::Inline(Box::new(Rule {
        botocore: Some("dlm CreateLifecyclePolicy Description".to_string()),
        ..Default::default()
    }));
    assert!(constraints
        .problems(&dlm, &text("obstack prod daily snapshots"))
        .is_empty());
    assert!(!constraints
        .problems(&dlm, &text("obstack prod: daily snapshots"))
        .is_empty());
    // Java's look-ahead and \p{all} in botocore's patterns, translated.
    assert!(constraints.matches(r"^(?!aws:)[a-zA-Z+-=._:/]+$", "obstack:project"));
    assert!(!constraints.matches(r"^(?!aws:)[a-zA-Z+-=._:/]+$", "aws:project"));
    assert!(constraints.matches(r"[\p{all}]*", "anything: at all'"));
    // A policy document's grammar and the ARNs built in it.
    let policy = |document: &str| terraform_support::aws_constraints::policy_problems(document);
    assert!(policy(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ec2:CreateTags","Resource":"arn:aws:ec2:eu-west-1::snapshot/*"}]}"#).is_empty());
    assert!(!policy(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ec2:CreateTags","Resource":"arn:aws:ec2:eu-west-1:snapshot/*"}]}"#).is_empty());
    assert!(!policy(r#"{"Version":"2012-10-17","Statement":[{"Sid":"Tls only","Effect":"Deny","Principal":"*","Action":"SNS:Publish","Resource":"*"}]}"#).is_empty());
    // Every named rule of the table is usable on a plain value without panicking.
    for name in constraints.table.rule.keys() {
        let _ = constraints.problems(&named(name), &text("x"));
    }
}
