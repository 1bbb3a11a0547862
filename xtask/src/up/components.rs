//! The components of a local stack: what each is, which port it has on the AMIs, how to
//! tell it is healthy, and the command line its systemd unit would run.

use std::ffi::OsString;
use std::path::Path;

use super::layout::Layout;

/// Where a component's binary comes from.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// Built from this checkout (`cargo build -p <package>`).
    Workspace {
        package: &'static str,
        bin: &'static str,
    },
    /// An upstream release: explicit path, then PATH, then the pinned download.
    Upstream(Upstream),
}

#[derive(Debug, Clone, Copy)]
pub struct Upstream {
    /// The entry in `images/versions.toml`.
    pub manifest_name: &'static str,
    /// How a user provides the binary: the `up` flag and its environment variable.
    pub flag: &'static str,
    pub env_var: &'static str,
    /// Names to look for on PATH, in order (distribution packages rename some).
    pub path_names: &'static [&'static str],
    /// Names of the executable inside the release archive.
    pub archive_names: &'static [&'static str],
}

#[derive(Debug, Clone, Copy)]
pub struct Component {
    /// Short name shown to users and used in `state.json`.
    pub name: &'static str,
    /// The image role that runs it (the agent renders that role's configs).
    pub role: &'static str,
    /// The port the AMI uses; locally bound to 127.0.0.1.
    pub port: u16,
    /// Answers 2xx once the component is ready.
    pub health_path: &'static str,
    pub source: Source,
}

impl Component {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn health_url(&self) -> String {
        format!("{}{}", self.url(), self.health_path)
    }

    /// The `EnvironmentFile=` of its systemd unit (rendered by the agent), if any.
    pub fn env_file(&self) -> Option<&'static str> {
        match self.name {
            "app" => Some("/etc/default/demo-app"),
            "prometheus" => Some("/etc/default/prometheus"),
            _ => None,
        }
    }

    /// Arguments for `binary`: the command line of the component's systemd unit, with paths
    /// under the stack's root and `${VAR}`s taken from its rendered environment file.
    pub fn args(&self, binary: &Path, layout: &Layout, env: &[(String, String)]) -> Vec<OsString> {
        let var = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let root = |path: &str| layout.in_root(path).into_os_string();
        let flag = |name: &str, path: &str| {
            let mut arg = OsString::from(name);
            arg.push(root(path));
            arg
        };
        let listen = format!("127.0.0.1:{}", self.port);
        match self.name {
            // Everything comes from /etc/default/demo-app (DEMO_APP_LISTEN, DEMO_APP_LOG_FILE).
            "app" => Vec::new(),
            "prometheus" => vec![
                flag("--config.file=", "/etc/prometheus/prometheus.yml"),
                flag("--storage.tsdb.path=", "/var/lib/prometheus"),
                "--storage.tsdb.retention.time=15d".into(),
                format!(
                    "--web.listen-address={}",
                    var("PROMETHEUS_LISTEN_ADDRESS").unwrap_or(listen)
                )
                .into(),
            ],
            "loki" => vec![flag("-config.file=", "/etc/loki/config.yaml")],
            "promtail" => vec![flag("-config.file=", "/etc/promtail/config.yaml")],
            "grafana" => grafana_args(binary, layout),
            "node_exporter" => vec![format!("--web.listen-address={listen}").into()],
            _ => Vec::new(),
        }
    }

    /// Directories the component writes to, created before it starts.
    pub fn data_dirs(&self) -> &'static [&'static str] {
        match self.name {
            "app" => &["/var/log/demo-app"],
            "prometheus" => &["/var/lib/prometheus"],
            "loki" => &["/var/lib/loki"],
            "promtail" => &["/var/lib/promtail"],
            "grafana" => &["/var/lib/grafana", "/var/log/grafana"],
            _ => &[],
        }
    }
}

/// Grafana needs its home (the unpacked release, holding `conf/defaults.ini` and `public/`).
/// Releases ship `bin/grafana server`; older packages ship a `grafana-server` binary.
fn grafana_args(binary: &Path, layout: &Layout) -> Vec<OsString> {
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
    args.push("--config".into());
    args.push(layout.in_root("/etc/grafana/grafana.ini").into_os_string());
    args
}

/// Every component, in start order: log sinks before their sources, Grafana last.
pub const COMPONENTS: [Component; 6] = [
    Component {
        name: "loki",
        role: "loki",
        port: 3100,
        health_path: "/ready",
        source: Source::Upstream(Upstream {
            manifest_name: "loki",
            flag: "--loki",
            env_var: "STACK_LOKI_BIN",
            path_names: &["loki"],
            archive_names: &["loki", "loki-linux-amd64", "loki-linux-arm64"],
        }),
    },
    Component {
        name: "app",
        role: "app",
        port: 5000,
        health_path: "/health",
        source: Source::Workspace {
            package: "demo-app",
            bin: "demo-app",
        },
    },
    Component {
        name: "promtail",
        role: "app",
        port: 9080,
        health_path: "/ready",
        source: Source::Upstream(Upstream {
            manifest_name: "promtail",
            flag: "--promtail",
            env_var: "STACK_PROMTAIL_BIN",
            path_names: &["promtail"],
            archive_names: &["promtail", "promtail-linux-amd64", "promtail-linux-arm64"],
        }),
    },
    Component {
        name: "node_exporter",
        role: "app",
        port: 9100,
        health_path: "/metrics",
        source: Source::Upstream(Upstream {
            manifest_name: "node_exporter",
            flag: "--node-exporter",
            env_var: "STACK_NODE_EXPORTER_BIN",
            // Debian's package names it prometheus-node-exporter.
            path_names: &["node_exporter", "prometheus-node-exporter"],
            archive_names: &["node_exporter"],
        }),
    },
    Component {
        name: "prometheus",
        role: "prometheus",
        port: 9090,
        health_path: "/-/ready",
        source: Source::Upstream(Upstream {
            manifest_name: "prometheus",
            flag: "--prometheus",
            env_var: "STACK_PROMETHEUS_BIN",
            path_names: &["prometheus"],
            archive_names: &["prometheus"],
        }),
    },
    Component {
        name: "grafana",
        role: "grafana",
        port: 3000,
        health_path: "/api/health",
        source: Source::Upstream(Upstream {
            manifest_name: "grafana",
            flag: "--grafana",
            env_var: "STACK_GRAFANA_BIN",
            path_names: &["grafana", "grafana-server"],
            archive_names: &["grafana"],
        }),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_the_amis_ports_and_unique() {
        let port = |name: &str| COMPONENTS.iter().find(|c| c.name == name).unwrap().port;
        assert_eq!(port("app"), 5000);
        assert_eq!(port("prometheus"), 9090);
        assert_eq!(port("loki"), 3100);
        assert_eq!(port("grafana"), 3000);
        assert_eq!(port("promtail"), 9080);
        assert_eq!(port("node_exporter"), 9100);
        let mut ports: Vec<u16> = COMPONENTS.iter().map(|c| c.port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), COMPONENTS.len());
    }

    #[test]
    fn every_config_path_is_under_the_stack_root() {
        let layout = Layout::at("/tmp/obstack-test".into());
        for component in COMPONENTS {
            let binary = Path::new("/nonexistent/bin").join(component.name);
            for arg in component.args(&binary, &layout, &[]) {
                let arg = arg.to_string_lossy().into_owned();
                if arg.contains("/etc/") || arg.contains("/var/") {
                    assert!(
                        arg.contains("/tmp/obstack-test/root/"),
                        "{}: {arg}",
                        component.name
                    );
                }
            }
        }
    }

    #[test]
    fn prometheus_listens_where_its_environment_file_says() {
        let layout = Layout::at("/tmp/obstack-test".into());
        let prometheus = COMPONENTS.iter().find(|c| c.name == "prometheus").unwrap();
        let env = [(
            "PROMETHEUS_LISTEN_ADDRESS".to_string(),
            "127.0.0.1:9999".to_string(),
        )];
        let args = prometheus.args(Path::new("/usr/bin/prometheus"), &layout, &env);
        assert!(
            args.iter()
                .any(|a| a == "--web.listen-address=127.0.0.1:9999"),
            "{args:?}"
        );
        let args = prometheus.args(Path::new("/usr/bin/prometheus"), &layout, &[]);
        assert!(
            args.iter()
                .any(|a| a == "--web.listen-address=127.0.0.1:9090"),
            "{args:?}"
        );
    }

    #[test]
    fn grafana_releases_run_the_server_subcommand_from_their_home() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join("conf")).unwrap();
        std::fs::write(home.path().join("conf/defaults.ini"), "").unwrap();
        let layout = Layout::at("/tmp/obstack-test".into());
        let args = grafana_args(&home.path().join("bin/grafana"), &layout);
        assert_eq!(args[0], "server");
        assert_eq!(args[2], home.path().as_os_str());
        let legacy = grafana_args(Path::new("/usr/sbin/grafana-server"), &layout);
        assert_eq!(legacy[0], "--homepath");
        assert_eq!(legacy[1], "/usr/share/grafana");
    }
}
