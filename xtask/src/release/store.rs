//! Releases and channels in SSM Parameter Store, one stack's under `/obstack/<stack>/`:
//! `releases/<id>` holds a release record (written once, never overwritten),
//! `channels/<name>` holds a release id, and `rejected/<id>` says why a release was rolled
//! back (promote refuses it). SSM keeps every version of a parameter (the newest 100), so a
//! channel's parameter history *is* the channel's history.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use aws_sdk_ssm::types::{ParameterType, Tag};
use aws_sdk_ssm::Client;

use super::record::{self, RecordError, Release};

/// SSM's standard tier holds values up to 4 KB.
const MAX_VALUE_BYTES: usize = 4096;

/// One version of a channel parameter: the release it pointed at and why it moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelMove {
    pub version: i64,
    pub release: String,
    /// What `promote`/`rollback` wrote as the parameter's description (see [`super::history`]).
    pub description: String,
    /// RFC 3339 UTC, empty when SSM did not say.
    pub at: String,
}

pub struct Store {
    client: Client,
    stack: String,
}

impl Store {
    /// A store for `stack` from the standard AWS settings; `region` overrides the configured one.
    pub async fn connect(region: Option<&str>, stack: &str) -> anyhow::Result<Store> {
        record::check_name("stack name", stack).map_err(anyhow::Error::msg)?;
        let config = crate::ami::sdk_config(region).await?;
        Ok(Store {
            client: Client::new(&config),
            stack: stack.to_string(),
        })
    }

    pub fn stack(&self) -> &str {
        &self.stack
    }

    fn prefix(&self, kind: &str) -> String {
        format!("/obstack/{}/{kind}/", self.stack)
    }

    pub fn release_parameter(&self, id: &str) -> String {
        format!("{}{id}", self.prefix("releases"))
    }

    pub fn channel_parameter(&self, channel: &str) -> String {
        format!("{}{channel}", self.prefix("channels"))
    }

    pub fn rejection_parameter(&self, id: &str) -> String {
        format!("{}{id}", self.prefix("rejected"))
    }

    /// Marks release `id` rejected, saying why (a rollback moved a channel away from it).
    pub async fn reject(&self, id: &str, why: &str) -> anyhow::Result<()> {
        record::check_name("release id", id).map_err(anyhow::Error::msg)?;
        let name = self.rejection_parameter(id);
        self.client
            .put_parameter()
            .name(&name)
            .value(why)
            .r#type(ParameterType::String)
            .description(format!(
                "obstack: release {id} of stack {} is rejected",
                self.stack
            ))
            .overwrite(true)
            .send()
            .await
            .with_context(|| format!("cannot write {name} (ssm:PutParameter)"))?;
        Ok(())
    }

    /// Why release `id` was rejected, or `None` when it was not.
    pub async fn rejection(&self, id: &str) -> anyhow::Result<Option<String>> {
        record::check_name("release id", id).map_err(anyhow::Error::msg)?;
        self.get(&self.rejection_parameter(id)).await
    }

    /// Every rejected release id → why.
    pub async fn rejections(&self) -> anyhow::Result<BTreeMap<String, String>> {
        Ok(self
            .by_path(&self.prefix("rejected"))
            .await?
            .into_iter()
            .collect())
    }

    /// Writes a new release record; refuses to overwrite an existing one (a release id names
    /// one set of images forever).
    pub async fn put_release(&self, release: &Release) -> anyhow::Result<()> {
        let name = self.release_parameter(&release.id);
        let value = release.to_json();
        if value.len() > MAX_VALUE_BYTES {
            bail!(
                "release {} is {} bytes, over SSM's {MAX_VALUE_BYTES}-byte limit for a standard parameter",
                release.id,
                value.len()
            );
        }
        let result = self
            .client
            .put_parameter()
            .name(&name)
            .value(value)
            .r#type(ParameterType::String)
            .description(format!("obstack release of stack {}", self.stack))
            .overwrite(false)
            .tags(tag("obstack:project", crate::ami::PROJECT)?)
            .tags(tag("obstack:deployment", &self.stack)?)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_parameter_already_exists()) =>
            {
                bail!(
                    "release {} already exists ({name}); a release is never rewritten",
                    release.id
                )
            }
            Err(error) => {
                Err(error).with_context(|| format!("cannot write {name} (ssm:PutParameter)"))
            }
        }
    }

    /// The release `id`, checked; an error says whether it is missing or malformed.
    pub async fn release(&self, id: &str) -> anyhow::Result<Release> {
        record::check_name("release id", id).map_err(anyhow::Error::msg)?;
        let name = self.release_parameter(id);
        let Some(text) = self.get(&name).await? else {
            bail!(
                "no release {id} in stack {} ({name}); list them with `cargo xtask releases --stack {}`",
                self.stack,
                self.stack
            );
        };
        Ok(Release::parse(id, &text)?)
    }

    /// Every release record of the stack, checked one by one: a malformed record is returned
    /// as its error so a listing can show it without trusting it.
    pub async fn releases(&self) -> anyhow::Result<Vec<Result<Release, RecordError>>> {
        let prefix = self.prefix("releases");
        Ok(self
            .by_path(&prefix)
            .await?
            .into_iter()
            .map(|(name, text)| Release::parse(&name, &text))
            .collect())
    }

    /// Channel name → the release id it points at now.
    pub async fn channels(&self) -> anyhow::Result<BTreeMap<String, String>> {
        Ok(self
            .by_path(&self.prefix("channels"))
            .await?
            .into_iter()
            .collect())
    }

    /// The release id `channel` points at, if the channel exists.
    pub async fn channel(&self, channel: &str) -> anyhow::Result<Option<String>> {
        record::check_name("channel name", channel).map_err(anyhow::Error::msg)?;
        self.get(&self.channel_parameter(channel)).await
    }

    /// Every recorded move of `channel`, oldest first (empty for a channel never set).
    pub async fn history(&self, channel: &str) -> anyhow::Result<Vec<ChannelMove>> {
        record::check_name("channel name", channel).map_err(anyhow::Error::msg)?;
        let name = self.channel_parameter(channel);
        let mut moves = Vec::new();
        let mut pages = self
            .client
            .get_parameter_history()
            .name(&name)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = match page {
                Ok(page) => page,
                Err(error)
                    if error
                        .as_service_error()
                        .is_some_and(|e| e.is_parameter_not_found()) =>
                {
                    return Ok(Vec::new());
                }
                Err(error) => {
                    return Err(error).with_context(|| {
                        format!("cannot read the history of {name} (ssm:GetParameterHistory)")
                    });
                }
            };
            for entry in page.parameters() {
                moves.push(ChannelMove {
                    version: entry.version(),
                    release: entry.value().unwrap_or_default().to_string(),
                    description: entry.description().unwrap_or_default().to_string(),
                    at: entry
                        .last_modified_date()
                        .and_then(|d| {
                            d.fmt(aws_sdk_ssm::primitives::DateTimeFormat::DateTime)
                                .ok()
                        })
                        .unwrap_or_default(),
                });
            }
        }
        moves.sort_by_key(|m| m.version);
        Ok(moves)
    }

    /// Points `channel` at `release_id`, recording `description` with the move; returns the
    /// channel parameter's new version.
    pub async fn point(
        &self,
        channel: &str,
        release_id: &str,
        description: &str,
    ) -> anyhow::Result<i64> {
        record::check_name("channel name", channel).map_err(anyhow::Error::msg)?;
        let name = self.channel_parameter(channel);
        let output = self
            .client
            .put_parameter()
            .name(&name)
            .value(release_id)
            .r#type(ParameterType::String)
            .description(description)
            .overwrite(true)
            .send()
            .await
            .with_context(|| format!("cannot move {name} (ssm:PutParameter)"))?;
        Ok(output.version())
    }

    async fn get(&self, name: &str) -> anyhow::Result<Option<String>> {
        match self.client.get_parameter().name(name).send().await {
            Ok(output) => Ok(output
                .parameter()
                .and_then(|p| p.value())
                .map(str::to_string)),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_parameter_not_found()) =>
            {
                Ok(None)
            }
            Err(error) => {
                Err(error).with_context(|| format!("cannot read {name} (ssm:GetParameter)"))
            }
        }
    }

    /// (last name segment, value) of every parameter directly under `prefix`.
    async fn by_path(&self, prefix: &str) -> anyhow::Result<Vec<(String, String)>> {
        let mut found = Vec::new();
        let mut pages = self
            .client
            .get_parameters_by_path()
            .path(prefix.trim_end_matches('/'))
            .recursive(false)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page =
                page.with_context(|| format!("cannot list {prefix} (ssm:GetParametersByPath)"))?;
            for parameter in page.parameters() {
                let (Some(name), Some(value)) = (parameter.name(), parameter.value()) else {
                    continue;
                };
                if let Some(short) = name.strip_prefix(prefix) {
                    found.push((short.to_string(), value.to_string()));
                }
            }
        }
        found.sort();
        Ok(found)
    }
}

fn tag(key: &str, value: &str) -> anyhow::Result<Tag> {
    Tag::builder()
        .key(key)
        .value(value)
        .build()
        .with_context(|| format!("cannot build the SSM tag {key}"))
}
