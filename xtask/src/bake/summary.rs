//! The bake's result: a table for people, the same as JSON for CI.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Built,
    UpToDate,
    Failed,
    Interrupted,
    /// `--dry-run` only.
    WouldBuild,
}

impl State {
    fn words(self) -> &'static str {
        match self {
            State::Built => "built",
            State::UpToDate => "up to date",
            State::Failed => "failed",
            State::Interrupted => "interrupted",
            State::WouldBuild => "would build",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RoleResult {
    pub role: String,
    /// Full hex SHA-256; `None` only in an offline dry run (base AMI unknown).
    pub input_hash: Option<String>,
    pub ami_id: Option<String>,
    pub state: State,
    pub duration_secs: f64,
    /// When its Packer build started (seconds since the Unix epoch); builds only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at_unix: Option<f64>,
    /// Why it was (or would be) built.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub dry_run: bool,
    pub smoke: bool,
    pub base_ami: Option<String>,
    pub roles: Vec<RoleResult>,
}

impl Summary {
    pub fn failed_roles(&self) -> Vec<&str> {
        self.roles
            .iter()
            .filter(|r| matches!(r.state, State::Failed | State::Interrupted))
            .map(|r| r.role.as_str())
            .collect()
    }

    pub fn table(&self) -> String {
        let rows = self.roles.iter().map(|r| {
            [
                r.role.clone(),
                r.input_hash
                    .as_deref()
                    .map_or("?".to_string(), |h| h[..h.len().min(12)].to_string()),
                r.ami_id.clone().unwrap_or_else(|| "-".to_string()),
                r.state.words().to_string(),
                format!("{:.1}s", r.duration_secs),
            ]
        });
        let mut out = crate::table::render(&["ROLE", "HASH", "AMI", "STATE", "TIME"], rows);
        for r in &self.roles {
            for reason in &r.reasons {
                out.push_str(&format!("  {}: {reason}\n", r.role));
            }
            if let Some(error) = &r.error {
                out.push_str(&format!("  {}: {error}\n", r.role));
            }
        }
        out
    }
}
