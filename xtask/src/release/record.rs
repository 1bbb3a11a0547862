//! One release: the AMI and input hash of every role, the git revision and the time, stored
//! as one JSON parameter. Read back from SSM, a record is checked before anything trusts it:
//! a release names the images a stack will run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The record format written by this version of xtask; a record of another version is refused
/// rather than half understood.
pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub schema: u32,
    pub id: String,
    /// RFC 3339 UTC, e.g. `2026-12-03T03:40:12Z`.
    pub created: String,
    pub git_revision: String,
    /// Role name → its image.
    pub roles: BTreeMap<String, RoleImage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleImage {
    pub ami: String,
    pub input_hash: String,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("release {name} is not valid JSON for a release record: {reason}")]
    Json { name: String, reason: String },
    #[error("release {name} has schema {found}; this xtask reads schema {SCHEMA}")]
    Schema { name: String, found: u32 },
    #[error("release {name} says its id is `{id}`: a record must carry its own parameter's id")]
    IdMismatch { name: String, id: String },
    #[error("release {name}: {what}")]
    Invalid { name: String, what: String },
}

impl Release {
    /// Parses and checks the record stored under release id `name`.
    pub fn parse(name: &str, text: &str) -> Result<Release, RecordError> {
        let release: Release = serde_json::from_str(text).map_err(|e| RecordError::Json {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        if release.schema != SCHEMA {
            return Err(RecordError::Schema {
                name: name.to_string(),
                found: release.schema,
            });
        }
        if release.id != name {
            return Err(RecordError::IdMismatch {
                name: name.to_string(),
                id: release.id,
            });
        }
        let invalid = |what: String| RecordError::Invalid {
            name: name.to_string(),
            what,
        };
        if release.roles.is_empty() {
            return Err(invalid("it names no role".into()));
        }
        if humantime::parse_rfc3339(&release.created).is_err() {
            return Err(invalid(format!(
                "`created` is `{}`, not an RFC 3339 time",
                release.created
            )));
        }
        for (role, image) in &release.roles {
            if !crate::ami::is_ami_id(&image.ami) {
                return Err(invalid(format!(
                    "role {role}: `{}` is not an AMI id",
                    image.ami
                )));
            }
            if image.input_hash.len() != 64
                || !image.input_hash.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(invalid(format!(
                    "role {role}: the input hash is not 64 hex digits"
                )));
            }
        }
        Ok(release)
    }

    pub fn to_json(&self) -> String {
        // A struct of strings and maps always serialises.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Every AMI id of the release, in role-name order.
    pub fn ami_ids(&self) -> Vec<&str> {
        self.roles
            .values()
            .map(|image| image.ami.as_str())
            .collect()
    }

    /// The roles of `expected` this release has no image for.
    pub fn missing_roles<'a>(&self, expected: &[&'a str]) -> Vec<&'a str> {
        expected
            .iter()
            .copied()
            .filter(|role| !self.roles.contains_key(*role))
            .collect()
    }
}

/// A new release id: the UTC time to the second and the short git revision, so ids sort by
/// time and say what they were built from (`20261203-034012-1a2b3c4`).
pub fn new_id(now: std::time::SystemTime, git_revision: &str) -> String {
    let stamp = humantime::format_rfc3339_seconds(now).to_string();
    // 2026-12-03T03:40:12Z -> 20261203-034012
    let digits: String = stamp.chars().filter(char::is_ascii_digit).collect();
    let (date, time) = digits.split_at(8.min(digits.len()));
    let short: String = git_revision
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .take(7)
        .collect();
    let short = if short.is_empty() {
        "nogit".to_string()
    } else {
        short
    };
    let dirty = if git_revision.ends_with("-dirty") {
        "-dirty"
    } else {
        ""
    };
    format!("{date}-{time}-{short}{dirty}")
}

/// Release ids and channel names become parts of SSM parameter names: keep them to the
/// characters SSM allows in a name segment, and short.
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid {kind}: use 1-64 letters, digits, `-`, `_` or `.`, starting with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn sample() -> Release {
        Release {
            schema: SCHEMA,
            id: "20261203-034012-1a2b3c4".into(),
            created: "2026-12-03T03:40:12Z".into(),
            git_revision: "1a2b3c4d".into(),
            roles: BTreeMap::from([(
                "app".to_string(),
                RoleImage {
                    ami: "ami-0123456789abcdef0".into(),
                    input_hash: "ab".repeat(32),
                },
            )]),
        }
    }

    #[test]
    fn a_written_record_reads_back_equal() {
        let release = sample();
        assert_eq!(Release::parse(&release.id, &release.to_json()), Ok(release));
    }

    #[test]
    fn malformed_records_are_refused_with_the_reason() {
        let good = sample();
        let id = good.id.clone();
        let error = |text: &str| Release::parse(&id, text).unwrap_err().to_string();
        assert!(error("not json").contains("not valid JSON"));
        assert!(
            error(&good.to_json().replace("\"schema\": 1", "\"schema\": 9")).contains("schema 9")
        );
        assert!(error(&good.to_json().replace(&id, "other")).contains("carry its own"));
        assert!(
            error(&good.to_json().replace("ami-0123456789abcdef0", "ami-zz"))
                .contains("not an AMI id")
        );
        assert!(error(&good.to_json().replace(&"ab".repeat(32), "abc")).contains("64 hex"));
        assert!(
            error(&good.to_json().replace("2026-12-03T03:40:12Z", "yesterday"))
                .contains("RFC 3339")
        );
        let extra = good.to_json().replacen('{', "{\"extra\": 1,", 1);
        assert!(error(&extra).contains("unknown field"));
    }

    #[test]
    fn ids_sort_by_time_and_name_the_revision() {
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        let first = new_id(at(1_796_269_212), "1a2b3c4d5e");
        let later = new_id(at(1_796_269_213), "0000000");
        assert_eq!(first, "20261203-034012-1a2b3c4");
        assert!(later > first);
        assert_eq!(new_id(at(0), "unknown"), "19700101-000000-unknown");
        assert!(new_id(at(0), "abcdef0123-dirty").ends_with("-abcdef0-dirty"));
        check_name("release id", &first).unwrap();
    }

    #[test]
    fn names_outside_ssm_rules_are_refused() {
        for bad in ["", "a/b", "-x", "x y", &"a".repeat(65)] {
            assert!(check_name("channel", bad).is_err(), "{bad:?}");
        }
        check_name("channel", "stable").unwrap();
    }
}
