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

/// Where `bind_address` points when the instance has no `obstack:bind-address` tag.
pub const DEFAULT_BIND_ADDRESS: &str = "0.0.0.0";

/// AWS's limit on a tag key's length.
const MAX_KEY_LEN: usize = 128;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stack_keys_are_valid_imds_keys() {
        for key in [
            ROLE,
            BIND_ADDRESS,
            GRAFANA_ADMIN_PASSWORD_PARAM,
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
}
