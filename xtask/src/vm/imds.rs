//! A stand-in for the instance metadata service of one instance, on the host's loopback,
//! speaking IMDSv2 only (`http_tokens = "required"`, as Terraform launches the instances):
//! a session token from `PUT /latest/api/token` (with a TTL header) is required on every
//! read, and a read without one is refused with 401. It serves the instance id, the region,
//! the instance's tags (instance metadata tags enabled) and its instance profile's
//! temporary credentials, which the guest's AWS SDKs take as on EC2.
//!
//! The tags can change while the instance runs, as Terraform's `aws_ec2_tag` resources
//! change them after launch.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::loopback_http::{Reply, Request, Server};

/// Everything one instance's metadata holds.
#[derive(Debug, Clone)]
pub struct Instance {
    pub instance_id: String,
    pub region: String,
    /// The instance profile's role, e.g. `obstack-grafana`.
    pub role_name: String,
    pub tags: BTreeMap<String, String>,
}

/// The instance profile's temporary credentials, as IMDS hands them out.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
}

struct State {
    instance: Instance,
    credentials: Credentials,
    tokens: BTreeMap<String, Instant>,
    requests: Vec<String>,
}

/// The running stand-in; it stops when dropped.
pub struct Imds {
    state: Arc<Mutex<State>>,
    server: Server,
}

/// The longest session IMDS grants (six hours).
const MAX_TTL: u64 = 21_600;
/// Requests kept for [`Imds::requests`].
const KEEP_REQUESTS: usize = 1000;

impl Imds {
    pub fn start(instance: Instance) -> anyhow::Result<Imds> {
        let credentials = Credentials {
            access_key_id: format!("ASIA{}", random_hex(8).to_uppercase()),
            secret_access_key: random_hex(20),
            session_token: random_hex(32),
        };
        let state = Arc::new(Mutex::new(State {
            instance,
            credentials,
            tokens: BTreeMap::new(),
            requests: Vec::new(),
        }));
        let shared = Arc::clone(&state);
        let server = Server::start("instance metadata stand-in", move |request| {
            answer(request, &shared)
        })?;
        Ok(Imds { state, server })
    }

    /// Where the host reaches it (the guest reaches it at 169.254.169.254:80).
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn instance_id(&self) -> String {
        self.lock().instance.instance_id.clone()
    }

    pub fn tags(&self) -> BTreeMap<String, String> {
        self.lock().instance.tags.clone()
    }

    /// Adds or changes a tag, as `aws_ec2_tag` does after launch.
    pub fn set_tag(&self, key: &str, value: &str) {
        self.lock()
            .instance
            .tags
            .insert(key.to_string(), value.to_string());
    }

    pub fn remove_tag(&self, key: &str) {
        self.lock().instance.tags.remove(key);
    }

    /// The credentials its instance profile hands out (an SSM stand-in checks requests are
    /// signed with them).
    pub fn credentials(&self) -> Credentials {
        self.lock().credentials.clone()
    }

    /// Every request so far, oldest first, as `METHOD PATH` with `(token)` or `(no token)`:
    /// what the guest asked for, for assertions and failure messages.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }
}

fn answer(request: &Request, state: &Mutex<State>) -> Reply {
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    let path = request
        .path
        .split('?')
        .next()
        .unwrap_or_default()
        .to_string();
    if request.method == "PUT" && path == "/latest/api/token" {
        state.log(format!("PUT {path}"));
        let ttl = request
            .header("x-aws-ec2-metadata-token-ttl-seconds")
            .and_then(|ttl| ttl.trim().parse::<u64>().ok())
            .filter(|ttl| (1..=MAX_TTL).contains(ttl));
        let Some(ttl) = ttl else {
            return Reply::new(
                400,
                "missing or invalid X-aws-ec2-metadata-token-ttl-seconds",
            );
        };
        let token = random_hex(24);
        state
            .tokens
            .insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
        return Reply::new(200, token)
            .header("X-aws-ec2-metadata-token-ttl-seconds", ttl.to_string())
            .header("Content-Type", "text/plain");
    }
    let valid = request
        .header("x-aws-ec2-metadata-token")
        .and_then(|token| state.tokens.get(token.trim()))
        .is_some_and(|expires| *expires > Instant::now());
    state.log(format!(
        "{} {path} ({})",
        request.method,
        if valid { "token" } else { "no token" }
    ));
    if !valid {
        // IMDSv2 only: without a session token (or with an expired one) nothing is served.
        return Reply::new(401, "");
    }
    if request.method != "GET" {
        return Reply::new(405, "");
    }
    match metadata(&state, &path) {
        Some(body) => Reply::new(200, body).header("Content-Type", "text/plain"),
        None => Reply::new(404, ""),
    }
}

impl State {
    fn log(&mut self, line: String) {
        if self.requests.len() == KEEP_REQUESTS {
            self.requests.remove(0);
        }
        self.requests.push(line);
    }
}

/// The metadata at `path`, if there is any.
fn metadata(state: &State, path: &str) -> Option<String> {
    let instance = &state.instance;
    const TAGS: &str = "/latest/meta-data/tags/instance";
    // The SDKs ask the extended path first (it adds the account id) and fall back.
    const CREDENTIALS: [&str; 2] = [
        "/latest/meta-data/iam/security-credentials/",
        "/latest/meta-data/iam/security-credentials-extended/",
    ];
    match path {
        "/latest/meta-data/instance-id" => return Some(instance.instance_id.clone()),
        "/latest/meta-data/placement/region" => return Some(instance.region.clone()),
        "/latest/meta-data/placement/availability-zone" => {
            return Some(format!("{}a", instance.region))
        }
        TAGS | "/latest/meta-data/tags/instance/" => {
            return Some(instance.tags.keys().cloned().collect::<Vec<_>>().join("\n"))
        }
        _ => {}
    }
    if let Some(key) = path.strip_prefix(TAGS).and_then(|p| p.strip_prefix('/')) {
        return instance.tags.get(key).cloned();
    }
    for prefix in CREDENTIALS {
        if path == prefix {
            return Some(instance.role_name.clone());
        }
        if path.strip_prefix(prefix) == Some(instance.role_name.as_str()) {
            return Some(credentials_document(&state.credentials));
        }
    }
    None
}

/// The instance profile's credentials document, valid for six hours.
fn credentials_document(credentials: &Credentials) -> String {
    let now = SystemTime::now();
    serde_json::json!({
        "Code": "Success",
        "LastUpdated": humantime::format_rfc3339_seconds(now).to_string(),
        "Type": "AWS-HMAC",
        "AccessKeyId": credentials.access_key_id,
        "SecretAccessKey": credentials.secret_access_key,
        "Token": credentials.session_token,
        "Expiration": humantime::format_rfc3339_seconds(now + Duration::from_secs(MAX_TTL)).to_string(),
    })
    .to_string()
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut buffer);
    hex::encode(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance() -> Instance {
        Instance {
            instance_id: "i-0123456789abcdef0".into(),
            region: "eu-west-1".into(),
            role_name: "obstack-test".into(),
            tags: BTreeMap::from([
                ("obstack:role".to_string(), "loki".to_string()),
                ("Name".to_string(), "t-loki".to_string()),
            ]),
        }
    }

    #[test]
    fn reads_need_a_session_token_and_tags_follow_changes() {
        let imds = Imds::start(instance()).unwrap();
        let base = format!("http://{}", imds.addr());
        let client = reqwest::blocking::Client::new();
        let get = |path: &str, token: Option<&str>| {
            let mut request = client.get(format!("{base}{path}"));
            if let Some(token) = token {
                request = request.header("X-aws-ec2-metadata-token", token);
            }
            let response = request.send().unwrap();
            (response.status().as_u16(), response.text().unwrap())
        };
        assert_eq!(get("/latest/meta-data/instance-id", None).0, 401);
        assert_eq!(get("/latest/meta-data/instance-id", Some("made-up")).0, 401);
        let no_ttl = client
            .put(format!("{base}/latest/api/token"))
            .send()
            .unwrap();
        assert_eq!(no_ttl.status().as_u16(), 400);
        let token = client
            .put(format!("{base}/latest/api/token"))
            .header("X-aws-ec2-metadata-token-ttl-seconds", "60")
            .send()
            .unwrap()
            .text()
            .unwrap();
        let token = Some(token.as_str());
        assert_eq!(
            get("/latest/meta-data/instance-id", token),
            (200, "i-0123456789abcdef0".into())
        );
        assert_eq!(
            get("/latest/meta-data/tags/instance", token),
            (200, "Name\nobstack:role".into())
        );
        imds.set_tag("obstack:peer:loki", "169.254.169.22");
        assert_eq!(
            get("/latest/meta-data/tags/instance/obstack:peer:loki", token),
            (200, "169.254.169.22".into())
        );
        imds.remove_tag("obstack:peer:loki");
        assert_eq!(
            get("/latest/meta-data/tags/instance/obstack:peer:loki", token).0,
            404
        );
        let (status, role) = get("/latest/meta-data/iam/security-credentials/", token);
        assert_eq!((status, role.as_str()), (200, "obstack-test"));
        let (_, document) = get(
            "/latest/meta-data/iam/security-credentials/obstack-test",
            token,
        );
        let document: serde_json::Value = serde_json::from_str(&document).unwrap();
        assert_eq!(document["AccessKeyId"], imds.credentials().access_key_id);
        assert!(imds
            .requests()
            .contains(&"GET /latest/meta-data/instance-id (no token)".to_string()));
    }
}
