//! Which AMI each role launches: the one baked from this checkout's inputs (default), the
//! newest one (`--latest`), or one named on the command line (`--ami ROLE=ami-...`).

use std::collections::BTreeMap;

use anyhow::bail;
use serde::Serialize;

use crate::ami::{self, Ami};
use crate::roles::Registry;

/// The AMI chosen for one role, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Selected {
    pub role: String,
    pub ami_id: String,
    /// How it was chosen, for the summary: `hash 1a2b3c4d5e6f`, `newest`, `--ami`.
    pub reason: String,
}

/// Parses repeated `--ami ROLE=ami-...` flags into role → AMI id.
pub fn parse_explicit(
    registry: &Registry,
    specs: &[String],
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut chosen = BTreeMap::new();
    for spec in specs {
        let Some((role, id)) = spec.split_once('=') else {
            bail!("--ami {spec}: expected ROLE=AMI, e.g. --ami grafana=ami-0123456789abcdef0");
        };
        let (role, id) = (role.trim(), id.trim());
        if !registry.contains(role) {
            bail!(
                "--ami {spec}: unknown role `{role}`; the roles are {}",
                registry.names().join(", ")
            );
        }
        if !is_ami_id(id) {
            bail!("--ami {spec}: `{id}` is not an AMI id (ami- followed by 8 or 17 hex digits)");
        }
        if chosen.insert(role.to_string(), id.to_string()).is_some() {
            bail!("--ami names role `{role}` twice; give each role at most once");
        }
    }
    Ok(chosen)
}

/// `ami-` and 8 or 17 hex digits, as EC2 names images (also checked in release records).
pub fn is_ami_id(id: &str) -> bool {
    id.strip_prefix("ami-").is_some_and(|hex| {
        matches!(hex.len(), 8 | 17) && hex.chars().all(|c| c.is_ascii_hexdigit())
    })
}

/// The roles that still need an AMI once the explicit ones are taken.
pub fn remaining_roles<'a>(
    registry: &'a Registry,
    explicit: &BTreeMap<String, String>,
) -> Vec<&'a str> {
    registry
        .names()
        .into_iter()
        .filter(|role| !explicit.contains_key(*role))
        .collect()
}

/// For each role in `hashes`, the newest AMI baked from exactly that hash. Fails naming
/// every role without one.
pub async fn by_hash(
    client: &aws_sdk_ec2::Client,
    hashes: &BTreeMap<String, String>,
) -> anyhow::Result<Vec<Selected>> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for (role, hash) in hashes {
        match ami::find_by_hash(client, role, hash).await? {
            Some(image) => found.push(Selected {
                role: role.clone(),
                ami_id: image.id,
                reason: format!("hash {}", short(hash)),
            }),
            None => missing.push(format!("no AMI for role {role} at hash {}…", short(hash))),
        }
    }
    if !missing.is_empty() {
        bail!(
            "{}: run `cargo xtask bake` first (or deploy an existing bake with --latest or --ami ROLE=ami-...)",
            missing.join("; ")
        );
    }
    Ok(found)
}

/// For each role, the newest AMI of that role. Fails naming every role without one.
pub async fn latest(client: &aws_sdk_ec2::Client, roles: &[&str]) -> anyhow::Result<Vec<Selected>> {
    let all = ami::list(client, None).await?;
    newest_per_role(&all, roles)
}

/// The pure half of [`latest`]: picks from an already listed set of AMIs.
pub fn newest_per_role(amis: &[Ami], roles: &[&str]) -> anyhow::Result<Vec<Selected>> {
    let mut sorted = amis.to_vec();
    ami::sort_newest_first(&mut sorted);
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for role in roles {
        match sorted.iter().find(|a| a.role == *role) {
            Some(image) => found.push(Selected {
                role: role.to_string(),
                ami_id: image.id.clone(),
                reason: format!("newest ({})", image.name),
            }),
            None => missing.push(format!("no AMI for role {role}")),
        }
    }
    if !missing.is_empty() {
        bail!("{}: run `cargo xtask bake` first", missing.join("; "));
    }
    Ok(found)
}

/// Explicit choices as [`Selected`] entries.
pub fn explicit(chosen: &BTreeMap<String, String>) -> Vec<Selected> {
    chosen
        .iter()
        .map(|(role, id)| Selected {
            role: role.clone(),
            ami_id: id.clone(),
            reason: "--ami".into(),
        })
        .collect()
}

/// The first 12 hex digits of a hash, as the AMI names show it.
pub fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        Registry::load_default().unwrap()
    }
    use aws_sdk_ec2::types::Tag;

    #[test]
    fn explicit_amis_parse_and_bad_ones_say_why() {
        let chosen =
            parse_explicit(&registry(), &["grafana=ami-0123456789abcdef0".into()]).unwrap();
        assert_eq!(chosen["grafana"], "ami-0123456789abcdef0");
        assert_eq!(
            remaining_roles(&registry(), &chosen),
            ["loki", "app", "prometheus"]
        );

        let error = parse_explicit(&registry(), &["grafana".into()])
            .unwrap_err()
            .to_string();
        assert!(error.contains("expected ROLE=AMI"), "{error}");
        let error = parse_explicit(&registry(), &["web=ami-12345678".into()])
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown role `web`"), "{error}");
        let error = parse_explicit(&registry(), &["app=i-12345678".into()])
            .unwrap_err()
            .to_string();
        assert!(error.contains("not an AMI id"), "{error}");
        let error = parse_explicit(
            &registry(),
            &["app=ami-12345678".into(), "app=ami-87654321".into()],
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("twice"), "{error}");
    }

    /// Registers an AMI tagged like the bake's (images/README.md) and returns its id.
    async fn register(client: &aws_sdk_ec2::Client, role: &str, hash: &str, name: &str) -> String {
        let image = client
            .register_image()
            .name(name)
            .root_device_name("/dev/sda1")
            .send()
            .await
            .unwrap();
        let id = image.image_id().unwrap().to_string();
        client
            .create_tags()
            .resources(&id)
            .tags(
                Tag::builder()
                    .key(ami::TAG_PROJECT)
                    .value(ami::PROJECT)
                    .build(),
            )
            .tags(Tag::builder().key(ami::TAG_ROLE).value(role).build())
            .tags(Tag::builder().key(ami::TAG_INPUT_HASH).value(hash).build())
            .send()
            .await
            .unwrap();
        id
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Runtime::new().unwrap()
    }

    async fn moto_client(moto: &testkit::Moto) -> aws_sdk_ec2::Client {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(moto.endpoint())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "test", "test", None, None, "moto",
            ))
            .load()
            .await;
        aws_sdk_ec2::Client::new(&config)
    }

    #[test]
    fn selection_by_hash_picks_the_matching_ami_and_names_missing_roles() {
        // moto starts outside the runtime: its readiness probe is a blocking client.
        let moto = testkit::Moto::start();
        runtime().block_on(async {
            let client = moto_client(&moto).await;
            let old = register(&client, "app", &"a".repeat(64), "obstack-app-aaaa-1").await;
            let current = register(&client, "app", &"b".repeat(64), "obstack-app-bbbb-2").await;
            let loki = register(&client, "loki", &"c".repeat(64), "obstack-loki-cccc-1").await;

            let hashes = BTreeMap::from([
                ("app".to_string(), "a".repeat(64)),
                ("loki".to_string(), "c".repeat(64)),
            ]);
            let chosen = by_hash(&client, &hashes).await.unwrap();
            let ids: Vec<&str> = chosen.iter().map(|s| s.ami_id.as_str()).collect();
            assert_eq!(ids, [old.as_str(), loki.as_str()]);
            assert_ne!(old, current);

            let hashes = BTreeMap::from([
                ("app".to_string(), "b".repeat(64)),
                ("grafana".to_string(), "d".repeat(64)),
            ]);
            let error = by_hash(&client, &hashes).await.unwrap_err().to_string();
            assert!(
                error.contains("no AMI for role grafana at hash dddddddddddd…"),
                "{error}"
            );
            assert!(error.contains("cargo xtask bake"), "{error}");
            assert!(!error.contains("role app"), "{error}");
        });
    }

    #[test]
    fn latest_picks_the_newest_per_role_and_tfvars_carry_them() {
        // moto starts outside the runtime: its readiness probe is a blocking client.
        let moto = testkit::Moto::start();
        runtime().block_on(async {
            let client = moto_client(&moto).await;
            let mut expected = BTreeMap::new();
            for role in registry().names() {
                register(
                    &client,
                    role,
                    &"1".repeat(64),
                    &format!("obstack-{role}-1111-1"),
                )
                .await;
                // Same creation second in moto: the name (ending in a timestamp) breaks the tie.
                let newer = register(
                    &client,
                    role,
                    &"2".repeat(64),
                    &format!("obstack-{role}-2222-2"),
                )
                .await;
                expected.insert(role.to_string(), newer);
            }
            let chosen = latest(&client, &registry().names()).await.unwrap();
            let vars = super::super::tfvars::GeneratedVars::new("us-east-1", &chosen);
            assert_eq!(vars.ami_ids, expected);

            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("deploy").join("obstack.auto.tfvars.json");
            super::super::tfvars::write(&path, &vars).unwrap();
            let json: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert_eq!(json["region"], "us-east-1");
            for (role, id) in &expected {
                assert_eq!(json["ami_ids"][role], id.as_str());
            }
            assert_eq!(super::super::tfvars::read(&path).unwrap(), vars);
        });
    }

    #[test]
    fn latest_without_any_bake_says_to_bake() {
        // moto starts outside the runtime: its readiness probe is a blocking client.
        let moto = testkit::Moto::start();
        runtime().block_on(async {
            let client = moto_client(&moto).await;
            register(&client, "app", &"1".repeat(64), "obstack-app-1111-1").await;
            let error = latest(&client, &registry().names())
                .await
                .unwrap_err()
                .to_string();
            assert!(error.contains("no AMI for role loki"), "{error}");
            assert!(!error.contains("role app"), "{error}");
            assert!(error.ends_with("run `cargo xtask bake` first"), "{error}");
        });
    }
}
