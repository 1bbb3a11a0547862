//! The role registry: every image role and what it is, read from `images/<role>/role.toml`.
//!
//! A role is a directory under `images/` holding a `role.toml`. The agent reads that file's
//! `peers`, `files`, `secrets` and `generated` sections on the instance; the sections read
//! here (`image`, `services`, `users`) are xtask's and the image checks' business, and the
//! agent skips them. Services every image runs (node_exporter), and their users, are
//! declared once, in `images/common/services.toml`.
//!
//! Nothing else in the workspace lists the roles: xtask, the image checks and the tests
//! enumerate them from a [`Registry`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use stack_agent::data::DataSpec;

/// A role's spec file inside its directory (the agent's `stack_agent::spec::SPEC_FILE`).
pub const SPEC_FILE: &str = "role.toml";
/// The services every image runs, whatever its role.
pub const COMMON_SERVICES_FILE: &str = "common/services.toml";
/// The binary every image ships: the boot agent.
pub const AGENT_BINARY: &str = "stack-agent";

/// Why the registry cannot be read; each names the file and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid role file: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("no role under {0}: every role is a directory images/<role>/ with a role.toml")]
    Empty(PathBuf),
    #[error("unknown role `{role}`: expected one of {known}")]
    UnknownRole { role: String, known: String },
}

/// Every role of the stack, in start order: a role comes after the roles it requires as
/// peers (Loki before the app that ships logs to it, Prometheus after the app it scrapes).
#[derive(Debug, Clone)]
pub struct Registry {
    images_dir: PathBuf,
    roles: Vec<Role>,
    common_services: Vec<Service>,
    /// The users every image has (node_exporter's), by name: their fixed ids.
    common_users: BTreeMap<String, u32>,
}

/// One image role.
#[derive(Debug, Clone)]
pub struct Role {
    pub name: String,
    /// `images/<role>/`.
    pub dir: PathBuf,
    /// The peers the agent reads (`obstack:peer:<name>` tags), by role name.
    pub peers: BTreeMap<String, Peer>,
    pub image: Image,
    /// The services this role's image runs besides the common ones, in start order.
    pub services: Vec<Service>,
    /// Where the role keeps its state: its EBS data volume (`[data]`, shared with the agent,
    /// which mounts it). `None` for a stateless role.
    pub data: Option<DataSpec>,
    /// The image's own service users (each with a group of the same name) and the fixed id
    /// the provisioners give both (`[users]`).
    pub users: BTreeMap<String, u32>,
    /// The users every image has (images/common/services.toml's `[users]`).
    pub common_users: BTreeMap<String, u32>,
    /// Where the role's AMI change goes in a role-by-role roll-out (`[deploy]
    /// rollout_order`, lower first); `None` rolls out after every role that has one.
    pub rollout_order: Option<u32>,
}

/// How `cargo xtask deploy` treats the role (the `[deploy]` section).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploySpec {
    #[serde(default)]
    rollout_order: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub port: u16,
    #[serde(default)]
    pub required: bool,
    /// The agent does not require the peer on an instance carrying this tag (the app
    /// fleet's tag on Prometheus); `up` never sets it, so there the peer stays required.
    #[serde(default)]
    pub unless_tag: Option<String>,
}

/// What the image ships besides its directory and its `images/versions.toml` entries.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// Binaries built from this workspace (release profile) and shipped besides the agent.
    #[serde(default)]
    pub binaries: Vec<String>,
}

/// A long-running service of an image.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Short name shown to users (`ps`, `status`) and used by `up`'s state file.
    pub name: String,
    /// Its systemd unit on the image.
    pub unit: String,
    /// The TCP port it listens on, on the image and locally.
    pub port: u16,
    /// An HTTP path that answers 2xx once the service is ready.
    pub health: String,
    /// How `cargo xtask up` runs it on this machine; absent when `up` cannot.
    #[serde(default)]
    pub up: Option<UpSpec>,
}

/// How `cargo xtask up` runs a service: the command line of its systemd unit, with paths
/// under the local stack's root.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpSpec {
    /// `workspace` (built from this checkout) or `upstream` (a pinned release).
    pub from: BinarySource,
    /// For `workspace`: `cargo build -p <package> --bin <bin>`.
    #[serde(default)]
    pub package: Option<String>,
    #[serde(default)]
    pub bin: Option<String>,
    /// For `upstream`: explicit path (`--<name>` flag or `STACK_<NAME>_BIN`), then PATH,
    /// then the pinned download of `images/versions.toml`'s `component`.
    #[serde(default)]
    pub component: Option<String>,
    /// Names to look for on PATH, in order (distribution packages rename some).
    #[serde(default)]
    pub path_names: Vec<String>,
    /// Names of the executable inside the release archive.
    #[serde(default)]
    pub archive_names: Vec<String>,
    /// Arguments; `{root}` is the local stack's root directory, `{listen}` the service's
    /// loopback address, `{env:NAME}` a value of its environment file (else `{listen}`).
    #[serde(default)]
    pub args: Vec<String>,
    /// The unit's `EnvironmentFile=` (rendered by the agent), read for `{env:NAME}` and
    /// passed to the process.
    #[serde(default)]
    pub env_file: Option<String>,
    /// Directories it writes to, created before it starts.
    #[serde(default)]
    pub data_dirs: Vec<String>,
    /// Services it is useless without (its config points at them): `up` leaves it out, and
    /// says why, when one of them does not run.
    #[serde(default)]
    pub needs: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BinarySource {
    Workspace,
    Upstream,
}

/// Where a service's binary comes from, checked: [`UpSpec::binary`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binary<'a> {
    Workspace {
        package: &'a str,
        bin: &'a str,
    },
    Upstream {
        component: &'a str,
        path_names: &'a [String],
        archive_names: &'a [String],
    },
}

impl UpSpec {
    /// The binary's source with the fields its kind needs, or which one is missing.
    pub fn binary(&self) -> Result<Binary<'_>, String> {
        match self.from {
            BinarySource::Workspace => match (&self.package, &self.bin) {
                (Some(package), Some(bin)) => Ok(Binary::Workspace { package, bin }),
                _ => Err("from = \"workspace\" needs `package` and `bin`".to_string()),
            },
            BinarySource::Upstream => match &self.component {
                Some(component) if !self.path_names.is_empty() => Ok(Binary::Upstream {
                    component,
                    path_names: &self.path_names,
                    archive_names: &self.archive_names,
                }),
                _ => Err(
                    "from = \"upstream\" needs `component` (its images/versions.toml entry) and `path_names`"
                        .to_string(),
                ),
            },
        }
    }
}

/// The whole `role.toml`, as far as the registry reads it (the agent's sections are
/// checked by the agent's own parser).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleFile {
    role: String,
    #[serde(default)]
    peers: BTreeMap<String, Peer>,
    #[serde(default)]
    image: Image,
    #[serde(default)]
    services: Vec<Service>,
    /// Read by the agent too: the same type, so both accept the same section.
    #[serde(default)]
    data: Option<DataSpec>,
    #[serde(default)]
    users: BTreeMap<String, u32>,
    // The agent's sections, checked by its own parser.
    #[serde(default, rename = "files")]
    _files: serde::de::IgnoredAny,
    #[serde(default, rename = "secrets")]
    _secrets: serde::de::IgnoredAny,
    #[serde(default, rename = "generated")]
    _generated: serde::de::IgnoredAny,
    #[serde(default)]
    deploy: DeploySpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommonFile {
    #[serde(default)]
    services: Vec<Service>,
    #[serde(default)]
    users: BTreeMap<String, u32>,
}

impl Registry {
    /// The registry of the checkout's `images/` (or `OBSTACK_IMAGES_DIR`'s).
    pub fn load_default() -> Result<Registry, RegistryError> {
        Registry::load(&crate::project::images_dir())
    }

    /// Reads every `images_dir/<role>/role.toml` and `images_dir/common/services.toml`.
    pub fn load(images_dir: &Path) -> Result<Registry, RegistryError> {
        let entries = std::fs::read_dir(images_dir).map_err(|source| RegistryError::Read {
            path: images_dir.to_path_buf(),
            source,
        })?;
        let mut roles = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| RegistryError::Read {
                path: images_dir.to_path_buf(),
                source,
            })?;
            let path = entry.path().join(SPEC_FILE);
            if path.is_file() {
                roles.push(read_role(&entry.path(), &path)?);
            }
        }
        if roles.is_empty() {
            return Err(RegistryError::Empty(images_dir.to_path_buf()));
        }
        let common_path = images_dir.join(COMMON_SERVICES_FILE);
        let common = if common_path.is_file() {
            let text = read(&common_path)?;
            toml::from_str::<CommonFile>(&text).map_err(|e| parse_error(&common_path, e))?
        } else {
            CommonFile {
                services: Vec::new(),
                users: BTreeMap::new(),
            }
        };
        let mut roles = start_order(roles, images_dir)?;
        for role in &mut roles {
            role.common_users.clone_from(&common.users);
        }
        let registry = Registry {
            images_dir: images_dir.to_path_buf(),
            roles,
            common_services: common.services,
            common_users: common.users,
        };
        registry.check()?;
        Ok(registry)
    }

    pub fn images_dir(&self) -> &Path {
        &self.images_dir
    }

    /// The roles in start order.
    pub fn roles(&self) -> &[Role] {
        &self.roles
    }

    /// The role names in start order.
    pub fn names(&self) -> Vec<&str> {
        self.roles.iter().map(|r| r.name.as_str()).collect()
    }

    /// The role names in roll-out order: by `[deploy] rollout_order` (lower first), roles
    /// without one last, ties in start order. `cargo xtask deploy` replaces roles' AMIs in
    /// this order, one role per apply.
    pub fn rollout_order(&self) -> Vec<&str> {
        let mut roles: Vec<(usize, &Role)> = self.roles.iter().enumerate().collect();
        roles.sort_by_key(|(start, role)| (role.rollout_order.unwrap_or(u32::MAX), *start));
        roles
            .into_iter()
            .map(|(_, role)| role.name.as_str())
            .collect()
    }

    /// The role called `name`, or an error listing the roles there are.
    pub fn role(&self, name: &str) -> Result<&Role, RegistryError> {
        self.roles
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| RegistryError::UnknownRole {
                role: name.to_string(),
                known: self.names().join(", "),
            })
    }

    /// Whether `name` is a role.
    pub fn contains(&self, name: &str) -> bool {
        self.roles.iter().any(|r| r.name == name)
    }

    /// The services every image runs.
    pub fn common_services(&self) -> &[Service] {
        &self.common_services
    }

    /// Every distinct service of the stack once, in start order: each role's own services,
    /// then the common ones (which run on every image but are one program).
    pub fn services(&self) -> Vec<(&Role, &Service)> {
        let mut all: Vec<(&Role, &Service)> = self
            .roles
            .iter()
            .flat_map(|role| role.services.iter().map(move |s| (role, s)))
            .collect();
        if let Some(first) = self.roles.first() {
            all.extend(self.common_services.iter().map(|s| (first, s)));
        }
        all
    }

    /// The name of every service of the stack: what a whole deployed stack runs.
    pub fn service_names(&self) -> std::collections::BTreeSet<&str> {
        self.services()
            .into_iter()
            .map(|(_, s)| s.name.as_str())
            .collect()
    }

    /// The users every image has, whatever its role, with their fixed ids.
    pub fn common_users(&self) -> &BTreeMap<String, u32> {
        &self.common_users
    }

    /// Every binary any image ships from this workspace (the agent first).
    pub fn workspace_binaries(&self) -> Vec<String> {
        let mut binaries = vec![AGENT_BINARY.to_string()];
        for role in &self.roles {
            for binary in &role.image.binaries {
                if !binaries.contains(binary) {
                    binaries.push(binary.clone());
                }
            }
        }
        binaries
    }

    /// Names, ports, peers and user ids that must agree across roles.
    fn check(&self) -> Result<(), RegistryError> {
        self.check_users()?;
        let mut names = BTreeSet::new();
        let mut ports: BTreeMap<u16, &str> = BTreeMap::new();
        let all: Vec<&str> = self
            .services()
            .iter()
            .map(|(_, s)| s.name.as_str())
            .collect();
        for (role, service) in self.services() {
            let path = role.dir.join(SPEC_FILE);
            if !names.insert(service.name.as_str()) {
                return Err(invalid(
                    &path,
                    format!("service `{}` is declared twice", service.name),
                ));
            }
            if let Some(other) = ports.insert(service.port, &service.name) {
                return Err(invalid(
                    &path,
                    format!(
                        "service `{}` uses port {}, already taken by `{other}`",
                        service.name, service.port
                    ),
                ));
            }
            for need in service.up.iter().flat_map(|up| &up.needs) {
                if need == &service.name || !all.contains(&need.as_str()) {
                    return Err(invalid(
                        &path,
                        format!(
                            "service `{}` needs `{need}`, which is not another service (services: {})",
                            service.name,
                            all.join(", ")
                        ),
                    ));
                }
            }
            if let Some(Err(message)) = service.up.as_ref().map(UpSpec::binary) {
                return Err(invalid(
                    &path,
                    format!("service `{}`: {message}", service.name),
                ));
            }
            if !service.health.starts_with('/') {
                return Err(invalid(
                    &path,
                    format!(
                        "service `{}`: health `{}` must be a path starting with /",
                        service.name, service.health
                    ),
                ));
            }
        }
        for role in &self.roles {
            let path = role.dir.join(SPEC_FILE);
            for (peer, spec) in &role.peers {
                let Ok(target) = self.role(peer) else {
                    return Err(invalid(
                        &path,
                        format!(
                            "peer `{peer}` is not a role (roles: {})",
                            self.names().join(", ")
                        ),
                    ));
                };
                let port = target.main_service().map(|s| s.port);
                if port != Some(spec.port) {
                    return Err(invalid(
                        &path,
                        format!(
                            "peer `{peer}` has port {}, but {peer}'s service listens on {}",
                            spec.port,
                            port.map_or_else(|| "no port".to_string(), |p| p.to_string())
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The lowest and highest fixed id a service user may get. Debian's and Ubuntu's static
/// allocations (base-passwd) are 0-99 (and 60000-65534, above the 1000 where people's
/// accounts begin); 100-999 is the system range, which `useradd --system` fills from 999 down
/// and `adduser --system` from 100 up on a base image, so the registry's ids sit in the middle
/// and the bake fails (useradd: UID is not unique) rather than reuse one a base image took.
pub const SERVICE_IDS: std::ops::RangeInclusive<u32> = 100..=999;

impl Registry {
    /// Every user once (a name in one place), every id once (users and their groups share
    /// the number), every id in [`SERVICE_IDS`].
    fn check_users(&self) -> Result<(), RegistryError> {
        let common_path = self.images_dir.join(COMMON_SERVICES_FILE);
        let places = std::iter::once((common_path, &self.common_users)).chain(
            self.roles
                .iter()
                .map(|role| (role.dir.join(SPEC_FILE), &role.users)),
        );
        let mut names: BTreeMap<&str, PathBuf> = BTreeMap::new();
        let mut ids: BTreeMap<u32, &str> = BTreeMap::new();
        for (path, users) in places {
            for (name, id) in users {
                let valid_name = name.starts_with(|c: char| c.is_ascii_lowercase())
                    && name.len() <= 32
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_".contains(c));
                if !valid_name {
                    return Err(invalid(
                        &path,
                        format!(
                            "user `{name}` is not a portable system user name (lowercase \
                             letters, digits, `-` and `_`, starting with a letter, at most 32)"
                        ),
                    ));
                }
                if !SERVICE_IDS.contains(id) {
                    return Err(invalid(
                        &path,
                        format!(
                            "user `{name}` has id {id}, outside {}-{}: below 100 are Debian's \
                             and Ubuntu's static ids, from 1000 on people's accounts",
                            SERVICE_IDS.start(),
                            SERVICE_IDS.end()
                        ),
                    ));
                }
                if let Some(other) = names.insert(name, path.clone()) {
                    return Err(invalid(
                        &path,
                        format!(
                            "user `{name}` is declared twice (also in {}); declare it once",
                            other.display()
                        ),
                    ));
                }
                if let Some(other) = ids.insert(*id, name) {
                    return Err(invalid(
                        &path,
                        format!("user `{name}` has id {id}, already `{other}`'s; ids are unique across the images"),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Role {
    /// The service users this role's image creates, with their fixed ids: its own and every
    /// image's. What the provisioners get (the Packer variable `service_ids`).
    pub fn image_users(&self) -> BTreeMap<String, u32> {
        let mut users = self.common_users.clone();
        users.extend(self.users.iter().map(|(name, id)| (name.clone(), *id)));
        users
    }

    /// The service a peer tag points at: the one named like the role.
    pub fn main_service(&self) -> Option<&Service> {
        self.services.iter().find(|s| s.name == self.name)
    }

    /// The binaries this image ships from the workspace, the agent included.
    pub fn shipped_binaries(&self) -> Vec<String> {
        std::iter::once(AGENT_BINARY.to_string())
            .chain(self.image.binaries.iter().cloned())
            .collect()
    }
}

impl Service {
    /// `--node-exporter` for `node_exporter`: the `up` flag naming an explicit binary.
    pub fn up_flag(&self) -> String {
        format!("--{}", self.name.replace('_', "-"))
    }

    /// `STACK_NODE_EXPORTER_BIN` for `node_exporter`: the same as an environment variable.
    pub fn up_env_var(&self) -> String {
        format!("STACK_{}_BIN", self.name.to_ascii_uppercase())
    }
}

fn read(path: &Path) -> Result<String, RegistryError> {
    std::fs::read_to_string(path).map_err(|source| RegistryError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_error(path: &Path, error: toml::de::Error) -> RegistryError {
    RegistryError::Parse {
        path: path.to_path_buf(),
        // toml's message spans several lines (with a source excerpt): keep one.
        message: error.message().to_string(),
    }
}

fn invalid(path: &Path, message: String) -> RegistryError {
    RegistryError::Invalid {
        path: path.to_path_buf(),
        message,
    }
}

fn read_role(dir: &Path, path: &Path) -> Result<Role, RegistryError> {
    let text = read(path)?;
    let file: RoleFile = toml::from_str(&text).map_err(|e| parse_error(path, e))?;
    let dir_name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if file.role != dir_name {
        return Err(invalid(
            path,
            format!(
                "role = \"{}\" but the directory is `{dir_name}`; they must match",
                file.role
            ),
        ));
    }
    let valid_name = !dir_name.is_empty()
        && dir_name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && dir_name.starts_with(|c: char| c.is_ascii_lowercase());
    if !valid_name {
        return Err(invalid(
            path,
            format!(
                "role name `{dir_name}` must be lowercase letters, digits and `-`, starting \
                 with a letter (it becomes AMI names, tags and Terraform keys)"
            ),
        ));
    }
    if let Some(data) = &file.data {
        data.check().map_err(|message| invalid(path, message))?;
        check_data_paths(data, &file.services).map_err(|message| invalid(path, message))?;
    }
    Ok(Role {
        name: file.role,
        dir: dir.to_path_buf(),
        peers: file.peers,
        image: file.image,
        services: file.services,
        data: file.data,
        users: file.users,
        common_users: BTreeMap::new(),
        rollout_order: file.deploy.rollout_order,
    })
}

/// A stateful role keeps all its services' data on its volume: every `data_dirs` entry lies
/// under the mount point (none on the root disk, which a new AMI replaces), every service
/// with data waits for the mount (is in `[data].services`), and those are the role's units.
fn check_data_paths(data: &DataSpec, services: &[Service]) -> Result<(), String> {
    for service in services {
        let dirs = service.up.iter().flat_map(|up| &up.data_dirs);
        for dir in dirs.clone() {
            if !data.holds(dir) {
                return Err(format!(
                    "service `{}` keeps data in {dir}, on the root disk a new AMI replaces; \
                     move it under the data volume's mount point {}",
                    service.name, data.mount_point
                ));
            }
        }
        if dirs.count() > 0 && !data.services.contains(&service.unit) {
            return Err(format!(
                "service `{}` keeps data on the data volume but [data] services does not list \
                 {}, so it would not wait for the volume to be mounted",
                service.name, service.unit
            ));
        }
    }
    for unit in &data.services {
        if !services.iter().any(|s| &s.unit == unit) {
            return Err(format!(
                "[data] services lists {unit}, which is not a unit of this role's [[services]]"
            ));
        }
    }
    Ok(())
}

/// Sorts roles so each comes after the peers it requires (ties by name, so the order is
/// stable); a cycle of required peers is an error.
fn start_order(mut pending: Vec<Role>, images_dir: &Path) -> Result<Vec<Role>, RegistryError> {
    pending.sort_by(|a, b| a.name.cmp(&b.name));
    let names: BTreeSet<String> = pending.iter().map(|r| r.name.clone()).collect();
    let mut ordered: Vec<Role> = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let placed: BTreeSet<&str> = ordered.iter().map(|r| r.name.as_str()).collect();
        let ready = pending.iter().position(|role| {
            role.peers
                .iter()
                .filter(|(peer, spec)| spec.required && names.contains(*peer))
                .all(|(peer, _)| placed.contains(peer.as_str()))
        });
        match ready {
            Some(index) => ordered.push(pending.remove(index)),
            None => {
                let stuck: Vec<&str> = pending.iter().map(|r| r.name.as_str()).collect();
                return Err(invalid(
                    images_dir,
                    format!(
                        "the required peers of {} form a cycle; make one of them optional",
                        stuck.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(ordered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn role_file(name: &str, port: u16, requires: &[(&str, u16)]) -> String {
        let mut text = format!(
            "role = \"{name}\"\n[[services]]\nname = \"{name}\"\nunit = \"{name}.service\"\n\
             port = {port}\nhealth = \"/ready\"\n"
        );
        for (peer, peer_port) in requires {
            text.push_str(&format!(
                "[peers.{peer}]\nport = {peer_port}\nrequired = true\n"
            ));
        }
        text
    }

    #[test]
    fn roles_are_ordered_after_the_peers_they_require() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("z/role.toml"), &role_file("z", 1, &[]));
        write(
            &dir.path().join("a/role.toml"),
            &role_file("a", 2, &[("m", 3)]),
        );
        write(
            &dir.path().join("m/role.toml"),
            &role_file("m", 3, &[("z", 1)]),
        );
        write(&dir.path().join("common/provisioners/x.sh"), "");
        let registry = Registry::load(dir.path()).unwrap();
        assert_eq!(registry.names(), ["z", "m", "a"]);
    }

    #[test]
    fn the_real_registry_holds_the_four_roles_in_dependency_order() {
        let registry = Registry::load(&crate::project::images_dir()).unwrap();
        assert_eq!(registry.names(), ["loki", "app", "prometheus", "grafana"]);
        let app = registry.role("app").unwrap();
        assert_eq!(app.shipped_binaries(), ["stack-agent", "demo-app"]);
        assert_eq!(app.main_service().unwrap().port, 5000);
        assert_eq!(
            registry.workspace_binaries(),
            ["stack-agent", "demo-app"],
            "every workspace binary an image ships"
        );
    }

    #[test]
    fn mistakes_name_the_file_and_the_fix() {
        let cases: [(&str, &str, &str); 5] = [
            ("b", "role = \"c\"\n", "directory is `b`"),
            ("b", "role = \"b\"\nimage = 3\n", "not a valid role file"),
            ("b", "role = \"b\"\n[peers.nope]\nport = 1\n", "peer `nope`"),
            (
                "b",
                "role = \"b\"\n[peers.a]\nport = 9\n",
                "peer `a` has port 9",
            ),
            (
                "b",
                &role_file("b", 2, &[]).replace("\"/ready\"", "\"ready\""),
                "must be a path",
            ),
        ];
        for (dir_name, text, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            write(&dir.path().join("a/role.toml"), &role_file("a", 1, &[]));
            write(&dir.path().join(dir_name).join("role.toml"), text);
            let error = Registry::load(dir.path()).unwrap_err().to_string();
            assert!(error.contains(expected), "{expected}: {error}");
            assert!(!error.contains('\n'), "one line: {error}");
        }
    }

    #[test]
    fn every_service_user_of_the_real_registry_has_a_fixed_unique_system_id() {
        let registry = Registry::load(&crate::project::images_dir()).unwrap();
        let prometheus = registry.role("prometheus").unwrap();
        let users = prometheus.image_users();
        assert_eq!(
            users.keys().collect::<Vec<_>>(),
            ["alertmanager", "node_exporter", "prometheus"],
            "its own users and every image's"
        );
        let mut seen = BTreeSet::new();
        let all = registry
            .roles()
            .iter()
            .flat_map(|r| &r.users)
            .chain(registry.common_users());
        for (name, id) in all {
            assert!(SERVICE_IDS.contains(id), "{name}: {id}");
            assert!(seen.insert(*id), "{name}: {id} twice");
        }
        assert!(seen.len() >= 7, "{seen:?}");
    }

    #[test]
    fn a_user_twice_a_shared_id_or_one_outside_the_system_range_is_refused() {
        let cases = [
            ("[users]\nb = 450\n", "[users]\nc = 450\n", "already `c`'s"),
            ("[users]\nb = 450\n", "[users]\nb = 451\n", "declared twice"),
            ("[users]\nb = 42\n", "", "outside 100-999"),
            ("[users]\nb = 1000\n", "", "outside 100-999"),
            ("[users]\nB = 450\n", "", "not a portable system user name"),
        ];
        for (first, second, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            write(
                &dir.path().join("a/role.toml"),
                &format!("{}{first}", role_file("a", 1, &[])),
            );
            write(&dir.path().join("common/services.toml"), second);
            let error = Registry::load(dir.path()).unwrap_err().to_string();
            assert!(error.contains(expected), "{expected}: {error}");
            assert!(!error.contains('\n'), "one line: {error}");
        }
    }

    #[test]
    fn a_cycle_of_required_peers_and_a_taken_port_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(
            &dir.path().join("a/role.toml"),
            &role_file("a", 1, &[("b", 2)]),
        );
        write(
            &dir.path().join("b/role.toml"),
            &role_file("b", 2, &[("a", 1)]),
        );
        let error = Registry::load(dir.path()).unwrap_err().to_string();
        assert!(error.contains("form a cycle"), "{error}");

        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("a/role.toml"), &role_file("a", 1, &[]));
        write(&dir.path().join("b/role.toml"), &role_file("b", 1, &[]));
        let error = Registry::load(dir.path()).unwrap_err().to_string();
        assert!(error.contains("already taken by `a`"), "{error}");
    }
}
