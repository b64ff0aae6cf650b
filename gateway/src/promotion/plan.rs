//! The promotion planner: which replica becomes primary and what the mapping then says,
//! decided from plain facts — the mapping, the epoch record (in-sync set), the nodes usable
//! now and the candidates' log ends — with no I/O and no clock. `Promoter::promote` gathers
//! the facts and writes the decision; the rules are here, testable in microseconds.
//!
//! Rules (each one is a property test below):
//! - [`new_order`] is the only reorder rule: the new primary first, the other replicas in
//!   their mapping order, the old primary last (it rejoins as a replica when it returns).
//! - Without `force`, only a member of the epoch record's in-sync set is chosen; a data ID
//!   without a record has no in-sync replica, so nothing is chosen.
//! - Only a usable node (healthy in Consul, reachable by this gateway's probes, allowed) is
//!   chosen, never the old primary, never a node outside the mapping.
//! - Among candidates, the highest reported log end wins, mapping order on ties. A candidate
//!   that did not report is skipped, except the one node an operator named.

use std::collections::BTreeMap;

use ec_core::{DataId, NodeId};
use ec_discovery::{EpochState, Mapping};

use super::PromoteError;

/// What the planner is told about one data ID.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts<'a> {
    /// The mapping as read from Consul.
    pub(crate) mapping: &'a Mapping,
    /// The epoch record; `None` when the data ID never had a primary claim an epoch.
    pub(crate) epoch: Option<&'a EpochState>,
    /// The nodes of the mapping that may serve it now (the routing table's candidates).
    pub(crate) usable: &'a [NodeId],
}

/// What was asked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask<'a> {
    /// `None`: the most caught-up qualifying replica.
    pub(crate) node: Option<&'a NodeId>,
    /// Allow a replica outside the in-sync set (acknowledged events may be lost).
    pub(crate) force: bool,
    /// Automatic failover: promote only if the primary is still this one.
    pub(crate) failed_primary: Option<&'a NodeId>,
}

/// The planner's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decision {
    /// The new primary.
    pub(crate) chosen: NodeId,
    /// Its log end when it was chosen (0 if an operator-named node did not report).
    pub(crate) offset: u64,
    /// The mapping to write: [`new_order`] of the mapping for `chosen`.
    pub(crate) order: Vec<NodeId>,
    /// `chosen` is not in the in-sync set (only ever with `force`).
    pub(crate) forced: bool,
    /// The in-sync set to write before the mapping, so that a forced choice may claim the
    /// next epoch (nodes claim only from the in-sync set); `None` when nothing changes.
    pub(crate) in_sync: Option<Vec<NodeId>>,
}

/// The mapping's nodes with `chosen` first, the old primary last, and the others between in
/// their mapping order. The one rule for the order after a promotion.
pub(crate) fn new_order(nodes: &[NodeId], chosen: &NodeId) -> Vec<NodeId> {
    let Some(old_primary) = nodes.first() else {
        return vec![chosen.clone()];
    };
    let mut order = Vec::with_capacity(nodes.len());
    order.push(chosen.clone());
    order.extend(
        nodes
            .iter()
            .filter(|n| *n != chosen && *n != old_primary)
            .cloned(),
    );
    if old_primary != chosen {
        order.push(old_primary.clone());
    }
    order
}

/// The nodes whose log end decides the choice, in mapping order; an error when none may be
/// promoted whatever their logs hold.
pub(crate) fn candidates(facts: Facts<'_>, ask: Ask<'_>) -> Result<Vec<NodeId>, PromoteError> {
    let mapping = facts.mapping;
    let data_id = &mapping.data_id;
    let old_primary = mapping.primary();
    if let Some(expected) = ask.failed_primary
        && expected != old_primary
    {
        return Err(PromoteError::PrimaryChanged {
            data_id: data_id.clone(),
            expected: expected.clone(),
            now: old_primary.clone(),
        });
    }
    let usable = |n: &NodeId| facts.usable.contains(n);
    match ask.node {
        Some(node) => {
            if !mapping.contains(node) {
                return Err(PromoteError::NotInMapping {
                    data_id: data_id.clone(),
                    node: node.clone(),
                    mapping: mapping.value(),
                });
            }
            if node == old_primary {
                return Err(PromoteError::AlreadyPrimary {
                    data_id: data_id.clone(),
                    node: node.clone(),
                });
            }
            if !ask.force && !in_sync(facts.epoch, node) {
                return Err(PromoteError::NotInSync {
                    data_id: data_id.clone(),
                    node: node.clone(),
                    in_sync: describe_in_sync(facts.epoch),
                });
            }
            if !usable(node) {
                return Err(PromoteError::Unhealthy {
                    data_id: data_id.clone(),
                    node: node.clone(),
                });
            }
            Ok(vec![node.clone()])
        }
        None => {
            let found: Vec<NodeId> = mapping
                .nodes
                .iter()
                .filter(|n| *n != old_primary && (ask.force || in_sync(facts.epoch, n)))
                .filter(|n| usable(n))
                .cloned()
                .collect();
            if found.is_empty() {
                return Err(no_candidate(
                    data_id,
                    format!(
                        "no healthy replica of {} is in sync ({})",
                        mapping.value(),
                        describe_in_sync(facts.epoch)
                    ),
                ));
            }
            Ok(found)
        }
    }
}

/// The decision, given the log ends the [`candidates`] reported (a candidate missing from
/// `log_ends` did not answer).
pub(crate) fn decide(
    facts: Facts<'_>,
    ask: Ask<'_>,
    log_ends: &BTreeMap<NodeId, u64>,
) -> Result<Decision, PromoteError> {
    let mut best: Option<(NodeId, u64)> = None;
    for node in candidates(facts, ask)? {
        let end = match log_ends.get(&node) {
            Some(end) => *end,
            // The operator named this node: its silence does not pick another one.
            None if ask.node.is_some() => 0,
            None => continue,
        };
        // Strictly greater: the first in mapping order wins a tie.
        if best.as_ref().is_none_or(|(_, b)| end > *b) {
            best = Some((node, end));
        }
    }
    let (chosen, offset) = best.ok_or_else(|| {
        no_candidate(
            &facts.mapping.data_id,
            "no candidate answered with its log end".to_owned(),
        )
    })?;
    let forced = !in_sync(facts.epoch, &chosen);
    let in_sync = match facts.epoch {
        Some(record) if forced => {
            let mut set = record.in_sync.clone();
            set.push(chosen.clone());
            Some(set)
        }
        _ => None,
    };
    Ok(Decision {
        order: new_order(&facts.mapping.nodes, &chosen),
        chosen,
        offset,
        forced,
        in_sync,
    })
}

fn in_sync(epoch: Option<&EpochState>, node: &NodeId) -> bool {
    epoch.is_some_and(|r| r.is_in_sync(node))
}

fn describe_in_sync(epoch: Option<&EpochState>) -> String {
    match epoch {
        Some(r) => {
            let isr: Vec<&str> = r.in_sync.iter().map(NodeId::as_str).collect();
            format!("epoch {}, in sync [{}]", r.epoch, isr.join(","))
        }
        None => "no epoch record: no replica has been confirmed in sync".to_owned(),
    }
}

fn no_candidate(data_id: &DataId, why: String) -> PromoteError {
    PromoteError::NoCandidate {
        data_id: data_id.clone(),
        why,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn node(i: usize) -> NodeId {
        NodeId::parse(&format!("n{i}")).expect("valid node ID")
    }

    /// A data ID's situation: a mapping of 1-6 distinct nodes, an optional epoch record whose
    /// in-sync set is a subset of them, the usable subset, the log ends some of them report,
    /// and what is asked.
    #[derive(Debug, Clone)]
    struct Case {
        mapping: Mapping,
        epoch: Option<EpochState>,
        usable: Vec<NodeId>,
        log_ends: BTreeMap<NodeId, u64>,
        named: Option<NodeId>,
        force: bool,
        failed_primary: Option<NodeId>,
    }

    impl Case {
        fn facts(&self) -> Facts<'_> {
            Facts {
                mapping: &self.mapping,
                epoch: self.epoch.as_ref(),
                usable: &self.usable,
            }
        }

        fn ask(&self) -> Ask<'_> {
            Ask {
                node: self.named.as_ref(),
                force: self.force,
                failed_primary: self.failed_primary.as_ref(),
            }
        }

        fn decide(&self) -> Result<Decision, PromoteError> {
            decide(self.facts(), self.ask(), &self.log_ends)
        }

        fn in_sync(&self, n: &NodeId) -> bool {
            in_sync(self.epoch.as_ref(), n)
        }
    }

    fn case() -> impl Strategy<Value = Case> {
        // Biased towards situations where a promotion can succeed (most nodes usable and
        // reporting, asks naming mapped nodes), so every property sees many decisions.
        (1usize..=6).prop_flat_map(|len| {
            (
                Just(len),
                // A permutation of n0..n7 taken to `len` nodes: distinct by construction.
                Just((0..8).collect::<Vec<usize>>()).prop_shuffle(),
                proptest::option::of(proptest::collection::vec(any::<bool>(), len)),
                proptest::collection::vec(proptest::bool::weighted(0.8), len),
                proptest::collection::vec(proptest::option::weighted(0.8, 0u64..5), len),
                // (from the mapping?, index): sometimes a node outside it (n6, n7 may be).
                proptest::option::of((proptest::bool::weighted(0.8), 0usize..8)),
                any::<bool>(),
                proptest::option::of((proptest::bool::weighted(0.8), 0usize..8)),
                1u64..100,
            )
                .prop_map(
                    |(len, ids, isr, usable, ends, named, force, failed, epoch)| {
                        let nodes: Vec<NodeId> = ids[..len].iter().map(|&i| node(i)).collect();
                        let data_id = DataId::parse("d").expect("valid data ID");
                        let pick = |mask: &[bool]| -> Vec<NodeId> {
                            nodes
                                .iter()
                                .zip(mask)
                                .filter(|(_, keep)| **keep)
                                .map(|(n, _)| n.clone())
                                .collect()
                        };
                        let named = named.map(|(mapped, i)| {
                            if mapped {
                                nodes[i % len].clone()
                            } else {
                                node(i)
                            }
                        });
                        // Mostly the real primary: an automatic failover that still applies.
                        let failed =
                            failed.map(|(real, i)| if real { nodes[0].clone() } else { node(i) });
                        Case {
                            epoch: isr.map(|mask| EpochState {
                                data_id: data_id.clone(),
                                epoch: ec_core::Epoch(epoch),
                                primary: nodes[0].clone(),
                                in_sync: pick(&mask),
                                modify_index: epoch,
                            }),
                            usable: pick(&usable),
                            log_ends: nodes
                                .iter()
                                .zip(&ends)
                                .filter_map(|(n, e)| e.map(|e| (n.clone(), e)))
                                .collect(),
                            named,
                            force,
                            failed_primary: failed,
                            mapping: Mapping {
                                data_id,
                                nodes,
                                modify_index: 7,
                            },
                        }
                    },
                )
        })
    }

    proptest! {
        // Each case takes microseconds: many cases, so the rare corners are reached.
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn the_order_is_new_order_and_a_permutation(c in case()) {
            if let Ok(d) = c.decide() {
                prop_assert_eq!(&d.order, &new_order(&c.mapping.nodes, &d.chosen));
                prop_assert_eq!(&d.order[0], &d.chosen);
                prop_assert_eq!(d.order.last(), Some(c.mapping.primary()));
                let before: BTreeSet<_> = c.mapping.nodes.iter().collect();
                let after: BTreeSet<_> = d.order.iter().collect();
                prop_assert_eq!(before, after);
                prop_assert_eq!(d.order.len(), c.mapping.nodes.len());
            }
        }

        #[test]
        fn never_out_of_sync_without_force(c in case()) {
            if let Ok(d) = c.decide() {
                prop_assert!(c.force || c.in_sync(&d.chosen), "{:?} chose {}", c, d.chosen);
                prop_assert_eq!(d.forced, !c.in_sync(&d.chosen));
                prop_assert!(!d.forced || c.force);
                // A forced choice joins the in-sync set so that it may claim.
                match (&d.in_sync, &c.epoch) {
                    (Some(set), Some(_)) => prop_assert!(d.forced && set.contains(&d.chosen)),
                    (Some(_), None) => prop_assert!(false, "an in-sync set without a record"),
                    (None, _) => prop_assert!(!d.forced || c.epoch.is_none()),
                }
            }
        }

        #[test]
        fn never_unhealthy_never_the_old_primary(c in case()) {
            if let Ok(d) = c.decide() {
                prop_assert!(c.usable.contains(&d.chosen));
                prop_assert!(c.mapping.contains(&d.chosen));
                prop_assert_ne!(&d.chosen, c.mapping.primary());
                if let Some(named) = &c.named {
                    prop_assert_eq!(&d.chosen, named);
                }
                if let Some(failed) = &c.failed_primary {
                    prop_assert_eq!(failed, c.mapping.primary());
                }
            }
        }

        #[test]
        fn the_most_caught_up_candidate_wins(c in case()) {
            if let (Ok(d), None) = (c.decide(), &c.named) {
                let eligible = |n: &&NodeId| {
                    *n != c.mapping.primary()
                        && c.usable.contains(n)
                        && (c.force || c.in_sync(n))
                };
                let best = c
                    .mapping
                    .nodes
                    .iter()
                    .filter(eligible)
                    .filter_map(|n| c.log_ends.get(n))
                    .max()
                    .copied();
                prop_assert_eq!(Some(d.offset), best);
                prop_assert_eq!(c.log_ends.get(&d.chosen), Some(&d.offset));
                // Ties go to the first in mapping order.
                let first = c
                    .mapping
                    .nodes
                    .iter()
                    .filter(eligible)
                    .find(|n| c.log_ends.get(*n) == Some(&d.offset));
                prop_assert_eq!(Some(&d.chosen), first);
            }
        }

        #[test]
        fn a_refusal_has_a_reason(c in case()) {
            // Whenever some qualifying replica answered, an automatic choice is made.
            let qualifies = |n: &NodeId| {
                n != c.mapping.primary()
                    && c.usable.contains(n)
                    && (c.force || c.in_sync(n))
                    && c.log_ends.contains_key(n)
            };
            let primary_ok = c.failed_primary.as_ref().is_none_or(|f| f == c.mapping.primary());
            if c.named.is_none() && primary_ok && c.mapping.nodes.iter().any(qualifies) {
                prop_assert!(c.decide().is_ok());
            }
        }
    }

    #[test]
    fn new_order_moves_the_old_primary_last() {
        let nodes = [node(1), node(2), node(3), node(4)];
        assert_eq!(
            new_order(&nodes, &node(3)),
            [node(3), node(2), node(4), node(1)]
        );
        assert_eq!(new_order(&nodes[..1], &node(1)), [node(1)]);
    }

    #[test]
    fn a_named_out_of_sync_replica_needs_force() {
        let mapping = Mapping {
            data_id: DataId::parse("d").expect("valid"),
            nodes: vec![node(1), node(2)],
            modify_index: 3,
        };
        let epoch = EpochState {
            data_id: mapping.data_id.clone(),
            epoch: ec_core::Epoch(4),
            primary: node(1),
            in_sync: vec![node(1)],
            modify_index: 5,
        };
        let usable = [node(2)];
        let facts = Facts {
            mapping: &mapping,
            epoch: Some(&epoch),
            usable: &usable,
        };
        let named = node(2);
        let mut ask = Ask {
            node: Some(&named),
            force: false,
            failed_primary: None,
        };
        let ends = BTreeMap::from([(node(2), 9)]);
        assert!(matches!(
            decide(facts, ask, &ends),
            Err(PromoteError::NotInSync { .. })
        ));
        ask.force = true;
        let d = decide(facts, ask, &ends).expect("forced");
        assert!(d.forced);
        assert_eq!(d.in_sync, Some(vec![node(1), node(2)]));
        assert_eq!(d.order, [node(2), node(1)]);
    }
}
