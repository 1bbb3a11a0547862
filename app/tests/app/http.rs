//! The HTTP surface over real sockets: the app served in-process on a loopback port,
//! driven with a real HTTP client.

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use demo_app::metrics::Metrics;
use demo_app::{AppContext, Shared, VERSION};
use reqwest::blocking::{Client, Response};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// The app on 127.0.0.1:<free port>, stopped gracefully on drop.
struct TestServer {
    addr: SocketAddr,
    client: Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    fn start() -> TestServer {
        let metrics = Metrics::new(VERSION).unwrap();
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let ctx: Shared = AppContext::new(metrics, logger, Duration::from_secs(1));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime.block_on(demo_app::serve(listener, ctx, async {
                let _ = stopped.await;
            }));
        });
        TestServer {
            addr,
            client: Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().unwrap()
    }

    fn request(&self, method: &Method, path: &str) -> Response {
        self.client
            .request(method.clone(), self.url(path))
            .send()
            .unwrap()
    }

    fn metrics_text(&self) -> String {
        let response = self.get("/metrics");
        assert_eq!(response.status(), StatusCode::OK);
        response.text().unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn json(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/json", "status {status}");
    (status, response.json().unwrap())
}

#[test]
fn index_lists_every_endpoint() {
    let server = TestServer::start();
    let (status, body) = json(server.get("/"));
    assert_eq!(status, StatusCode::OK);
    let paths: Vec<&str> = body["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/",
            "/health",
            "/metrics",
            "/api/data",
            "/api/random",
            "/api/error"
        ]
    );
    assert_eq!(body["version"], VERSION);
}

#[test]
fn health_reports_status_version_and_uptime() {
    let server = TestServer::start();
    let (status, body) = json(server.get("/health"));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["version"], VERSION);
    assert!(body["uptime_seconds"].as_f64().unwrap() >= 0.0);
}

#[test]
fn data_returns_a_record_with_a_timestamp() {
    let server = TestServer::start();
    let (status, body) = json(server.get("/api/data"));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["name"], "sample");
    let timestamp = body["timestamp"].as_str().unwrap();
    assert!(
        timestamp.starts_with("20") && timestamp.ends_with('Z'),
        "{timestamp}"
    );
}

#[test]
fn data_honours_a_simulated_delay_within_the_cap() {
    let server = TestServer::start(); // cap: 1s
    let started = std::time::Instant::now();
    let (status, _) = json(server.get("/api/data?delay_ms=150"));
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(150));
    let (status, body) = json(server.get("/api/data?delay_ms=5000"));
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("`delay_ms`"));
}

#[test]
fn random_respects_bounds() {
    let server = TestServer::start();
    for _ in 0..20 {
        let (status, body) = json(server.get("/api/random?min=-3&max=3"));
        assert_eq!(status, StatusCode::OK);
        let value = body["value"].as_i64().unwrap();
        assert!((-3..=3).contains(&value), "{value}");
    }
    let (_, body) = json(server.get("/api/random"));
    let value = body["value"].as_i64().unwrap();
    assert!((1..=100).contains(&value));
    let (_, body) = json(server.get("/api/random?min=7&max=7"));
    assert_eq!(body["value"], 7);
}

#[test]
fn random_rejects_bad_bounds_naming_the_parameter() {
    let server = TestServer::start();
    for (query, param) in [
        ("min=abc", "`min`"),
        ("max=1.5", "`max`"),
        ("min=10&max=2", "`min`"),
        ("min=99999999999999999999", "`min`"),
        ("max=", "`max`"),
    ] {
        let (status, body) = json(server.get(&format!("/api/random?{query}")));
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        let message = body["error"].as_str().unwrap();
        assert!(message.contains(param), "{query}: {message}");
        assert_eq!(body["status"], 400);
    }
}

#[test]
fn error_fails_and_is_counted() {
    let server = TestServer::start();
    for _ in 0..3 {
        let (status, body) = json(server.get("/api/error"));
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body["error"].as_str().unwrap().contains("simulated"));
    }
    let (status, _) = json(server.get("/api/error?rate=0"));
    assert_eq!(status, StatusCode::OK);
    let text = server.metrics_text();
    assert!(
        text.contains(r#"app_errors_total{endpoint="api_error"} 3"#),
        "{text}"
    );
}

#[test]
fn error_rate_is_validated() {
    let server = TestServer::start();
    for rate in ["1.5", "-1", "often", "NaN"] {
        let (status, body) = json(server.get(&format!("/api/error?rate={rate}")));
        assert_eq!(status, StatusCode::BAD_REQUEST, "{rate}");
        assert!(body["error"].as_str().unwrap().contains("`rate`"), "{rate}");
    }
}

#[test]
fn unknown_paths_are_json_404s() {
    let server = TestServer::start();
    for path in ["/nope", "/api", "/api/data/extra", "/metrics.json", "/%ff"] {
        let (status, body) = json(server.get(path));
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["status"], 404);
    }
    let (status, _) = json(server.request(&Method::from_bytes(b"BREW").unwrap(), "/nope"));
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[test]
fn wrong_methods_on_known_paths_are_405s() {
    let server = TestServer::start();
    for (method, path) in [
        (Method::POST, "/health"),
        (Method::DELETE, "/api/data"),
        (Method::PUT, "/"),
        (Method::from_bytes(b"BREW").unwrap(), "/metrics"),
    ] {
        let response = server.request(&method, path);
        assert_eq!(
            response.headers().get("allow").unwrap(),
            "GET",
            "{method} {path}"
        );
        let (status, body) = json(response);
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(body["status"], 405);
    }
}

#[test]
fn every_response_has_a_unique_request_id() {
    let server = TestServer::start();
    let mut ids = HashSet::new();
    for path in ["/", "/health", "/nope", "/api/random?min=x", "/api/data"] {
        let response = server.get(path);
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(id.len(), 20, "{id}");
        assert!(ids.insert(id), "{path}");
    }
}

const FAMILIES: [&str; 6] = [
    "app_requests_total",
    "app_request_duration_seconds",
    "app_requests_in_flight",
    "app_errors_total",
    "app_build_info",
    "process_resident_memory_bytes",
];

#[test]
fn metrics_pass_promtool_and_have_every_family() {
    let promtool = testkit::require_tool("promtool");
    let server = TestServer::start();
    for path in [
        "/",
        "/health",
        "/api/data",
        "/api/random",
        "/api/error",
        "/nope",
    ] {
        server.get(path);
    }
    server.request(&Method::POST, "/health");
    let response = server.get("/metrics");
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = response.text().unwrap();
    for family in FAMILIES {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{text}"
        );
    }
    assert!(text.contains(
        "app_request_duration_seconds_bucket{endpoint=\"api_data\",method=\"GET\",le=\"0.0001\"}"
    ));
    assert!(text.contains(&format!(
        "app_build_info{{profile=\"debug\",version=\"{VERSION}\"}} 1"
    )));
    assert!(text.contains(r#"app_requests_total{endpoint="health",method="POST",status="405"} 1"#));
    assert!(
        text.contains(r#"app_requests_total{endpoint="unmatched",method="GET",status="404"} 1"#)
    );

    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = check.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Counts the sample lines (series) in an exposition, leaving out the families whose
/// values, not their number, change with traffic.
fn series(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count()
}

#[test]
fn random_paths_and_methods_do_not_add_series() {
    let server = TestServer::start();
    let methods: Vec<Method> = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW", "PROPFIND", "X-ODD",
    ]
    .iter()
    .map(|m| Method::from_bytes(m.as_bytes()).unwrap())
    .collect();
    let known = ["/health", "/api/data", "/api/random", "/api/error", "/"];
    // Warm up: one request per (method, kind of path), so every series that can exist does.
    for method in &methods {
        server.request(method, "/warm-up");
        for path in known {
            if *method != Method::GET {
                server.request(method, path);
            }
        }
    }
    server.metrics_text();
    let before = series(&server.metrics_text());

    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        // xorshift: reproducible and dependency-free.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..10_000 {
        let method = &methods[(next() % methods.len() as u64) as usize];
        let response = if next() % 4 == 0 && *method != Method::GET {
            server.request(method, known[(next() % known.len() as u64) as usize])
        } else {
            server.request(method, &format!("/{:x}/{:x}", next(), next() % 1000))
        };
        assert!(response.status().is_client_error());
    }
    let text = server.metrics_text();
    assert_eq!(series(&text), before, "new series appeared:\n{text}");
    assert!(
        text.contains(r#"app_requests_total{endpoint="unmatched",method="other",status="404"}"#)
    );
}
