//! Shared by the Terraform tests (`xtask/tests/terraform*.rs`): the
//! configuration under test parsed with hcl-rs, its policy documents as JSON, and an offline
//! `terraform console` that evaluates the variables' validations and every expression that
//! needs no provider.
//!
//! Terraform cannot plan here (no provider can be downloaded), but `terraform console` runs
//! without providers on a configuration that declares none: the console's directory holds
//! only the `variable` blocks and the locals that reference no resource, copied from
//! `terraform/`. A missing `terraform` binary fails the test (testkit::require_tool).
//!
//! `OBSTACK_TEST_TERRAFORM_DIR` points the tests at another copy of `terraform/` (used to
//! check that they fail on an older version of the configuration).
#![allow(dead_code)]

pub mod aws_constraints;
pub mod offline_plan;

/// The configuration evaluated offline, with the stand-ins of terraform/constraints.toml for
/// what AWS returns.
pub fn offline_plan(files: &BTreeMap<String, Body>) -> offline_plan::OfflinePlan<'_> {
    offline_plan::OfflinePlan::new(files, &aws_constraints::Constraints::load().table.returned)
}

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hcl::{Block, Body, Expression, ObjectKey, TemplateExpr};
use serde_json::Value;

/// The configuration under test: `terraform/`, unless `OBSTACK_TEST_TERRAFORM_DIR` says otherwise.
pub fn terraform_dir() -> PathBuf {
    match std::env::var_os("OBSTACK_TEST_TERRAFORM_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => testkit::workspace_root().join("terraform"),
    }
}

/// Every `.tf` file, parsed, by file name.
pub fn parsed_files() -> BTreeMap<String, Body> {
    parsed_files_in(&terraform_dir())
}

/// Every `.tf` file of `dir`, parsed, by file name.
pub fn parsed_files_in(dir: &Path) -> BTreeMap<String, Body> {
    let mut files = BTreeMap::new();
    for entry in
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
    {
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

/// Every top-level block of `files` with this identifier (`resource`, `variable`, ...).
pub fn top_blocks<'a>(files: &'a BTreeMap<String, Body>, identifier: &str) -> Vec<&'a Block> {
    files
        .values()
        .flat_map(|body| body.blocks())
        .filter(|b| b.identifier() == identifier)
        .collect()
}

pub fn resources<'a>(files: &'a BTreeMap<String, Body>, kind: &str) -> Vec<&'a Block> {
    top_blocks(files, "resource")
        .into_iter()
        .filter(|b| b.labels()[0].as_str() == kind)
        .collect()
}

/// The resource `kind.name`, or a panic naming it.
pub fn resource<'a>(files: &'a BTreeMap<String, Body>, kind: &str, name: &str) -> &'a Block {
    resources(files, kind)
        .into_iter()
        .find(|b| b.labels()[1].as_str() == name)
        .unwrap_or_else(|| panic!("resource {kind}.{name} not found"))
}

pub fn variable<'a>(files: &'a BTreeMap<String, Body>, name: &str) -> &'a Block {
    top_blocks(files, "variable")
        .into_iter()
        .find(|b| b.labels()[0].as_str() == name)
        .unwrap_or_else(|| panic!("variable {name} not found"))
}

/// The expression of `local.<name>`, as HCL text, or a panic naming it.
pub fn local_expr(files: &BTreeMap<String, Body>, name: &str) -> String {
    top_blocks(files, "locals")
        .iter()
        .flat_map(|b| b.body().attributes())
        .find(|a| a.key() == name)
        .map(|a| a.expr().to_string())
        .unwrap_or_else(|| panic!("local.{name} not found"))
}

pub fn attr<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes().find(|a| a.key() == key).map(|a| a.expr())
}

pub fn block<'a>(body: &'a Body, identifier: &str) -> Option<&'a Body> {
    body.blocks()
        .find(|b| b.identifier() == identifier)
        .map(|b| b.body())
}

/// `kind.name` of a resource block.
pub fn address(block: &Block) -> String {
    block
        .labels()
        .iter()
        .map(|l| l.as_str())
        .collect::<Vec<_>>()
        .join(".")
}

/// The references in a `depends_on` list, as text (`aws_iam_role_policy.flow_logs`).
pub fn depends_on(body: &Body) -> Vec<String> {
    match attr(body, "depends_on") {
        Some(Expression::Array(items)) => items.iter().map(|e| e.to_string()).collect(),
        Some(other) => panic!("depends_on is not a list: {other}"),
        None => Vec::new(),
    }
}

/// An HCL expression as JSON, for reading policy documents: literals become their JSON
/// values, quoted templates their template text (`arn:${...}:*`) and any other expression
/// (a reference, a function call) its HCL text.
pub fn to_json(expr: &Expression) -> Value {
    match expr {
        Expression::Null => Value::Null,
        Expression::Bool(b) => Value::Bool(*b),
        Expression::Number(n) => serde_json::to_value(n).unwrap(),
        Expression::String(s) => Value::String(s.clone()),
        Expression::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Expression::Object(object) => Value::Object(
            object
                .iter()
                .map(|(key, value)| {
                    let key = match key {
                        ObjectKey::Identifier(id) => id.to_string(),
                        ObjectKey::Expression(Expression::String(s)) => s.clone(),
                        ObjectKey::Expression(other) => other.to_string(),
                        other => panic!("an object key hcl-rs added since 0.18: {other:?}"),
                    };
                    (key, to_json(value))
                })
                .collect(),
        ),
        Expression::TemplateExpr(template) => match template.as_ref() {
            TemplateExpr::QuotedString(s) => Value::String(s.clone()),
            TemplateExpr::Heredoc(heredoc) => Value::String(heredoc.template.clone()),
        },
        Expression::Parenthesis(inner) => to_json(inner),
        other => Value::String(other.to_string()),
    }
}

/// The document inside `policy = jsonencode({...})` (or `assume_role_policy`), as JSON.
pub fn policy_document(body: &Body, key: &str) -> Option<Value> {
    match attr(body, key)? {
        Expression::FuncCall(call) if call.name.name.as_str() == "jsonencode" => {
            Some(to_json(&call.args[0]))
        }
        other => panic!("{key} is not jsonencode({{...}}), which the tests read: {other}"),
    }
}

/// A policy's statements (a single statement object counts as one).
pub fn statements(document: &Value) -> Vec<&Value> {
    match &document["Statement"] {
        Value::Array(items) => items.iter().collect(),
        Value::Null => Vec::new(),
        single => vec![single],
    }
}

/// A statement's `Action` (or another element) as a list of strings.
pub fn string_list(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .unwrap_or_else(|| panic!("not a string: {v}"))
                    .to_string()
            })
            .collect(),
        Value::Null => Vec::new(),
        other => panic!("not a string or a list of strings: {other}"),
    }
}

/// IAM's action matching: case-insensitive, with `*` and `?` wildcards.
pub fn iam_action_matches(pattern: &str, action: &str) -> bool {
    fn glob(p: &[u8], a: &[u8]) -> bool {
        match (p.first(), a.first()) {
            (None, None) => true,
            (Some(b'*'), _) => glob(&p[1..], a) || (!a.is_empty() && glob(p, &a[1..])),
            (Some(b'?'), Some(_)) => glob(&p[1..], &a[1..]),
            (Some(x), Some(y)) if x.eq_ignore_ascii_case(y) => glob(&p[1..], &a[1..]),
            _ => false,
        }
    }
    glob(pattern.as_bytes(), action.as_bytes())
}

/// Whether `text` references `root.` (a resource type, `data`, `var`, ...) as an identifier,
/// not as the tail of a longer one.
pub fn references(text: &str, root: &str) -> bool {
    let needle = format!("{root}.");
    text.match_indices(&needle).any(|(at, _)| {
        at == 0 || {
            let before = text.as_bytes()[at - 1];
            !(before.is_ascii_alphanumeric() || before == b'_' || before == b'-')
        }
    })
}

/// Replaces the reference `from` (e.g. `each.value`) by `to` wherever it is a whole
/// reference, not part of a longer name (`each.values`, `x.each.value`).
pub fn replace_reference(text: &str, from: &str, to: &str) -> String {
    let continues_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (at, _) in text.match_indices(from) {
        let before = text[..at].chars().next_back();
        let after = text[at + from.len()..].chars().next();
        if before.is_some_and(|c| continues_name(c) || c == '.')
            || after.is_some_and(continues_name)
        {
            continue;
        }
        out.push_str(&text[copied..at]);
        out.push_str(to);
        copied = at + from.len();
    }
    out.push_str(&text[copied..]);
    out
}

/// An offline `terraform console` over the configuration's variables and its provider-free
/// locals, in a temporary directory.
pub struct Console {
    terraform: PathBuf,
    dir: tempfile::TempDir,
    /// The declared variables' names.
    pub variables: BTreeSet<String>,
    /// The locals that could be copied (those referencing no resource, data source or module).
    pub locals: BTreeSet<String>,
}

impl Console {
    pub fn new(files: &BTreeMap<String, Body>) -> Console {
        let mut console = Console::variables_only(files);
        console.locals = console.write_provider_free_locals(files);
        console
    }

    /// A console over the configuration's variables alone; its caller writes the rest
    /// (offline_plan.rs writes every local and a stand-in for every resource).
    pub fn variables_only(files: &BTreeMap<String, Body>) -> Console {
        let terraform = testkit::require_tool("terraform");
        let dir = tempfile::tempdir().unwrap();

        let mut declared = Body::builder();
        let mut variables = BTreeSet::new();
        for v in top_blocks(files, "variable") {
            variables.insert(v.labels()[0].as_str().to_string());
            declared = declared.add_block(v.clone());
        }
        // No user CLI configuration (plugin caches, mirrors): the console needs none.
        std::fs::write(dir.path().join("terraformrc"), "").unwrap();
        std::fs::write(
            dir.path().join("variables.tf"),
            hcl::to_string(&declared.build()).unwrap(),
        )
        .unwrap();
        Console {
            terraform,
            dir,
            variables,
            locals: BTreeSet::new(),
        }
    }

    /// Writes the locals that need no provider into the console's directory; their names.
    fn write_provider_free_locals(&self, files: &BTreeMap<String, Body>) -> BTreeSet<String> {
        // Locals that need no provider: no resource, data source or module in them, and no
        // local that does (repeated until nothing more is dropped).
        let resource_types: BTreeSet<&str> = top_blocks(files, "resource")
            .iter()
            .map(|b| b.labels()[0].as_str())
            .collect();
        let mut candidates: BTreeMap<String, Expression> = top_blocks(files, "locals")
            .iter()
            .flat_map(|b| b.body().attributes())
            .map(|a| (a.key().to_string(), a.expr().clone()))
            .filter(|(_, expr)| {
                let text = expr.to_string();
                !["data", "module"]
                    .iter()
                    .chain(resource_types.iter())
                    .any(|root| references(&text, root))
            })
            .collect();
        loop {
            let names: BTreeSet<String> = candidates.keys().cloned().collect();
            let before = candidates.len();
            candidates.retain(|_, expr| {
                let text = expr.to_string();
                let mut rest = text.as_str();
                while let Some(at) = rest.find("local.") {
                    let name: String = rest[at + 6..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                        .collect();
                    if !names.contains(&name) {
                        return false;
                    }
                    rest = &rest[at + 6..];
                }
                true
            });
            if candidates.len() == before {
                break;
            }
        }
        let mut locals_body = Body::builder();
        let mut locals_block = Block::builder("locals");
        for (name, expr) in &candidates {
            locals_block = locals_block.add_attribute((name.as_str(), expr.clone()));
        }
        locals_body = locals_body.add_block(locals_block.build());
        std::fs::write(
            self.dir().join("locals.tf"),
            hcl::to_string(&locals_body.build()).unwrap(),
        )
        .unwrap();
        candidates.into_keys().collect()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// [`Console::eval`] of an expression that may span lines (the console reads one line):
    /// it is written as a local into the console's directory first.
    pub fn eval_expr(&self, vars: &[(&str, &str)], expr: &str) -> Value {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        std::fs::write(
            self.dir().join(format!("probe_expr_{n}.tf")),
            format!("locals {{\n  probe_expr_{n} = {expr}\n}}\n"),
        )
        .unwrap();
        self.eval(vars, &format!("local.probe_expr_{n}"))
    }

    /// Runs the console with `vars` (name, HCL value) set and `expr` typed in: its value as
    /// JSON, and the variables whose validation refused their value.
    pub fn run(&self, vars: &[(&str, &str)], expr: &str) -> Evaluation {
        let mut command = Command::new(&self.terraform);
        command
            .current_dir(self.dir.path())
            .env("TF_IN_AUTOMATION", "1")
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_CLI_CONFIG_FILE", self.dir.path().join("terraformrc"))
            .args(["console", "-no-color"]);
        for (name, value) in vars {
            assert!(
                self.variables.contains(*name),
                "variable {name} is not declared in terraform/"
            );
            command.arg(format!("-var={name}={value}"));
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run terraform console: {e}"));
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            writeln!(stdin, "jsonencode({expr})").unwrap();
        }
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            output.status.success(),
            "terraform console failed ({}):\n{stderr}\n{stdout}",
            output.status
        );

        // Diagnostics (-no-color): "Error: <summary>" or "Warning: <summary>", then detail
        // lines up to the next one; a refused variable's detail names `variable "<name>"`.
        let mut diagnostics: Vec<(String, Vec<String>)> = Vec::new();
        for line in stderr.lines() {
            let line = line.trim_start_matches(['│', '╷', '╵']).trim();
            if let Some(summary) = line.strip_prefix("Error: ") {
                diagnostics.push((summary.to_string(), Vec::new()));
            } else if line.starts_with("Warning: ") {
                diagnostics.push(("(warning)".to_string(), Vec::new()));
            } else if let Some((_, detail)) = diagnostics.last_mut() {
                detail.push(line.to_string());
            }
        }
        let mut refused = BTreeSet::new();
        let mut other_errors = Vec::new();
        for (summary, detail) in diagnostics {
            if summary == "(warning)" {
                continue;
            }
            let variable = detail.iter().find_map(|l| {
                let rest = &l[l.find("variable \"")? + "variable \"".len()..];
                Some(rest[..rest.find('"')?].to_string())
            });
            match (summary.as_str(), variable) {
                ("Invalid value for variable", Some(name)) => {
                    refused.insert(name);
                }
                _ => other_errors.push(format!("Error: {summary}\n{}", detail.join("\n"))),
            }
        }
        let value = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .and_then(|line| serde_json::from_str::<String>(line.trim()).ok())
            .and_then(|json| serde_json::from_str::<Value>(&json).ok());
        Evaluation {
            value,
            refused,
            other_errors,
            transcript: format!("{stdout}\n{stderr}"),
        }
    }

    /// Whether the variable's validations accept `value` (HCL syntax, as for `-var`) and
    /// the configuration's locals then evaluate.
    pub fn accepts(&self, variable: &str, value: &str) -> bool {
        self.validate(&[(variable, value)]) == Outcome::Accepted
    }

    /// Sets `vars` (name, HCL value) and reports what Terraform makes of them.
    pub fn validate(&self, vars: &[(&str, &str)]) -> Outcome {
        let names: Vec<String> = vars.iter().map(|(n, _)| format!("var.{n}")).collect();
        let evaluation = self.run(vars, &format!("[{}]", names.join(", ")));
        if !evaluation.refused.is_empty() {
            return Outcome::Refused(evaluation.refused);
        }
        if !evaluation.other_errors.is_empty() {
            return Outcome::AcceptedThenBroken(evaluation.other_errors.join("\n"));
        }
        assert!(
            evaluation.value.is_some(),
            "terraform console printed no value:\n{}",
            evaluation.transcript
        );
        Outcome::Accepted
    }

    /// The value of `expr` with `vars` set, which must all pass their validations.
    pub fn eval(&self, vars: &[(&str, &str)], expr: &str) -> Value {
        let evaluation = self.run(vars, expr);
        evaluation.assert_no_other_error();
        assert!(
            evaluation.refused.is_empty(),
            "the validations refused {:?} (sample values of the test):\n{}",
            evaluation.refused,
            evaluation.transcript
        );
        evaluation.value.unwrap_or_else(|| {
            panic!(
                "terraform console printed no value for {expr}:\n{}",
                evaluation.transcript
            )
        })
    }

    /// The value `attribute` of `resource` takes in each of its instances (one for a
    /// resource without `for_each`/`count`, or whose attribute does not depend on `each`).
    /// Panics if the attribute, or the `for_each` it needs, references a resource.
    pub fn per_instance(
        &self,
        vars: &[(&str, &str)],
        resource: &Block,
        attribute: &Expression,
    ) -> Vec<Value> {
        let text = attribute.to_string();
        let body = resource.body();
        let expr = if references(&text, "each") {
            let for_each = attr(body, "for_each")
                .unwrap_or_else(|| panic!("{} uses each without for_each", address(resource)))
                .to_string();
            let projected = replace_reference(
                &replace_reference(&text, "each.key", "each_key"),
                "each.value",
                "each_value",
            );
            format!("[for each_key, each_value in ({for_each}) : ({projected})]")
        } else if references(&text, "count") {
            let count = attr(body, "count").unwrap().to_string();
            let projected = replace_reference(&text, "count.index", "count_index");
            format!("[for count_index in range({count}) : ({projected})]")
        } else {
            format!("[({text})]")
        };
        let value = self.eval(vars, &expr);
        match value {
            Value::Array(items) => items,
            other => panic!("expected a list from {expr}, got {other}"),
        }
    }
}

/// What Terraform makes of variable values.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every validation passes and the locals evaluate.
    Accepted,
    /// These variables' validations fail.
    Refused(BTreeSet<String>),
    /// The validations pass, then evaluating the configuration fails (the error), as plan would.
    AcceptedThenBroken(String),
}

pub struct Evaluation {
    pub value: Option<Value>,
    /// The variables whose validation failed.
    pub refused: BTreeSet<String>,
    pub other_errors: Vec<String>,
    pub transcript: String,
}

impl Evaluation {
    pub fn assert_no_other_error(&self) {
        assert!(
            self.other_errors.is_empty(),
            "terraform console reported errors:\n{}",
            self.other_errors.join("\n")
        );
    }
}

/// Every identity policy (`aws_iam_role_policy`, `aws_iam_policy`) as (resource address,
/// its `role` expression, its policy document). Policies are written with `jsonencode`:
/// an `aws_iam_policy_document` would go unread, so it fails the test instead.
pub fn identity_policies(files: &BTreeMap<String, Body>) -> Vec<(String, String, Value)> {
    assert!(
        top_blocks(files, "data")
            .iter()
            .all(|d| d.labels()[0].as_str() != "aws_iam_policy_document"),
        "aws_iam_policy_document is not read by these tests: write policies with jsonencode"
    );
    let mut found = Vec::new();
    for kind in ["aws_iam_role_policy", "aws_iam_policy"] {
        for r in resources(files, kind) {
            let role = attr(r.body(), "role")
                .map(|e| e.to_string())
                .unwrap_or_default();
            let document = policy_document(r.body(), "policy")
                .unwrap_or_else(|| panic!("{} has no policy", address(r)));
            found.push((address(r), role, document));
        }
    }
    found
}

/// Every Allow statement of [`identity_policies`], as (resource address, role expression,
/// statement).
pub fn allow_statements(files: &BTreeMap<String, Body>) -> Vec<(String, String, Value)> {
    identity_policies(files)
        .into_iter()
        .flat_map(|(at, role, document)| {
            statements(&document)
                .into_iter()
                .filter(|statement| statement["Effect"] == "Allow")
                .map(|statement| (at.clone(), role.clone(), statement.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The console expression for how many instances of `resource` exist: its `count`, its
/// `for_each`'s length, or 1.
pub fn instance_count_expr(resource: &Block) -> String {
    let body = resource.body();
    match (attr(body, "count"), attr(body, "for_each")) {
        (Some(count), None) => count.to_string(),
        (None, Some(for_each)) => format!("length({for_each})"),
        (None, None) => "1".to_string(),
        _ => panic!("{} has count and for_each", address(resource)),
    }
}
