//! The order Terraform creates things in: whatever needs a routable public subnet when it is
//! created (an internet-facing load balancer, an instance with a public address that must
//! reach SSM at boot, an Auto Scaling group launching such instances) depends, directly or
//! through other resources and locals, on the internet gateway, the route to it and the
//! association of each subnet it uses with that route's table. Terraform creates what has no
//! dependency between them in parallel: without the dependency, CreateLoadBalancer fails
//! with InvalidSubnet (and is not retried), and an instance boots without a way out.

use crate::terraform_support;

use std::collections::{BTreeMap, BTreeSet};

use hcl::{Block, Body, Expression};
use terraform_support::offline_plan::{nodes, Node};
use terraform_support::{attr, parsed_files, top_blocks};

/// Whether `text` mentions `name` (an address or `local.x`) as a whole reference.
fn mentions(text: &str, name: &str) -> bool {
    text.match_indices(name).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + name.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            && !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// What an expression text references: resource and data source addresses, and locals.
fn referenced(text: &str, nodes: &[Node], locals: &BTreeSet<String>) -> BTreeSet<String> {
    nodes
        .iter()
        .map(|n| n.address.clone())
        .chain(locals.iter().map(|l| format!("local.{l}")))
        .filter(|name| mentions(text, name))
        .collect()
}

/// The dependency graph: every resource, data source and local to what it references
/// (`depends_on` included).
fn graph<'a>(
    files: &'a BTreeMap<String, Body>,
) -> (Vec<Node<'a>>, BTreeMap<String, BTreeSet<String>>) {
    let nodes = nodes(files);
    let locals: BTreeMap<String, String> = top_blocks(files, "locals")
        .iter()
        .flat_map(|b| b.body().attributes())
        .map(|a| (a.key().to_string(), a.expr().to_string()))
        .collect();
    let names: BTreeSet<String> = locals.keys().cloned().collect();
    let mut edges = BTreeMap::new();
    for node in &nodes {
        let text = hcl::to_string(node.block.body()).unwrap();
        edges.insert(node.address.clone(), referenced(&text, &nodes, &names));
    }
    for (name, text) in &locals {
        edges.insert(format!("local.{name}"), referenced(text, &nodes, &names));
    }
    (nodes, edges)
}

/// Everything `from` depends on, directly or not.
fn closure(edges: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_string()];
    while let Some(next) = todo.pop() {
        for target in edges.get(&next).into_iter().flatten() {
            if seen.insert(target.clone()) {
                todo.push(target.clone());
            }
        }
    }
    seen
}

/// What a resource references without going through another resource: itself and the
/// locals it reads (the subnets it is placed in are named there).
fn own_references(edges: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_string()];
    while let Some(next) = todo.pop() {
        for target in edges.get(&next).into_iter().flatten() {
            if seen.insert(target.clone()) && target.starts_with("local.") {
                todo.push(target.clone());
            }
        }
    }
    seen
}

fn is_true(expr: Option<&Expression>) -> bool {
    matches!(expr, Some(Expression::Bool(true)))
}

/// Whether creating this resource needs its subnets to route to the internet already: the
/// resources AWS CloudFormation's User Guide lists as depending on the VPC-gateway
/// attachment when they have a public address (DependsOn attribute): Auto Scaling groups,
/// EC2 instances, load balancers, Elastic IP addresses, RDS instances.
fn needs_the_internet_route(node: &Node, files: &BTreeMap<String, Body>) -> bool {
    let body = node.block.body();
    match node.kind.as_str() {
        "aws_eip" | "aws_nat_gateway" => true,
        "aws_db_instance" => is_true(attr(body, "publicly_accessible")),
        // Internet-facing unless `internal = true`.
        "aws_lb" => !is_true(attr(body, "internal")),
        "aws_instance" => is_true(attr(body, "associate_public_ip_address")),
        // The instances its launch template gives a public address.
        "aws_autoscaling_group" => {
            let text = hcl::to_string(body).unwrap();
            top_blocks(files, "resource")
                .into_iter()
                .filter(|b| b.labels()[0].as_str() == "aws_launch_template")
                .filter(|t| {
                    text.contains(&format!("aws_launch_template.{}", t.labels()[1].as_str()))
                })
                .any(|t: &Block| {
                    t.body()
                        .blocks()
                        .filter(|b| b.identifier() == "network_interfaces")
                        .any(|n| is_true(attr(n.body(), "associate_public_ip_address")))
                })
        }
        _ => false,
    }
}

#[test]
fn what_needs_a_routable_public_subnet_waits_for_the_gateway_and_the_route() {
    let files = parsed_files();
    let (nodes, edges) = graph(&files);
    let gateways: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.kind == "aws_internet_gateway")
        .collect();
    assert!(!gateways.is_empty(), "no internet gateway found");
    // The routes to a gateway, and which subnet each route table association serves.
    let routes: Vec<&Node> = nodes
        .iter()
        .filter(|n| {
            n.kind == "aws_route"
                && attr(n.block.body(), "gateway_id").is_some_and(|g| {
                    gateways
                        .iter()
                        .any(|gw| g.to_string().starts_with(&gw.address))
                })
        })
        .collect();
    assert!(!routes.is_empty(), "no route to the internet gateway found");
    let associations: Vec<(&Node, String)> = nodes
        .iter()
        .filter(|n| n.kind == "aws_route_table_association")
        .map(|n| {
            let subnet = attr(n.block.body(), "subnet_id")
                .map(|e| e.to_string())
                .unwrap_or_default();
            (n, subnet)
        })
        .collect();

    let mut checked = Vec::new();
    let mut problems = Vec::new();
    for node in nodes.iter().filter(|n| needs_the_internet_route(n, &files)) {
        checked.push(node.address.clone());
        let waits_for = closure(&edges, &node.address);
        let mut needed: Vec<String> = gateways.iter().map(|g| g.address.clone()).collect();
        needed.extend(routes.iter().map(|r| r.address.clone()));
        // Each subnet it is placed in must be associated with the routing table first.
        for subnet in own_references(&edges, &node.address)
            .into_iter()
            .filter(|a| a.starts_with("aws_subnet."))
        {
            let serving: Vec<&Node> = associations
                .iter()
                .filter(|(_, s)| s.starts_with(&subnet))
                .map(|(a, _)| *a)
                .collect();
            assert!(
                !serving.is_empty(),
                "{subnet} has no route table association"
            );
            needed.extend(serving.iter().map(|a| a.address.clone()));
        }
        for dependency in needed {
            if !waits_for.contains(&dependency) {
                problems.push(format!(
                    "terraform/{}: {} may be created before {dependency}: add it to its depends_on",
                    node.file, node.address
                ));
            }
        }
    }
    for expected in [
        "aws_lb.app",
        "aws_instance.role",
        "aws_autoscaling_group.app",
    ] {
        assert!(
            checked.iter().any(|c| c == expected),
            "{expected} was not recognised as needing the internet route (checked: {checked:?})"
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_dependency_graph_follows_locals_and_depends_on() {
    let files = parsed_files();
    let (_, edges) = graph(&files);
    // aws_instance.role reaches the VPC through local.security_group_ids and the groups.
    let instance = closure(&edges, "aws_instance.role");
    assert!(instance.contains("local.security_group_ids"));
    assert!(instance.contains("aws_vpc.main"));
    // The flow log waits for its role's policy only through depends_on.
    assert!(closure(&edges, "aws_flow_log.vpc").contains("aws_iam_role_policy.flow_logs"));
    // Nothing depends on what it does not mention.
    assert!(!closure(&edges, "aws_vpc.main").contains("aws_instance.role"));
}
