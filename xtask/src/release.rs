//! Releases and channels: `release create`, `releases`, `promote`, `rollback`, and the AMIs
//! `prune` must keep. A release records every role's AMI once; a channel (`candidate`,
//! `stable`, ...) points at a release, and its SSM history is how it rolls back. See
//! README.md, "Releases and channels".

pub mod history;
pub mod record;
pub mod store;

use std::collections::BTreeMap;
use std::time::SystemTime;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::ami;
use crate::cli::{PromoteArgs, ReleaseCreateArgs, ReleasesArgs, RollbackArgs};
use crate::roles::Registry;
use crate::select::{self, usable_release};
use record::{Release, RoleImage};
use store::Store;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("cannot start the async runtime")
}

pub fn run_create(args: ReleaseCreateArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let registry = Registry::load_default()?;
        let pinned = select::pin(
            &registry,
            args.stack.region.as_deref(),
            &args.stack.stack,
            select::Request::Flags {
                latest: args.latest,
                ami: &args.ami,
            },
        )
        .await?;
        if let Some(channel) = &args.channel {
            record::check_name("channel name", channel).map_err(anyhow::Error::msg)?;
        }
        let store = Store::connect(args.stack.region.as_deref(), &args.stack.stack).await?;
        let (_, selected) = select::choose(args.stack.region.as_deref(), &pinned).await?;
        let client = ami::ec2_client(args.stack.region.as_deref()).await?;
        let chosen: BTreeMap<String, String> =
            selected.into_iter().map(|s| (s.role, s.ami_id)).collect();
        let release = create(&store, &client, &chosen, args.channel.as_deref()).await?;
        if args.json {
            println!("{}", release.to_json());
        } else {
            print_release(&release, &registry);
        }
        Ok(())
    })
}

/// Records a release of `chosen` (role → AMI id, every role of the registry) and points
/// `channel` at it. The AMIs must be this project's, available, and of the role they are
/// recorded for. Used by `release create` and `bake --release`.
pub async fn create(
    store: &Store,
    client: &aws_sdk_ec2::Client,
    chosen: &BTreeMap<String, String>,
    channel: Option<&str>,
) -> anyhow::Result<Release> {
    let registry = Registry::load_default()?;
    let missing: Vec<&str> = registry
        .names()
        .into_iter()
        .filter(|role| !chosen.contains_key(*role))
        .collect();
    if !missing.is_empty() {
        bail!(
            "a release needs an AMI for every role; none for {}",
            missing.join(", ")
        );
    }
    let known = ami::list(client, None).await?;
    let mut roles = BTreeMap::new();
    for (role, id) in chosen {
        let Some(image) = known.iter().find(|a| &a.id == id) else {
            bail!("{id} (role {role}) is not an available AMI of this project in this account and region");
        };
        if &image.role != role {
            bail!("{id} is a {} image, not {role}", image.role);
        }
        roles.insert(
            role.clone(),
            RoleImage {
                ami: id.clone(),
                input_hash: image.input_hash.clone(),
            },
        );
    }
    // A nightly bake that built nothing would otherwise record the same images again and
    // again: when the channel already points at exactly these AMIs, keep that release.
    if let Some(channel) = channel {
        if let Some(current) = store.channel(channel).await? {
            match store.release(&current).await {
                Ok(release) if release.roles == roles => {
                    eprintln!("channel {channel} already points at release {current} with these AMIs; nothing recorded");
                    return Ok(release);
                }
                _ => {}
            }
        }
    }
    let git_revision = crate::bake::vars::git_revision();
    let now = SystemTime::now();
    let draft = Release {
        schema: record::SCHEMA,
        id: record::new_id(now, &git_revision),
        created: humantime::format_rfc3339_seconds(now).to_string(),
        git_revision,
        roles,
    };
    // Round-trip through the checks a reader applies, so nothing unreadable is ever written.
    let release = Release::parse(&draft.id, &draft.to_json())?;
    store.put_release(&release).await?;
    eprintln!(
        "recorded release {} at {}",
        release.id,
        store.release_parameter(&release.id)
    );
    if let Some(channel) = channel {
        let version = store
            .point(
                channel,
                &release.id,
                &history::promote_description(&release.id),
            )
            .await?;
        eprintln!("channel {channel} -> {} (move {version})", release.id);
    }
    Ok(release)
}

fn print_release(release: &Release, registry: &Registry) {
    println!(
        "release {} (git {}, {})",
        release.id, release.git_revision, release.created
    );
    let rows = registry.names().into_iter().filter_map(|role| {
        let image = release.roles.get(role)?;
        Some([
            role.to_string(),
            image.ami.clone(),
            select::short(&image.input_hash).to_string(),
        ])
    });
    print!(
        "{}",
        crate::table::render(&["ROLE", "AMI", "INPUT HASH"], rows)
    );
}

#[derive(Serialize)]
struct Listing {
    releases: Vec<ListedRelease>,
    malformed: Vec<String>,
    channels: BTreeMap<String, String>,
    /// Rejected release id → why (`promote` refuses these).
    rejected: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct ListedRelease {
    #[serde(flatten)]
    release: Release,
    channels: Vec<String>,
    /// Why the release was rejected, when it was.
    rejected: Option<String>,
}

pub fn run_list(args: ReleasesArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let store = Store::connect(args.stack.region.as_deref(), &args.stack.stack).await?;
        let channels = store.channels().await?;
        let rejected = store.rejections().await?;
        let mut releases = Vec::new();
        let mut malformed = Vec::new();
        for entry in store.releases().await? {
            match entry {
                Ok(release) => releases.push(release),
                Err(error) => malformed.push(error.to_string()),
            }
        }
        releases.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.id.cmp(&a.id)));
        let pointing = |id: &str| -> Vec<String> {
            channels
                .iter()
                .filter(|(_, release)| release.as_str() == id)
                .map(|(channel, _)| channel.clone())
                .collect()
        };
        let listing = Listing {
            releases: releases
                .into_iter()
                .map(|release| ListedRelease {
                    channels: pointing(&release.id),
                    rejected: rejected.get(&release.id).cloned(),
                    release,
                })
                .collect(),
            malformed,
            channels,
            rejected,
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&listing)?);
        } else {
            print_listing(&listing, store.stack());
        }
        Ok(())
    })
}

fn print_listing(listing: &Listing, stack: &str) {
    if listing.releases.is_empty() && listing.malformed.is_empty() {
        println!("no releases in stack {stack}: record one with `cargo xtask release create --stack {stack}`");
    } else {
        let rows = listing.releases.iter().map(|entry| {
            let git: String = entry.release.git_revision.chars().take(12).collect();
            [
                entry.release.id.clone(),
                entry.release.created.clone(),
                git,
                entry.channels.join(", "),
                entry.rejected.clone().unwrap_or_default(),
            ]
        });
        print!(
            "{}",
            crate::table::render(&["RELEASE", "CREATED", "GIT", "CHANNELS", "REJECTED"], rows)
        );
    }
    for error in &listing.malformed {
        eprintln!("warning: {error}; it is listed nowhere and cannot be promoted");
    }
    let dangling: Vec<String> = listing
        .channels
        .iter()
        .filter(|(_, id)| !listing.releases.iter().any(|r| &r.release.id == *id))
        .map(|(channel, id)| format!("{channel} -> {id}"))
        .collect();
    if !dangling.is_empty() {
        eprintln!(
            "warning: channels pointing at no readable release: {}",
            dangling.join(", ")
        );
    }
}

pub fn run_promote(args: PromoteArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        record::check_name("channel name", &args.to).map_err(anyhow::Error::msg)?;
        let store = Store::connect(args.stack.region.as_deref(), &args.stack.stack).await?;
        let client = ami::ec2_client(args.stack.region.as_deref()).await?;
        // A channel name is resolved to the release it points at now.
        let (release_id, source) = match store.channel(&args.source).await? {
            Some(id) => (id.clone(), format!("{} ({id})", args.source)),
            None => (args.source.clone(), args.source.clone()),
        };
        let release = usable_release(&store, &client, &release_id).await?;
        if store.channel(&args.to).await?.as_deref() == Some(release.id.as_str()) {
            println!(
                "channel {} already points at {}; nothing changed",
                args.to, release.id
            );
            return Ok(());
        }
        // A release someone rolled back stays out of the channels: otherwise the next
        // nightly promotion would undo the rollback.
        if let Some(why) = store.rejection(&release.id).await? {
            if !args.force {
                bail!(
                    "release {} is rejected ({why}); promote refuses it: record a new release, or pass --force to promote it anyway",
                    release.id
                );
            }
            eprintln!("warning: promoting rejected release {} ({why}) because of --force", release.id);
        }
        let version = store
            .point(
                &args.to,
                &release.id,
                &history::promote_description(&source),
            )
            .await?;
        if source == release.id {
            println!("channel {} -> {} (move {version})", args.to, release.id);
        } else {
            println!(
                "channel {} -> {} (move {version}, from {source})",
                args.to, release.id
            );
        }
        Ok(())
    })
}

pub fn run_rollback(args: RollbackArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let store = Store::connect(args.stack.region.as_deref(), &args.stack.stack).await?;
        let client = ami::ec2_client(args.stack.region.as_deref()).await?;
        let moves = store.history(&args.channel).await?;
        let Some(current) = moves.last().map(|m| m.release.clone()) else {
            bail!(
                "channel {} does not exist in stack {}; `cargo xtask releases` lists the channels",
                args.channel,
                store.stack()
            );
        };
        let Some(target) = history::rollback_target(&moves).map(str::to_string) else {
            bail!(
                "channel {} has no earlier release to roll back to (it points at {current})",
                args.channel
            );
        };
        usable_release(&store, &client, &target).await?;
        // Rejected before the channel moves: a rollback that moved the channel but did not
        // reject would be undone by the next promotion.
        store
            .reject(
                &current,
                &history::rejection_reason(&args.channel, &target, SystemTime::now()),
            )
            .await?;
        let version = store
            .point(
                &args.channel,
                &target,
                &history::rollback_description(&current),
            )
            .await?;
        println!(
            "channel {} rolled back: {current} -> {target} (move {version}); {current} is rejected: promote refuses it",
            args.channel
        );
        Ok(())
    })
}

/// The AMIs `prune` must keep for `stack`: every AMI of the releases each channel points at
/// now or pointed at in its last `keep_history` moves. Any unreadable record fails the
/// whole answer: without it prune cannot know what production may need back.
pub async fn protected_amis(
    store: &Store,
    keep_history: usize,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut amis = BTreeMap::new();
    for channel in store.channels().await?.keys() {
        let moves = store.history(channel).await?;
        for id in history::protected(&moves, keep_history) {
            let release = store.release(id).await.with_context(|| {
                format!("channel {channel} points at release {id} in its history, which cannot be read; prune stops rather than guess what it may delete")
            })?;
            for ami_id in release.ami_ids() {
                amis.insert(ami_id.to_string(), format!("{channel} {id}"));
            }
        }
    }
    Ok(amis)
}
