//! moto enforcing IAM: users holding exactly a policy, their keys, and every decision moto
//! made about a call (see `moto_iam.py`, the launcher that makes moto check SSM calls
//! against the parameters they name, as AWS does).
//!
//! The users are created by the first calls moto takes unauthenticated
//! (`INITIAL_NO_AUTH_ACTION_COUNT`: three IAM calls per user, over plain HTTP, since no IAM
//! SDK is linked); from then on every call is checked. The first user, [`ADMIN`], may do
//! anything: the test's own set-up (images, parameters, instances) signs with its keys.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

/// The user whose keys [`crate::Moto::env`] hands out: everything allowed.
pub const ADMIN: &str = "admin";
const ADMIN_POLICY: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#;

/// The launcher: moto_server with SSM's resources and an action log (moto_iam.py).
pub const LAUNCHER: &str = include_str!("moto_iam.py");

/// IAM calls made unauthenticated per user: CreateUser, PutUserPolicy, CreateAccessKey.
const CALLS_PER_USER: usize = 3;

/// An access key pair of a moto user.
#[derive(Debug, Clone)]
pub struct Keys {
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// One authorization decision moto made.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Decision {
    pub user: String,
    /// `ssm:GetParameter`.
    pub action: String,
    /// The resource ARN checked (`*` for actions without resource types).
    pub resource: String,
    pub allowed: bool,
}

/// How many unauthenticated calls creating `users` (and the admin) takes.
pub fn setup_calls(users: usize) -> usize {
    (users + 1) * CALLS_PER_USER
}

/// Creates the admin and each `(name, policy document)` user on the fresh server at
/// `endpoint`, with one access key each.
pub fn create_users(endpoint: &str, users: &[(&str, &str)]) -> BTreeMap<String, Keys> {
    let client = reqwest::blocking::Client::new();
    // moto reads the service from the credential scope; the signature is not checked yet.
    let authorization = "AWS4-HMAC-SHA256 Credential=setup/20260101/us-east-1/iam/aws4_request, \
                         SignedHeaders=host, Signature=0";
    let call = |form: &[(&str, &str)]| -> String {
        let mut form = form.to_vec();
        form.push(("Version", "2010-05-08"));
        let response = client
            .post(endpoint)
            .header("Authorization", authorization)
            .form(&form)
            .send()
            .unwrap_or_else(|e| panic!("IAM {form:?} on moto: {e}"));
        let status = response.status();
        let body = response.text().unwrap_or_default();
        assert!(
            status.is_success(),
            "IAM {form:?} on moto: {status}: {body}"
        );
        body
    };
    let mut keys = BTreeMap::new();
    for (name, policy) in std::iter::once((ADMIN, ADMIN_POLICY)).chain(users.iter().copied()) {
        serde_json::from_str::<Value>(policy)
            .unwrap_or_else(|e| panic!("the policy of moto user {name} is not JSON: {e}"));
        call(&[("Action", "CreateUser"), ("UserName", name)]);
        call(&[
            ("Action", "PutUserPolicy"),
            ("UserName", name),
            ("PolicyName", "policy-under-test"),
            ("PolicyDocument", policy),
        ]);
        let created = call(&[("Action", "CreateAccessKey"), ("UserName", name)]);
        keys.insert(
            name.to_string(),
            Keys {
                access_key_id: between(&created, "AccessKeyId"),
                secret_access_key: between(&created, "SecretAccessKey"),
            },
        );
    }
    keys
}

/// The text of the first `<tag>...</tag>` in an XML answer.
fn between(xml: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = xml
        .find(&open)
        .unwrap_or_else(|| panic!("no <{tag}> in moto's answer: {xml}"))
        + open.len();
    let end = xml[start..]
        .find(&format!("</{tag}>"))
        .unwrap_or_else(|| panic!("no </{tag}> in moto's answer: {xml}"));
    xml[start..start + end].to_string()
}

/// The decisions logged so far (the launcher's JSON lines).
pub fn read_decisions(log: &Path) -> Vec<Decision> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let entry: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("moto's decision log: {e}: {line}"));
            let text = |key: &str| entry[key].as_str().unwrap_or_default().to_string();
            Decision {
                user: text("user"),
                action: text("action"),
                resource: text("resource"),
                allowed: entry["allowed"].as_bool().unwrap_or(false),
            }
        })
        .collect()
}
