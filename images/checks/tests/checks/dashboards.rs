//! Dashboard lint: the baked Grafana dashboards are plain JSON that Grafana can provision as
//! is, refer only to provisioned datasources, and query only what the stack really has:
//! every PromQL expression parses (promtool) and names metrics that exist (scraped from a
//! running demo-app and a running Alertmanager, node_exporter's list in fixtures/, or
//! Prometheus' own); every LogQL selector uses labels the Promtail config sets. The alert
//! rules get the metric check too.

use crate::alerting;
use crate::series;
use crate::stack;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{self, Expr, LabelModifier, VectorSelector};
use serde_json::Value;
use stack::{dashboards_dir, file, render_sample, run, yaml};

const TITLE: &str = "Demo App Observability";

/// Grafana's built-in interval variables, replaced by a fixed duration before parsing.
const GRAFANA_INTERVALS: [&str; 5] = [
    "$__rate_interval",
    "$__interval",
    "$__auto",
    "$__range",
    "$__interval_ms",
];

/// Series Prometheus makes itself rather than scrapes.
const PROMETHEUS_SYNTHETIC: [&str; 7] = [
    "up",
    "ALERTS",
    "ALERTS_FOR_STATE",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
];

/// Labels Prometheus attaches to every series of a target (the scrape config's).
const TARGET_LABELS: [&str; 3] = ["job", "instance", "role"];

fn dashboards() -> Vec<(PathBuf, Value)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dashboards_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
            found.push((path, json));
        }
    }
    assert!(
        !found.is_empty(),
        "no dashboards in {}",
        dashboards_dir().display()
    );
    found
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// A query of a panel: the datasource uid it runs against and its expression.
struct Query {
    dashboard: String,
    panel: String,
    uid: String,
    expr: String,
}

fn queries() -> Vec<Query> {
    let mut out = Vec::new();
    for (path, dashboard) in dashboards() {
        for panel in panels(&dashboard) {
            for target in panel["targets"].as_array().into_iter().flatten() {
                // A target without its own datasource uses the panel's.
                let source = if target["datasource"].is_object() {
                    &target["datasource"]
                } else {
                    &panel["datasource"]
                };
                out.push(Query {
                    dashboard: path.display().to_string(),
                    panel: panel["title"].as_str().unwrap_or("?").to_string(),
                    uid: source["uid"].as_str().unwrap_or_default().to_string(),
                    expr: target["expr"].as_str().unwrap_or_default().to_string(),
                });
            }
        }
    }
    out
}

#[test]
fn dashboards_are_plain_json_grafana_can_provision() {
    let mut titles = BTreeSet::new();
    for (path, dashboard) in dashboards() {
        let text = std::fs::read_to_string(&path).unwrap();
        // Exported-for-sharing dashboards carry import placeholders that provisioning never fills.
        assert!(
            !text.contains("__inputs"),
            "{} has __inputs",
            path.display()
        );
        assert!(
            !text.contains("${DS_"),
            "{} has a ${{DS_...}} placeholder",
            path.display()
        );
        assert!(
            dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()),
            "{} has no uid",
            path.display()
        );
        titles.insert(dashboard["title"].as_str().unwrap().to_string());
        let mut ids = BTreeSet::new();
        for panel in panels(&dashboard) {
            let id = panel["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("panel without id: {panel}"));
            assert!(
                ids.insert(id),
                "{}: panel id {id} used twice",
                path.display()
            );
            assert!(panel["gridPos"].is_object(), "panel {id} has no gridPos");
        }
    }
    assert!(
        titles.contains(TITLE),
        "no dashboard titled {TITLE:?}: {titles:?}"
    );
}

/// The uids of the datasources the Grafana image provisions.
fn provisioned_uids() -> BTreeSet<String> {
    let root = tempfile::tempdir().unwrap();
    let files = render_sample("grafana", root.path());
    let path = "/etc/grafana/provisioning/datasources/obstack.yaml";
    let config = yaml(&file(&files, root.path(), path).contents);
    config["datasources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["uid"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_datasource_is_a_provisioned_uid() {
    let uids = provisioned_uids();
    fn walk(value: &Value, uids: &BTreeSet<String>, at: &str) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    if key == "datasource" && !child.is_null() {
                        let uid = child["uid"].as_str().unwrap_or_else(|| {
                            panic!("{at}: datasource {child} is not referred to by uid")
                        });
                        assert!(
                            uids.contains(uid),
                            "{at}: datasource uid {uid:?} is not provisioned ({uids:?})"
                        );
                    }
                    walk(child, uids, at);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, uids, at)),
            _ => {}
        }
    }
    for (path, dashboard) in dashboards() {
        walk(&dashboard, &uids, &path.display().to_string());
    }
    for query in queries() {
        assert!(
            !query.expr.is_empty(),
            "{} / {}: a target without expr",
            query.dashboard,
            query.panel
        );
        assert!(
            uids.contains(&query.uid),
            "{} / {}: no datasource",
            query.dashboard,
            query.panel
        );
    }
}

/// Replaces Grafana's interval variables with a duration; any other variable is an error.
fn without_grafana_variables(expr: &str) -> String {
    let mut out = expr.to_string();
    // Longest first: `$__interval_ms` must not become `1m_ms`.
    let mut names = GRAFANA_INTERVALS;
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        out = out.replace(name, "1m");
    }
    assert!(!out.contains('$'), "unknown Grafana variable in `{expr}`");
    out
}

fn promql_queries() -> Vec<Query> {
    queries()
        .into_iter()
        .filter(|q| q.uid == "prometheus")
        .collect()
}

#[test]
fn every_promql_expression_parses_with_promtool() {
    let promtool = testkit::require_tool("promtool");
    let queries = promql_queries();
    assert!(
        queries.len() >= 10,
        "only {} PromQL queries found",
        queries.len()
    );
    // promtool parses PromQL only inside rules: each query becomes a recording rule.
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| {
            serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": without_grafana_variables(&q.expr)})
        })
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard.yml");
    // JSON is YAML: no second serializer needed.
    std::fs::write(&path, serde_json::to_string_pretty(&file).unwrap()).unwrap();
    let (ok, output) = run(
        &promtool,
        &[OsStr::new("check"), OsStr::new("rules"), path.as_os_str()],
    );
    assert!(ok, "a dashboard query does not parse:\n{output}");
    assert!(
        output.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{output}"
    );
}

#[test]
fn promtool_rejects_a_broken_query() {
    // The check above must be able to fail.
    let promtool = testkit::require_tool("promtool");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yml");
    let file = serde_json::json!({"groups": [{"name": "d", "rules": [
        {"record": "dashboard:broken", "expr": "sum by (le (rate(app_requests_total[1m]))"}
    ]}]});
    std::fs::write(&path, file.to_string()).unwrap();
    let (ok, output) = run(
        &promtool,
        &[OsStr::new("check"), OsStr::new("rules"), path.as_os_str()],
    );
    assert!(!ok, "promtool accepted a broken query:\n{output}");
}

/// Every vector selector of an expression.
fn selectors(expr: &Expr) -> Vec<&VectorSelector> {
    let mut out = Vec::new();
    fn walk<'a>(expr: &'a Expr, out: &mut Vec<&'a VectorSelector>) {
        match expr {
            Expr::VectorSelector(vs) => out.push(vs),
            Expr::MatrixSelector(ms) => out.push(&ms.vs),
            Expr::Aggregate(a) => {
                walk(&a.expr, out);
                if let Some(param) = &a.param {
                    walk(param, out);
                }
            }
            Expr::Unary(u) => walk(&u.expr, out),
            Expr::Binary(b) => {
                walk(&b.lhs, out);
                walk(&b.rhs, out);
            }
            Expr::Paren(p) => walk(&p.expr, out),
            Expr::Subquery(s) => walk(&s.expr, out),
            Expr::Call(c) => c.args.args.iter().for_each(|a| walk(a, out)),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        }
    }
    walk(expr, &mut out);
    out
}

fn all_matchers(vs: &VectorSelector) -> Vec<&Matcher> {
    vs.matchers
        .matchers
        .iter()
        .chain(vs.matchers.or_matchers.iter().flatten())
        .collect()
}

fn metric_name(vs: &VectorSelector) -> Option<String> {
    vs.name.clone().or_else(|| {
        all_matchers(vs)
            .into_iter()
            .find(|m| m.name == "__name__" && matches!(m.op, MatchOp::Equal))
            .map(|m| m.value.clone())
    })
}

/// A demo-app process on a free loopback port, killed when dropped.
struct DemoApp {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl DemoApp {
    fn start() -> DemoApp {
        let binary = testkit::workspace_bin("demo-app", "demo-app");
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", testkit::free_port())
            .parse()
            .unwrap();
        let child = Command::new(binary)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--log-file")
            .arg(dir.path().join("app.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start demo-app");
        let app = DemoApp {
            child,
            addr,
            _dir: dir,
        };
        testkit::wait_for_port(addr, Duration::from_secs(30));
        app
    }
}

impl Drop for DemoApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Metric name → label names, from a Prometheus text exposition.
fn exposition(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut metrics: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = metrics.entry(line[..end].to_string()).or_default();
        if line[end..].starts_with('{') {
            // name="value" pairs; values may hold commas and escaped quotes.
            let mut rest = &line[end + 1..];
            while let Some(eq) = rest.find("=\"") {
                labels.insert(rest[..eq].trim_start_matches([',', ' ']).to_string());
                let mut chars = rest[eq + 2..].char_indices();
                let mut close = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => {
                            close = Some(eq + 2 + i);
                            break;
                        }
                        _ => {}
                    }
                }
                rest = &rest[close.expect("unterminated label value") + 1..];
                if rest.starts_with('}') {
                    break;
                }
            }
        }
    }
    metrics
}

/// Drives every kind of request through a running demo-app (so labelled series exist) and
/// returns what its /metrics exposes.
fn scrape_demo_app() -> BTreeMap<String, BTreeSet<String>> {
    exposition(&demo_app_metrics_text())
}

/// The text of a running demo-app's /metrics after every kind of request.
fn demo_app_metrics_text() -> String {
    let app = DemoApp::start();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let base = format!("http://{}", app.addr);
    for path in [
        "/",
        "/health",
        "/api/data",
        "/api/random",
        "/api/error",
        "/no-such-page",
    ] {
        client.get(format!("{base}{path}")).send().unwrap();
    }
    let response = client.get(format!("{base}/metrics")).send().unwrap();
    assert!(
        response.status().is_success(),
        "/metrics answered {}",
        response.status()
    );
    // Prometheus 3 refuses a scrape without a valid Content-Type.
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/plain"),
        "/metrics Content-Type is {content_type:?}"
    );
    response.text().unwrap()
}

fn node_exporter_metrics() -> BTreeSet<String> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/node_exporter_metrics.txt");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// What a real Alertmanager (the rendered config) exposes on /metrics.
fn scrape_alertmanager() -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    let tags = stack::sample_tags("prometheus");
    let files = alerting::render_prometheus_role(&tags, alerting::Urls::default(), dir.path());
    let config = alerting::write_config(&files, dir.path(), dir.path(), &[]);
    let alertmanager = alerting::start_alertmanager(&config, dir.path());
    let text = reqwest::blocking::get(format!("{}/metrics", alertmanager.url()))
        .and_then(|r| r.text())
        .unwrap_or_else(|e| panic!("scraping Alertmanager: {e}\n{}", alertmanager.output()));
    exposition(&text).into_keys().collect()
}

/// The jobs the rendered Prometheus config scrapes.
fn prometheus_jobs() -> BTreeSet<String> {
    let root = tempfile::tempdir().unwrap();
    let files = render_sample("prometheus", root.path());
    let config = yaml(&file(&files, root.path(), "/etc/prometheus/prometheus.yml").contents);
    stack::scrape_targets(&config).into_keys().collect()
}

/// Checks that `expr` names only real metrics, real labels of the app's metrics, and real jobs.
fn check_names(
    what: &str,
    expr: &str,
    app: &BTreeMap<String, BTreeSet<String>>,
    node: &BTreeSet<String>,
    jobs: &BTreeSet<String>,
) -> Vec<String> {
    let parsed = parser::parse(&without_grafana_variables(expr))
        .unwrap_or_else(|e| panic!("{what}: `{expr}` does not parse: {e}"));
    let mut problems = Vec::new();
    for vs in selectors(&parsed) {
        let Some(name) = metric_name(vs) else {
            problems.push(format!(
                "{what}: a selector without a metric name in `{expr}`"
            ));
            continue;
        };
        let known = app.contains_key(&name)
            || node.contains(&name)
            || PROMETHEUS_SYNTHETIC.contains(&name.as_str())
            || name.starts_with("prometheus_");
        if !known {
            problems.push(format!(
                "{what}: metric `{name}` exists nowhere in the stack"
            ));
        }
        for matcher in all_matchers(vs) {
            if matcher.name == "job"
                && matches!(matcher.op, MatchOp::Equal)
                && !jobs.contains(&matcher.value)
            {
                problems.push(format!(
                    "{what}: job `{}` is not scraped ({jobs:?})",
                    matcher.value
                ));
            }
            if let Some(labels) = app.get(&name) {
                let label = matcher.name.as_str();
                if label != "__name__" && !labels.contains(label) && !TARGET_LABELS.contains(&label)
                {
                    problems.push(format!(
                        "{what}: `{name}` has no label `{label}` (has {labels:?})"
                    ));
                }
            }
        }
    }
    problems
}

/// The alert rules' expressions, which must name real metrics as much as the dashboards.
fn rule_expressions() -> Vec<(String, String)> {
    let rules = yaml(&std::fs::read_to_string(stack::rules_file()).unwrap());
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .map(|r| {
            let name = r["alert"].as_str().or(r["record"].as_str()).unwrap();
            (
                format!("rule {name}"),
                r["expr"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn every_promql_expression_names_metrics_that_exist() {
    let app = scrape_demo_app();
    for expected in [
        "app_requests_total",
        "app_request_duration_seconds_bucket",
        "app_requests_in_flight",
    ] {
        assert!(
            app.contains_key(expected),
            "demo-app does not expose {expected}: {:?}",
            app.keys()
        );
    }
    // Metrics other exporters expose: node_exporter's list, and a real Alertmanager's.
    let mut node = node_exporter_metrics();
    let alertmanager = scrape_alertmanager();
    assert!(
        alertmanager.contains("alertmanager_notifications_failed_total"),
        "{alertmanager:?}"
    );
    node.extend(alertmanager);
    let jobs = prometheus_jobs();
    let mut checked = 0;
    let mut problems = Vec::new();
    for query in promql_queries() {
        let what = format!("{} / {}", query.dashboard, query.panel);
        problems.extend(check_names(&what, &query.expr, &app, &node, &jobs));
        checked += 1;
    }
    for (what, expr) in rule_expressions() {
        problems.extend(check_names(&what, &expr, &app, &node, &jobs));
        checked += 1;
    }
    assert!(checked > 10, "only {checked} expressions checked");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_name_check_catches_invented_metrics_labels_and_jobs() {
    let app = BTreeMap::from([(
        "app_requests_total".to_string(),
        BTreeSet::from(["status".to_string()]),
    )]);
    let node = BTreeSet::from(["node_load1".to_string()]);
    let jobs = BTreeSet::from(["demo-app".to_string()]);
    let check = |expr: &str| check_names("t", expr, &app, &node, &jobs);
    assert!(check(
        "sum(rate(app_requests_total{job=\"demo-app\", status=\"500\"}[$__rate_interval]))"
    )
    .is_empty());
    assert!(check("node_load1 + up").is_empty());
    assert_eq!(check("rate(flask_app_request_count[5m])").len(), 1);
    assert_eq!(check("app_requests_total{route=\"x\"}").len(), 1);
    assert_eq!(check("up{job=\"flask-app\"}").len(), 1);
}

/// The label matchers of every stream selector (`{...}` outside quotes) of a LogQL query.
fn logql_selectors(expr: &str) -> Vec<Vec<Matcher>> {
    let mut out = Vec::new();
    let mut in_quotes: Option<char> = None;
    let mut start = None;
    let mut escaped = false;
    for (i, c) in expr.char_indices() {
        if let Some(q) = in_quotes {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                in_quotes = None;
            }
            continue;
        }
        match c {
            '"' | '`' => in_quotes = Some(c),
            '{' => start = Some(i),
            '}' => {
                let from = start
                    .take()
                    .unwrap_or_else(|| panic!("unbalanced braces in `{expr}`"));
                // A stream selector has PromQL's label-matcher syntax.
                let selector = &expr[from..=i];
                match parser::parse(selector) {
                    Ok(Expr::VectorSelector(vs)) => {
                        out.push(all_matchers(&vs).into_iter().cloned().collect())
                    }
                    other => panic!("`{selector}` in `{expr}` is not a stream selector: {other:?}"),
                }
            }
            _ => {}
        }
    }
    out
}

/// The labels Promtail sets on the app's streams, and the job value it uses.
fn promtail_labels() -> (BTreeSet<String>, String) {
    let root = tempfile::tempdir().unwrap();
    let files = render_sample("app", root.path());
    let config = yaml(&file(&files, root.path(), "/etc/promtail/config.yaml").contents);
    let job = config["scrape_configs"][0]["static_configs"][0]["labels"]["job"]
        .as_str()
        .unwrap()
        .to_string();
    (stack::promtail_stream_labels(&config), job)
}

fn check_logql(expr: &str, labels: &BTreeSet<String>, job: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let selectors = logql_selectors(expr);
    if selectors.is_empty() {
        problems.push(format!("`{expr}` has no stream selector"));
    }
    for matchers in selectors {
        for m in matchers {
            if !labels.contains(&m.name) {
                problems.push(format!(
                    "`{expr}` selects on `{}`, which Promtail never sets ({labels:?})",
                    m.name
                ));
            }
            if m.name == "job" && matches!(m.op, MatchOp::Equal) && m.value != job {
                problems.push(format!(
                    "`{expr}` selects job `{}`; Promtail ships job `{job}`",
                    m.value
                ));
            }
        }
    }
    // Without a parser stage (`| json`, `| logfmt`...), `by (...)` can only group by stream labels.
    if !expr.contains('|') {
        if let Ok(Expr::Aggregate(a)) =
            parser::parse(&without_grafana_variables(&logql_as_promql(expr)))
        {
            if let Some(LabelModifier::Include(by)) = &a.modifier {
                for label in &by.labels {
                    if !labels.contains(label) {
                        problems.push(format!(
                            "`{expr}` groups by `{label}`, which Promtail never sets"
                        ));
                    }
                }
            }
        }
    }
    problems
}

/// LogQL's `count_over_time({sel} [d])` is PromQL-shaped once the range sits by the selector.
fn logql_as_promql(expr: &str) -> String {
    expr.replace("} [", "}[")
}

#[test]
fn every_logql_selector_uses_labels_promtail_sets() {
    let (labels, job) = promtail_labels();
    let queries: Vec<Query> = queries().into_iter().filter(|q| q.uid == "loki").collect();
    assert!(
        !queries.is_empty(),
        "no Loki queries: the dashboard needs its logs panel"
    );
    let problems: Vec<String> = queries
        .iter()
        .flat_map(|q| check_logql(&q.expr, &labels, &job))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_logql_check_catches_labels_promtail_does_not_set() {
    let (labels, job) = promtail_labels();
    assert!(check_logql(
        "{job=\"demo-app\", level=\"error\"} |= \"{x}\"",
        &labels,
        &job
    )
    .is_empty());
    assert_eq!(
        check_logql("{job=\"demo-app\", route=\"api_data\"}", &labels, &job).len(),
        1
    );
    assert_eq!(check_logql("{job=\"flask-app\"}", &labels, &job).len(), 1);
    assert_eq!(
        check_logql("{filename=\"/var/log/demo-app/app.log\"}", &labels, &job).len(),
        1
    );
    assert_eq!(
        check_logql(
            "sum by (route) (count_over_time({job=\"demo-app\"} [$__auto]))",
            &labels,
            &job
        )
        .len(),
        1
    );
}

#[test]
fn the_dashboard_shows_what_the_issue_asks_for() {
    let (_, dashboard) = dashboards()
        .into_iter()
        .find(|(_, d)| d["title"] == TITLE)
        .unwrap_or_else(|| panic!("no dashboard titled {TITLE:?}"));
    let all = panels(&dashboard);
    let exprs: Vec<String> = all
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let has = |needle: &str| exprs.iter().any(|e| e.contains(needle));
    assert!(has("rate(app_requests_total"), "request rate");
    assert!(has("app_requests_in_flight"), "requests in flight");
    for q in ["0.5", "0.95", "0.99"] {
        assert!(has(&format!("histogram_quantile({q}, ")), "p{q} duration");
    }
    assert!(has("sum by (status)"), "status codes");
    assert!(
        has("status=~\"5..\"") && exprs.iter().any(|e| e.contains(" / ")),
        "error ratio"
    );
    assert!(
        has("node_cpu_seconds_total") && has("node_memory_MemAvailable_bytes"),
        "host panels"
    );
    assert!(
        has("sum by (job) (up)"),
        "stack health: every job's targets up, an app fleet's counted together"
    );
    // Issue 19: the app fleet, its size and a per-instance view.
    assert!(has("sum(up{job=\"demo-app\"})"), "app instances up");
    assert!(
        has("sum by (instance) (rate(app_requests_total"),
        "request rate by instance"
    );
    let logs = all
        .iter()
        .find(|p| p["type"] == "logs")
        .expect("a logs panel");
    assert_eq!(logs["datasource"]["uid"], "loki");
    let rows: Vec<&str> = all
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    assert!(rows.contains(&"Stack health"), "rows: {rows:?}");
}

/// The fleet sizes the series counts compare.
const SMALL_FLEET: usize = 2;
const LARGE_FLEET: usize = 10;

#[test]
fn dashboard_queries_stay_bounded_as_the_app_fleet_grows() {
    let app_series = series::exposition_series(&demo_app_metrics_text());
    assert!(app_series.len() > 10, "{app_series:?}");
    let windows = series::windows(&[SMALL_FLEET, LARGE_FLEET]);
    let server = series::Server::start(&series::openmetrics(&windows, &app_series));
    let counts = |expr: &str, instant: bool| {
        let expr = xtask::verify::checks::panels::fill_macros(expr);
        (
            server.count(&expr, instant, &windows[0]),
            server.count(&expr, instant, &windows[1]),
        )
    };

    // The measure must be able to fail: every target's `up`, unaggregated, grows by three
    // series per instance (the app, Promtail, node_exporter).
    let (small, large) = counts("up", true);
    assert_eq!(large - small, 3 * (LARGE_FLEET - SMALL_FLEET));
    assert!(!series::bounded((SMALL_FLEET, small), (LARGE_FLEET, large)));

    let mut rows = Vec::new();
    let mut problems = Vec::new();
    let mut total = 0;
    for (dashboard, panels) in dashboards().iter().map(|(path, json)| {
        (
            path,
            xtask::verify::checks::panels::prometheus_queries(json),
        )
    }) {
        for (panel, queries) in panels {
            for query in queries {
                let (small, large) = counts(&query.expr, query.instant);
                total += large;
                if small == 0 || large == 0 {
                    problems.push(format!(
                        "{panel}: `{}` returns nothing from the synthetic stack ({small} / \
                         {large} series): give its metrics series in tests/series/mod.rs",
                        query.expr
                    ));
                } else if !series::bounded((SMALL_FLEET, small), (LARGE_FLEET, large)) {
                    problems.push(format!(
                        "{panel}: `{}` grows from {small} series for {SMALL_FLEET} instances \
                         to {large} for {LARGE_FLEET}: more than one per instance; aggregate \
                         it (sum, sum by (instance), topk)",
                        query.expr
                    ));
                }
                rows.push(vec![
                    panel.clone(),
                    small.to_string(),
                    large.to_string(),
                    series::growth(small, large, LARGE_FLEET - SMALL_FLEET).to_string(),
                ]);
            }
        }
        assert!(!rows.is_empty(), "{}: no PromQL query", dashboard.display());
    }
    // The figure: each panel query's series for a fleet of 2 and of 10.
    eprintln!(
        "{}",
        xtask::table::render(
            &[
                "panel",
                &format!("series, {SMALL_FLEET} instances"),
                &format!("series, {LARGE_FLEET} instances"),
                "growth",
            ],
            &rows
        )
    );
    eprintln!(
        "{} queries, {total} series in all for {LARGE_FLEET} instances",
        rows.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
