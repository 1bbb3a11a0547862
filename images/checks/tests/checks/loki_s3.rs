//! Loki's config with its chunks on S3 (tags `obstack:loki-s3-*`), rendered through the boot
//! agent's own renderer: a second schema period from the tagged day, the filesystem period
//! and everything else kept, no keys. Without the tags the file is byte for byte what it was
//! before S3 existed (tests/fixtures/loki-filesystem/).

use crate::stack;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use stack::{file, render, sample_tags, yaml};
use stack_agent::AgentError;

const CONFIG: &str = "/etc/loki/config.yaml";
const BUCKET: &str = "obstack-team-a-loki-123456789012";
const REGION: &str = "eu-central-1";
const FROM: &str = "2027-01-15";

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/loki-filesystem")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn s3_tags() -> BTreeMap<String, String> {
    let mut tags = sample_tags("loki");
    tags.insert("obstack:loki-s3-bucket".into(), BUCKET.into());
    tags.insert("obstack:loki-s3-region".into(), REGION.into());
    tags.insert("obstack:loki-s3-from".into(), FROM.into());
    tags
}

fn rendered(tags: &BTreeMap<String, String>, root: &Path) -> String {
    file(&render("loki", tags, root), root, CONFIG)
        .contents
        .clone()
}

/// Every key path (`a.b.0.c`) of a parsed document, for "no such key anywhere" checks.
fn key_paths(value: &Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let path = format!("{prefix}{key}");
                out.push(path.clone());
                key_paths(child, &format!("{path}."), out);
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                key_paths(child, &format!("{prefix}{index}."), out);
            }
        }
        _ => {}
    }
}

#[test]
fn without_the_s3_tags_loki_renders_the_same_bytes_as_before() {
    // On EC2: root "", the default bind address.
    let ec2 = rendered(&sample_tags("loki"), Path::new(""));
    assert!(
        ec2 == fixture("ec2.yaml"),
        "the filesystem-only config changed:\n{ec2}"
    );
    // Locally (`cargo xtask up`): a root and a loopback bind address.
    let mut local_tags = sample_tags("loki");
    local_tags.insert("obstack:bind-address".into(), "127.0.0.1".into());
    let local = rendered(&local_tags, Path::new("/srv/obstack/stack"));
    assert!(
        local == fixture("local.yaml"),
        "the filesystem-only config changed:\n{local}"
    );
}

#[test]
fn with_the_s3_tags_a_second_period_starts_on_the_tagged_day() {
    let text = rendered(&s3_tags(), Path::new(""));
    let config = yaml(&text);
    let before = yaml(&fixture("ec2.yaml"));

    let periods = config["schema_config"]["configs"]
        .as_array()
        .unwrap_or_else(|| panic!("no schema periods:\n{text}"));
    assert_eq!(periods.len(), 2, "{text}");
    // The filesystem period is kept exactly, first, so old logs stay readable.
    assert_eq!(periods[0], before["schema_config"]["configs"][0]);
    assert_eq!(periods[0]["object_store"], "filesystem");
    // Loki wants the periods in order; YYYY-MM-DD strings sort like the dates.
    let days: Vec<&str> = periods
        .iter()
        .map(|p| p["from"].as_str().unwrap())
        .collect();
    assert!(days.windows(2).all(|w| w[0] < w[1]), "{days:?}");
    let s3 = &periods[1];
    assert_eq!(s3["from"], FROM);
    assert_eq!(s3["object_store"], "s3");
    assert_eq!(s3["store"], "tsdb");
    assert_eq!(s3["schema"], "v13");
    // Retention works on 24 h index tables only.
    assert_eq!(s3["index"]["period"], "24h");

    let storage = &config["storage_config"];
    // Pinned to the clients that read `aws:`, whatever a later Loki defaults to.
    assert_eq!(storage["use_thanos_objstore"], false);
    assert_eq!(storage["aws"]["bucketnames"], BUCKET);
    assert_eq!(storage["aws"]["region"], REGION);
    // The old period's chunks are still found where they were written.
    assert_eq!(
        storage["filesystem"]["directory"],
        before["common"]["storage"]["filesystem"]["chunks_directory"]
    );
    assert_eq!(
        storage["tsdb_shipper"],
        before["storage_config"]["tsdb_shipper"]
    );

    // Retention stays on, its delete requests kept in the new store.
    let compactor = &config["compactor"];
    assert_eq!(compactor["retention_enabled"], true);
    assert_eq!(compactor["delete_request_store"], "s3");
    assert_eq!(config["limits_config"], before["limits_config"]);

    // Everything else is untouched.
    for section in before.as_object().unwrap().keys() {
        if !["schema_config", "storage_config", "compactor"].contains(&section.as_str()) {
            assert_eq!(config[section], before[section], "section `{section}`");
        }
    }
}

#[test]
fn the_s3_config_holds_no_credentials() {
    let text = rendered(&s3_tags(), Path::new(""));
    for word in ["access_key_id", "secret_access_key", "session_token"] {
        assert!(!text.contains(word), "`{word}` in:\n{text}");
    }
    let mut paths = Vec::new();
    key_paths(&yaml(&text), "", &mut paths);
    // `s3:` (a URL that can carry key:secret@) and any key/secret/token setting.
    let leaky: Vec<&String> = paths
        .iter()
        .filter(|p| {
            p.ends_with(".s3")
                || ["key", "secret", "token", "password"]
                    .iter()
                    .any(|w| p.rsplit('.').next().unwrap_or("").contains(w))
        })
        .collect();
    assert!(leaky.is_empty(), "{leaky:?}");
    // The storage client's only settings: where the bucket is.
    let aws = yaml(&text)["storage_config"]["aws"].clone();
    let keys: Vec<&String> = aws.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["bucketnames", "region"]);
}

#[test]
fn partial_or_bad_s3_tags_are_refused_naming_the_tag() {
    let images = stack::images_dir();
    let mut cases: Vec<(BTreeMap<String, String>, &str)> = Vec::new();
    for dropped in [
        "obstack:loki-s3-bucket",
        "obstack:loki-s3-region",
        "obstack:loki-s3-from",
    ] {
        let mut tags = s3_tags();
        tags.remove(dropped);
        cases.push((tags, dropped));
    }
    for (key, bad) in [
        ("obstack:loki-s3-bucket", "Team_A"),
        ("obstack:loki-s3-bucket", "logs\n    insecure: true"),
        ("obstack:loki-s3-region", "eu-central"),
        ("obstack:loki-s3-from", "2024-04-01"),
        ("obstack:loki-s3-from", "2027-02-29"),
        ("obstack:loki-s3-from", "15.01.2027"),
    ] {
        let mut tags = s3_tags();
        tags.insert(key.into(), bad.into());
        cases.push((tags, key));
    }
    for (tags, named) in cases {
        let error = stack_agent::render_role(&images, "loki", &tags, "", "i-1").unwrap_err();
        let AgentError::BadTag { key, reason } = &error else {
            panic!("{named}: not a bad tag: {error}");
        };
        let message = error.to_string();
        assert!(
            key == named || reason.contains(named),
            "the error names neither the tag nor the missing one ({named}): {message}"
        );
        assert!(!message.contains('\n'), "{message}");
    }
}
