//! Loki's stand-in: `loki -config.file=F [-verify-config]`.
//!
//! The config must parse and name what a single-binary Loki on local disk needs: its listen
//! address and port, the path prefix, a schema with at least one period, the TSDB index
//! directories, the WAL and the compactor's directory. Starting, it creates those directories
//! (as the unit's user, like Loki), then serves `/ready`, `/metrics`, the push API (JSON
//! streams, each line appended to a file in the WAL directory and synced before the push is
//! acknowledged) and `query_range` for `{label="value",...} |= "text"`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use serde_json::{json, Value};

use crate::http::{self, Reply, Request};
use crate::yaml::{self, Config};

/// The file in the WAL directory that holds every pushed line, one JSON object each.
const STORE: &str = "standin-lines.jsonl";

pub fn main(args: &[String], version: &str) -> anyhow::Result<()> {
    let path = crate::flag(args, "config.file")
        .context("no -config.file=PATH given (the unit passes /etc/loki/config.yaml)")?;
    let config = Config::load(&path)?;
    let checked = check(&config)?;
    if crate::switch(args, "verify-config") {
        println!("{path}: valid (obstack stand-in for loki {version})");
        return Ok(());
    }
    for dir in &checked.directories {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {dir}"))?;
    }
    let store = Path::new(&checked.wal_dir).join(STORE);
    // Opened now, so a data directory it cannot write stops it at once, as Loki's WAL would.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&store)
        .with_context(|| format!("cannot open {}", store.display()))?;
    eprintln!(
        "loki {version} (obstack stand-in): {path} checked; {} schema period(s), data under {}",
        checked.periods, checked.path_prefix
    );
    let loki = Arc::new(Loki {
        store,
        lock: Mutex::new(()),
        received: AtomicU64::new(0),
        version: version.to_string(),
    });
    http::serve(
        &http::listen_address(&checked.address, checked.port),
        move |request| loki.answer(request),
    )
}

/// What the checks found.
struct Checked {
    address: String,
    port: u16,
    path_prefix: String,
    wal_dir: String,
    periods: usize,
    directories: Vec<String>,
}

fn check(config: &Config) -> anyhow::Result<Checked> {
    let port = config.port("server.http_listen_port")?;
    let address = config
        .get("server.http_listen_address")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let path_prefix = config.absolute_path("common.path_prefix")?;
    let periods = config.list("schema_config.configs")?;
    for (index, period) in periods.iter().enumerate() {
        for key in ["from", "store", "object_store", "schema"] {
            yaml::string_at(period, key)
                .with_context(|| format!("{}: schema_config.configs[{index}]", config.path))?;
        }
    }
    let mut directories = vec![path_prefix.clone()];
    for key in [
        "common.storage.filesystem.chunks_directory",
        "common.storage.filesystem.rules_directory",
    ] {
        if config.get(key).is_some() {
            directories.push(config.absolute_path(key)?);
        }
    }
    directories.push(config.absolute_path("storage_config.tsdb_shipper.active_index_directory")?);
    directories.push(config.absolute_path("storage_config.tsdb_shipper.cache_location")?);
    let wal_dir = config.absolute_path("ingester.wal.dir")?;
    directories.push(wal_dir.clone());
    directories.push(config.absolute_path("compactor.working_directory")?);
    if config
        .get("compactor.retention_enabled")
        .and_then(|v| v.as_bool())
        == Some(true)
    {
        config
            .string("compactor.delete_request_store")
            .context("retention is enabled")?;
    }
    Ok(Checked {
        address,
        port,
        path_prefix,
        wal_dir,
        periods: periods.len(),
        directories,
    })
}

struct Loki {
    store: PathBuf,
    lock: Mutex<()>,
    received: AtomicU64,
    version: String,
}

impl Loki {
    fn answer(&self, request: &Request) -> Reply {
        match (request.method.as_str(), request.path.as_str()) {
            ("GET", "/ready") => Reply::text(200, "ready\n"),
            ("GET", "/metrics") => Reply::metrics(format!(
                "# TYPE loki_build_info gauge\nloki_build_info{{version=\"{}\",standin=\"obstack\"}} 1\n\
                 # TYPE loki_standin_lines_received_total counter\nloki_standin_lines_received_total {}\n",
                self.version,
                self.received.load(Ordering::Relaxed)
            )),
            ("POST", "/loki/api/v1/push") => match self.push(&request.body) {
                Ok(()) => Reply::text(204, ""),
                Err(e) => Reply::text(400, format!("{e:#}\n")),
            },
            ("GET", "/loki/api/v1/query_range") => match self.query(request) {
                Ok(value) => Reply::json(200, &value),
                Err(e) => Reply::json(400, &json!({"status": "error", "error": format!("{e:#}")})),
            },
            _ => Reply::text(404, "404 page not found\n"),
        }
    }

    /// Appends the pushed lines and syncs them before acknowledging (Loki's WAL promise).
    fn push(&self, body: &[u8]) -> anyhow::Result<()> {
        let push: Value = serde_json::from_slice(body)
            .context("the stand-in takes JSON pushes (Content-Type: application/json)")?;
        let mut records = String::new();
        let streams = push["streams"].as_array().context("no `streams` list")?;
        for stream in streams {
            for entry in stream["values"]
                .as_array()
                .context("a stream without `values`")?
            {
                let record = json!({"stream": stream["stream"], "ts": entry[0], "line": entry[1]});
                records.push_str(&record.to_string());
                records.push('\n');
                self.received.fetch_add(1, Ordering::Relaxed);
            }
        }
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.store)
            .with_context(|| format!("cannot open {}", self.store.display()))?;
        file.write_all(records.as_bytes())?;
        file.sync_data()?;
        Ok(())
    }

    /// `{a="b",...} |= "text" |= ...` over every stored line.
    fn query(&self, request: &Request) -> anyhow::Result<Value> {
        let query = request.param("query").context("no `query` parameter")?;
        let (matchers, needles) = parse_query(query)?;
        let text = {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            std::fs::read_to_string(&self.store).unwrap_or_default()
        };
        let mut streams: BTreeMap<String, (Value, Vec<Value>)> = BTreeMap::new();
        for record in text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        {
            let labels = &record["stream"];
            let matches = matchers
                .iter()
                .all(|(name, value)| labels[name].as_str() == Some(value));
            let line = record["line"].as_str().unwrap_or_default();
            if matches && needles.iter().all(|needle| line.contains(needle.as_str())) {
                let entry = streams
                    .entry(labels.to_string())
                    .or_insert_with(|| (labels.clone(), Vec::new()));
                entry.1.push(json!([record["ts"], line]));
            }
        }
        let result: Vec<Value> = streams
            .into_values()
            .map(|(stream, values)| json!({"stream": stream, "values": values}))
            .collect();
        Ok(json!({"status": "success", "data": {"resultType": "streams", "result": result}}))
    }
}

/// A query's label matchers (`name="value"`) and line filters (`|= "text"`).
type Query = (Vec<(String, String)>, Vec<String>);

/// The LogQL the stand-in understands: a selector of `name="value"` matchers, then any
/// number of `|= "text"` filters.
fn parse_query(query: &str) -> anyhow::Result<Query> {
    const SUPPORTED: &str = "the stand-in answers only {name=\"value\",...} |= \"text\"";
    let query = query.trim();
    let rest = query.strip_prefix('{').context(SUPPORTED)?;
    let (selector, mut rest) = rest.split_once('}').context(SUPPORTED)?;
    let mut matchers = Vec::new();
    for matcher in selector.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let (name, value) = matcher.split_once('=').context(SUPPORTED)?;
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .context(SUPPORTED)?;
        matchers.push((name.trim().to_string(), value.to_string()));
    }
    let mut needles = Vec::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let after = rest.strip_prefix("|=").context(SUPPORTED)?.trim_start();
        let after = after.strip_prefix('"').context(SUPPORTED)?;
        let (needle, next) = after.split_once('"').context(SUPPORTED)?;
        needles.push(needle.to_string());
        rest = next;
    }
    Ok((matchers, needles))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_and_line_filters_parse() {
        let (matchers, needles) =
            parse_query(r#"{job="demo-app", level="INFO"} |= "abc" |= "d e""#).unwrap();
        assert_eq!(
            matchers,
            [
                ("job".to_string(), "demo-app".to_string()),
                ("level".to_string(), "INFO".to_string())
            ]
        );
        assert_eq!(needles, ["abc", "d e"]);
        assert!(parse_query(r#"rate({job="x"}[5m])"#).is_err());
        assert!(parse_query(r#"{job="x"} != "y""#).is_err());
    }
}
