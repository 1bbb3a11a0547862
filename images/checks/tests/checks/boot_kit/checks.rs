//! What a booted instance must show beyond active units and health paths:
//!
//! - [`rendered_from_tags`]: the agent wrote every file of the role's spec with its owner,
//!   group and mode, and the peers' addresses from the tags are in them;
//! - [`data_volume`]: the role's data directory is the NVMe volume, mounted with the
//!   agent's options, holding the services' data, every file owned by a service's user;
//! - [`serves`]: each service does its job, seen from the host: the app's request reaches
//!   the Loki address in its tags through Promtail, Prometheus scrapes every target of its
//!   rendered config, Loki keeps and finds a pushed line, Grafana serves its provisioned
//!   datasources to the admin whose password came from SSM. What it wrote is [`Written`],
//!   which [`still_there`] looks for after a replacement or a restore.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::boot::{one_line, Boot, BootFailure};
use super::deployment::{random_hex, spec, Deployment};
use super::images_dir;

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The base URL of `port` of the guest, through its forward.
fn url(boot: &Boot, port: u16) -> String {
    format!("http://{}", boot.machine.host_addr(port).unwrap())
}

/// Every file of the role's spec is where the spec says, with its owner, group and mode,
/// and each peer address of the instance's tags is in at least one of them.
pub fn rendered_from_tags(boot: &mut Boot) -> Result<(), BootFailure> {
    let spec = spec(&boot.role.name);
    let mut script = String::new();
    for file in &spec.files {
        script.push_str(&format!(
            "echo \"=== {p} $(stat -c '%U %G %a' {p})\"; cat {p}; echo; ",
            p = file.path
        ));
    }
    let output = boot.output(&script)?;
    let mut problems = Vec::new();
    let mut contents = String::new();
    for file in &spec.files {
        let header = format!("=== {} ", file.path);
        let Some(start) = output.find(&header) else {
            problems.push(format!("{} was not rendered", file.path));
            continue;
        };
        let rest = &output[start + header.len()..];
        let (stat, body) = rest.split_once('\n').unwrap_or((rest, ""));
        let body = body.split("\n=== ").next().unwrap_or_default();
        contents.push_str(body);
        let want = format!(
            "{} {} {:o}",
            file.owner.as_deref().unwrap_or("root"),
            file.group.as_deref().unwrap_or("root"),
            file.mode.0
        );
        if stat.trim() != want {
            problems.push(format!(
                "{} is `{}` (owner group mode), the spec says `{want}`",
                file.path,
                stat.trim()
            ));
        }
    }
    for (key, value) in boot.instance.imds.tags() {
        if key.starts_with("obstack:peer:") && !contents.contains(&value) {
            problems.push(format!("no rendered file holds {key}'s address {value}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(boot.failure(
            &format!(
                "the agent's files are not what the tags say: {}",
                problems.join("; ")
            ),
            &["stack-agent-render.service".to_string()],
        ))
    }
}

/// The data volume as the guest sees it.
#[derive(Debug, Clone)]
pub struct DataListing {
    /// The filesystem UUID findmnt reports.
    pub uuid: String,
    /// Each path under the mount point (lost+found aside): (owner, group, type).
    pub entries: BTreeMap<String, (String, String, String)>,
    /// SHA-256 of each `[[generated]]` file on the volume.
    pub generated: BTreeMap<String, String>,
}

/// The role's data directory is its NVMe volume, mounted `nodev,nosuid,noexec`, holding
/// files the services wrote, each owned by the volume's owner or a user of its services.
/// `None` for a role without a volume.
pub fn data_volume(boot: &mut Boot) -> Result<Option<DataListing>, BootFailure> {
    let Some(data) = boot.role.data.clone() else {
        return Ok(None);
    };
    let mount = &data.mount_point;
    let generated: Vec<String> = spec(&boot.role.name)
        .generated
        .iter()
        .filter(|g| data.holds(&g.path))
        .map(|g| g.path.clone())
        .collect();
    let script = format!(
        "findmnt --noheadings --output SOURCE,FSTYPE,UUID,OPTIONS --mountpoint {mount}; echo '---'; \
         find {mount} -xdev -mindepth 1 -path {mount}/lost+found -prune -o -printf '%P\\t%u\\t%g\\t%y\\n'; echo '---'; \
         {}",
        generated
            .iter()
            .map(|path| format!("sha256sum {path}; "))
            .collect::<String>()
    );
    let output = boot.output(&script)?;
    let mut parts = output.split("---\n");
    let mount_line = parts.next().unwrap_or_default().trim().to_string();
    let listing = parts.next().unwrap_or_default();
    let sums = parts.next().unwrap_or_default();
    let fields: Vec<&str> = mount_line.split_whitespace().collect();
    let mut problems = Vec::new();
    if fields.len() < 4 {
        problems.push(format!(
            "nothing is mounted at {mount} (findmnt: `{mount_line}`)"
        ));
    } else {
        let (source, fstype, options) = (fields[0], fields[1], fields[3]);
        if !source.starts_with("/dev/nvme") {
            problems.push(format!("{mount} is {source}, not the NVMe data volume"));
        }
        if fstype != data.filesystem.name() {
            problems.push(format!(
                "{mount} is {fstype}, not {}",
                data.filesystem.name()
            ));
        }
        for option in ["nodev", "nosuid", "noexec"] {
            if !options.split(',').any(|o| o == option) {
                problems.push(format!("{mount} is mounted without {option} ({options})"));
            }
        }
    }
    let (users, groups) = service_accounts(&data);
    let mut entries = BTreeMap::new();
    for line in listing.lines().filter(|l| !l.trim().is_empty()) {
        let cells: Vec<&str> = line.split('\t').collect();
        if cells.len() != 4 {
            continue;
        }
        let (path, owner, group, kind) = (cells[0], cells[1], cells[2], cells[3]);
        // The agent's own: lost+found, and its ownership record (root's, so that no
        // service can change what the next boot believes about the ids).
        if path == "lost+found" || path == stack_agent::mount::owners::RECORD {
            continue;
        }
        if !users.contains(owner) || !groups.contains(group) {
            problems.push(format!(
                "{mount}/{path} is owned by {owner}:{group}, not by a user of {} ({})",
                data.services.join(", "),
                users.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        entries.insert(
            path.to_string(),
            (owner.to_string(), group.to_string(), kind.to_string()),
        );
    }
    let written = entries
        .values()
        .any(|(owner, _, kind)| kind == "f" && owner != "root");
    if !written {
        problems.push(format!(
            "no service wrote a file on the volume at {mount}: {}",
            entries.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    let generated = sums
        .lines()
        .filter_map(|line| line.split_once("  "))
        .map(|(sum, path)| (path.to_string(), sum.to_string()))
        .collect();
    if !problems.is_empty() {
        return Err(boot.failure(
            &format!("the data volume is not right: {}", problems.join("; ")),
            &data.services,
        ));
    }
    Ok(Some(DataListing {
        uuid: fields.get(2).unwrap_or(&"").to_string(),
        entries,
        generated,
    }))
}

/// The users and groups that may own data on the volume: its owner's, and the `User=` and
/// `Group=` of each unit that keeps data there (the unit files in images/).
fn service_accounts(data: &stack_agent::data::DataSpec) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut users = BTreeSet::from([data.owner.clone()]);
    let mut groups = BTreeSet::from([data.group.clone()]);
    for unit in &data.services {
        let text = std::fs::read_dir(images_dir())
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path().join("rootfs/etc/systemd/system").join(unit))
            .find_map(|path| std::fs::read_to_string(path).ok())
            .unwrap_or_default();
        for line in text.lines() {
            if let Some(user) = line.strip_prefix("User=") {
                users.insert(user.trim().to_string());
            }
            if let Some(group) = line.strip_prefix("Group=") {
                groups.insert(group.trim().to_string());
            }
        }
    }
    (users, groups)
}

/// After a replacement (or a restore): everything the first instance had on the volume is
/// there with the same owner names, its generated secrets unchanged, and the filesystem is
/// the same one (its UUID), so nothing was reformatted.
pub fn same_data(
    boot: &mut Boot,
    before: &DataListing,
    after: &DataListing,
) -> Result<(), BootFailure> {
    let mut problems = Vec::new();
    if before.uuid != after.uuid {
        problems.push(format!(
            "the filesystem is another one (UUID {} before, {} now): the volume was reformatted",
            before.uuid, after.uuid
        ));
    }
    for (path, (owner, group, kind)) in &before.entries {
        match after.entries.get(path) {
            None => problems.push(format!("{path} is gone")),
            Some((now_owner, now_group, _)) if (now_owner, now_group) != (owner, group) => problems
                .push(format!(
                    "{path} ({kind}) was {owner}:{group}, is now {now_owner}:{now_group}"
                )),
            Some(_) => {}
        }
    }
    for (path, sum) in &before.generated {
        if after.generated.get(path) != Some(sum) {
            problems.push(format!("the generated secret {path} changed"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        let units = boot
            .role
            .data
            .as_ref()
            .map(|d| d.services.clone())
            .unwrap_or_default();
        Err(boot.failure(
            &format!(
                "the data of the instance before is not what this one has: {}",
                problems.join("; ")
            ),
            &units,
        ))
    }
}

/// Data a service wrote that a later instance on the same volume must still have.
#[derive(Debug, Clone)]
pub enum Written {
    /// Prometheus had scraped samples by this time (seconds since the epoch).
    Samples { at: f64 },
    /// Loki stored this line (pushed with label `job="boot-test"`).
    LogLine { text: String },
}

/// Each service of the role does its job; what it wrote to keep is returned.
pub fn serves(boot: &mut Boot, deployment: &Deployment) -> Result<Vec<Written>, BootFailure> {
    let names: Vec<String> = boot.role.services.iter().map(|s| s.name.clone()).collect();
    let mut written = Vec::new();
    for name in names {
        match name.as_str() {
            "app" => app_logs_reach_loki(boot, deployment)?,
            "prometheus" => written.push(prometheus_scrapes_every_target(boot)?),
            "loki" => written.push(loki_keeps_a_line(boot)?),
            "grafana" => grafana_serves_its_datasources(boot, deployment)?,
            // Their health path is their job here (Alertmanager: Prometheus' check sees it
            // as its alertmanager; Promtail: the app's check ships through it).
            _ => {}
        }
    }
    Ok(written)
}

/// What a service wrote before is still there.
pub fn still_there(boot: &mut Boot, written: &[Written]) -> Result<(), BootFailure> {
    for item in written {
        match item {
            Written::Samples { at } => {
                let result = prometheus_query(boot, "count(up)", Some(*at));
                if !result.as_ref().is_ok_and(|r| !r.is_empty()) {
                    return Err(boot.failure(
                        &format!(
                            "Prometheus has no sample at {at:.0}, which the instance before had scraped ({result:?})"
                        ),
                        &["prometheus.service".to_string()],
                    ));
                }
            }
            Written::LogLine { text } => {
                if !loki_has(boot, text) {
                    return Err(boot.failure(
                        &format!(
                            "Loki no longer finds the line `{text}` the instance before stored"
                        ),
                        &["loki.service".to_string()],
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A request to the app is logged to its file under the request id the app answers with,
/// and Promtail (reading the file as its own user) pushes that line to the Loki address in
/// the tags.
fn app_logs_reach_loki(boot: &mut Boot, deployment: &Deployment) -> Result<(), BootFailure> {
    let app = boot.role.main_service().map(|s| s.port).unwrap_or(5000);
    let sent = client()
        .get(format!("{}/api/data", url(boot, app)))
        .send()
        .map_err(|e| one_line(&e))
        .and_then(|response| {
            response
                .headers()
                .get("x-request-id")
                .and_then(|id| id.to_str().ok())
                .map(str::to_string)
                .ok_or_else(|| format!("no x-request-id in its answer ({})", response.status()))
        });
    let id = match sent {
        Ok(id) => id,
        Err(e) => {
            return Err(boot.failure(
                &format!("the app did not answer /api/data with a request id: {e}"),
                &["demo-app.service".to_string()],
            ))
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if deployment
            .peers
            .pushed()
            .iter()
            .any(|line| line.contains(&id))
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let promtail = registry_port(boot, "promtail");
    let standin = client()
        .get(format!("{}/standin", url(boot, promtail)))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_else(|e| one_line(&e));
    Err(boot.failure(
        &format!(
            "the app's log line with request id {id} never reached the Loki address in the tags \
             (Promtail says: {standin})"
        ),
        &[
            "demo-app.service".to_string(),
            "promtail.service".to_string(),
        ],
    ))
}

fn registry_port(boot: &Boot, service: &str) -> u16 {
    boot.role
        .services
        .iter()
        .find(|s| s.name == service)
        .map(|s| s.port)
        .unwrap_or_else(|| panic!("{} runs no {service}", boot.role.name))
}

/// Prometheus scrapes every target its rendered config names (the peers through the tags'
/// addresses, itself, Alertmanager, node_exporter) and has its Alertmanager.
fn prometheus_scrapes_every_target(boot: &mut Boot) -> Result<Written, BootFailure> {
    let base = url(boot, registry_port(boot, "prometheus"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = String::new();
    while Instant::now() < deadline {
        let targets: Option<Value> = client()
            .get(format!("{base}/api/v1/targets?state=active"))
            .send()
            .ok()
            .and_then(|r| r.json().ok());
        let active = targets
            .as_ref()
            .and_then(|t| t["data"]["activeTargets"].as_array().cloned())
            .unwrap_or_default();
        let down: Vec<String> = active
            .iter()
            .filter(|t| t["health"] != "up")
            .map(|t| {
                format!(
                    "{} {} ({}: {})",
                    t["labels"]["job"].as_str().unwrap_or("?"),
                    t["scrapeUrl"].as_str().unwrap_or("?"),
                    t["health"].as_str().unwrap_or("?"),
                    t["lastError"].as_str().unwrap_or("")
                )
            })
            .collect();
        let managers = client()
            .get(format!("{base}/api/v1/alertmanagers"))
            .send()
            .ok()
            .and_then(|r| r.json::<Value>().ok())
            .and_then(|v| v["data"]["activeAlertmanagers"].as_array().map(Vec::len))
            .unwrap_or(0);
        if !active.is_empty() && down.is_empty() && managers > 0 {
            let at = now() - 1.0;
            return Ok(Written::Samples { at });
        }
        last = format!(
            "{} target(s), not up: {}; {managers} Alertmanager(s)",
            active.len(),
            if down.is_empty() {
                "none".into()
            } else {
                down.join(", ")
            }
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    Err(boot.failure(
        &format!("Prometheus does not scrape every target of its config: {last}"),
        &[
            "prometheus.service".to_string(),
            "alertmanager.service".to_string(),
        ],
    ))
}

/// The result vector of an instant query (at `time`, or now).
pub fn prometheus_query(boot: &Boot, query: &str, time: Option<f64>) -> Result<Vec<Value>, String> {
    let base = url(boot, registry_port(boot, "prometheus"));
    let mut request = client()
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", query)]);
    if let Some(time) = time {
        request = request.query(&[("time", format!("{time:.3}"))]);
    }
    let value: Value = request
        .send()
        .and_then(|r| r.json())
        .map_err(|e| one_line(&e))?;
    value["data"]["result"]
        .as_array()
        .cloned()
        .ok_or_else(|| format!("no result: {value}"))
}

/// A line pushed to Loki is stored (synced to its WAL directory) and found by a query.
fn loki_keeps_a_line(boot: &mut Boot) -> Result<Written, BootFailure> {
    let text = format!("obstack boot test line {}", random_hex(6));
    let base = url(boot, registry_port(boot, "loki"));
    let ns = (now() * 1e9) as u128;
    let push = serde_json::json!({"streams": [{"stream": {"job": "boot-test"}, "values": [[ns.to_string(), text]]}]});
    let pushed = client()
        .post(format!("{base}/loki/api/v1/push"))
        .json(&push)
        .send()
        .map_err(|e| one_line(&e))
        .and_then(|r| {
            if r.status().is_success() {
                Ok(())
            } else {
                Err(format!("{}: {}", r.status(), r.text().unwrap_or_default()))
            }
        });
    if let Err(e) = pushed {
        return Err(boot.failure(
            &format!("Loki refused a push: {e}"),
            &["loki.service".to_string()],
        ));
    }
    if !loki_has(boot, &text) {
        return Err(boot.failure(
            &format!("Loki does not find the line `{text}` it accepted"),
            &["loki.service".to_string()],
        ));
    }
    Ok(Written::LogLine { text })
}

fn loki_has(boot: &Boot, text: &str) -> bool {
    let base = url(boot, registry_port(boot, "loki"));
    client()
        .get(format!("{base}/loki/api/v1/query_range"))
        .query(&[("query", format!("{{job=\"boot-test\"}} |= \"{text}\""))])
        .send()
        .and_then(|r| r.text())
        .is_ok_and(|body| body.contains(text))
}

/// Grafana answers its API to the admin with the password the agent fetched from SSM, and
/// its datasources point at the peers' addresses from the tags.
fn grafana_serves_its_datasources(
    boot: &mut Boot,
    deployment: &Deployment,
) -> Result<(), BootFailure> {
    let base = url(boot, registry_port(boot, "grafana"));
    let tag = spec(&boot.role.name)
        .secrets
        .iter()
        .map(|s| s.name_tag.clone())
        .find(|t| t.contains("admin-password"))
        .expect("Grafana's spec has its admin password secret");
    let password = deployment
        .parameter(&boot.role.name, &tag)
        .expect("the deployment holds the admin password")
        .to_string();
    let answer = client()
        .get(format!("{base}/api/datasources"))
        .basic_auth("admin", Some(&password))
        .send()
        .and_then(|r| {
            let status = r.status();
            r.text().map(|body| (status, body))
        });
    let problem = match &answer {
        Ok((status, _)) if !status.is_success() => {
            Some(format!("/api/datasources answered {status} to the admin"))
        }
        Ok((_, body)) => {
            let missing: Vec<String> = boot
                .role
                .peers
                .keys()
                .map(|peer| deployment.address(peer).to_string())
                .filter(|address| !body.contains(address))
                .collect();
            (!missing.is_empty())
                .then(|| format!("no datasource points at {} ({body})", missing.join(", ")))
        }
        Err(e) => Some(format!("/api/datasources: {}", one_line(e))),
    };
    let fetched = boot.instance.ssm.fetched();
    let from_ssm = fetched
        .iter()
        .any(|f| f.refused.is_none() && f.name.contains("admin-password"));
    let problem = problem.or_else(|| {
        (!from_ssm).then(|| {
            format!("the agent never fetched the admin password from SSM with the instance role ({fetched:?})")
        })
    });
    match problem {
        None => Ok(()),
        Some(problem) => Err(boot.failure(
            &problem,
            &[
                "grafana-server.service".to_string(),
                "stack-agent-render.service".to_string(),
            ],
        )),
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}
