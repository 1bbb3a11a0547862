//! The instance a tunnel goes to, found by the stack's own tags (`obstack:deployment`, set on
//! every instance, and `obstack:role`), so it needs no Terraform state: a role's running
//! instance, or for the app fleet one that passes its EC2 status checks (the newest, which
//! after an instance refresh runs the newest AMI) unless one is asked for by id.

use std::collections::BTreeMap;

use anyhow::Context;
use aws_sdk_ec2::primitives::DateTimeFormat;
use aws_sdk_ec2::types::{Filter, SummaryStatus};
use aws_sdk_ec2::Client;

use crate::ami::TAG_ROLE;

/// The tag every instance of a stack carries (the provider's default tags, and the fleet's
/// launch tags): Terraform's `name`.
pub const TAG_DEPLOYMENT: &str = "obstack:deployment";

/// A running instance of the stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackInstance {
    pub id: String,
    /// RFC 3339, as EC2 reports it: sorts as text.
    pub launched: String,
    /// Both EC2 status checks (instance and system) pass.
    pub status_ok: bool,
    pub tags: BTreeMap<String, String>,
}

/// The running instances of `role` in the stack `stack`, best first (see [`choose`]).
pub async fn running(
    client: &Client,
    stack: &str,
    role: &str,
) -> anyhow::Result<Vec<StackInstance>> {
    let filter = |name: &str, value: &str| Filter::builder().name(name).values(value).build();
    let described = client
        .describe_instances()
        .filters(filter(&format!("tag:{TAG_DEPLOYMENT}"), stack))
        .filters(filter(&format!("tag:{TAG_ROLE}"), role))
        .filters(filter("instance-state-name", "running"))
        .send()
        .await
        .context("cannot list the stack's instances (ec2:DescribeInstances); check your AWS credentials and region")?;
    let mut found: Vec<StackInstance> = described
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|instance| {
            Some(StackInstance {
                id: instance.instance_id()?.to_string(),
                launched: instance
                    .launch_time()
                    .and_then(|t| t.fmt(DateTimeFormat::DateTime).ok())
                    .unwrap_or_default(),
                status_ok: false,
                tags: instance
                    .tags()
                    .iter()
                    .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
                    .collect(),
            })
        })
        .collect();
    if found.is_empty() {
        return Ok(found);
    }
    let statuses = client
        .describe_instance_status()
        .set_instance_ids(Some(found.iter().map(|i| i.id.clone()).collect()))
        .send()
        .await
        .context("cannot read the instances' status checks (ec2:DescribeInstanceStatus)")?;
    for status in statuses.instance_statuses() {
        let ok = |summary: Option<&SummaryStatus>| summary == Some(&SummaryStatus::Ok);
        let passes = ok(status.instance_status().and_then(|s| s.status()))
            && ok(status.system_status().and_then(|s| s.status()));
        if let Some(instance) = found
            .iter_mut()
            .find(|i| Some(i.id.as_str()) == status.instance_id())
        {
            instance.status_ok = passes;
        }
    }
    rank(&mut found);
    Ok(found)
}

/// Best first: passing status checks, then the newest launch, then the id (so the choice is
/// the same every time).
fn rank(instances: &mut [StackInstance]) {
    instances.sort_by(|a, b| {
        b.status_ok
            .cmp(&a.status_ok)
            .then_with(|| b.launched.cmp(&a.launched))
            .then_with(|| a.id.cmp(&b.id))
    });
}

/// The instance to tunnel to: `wanted` when it is one of `instances`, else the best one.
/// The error is one line naming the role, the stack and what there is.
pub fn choose<'a>(
    instances: &'a [StackInstance],
    wanted: Option<&str>,
    stack: &str,
    role: &str,
) -> Result<&'a StackInstance, String> {
    let running = || {
        instances
            .iter()
            .map(|i| i.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match wanted {
        Some(id) => instances.iter().find(|i| i.id == id).ok_or_else(|| {
            if instances.is_empty() {
                format!("{id} is not a running {role} instance of the stack {stack}: it has none")
            } else {
                format!(
                    "{id} is not a running {role} instance of the stack {stack}; running: {}",
                    running()
                )
            }
        }),
        None => instances.first().ok_or_else(|| {
            format!(
                "the stack {stack} has no running {role} instance (tags {TAG_DEPLOYMENT}={stack}, \
                 {TAG_ROLE}={role}); is it deployed in this region, and is --stack its Terraform \
                 name?"
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, launched: &str, status_ok: bool) -> StackInstance {
        StackInstance {
            id: id.into(),
            launched: launched.into(),
            status_ok,
            tags: BTreeMap::new(),
        }
    }

    #[test]
    fn the_best_instance_passes_its_checks_and_is_the_newest() {
        let mut found = vec![
            instance("i-old", "2026-01-01T00:00:00Z", true),
            instance("i-failing", "2026-03-01T00:00:00Z", false),
            instance("i-new", "2026-02-01T00:00:00Z", true),
            instance("i-b", "2026-02-01T00:00:00Z", true),
        ];
        rank(&mut found);
        let ids: Vec<&str> = found.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["i-b", "i-new", "i-old", "i-failing"]);
        assert_eq!(choose(&found, None, "s", "app").unwrap().id, "i-b");
        assert_eq!(
            choose(&found, Some("i-old"), "s", "app").unwrap().id,
            "i-old"
        );
        let error = choose(&found, Some("i-other"), "s", "app").unwrap_err();
        assert!(
            error.contains("not a running app instance of the stack s; running: i-b, i-new"),
            "{error}"
        );
        let none = choose(&[], None, "staging", "grafana").unwrap_err();
        assert!(none.contains("no running grafana instance"), "{none}");
        assert!(none.contains("--stack"), "{none}");
    }
}
