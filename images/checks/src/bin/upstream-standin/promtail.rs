//! Promtail's stand-in: `promtail -config.file=F [-check-syntax]`.
//!
//! The config must parse and name a listen address and port, a positions file, at least one
//! client whose URL is a Loki push endpoint, and scrape configs whose static targets name
//! one file each (`__path__`; the stand-in takes no globs). Starting, it writes its
//! positions file (as the unit's user), then every second reads what was appended to each
//! file, pushes the new lines to every client (JSON, with the target's labels) and records
//! how far it got. `/ready` and `/metrics` answer as Promtail's do; `/standin` says what it
//! was configured with (client URLs, files) and what it sent, for the tests.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde_json::{json, Value};

use crate::http::{self, Reply, Request};
use crate::yaml::{self, Config};

pub fn main(args: &[String], version: &str) -> anyhow::Result<()> {
    let path = crate::flag(args, "config.file")
        .context("no -config.file=PATH given (the unit passes /etc/promtail/config.yaml)")?;
    let config = Config::load(&path)?;
    let checked = check(&config)?;
    if crate::switch(args, "check-syntax") {
        println!(
            "Valid config file! No syntax issues found (obstack stand-in for promtail {version})"
        );
        return Ok(());
    }
    std::fs::write(&checked.positions, "positions: {}\n")
        .with_context(|| format!("cannot write the positions file {}", checked.positions))?;
    eprintln!(
        "promtail {version} (obstack stand-in): {path} checked; shipping {} to {}",
        checked
            .targets
            .iter()
            .map(|t| t.path.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        checked.clients.join(", ")
    );
    let state = Arc::new(Mutex::new(State::default()));
    let shipping = Arc::clone(&state);
    let targets = checked.targets.clone();
    let clients = checked.clients.clone();
    let positions = checked.positions.clone();
    std::thread::spawn(move || ship(&targets, &clients, &positions, &shipping));
    let version = version.to_string();
    http::serve(
        &http::listen_address(&checked.address, checked.port),
        move |request| answer(request, &checked, &state, &version),
    )
}

/// One file to tail, with the labels its lines get.
#[derive(Debug, Clone)]
struct Target {
    path: String,
    labels: BTreeMap<String, String>,
}

struct Checked {
    address: String,
    port: u16,
    positions: String,
    clients: Vec<String>,
    targets: Vec<Target>,
}

fn check(config: &Config) -> anyhow::Result<Checked> {
    let port = config.port("server.http_listen_port")?;
    let address = config
        .get("server.http_listen_address")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let positions = config.absolute_path("positions.filename")?;
    let mut clients = Vec::new();
    for (index, client) in config.list("clients")?.iter().enumerate() {
        let url = yaml::string_at(client, "url")
            .with_context(|| format!("{}: clients[{index}]", config.path))?;
        let parsed = reqwest::Url::parse(&url)
            .with_context(|| format!("{}: clients[{index}].url `{url}`", config.path))?;
        anyhow::ensure!(
            matches!(parsed.scheme(), "http" | "https")
                && parsed.host_str().is_some_and(|h| !h.is_empty())
                && parsed.path() == "/loki/api/v1/push",
            "{}: clients[{index}].url `{url}` is not a Loki push URL (http://HOST:PORT/loki/api/v1/push)",
            config.path
        );
        clients.push(url);
    }
    let mut targets = Vec::new();
    for (index, scrape) in config.list("scrape_configs")?.iter().enumerate() {
        let where_ = format!("{}: scrape_configs[{index}]", config.path);
        yaml::string_at(scrape, "job_name").with_context(|| where_.clone())?;
        let statics = yaml::at(scrape, "static_configs")
            .and_then(|v| v.as_sequence())
            .filter(|s| !s.is_empty())
            .with_context(|| format!("{where_}: no static_configs"))?;
        for entry in statics {
            let labels = yaml::at(entry, "labels")
                .and_then(|v| v.as_mapping())
                .with_context(|| format!("{where_}: a static config without labels"))?;
            let mut target = Target {
                path: String::new(),
                labels: BTreeMap::new(),
            };
            for (name, value) in labels {
                let (Some(name), Some(value)) = (name.as_str(), value.as_str()) else {
                    anyhow::bail!("{where_}: labels must be strings");
                };
                if name == "__path__" {
                    target.path = value.to_string();
                } else {
                    target.labels.insert(name.to_string(), value.to_string());
                }
            }
            anyhow::ensure!(
                target.path.starts_with('/') && !target.path.contains(['*', '?', '[']),
                "{where_}: __path__ `{}` must be one absolute file (the stand-in takes no globs)",
                target.path
            );
            targets.push(target);
        }
    }
    Ok(Checked {
        address,
        port,
        positions,
        clients,
        targets,
    })
}

#[derive(Default)]
struct State {
    sent_lines: u64,
    /// The last problem per file or client, for `/standin` and the journal.
    problems: BTreeMap<String, String>,
}

/// Tails every target once a second, forever.
fn ship(targets: &[Target], clients: &[String], positions: &str, state: &Mutex<State>) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build();
    let client = match client {
        Ok(client) => client,
        Err(e) => {
            eprintln!("cannot build an HTTP client: {e}");
            return;
        }
    };
    // Per file: (inode, offset).
    let mut offsets: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    loop {
        for target in targets {
            let (inode, offset) = offsets.get(&target.path).copied().unwrap_or((0, 0));
            match read_new(&target.path, inode, offset) {
                Ok((inode, next, lines)) => {
                    report(state, &target.path, None);
                    if lines.is_empty() {
                        offsets.insert(target.path.clone(), (inode, next));
                        continue;
                    }
                    let pushed = clients
                        .iter()
                        .all(|url| push(&client, url, target, &lines, state));
                    if pushed {
                        offsets.insert(target.path.clone(), (inode, next));
                        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                        state.sent_lines += lines.len() as u64;
                    }
                }
                Err(e) => report(state, &target.path, Some(format!("{e:#}"))),
            }
        }
        let recorded: BTreeMap<&String, u64> =
            offsets.iter().map(|(path, (_, at))| (path, *at)).collect();
        let text = format!(
            "positions:\n{}",
            recorded
                .iter()
                .map(|(path, at)| format!("  {path}: \"{at}\"\n"))
                .collect::<String>()
        );
        if let Err(e) = std::fs::write(positions, text) {
            report(state, positions, Some(format!("cannot write it: {e}")));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The whole lines appended to `path` since `offset` (from the start if it is a new file).
fn read_new(path: &str, inode: u64, offset: u64) -> anyhow::Result<(u64, u64, Vec<String>)> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        // Not written yet: nothing to ship.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((inode, offset, vec![])),
        Err(e) => return Err(e).with_context(|| format!("cannot read {path}")),
    };
    let meta = file.metadata()?;
    let start = if meta.ino() != inode || meta.len() < offset {
        0
    } else {
        offset
    };
    file.seek(SeekFrom::Start(start))?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .with_context(|| format!("cannot read {path}"))?;
    let whole = text.rfind('\n').map(|end| end + 1).unwrap_or(0);
    let lines = text[..whole].lines().map(str::to_string).collect();
    Ok((meta.ino(), start + whole as u64, lines))
}

fn push(
    client: &reqwest::blocking::Client,
    url: &str,
    target: &Target,
    lines: &[String],
    state: &Mutex<State>,
) -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let values: Vec<Value> = lines
        .iter()
        .enumerate()
        .map(|(i, line)| json!([(now + i as u128).to_string(), line]))
        .collect();
    let body = json!({"streams": [{"stream": target.labels, "values": values}]});
    let result = client
        .post(url)
        .json(&body)
        .send()
        .map_err(|e| e.to_string())
        .and_then(|response| {
            if response.status().is_success() {
                Ok(())
            } else {
                Err(format!("answered {}", response.status()))
            }
        });
    match result {
        Ok(()) => {
            report(state, url, None);
            true
        }
        Err(e) => {
            report(state, url, Some(format!("push failed: {e}")));
            false
        }
    }
}

/// Records (and logs, once per change) the current problem of a file or client.
fn report(state: &Mutex<State>, what: &str, problem: Option<String>) {
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    match problem {
        Some(problem) => {
            if state.problems.get(what) != Some(&problem) {
                eprintln!("{what}: {problem}");
                state.problems.insert(what.to_string(), problem);
            }
        }
        None => {
            state.problems.remove(what);
        }
    }
}

fn answer(request: &Request, checked: &Checked, state: &Mutex<State>, version: &str) -> Reply {
    let state = state.lock().unwrap_or_else(|e| e.into_inner());
    match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/ready") => Reply::text(200, "Ready\n"),
        ("GET", "/metrics") => Reply::metrics(format!(
            "# TYPE promtail_build_info gauge\npromtail_build_info{{version=\"{version}\",standin=\"obstack\"}} 1\n\
             # TYPE promtail_standin_sent_lines_total counter\npromtail_standin_sent_lines_total {}\n",
            state.sent_lines
        )),
        ("GET", "/standin") => Reply::json(
            200,
            &json!({
                "clients": checked.clients,
                "files": checked.targets.iter().map(|t| t.path.clone()).collect::<Vec<_>>(),
                "sent_lines": state.sent_lines,
                "problems": state.problems,
            }),
        ),
        _ => Reply::text(404, "404 page not found\n"),
    }
}
