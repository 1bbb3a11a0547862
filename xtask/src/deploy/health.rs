//! Is the deployed stack healthy? Each check is plain data (a name and the URLs it probes),
//! so the same waiter runs against the AWS stack and, in tests, against loopback ports.
//!
//! This module depends only on external crates (no `crate::` paths): the integration test
//! `xtask/tests/xtask/health.rs` runs it against loopback services.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::Context;
use backon::{BlockingRetryable, ConstantBuilder};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::Value;

/// Credentials for Grafana's HTTP API. `Debug` never shows the password.
#[derive(Clone)]
pub struct BasicAuth {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Where Prometheus' HTTP API is reached: directly, or through Grafana's datasource proxy
/// when Prometheus is not exposed to the operator's network.
#[derive(Debug, Clone)]
pub enum PrometheusApi {
    Direct(String),
    ViaGrafana { grafana: String, auth: BasicAuth },
}

/// One thing that must be true for the stack to count as healthy.
#[derive(Debug, Clone)]
pub enum Check {
    /// `GET url` answers with a 2xx status.
    Http { name: String, url: String },
    /// Prometheus has at least one active scrape target and every one of them is up.
    PrometheusTargets { name: String, api: PrometheusApi },
    /// Every app instance Prometheus discovered (job `demo-app`, label `ami` from EC2
    /// discovery) runs `ami` and is up: the Auto Scaling group's instance refresh is done.
    AppFleetOnAmi {
        name: String,
        api: PrometheusApi,
        ami: String,
    },
    /// Grafana has a Prometheus and a Loki datasource, and both pass Grafana's own
    /// datasource health check (so Grafana can really reach them).
    GrafanaDatasources {
        name: String,
        grafana: String,
        auth: BasicAuth,
    },
}

impl Check {
    pub fn name(&self) -> &str {
        match self {
            Check::Http { name, .. }
            | Check::PrometheusTargets { name, .. }
            | Check::AppFleetOnAmi { name, .. }
            | Check::GrafanaDatasources { name, .. } => name,
        }
    }
}

/// The result of one check: `Ok(detail)` or `Err(reason)`.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub name: String,
    pub healthy: bool,
    pub detail: String,
}

/// What the deployment knows about each service, for [`stack_checks`].
#[derive(Debug, Clone, Default)]
pub struct StackEndpoints {
    /// role → base URL, e.g. `grafana` → `http://203.0.113.9:3000`.
    pub urls: BTreeMap<String, String>,
    /// role → whether the operator's network may reach it (Grafana always may).
    pub exposed: BTreeMap<String, bool>,
    /// Grafana's admin credentials, when they could be read.
    pub grafana_auth: Option<BasicAuth>,
}

/// The checks that prove the whole stack works, given what is reachable from here.
///
/// Services that are not exposed are checked from the inside: the app through Prometheus'
/// scrape targets, Prometheus and Loki through Grafana's datasources (which needs the admin
/// password). Without the password only the exposed endpoints are checked.
pub fn stack_checks(stack: &StackEndpoints) -> Vec<Check> {
    role_checks(stack)
        .into_iter()
        .map(|(_, check)| check)
        .collect()
}

/// The checks among [`stack_checks`] that say something about one of `roles`: the health
/// gate after a roll-out step changed those roles.
pub fn checks_for_roles(stack: &StackEndpoints, roles: &BTreeSet<String>) -> Vec<Check> {
    role_checks(stack)
        .into_iter()
        .filter(|(concerns, _)| concerns.any_of(roles))
        .map(|(_, check)| check)
        .collect()
}

/// Which roles' health a check proves.
#[derive(Debug, Clone, Copy)]
enum Concerns {
    Roles(&'static [&'static str]),
    /// Every role of the registry, whichever there are: Prometheus' targets include every
    /// instance (node_exporter runs on each, and it scrapes each role's service).
    EveryRole,
}

impl Concerns {
    /// Whether the check says something about one of `roles` (registry role names).
    fn any_of(self, roles: &BTreeSet<String>) -> bool {
        match self {
            Concerns::Roles(mine) => mine.iter().any(|r| roles.contains(*r)),
            Concerns::EveryRole => !roles.is_empty(),
        }
    }
}

/// [`stack_checks`], each with the roles whose health it proves. Prometheus' targets
/// include every role (node_exporter runs everywhere, and it scrapes the app, Loki and
/// Grafana), so that check speaks for all of them.
fn role_checks(stack: &StackEndpoints) -> Vec<(Concerns, Check)> {
    let url = |role: &str| {
        stack
            .urls
            .get(role)
            .map(|u| u.trim_end_matches('/').to_string())
    };
    let exposed = |role: &str| stack.exposed.get(role).copied().unwrap_or(false);
    let mut checks: Vec<(Concerns, Check)> = Vec::new();
    if let Some(app) = url("app").filter(|_| exposed("app")) {
        checks.push((
            Concerns::Roles(&["app"]),
            http("app /health", format!("{app}/health")),
        ));
    }
    if let Some(prometheus) = url("prometheus").filter(|_| exposed("prometheus")) {
        checks.push((
            Concerns::Roles(&["prometheus"]),
            http("prometheus /-/ready", format!("{prometheus}/-/ready")),
        ));
        checks.push((
            Concerns::EveryRole,
            Check::PrometheusTargets {
                name: "prometheus targets up".into(),
                api: PrometheusApi::Direct(prometheus),
            },
        ));
    } else if let (Some(grafana), Some(auth)) = (url("grafana"), &stack.grafana_auth) {
        checks.push((
            Concerns::EveryRole,
            Check::PrometheusTargets {
                name: "prometheus targets up (via grafana)".into(),
                api: PrometheusApi::ViaGrafana {
                    grafana,
                    auth: auth.clone(),
                },
            },
        ));
    }
    if let Some(loki) = url("loki").filter(|_| exposed("loki")) {
        checks.push((
            Concerns::Roles(&["loki"]),
            http("loki /ready", format!("{loki}/ready")),
        ));
    }
    if let Some(grafana) = url("grafana") {
        checks.push((
            Concerns::Roles(&["grafana"]),
            http("grafana /api/health", format!("{grafana}/api/health")),
        ));
        if let Some(auth) = &stack.grafana_auth {
            checks.push((
                Concerns::Roles(&["grafana", "prometheus", "loki"]),
                Check::GrafanaDatasources {
                    name: "grafana datasources".into(),
                    grafana,
                    auth: auth.clone(),
                },
            ));
        }
    }
    checks
}

/// The check that an app fleet finished rolling onto `ami`, through whichever way Prometheus
/// is reached ([`stack_checks`]'s choice); `None` when Prometheus cannot be reached at all.
pub fn app_fleet_check(stack: &StackEndpoints, ami: &str) -> Option<Check> {
    let url = |role: &str| {
        stack
            .urls
            .get(role)
            .map(|u| u.trim_end_matches('/').to_string())
    };
    let exposed = |role: &str| stack.exposed.get(role).copied().unwrap_or(false);
    let api = match (
        url("prometheus").filter(|_| exposed("prometheus")),
        url("grafana"),
        &stack.grafana_auth,
    ) {
        (Some(prometheus), _, _) => PrometheusApi::Direct(prometheus),
        (None, Some(grafana), Some(auth)) => PrometheusApi::ViaGrafana {
            grafana,
            auth: auth.clone(),
        },
        _ => return None,
    };
    Some(Check::AppFleetOnAmi {
        name: format!("app fleet on {ami}"),
        api,
        ami: ami.to_string(),
    })
}

fn http(name: &str, url: String) -> Check {
    Check::Http {
        name: name.into(),
        url,
    }
}

/// Runs checks over HTTP with a per-request timeout.
pub struct Checker {
    http: reqwest::blocking::Client,
    /// For 127.0.0.1 (a Session Manager tunnel, a local stack): never through a proxy.
    loopback: reqwest::blocking::Client,
}

impl Checker {
    pub fn new(request_timeout: Duration) -> anyhow::Result<Checker> {
        let client = |direct: bool| {
            let builder = reqwest::blocking::Client::builder()
                .timeout(request_timeout)
                .connect_timeout(request_timeout);
            let builder = if direct { builder.no_proxy() } else { builder };
            builder.build().context("cannot build an HTTP client")
        };
        Ok(Checker {
            http: client(false)?,
            loopback: client(true)?,
        })
    }

    /// Runs every check once.
    pub fn run_all(&self, checks: &[Check]) -> Vec<Outcome> {
        checks
            .iter()
            .map(|check| {
                let result = self.run(check);
                Outcome {
                    name: check.name().to_string(),
                    healthy: result.is_ok(),
                    detail: result.unwrap_or_else(|reason| reason),
                }
            })
            .collect()
    }

    /// Runs one check: `Ok(detail)` when it holds, `Err(reason)` otherwise.
    pub fn run(&self, check: &Check) -> Result<String, String> {
        match check {
            Check::Http { url, .. } => self.get(url, None).map(|_| "ok".to_string()),
            Check::PrometheusTargets { api, .. } => targets_verdict(&self.active_targets(api)?),
            Check::AppFleetOnAmi { api, ami, .. } => {
                app_fleet_verdict(&self.active_targets(api)?, ami)
            }
            Check::GrafanaDatasources { grafana, auth, .. } => {
                let mut healthy = Vec::new();
                for kind in ["prometheus", "loki"] {
                    let datasource = self.datasource(grafana, auth, kind)?;
                    let body = self
                        .get_json(
                            &format!("{grafana}/api/datasources/uid/{}/health", datasource.uid),
                            Some(auth),
                        )
                        .map_err(|e| format!("{kind} datasource `{}`: {e}", datasource.name))?;
                    datasource_verdict(kind, &datasource.name, &body)?;
                    healthy.push(datasource.name);
                }
                Ok(format!("{} answer", healthy.join(" and ")))
            }
        }
    }

    /// Prometheus' `/api/v1/targets?state=active` answer.
    fn active_targets(&self, api: &PrometheusApi) -> Result<Value, String> {
        match api {
            PrometheusApi::Direct(base) => {
                self.get_json(&format!("{base}/api/v1/targets?state=active"), None)
            }
            PrometheusApi::ViaGrafana { grafana, auth } => {
                let uid = self.datasource(grafana, auth, "prometheus")?.uid;
                self.get_json(
                    &format!(
                        "{grafana}/api/datasources/proxy/uid/{uid}/api/v1/targets?state=active"
                    ),
                    Some(auth),
                )
            }
        }
    }

    fn datasource(
        &self,
        grafana: &str,
        auth: &BasicAuth,
        kind: &str,
    ) -> Result<Datasource, String> {
        let list = self.get_json(&format!("{grafana}/api/datasources"), Some(auth))?;
        find_datasource(&list, kind)
    }

    fn get(&self, url: &str, auth: Option<&BasicAuth>) -> Result<String, String> {
        let client = if url.starts_with("http://127.0.0.1") {
            &self.loopback
        } else {
            &self.http
        };
        let mut request = client.get(url);
        if let Some(auth) = auth {
            request = request.basic_auth(&auth.user, Some(&auth.password));
        }
        let response = request
            .send()
            .map_err(|e| describe_request_error(url, &e))?;
        let status = response.status();
        let body = response.text().unwrap_or_default();
        if status.is_success() {
            Ok(body)
        } else {
            let excerpt: String = body.trim().chars().take(120).collect();
            Err(format!("{url} answered {status}: {excerpt}"))
        }
    }

    fn get_json(&self, url: &str, auth: Option<&BasicAuth>) -> Result<Value, String> {
        let body = self.get(url, auth)?;
        serde_json::from_str(&body).map_err(|e| format!("{url} did not answer JSON: {e}"))
    }
}

/// A short reason without reqwest's nested error chain noise.
pub fn describe_request_error(url: &str, error: &reqwest::Error) -> String {
    let reason = if error.is_timeout() {
        "timed out".to_string()
    } else if error.is_connect() {
        "connection refused or unreachable".to_string()
    } else {
        error.to_string()
    };
    format!("{url}: {reason}")
}

struct Datasource {
    uid: String,
    name: String,
}

fn find_datasource(list: &Value, kind: &str) -> Result<Datasource, String> {
    list.as_array()
        .into_iter()
        .flatten()
        .find(|ds| ds["type"].as_str() == Some(kind))
        .and_then(|ds| {
            Some(Datasource {
                uid: ds["uid"].as_str()?.to_string(),
                name: ds["name"].as_str().unwrap_or(kind).to_string(),
            })
        })
        .ok_or_else(|| format!("grafana has no {kind} datasource provisioned"))
}

/// Grafana answers `{"status": "OK", "message": ...}` for a working datasource.
pub fn datasource_verdict(kind: &str, name: &str, body: &Value) -> Result<(), String> {
    match body["status"].as_str() {
        Some("OK") => Ok(()),
        status => Err(format!(
            "{kind} datasource `{name}` is {}: {}",
            status.unwrap_or("unknown"),
            body["message"].as_str().unwrap_or("no message")
        )),
    }
}

/// Verdict over Prometheus' `/api/v1/targets` answer: every active target must be up.
pub fn targets_verdict(body: &Value) -> Result<String, String> {
    let targets = body["data"]["activeTargets"]
        .as_array()
        .ok_or_else(|| "prometheus answered without data.activeTargets".to_string())?;
    if targets.is_empty() {
        return Err("prometheus has no active scrape targets yet".into());
    }
    let down: Vec<String> = targets
        .iter()
        .filter(|t| t["health"].as_str() != Some("up"))
        .map(|t| {
            let job = t["labels"]["job"].as_str().unwrap_or("?");
            let instance = t["labels"]["instance"].as_str().unwrap_or("?");
            let health = t["health"].as_str().unwrap_or("unknown");
            match t["lastError"].as_str().filter(|e| !e.is_empty()) {
                Some(error) => format!("{job} {instance} {health} ({error})"),
                None => format!("{job} {instance} {health}"),
            }
        })
        .collect();
    if down.is_empty() {
        Ok(format!("{} targets up", targets.len()))
    } else {
        Err(format!(
            "{} of {} targets not up: {}",
            down.len(),
            targets.len(),
            down.join(", ")
        ))
    }
}

/// Verdict over Prometheus' `/api/v1/targets` answer for an app fleet rolling onto `ami`:
/// at least one `demo-app` target, each labelled `ami` = `ami` (EC2 discovery's
/// `__meta_ec2_ami`) and up. While the group's instance refresh runs, old instances are still
/// discovered and the verdict names them.
pub fn app_fleet_verdict(body: &Value, ami: &str) -> Result<String, String> {
    let targets = body["data"]["activeTargets"]
        .as_array()
        .ok_or_else(|| "prometheus answered without data.activeTargets".to_string())?;
    let app: Vec<&Value> = targets
        .iter()
        .filter(|t| t["labels"]["job"].as_str() == Some("demo-app"))
        .collect();
    if app.is_empty() {
        return Err("prometheus has discovered no app instance yet".into());
    }
    let describe = |t: &Value| {
        let instance = t["labels"]["instance_id"]
            .as_str()
            .or_else(|| t["labels"]["instance"].as_str())
            .unwrap_or("?");
        let on = t["labels"]["ami"].as_str().unwrap_or("no ami label");
        format!(
            "{instance} ({on}, {})",
            t["health"].as_str().unwrap_or("unknown")
        )
    };
    let waiting: Vec<String> = app
        .iter()
        .filter(|t| t["labels"]["ami"].as_str() != Some(ami) || t["health"].as_str() != Some("up"))
        .map(|t| describe(t))
        .collect();
    if waiting.is_empty() {
        Ok(format!("{} app instances up on {ami}", app.len()))
    } else {
        Err(format!(
            "{} of {} app instances not yet up on {ami} (instance refresh in progress?): {}",
            waiting.len(),
            app.len(),
            waiting.join(", ")
        ))
    }
}

/// How long and how often to wait.
#[derive(Debug, Clone)]
pub struct WaitOptions {
    pub timeout: Duration,
    pub interval: Duration,
    /// Draw a progress bar on stderr (hidden anyway when stderr is not a terminal).
    pub progress: bool,
}

/// Polls every check until all hold at once, or fails when `timeout` is reached, naming
/// each check that still fails and why. Returns the final (all-healthy) outcomes.
pub fn wait_until_healthy(
    checker: &Checker,
    checks: &[Check],
    options: &WaitOptions,
) -> anyhow::Result<Vec<Outcome>> {
    anyhow::ensure!(!checks.is_empty(), "there is nothing to check");
    let started = Instant::now();
    let deadline = started + options.timeout;
    let bar = progress_bar(checks.len(), options.progress);
    let attempt = || {
        let outcomes = checker.run_all(checks);
        let healthy = outcomes.iter().filter(|o| o.healthy).count();
        bar.set_position(healthy as u64);
        if healthy == outcomes.len() {
            Ok(outcomes)
        } else {
            let waiting = outcomes
                .iter()
                .find(|o| !o.healthy)
                .map(|o| format!("waiting for {}: {}", o.name, o.detail))
                .unwrap_or_default();
            bar.set_message(waiting);
            Err(outcomes)
        }
    };
    let result = attempt
        .retry(
            ConstantBuilder::default()
                .with_delay(options.interval)
                .without_max_times(),
        )
        // Stop retrying once the next attempt would start after the deadline.
        .when(|_| Instant::now() + options.interval < deadline)
        .call();
    bar.finish_and_clear();
    result.map_err(|outcomes| {
        let failing: Vec<String> = outcomes
            .iter()
            .filter(|o| !o.healthy)
            .map(|o| format!("{}: {}", o.name, o.detail))
            .collect();
        anyhow::anyhow!(
            "the stack is not healthy after {:.0?}: {}",
            started.elapsed(),
            failing.join("; ")
        )
    })
}

fn progress_bar(len: usize, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed}] {pos}/{len} checks healthy  {wide_msg}")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(exposed: &[&str], auth: bool) -> StackEndpoints {
        let registry = crate::roles::Registry::load_default().unwrap();
        let roles = registry.names();
        StackEndpoints {
            urls: roles
                .iter()
                .map(|r| (r.to_string(), format!("http://{r}.example:1/")))
                .collect(),
            exposed: roles
                .iter()
                .map(|r| (r.to_string(), *r == "grafana" || exposed.contains(r)))
                .collect(),
            grafana_auth: auth.then(|| BasicAuth {
                user: "admin".into(),
                password: "secret".into(),
            }),
        }
    }

    fn names(checks: &[Check]) -> Vec<&str> {
        checks.iter().map(Check::name).collect()
    }

    #[test]
    fn everything_exposed_is_checked_directly() {
        let checks = stack_checks(&endpoints(&["app", "prometheus", "loki"], true));
        assert_eq!(
            names(&checks),
            [
                "app /health",
                "prometheus /-/ready",
                "prometheus targets up",
                "loki /ready",
                "grafana /api/health",
                "grafana datasources"
            ]
        );
        let Check::Http { url, .. } = &checks[0] else {
            panic!("app check is not HTTP")
        };
        assert_eq!(url, "http://app.example:1/health");
    }

    #[test]
    fn hidden_services_are_checked_through_grafana() {
        let checks = stack_checks(&endpoints(&[], true));
        assert_eq!(
            names(&checks),
            [
                "prometheus targets up (via grafana)",
                "grafana /api/health",
                "grafana datasources"
            ]
        );
    }

    #[test]
    fn without_the_password_only_grafana_health_remains() {
        let checks = stack_checks(&endpoints(&[], false));
        assert_eq!(names(&checks), ["grafana /api/health"]);
    }

    #[test]
    fn a_roles_gate_keeps_the_checks_that_concern_it() {
        let stack = endpoints(&["app", "prometheus", "loki"], true);
        let only = |roles: &[&str]| {
            let roles = roles.iter().map(|r| r.to_string()).collect();
            checks_for_roles(&stack, &roles)
                .iter()
                .map(|c| c.name().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(only(&["app"]), ["app /health", "prometheus targets up"]);
        assert_eq!(
            only(&["loki"]),
            [
                "prometheus targets up",
                "loki /ready",
                "grafana datasources"
            ]
        );
        assert_eq!(only(&["app", "prometheus", "loki", "grafana"]).len(), 6);
    }

    #[test]
    fn basic_auth_debug_hides_the_password() {
        let auth = BasicAuth {
            user: "admin".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{auth:?}").contains("hunter2"));
    }

    #[test]
    fn datasource_verdict_reports_grafana_message() {
        let body = serde_json::json!({"status": "ERROR", "message": "connection refused"});
        let error = datasource_verdict("loki", "Loki", &body).unwrap_err();
        assert!(error.contains("connection refused"), "{error}");
        assert!(datasource_verdict("loki", "Loki", &serde_json::json!({"status": "OK"})).is_ok());
    }

    fn target(job: &str, instance: &str, ami: &str, health: &str) -> Value {
        serde_json::json!({
            "labels": {"job": job, "instance_id": instance, "ami": ami},
            "health": health,
        })
    }

    #[test]
    fn the_app_fleet_is_rolled_out_when_every_app_target_is_up_on_the_new_ami() {
        let answer = |targets: Vec<Value>| serde_json::json!({"data": {"activeTargets": targets}});
        let done = answer(vec![
            target("demo-app", "i-1", "ami-new", "up"),
            target("demo-app", "i-2", "ami-new", "up"),
            target("node", "i-9", "ami-old", "up"),
        ]);
        assert_eq!(
            app_fleet_verdict(&done, "ami-new").unwrap(),
            "2 app instances up on ami-new"
        );
        let refreshing = answer(vec![
            target("demo-app", "i-1", "ami-new", "up"),
            target("demo-app", "i-2", "ami-old", "up"),
        ]);
        let error = app_fleet_verdict(&refreshing, "ami-new").unwrap_err();
        assert!(
            error.contains("1 of 2") && error.contains("i-2 (ami-old, up)"),
            "{error}"
        );
        let starting = answer(vec![target("demo-app", "i-3", "ami-new", "unknown")]);
        assert!(app_fleet_verdict(&starting, "ami-new").is_err());
        let none = answer(vec![target("node", "i-9", "ami-new", "up")]);
        assert!(app_fleet_verdict(&none, "ami-new")
            .unwrap_err()
            .contains("no app instance"));
    }

    #[test]
    fn the_fleet_check_reaches_prometheus_like_the_other_checks_or_not_at_all() {
        let mut stack = endpoints(&[], false);
        assert!(app_fleet_check(&stack, "ami-1").is_none());
        stack.grafana_auth = Some(BasicAuth {
            user: "admin".into(),
            password: "x".into(),
        });
        assert!(matches!(
            app_fleet_check(&stack, "ami-1"),
            Some(Check::AppFleetOnAmi {
                api: PrometheusApi::ViaGrafana { .. },
                ..
            })
        ));
        let exposed = endpoints(&["prometheus"], true);
        assert!(matches!(
            app_fleet_check(&exposed, "ami-1"),
            Some(Check::AppFleetOnAmi {
                api: PrometheusApi::Direct(_),
                ..
            })
        ));
    }
}
