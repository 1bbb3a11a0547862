//! Terraform against the role registry: `terraform/` keeps its own HCL, and these helpers
//! read its per-role maps with hcl-rs and list every way they disagree with the registry
//! (`images/<role>/role.toml`). Shared by `roles.rs` (the checkout's configuration) and
//! `fifth_role.rs` (a registry with a scratch role, which Terraform does not know yet).
//!
//! What is compared (images/README.md, "Adding a role", lists the same places):
//!
//! | Terraform | registry |
//! |---|---|
//! | `security.tf` `local.roles` (`toset([...])`) and `local.security_group_ids`' keys | the role names |
//! | `instances.tf` the `role => [peers]` map in `local.peer_tags` | each role's `[peers]` keys |
//! | `security.tf` `local.peer_flows`: `to` and `port` | a port of one of `to`'s services (or a common service's, on every role) |
//! | the same flows, the other way round | a flow `role -> peer` on the peer's port for every `[peers.<peer>]` |
//! | `security.tf` `local.web_ports` | each role's main service port |
//! | `outputs.tf` `output "urls"`: keys and URL ports | the role names, each role's main service port |
//! | `variables.tf` the role lists in `ami_ids` and `instance_types` validations | the role names |
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use hcl::expr::{Operation, TemplateExpr};
use hcl::{Body, Expression, ObjectKey};
use xtask::roles::Registry;

/// `terraform/` in the checkout, or `OBSTACK_TEST_TERRAFORM_DIR` (a copy, e.g. a mutated one
/// to see the tests fail).
pub fn terraform_dir() -> PathBuf {
    match std::env::var_os("OBSTACK_TEST_TERRAFORM_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => testkit::workspace_root().join("terraform"),
    }
}

/// The registry of the checkout's `images/`.
pub fn checkout_registry() -> Registry {
    Registry::load(&testkit::workspace_root().join("images"))
        .unwrap_or_else(|e| panic!("the role registry: {e}"))
}

/// Every `.tf` file of `dir`, parsed, by file name.
pub fn parse_terraform(dir: &Path) -> BTreeMap<String, Body> {
    let mut files = BTreeMap::new();
    for entry in
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
    {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "tf") {
            let text = std::fs::read_to_string(&path).unwrap();
            let body = hcl::parse(&text)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
            files.insert(
                path.file_name().unwrap().to_string_lossy().into_owned(),
                body,
            );
        }
    }
    for expected in ["security.tf", "instances.tf", "outputs.tf", "variables.tf"] {
        assert!(
            files.contains_key(expected),
            "{} has no {expected}: {:?}",
            dir.display(),
            files.keys()
        );
    }
    files
}

/// Copies what the registry reads (every `<role>/role.toml` and `common/services.toml`) from
/// `from` to `to`.
pub fn copy_registry_files(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let dir = entry.unwrap().path();
        for file in ["role.toml", "services.toml"] {
            let path = dir.join(file);
            if path.is_file() {
                let target = to.join(dir.file_name().unwrap()).join(file);
                std::fs::create_dir_all(target.parent().unwrap()).unwrap();
                std::fs::copy(&path, &target).unwrap();
            }
        }
    }
}

/// Every way `terraform`'s per-role maps disagree with `registry`, one line each (empty when
/// they agree). Panics when a map it reads is not where it expects it: the check must
/// never pass by finding nothing to compare.
pub fn disagreements(terraform: &BTreeMap<String, Body>, registry: &Registry) -> Vec<String> {
    let mut problems = Vec::new();
    let roles: BTreeSet<String> = registry.names().iter().map(|r| r.to_string()).collect();

    // security.tf: the role set, and one security group per role.
    let role_set = local(terraform, "roles")
        .and_then(|expr| find_string_list(expr, &|_| true))
        .unwrap_or_else(|| panic!("security.tf: no `roles = toset([...])` local"));
    compare_sets(&mut problems, "security.tf local.roles", &role_set, &roles);
    if let Some(Expression::Object(groups)) = local(terraform, "security_group_ids") {
        let keys = groups.keys().map(key_text).collect();
        compare_sets(
            &mut problems,
            "security.tf local.security_group_ids",
            &keys,
            &roles,
        );
    }

    // instances.tf: which peers each role reads from its tags.
    let peer_tags = local(terraform, "peer_tags")
        .unwrap_or_else(|| panic!("instances.tf: no `peer_tags` local"));
    let peer_map = find_object(peer_tags, &|object| {
        !object.is_empty() && object.values().all(|v| string_list(v).is_some())
    })
    .unwrap_or_else(|| panic!("instances.tf: no `role = [peers]` map in local.peer_tags"));
    let mut terraform_peers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (key, value) in peer_map {
        let role = key_text(key);
        if !roles.contains(&role) {
            problems.push(format!(
                "instances.tf local.peer_tags: `{role}` is not a role of images/"
            ));
        }
        terraform_peers.insert(role, string_list(value).unwrap());
    }
    for role in registry.roles() {
        let expected: BTreeSet<String> = role.peers.keys().cloned().collect();
        let actual = terraform_peers.get(&role.name).cloned().unwrap_or_default();
        if actual != expected {
            problems.push(format!(
                "instances.tf local.peer_tags: {} reads the peers {:?}, but images/{}/role.toml \
                 declares {:?}",
                role.name, actual, role.name, expected
            ));
        }
    }

    // security.tf: every flow between roles goes to a port one of the target's services
    // listens on, and every peer a role reads can be reached on its port.
    let flows_expr = local(terraform, "peer_flows")
        .unwrap_or_else(|| panic!("security.tf: no `peer_flows` local"));
    let mut flows = Vec::new();
    visit(flows_expr, &mut |expr| {
        if let Expression::Object(object) = expr {
            let field = |name: &str| {
                object
                    .iter()
                    .find(|(k, _)| key_text(k) == name)
                    .map(|(_, v)| v)
            };
            if let (Some(from), Some(to), Some(port)) = (field("from"), field("to"), field("port"))
            {
                flows.push((literal(from), literal(to), number(port)));
            }
        }
    });
    assert!(
        !flows.is_empty(),
        "security.tf: no `{{ from, to, port }}` flow in local.peer_flows"
    );
    let common_ports: BTreeSet<u16> = registry.common_services().iter().map(|s| s.port).collect();
    for (from, to, port) in &flows {
        let Some(port) = port else {
            problems.push(format!(
                "security.tf local.peer_flows: a flow {from:?} -> {to:?} has no literal port"
            ));
            continue;
        };
        if let Some(from) = from {
            if !roles.contains(from) {
                problems.push(format!(
                    "security.tf local.peer_flows: from `{from}` is not a role of images/"
                ));
            }
        }
        match to {
            Some(to) => match registry.role(to) {
                Ok(role) => {
                    let ports: BTreeSet<u16> = role
                        .services
                        .iter()
                        .map(|s| s.port)
                        .chain(common_ports.iter().copied())
                        .collect();
                    if !ports.contains(port) {
                        problems.push(format!(
                            "security.tf local.peer_flows: {} -> {to} on port {port}, but no \
                             service of {to} listens there (its ports: {ports:?})",
                            from.as_deref().unwrap_or("?")
                        ));
                    }
                }
                Err(_) => problems.push(format!(
                    "security.tf local.peer_flows: to `{to}` is not a role of images/"
                )),
            },
            // `to = role` in a `for role in local.roles`: a service every image runs.
            None => {
                if !common_ports.contains(port) {
                    problems.push(format!(
                        "security.tf local.peer_flows: a flow to every role on port {port}, \
                         which is not a common service's port ({common_ports:?})"
                    ));
                }
            }
        }
    }
    for role in registry.roles() {
        for (peer, spec) in &role.peers {
            let reachable = flows.iter().any(|(from, to, port)| {
                from.as_deref() == Some(role.name.as_str())
                    && to.as_deref() == Some(peer.as_str())
                    && *port == Some(spec.port)
            });
            if !reachable {
                problems.push(format!(
                    "security.tf local.peer_flows: no flow {} -> {peer} on port {}, which \
                     images/{}/role.toml reads as a peer",
                    role.name, spec.port, role.name
                ));
            }
        }
    }

    // security.tf: the UIs' ports.
    if let Some(web_ports) = local(terraform, "web_ports") {
        visit(web_ports, &mut |expr| {
            if let Expression::Object(object) = expr {
                for (key, value) in object {
                    let (role, Some(port)) = (key_text(key), number(value)) else {
                        continue;
                    };
                    check_main_port(
                        &mut problems,
                        registry,
                        "security.tf local.web_ports",
                        &role,
                        port,
                    );
                }
            }
        });
    }

    // outputs.tf: a URL per role, on its main service's port.
    let urls = terraform["outputs.tf"]
        .blocks()
        .find(|b| b.identifier() == "output" && b.labels()[0].as_str() == "urls")
        .and_then(|b| attribute(b.body(), "value"))
        .unwrap_or_else(|| panic!("outputs.tf: no `output \"urls\"` with a value"));
    let Expression::Object(urls) = urls else {
        panic!("outputs.tf: output \"urls\" is not an object literal: {urls}");
    };
    let keys: BTreeSet<String> = urls.keys().map(key_text).collect();
    compare_sets(&mut problems, "outputs.tf output.urls", &keys, &roles);
    for (key, value) in urls {
        let role = key_text(key);
        // `fleet ? <load balancer URL> : <instance URL>` (the app): the load balancer listens
        // on 80/443 by its scheme; the instance branch is the one on the service's port.
        let mut value = value;
        loop {
            value = match value {
                Expression::Parenthesis(inner) => inner,
                Expression::Conditional(conditional) => &conditional.false_expr,
                _ => break,
            };
        }
        let text = template_text(value);
        let port = text.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
        match port {
            Some(port) => check_main_port(
                &mut problems,
                registry,
                "outputs.tf output.urls",
                &role,
                port,
            ),
            None => problems.push(format!(
                "outputs.tf output.urls: {role}'s URL {text} ends in no port"
            )),
        }
        if !text.contains(&format!("[\"{role}\"]")) {
            problems.push(format!(
                "outputs.tf output.urls: {role}'s URL {text} is not {role}'s instance"
            ));
        }
    }

    // variables.tf: the validations that list the roles.
    for (name, required) in [("ami_ids", true), ("instance_types", false)] {
        let variable = terraform["variables.tf"]
            .blocks()
            .find(|b| b.identifier() == "variable" && b.labels()[0].as_str() == name)
            .unwrap_or_else(|| panic!("variables.tf: no variable {name}"));
        let mut lists = Vec::new();
        for validation in variable
            .body()
            .blocks()
            .filter(|b| b.identifier() == "validation")
        {
            if let Some(condition) = attribute(validation.body(), "condition") {
                visit(condition, &mut |expr| {
                    if let Some(list) = string_list(expr) {
                        lists.push(list);
                    }
                });
            }
        }
        assert!(
            !required || !lists.is_empty(),
            "variables.tf: no role list in the validations of {name}"
        );
        for list in lists {
            compare_sets(
                &mut problems,
                &format!("variables.tf var.{name} validation"),
                &list,
                &roles,
            );
        }
    }
    problems
}

fn check_main_port(
    problems: &mut Vec<String>,
    registry: &Registry,
    place: &str,
    role: &str,
    port: u16,
) {
    match registry.role(role) {
        Ok(spec) => {
            let main = spec.main_service().map(|s| s.port);
            if main != Some(port) {
                problems.push(format!(
                    "{place}: {role} on port {port}, but its main service (images/{role}/role.toml) \
                     listens on {}",
                    main.map_or_else(|| "no port".to_string(), |p| p.to_string())
                ));
            }
        }
        Err(_) => problems.push(format!("{place}: `{role}` is not a role of images/")),
    }
}

fn compare_sets(
    problems: &mut Vec<String>,
    place: &str,
    terraform: &BTreeSet<String>,
    roles: &BTreeSet<String>,
) {
    let missing: Vec<&String> = roles.difference(terraform).collect();
    let extra: Vec<&String> = terraform.difference(roles).collect();
    if !missing.is_empty() {
        problems.push(format!("{place} lacks the role(s) {missing:?} of images/"));
    }
    if !extra.is_empty() {
        problems.push(format!("{place} names {extra:?}, not roles of images/"));
    }
}

/// The value of `local.<name>` in any file.
fn local<'a>(terraform: &'a BTreeMap<String, Body>, name: &str) -> Option<&'a Expression> {
    terraform
        .values()
        .flat_map(|body| body.blocks())
        .filter(|b| b.identifier() == "locals")
        .find_map(|b| attribute(b.body(), name))
}

fn attribute<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes().find(|a| a.key() == key).map(|a| a.expr())
}

fn key_text(key: &ObjectKey) -> String {
    match key {
        ObjectKey::Identifier(id) => id.to_string(),
        ObjectKey::Expression(Expression::String(s)) => s.clone(),
        ObjectKey::Expression(other) => other.to_string(),
        other => panic!("an object key hcl-rs added since 0.18: {other:?}"),
    }
}

/// A string literal's value; `None` for anything computed.
fn literal(expr: &Expression) -> Option<String> {
    match expr {
        Expression::String(s) => Some(s.clone()),
        Expression::TemplateExpr(t) => match t.as_ref() {
            TemplateExpr::QuotedString(s) if !s.contains("${") => Some(s.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn number(expr: &Expression) -> Option<u16> {
    match expr {
        Expression::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        _ => None,
    }
}

/// A quoted string's text, interpolations included.
fn template_text(expr: &Expression) -> String {
    match expr {
        Expression::String(s) => s.clone(),
        Expression::TemplateExpr(t) => match t.as_ref() {
            TemplateExpr::QuotedString(s) => s.clone(),
            TemplateExpr::Heredoc(h) => h.template.clone(),
        },
        other => other.to_string(),
    }
}

/// An array literal of string literals (also inside `toset(...)`), as a set.
fn string_list(expr: &Expression) -> Option<BTreeSet<String>> {
    match expr {
        Expression::Array(items) => items.iter().map(literal).collect(),
        Expression::FuncCall(call)
            if call.name.name.as_str() == "toset" && call.args.len() == 1 =>
        {
            string_list(&call.args[0])
        }
        Expression::Parenthesis(inner) => string_list(inner),
        _ => None,
    }
}

/// The first string list in `expr` (depth first) that `accept`s.
fn find_string_list(
    expr: &Expression,
    accept: &dyn Fn(&BTreeSet<String>) -> bool,
) -> Option<BTreeSet<String>> {
    let mut found = None;
    visit(expr, &mut |e| {
        if found.is_none() {
            if let Some(list) = string_list(e).filter(|l| accept(l)) {
                found = Some(list);
            }
        }
    });
    found
}

/// The first object literal in `expr` (depth first) that `accept`s.
fn find_object<'a>(
    expr: &'a Expression,
    accept: &dyn Fn(&hcl::Object<ObjectKey, Expression>) -> bool,
) -> Option<&'a hcl::Object<ObjectKey, Expression>> {
    match expr {
        Expression::Object(object) if accept(object) => Some(object),
        _ => children(expr)
            .into_iter()
            .find_map(|c| find_object(c, accept)),
    }
}

/// Calls `f` on `expr` and every expression inside it, depth first.
fn visit<'a>(expr: &'a Expression, f: &mut dyn FnMut(&'a Expression)) {
    f(expr);
    for child in children(expr) {
        visit(child, f);
    }
}

fn children(expr: &Expression) -> Vec<&Expression> {
    match expr {
        Expression::Array(items) => items.iter().collect(),
        Expression::Object(object) => object
            .iter()
            .flat_map(|(key, value)| {
                let key = match key {
                    ObjectKey::Expression(e) => Some(e),
                    _ => None,
                };
                key.into_iter().chain(std::iter::once(value))
            })
            .collect(),
        Expression::FuncCall(call) => call.args.iter().collect(),
        Expression::Parenthesis(inner) => vec![inner.as_ref()],
        Expression::Conditional(c) => vec![&c.cond_expr, &c.true_expr, &c.false_expr],
        Expression::Operation(op) => match op.as_ref() {
            Operation::Unary(u) => vec![&u.expr],
            Operation::Binary(b) => vec![&b.lhs_expr, &b.rhs_expr],
        },
        Expression::ForExpr(f) => std::iter::once(&f.collection_expr)
            .chain(f.key_expr.as_ref())
            .chain(std::iter::once(&f.value_expr))
            .chain(f.cond_expr.as_ref())
            .collect(),
        Expression::Traversal(t) => vec![&t.expr],
        _ => Vec::new(),
    }
}
