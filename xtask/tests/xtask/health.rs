//! The deploy health waiter against real services on loopback: the demo app and a real
//! Prometheus scraping it.

use std::time::{Duration, Instant};

use testkit::services::{start_app, start_prometheus};
use xtask::deploy::health::{self, Check, Checker, PrometheusApi, WaitOptions};

fn checks(app_port: u16, prometheus_port: u16) -> Vec<Check> {
    vec![
        Check::Http {
            name: "app /health".into(),
            url: format!("http://127.0.0.1:{app_port}/health"),
        },
        Check::Http {
            name: "prometheus /-/ready".into(),
            url: format!("http://127.0.0.1:{prometheus_port}/-/ready"),
        },
        Check::PrometheusTargets {
            name: "prometheus targets up".into(),
            api: PrometheusApi::Direct(format!("http://127.0.0.1:{prometheus_port}")),
        },
    ]
}

fn options(timeout: Duration) -> WaitOptions {
    WaitOptions {
        timeout,
        interval: Duration::from_millis(300),
        progress: false,
    }
}

#[test]
fn a_healthy_stack_passes_then_a_dead_app_is_named_and_the_wait_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let (app, app_port) = start_app(dir.path());
    let (_prometheus, prometheus_port) = start_prometheus(dir.path(), app_port);
    let checker = Checker::new(Duration::from_secs(2)).unwrap();
    let checks = checks(app_port, prometheus_port);

    let outcomes = health::wait_until_healthy(&checker, &checks, &options(Duration::from_secs(60)))
        .expect("app and Prometheus become healthy");
    assert_eq!(outcomes.len(), 3);
    assert!(outcomes.iter().all(|o| o.healthy), "{outcomes:?}");
    assert_eq!(outcomes[2].detail, "1 targets up");

    // Take the app away: its own check and Prometheus' view of it must both say so.
    drop(app);
    let timeout = Duration::from_secs(4);
    let started = Instant::now();
    let error = health::wait_until_healthy(&checker, &checks, &options(timeout))
        .expect_err("a dead app is not healthy")
        .to_string();
    let elapsed = started.elapsed();
    assert!(error.contains("not healthy after"), "{error}");
    assert!(error.contains("app /health:"), "{error}");
    assert!(
        error.contains("connection refused"),
        "the reason is given: {error}"
    );
    assert!(
        error.contains("prometheus targets up: 1 of 1 targets not up: app"),
        "{error}"
    );
    assert!(
        !error.contains("prometheus /-/ready"),
        "a healthy check is not blamed: {error}"
    );
    // Bounded: the wait stops at its deadline (plus at most one round of request timeouts).
    assert!(
        elapsed < timeout + Duration::from_secs(10),
        "the wait ran {elapsed:?}"
    );
}

#[test]
fn a_service_that_never_comes_up_fails_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let (_app, app_port) = start_app(dir.path());
    // Prometheus is "deployed" at a port where nothing listens.
    let dead_port = testkit::free_port();
    let checker = Checker::new(Duration::from_secs(1)).unwrap();
    let checks = checks(app_port, dead_port);
    let error = health::wait_until_healthy(&checker, &checks, &options(Duration::from_secs(2)))
        .expect_err("Prometheus is down")
        .to_string();
    assert!(error.contains("prometheus /-/ready:"), "{error}");
    assert!(error.contains("prometheus targets up:"), "{error}");
    assert!(
        !error.contains("app /health"),
        "the app is healthy: {error}"
    );

    // Each check on its own: the healthy one holds, the dead one explains itself.
    let outcomes = checker.run_all(&checks);
    assert!(outcomes[0].healthy, "{:?}", outcomes[0]);
    assert!(!outcomes[1].healthy);
    assert!(
        outcomes[1].detail.contains(&dead_port.to_string()),
        "{:?}",
        outcomes[1]
    );
}
