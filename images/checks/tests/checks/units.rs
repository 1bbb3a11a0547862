//! The systemd units of every image: systemd's own `systemd-analyze verify` over each image's
//! unit set (in a scratch root holding stand-ins for the binaries), and the hardening and
//! ordering every service must have.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use xtask::roles::{Registry, Role};

/// `images/` (the checkout's, or `OBSTACK_IMAGES_DIR`'s, as for xtask).
fn images_dir() -> PathBuf {
    xtask::project::images_dir()
}

/// The roles, and the systemd unit of each of their services, from the role registry.
fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        Registry::load(&images_dir()).unwrap_or_else(|e| panic!("the role registry: {e}"))
    })
}

fn roles() -> &'static [Role] {
    registry().roles()
}

/// Every role's own services' units (not the common ones), with the role whose image runs each.
fn role_services() -> Vec<(&'static str, &'static str)> {
    roles()
        .iter()
        .flat_map(|role| {
            role.services
                .iter()
                .map(move |s| (role.name.as_str(), s.unit.as_str()))
        })
        .collect()
}

fn unit_dir(tree: &str) -> PathBuf {
    images_dir().join(tree).join("rootfs/etc/systemd/system")
}

/// The units an image installs: common's, then its role's (a role may override one).
fn units_of(role: &str) -> BTreeMap<String, PathBuf> {
    let mut units = BTreeMap::new();
    for tree in ["common", role] {
        let Ok(entries) = std::fs::read_dir(unit_dir(tree)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_file() && (name.ends_with(".service") || name.ends_with(".timer")) {
                units.insert(name, path);
            }
        }
    }
    units
}

/// The drop-ins an image installs for unit `name` (`<name>.d/*.conf`), in the order systemd
/// applies them: by file name, a role's file replacing common's of the same name.
fn dropins_of(role: &str, name: &str) -> Vec<PathBuf> {
    let mut dropins = BTreeMap::new();
    for tree in ["common", role] {
        let Ok(entries) = std::fs::read_dir(unit_dir(tree).join(format!("{name}.d"))) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "conf") {
                dropins.insert(path.file_name().unwrap().to_os_string(), path);
            }
        }
    }
    dropins.into_values().collect()
}

/// Unit `name` of `role`'s image as systemd sees it: its file, then its drop-ins (a key set
/// again adds values; an empty assignment resets the list).
fn load_unit(role: &str, name: &str, path: &Path) -> Unit {
    let mut unit = parse_unit(path);
    for dropin in dropins_of(role, name) {
        for (section, keys) in parse_unit(&dropin) {
            for (key, values) in keys {
                let list = unit
                    .entry(section.clone())
                    .or_default()
                    .entry(key)
                    .or_default();
                for value in values {
                    if value.is_empty() {
                        list.clear();
                    }
                    list.push(value);
                }
            }
        }
    }
    unit
}

/// A unit file as section -> key -> values (a key may repeat), with `\` continuations joined.
type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn parse_unit(path: &Path) -> Unit {
    let text = std::fs::read_to_string(path).unwrap();
    let mut unit = Unit::new();
    let mut section = String::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
        {
            continue;
        }
        if let Some(stripped) = line.strip_suffix('\\') {
            pending.push_str(stripped);
            pending.push(' ');
            continue;
        }
        let line = format!("{pending}{line}");
        pending.clear();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{}: not key=value: {line}", path.display()));
        unit.entry(section.clone())
            .or_default()
            .entry(key.trim().to_string())
            .or_default()
            .push(value.trim().to_string());
    }
    unit
}

fn values<'a>(unit: &'a Unit, section: &str, key: &str) -> Vec<&'a str> {
    unit.get(section)
        .and_then(|s| s.get(key))
        .map(|v| v.iter().flat_map(|v| v.split_whitespace()).collect())
        .unwrap_or_default()
}

fn single<'a>(unit: &'a Unit, section: &str, key: &str) -> Option<&'a str> {
    unit.get(section)
        .and_then(|s| s.get(key))
        .and_then(|v| v.last())
        .map(String::as_str)
}

/// Every absolute program an Exec*= line starts (after systemd's `-@:+!` prefixes).
fn executables(unit: &Unit) -> Vec<String> {
    let mut programs = Vec::new();
    if let Some(service) = unit.get("Service") {
        for (key, lines) in service {
            if key.starts_with("Exec") {
                for line in lines {
                    let program = line.split_whitespace().next().unwrap_or_default();
                    programs.push(
                        program
                            .trim_start_matches(['-', '@', ':', '+', '!'])
                            .to_string(),
                    );
                }
            }
        }
    }
    programs
}

/// A scratch root for `systemd-analyze verify --root`: the host's own systemd units (for
/// targets like multi-user.target), the image's units, and an executable stand-in at each
/// path an Exec*= line names. `skip` leaves one program out, to prove verify notices.
fn scratch_root(role: &str, skip: Option<&str>) -> (tempfile::TempDir, Vec<PathBuf>) {
    let root = tempfile::tempdir().unwrap();
    let system_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("multi-user.target").exists())
        .expect("the host's systemd units (multi-user.target) for systemd-analyze verify");
    std::fs::create_dir_all(root.path().join("usr/lib/systemd")).unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(system_units)
        .arg(root.path().join("usr/lib/systemd/system"))
        .status()
        .unwrap();
    assert!(
        status.success(),
        "copying {} failed",
        system_units.display()
    );

    let unit_dir = root.path().join("etc/systemd/system");
    std::fs::create_dir_all(&unit_dir).unwrap();
    let mut installed = Vec::new();
    for (name, path) in units_of(role) {
        let target = unit_dir.join(&name);
        std::fs::copy(&path, &target).unwrap();
        let dropins = dropins_of(role, &name);
        if !dropins.is_empty() {
            let dir = unit_dir.join(format!("{name}.d"));
            std::fs::create_dir_all(&dir).unwrap();
            for dropin in dropins {
                std::fs::copy(&dropin, dir.join(dropin.file_name().unwrap())).unwrap();
            }
        }
        for program in executables(&load_unit(role, &name, &path)) {
            if Some(program.as_str()) == skip {
                continue;
            }
            let stand_in = root.path().join(program.trim_start_matches('/'));
            std::fs::create_dir_all(stand_in.parent().unwrap()).unwrap();
            std::fs::write(&stand_in, "#!/bin/sh\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        installed.push(target);
    }
    (root, installed)
}

/// Unit `name` of `role`'s image, drop-ins applied.
fn image_unit(role: &str, name: &str) -> Unit {
    let units = units_of(role);
    let path = units
        .get(name)
        .unwrap_or_else(|| panic!("{role}'s image has no {name}"));
    load_unit(role, name, path)
}

fn verify(root: &Path, units: &[PathBuf]) -> std::process::Output {
    Command::new(testkit::require_tool("systemd-analyze"))
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(units)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .expect("run systemd-analyze verify")
}

#[test]
fn systemd_analyze_verifies_every_images_units() {
    for role in roles() {
        let role = role.name.as_str();
        let (root, units) = scratch_root(role, None);
        assert!(units.len() >= 4, "{role}: only {units:?}");
        let output = verify(root.path(), &units);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "systemd-analyze verify ({role}):\n{stderr}"
        );
        // verify only warns about unknown settings; a typo must still fail this test.
        assert!(!stderr.contains("Unknown key"), "{role}: {stderr}");
        assert!(!stderr.contains("Unknown section"), "{role}: {stderr}");
    }
}

#[test]
fn systemd_analyze_as_run_here_notices_a_missing_binary() {
    let (root, units) = scratch_root("loki", Some("/usr/local/bin/loki"));
    let output = verify(root.path(), &units);
    assert!(
        !output.status.success(),
        "verify passed without /usr/local/bin/loki"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("/usr/local/bin/loki"));
}

#[test]
fn every_role_service_exists_in_its_image_and_waits_for_the_rendered_configs() {
    let services = role_services();
    assert!(services.len() >= roles().len(), "{services:?}");
    for (role, service) in services {
        let units = units_of(role);
        let path = units
            .get(service)
            .unwrap_or_else(|| panic!("{role} has no {service}"));
        let unit = load_unit(role, service, path);
        for key in ["Requires", "After"] {
            assert!(
                values(&unit, "Unit", key).contains(&"stack-agent-render.service"),
                "{service}: {key}= must name stack-agent-render.service"
            );
        }
        assert_eq!(
            single(&unit, "Install", "WantedBy"),
            Some("multi-user.target"),
            "{service}"
        );
    }
}

#[test]
fn every_service_runs_as_its_own_user_hardened_and_restarting_on_failure() {
    let mut users = BTreeMap::new();
    for role in roles() {
        let role = role.name.as_str();
        for (name, path) in units_of(role) {
            let unit = load_unit(role, &name, &path);
            let agent = name.starts_with("stack-agent-");
            if !agent {
                let user =
                    single(&unit, "Service", "User").unwrap_or_else(|| panic!("{name}: no User="));
                assert_ne!(user, "root", "{name} runs as root");
                if let Some(other) = users.insert(user.to_string(), name.clone()) {
                    assert_eq!(other, name, "{name} and {other} share the user {user}");
                }
                assert!(
                    values(&unit, "Service", "CapabilityBoundingSet").is_empty()
                        && unit["Service"].contains_key("CapabilityBoundingSet"),
                    "{name}: CapabilityBoundingSet= must be empty"
                );
            }
            let expect = |key: &str, allowed: &[&str]| {
                let value = single(&unit, "Service", key);
                assert!(
                    value.is_some_and(|v| allowed.contains(&v)),
                    "{name}: {key}={value:?}, expected one of {allowed:?}"
                );
            };
            expect("NoNewPrivileges", &["yes", "true"]);
            // The mount step must mount in the host's namespace: checked on its own below.
            if name != MOUNT_UNIT {
                expect("ProtectSystem", &["strict"]);
                expect("ProtectHome", &["yes", "true", "read-only", "tmpfs"]);
                expect("PrivateTmp", &["yes", "true"]);
            }
            if single(&unit, "Service", "Type") != Some("oneshot") {
                expect("Restart", &["on-failure"]);
            }
            // Writable paths only where a service keeps state, and never the whole system.
            for path in values(&unit, "Service", "ReadWritePaths") {
                let path = path.trim_start_matches('-');
                assert!(
                    !["/", "/etc", "/var", "/usr", "/home"].contains(&path),
                    "{name}: ReadWritePaths={path} undoes ProtectSystem=strict"
                );
            }
        }
    }
    assert!(users.len() >= 6, "one user per service: {users:?}");
}

#[test]
fn the_render_unit_is_a_oneshot_before_every_role_service_after_the_network() {
    // Each image's render unit (common's, with the role's drop-ins) comes before that
    // image's services.
    for (role, service) in role_services() {
        let render = image_unit(role, "stack-agent-render.service");
        let before = values(&render, "Unit", "Before");
        assert!(
            before.contains(&service),
            "{role}: stack-agent-render.service: Before= lacks {service} (add it in a drop-in, \
             images/{role}/rootfs/etc/systemd/system/stack-agent-render.service.d/)"
        );
    }
    let render = image_unit("app", "stack-agent-render.service");
    assert_eq!(single(&render, "Service", "Type"), Some("oneshot"));
    assert_eq!(single(&render, "Service", "RemainAfterExit"), Some("yes"));
    assert!(values(&render, "Unit", "After").contains(&"network-online.target"));
    assert!(values(&render, "Unit", "Wants").contains(&"network-online.target"));
    let exec = single(&render, "Service", "ExecStart").unwrap();
    assert!(
        exec.contains(" render ") && exec.contains("--tags-from imds"),
        "{exec}"
    );

    let watch = image_unit("app", "stack-agent-watch.service");
    assert!(values(&watch, "Unit", "After").contains(&"stack-agent-render.service"));
    assert!(single(&watch, "Service", "ExecStart")
        .unwrap()
        .contains(" watch "));
}

/// The agent's oneshot that mounts the role's data volume.
const MOUNT_UNIT: &str = "stack-agent-mount.service";

/// Settings that give a unit a mount namespace of its own (a mount made inside would never
/// reach the services) or fence off devices (it formats /dev/nvme*), or its network (IMDS).
const NAMESPACING: &[&str] = &[
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "PrivateMounts",
    "PrivateNetwork",
    "MountFlags",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    "ExecPaths",
    "NoExecPaths",
    "TemporaryFileSystem",
    "BindPaths",
    "BindReadOnlyPaths",
    "RootDirectory",
    "RootImage",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectClock",
    "ProtectProc",
    "ProcSubset",
    "DevicePolicy",
    "DeviceAllow",
    "StateDirectory",
    "LogsDirectory",
];

#[test]
fn the_mount_unit_mounts_in_the_hosts_namespace_before_the_agent_and_the_stateful_services() {
    let mount = image_unit("app", MOUNT_UNIT);
    assert_eq!(single(&mount, "Service", "Type"), Some("oneshot"));
    assert_eq!(single(&mount, "Service", "RemainAfterExit"), Some("yes"));
    let exec = single(&mount, "Service", "ExecStart").unwrap();
    assert!(
        exec.contains(" mount ") && exec.contains("--tags-from imds"),
        "{exec}"
    );
    for key in NAMESPACING {
        assert!(
            !mount["Service"].contains_key(*key),
            "{MOUNT_UNIT}: {key}= would hide its mount from the services or the devices from it"
        );
    }
    assert!(values(&mount, "Unit", "After").contains(&"network-online.target"));
    // systemd never stops the step halfway (an e2fsck, a resize2fs, a late attachment):
    // the agent bounds its own waits.
    assert_eq!(
        single(&mount, "Service", "TimeoutStartSec"),
        Some("infinity"),
        "{MOUNT_UNIT}: the agent's waits and checks outlast any fixed start timeout"
    );
    // Installed and enabled on every image: a role without [data] passes at once.
    assert_eq!(
        single(&mount, "Install", "WantedBy"),
        Some("multi-user.target")
    );

    // The agent writes onto the volume (Grafana's secret key): after it, and only with it.
    for role in roles() {
        for name in ["stack-agent-render.service", "stack-agent-watch.service"] {
            let unit = image_unit(&role.name, name);
            for key in ["Requires", "After"] {
                assert!(
                    values(&unit, "Unit", key).contains(&MOUNT_UNIT),
                    "{}: {name}: {key}= must name {MOUNT_UNIT}",
                    role.name
                );
            }
        }
    }

    // Every unit keeping data on the volume waits for it and needs it.
    let mut stateful = 0;
    for role in roles() {
        let spec = stack_agent::RoleSpec::load(&images_dir(), &role.name)
            .unwrap_or_else(|e| panic!("role `{}`: {e}", role.name));
        let Some(data) = spec.data else { continue };
        stateful += 1;
        for service in &data.services {
            let unit = image_unit(&role.name, service);
            for key in ["Requires", "After"] {
                assert!(
                    values(&unit, "Unit", key).contains(&MOUNT_UNIT),
                    "{}: {service}: {key}= must name {MOUNT_UNIT}",
                    role.name
                );
            }
            let mounts = values(&unit, "Unit", "RequiresMountsFor");
            assert!(
                mounts.iter().any(|path| data.holds(path)),
                "{}: {service}: RequiresMountsFor= must name its data path under {} \
                 (has {mounts:?})",
                role.name,
                data.mount_point
            );
        }
    }
    assert!(
        stateful >= 3,
        "prometheus, loki and grafana keep data: {stateful}"
    );
}

/// Every path the agent writes for `role` (rendered files, secrets, generated secrets).
fn agent_written_paths(role: &str) -> Vec<String> {
    let spec = stack_agent::RoleSpec::load(&images_dir(), role)
        .unwrap_or_else(|e| panic!("role `{role}`: {e}"));
    spec.files
        .iter()
        .map(|f| f.path.clone())
        .chain(spec.secrets.iter().map(|s| s.path.clone()))
        .chain(spec.generated.iter().map(|g| g.path.clone()))
        .collect()
}

#[test]
fn the_agent_units_may_write_every_file_their_role_renders() {
    // ProtectSystem=strict: the agent can write only under its units' ReadWritePaths=, so a
    // role whose files lie elsewhere needs a drop-in naming their directory.
    let mut checked = 0;
    for role in roles() {
        let role = role.name.as_str();
        for name in ["stack-agent-render.service", "stack-agent-watch.service"] {
            let unit = image_unit(role, name);
            let writable: Vec<&str> = values(&unit, "Service", "ReadWritePaths")
                .into_iter()
                .map(|p| p.trim_start_matches('-'))
                .collect();
            for path in agent_written_paths(role) {
                assert!(
                    writable.iter().any(|dir| Path::new(&path).starts_with(dir)),
                    "{role}: {name} may not write {path} (ReadWritePaths={writable:?}); add its \
                     directory in a drop-in, images/{role}/rootfs/etc/systemd/system/{name}.d/"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 2 * roles().len(), "only {checked} paths checked");
}

#[test]
fn prometheus_keeps_its_admin_and_lifecycle_apis_off() {
    let unit = image_unit("prometheus", "prometheus.service");
    let exec = single(&unit, "Service", "ExecStart").unwrap();
    assert!(
        exec.contains("--config.file=/etc/prometheus/prometheus.yml"),
        "{exec}"
    );
    for flag in ["--web.enable-admin-api", "--web.enable-lifecycle"] {
        assert!(!exec.contains(flag), "prometheus.service enables {flag}");
    }
}
