//! What `WatchRoutes` sends: the route of every mapped data ID ([`RouteSet`]: the routes the
//! routing table computes once for every lookup and every watcher), and what changed between
//! the set a watcher was last sent and the current one ([`changes`]).
//!
//! Why per-data-ID changes and not a new snapshot every time: a table changes for one
//! mapping edit or one node's health at a time, and a client that caches thousands of routes
//! should receive the handful that changed, not all of them again. A watcher remembers only
//! the last [`RouteSet`] it was sent (an `Arc` shared by every watcher), so a slow watcher
//! costs no memory per change it missed: when it is ready again it is sent the difference
//! between that set and the newest one, skipping every table in between. When the changes
//! would be as large as the picture itself (every mapping vanished, a Consul restart
//! rewrote them all), a snapshot is sent instead: it says the same in no more bytes and
//! spares the client from removing entries one by one.
//!
//! Invariants:
//! - A watcher's first message is a snapshot; after that, applying each message in order to
//!   the last snapshot gives exactly the routes of the newest set it was sent, restricted to
//!   the data IDs it may see.
//! - A route set is built only from a loaded table (before, nothing is sent: the table knows
//!   nothing yet, which is not "no mapping").
//! - Building a set never moves a round-robin turn: watching does not change what
//!   `GetNodeForData` picks.

use std::sync::Arc;

use ec_core::DataId;

use crate::routing::{ReadRoute, ReadRoutes, Table};

/// The routes of one routing table.
#[derive(Debug, Clone)]
pub(crate) struct RouteSet {
    /// Generation of the table the set was built from.
    pub(crate) version: u64,
    /// Every valid mapping's route, as the table computed them (once, for every lookup and
    /// every watcher).
    pub(crate) routes: Arc<ReadRoutes>,
}

impl RouteSet {
    /// The route set of `table`; `None` while it is not loaded.
    pub(crate) fn of(table: &Table) -> Option<RouteSet> {
        Some(RouteSet {
            version: table.generation(),
            routes: table.read_routes()?,
        })
    }
}

/// One message for a watcher: a whole picture or the changes to the previous one.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RouteChanges<'a> {
    /// The routes below are the whole picture (replacing what the watcher holds).
    pub(crate) snapshot: bool,
    /// The set's version.
    pub(crate) version: u64,
    /// Routes new or changed (in a snapshot: all of them).
    pub(crate) upserts: Vec<(&'a DataId, &'a ReadRoute)>,
    /// Data IDs no longer mapped (never in a snapshot).
    pub(crate) removed: Vec<&'a DataId>,
}

/// The whole picture of `set` for a watcher who may see the data IDs `visible` accepts.
pub(crate) fn snapshot<'a>(
    set: &'a RouteSet,
    visible: &dyn Fn(&DataId) -> bool,
) -> RouteChanges<'a> {
    RouteChanges {
        snapshot: true,
        version: set.version,
        upserts: set
            .routes
            .iter()
            .filter(|(id, _)| visible(id))
            .map(|(id, served)| (id, &served.route))
            .collect(),
        removed: Vec::new(),
    }
}

/// What a watcher sent `prev` must be sent to hold `next` (only data IDs `visible` accepts);
/// `None` when nothing it may see changed. A snapshot when that is no larger.
pub(crate) fn changes<'a>(
    prev: &'a RouteSet,
    next: &'a RouteSet,
    visible: &dyn Fn(&DataId) -> bool,
) -> Option<RouteChanges<'a>> {
    let upserts: Vec<(&DataId, &ReadRoute)> = next
        .routes
        .iter()
        .map(|(id, served)| (id, &served.route))
        .filter(|(id, route)| prev.routes.get(*id).map(|s| &s.route) != Some(*route) && visible(id))
        .collect();
    let removed: Vec<&DataId> = prev
        .routes
        .keys()
        .filter(|id| !next.routes.contains_key(*id) && visible(id))
        .collect();
    if upserts.is_empty() && removed.is_empty() {
        return None;
    }
    let shown = next.routes.keys().filter(|id| visible(id)).count();
    if upserts.len() + removed.len() >= shown {
        return Some(snapshot(next, visible));
    }
    Some(RouteChanges {
        snapshot: false,
        version: next.version,
        upserts,
        removed,
    })
}

#[cfg(test)]
mod tests {
    use ec_core::NodeId;
    use ec_discovery::NodeStatus;

    use std::collections::BTreeMap;

    use super::*;
    use crate::routing::{NodeRoute, Served};

    fn id(s: &str) -> DataId {
        DataId::parse(s).expect("valid")
    }

    fn route(primary: &str, candidates: &[&str]) -> ReadRoute {
        ReadRoute {
            primary: NodeId::parse(primary).expect("valid"),
            candidates: candidates
                .iter()
                .map(|n| NodeRoute {
                    node_id: (*n).to_owned(),
                    address: format!("{n}:1"),
                    status: NodeStatus::Passing,
                    suspect: false,
                })
                .collect(),
            preferred: candidates.len(),
            unavailable: None,
        }
    }

    fn set(version: u64, routes: &[(&str, ReadRoute)]) -> RouteSet {
        RouteSet {
            version,
            routes: Arc::new(
                routes
                    .iter()
                    .map(|(d, r)| (id(d), Served::new(r.clone())))
                    .collect(),
            ),
        }
    }

    fn plain(set: &RouteSet) -> BTreeMap<DataId, ReadRoute> {
        set.routes
            .iter()
            .map(|(d, s)| (d.clone(), s.route.clone()))
            .collect()
    }

    fn all(_: &DataId) -> bool {
        true
    }

    /// Applies `c` to `held` as a client would.
    fn apply(held: &mut BTreeMap<DataId, ReadRoute>, c: &RouteChanges<'_>) {
        if c.snapshot {
            held.clear();
        }
        for (d, r) in &c.upserts {
            held.insert((*d).clone(), (*r).clone());
        }
        for d in &c.removed {
            held.remove(*d);
        }
    }

    #[test]
    fn only_what_changed_is_sent_and_applying_it_gives_the_new_set() {
        let a = route("n1", &["n1", "n2"]);
        let prev = set(
            1,
            &[
                ("a", a.clone()),
                ("b", route("n2", &["n2"])),
                ("c", route("n1", &["n1"])),
                ("d", route("n3", &["n3"])),
            ],
        );
        let next = set(
            2,
            &[
                ("a", a),
                ("b", route("n2", &["n1"])),
                ("c", route("n1", &["n1"])),
                ("e", route("n3", &["n3"])),
            ],
        );
        let c = changes(&prev, &next, &all).expect("changed");
        assert!(!c.snapshot);
        assert_eq!(c.version, 2);
        let upserted: Vec<&str> = c.upserts.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(upserted, ["b", "e"]);
        let removed: Vec<&str> = c.removed.iter().map(|d| d.as_str()).collect();
        assert_eq!(removed, ["d"]);
        let mut held = plain(&prev);
        apply(&mut held, &c);
        assert_eq!(held, plain(&next));

        // A new version with the same routes (e.g. only freshness changed): nothing to send.
        let same = RouteSet {
            version: 3,
            ..next.clone()
        };
        assert!(changes(&next, &same, &all).is_none());
    }

    #[test]
    fn a_change_as_large_as_the_picture_is_a_snapshot() {
        let prev = set(
            1,
            &[("a", route("n1", &["n1"])), ("b", route("n1", &["n1"]))],
        );
        let empty = set(2, &[]);
        let c = changes(&prev, &empty, &all).expect("changed");
        assert!(c.snapshot && c.upserts.is_empty() && c.removed.is_empty());
        let moved = set(
            3,
            &[("a", route("n2", &["n2"])), ("b", route("n2", &["n2"]))],
        );
        let c = changes(&prev, &moved, &all).expect("changed");
        assert!(c.snapshot);
        let mut held = BTreeMap::from([(id("stale"), route("n9", &[]))]);
        apply(&mut held, &c);
        assert_eq!(held, plain(&moved));
    }

    #[test]
    fn a_watcher_sees_only_the_data_ids_it_may_read() {
        let orders = |d: &DataId| d.as_str().starts_with("orders");
        let prev = set(
            1,
            &[
                ("orders-1", route("n1", &["n1"])),
                ("orders-2", route("n1", &["n1"])),
                ("orders-3", route("n1", &["n1"])),
                ("billing", route("n1", &["n1"])),
            ],
        );
        let s = snapshot(&prev, &orders);
        assert_eq!(s.upserts.len(), 3);
        let next = set(
            2,
            &[
                ("orders-1", route("n2", &["n2"])),
                ("orders-2", route("n1", &["n1"])),
                ("orders-3", route("n1", &["n1"])),
                ("billing-2", route("n2", &["n2"])),
            ],
        );
        let c = changes(&prev, &next, &orders).expect("orders-1 changed");
        let upserted: Vec<&str> = c.upserts.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(upserted, ["orders-1"]);
        assert!(c.removed.is_empty(), "billing's removal is not shown");
        // Only hidden data IDs changed: nothing is sent.
        let hidden = set(
            3,
            &[
                ("orders-1", route("n2", &["n2"])),
                ("orders-2", route("n1", &["n1"])),
                ("orders-3", route("n1", &["n1"])),
            ],
        );
        assert!(changes(&next, &hidden, &orders).is_none());
    }
}
