//! Rolling new AMIs out one role at a time, so the stack is never dark all at once.
//!
//! [`plan`] is pure: from the AMIs the instances run and the AMIs chosen, the applies to
//! make, in order, each with the full AMI map Terraform gets (only that apply's role
//! changes; the others stay on what they run). [`execute`] walks the plan with an apply and
//! a health gate given by the caller, and stops at the first failure with the command that
//! rolls the failed role back.

use std::collections::{BTreeMap, BTreeSet};

use crate::roles::Registry;

/// One `terraform apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The roles whose AMI this apply changes (one in a rolling deploy).
    pub roles: Vec<String>,
    /// role → AMI, for every role: what Terraform's `ami_ids` is set to for this apply.
    pub ami_ids: BTreeMap<String, String>,
    /// role → the AMI it ran before this apply, for the roles that change (none when new).
    pub previous: BTreeMap<String, String>,
}

impl Step {
    /// `loki` or `app, grafana, loki, prometheus`.
    pub fn label(&self) -> String {
        if self.roles.is_empty() {
            "(no AMI change)".into()
        } else {
            self.roles.join(", ")
        }
    }
}

/// Why the roll-out cannot be planned.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("role `{role}` has no place in the roll-out order ({order}); it is not in the role registry (images/<role>/role.toml)", order = order.join(", "))]
    Unordered { role: String, order: Vec<String> },
}

/// The applies that take the stack from `current` (role → AMI its instance runs; empty
/// before the first deploy) to `target` (role → chosen AMI).
///
/// - Nothing deployed yet, or `all_at_once`: one apply of `target` (a first deploy has no
///   data to protect and nothing to keep serving).
/// - No AMI changes: one apply of `target` anyway, so changes to `terraform/` itself (not
///   to the AMIs) still reach the stack.
/// - Otherwise roles without an instance yet (a new role) start in the first apply, then
///   each role whose AMI changes gets an apply of its own, in `order` (the registry's
///   [`Registry::rollout_order`]); unchanged roles are skipped.
pub fn plan(
    order: &[&str],
    current: &BTreeMap<String, String>,
    target: &BTreeMap<String, String>,
    all_at_once: bool,
) -> Result<Vec<Step>, PlanError> {
    if let Some(role) = target.keys().find(|r| !order.contains(&r.as_str())) {
        return Err(PlanError::Unordered {
            role: role.clone(),
            order: order.iter().map(|r| r.to_string()).collect(),
        });
    }
    let changed: Vec<&str> = order
        .iter()
        .copied()
        .filter(|role| {
            target
                .get(*role)
                .is_some_and(|ami| current.get(*role) != Some(ami))
        })
        .collect();
    let previous_of = |roles: &[&str]| -> BTreeMap<String, String> {
        roles
            .iter()
            .filter_map(|r| current.get(*r).map(|ami| (r.to_string(), ami.clone())))
            .collect()
    };
    let owned = |roles: &[&str]| roles.iter().map(|r| r.to_string()).collect::<Vec<_>>();
    if current.is_empty() || all_at_once || changed.is_empty() {
        return Ok(vec![Step {
            roles: owned(&changed),
            ami_ids: target.clone(),
            previous: previous_of(&changed),
        }]);
    }

    let (new, replaced): (Vec<&str>, Vec<&str>) =
        changed.iter().partition(|r| !current.contains_key(**r));
    // What Terraform gets before anything changes: every role on the AMI it runs.
    let mut ami_ids: BTreeMap<String, String> = target
        .keys()
        .filter_map(|r| current.get(r).map(|ami| (r.clone(), ami.clone())))
        .collect();
    let mut steps = Vec::new();
    if !new.is_empty() {
        for role in &new {
            ami_ids.insert(role.to_string(), target[*role].clone());
        }
        steps.push(Step {
            roles: owned(&new),
            ami_ids: ami_ids.clone(),
            previous: BTreeMap::new(),
        });
    }
    for role in replaced {
        ami_ids.insert(role.to_string(), target[role].clone());
        steps.push(Step {
            roles: vec![role.to_string()],
            ami_ids: ami_ids.clone(),
            previous: previous_of(&[role]),
        });
    }
    Ok(steps)
}

/// The roles whose health proves a change of `role` went well: the role itself and every
/// role that reads it as a peer (its scrapers, its log shippers, its datasource users).
pub fn gate_roles(registry: &Registry, role: &str) -> BTreeSet<String> {
    let mut roles: BTreeSet<String> = registry
        .roles()
        .iter()
        .filter(|r| r.peers.contains_key(role))
        .map(|r| r.name.clone())
        .collect();
    roles.insert(role.to_string());
    roles
}

/// The gate of a step: the union of its roles' [`gate_roles`].
pub fn step_gate_roles(registry: &Registry, step: &Step) -> BTreeSet<String> {
    step.roles
        .iter()
        .flat_map(|role| gate_roles(registry, role))
        .collect()
}

/// Rows of the `--plan-only` table: step, roles, from, to, health gate.
pub fn table_rows(registry: &Registry, steps: &[Step]) -> Vec<[String; 5]> {
    steps
        .iter()
        .enumerate()
        .map(|(index, step)| {
            let amis = |map: &BTreeMap<String, String>| {
                step.roles
                    .iter()
                    .map(|r| map.get(r).map_or("(new)", String::as_str))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let gate = step_gate_roles(registry, step);
            [
                format!("{}/{}", index + 1, steps.len()),
                step.label(),
                amis(&step.previous),
                amis(&step.ami_ids),
                if gate.is_empty() {
                    "whole stack".to_string()
                } else {
                    gate.into_iter().collect::<Vec<_>>().join(", ")
                },
            ]
        })
        .collect()
}

/// A roll-out that stopped: which step, why, and how to undo it.
#[derive(Debug, thiserror::Error)]
#[error(
    "roll-out stopped at {role} (apply {number} of {total}): {what}; {untouched}roll {role} back with: {rollback}"
)]
pub struct Stopped {
    pub role: String,
    pub number: usize,
    pub total: usize,
    /// What failed: the apply, or the health gate and its failing checks.
    pub what: String,
    /// `prometheus, grafana and app stay on their old AMIs; ` (empty at the last step).
    pub untouched: String,
    /// The command that puts the failed role back on its previous AMI.
    pub rollback: String,
}

/// Applies each step, then passes its health gate, in order. At the first failure it
/// stops: the later steps are never applied, so their roles stay on their old AMIs.
/// `rollback_command(step)` is the command that undoes `step`.
pub fn execute(
    steps: &[Step],
    mut apply: impl FnMut(&Step) -> anyhow::Result<()>,
    mut gate: impl FnMut(&Step) -> anyhow::Result<()>,
    rollback_command: impl Fn(&Step) -> String,
) -> Result<(), Stopped> {
    for (index, step) in steps.iter().enumerate() {
        let result = apply(step)
            .map_err(|e| format!("terraform apply failed: {}", crate::report::one_line(&e)))
            .and_then(|()| {
                gate(step)
                    .map_err(|e| format!("health gate failed: {}", crate::report::one_line(&e)))
            });
        if let Err(what) = result {
            let later: Vec<String> = steps[index + 1..]
                .iter()
                .flat_map(|s| s.roles.iter().cloned())
                .collect();
            let untouched = match later.as_slice() {
                [] => String::new(),
                [one] => format!("{one} stays on its old AMI; "),
                [init @ .., last] => {
                    format!("{} and {last} stay on their old AMIs; ", init.join(", "))
                }
            };
            return Err(Stopped {
                role: step.label(),
                number: index + 1,
                total: steps.len(),
                what,
                untouched,
                rollback: rollback_command(step),
            });
        }
    }
    Ok(())
}

/// The AMI map that undoes `step`: its roles back on their previous AMIs, every other role
/// where the step left it. Roles that were new in the step have nothing to go back to and
/// keep their AMI.
pub fn rollback_amis(step: &Step) -> BTreeMap<String, String> {
    let mut amis = step.ami_ids.clone();
    for (role, ami) in &step.previous {
        amis.insert(role.clone(), ami.clone());
    }
    amis
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn old() -> BTreeMap<String, String> {
        map(&[
            ("app", "ami-a1"),
            ("grafana", "ami-g1"),
            ("loki", "ami-l1"),
            ("prometheus", "ami-p1"),
        ])
    }

    fn new() -> BTreeMap<String, String> {
        map(&[
            ("app", "ami-a2"),
            ("grafana", "ami-g2"),
            ("loki", "ami-l2"),
            ("prometheus", "ami-p2"),
        ])
    }

    /// The registry's roll-out order, as the tests below plan with it.
    const ORDER: [&str; 4] = ["loki", "prometheus", "grafana", "app"];

    #[test]
    fn the_registry_rolls_the_data_stores_out_first_and_the_app_last() {
        let registry = Registry::load_default().unwrap();
        assert_eq!(registry.rollout_order(), ORDER);
        for role in registry.roles() {
            assert!(
                role.rollout_order.is_some(),
                "{}: every shipped role states its place ([deploy] rollout_order)",
                role.name
            );
        }
    }

    #[test]
    fn four_new_amis_are_four_applies_data_stores_first_each_changing_one_role() {
        let steps = plan(&ORDER, &old(), &new(), false).unwrap();
        let roles: Vec<String> = steps.iter().map(Step::label).collect();
        assert_eq!(roles, ["loki", "prometheus", "grafana", "app"]);
        assert_eq!(
            steps[0].ami_ids,
            map(&[
                ("app", "ami-a1"),
                ("grafana", "ami-g1"),
                ("loki", "ami-l2"),
                ("prometheus", "ami-p1"),
            ])
        );
        assert_eq!(
            steps[1].ami_ids,
            map(&[
                ("app", "ami-a1"),
                ("grafana", "ami-g1"),
                ("loki", "ami-l2"),
                ("prometheus", "ami-p2"),
            ])
        );
        assert_eq!(steps[3].ami_ids, new(), "the last apply reaches the target");
        // Each apply changes exactly its role relative to the one before.
        let mut before = old();
        for step in &steps {
            let changed: Vec<&String> = step
                .ami_ids
                .iter()
                .filter(|(role, ami)| before.get(*role) != Some(ami))
                .map(|(role, _)| role)
                .collect();
            assert_eq!(changed, step.roles.iter().collect::<Vec<_>>());
            assert_eq!(step.previous.len(), 1);
            before = step.ami_ids.clone();
        }
        assert_eq!(steps[2].previous, map(&[("grafana", "ami-g1")]));
    }

    #[test]
    fn unchanged_roles_are_skipped() {
        let mut target = old();
        target.insert("app".into(), "ami-a2".into());
        target.insert("loki".into(), "ami-l2".into());
        let steps = plan(&ORDER, &old(), &target, false).unwrap();
        let roles: Vec<String> = steps.iter().map(Step::label).collect();
        assert_eq!(roles, ["loki", "app"]);
        assert_eq!(steps[0].ami_ids["app"], "ami-a1", "app waits for its turn");
        assert_eq!(steps[1].ami_ids, target);
    }

    #[test]
    fn no_ami_change_is_still_one_apply_for_terraforms_own_changes() {
        let steps = plan(&ORDER, &old(), &old(), false).unwrap();
        assert_eq!(steps.len(), 1);
        assert!(steps[0].roles.is_empty());
        assert_eq!(steps[0].ami_ids, old());
    }

    #[test]
    fn a_first_deploy_and_all_at_once_are_one_apply_of_the_target() {
        let first = plan(&ORDER, &BTreeMap::new(), &new(), false).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].ami_ids, new());
        assert!(first[0].previous.is_empty());
        assert_eq!(first[0].roles, ["loki", "prometheus", "grafana", "app"]);

        let all = plan(&ORDER, &old(), &new(), true).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].ami_ids, new());
        assert_eq!(all[0].previous, old());
    }

    #[test]
    fn a_role_without_an_instance_starts_first_then_the_others_roll() {
        let mut current = old();
        current.remove("grafana");
        let steps = plan(&ORDER, &current, &new(), false).unwrap();
        let roles: Vec<String> = steps.iter().map(Step::label).collect();
        assert_eq!(roles, ["grafana", "loki", "prometheus", "app"]);
        assert_eq!(steps[0].ami_ids["grafana"], "ami-g2");
        assert_eq!(steps[0].ami_ids["loki"], "ami-l1");
        assert!(steps[0].previous.is_empty());
    }

    #[test]
    fn a_role_outside_the_order_is_refused() {
        let mut target = new();
        target.insert("web".into(), "ami-w1".into());
        let error = plan(&ORDER, &old(), &target, false).unwrap_err();
        assert_eq!(
            error,
            PlanError::Unordered {
                role: "web".into(),
                order: ORDER.iter().map(|r| r.to_string()).collect(),
            }
        );
        assert!(error.to_string().contains("role registry"), "{error}");
    }

    #[test]
    fn a_failed_gate_stops_the_roll_out_and_names_the_role_and_the_way_back() {
        let steps = plan(&ORDER, &old(), &new(), false).unwrap();
        let mut applied = Vec::new();
        let mut gated = Vec::new();
        let stopped = execute(
            &steps,
            |step| {
                applied.push(step.label());
                Ok(())
            },
            |step| {
                gated.push(step.label());
                if step.roles == ["prometheus"] {
                    anyhow::bail!("prometheus targets up: 1 of 5 targets not up: app")
                }
                Ok(())
            },
            |step| {
                let amis = rollback_amis(step);
                format!("deploy --ami prometheus={}", amis["prometheus"])
            },
        )
        .unwrap_err();
        assert_eq!(applied, ["loki", "prometheus"], "nothing after the failure");
        assert_eq!(gated, ["loki", "prometheus"]);
        let line = stopped.to_string();
        assert!(
            line.starts_with("roll-out stopped at prometheus (apply 2 of 4): health gate failed: prometheus targets up: 1 of 5 targets not up: app;"),
            "{line}"
        );
        assert!(
            line.contains("grafana and app stay on their old AMIs"),
            "{line}"
        );
        assert!(
            line.ends_with("roll prometheus back with: deploy --ami prometheus=ami-p1"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn a_failed_apply_stops_before_its_gate() {
        let steps = plan(&ORDER, &old(), &new(), false).unwrap();
        let mut gated = 0;
        let stopped = execute(
            &steps,
            |step| {
                if step.roles == ["loki"] {
                    anyhow::bail!("Error: timeout while waiting for state")
                }
                Ok(())
            },
            |_| {
                gated += 1;
                Ok(())
            },
            |_| "undo".into(),
        )
        .unwrap_err();
        assert_eq!(gated, 0);
        assert_eq!(stopped.role, "loki");
        assert!(
            stopped.what.starts_with("terraform apply failed"),
            "{}",
            stopped.what
        );
        assert_eq!(
            stopped.untouched,
            "prometheus, grafana and app stay on their old AMIs; "
        );
    }

    #[test]
    fn a_healthy_roll_out_runs_every_step() {
        let steps = plan(&ORDER, &old(), &new(), false).unwrap();
        let mut applied = 0;
        execute(
            &steps,
            |_| {
                applied += 1;
                Ok(())
            },
            |_| Ok(()),
            |_| String::new(),
        )
        .unwrap();
        assert_eq!(applied, 4);
    }

    #[test]
    fn rollback_puts_only_the_failed_role_back() {
        let steps = plan(&ORDER, &old(), &new(), false).unwrap();
        let back = rollback_amis(&steps[1]);
        assert_eq!(
            back,
            map(&[
                ("app", "ami-a1"),
                ("grafana", "ami-g1"),
                ("loki", "ami-l2"),
                ("prometheus", "ami-p1"),
            ])
        );
    }

    #[test]
    fn the_gate_of_a_role_includes_the_roles_that_read_it() {
        let registry = Registry::load_default().unwrap();
        let gate = |role| gate_roles(&registry, role).into_iter().collect::<Vec<_>>();
        // Grafana reads Loki and Prometheus; Prometheus scrapes the app.
        assert!(gate("loki").contains(&"grafana".to_string()));
        assert!(gate("prometheus").contains(&"grafana".to_string()));
        assert!(gate("app").contains(&"prometheus".to_string()));
        assert!(gate("app").contains(&"app".to_string()));
        assert!(!gate("grafana").contains(&"loki".to_string()));
    }
}
