//! What `terraform plan` would send to AWS, evaluated offline: every argument of every
//! resource, data source and provider block, for given variable values.
//!
//! A plan needs the provider, which cannot be downloaded here. `terraform console` needs none
//! when the configuration holds only variables and locals, so the configuration is rewritten
//! into locals: each local as it is, and each resource and data source as a local holding its
//! instances (a list for `count`, an object by key for `for_each`), each instance an object of
//! its own arguments and nested blocks plus, for the attributes AWS computes (ids, ARNs,
//! addresses), a stand-in value from `[returned.<type>]` of terraform/constraints.toml. Every
//! reference `aws_x.y` becomes `local.resource__aws_x__y` (`data.t.n` becomes
//! `local.data__t__n`), so locals, arguments and preconditions evaluate as in a plan, with
//! stand-ins where plan would show "known after apply".

use std::collections::{BTreeMap, BTreeSet};

use hcl::{Block, Body};
use serde_json::Value;

use super::{attr, replace_reference, top_blocks, Console, Evaluation};

/// Meta-arguments and blocks that configure Terraform, not the resource: never sent to AWS.
const META_ARGUMENTS: [&str; 4] = ["count", "for_each", "depends_on", "provider"];
const META_BLOCKS: [&str; 4] = ["lifecycle", "timeouts", "provisioner", "connection"];

/// A resource, data source or provider block.
pub struct Node<'a> {
    /// `aws_vpc.main`, `data.aws_partition.current`, `provider.aws`.
    pub address: String,
    /// `aws_vpc`, `data.aws_partition`, `provider.aws`: the key of its constraints and stand-ins.
    pub kind: String,
    /// The file it is declared in.
    pub file: String,
    pub block: &'a Block,
}

impl Node<'_> {
    fn local(&self) -> String {
        format!("local.{}", self.local_name())
    }

    fn local_name(&self) -> String {
        let name = self.address.replace('.', "__");
        if self.kind.starts_with("data.") {
            name
        } else {
            format!("resource__{name}")
        }
    }

    fn is_provider(&self) -> bool {
        self.kind.starts_with("provider.")
    }
}

/// Every resource, data source and provider block of the configuration (a module block
/// would hide its resources from the tests, so it fails them).
pub fn nodes(files: &BTreeMap<String, Body>) -> Vec<Node<'_>> {
    let mut found = Vec::new();
    for (file, body) in files {
        for block in body.blocks() {
            let labels: Vec<&str> = block.labels().iter().map(|l| l.as_str()).collect();
            let (address, kind) = match block.identifier() {
                "resource" => (format!("{}.{}", labels[0], labels[1]), labels[0].to_string()),
                "data" => (
                    format!("data.{}.{}", labels[0], labels[1]),
                    format!("data.{}", labels[0]),
                ),
                "provider" => (format!("provider.{}", labels[0]), format!("provider.{}", labels[0])),
                "module" => panic!(
                    "{file}: module blocks are not read by the Terraform tests (their resources would go unchecked)"
                ),
                _ => continue,
            };
            found.push(Node {
                address,
                kind,
                file: file.clone(),
                block,
            });
        }
    }
    found
}

/// Replaces every reference to a resource or data source by the local standing in for it.
fn rewrite(text: &str, nodes: &[Node]) -> String {
    let mut text = text.to_string();
    for node in nodes.iter().filter(|n| !n.is_provider()) {
        text = replace_reference(&text, &node.address, &node.local());
    }
    text
}

/// The instance variables of a resource's arguments, as plain names the stand-ins bind.
fn instance_variables(text: &str) -> String {
    let text = replace_reference(text, "each.key", "each_key");
    let text = replace_reference(&text, "each.value", "each_value");
    replace_reference(&text, "count.index", "count_index")
}

/// How a node's instances are enumerated: `count`, `for_each`, or a single instance.
enum Instances {
    Single,
    Count(String),
    ForEach(String),
}

impl Instances {
    fn of(node: &Node, nodes: &[Node]) -> Instances {
        let body = node.block.body();
        match (attr(body, "count"), attr(body, "for_each")) {
            (Some(count), None) => Instances::Count(rewrite(&count.to_string(), nodes)),
            (None, Some(for_each)) => Instances::ForEach(rewrite(&for_each.to_string(), nodes)),
            (None, None) => Instances::Single,
            _ => panic!("{} has both count and for_each", node.address),
        }
    }

    /// The expression `inner` (which may use each_key, each_value, count_index) for every
    /// instance: an object by key, a list, or the value itself.
    fn collection(&self, inner: &str) -> String {
        match self {
            Instances::Single => inner.to_string(),
            Instances::Count(count) => format!("[for count_index in range({count}) : {inner}]"),
            Instances::ForEach(for_each) => {
                format!("{{ for each_key, each_value in ({for_each}) : each_key => {inner} }}")
            }
        }
    }

    /// `inner` for every instance, always as a list.
    fn list(&self, inner: &str) -> String {
        match self {
            Instances::Single => format!("[{inner}]"),
            Instances::Count(count) => format!("[for count_index in range({count}) : {inner}]"),
            Instances::ForEach(for_each) => {
                format!("[for each_key, each_value in ({for_each}) : {inner}]")
            }
        }
    }

    fn key(&self) -> &'static str {
        match self {
            Instances::Single => "\"\"",
            Instances::Count(_) => "count_index",
            Instances::ForEach(_) => "each_key",
        }
    }
}

/// A body's arguments and nested blocks as an HCL object (blocks as lists of objects, as
/// Terraform exposes them); dynamic and meta blocks are left out.
fn object_of(body: &Body, nodes: &[Node], top: bool) -> String {
    let mut fields = Vec::new();
    for attribute in body.attributes() {
        if top && META_ARGUMENTS.contains(&attribute.key()) {
            continue;
        }
        let text = instance_variables(&rewrite(&attribute.expr().to_string(), nodes));
        fields.push(format!("{} = ({text})", attribute.key()));
    }
    let mut blocks: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for block in body.blocks() {
        let id = block.identifier();
        if id == "dynamic" || META_BLOCKS.contains(&id) {
            continue;
        }
        blocks
            .entry(id)
            .or_default()
            .push(object_of(block.body(), nodes, false));
    }
    for (id, objects) in blocks {
        fields.push(format!("{id} = [{}]", objects.join(", ")));
    }
    format!("{{\n{}\n}}", fields.join("\n"))
}

/// One argument of one node: where it is and the probe that evaluates it.
pub struct Argument {
    pub address: String,
    pub kind: String,
    pub file: String,
    /// The argument inside its blocks: `description`, `policy_details.schedule.name`,
    /// `default_action.redirect.port` (a dynamic block's content under its label).
    pub path: String,
    /// How many list levels wrap the values: one per instance list, one per dynamic block.
    depth: usize,
    /// The HCL expression that evaluates to the values (nested lists, see depth).
    expr: String,
}

/// Walks a body, collecting its arguments: `frame` wraps an argument's expression in the
/// iterations of the enclosing dynamic blocks, returning it with the added depth.
fn collect_arguments(
    node: &Node,
    nodes: &[Node],
    body: &Body,
    prefix: &str,
    frames: &[(String, String)],
    top: bool,
    out: &mut Vec<Argument>,
) {
    let instances = Instances::of(node, nodes);
    for attribute in body.attributes() {
        if top && META_ARGUMENTS.contains(&attribute.key()) {
            continue;
        }
        let mut text = instance_variables(&rewrite(&attribute.expr().to_string(), nodes));
        // Innermost dynamic block first: each wraps the value in a list over its for_each.
        for (iterator, for_each) in frames.iter().rev() {
            text = format!(
                "[for {iterator}_key, {iterator}_value in ({for_each}) : ({})]",
                replace_reference(
                    &replace_reference(
                        &text,
                        &format!("{iterator}.key"),
                        &format!("{iterator}_key")
                    ),
                    &format!("{iterator}.value"),
                    &format!("{iterator}_value")
                )
            );
        }
        out.push(Argument {
            address: node.address.clone(),
            kind: node.kind.clone(),
            file: node.file.clone(),
            path: format!("{prefix}{}", attribute.key()),
            depth: 1 + frames.len(),
            expr: instances.list(&format!("({text})")),
        });
    }
    for block in body.blocks() {
        let id = block.identifier();
        if META_BLOCKS.contains(&id) {
            continue;
        }
        if id == "dynamic" {
            let label = block.labels()[0].as_str().to_string();
            let iterator = attr(block.body(), "iterator")
                .map(|e| e.to_string())
                .unwrap_or_else(|| label.clone());
            let for_each = attr(block.body(), "for_each")
                .unwrap_or_else(|| panic!("{}: dynamic \"{label}\" without for_each", node.address))
                .to_string();
            let for_each = instance_variables(&rewrite(&for_each, nodes));
            let content = block
                .body()
                .blocks()
                .find(|b| b.identifier() == "content")
                .unwrap_or_else(|| panic!("{}: dynamic \"{label}\" without content", node.address));
            let mut inner = frames.to_vec();
            inner.push((iterator, for_each));
            collect_arguments(
                node,
                nodes,
                content.body(),
                &format!("{prefix}{label}."),
                &inner,
                false,
                out,
            );
            continue;
        }
        collect_arguments(
            node,
            nodes,
            block.body(),
            &format!("{prefix}{id}."),
            frames,
            false,
            out,
        );
    }
}

/// The configuration rewritten for an offline console, and the probes of its arguments.
pub struct OfflinePlan<'a> {
    pub console: Console,
    pub nodes: Vec<Node<'a>>,
    pub arguments: Vec<Argument>,
    /// Per resource address, the attributes whose stand-ins AWS makes up by itself (ids,
    /// ARNs with random parts): a value that is exactly one of them was made by AWS.
    aws_made: BTreeMap<String, Vec<String>>,
}

/// The values of one evaluation: per argument (by index into `arguments`), its values
/// flattened over instances and dynamic blocks; and the values AWS made itself.
pub struct Values {
    pub by_argument: Vec<Vec<Value>>,
    pub aws_made: BTreeSet<String>,
    /// Each node's stand-in (its instances), by address.
    pub instances: BTreeMap<String, Value>,
}

impl<'a> OfflinePlan<'a> {
    /// `returned`: per kind (`aws_vpc`, `data.aws_partition`), per computed attribute, an HCL
    /// expression for the value AWS would return; it may read the instance's own arguments
    /// as `self.<argument>` and `self.unique`, a string unique to the instance.
    pub fn new(
        files: &'a BTreeMap<String, Body>,
        returned: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> OfflinePlan<'a> {
        let console = Console::variables_only(files);
        let nodes = nodes(files);
        let mut text = String::from("locals {\n");
        for local in top_blocks(files, "locals")
            .iter()
            .flat_map(|b| b.body().attributes())
        {
            text.push_str(&format!(
                "{} = {}\n",
                local.key(),
                rewrite(&local.expr().to_string(), &nodes)
            ));
        }
        let mut aws_made = BTreeMap::new();
        for node in nodes.iter().filter(|n| !n.is_provider()) {
            let instances = Instances::of(node, &nodes);
            let configured = object_of(node.block.body(), &nodes, true);
            let stand_ins = returned.get(&node.kind).cloned().unwrap_or_default();
            let computed: Vec<String> = stand_ins
                .iter()
                .map(|(name, expr)| {
                    format!(
                        "{name} = ({})",
                        rewrite(&replace_reference(expr, "self", "this__"), &nodes)
                    )
                })
                .collect();
            // Made by AWS alone: not an argument of the configuration, nor built from one.
            let made: Vec<String> = stand_ins
                .iter()
                .filter(|(name, expr)| {
                    attr(node.block.body(), name).is_none()
                        && !expr.replace("self.unique", "").contains("self.")
                })
                .map(|(name, _)| name.clone())
                .collect();
            if !node.kind.starts_with("data.") && !made.is_empty() {
                aws_made.insert(node.address.clone(), made);
            }
            let unique = format!(
                "substr(sha1(\"{}/${{{}}}\"), 0, 17)",
                node.address,
                instances.key()
            );
            let object = format!(
                "[for this__ in [merge({configured}, {{ unique = {unique} }})] : merge({{\n{}\n}}, {{ for k, v in this__ : k => v if v != null }})][0]",
                computed.join("\n")
            );
            text.push_str(&format!(
                "{} = {}\n",
                node.local_name(),
                instances.collection(&object)
            ));
        }
        text.push_str("}\n");
        std::fs::write(console.dir().join("configuration.tf"), text).unwrap();

        let mut arguments = Vec::new();
        for node in &nodes {
            collect_arguments(
                node,
                &nodes,
                node.block.body(),
                "",
                &[],
                true,
                &mut arguments,
            );
        }
        OfflinePlan {
            console,
            nodes,
            arguments,
            aws_made,
        }
    }

    /// Evaluates every argument (and the stand-ins) with `vars` set; panics on any error,
    /// naming the probe's file in the console directory.
    pub fn evaluate(&self, vars: &[(&str, &str)]) -> Values {
        let mut probe = String::from("locals {\n  probe__ = {\n");
        for (i, argument) in self.arguments.iter().enumerate() {
            probe.push_str(&format!("    a{i} = {}\n", argument.expr));
        }
        for node in self.nodes.iter().filter(|n| !n.is_provider()) {
            probe.push_str(&format!("    \"{}\" = {}\n", node.address, node.local()));
        }
        let made: Vec<String> = self
            .aws_made
            .iter()
            .map(|(address, attributes)| {
                let node = self.nodes.iter().find(|n| &n.address == address).unwrap();
                let fields = |of: &str| -> String {
                    let fields: Vec<String> =
                        attributes.iter().map(|a| format!("{of}.{a}")).collect();
                    fields.join(", ")
                };
                match Instances::of(node, &self.nodes) {
                    Instances::Single => format!("[{}]", fields(&node.local())),
                    _ => format!(
                        "flatten([for _, instance in {} : [{}]])",
                        node.local(),
                        fields("instance")
                    ),
                }
            })
            .collect();
        probe.push_str(&format!(
            "    aws_made__ = flatten([{}])\n",
            made.join(", ")
        ));
        probe.push_str("  }\n}\n");
        std::fs::write(self.console.dir().join("probe.tf"), probe).unwrap();

        let evaluation: Evaluation = self.console.run(vars, "local.probe__");
        assert!(
            evaluation.refused.is_empty(),
            "the variables' validations refused the sample values {:?}:\n{}",
            evaluation.refused,
            evaluation.transcript
        );
        assert!(
            evaluation.other_errors.is_empty(),
            "evaluating the configuration offline failed (the rewritten configuration is kept in {}). \
             \"Unsupported attribute\" on a resource's stand-in means an attribute AWS computes \
             has no stand-in yet: add it under [returned.<type>] in terraform/constraints.toml.\n{}",
            self.keep_files().display(),
            evaluation.other_errors.join("\n")
        );
        let mut value = evaluation.value.unwrap_or_else(|| {
            panic!(
                "terraform console printed no value:\n{}",
                evaluation.transcript
            )
        });
        let by_argument = self
            .arguments
            .iter()
            .enumerate()
            .map(|(i, argument)| {
                let mut values = vec![value[format!("a{i}")].take()];
                for _ in 0..argument.depth {
                    values = values
                        .into_iter()
                        .flat_map(|v| match v {
                            Value::Array(items) => items,
                            Value::Null => Vec::new(),
                            other => panic!("{}: not a list of values: {other}", argument.address),
                        })
                        .collect();
                }
                values
            })
            .collect();
        let aws_made = value["aws_made__"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let instances = self
            .nodes
            .iter()
            .filter(|n| !n.is_provider())
            .map(|n| (n.address.clone(), value[&n.address].take()))
            .collect();
        Values {
            by_argument,
            aws_made,
            instances,
        }
    }

    /// A copy of the console's files that outlives the test, to read after a failure.
    fn keep_files(&self) -> std::path::PathBuf {
        let kept =
            std::env::temp_dir().join(format!("obstack-offline-plan-{}", std::process::id()));
        std::fs::create_dir_all(&kept).unwrap();
        for entry in std::fs::read_dir(self.console.dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "tf") {
                std::fs::copy(&path, kept.join(path.file_name().unwrap())).unwrap();
            }
        }
        kept
    }

    /// The instances of the node at `address` in `values`: how many plan would create.
    pub fn instance_count(&self, values: &Values, address: &str) -> usize {
        let node = self
            .nodes
            .iter()
            .find(|n| n.address == address)
            .unwrap_or_else(|| panic!("{address} is not in the configuration"));
        match (Instances::of(node, &self.nodes), &values.instances[address]) {
            (Instances::Single, _) => 1,
            (_, Value::Array(items)) => items.len(),
            (_, Value::Object(items)) => items.len(),
            (_, Value::Null) => 0,
            (_, other) => panic!("{address}: unexpected instances {other}"),
        }
    }

    /// Every precondition of every instance that exists with `vars`, evaluated: the error
    /// messages of those that fail (what plan would stop with). Empty when plan would go on.
    pub fn failed_preconditions(&self, vars: &[(&str, &str)]) -> Vec<String> {
        let mut checks = Vec::new();
        for node in self.nodes.iter().filter(|n| !n.is_provider()) {
            let instances = Instances::of(node, &self.nodes);
            for lifecycle in node
                .block
                .body()
                .blocks()
                .filter(|b| b.identifier() == "lifecycle")
            {
                for precondition in lifecycle
                    .body()
                    .blocks()
                    .filter(|b| b.identifier() == "precondition")
                {
                    let body = precondition.body();
                    let condition = attr(body, "condition").expect("a precondition's condition");
                    let message = attr(body, "error_message").expect("a precondition's message");
                    let condition =
                        instance_variables(&rewrite(&condition.to_string(), &self.nodes));
                    let message = instance_variables(&rewrite(&message.to_string(), &self.nodes));
                    checks.push(instances.list(&format!(
                        "(try(({condition}) == true, false) ? \"\" : \"{}: ${{try({message}, \"(message not evaluable)\")}}\")",
                        node.address
                    )));
                }
            }
        }
        std::fs::write(
            self.console.dir().join("preconditions.tf"),
            format!(
                "locals {{\n  preconditions__ = flatten([\n{}\n  ])\n}}\n",
                checks.join(",\n")
            ),
        )
        .unwrap();
        let evaluation = self.console.run(vars, "local.preconditions__");
        evaluation.assert_no_other_error();
        assert!(
            evaluation.refused.is_empty(),
            "the validations refused {:?}:\n{}",
            evaluation.refused,
            evaluation.transcript
        );
        evaluation
            .value
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_else(|| panic!("no value:\n{}", evaluation.transcript))
            .into_iter()
            .filter_map(|v| v.as_str().filter(|s| !s.is_empty()).map(String::from))
            .collect()
    }

    /// The value of `expr` (HCL, with references to resources and data sources rewritten)
    /// with `vars` set.
    pub fn eval(&self, vars: &[(&str, &str)], expr: &str) -> Value {
        let expr = rewrite(expr, &self.nodes);
        self.console.eval_expr(vars, &expr)
    }
}
