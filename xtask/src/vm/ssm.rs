//! A stand-in for the SSM Parameter Store API an instance reads its secrets from (the
//! Grafana admin password, a webhook URL): `GetParameter` in the AWS JSON 1.1 protocol, on
//! the host's loopback. It answers only requests signed with the instance profile's
//! credentials from its [`super::imds`] stand-in (the access key in the SigV4 credential
//! scope and the session token), so a guest that reached it proves its SDK took the
//! instance role's credentials from IMDS, as on EC2. Signatures themselves are not
//! verified: the secret key never leaves the two stand-ins.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::imds::Credentials;
use crate::loopback_http::{Reply, Request, Server};

struct State {
    parameters: BTreeMap<String, String>,
    credentials: Credentials,
    region: String,
    fetched: Vec<Fetch>,
}

/// One `GetParameter` call, as the stand-in judged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    pub name: String,
    /// `None` when answered; else why it was refused.
    pub refused: Option<String>,
}

pub struct Ssm {
    state: Arc<Mutex<State>>,
    server: Server,
}

impl Ssm {
    /// Serves `parameters` (name -> SecureString value) to requests signed with
    /// `credentials` for `region`.
    pub fn start(
        parameters: BTreeMap<String, String>,
        credentials: Credentials,
        region: &str,
    ) -> anyhow::Result<Ssm> {
        let state = Arc::new(Mutex::new(State {
            parameters,
            credentials,
            region: region.to_string(),
            fetched: Vec::new(),
        }));
        let shared = Arc::clone(&state);
        let server = Server::start("SSM stand-in", move |request| answer(request, &shared))?;
        Ok(Ssm { state, server })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Every `GetParameter` call so far.
    pub fn fetched(&self) -> Vec<Fetch> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fetched
            .clone()
    }
}

fn error(kind: &str, message: &str) -> Reply {
    Reply::new(
        400,
        serde_json::json!({"__type": kind, "message": message}).to_string(),
    )
    .header("Content-Type", "application/x-amz-json-1.1")
}

fn answer(request: &Request, state: &Mutex<State>) -> Reply {
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    if request.method != "POST" || request.header("x-amz-target") != Some("AmazonSSM.GetParameter")
    {
        return error(
            "UnknownOperationException",
            "the stand-in answers AmazonSSM.GetParameter only",
        );
    }
    let name = serde_json::from_slice::<serde_json::Value>(&request.body)
        .ok()
        .and_then(|body| body["Name"].as_str().map(str::to_string))
        .unwrap_or_default();
    let refused = refusal(request, &state);
    state.fetched.push(Fetch {
        name: name.clone(),
        refused: refused.clone(),
    });
    if let Some(reason) = refused {
        return error("UnrecognizedClientException", &reason);
    }
    let Some(value) = state.parameters.get(&name) else {
        return error("ParameterNotFound", &format!("no parameter {name}"));
    };
    let document = serde_json::json!({
        "Parameter": {
            "Name": name,
            "Type": "SecureString",
            "Value": value,
            "Version": 1,
            "DataType": "text",
            "ARN": format!("arn:aws:ssm:{}:123456789012:parameter{}", state.region, name),
        }
    });
    Reply::new(200, document.to_string()).header("Content-Type", "application/x-amz-json-1.1")
}

/// Why a request is not the instance role's, if it is not.
fn refusal(request: &Request, state: &State) -> Option<String> {
    let authorization = request.header("authorization").unwrap_or_default();
    // AWS4-HMAC-SHA256 Credential=AKID/20261207/us-east-1/ssm/aws4_request, SignedHeaders=...
    let scope = authorization
        .split("Credential=")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_default();
    let parts: Vec<&str> = scope.split('/').collect();
    let expected = &state.credentials;
    if parts.first() != Some(&expected.access_key_id.as_str()) {
        return Some(format!(
            "not signed with the instance profile's access key (credential scope `{scope}`)"
        ));
    }
    if parts.get(2) != Some(&state.region.as_str()) || parts.get(3) != Some(&"ssm") {
        return Some(format!(
            "credential scope `{scope}` is not ssm in {}",
            state.region
        ));
    }
    if request.header("x-amz-security-token") != Some(expected.session_token.as_str()) {
        return Some("the session token is not the instance profile's".to_string());
    }
    None
}
