//! A stand-in for `terraform` on `PATH`, for the deploy tests: it records every call (and
//! the variable files it is given), answers `init`, `output -json` (from a fixture the test
//! writes) and `plan` ("changes present"), and refuses anything else, `apply` included,
//! unless the test allows applying ([`FakeTerraform::allow_apply`]: `apply` and `destroy`
//! then succeed, changing nothing).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const SCRIPT: &str = r#"#!/bin/sh
echo "terraform $*" >> "$FAKE_TF_LOG"
for arg in "$@"; do
  case "$arg" in
    -var-file=*) echo "--- ${arg#-var-file=}" >> "$FAKE_TF_LOG"; cat "${arg#-var-file=}" >> "$FAKE_TF_LOG" ;;
  esac
done
case " $* " in
  *" init "*) exit 0 ;;
  *" output "*) cat "$FAKE_TF_OUTPUTS"; exit 0 ;;
  *" plan "*) exit 2 ;;
  *" apply "*|*" destroy "*) [ -e "$FAKE_TF_ALLOW_APPLY" ] && exit 0
    echo "unexpected terraform call: $*" >&2; exit 1 ;;
  *) echo "unexpected terraform call: $*" >&2; exit 1 ;;
esac
"#;

pub struct FakeTerraform {
    bin: PathBuf,
    log: PathBuf,
    outputs: PathBuf,
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
        FakeTerraform {
            bin,
            log: dir.join("fake-terraform.log"),
            outputs: outputs_path,
            allow_apply: dir.join("fake-terraform-may-apply"),
        }
    }

    /// Adds (or replaces) the output `name` with `value`, e.g. `grafana_admin_password_parameter`.
    pub fn set_output(&self, name: &str, value: serde_json::Value) {
        let text = std::fs::read_to_string(&self.outputs).expect("read the outputs fixture");
        let mut outputs: serde_json::Value =
            serde_json::from_str(&text).expect("the outputs fixture is JSON");
        outputs[name] = serde_json::json!({"sensitive": false, "value": value});
        std::fs::write(&self.outputs, outputs.to_string()).expect("write the outputs fixture");
    }

    /// Lets `apply` and `destroy` succeed (they change nothing) from now on.
    pub fn allow_apply(&self) {
        std::fs::write(&self.allow_apply, "").expect("allow the stand-in to apply");
    }

    /// The environment [`FakeTerraform::apply_env`] sets besides `PATH`, for a runner that
    /// builds its own environment.
    pub fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("FAKE_TF_LOG", self.log.clone()),
            ("FAKE_TF_OUTPUTS", self.outputs.clone()),
            ("FAKE_TF_ALLOW_APPLY", self.allow_apply.clone()),
        ]
    }

    /// The directory holding the stand-in `terraform`.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
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
