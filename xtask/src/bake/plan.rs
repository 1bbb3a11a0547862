//! What a bake will do per role: nothing (an AMI with the same input hash exists) or a
//! build, with the reasons in words.

use serde::Serialize;

use crate::ami::{Ami, TAG_INPUT_DIGESTS};
use crate::hash::InputDigests;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// An available AMI already has this role's input hash.
    UpToDate { ami: Ami },
    /// No AMI has it: build, because of `reasons`.
    Build { reasons: Vec<String> },
}

#[derive(Debug, Clone, Serialize)]
pub struct RolePlan {
    pub role: String,
    pub input_hash: String,
    #[serde(skip)]
    pub digests: InputDigests,
    #[serde(flatten)]
    pub action: Action,
}

/// Decides each role's action from its digests and the project's AMIs (`amis`: every
/// role's, newest first, as [`crate::ami::list`] returns them).
pub fn decide(role: &str, digests: InputDigests, amis: &[Ami], force: bool) -> RolePlan {
    let input_hash = digests.hash();
    let mut role_amis = amis.iter().filter(|a| a.role == role);
    let existing = role_amis.clone().find(|a| a.input_hash == input_hash);
    let action = match (existing, force) {
        (Some(ami), false) => Action::UpToDate { ami: ami.clone() },
        (existing, _) => {
            let reasons = if let Some(ami) = existing {
                vec![format!(
                    "--force (the same inputs are already baked as {})",
                    ami.id
                )]
            } else {
                match role_amis.next() {
                    None => vec!["no AMI of this role exists yet".to_string()],
                    Some(newest) => match newest.tags.get(TAG_INPUT_DIGESTS) {
                        Some(tag) => {
                            let changed = digests.changed_since(tag);
                            if changed.is_empty() {
                                vec![format!("the input hash differs from the newest AMI {}", newest.id)]
                            } else {
                                changed.into_iter().map(|c| format!("{c} since {}", newest.id)).collect()
                            }
                        }
                        None => vec![format!(
                            "the input hash differs from the newest AMI {} (which records no per-input digests)",
                            newest.id
                        )],
                    },
                }
            };
            Action::Build { reasons }
        }
    };
    RolePlan {
        role: role.to_string(),
        input_hash,
        digests,
        action,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn digests(role_files: &str, base: &str) -> InputDigests {
        InputDigests {
            entries: BTreeMap::from([
                ("base-ami".to_string(), base.to_string()),
                ("files:common".to_string(), "c".repeat(64)),
                ("files:role".to_string(), role_files.repeat(64)),
            ]),
        }
    }

    fn ami(id: &str, role: &str, digests: &InputDigests) -> Ami {
        Ami {
            id: id.to_string(),
            name: format!("obstack-{role}-{id}"),
            role: role.to_string(),
            input_hash: digests.hash(),
            git_revision: None,
            created: "2026-01-01T00:00:00.000Z".to_string(),
            snapshot_ids: vec![],
            size_gib: 8,
            tags: BTreeMap::from([(TAG_INPUT_DIGESTS.to_string(), digests.to_tag())]),
        }
    }

    #[test]
    fn an_ami_with_the_same_hash_means_up_to_date_unless_forced() {
        let current = digests("a", "ami-1");
        let amis = vec![ami("ami-old", "app", &current)];
        assert!(matches!(
            decide("app", current.clone(), &amis, false).action,
            Action::UpToDate { .. }
        ));
        assert!(matches!(
            decide("app", current.clone(), &amis, true).action,
            Action::Build { .. }
        ));
        // Another role's AMI with the same inputs does not count.
        assert!(matches!(
            decide("loki", current, &amis, false).action,
            Action::Build { .. }
        ));
    }

    #[test]
    fn the_reasons_name_exactly_the_inputs_that_changed() {
        let old = digests("a", "ami-1");
        let amis = vec![ami("ami-old", "app", &old)];
        let Action::Build { reasons } = decide("app", digests("b", "ami-2"), &amis, false).action
        else {
            panic!("expected a build");
        };
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("the role's directory changed")),
            "{reasons:?}"
        );
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("base AMI ami-1 -> ami-2")),
            "{reasons:?}"
        );
        assert!(!reasons.iter().any(|r| r.contains("common")), "{reasons:?}");
    }
}
