//! Prometheus: every expected scrape target up, the app's request counter moved after the
//! test request, and every rule loaded and evaluating without errors.

use std::time::Instant;

use serde_json::Value;

use super::app::TestRequest;
use crate::deploy::health::targets_verdict;
use crate::verify::api::Api;
use crate::verify::expect::{APP_JOB, APP_REQUEST_COUNTER};
use crate::verify::poll::{self, NotYet};
use crate::verify::report::Row;
use crate::verify::target::Reach;

pub const TARGETS: &str = "scrape targets up";
pub const COUNTER: &str = "request counter moved";
pub const RULES: &str = "rules loaded and evaluating";
pub const ALERTMANAGER: &str = "alertmanager ready, seen by prometheus";
const COMPONENT: &str = "prometheus";

/// The app's requests so far, summed over its series; `None` before the first scrape.
pub fn request_count(prometheus: &Api) -> Result<Option<f64>, String> {
    let query = format!("sum({APP_REQUEST_COUNTER}{{job=\"{APP_JOB}\"}})");
    let data = prometheus.data("/api/v1/query", &[("query", &query)])?;
    Ok(data["result"]
        .as_array()
        .and_then(|result| result.first())
        .and_then(|sample| sample["value"][1].as_str())
        .and_then(|value| value.parse().ok()))
}

/// The counter is above `before` (read before the test request): Prometheus scraped the
/// app after the request, and the app counted it.
pub fn counter_moved(
    prometheus: &Reach,
    before: Option<f64>,
    request: Option<&TestRequest>,
    deadline: Instant,
) -> Row {
    let prometheus = match prometheus {
        Ok(api) => api,
        Err(why) => return Row::not_checked(COUNTER, COMPONENT, why.clone()),
    };
    if request.is_none() {
        let why = "no test request was answered by the app, so nothing should have moved";
        return Row::not_checked(COUNTER, COMPONENT, why);
    }
    let baseline = before.unwrap_or(0.0);
    let result = poll::until(deadline, poll::INTERVAL, || {
        let now = request_count(prometheus).map_err(NotYet::Pending)?;
        match now {
            Some(now) if now > baseline => Ok(now),
            now => Err(NotYet::Pending(format!(
                "{APP_REQUEST_COUNTER}{{job=\"{APP_JOB}\"}} did not move after the test request \
                 (before {}, now {}); is the app scraped?",
                shown(before),
                shown(now)
            ))),
        }
    });
    Row::from_result(
        COUNTER,
        COMPONENT,
        result.map(|now| {
            format!(
                "{APP_REQUEST_COUNTER} went from {} to {now} after the test request",
                shown(before)
            )
        }),
    )
}

fn shown(value: Option<f64>) -> String {
    value.map_or("no series".to_string(), |v| v.to_string())
}

/// Every expected job has targets and every active target is up. Targets not scraped yet
/// (`unknown`) are waited for until the deadline.
pub fn targets_up(
    prometheus: &Reach,
    expected_jobs: &Result<Vec<String>, String>,
    deadline: Instant,
) -> Row {
    let prometheus = match prometheus {
        Ok(api) => api,
        Err(why) => return Row::not_checked(TARGETS, COMPONENT, why.clone()),
    };
    let result = poll::until(deadline, poll::INTERVAL, || {
        let data = prometheus
            .data("/api/v1/targets", &[("state", "active")])
            .map_err(NotYet::Pending)?;
        targets_attempt(&data, expected_jobs)
    });
    Row::from_result(TARGETS, COMPONENT, result)
}

/// One look at `/api/v1/targets`' data.
pub fn targets_attempt(
    data: &Value,
    expected_jobs: &Result<Vec<String>, String>,
) -> Result<String, NotYet> {
    let targets = data["activeTargets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let unknown: Vec<String> = targets
        .iter()
        .filter(|t| t["health"] == "unknown")
        .map(|t| t["labels"]["job"].as_str().unwrap_or("?").to_string())
        .collect();
    if !unknown.is_empty() {
        return Err(NotYet::Pending(format!(
            "not scraped yet: {}",
            unknown.join(", ")
        )));
    }
    // The same verdict as `deploy`'s health gate.
    let body = serde_json::json!({ "data": data });
    let all_up = targets_verdict(&body).map_err(NotYet::Failed)?;
    let jobs = match expected_jobs {
        Ok(jobs) => jobs,
        Err(why) => return Ok(format!("{all_up} (expected jobs unknown: {why})")),
    };
    let missing: Vec<&str> = jobs
        .iter()
        .filter(|job| !targets.iter().any(|t| t["labels"]["job"] == job.as_str()))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(NotYet::Failed(format!(
            "no scrape target for job {} (expected: {})",
            missing.join(", "),
            jobs.join(", ")
        )));
    }
    Ok(format!("{all_up}; jobs {}", jobs.join(", ")))
}

/// The last configuration (and rule file) reload succeeded, there are rule groups, and
/// every rule evaluates without error. Rules not evaluated yet are waited for.
pub fn rules_healthy(prometheus: &Reach, deadline: Instant) -> Row {
    let prometheus = match prometheus {
        Ok(api) => api,
        Err(why) => return Row::not_checked(RULES, COMPONENT, why.clone()),
    };
    let result = poll::until(deadline, poll::INTERVAL, || {
        let runtime = prometheus
            .data("/api/v1/status/runtimeinfo", &[])
            .map_err(NotYet::Pending)?;
        let rules = prometheus
            .data("/api/v1/rules", &[])
            .map_err(NotYet::Pending)?;
        rules_attempt(&runtime, &rules)
    });
    Row::from_result(RULES, COMPONENT, result)
}

/// One look at `/api/v1/status/runtimeinfo`'s and `/api/v1/rules`' data.
pub fn rules_attempt(runtime: &Value, rules: &Value) -> Result<String, NotYet> {
    if runtime["reloadConfigSuccess"] == false {
        return Err(NotYet::Failed(
            "Prometheus could not load its configuration or a rule file at the last reload \
             (it keeps the previous rules); its log says which file and why"
                .into(),
        ));
    }
    let groups = rules["groups"].as_array().cloned().unwrap_or_default();
    if groups.is_empty() {
        return Err(NotYet::Failed(
            "Prometheus has no rule groups loaded".into(),
        ));
    }
    let mut failing = Vec::new();
    let mut pending = Vec::new();
    let mut count = 0;
    for group in &groups {
        let group_name = group["name"].as_str().unwrap_or("?");
        for rule in group["rules"].as_array().into_iter().flatten() {
            count += 1;
            let name = format!("{group_name}/{}", rule["name"].as_str().unwrap_or("?"));
            match rule["health"].as_str() {
                Some("ok") => {}
                Some("unknown") | None => pending.push(name),
                Some(health) => {
                    let error = rule["lastError"].as_str().unwrap_or("no error given");
                    failing.push(format!("{name} is {health}: {error}"));
                }
            }
        }
    }
    if !failing.is_empty() {
        return Err(NotYet::Failed(failing.join("; ")));
    }
    if !pending.is_empty() {
        return Err(NotYet::Pending(format!(
            "not evaluated yet: {}",
            pending.join(", ")
        )));
    }
    Ok(format!(
        "{} rule groups, {count} rules, all evaluating without errors",
        groups.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn targets_wait_for_unknown_and_fail_on_down_or_a_missing_job() {
        let jobs = Ok(vec!["demo-app".to_string(), "prometheus".to_string()]);
        let target = |job: &str, health: &str| json!({"labels": {"job": job, "instance": "x"}, "health": health, "lastError": ""});
        let up = json!({"activeTargets": [target("demo-app", "up"), target("prometheus", "up")]});
        assert!(targets_attempt(&up, &jobs).is_ok());
        let unknown =
            json!({"activeTargets": [target("demo-app", "unknown"), target("prometheus", "up")]});
        assert!(matches!(
            targets_attempt(&unknown, &jobs),
            Err(NotYet::Pending(_))
        ));
        let down =
            json!({"activeTargets": [target("demo-app", "down"), target("prometheus", "up")]});
        assert!(
            matches!(targets_attempt(&down, &jobs), Err(NotYet::Failed(e)) if e.contains("demo-app"))
        );
        let missing = json!({"activeTargets": [target("prometheus", "up")]});
        assert!(
            matches!(targets_attempt(&missing, &jobs), Err(NotYet::Failed(e)) if e.contains("job demo-app"))
        );
    }

    #[test]
    fn rules_fail_on_an_error_or_a_failed_reload_and_wait_for_unevaluated_ones() {
        let ok_runtime = json!({"reloadConfigSuccess": true});
        let rules = |health: &str, error: &str| {
            json!({"groups": [{"name": "obstack", "file": "obstack.yml", "rules": [
                {"name": "AppDown", "health": health, "lastError": error, "type": "alerting"}
            ]}]})
        };
        assert!(rules_attempt(&ok_runtime, &rules("ok", "")).is_ok());
        assert!(matches!(
            rules_attempt(&ok_runtime, &rules("unknown", "")),
            Err(NotYet::Pending(_))
        ));
        let Err(NotYet::Failed(error)) = rules_attempt(&ok_runtime, &rules("err", "many-to-many"))
        else {
            panic!("an erroring rule passed")
        };
        assert!(
            error.contains("obstack/AppDown is err: many-to-many"),
            "{error}"
        );
        assert!(matches!(
            rules_attempt(&json!({"reloadConfigSuccess": false}), &rules("ok", "")),
            Err(NotYet::Failed(_))
        ));
        assert!(matches!(
            rules_attempt(&ok_runtime, &json!({"groups": []})),
            Err(NotYet::Failed(_))
        ));
    }
}

/// Alerts can leave Prometheus: it lists an active Alertmanager (`/api/v1/alertmanagers`),
/// and the Alertmanager it scrapes answers (its `alertmanager` job is up, checked with the
/// other targets). Not checked when the stack runs no Alertmanager.
pub fn alertmanager_seen(
    prometheus: &Reach,
    expected_jobs: &Result<Vec<String>, String>,
    deadline: Instant,
) -> Row {
    let prometheus = match prometheus {
        Ok(api) => api,
        Err(why) => return Row::not_checked(ALERTMANAGER, COMPONENT, why.clone()),
    };
    let jobs = match expected_jobs {
        Ok(jobs) => jobs,
        Err(why) => return Row::not_checked(ALERTMANAGER, "alertmanager", why.clone()),
    };
    if !jobs.iter().any(|job| job == "alertmanager") {
        let why = "this stack runs no Alertmanager (no alertmanager job in prometheus.yml)";
        return Row::not_checked(ALERTMANAGER, "alertmanager", why);
    }
    let result = poll::until(deadline, poll::INTERVAL, || {
        let data = prometheus
            .data("/api/v1/alertmanagers", &[])
            .map_err(NotYet::Pending)?;
        active_alertmanagers(&data).map_err(NotYet::Pending)
    });
    Row::from_result(ALERTMANAGER, "alertmanager", result)
}

/// The verdict on `/api/v1/alertmanagers`' data: the active Alertmanagers' URLs, or why none.
pub fn active_alertmanagers(data: &Value) -> Result<String, String> {
    let urls: Vec<&str> = data["activeAlertmanagers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|am| am["url"].as_str())
        .collect();
    if urls.is_empty() {
        let dropped = data["droppedAlertmanagers"].as_array().map_or(0, Vec::len);
        return Err(format!(
            "prometheus has no active Alertmanager ({dropped} dropped): alerts go nowhere; check the alerting: block of prometheus.yml"
        ));
    }
    Ok(format!("prometheus sends alerts to {}", urls.join(", ")))
}

#[cfg(test)]
mod alertmanager_tests {
    use super::*;

    #[test]
    fn an_active_alertmanager_passes_and_none_fails() {
        let seen = serde_json::json!({
            "activeAlertmanagers": [{"url": "http://10.0.1.5:9093/api/v2/alerts"}],
            "droppedAlertmanagers": []
        });
        assert_eq!(
            active_alertmanagers(&seen).unwrap(),
            "prometheus sends alerts to http://10.0.1.5:9093/api/v2/alerts"
        );
        let none =
            serde_json::json!({"activeAlertmanagers": [], "droppedAlertmanagers": [{"url": "x"}]});
        assert!(active_alertmanagers(&none)
            .unwrap_err()
            .contains("1 dropped"));
        assert!(active_alertmanagers(&serde_json::json!({})).is_err());
    }
}
