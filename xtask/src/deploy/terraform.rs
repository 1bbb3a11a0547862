//! A thin wrapper over the `terraform` CLI, run in `terraform/`. Every call is logged, and a
//! failure becomes one actionable line (state locked, no credentials, ...) while Terraform's
//! own output stays on the terminal above it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::cmd::{self, Cmd};

pub struct Terraform {
    program: PathBuf,
    dir: PathBuf,
    var_files: Vec<PathBuf>,
}

/// Whether a saved plan changes anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanResult {
    NoChanges,
    Changes,
}

impl Terraform {
    /// Finds `terraform` on PATH; `var_files` are passed to plan and destroy, in order.
    pub fn locate(dir: &Path, var_files: Vec<PathBuf>) -> anyhow::Result<Terraform> {
        let program = cmd::require_tool(
            "terraform",
            "install Terraform >= 1.6 (https://developer.hashicorp.com/terraform/install)",
        )?;
        for file in &var_files {
            anyhow::ensure!(
                file.is_file(),
                "variable file {} does not exist",
                file.display()
            );
        }
        Ok(Terraform {
            program,
            dir: dir.to_path_buf(),
            var_files,
        })
    }

    fn command(&self, args: Vec<OsString>) -> Cmd {
        let mut full: Vec<OsString> = vec![format!("-chdir={}", self.dir.display()).into()];
        full.extend(args);
        // Echoed as `terraform ...`: the path was found on PATH.
        Cmd::new("terraform", full).map(|e| {
            let e = e.env("TF_IN_AUTOMATION", "1");
            match self.program.parent() {
                Some(dir) => e.env("PATH", prepend_path(dir)),
                None => e,
            }
        })
    }

    fn var_file_args(&self) -> Vec<OsString> {
        self.var_files
            .iter()
            .map(|f| format!("-var-file={}", absolute(f).display()).into())
            .collect()
    }

    /// `terraform init -input=false` (idempotent: safe on every deploy), with the rest of
    /// the S3 backend's settings from `backend_config` when given (a partial configuration;
    /// Terraform keeps them in `.terraform/` for the next runs).
    pub fn init(&self, backend_config: Option<&Path>) -> anyhow::Result<()> {
        let mut argv = args(&["init", "-input=false"]);
        if let Some(file) = backend_config {
            argv.push(format!("-backend-config={}", absolute(file).display()).into());
        }
        self.run_checked(self.command(argv), "terraform init")?;
        Ok(())
    }

    /// `terraform plan -out=plan`, printing the plan.
    pub fn plan(&self, plan: &Path) -> anyhow::Result<PlanResult> {
        self.plan_with(plan, &[])
    }

    /// `terraform plan` with `extra` options (`-destroy`, `-target=...`, `-replace=...`).
    pub fn plan_with(&self, plan: &Path, extra: &[String]) -> anyhow::Result<PlanResult> {
        let mut argv = args(&["plan", "-input=false", "-detailed-exitcode"]);
        argv.extend(extra.iter().map(OsString::from));
        argv.push(format!("-out={}", absolute(plan).display()).into());
        argv.extend(self.var_file_args());
        let code = self.run_checked_codes(self.command(argv), "terraform plan", &[0, 2])?;
        Ok(if code == 2 {
            PlanResult::Changes
        } else {
            PlanResult::NoChanges
        })
    }

    /// `terraform apply` of a saved plan (a saved plan never asks for confirmation).
    pub fn apply(&self, plan: &Path) -> anyhow::Result<()> {
        let mut argv = args(&["apply", "-input=false"]);
        argv.push(absolute(plan).into_os_string());
        self.run_checked(self.command(argv), "terraform apply")?;
        Ok(())
    }

    /// `terraform state list`: the address of every resource (and data source) in the
    /// state; empty when there is no state.
    pub fn state_list(&self) -> anyhow::Result<Vec<String>> {
        let command = self.command(args(&["state", "list"]));
        eprintln!("$ {command}");
        let output = command
            .expression()
            .stdout_capture()
            .stderr_capture()
            .unchecked()
            .run()
            .with_context(|| format!("cannot run {}", self.program.display()))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            if stderr.contains("No state file was found") {
                return Ok(Vec::new());
            }
            bail!("`{command}` failed: {}", explain_failure(&stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// `terraform output -json`; empty when nothing is deployed.
    pub fn outputs(&self) -> anyhow::Result<Outputs> {
        let json = self
            .command(args(&["output", "-json"]))
            .read()
            .context("cannot read Terraform's outputs")?;
        Outputs::parse(&json)
    }

    fn run_checked(&self, expression: Cmd, what: &str) -> anyhow::Result<i32> {
        self.run_checked_codes(expression, what, &[0])
    }

    /// Runs with stdout on the terminal and stderr captured (then echoed), so a failure can
    /// be explained in one line.
    fn run_checked_codes(&self, command: Cmd, what: &str, ok_codes: &[i32]) -> anyhow::Result<i32> {
        eprintln!("$ {command}");
        let output = command
            .expression()
            .stderr_capture()
            .unchecked()
            .run()
            .with_context(|| format!("cannot run {}", self.program.display()))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        eprint!("{stderr}");
        let code = output.status.code().unwrap_or(-1);
        if ok_codes.contains(&code) {
            return Ok(code);
        }
        bail!("{what} failed: {}", explain_failure(&stderr));
    }
}

/// `dir` first on PATH, so the terraform found there is the one that runs.
fn prepend_path(dir: &Path) -> OsString {
    let rest = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&rest)))
        .unwrap_or(rest)
}

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|dir| dir.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}

/// Turns Terraform's error output into one actionable sentence.
pub fn explain_failure(stderr: &str) -> String {
    let lower = stderr.to_lowercase();
    if lower.contains("error acquiring the state lock") {
        let id = stderr
            .lines()
            .find_map(|l| l.trim().strip_prefix("ID:"))
            .map(str::trim)
            .unwrap_or("<LOCK_ID>");
        return format!(
            "the Terraform state is locked by another run; wait for it to finish, or if it \
             crashed run `terraform -chdir=terraform force-unlock {id}`"
        );
    }
    if lower.contains("no valid credential sources")
        || lower.contains("failed to refresh cached credentials")
        || lower.contains("invalidclienttokenid")
        || lower.contains("expiredtoken")
        || lower.contains("no ec2 imds role found")
    {
        return "no usable AWS credentials: run `aws configure` or `aws sso login`, or set \
                AWS_PROFILE"
            .into();
    }
    if lower.contains("backend configuration changed")
        || lower.contains("backend initialization required")
    {
        return "the state backend differs from the one terraform/ was initialised with: \
                move the state once with `terraform -chdir=terraform init -migrate-state \
                -backend-config=FILE`, then deploy again"
            .into();
    }
    if lower.contains("no value for required variable") && lower.contains("allowed_web_cidrs") {
        return "allowed_web_cidrs is not set: pass --var-file with allowed_web_cidrs = \
                [\"<your address>/32\"]"
            .into();
    }
    if lower.contains("failed to query available provider packages")
        || lower.contains("could not connect to registry")
    {
        return "Terraform cannot download its providers: check your network (or a provider \
                mirror in ~/.terraformrc)"
            .into();
    }
    // Otherwise Terraform's own first error line says it best.
    stderr
        .lines()
        .map(str::trim)
        .map(|l| l.trim_start_matches('│').trim())
        .find(|l| l.starts_with("Error:"))
        .map(|l| format!("{l} (details above)"))
        .unwrap_or_else(|| "see Terraform's output above".into())
}

/// The outputs `terraform/outputs.tf` declares, as `terraform output -json` prints them.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    pub urls: BTreeMap<String, String>,
    pub exposed: BTreeMap<String, bool>,
    pub instance_ids: BTreeMap<String, String>,
    /// role → the AMI its instance runs (empty in a state written before this output).
    pub ami_ids: BTreeMap<String, String>,
    pub grafana_admin_password_parameter: Option<String>,
    pub grafana_admin_password_command: Option<String>,
    /// The app fleet's Auto Scaling group; `None` for a single app instance.
    pub app_autoscaling_group: Option<String>,
    /// The deployment's name (Terraform's `name`), tagged `obstack:deployment` on its
    /// volumes and their snapshots. `None` in a state written before this output.
    pub deployment: Option<String>,
    /// role → its EBS data volume.
    pub data_volume_ids: BTreeMap<String, String>,
    /// The key of the data volumes, their snapshots and Loki's bucket.
    pub data_key_arn: Option<String>,
    /// Loki's bucket, with `loki_storage = "s3"`.
    pub loki_bucket: Option<String>,
    /// service → URL of each UI published to `allowed_web_cidrs` (empty by default, and in
    /// a state written before this output): every other UI is reached through a tunnel.
    pub public_services: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Output<T> {
    value: T,
}

#[derive(Deserialize)]
struct RawOutputs {
    urls: Option<Output<BTreeMap<String, String>>>,
    exposed: Option<Output<BTreeMap<String, bool>>>,
    instance_ids: Option<Output<BTreeMap<String, String>>>,
    ami_ids: Option<Output<BTreeMap<String, String>>>,
    grafana_admin_password_parameter: Option<Output<String>>,
    grafana_admin_password_command: Option<Output<String>>,
    // Null without the fleet (Terraform may also leave a null output out).
    app_autoscaling_group: Option<Output<Option<String>>>,
    deployment: Option<Output<String>>,
    data_volume_ids: Option<Output<BTreeMap<String, String>>>,
    data_key_arn: Option<Output<String>>,
    loki_bucket: Option<Output<Option<String>>>,
    public_services: Option<Output<BTreeMap<String, String>>>,
}

impl Outputs {
    pub fn parse(json: &str) -> anyhow::Result<Outputs> {
        let raw: RawOutputs = serde_json::from_str(json)
            .context("`terraform output -json` printed unexpected JSON")?;
        Ok(Outputs {
            urls: raw.urls.map(|o| o.value).unwrap_or_default(),
            exposed: raw.exposed.map(|o| o.value).unwrap_or_default(),
            instance_ids: raw.instance_ids.map(|o| o.value).unwrap_or_default(),
            ami_ids: raw.ami_ids.map(|o| o.value).unwrap_or_default(),
            grafana_admin_password_parameter: raw.grafana_admin_password_parameter.map(|o| o.value),
            grafana_admin_password_command: raw.grafana_admin_password_command.map(|o| o.value),
            app_autoscaling_group: raw.app_autoscaling_group.and_then(|o| o.value),
            deployment: raw.deployment.map(|o| o.value),
            data_volume_ids: raw.data_volume_ids.map(|o| o.value).unwrap_or_default(),
            data_key_arn: raw.data_key_arn.map(|o| o.value),
            loki_bucket: raw.loki_bucket.and_then(|o| o.value),
            public_services: raw.public_services.map(|o| o.value).unwrap_or_default(),
        })
    }

    /// True when there is no deployed stack in the state.
    pub fn is_empty(&self) -> bool {
        self.instance_ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_fleet_group_is_read_when_there_is_one() {
        let fleet = r#"{"app_autoscaling_group": {"sensitive": false, "type": "string", "value": "obstack-app"}}"#;
        assert_eq!(
            Outputs::parse(fleet)
                .unwrap()
                .app_autoscaling_group
                .as_deref(),
            Some("obstack-app")
        );
        let single =
            r#"{"app_autoscaling_group": {"sensitive": false, "type": "string", "value": null}}"#;
        assert_eq!(Outputs::parse(single).unwrap().app_autoscaling_group, None);
        assert_eq!(Outputs::parse("{}").unwrap().app_autoscaling_group, None);
    }

    #[test]
    fn a_locked_state_names_the_lock() {
        let stderr =
            "╷\n│ Error: Error acquiring the state lock\n│ Lock Info:\n│   ID:        1234-abcd\n";
        let line = explain_failure(stderr);
        assert!(line.contains("force-unlock"), "{line}");
        assert!(line.contains("locked"), "{line}");
    }

    #[test]
    fn missing_credentials_say_how_to_log_in() {
        let stderr = "│ Error: No valid credential sources found\n";
        assert!(explain_failure(stderr).contains("aws configure"));
    }

    #[test]
    fn other_errors_repeat_terraforms_first_error_line() {
        let stderr = "╷\n│ Error: Invalid value for variable\n│ \n│ more\n";
        assert_eq!(
            explain_failure(stderr),
            "Error: Invalid value for variable (details above)"
        );
    }

    #[test]
    fn outputs_parse_and_an_empty_state_is_empty() {
        let json = r#"{
          "urls": {"sensitive": false, "type": ["map","string"], "value": {"grafana": "http://192.0.2.1:3000"}},
          "exposed": {"sensitive": false, "type": ["map","bool"], "value": {"grafana": true, "loki": false}},
          "instance_ids": {"sensitive": false, "type": ["map","string"], "value": {"grafana": "i-0abc"}},
          "ami_ids": {"sensitive": false, "type": ["map","string"], "value": {"grafana": "ami-0123456789abcdef0"}},
          "grafana_admin_password_parameter": {"sensitive": false, "type": "string", "value": "/obstack/x/grafana/admin-password"}
        }"#;
        let outputs = Outputs::parse(json).unwrap();
        assert_eq!(outputs.urls["grafana"], "http://192.0.2.1:3000");
        assert!(!outputs.exposed["loki"]);
        assert_eq!(outputs.instance_ids["grafana"], "i-0abc");
        assert_eq!(outputs.ami_ids["grafana"], "ami-0123456789abcdef0");
        assert!(!outputs.is_empty());
        assert!(Outputs::parse("{}").unwrap().is_empty());
    }
}
