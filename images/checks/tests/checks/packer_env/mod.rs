//! Running Packer 1.6.6 in tests: a sealed environment (no phoning home, no user config, a
//! throwaway cache), the roles from the registry, and the very var files `cargo xtask bake`
//! writes (xtask's `VarFile`).
//!
//! Each test binary uses only part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use image_checks::{images_dir, registry, roles};
use serde_json::Value;
use xtask::bake::base::{self, BaseAmi};
use xtask::bake::vars::{Common, VarFile};
use xtask::versions::{Component, Manifest};

/// The directory of the one Packer template, as `cargo xtask bake` passes it to Packer.
pub fn template_dir() -> PathBuf {
    images_dir().join("common/packer")
}

/// A `packer` command that cannot reach the network on its own and ignores the developer's
/// own Packer settings: HOME and the plugin cache point into `sandbox`.
pub fn packer(sandbox: &Path) -> Command {
    let mut command = Command::new(testkit::require_tool("packer"));
    command
        .env("HOME", sandbox)
        .env("PACKER_CACHE_DIR", sandbox.join("cache"))
        .env("PACKER_CONFIG_DIR", sandbox)
        .env("CHECKPOINT_DISABLE", "1")
        .env("PACKER_LOG", "0")
        .env_remove("PACKER_LOG_PATH")
        .env_remove("AWS_PROFILE");
    command
}

/// Runs `command`, returning its output; the panic message shows what ran and what it said.
pub fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"))
}

pub fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The checked-in versions manifest.
pub fn manifest() -> Manifest {
    Manifest::load(&images_dir().join("versions.toml")).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The components `role` ships, by name, from the checked-in manifest.
pub fn components_for(role: &str) -> BTreeMap<String, Component> {
    manifest()
        .for_role(role)
        .map(|(name, component)| (name.to_string(), component.clone()))
        .collect()
}

/// The revision the sample var files carry.
pub const GIT_REVISION: &str = "0123456789abcdef0123456789abcdef01234567";

/// The var file `cargo xtask bake` writes for `role` (xtask's own `VarFile`, from the real
/// versions manifest and the registry's role), then `extra` on top. The base image is the
/// template's default (Canonical's Ubuntu 24.04) unless `extra` says otherwise; the
/// artifacts directory holds stand-in binaries: validate and the smoke source never run them.
pub fn write_var_file(dir: &Path, role: &str, input_hash: &str, extra: Value) -> PathBuf {
    let artifacts = dir.join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    for binary in registry().workspace_binaries() {
        std::fs::write(artifacts.join(binary), "#!/bin/sh\n").unwrap();
    }
    let base = BaseAmi {
        id: "ami-0123456789abcdef0".to_string(),
        name: base::DEFAULT_NAME.to_string(),
        owner: base::DEFAULT_OWNER.to_string(),
    };
    let common = Common {
        region: "us-east-1",
        git_revision: GIT_REVISION,
        artifacts_dir: &artifacts,
        base: &base,
        ec2_endpoint: "",
        // As a golden bake: every amd64 checksum must be verified.
        require_verified: true,
    };
    let role = registry().role(role).unwrap_or_else(|e| panic!("{e}"));
    let manifest_path = dir.join(format!("{}-manifest.json", role.name));
    let var_file = VarFile::new(role, input_hash, &manifest(), &common, &manifest_path)
        .unwrap_or_else(|e| panic!("the var file of {}: {e:#}", role.name));
    let path = dir.join(format!("{}.pkrvars.json", role.name));
    var_file
        .write(&path)
        .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    if let Value::Object(extra) = extra {
        if !extra.is_empty() {
            let mut vars: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            vars.as_object_mut().unwrap().extend(extra);
            std::fs::write(&path, serde_json::to_vec_pretty(&vars).unwrap()).unwrap();
        }
    }
    path
}

/// A distinct, valid input hash per role (one hex digit repeated, by the role's place in
/// the registry), so tests can tell the AMIs apart.
pub fn sample_hash(role: &str) -> String {
    let index = roles()
        .iter()
        .position(|r| *r == role)
        .unwrap_or_else(|| panic!("no role `{role}` in the registry"));
    let digit = char::from_digit((10 + index as u32) % 16, 16).unwrap();
    std::iter::repeat_n(digit, 64).collect()
}
