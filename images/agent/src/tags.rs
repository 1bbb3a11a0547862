//! The tag keys the agent reads (see the tag table in the top-level README).
//!
//! Keys must be usable as instance metadata tags: IMDS exposes them as URL path segments,
//! so AWS only allows letters, digits and `+ - = . , _ : @` there (no spaces, no `/`).

use std::collections::BTreeMap;

/// The instance's role: `app`, `prometheus`, `loki` or `grafana` (informational).
pub const ROLE: &str = "obstack:role";
/// Prefix of a peer's address tag: `obstack:peer:<name>`.
pub const PEER_PREFIX: &str = "obstack:peer:";
/// Optional address services listen on; `0.0.0.0` when absent.
pub const BIND_ADDRESS: &str = "obstack:bind-address";
/// The *name* of the SSM SecureString holding Grafana's admin password.
pub const GRAFANA_ADMIN_PASSWORD_PARAM: &str = "obstack:grafana-admin-password-param";
/// Optional, comma-separated names of the services this deployment does not run
/// (`loki,promtail`). Set by `cargo xtask up` for what it could not start; never on EC2.
/// Templates see it as the list `absent`; a peer named in it has no address and is not
/// waited for, even when required.
pub const ABSENT: &str = "obstack:absent";
/// Optional ARN of the SNS topic Alertmanager pages through (Prometheus' instance only),
/// `arn:aws:sns:<region>:<account>:<name>`. Alertmanager signs with the instance role.
pub const ALERT_SNS_TOPIC_ARN: &str = "obstack:alert-sns-topic-arn";
/// Optional, on Prometheus' instance: the *name* of the SSM SecureString holding a Slack
/// incoming-webhook URL (Alertmanager's `slack_configs`).
pub const ALERT_SLACK_URL_PARAM: &str = "obstack:alert-slack-url-param";
/// Optional, on Prometheus' instance: the *name* of the SSM SecureString holding the URL of a
/// generic JSON webhook (Alertmanager's `webhook_configs`: its own JSON, not Slack's).
pub const ALERT_WEBHOOK_URL_PARAM: &str = "obstack:alert-webhook-url-param";
/// Optional, on Prometheus' instance: the address people open Grafana at, which alert
/// notifications link to (`https://grafana.example.com`); templates see `grafana_url`.
pub const GRAFANA_URL: &str = "obstack:grafana-url";

/// The id of the instance's EBS data volume (`vol-...`), on the stateful roles' instances:
/// the `mount` step mounts that volume before any service starts.
pub const DATA_VOLUME: &str = "obstack:data-volume";

/// Optional, on Prometheus' instance: the app runs as an Auto Scaling group wanting this
/// many instances (decimal, 1 to 1000). Prometheus then finds the app through EC2 service
/// discovery instead of `obstack:peer:app`, and alerts when fewer are up. Templates see
/// `app_fleet.desired`.
pub const APP_FLEET_DESIRED: &str = "obstack:app-fleet-desired";
/// The deployment's name (Terraform's `var.name`, on every instance through the provider's
/// default tags). Read only with [`APP_FLEET_DESIRED`], which then requires it: the fleet's
/// discovery filters on it (`app_fleet.deployment`).
pub const DEPLOYMENT: &str = "obstack:deployment";
/// Optional, on Loki's instance: the S3 bucket holding Loki's chunks and index from
/// [`LOKI_S3_FROM`] on. The three `LOKI_S3_*` tags come together or not at all.
pub const LOKI_S3_BUCKET: &str = "obstack:loki-s3-bucket";
/// The region of [`LOKI_S3_BUCKET`] (`us-east-1`).
pub const LOKI_S3_REGION: &str = "obstack:loki-s3-region";
/// The first day (UTC, `YYYY-MM-DD`) of Loki's S3 schema period; fixed once set, since
/// moving it would hide the logs written under the other period.
pub const LOKI_S3_FROM: &str = "obstack:loki-s3-from";
/// All of Loki's S3 tags, in the order errors name them.
pub const LOKI_S3_TAGS: [&str; 3] = [LOKI_S3_BUCKET, LOKI_S3_REGION, LOKI_S3_FROM];
/// Optional, on Grafana's instance: the DNS name Grafana is served at over HTTPS by the load
/// balancer (Terraform's `grafana_host_name`, only with its certificate). Grafana then links
/// and redirects to `https://<name>/`, marks its cookie Secure and sends HSTS. Templates see
/// `grafana_https.host` and `grafana_https.url`.
pub const GRAFANA_HOST_NAME: &str = "obstack:grafana-host-name";

/// Where `bind_address` points when the instance has no `obstack:bind-address` tag.
pub const DEFAULT_BIND_ADDRESS: &str = "0.0.0.0";

/// AWS's limit on a tag key's length.
const MAX_KEY_LEN: usize = 128;
/// AWS's limit on a tag value's length.
const MAX_VALUE_LEN: usize = 256;

/// A flat map of tag key to value, as read from any tag source.
pub type Tags = BTreeMap<String, String>;

/// The tag holding the address of peer `name`.
pub fn peer_key(name: &str) -> String {
    format!("{PEER_PREFIX}{name}")
}

/// Checks that `key` is valid as an instance metadata tag key; the error says why not.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("a tag key cannot be empty".into());
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!(
            "tag key `{key}` is longer than {MAX_KEY_LEN} characters"
        ));
    }
    if key.starts_with("aws:") {
        return Err(format!("tag key `{key}` uses the reserved `aws:` prefix"));
    }
    match key.chars().find(|c| !is_key_char(*c)) {
        Some(bad) => Err(format!(
            "tag key `{key}` contains {bad:?}; instance metadata tag keys allow only \
             letters, digits and `+ - = . , _ : @`"
        )),
        None => Ok(()),
    }
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "+-=.,_:@".contains(c)
}

/// Parses the value of [`ABSENT`]: service names (a lowercase letter, then lowercase
/// letters, digits, `_` or `-`) separated by commas, each once. The error says why not.
pub fn parse_absent(value: &str) -> Result<Vec<String>, String> {
    if value.len() > MAX_VALUE_LEN {
        return Err(format!(
            "is {} characters long; a tag value holds at most {MAX_VALUE_LEN}",
            value.len()
        ));
    }
    let mut names: Vec<String> = Vec::new();
    for name in value.split(',') {
        if name.is_empty() {
            return Err(format!(
                "`{value}` has an empty name; write service names separated by single commas, \
                 like `loki,promtail`"
            ));
        }
        let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !valid {
            return Err(format!(
                "`{name}` is not a service name (a lowercase letter, then lowercase letters, \
                 digits, `_` or `-`)"
            ));
        }
        if names.iter().any(|seen| seen == name) {
            return Err(format!("names `{name}` twice"));
        }
        names.push(name.to_string());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stack_keys_are_valid_imds_keys() {
        for key in [
            ROLE,
            BIND_ADDRESS,
            GRAFANA_ADMIN_PASSWORD_PARAM,
            ABSENT,
            DATA_VOLUME,
            ALERT_SNS_TOPIC_ARN,
            ALERT_SLACK_URL_PARAM,
            ALERT_WEBHOOK_URL_PARAM,
            GRAFANA_URL,
            APP_FLEET_DESIRED,
            DEPLOYMENT,
            LOKI_S3_BUCKET,
            LOKI_S3_REGION,
            LOKI_S3_FROM,
            &peer_key("loki"),
        ] {
            assert_eq!(check_key(key), Ok(()), "{key}");
        }
    }

    #[test]
    fn keys_with_spaces_slashes_or_reserved_prefix_are_refused() {
        for key in ["obstack:peer:a b", "obstack/peer", "", "aws:foo", "ключ"] {
            assert!(check_key(key).is_err(), "{key:?} should be refused");
        }
        assert!(check_key(&"k".repeat(129)).is_err());
    }

    #[test]
    fn absent_services_are_a_comma_separated_list_of_names() {
        assert_eq!(parse_absent("loki"), Ok(vec!["loki".to_string()]));
        assert_eq!(
            parse_absent("loki,node_exporter,promtail-2"),
            Ok(vec![
                "loki".to_string(),
                "node_exporter".to_string(),
                "promtail-2".to_string()
            ])
        );
        for (bad, why) in [
            ("", "empty name"),
            ("loki,", "empty name"),
            ("loki,,grafana", "empty name"),
            ("loki, grafana", "not a service name"),
            ("Loki", "not a service name"),
            ("2loki", "not a service name"),
            ("loki\n  - job_name: x", "not a service name"),
            ("{{ 7 * 7 }}", "not a service name"),
            ("loki,grafana,loki", "names `loki` twice"),
        ] {
            let error = parse_absent(bad).unwrap_err();
            assert!(error.contains(why), "{bad:?}: {error}");
        }
        assert!(parse_absent(&"a,".repeat(200))
            .unwrap_err()
            .contains("at most"));
    }
}
