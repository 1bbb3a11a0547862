//! The Packer template (one for every role): each role passes `packer validate` and the
//! template `packer fmt -check` with the Packer here (1.6.6); it declares the bake's variables
//! and keeps the security settings and the smoke source the contract in images/README.md
//! promises.

use crate::packer_env;

use std::path::Path;

use hcl::{Block, Body, Expression};
use packer_env::{
    describe, images_dir, packer, roles, run, sample_hash, template_dir, write_var_file,
};
use serde_json::json;

fn parse(path: &Path) -> Body {
    let text = std::fs::read_to_string(path).unwrap();
    hcl::parse(&text).unwrap_or_else(|e| panic!("{} is not HCL: {e}", path.display()))
}

fn template() -> Body {
    parse(&template_dir().join("image.pkr.hcl"))
}

fn variables() -> Body {
    parse(&template_dir().join("variables.pkr.hcl"))
}

/// `packer validate` of the template with `var_file`, from images/ as the bake runs it.
fn validate(sandbox: &Path, var_file: &Path) -> std::process::Output {
    run(packer(sandbox)
        .current_dir(images_dir())
        .arg("validate")
        .arg(format!("-var-file={}", var_file.display()))
        .arg(template_dir()))
}

fn source<'a>(body: &'a Body, name: &str) -> &'a Block {
    body.blocks()
        .find(|b| {
            b.identifier() == "source"
                && b.labels()
                    .iter()
                    .map(|l| l.as_str())
                    .eq(["amazon-ebs", name])
        })
        .unwrap_or_else(|| panic!("no source \"amazon-ebs\" \"{name}\""))
}

fn attribute<'a>(block: &'a Block, key: &str) -> Option<&'a Expression> {
    block
        .body()
        .attributes()
        .find(|a| a.key() == key)
        .map(|a| a.expr())
}

fn expression_text(expr: &Expression) -> String {
    hcl::format::to_string(expr).unwrap()
}

#[test]
fn every_role_passes_packer_validate_with_the_bakes_variables() {
    let sandbox = tempfile::tempdir().unwrap();
    for role in roles() {
        // validate also stats every provisioning script, so each role's install and
        // self-check scripts must exist.
        let var_file = write_var_file(sandbox.path(), role, &sample_hash(role), json!({}));
        let output = validate(sandbox.path(), &var_file);
        assert!(
            output.status.success(),
            "packer validate {role}: {}",
            describe(&output)
        );
    }
}

#[test]
fn validate_rejects_a_malformed_input_hash() {
    // The same command as above, so this proves validate really checks what it is given.
    let sandbox = tempfile::tempdir().unwrap();
    let var_file = write_var_file(sandbox.path(), "loki", "not-a-sha256", json!({}));
    let output = validate(sandbox.path(), &var_file);
    assert!(
        !output.status.success(),
        "a bad input_hash validated: {}",
        describe(&output)
    );
    assert!(
        describe(&output).contains("input_hash"),
        "{}",
        describe(&output)
    );
}

#[test]
fn validate_rejects_an_open_builder_security_group() {
    let sandbox = tempfile::tempdir().unwrap();
    let var_file = write_var_file(
        sandbox.path(),
        "app",
        &sample_hash("app"),
        json!({ "builder_cidrs": ["0.0.0.0/0"] }),
    );
    let output = validate(sandbox.path(), &var_file);
    assert!(
        !output.status.success(),
        "0.0.0.0/0 validated: {}",
        describe(&output)
    );
}

#[test]
fn validate_rejects_an_unknown_role_and_an_image_without_the_agent() {
    let sandbox = tempfile::tempdir().unwrap();
    for (extra, complaint) in [
        // Not a role name (and a way out of images/): refused by the variable's validation.
        (json!({ "role": "../app" }), "must be a role name"),
        (json!({ "role": "Web" }), "must be a role name"),
        // A role name without a directory: its install script does not exist.
        (json!({ "role": "web" }), "web/provisioners/install.sh"),
        (
            json!({ "artifacts": ["demo-app"] }),
            "must include stack-agent",
        ),
    ] {
        let var_file = write_var_file(sandbox.path(), "app", &sample_hash("app"), extra.clone());
        let output = validate(sandbox.path(), &var_file);
        assert!(
            !output.status.success() && describe(&output).contains(complaint),
            "{extra} validated: {}",
            describe(&output)
        );
    }
}

#[test]
fn every_packer_file_is_formatted() {
    let sandbox = tempfile::tempdir().unwrap();
    // images/plugins.pkr.hcl and the template directory.
    for dir in [images_dir(), template_dir()] {
        let output = run(packer(sandbox.path())
            .current_dir(images_dir())
            .args(["fmt", "-check", "-diff"])
            .arg(&dir));
        assert!(
            output.status.success(),
            "packer fmt -check {}: {}",
            dir.display(),
            describe(&output)
        );
    }
}

#[test]
fn every_variable_is_documented_in_the_readme_and_no_other() {
    let declared: Vec<String> = variables()
        .blocks()
        .filter(|b| b.identifier() == "variable")
        .map(|b| b.labels()[0].as_str().to_string())
        .collect();
    let readme = std::fs::read_to_string(images_dir().join("README.md")).unwrap();
    let listed: Vec<&str> = readme
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once("` | "))
        .filter(|(_, rest)| {
            rest.starts_with("string")
                || rest.starts_with("map(")
                || rest.starts_with("list(")
                || rest.starts_with("number")
        })
        .map(|(name, _)| name)
        .collect();
    assert!(
        listed.len() >= 12,
        "README variable table not found: {listed:?}"
    );
    for name in &listed {
        assert!(
            declared.iter().any(|d| d == name),
            "README lists `{name}`, not declared"
        );
    }
    for name in &declared {
        assert!(
            listed.contains(&name.as_str()),
            "`{name}` is declared but not in the README"
        );
    }
}

#[test]
fn the_golden_source_is_encrypted_reached_through_ssm_and_built_on_canonicals_ubuntu() {
    let body = template();
    let golden = source(&body, "golden");
    // Encrypted at launch, so the AMI's snapshot is too; encrypt_boot would only add an
    // intermediate AMI copy (and ec2:CopyImage to the bake role).
    let launch = golden
        .body()
        .blocks()
        .find(|b| b.identifier() == "launch_block_device_mappings")
        .unwrap_or_else(|| panic!("no launch_block_device_mappings"));
    assert_eq!(
        attribute(launch, "encrypted"),
        Some(&Expression::Bool(true))
    );
    assert_eq!(attribute(golden, "encrypt_boot"), None);
    assert_eq!(
        attribute(golden, "ssh_clear_authorized_keys"),
        Some(&Expression::Bool(true))
    );
    assert_eq!(
        attribute(golden, "ssh_interface")
            .map(expression_text)
            .as_deref(),
        Some("\"session_manager\""),
        "the builder must be reached through SSM, not open SSH"
    );
    assert_eq!(
        attribute(golden, "temporary_security_group_source_cidrs")
            .map(expression_text)
            .as_deref(),
        Some("var.builder_cidrs")
    );
    let filter = golden
        .body()
        .blocks()
        .find(|b| b.identifier() == "source_ami_filter")
        .unwrap_or_else(|| panic!("no source_ami_filter"));
    assert_eq!(
        attribute(filter, "most_recent"),
        Some(&Expression::Bool(true))
    );
    assert_eq!(
        attribute(filter, "owners").map(expression_text).as_deref(),
        Some("var.base_ami_owners")
    );
    for key in ["tags", "snapshot_tags"] {
        assert_eq!(
            attribute(golden, key).map(expression_text).as_deref(),
            Some("local.ami_tags"),
            "{key}"
        );
    }
    let variables = std::fs::read_to_string(template_dir().join("variables.pkr.hcl")).unwrap();
    assert!(
        variables.contains("\"099720109477\""),
        "Canonical's owner id is the default"
    );
    assert!(
        variables.contains("ubuntu-noble-24.04-amd64-server-*"),
        "Ubuntu 24.04 is the base"
    );
}

#[test]
fn the_smoke_source_talks_to_the_custom_endpoint_and_every_provisioner_skips_it() {
    let body = template();
    let smoke = source(&body, "smoke");
    assert_eq!(
        attribute(smoke, "communicator")
            .map(expression_text)
            .as_deref(),
        Some("\"none\"")
    );
    assert_eq!(
        attribute(smoke, "custom_endpoint_ec2")
            .map(expression_text)
            .as_deref(),
        Some("var.ec2_endpoint")
    );
    for key in [
        "skip_credential_validation",
        "skip_metadata_api_check",
        "skip_region_validation",
    ] {
        assert_eq!(
            attribute(smoke, key),
            Some(&Expression::Bool(true)),
            "{key}"
        );
    }
    // The smoke image carries the real name and tags: that is what the smoke bake checks.
    for key in ["ami_name", "tags", "snapshot_tags"] {
        assert_eq!(
            attribute(smoke, key).map(expression_text),
            attribute(source(&body, "golden"), key).map(expression_text),
            "{key}"
        );
    }
    let build = body.blocks().find(|b| b.identifier() == "build").unwrap();
    let provisioners: Vec<&Block> = build
        .body()
        .blocks()
        .filter(|b| b.identifier() == "provisioner")
        .collect();
    assert!(provisioners.len() >= 4, "provisioning is missing");
    for provisioner in provisioners {
        assert_eq!(
            attribute(provisioner, "except")
                .map(|e| expression_text(e).split_whitespace().collect::<String>())
                .as_deref(),
            Some("[\"amazon-ebs.smoke\"]"),
            "a provisioner without except = [\"amazon-ebs.smoke\"]"
        );
    }
}

#[test]
fn required_plugins_live_only_in_the_plugins_file() {
    let plugins = std::fs::read_to_string(images_dir().join("plugins.pkr.hcl")).unwrap();
    assert!(
        plugins.contains("required_plugins"),
        "plugins.pkr.hcl pins the amazon plugin"
    );
    // The template directory is what `packer build` loads; the plugins file stays outside it.
    for entry in std::fs::read_dir(template_dir()).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("required_plugins"),
            "{}: Packer 1.6.6 rejects required_plugins",
            path.display()
        );
    }
}
