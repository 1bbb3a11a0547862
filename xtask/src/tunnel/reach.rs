//! How a command reaches a deployed stack's UIs: directly where Terraform published them and
//! a probe connects, else through a Session Manager tunnel to the role's instance (the
//! default of no open port, or a CI runner outside `allowed_web_cidrs`); `--tunnel` skips
//! the probe. The result is the same [`StackEndpoints`] the health checks and `verify` take,
//! with each tunnelled role's URL on 127.0.0.1, and the tunnels, closed when it is dropped.
//!
//! Only roles that run as one instance get a tunnel: the app fleet's instances come and go
//! during an instance refresh, so the app is checked through its load balancer when that is
//! published, and otherwise through Prometheus' targets (which include every app instance).

use std::collections::BTreeMap;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::Context;
use backon::{BlockingRetryable, ConstantBuilder};

use super::{Forward, Tools, Tunnel, TunnelError};
use crate::deploy::health::StackEndpoints;
use crate::roles::Registry;

/// How long a direct probe may take to connect.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one attempt to open a tunnel may take (StartSession, then the plugin listens).
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between attempts while an instance's SSM agent is not yet online (a new instance
/// registers a minute or two after boot).
const RETRY_DELAY: Duration = Duration::from_secs(10);

/// Whether to try the direct route first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A role Terraform published is reached directly when a probe connects; everything else
    /// through a tunnel.
    Auto,
    /// Every role that runs as one instance through a tunnel (`--tunnel`).
    Tunnel,
}

impl Route {
    /// `--tunnel` forces tunnels.
    pub fn from_flag(tunnel: bool) -> Route {
        if tunnel {
            Route::Tunnel
        } else {
            Route::Auto
        }
    }
}

/// A deployed stack as the caller can reach it. The tunnels close when it is dropped.
pub struct Reached {
    /// Each tunnelled role's URL is its tunnel's (and counts as exposed).
    pub endpoints: StackEndpoints,
    /// role → how it is reached: its URL, or `tunnel to i-... (127.0.0.1:PORT)`.
    pub routes: BTreeMap<String, String>,
    tunnels: Vec<Tunnel>,
}

impl Reached {
    /// The open tunnels.
    pub fn tunnels(&self) -> &[Tunnel] {
        &self.tunnels
    }

    /// One line naming every tunnel whose session has ended, and why; `None` when all are
    /// open. A failed health wait says so: its checks failed because the tunnel went.
    pub fn ended_tunnels(&mut self) -> Option<String> {
        let ended: Vec<String> = self
            .tunnels
            .iter_mut()
            .filter_map(|t| {
                let reason = t.ended()?;
                Some(format!(
                    "the tunnel to {} ended: {reason}",
                    t.forward().describe()
                ))
            })
            .collect();
        (!ended.is_empty()).then(|| ended.join("; "))
    }
}

/// Reaches `stack` (Terraform's URLs and exposure) in `region`: `instances` maps each role
/// that runs as one instance to its id; `tools` is called only when a tunnel is needed. In
/// [`Route::Auto`], missing tools leave the stack reached as Terraform published it (with a
/// warning); with [`Route::Tunnel`] they are an error. A tunnel whose instance is not yet
/// online is retried until `deadline`.
pub fn reach(
    registry: &Registry,
    stack: &StackEndpoints,
    instances: &BTreeMap<String, String>,
    region: &str,
    route: Route,
    tools: impl FnOnce() -> Result<Tools, TunnelError>,
    deadline: Instant,
) -> anyhow::Result<Reached> {
    let mut reached = Reached {
        endpoints: stack.clone(),
        routes: BTreeMap::new(),
        tunnels: Vec::new(),
    };
    let mut wanted = Vec::new();
    for role in registry.names() {
        let Some(instance_id) = instances.get(role) else {
            continue;
        };
        let Some(service) = registry.role(role)?.main_service() else {
            continue;
        };
        let published = stack
            .urls
            .get(role)
            .filter(|_| stack.exposed.get(role).copied().unwrap_or(false));
        if let (Route::Auto, Some(url)) = (route, published) {
            match probe(url) {
                Ok(()) => {
                    reached.routes.insert(role.to_string(), url.clone());
                    continue;
                }
                Err(why) => {
                    eprintln!("{role}: no direct route ({why}); using a Session Manager tunnel")
                }
            }
        }
        wanted.push(Forward {
            service: role.to_string(),
            instance_id: instance_id.clone(),
            remote_port: service.port,
            region: region.to_string(),
        });
    }
    if wanted.is_empty() {
        return Ok(reached);
    }
    let tools = match (tools(), route) {
        (Ok(tools), _) => tools,
        (Err(error), Route::Tunnel) => return Err(error.into()),
        (Err(error), Route::Auto) => {
            eprintln!(
                "warning: {error}; checking only what answers directly (and the rest through Grafana when it does)"
            );
            return Ok(reached);
        }
    };
    for forward in wanted {
        let tunnel = open_until(&tools, &forward, deadline)
            .with_context(|| format!("cannot reach {}", forward.service))?;
        let url = tunnel.url();
        eprintln!(
            "{}: through a Session Manager tunnel at {url}",
            forward.describe()
        );
        reached.routes.insert(
            forward.service.clone(),
            format!(
                "tunnel to {} ({})",
                forward.instance_id,
                url.trim_start_matches("http://")
            ),
        );
        reached.endpoints.urls.insert(forward.service.clone(), url);
        reached
            .endpoints
            .exposed
            .insert(forward.service.clone(), true);
        reached.tunnels.push(tunnel);
    }
    Ok(reached)
}

/// Opens a tunnel, retrying while the session fails or does not listen (the instance's agent
/// not yet online, a new instance still booting) as long as `deadline` allows.
fn open_until(tools: &Tools, forward: &Forward, deadline: Instant) -> Result<Tunnel, TunnelError> {
    let open = || Tunnel::open(tools, forward, OPEN_TIMEOUT);
    open.retry(
        ConstantBuilder::default()
            .with_delay(RETRY_DELAY)
            .without_max_times(),
    )
    .when(|error| {
        matches!(
            error,
            TunnelError::Ended { .. } | TunnelError::Timeout { .. }
        ) && Instant::now() + RETRY_DELAY < deadline
    })
    .notify(|error, delay| eprintln!("  {error}; retrying in {}s", delay.as_secs()))
    .call()
}

/// Whether something accepts a TCP connection where `url` points (its host and port, or the
/// scheme's port): a route exists. A refused connection is no route either: the security
/// group let the packet through, but nothing we could check answers there.
pub fn probe(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url} is not a URL: {e}"))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| format!("{url} has no host"))?;
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| format!("{url} has no port"))?;
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{url}: cannot resolve {host}: {e}"))?
        .collect();
    let mut last = format!("{url}: {host} has no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, PROBE_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {
                last = format!("{url}: no answer within {}s", PROBE_TIMEOUT.as_secs());
            }
            Err(error) => last = format!("{url}: {error}"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_connects_or_says_why_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(probe(&format!("http://127.0.0.1:{port}/")), Ok(()));
        drop(listener);
        let refused = probe(&format!("http://127.0.0.1:{port}")).unwrap_err();
        assert!(
            refused.starts_with(&format!("http://127.0.0.1:{port}: ")),
            "{refused}"
        );
        assert!(probe("not a url").unwrap_err().contains("not a URL"));
    }
}
