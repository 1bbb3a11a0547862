//! Grafana's stand-in: `grafana server --homepath=H --config=F` (or `grafana-server`).
//!
//! grafana.ini must parse (sections, `key = value`, `;` comments) and name: an HTTP listen
//! address and port, the data and provisioning paths, an sqlite database, the admin user
//! and a non-empty admin password and secret key, each `$__file{PATH}` read as Grafana reads
//! it (as the unit's user: a file it may not read stops it here, as it would stop Grafana).
//! Every datasource file must list datasources with a name, type, uid and http(s) URL, and
//! every dashboard provider's folder must hold dashboards (JSON, each with a uid).
//! Starting, it writes its database file in the data directory, then answers
//! `/api/health`, `/metrics`, and with the admin's basic auth `/api/datasources` and
//! `/api/dashboards/uid/UID`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::prelude::{Engine, BASE64_STANDARD};
use serde_json::{json, Value};

use crate::http::{self, Reply, Request};

pub fn main(args: &[String], version: &str) -> anyhow::Result<()> {
    let home = crate::flag(args, "homepath")
        .context("no --homepath=DIR given (the unit passes /opt/grafana)")?;
    anyhow::ensure!(
        Path::new(&home).is_dir(),
        "--homepath {home} is not a directory"
    );
    let path = crate::flag(args, "config")
        .context("no --config=PATH given (the unit passes /etc/grafana/grafana.ini)")?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let ini = Ini::parse(&text).with_context(|| format!("{path} is not a valid ini file"))?;
    let grafana = Grafana::check(&ini, &path, version)?;
    let database = grafana.data.join(&grafana.database);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&database)
        .with_context(|| format!("cannot open the database {}", database.display()))?;
    writeln!(file, "obstack stand-in for grafana {version} started")
        .and_then(|()| file.sync_data())
        .with_context(|| format!("cannot write the database {}", database.display()))?;
    eprintln!(
        "grafana {version} (obstack stand-in): {path} checked; {} datasource(s), {} dashboard(s), database {}",
        grafana.datasources.len(),
        grafana.dashboards.len(),
        database.display()
    );
    let address = http::listen_address(&grafana.address, grafana.port);
    http::serve(&address, move |request| grafana.answer(request))
}

/// grafana.ini as (section, key) -> value.
struct Ini {
    values: BTreeMap<(String, String), String>,
}

impl Ini {
    fn parse(text: &str) -> anyhow::Result<Ini> {
        let mut section = String::new();
        let mut values = BTreeMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.trim().to_string();
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .with_context(|| format!("line {}: `{line}` is not `key = value`", number + 1))?;
            values.insert(
                (section.clone(), key.trim().to_string()),
                value.trim().to_string(),
            );
        }
        Ok(Ini { values })
    }

    fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.values
            .get(&(section.to_string(), key.to_string()))
            .map(String::as_str)
    }
}

/// A datasource as provisioned.
#[derive(Debug, Clone)]
struct Datasource {
    name: String,
    kind: String,
    uid: String,
    url: String,
}

struct Grafana {
    version: String,
    address: String,
    port: u16,
    data: PathBuf,
    database: String,
    admin_user: String,
    admin_password: String,
    datasources: Vec<Datasource>,
    /// Dashboard files by uid.
    dashboards: BTreeMap<String, PathBuf>,
}

impl Grafana {
    fn check(ini: &Ini, path: &str, version: &str) -> anyhow::Result<Grafana> {
        let required = |section: &str, key: &str| -> anyhow::Result<String> {
            let value = ini
                .get(section, key)
                .with_context(|| format!("{path}: [{section}] {key} is missing"))?;
            expand(value).with_context(|| format!("{path}: [{section}] {key}"))
        };
        let protocol = ini.get("server", "protocol").unwrap_or("http");
        anyhow::ensure!(
            protocol == "http",
            "{path}: [server] protocol is `{protocol}`; the stand-in serves http"
        );
        let port: u16 = required("server", "http_port")?
            .parse()
            .with_context(|| format!("{path}: [server] http_port is not a port"))?;
        let address = ini
            .get("server", "http_addr")
            .unwrap_or_default()
            .to_string();
        let data = PathBuf::from(required("paths", "data")?);
        anyhow::ensure!(
            data.is_dir(),
            "{path}: [paths] data {} is not a directory",
            data.display()
        );
        let provisioning = PathBuf::from(required("paths", "provisioning")?);
        let kind = required("database", "type")?;
        anyhow::ensure!(
            kind == "sqlite3",
            "{path}: [database] type is `{kind}`; the stand-in keeps an sqlite3 database"
        );
        let database = required("database", "path")?;
        let admin_user = required("security", "admin_user")?;
        let admin_password = required("security", "admin_password")?;
        let secret_key = required("security", "secret_key")?;
        for (key, value) in [
            ("admin_password", &admin_password),
            ("secret_key", &secret_key),
        ] {
            anyhow::ensure!(!value.is_empty(), "{path}: [security] {key} is empty");
        }
        if let Some(home) = ini.get("dashboards", "default_home_dashboard_path") {
            anyhow::ensure!(
                Path::new(home).is_file(),
                "{path}: [dashboards] default_home_dashboard_path {home} is not a file"
            );
        }
        let datasources = datasources(&provisioning.join("datasources"))?;
        let dashboards = dashboards(&provisioning.join("dashboards"))?;
        Ok(Grafana {
            version: version.to_string(),
            address,
            port,
            data,
            database,
            admin_user,
            admin_password,
            datasources,
            dashboards,
        })
    }

    fn answer(&self, request: &Request) -> Reply {
        let path = request.path.as_str();
        if request.method != "GET" {
            return Reply::json(405, &json!({"message": "method not allowed"}));
        }
        match path {
            "/api/health" => {
                return Reply::json(
                    200,
                    &json!({"commit": "obstack-standin", "database": "ok", "version": self.version}),
                )
            }
            "/metrics" => {
                return Reply::metrics(format!(
                    "# TYPE grafana_build_info gauge\ngrafana_build_info{{version=\"{}\",standin=\"obstack\"}} 1\n",
                    self.version
                ))
            }
            _ => {}
        }
        if !self.authorized(request) {
            return Reply::json(401, &json!({"message": "Unauthorized"}));
        }
        if path == "/api/datasources" {
            let list: Vec<Value> = self
                .datasources
                .iter()
                .map(|d| json!({"name": d.name, "type": d.kind, "uid": d.uid, "url": d.url}))
                .collect();
            return Reply::json(200, &Value::Array(list));
        }
        if let Some(uid) = path.strip_prefix("/api/dashboards/uid/") {
            if let Some(file) = self.dashboards.get(uid) {
                let dashboard = std::fs::read(file)
                    .ok()
                    .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
                if let Some(dashboard) = dashboard {
                    return Reply::json(200, &json!({"dashboard": dashboard}));
                }
            }
            return Reply::json(404, &json!({"message": "Dashboard not found"}));
        }
        Reply::json(404, &json!({"message": "Not found"}))
    }

    /// Basic auth with the admin user and the password from its file.
    fn authorized(&self, request: &Request) -> bool {
        let expected = format!("{}:{}", self.admin_user, self.admin_password);
        request
            .header("authorization")
            .and_then(|value| value.strip_prefix("Basic "))
            .and_then(|encoded| BASE64_STANDARD.decode(encoded.trim()).ok())
            .is_some_and(|given| given == expected.as_bytes())
    }
}

/// A value with Grafana's `$__file{PATH}` read (its trailing newline dropped).
fn expand(value: &str) -> anyhow::Result<String> {
    let Some(rest) = value.strip_prefix("$__file{") else {
        return Ok(value.to_string());
    };
    let path = rest
        .strip_suffix('}')
        .with_context(|| format!("`{value}` is not $__file{{PATH}}"))?;
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// Every datasource of every `*.yaml` in `dir`.
fn datasources(dir: &Path) -> anyhow::Result<Vec<Datasource>> {
    let mut found = Vec::new();
    for file in yaml_files(dir)? {
        let shown = file.display().to_string();
        let config = crate::yaml::Config::load(&shown)?;
        let version = config.get("apiVersion").and_then(|v| v.as_u64());
        anyhow::ensure!(version == Some(1), "{shown}: apiVersion is not 1");
        for (index, entry) in config.list("datasources")?.iter().enumerate() {
            let field = |key: &str| {
                crate::yaml::string_at(entry, key)
                    .with_context(|| format!("{shown}: datasources[{index}]"))
            };
            let datasource = Datasource {
                name: field("name")?,
                kind: field("type")?,
                uid: field("uid")?,
                url: field("url")?,
            };
            let url = reqwest::Url::parse(&datasource.url).with_context(|| {
                format!(
                    "{shown}: datasource {} url `{}`",
                    datasource.name, datasource.url
                )
            })?;
            anyhow::ensure!(
                matches!(url.scheme(), "http" | "https") && url.host_str().is_some(),
                "{shown}: datasource {} url `{}` is not an http(s) URL with a host",
                datasource.name,
                datasource.url
            );
            found.push(datasource);
        }
    }
    anyhow::ensure!(
        !found.is_empty(),
        "no datasource is provisioned in {}",
        dir.display()
    );
    Ok(found)
}

/// Every dashboard in the folders of every provider in `dir`, by uid.
fn dashboards(dir: &Path) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut found = BTreeMap::new();
    for file in yaml_files(dir)? {
        let shown = file.display().to_string();
        let config = crate::yaml::Config::load(&shown)?;
        for (index, provider) in config.list("providers")?.iter().enumerate() {
            let folder = crate::yaml::string_at(provider, "options.path")
                .with_context(|| format!("{shown}: providers[{index}]"))?;
            let entries = std::fs::read_dir(&folder)
                .with_context(|| format!("{shown}: providers[{index}]: cannot list {folder}"))?;
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().and_then(|e| e.to_str()) != Some("json") {
                    continue;
                }
                let dashboard: Value = std::fs::read(&path)
                    .ok()
                    .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                    .with_context(|| {
                        format!("{} is not a readable JSON dashboard", path.display())
                    })?;
                let uid = dashboard["uid"]
                    .as_str()
                    .with_context(|| format!("{} has no uid", path.display()))?;
                found.insert(uid.to_string(), path);
            }
        }
    }
    Ok(found)
}

/// The `*.yaml` files of `dir` (Grafana reads every one).
fn yaml_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            )
        })
        .collect();
    files.sort();
    Ok(files)
}
