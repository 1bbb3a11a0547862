//! Terraform keeps its own HCL; this test fails when `terraform/`'s per-role maps disagree
//! with the role registry (`images/<role>/role.toml`): the role set, the peers each role
//! reads, the ports of the flows between roles, the URLs' ports and the variables' role
//! lists (registry_support/mod.rs lists every comparison).

use crate::registry_support;

use std::path::Path;

use registry_support::{
    checkout_registry, copy_registry_files, disagreements, parse_terraform, terraform_dir,
};
use toml_edit::DocumentMut;
use xtask::roles::Registry;

#[test]
fn terraforms_per_role_maps_agree_with_the_registry() {
    let problems = disagreements(&parse_terraform(&terraform_dir()), &checkout_registry());
    assert!(
        problems.is_empty(),
        "terraform/ disagrees with images/ (the role registry):\n{}",
        problems.join("\n")
    );
}

/// The checkout's registry files in a temporary directory, changed by `change`, loaded.
fn changed_registry(change: impl FnOnce(&Path)) -> (tempfile::TempDir, Registry) {
    let dir = tempfile::tempdir().unwrap();
    copy_registry_files(&testkit::workspace_root().join("images"), dir.path());
    change(dir.path());
    let registry = Registry::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    (dir, registry)
}

fn edit_role(images: &Path, role: &str, edit: impl FnOnce(&mut DocumentMut)) {
    let path = images.join(role).join("role.toml");
    let mut doc: DocumentMut = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    edit(&mut doc);
    std::fs::write(&path, doc.to_string()).unwrap();
}

/// Sets the port of `role`'s service `service`.
fn set_service_port(doc: &mut DocumentMut, service: &str, port: i64) {
    let services = doc["services"].as_array_of_tables_mut().unwrap();
    let service = services
        .iter_mut()
        .find(|s| s["name"].as_str() == Some(service))
        .unwrap();
    service["port"] = toml_edit::value(port);
}

fn assert_reported(problems: &[String], expected: &[&str]) {
    for expected in expected {
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "expected a problem containing {expected:?}, got:\n{}",
            problems.join("\n")
        );
    }
}

#[test]
fn every_kind_of_disagreement_fails_the_check() {
    let terraform = parse_terraform(&terraform_dir());

    // A role Terraform does not know.
    let (_dir, registry) = changed_registry(|images| {
        std::fs::create_dir_all(images.join("tempo")).unwrap();
        std::fs::write(
            images.join("tempo/role.toml"),
            "role = \"tempo\"\n[peers.prometheus]\nport = 9090\nrequired = true\n\
             [[services]]\nname = \"tempo\"\nunit = \"tempo.service\"\nport = 3200\n\
             health = \"/ready\"\n",
        )
        .unwrap();
    });
    assert_reported(
        &disagreements(&terraform, &registry),
        &[
            "security.tf local.roles lacks the role(s) [\"tempo\"]",
            "security.tf local.security_group_ids lacks the role(s) [\"tempo\"]",
            "instances.tf local.peer_tags: tempo reads the peers {}",
            "no flow tempo -> prometheus on port 9090",
            "outputs.tf output.urls lacks the role(s) [\"tempo\"]",
            "variables.tf var.ami_ids validation lacks the role(s) [\"tempo\"]",
            "variables.tf var.instance_types validation lacks the role(s) [\"tempo\"]",
        ],
    );

    // A peer Terraform still tags.
    let (_dir, registry) = changed_registry(|images| {
        edit_role(images, "prometheus", |doc| {
            doc["peers"].as_table_like_mut().unwrap().remove("grafana");
        });
    });
    assert_reported(
        &disagreements(&terraform, &registry),
        &["instances.tf local.peer_tags: prometheus reads the peers"],
    );

    // A role that moved to another port.
    let (_dir, registry) = changed_registry(|images| {
        edit_role(images, "grafana", |doc| {
            set_service_port(doc, "grafana", 3001)
        });
        edit_role(images, "prometheus", |doc| {
            doc["peers"]["grafana"]["port"] = toml_edit::value(3001);
        });
    });
    assert_reported(
        &disagreements(&terraform, &registry),
        &[
            "outputs.tf output.urls: grafana on port 3000",
            "prometheus -> grafana on port 3000, but no service of grafana listens there",
            "no flow prometheus -> grafana on port 3001",
        ],
    );
    // The ports an expose_* variable opens.
    let (_dir, registry) = changed_registry(|images| {
        edit_role(images, "loki", |doc| set_service_port(doc, "loki", 3101));
        for reader in ["app", "prometheus", "grafana"] {
            edit_role(images, reader, |doc| {
                doc["peers"]["loki"]["port"] = toml_edit::value(3101);
            });
        }
    });
    assert_reported(
        &disagreements(&terraform, &registry),
        &["security.tf local.web_ports: loki on port 3100"],
    );

    // A role that is gone from images/.
    let (_dir, registry) = changed_registry(|images| {
        std::fs::remove_dir_all(images.join("grafana")).unwrap();
        edit_role(images, "prometheus", |doc| {
            doc["peers"].as_table_like_mut().unwrap().remove("grafana");
        });
    });
    assert_reported(
        &disagreements(&terraform, &registry),
        &[
            "security.tf local.roles names [\"grafana\"], not roles of images/",
            "instances.tf local.peer_tags: `grafana` is not a role of images/",
            "to `grafana` is not a role of images/",
            "outputs.tf output.urls names [\"grafana\"]",
        ],
    );
}

#[test]
fn every_stateful_role_keeps_all_its_data_on_its_data_volume() {
    let registry = checkout_registry();
    let mut stateful: Vec<&str> = Vec::new();
    for role in registry.roles() {
        let Some(data) = &role.data else { continue };
        stateful.push(&role.name);
        for service in &role.services {
            let Some(up) = &service.up else { continue };
            for dir in &up.data_dirs {
                assert!(
                    data.holds(dir),
                    "{}: {} keeps data in {dir}, off the volume at {}",
                    role.name,
                    service.name,
                    data.mount_point
                );
            }
            // The command line's data paths too (`--storage.tsdb.path={root}/var/lib/...`):
            // everything under /var is state, everything else is configuration.
            for arg in &up.args {
                let Some((_, path)) = arg.split_once("{root}") else {
                    continue;
                };
                if path.starts_with("/var/") {
                    assert!(
                        data.holds(path),
                        "{}: {} writes {path}, off the volume at {}",
                        role.name,
                        service.name,
                        data.mount_point
                    );
                }
            }
            if !up.data_dirs.is_empty() {
                assert!(data.services.contains(&service.unit), "{}", service.unit);
            }
        }
    }
    stateful.sort();
    assert_eq!(stateful, ["grafana", "loki", "prometheus"]);
    assert!(
        registry.role("app").unwrap().data.is_none(),
        "the app keeps no state"
    );
}

#[test]
fn a_data_path_off_the_volume_or_a_service_not_waiting_for_it_is_refused() {
    let load_changed = |edit: &dyn Fn(&mut DocumentMut)| {
        let dir = tempfile::tempdir().unwrap();
        copy_registry_files(&testkit::workspace_root().join("images"), dir.path());
        edit_role(dir.path(), "loki", edit);
        Registry::load(dir.path())
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert_eq!(load_changed(&|_| {}), Ok(()), "the unchanged copy loads");

    let error = load_changed(&|doc| {
        doc["services"][0]["up"]["data_dirs"] =
            toml_edit::value(toml_edit::Array::from_iter(["/srv/loki"]));
    })
    .unwrap_err();
    assert!(
        error.contains("keeps data in /srv/loki, on the root disk"),
        "{error}"
    );
    assert!(error.contains("loki/role.toml"), "{error}");

    let error = load_changed(&|doc| {
        doc["data"]["services"] = toml_edit::value(toml_edit::Array::from_iter(["other.service"]));
    })
    .unwrap_err();
    assert!(error.contains("would not wait for the volume"), "{error}");

    let error = load_changed(&|doc| {
        doc["data"]["mount_point"] = toml_edit::value("var/lib/loki");
    })
    .unwrap_err();
    assert!(error.contains("must be absolute"), "{error}");
}
