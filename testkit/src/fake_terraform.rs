//! A stand-in for `terraform` on `PATH`, for the deploy, destroy and restore tests and the
//! workflow rehearsal: it records every call (and the variable files it is given), answers
//! `init`, `output -json` and `state list` (from fixtures the test writes) and `plan`
//! ("changes present"), accepts `apply` and `destroy` only when the test allows it
//! ([`FakeTerraform::allow_apply`]; they change nothing), and refuses anything else.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const SCRIPT: &str = r#"#!/bin/sh
echo "terraform $*" >> "$FAKE_TF_LOG"
for arg in "$@"; do
  case "$arg" in
    -var-file=*) echo "--- ${arg#-var-file=}" >> "$FAKE_TF_LOG"; cat "${arg#-var-file=}" >> "$FAKE_TF_LOG"; echo >> "$FAKE_TF_LOG" ;;
  esac
done
case " $* " in
  *" init "*) exit 0 ;;
  *" output "*) cat "$FAKE_TF_OUTPUTS"; exit 0 ;;
  *" state list "*) cat "$FAKE_TF_STATE"; exit 0 ;;
  *" plan "*) exit 2 ;;
  *" apply "*|*" destroy "*) if [ -e "$FAKE_TF_ALLOW_APPLY" ]; then exit 0; fi ;;
esac
echo "unexpected terraform call: $*" >&2
exit 1
"#;

pub struct FakeTerraform {
    bin: PathBuf,
    log: PathBuf,
    outputs: PathBuf,
    state: PathBuf,
    /// Exists when `apply` and `destroy` may succeed.
    allow_apply: PathBuf,
}

impl FakeTerraform {
    /// Installs the stand-in under `dir`, answering `output -json` with a stack whose
    /// instances run `running` (role → AMI).
    pub fn install(dir: &Path, running: &[(&str, &str)]) -> FakeTerraform {
        let bin = dir.join("fake-terraform-bin");
        std::fs::create_dir_all(&bin).expect("create the stand-in's directory");
        let script = bin.join("terraform");
        std::fs::write(&script, SCRIPT).expect("write the stand-in terraform");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .expect("make the stand-in executable");
        let amis: serde_json::Map<String, serde_json::Value> = running
            .iter()
            .map(|(role, ami)| (role.to_string(), serde_json::Value::from(*ami)))
            .collect();
        let instances: serde_json::Map<String, serde_json::Value> = running
            .iter()
            .enumerate()
            .map(|(n, (role, _))| (role.to_string(), format!("i-{n}").into()))
            .collect();
        let outputs = serde_json::json!({
            "ami_ids": {"sensitive": false, "type": ["map", "string"], "value": amis},
            "instance_ids": {"sensitive": false, "type": ["map", "string"], "value": instances},
        });
        let outputs_path = dir.join("fake-terraform-outputs.json");
        std::fs::write(&outputs_path, outputs.to_string()).expect("write the outputs fixture");
        let state = dir.join("fake-terraform-state.txt");
        std::fs::write(&state, "").expect("write the state fixture");
        FakeTerraform {
            bin,
            log: dir.join("fake-terraform.log"),
            outputs: outputs_path,
            state,
            allow_apply: dir.join("fake-terraform-may-apply"),
        }
    }

    /// Adds (or replaces) outputs, as `{"name": value}`: each becomes `{"value": value}`.
    pub fn with_outputs(self, values: serde_json::Value) -> FakeTerraform {
        for (name, value) in values.as_object().expect("outputs as a JSON object") {
            self.set_output(name, value.clone());
        }
        self
    }

    /// What `terraform state list` prints: one resource address a line.
    pub fn with_state(self, addresses: &[&str]) -> FakeTerraform {
        self.set_state(addresses);
        self
    }

    /// [`FakeTerraform::with_state`] for a stand-in already handed out.
    pub fn set_state(&self, addresses: &[&str]) {
        let text: String = addresses.iter().map(|a| format!("{a}\n")).collect();
        std::fs::write(&self.state, text).expect("write the state fixture");
    }

    /// Lets `apply` and `destroy` succeed (they change nothing; the calls are recorded).
    pub fn allowing_apply(self) -> FakeTerraform {
        self.allow_apply();
        self
    }

    /// [`FakeTerraform::allowing_apply`] from now on, for a stand-in already handed out.
    pub fn allow_apply(&self) {
        std::fs::write(&self.allow_apply, "").expect("allow the stand-in to apply");
    }

    /// Adds (or replaces) the output `name` with `value`, e.g. `grafana_admin_password_parameter`.
    pub fn set_output(&self, name: &str, value: serde_json::Value) {
        let text = std::fs::read_to_string(&self.outputs).expect("read the outputs fixture");
        let mut outputs: serde_json::Value =
            serde_json::from_str(&text).expect("the outputs fixture is JSON");
        outputs[name] = serde_json::json!({"sensitive": false, "value": value});
        std::fs::write(&self.outputs, outputs.to_string()).expect("write the outputs fixture");
    }

    /// Installs the stand-in under `dir`, answering `output -json` with exactly `outputs`
    /// (the JSON object `terraform output -json` prints).
    pub fn install_with_outputs(dir: &Path, outputs: &serde_json::Value) -> FakeTerraform {
        let fake = FakeTerraform::install(dir, &[]);
        std::fs::write(&fake.outputs, outputs.to_string()).expect("write the outputs fixture");
        fake
    }

    /// The directory holding the stand-in.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// The environment [`FakeTerraform::apply_env`] sets besides `PATH`, for a runner that
    /// builds its own environment.
    pub fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("FAKE_TF_LOG", self.log.clone()),
            ("FAKE_TF_OUTPUTS", self.outputs.clone()),
            ("FAKE_TF_STATE", self.state.clone()),
            ("FAKE_TF_ALLOW_APPLY", self.allow_apply.clone()),
        ]
    }

    /// Puts the stand-in first on `command`'s `PATH`.
    pub fn apply_env<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        let path = std::env::var("PATH").unwrap_or_default();
        command.env("PATH", format!("{}:{path}", self.bin.display()));
        for (name, value) in self.env() {
            command.env(name, value);
        }
        command
    }

    /// The `terraform` command lines of every call, without the variable files' contents.
    pub fn command_lines(&self) -> Vec<String> {
        self.calls()
            .lines()
            .filter(|line| line.starts_with("terraform "))
            .map(str::to_string)
            .collect()
    }

    /// The variable file named `name` (e.g. `obstack.auto.tfvars.json`) as the first call
    /// matching `call` (e.g. ` plan `) got it.
    pub fn var_file_of(&self, call: &str, name: &str) -> Option<serde_json::Value> {
        let calls = self.calls();
        let at = calls.find(call)?;
        let file = calls[at..]
            .split("--- ")
            .skip(1)
            .find(|part| part.lines().next().is_some_and(|l| l.ends_with(name)))?;
        let contents: Vec<&str> = file
            .lines()
            .skip(1)
            .take_while(|line| !line.starts_with("terraform "))
            .collect();
        serde_json::from_str(&contents.join("\n")).ok()
    }

    /// Every call so far, with the variable files' contents after `--- <path>` lines.
    pub fn calls(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `ami_ids` the first `plan` was given in the generated variable file.
    pub fn planned_ami_ids(&self) -> Option<serde_json::Value> {
        let calls = self.calls();
        let plan_at = calls.find(" plan ")?;
        let generated = calls[plan_at..]
            .split("--- ")
            .skip(1)
            .find(|part| part.contains("obstack.auto.tfvars.json"))?;
        let json_start = generated.find('{')?;
        let vars: serde_json::Value = serde_json::from_str(&generated[json_start..]).ok()?;
        Some(vars["ami_ids"].clone())
    }
}
