//! What a booted instance needs from the provisioned root, each check returning the problems
//! it found (every one of them, not just the first) as one line each.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use xtask::roles::Role;

use super::builder::{self, JOURNAL_BYTES};
use super::root::{base, Root};

/// A unit file as section -> key -> values (a key may repeat).
type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn parse_unit(text: &str) -> Unit {
    let mut unit = Unit::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
        } else if let Some((key, value)) = line.split_once('=') {
            unit.entry(section.clone())
                .or_default()
                .entry(key.trim().to_string())
                .or_default()
                .push(value.trim().to_string());
        }
    }
    unit
}

fn values<'u>(unit: &'u Unit, section: &str, key: &str) -> impl Iterator<Item = &'u String> {
    unit.get(section)
        .and_then(|s| s.get(key))
        .into_iter()
        .flatten()
}

/// The units installed in the root's /etc/systemd/system (files, not enablement links).
pub fn installed_units(root: &Root) -> BTreeMap<String, (PathBuf, Unit)> {
    let dir = root.join("/etc/systemd/system");
    let mut units = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let is_unit = [".service", ".timer", ".socket", ".mount", ".path"]
            .iter()
            .any(|suffix| name.ends_with(suffix));
        if is_unit && path.symlink_metadata().unwrap().file_type().is_file() {
            let unit = parse_unit(&std::fs::read_to_string(&path).unwrap());
            units.insert(name, (path, unit));
        }
    }
    units
}

/// `name:...` lines of an /etc/passwd-style file, by name.
fn entries(root: &Root, file: &str) -> BTreeMap<String, Vec<String>> {
    std::fs::read_to_string(root.join(file))
        .unwrap_or_default()
        .lines()
        .map(|line| line.split(':').map(str::to_string).collect::<Vec<_>>())
        .map(|fields| (fields[0].clone(), fields))
        .collect()
}

/// Service users and groups: every User=/Group= of an installed unit, every owner and group
/// the role's spec gives a rendered, secret or generated file, exist; the services' users are
/// locked system accounts with no shell and no home.
pub fn users_and_groups(root: &Root, role: &Role) -> Vec<String> {
    let mut problems = Vec::new();
    let passwd = entries(root, "/etc/passwd");
    let groups = entries(root, "/etc/group");
    let shadow = entries(root, "/etc/shadow");
    let mut users = BTreeSet::new();
    let mut group_names = BTreeSet::new();
    for (name, (_, unit)) in installed_units(root) {
        for user in values(&unit, "Service", "User") {
            users.insert((user.clone(), name.clone()));
        }
        for group in
            values(&unit, "Service", "Group").chain(values(&unit, "Service", "SupplementaryGroups"))
        {
            for group in group.split_whitespace() {
                group_names.insert((group.to_string(), name.clone()));
            }
        }
    }
    let spec_path = role.dir.join("role.toml");
    let spec: toml::Value = toml::from_str(&std::fs::read_to_string(&spec_path).unwrap()).unwrap();
    for kind in ["files", "secrets", "generated"] {
        for file in spec
            .get(kind)
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            let path = file.get("path").and_then(|v| v.as_str()).unwrap_or("?");
            let whose = format!("{path} in images/{}/role.toml", role.name);
            if let Some(owner) = file.get("owner").and_then(|v| v.as_str()) {
                if !passwd.contains_key(owner) {
                    problems.push(format!("user {owner} (owner of {whose}) does not exist"));
                }
            }
            if let Some(group) = file.get("group").and_then(|v| v.as_str()) {
                group_names.insert((group.to_string(), whose));
            }
        }
    }
    for (group, whose) in group_names {
        if !groups.contains_key(&group) {
            problems.push(format!("group {group} (for {whose}) does not exist"));
        }
    }
    for (user, unit) in users {
        let Some(fields) = passwd.get(&user) else {
            problems.push(format!("user {user} (User= of {unit}) does not exist"));
            continue;
        };
        if user == "root" {
            continue;
        }
        let uid: u32 = fields[2].parse().unwrap_or(u32::MAX);
        let (home, shell) = (&fields[5], &fields[6]);
        if uid >= 1000 {
            problems.push(format!(
                "user {user} (of {unit}) is not a system account: uid {uid}"
            ));
        }
        if !shell.ends_with("/nologin") && !shell.ends_with("/false") {
            problems.push(format!(
                "user {user} (of {unit}) has a login shell: {shell}"
            ));
        }
        if builder::exists(root, home) && home != "/nonexistent" {
            problems.push(format!(
                "user {user} (of {unit}) has a home directory: {home}"
            ));
        }
        let password = shadow.get(&user).map(|f| f[1].as_str()).unwrap_or("");
        if !(password.starts_with('!') || password.starts_with('*')) {
            problems.push(format!("user {user} (of {unit}) has a usable password"));
        }
    }
    problems
}

/// Fixed ids: every service user of the role registry (the role's `[users]` and
/// images/common's) exists with exactly its id as uid, its own group as primary group, and
/// that group with the same id as gid; every `User=` and `Group=` of an installed unit
/// (root aside) is one of them, so no service runs under an id a rebake could move.
pub fn fixed_ids(root: &Root, role: &Role) -> Vec<String> {
    let mut problems = Vec::new();
    let passwd = entries(root, "/etc/passwd");
    let groups = entries(root, "/etc/group");
    let registered = role.image_users();
    for (name, id) in &registered {
        let id = id.to_string();
        match passwd.get(name) {
            None => problems.push(format!("user {name} (registry id {id}) does not exist")),
            Some(fields) => {
                if fields[2] != id || fields[3] != id {
                    problems.push(format!(
                        "user {name} has uid {} and gid {}, not its fixed {id}",
                        fields[2], fields[3]
                    ));
                }
            }
        }
        match groups.get(name) {
            None => problems.push(format!("group {name} (registry id {id}) does not exist")),
            Some(fields) if fields[2] != id => problems.push(format!(
                "group {name} has gid {}, not its fixed {id}",
                fields[2]
            )),
            Some(_) => {}
        }
    }
    for (unit_name, (_, unit)) in installed_units(root) {
        for key in ["User", "Group"] {
            for name in values(&unit, "Service", key) {
                if name != "root" && !registered.contains_key(name) {
                    problems.push(format!(
                        "{unit_name} runs as {key}={name}, which has no fixed id in the role \
                         registry ([users] of images/{}/role.toml or images/common/services.toml)",
                        role.name
                    ));
                }
            }
        }
    }
    problems
}

fn mode(path: &Path) -> Option<(u32, u32, u32)> {
    let meta = path.metadata().ok()?;
    Some((meta.uid(), meta.gid(), meta.permissions().mode() & 0o7777))
}

/// Static files: every file of images/common/rootfs and images/<role>/rootfs (the role's
/// winning) is at its path with the same bytes, root-owned and writable by root alone.
pub fn static_files(root: &Root, role: &Role, images: &Path) -> Vec<String> {
    let mut files = BTreeMap::new();
    for tree in [images.join("common/rootfs"), role.dir.join("rootfs")] {
        for entry in walkdir::WalkDir::new(&tree).into_iter().flatten() {
            if entry.file_type().is_file() {
                let rel = entry.path().strip_prefix(&tree).unwrap().to_path_buf();
                files.insert(rel, entry.path().to_path_buf());
            }
        }
    }
    let mut problems = Vec::new();
    for (rel, source) in files {
        let target = root.path().join(&rel);
        let shown = format!("/{}", rel.display());
        match mode(&target) {
            None => problems.push(format!("{shown} is missing")),
            Some((uid, _, mode)) => {
                if std::fs::read(&target).ok() != std::fs::read(&source).ok() {
                    problems.push(format!("{shown} differs from {}", source.display()));
                }
                if uid != 0 {
                    problems.push(format!("{shown} is owned by uid {uid}, not root"));
                }
                if mode & 0o022 != 0 {
                    problems.push(format!("{shown} is group/world-writable (mode {mode:04o})"));
                }
            }
        }
    }
    problems
}

/// Units: root-owned, enabled as their [Install] section says, every Exec*= program present,
/// root-owned and executable, and the whole set passing `systemd-analyze verify` against the
/// root.
pub fn units(root: &Root) -> Vec<String> {
    let mut problems = Vec::new();
    let units = installed_units(root);
    for (name, (path, unit)) in &units {
        if let Some((uid, _, mode)) = mode(path) {
            if uid != 0 || mode & 0o022 != 0 {
                problems.push(format!("{name}: owner uid {uid}, mode {mode:04o}"));
            }
        }
        for key in ["WantedBy", "RequiredBy"] {
            for target in values(unit, "Install", key).flat_map(|v| v.split_whitespace()) {
                let suffix = if key == "WantedBy" {
                    "wants"
                } else {
                    "requires"
                };
                let link = format!("/etc/systemd/system/{target}.{suffix}/{name}");
                if !builder::exists(root, &link) {
                    problems.push(format!("{name} is not enabled: no {link}"));
                }
            }
        }
        let exec_keys = [
            "ExecStartPre",
            "ExecStart",
            "ExecStartPost",
            "ExecReload",
            "ExecStop",
        ];
        for key in exec_keys {
            for line in values(unit, "Service", key) {
                let program = line
                    .trim_start_matches(['-', '@', ':', '+', '!'])
                    .split_whitespace()
                    .next()
                    .unwrap_or("");
                if !program.starts_with('/') {
                    continue;
                }
                match mode(&root.join(program)) {
                    None => problems.push(format!("{name}: {key} program {program} is missing")),
                    Some((uid, _, mode)) => {
                        if mode & 0o111 == 0 || uid != 0 || mode & 0o022 != 0 {
                            problems.push(format!(
                                "{name}: {program} has owner uid {uid}, mode {mode:04o} (want root, executable, not group/world-writable)"
                            ));
                        }
                    }
                }
            }
        }
    }
    let paths: Vec<String> = units
        .keys()
        .map(|name| format!("/etc/systemd/system/{name}"))
        .collect();
    let output = Command::new(testkit::require_tool("systemd-analyze"))
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .args(&paths)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .expect("run systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() || stderr.contains("Unknown key") {
        problems.push(format!(
            "systemd-analyze verify --root over {}: exit {:?}: {}",
            paths.join(" "),
            output.status.code(),
            stderr.trim()
        ));
    }
    problems
}

/// The workspace binaries the role ships: at /usr/local/bin, the very builds uploaded,
/// root-owned 0755.
pub fn shipped_binaries(root: &Root, role: &Role, artifacts: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for binary in role.shipped_binaries() {
        let path = format!("/usr/local/bin/{binary}");
        match mode(&root.join(&path)) {
            None => problems.push(format!("{path} is missing")),
            Some((uid, _, mode)) => {
                if (uid, mode) != (0, 0o755) {
                    problems.push(format!(
                        "{path}: owner uid {uid}, mode {mode:04o}, want root 0755"
                    ));
                }
                if std::fs::read(root.join(&path)).ok()
                    != std::fs::read(artifacts.join(&binary)).ok()
                {
                    problems.push(format!("{path} is not the build that was uploaded"));
                }
            }
        }
    }
    problems
}

/// The agent's spec directory: the role's role.toml and every template, as in images/, and
/// the role named in /etc/default/stack-agent for the units.
pub fn agent_spec(root: &Root, role: &Role) -> Vec<String> {
    let mut problems = Vec::new();
    let spec_dir = format!("/usr/share/stack-agent/roles/{}", role.name);
    let mut expected = vec![(format!("{spec_dir}/role.toml"), role.dir.join("role.toml"))];
    if let Ok(templates) = std::fs::read_dir(role.dir.join("templates")) {
        for entry in templates.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            expected.push((format!("{spec_dir}/templates/{name}"), entry.path()));
        }
    }
    for (path, source) in expected {
        match mode(&root.join(&path)) {
            None => problems.push(format!("{path} is missing")),
            Some((uid, _, mode)) => {
                if std::fs::read(root.join(&path)).ok() != std::fs::read(&source).ok() {
                    problems.push(format!("{path} differs from {}", source.display()));
                }
                if uid != 0 || mode & 0o022 != 0 {
                    problems.push(format!("{path}: owner uid {uid}, mode {mode:04o}"));
                }
            }
        }
    }
    let defaults =
        std::fs::read_to_string(root.join("/etc/default/stack-agent")).unwrap_or_default();
    if !defaults
        .lines()
        .any(|l| l == format!("OBSTACK_ROLE={}", role.name))
    {
        problems.push(format!(
            "/etc/default/stack-agent does not say OBSTACK_ROLE={}: {defaults:?}",
            role.name
        ));
    }
    problems
}

/// Names in `dir` (inside a root), or none if it does not exist.
fn listing(root: &Path, dir: &str) -> BTreeSet<String> {
    std::fs::read_dir(root.join(dir.trim_start_matches('/')))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// What cleanup.sh must leave: an empty machine-id, no SSH host keys, no cloud-init state or
/// logs, no authorized key or shell history, no staging or temporary files, no apt indexes,
/// and the live journal file untouched.
pub fn cleaned_up(root: &Root, journal: &str) -> Vec<String> {
    let mut problems = Vec::new();
    match std::fs::read(root.join("/etc/machine-id")) {
        Ok(id) if id.is_empty() => {}
        Ok(id) => problems.push(format!(
            "/etc/machine-id is not empty: {}",
            String::from_utf8_lossy(&id).trim()
        )),
        Err(e) => problems.push(format!(
            "/etc/machine-id: {e} (systemd wants it present and empty)"
        )),
    }
    for name in listing(root.path(), "/etc/ssh") {
        if name.starts_with("ssh_host_") {
            problems.push(format!("SSH host key /etc/ssh/{name} is left"));
        }
    }
    for name in listing(root.path(), "/var/lib/cloud") {
        problems.push(format!("cloud-init state /var/lib/cloud/{name} is left"));
    }
    for log in ["/var/log/cloud-init.log", "/var/log/cloud-init-output.log"] {
        if std::fs::metadata(root.join(log)).is_ok_and(|m| m.len() > 0) {
            problems.push(format!("{log} still holds the bake's cloud-init log"));
        }
    }
    let mut homes = vec!["/root".to_string()];
    homes.extend(
        listing(root.path(), "/home")
            .into_iter()
            .map(|h| format!("/home/{h}")),
    );
    for home in homes {
        for name in listing(root.path(), &home) {
            if name.ends_with("_history") {
                problems.push(format!("shell history {home}/{name} is left"));
            }
        }
        if builder::exists(root, &format!("{home}/.ssh/authorized_keys")) {
            problems.push(format!("{home}/.ssh/authorized_keys is left"));
        }
    }
    for dir in ["/tmp", "/var/tmp"] {
        let before = listing(base(), dir);
        for name in listing(root.path(), dir).difference(&before) {
            problems.push(format!("temporary file {dir}/{name} is left"));
        }
    }
    for name in listing(root.path(), "/var/lib/apt/lists") {
        if name != "lock" && name != "partial" {
            problems.push(format!("apt index /var/lib/apt/lists/{name} is left"));
        }
    }
    for name in listing(root.path(), "/var/cache/apt/archives") {
        if name.ends_with(".deb") {
            problems.push(format!(
                "downloaded package /var/cache/apt/archives/{name} is left"
            ));
        }
    }
    match std::fs::read(root.join(journal)) {
        Ok(bytes) if bytes == JOURNAL_BYTES => {}
        Ok(bytes) => problems.push(format!(
            "the live journal file {journal} was changed ({} bytes left of {})",
            bytes.len(),
            JOURNAL_BYTES.len()
        )),
        Err(e) => problems.push(format!("the live journal file {journal} is gone: {e}")),
    }
    problems
}

/// After a refused download: nothing of `executables` anywhere in the root, no archive or
/// temporary directory left in /tmp or /var/tmp, no system user named after the component.
pub fn nothing_installed(
    root: &Root,
    component: &str,
    executables: &[String],
    archive: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    for dir in ["/usr/local", "/opt", "/usr/bin", "/usr/sbin"] {
        for entry in walkdir::WalkDir::new(root.join(dir)).into_iter().flatten() {
            let name = entry.file_name().to_string_lossy();
            if executables.iter().any(|e| *e == name) {
                problems.push(format!(
                    "{} of the refused download is installed at /{}",
                    name,
                    entry.path().strip_prefix(root.path()).unwrap().display()
                ));
            }
        }
    }
    for dir in ["/tmp", "/var/tmp"] {
        let before = listing(base(), dir);
        for name in listing(root.path(), dir).difference(&before) {
            // The staging directory is the bake's own and is still expected mid-bake.
            if name != "obstack" && !name.starts_with("script_") {
                problems.push(format!("{dir}/{name} is left after the refused download"));
            }
        }
        for entry in walkdir::WalkDir::new(root.join(dir)).into_iter().flatten() {
            if entry.file_name().to_string_lossy() == archive {
                problems.push(format!(
                    "the refused download {} is left",
                    entry.path().display()
                ));
            }
        }
    }
    if entries(root, "/etc/passwd").contains_key(component) {
        problems.push(format!(
            "system user {component} was created for the refused download"
        ));
    }
    problems
}
