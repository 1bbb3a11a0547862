//! The components of a local stack: every service of the role registry with an `up` section
//! (`images/<role>/role.toml`, `images/common/services.toml`), on its AMI port, with the
//! command line its systemd unit would run and paths under the local stack's root.

use std::ffi::OsString;
use std::path::Path;

use crate::roles::{Binary, Registry, Role, Service, UpSpec};

use super::layout::Layout;

/// A service `up` knows how to run.
#[derive(Debug, Clone, Copy)]
pub struct Component<'a> {
    /// The role whose image runs it (the agent renders that role's configs); for a common
    /// service, the first role.
    pub role: &'a Role,
    pub service: &'a Service,
    pub up: &'a UpSpec,
}

impl<'a> Component<'a> {
    /// Every service of the stack in start order: those `up` can run, and those whose
    /// role.toml says nothing about running them locally.
    pub fn all(registry: &'a Registry) -> (Vec<Component<'a>>, Vec<&'a Service>) {
        let mut runnable = Vec::new();
        let mut not_runnable = Vec::new();
        for (role, service) in registry.services() {
            match &service.up {
                Some(up) => runnable.push(Component { role, service, up }),
                None => not_runnable.push(service),
            }
        }
        (runnable, not_runnable)
    }

    /// Short name shown to users and used in `state.json`.
    pub fn name(&self) -> &'a str {
        &self.service.name
    }

    /// The port the AMI uses; locally bound to 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.service.port
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port())
    }

    pub fn health_url(&self) -> String {
        format!("{}{}", self.url(), self.service.health)
    }

    /// Where its binary comes from (checked when the registry was loaded).
    pub fn binary(&self) -> anyhow::Result<Binary<'a>> {
        self.up.binary().map_err(|message| {
            anyhow::anyhow!(
                "{}: service `{}`: {message}",
                self.role.dir.join(crate::roles::SPEC_FILE).display(),
                self.name()
            )
        })
    }

    /// The `EnvironmentFile=` of its systemd unit (rendered by the agent), if any.
    pub fn env_file(&self) -> Option<&'a str> {
        self.up.env_file.as_deref()
    }

    /// Directories the component writes to, created before it starts.
    pub fn data_dirs(&self) -> &'a [String] {
        &self.up.data_dirs
    }

    /// Services it is useless without.
    pub fn needs(&self) -> &'a [String] {
        &self.up.needs
    }

    /// Arguments for `binary`: the command line of the component's systemd unit, with paths
    /// under the stack's root and `{env:NAME}` taken from its rendered environment file.
    pub fn args(
        &self,
        binary: &Path,
        layout: &Layout,
        env: &[(String, String)],
    ) -> anyhow::Result<Vec<OsString>> {
        let listen = format!("127.0.0.1:{}", self.port());
        let root = layout.root();
        // Grafana's home and subcommand depend on the binary found: see images/grafana/role.toml.
        let mut args = if self.name() == "grafana" {
            grafana_prefix(binary)
        } else {
            Vec::new()
        };
        for arg in &self.up.args {
            let expanded = expand(arg, &root, &listen, env).map_err(|message| {
                anyhow::anyhow!(
                    "{}: service `{}`: argument `{arg}`: {message}",
                    self.role.dir.join(crate::roles::SPEC_FILE).display(),
                    self.name()
                )
            })?;
            args.push(expanded);
        }
        Ok(args)
    }
}

/// Replaces `{root}`, `{listen}` and `{env:NAME}` (the environment file's value, else
/// `{listen}`) in one argument.
fn expand(
    arg: &str,
    root: &Path,
    listen: &str,
    env: &[(String, String)],
) -> Result<OsString, String> {
    let mut out = OsString::new();
    let mut rest = arg;
    while let Some(start) = rest.find('{') {
        out.push(&rest[..start]);
        let after = &rest[start + 1..];
        let end = after
            .find('}')
            .ok_or_else(|| "a `{` without its `}`".to_string())?;
        match &after[..end] {
            "root" => out.push(root.as_os_str()),
            "listen" => out.push(listen),
            placeholder => match placeholder.strip_prefix("env:") {
                Some(name) => out.push(
                    env.iter()
                        .find(|(key, _)| key == name)
                        .map_or(listen, |(_, value)| value.as_str()),
                ),
                None => {
                    return Err(format!(
                        "unknown placeholder `{{{placeholder}}}` (known: {{root}}, {{listen}}, \
                         {{env:NAME}})"
                    ))
                }
            },
        }
        rest = &after[end + 1..];
    }
    out.push(rest);
    Ok(out)
}

/// Grafana needs its home (the unpacked release, holding `conf/defaults.ini` and `public/`).
/// Releases ship `bin/grafana server`; older packages ship a `grafana-server` binary.
fn grafana_prefix(binary: &Path) -> Vec<OsString> {
    let home = binary
        .parent()
        .and_then(Path::parent)
        .filter(|home| home.join("conf/defaults.ini").is_file())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| "/usr/share/grafana".into());
    let mut args: Vec<OsString> = Vec::new();
    if binary.file_name().is_some_and(|name| name == "grafana") {
        args.push("server".into());
    }
    args.push("--homepath".into());
    args.push(home.into_os_string());
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        Registry::load_default().unwrap()
    }

    fn component<'a>(registry: &'a Registry, name: &str) -> Component<'a> {
        Component::all(registry)
            .0
            .into_iter()
            .find(|c| c.name() == name)
            .unwrap_or_else(|| panic!("no runnable service {name}"))
    }

    #[test]
    fn every_service_runs_locally_on_its_ami_port_once() {
        let registry = registry();
        let (components, not_runnable) = Component::all(&registry);
        assert!(not_runnable.is_empty(), "every service has an `up` section");
        let port = |name: &str| component(&registry, name).port();
        assert_eq!(port("app"), 5000);
        assert_eq!(port("prometheus"), 9090);
        assert_eq!(port("loki"), 3100);
        assert_eq!(port("grafana"), 3000);
        assert_eq!(port("promtail"), 9080);
        assert_eq!(port("node_exporter"), 9100);
        assert_eq!(port("alertmanager"), 9093);
        let mut ports: Vec<u16> = components.iter().map(Component::port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), components.len());
        let names: Vec<&str> = components.iter().map(Component::name).collect();
        assert_eq!(
            names,
            [
                "loki",
                "app",
                "promtail",
                "prometheus",
                "alertmanager",
                "grafana",
                "node_exporter"
            ],
            "start order: log sinks before their sources, Grafana after its datasources"
        );
        assert_eq!(
            component(&registry, "app").binary().unwrap(),
            Binary::Workspace {
                package: "demo-app",
                bin: "demo-app"
            }
        );
    }

    #[test]
    fn every_config_path_is_under_the_stack_root() {
        let registry = registry();
        let layout = Layout::at("/tmp/obstack-test".into());
        for component in Component::all(&registry).0 {
            let binary = Path::new("/nonexistent/bin").join(component.name());
            let args = component.args(&binary, &layout, &[]).unwrap();
            for arg in args {
                let arg = arg.to_string_lossy().into_owned();
                assert!(!arg.contains(['{', '}']), "{}: {arg}", component.name());
                if arg.contains("/etc/") || arg.contains("/var/") {
                    assert!(
                        arg.contains("/tmp/obstack-test/root/"),
                        "{}: {arg}",
                        component.name()
                    );
                }
            }
            for dir in component.data_dirs() {
                assert!(
                    layout.in_root(dir).starts_with("/tmp/obstack-test/root/"),
                    "{dir}"
                );
            }
        }
    }

    #[test]
    fn prometheus_listens_where_its_environment_file_says() {
        let registry = registry();
        let layout = Layout::at("/tmp/obstack-test".into());
        let prometheus = component(&registry, "prometheus");
        assert_eq!(prometheus.env_file(), Some("/etc/default/prometheus"));
        let env = [(
            "PROMETHEUS_LISTEN_ADDRESS".to_string(),
            "127.0.0.1:9999".to_string(),
        )];
        let binary = Path::new("/usr/bin/prometheus");
        let args = prometheus.args(binary, &layout, &env).unwrap();
        assert!(
            args.iter()
                .any(|a| a == "--web.listen-address=127.0.0.1:9999"),
            "{}",
            lossy(&args)
        );
        let args = prometheus.args(binary, &layout, &[]).unwrap();
        assert!(
            args.iter()
                .any(|a| a == "--web.listen-address=127.0.0.1:9090"),
            "{}",
            lossy(&args)
        );
        assert!(args
            .iter()
            .any(|a| a == "--config.file=/tmp/obstack-test/root/etc/prometheus/prometheus.yml"));
    }

    #[test]
    fn grafana_releases_run_the_server_subcommand_from_their_home() {
        let registry = registry();
        let grafana = component(&registry, "grafana");
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join("conf")).unwrap();
        std::fs::write(home.path().join("conf/defaults.ini"), "").unwrap();
        let layout = Layout::at("/tmp/obstack-test".into());
        let args = grafana
            .args(&home.path().join("bin/grafana"), &layout, &[])
            .unwrap();
        assert_eq!(args[0], "server");
        assert_eq!(args[1], "--homepath");
        assert_eq!(args[2], home.path().as_os_str());
        assert_eq!(args[3], "--config");
        assert_eq!(args[4], "/tmp/obstack-test/root/etc/grafana/grafana.ini");
        let legacy = grafana
            .args(Path::new("/usr/sbin/grafana-server"), &layout, &[])
            .unwrap();
        assert_eq!(legacy[0], "--homepath");
        assert_eq!(legacy[1], "/usr/share/grafana");
    }

    #[test]
    fn placeholders_are_expanded_and_unknown_ones_refused() {
        let root = Path::new("/r");
        let env = [("ADDR".to_string(), "0.0.0.0:1".to_string())];
        let expand = |arg: &str| expand(arg, root, "127.0.0.1:9", &env);
        assert_eq!(expand("-c={root}/etc/x").unwrap(), "-c=/r/etc/x");
        assert_eq!(expand("{listen}").unwrap(), "127.0.0.1:9");
        assert_eq!(expand("--l={env:ADDR}").unwrap(), "--l=0.0.0.0:1");
        assert_eq!(expand("--l={env:NOPE}").unwrap(), "--l=127.0.0.1:9");
        assert_eq!(expand("plain").unwrap(), "plain");
        assert!(expand("{home}")
            .unwrap_err()
            .contains("unknown placeholder `{home}`"));
        assert!(expand("{root").unwrap_err().contains("without its"));
    }

    fn lossy(args: &[OsString]) -> String {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}
