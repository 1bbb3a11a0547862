//! The app fleet (issue 19, `terraform/fleet.tf`): a hardened launch template whose launch
//! tags are exactly what the boot agent and Prometheus' discovery read, an Auto Scaling group
//! whose sizes Auto Scaling accepts and that rolls a new AMI launch-before-terminate behind
//! the load balancer's health check, a load balancer reached only from allowed_web_cidrs
//! (HTTP, or HTTPS with HTTP redirected), the app's port open to that load balancer only,
//! `ec2:DescribeInstances` for Prometheus alone, and the single-instance layout unchanged
//! with `app_fleet = false`. Read with hcl-rs; what needs no provider (counts, tags, listener
//! actions, rules, validations, preconditions) is evaluated by an offline `terraform console`.

use crate::terraform_support;

use std::collections::{BTreeMap, BTreeSet};

use hcl::{Block, Body, Expression};
use serde_json::{json, Value};
use terraform_support::offline_plan::OfflinePlan;
use terraform_support::{
    address, allow_statements, attr, block, iam_action_matches, instance_count_expr, local_expr,
    parsed_files, replace_reference, resource, resources, string_list, top_blocks, variable,
    Console, Outcome,
};

/// The variables without a default, so the console can evaluate anything.
const DEPLOYMENT: [(&str, &str); 3] = [
    ("region", "eu-west-1"),
    (
        "ami_ids",
        r#"{app="ami-0123456789abcdef0",prometheus="ami-0123456789abcdef1",loki="ami-0123456789abcdef2",grafana="ami-0123456789abcdef3"}"#,
    ),
    (
        "allowed_web_cidrs",
        r#"["198.51.100.0/24","203.0.113.7/32"]"#,
    ),
];

const CERTIFICATE: &str =
    "arn:aws:acm:eu-west-1:123456789012:certificate/0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d";

fn with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    DEPLOYMENT
        .iter()
        .copied()
        .chain(extra.iter().copied())
        .collect()
}

fn text(expr: Option<&Expression>) -> String {
    expr.map(ToString::to_string).unwrap_or_default()
}

/// A list expression's items, as HCL text (hcl-rs prints a list over several lines).
fn list(expr: Option<&Expression>) -> Vec<String> {
    match expr {
        Some(Expression::Array(items)) => items.iter().map(ToString::to_string).collect(),
        other => panic!("not a list: {other:?}"),
    }
}

fn blocks<'a>(body: &'a Body, identifier: &str) -> Vec<&'a Body> {
    body.blocks()
        .filter(|b| b.identifier() == identifier)
        .map(|b| b.body())
        .collect()
}

/// `expr`, or the expression of the local it names (`local.x`).
fn local_or_expr(files: &BTreeMap<String, Body>, expr: &str) -> String {
    match expr.strip_prefix("local.") {
        Some(name) => local_expr(files, name),
        None => expr.to_string(),
    }
}

/// How many instances of `resource` exist with `vars` (its `count`, or its `for_each`'s size).
fn instances(console: &Console, vars: &[(&str, &str)], resource: &Block) -> u64 {
    let expr = instance_count_expr(resource);
    console
        .eval_expr(vars, &expr)
        .as_u64()
        .unwrap_or_else(|| panic!("{}: {expr} is not a number", address(resource)))
}

/// Every resource and data source of fleet.tf, the second subnet, and the Prometheus
/// discovery permission: what exists only with the fleet. (The zone lookups serve the first
/// subnet too.)
fn fleet_only(files: &BTreeMap<String, Body>) -> Vec<&Block> {
    let mut found: Vec<&Block> = files["fleet.tf"]
        .blocks()
        .filter(|b| b.identifier() == "resource" || b.identifier() == "data")
        .collect();
    found.push(resource(files, "aws_subnet", "second"));
    found.push(resource(files, "aws_route_table_association", "second"));
    found.push(resource(
        files,
        "aws_iam_role_policy",
        "prometheus_discovers_app",
    ));
    found
}

#[test]
fn the_launch_template_is_hardened_like_the_instances() {
    let files = parsed_files();
    let template = resource(&files, "aws_launch_template", "app");
    let body = template.body();

    let metadata = block(body, "metadata_options").expect("metadata_options");
    for (key, value) in [
        ("http_endpoint", Expression::from("enabled")),
        ("http_tokens", Expression::from("required")),
        ("http_put_response_hop_limit", Expression::from(1)),
        ("instance_metadata_tags", Expression::from("enabled")),
    ] {
        assert_eq!(attr(metadata, key), Some(&value), "metadata_options.{key}");
    }
    let monitoring = block(body, "monitoring").expect("detailed monitoring");
    assert_eq!(attr(monitoring, "enabled"), Some(&Expression::from(true)));
    assert_eq!(attr(body, "ebs_optimized"), Some(&Expression::from(true)));
    assert_eq!(text(attr(body, "image_id")), "var.ami_ids[\"app\"]");
    let profile = block(body, "iam_instance_profile").expect("iam_instance_profile");
    assert_eq!(
        text(attr(profile, "name")),
        "aws_iam_instance_profile.instance[\"app\"].name",
        "the app's own instance profile (Session Manager only)"
    );
    for forbidden in ["key_name", "user_data", "vpc_security_group_ids"] {
        assert!(
            attr(body, forbidden).is_none(),
            "{forbidden}: no key pairs, nothing installed at boot, the group set on the interface"
        );
    }

    // The root volume: the AMI's own root device, encrypted gp3 of root_volume_size_gb.
    let mappings = blocks(body, "block_device_mappings");
    assert_eq!(mappings.len(), 1, "one mapping: the root volume");
    let packer_root = packer_root_device();
    assert_eq!(
        attr(mappings[0], "device_name"),
        Some(&Expression::from(packer_root.as_str())),
        "the template must map the AMI's root device ({packer_root}, images/common/packer/image.pkr.hcl), or it adds a second, unencrypted-by-default volume"
    );
    let ebs = block(mappings[0], "ebs").expect("ebs");
    assert_eq!(attr(ebs, "encrypted"), Some(&Expression::from(true)));
    assert_eq!(attr(ebs, "volume_type"), Some(&Expression::from("gp3")));
    assert_eq!(
        attr(ebs, "delete_on_termination"),
        Some(&Expression::from(true))
    );
    assert_eq!(text(attr(ebs, "volume_size")), "var.root_volume_size_gb");

    // A public address through the interface (there is no NAT), in the app's group only.
    let interfaces = blocks(body, "network_interfaces");
    assert_eq!(interfaces.len(), 1);
    assert_eq!(
        attr(interfaces[0], "associate_public_ip_address"),
        Some(&Expression::from(true))
    );
    assert_eq!(
        list(attr(interfaces[0], "security_groups")),
        ["aws_security_group.app.id"]
    );
    let template_text =
        std::fs::read_to_string(terraform_support::terraform_dir().join("fleet.tf")).unwrap();
    assert!(
        template_text.contains("#checkov:skip=CKV_AWS_88:"),
        "the public address carries the same checkov skip reason as the instances'"
    );
}

/// The root device name of the Packer template's launch volume.
fn packer_root_device() -> String {
    let path = testkit::workspace_root().join("images/common/packer/image.pkr.hcl");
    let body = hcl::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let source = body
        .blocks()
        .find(|b| b.identifier() == "source")
        .expect("a packer source");
    let mapping =
        block(source.body(), "launch_block_device_mappings").expect("launch_block_device_mappings");
    match attr(mapping, "device_name") {
        Some(Expression::String(s)) => s.clone(),
        other => panic!("device_name is not a literal: {other:?}"),
    }
}

/// The launch tags with Loki's address known (as it is before the template is created).
fn fleet_tags(console: &Console, files: &BTreeMap<String, Body>, name: &str) -> Vec<Value> {
    let template = resource(files, "aws_launch_template", "app");
    let specifications = blocks(template.body(), "tag_specifications");
    let types: BTreeSet<String> = specifications
        .iter()
        .map(|s| text(attr(s, "resource_type")).trim_matches('"').to_string())
        .collect();
    assert_eq!(
        types,
        BTreeSet::from(["instance".to_string(), "volume".to_string()]),
        "launch tags for the instance and its volume"
    );
    let vars = with(&[("name", name)]);
    specifications
        .iter()
        .map(|s| {
            let mut tags = text(attr(s, "tags"));
            if tags.starts_with("local.") {
                tags = local_expr(files, tags.trim_start_matches("local."));
            }
            let tags = replace_reference(
                &tags,
                "aws_instance.role",
                r#"{loki={private_ip="10.42.1.9"}}"#,
            );
            console.eval_expr(&vars, &tags)
        })
        .collect()
}

#[test]
fn fleet_instances_launch_with_exactly_the_contract_tags() {
    let files = parsed_files();
    let console = Console::new(&files);
    for name in ["obstack", "beta-2"] {
        for tags in fleet_tags(&console, &files, name) {
            assert_eq!(
                tags,
                json!({
                    "Name": format!("{name}-app"),
                    "obstack:role": "app",
                    "obstack:deployment": name,
                    "obstack:project": "obstack",
                    "obstack:peer:loki": "10.42.1.9",
                }),
                "the contract's fleet tags (the provider's default_tags do not reach an Auto Scaling group's instances)"
            );
        }
    }
    // The group propagates nothing: two sources of the same tag could disagree.
    let group = resource(&files, "aws_autoscaling_group", "app");
    for tag in blocks(group.body(), "tag") {
        assert_eq!(
            attr(tag, "propagate_at_launch"),
            Some(&Expression::from(false)),
            "{tag:?}"
        );
    }
}

#[test]
fn the_group_sizes_are_whole_numbers_auto_scaling_accepts_and_ordered() {
    let files = parsed_files();
    let console = Console::new(&files);
    assert_eq!(
        console.eval(
            &[],
            "[var.app_min, var.app_desired, var.app_max, var.app_fleet]"
        ),
        json!([1, 1, 1, true]),
        "a try-out fleet costs what the single instance did"
    );
    for (variable, good, bad) in [
        (
            "app_min",
            &["0", "1", "1000"][..],
            &["-1", "1001", "1.5"][..],
        ),
        (
            "app_desired",
            &["1", "7", "1000"],
            &["0", "1001", "2.5", "-3"],
        ),
        ("app_max", &["1", "1000"], &["0", "1001", "1.5"]),
    ] {
        for value in good {
            assert!(
                console.accepts(variable, value),
                "{variable} = {value} refused"
            );
        }
        for value in bad {
            assert!(
                matches!(console.validate(&[(variable, value)]), Outcome::Refused(r) if r.contains(variable)),
                "{variable} = {value} accepted, but Auto Scaling (or the 1..=1000 fleet tag) refuses it"
            );
        }
    }

    // min <= desired <= max: a precondition of the group, evaluated as plan would.
    let group = resource(&files, "aws_autoscaling_group", "app");
    let conditions = preconditions(group);
    assert!(!conditions.is_empty(), "no precondition on the group sizes");
    let plan_accepts = |min: &str, desired: &str, max: &str| -> bool {
        let checks: Vec<String> = conditions
            .iter()
            .map(|c| format!("try(({c}) == true, false)"))
            .collect();
        let value = console.eval(
            &with(&[("app_min", min), ("app_desired", desired), ("app_max", max)]),
            &format!("alltrue([{}])", checks.join(", ")),
        );
        value == json!(true)
    };
    for (min, desired, max) in [
        ("1", "1", "1"),
        ("0", "1", "3"),
        ("2", "5", "10"),
        ("3", "3", "3"),
    ] {
        assert!(
            plan_accepts(min, desired, max),
            "min {min} desired {desired} max {max} is refused"
        );
    }
    for (min, desired, max) in [
        ("2", "1", "3"),
        ("1", "4", "3"),
        ("3", "3", "2"),
        ("5", "5", "4"),
    ] {
        assert!(
            !plan_accepts(min, desired, max),
            "min {min} desired {desired} max {max} passes, but CreateAutoScalingGroup refuses it"
        );
    }
    // The sizes the group gets are the variables.
    let body = group.body();
    for (key, var) in [
        ("min_size", "var.app_min"),
        ("max_size", "var.app_max"),
        ("desired_capacity", "var.app_desired"),
    ] {
        assert_eq!(text(attr(body, key)), var, "{key}");
    }
}

/// The conditions of every `lifecycle { precondition }` of `resource`.
fn preconditions(resource: &Block) -> Vec<String> {
    blocks(resource.body(), "lifecycle")
        .into_iter()
        .flat_map(|l| blocks(l, "precondition"))
        .map(|p| text(attr(p, "condition")))
        .collect()
}

#[test]
fn the_group_replaces_unhealthy_instances_and_rolls_new_amis_launch_before_terminate() {
    let files = parsed_files();
    let group = resource(&files, "aws_autoscaling_group", "app");
    let body = group.body();
    assert_eq!(
        attr(body, "health_check_type"),
        Some(&Expression::from("ELB"))
    );
    assert!(
        attr(body, "health_check_grace_period").is_some(),
        "ELB health checks need a grace period for the first boot"
    );
    assert_eq!(
        list(attr(body, "target_group_arns")),
        ["aws_lb_target_group.app[0].arn"]
    );
    assert_eq!(
        list(attr(body, "vpc_zone_identifier")),
        ["aws_subnet.public.id", "aws_subnet.second[0].id"],
        "the fleet spans both zones"
    );
    let template = block(body, "launch_template").expect("launch_template");
    assert_eq!(
        text(attr(template, "version")),
        "aws_launch_template.app[0].latest_version",
        "a pinned version: $Latest never starts an instance refresh"
    );
    let refresh = block(body, "instance_refresh").expect("instance_refresh");
    assert_eq!(
        attr(refresh, "strategy"),
        Some(&Expression::from("Rolling"))
    );
    let preferences = block(refresh, "preferences").expect("preferences");
    let percent = |key: &str| match attr(preferences, key) {
        Some(Expression::Number(n)) => n.as_u64().unwrap(),
        other => panic!("{key}: {other:?}"),
    };
    let (min, max) = (
        percent("min_healthy_percentage"),
        percent("max_healthy_percentage"),
    );
    assert_eq!(min, 100, "no instance goes before its successor is healthy");
    assert!(
        max > 100 && max <= 200 && max - min <= 100,
        "launch before terminate within Auto Scaling's limits: max {max}"
    );

    // The load balancer decides health by the app's /health on its port.
    let target = resource(&files, "aws_lb_target_group", "app");
    assert_eq!(attr(target.body(), "port"), Some(&Expression::from(5000)));
    assert_eq!(
        attr(target.body(), "protocol"),
        Some(&Expression::from("HTTP"))
    );
    let check = block(target.body(), "health_check").expect("health_check");
    assert_eq!(attr(check, "path"), Some(&Expression::from("/health")));
    if let Some(enabled) = attr(check, "enabled") {
        assert_eq!(enabled, &Expression::from(true));
    }
}

#[test]
fn the_load_balancer_serves_http_or_redirects_to_https_with_a_certificate() {
    let files = parsed_files();
    let console = Console::new(&files);
    let lb = resource(&files, "aws_lb", "app");
    let body = lb.body();
    assert_eq!(attr(body, "internal"), Some(&Expression::from(false)));
    assert_eq!(
        attr(body, "load_balancer_type"),
        Some(&Expression::from("application"))
    );
    assert_eq!(
        attr(body, "drop_invalid_header_fields"),
        Some(&Expression::from(true))
    );
    assert_eq!(
        list(attr(body, "subnets")),
        ["aws_subnet.public.id", "aws_subnet.second[0].id"]
    );
    assert_eq!(
        list(attr(body, "security_groups")),
        ["aws_security_group.alb[0].id"]
    );

    let http = resource(&files, "aws_lb_listener", "http");
    let https = resource(&files, "aws_lb_listener", "https");
    assert_eq!(attr(http.body(), "port"), Some(&Expression::from(80)));
    assert_eq!(attr(https.body(), "port"), Some(&Expression::from(443)));
    assert_eq!(
        attr(https.body(), "protocol"),
        Some(&Expression::from("HTTPS"))
    );
    // The app's certificate when it has one (Grafana's otherwise: terraform_access.rs).
    let certificate = text(attr(https.body(), "certificate_arn"));
    assert_eq!(
        console.eval_expr(
            &with(&[("app_certificate_arn", CERTIFICATE)]),
            &local_or_expr(&files, &certificate)
        ),
        json!(CERTIFICATE)
    );
    let policy = text(attr(https.body(), "ssl_policy"));
    let policy = policy.trim_matches('"');
    assert!(
        policy.starts_with("ELBSecurityPolicy-TLS13-1-2-")
            || policy.starts_with("ELBSecurityPolicy-TLS13-1-3-"),
        "a TLS 1.3 policy with 1.2 at the least: {policy}"
    );
    let https_action = block(https.body(), "default_action").expect("default_action");
    let with_certificate = with(&[("app_certificate_arn", CERTIFICATE)]);
    assert_eq!(
        console.eval_expr(&with_certificate, &text(attr(https_action, "type"))),
        json!("forward")
    );
    let target = replace_reference(
        &text(attr(https_action, "target_group_arn")),
        "aws_lb_target_group.app",
        r#"[{arn="the app's target group"}]"#,
    );
    assert_eq!(
        console.eval_expr(&with_certificate, &target),
        json!("the app's target group")
    );

    // Port 80's action and the listeners that exist, with and without a certificate.
    let action = block(http.body(), "default_action").expect("default_action");
    let action_type = text(attr(action, "type"));
    let redirect = action
        .blocks()
        .find(|b| b.identifier() == "dynamic" && b.labels()[0].as_str() == "redirect")
        .map(|b| b.body())
        .expect("a dynamic redirect block in port 80's default action");
    let redirects = text(attr(redirect, "for_each"));
    let content = block(redirect, "content").expect("redirect content");
    assert_eq!(attr(content, "protocol"), Some(&Expression::from("HTTPS")));
    assert_eq!(attr(content, "port"), Some(&Expression::from("443")));
    assert_eq!(
        attr(content, "status_code"),
        Some(&Expression::from("HTTP_301"))
    );
    for (certificate, expected) in [
        (None, json!([1, 0, "forward", 0])),
        (Some(CERTIFICATE), json!([1, 1, "redirect", 1])),
    ] {
        let mut vars = with(&[]);
        if let Some(arn) = certificate {
            vars.push(("app_certificate_arn", arn));
        }
        let evaluated = json!([
            instances(&console, &vars, http),
            instances(&console, &vars, https),
            console.eval_expr(&vars, &action_type),
            console.eval_expr(&vars, &format!("length({redirects})")),
        ]);
        assert_eq!(
            evaluated, expected,
            "[http listeners, https listeners, port 80 action, redirects] with certificate {certificate:?}"
        );
    }
    // Without the fleet there is no load balancer at all, certificate or not.
    // (`-var` cannot set a string variable to null: leaving it out is its null default.)
    for certificate in [&[][..], &[("app_certificate_arn", CERTIFICATE)]] {
        let vars = with(&[&[("app_fleet", "false")][..], certificate].concat());
        for listener in [http, https, lb] {
            assert_eq!(
                instances(&console, &vars, listener),
                0,
                "{}",
                address(listener)
            );
        }
    }

    // The certificate variable takes an ACM certificate ARN or nothing.
    for good in [CERTIFICATE, "arn:aws-us-gov:acm:us-gov-west-1:123456789012:certificate/0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d"] {
        assert!(console.accepts("app_certificate_arn", good), "{good} refused");
    }
    for bad in [
        "",
        "arn:aws:iam::123456789012:server-certificate/app",
        "arn:aws:acm:eu-west-1:123456789012:certificate/",
        "0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d",
    ] {
        assert!(
            !console.accepts("app_certificate_arn", bad),
            "{bad:?} accepted"
        );
    }
}

/// Names Elastic Load Balancing accepts for a load balancer or target group: 1 to 32
/// letters, digits and hyphens, not starting or ending with a hyphen, not starting with
/// "internal-".
fn elb_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > 32 {
        return Some("1 to 32 characters");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Some("letters, digits and hyphens only");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some("no hyphen first or last");
    }
    if name.to_ascii_lowercase().starts_with("internal-") {
        return Some("may not start with internal-");
    }
    None
}

#[test]
fn the_load_balancer_name_is_valid_for_every_valid_deployment_name() {
    assert!(elb_name_problem("internal-x").is_some());
    assert!(elb_name_problem("app-x-").is_some());
    assert!(elb_name_problem("app-obstack").is_none());

    let files = parsed_files();
    let console = Console::new(&files);
    for kind in ["aws_lb", "aws_lb_target_group"] {
        let name = text(attr(resource(&files, kind, "app").body(), "name"));
        assert_eq!(name, "local.lb_name", "{kind}.app's name");
    }
    let longest = format!("a{}", "b".repeat(30));
    let trailing = format!("{}-", "c".repeat(28));
    let samples = [
        "obstack",
        "internal-x",
        "internal",
        "ab",
        "a-",
        "a--b",
        longest.as_str(),
        trailing.as_str(),
        "abcdefghijklmnopqrstuvwxyzabcd-e",
    ];
    let mut checked = 0;
    for sample in samples {
        if !console.accepts("name", sample) {
            continue;
        }
        checked += 1;
        let value = console.eval(&[("name", sample)], "local.lb_name");
        let lb_name = value.as_str().unwrap();
        assert_eq!(
            elb_name_problem(lb_name),
            None,
            "name = {sample:?} makes the load balancer name {lb_name:?}"
        );
    }
    assert!(checked >= 7, "the name validation refused most samples");
}

#[test]
fn two_stacks_never_get_the_same_load_balancer_or_target_group_name() {
    // Names are unique per account and region: two stacks whose names share the part that
    // fits must still differ. Pairs that share their first 21, 28 and 30 characters, and
    // names that differ only in hyphens.
    let files = parsed_files();
    let console = Console::new(&files);
    let long = |tail: &str| format!("{}{tail}", "a".repeat(31 - tail.len()));
    let names: Vec<String> = [
        long("b"),
        long("c"),
        long("bc"),
        long("de"),
        long("xyzw"),
        long("xyzv"),
        long("1234567890"),
        long("1234567891"),
        "ab".to_string(),
        "ab-".to_string(),
        "a-b".to_string(),
        "ab--".to_string(),
        "obstack".to_string(),
        "obstack-staging".to_string(),
        "obstack-staging-".to_string(),
    ]
    .into_iter()
    .filter(|n| console.accepts("name", n))
    .collect();
    assert!(
        names.len() >= 12,
        "the name validation refused the samples: {names:?}"
    );
    let lb_name = local_expr(&files, "lb_name");
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    let made = console.eval_expr(
        &[],
        &format!(
            "[for stack in [{}] : {}]",
            quoted.join(", "),
            replace_reference(&lb_name, "var.name", "stack")
        ),
    );
    let made: Vec<&str> = made
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut by_lb_name: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
    for (name, lb) in names.iter().zip(&made) {
        assert_eq!(elb_name_problem(lb), None, "name = {name:?} makes {lb:?}");
        by_lb_name.entry(lb).or_default().push(name);
    }
    let clashes: Vec<_> = by_lb_name.iter().filter(|(_, n)| n.len() > 1).collect();
    assert!(
        clashes.is_empty(),
        "stacks with different names get the same load balancer and target group name: {clashes:?}"
    );
}

#[test]
fn only_allowed_web_cidrs_reach_the_load_balancer_and_only_it_reaches_the_app_port() {
    let files = parsed_files();
    let console = Console::new(&files);

    // Operators: the load balancer's rule, one per port and allowed CIDR, and nothing else
    // into its group.
    let web = resource(&files, "aws_vpc_security_group_ingress_rule", "alb_web");
    assert_eq!(
        text(attr(web.body(), "security_group_id")),
        "aws_security_group.alb[0].id"
    );
    let for_each = text(attr(web.body(), "for_each"));
    let flows = |vars: &[(&str, &str)]| -> Vec<(u64, String)> {
        let value = console.eval_expr(
            vars,
            &format!(
                "[for k, v in ({for_each}) : [{}, {}]]",
                replace_reference(&text(attr(web.body(), "from_port")), "each.value", "v"),
                replace_reference(&text(attr(web.body(), "cidr_ipv4")), "each.value", "v"),
            ),
        );
        let mut flows: Vec<(u64, String)> = value
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_u64().unwrap(), p[1].as_str().unwrap().to_string()))
            .collect();
        flows.sort();
        flows
    };
    assert_eq!(
        text(attr(web.body(), "to_port")),
        text(attr(web.body(), "from_port"))
    );
    let cidrs = ["198.51.100.0/24", "203.0.113.7/32"];
    let expect = |ports: &[u64]| -> Vec<(u64, String)> {
        let mut v: Vec<(u64, String)> = ports
            .iter()
            .flat_map(|p| cidrs.iter().map(move |c| (*p, c.to_string())))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        flows(&with(&[])),
        expect(&[]),
        "by default the load balancer admits nobody: the app is reached with `cargo xtask open app`"
    );
    assert_eq!(flows(&with(&[("expose_app", "true")])), expect(&[80]));
    assert_eq!(
        flows(&with(&[("app_certificate_arn", CERTIFICATE)])),
        expect(&[80, 443])
    );
    assert!(flows(&with(&[("app_fleet", "false"), ("expose_app", "true")])).is_empty());

    let rules_on = |kind: &str, group: &str| -> Vec<String> {
        resources(&files, kind)
            .into_iter()
            .filter(|r| text(attr(r.body(), "security_group_id")) == group)
            .map(address)
            .collect()
    };
    assert_eq!(
        rules_on(
            "aws_vpc_security_group_ingress_rule",
            "aws_security_group.alb[0].id"
        ),
        ["aws_vpc_security_group_ingress_rule.alb_web"]
    );
    // Out of the load balancer: only to the app's group, on the app's port (and to Grafana's
    // with its certificate: terraform_access.rs).
    let egress = rules_on(
        "aws_vpc_security_group_egress_rule",
        "aws_security_group.alb[0].id",
    );
    assert_eq!(
        egress,
        [
            "aws_vpc_security_group_egress_rule.alb_to_app",
            "aws_vpc_security_group_egress_rule.alb_to_grafana"
        ]
    );
    let to_app = resource(&files, "aws_vpc_security_group_egress_rule", "alb_to_app");
    assert_eq!(
        text(attr(to_app.body(), "referenced_security_group_id")),
        "aws_security_group.app.id"
    );

    // Into the app's port 5000: the load balancer's group and Prometheus' (peer flows),
    // and people only when expose_app asks for direct access.
    let from_alb = resource(
        &files,
        "aws_vpc_security_group_ingress_rule",
        "app_from_alb",
    );
    assert_eq!(
        text(attr(from_alb.body(), "security_group_id")),
        "aws_security_group.app.id"
    );
    assert_eq!(
        text(attr(from_alb.body(), "referenced_security_group_id")),
        "aws_security_group.alb[0].id"
    );
    for rule in [to_app, from_alb] {
        assert_eq!(
            attr(rule.body(), "from_port"),
            Some(&Expression::from(5000))
        );
        assert_eq!(attr(rule.body(), "to_port"), Some(&Expression::from(5000)));
    }
    let sources_of_app_5000 = |vars: &[(&str, &str)]| -> Value {
        console.eval(
            vars,
            "[sort([for f in values(local.peer_flows) : f.from if f.to == \"app\" && f.port == 5000]), sort([for r in values(local.web_rules) : r.cidr if r.role == \"app\"])]",
        )
    };
    assert_eq!(
        sources_of_app_5000(&with(&[])),
        json!([["prometheus"], []]),
        "peers of the app's port: Prometheus only; no CIDR without expose_app"
    );
    assert_eq!(
        sources_of_app_5000(&with(&[("expose_app", "true")])),
        json!([["prometheus"], cidrs]),
    );
}

#[test]
fn ec2_describe_instances_is_granted_only_to_prometheus_and_only_with_the_fleet() {
    let files = parsed_files();
    let console = Console::new(&files);
    let describers: Vec<(String, String, Value)> = allow_statements(&files)
        .into_iter()
        .filter(|(_, role, statement)| {
            role.starts_with("aws_iam_role.instance")
                && string_list(&statement["Action"])
                    .iter()
                    .any(|a| iam_action_matches(a, "ec2:DescribeInstances"))
        })
        .collect();
    let granted: Vec<(String, String)> = describers
        .iter()
        .map(|(at, role, _)| (at.clone(), role.clone()))
        .collect();
    assert_eq!(
        granted,
        [(
            "aws_iam_role_policy.prometheus_discovers_app".to_string(),
            "aws_iam_role.instance[\"prometheus\"].id".to_string()
        )],
        "of the instance roles, only Prometheus' may describe instances (the snapshot role, not an instance's, has it for DLM)"
    );
    let statement = &describers[0].2;
    assert_eq!(
        string_list(&statement["Action"]),
        ["ec2:DescribeAvailabilityZones", "ec2:DescribeInstances"],
        "discovery's two read-only calls, no other action, no wildcard"
    );
    assert_eq!(string_list(&statement["Resource"]), ["*"]);

    let policy = resource(&files, "aws_iam_role_policy", "prometheus_discovers_app");
    assert_eq!(instances(&console, &with(&[]), policy), 1);
    assert_eq!(
        instances(&console, &with(&[("app_fleet", "false")]), policy),
        0,
        "without the fleet nobody needs to describe instances"
    );
    let iam = std::fs::read_to_string(terraform_support::terraform_dir().join("iam.tf")).unwrap();
    assert!(
        iam.contains("no resource-level permissions"),
        "the \"*\" resource is explained where it is granted"
    );
}

#[test]
fn prometheus_learns_the_fleet_from_its_tags_and_gets_no_single_app_address() {
    let files = parsed_files();
    let console = Console::new(&files);
    let peer_tags = |fleet: &str| -> Value {
        console.eval(
            &with(&[("app_fleet", fleet)]),
            "sort(keys(local.peer_tags))",
        )
    };
    assert_eq!(
        peer_tags("true"),
        json!([
            "grafana_knows_loki",
            "grafana_knows_prometheus",
            "prometheus_knows_grafana",
            "prometheus_knows_loki"
        ]),
        "with the fleet: no prometheus_knows_app (no single app), no app_knows_loki (a launch tag)"
    );
    assert_eq!(
        peer_tags("false"),
        json!([
            "app_knows_loki",
            "grafana_knows_loki",
            "grafana_knows_prometheus",
            "prometheus_knows_app",
            "prometheus_knows_grafana",
            "prometheus_knows_loki"
        ])
    );

    // The instances, and Prometheus' fleet tag with the desired capacity.
    let instance = resource(&files, "aws_instance", "role");
    let for_each = text(attr(instance.body(), "for_each"));
    let tags = replace_reference(
        &replace_reference(&text(attr(instance.body(), "tags")), "each.key", "role"),
        "aws_ebs_volume.data",
        r#"{grafana={id="vol-0g"},loki={id="vol-0l"},prometheus={id="vol-0p"}}"#,
    );
    let fleet_tag = |vars: &[(&str, &str)]| -> Value {
        console.eval_expr(
            vars,
            &format!(
                "{{for role in ({for_each}) : role => lookup({tags}, \"obstack:app-fleet-desired\", null)}}"
            ),
        )
    };
    assert_eq!(
        fleet_tag(&with(&[("app_desired", "3"), ("app_max", "4")])),
        json!({"grafana": null, "loki": null, "prometheus": "3"})
    );
    assert_eq!(
        fleet_tag(&with(&[("app_fleet", "false"), ("app_desired", "3")])),
        json!({"app": null, "grafana": null, "loki": null, "prometheus": null}),
        "the single-instance layout: an app instance, and no fleet tag"
    );
}

#[test]
fn the_single_instance_layout_is_unchanged_without_the_fleet() {
    let files = parsed_files();
    let console = Console::new(&files);
    let vars = with(&[("app_fleet", "false")]);
    for block in fleet_only(&files) {
        for certificate in [&[][..], &[("app_certificate_arn", CERTIFICATE)]] {
            assert_eq!(
                instances(
                    &console,
                    &with(&[&[("app_fleet", "false")][..], certificate].concat()),
                    block
                ),
                0,
                "{} exists without the fleet",
                address(block)
            );
        }
        assert!(
            instances(
                &console,
                &with(&[("app_certificate_arn", CERTIFICATE)]),
                block
            ) >= 1,
            "{} is missing with the fleet (and a certificate)",
            address(block)
        );
    }
    // The app instance exists exactly without the fleet; its peer tags with it.
    let instance = resource(&files, "aws_instance", "role");
    let keys = |vars: &[(&str, &str)]| {
        console.eval_expr(
            vars,
            &format!("sort(tolist({}))", text(attr(instance.body(), "for_each"))),
        )
    };
    assert_eq!(keys(&vars), json!(["app", "grafana", "loki", "prometheus"]));
    assert_eq!(keys(&with(&[])), json!(["grafana", "loki", "prometheus"]));
    let peer = resource(&files, "aws_ec2_tag", "peer");
    assert_eq!(text(attr(peer.body(), "for_each")), "local.peer_tags");
    assert_eq!(
        console.eval(&vars, "local.peer_tags.prometheus_knows_app"),
        json!({"role": "prometheus", "peer": "app"})
    );

    // What xtask reads: the app's URL and whether it is reachable from allowed_web_cidrs.
    let output = |name: &str| -> String {
        top_blocks(&files, "output")
            .into_iter()
            .find(|o| o.labels()[0].as_str() == name)
            .map(|o| text(attr(o.body(), "value")))
            .unwrap_or_else(|| panic!("output {name}"))
    };
    let exposed = output("exposed");
    assert_eq!(
        console.eval_expr(&vars, &exposed)["app"],
        json!(false),
        "without the fleet the app is exposed only with expose_app"
    );
    assert_eq!(
        console.eval_expr(&with(&[]), &exposed)["app"],
        json!(false),
        "with the fleet the load balancer admits nobody by default"
    );
    for published in [("expose_app", "true"), ("app_certificate_arn", CERTIFICATE)] {
        assert_eq!(
            console.eval_expr(&with(&[published]), &exposed)["app"],
            json!(true),
            "{published:?} opens the load balancer to allowed_web_cidrs: deploy's health gate checks app /health through it"
        );
    }
    let urls = replace_reference(
        &replace_reference(
            &output("urls"),
            "aws_lb.app",
            r#"[{dns_name="app-obstack-1.eu-west-1.elb.amazonaws.com"}]"#,
        ),
        "aws_instance.role",
        r#"{app={public_ip="192.0.2.10"},prometheus={public_ip="192.0.2.11"},loki={public_ip="192.0.2.12"},grafana={public_ip="192.0.2.13"}}"#,
    );
    for (extra, url) in [
        (vec![], "http://app-obstack-1.eu-west-1.elb.amazonaws.com"),
        (
            vec![("app_certificate_arn", CERTIFICATE)],
            "https://app-obstack-1.eu-west-1.elb.amazonaws.com",
        ),
        (vec![("app_fleet", "false")], "http://192.0.2.10:5000"),
    ] {
        assert_eq!(
            console.eval_expr(&with(&extra), &urls)["app"],
            json!(url),
            "{extra:?}"
        );
    }
    let amis = replace_reference(
        &replace_reference(
            &output("ami_ids"),
            "aws_launch_template.app",
            r#"[{image_id="ami-0fleet"}]"#,
        ),
        "aws_instance.role",
        r#"{prometheus={ami="ami-0p"},loki={ami="ami-0l"},grafana={ami="ami-0g"}}"#,
    );
    assert_eq!(
        console.eval_expr(&with(&[]), &amis),
        json!({"app": "ami-0fleet", "grafana": "ami-0g", "loki": "ami-0l", "prometheus": "ami-0p"}),
        "xtask's roll-out reads the app's AMI from the launch template"
    );
    let group = output("app_autoscaling_group");
    assert!(
        group.contains("aws_autoscaling_group.app[0].name"),
        "{group}"
    );
}

/// The preconditions plan would stop at with `vars` (every resource's, evaluated offline).
fn plan_stops(plan: &OfflinePlan, vars: &[(&str, &str)]) -> Vec<String> {
    plan.failed_preconditions(vars)
}

#[test]
fn the_second_subnet_lies_in_the_vpc_apart_from_the_first_and_in_another_zone() {
    let files = parsed_files();
    let plan = terraform_support::offline_plan(&files);
    let plan_accepts = |vpc: &str, first: &str, second: &str| -> bool {
        let vars = with(&[
            ("vpc_cidr", vpc),
            ("public_subnet_cidr", first),
            ("second_public_subnet_cidr", second),
        ]);
        plan_stops(&plan, &vars).is_empty()
    };
    for (vpc, first, second) in [
        ("10.42.0.0/16", "10.42.1.0/24", "10.42.2.0/24"),
        ("10.42.0.0/16", "10.42.0.0/17", "10.42.128.0/17"),
        ("10.42.0.0/24", "10.42.0.0/25", "10.42.0.128/25"),
    ] {
        assert!(
            plan_accepts(vpc, first, second),
            "{second} next to {first} in {vpc} is refused: {:?}",
            plan_stops(
                &plan,
                &with(&[
                    ("vpc_cidr", vpc),
                    ("public_subnet_cidr", first),
                    ("second_public_subnet_cidr", second)
                ])
            )
        );
    }
    for (vpc, first, second) in [
        ("10.42.0.0/16", "10.42.1.0/24", "10.42.1.0/24"), // the same block
        ("10.42.0.0/16", "10.42.0.0/16", "10.42.2.0/24"), // inside the first
        ("10.42.0.0/16", "10.42.2.128/25", "10.42.2.0/24"), // around the first
        ("10.42.0.0/16", "10.42.1.0/24", "10.43.2.0/24"), // outside the VPC
        ("10.42.0.0/24", "10.42.0.0/25", "10.42.1.0/24"), // next to the VPC
    ] {
        assert!(
            !plan_accepts(vpc, first, second),
            "{second} next to {first} in {vpc} passes, but CreateSubnet refuses an overlapping or outside block"
        );
    }
    // A load balancer needs two zones: the second subnet's differs from the first's.
    let zones = plan.eval(
        &with(&[]),
        "[aws_subnet.public.availability_zone, aws_subnet.second[0].availability_zone]",
    );
    assert_eq!(
        zones,
        json!(["eu-west-1a", "eu-west-1b"]),
        "a load balancer needs two zones"
    );
    let cidr = variable(&files, "second_public_subnet_cidr");
    assert_eq!(
        text(attr(cidr.body(), "default")),
        "\"10.42.2.0/24\"",
        "inside the default VPC, apart from the default first subnet"
    );
}

#[test]
fn with_the_fleet_both_public_subnets_are_at_least_27_for_the_load_balancer() {
    let files = parsed_files();
    let plan = terraform_support::offline_plan(&files);
    let stops = |fleet: &str, first: &str, second: &str| {
        plan_stops(
            &plan,
            &with(&[
                ("app_fleet", fleet),
                ("public_subnet_cidr", first),
                ("second_public_subnet_cidr", second),
            ]),
        )
    };
    // An Application Load Balancer needs 8 free addresses in each subnet; AWS asks for /27.
    assert_eq!(
        stops("true", "10.42.1.0/27", "10.42.2.0/27"),
        Vec::<String>::new()
    );
    assert_eq!(
        stops("true", "10.42.1.0/24", "10.42.2.0/24"),
        Vec::<String>::new()
    );
    for (first, second) in [
        ("10.42.1.0/28", "10.42.2.0/24"),
        ("10.42.1.0/24", "10.42.2.0/28"),
        ("10.42.1.0/28", "10.42.2.0/28"),
    ] {
        let stopped = stops("true", first, second);
        assert!(
            stopped.iter().any(|m| m.starts_with("aws_lb.app") && m.contains("/27")),
            "with the fleet, subnets {first} and {second} pass plan, but a load balancer needs /27 or larger: {stopped:?}"
        );
    }
    // Without the fleet there is no load balancer: a /28 holds the three instances.
    assert_eq!(
        stops("false", "10.42.1.0/28", "10.42.2.0/28"),
        Vec::<String>::new()
    );
}

/// The offline plan with `offered` as the zones' instance type offerings (zone => types),
/// every zone of the region available.
fn plan_with_offerings<'a>(
    files: &'a BTreeMap<String, Body>,
    offered: &[(&str, &[&str])],
) -> OfflinePlan<'a> {
    let mut returned = terraform_support::aws_constraints::Constraints::load()
        .table
        .returned;
    let pairs: Vec<(String, String)> = offered
        .iter()
        .flat_map(|(zone, types)| types.iter().map(move |t| (zone.to_string(), t.to_string())))
        .collect();
    let offerings = returned
        .get_mut("data.aws_ec2_instance_type_offerings")
        .expect(
            "[returned.\"data.aws_ec2_instance_type_offerings\"] in terraform/constraints.toml",
        );
    offerings.insert(
        "locations".to_string(),
        serde_json::to_string(&pairs.iter().map(|(z, _)| z).collect::<Vec<_>>()).unwrap(),
    );
    offerings.insert(
        "instance_types".to_string(),
        serde_json::to_string(&pairs.iter().map(|(_, t)| t).collect::<Vec<_>>()).unwrap(),
    );
    OfflinePlan::new(files, &returned)
}

#[test]
fn the_subnets_zones_offer_the_instance_types_they_launch() {
    let files = parsed_files();
    assert!(
        top_blocks(&files, "data")
            .iter()
            .any(|d| d.labels()[0].as_str() == "aws_ec2_instance_type_offerings"),
        "no aws_ec2_instance_type_offerings: the zones are chosen without asking whether they offer the instance types"
    );
    // eu-west-1a lacks the app's type, eu-west-1b lacks Prometheus', eu-west-1c offers both.
    let types = r#"{app="c7g.medium",prometheus="m7i.large"}"#;
    let plan = plan_with_offerings(
        &files,
        &[
            ("eu-west-1a", &["t3.small", "m7i.large"]),
            ("eu-west-1b", &["t3.small", "c7g.medium"]),
            ("eu-west-1c", &["t3.small", "c7g.medium", "m7i.large"]),
        ],
    );
    let zones = |extra: &[(&str, &str)]| {
        let vars = with(&[&[("instance_types", types)][..], extra].concat());
        (
            plan_stops(&plan, &vars),
            plan.eval(
                &vars,
                "[aws_subnet.public.availability_zone, try(aws_subnet.second[0].availability_zone, null)]",
            ),
        )
    };
    // Chosen: the first subnet (every role) in the only zone offering every type; the second
    // (the app fleet) in another zone that offers the app's.
    let (stopped, chosen) = zones(&[]);
    assert_eq!(stopped, Vec::<String>::new());
    assert_eq!(chosen, json!(["eu-west-1c", "eu-west-1b"]));
    // Named, and offering them: used as named.
    let (stopped, chosen) = zones(&[
        ("availability_zone", "eu-west-1c"),
        ("second_availability_zone", "eu-west-1b"),
    ]);
    assert_eq!(stopped, Vec::<String>::new());
    assert_eq!(chosen, json!(["eu-west-1c", "eu-west-1b"]));
    // Named, and lacking a type, or the same zone twice: plan stops, naming the zones that fit.
    for (first, second, stopping) in [
        ("eu-west-1a", "eu-west-1b", "aws_subnet.public"), // 1a lacks the app's type
        ("eu-west-1c", "eu-west-1a", "aws_subnet.second"), // 1a lacks the app's type
        ("eu-west-1c", "eu-west-1c", "aws_subnet.second"), // one zone for both
    ] {
        let (stopped, _) = zones(&[
            ("availability_zone", first),
            ("second_availability_zone", second),
        ]);
        assert!(
            stopped.iter().any(|m| m.starts_with(stopping) && m.contains("eu-west-1")),
            "zones {first} and {second}: plan would go on, but the launches would fail ({stopped:?})"
        );
    }
    // No zone offers every type: plan stops instead of letting AWS pick one.
    let plan = plan_with_offerings(
        &files,
        &[
            ("eu-west-1a", &["t3.small", "m7i.large"]),
            ("eu-west-1b", &["t3.small", "c7g.medium"]),
        ],
    );
    let stopped = plan_stops(&plan, &with(&[("instance_types", types)]));
    assert!(
        stopped.iter().any(|m| m.starts_with("aws_subnet.public")),
        "no zone offers every type, yet plan goes on: {stopped:?}"
    );
    // Without the fleet only the first subnet needs a zone; one zone offering all is enough.
    let plan = plan_with_offerings(
        &files,
        &[("eu-west-1c", &["t3.small", "c7g.medium", "m7i.large"])],
    );
    let stopped = plan_stops(
        &plan,
        &with(&[("instance_types", types), ("app_fleet", "false")]),
    );
    assert_eq!(stopped, Vec::<String>::new());
    let stopped = plan_stops(&plan, &with(&[("instance_types", types)]));
    assert!(
        stopped.iter().any(|m| m.starts_with("aws_subnet.second")),
        "the fleet needs a second zone offering the app's type, yet plan goes on: {stopped:?}"
    );
}
