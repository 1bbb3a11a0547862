//! Every role's templates, rendered through the boot agent's own renderer with the tags a
//! real deployment carries, and the configs they produce checked key by key.

use crate::stack;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use stack::{
    file, promtail_stream_labels, render, render_sample, roles, sample_tags, scrape_targets, yaml,
    APP_IP, GRAFANA_IP, INSTANCE_ID, LOKI_IP, PROMETHEUS_IP,
};
use stack_agent::AgentError;

/// The systemd units of `role`'s own services (the registry's `[[services]]`).
fn units(role: &str) -> Vec<&'static str> {
    let role = stack::registry().role(role).unwrap();
    role.services.iter().map(|s| s.unit.as_str()).collect()
}

fn role_spec(role: &str) -> toml::Value {
    let path = stack::images_dir().join(role).join("role.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn spec_file_paths(role: &str) -> BTreeSet<String> {
    role_spec(role)["files"]
        .as_array()
        .unwrap_or_else(|| panic!("role `{role}` renders no files"))
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect()
}

fn spec_peers(role: &str) -> Vec<String> {
    role_spec(role)
        .get("peers")
        .and_then(|p| p.as_table())
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default()
}

/// Whether `text` starts with a Go template action (Alertmanager's notification templates):
/// `{{` then a field (`.Status`), a variable (`$x`) or one of the keywords and functions
/// this stack's config uses; a Jinja expression starts with none of them.
fn is_go_action(text: &str) -> bool {
    let Some(action) = text.strip_prefix("{{") else {
        return false;
    };
    let action = action.trim_start_matches('-').trim_start();
    action.starts_with(['.', '$'])
        || ["if ", "else", "end", "range ", "with ", "or ", "template "]
            .iter()
            .any(|keyword| action.starts_with(keyword))
}

#[test]
fn a_go_action_is_told_from_a_jinja_leftover() {
    for go in [
        "{{ .Status }}",
        "{{- range .Alerts }}",
        "{{ end }}",
        "{{ or .Labels.x \"none\" }}",
    ] {
        assert!(is_go_action(go), "{go}");
    }
    for jinja in [
        "{{ sns_topic.arn }}",
        "{{ secrets.slack_url_path }}",
        "{{ root }}",
        "{%",
        "x",
    ] {
        assert!(!is_go_action(jinja), "{jinja}");
    }
}

#[test]
fn every_role_renders_every_file_of_its_spec() {
    for role in roles() {
        let root = tempfile::tempdir().unwrap();
        let files = render_sample(role, root.path());
        let rendered: BTreeSet<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
        let expected: BTreeSet<PathBuf> = spec_file_paths(role)
            .iter()
            .map(|p| PathBuf::from(format!("{}{p}", root.path().display())))
            .collect();
        assert_eq!(
            rendered, expected,
            "role `{role}` rendered other files than its spec lists"
        );
        for rendered in &files {
            let text = &rendered.contents;
            // Alertmanager's config holds Alertmanager's own Go templates (`{{ .Status }}`),
            // which the agent's templates write inside raw blocks; nothing else may remain.
            let go_templates = rendered
                .services
                .iter()
                .any(|s| s == "alertmanager.service");
            for leftover in ["{{", "{%", "{#"] {
                let left: Vec<&str> = text
                    .match_indices(leftover)
                    .map(|(at, _)| &text[at..])
                    .filter(|rest| !(go_templates && is_go_action(rest)))
                    .collect();
                assert!(
                    left.is_empty(),
                    "{} still holds template syntax `{leftover}`:\n{text}",
                    rendered.path.display()
                );
            }
            assert!(
                !rendered.services.is_empty(),
                "{} restarts no service",
                rendered.path.display()
            );
            for service in &rendered.services {
                assert!(
                    units(role).contains(&service.as_str()),
                    "{role}: {service} is not a unit of a service of the role"
                );
            }
        }
    }
}

#[test]
fn on_ec2_files_land_at_their_machine_paths() {
    for role in roles() {
        let files = render(role, &sample_tags(role), Path::new(""));
        let rendered: BTreeSet<String> =
            files.iter().map(|f| f.path.display().to_string()).collect();
        assert_eq!(rendered, spec_file_paths(role), "role `{role}`");
    }
    let files = render("app", &sample_tags("app"), Path::new(""));
    let promtail = yaml(&file(&files, Path::new(""), "/etc/promtail/config.yaml").contents);
    assert_eq!(
        promtail["scrape_configs"][0]["static_configs"][0]["labels"]["__path__"],
        "/var/log/demo-app/app.log"
    );
}

#[test]
fn promtail_ships_only_the_live_log_with_low_cardinality_labels() {
    let root = tempfile::tempdir().unwrap();
    let files = render_sample("app", root.path());
    let config = yaml(&file(&files, root.path(), "/etc/promtail/config.yaml").contents);
    let r = root.path().display();

    assert_eq!(
        config["clients"][0]["url"],
        format!("http://{LOKI_IP}:3100/loki/api/v1/push")
    );
    assert_eq!(config["server"]["http_listen_address"], "0.0.0.0");
    assert_eq!(config["server"]["http_listen_port"], 9080);
    assert_eq!(
        config["positions"]["filename"],
        format!("{r}/var/lib/promtail/positions.yaml")
    );

    let jobs = config["scrape_configs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "one scrape job, the app's log");
    let labels = &jobs[0]["static_configs"][0]["labels"];
    let path = labels["__path__"].as_str().unwrap();
    assert_eq!(path, format!("{r}/var/log/demo-app/app.log"));
    assert!(
        !path.contains(['*', '?', '[', '{']),
        "a glob would also ship the rotated files: {path}"
    );
    assert_eq!(labels["job"], "demo-app");
    assert_eq!(labels["instance"], INSTANCE_ID);

    let stream_labels = promtail_stream_labels(&config);
    assert_eq!(
        stream_labels,
        BTreeSet::from([
            "instance".to_string(),
            "job".to_string(),
            "level".to_string()
        ]),
        "Loki stream labels must stay job, instance and level"
    );
}

#[test]
fn demo_app_env_file_uses_the_apps_own_variables() {
    let root = tempfile::tempdir().unwrap();
    let files = render_sample("app", root.path());
    let env = env_file(&file(&files, root.path(), "/etc/default/demo-app").contents);
    assert_eq!(env["DEMO_APP_LISTEN"], "0.0.0.0:5000");
    assert_eq!(
        env["DEMO_APP_LOG_FILE"],
        format!("{}/var/log/demo-app/app.log", root.path().display())
    );
    // Every variable must be one the app reads (its clap `env = "..."` attributes).
    let config_rs =
        std::fs::read_to_string(testkit::workspace_root().join("app/src/config.rs")).unwrap();
    for key in env.keys() {
        assert!(
            config_rs.contains(&format!("env = \"{key}\"")),
            "demo-app does not read {key} (app/src/config.rs)"
        );
    }
}

#[test]
fn ipv6_bind_address_gives_parseable_listen_addresses() {
    let root = tempfile::tempdir().unwrap();
    for (role, path, key) in [
        ("app", "/etc/default/demo-app", "DEMO_APP_LISTEN"),
        (
            "prometheus",
            "/etc/default/prometheus",
            "PROMETHEUS_LISTEN_ADDRESS",
        ),
    ] {
        let mut tags = sample_tags(role);
        tags.insert("obstack:bind-address".into(), "::".into());
        let files = render(role, &tags, root.path());
        let env = env_file(&file(&files, root.path(), path).contents);
        let listen: SocketAddr = env[key]
            .parse()
            .unwrap_or_else(|e| panic!("{key}={} is not host:port: {e}", env[key]));
        assert!(listen.is_ipv6(), "{key}={listen}");
    }
}

/// The tag sets of a single-app deployment whose rendered prometheus.yml is kept in
/// tests/fixtures/prometheus-single-app/ (rendered by the template before the app fleet):
/// (fixture, tags).
fn single_app_deployments() -> Vec<(&'static str, BTreeMap<String, String>)> {
    let all_peers = sample_tags("prometheus");
    let mut ipv6 = sample_tags("prometheus");
    ipv6.remove("obstack:peer:loki");
    ipv6.remove("obstack:peer:grafana");
    ipv6.insert("obstack:peer:app".into(), "fd00::10".into());
    ipv6.insert("obstack:bind-address".into(), "::1".into());
    let mut local = sample_tags("prometheus");
    local.remove("obstack:peer:loki");
    local.remove("obstack:peer:grafana");
    local.insert("obstack:peer:app".into(), "127.0.0.1:5000".into());
    local.insert("obstack:bind-address".into(), "127.0.0.1".into());
    local.insert(
        "obstack:absent".into(),
        "loki,promtail,alertmanager,grafana,node_exporter".into(),
    );
    let mut shared = sample_tags("prometheus");
    shared.insert("obstack:peer:loki".into(), APP_IP.into());
    vec![
        ("all-peers", all_peers),
        ("ipv6-required-only", ipv6),
        ("local-app-only", local),
        ("shared-host", shared),
    ]
}

#[test]
fn without_an_app_fleet_prometheus_renders_the_same_bytes_as_before() {
    let fixtures =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prometheus-single-app");
    for (name, tags) in single_app_deployments() {
        let files = render("prometheus", &tags, Path::new(""));
        let rendered = &file(&files, Path::new(""), "/etc/prometheus/prometheus.yml").contents;
        let path = fixtures.join(format!("{name}.yml"));
        let before =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            *rendered == before,
            "{name}: the single-app config changed; rendered:\n{rendered}\nbefore ({}):\n{before}",
            path.display()
        );
        // Without a fleet the rendered rule file holds no rule.
        let rules =
            yaml(&file(&files, Path::new(""), "/etc/prometheus/rules/app-fleet.yml").contents);
        assert_eq!(rules, serde_json::json!({"groups": []}), "{name}");
    }
}

/// The `ec2_sd_configs` of a job of a rendered config (empty when it has none).
fn ec2_discovery(job: &serde_json::Value) -> Vec<serde_json::Value> {
    job["ec2_sd_configs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn job<'a>(config: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    config["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_name"] == name)
        .unwrap_or_else(|| panic!("no `{name}` job in {config}"))
}

#[test]
fn with_an_app_fleet_prometheus_discovers_the_deployments_running_app_instances() {
    let root = tempfile::tempdir().unwrap();
    let files = render("prometheus", &stack::fleet_tags(3), root.path());
    let config = yaml(&file(&files, root.path(), "/etc/prometheus/prometheus.yml").contents);
    let filters = serde_json::json!([
        {"name": "tag:obstack:role", "values": ["app"]},
        {"name": "tag:obstack:deployment", "values": [stack::DEPLOYMENT]},
        {"name": "instance-state-name", "values": ["running"]},
    ]);
    for (name, port) in [("demo-app", 5000), ("node", 9100), ("promtail", 9080)] {
        let job = job(&config, name);
        let discovery = ec2_discovery(job);
        assert_eq!(discovery.len(), 1, "{name}: {job}");
        assert_eq!(discovery[0]["filters"], filters, "{name}");
        // The region comes from the instance metadata; keys never appear.
        for key in [
            "region",
            "endpoint",
            "access_key",
            "secret_key",
            "profile",
            "role_arn",
        ] {
            assert!(discovery[0].get(key).is_none(), "{name} sets `{key}`");
        }
        let relabel = job["relabel_configs"].as_array().unwrap();
        let rule = |target: &str| {
            relabel
                .iter()
                .find(|r| r["target_label"] == target)
                .unwrap_or_else(|| panic!("{name}: nothing sets `{target}`"))
        };
        assert_eq!(
            rule("__address__")["source_labels"],
            serde_json::json!(["__meta_ec2_private_ip"])
        );
        assert_eq!(rule("__address__")["replacement"], format!("${{1}}:{port}"));
        assert_eq!(
            rule("instance_id")["source_labels"],
            serde_json::json!(["__meta_ec2_instance_id"])
        );
        assert_eq!(
            rule("availability_zone")["source_labels"],
            serde_json::json!(["__meta_ec2_availability_zone"])
        );
        // `cargo xtask deploy` reads it to know the instance refresh is done.
        assert_eq!(
            rule("ami")["source_labels"],
            serde_json::json!(["__meta_ec2_ami"])
        );
        assert_eq!(rule("role")["replacement"], "app");
    }
    // The app has no static target; the other roles' nodes stay static.
    assert!(job(&config, "demo-app")["static_configs"].is_null());
    assert!(job(&config, "promtail")["static_configs"].is_null());
    let nodes: BTreeSet<String> = job(&config, "node")["static_configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["labels"]["role"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        nodes,
        BTreeSet::from(["prometheus".into(), "loki".into(), "grafana".into()])
    );
    for static_job in ["prometheus", "loki", "grafana", "alertmanager"] {
        assert!(
            ec2_discovery(job(&config, static_job)).is_empty(),
            "{static_job}"
        );
    }

    // The fleet's size rule compares with the group's desired capacity.
    let rules = yaml(&file(&files, root.path(), "/etc/prometheus/rules/app-fleet.yml").contents);
    let rule = &rules["groups"][0]["rules"][0];
    assert_eq!(rule["alert"], "AppFleetBelowDesired");
    assert!(rule["expr"].as_str().unwrap().ends_with("< 3"), "{rule}");
}

#[test]
fn an_app_fleet_without_promtail_or_node_exporter_discovers_only_the_app() {
    let root = tempfile::tempdir().unwrap();
    let mut tags = stack::fleet_tags(2);
    tags.insert("obstack:absent".into(), "promtail,node_exporter".into());
    let files = render("prometheus", &tags, root.path());
    let config = yaml(&file(&files, root.path(), "/etc/prometheus/prometheus.yml").contents);
    let discovered: Vec<&str> = config["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| !ec2_discovery(j).is_empty())
        .map(|j| j["job_name"].as_str().unwrap())
        .collect();
    assert_eq!(discovered, ["demo-app"]);
}

fn env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not KEY=value: {l}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn prometheus_scrapes_every_service_and_node_every_15s() {
    let root = tempfile::tempdir().unwrap();
    let files = render_sample("prometheus", root.path());
    let config = yaml(&file(&files, root.path(), "/etc/prometheus/prometheus.yml").contents);
    assert_eq!(config["global"]["scrape_interval"], "15s");
    assert_eq!(
        config["rule_files"][0],
        format!("{}/etc/prometheus/rules/*.yml", root.path().display())
    );
    let targets = scrape_targets(&config);
    let expect = |job: &str, wanted: &[String]| {
        let got = targets
            .get(job)
            .unwrap_or_else(|| panic!("no `{job}` job: {targets:?}"));
        let wanted: BTreeSet<String> = wanted.iter().cloned().collect();
        assert_eq!(got, &wanted, "targets of job `{job}`");
    };
    expect("demo-app", &[format!("{APP_IP}:5000")]);
    expect("prometheus", &["127.0.0.1:9090".into()]);
    expect(
        "node",
        &[
            format!("{APP_IP}:9100"),
            format!("{LOKI_IP}:9100"),
            format!("{GRAFANA_IP}:9100"),
            "127.0.0.1:9100".into(),
        ],
    );
    expect("promtail", &[format!("{APP_IP}:9080")]);
    expect("loki", &[format!("{LOKI_IP}:3100")]);
    expect("grafana", &[format!("{GRAFANA_IP}:3000")]);
    // Alertmanager runs beside Prometheus and is reached like it.
    expect("alertmanager", &["127.0.0.1:9093".into()]);
    assert_eq!(targets.len(), 7, "unexpected jobs: {targets:?}");
}

#[test]
fn prometheus_without_optional_peers_scrapes_what_exists() {
    let root = tempfile::tempdir().unwrap();
    let mut tags = sample_tags("prometheus");
    tags.remove("obstack:peer:loki");
    tags.remove("obstack:peer:grafana");
    let files = render("prometheus", &tags, root.path());
    let config = yaml(&file(&files, root.path(), "/etc/prometheus/prometheus.yml").contents);
    let targets = scrape_targets(&config);
    let jobs: BTreeSet<&str> = targets.keys().map(String::as_str).collect();
    assert_eq!(
        jobs,
        BTreeSet::from(["alertmanager", "demo-app", "node", "prometheus", "promtail"])
    );
    assert_eq!(targets["node"].len(), 2, "{targets:?}");
}

/// Every `(job, target)` of a rendered prometheus.yml, duplicates kept.
fn every_target(config: &serde_json::Value) -> Vec<(String, String)> {
    let mut all = Vec::new();
    for job in config["scrape_configs"].as_array().unwrap() {
        let name = job["job_name"].as_str().unwrap();
        for group in job["static_configs"].as_array().unwrap() {
            for target in group["targets"].as_array().unwrap() {
                all.push((name.to_string(), target.as_str().unwrap().to_string()));
            }
        }
    }
    all
}

#[test]
fn prometheus_scrapes_a_node_exporter_once_when_roles_share_a_host() {
    let root = tempfile::tempdir().unwrap();
    let mut tags = sample_tags("prometheus");
    tags.insert("obstack:peer:loki".into(), APP_IP.into());
    let files = render("prometheus", &tags, root.path());
    let config = yaml(&file(&files, root.path(), "/etc/prometheus/prometheus.yml").contents);
    let nodes: Vec<String> = every_target(&config)
        .into_iter()
        .filter(|(job, _)| job == "node")
        .map(|(_, target)| target)
        .collect();
    assert_eq!(
        nodes,
        [
            format!("{APP_IP}:9100"),
            "127.0.0.1:9100".into(),
            format!("{GRAFANA_IP}:9100")
        ]
    );
}

#[test]
fn prometheus_leaves_out_the_services_tagged_absent() {
    // What `cargo xtask up` renders when only the app and Prometheus run: every peer on
    // loopback, the rest named in `obstack:absent`.
    let root = tempfile::tempdir().unwrap();
    let mut tags = sample_tags("prometheus");
    tags.remove("obstack:peer:loki");
    tags.remove("obstack:peer:grafana");
    tags.insert("obstack:peer:app".into(), "127.0.0.1:5000".into());
    tags.insert("obstack:bind-address".into(), "127.0.0.1".into());
    tags.insert(
        "obstack:absent".into(),
        "loki,promtail,alertmanager,grafana,node_exporter".into(),
    );
    let files = render("prometheus", &tags, root.path());
    let config = yaml(&file(&files, root.path(), "/etc/prometheus/prometheus.yml").contents);
    assert_eq!(
        every_target(&config),
        [
            ("demo-app".to_string(), "127.0.0.1:5000".to_string()),
            ("prometheus".to_string(), "127.0.0.1:9090".to_string()),
        ]
    );
    // With node_exporter running, its one host is scraped once.
    tags.insert("obstack:absent".into(), "loki,promtail,grafana".into());
    let files = render("prometheus", &tags, root.path());
    let config = yaml(&file(&files, root.path(), "/etc/prometheus/prometheus.yml").contents);
    let node: Vec<(String, String)> = every_target(&config)
        .into_iter()
        .filter(|(job, _)| job == "node")
        .collect();
    assert_eq!(node, [("node".to_string(), "127.0.0.1:9100".to_string())]);
    // A peer cannot both run and be absent.
    tags.insert("obstack:absent".into(), "app".into());
    let refused = stack_agent::render_role(
        &stack::images_dir(),
        "prometheus",
        &tags,
        &stack::root_str(root.path()),
        INSTANCE_ID,
    );
    assert!(
        matches!(&refused, Err(AgentError::BadTag { key, .. }) if key == "obstack:absent"),
        "{refused:?}"
    );
}

#[test]
fn ipv6_peers_are_bracketed_in_prometheus_targets() {
    let root = tempfile::tempdir().unwrap();
    let mut tags = sample_tags("prometheus");
    tags.insert("obstack:peer:app".into(), "fd00::10".into());
    tags.insert("obstack:peer:loki".into(), "[fd00::11]:3101".into());
    let files = render("prometheus", &tags, root.path());
    let config = yaml(&file(&files, root.path(), "/etc/prometheus/prometheus.yml").contents);
    let targets = scrape_targets(&config);
    assert!(
        targets["demo-app"].contains("[fd00::10]:5000"),
        "{targets:?}"
    );
    assert!(targets["node"].contains("[fd00::10]:9100"), "{targets:?}");
    assert!(targets["node"].contains("[fd00::11]:9100"), "{targets:?}");
    assert!(
        targets["promtail"].contains("[fd00::10]:9080"),
        "{targets:?}"
    );
    assert!(targets["loki"].contains("[fd00::11]:3101"), "{targets:?}");
}

#[test]
fn loki_keeps_a_week_on_local_disk_and_really_deletes() {
    let root = tempfile::tempdir().unwrap();
    let files = render_sample("loki", root.path());
    let config = yaml(&file(&files, root.path(), "/etc/loki/config.yaml").contents);
    let data = format!("{}/var/lib/loki", root.path().display());

    assert_eq!(config["auth_enabled"], false);
    assert_eq!(config["server"]["http_listen_address"], "0.0.0.0");
    assert_eq!(config["server"]["http_listen_port"], 3100);
    let schema = &config["schema_config"]["configs"][0];
    assert_eq!(schema["schema"], "v13");
    assert_eq!(schema["store"], "tsdb");
    assert_eq!(schema["object_store"], "filesystem");
    assert_eq!(
        schema["index"]["period"], "24h",
        "retention needs 24h index tables"
    );
    assert_eq!(config["ingester"]["wal"]["enabled"], true);
    assert_eq!(config["limits_config"]["retention_period"], "168h");
    assert_eq!(config["limits_config"]["ingestion_rate_mb"], 10);
    // Without the compactor's retention, retention_period deletes nothing.
    assert_eq!(config["compactor"]["retention_enabled"], true);
    assert_eq!(config["compactor"]["delete_request_store"], "filesystem");

    let paths = [
        &config["common"]["path_prefix"],
        &config["common"]["storage"]["filesystem"]["chunks_directory"],
        &config["common"]["storage"]["filesystem"]["rules_directory"],
        &config["storage_config"]["tsdb_shipper"]["active_index_directory"],
        &config["storage_config"]["tsdb_shipper"]["cache_location"],
        &config["ingester"]["wal"]["dir"],
        &config["compactor"]["working_directory"],
    ];
    for path in paths {
        let path = path
            .as_str()
            .unwrap_or_else(|| panic!("missing data path in {config}"));
        assert!(path.starts_with(&data), "{path} is outside {data}");
    }
}

#[test]
fn grafana_datasources_point_at_the_tagged_peers_with_fixed_uids() {
    let root = tempfile::tempdir().unwrap();
    let files = render_sample("grafana", root.path());
    let config = yaml(
        &file(
            &files,
            root.path(),
            "/etc/grafana/provisioning/datasources/obstack.yaml",
        )
        .contents,
    );
    assert_eq!(config["apiVersion"], 1);
    let sources = config["datasources"].as_array().unwrap();
    let by_uid = |uid: &str| {
        sources
            .iter()
            .find(|s| s["uid"] == uid)
            .unwrap_or_else(|| panic!("no datasource with uid `{uid}`"))
    };
    let prometheus = by_uid("prometheus");
    assert_eq!(prometheus["type"], "prometheus");
    assert_eq!(prometheus["url"], format!("http://{PROMETHEUS_IP}:9090"));
    assert_eq!(prometheus["isDefault"], true);
    let loki = by_uid("loki");
    assert_eq!(loki["type"], "loki");
    assert_eq!(loki["url"], format!("http://{LOKI_IP}:3100"));
    // Alertmanager runs beside Prometheus, on 9093.
    let alertmanager = by_uid("alertmanager");
    assert_eq!(alertmanager["type"], "alertmanager");
    assert_eq!(alertmanager["url"], format!("http://{PROMETHEUS_IP}:9093"));
    assert_eq!(alertmanager["jsonData"]["implementation"], "prometheus");
    let defaults = sources.iter().filter(|s| s["isDefault"] == true).count();
    assert_eq!(defaults, 1, "exactly one default datasource");
}

#[test]
fn grafana_provisions_the_baked_dashboards() {
    let root = tempfile::tempdir().unwrap();
    let files = render_sample("grafana", root.path());
    let config = yaml(
        &file(
            &files,
            root.path(),
            "/etc/grafana/provisioning/dashboards/obstack.yaml",
        )
        .contents,
    );
    let provider = &config["providers"][0];
    assert_eq!(provider["type"], "file");
    assert_eq!(
        provider["options"]["path"],
        format!("{}/etc/grafana/dashboards", root.path().display())
    );
    let baked = std::fs::read_dir(stack::dashboards_dir())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count();
    assert!(baked > 0, "no dashboard JSON in the image's rootfs");
}

#[test]
fn grafana_ini_is_hardened_and_reads_secrets_from_files() {
    let root = tempfile::tempdir().unwrap();
    let files = render_sample("grafana", root.path());
    let ini = ini(&file(&files, root.path(), "/etc/grafana/grafana.ini").contents);
    let r = root.path().display();
    let get = |section: &str, key: &str| {
        ini.get(&(section.to_string(), key.to_string()))
            .unwrap_or_else(|| panic!("grafana.ini has no [{section}] {key}"))
            .as_str()
    };
    assert_eq!(get("users", "allow_sign_up"), "false");
    assert_eq!(get("auth.anonymous", "enabled"), "false");
    assert_eq!(get("security", "disable_gravatar"), "true");
    assert_eq!(get("snapshots", "external_enabled"), "false");
    assert_eq!(
        get("security", "admin_password"),
        format!("$__file{{{r}/etc/grafana/secrets/admin_password}}")
    );
    assert_eq!(
        get("security", "secret_key"),
        format!("$__file{{{r}/var/lib/grafana/secret_key}}")
    );
    assert_eq!(get("server", "http_addr"), "0.0.0.0");
    assert_eq!(get("server", "http_port"), "3000");
    for key in ["data", "logs", "plugins", "provisioning"] {
        assert!(
            get("paths", key).starts_with(&r.to_string()),
            "[paths] {key}"
        );
    }
    let home = get("dashboards", "default_home_dashboard_path");
    let baked = home.strip_prefix(&r.to_string()).unwrap();
    let in_rootfs = stack::images_dir().join("grafana/rootfs").join(&baked[1..]);
    assert!(
        in_rootfs.is_file(),
        "home dashboard {} is not baked",
        in_rootfs.display()
    );
}

/// grafana.ini rendered from Grafana's sample tags plus `extra`, as (section, key) → value.
fn grafana_ini(extra: &[(&str, &str)]) -> BTreeMap<(String, String), String> {
    let root = tempfile::tempdir().unwrap();
    let mut tags = sample_tags("grafana");
    for (key, value) in extra {
        tags.insert(key.to_string(), value.to_string());
    }
    let files = render("grafana", &tags, root.path());
    ini(&file(&files, root.path(), "/etc/grafana/grafana.ini").contents)
}

fn ini_value<'a>(
    ini: &'a BTreeMap<(String, String), String>,
    section: &str,
    key: &str,
) -> Option<&'a str> {
    ini.get(&(section.to_string(), key.to_string()))
        .map(String::as_str)
}

#[test]
fn grafana_behind_a_tunnel_serves_plain_http_without_a_public_url() {
    let ini = grafana_ini(&[]);
    assert_eq!(ini_value(&ini, "server", "protocol"), Some("http"));
    for key in ["root_url", "domain"] {
        assert_eq!(
            ini_value(&ini, "server", key),
            None,
            "[server] {key}: Grafana's default (localhost) without a public name"
        );
    }
    assert_eq!(ini_value(&ini, "security", "cookie_secure"), Some("false"));
    assert_eq!(
        ini_value(&ini, "security", "strict_transport_security"),
        Some("false")
    );
}

#[test]
fn grafana_with_a_public_host_name_links_to_https_with_secure_cookies_and_hsts() {
    let ini = grafana_ini(&[("obstack:grafana-host-name", "grafana.example.com")]);
    // TLS ends at the load balancer: Grafana itself still speaks HTTP on its port.
    assert_eq!(ini_value(&ini, "server", "protocol"), Some("http"));
    assert_eq!(ini_value(&ini, "server", "http_port"), Some("3000"));
    assert_eq!(
        ini_value(&ini, "server", "domain"),
        Some("grafana.example.com")
    );
    assert_eq!(
        ini_value(&ini, "server", "root_url"),
        Some("https://grafana.example.com/")
    );
    assert_eq!(ini_value(&ini, "security", "cookie_secure"), Some("true"));
    assert_eq!(
        ini_value(&ini, "security", "strict_transport_security"),
        Some("true")
    );
    let max_age: u64 = ini_value(
        &ini,
        "security",
        "strict_transport_security_max_age_seconds",
    )
    .expect("an HSTS max age")
    .parse()
    .unwrap();
    assert!(
        max_age >= 86_400 * 180,
        "HSTS for at least half a year: {max_age}"
    );
    // The rest of the hardening is unchanged.
    assert_eq!(
        ini_value(&ini, "security", "cookie_samesite"),
        Some("strict")
    );
    assert_eq!(ini_value(&ini, "auth.anonymous", "enabled"), Some("false"));
}

/// (section, key) → value of a Grafana ini file.
fn ini(text: &str) -> BTreeMap<(String, String), String> {
    let mut section = String::new();
    let mut values = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("bad ini line: {line}"));
        let previous = values.insert(
            (section.clone(), key.trim().to_string()),
            value.trim().to_string(),
        );
        assert!(previous.is_none(), "[{section}] {} set twice", key.trim());
    }
    values
}

/// Values an attacker with tag-write access might try. None may reach a rendered file.
const INJECTIONS: [&str; 10] = [
    "10.0.1.11\n  - job_name: injected",
    "10.0.1.11\" injected: \"yes",
    "{{ 7 * 7 }}",
    "10.0.1.11; touch /tmp/injected",
    "$(reboot)",
    "10.0.1.11/../../etc/shadow",
    "10.0.1.11 injected",
    "10.0.1.11:99999",
    "http://10.0.1.11:3100",
    "",
];

#[test]
fn bad_tag_values_never_reach_a_rendered_file() {
    let root = tempfile::tempdir().unwrap();
    for role in roles() {
        let mut keys: Vec<String> = spec_peers(role)
            .iter()
            .map(|p| format!("obstack:peer:{p}"))
            .collect();
        keys.push("obstack:bind-address".into());
        if role == "grafana" {
            keys.push("obstack:grafana-host-name".into());
        }
        for key in keys {
            for bad in INJECTIONS {
                let mut tags = sample_tags(role);
                tags.insert(key.clone(), bad.to_string());
                let result = stack_agent::render_role(
                    &stack::images_dir(),
                    role,
                    &tags,
                    &stack::root_str(root.path()),
                    INSTANCE_ID,
                );
                match result {
                    Err(AgentError::BadTag { key: refused, .. }) => assert_eq!(refused, key),
                    Err(other) => {
                        panic!("{role}: {key}={bad:?} failed for another reason: {other}")
                    }
                    Ok(files) => panic!(
                        "{role}: {key}={bad:?} was rendered into {:?}",
                        files.iter().map(|f| &f.path).collect::<Vec<_>>()
                    ),
                }
            }
        }
    }
}

#[test]
fn a_missing_required_peer_renders_nothing() {
    let root = tempfile::tempdir().unwrap();
    let required: Vec<(&str, &str)> = stack::registry()
        .roles()
        .iter()
        .flat_map(|role| {
            role.peers
                .iter()
                .filter(|(_, spec)| spec.required)
                .map(move |(peer, _)| (role.name.as_str(), peer.as_str()))
        })
        .collect();
    assert!(!required.is_empty(), "no role requires a peer");
    for (role, peer) in required {
        let mut tags = sample_tags(role);
        tags.remove(&format!("obstack:peer:{peer}"));
        let result = stack_agent::render_role(
            &stack::images_dir(),
            role,
            &tags,
            &stack::root_str(root.path()),
            INSTANCE_ID,
        );
        match result {
            Err(AgentError::MissingTags(missing)) => {
                assert_eq!(missing, vec![format!("obstack:peer:{peer}")], "{role}")
            }
            other => panic!("{role} without peer {peer}: {other:?}"),
        }
    }
}
