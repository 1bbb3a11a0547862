//! Validation of tag *values*. A tag value ends up inside YAML and INI files, so only values
//! with a known, harmless shape are accepted: an address (IPv4, IPv6 or DNS host name, with
//! an optional port), an SSM parameter name, an ARN, a bucket or deployment name, a region, a
//! count, a date or a web address. Anything else is rejected with a reason.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

/// EC2 tag values are at most 256 characters; a DNS name at most 253.
const MAX_HOST_LEN: usize = 253;
const MAX_VALUE_LEN: usize = 256;
/// SSM parameter names (with their path) are at most 2048 characters, tags at most 256.
const MAX_PARAMETER_NAME_LEN: usize = MAX_VALUE_LEN;
/// A URL kept as a secret (an SSM SecureString holds up to 8 KiB; no webhook URL needs more).
const MAX_SECRET_URL_LEN: usize = 2048;

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

/// The app's Auto Scaling group, as Prometheus' templates see it (`app_fleet.*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppFleet {
    /// The deployment name the fleet's instances are tagged with (`obstack:deployment`).
    pub deployment: String,
    /// The group's desired capacity.
    pub desired: u32,
}

/// Loki's S3 storage, as its template sees it (`loki_s3.*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LokiS3 {
    pub bucket: String,
    pub region: String,
    /// `YYYY-MM-DD`: the first day of the S3 schema period.
    pub from: String,
}

/// A public name a service is served at over HTTPS, TLS ending at the load balancer in front
/// of it, as templates see it (`grafana_https.*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpsHost {
    /// The DNS name, e.g. `grafana.example.com`.
    pub host: String,
    /// `https://<host>/`: what links and redirects point at.
    pub url: String,
}

/// The longest host name a load balancer's host-header condition matches.
const MAX_PUBLIC_HOST_LEN: usize = 128;

impl HttpsHost {
    /// Parses a lower-case DNS name of at least two labels, the last of letters only, at most
    /// 128 characters: what a load balancer's host-header condition matches, and Terraform's
    /// `grafana_host_name` validation accepts. No IP address, wildcard, port, scheme or path.
    pub fn parse(value: &str) -> Result<HttpsHost, String> {
        check_plain_text(value)?;
        let shape = "a public host name is a lower-case DNS name of two or more labels, the last \
                     of letters only, such as grafana.example.com (no scheme, port, path or \
                     wildcard)";
        if value.len() > MAX_PUBLIC_HOST_LEN {
            return Err(format!(
                "is {} characters long; a load balancer matches host names of at most \
                 {MAX_PUBLIC_HOST_LEN}",
                value.len()
            ));
        }
        let labels: Vec<&str> = value.split('.').collect();
        let label_ok = |label: &&str| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        };
        let last_ok = labels
            .last()
            .is_some_and(|last| last.chars().all(|c| c.is_ascii_lowercase()));
        if labels.len() < 2 || !labels.iter().all(label_ok) || !last_ok {
            return Err(format!("`{value}` is not a public host name; {shape}"));
        }
        Ok(HttpsHost {
            host: value.to_string(),
            url: format!("https://{value}/"),
        })
    }
}

/// The largest fleet the agent accepts: a bound on Prometheus' series per app metric and
/// Loki's streams per label set (the `instance` label's cardinality).
pub const MAX_FLEET_SIZE: u32 = 1000;
/// The day Loki's first (filesystem) schema period starts (images/loki/templates/loki.yaml.j2);
/// an S3 period must start after it.
pub const LOKI_FILESYSTEM_FROM: time::Date =
    match time::Date::from_calendar_date(2024, time::Month::April, 1) {
        Ok(date) => date,
        Err(_) => panic!("2024-04-01 is a date"),
    };

/// Parses the fleet's desired capacity: a decimal number from 1 to [`MAX_FLEET_SIZE`].
pub fn parse_fleet_size(value: &str) -> Result<u32, String> {
    check_plain_text(value)?;
    let shape = format!("the desired instance count is a whole number from 1 to {MAX_FLEET_SIZE}");
    if !value.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("`{value}` is not a number; {shape}"));
    }
    match value.parse::<u32>() {
        Ok(size) if (1..=MAX_FLEET_SIZE).contains(&size) => Ok(size),
        _ => Err(format!("`{value}` is out of range; {shape}")),
    }
}

/// Checks a deployment name as Terraform's `var.name` validation does: 2 to 31 lowercase
/// letters, digits and `-`, starting with a letter.
pub fn check_deployment_name(value: &str) -> Result<(), String> {
    check_plain_text(value)?;
    let valid = (2..=31).contains(&value.len())
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{value}` is not a deployment name (2-31 lowercase letters, digits and `-`, \
             starting with a letter: Terraform's `name`)"
        ))
    }
}

/// Checks a general purpose S3 bucket name against S3's naming rules.
pub fn check_bucket_name(value: &str) -> Result<(), String> {
    check_plain_text(value)?;
    let rules = "an S3 bucket name is 3-63 lowercase letters, digits, `.` and `-`, \
                 starting and ending with a letter or digit";
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let shape_ok = (3..=63).contains(&value.len())
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && edge_ok(value.chars().next())
        && edge_ok(value.chars().last());
    if !shape_ok {
        return Err(format!("`{value}` is not a bucket name; {rules}"));
    }
    if value.contains("..") || value.contains(".-") || value.contains("-.") {
        return Err(format!(
            "`{value}` is not a bucket name: S3 refuses `..`, `.-` and `-.`"
        ));
    }
    if value.parse::<Ipv4Addr>().is_ok() {
        return Err(format!(
            "`{value}` is not a bucket name: S3 refuses names shaped like an IP address"
        ));
    }
    // Prefixes and suffixes S3 reserves for its own names (access points, directory
    // buckets, multi-region access points, table buckets).
    let reserved_prefix = ["xn--", "sthree-", "amzn-s3-demo-"]
        .into_iter()
        .find(|p| value.starts_with(p));
    let reserved_suffix = ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"]
        .into_iter()
        .find(|s| value.ends_with(s));
    if let Some(reserved) = reserved_prefix.or(reserved_suffix) {
        return Err(format!(
            "`{value}` is not a bucket name: S3 reserves `{reserved}`"
        ));
    }
    Ok(())
}

/// Checks an AWS region name (`us-east-1`, `us-gov-west-1`).
pub fn check_region(value: &str) -> Result<(), String> {
    check_plain_text(value)?;
    if is_region(value) {
        Ok(())
    } else {
        Err(format!("`{value}` is not an AWS region (like us-east-1)"))
    }
}

/// Parses the first day of Loki's S3 schema period: a real `YYYY-MM-DD` date after
/// [`LOKI_FILESYSTEM_FROM`] (Loki needs its periods in order, each starting later).
pub fn parse_schema_date(value: &str) -> Result<time::Date, String> {
    check_plain_text(value)?;
    let shape = "write the day the S3 period starts as YYYY-MM-DD, like 2027-01-15";
    let parts: Vec<&str> = value.split('-').collect();
    let digits =
        |text: &str, len: usize| text.len() == len && text.chars().all(|c| c.is_ascii_digit());
    let [year, month, day] = parts[..] else {
        return Err(format!("`{value}` is not a date; {shape}"));
    };
    if !(digits(year, 4) && digits(month, 2) && digits(day, 2)) {
        return Err(format!("`{value}` is not a date; {shape}"));
    }
    let not_a_day = || format!("`{value}` is not a day of the calendar; {shape}");
    let year: i32 = year.parse().map_err(|_| not_a_day())?;
    let month: u8 = month.parse().map_err(|_| not_a_day())?;
    let day: u8 = day.parse().map_err(|_| not_a_day())?;
    let month = time::Month::try_from(month).map_err(|_| not_a_day())?;
    let date = time::Date::from_calendar_date(year, month, day).map_err(|_| not_a_day())?;
    if date <= LOKI_FILESYSTEM_FROM {
        return Err(format!(
            "`{value}` is not after {LOKI_FILESYSTEM_FROM}, the day Loki's filesystem period \
             starts; the S3 period must start later (pick the day of the switch, in the future)"
        ));
    }
    Ok(date)
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

/// Checks a URL kept as a secret (a webhook URL from SSM, written to its own file): one line,
/// `http://` or `https://` and a host, no whitespace or control characters. The error never
/// quotes the value.
pub fn check_secret_url(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("the value is empty".into());
    }
    if value.len() > MAX_SECRET_URL_LEN {
        return Err(format!(
            "the value is {} characters long; at most {MAX_SECRET_URL_LEN} are allowed",
            value.len()
        ));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the value contains whitespace or a control character".into());
    }
    match url_host(value) {
        Some(host) if !host.is_empty() => Ok(()),
        Some(_) => Err("the value is a URL without a host".into()),
        None => Err("the value is not an http:// or https:// URL".into()),
    }
}

/// The host of an `http://` or `https://` URL, lowercased, without port or credentials;
/// `None` for anything else.
pub fn url_host(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

/// A web address a person opens (Grafana's, for links in alert notifications), as
/// validated from a tag: `http(s)://host[:port][/path]`, the host an IP address or DNS name,
/// the path only letters, digits and `- . _ ~ /`, so it is safe inside a quoted config
/// string and a Slack link (`<url|label>`). No query, fragment or credentials. The trailing
/// `/` is dropped, so templates append paths with `/`.
pub fn parse_web_url(value: &str) -> Result<String, String> {
    check_plain_text(value)?;
    let shape = "a web address looks like https://grafana.example.com or http://10.0.1.13:3000, \
                 optionally with a path";
    let Some(rest) = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))
    else {
        return Err(format!(
            "`{value}` is not an http:// or https:// address; {shape}"
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(format!(
            "`{value}` carries credentials; a link must not: {shape}"
        ));
    }
    let (host, _port) =
        split_host_port(authority).map_err(|reason| format!("{reason}; {shape}"))?;
    check_host(host).map_err(|reason| format!("{reason}; {shape}"))?;
    if let Some(bad) = path
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-._~/".contains(*c)))
    {
        return Err(format!(
            "`{value}` has {bad:?} in its path; a path has only letters, digits and `- . _ ~ /` \
             (no query or fragment)"
        ));
    }
    Ok(value.trim_end_matches('/').to_string())
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
    fn secret_urls_are_one_line_http_urls_and_errors_never_quote_them() {
        assert!(check_secret_url("https://hooks.example.com/services/T0/B0/x-y_z").is_ok());
        assert!(check_secret_url("http://127.0.0.1:40404/alerts?token=a\"b").is_ok());
        for (bad, why) in [
            ("", "empty"),
            ("hooks.example.com/x", "not an http"),
            ("ftp://hooks.example.com/x", "not an http"),
            ("https:///x", "without a host"),
            ("https://a b", "whitespace"),
            ("https://a\nb", "whitespace"),
            ("https://a\u{7}b", "control"),
        ] {
            let error = check_secret_url(bad).unwrap_err();
            assert!(error.contains(why), "{bad:?}: {error}");
            assert!(
                bad.is_empty() || !error.contains(bad),
                "{error} quotes the value"
            );
        }
        let long = format!("https://example.com/{}", "x".repeat(2048));
        assert!(check_secret_url(&long)
            .unwrap_err()
            .contains("characters long"));
    }

    #[test]
    fn url_hosts_are_found_whatever_the_port_case_or_credentials() {
        for (url, host) in [
            (
                "https://hooks.slack.com/services/T0/B0/X",
                "hooks.slack.com",
            ),
            ("https://HOOKS.Slack.com./services/x", "hooks.slack.com"),
            ("https://hooks.slack.com:443/services/x", "hooks.slack.com"),
            ("https://user:pw@hooks.slack.com/x", "hooks.slack.com"),
            ("http://[fd00::1]:8080/x", "fd00::1"),
            ("http://10.0.0.1?x=1", "10.0.0.1"),
        ] {
            assert_eq!(url_host(url).as_deref(), Some(host), "{url}");
        }
        assert_eq!(url_host("hooks.slack.com/x"), None);
    }

    #[test]
    fn web_urls_are_addresses_with_a_plain_path() {
        for (good, kept) in [
            ("https://grafana.example.com", "https://grafana.example.com"),
            (
                "https://grafana.example.com/",
                "https://grafana.example.com",
            ),
            ("http://10.0.1.13:3000", "http://10.0.1.13:3000"),
            (
                "http://[fd00::1]:3000/grafana/",
                "http://[fd00::1]:3000/grafana",
            ),
            (
                "https://ops.example.com/tools/grafana",
                "https://ops.example.com/tools/grafana",
            ),
        ] {
            assert_eq!(parse_web_url(good).as_deref(), Ok(kept), "{good}");
        }
        for (bad, why) in [
            ("grafana.example.com", "not an http"),
            ("ftp://grafana.example.com", "not an http"),
            ("https://", "no host"),
            ("https://gra fana.example.com", "whitespace"),
            ("https://grafana.example.com/d?x=1", "in its path"),
            ("https://grafana.example.com/a|b", "in its path"),
            ("https://grafana.example.com/a>b", "in its path"),
            ("https://grafana.example.com/\"x", "in its path"),
            ("https://admin:pw@grafana.example.com", "credentials"),
            ("https://grafana_example.com", "DNS host name"),
            ("https://grafana.example.com:0", "port"),
            ("https://g.example.com\nx: y", "line break"),
        ] {
            let error = parse_web_url(bad).unwrap_err();
            assert!(error.contains(why), "{bad:?}: {error}");
        }
    }

    #[test]
    fn fleet_sizes_are_whole_numbers_from_1_to_1000() {
        assert_eq!(parse_fleet_size("1"), Ok(1));
        assert_eq!(parse_fleet_size("1000"), Ok(1000));
        for (bad, why) in [
            ("0", "out of range"),
            ("1001", "out of range"),
            ("99999999999", "out of range"),
            ("+3", "not a number"),
            ("-1", "not a number"),
            ("3.0", "not a number"),
            ("three", "not a number"),
            ("3 ", "whitespace"),
            ("", "empty"),
        ] {
            let error = parse_fleet_size(bad).unwrap_err();
            assert!(error.contains(why), "{bad:?}: {error}");
        }
    }

    #[test]
    fn deployment_names_follow_terraforms_name_rule() {
        for good in ["obstack", "ab", "team-a-prod2", &"a".repeat(31)] {
            assert_eq!(check_deployment_name(good), Ok(()), "{good}");
        }
        for bad in [
            "a",
            "Obstack",
            "2stack",
            "ob_stack",
            "ob.stack",
            &"a".repeat(32),
        ] {
            let error = check_deployment_name(bad).unwrap_err();
            assert!(error.contains("deployment name"), "{bad:?}: {error}");
        }
        assert!(check_deployment_name("ob stack")
            .unwrap_err()
            .contains("whitespace"));
    }

    #[test]
    fn bucket_names_follow_s3_rules() {
        for good in ["obstack-loki-123456789012", "abc", "a.b-c", &"b".repeat(63)] {
            assert_eq!(check_bucket_name(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("ab", "3-63"),
            (&"b".repeat(64), "3-63"),
            ("Obstack", "3-63"),
            ("ob_stack", "3-63"),
            ("-obstack", "3-63"),
            ("obstack.", "3-63"),
            ("ob..stack", "`..`"),
            ("ob.-stack", "`..`"),
            ("10.0.0.1", "IP address"),
            ("xn--obstack", "reserves `xn--`"),
            ("sthree-logs", "reserves `sthree-`"),
            ("logs-s3alias", "reserves `-s3alias`"),
            ("logs--x-s3", "reserves `--x-s3`"),
            ("ob stack", "whitespace"),
            ("logs\nx: y", "line break"),
        ] {
            let error = check_bucket_name(bad).unwrap_err();
            assert!(error.contains(why), "{bad:?}: {error}");
        }
    }

    #[test]
    fn regions_are_checked_like_in_arns() {
        assert_eq!(check_region("eu-central-1"), Ok(()));
        assert_eq!(check_region("us-gov-west-1"), Ok(()));
        for bad in [
            "eu-central",
            "EU-CENTRAL-1",
            "eucentral1",
            "eu-central-1a",
            "",
        ] {
            assert!(check_region(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn schema_dates_are_real_days_after_the_filesystem_period() {
        let date = parse_schema_date("2027-01-15").unwrap();
        assert_eq!(date.to_string(), "2027-01-15");
        assert_eq!(
            parse_schema_date("2024-04-02").unwrap().to_string(),
            "2024-04-02"
        );
        assert_eq!(
            parse_schema_date("2028-02-29").unwrap().to_string(),
            "2028-02-29"
        );
        for (bad, why) in [
            ("2024-04-01", "not after 2024-04-01"),
            ("2023-12-31", "not after 2024-04-01"),
            ("2027-02-29", "not a day of the calendar"),
            ("2027-13-01", "not a day of the calendar"),
            ("2027-04-31", "not a day of the calendar"),
            ("2027-00-10", "not a day of the calendar"),
            ("2027-1-15", "not a date"),
            ("27-01-15", "not a date"),
            ("2027/01/15", "not a date"),
            ("2027-01-15T00:00:00Z", "not a date"),
            ("+2027-01-15", "not a date"),
            ("2027-01-15\nx: y", "line break"),
        ] {
            let error = parse_schema_date(bad).unwrap_err();
            assert!(error.contains(why), "{bad:?}: {error}");
        }
    }

    #[test]
    fn public_host_names_are_lower_case_dns_names_the_load_balancer_matches() {
        let host = HttpsHost::parse("grafana.example.com").unwrap();
        assert_eq!(
            (host.host.as_str(), host.url.as_str()),
            ("grafana.example.com", "https://grafana.example.com/")
        );
        for good in ["a.io", "obs-1.team-a.example.org", "x1.example.com"] {
            assert!(HttpsHost::parse(good).is_ok(), "{good}");
        }
        let long = format!("{}.example.com", "a".repeat(120));
        for (bad, why) in [
            ("localhost", "not a public host name"),
            ("Grafana.example.com", "not a public host name"),
            ("10.0.0.1", "not a public host name"),
            ("example.123", "not a public host name"),
            ("grafana.example.c0m", "not a public host name"),
            ("grafana.example.co-m", "not a public host name"),
            ("*.example.com", "not a public host name"),
            ("grafana.example.com.", "not a public host name"),
            ("-a.example.com", "not a public host name"),
            ("https://grafana.example.com", "not a public host name"),
            ("grafana.example.com:443", "not a public host name"),
            ("grafana.example.com/x", "not a public host name"),
            ("grafana..example.com", "not a public host name"),
            (long.as_str(), "at most 128"),
            ("grafana.example.com\nroot_url = x", "line break"),
            ("a b.com", "whitespace"),
            ("", "empty"),
        ] {
            let error = HttpsHost::parse(bad).unwrap_err();
            assert!(error.contains(why), "{bad:?}: {error}");
        }
    }

    #[test]
    fn parameter_names_follow_ssm_rules() {
        assert!(check_parameter_name("/obstack/grafana/admin-password").is_ok());
        assert!(check_parameter_name("a b").is_err());
        assert!(check_parameter_name("x;rm").is_err());
    }
}
