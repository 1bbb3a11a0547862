//! How many series a PromQL query returns for an app fleet of a given size, measured on a
//! real Prometheus: synthetic samples of a whole stack (the app's own series as a running
//! demo-app exposes them, node_exporter's, `up`, a firing alert per app instance) for each
//! fleet size, imported with `promtool tsdb create-blocks-from openmetrics`, served by
//! `prometheus` on loopback and queried the way Grafana does.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use xtask::verify::api::Api;

/// Samples every 15 s (the stack's scrape interval) for 20 minutes per fleet size.
const STEP_SECONDS: i64 = 15;
const WINDOW_SECONDS: i64 = 20 * 60;
/// Between two fleets' windows: more than the 5 minute look-back and any rate window, so
/// no query of one window sees the other's samples.
const GAP_SECONDS: i64 = 60 * 60;

/// The roles with one static instance each, beside the app fleet.
const OTHER_ROLES: [(&str, &str); 3] = [
    ("prometheus", "127.0.0.1"),
    ("loki", "10.0.0.11"),
    ("grafana", "10.0.0.13"),
];

/// node_exporter's series per host: (metric, label sets) — those the dashboard reads.
const NODE_SERIES: &[(&str, &[&str])] = &[
    (
        "node_cpu_seconds_total",
        &[
            r#"cpu="0",mode="idle""#,
            r#"cpu="0",mode="user""#,
            r#"cpu="1",mode="idle""#,
            r#"cpu="1",mode="user""#,
        ],
    ),
    ("node_memory_MemAvailable_bytes", &[""]),
    ("node_memory_MemTotal_bytes", &[""]),
    (
        "node_filesystem_avail_bytes",
        &[
            r#"device="/dev/nvme0n1p1",fstype="ext4",mountpoint="/""#,
            r#"device="/dev/nvme1n1",fstype="ext4",mountpoint="/var/lib/data""#,
        ],
    ),
    (
        "node_filesystem_size_bytes",
        &[
            r#"device="/dev/nvme0n1p1",fstype="ext4",mountpoint="/""#,
            r#"device="/dev/nvme1n1",fstype="ext4",mountpoint="/var/lib/data""#,
        ],
    ),
    (
        "node_filesystem_readonly",
        &[r#"device="/dev/nvme0n1p1",fstype="ext4",mountpoint="/""#],
    ),
    (
        "node_network_receive_bytes_total",
        &[r#"device="ens5""#, r#"device="lo""#],
    ),
    (
        "node_network_transmit_bytes_total",
        &[r#"device="ens5""#, r#"device="lo""#],
    ),
    ("node_load1", &[""]),
];

/// One app instance's target labels, as EC2 discovery and relabelling set them.
fn app_target(i: usize, job: &str, port: u16) -> String {
    let zone = ["us-east-1a", "us-east-1b"][i % 2];
    format!(
        r#"job="{job}",instance="10.0.{}.{}:{port}",instance_id="i-{i:017x}",availability_zone="{zone}",role="app""#,
        1 + i % 2,
        10 + i / 2
    )
}

fn static_target(job: &str, host: &str, port: u16, role: &str) -> String {
    format!(r#"job="{job}",instance="{host}:{port}",role="{role}""#)
}

/// `name{labels}` with `target` labels added; `series` is a line of a text exposition
/// without its value.
fn with_target(series: &str, target: &str) -> String {
    match series.split_once('{') {
        Some((name, rest)) if rest.trim() == "}" => format!("{name}{{{target}}}"),
        Some((name, rest)) => format!("{name}{{{target},{rest}"),
        None => format!("{series}{{{target}}}"),
    }
}

/// Every series of a stack whose app fleet has `fleet` instances: `name{labels}`.
/// `app_series` are the series a running demo-app exposes (without target labels).
pub fn stack_series(fleet: usize, app_series: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let node = |out: &mut Vec<String>, target: &str| {
        for (metric, label_sets) in NODE_SERIES {
            for labels in *label_sets {
                let labels = if labels.is_empty() {
                    target.to_string()
                } else {
                    format!("{target},{labels}")
                };
                out.push(format!("{metric}{{{labels}}}"));
            }
        }
        out.push(format!("up{{{target}}}"));
    };
    for i in 0..fleet {
        let app = app_target(i, "demo-app", 5000);
        out.extend(app_series.iter().map(|s| with_target(s, &app)));
        out.push(format!("up{{{app}}}"));
        out.push(format!("up{{{}}}", app_target(i, "promtail", 9080)));
        node(&mut out, &app_target(i, "node", 9100));
        // The worst case for the alert panels: every instance down at once.
        out.push(format!(
            r#"ALERTS{{alertname="AppDown",alertstate="firing",severity="critical",{app}}}"#
        ));
    }
    for (role, host) in OTHER_ROLES {
        node(&mut out, &static_target("node", host, 9100, role));
    }
    for (job, host, port, role) in [
        ("prometheus", "127.0.0.1", 9090, "prometheus"),
        ("alertmanager", "127.0.0.1", 9093, "prometheus"),
        ("loki", "10.0.0.11", 3100, "loki"),
        ("grafana", "10.0.0.13", 3000, "grafana"),
    ] {
        out.push(format!("up{{{}}}", static_target(job, host, port, role)));
    }
    out
}

/// The series of a text exposition (comments and values dropped).
pub fn exposition_series(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            // The value (and an optional timestamp) follow the last `}` or the name.
            let end = l.rfind('}').map(|i| i + 1).unwrap_or_else(|| {
                l.find(' ')
                    .unwrap_or_else(|| panic!("no value in exposition line `{l}`"))
            });
            l[..end].to_string()
        })
        .collect()
}

/// A fleet size's samples: from `start`, every 15 s for the window.
pub struct Window {
    pub fleet: usize,
    pub start: i64,
}

impl Window {
    pub fn end(&self) -> i64 {
        self.start + WINDOW_SECONDS
    }
}

/// One window per fleet size, in the past (the importer writes blocks behind the head).
pub fn windows(fleets: &[usize]) -> Vec<Window> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let total = fleets.len() as i64 * (WINDOW_SECONDS + GAP_SECONDS);
    let first = (now - total - 3600) / 3600 * 3600;
    fleets
        .iter()
        .enumerate()
        .map(|(k, &fleet)| Window {
            fleet,
            start: first + k as i64 * (WINDOW_SECONDS + GAP_SECONDS),
        })
        .collect()
}

/// OpenMetrics text holding every window's stack: each series' samples in time order, a
/// metric's series together, counters and gauges alike rising.
pub fn openmetrics(windows: &[Window], app_series: &[String]) -> String {
    // series → the windows it has samples in (a fleet of 10 contains the fleet of 2's).
    let mut series: BTreeMap<String, Vec<&Window>> = BTreeMap::new();
    for window in windows {
        for s in stack_series(window.fleet, app_series) {
            series.entry(s).or_default().push(window);
        }
    }
    let mut out = String::new();
    for (name, windows) in &series {
        for window in windows {
            for (k, t) in (window.start..=window.end())
                .step_by(STEP_SECONDS as usize)
                .enumerate()
            {
                out.push_str(&format!("{name} {} {t}\n", k + 1));
            }
        }
    }
    out.push_str("# EOF\n");
    out
}

/// A `prometheus` server on a free loopback port over a TSDB directory, killed on drop.
pub struct Server {
    child: Child,
    pub api: Api,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Imports `openmetrics` with promtool and starts Prometheus over the blocks.
    pub fn start(openmetrics: &str) -> Server {
        let promtool = testkit::require_tool("promtool");
        let prometheus = testkit::require_tool("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("input.om");
        std::fs::write(&input, openmetrics).unwrap();
        let data = dir.path().join("data");
        let output = Command::new(&promtool)
            .args([
                OsStr::new("tsdb"),
                OsStr::new("create-blocks-from"),
                OsStr::new("openmetrics"),
                OsStr::new("--quiet"),
                input.as_os_str(),
                data.as_os_str(),
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "promtool could not import the samples:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, "scrape_configs: []\n").unwrap();
        let port = testkit::free_port();
        let child = Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg("--storage.tsdb.retention.time=30d")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Server {
            child,
            api: Api::new(&format!("http://127.0.0.1:{port}"), None).unwrap(),
            _dir: dir,
        };
        testkit::wait_for_port(
            format!("127.0.0.1:{port}").parse().unwrap(),
            Duration::from_secs(60),
        );
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        for _ in 0..600 {
            if self
                .api
                .get("/-/ready", &[], &[])
                .is_ok_and(|answer| answer.is_success())
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("Prometheus did not get ready within 60 s");
    }

    /// How many series `expr` returns over `window`: at its end for an instant query, over
    /// the window (less the first rate window) at a 15 s step for a range query, as
    /// Grafana draws it.
    pub fn count(&self, expr: &str, instant: bool, window: &Window) -> usize {
        let end = window.end().to_string();
        let data = if instant {
            self.api
                .data("/api/v1/query", &[("query", expr), ("time", &end)])
        } else {
            let start = (window.start + 5 * 60).to_string();
            self.api.data(
                "/api/v1/query_range",
                &[
                    ("query", expr),
                    ("start", &start),
                    ("end", &end),
                    ("step", "15"),
                ],
            )
        }
        .unwrap_or_else(|e| panic!("`{expr}`: {e}"));
        match data["resultType"].as_str() {
            Some("scalar") | Some("string") => 1,
            _ => data["result"].as_array().map_or(0, Vec::len),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a query's series stay bounded as the fleet grows from `small` to `large`
/// instances: the same count (an aggregate), or at most one more series per added
/// instance (a per-instance view).
pub fn bounded(small: (usize, usize), large: (usize, usize)) -> bool {
    let (small_fleet, small_count) = small;
    let (large_fleet, large_count) = large;
    large_count <= small_count + (large_fleet - small_fleet)
}

/// How a query's series grew from `small` to `large` as the fleet grew by `added`
/// instances: for the figure.
pub fn growth(small: usize, large: usize, added: usize) -> &'static str {
    if small == large {
        "independent of the fleet"
    } else if large == small + added {
        "one per instance"
    } else if large < small + added {
        "capped (less than one per instance)"
    } else {
        "MORE than one per instance"
    }
}
