//! `cargo xtask verify`: against a real local stack from `cargo xtask up` (the demo app and
//! Debian's Prometheus), passing, then failing on a broken rule file and a stopped app; and
//! its Loki and Grafana checks against recorded answers of their documented HTTP APIs,
//! each shown to fail on a wrong answer.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use testkit::http::{Request, Response, TestServer};
use xtask::deploy::health::BasicAuth;
use xtask::roles::Registry;
use xtask::verify::api::Api;
use xtask::verify::checks::app::TestRequest;
use xtask::verify::checks::logs;
use xtask::verify::expect::Expected;
use xtask::verify::report::{Report, Row, Verdict};
use xtask::verify::target::Target;
use xtask::verify::{verify, Options};

// ---- A real local stack -------------------------------------------------------------

struct Stack {
    dir: tempfile::TempDir,
    cache: tempfile::TempDir,
}

impl Stack {
    fn xtask(&self, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
        command.args(args);
        testkit::services::isolate_local_stack(&mut command, self.dir.path(), self.cache.path());
        command.output().unwrap()
    }

    /// `verify --json`: whether it passed, and its report.
    fn verify(&self, extra: &[&str]) -> (bool, Value, String) {
        let mut args = vec!["verify", "--json"];
        args.extend(extra);
        let output = self.xtask(&args);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let report: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("verify --json printed no JSON ({e}):\n{stdout}\n{stderr}"));
        (output.status.success(), report, stderr)
    }

    fn pid(&self, component: &str) -> u32 {
        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(self.dir.path().join("state.json")).unwrap(),
        )
        .unwrap();
        state["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == component)
            .and_then(|c| c["pid"].as_u64())
            .unwrap_or_else(|| panic!("the stack runs no {component}: {state}")) as u32
    }

    fn rules_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("root/etc/prometheus/rules")
    }

    /// Makes Prometheus re-read its configuration and rule files, as `systemctl reload` does.
    fn reload_prometheus(&self) {
        signal("-HUP", self.pid("prometheus"));
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.xtask(&["down"]);
    }
}

fn signal(which: &str, pid: u32) {
    let status = Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {which} {pid}");
}

fn row<'a>(report: &'a Value, check: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["check"] == check)
        .unwrap_or_else(|| panic!("no row {check}: {report:#}"))
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn verify_passes_on_a_local_stack_and_fails_on_a_broken_rule_or_a_stopped_app() {
    testkit::require_tool("prometheus");
    let stack = Stack {
        dir: tempfile::tempdir().unwrap(),
        cache: tempfile::tempdir().unwrap(),
    };
    let up = stack.xtask(&["up", "--detach", "--offline", "--timeout", "180s"]);
    assert!(
        up.status.success(),
        "up failed:\n{}",
        String::from_utf8_lossy(&up.stderr)
    );

    // A healthy stack passes; what does not run here is "not checked", not a failure.
    let started = Instant::now();
    let (passed, report, stderr) = stack.verify(&[]);
    let wall = started.elapsed();
    assert!(
        passed,
        "verify failed on a healthy stack:\n{report:#}\n{stderr}"
    );
    assert_eq!(report["target"], "local");
    for check in [
        "app answers",
        "request counter moved",
        "scrape targets up",
        "rules loaded and evaluating",
    ] {
        assert_eq!(row(&report, check)["verdict"], "ok", "{check}: {report:#}");
    }
    let targets = row(&report, "scrape targets up")["detail"]
        .as_str()
        .unwrap();
    assert!(
        targets.contains("demo-app") && targets.contains("prometheus"),
        "{targets}"
    );
    // The local stack runs Debian's Alertmanager (scripts/test.sh installs it): Prometheus
    // must list it as where its alerts go.
    testkit::require_tool("prometheus-alertmanager");
    let alerting = row(&report, "alertmanager ready, seen by prometheus");
    assert_eq!(alerting["verdict"], "ok", "{report:#}");
    assert!(
        alerting["detail"].as_str().unwrap().contains(":9093"),
        "{alerting}"
    );
    // Every panel of the shipped dashboard is run against the real Prometheus.
    assert_eq!(
        row(&report, "panel \"Request rate by endpoint\"")["verdict"],
        "ok",
        "{report:#}"
    );
    if testkit::find_on_path("loki").is_none() {
        assert_eq!(
            row(&report, "request logged in loki")["verdict"],
            "not_checked"
        );
        assert_eq!(row(&report, "grafana health")["verdict"], "not_checked");
        // --require-all turns "not checked" into a failure.
        let (passed, _, stderr) = stack.verify(&["--require-all"]);
        assert!(!passed, "--require-all passed without Loki and Grafana");
        assert!(
            stderr.contains("not checked with --require-all"),
            "{stderr}"
        );
    }
    eprintln!(
        "figure: verify on the local stack took {:.1}s (report: {:.1}s)",
        wall.as_secs_f64(),
        report["elapsed_seconds"].as_f64().unwrap()
    );

    // A rule that loads but errors at every evaluation fails the rules check, by name.
    let broken = stack.rules_dir().join("verify-broken.yml");
    write(
        &broken,
        "groups:\n  - name: broken\n    rules:\n      - record: verify:broken\n        \
         expr: up * on() group_left() up\n",
    );
    stack.reload_prometheus();
    let (passed, report, _) = stack.verify(&["--metrics-deadline", "45s"]);
    assert!(!passed, "verify passed with an erroring rule:\n{report:#}");
    let rules = row(&report, "rules loaded and evaluating");
    assert_eq!(rules["verdict"], "failed", "{report:#}");
    assert!(
        rules["detail"]
            .as_str()
            .unwrap()
            .contains("broken/verify:broken is err"),
        "{rules}"
    );
    assert_eq!(row(&report, "app answers")["verdict"], "ok");

    // A rule file Prometheus cannot load: it keeps the old rules, and says the reload failed.
    write(&broken, "groups: [\n");
    stack.reload_prometheus();
    let (passed, report, _) = stack.verify(&["--metrics-deadline", "20s"]);
    assert!(
        !passed,
        "verify passed with an unloadable rule file:\n{report:#}"
    );
    let rules = row(&report, "rules loaded and evaluating");
    assert!(
        rules["detail"].as_str().unwrap().contains("could not load"),
        "{rules}"
    );
    std::fs::remove_file(&broken).unwrap();
    stack.reload_prometheus();

    // The app stopped: it does not answer, and nothing can follow a request through.
    signal("-TERM", stack.pid("app"));
    let (passed, report, stderr) = stack.verify(&["--metrics-deadline", "20s"]);
    assert!(!passed, "verify passed with the app stopped:\n{report:#}");
    let app = row(&report, "app answers");
    assert_eq!(app["verdict"], "failed", "{report:#}");
    assert!(
        app["detail"].as_str().unwrap().contains("127.0.0.1:5000"),
        "{app}"
    );
    assert!(stderr.contains("app answers"), "{stderr}");
    assert_eq!(
        row(&report, "rules loaded and evaluating")["verdict"],
        "ok",
        "{report:#}"
    );
}

// ---- Loki and Grafana, from recorded answers -------------------------------------------

/// The id the recorded app answers with in `x-request-id` (20 hex digits, as the app's).
const REQUEST_ID: &str = "5eed0bad000000000007";

fn url_query(request: &Request) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://recorded{}", request.path))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn param(request: &Request, name: &str) -> String {
    url_query(request)
        .into_iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value)
        .unwrap_or_default()
}

fn json_response(status: u16, body: Value) -> Response {
    Response::status(status)
        .header("Content-Type", "application/json")
        .body(body.to_string())
}

/// Loki's `query_range` answer for a log query (docs: "streams" result type).
fn loki_streams(lines: &[&str]) -> Value {
    let values: Vec<Value> = lines
        .iter()
        .map(|line| json!(["1764750000000000000", line]))
        .collect();
    let result = if values.is_empty() {
        json!([])
    } else {
        json!([{"stream": {"job": "demo-app", "instance": "i-0abc", "level": "info"}, "values": values}])
    };
    json!({"status": "success", "data": {"resultType": "streams", "result": result,
        "stats": {"summary": {"totalLinesProcessed": lines.len()}}}})
}

fn app_line(request_id: &str) -> String {
    json!({"msg": "request", "level": "INFO", "request_id": request_id, "status": 200,
        "route": "health", "path": "/health", "method": "GET"})
    .to_string()
}

fn test_request() -> TestRequest {
    TestRequest {
        request_id: REQUEST_ID.into(),
        sent: Instant::now(),
        sent_at: SystemTime::now(),
    }
}

#[test]
fn the_log_line_is_found_by_polling_loki_and_its_absence_fails_at_the_deadline() {
    // Loki has the line from the third query on, as when Promtail ships it a little later.
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let loki = TestServer::start(move |request| {
        assert!(
            request.path.starts_with("/loki/api/v1/query_range?"),
            "{}",
            request.path
        );
        assert_eq!(
            param(request, "query"),
            format!("{{job=\"demo-app\"}} |= \"{REQUEST_ID}\"")
        );
        assert!(!param(request, "start").is_empty());
        let line = app_line(REQUEST_ID);
        match seen.fetch_add(1, Ordering::SeqCst) {
            0 | 1 => json_response(200, loki_streams(&[])),
            _ => json_response(200, loki_streams(&[&line])),
        }
    });
    let api = Ok(Api::new(loki.url(), None).unwrap());
    let (row, after) = logs::request_logged(&api, Some(&test_request()), Duration::from_secs(30));
    assert_eq!(row.verdict, Verdict::Ok, "{row:?}");
    assert!(calls.load(Ordering::SeqCst) >= 3);
    let after = after.expect("the time to the line is reported");
    eprintln!(
        "figure: recorded Loki, line found after {:.1}s ({} queries)",
        after.as_secs_f64(),
        calls.load(Ordering::SeqCst)
    );

    // A wrong answer: lines, but none with the nonce.
    let other = app_line("0000000000000000ffff");
    let loki = TestServer::start(move |_| json_response(200, loki_streams(&[&other])));
    let api = Ok(Api::new(loki.url(), None).unwrap());
    let (row, after) = logs::request_logged(&api, Some(&test_request()), Duration::from_secs(3));
    assert_eq!(row.verdict, Verdict::Failed, "{row:?}");
    assert!(row.detail.contains(REQUEST_ID), "{}", row.detail);
    assert!(after.is_none());

    // Loki refusing the query fails too.
    let loki = TestServer::start(|_| {
        Response::status(400).body("parse error at line 1, col 1: syntax error")
    });
    let api = Ok(Api::new(loki.url(), None).unwrap());
    let (row, _) = logs::request_logged(&api, Some(&test_request()), Duration::from_secs(2));
    assert_eq!(row.verdict, Verdict::Failed);
    assert!(row.detail.contains("syntax error"), "{}", row.detail);
}

/// What the recorded Grafana answers wrongly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    NonceAbsent,
    DatasourceError,
    DashboardMissing,
    PanelEmpty,
}

const PROXY: &str = "/api/datasources/proxy/uid/";

/// Grafana as a deployed stack shows it to `verify`: its own API, and Prometheus, Loki and
/// Alertmanager behind its datasource proxy, each answer shaped as the services document.
fn recorded_grafana(fault: Fault) -> TestServer {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(
            testkit::workspace_root()
                .join("images/grafana/rootfs/etc/grafana/dashboards/demo-app-observability.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let counter_reads = Arc::new(AtomicUsize::new(0));
    TestServer::start(move |request| {
        let path = request.path.split('?').next().unwrap_or("").to_string();
        if path != "/api/health" {
            // Everything but /api/health needs the admin's credentials.
            let auth = request.header("Authorization").unwrap_or("");
            if !auth.starts_with("Basic ") {
                return json_response(401, json!({"message": "Unauthorized"}));
            }
        }
        match path.as_str() {
            "/api/health" => json_response(
                200,
                json!({"commit": "0a1b2c3", "database": "ok", "version": "12.1.1"}),
            ),
            "/api/datasources/uid/prometheus/health" => json_response(
                200,
                json!({"status": "OK", "message": "Successfully queried the Prometheus API."}),
            ),
            "/api/datasources/uid/loki/health" if fault == Fault::DatasourceError => json_response(
                400,
                json!({"status": "ERROR", "message": "Unable to connect with Loki. Please check the server logs for more details."}),
            ),
            "/api/datasources/uid/loki/health" => json_response(
                200,
                json!({"status": "OK", "message": "Data source successfully connected."}),
            ),
            // The frontend-only Alertmanager datasource has no health check: Grafana 500s.
            "/api/datasources/uid/alertmanager/health" => json_response(
                500,
                json!({"message": "Plugin unavailable", "messageId": "plugin.unavailable", "statusCode": 500}),
            ),
            "/api/dashboards/uid/obstack-demo-app" if fault == Fault::DashboardMissing => {
                json_response(404, json!({"message": "Dashboard not found"}))
            }
            "/api/dashboards/uid/obstack-demo-app" => json_response(
                200,
                json!({"dashboard": dashboard, "meta": {"provisioned": true, "folderTitle": "Obstack"}}),
            ),
            _ => match path.strip_prefix(PROXY) {
                Some(rest) => proxied(rest, request, fault, &counter_reads),
                None => json_response(404, json!({"message": "Not found"})),
            },
        }
    })
}

fn proxied(rest: &str, request: &Request, fault: Fault, counter_reads: &AtomicUsize) -> Response {
    let (uid, path) = rest.split_once('/').unwrap_or((rest, ""));
    let query = param(request, "query");
    match (uid, format!("/{path}").as_str()) {
        ("alertmanager", "/api/v2/status") => json_response(
            200,
            json!({"cluster": {"status": "disabled", "peers": []},
                   "versionInfo": {"version": "0.28.1"}, "uptime": "2026-12-03T08:00:00Z",
                   "config": {"original": "route: {}"}}),
        ),
        ("loki", "/loki/api/v1/query_range") => {
            let line = app_line(REQUEST_ID);
            if fault == Fault::NonceAbsent || !query.contains(REQUEST_ID) {
                json_response(200, loki_streams(&[]))
            } else {
                json_response(200, loki_streams(&[&line]))
            }
        }
        ("prometheus", "/api/v1/targets") => {
            let targets: Vec<Value> = [
                "demo-app",
                "prometheus",
                "alertmanager",
                "node",
                "promtail",
                "loki",
                "grafana",
            ]
            .iter()
            .map(|job| {
                json!({"labels": {"job": job, "instance": format!("10.0.1.9:{job}")},
                    "scrapeUrl": format!("http://10.0.1.9/{job}/metrics"), "health": "up",
                    "lastError": "", "lastScrape": "2026-12-03T09:00:00Z"})
            })
            .collect();
            json_response(
                200,
                json!({"status": "success",
                "data": {"activeTargets": targets, "droppedTargets": []}}),
            )
        }
        ("prometheus", "/api/v1/alertmanagers") => json_response(
            200,
            json!({"status": "success", "data": {"activeAlertmanagers":
                [{"url": "http://10.0.1.7:9093/api/v2/alerts"}], "droppedAlertmanagers": []}}),
        ),
        ("prometheus", "/api/v1/status/runtimeinfo") => json_response(
            200,
            json!({"status": "success", "data": {"reloadConfigSuccess": true,
                "lastConfigTime": "2026-12-03T08:00:00Z", "storageRetention": "15d"}}),
        ),
        ("prometheus", "/api/v1/rules") => json_response(
            200,
            json!({"status": "success", "data": {"groups": [{"name": "obstack",
                "file": "/etc/prometheus/rules/obstack.yml", "interval": 15,
                "rules": [{"name": "AppDown", "query": "up{job=\"demo-app\"} == 0",
                    "health": "ok", "lastError": "", "type": "alerting", "state": "inactive"}]}]}}),
        ),
        ("prometheus", "/api/v1/query") if query.starts_with("sum(app_requests_total") => {
            // The counter moves by our request between the first read and the next.
            let reads = counter_reads.fetch_add(1, Ordering::SeqCst);
            let value = if reads == 0 { "41" } else { "42" };
            json_response(
                200,
                json!({"status": "success", "data": {"resultType": "vector",
                "result": [{"metric": {}, "value": [1764750000.0, value]}]}}),
            )
        }
        ("prometheus", "/api/v1/query" | "/api/v1/query_range") => {
            let empty =
                fault == Fault::PanelEmpty && query.contains("app_request_duration_seconds_bucket");
            let result = if empty {
                json!([])
            } else if path.ends_with("query_range") {
                json!([{"metric": {"job": "demo-app"}, "values": [[1764750000.0, "1"], [1764750015.0, "2"]]}])
            } else {
                json!([{"metric": {"job": "demo-app"}, "value": [1764750000.0, "1"]}])
            };
            let kind = if path.ends_with("query_range") {
                "matrix"
            } else {
                "vector"
            };
            json_response(
                200,
                json!({"status": "success", "data": {"resultType": kind, "result": result}}),
            )
        }
        _ => json_response(404, json!({"message": "Not found"})),
    }
}

/// `verify` of a deployed stack whose Grafana is `grafana` (Prometheus and Loki only
/// through its proxy) and whose app answers with [`REQUEST_ID`].
fn verify_recorded(fault: Fault) -> Report {
    let app = TestServer::start(|_| Response::ok("ok").header("x-request-id", REQUEST_ID));
    let grafana_server = recorded_grafana(fault);
    let registry = Registry::load_default().unwrap();
    let grafana = Api::new(
        grafana_server.url(),
        Some(BasicAuth {
            user: "admin".into(),
            password: "recorded".into(),
        }),
    )
    .unwrap();
    let target = Target {
        name: "deployed",
        app: Ok(Api::new(app.url(), None).unwrap()),
        prometheus: Ok(Api::via_grafana(&grafana, "prometheus")),
        loki: Ok(Api::via_grafana(&grafana, "loki")),
        grafana: Ok(grafana),
        expected: Expected::for_services(&registry, &registry.service_names()),
    };
    let options = Options {
        log_deadline: Duration::from_secs(3),
        metrics_deadline: Duration::from_secs(3),
        require_all: true,
    };
    verify(&target, &options)
}

fn find<'a>(report: &'a Report, check: &str) -> &'a Row {
    report
        .checks
        .iter()
        .find(|row| row.check == check)
        .unwrap_or_else(|| panic!("no row {check}: {report:#?}"))
}

fn failed(report: &Report) -> Vec<&str> {
    report
        .checks
        .iter()
        .filter(|row| row.verdict != Verdict::Ok)
        .map(|row| row.check.as_str())
        .collect()
}

#[test]
fn a_deployed_stack_is_verified_through_grafana_and_each_wrong_answer_fails_its_check() {
    let report = verify_recorded(Fault::None);
    assert!(report.passed, "{}", report.table());
    assert_eq!(failed(&report), Vec::<&str>::new());
    for check in [
        "request logged in loki",
        "grafana health",
        "datasource prometheus",
        "datasource loki",
        "datasource alertmanager",
        "dashboard obstack-demo-app",
        "panel \"Request duration p50 / p95 / p99\"",
    ] {
        assert_eq!(
            find(&report, check).verdict,
            Verdict::Ok,
            "{check}\n{}",
            report.table()
        );
    }
    assert!(report.log_found_after_seconds.is_some());

    // Each fault fails exactly the checks that read what it breaks: an empty request-duration
    // histogram empties both panels built on it.
    for (fault, checks, says) in [
        (
            Fault::NonceAbsent,
            &["request logged in loki"][..],
            REQUEST_ID,
        ),
        (
            Fault::DatasourceError,
            &["datasource loki"][..],
            "Unable to connect with Loki",
        ),
        (
            Fault::DashboardMissing,
            &["dashboard obstack-demo-app"][..],
            "no dashboard with uid obstack-demo-app",
        ),
        (
            Fault::PanelEmpty,
            &[
                "panel \"Request duration p50 / p95 / p99\"",
                "panel \"Slowest instances (p95)\"",
            ][..],
            "app_request_duration_seconds_bucket{job=\"demo-app\"} selects no series",
        ),
    ] {
        let report = verify_recorded(fault);
        assert!(!report.passed, "{fault:?} passed:\n{}", report.table());
        assert_eq!(failed(&report), checks, "{fault:?}:\n{}", report.table());
        for check in checks {
            let row = find(&report, check);
            assert_eq!(row.verdict, Verdict::Failed);
            assert!(row.detail.contains(says), "{fault:?}: {}", row.detail);
        }
    }
}
