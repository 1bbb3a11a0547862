//! terraform/constraints.toml: for every string argument the configuration sends to AWS, the
//! constraint AWS applies to it, and the checks of values against it.
//!
//! A constraint is read from botocore's service models at test time (`botocore = "<service>
//! <Operation> <Member.Path>"`: pattern, min, max, enum), so an upgrade of botocore can only
//! tighten the check, or written out with its `source` (the provider's validator or the API
//! reference) where botocore has nothing. botocore ships with boto3/moto/checkov from PyPI;
//! `python3` with botocore is required (a missing one fails the test, with the fix).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

/// The table: named rules, the constraints of each resource type's arguments, and the
/// stand-ins for what AWS returns (offline_plan.rs).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
    #[serde(default)]
    pub rule: BTreeMap<String, Rule>,
    /// kind (`aws_vpc`, `data.aws_partition`, `provider.aws`) => argument path => constraint.
    pub resource: BTreeMap<String, BTreeMap<String, Spec>>,
    /// kind => computed attribute => HCL expression of a value AWS would return.
    pub returned: BTreeMap<String, BTreeMap<String, String>>,
}

/// A constraint: a rule's name, a rule, or several (all must hold).
#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
pub enum Spec {
    Named(String),
    Inline(Box<Rule>),
    All(Vec<Spec>),
}

/// What AWS accepts for one value. Every rule says where it comes from: `botocore`, or
/// `source` for the hand-written parts.
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// `<service> <Operation> <Member.Path>` in botocore's model: its pattern, min, max, enum.
    pub botocore: Option<String>,
    /// Where the hand-written parts come from (provider validator, API reference, user guide).
    pub source: Option<String>,
    /// A regular expression the whole value must match.
    pub pattern: Option<String>,
    /// Length in characters.
    pub min: Option<usize>,
    pub max: Option<usize>,
    pub one_of: Option<Vec<String>>,
    pub not_one_of: Option<Vec<String>>,
    /// The value must start with this.
    pub prefix: Option<String>,
    /// The value may not start (case-insensitively) with any of these.
    pub not_prefix: Option<Vec<String>>,
    /// The value may not end with any of these.
    pub not_suffix: Option<Vec<String>>,
    /// A map (tags): its keys and values.
    pub keys: Option<Spec>,
    pub values: Option<Spec>,
    /// A JSON policy document (IAM, KMS, S3, SNS): its grammar and the ARNs built in it.
    pub policy: Option<bool>,
    /// This argument never reaches AWS (why): nothing to check.
    pub not_sent: Option<String>,
}

impl Rule {
    fn has_hand_written_parts(&self) -> bool {
        self.pattern.is_some()
            || self.min.is_some()
            || self.max.is_some()
            || self.one_of.is_some()
            || self.not_one_of.is_some()
            || self.prefix.is_some()
            || self.not_prefix.is_some()
            || self.not_suffix.is_some()
            || self.policy.is_some()
    }
}

/// Where the table is: next to the configuration it describes.
pub fn table_path() -> PathBuf {
    super::terraform_dir().join("constraints.toml")
}

/// The table, the botocore models it cites (loaded on first use) and compiled patterns.
pub struct Constraints {
    pub table: Table,
    /// botocore's shape of every reference in the table, read once.
    shapes: RefCell<BTreeMap<String, Value>>,
    patterns: RefCell<BTreeMap<String, Pattern>>,
}

/// A pattern as Rust's regex runs it: Java's leading negative look-ahead `^(?!x)` (which
/// Rust's regex lacks) kept apart as a prefix the value may not match.
#[derive(Clone)]
struct Pattern {
    whole: Regex,
    not_at_start: Option<Regex>,
}

impl Constraints {
    pub fn load() -> Constraints {
        Constraints::load_from(&table_path())
    }

    pub fn load_from(path: &std::path::Path) -> Constraints {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let table: Table = toml::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not a valid constraint table: {e}", path.display()));
        let shapes = botocore_shapes(&botocore_references(&table));
        let constraints = Constraints {
            table,
            shapes: RefCell::new(shapes),
            patterns: RefCell::new(BTreeMap::new()),
        };
        constraints.check_rules_are_sourced();
        constraints
    }

    /// Every hand-written rule names its source; every named rule exists.
    fn check_rules_are_sourced(&self) {
        let mut problems = Vec::new();
        for (name, rule) in &self.table.rule {
            self.rule_problems(&format!("[rule.{name}]"), rule, &mut problems);
        }
        for (kind, arguments) in &self.table.resource {
            for (path, spec) in arguments {
                self.spec_problems(&format!("[resource.{kind}] {path}"), spec, &mut problems);
            }
        }
        for (reference, shape) in self.shapes.borrow().iter() {
            if let Some(error) = shape["error"].as_str() {
                problems.push(format!(
                    "botocore = {reference:?} does not resolve: {error}"
                ));
            }
        }
        assert!(
            problems.is_empty(),
            "{}:\n{}",
            table_path().display(),
            problems.join("\n")
        );
    }

    fn spec_problems(&self, at: &str, spec: &Spec, problems: &mut Vec<String>) {
        match spec {
            Spec::Named(name) => {
                if !self.table.rule.contains_key(name) {
                    problems.push(format!("{at}: no [rule.{name}]"));
                }
            }
            Spec::Inline(rule) => self.rule_problems(at, rule, problems),
            Spec::All(all) => all.iter().for_each(|s| self.spec_problems(at, s, problems)),
        }
    }

    fn rule_problems(&self, at: &str, rule: &Rule, problems: &mut Vec<String>) {
        if rule.has_hand_written_parts() && rule.source.is_none() {
            problems.push(format!(
                "{at}: a hand-written constraint needs its source (the provider's validator or the API reference)"
            ));
        }
        if rule.botocore.is_none()
            && !rule.has_hand_written_parts()
            && rule.not_sent.is_none()
            && rule.keys.is_none()
            && rule.values.is_none()
        {
            problems.push(format!("{at}: a rule that constrains nothing"));
        }
        for spec in [&rule.keys, &rule.values].into_iter().flatten() {
            self.spec_problems(at, spec, problems);
        }
    }

    /// The constraint of `kind`'s argument `path`, if the table has one.
    pub fn spec(&self, kind: &str, path: &str) -> Option<&Spec> {
        self.table.resource.get(kind)?.get(path)
    }

    /// Why the argument never reaches AWS, when the table says so.
    pub fn not_sent<'s>(&'s self, spec: &'s Spec) -> Option<&'s str> {
        match spec {
            Spec::Named(name) => self.table.rule[name].not_sent.as_deref(),
            Spec::Inline(rule) => rule.not_sent.as_deref(),
            Spec::All(_) => None,
        }
    }

    /// What AWS would refuse about `value` under `spec`, one phrase each (empty: accepted).
    pub fn problems(&self, spec: &Spec, value: &Value) -> Vec<String> {
        let mut out = Vec::new();
        self.check(spec, value, &mut out);
        out
    }

    fn check(&self, spec: &Spec, value: &Value, out: &mut Vec<String>) {
        match spec {
            Spec::Named(name) => {
                let rule =
                    self.table.rule.get(name).unwrap_or_else(|| {
                        panic!("no [rule.{name}] in {}", table_path().display())
                    });
                self.check_rule(rule, value, out);
            }
            Spec::Inline(rule) => self.check_rule(rule, value, out),
            Spec::All(all) => all.iter().for_each(|s| self.check(s, value, out)),
        }
    }

    fn check_rule(&self, rule: &Rule, value: &Value, out: &mut Vec<String>) {
        if rule.not_sent.is_some() {
            return;
        }
        match value {
            Value::Null => {}
            Value::Array(items) => items.iter().for_each(|v| self.check_rule(rule, v, out)),
            Value::Object(map) if rule.keys.is_some() || rule.values.is_some() => {
                for (key, item) in map {
                    if let Some(keys) = &rule.keys {
                        for problem in self.problems(keys, &Value::String(key.clone())) {
                            out.push(format!("key {key:?}: {problem}"));
                        }
                    }
                    if let Some(values) = &rule.values {
                        for problem in self.problems(values, item) {
                            out.push(format!("value of {key:?}: {problem}"));
                        }
                    }
                }
            }
            Value::Object(_) => out.push(format!(
                "a map where the constraint expects a string: {value}"
            )),
            Value::String(text) => self.check_text(rule, text, out),
            // A number or bool in a string argument reaches AWS as its text.
            other => self.check_text(rule, &other.to_string(), out),
        }
    }

    fn check_text(&self, rule: &Rule, text: &str, out: &mut Vec<String>) {
        if rule.keys.is_some() || rule.values.is_some() {
            out.push(format!("a string where AWS expects a map: {text:?}"));
            return;
        }
        if let Some(reference) = &rule.botocore {
            let shape = self.botocore_shape(reference);
            let from = format!("botocore {reference}");
            self.check_limits(
                text,
                shape["min"].as_u64().map(|n| n as usize),
                shape["max"].as_u64().map(|n| n as usize),
                shape["pattern"].as_str(),
                shape["enum"].as_array().map(|items| {
                    items
                        .iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                }),
                &from,
                out,
            );
        }
        let from = rule.source.clone().unwrap_or_default();
        self.check_limits(
            text,
            rule.min,
            rule.max,
            rule.pattern.as_deref(),
            rule.one_of.clone(),
            &from,
            out,
        );
        if let Some(prefix) = &rule.prefix {
            if !text.starts_with(prefix.as_str()) {
                out.push(format!("does not start with {prefix:?} ({from})"));
            }
        }
        for prefix in rule.not_prefix.iter().flatten() {
            if text.to_lowercase().starts_with(&prefix.to_lowercase()) {
                out.push(format!("starts with {prefix:?} ({from})"));
            }
        }
        if rule.not_one_of.iter().flatten().any(|v| v == text) {
            out.push(format!(
                "is one of the values refused: {:?} ({from})",
                rule.not_one_of
            ));
        }
        for suffix in rule.not_suffix.iter().flatten() {
            if text.ends_with(suffix.as_str()) {
                out.push(format!("ends with {suffix:?} ({from})"));
            }
        }
        if rule.policy == Some(true) {
            for problem in policy_problems(text) {
                out.push(format!("{problem} ({from})"));
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check_limits(
        &self,
        text: &str,
        min: Option<usize>,
        max: Option<usize>,
        pattern: Option<&str>,
        one_of: Option<Vec<String>>,
        from: &str,
        out: &mut Vec<String>,
    ) {
        let length = text.chars().count();
        if let Some(min) = min {
            if length < min {
                out.push(format!("{length} characters, at least {min} ({from})"));
            }
        }
        if let Some(max) = max {
            if length > max {
                out.push(format!("{length} characters, at most {max} ({from})"));
            }
        }
        if let Some(pattern) = pattern {
            if !self.matches(pattern, text) {
                out.push(format!("does not match {pattern:?} ({from})"));
            }
        }
        if let Some(allowed) = one_of {
            if !allowed.iter().any(|a| a == text) {
                let shown: Vec<&String> = allowed.iter().take(12).collect();
                out.push(format!(
                    "not one of {shown:?}{} ({from})",
                    if allowed.len() > 12 { ", ..." } else { "" }
                ));
            }
        }
    }

    /// Whether the whole of `text` matches `pattern` (AWS validates the whole value).
    pub fn matches(&self, pattern: &str, text: &str) -> bool {
        let compiled = self
            .patterns
            .borrow_mut()
            .entry(pattern.to_string())
            .or_insert_with(|| compile(pattern))
            .clone();
        compiled.whole.is_match(text)
            && !compiled
                .not_at_start
                .as_ref()
                .is_some_and(|r| r.is_match(text))
    }

    /// The shape botocore's model gives the member `<service> <Operation> <Member.Path>`
    /// (its type, min, max, pattern, enum).
    pub fn botocore_shape(&self, reference: &str) -> Value {
        let known = self.shapes.borrow().get(reference).cloned();
        let shape = known.unwrap_or_else(|| {
            let shape = botocore_shapes(&[reference.to_string()])
                .remove(reference)
                .unwrap();
            self.shapes
                .borrow_mut()
                .insert(reference.to_string(), shape.clone());
            shape
        });
        if let Some(error) = shape["error"].as_str() {
            panic!("botocore reference {reference:?}: {error}");
        }
        shape
    }
}

/// Every botocore reference in the table's rules and constraints.
fn botocore_references(table: &Table) -> Vec<String> {
    fn walk(spec: &Spec, table: &Table, out: &mut Vec<String>) {
        match spec {
            Spec::Named(name) => {
                if let Some(rule) = table.rule.get(name) {
                    walk_rule(rule, table, out);
                }
            }
            Spec::Inline(rule) => walk_rule(rule, table, out),
            Spec::All(all) => all.iter().for_each(|s| walk(s, table, out)),
        }
    }
    fn walk_rule(rule: &Rule, table: &Table, out: &mut Vec<String>) {
        out.extend(rule.botocore.clone());
        for spec in [&rule.keys, &rule.values].into_iter().flatten() {
            walk(spec, table, out);
        }
    }
    let mut out = Vec::new();
    for rule in table.rule.values() {
        walk_rule(rule, table, &mut out);
    }
    for arguments in table.resource.values() {
        for spec in arguments.values() {
            walk(spec, table, &mut out);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Resolves botocore references with botocore's own loader (the newest API version of each
/// service): the operation's input shape, then each member of the path (through lists;
/// `key`/`value` of a map). One Python process for all of them; a reference that does not
/// resolve comes back as `{"error": ...}`.
fn botocore_shapes(references: &[String]) -> BTreeMap<String, Value> {
    const RESOLVE: &str = r#"
import json, sys, botocore.loaders
loader, models, out = botocore.loaders.Loader(), {}, {}
for reference in sys.argv[1:]:
    try:
        service, operation, path = reference.split()
        if service not in models:
            models[service] = loader.load_service_model(service, "service-2")
        shapes = models[service]["shapes"]
        def unwrap(shape):
            while shape["type"] == "list":
                shape = shapes[shape["member"]["shape"]]
            return shape
        shape = shapes[models[service]["operations"][operation]["input"]["shape"]]
        for segment in path.split("."):
            shape = unwrap(shape)
            if shape["type"] == "map" and segment in ("key", "value"):
                shape = shapes[shape[segment]["shape"]]
            elif segment in shape.get("members", {}):
                shape = shapes[shape["members"][segment]["shape"]]
            else:
                raise KeyError("no member %r (members: %s)" % (segment, sorted(shape.get("members", {}))))
        shape = unwrap(shape)
        out[reference] = {k: shape[k] for k in ("type", "min", "max", "pattern", "enum") if k in shape}
    except Exception as e:
        out[reference] = {"error": "%s: %s" % (type(e).__name__, e)}
print(json.dumps(out))
"#;
    let python = testkit::require_tool("python3");
    let output = Command::new(python)
        .arg("-c")
        .arg(RESOLVE)
        .args(references)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3: {e}"));
    assert!(
        output.status.success(),
        "botocore's service models could not be read: install botocore (`python3 -m pip install botocore`; moto and checkov bring it, scripts/test.sh installs them):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("botocore's shapes are not JSON: {e}"))
}

/// Compiles a botocore (Java) pattern for Rust's regex: `\p{all}` is `\p{Any}`, the
/// surrogate-pair range `\uD800\uDC00-\uDBFF\uDFFF` is every supplementary code point, and
/// a leading `^(?!x)` becomes a separate "may not start with" check. Anything else Rust
/// cannot compile fails the test, naming the pattern.
fn compile(pattern: &str) -> Pattern {
    let mut body = pattern
        .replace(r"\p{all}", r"\p{Any}")
        .replace(r"\uD800\uDC00-\uDBFF\uDFFF", r"\x{10000}-\x{10FFFF}");
    let mut not_at_start = None;
    if let Some(rest) = body.strip_prefix("^(?!") {
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find(|(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map(|(i, _)| i)
            .unwrap_or_else(|| panic!("unbalanced look-ahead in {pattern:?}"));
        not_at_start = Some(
            Regex::new(&format!("^(?:{})", &rest[..end]))
                .unwrap_or_else(|e| panic!("pattern {pattern:?}: {e}")),
        );
        body = format!("^{}", &rest[end + 1..]);
    }
    let whole = Regex::new(&format!("^(?:{body})$")).unwrap_or_else(|e| {
        panic!("pattern {pattern:?} does not compile for Rust's regex (translate it in aws_constraints.rs): {e}")
    });
    Pattern {
        whole,
        not_at_start,
    }
}

/// What the policy languages refuse in a JSON policy document (IAM identity and trust
/// policies, KMS key, S3 bucket and SNS topic policies share the grammar): its version, the
/// elements of each statement, and the ARNs and principals built in it.
pub fn policy_problems(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let document: Value = match serde_json::from_str(text) {
        Ok(document) => document,
        Err(e) => return vec![format!("not JSON: {e}")],
    };
    if document["Version"] != "2012-10-17" {
        out.push(format!(
            "Version is {}, not \"2012-10-17\"",
            document["Version"]
        ));
    }
    let statements: Vec<&Value> = match &document["Statement"] {
        Value::Array(items) => items.iter().collect(),
        single @ Value::Object(_) => vec![single],
        other => return vec![format!("Statement is {other}")],
    };
    let arn = Regex::new(
        r"^arn:aws(-cn|-us-gov)?:[a-z0-9-]+:([a-z]{2}(-[a-z]+)+-[0-9]|\*)?:([0-9]{12}|\*)?:[^\s]+$",
    )
    .unwrap();
    let action = Regex::new(r"^([a-zA-Z0-9-]+:[A-Za-z0-9*?]+|\*)$").unwrap();
    let service = Regex::new(r"^[a-z0-9.-]+\.amazonaws\.com(\.cn)?$").unwrap();
    let account = Regex::new(r"^[0-9]{12}$").unwrap();
    let strings = |v: &Value| -> Vec<String> {
        match v {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(String::from)
                        .unwrap_or_else(|| i.to_string())
                })
                .collect(),
            _ => Vec::new(),
        }
    };
    for (n, statement) in statements.iter().enumerate() {
        let at = match statement["Sid"].as_str() {
            Some(sid) => format!("statement {sid}"),
            None => format!("statement {n}"),
        };
        if let Some(sid) = statement["Sid"].as_str() {
            if !sid.chars().all(|c| c.is_ascii_alphanumeric()) {
                out.push(format!("{at}: a Sid may hold only letters and digits"));
            }
        }
        if !matches!(statement["Effect"].as_str(), Some("Allow" | "Deny")) {
            out.push(format!("{at}: Effect is {}", statement["Effect"]));
        }
        let actions: Vec<String> = ["Action", "NotAction"]
            .iter()
            .flat_map(|k| strings(&statement[*k]))
            .collect();
        if actions.is_empty() {
            out.push(format!("{at}: no Action"));
        }
        for a in actions {
            if !action.is_match(&a) {
                out.push(format!("{at}: action {a:?} is not service:Action"));
            }
        }
        for r in ["Resource", "NotResource"]
            .iter()
            .flat_map(|k| strings(&statement[*k]))
        {
            if r != "*" && !arn.is_match(&r) {
                out.push(format!("{at}: resource {r:?} is not an ARN"));
            }
        }
        match &statement["Principal"] {
            Value::Null => {}
            Value::String(s) if s == "*" => {}
            Value::Object(principals) => {
                for (kind, value) in principals {
                    for p in strings(value) {
                        let ok = match kind.as_str() {
                            "AWS" => p == "*" || account.is_match(&p) || arn.is_match(&p),
                            "Service" => service.is_match(&p),
                            "Federated" => !p.is_empty(),
                            _ => false,
                        };
                        if !ok {
                            out.push(format!("{at}: principal {kind} {p:?}"));
                        }
                    }
                }
            }
            other => out.push(format!("{at}: Principal is {other}")),
        }
        match &statement["Condition"] {
            Value::Null => {}
            Value::Object(operators) => {
                for (operator, keys) in operators {
                    let ok = keys.as_object().is_some_and(|k| {
                        !k.is_empty()
                            && k.iter().all(|(key, v)| {
                                !key.is_empty() && (!strings(v).is_empty() || v.is_boolean())
                            })
                    });
                    if !ok {
                        out.push(format!("{at}: condition {operator} is {keys}"));
                    }
                }
            }
            other => out.push(format!("{at}: Condition is {other}")),
        }
    }
    out
}
