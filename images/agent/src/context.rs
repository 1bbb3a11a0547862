//! Turns raw tags into the validated template context (table in images/README.md).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::AgentError;
use crate::spec::{rooted, secret_stem, RoleSpec};
use crate::tags::{self, Tags};
use crate::value::{self, AppFleet, HttpsHost, LokiS3, PeerAddress, SnsTopic};

/// What every template sees. Field names are the template variables.
#[derive(Debug, Clone, Serialize)]
pub struct Context {
    pub role: String,
    pub instance_id: String,
    pub root: String,
    pub bind_address: String,
    /// Only peers whose tag is present; test optional ones with `is defined`.
    pub peers: BTreeMap<String, PeerAddress>,
    /// Services this deployment does not run (tag `obstack:absent`; empty on EC2), in the
    /// tag's order: `{% if "promtail" not in absent %}`.
    pub absent: Vec<String>,
    /// `<file-stem>_path` → rendered path of each secret file (fetched or generated); an
    /// optional one only when its tag is present:
    /// `{% if secrets.slack_url_path is defined %}`.
    pub secrets: BTreeMap<String, String>,
    /// The SNS topic alerts page through (tag `obstack:alert-sns-topic-arn`), when tagged:
    /// `{% if sns_topic %}... {{ sns_topic.arn }} {{ sns_topic.region }}`.
    pub sns_topic: Option<SnsTopic>,
    /// The app's Auto Scaling group (tags `obstack:app-fleet-desired` and
    /// `obstack:deployment`), `none` for a single app instance:
    /// `{% if app_fleet %}... {{ app_fleet.deployment }} {{ app_fleet.desired }}`.
    pub app_fleet: Option<AppFleet>,
    /// Loki's S3 storage (tags `obstack:loki-s3-bucket`, `-region`, `-from`), `none` for
    /// the filesystem only: `{% if loki_s3 %}... {{ loki_s3.bucket }}`.
    pub loki_s3: Option<LokiS3>,
    /// Where people open Grafana (tag `obstack:grafana-url`, no trailing `/`), `none`
    /// untagged: `{% if grafana_url %}{{ grafana_url }}/d/...`.
    pub grafana_url: Option<String>,
    /// The public HTTPS name Grafana is served at (tag `obstack:grafana-host-name`), `none`
    /// when it is reached only through a tunnel: `{% if grafana_https %}...
    /// {{ grafana_https.url }}`.
    pub grafana_https: Option<HttpsHost>,
}

/// Validates every tag this role reads and builds the context.
///
/// Bad values are reported before missing ones: a bad value never fixes itself, so waiting
/// for the other tags would only delay the error. Missing required peers are an error here;
/// the tags naming secrets are checked when present but their absence is left to the caller,
/// which is the one fetching secrets. A peer named in `obstack:absent` is known not to run:
/// it must have no address tag, is never missing, and is not in `peers`.
pub fn build(
    spec: &RoleSpec,
    tags: &Tags,
    root: &str,
    instance_id: &str,
) -> Result<Context, AgentError> {
    let bind_address = match tags.get(tags::BIND_ADDRESS) {
        Some(raw) => value::parse_bind_address(raw)
            .map_err(|reason| AgentError::bad_tag(tags::BIND_ADDRESS, reason))?
            .to_string(),
        None => tags::DEFAULT_BIND_ADDRESS.to_string(),
    };
    for name_tag in spec.secrets.iter().map(|s| &s.name_tag) {
        if let Some(name) = tags.get(name_tag) {
            value::check_parameter_name(name)
                .map_err(|reason| AgentError::bad_tag(name_tag, reason))?;
        }
    }
    let sns_topic = match tags.get(tags::ALERT_SNS_TOPIC_ARN) {
        Some(raw) => Some(
            SnsTopic::parse(raw)
                .map_err(|reason| AgentError::bad_tag(tags::ALERT_SNS_TOPIC_ARN, reason))?,
        ),
        None => None,
    };
    let grafana_url = match tags.get(tags::GRAFANA_URL) {
        Some(raw) => Some(
            value::parse_web_url(raw)
                .map_err(|reason| AgentError::bad_tag(tags::GRAFANA_URL, reason))?,
        ),
        None => None,
    };
    let absent = match tags.get(tags::ABSENT) {
        Some(raw) => {
            tags::parse_absent(raw).map_err(|reason| AgentError::bad_tag(tags::ABSENT, reason))?
        }
        None => Vec::new(),
    };
    let mut missing = Vec::new();
    let app_fleet = app_fleet(tags, &mut missing)?;
    let loki_s3 = loki_s3(tags)?;
    let grafana_https = match tags.get(tags::GRAFANA_HOST_NAME) {
        Some(raw) => Some(
            HttpsHost::parse(raw)
                .map_err(|reason| AgentError::bad_tag(tags::GRAFANA_HOST_NAME, reason))?,
        ),
        None => None,
    };
    let mut peers = BTreeMap::new();
    for (name, peer) in &spec.peers {
        let key = tags::peer_key(name);
        let is_absent = absent.contains(name);
        match tags.get(&key) {
            Some(_) if is_absent => {
                return Err(AgentError::bad_tag(
                    tags::ABSENT,
                    format!(
                        "names `{name}`, but `{key}` gives its address; a service either runs \
                         (and has an address) or is absent"
                    ),
                ))
            }
            Some(raw) => {
                let address = PeerAddress::parse(raw, peer.port)
                    .map_err(|reason| AgentError::bad_tag(&key, reason))?;
                peers.insert(name.clone(), address);
            }
            None if peer.is_required(tags) && !is_absent => missing.push(key),
            None => {}
        }
    }
    if !missing.is_empty() {
        return Err(AgentError::MissingTags(missing));
    }
    let mut secrets = BTreeMap::new();
    for path in spec.wanted_secret_paths(tags) {
        // The spec was checked on load, so every secret path has a stem.
        let stem = secret_stem(path).map_err(|m| AgentError::spec(&spec.dir, m))?;
        secrets.insert(stem, rooted(root, path).display().to_string());
    }
    Ok(Context {
        role: spec.role.clone(),
        instance_id: instance_id.to_string(),
        root: root.trim_end_matches('/').to_string(),
        bind_address,
        peers,
        absent,
        secrets,
        sns_topic,
        app_fleet,
        loki_s3,
        grafana_url,
        grafana_https,
    })
}

/// The app fleet, when the fleet tag says there is one. Its deployment tag is then required:
/// when absent it joins `missing` (waited for like a peer).
fn app_fleet(tags: &Tags, missing: &mut Vec<String>) -> Result<Option<AppFleet>, AgentError> {
    let Some(raw) = tags.get(tags::APP_FLEET_DESIRED) else {
        return Ok(None);
    };
    let desired = value::parse_fleet_size(raw)
        .map_err(|reason| AgentError::bad_tag(tags::APP_FLEET_DESIRED, reason))?;
    let Some(deployment) = tags.get(tags::DEPLOYMENT) else {
        missing.push(tags::DEPLOYMENT.to_string());
        return Ok(None);
    };
    value::check_deployment_name(deployment)
        .map_err(|reason| AgentError::bad_tag(tags::DEPLOYMENT, reason))?;
    Ok(Some(AppFleet {
        deployment: deployment.clone(),
        desired,
    }))
}

/// Loki's S3 storage: all three tags or none. Some but not all is a bad tag rather than a
/// wait: Terraform writes them together, so a partial set is a mistake, and guessing would
/// put chunks where nobody reads them.
fn loki_s3(tags: &Tags) -> Result<Option<LokiS3>, AgentError> {
    let (present, absent): (Vec<&str>, Vec<&str>) = tags::LOKI_S3_TAGS
        .iter()
        .partition(|key| tags.contains_key(**key));
    let (Some(bucket), Some(region), Some(from)) = (
        tags.get(tags::LOKI_S3_BUCKET),
        tags.get(tags::LOKI_S3_REGION),
        tags.get(tags::LOKI_S3_FROM),
    ) else {
        return match present.first() {
            None => Ok(None),
            Some(key) => Err(AgentError::bad_tag(
                key,
                format!(
                    "comes without {}; Loki on S3 needs {} together (Terraform writes them \
                     when loki_storage = \"s3\"): add the missing tags or remove the others",
                    absent.join(", "),
                    tags::LOKI_S3_TAGS.join(", ")
                ),
            )),
        };
    };
    value::check_bucket_name(bucket)
        .map_err(|reason| AgentError::bad_tag(tags::LOKI_S3_BUCKET, reason))?;
    value::check_region(region)
        .map_err(|reason| AgentError::bad_tag(tags::LOKI_S3_REGION, reason))?;
    let from = value::parse_schema_date(from)
        .map_err(|reason| AgentError::bad_tag(tags::LOKI_S3_FROM, reason))?;
    Ok(Some(LokiS3 {
        bucket: bucket.clone(),
        region: region.clone(),
        from: from.to_string(),
    }))
}

/// Every required tag (peers, secret names, the fleet's deployment) absent from `tags`, for
/// the wait loop. A peer that `obstack:absent` names is not waited for: it will never come;
/// nor is one whose `unless_tag` is present.
pub fn missing_tags(spec: &RoleSpec, tags: &Tags) -> Vec<String> {
    // A malformed list is `build`'s error to report; here it excuses nothing.
    let absent: Vec<String> = tags
        .get(tags::ABSENT)
        .and_then(|raw| tags::parse_absent(raw).ok())
        .unwrap_or_default();
    let excused: Vec<String> = absent
        .iter()
        .map(|name| tags::peer_key(name))
        .chain(
            spec.peers
                .iter()
                .filter(|(_, peer)| !peer.is_required(tags))
                .map(|(name, _)| tags::peer_key(name)),
        )
        .collect();
    let mut missing: Vec<String> = spec
        .required_tags()
        .into_iter()
        .filter(|key| !tags.contains_key(key) && !excused.contains(key))
        .collect();
    if tags.contains_key(tags::APP_FLEET_DESIRED) && !tags.contains_key(tags::DEPLOYMENT) {
        missing.push(tags::DEPLOYMENT.to_string());
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RoleSpec {
        toml::from_str(
            "role = \"watcher\"\n\
             [peers.app]\nport = 5000\nrequired = true\n\
             [peers.loki]\nport = 3100\n",
        )
        .unwrap()
    }

    /// Prometheus' shape: the app peer is excused by the fleet tag.
    fn fleet_spec() -> RoleSpec {
        toml::from_str(
            "role = \"watcher\"\n\
             [peers.app]\nport = 5000\nrequired = true\n\
             unless_tag = \"obstack:app-fleet-desired\"\n",
        )
        .unwrap()
    }

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn without_the_absent_tag_nothing_is_absent() {
        let context = build(
            &spec(),
            &tags(&[("obstack:peer:app", "10.0.0.1")]),
            "",
            "i-1",
        )
        .unwrap();
        assert!(context.absent.is_empty());
        assert_eq!(context.peers["app"].address, "10.0.0.1:5000");
    }

    #[test]
    fn the_sns_topic_tag_is_parsed_or_refused() {
        let arn = "arn:aws:sns:eu-central-1:123456789012:obstack-alerts";
        let good = tags(&[
            ("obstack:peer:app", "10.0.0.1"),
            ("obstack:alert-sns-topic-arn", arn),
        ]);
        let topic = build(&spec(), &good, "", "i-1").unwrap().sns_topic.unwrap();
        assert_eq!(
            (topic.arn.as_str(), topic.region.as_str()),
            (arn, "eu-central-1")
        );
        let untagged = build(
            &spec(),
            &tags(&[("obstack:peer:app", "10.0.0.1")]),
            "",
            "i-1",
        );
        assert!(untagged.unwrap().sns_topic.is_none());
        let bad = tags(&[
            ("obstack:peer:app", "10.0.0.1"),
            (
                "obstack:alert-sns-topic-arn",
                "arn:aws:sns:eu-central-1:12:obstack-alerts",
            ),
        ]);
        let error = build(&spec(), &bad, "", "i-1").unwrap_err();
        assert!(
            matches!(&error, AgentError::BadTag { key, .. } if key == "obstack:alert-sns-topic-arn"),
            "{error}"
        );
    }

    #[test]
    fn an_absent_required_peer_is_neither_missing_nor_defined() {
        let tags = tags(&[("obstack:absent", "app,promtail")]);
        assert!(missing_tags(&spec(), &tags).is_empty());
        let context = build(&spec(), &tags, "", "i-1").unwrap();
        assert_eq!(context.absent, ["app", "promtail"]);
        assert!(context.peers.is_empty());
        // Without the tag the same peer is waited for.
        let error = build(&spec(), &Tags::new(), "", "i-1").unwrap_err();
        assert!(
            matches!(&error, AgentError::MissingTags(keys) if keys == &["obstack:peer:app"]),
            "{error}"
        );
    }

    #[test]
    fn an_absent_peer_with_an_address_or_a_malformed_list_is_a_bad_tag() {
        for pairs in [
            &[("obstack:peer:app", "10.0.0.1"), ("obstack:absent", "app")][..],
            &[
                ("obstack:peer:app", "10.0.0.1"),
                ("obstack:absent", "loki,"),
            ][..],
            &[("obstack:absent", "Loki")][..],
        ] {
            let error = build(&spec(), &tags(pairs), "", "i-1").unwrap_err();
            assert!(
                matches!(&error, AgentError::BadTag { key, .. } if key == "obstack:absent"),
                "{pairs:?}: {error}"
            );
            assert!(!error.to_string().contains('\n'), "{error}");
        }
        // A malformed list excuses nothing while waiting.
        let tags = tags(&[("obstack:absent", "app,,")]);
        assert_eq!(missing_tags(&spec(), &tags), ["obstack:peer:app"]);
    }

    #[test]
    fn the_fleet_tag_excuses_the_app_peer_and_needs_the_deployment() {
        let single = build(&fleet_spec(), &Tags::new(), "", "i-1").unwrap_err();
        assert!(
            matches!(&single, AgentError::MissingTags(keys) if keys == &["obstack:peer:app"]),
            "{single}"
        );
        assert_eq!(
            missing_tags(&fleet_spec(), &Tags::new()),
            ["obstack:peer:app"]
        );

        let fleet = tags(&[
            ("obstack:app-fleet-desired", "3"),
            ("obstack:deployment", "team-a"),
        ]);
        assert!(missing_tags(&fleet_spec(), &fleet).is_empty());
        let context = build(&fleet_spec(), &fleet, "", "i-1").unwrap();
        assert_eq!(
            context.app_fleet,
            Some(AppFleet {
                deployment: "team-a".into(),
                desired: 3
            })
        );
        assert!(context.peers.is_empty());

        let no_deployment = tags(&[("obstack:app-fleet-desired", "3")]);
        assert_eq!(
            missing_tags(&fleet_spec(), &no_deployment),
            ["obstack:deployment"]
        );
        let error = build(&fleet_spec(), &no_deployment, "", "i-1").unwrap_err();
        assert!(
            matches!(&error, AgentError::MissingTags(keys) if keys == &["obstack:deployment"]),
            "{error}"
        );
        // Without the fleet tag the deployment tag (on every instance) is not read.
        let untouched = tags(&[
            ("obstack:peer:app", "10.0.0.1"),
            ("obstack:deployment", "Not A Name"),
        ]);
        assert!(build(&spec(), &untouched, "", "i-1")
            .unwrap()
            .app_fleet
            .is_none());
    }

    #[test]
    fn bad_fleet_values_are_bad_tags_naming_the_tag() {
        for (pairs, bad_key) in [
            (
                &[
                    ("obstack:app-fleet-desired", "0"),
                    ("obstack:deployment", "team-a"),
                ][..],
                "obstack:app-fleet-desired",
            ),
            (
                &[("obstack:app-fleet-desired", "many")][..],
                "obstack:app-fleet-desired",
            ),
            (
                &[
                    ("obstack:app-fleet-desired", "2"),
                    ("obstack:deployment", "Team_A"),
                ][..],
                "obstack:deployment",
            ),
        ] {
            let error = build(&fleet_spec(), &tags(pairs), "", "i-1").unwrap_err();
            assert!(
                matches!(&error, AgentError::BadTag { key, .. } if key == bad_key),
                "{pairs:?}: {error}"
            );
            assert!(!error.to_string().contains('\n'), "{error}");
        }
    }

    fn loki_tags(extra: &[(&str, &str)]) -> Tags {
        let mut pairs = vec![
            ("obstack:peer:app", "10.0.0.1"),
            ("obstack:loki-s3-bucket", "team-a-loki-123456789012"),
            ("obstack:loki-s3-region", "eu-central-1"),
            ("obstack:loki-s3-from", "2027-01-15"),
        ];
        pairs.extend_from_slice(extra);
        tags(&pairs)
    }

    #[test]
    fn the_grafana_host_name_tag_is_parsed_or_a_bad_tag() {
        let base = [("obstack:peer:app", "10.0.0.1")];
        let plain = build(&spec(), &tags(&base), "", "i-1").unwrap();
        assert!(plain.grafana_https.is_none());
        let named = tags(&[
            base[0],
            ("obstack:grafana-host-name", "grafana.example.com"),
        ]);
        let https = build(&spec(), &named, "", "i-1").unwrap().grafana_https;
        assert_eq!(
            https.map(|h| h.url),
            Some("https://grafana.example.com/".to_string())
        );
        let bad = tags(&[
            base[0],
            ("obstack:grafana-host-name", "https://grafana.example.com"),
        ]);
        let error = build(&spec(), &bad, "", "i-1").unwrap_err();
        assert!(
            matches!(&error, AgentError::BadTag { key, .. } if key == "obstack:grafana-host-name"),
            "{error}"
        );
        assert!(!error.is_transient());
    }

    #[test]
    fn the_three_loki_s3_tags_make_loki_s3() {
        let context = build(&spec(), &loki_tags(&[]), "", "i-1").unwrap();
        assert_eq!(
            context.loki_s3,
            Some(LokiS3 {
                bucket: "team-a-loki-123456789012".into(),
                region: "eu-central-1".into(),
                from: "2027-01-15".into(),
            })
        );
        let plain = build(
            &spec(),
            &tags(&[("obstack:peer:app", "10.0.0.1")]),
            "",
            "i-1",
        );
        assert!(plain.unwrap().loki_s3.is_none());
    }

    #[test]
    fn some_but_not_all_loki_s3_tags_are_a_bad_tag() {
        for dropped in tags::LOKI_S3_TAGS {
            let mut partial = loki_tags(&[]);
            partial.remove(dropped);
            let error = build(&spec(), &partial, "", "i-1").unwrap_err();
            let AgentError::BadTag { key, reason } = &error else {
                panic!("dropping {dropped}: {error}");
            };
            assert_ne!(key, dropped);
            assert!(
                reason.contains(&format!("comes without {dropped}")),
                "{error}"
            );
            assert!(!error.is_transient());
        }
        let only_bucket = tags(&[
            ("obstack:peer:app", "10.0.0.1"),
            ("obstack:loki-s3-bucket", "team-a-loki"),
        ]);
        let error = build(&spec(), &only_bucket, "", "i-1").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("comes without obstack:loki-s3-region, obstack:loki-s3-from"),
            "{error}"
        );
    }

    #[test]
    fn bad_loki_s3_values_are_bad_tags_naming_the_tag() {
        for (key, value) in [
            ("obstack:loki-s3-bucket", "Team_A"),
            ("obstack:loki-s3-region", "eu-central"),
            ("obstack:loki-s3-from", "2024-03-31"),
            ("obstack:loki-s3-from", "2027-02-30"),
        ] {
            let error = build(&spec(), &loki_tags(&[(key, value)]), "", "i-1").unwrap_err();
            assert!(
                matches!(&error, AgentError::BadTag { key: bad, .. } if bad == key),
                "{key}={value}: {error}"
            );
        }
    }

    #[test]
    fn the_grafana_url_tag_is_a_web_address_or_a_bad_tag() {
        let with = |url: &str| {
            build(
                &spec(),
                &tags(&[
                    ("obstack:peer:app", "10.0.0.1"),
                    ("obstack:grafana-url", url),
                ]),
                "",
                "i-1",
            )
        };
        assert_eq!(
            with("https://grafana.example.com/")
                .unwrap()
                .grafana_url
                .as_deref(),
            Some("https://grafana.example.com")
        );
        let untagged = build(
            &spec(),
            &tags(&[("obstack:peer:app", "10.0.0.1")]),
            "",
            "i-1",
        );
        assert!(untagged.unwrap().grafana_url.is_none());
        for bad in [
            "grafana.example.com",
            "https://g.example.com/a|b",
            "https://x\ny: z",
        ] {
            let error = with(bad).unwrap_err();
            assert!(
                matches!(&error, AgentError::BadTag { key, .. } if key == "obstack:grafana-url"),
                "{bad:?}: {error}"
            );
            assert!(!error.to_string().contains('\n'), "{error}");
        }
    }

    #[test]
    fn an_optional_secret_is_neither_waited_for_nor_defined_until_tagged() {
        let spec: RoleSpec = toml::from_str(
            "role = \"watcher\"\n\
             [[secrets]]\nname_tag = \"obstack:hook-param\"\n\
             path = \"/etc/x/secrets/hook_url\"\noptional = true\nformat = \"url\"\n\
             [[secrets]]\nname_tag = \"obstack:password-param\"\n\
             path = \"/etc/x/secrets/password\"\n",
        )
        .unwrap();
        let untagged = tags(&[("obstack:password-param", "/p")]);
        assert!(missing_tags(&spec, &untagged).is_empty());
        let context = build(&spec, &untagged, "/r", "i-1").unwrap();
        assert_eq!(
            context.secrets.keys().collect::<Vec<_>>(),
            ["password_path"],
            "the untagged optional secret is defined"
        );
        let tagged = tags(&[
            ("obstack:password-param", "/p"),
            ("obstack:hook-param", "/obstack/hook"),
        ]);
        let context = build(&spec, &tagged, "/r", "i-1").unwrap();
        assert_eq!(
            context.secrets["hook_url_path"],
            "/r/etc/x/secrets/hook_url"
        );
        // Its name is checked like any parameter name; the required one is still waited for.
        let bad = tags(&[
            ("obstack:password-param", "/p"),
            ("obstack:hook-param", "https://hooks.example.com/x"),
        ]);
        assert!(matches!(
            build(&spec, &bad, "/r", "i-1").unwrap_err(),
            AgentError::BadTag { key, .. } if key == "obstack:hook-param"
        ));
        assert_eq!(
            missing_tags(&spec, &tags(&[("obstack:hook-param", "/h")])),
            ["obstack:password-param"]
        );
    }
}
