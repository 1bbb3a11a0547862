//! `cargo xtask verify`: a whole-stack acceptance test, the same checks for a local stack
//! (`cargo xtask up --detach`) and a deployed one. It sends the app one request of its
//! own and follows it through the stack (the log line in Loki, the request counter in
//! Prometheus), then checks Prometheus' targets and rules and Grafana's datasources,
//! dashboard and panel queries. A component that is not there is "not checked";
//! `--require-all` makes that a failure.

pub mod api;
pub mod checks;
pub mod expect;
pub mod poll;
pub mod report;
pub mod target;

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cli::VerifyArgs;
use crate::roles::Registry;
use checks::{app, grafana, logs, panels, prometheus};
use report::{Report, Row};
use target::Target;

pub fn run(args: VerifyArgs) -> anyhow::Result<()> {
    let registry = Registry::load_default()?;
    // A deployed stack's tunnels (if any) stay open until the report is done.
    let mut reached = None;
    let target = if args.deployed || (!args.local && !target::local_stack_exists()?) {
        let stack = crate::deploy::deployed_stack(
            args.region.clone(),
            crate::tunnel::reach::Route::from_flag(args.tunnel),
        )
        .context(
            "no local stack runs (`cargo xtask up --detach` starts one) and the deployed stack \
             cannot be reached",
        )?;
        let target = Target::deployed(&registry, &stack.endpoints)?;
        reached = Some(stack);
        target
    } else {
        Target::local(&registry)?
    };
    eprintln!("verifying the {} stack...", target.name);
    let report = verify(&target, &Options::from(&args));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
        println!(
            "\n{} stack: {} in {:.1}s",
            target.name,
            if report.passed {
                "verified"
            } else {
                "NOT verified"
            },
            report.elapsed_seconds
        );
    }
    drop(reached);
    report::verdict(&report.checks, args.require_all).map_err(|problems| {
        anyhow::anyhow!("the {} stack is not verified: {problems}", target.name)
    })
}

/// How long to wait for what the stack does on its own schedule.
#[derive(Debug, Clone)]
pub struct Options {
    /// For the test request's line to reach Loki.
    pub log_deadline: Duration,
    /// For scrapes and rule evaluations (targets, counter, rules, panels), from the start.
    pub metrics_deadline: Duration,
    pub require_all: bool,
}

impl From<&VerifyArgs> for Options {
    fn from(args: &VerifyArgs) -> Options {
        Options {
            log_deadline: args.log_deadline,
            metrics_deadline: args.metrics_deadline,
            require_all: args.require_all,
        }
    }
}

/// Runs every check against `target`, in the order the test request travels.
pub fn verify(target: &Target, options: &Options) -> Report {
    let started = Instant::now();
    let metrics_deadline = started + options.metrics_deadline;
    let mut rows: Vec<Row> = Vec::new();

    // Read before the test request, so the counter check sees this request move it.
    let before = target
        .prometheus
        .as_ref()
        .ok()
        .and_then(|api| prometheus::request_count(api).ok().flatten());
    let (row, request) = app::answers(&target.app);
    rows.push(row);
    let (row, log_found_after) =
        logs::request_logged(&target.loki, request.as_ref(), options.log_deadline);
    rows.push(row);
    rows.push(prometheus::counter_moved(
        &target.prometheus,
        before,
        request.as_ref(),
        metrics_deadline,
    ));
    rows.push(prometheus::targets_up(
        &target.prometheus,
        &target.expected.jobs,
        metrics_deadline,
    ));
    rows.push(prometheus::rules_healthy(
        &target.prometheus,
        metrics_deadline,
    ));
    rows.push(prometheus::alertmanager_seen(
        &target.prometheus,
        &target.expected.jobs,
        metrics_deadline,
    ));

    rows.push(grafana::health(&target.grafana));
    rows.extend(grafana::datasources(&target.grafana, &target.expected));
    let (dashboard_rows, served) = grafana::dashboards(&target.grafana, &target.expected);
    rows.extend(dashboard_rows);
    // The panels as Grafana serves them; without Grafana, the checkout's copy, so a local
    // stack still proves its Prometheus answers every panel.
    if !served.is_empty() {
        for (_, json) in &served {
            rows.extend(panels::panels_return_data(
                &target.prometheus,
                json,
                "grafana",
                &target.expected.jobs,
                metrics_deadline,
            ));
        }
    } else if target.grafana.is_err() {
        for dashboard in target.expected.dashboards.iter().flatten() {
            rows.extend(panels::panels_return_data(
                &target.prometheus,
                &dashboard.json,
                "prometheus",
                &target.expected.jobs,
                metrics_deadline,
            ));
        }
    }
    Report::new(
        target.name,
        rows,
        options.require_all,
        started.elapsed(),
        log_found_after,
    )
}
