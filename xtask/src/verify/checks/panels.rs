//! Every PromQL query of the dashboard's panels returns data from Prometheus.
//!
//! A healthy stack legitimately has a few empty panels: series that are born only when
//! something happens (the first 5xx, an alert). An empty query is therefore explained
//! selector by selector: each is counted on its own, and the query passes only when every
//! selector that selects nothing is one of those event-born series. A selector of a job
//! that is not scraped here (a local stack without node_exporter) makes the panel "not
//! checked"; any other empty selector (a renamed metric, a wrong label) fails it.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr, VectorSelector};
use promql_parser::util::{walk_expr, ExprVisitor};
use serde_json::Value;

use crate::verify::api::Api;
use crate::verify::poll::{self, NotYet};
use crate::verify::report::{Row, Verdict};
use crate::verify::target::Reach;

/// Series that exist only once something happened, with what: (metric, a label whose
/// matcher narrows the selector to such events (or any selector when `None`), the event).
const EVENT_BORN: &[(&str, Option<&str>, &str)] = &[
    ("ALERTS", None, "an alert is pending or firing"),
    ("app_errors_total", None, "the app answers with a 5xx"),
    (
        "app_requests_total",
        Some("status"),
        "the app answers with that status",
    ),
];

/// Grafana's interval macros, as Grafana fills them for the stack's 15 s scrape interval
/// (datasource `timeInterval`): `$__rate_interval` is four scrape intervals.
const MACROS: &[(&str, &str)] = &[
    ("${__rate_interval}", "1m"),
    ("$__rate_interval", "1m"),
    ("${__interval}", "15s"),
    ("$__interval", "15s"),
    ("${__range}", "5m"),
    ("$__range", "5m"),
];
/// The range a range query covers, and its step.
const RANGE_SECONDS: f64 = 300.0;
const STEP: &str = "15";

/// One PromQL query of a panel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanelQuery {
    pub panel: String,
    pub expr: String,
    pub instant: bool,
}

/// Every PromQL query of `dashboard`, panels in rows included, by panel title in order.
pub fn prometheus_queries(dashboard: &Value) -> Vec<(String, Vec<PanelQuery>)> {
    let mut panels = Vec::new();
    collect_panels(&dashboard["panels"], &mut panels);
    panels
        .into_iter()
        .filter_map(|panel| {
            let title = panel["title"].as_str().unwrap_or("untitled").to_string();
            let queries: Vec<PanelQuery> = panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|target| target["hide"] != true)
                .filter(|target| {
                    let kind = target["datasource"]["type"]
                        .as_str()
                        .or(panel["datasource"]["type"].as_str());
                    kind == Some("prometheus")
                })
                .filter_map(|target| {
                    let expr = target["expr"].as_str().filter(|e| !e.trim().is_empty())?;
                    Some(PanelQuery {
                        panel: title.clone(),
                        expr: expr.to_string(),
                        instant: target["instant"] == true && target["range"] != true,
                    })
                })
                .collect();
            (!queries.is_empty()).then_some((title, queries))
        })
        .collect()
}

fn collect_panels<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
    for panel in panels.as_array().into_iter().flatten() {
        out.push(panel);
        // A collapsed row keeps its panels inside it.
        collect_panels(&panel["panels"], out);
    }
}

/// One row per panel with PromQL queries. `component` names where the dashboard came from
/// (`grafana` when Grafana served it), `source` says so in the detail when it is the
/// checkout's copy.
pub fn panels_return_data(
    prometheus: &Reach,
    dashboard: &Value,
    component: &str,
    jobs: &Result<Vec<String>, String>,
    deadline: Instant,
) -> Vec<Row> {
    prometheus_queries(dashboard)
        .into_iter()
        .map(|(title, queries)| {
            let check = format!("panel \"{title}\"");
            let prometheus = match prometheus {
                Ok(api) => api,
                Err(why) => return Row::not_checked(&check, component, why.clone()),
            };
            let result = poll::until(deadline, poll::INTERVAL, || {
                panel_attempt(prometheus, &queries, jobs)
            });
            match result {
                Ok((verdict, detail)) => Row::new(&check, component, verdict, detail),
                Err(reason) => Row::failed(&check, component, reason),
            }
        })
        .collect()
}

/// One evaluation of a panel's queries.
fn panel_attempt(
    prometheus: &Api,
    queries: &[PanelQuery],
    jobs: &Result<Vec<String>, String>,
) -> Result<(Verdict, String), NotYet> {
    let mut notes = Vec::new();
    for query in queries {
        let expr = fill_macros(&query.expr);
        if let Some(variable) = expr.split('$').nth(1) {
            let name: String = variable
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '{')
                .collect();
            return Ok((
                Verdict::NotChecked,
                format!(
                    "`{}` uses the dashboard variable ${name}, which verify cannot fill",
                    query.expr
                ),
            ));
        }
        if has_data(&evaluate(prometheus, &expr, query.instant)?) {
            continue;
        }
        match explain_empty(prometheus, &expr, jobs)? {
            Empty::Unscraped(job) => {
                return Ok((
                    Verdict::NotChecked,
                    format!("it queries job {job}, which this stack does not scrape"),
                ))
            }
            Empty::Expected(why) => notes.push(why),
            Empty::Broken(selectors) => {
                return Err(NotYet::Failed(format!(
                    "`{expr}` returns no data: {} selects no series",
                    selectors.join(", ")
                )))
            }
            Empty::Unexplained => {
                return Err(NotYet::Pending(format!(
                    "`{expr}` returns no data although every series it selects exists"
                )))
            }
        }
    }
    let detail = if notes.is_empty() {
        count(queries.len())
    } else {
        format!("no data yet, as expected: {}", notes.join("; "))
    };
    Ok((Verdict::Ok, detail))
}

fn count(n: usize) -> String {
    if n == 1 {
        "its query returns data".to_string()
    } else {
        format!("all {n} queries return data")
    }
}

/// `expr` with Grafana's interval macros filled in.
pub fn fill_macros(expr: &str) -> String {
    MACROS.iter().fold(expr.to_string(), |text, (name, value)| {
        text.replace(name, value)
    })
}

/// The query's `data`: an instant query now, or a range query over the last five minutes.
fn evaluate(prometheus: &Api, expr: &str, instant: bool) -> Result<Value, NotYet> {
    let result = if instant {
        prometheus.data("/api/v1/query", &[("query", expr)])
    } else {
        let end = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let (start, end) = (format!("{:.3}", end - RANGE_SECONDS), format!("{end:.3}"));
        prometheus.data(
            "/api/v1/query_range",
            &[
                ("query", expr),
                ("start", &start),
                ("end", &end),
                ("step", STEP),
            ],
        )
    };
    // A query Prometheus rejects is broken; one it could not answer may be a restart.
    result.map_err(|reason| {
        if reason.contains("HTTP 400") || reason.contains("HTTP 422") {
            NotYet::Failed(reason)
        } else {
            NotYet::Pending(reason)
        }
    })
}

/// Whether a query's `data` holds anything a panel would draw.
pub fn has_data(data: &Value) -> bool {
    match data["resultType"].as_str() {
        Some("scalar") | Some("string") => true,
        _ => data["result"].as_array().is_some_and(|r| !r.is_empty()),
    }
}

/// Why a query returned nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Empty {
    /// It selects a job that is not scraped here.
    Unscraped(String),
    /// Only event-born series are missing: why each is.
    Expected(String),
    /// These selectors select nothing and should.
    Broken(Vec<String>),
    /// Every selector selects something (e.g. a rate before its second sample).
    Unexplained,
}

fn explain_empty(
    prometheus: &Api,
    expr: &str,
    jobs: &Result<Vec<String>, String>,
) -> Result<Empty, NotYet> {
    let selectors = selectors(expr).map_err(NotYet::Failed)?;
    let mut empty = Vec::new();
    for selector in &selectors {
        let counted = prometheus
            .data("/api/v1/query", &[("query", &format!("count({selector})"))])
            .map_err(NotYet::Pending)?;
        if !has_data(&counted) {
            empty.push(selector.clone());
        }
    }
    Ok(classify(&empty, jobs))
}

/// The verdict over the selectors that select nothing.
pub fn classify(empty: &[VectorSelector], jobs: &Result<Vec<String>, String>) -> Empty {
    if empty.is_empty() {
        return Empty::Unexplained;
    }
    if let Ok(jobs) = jobs {
        if let Some(job) = empty
            .iter()
            .filter_map(job_of)
            .find(|job| !jobs.iter().any(|j| j == job))
        {
            return Empty::Unscraped(job);
        }
    }
    let mut reasons = Vec::new();
    let mut broken = Vec::new();
    for selector in empty {
        match event_born(selector) {
            Some(why) => reasons.push(format!("{selector} exists once {why}")),
            None => broken.push(selector.to_string()),
        }
    }
    if broken.is_empty() {
        Empty::Expected(reasons.join("; "))
    } else {
        Empty::Broken(broken)
    }
}

/// The series selectors of a PromQL expression, range selectors included.
pub fn selectors(expr: &str) -> Result<Vec<VectorSelector>, String> {
    struct Collect(Vec<VectorSelector>);
    impl ExprVisitor for Collect {
        type Error = String;
        fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
            match expr {
                Expr::VectorSelector(vs) => self.0.push(vs.clone()),
                Expr::MatrixSelector(ms) => self.0.push(ms.vs.clone()),
                _ => {}
            }
            Ok(true)
        }
    }
    let parsed = parser::parse(expr).map_err(|e| format!("`{expr}` is not PromQL: {e}"))?;
    let mut collect = Collect(Vec::new());
    walk_expr(&mut collect, &parsed)?;
    Ok(collect.0)
}

fn metric_name(selector: &VectorSelector) -> Option<String> {
    selector.name.clone().or_else(|| {
        selector
            .matchers
            .matchers
            .iter()
            .find(|m| m.name == "__name__" && m.op == MatchOp::Equal)
            .map(|m| m.value.clone())
    })
}

fn job_of(selector: &VectorSelector) -> Option<String> {
    selector
        .matchers
        .matchers
        .iter()
        .find(|m| m.name == "job" && m.op == MatchOp::Equal)
        .map(|m| m.value.clone())
}

/// What must happen for `selector` to select a series, if it is event-born.
fn event_born(selector: &VectorSelector) -> Option<&'static str> {
    let name = metric_name(selector)?;
    EVENT_BORN
        .iter()
        .find(|(metric, label, _)| {
            *metric == name
                && label
                    .is_none_or(|label| selector.matchers.matchers.iter().any(|m| m.name == label))
        })
        .map(|(_, _, why)| *why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(exprs: &[&str]) -> Vec<VectorSelector> {
        exprs.iter().flat_map(|e| selectors(e).unwrap()).collect()
    }

    #[test]
    fn selectors_are_found_inside_functions_and_ranges() {
        let found = selectors(
            "sum(rate(app_requests_total{job=\"demo-app\", status=~\"5..\"}[1m])) / sum(up)",
        )
        .unwrap();
        let names: Vec<Option<String>> = found.iter().map(metric_name).collect();
        assert_eq!(
            names,
            [
                Some("app_requests_total".to_string()),
                Some("up".to_string())
            ]
        );
        assert_eq!(job_of(&found[0]).as_deref(), Some("demo-app"));
    }

    #[test]
    fn only_event_born_series_may_be_missing() {
        let jobs = Ok(vec!["demo-app".to_string(), "prometheus".to_string()]);
        let expected = classify(
            &parsed(&[
                "ALERTS{alertstate=\"firing\"}",
                "app_requests_total{job=\"demo-app\", status=~\"5..\"}",
            ]),
            &jobs,
        );
        assert!(matches!(expected, Empty::Expected(_)), "{expected:?}");
        // Without the status matcher, the app's counter is not an event.
        let broken = classify(&parsed(&["app_requests_total{job=\"demo-app\"}"]), &jobs);
        assert_eq!(
            broken,
            Empty::Broken(vec!["app_requests_total{job=\"demo-app\"}".into()])
        );
        let renamed = classify(&parsed(&["app_request_total{job=\"demo-app\"}"]), &jobs);
        assert!(matches!(renamed, Empty::Broken(_)), "{renamed:?}");
        let unscraped = classify(&parsed(&["node_load1{job=\"node\"}"]), &jobs);
        assert_eq!(unscraped, Empty::Unscraped("node".into()));
        assert_eq!(classify(&[], &jobs), Empty::Unexplained);
    }

    #[test]
    fn macros_are_filled_as_grafana_would() {
        assert_eq!(
            fill_macros("rate(x[$__rate_interval]) + rate(y[${__interval}])"),
            "rate(x[1m]) + rate(y[15s])"
        );
    }

    #[test]
    fn every_prometheus_query_of_the_shipped_dashboard_is_found() {
        let registry = crate::roles::Registry::load_default().unwrap();
        let expected =
            crate::verify::expect::Expected::for_services(&registry, &registry.service_names());
        for dashboard in expected.dashboards.unwrap() {
            let panels = prometheus_queries(&dashboard.json);
            assert!(!panels.is_empty(), "{}", dashboard.uid);
            for (title, queries) in panels {
                for query in queries {
                    selectors(&fill_macros(&query.expr))
                        .unwrap_or_else(|e| panic!("panel {title}: {e}"));
                }
            }
        }
    }

    #[test]
    fn data_is_a_non_empty_result_or_a_scalar() {
        assert!(has_data(
            &serde_json::json!({"resultType": "scalar", "result": [1, "0"]})
        ));
        assert!(has_data(
            &serde_json::json!({"resultType": "vector", "result": [{}]})
        ));
        assert!(!has_data(
            &serde_json::json!({"resultType": "matrix", "result": []})
        ));
    }
}
