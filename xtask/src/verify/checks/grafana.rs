//! Grafana: it is healthy, each provisioned datasource passes Grafana's own health check,
//! and each dashboard the image ships is there by uid.

use serde_json::Value;

use crate::deploy::health::datasource_verdict;
use crate::verify::api::Api;
use crate::verify::expect::{Dashboard, Datasource, Expected};
use crate::verify::report::Row;
use crate::verify::target::Reach;

pub const HEALTH: &str = "grafana health";
const COMPONENT: &str = "grafana";

/// Datasource types with no backend in Grafana: `/api/datasources/uid/<uid>/health` always
/// answers "Plugin unavailable" for them (grafana/grafana#83794), so they are checked
/// through the datasource proxy instead, with the path that proves the service answers.
const FRONTEND_ONLY: &[(&str, &str)] = &[("alertmanager", "/api/v2/status")];

/// `/api/health`: Grafana runs and reaches its database.
pub fn health(grafana: &Reach) -> Row {
    let grafana = match grafana {
        Ok(api) => api,
        Err(why) => return Row::not_checked(HEALTH, COMPONENT, why.clone()),
    };
    let result =
        grafana
            .json("/api/health", &[])
            .and_then(|body| match body["database"].as_str() {
                Some("ok") => Ok(format!(
                    "version {}, database ok",
                    body["version"].as_str().unwrap_or("?")
                )),
                other => Err(format!(
                    "Grafana's database is {}",
                    other.unwrap_or("not reported")
                )),
            });
    Row::from_result(HEALTH, COMPONENT, result)
}

pub fn datasource_check(datasource: &Datasource) -> String {
    format!("datasource {}", datasource.uid)
}

/// One row per provisioned datasource.
pub fn datasources(grafana: &Reach, expected: &Expected) -> Vec<Row> {
    let list = match &expected.datasources {
        Ok(list) => list,
        Err(why) => {
            let row = match grafana {
                Err(absent) => Row::not_checked("datasources", COMPONENT, absent.clone()),
                Ok(_) => Row::failed("datasources", COMPONENT, why.clone()),
            };
            return vec![row];
        }
    };
    list.iter()
        .map(|datasource| {
            let check = datasource_check(datasource);
            match grafana {
                Err(why) => Row::not_checked(&check, COMPONENT, why.clone()),
                Ok(api) => Row::from_result(&check, COMPONENT, datasource_health(api, datasource)),
            }
        })
        .collect()
}

fn datasource_health(grafana: &Api, datasource: &Datasource) -> Result<String, String> {
    if let Some((_, path)) = FRONTEND_ONLY
        .iter()
        .find(|(kind, _)| *kind == datasource.kind)
    {
        let proxy = Api::via_grafana(grafana, &datasource.uid);
        return proxy.json(path, &[]).map(|_| {
            format!(
                "{} ({}) answers through Grafana's proxy",
                datasource.name, datasource.kind
            )
        });
    }
    let path = format!("/api/datasources/uid/{}/health", datasource.uid);
    let answer = grafana.get(&path, &[], &[])?;
    if answer.status == 404 {
        return Err(format!(
            "Grafana has no datasource with uid {} ({}); did provisioning fail? See Grafana's log",
            datasource.uid,
            answer.excerpt()
        ));
    }
    let body = answer
        .json()
        .ok_or_else(|| format!("{path} answered {}", answer.excerpt()))?;
    datasource_verdict(&datasource.kind, &datasource.name, &body)?;
    Ok(format!(
        "{} ({}): {}",
        datasource.name,
        datasource.kind,
        body["message"].as_str().unwrap_or("OK")
    ))
}

pub fn dashboard_check(dashboard: &Dashboard) -> String {
    format!("dashboard {}", dashboard.uid)
}

/// One row per shipped dashboard, and the dashboards Grafana served (for the panels).
pub fn dashboards(grafana: &Reach, expected: &Expected) -> (Vec<Row>, Vec<(Dashboard, Value)>) {
    let list = match &expected.dashboards {
        Ok(list) => list,
        Err(why) => {
            return (
                vec![Row::failed("dashboards", COMPONENT, why.clone())],
                Vec::new(),
            )
        }
    };
    let mut rows = Vec::new();
    let mut served = Vec::new();
    for dashboard in list {
        let check = dashboard_check(dashboard);
        let api = match grafana {
            Ok(api) => api,
            Err(why) => {
                rows.push(Row::not_checked(&check, COMPONENT, why.clone()));
                continue;
            }
        };
        match fetch_dashboard(api, &dashboard.uid) {
            Ok(json) => {
                rows.push(Row::ok(
                    &check,
                    COMPONENT,
                    format!("\"{}\" is provisioned", dashboard.title),
                ));
                served.push((dashboard.clone(), json));
            }
            Err(reason) => rows.push(Row::failed(&check, COMPONENT, reason)),
        }
    }
    (rows, served)
}

/// `/api/dashboards/uid/<uid>`'s `dashboard`.
fn fetch_dashboard(grafana: &Api, uid: &str) -> Result<Value, String> {
    let path = format!("/api/dashboards/uid/{uid}");
    let answer = grafana.get(&path, &[], &[])?;
    if answer.status == 404 {
        return Err(format!(
            "Grafana has no dashboard with uid {uid}; did provisioning fail? See Grafana's log"
        ));
    }
    if !answer.is_success() {
        return Err(format!("{path} answered {}", answer.excerpt()));
    }
    let body = answer
        .json()
        .ok_or_else(|| format!("{path} did not answer JSON"))?;
    match &body["dashboard"] {
        Value::Object(_) => Ok(body["dashboard"].clone()),
        _ => Err(format!("{path} answered without a dashboard")),
    }
}
