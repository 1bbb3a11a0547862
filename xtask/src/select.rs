//! Which AMI each role launches, decided in one place for `deploy` and `release create`:
//! the one baked from this checkout's inputs (default), the newest one (`--latest`), one
//! named on the command line (`--ami ROLE=ami-...`), or every role's from a release, named
//! by id (`--release`) or through the channel pointing at it (`--channel`).
//!
//! Choosing happens in two steps so a deploy can check its own flags and files between
//! them: [`pin`] reads what is fixed (the release's AMIs from the release store, or the
//! `--ami` flags), [`choose`] fills in the remaining roles (hashing this checkout or
//! listing the newest bakes, the slow part). [`usable_release`] is the one test of whether
//! a release may be deployed or promoted.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::ami::{self, Ami};
use crate::hash::{self, HashInputs};
use crate::release::record::Release;
use crate::release::store::Store;
use crate::roles::Registry;
use crate::versions::Manifest;

/// `ami-` and 8 or 17 hex digits (kept here too: the flags' own check).
pub use crate::ami::is_ami_id;

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

/// What the operator asked to launch: a channel's release, a release by id, or the
/// `--latest`/`--ami` flags (each role not named by `--ami` from this checkout's hashes,
/// or the newest bake with `latest`).
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    Channel(&'a str),
    Release(&'a str),
    Flags { latest: bool, ami: &'a [String] },
}

/// What [`pin`] fixed: role → AMI for the roles already decided, and how.
#[derive(Debug, Clone)]
pub struct Pinned {
    explicit: BTreeMap<String, String>,
    latest: bool,
    /// `channel stable (<id>)` or `release <id>`: every role's reason when a release decided.
    release: Option<String>,
}

/// The first step: the AMIs of a channel's or a release's record (refused unless
/// [`usable_release`]), or the `--ami` flags parsed (nothing asked of AWS then).
pub async fn pin(
    registry: &Registry,
    region: Option<&str>,
    stack: &str,
    request: Request<'_>,
) -> anyhow::Result<Pinned> {
    Ok(match request {
        Request::Channel(channel) => {
            let (id, amis) = channel_amis(region, stack, channel).await?;
            Pinned {
                explicit: amis,
                latest: false,
                release: Some(format!("channel {channel} ({id})")),
            }
        }
        Request::Release(id) => Pinned {
            explicit: release_amis(region, stack, id).await?,
            latest: false,
            release: Some(format!("release {id}")),
        },
        Request::Flags { latest, ami } => Pinned {
            explicit: parse_explicit(registry, ami)?,
            latest,
            release: None,
        },
    })
}

/// The second step: every role's AMI, in the registry's order, and the region.
pub async fn choose(
    region: Option<&str>,
    pinned: &Pinned,
) -> anyhow::Result<(String, Vec<Selected>)> {
    let (region, mut selected) = choose_amis(region, pinned.latest, &pinned.explicit).await?;
    if let Some(release) = &pinned.release {
        for choice in &mut selected {
            choice.reason.clone_from(release);
        }
    }
    Ok((region, selected))
}

/// The AMI of every role: the `--ami` choices, then the newest (`latest`) or the one baked from
/// this checkout's inputs for the rest; also returns the region.
async fn choose_amis(
    region: Option<&str>,
    latest: bool,
    explicit: &BTreeMap<String, String>,
) -> anyhow::Result<(String, Vec<Selected>)> {
    let client = ami::ec2_client(region).await?;
    let region = client
        .config()
        .region()
        .map(|r| r.to_string())
        .context("no AWS region configured: pass --region, or set AWS_REGION")?;
    let registry = Registry::load_default()?;
    let remaining = remaining_roles(&registry, explicit);
    let mut chosen = self::explicit(explicit);
    if !remaining.is_empty() {
        if latest {
            chosen.extend(self::latest(&client, &remaining).await?);
        } else {
            eprintln!("computing this checkout's input hashes (builds the release binaries)...");
            let hashes = checkout_hashes(&client, &registry, &remaining).await?;
            chosen.extend(by_hash(&client, &hashes).await?);
        }
    }
    let order = registry.names();
    chosen.sort_by_key(|s| order.iter().position(|r| *r == s.role));
    Ok((region, chosen))
}

/// The current input hash of each role in `roles`: what `cargo xtask bake` would tag this
/// checkout's AMIs with. Computing it builds the release binaries and resolves the base
/// AMI, exactly as a bake does; `status` and `images` never call this.
pub async fn checkout_hashes(
    client: &aws_sdk_ec2::Client,
    registry: &Registry,
    roles: &[&str],
) -> anyhow::Result<BTreeMap<String, String>> {
    let roles = roles
        .iter()
        .map(|name| registry.role(name))
        .collect::<Result<Vec<_>, _>>()?;
    let manifest = Manifest::load(&registry.images_dir().join("versions.toml"))?;
    let for_build = registry.clone();
    let artifacts_dir =
        tokio::task::spawn_blocking(move || crate::bake::artifacts::build_release(&for_build))
            .await
            .context("the release build panicked")??;
    let base =
        crate::bake::base::resolve(client, &crate::bake::base::BaseAmiFilter::from_env()).await?;
    let inputs = HashInputs {
        images_dir: registry.images_dir().to_path_buf(),
        manifest,
        artifacts_dir,
        base_ami_id: base.id,
    };
    roles
        .iter()
        .map(|role| Ok((role.name.clone(), hash::role_input_hash(role, &inputs)?)))
        .collect()
}

/// The AMI map of the release `channel` points at now, for `deploy --channel`.
pub async fn channel_amis(
    region: Option<&str>,
    stack: &str,
    channel: &str,
) -> anyhow::Result<(String, BTreeMap<String, String>)> {
    let store = Store::connect(region, stack).await?;
    let client = ami::ec2_client(region).await?;
    let Some(id) = store.channel(channel).await? else {
        bail!("channel {channel} does not exist in stack {stack}; `cargo xtask releases --stack {stack}` lists the channels");
    };
    let release = usable_release(&store, &client, &id).await?;
    Ok((id, role_amis(release)))
}

/// The AMI map of release `id`, for `deploy --release`.
pub async fn release_amis(
    region: Option<&str>,
    stack: &str,
    id: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let store = Store::connect(region, stack).await?;
    let client = ami::ec2_client(region).await?;
    Ok(role_amis(usable_release(&store, &client, id).await?))
}

fn role_amis(release: Release) -> BTreeMap<String, String> {
    release
        .roles
        .into_iter()
        .map(|(role, image)| (role, image.ami))
        .collect()
}

/// The release `id`, refused unless its record is well formed, names every role, and each
/// of its AMIs is still available: a channel must never point at images that are gone.
pub async fn usable_release(
    store: &Store,
    client: &aws_sdk_ec2::Client,
    id: &str,
) -> anyhow::Result<Release> {
    let release = store.release(id).await?;
    let registry = Registry::load_default()?;
    let missing = release.missing_roles(&registry.names());
    if !missing.is_empty() {
        bail!(
            "release {id} has no image for {}: it predates those roles",
            missing.join(", ")
        );
    }
    let available: BTreeSet<String> = ami::list(client, None)
        .await?
        .into_iter()
        .map(|a| a.id)
        .collect();
    let gone: Vec<String> = release
        .roles
        .iter()
        .filter(|(_, image)| !available.contains(&image.ami))
        .map(|(role, image)| format!("{role} {}", image.ami))
        .collect();
    if !gone.is_empty() {
        bail!(
            "release {id} cannot be used: its AMIs no longer exist ({}); nothing changed",
            gone.join(", ")
        );
    }
    Ok(release)
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
            let vars = crate::deploy::tfvars::GeneratedVars::new("us-east-1", &chosen);
            assert_eq!(vars.ami_ids, expected);

            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("deploy").join("obstack.auto.tfvars.json");
            crate::deploy::tfvars::write(&path, &vars).unwrap();
            let json: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert_eq!(json["region"], "us-east-1");
            for (role, id) in &expected {
                assert_eq!(json["ami_ids"][role], id.as_str());
            }
            assert_eq!(crate::deploy::tfvars::read(&path).unwrap(), vars);
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
