//! What a channel's history means, as pure functions over its moves: where `rollback` goes
//! and which releases `prune` must keep.
//!
//! A move's description says what made it: `rollback from <id>` for a rollback, anything
//! else (`promote ...`, `create ...`, or a person's edit in the console) counts as a forward
//! move. Replaying the moves gives the channel's *lineage*: forward moves push a release,
//! rollbacks pop one. Rolling back twice therefore walks two releases back instead of
//! bouncing between the last two.

use std::collections::BTreeSet;

use super::store::ChannelMove;

const ROLLBACK_PREFIX: &str = "rollback from ";

/// The description `rollback` records on the move it makes.
pub fn rollback_description(from: &str) -> String {
    format!("{ROLLBACK_PREFIX}{from}")
}

pub fn promote_description(source: &str) -> String {
    format!("promote {source}")
}

/// Why a rolled-back release is rejected: the channel it was rolled back from, and when.
pub fn rejection_reason(channel: &str, to: &str, at: std::time::SystemTime) -> String {
    format!(
        "rolled back from channel {channel} to {to} at {}",
        humantime::format_rfc3339_seconds(at)
    )
}

/// The releases the channel went through and has not rolled back from, oldest first; the
/// last one is where the channel points now.
pub fn lineage(moves: &[ChannelMove]) -> Vec<&str> {
    let mut stack: Vec<&str> = Vec::new();
    for step in moves {
        if step.description.starts_with(ROLLBACK_PREFIX) {
            stack.pop();
            // The popped release's predecessor is normally the target already; if someone
            // rolled back somewhere else (or history was trimmed), trust what was written.
            if stack.last() != Some(&step.release.as_str()) {
                stack.push(&step.release);
            }
        } else if stack.last() != Some(&step.release.as_str()) {
            stack.push(&step.release);
        }
    }
    stack
}

/// Where `rollback` moves the channel: the release before the current one in its lineage.
pub fn rollback_target(moves: &[ChannelMove]) -> Option<&str> {
    let lineage = lineage(moves);
    lineage.len().checked_sub(2).map(|i| lineage[i])
}

/// The releases a channel needs kept: the one it points at now and those of its last `keep`
/// moves before that.
pub fn protected(moves: &[ChannelMove], keep: usize) -> BTreeSet<&str> {
    moves
        .iter()
        .rev()
        .take(keep.saturating_add(1))
        .map(|step| step.release.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moves(steps: &[(&str, &str)]) -> Vec<ChannelMove> {
        steps
            .iter()
            .enumerate()
            .map(|(i, (release, description))| ChannelMove {
                version: i as i64 + 1,
                release: release.to_string(),
                description: description.to_string(),
                at: String::new(),
            })
            .collect()
    }

    #[test]
    fn rollback_walks_back_along_the_lineage() {
        let promoted = moves(&[("a", "promote a"), ("b", "promote b"), ("c", "promote c")]);
        assert_eq!(rollback_target(&promoted), Some("b"));

        let once = moves(&[
            ("a", "promote a"),
            ("b", "promote b"),
            ("c", "promote c"),
            ("b", &rollback_description("c")),
        ]);
        assert_eq!(lineage(&once), ["a", "b"]);
        assert_eq!(
            rollback_target(&once),
            Some("a"),
            "a second rollback goes further back"
        );

        let twice = [once.clone(), moves(&[("a", &rollback_description("b"))])].concat();
        assert_eq!(
            rollback_target(&twice),
            None,
            "nothing before the first release"
        );
    }

    #[test]
    fn a_re_promotion_of_the_same_release_is_not_a_step() {
        let repeated = moves(&[("a", "promote a"), ("b", "promote b"), ("b", "promote b")]);
        assert_eq!(rollback_target(&repeated), Some("a"));
        assert_eq!(rollback_target(&moves(&[("a", "promote a")])), None);
        assert_eq!(rollback_target(&[]), None);
    }

    #[test]
    fn prune_keeps_the_current_release_and_the_last_moves() {
        let history = moves(&[("a", "p"), ("b", "p"), ("c", "p"), ("d", "p")]);
        assert_eq!(protected(&history, 0), BTreeSet::from(["d"]));
        assert_eq!(protected(&history, 2), BTreeSet::from(["b", "c", "d"]));
        assert_eq!(protected(&history, 10).len(), 4);
    }
}
