//! How people reach the stack (`terraform/security.tf`, `fleet.tf`, `grafana_https.tf`,
//! `outputs.tf`): by default no security-group rule admits an internet address on any port
//! and every UI is reached through a Session Manager tunnel; with Grafana's certificate only
//! the load balancer takes people, on 443 and on 80 to redirect them, and Grafana's group
//! admits only the load balancer (and Prometheus' scrape); an `expose_*` variable needs listed
//! addresses and never the whole internet; the operator's IAM policy allows port forwarding
//! to this stack's instances and nothing more. Evaluated with an offline `terraform console`.

use crate::terraform_support;

use std::collections::{BTreeMap, BTreeSet};

use hcl::{Block, Body, Expression};
use serde_json::{json, Value};
use terraform_support::{
    address, attr, block, instance_count_expr, local_expr, parsed_files, replace_reference,
    resource, resources, statements, string_list, top_blocks, Console, Outcome,
};

const CIDRS: &str = r#"["198.51.100.0/24","203.0.113.7/32"]"#;

/// The variables without a default (and people's addresses listed, so that an empty list
/// is never why nothing opens).
const DEPLOYMENT: [(&str, &str); 3] = [
    ("region", "eu-west-1"),
    (
        "ami_ids",
        r#"{app="ami-0123456789abcdef0",prometheus="ami-0123456789abcdef1",loki="ami-0123456789abcdef2",grafana="ami-0123456789abcdef3"}"#,
    ),
    ("allowed_web_cidrs", CIDRS),
];

const GRAFANA_CERTIFICATE: &str =
    "arn:aws:acm:eu-west-1:123456789012:certificate/0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d";
const APP_CERTIFICATE: &str =
    "arn:aws:acm:eu-west-1:123456789012:certificate/1b2c3d4e-5f6a-7b8c-9d0e-1f2a3b4c5d6e";
const HOST: &str = "grafana.example.com";

fn with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    DEPLOYMENT
        .iter()
        .copied()
        .chain(extra.iter().copied())
        .collect()
}

fn grafana_https<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut vars = with(&[
        ("grafana_certificate_arn", GRAFANA_CERTIFICATE),
        ("grafana_host_name", HOST),
    ]);
    vars.extend_from_slice(extra);
    vars
}

fn text(expr: Option<&Expression>) -> String {
    expr.map(ToString::to_string).unwrap_or_default()
}

fn blocks<'a>(body: &'a Body, identifier: &str) -> Vec<&'a Body> {
    body.blocks()
        .filter(|b| b.identifier() == identifier)
        .map(|b| b.body())
        .collect()
}

fn instances(console: &Console, vars: &[(&str, &str)], resource: &Block) -> u64 {
    let expr = instance_count_expr(resource);
    console
        .eval_expr(vars, &expr)
        .as_u64()
        .unwrap_or_else(|| panic!("{}: {expr} is not a number", address(resource)))
}

/// Every ingress rule that names an address range (`cidr_ipv4` or `cidr_ipv6`) rather than a
/// security group, as (address, rule resource).
fn cidr_ingress_rules(files: &BTreeMap<String, Body>) -> Vec<(String, &Block)> {
    let rules: Vec<(String, &Block)> = resources(files, "aws_vpc_security_group_ingress_rule")
        .into_iter()
        .filter(|r| attr(r.body(), "cidr_ipv4").is_some() || attr(r.body(), "cidr_ipv6").is_some())
        .map(|r| (address(r), r))
        .collect();
    assert!(
        rules.len() >= 3,
        "expected the expose, Alertmanager and load balancer rules, found {:?}",
        rules.iter().map(|(a, _)| a).collect::<Vec<_>>()
    );
    rules
}

/// (rule, port, address range) for every instance of every address-range ingress rule.
fn internet_flows(
    console: &Console,
    files: &BTreeMap<String, Body>,
    vars: &[(&str, &str)],
) -> BTreeSet<(String, u64, String)> {
    let mut flows = BTreeSet::new();
    for (at, rule) in cidr_ingress_rules(files) {
        let body = rule.body();
        assert_eq!(
            text(attr(body, "from_port")),
            text(attr(body, "to_port")),
            "{at}: one port per rule"
        );
        let cidr = text(attr(body, "cidr_ipv4").or(attr(body, "cidr_ipv6")));
        let pair = format!("[{}, {cidr}]", text(attr(body, "from_port")));
        let for_each = text(attr(body, "for_each"));
        assert!(
            !for_each.is_empty(),
            "{at}: a rule per allowed address (for_each)"
        );
        let projected = replace_reference(
            &replace_reference(&pair, "each.key", "each_key"),
            "each.value",
            "each_value",
        );
        let value = console.eval_expr(
            vars,
            &format!("[for each_key, each_value in ({for_each}) : {projected}]"),
        );
        for flow in value.as_array().unwrap() {
            flows.insert((
                at.clone(),
                flow[0].as_u64().unwrap(),
                flow[1].as_str().unwrap().to_string(),
            ));
        }
    }
    flows
}

/// An output's value expression, with the resources it reads replaced by sample values.
fn output_value(files: &BTreeMap<String, Body>, name: &str) -> String {
    let expr = top_blocks(files, "output")
        .into_iter()
        .find(|o| o.labels()[0].as_str() == name)
        .and_then(|o| attr(o.body(), "value").map(ToString::to_string))
        .unwrap_or_else(|| panic!("output {name}"));
    // Inlined first: it reads the resources replaced below.
    let expr = replace_reference(
        &expr,
        "local.app_url",
        &format!("({})", local_expr(files, "app_url")),
    );
    let mut expr = replace_reference(
        &expr,
        "aws_instance.role",
        r#"{prometheus={public_ip="192.0.2.11"},loki={public_ip="192.0.2.12"},grafana={public_ip="192.0.2.13"},app={public_ip="192.0.2.10"}}"#,
    );
    for (reference, sample) in [
        (
            "aws_lb.app",
            r#"[{dns_name="app-obstack-1.eu-west-1.elb.amazonaws.com"}]"#,
        ),
        (
            "data.aws_partition.current",
            r#"{partition="aws",dns_suffix="amazonaws.com"}"#,
        ),
        (
            "data.aws_caller_identity.current",
            r#"{account_id="123456789012"}"#,
        ),
        (
            "aws_ssm_parameter.grafana_admin_password",
            r#"{arn="arn:aws:ssm:eu-west-1:123456789012:parameter/obstack/obstack/grafana/admin-password",name="/obstack/obstack/grafana/admin-password"}"#,
        ),
        (
            "aws_kms_key.stack",
            r#"{arn="arn:aws:kms:eu-west-1:123456789012:key/0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d"}"#,
        ),
    ] {
        expr = replace_reference(&expr, reference, sample);
    }
    expr
}

#[test]
fn by_default_no_security_group_rule_admits_an_internet_address_on_any_port() {
    let files = parsed_files();
    let console = Console::new(&files);
    for name in ["obstack", "beta-2"] {
        let vars = with(&[("name", name)]);
        assert_eq!(
            internet_flows(&console, &files, &vars),
            BTreeSet::new(),
            "with name = {name:?}, allowed_web_cidrs listed and every other variable at its default"
        );
    }
    // Without the fleet too (the app is then an instance with its own group).
    let single = with(&[("app_fleet", "false")]);
    assert_eq!(internet_flows(&console, &files, &single), BTreeSet::new());
    // No rule of another kind or inline rule could add one.
    assert!(resources(&files, "aws_security_group_rule").is_empty());
    for group in resources(&files, "aws_security_group") {
        assert!(
            block(group.body(), "ingress").is_none(),
            "{}",
            address(group)
        );
    }
    // What xtask reads: nothing is published, every UI is reached through a tunnel.
    assert_eq!(
        console.eval_expr(&with(&[]), &output_value(&files, "public_services")),
        json!({})
    );
    let exposed = console.eval_expr(&with(&[]), &output_value(&files, "exposed"));
    assert_eq!(
        exposed,
        json!({"app": false, "grafana": false, "loki": false, "prometheus": false})
    );
    // And allowed_web_cidrs needs no value: empty is its default.
    assert_eq!(
        console.eval(&DEPLOYMENT[..2], "var.allowed_web_cidrs"),
        json!([])
    );
}

#[test]
fn each_expose_variable_opens_exactly_its_port_to_the_listed_addresses() {
    let files = parsed_files();
    let console = Console::new(&files);
    let cidrs = ["198.51.100.0/24", "203.0.113.7/32"];
    for (variable, rule, port) in [
        ("expose_prometheus", "web", 9090),
        ("expose_loki", "web", 3100),
        ("expose_app", "web", 5000),
        ("expose_alertmanager", "alertmanager_web", 9093),
    ] {
        let flows = internet_flows(&console, &files, &with(&[(variable, "true")]));
        let mut expected: BTreeSet<(String, u64, String)> = cidrs
            .iter()
            .map(|c| {
                (
                    format!("aws_vpc_security_group_ingress_rule.{rule}"),
                    port,
                    c.to_string(),
                )
            })
            .collect();
        if variable == "expose_app" {
            // With the fleet, plain HTTP through the load balancer as well.
            expected.extend(cidrs.iter().map(|c| {
                (
                    "aws_vpc_security_group_ingress_rule.alb_web".to_string(),
                    80,
                    c.to_string(),
                )
            }));
        }
        assert_eq!(flows, expected, "{variable}");
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

/// Whether every precondition of `resource` holds with `vars`, `allowed_web_cidrs` taking
/// the HCL list `cidrs` (substituted into the conditions and the locals they read, so that
/// values the variable's own validation refuses reach the precondition too).
fn preconditions_hold(
    console: &Console,
    files: &BTreeMap<String, Body>,
    resource: &Block,
    vars: &[(&str, &str)],
    cidrs: &str,
) -> bool {
    let conditions = preconditions(resource);
    assert!(
        !conditions.is_empty(),
        "{} has no precondition",
        address(resource)
    );
    let checks: Vec<String> = conditions
        .iter()
        .map(|condition| {
            let mut condition = condition.clone();
            for local in ["web_cidrs_usable", "lb_web_ports"] {
                condition = replace_reference(
                    &condition,
                    &format!("local.{local}"),
                    &format!("({})", local_expr(files, local)),
                );
            }
            let condition = replace_reference(&condition, "var.allowed_web_cidrs", cidrs);
            format!("try(({condition}) == true, false)")
        })
        .collect();
    console.eval_expr(vars, &format!("alltrue([{}])", checks.join(", "))) == json!(true)
}

#[test]
fn an_unauthenticated_service_is_never_exposed_to_nobody_or_to_the_whole_internet() {
    let files = parsed_files();
    let console = Console::new(&files);
    let whole_internet = [
        r#"["0.0.0.0/0"]"#,
        r#"["::/0"]"#,
        r#"["203.0.113.7/32","0.0.0.0/0"]"#,
    ];
    for (variable, group) in [
        ("expose_prometheus", "prometheus"),
        ("expose_alertmanager", "prometheus"),
        ("expose_loki", "loki"),
        ("expose_app", "app"),
    ] {
        // The variable's own validation refuses it first...
        for cidrs in whole_internet {
            assert!(
                matches!(
                    console.validate(&[(variable, "true"), ("allowed_web_cidrs", cidrs)]),
                    Outcome::Refused(_)
                ),
                "{variable} with allowed_web_cidrs = {cidrs} is accepted"
            );
        }
        // ...and the group that would open refuses it whatever that validation becomes.
        let group = resource(&files, "aws_security_group", group);
        let exposing = with(&[(variable, "true")]);
        for cidrs in whole_internet.iter().chain(&["[]"]) {
            assert!(
                !preconditions_hold(&console, &files, group, &exposing, cidrs),
                "{variable} with allowed_web_cidrs = {cidrs} passes {}'s preconditions",
                address(group)
            );
        }
        assert!(
            preconditions_hold(&console, &files, group, &exposing, CIDRS),
            "{variable} with listed addresses is refused"
        );
        assert!(
            preconditions_hold(&console, &files, group, &with(&[]), "[]"),
            "nothing exposed needs no address"
        );
    }
    // Publishing through the load balancer needs listed addresses too.
    let alb = resource(&files, "aws_security_group", "alb");
    for published in [
        with(&[("expose_app", "true")]),
        with(&[("app_certificate_arn", APP_CERTIFICATE)]),
        grafana_https(&[]),
    ] {
        assert!(!preconditions_hold(&console, &files, alb, &published, "[]"));
        assert!(preconditions_hold(&console, &files, alb, &published, CIDRS));
    }
    assert!(preconditions_hold(&console, &files, alb, &with(&[]), "[]"));
    // Every description says what it opens is unauthenticated and names the tunnel.
    for variable in [
        "expose_prometheus",
        "expose_loki",
        "expose_app",
        "expose_alertmanager",
    ] {
        let description = text(attr(
            terraform_support::variable(&files, variable).body(),
            "description",
        ));
        assert!(
            description.contains("Unauthenticated") && description.contains("cargo xtask open"),
            "{variable}: {description}"
        );
        assert_eq!(
            text(attr(
                terraform_support::variable(&files, variable).body(),
                "default"
            )),
            "false",
            "{variable}"
        );
    }
}

#[test]
fn with_grafanas_certificate_only_the_load_balancer_admits_people_on_443_and_80() {
    let files = parsed_files();
    let console = Console::new(&files);
    let vars = grafana_https(&[]);
    let expected: BTreeSet<(String, u64, String)> = [80, 443]
        .into_iter()
        .flat_map(|port| {
            ["198.51.100.0/24", "203.0.113.7/32"].map(|cidr| {
                (
                    "aws_vpc_security_group_ingress_rule.alb_web".to_string(),
                    port,
                    cidr.to_string(),
                )
            })
        })
        .collect();
    assert_eq!(internet_flows(&console, &files, &vars), expected);

    // Port 80 only redirects: its default action, and a rule for Grafana's name that redirects
    // even when expose_app makes the default forward the app.
    let http = resource(&files, "aws_lb_listener", "http");
    let action = block(http.body(), "default_action").unwrap();
    assert_eq!(
        console.eval_expr(&vars, &text(attr(action, "type"))),
        json!("redirect")
    );
    assert_eq!(
        console.eval_expr(
            &grafana_https(&[("expose_app", "true")]),
            &text(attr(action, "type"))
        ),
        json!("forward")
    );
    let redirect_rule = resource(&files, "aws_lb_listener_rule", "grafana_http_redirect");
    assert_eq!(
        text(attr(redirect_rule.body(), "listener_arn")),
        "aws_lb_listener.http[0].arn"
    );
    assert_eq!(host_header(redirect_rule), ["var.grafana_host_name"]);
    let rule_action = block(redirect_rule.body(), "action").unwrap();
    assert_eq!(
        attr(rule_action, "type"),
        Some(&Expression::from("redirect"))
    );
    let redirect = block(rule_action, "redirect").unwrap();
    for (key, value) in [
        ("port", "443"),
        ("protocol", "HTTPS"),
        ("status_code", "HTTP_301"),
    ] {
        assert_eq!(attr(redirect, key), Some(&Expression::from(value)), "{key}");
    }

    // 443: Grafana's name goes to Grafana's target group, anything else gets a 404.
    let https = resource(&files, "aws_lb_listener", "https");
    assert_eq!(instances(&console, &vars, https), 1);
    let certificate = local_expr(&files, "https_certificate");
    assert_eq!(
        text(attr(https.body(), "certificate_arn")),
        "local.https_certificate"
    );
    assert_eq!(
        console.eval_expr(&vars, &certificate),
        json!(GRAFANA_CERTIFICATE)
    );
    let default = block(https.body(), "default_action").unwrap();
    assert_eq!(
        console.eval_expr(&vars, &text(attr(default, "type"))),
        json!("fixed-response")
    );
    let forward = resource(&files, "aws_lb_listener_rule", "grafana_https");
    assert_eq!(
        text(attr(forward.body(), "listener_arn")),
        "aws_lb_listener.https[0].arn"
    );
    assert_eq!(host_header(forward), ["var.grafana_host_name"]);
    let forward_action = block(forward.body(), "action").unwrap();
    assert_eq!(
        attr(forward_action, "type"),
        Some(&Expression::from("forward"))
    );
    assert_eq!(
        text(attr(forward_action, "target_group_arn")),
        "aws_lb_target_group.grafana[0].arn"
    );
    // With the app's certificate as the listener's default, Grafana's is added by SNI.
    let extra = resource(&files, "aws_lb_listener_certificate", "grafana");
    let both = grafana_https(&[("app_certificate_arn", APP_CERTIFICATE)]);
    assert_eq!(
        console.eval_expr(&both, &certificate),
        json!(APP_CERTIFICATE)
    );
    assert_eq!(instances(&console, &both, extra), 1);
    assert_eq!(
        instances(
            &console,
            &grafana_https(&[("app_certificate_arn", GRAFANA_CERTIFICATE)]),
            extra
        ),
        0,
        "one certificate for both names is the listener's default already"
    );

    // Grafana's own target group checks /api/health on Grafana's port, on Grafana's instance.
    let group = resource(&files, "aws_lb_target_group", "grafana");
    let body = group.body();
    assert_eq!(attr(body, "port"), Some(&Expression::from(3000)));
    assert_eq!(attr(body, "protocol"), Some(&Expression::from("HTTP")));
    let check = block(body, "health_check").unwrap();
    assert_eq!(attr(check, "path"), Some(&Expression::from("/api/health")));
    assert_eq!(attr(check, "matcher"), Some(&Expression::from("200")));
    let attachment = resource(&files, "aws_lb_target_group_attachment", "grafana");
    assert_eq!(
        text(attr(attachment.body(), "target_id")),
        "aws_instance.role[\"grafana\"].id"
    );
    assert_eq!(
        attr(attachment.body(), "port"),
        Some(&Expression::from(3000))
    );
    let name = console.eval_expr(&vars, &local_expr(&files, "grafana_target_group_name"));
    assert_eq!(name, json!("grafana-obstack"));

    // Grafana's group admits Prometheus' scrape and the load balancer, nothing else; the load
    // balancer may reach it.
    assert_eq!(
        grafana_sources(&console, &files, &vars),
        [
            "aws_vpc_security_group_ingress_rule.grafana_from_alb",
            "peer from prometheus on 3000",
            "peer from prometheus on 9100"
        ]
    );
    assert_eq!(
        grafana_sources(&console, &files, &with(&[])),
        [
            "peer from prometheus on 3000",
            "peer from prometheus on 9100"
        ],
        "without the certificate Grafana's port takes only Prometheus"
    );
    let egress = resource(
        &files,
        "aws_vpc_security_group_egress_rule",
        "alb_to_grafana",
    );
    assert_eq!(instances(&console, &vars, egress), 1);
    assert_eq!(
        text(attr(egress.body(), "referenced_security_group_id")),
        "aws_security_group.grafana.id"
    );

    // What xtask reads and Grafana's agent is told.
    assert_eq!(
        console.eval_expr(&vars, &output_value(&files, "public_services")),
        json!({"grafana": format!("https://{HOST}")})
    );
    let urls = console.eval_expr(&vars, &output_value(&files, "urls"));
    assert_eq!(urls["grafana"], json!(format!("https://{HOST}")));
    assert_eq!(
        console.eval_expr(&vars, &output_value(&files, "exposed"))["grafana"],
        json!(true)
    );
    assert_eq!(grafana_host_tag(&console, &files, &vars), json!(HOST));
    assert_eq!(grafana_host_tag(&console, &files, &with(&[])), Value::Null);

    // Without the certificate nothing of this exists.
    for block in files["grafana_https.tf"]
        .blocks()
        .filter(|b| b.identifier() == "resource")
    {
        for vars in [with(&[]), with(&[("expose_app", "true")])] {
            assert_eq!(instances(&console, &vars, block), 0, "{}", address(block));
        }
    }
}

/// The values of a listener rule's host-header condition, as HCL text.
fn host_header(rule: &Block) -> Vec<String> {
    let condition = block(rule.body(), "condition").expect("a condition");
    let host = block(condition, "host_header").expect("a host_header condition");
    match attr(host, "values") {
        Some(Expression::Array(items)) => items.iter().map(ToString::to_string).collect(),
        other => panic!("host_header values: {other:?}"),
    }
}

/// Who may open a connection to Grafana's group: rules referencing another group (by
/// address), peer flows (by their source role and port) and any address range, with `vars`.
fn grafana_sources(
    console: &Console,
    files: &BTreeMap<String, Body>,
    vars: &[(&str, &str)],
) -> Vec<String> {
    let mut sources = Vec::new();
    for rule in resources(files, "aws_vpc_security_group_ingress_rule") {
        let group = text(attr(rule.body(), "security_group_id"));
        let at = address(rule);
        if at == "aws_vpc_security_group_ingress_rule.peer" {
            let value = console.eval(
                vars,
                "sort([for f in values(local.peer_flows) : \"${f.from} on ${f.port}\" if f.to == \"grafana\"])",
            );
            for from in value.as_array().unwrap() {
                sources.push(format!("peer from {}", from.as_str().unwrap()));
            }
            continue;
        }
        let targets_grafana = if group.contains("each.") {
            // Each group's id stands in as its role's name.
            let for_each = text(attr(rule.body(), "for_each"));
            let group = replace_reference(
                &group,
                "local.security_group_ids",
                r#"{app="app",prometheus="prometheus",loki="loki",grafana="grafana"}"#,
            );
            let group = replace_reference(
                &replace_reference(&group, "each.key", "each_key"),
                "each.value",
                "each_value",
            );
            console
                .eval_expr(
                    vars,
                    &format!("[for each_key, each_value in ({for_each}) : {group}]"),
                )
                .as_array()
                .unwrap()
                .iter()
                .any(|role| role == "grafana")
        } else {
            group == "aws_security_group.grafana.id"
        };
        if targets_grafana && instances(console, vars, rule) > 0 {
            sources.push(at);
        }
    }
    sources.sort();
    sources
}

/// The `obstack:grafana-host-name` tag Grafana's instance launches with (null when absent).
fn grafana_host_tag(
    console: &Console,
    files: &BTreeMap<String, Body>,
    vars: &[(&str, &str)],
) -> Value {
    let instance = resource(files, "aws_instance", "role");
    let tags = replace_reference(
        &replace_reference(
            &text(attr(instance.body(), "tags")),
            "each.key",
            "\"grafana\"",
        ),
        "aws_ebs_volume.data",
        r#"{grafana={id="vol-0g"},loki={id="vol-0l"},prometheus={id="vol-0p"}}"#,
    );
    console.eval_expr(
        vars,
        &format!("lookup({tags}, \"obstack:grafana-host-name\", null)"),
    )
}

#[test]
fn grafanas_https_variables_are_validated_and_come_together_with_the_fleet() {
    let files = parsed_files();
    let console = Console::new(&files);
    let good_hosts = ["grafana.example.com", "a.io", "obs-1.team-a.example.org"];
    let long = format!("{}.example.com", "a".repeat(120));
    let bad_hosts = [
        "localhost",
        "Grafana.example.com",
        "10.0.0.1",
        "*.example.com",
        "https://grafana.example.com",
        "grafana.example.com/",
        "grafana.example.com:443",
        "grafana.example.com.",
        "-a.example.com",
        "grafana.example.c0m",
        long.as_str(),
    ];
    for host in good_hosts {
        assert!(console.accepts("grafana_host_name", host), "{host}");
        // The agent takes what Terraform tags (obstack:grafana-host-name).
        assert!(stack_agent::HttpsHost::parse(host).is_ok(), "{host}");
    }
    for host in bad_hosts {
        assert!(
            !console.accepts("grafana_host_name", host),
            "{host:?} accepted"
        );
        assert!(stack_agent::HttpsHost::parse(host).is_err(), "{host:?}");
    }
    assert!(console.accepts("grafana_certificate_arn", GRAFANA_CERTIFICATE));
    for bad in ["", "arn:aws:iam::123456789012:server-certificate/grafana"] {
        assert!(!console.accepts("grafana_certificate_arn", bad), "{bad}");
    }

    // Together, and only with the fleet's load balancer: preconditions of Grafana's group.
    let group = resource(&files, "aws_security_group", "grafana");
    let holds = |vars: &[(&str, &str)]| preconditions_hold(&console, &files, group, vars, CIDRS);
    assert!(holds(&with(&[])));
    assert!(holds(&grafana_https(&[])));
    assert!(!holds(&with(&[(
        "grafana_certificate_arn",
        GRAFANA_CERTIFICATE
    )])));
    assert!(!holds(&with(&[("grafana_host_name", HOST)])));
    assert!(!holds(&grafana_https(&[("app_fleet", "false")])));
}

#[test]
fn the_operator_policy_allows_port_forwarding_to_this_stacks_instances_and_nothing_else() {
    let files = parsed_files();
    let console = Console::new(&files);
    let policy = console.eval_expr(
        &with(&[("name", "team-a")]),
        &format!(
            "jsondecode({})",
            output_value(&files, "operator_access_policy")
        ),
    );
    let statements: Vec<&Value> = statements(&policy);
    let granting = |action: &str| -> Vec<&Value> {
        statements
            .iter()
            .copied()
            .filter(|s| {
                s["Effect"] == "Allow"
                    && string_list(&s["Action"])
                        .iter()
                        .any(|a| terraform_support::iam_action_matches(a, action))
            })
            .collect()
    };
    // Sessions start only on this stack's instances (by the tag every instance carries) and
    // only with the port-forwarding document: no shell.
    let start = granting("ssm:StartSession");
    let resources: BTreeSet<String> = start
        .iter()
        .flat_map(|s| string_list(&s["Resource"]))
        .collect();
    assert_eq!(
        resources,
        BTreeSet::from([
            "arn:aws:ec2:eu-west-1:123456789012:instance/*".to_string(),
            "arn:aws:ssm:eu-west-1::document/AWS-StartPortForwardingSession".to_string(),
        ])
    );
    let on_instances = start
        .iter()
        .find(|s| string_list(&s["Resource"])[0].contains(":instance/"))
        .unwrap();
    assert_eq!(
        on_instances["Condition"]["StringEquals"]["ssm:resourceTag/obstack:deployment"],
        json!("team-a")
    );
    assert_eq!(
        on_instances["Condition"]["BoolIfExists"]["ssm:SessionDocumentAccessCheck"],
        json!("true"),
        "the document check refuses a session without an allowed document (a shell)"
    );
    let versions =
        std::fs::read_to_string(terraform_support::terraform_dir().join("versions.tf")).unwrap();
    assert!(
        versions.contains("\"obstack:deployment\" = var.name"),
        "every instance carries obstack:deployment (the provider's default tags)"
    );
    // Own sessions only.
    for action in [
        "ssm:TerminateSession",
        "ssm:ResumeSession",
        "ssmmessages:OpenDataChannel",
    ] {
        let granted = granting(action);
        assert_eq!(granted.len(), 1, "{action}");
        assert_eq!(
            string_list(&granted[0]["Resource"]),
            ["arn:aws:ssm:eu-west-1:123456789012:session/${aws:userid}-*"],
            "{action}"
        );
    }
    // Nothing else is writable, nothing granted by wildcard action, "*" only for the reads
    // EC2 has no resource types for.
    for statement in &statements {
        for action in string_list(&statement["Action"]) {
            assert!(!action.contains('*'), "{action}");
            if string_list(&statement["Resource"]) == ["*"] {
                assert!(
                    ["ec2:DescribeInstances", "ec2:DescribeInstanceStatus"]
                        .contains(&action.as_str()),
                    "{action} on *"
                );
            }
        }
    }
    let actions: BTreeSet<String> = statements
        .iter()
        .flat_map(|s| string_list(&s["Action"]))
        .collect();
    assert_eq!(
        actions,
        [
            "ec2:DescribeInstanceStatus",
            "ec2:DescribeInstances",
            "kms:Decrypt",
            "ssm:GetParameter",
            "ssm:ResumeSession",
            "ssm:StartSession",
            "ssm:TerminateSession",
            "ssmmessages:OpenDataChannel",
        ]
        .into_iter()
        .map(String::from)
        .collect()
    );
    // Grafana's password, that parameter only, decrypted only through SSM.
    assert_eq!(
        string_list(&granting("ssm:GetParameter")[0]["Resource"]),
        ["arn:aws:ssm:eu-west-1:123456789012:parameter/obstack/obstack/grafana/admin-password"]
    );
    assert_eq!(
        granting("kms:Decrypt")[0]["Condition"]["StringEquals"]["kms:ViaService"],
        json!("ssm.eu-west-1.amazonaws.com")
    );
}
