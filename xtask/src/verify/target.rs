//! Which stack `verify` checks and how each component is reached: a local stack from
//! `cargo xtask up --detach` (every component on loopback, as `ps` finds it), or the one
//! Terraform deployed, as `xtask::tunnel::reach` reaches it (each role directly where it is
//! published and answers, else through a Session Manager tunnel on 127.0.0.1; Grafana with
//! the admin password from SSM; Prometheus and Loki through Grafana's datasource proxy when
//! neither way reaches them).

use std::collections::BTreeSet;

use anyhow::Context;

use super::api::Api;
use super::expect::Expected;
use crate::deploy::health::{BasicAuth, StackEndpoints};
use crate::roles::Registry;
use crate::up::layout::Layout;
use crate::up::state::StackState;

/// Grafana's admin user, locally and on AWS.
const GRAFANA_ADMIN_USER: &str = "admin";
/// Where a local stack keeps Grafana's admin password (images/grafana/role.toml `[[secrets]]`).
const LOCAL_GRAFANA_PASSWORD: &str = "/etc/grafana/secrets/admin_password";

/// A component's API, or why it cannot be checked.
pub type Reach = Result<Api, String>;

pub struct Target {
    /// `local` or `deployed`.
    pub name: &'static str,
    pub app: Reach,
    pub prometheus: Reach,
    pub loki: Reach,
    pub grafana: Reach,
    pub expected: Expected,
}

/// True when a local stack's state file exists: `verify` then checks it by default.
pub fn local_stack_exists() -> anyhow::Result<bool> {
    Ok(StackState::load(&Layout::from_env().state_file())?.is_some())
}

impl Target {
    /// The local stack `cargo xtask up --detach` started.
    pub fn local(registry: &Registry) -> anyhow::Result<Target> {
        let layout = Layout::from_env();
        let state = StackState::load(&layout.state_file())?.with_context(|| {
            format!(
                "no local stack runs (no {}); start one with `cargo xtask up --detach`, \
                 or pass --deployed",
                layout.state_file().display()
            )
        })?;
        let url = |name: &str| {
            state
                .components
                .iter()
                .find(|c| c.name == name)
                .map(|c| &c.url)
        };
        let absent = |name: &str| -> String {
            let reason = state
                .unavailable
                .iter()
                .find(|u| u.name == name)
                .map_or("not started by `cargo xtask up`".to_string(), |u| {
                    u.reason.clone()
                });
            format!("{name} does not run in the local stack ({reason})")
        };
        let reach = |name: &str, auth: Option<BasicAuth>| -> anyhow::Result<Reach> {
            match url(name) {
                Some(url) => Ok(Ok(Api::new(url, auth)?)),
                None => Ok(Err(absent(name))),
            }
        };
        let grafana_auth = if url("grafana").is_some() {
            let path = layout.in_root(LOCAL_GRAFANA_PASSWORD);
            let password = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "cannot read Grafana's admin password from {}; restart the stack with \
                     `cargo xtask down && cargo xtask up --detach`",
                    path.display()
                )
            })?;
            Some(BasicAuth {
                user: GRAFANA_ADMIN_USER.into(),
                password: password.trim().to_string(),
            })
        } else {
            None
        };
        let running: BTreeSet<&str> = state.components.iter().map(|c| c.name.as_str()).collect();
        Ok(Target {
            name: "local",
            app: reach("app", None)?,
            prometheus: reach("prometheus", None)?,
            loki: reach("loki", None)?,
            grafana: reach("grafana", grafana_auth)?,
            expected: Expected::for_services(registry, &running),
        })
    }

    /// The stack Terraform deployed, from its outputs.
    pub fn deployed(registry: &Registry, stack: &StackEndpoints) -> anyhow::Result<Target> {
        let expected = Expected::for_services(registry, &registry.service_names());
        let exposed = |role: &str| -> Option<&String> {
            stack
                .urls
                .get(role)
                .filter(|_| stack.exposed.get(role).copied().unwrap_or(false))
        };
        let grafana: Reach = match (stack.urls.get("grafana"), &stack.grafana_auth) {
            (Some(url), Some(auth)) => Ok(Api::new(url, Some(auth.clone()))?),
            (None, _) => Err("Terraform's outputs have no Grafana URL".into()),
            (Some(_), None) => Err(
                "Grafana's admin password could not be read from SSM (see the warning above)"
                    .into(),
            ),
        };
        // Prometheus and Loki directly when exposed, else through Grafana's proxy.
        let behind_grafana = |role: &str| -> anyhow::Result<Reach> {
            if let Some(url) = exposed(role) {
                return Ok(Ok(Api::new(url, None)?));
            }
            Ok(match (&grafana, expected.datasource(role)) {
                (Ok(grafana), Some(datasource)) => Ok(Api::via_grafana(grafana, &datasource.uid)),
                (Err(why), _) => Err(format!(
                    "{role} is not exposed and Grafana's proxy cannot be used: {why}"
                )),
                (Ok(_), None) => Err(format!("Grafana provisions no {role} datasource")),
            })
        };
        let app = match exposed("app") {
            Some(url) => Ok(Api::new(url, None)?),
            None => Err(
                "the app is not exposed to this network (Terraform variable expose_app); \
                 its scrape target is checked through Prometheus"
                    .to_string(),
            ),
        };
        Ok(Target {
            name: "deployed",
            app,
            prometheus: behind_grafana("prometheus")?,
            loki: behind_grafana("loki")?,
            grafana,
            expected,
        })
    }
}
