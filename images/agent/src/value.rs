//! Validation of tag *values*. A tag value ends up inside YAML and INI files, so only values
//! with a known, harmless shape are accepted: an address (IPv4, IPv6 or DNS host name, with
//! an optional port) or an SSM parameter name. Anything else is rejected with a reason.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

/// EC2 tag values are at most 256 characters; a DNS name at most 253.
const MAX_HOST_LEN: usize = 253;
const MAX_VALUE_LEN: usize = 256;
/// SSM parameter names (with their path) are at most 2048 characters, tags at most 256.
const MAX_PARAMETER_NAME_LEN: usize = MAX_VALUE_LEN;
/// A secret value rendered into a config (an SSM SecureString holds up to 8 KiB).
const MAX_INLINE_SECRET_LEN: usize = 2048;

/// A peer's validated address, as exposed to templates (`peers.<name>.*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerAddress {
    /// Host name or IP address, without brackets.
    pub host: String,
    /// The tag's port, or the spec's default.
    pub port: u16,
    /// `host:port`, with an IPv6 host in brackets.
    pub address: String,
    /// `http://` + `address`.
    pub url: String,
}

impl PeerAddress {
    /// Parses `value` (`host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address),
    /// using `default_port` when the value has none.
    pub fn parse(value: &str, default_port: u16) -> Result<PeerAddress, String> {
        check_plain_text(value)?;
        let (host, port) = split_host_port(value)?;
        check_host(host)?;
        let port = port.unwrap_or(default_port);
        let address = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(PeerAddress {
            host: host.to_string(),
            port,
            url: format!("http://{address}"),
            address,
        })
    }
}

/// Validates a listen address: an IP literal, nothing else.
pub fn parse_bind_address(value: &str) -> Result<IpAddr, String> {
    check_plain_text(value)?;
    value
        .parse::<IpAddr>()
        .map_err(|_| format!("`{value}` is not an IPv4 or IPv6 address"))
}

/// Validates an SSM parameter name: letters, digits and `_ . - /`, per SSM's own rules.
pub fn check_parameter_name(value: &str) -> Result<(), String> {
    check_plain_text(value)?;
    if value.len() > MAX_PARAMETER_NAME_LEN {
        return Err(format!(
            "is {} characters long; at most {MAX_PARAMETER_NAME_LEN} are allowed",
            value.len()
        ));
    }
    match value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_.-/".contains(*c)))
    {
        Some(bad) => Err(format!(
            "contains {bad:?}; an SSM parameter name has only letters, digits and `_ . - /`"
        )),
        None => Ok(()),
    }
}

/// A secret's text on its way into a template: serialised as itself, debug-printed as
/// `<redacted>` so that logging a context can never leak it.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct SecretText(String);

impl SecretText {
    pub fn new(text: impl Into<String>) -> SecretText {
        SecretText(text.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// An SNS topic's validated ARN, as exposed to templates (`sns_topic.*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnsTopic {
    /// The whole ARN, as tagged.
    pub arn: String,
    /// `aws`, `aws-cn`, `aws-us-gov`, ...
    pub partition: String,
    /// The region the topic lives in: where a signed Publish must go.
    pub region: String,
    pub account: String,
    pub name: String,
}

impl SnsTopic {
    /// Parses `arn:<partition>:sns:<region>:<12-digit account>:<topic name>`.
    pub fn parse(value: &str) -> Result<SnsTopic, String> {
        check_plain_text(value)?;
        let shape = "an SNS topic ARN looks like arn:aws:sns:<region>:<12-digit account>:<topic>";
        let parts: Vec<&str> = value.split(':').collect();
        let [arn, partition, service, region, account, name] = parts[..] else {
            return Err(format!("`{value}` is not {shape}"));
        };
        let partition_ok = partition
            .strip_prefix("aws")
            .is_some_and(|rest| rest.is_empty() || is_lower_words(rest));
        if arn != "arn" || service != "sns" || !partition_ok {
            return Err(format!("`{value}` is not {shape}"));
        }
        if !is_region(region) {
            return Err(format!(
                "`{region}` is not an AWS region (like us-east-1); {shape}"
            ));
        }
        if account.len() != 12 || !account.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("`{account}` is not a 12-digit account id; {shape}"));
        }
        // SNS: 1-256 letters, digits, `-` and `_`; a FIFO topic ends in `.fifo`.
        let stem = name.strip_suffix(".fifo").unwrap_or(name);
        let name_ok = !stem.is_empty()
            && name.len() <= 256
            && stem
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(format!(
                "`{name}` is not an SNS topic name (letters, digits, `-` and `_`); {shape}"
            ));
        }
        Ok(SnsTopic {
            arn: value.to_string(),
            partition: partition.to_string(),
            region: region.to_string(),
            account: account.to_string(),
            name: name.to_string(),
        })
    }
}

/// `-cn`, `-us-gov`: dash-separated lowercase words.
fn is_lower_words(text: &str) -> bool {
    text.strip_prefix('-').is_some_and(|rest| {
        rest.split('-')
            .all(|word| !word.is_empty() && word.chars().all(|c| c.is_ascii_lowercase()))
    })
}

/// `us-east-1`, `us-gov-west-1`, `ap-southeast-2`: words, then a number.
fn is_region(region: &str) -> bool {
    let Some((words, number)) = region.rsplit_once('-') else {
        return false;
    };
    let words: Vec<&str> = words.split('-').collect();
    !number.is_empty()
        && number.chars().all(|c| c.is_ascii_digit())
        && words.len() >= 2
        && words
            .iter()
            .all(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase()))
}

/// Checks a secret value that templates write inside a double-quoted config string (a
/// webhook URL): one line, no whitespace, quotes, backslashes or control characters. The
/// error never quotes the value.
pub fn check_inline_secret(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("the value is empty".into());
    }
    if value.len() > MAX_INLINE_SECRET_LEN {
        return Err(format!(
            "the value is {} characters long; at most {MAX_INLINE_SECRET_LEN} are allowed",
            value.len()
        ));
    }
    if value
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "\"'\\`".contains(c))
    {
        return Err(
            "the value contains whitespace, a quote, a backslash or a control character".into(),
        );
    }
    if !(value.starts_with("https://") || value.starts_with("http://")) {
        return Err("the value is not an http:// or https:// URL".into());
    }
    Ok(())
}

/// Refuses the values that could break out of a config line, with a precise reason.
fn check_plain_text(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("is empty".into());
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(format!(
            "is {} characters long; at most {MAX_VALUE_LEN} are allowed",
            value.len()
        ));
    }
    if value.chars().any(|c| c == '\n' || c == '\r') {
        return Err("contains a line break".into());
    }
    if value.chars().any(char::is_whitespace) {
        return Err("contains whitespace".into());
    }
    if let Some(bad) = value.chars().find(|c| c.is_control()) {
        return Err(format!("contains the control character {bad:?}"));
    }
    Ok(())
}

/// Splits off an optional port. A value with two or more colons and no brackets is taken
/// as a bare IPv6 address (it cannot carry a port without brackets).
fn split_host_port(value: &str) -> Result<(&str, Option<u16>), String> {
    if let Some(rest) = value.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{value}` opens `[` without a closing `]`"))?;
        host.parse::<Ipv6Addr>()
            .map_err(|_| format!("`{host}` inside brackets is not an IPv6 address"))?;
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(parse_port(port)?))),
                None => Err(format!("unexpected `{after}` after `]`")),
            },
        };
    }
    match value.matches(':').count() {
        0 => Ok((value, None)),
        1 => {
            let (host, port) = value.split_once(':').unwrap_or((value, ""));
            Ok((host, Some(parse_port(port)?)))
        }
        _ => Ok((value, None)),
    }
}

fn parse_port(port: &str) -> Result<u16, String> {
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("`{port}` is not a port (1-65535)")),
        Ok(port) => Ok(port),
    }
}

/// Accepts an IP literal or a DNS host name (RFC 1123 labels).
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("has a port but no host".into());
    }
    if host.contains(':') {
        return host
            .parse::<Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| format!("`{host}` is not an IPv6 address"));
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return Ok(());
    }
    if host.len() > MAX_HOST_LEN {
        return Err(format!(
            "host is {} characters long; a DNS name has at most {MAX_HOST_LEN}",
            host.len()
        ));
    }
    let labels: Vec<&str> = host.strip_suffix('.').unwrap_or(host).split('.').collect();
    // All-numeric dotted values must be real IPv4 addresses (e.g. refuse `10.0.0.256`).
    if labels.iter().all(|l| l.chars().all(|c| c.is_ascii_digit())) {
        return Err(format!("`{host}` is not a valid IPv4 address"));
    }
    for label in labels {
        let valid = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !valid {
            return Err(format!(
                "`{host}` is neither an IP address nor a DNS host name (label `{label}`)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(value: &str) -> PeerAddress {
        PeerAddress::parse(value, 3100).unwrap()
    }

    #[test]
    fn ipv4_with_and_without_port() {
        assert_eq!(parsed("10.0.1.12").address, "10.0.1.12:3100");
        let with_port = parsed("10.0.1.12:9999");
        assert_eq!(
            (with_port.host.as_str(), with_port.port),
            ("10.0.1.12", 9999)
        );
        assert_eq!(with_port.url, "http://10.0.1.12:9999");
    }

    #[test]
    fn ipv6_is_bracketed_in_address_and_url() {
        let bare = parsed("fd00::1");
        assert_eq!(
            (bare.host.as_str(), bare.address.as_str()),
            ("fd00::1", "[fd00::1]:3100")
        );
        let bracketed = parsed("[fd00::1]:4000");
        assert_eq!(bracketed.url, "http://[fd00::1]:4000");
        assert_eq!(bracketed.host, "fd00::1");
    }

    #[test]
    fn host_names_are_accepted() {
        assert_eq!(parsed("loki.internal").address, "loki.internal:3100");
        assert_eq!(parsed("ip-10-0-1-12.ec2.internal:80").port, 80);
    }

    #[test]
    fn injection_and_garbage_are_refused_with_a_reason() {
        let cases = [
            ("10.0.0.1\nfoo: bar", "line break"),
            ("", "empty"),
            ("10.0.0.1 foo", "whitespace"),
            ("10.0.0.256", "IPv4"),
            ("10.0.0.1:0", "port"),
            ("10.0.0.1:70000", "port"),
            ("host_name", "DNS"),
            ("-bad.example", "DNS"),
            ("a\"b", "DNS"),
            ("[fd00::1", "`]`"),
            ("[10.0.0.1]:80", "IPv6"),
            (":80", "no host"),
        ];
        for (value, reason) in cases {
            let err = PeerAddress::parse(value, 1).unwrap_err();
            assert!(err.contains(reason), "{value:?}: {err}");
        }
        let long = format!("{}.example", "a".repeat(300));
        assert!(PeerAddress::parse(&long, 1)
            .unwrap_err()
            .contains("characters long"));
    }

    #[test]
    fn bind_address_must_be_an_ip() {
        assert!(parse_bind_address("127.0.0.1").is_ok());
        assert!(parse_bind_address("::").is_ok());
        assert!(parse_bind_address("localhost").is_err());
    }

    #[test]
    fn sns_topic_arns_are_split_into_their_parts() {
        let topic = SnsTopic::parse("arn:aws:sns:eu-west-1:123456789012:obstack-alerts").unwrap();
        assert_eq!(
            (
                topic.partition.as_str(),
                topic.region.as_str(),
                topic.account.as_str(),
                topic.name.as_str()
            ),
            ("aws", "eu-west-1", "123456789012", "obstack-alerts")
        );
        assert!(SnsTopic::parse("arn:aws-us-gov:sns:us-gov-west-1:123456789012:a_b").is_ok());
        assert!(SnsTopic::parse("arn:aws-cn:sns:cn-north-1:123456789012:t.fifo").is_ok());
    }

    #[test]
    fn bad_sns_topic_arns_are_refused_with_a_reason() {
        for (value, reason) in [
            ("", "empty"),
            ("obstack-alerts", "not an SNS topic ARN"),
            (
                "arn:aws:sqs:us-east-1:123456789012:q",
                "not an SNS topic ARN",
            ),
            (
                "arn:azure:sns:us-east-1:123456789012:t",
                "not an SNS topic ARN",
            ),
            (
                "arn:aws:sns:us-east-1:123456789012:t:extra",
                "not an SNS topic ARN",
            ),
            ("arn:aws:sns:useast1:123456789012:t", "not an AWS region"),
            ("arn:aws:sns:US-EAST-1:123456789012:t", "not an AWS region"),
            ("arn:aws:sns:us-east-1:1234:t", "12-digit"),
            ("arn:aws:sns:us-east-1:123456789012:", "topic name"),
            ("arn:aws:sns:us-east-1:123456789012:a\"b", "topic name"),
            ("arn:aws:sns:us-east-1:123456789012:t\nx: y", "line break"),
        ] {
            let error = SnsTopic::parse(value).unwrap_err();
            assert!(error.contains(reason), "{value:?}: {error}");
        }
    }

    #[test]
    fn inline_secrets_are_urls_that_cannot_break_a_quoted_string() {
        assert!(check_inline_secret("https://hooks.example.com/services/T0/B0/x-y_z").is_ok());
        for bad in [
            "",
            "hooks.example.com/x",
            "https://a\"b",
            "https://a b",
            "https://a\nb",
            "https://a\\b",
        ] {
            let error = check_inline_secret(bad).unwrap_err();
            assert!(
                bad.is_empty() || !error.contains(bad),
                "{error} quotes the value"
            );
        }
    }

    #[test]
    fn parameter_names_follow_ssm_rules() {
        assert!(check_parameter_name("/obstack/grafana/admin-password").is_ok());
        assert!(check_parameter_name("a b").is_err());
        assert!(check_parameter_name("x;rm").is_err());
    }
}
