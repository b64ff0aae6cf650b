//! The routing table: which nodes hold a data ID and which of them may serve it right now,
//! answered from memory.
//!
//! A [`Table`] is an immutable picture built from the last mapping snapshot and the last
//! health snapshot the Consul watches delivered (see `feed.rs`); [`RoutingTable`] publishes
//! the current one. Readers take an `Arc<Table>` and answer without locking anything for
//! longer than a pointer copy, and never ask Consul.
//!
//! Rules kept here (and nowhere else):
//! - A node is *usable* when Consul reports it passing or warning, this gateway's own probes
//!   reach it (`probe.rs`), it is named by the mapping, and it is allowed
//!   (`gateway.allowed_nodes` empty, or listing it). Critical, maintenance, deregistered,
//!   never-registered and lost (unreachable) nodes are never routed to; neither are nodes
//!   outside a non-empty allow-list. A lost node is shown as critical in the table's health,
//!   so its transitions reach `WatchHealth` at once, not after Consul's next check.
//! - Readers prefer passing nodes: candidates are the passing nodes in mapping order, then
//!   the warning ones in mapping order, then the *suspect* ones (usable, but this gateway's
//!   probes have gone unanswered for a moment, see `probe.rs`), which are a last resort. A
//!   reader served by a suspect node is moved off it when another candidate exists
//!   ([`Table::serves`]), and since a suspect node is never preferred, the move does not
//!   flap back. Suspicion concerns readers only: writes and promotion ignore it. A warning node still answers (its check says "degraded",
//!   not "down"), so it is better than nothing, but it is never chosen while a passing node is
//!   there. `GetNodeForData` picks round-robin among the passing candidates (among the warning
//!   ones only when none passes).
//! - Writers go to the mapping's first node, the primary, and only there: a primary that is not
//!   usable is an error naming it, never a silent write to another node. A warning primary is
//!   usable for writes (it still accepts them).
//! - Until both watches have delivered a first snapshot the table is *not loaded*: every
//!   answer is "unavailable, try again", never "no such mapping" (which clients treat as final).
//! - When Consul goes away the last table stays in force: the watches keep their last good
//!   snapshot, and only the freshness fields change.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use ec_core::{DataId, NodeId};
use ec_discovery::{HealthSnapshot, Mapping, MappingProblem, MappingSnapshot, NodeStatus};
use tokio::sync::watch;

use crate::probe::{Lost, Reachability};

/// A node as the router sees it: where to reach it and how healthy it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeRoute {
    /// The node's ID (its Consul service ID).
    pub(crate) node_id: String,
    /// `host:port` of its gRPC server, as registered in Consul; empty if it is not registered.
    pub(crate) address: String,
    /// Its aggregate health.
    pub(crate) status: NodeStatus,
    /// This gateway's probes suspect it (readers use it last).
    pub(crate) suspect: bool,
}

/// The answer to "where do I read this data ID", as owned values ([`Table::pick`] answers
/// the same by reference, for `GetNodeForData`).
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    /// The node picked for this request (round-robin among the preferred candidates).
    pub(crate) chosen: NodeRoute,
    /// The mapping's first node, where writes go (whether or not it is usable).
    pub(crate) primary: NodeId,
    /// Every usable node of the mapping: passing ones in mapping order, then warning ones,
    /// then suspect ones.
    pub(crate) candidates: Vec<NodeRoute>,
}

/// A data ID's route without a pick: everything [`Table::route`] answers but the chosen node,
/// for clients that pick for themselves (`WatchRoutes`), and what the table picks from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReadRoute {
    /// The mapping's first node, where writes go (whether or not it is usable).
    pub(crate) primary: NodeId,
    /// Every usable node in readers' order, as [`Route::candidates`]; empty when none is.
    pub(crate) candidates: Vec<NodeRoute>,
    /// How many candidates, from the first, are equally preferred: the round-robin set.
    pub(crate) preferred: usize,
    /// When no node is usable: why, as [`RouteError::NoHealthyNode`] says it.
    pub(crate) unavailable: Option<String>,
}

/// A mapping's [`ReadRoute`] as computed once per table, with the mapping's round-robin turn.
#[derive(Debug, Clone)]
pub(crate) struct Served {
    /// The route.
    pub(crate) route: ReadRoute,
    turn: Arc<AtomicUsize>,
    /// `GetNodeForData`'s answer for each pick, encoded on first use (see
    /// [`Table::pick_encoded`]).
    answers: Box<[OnceLock<Bytes>]>,
}

impl Served {
    fn with_turn(route: ReadRoute, turn: Arc<AtomicUsize>) -> Served {
        let answers = route.candidates.iter().map(|_| OnceLock::new()).collect();
        Served {
            route,
            turn,
            answers,
        }
    }

    /// A route with a rotation of its own (for tests of what uses routes).
    #[cfg(test)]
    pub(crate) fn new(route: ReadRoute) -> Served {
        Served::with_turn(route, Arc::default())
    }
}

/// The route of every valid mapping of one table.
pub(crate) type ReadRoutes = BTreeMap<DataId, Served>;

/// Why a node of a mapping cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unusable {
    /// Consul reports it critical (or in maintenance).
    Critical,
    /// Not registered in Consul: deregistered, or never started.
    NotRegistered,
    /// Not listed in a non-empty `gateway.allowed_nodes`.
    NotAllowed,
    /// This gateway's health checks of the node fail (refused, reset, NOT_SERVING or no
    /// answer), whatever Consul says yet.
    Lost,
}

impl fmt::Display for Unusable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unusable::Critical => "critical in Consul",
            Unusable::NotRegistered => "not registered in Consul",
            Unusable::NotAllowed => "not in gateway.allowed_nodes",
            Unusable::Lost => "lost: the gateway's health checks of it fail",
        })
    }
}

/// Why the table cannot route a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RouteError {
    /// The data ID has no (valid) mapping.
    #[error(
        "data ID {data_id} has no mapping; create one with PutMapping or \
         `scripts/setup-consul.sh --data-id={data_id} --node-id=NODE`"
    )]
    NotFound {
        /// The data ID asked for.
        data_id: DataId,
    },
    /// The mapping exists but none of its nodes is usable.
    #[error("no healthy node holds data ID {data_id}: {}", list_unusable(.nodes))]
    NoHealthyNode {
        /// The data ID asked for.
        data_id: DataId,
        /// Every node of the mapping with the reason it cannot be used, in mapping order.
        nodes: Vec<(NodeId, Unusable)>,
    },
    /// Writes go to the primary only, and it cannot be used.
    #[error(
        "the primary node {primary} of data ID {data_id} is unavailable ({why}); nothing was \
         written: writes go only to the primary"
    )]
    PrimaryUnavailable {
        /// The data ID written to.
        data_id: DataId,
        /// The mapping's first node.
        primary: NodeId,
        /// Why it cannot be used.
        why: Unusable,
    },
    /// The gateway has not received its first snapshots from Consul yet.
    #[error("{}", match last_error {
        Some(e) => format!("cannot read mappings from Consul: {e}"),
        None => "the routing table is not loaded yet: Consul has not answered since the gateway started".to_owned(),
    })]
    NotLoaded {
        /// The watches' last error, if any.
        last_error: Option<String>,
    },
}

fn list_unusable(nodes: &[(NodeId, Unusable)]) -> String {
    nodes
        .iter()
        .map(|(n, why)| format!("{n} {why}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a node's health was when the table was built, with when it entered that state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeState {
    /// The node's ID.
    pub(crate) node_id: String,
    /// `host:port` of its gRPC server; empty if never registered.
    pub(crate) address: String,
    /// Aggregate health; [`NodeStatus::Gone`] for a node named by a mapping but not registered.
    pub(crate) status: NodeStatus,
    /// When the gateway saw it enter `status`; `None` if it never saw the node at all.
    pub(crate) since: Option<SystemTime>,
    /// Checks passing, of `checks_total`.
    pub(crate) checks_passing: u32,
    /// Checks of the node and its service.
    pub(crate) checks_total: u32,
    /// Data IDs whose mapping names this node.
    pub(crate) data_ids: Vec<DataId>,
}

/// A mapping with each node's state, for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MappingView {
    /// The mapping as stored in Consul.
    pub(crate) mapping: Mapping,
    /// Its nodes in mapping order, with address and health.
    pub(crate) nodes: Vec<NodeRoute>,
}

/// How fresh the table is: whether the watches reach Consul.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Freshness {
    /// Both watches' last query succeeded.
    pub(crate) consul_reachable: bool,
    /// The older of the two watches' last successful answers: everything in the table was
    /// confirmed at least then.
    pub(crate) last_contact: Option<SystemTime>,
    /// The error of the last failed query, while a watch is failing.
    pub(crate) last_error: Option<String>,
}

impl Freshness {
    /// How long the table has gone unconfirmed at `now`: zero while both watches are
    /// connected (a blocking query in progress would report any change), else the time since
    /// the last contact (or `None` if Consul was never reached).
    pub(crate) fn staleness(&self, now: SystemTime) -> Option<Duration> {
        if self.consul_reachable {
            return Some(Duration::ZERO);
        }
        self.last_contact
            .map(|t| now.duration_since(t).unwrap_or(Duration::ZERO))
    }
}

/// One mapping and its round-robin position; the position is carried over from table to
/// table so that rebuilding the table does not restart the rotation.
#[derive(Debug, Clone)]
struct Routed {
    mapping: Mapping,
    turn: Arc<AtomicUsize>,
}

/// The node allow-list: empty means every node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AllowList(BTreeSet<String>);

impl AllowList {
    /// An allow-list of `nodes`; empty allows everyone.
    pub(crate) fn new(nodes: impl IntoIterator<Item = NodeId>) -> AllowList {
        AllowList(nodes.into_iter().map(|n| n.to_string()).collect())
    }

    /// Whether `node_id` may be routed to and may register.
    pub(crate) fn allows(&self, node_id: &str) -> bool {
        self.0.is_empty() || self.0.contains(node_id)
    }
}

/// An immutable picture of mappings and node health. Cheap to share (`Arc<Table>`).
#[derive(Debug, Clone)]
pub(crate) struct Table {
    /// Bumps on every rebuild.
    generation: u64,
    /// Whether each watch has delivered a snapshot.
    pub(crate) mappings_loaded: bool,
    pub(crate) health_loaded: bool,
    /// Generations of the watch snapshots this table was built from, to notice new ones.
    pub(crate) mappings_generation: u64,
    pub(crate) health_generation: u64,
    mappings: BTreeMap<DataId, Routed>,
    problems: Vec<MappingProblem>,
    /// The last health snapshot with lost nodes marked critical (the health routing uses),
    /// for transitions.
    pub(crate) health: HealthSnapshot,
    /// Generation of the probes' [`Reachability`] this table was built from.
    pub(crate) probes_generation: u64,
    /// Nodes this gateway's probes cannot reach, with since when and why.
    lost: BTreeMap<String, Lost>,
    /// Nodes this gateway's probes suspect (silent for a moment, not lost), with since when:
    /// readers avoid them.
    suspect: BTreeMap<String, SystemTime>,
    /// When each node entered its current status; kept for gone nodes a mapping still names.
    since: BTreeMap<String, SystemTime>,
    /// Last known address of nodes that left Consul, while a mapping still names them.
    gone_addresses: BTreeMap<String, String>,
    allowed: Arc<AllowList>,
    freshness: Freshness,
    /// Every mapping's route, computed from this table on first use and then shared by
    /// every lookup and every `WatchRoutes` stream (a table never changes once published;
    /// each builder below starts a new table without it).
    routes: OnceLock<Arc<ReadRoutes>>,
}

impl Table {
    /// An empty, not yet loaded table.
    pub(crate) fn empty(allowed: AllowList) -> Table {
        Table {
            generation: 0,
            mappings_loaded: false,
            health_loaded: false,
            mappings_generation: 0,
            health_generation: 0,
            mappings: BTreeMap::new(),
            problems: Vec::new(),
            health: HealthSnapshot {
                nodes: BTreeMap::new(),
                index: 0,
            },
            probes_generation: 0,
            lost: BTreeMap::new(),
            suspect: BTreeMap::new(),
            since: BTreeMap::new(),
            gone_addresses: BTreeMap::new(),
            allowed: Arc::new(allowed),
            freshness: Freshness::default(),
            routes: OnceLock::new(),
        }
    }

    /// A copy of this table to build the next one from: the next generation, and no routes
    /// computed yet (they depend on what the builder changes).
    fn next(&self) -> Table {
        let mut next = self.clone();
        next.generation += 1;
        next.routes = OnceLock::new();
        next
    }

    /// A table built from `prev` with a new mapping snapshot (if `Some`).
    pub(crate) fn with_mappings(&self, snapshot: Option<&MappingSnapshot>) -> Table {
        let mut next = self.next();
        if let Some(snapshot) = snapshot {
            next.mappings_loaded = true;
            next.mappings = snapshot
                .mappings
                .iter()
                .map(|(data_id, mapping)| {
                    let turn = self
                        .mappings
                        .get(data_id)
                        .map(|r| r.turn.clone())
                        .unwrap_or_default();
                    (
                        data_id.clone(),
                        Routed {
                            mapping: mapping.clone(),
                            turn,
                        },
                    )
                })
                .collect();
            next.problems = snapshot.problems.clone();
            next.prune_gone();
        }
        next
    }

    /// A table built from `prev` with a new health snapshot, observed at `at`; `changes`
    /// are the transitions between the previous snapshot and this one.
    pub(crate) fn with_health(
        &self,
        snapshot: &HealthSnapshot,
        changes: &[ec_discovery::HealthTransition],
    ) -> Table {
        let mut next = self.next();
        next.health_loaded = true;
        for change in changes {
            next.since.insert(change.node_id.clone(), change.at);
            if change.to == NodeStatus::Gone {
                next.gone_addresses
                    .insert(change.node_id.clone(), change.address.clone());
            } else {
                next.gone_addresses.remove(&change.node_id);
            }
        }
        next.health = snapshot.clone();
        next.prune_gone();
        next
    }

    /// A table built from `prev` with a new health snapshot whose lost nodes (per `probes`)
    /// are marked critical; the transitions are computed against the previous table's health.
    pub(crate) fn with_probed_health(
        &self,
        snapshot: &HealthSnapshot,
        probes: &Reachability,
        at: SystemTime,
    ) -> (Table, Vec<ec_discovery::HealthTransition>) {
        let mut effective = snapshot.clone();
        for (node, health) in &mut effective.nodes {
            if probes.lost.contains_key(node) {
                health.status = NodeStatus::Critical;
            }
        }
        let changes = ec_discovery::transitions(&self.health, &effective, at);
        let mut next = self.with_health(&effective, &changes);
        next.lost = probes
            .lost
            .iter()
            .filter(|(n, _)| snapshot.nodes.contains_key(*n))
            .map(|(n, l)| (n.clone(), l.clone()))
            .collect();
        next.suspect = probes
            .suspect
            .iter()
            .filter(|(n, _)| snapshot.nodes.contains_key(*n))
            .map(|(n, t)| (n.clone(), *t))
            .collect();
        next.probes_generation = probes.generation;
        // Lost and suspect nodes change the routes.
        next.routes = OnceLock::new();
        (next, changes)
    }

    /// Why this gateway cannot reach `node_id`, if it cannot.
    pub(crate) fn lost(&self, node_id: &str) -> Option<&Lost> {
        self.lost.get(node_id)
    }

    /// Since when this gateway's probes suspect `node_id`, if they do (readers avoid it).
    pub(crate) fn suspect(&self, node_id: &str) -> Option<SystemTime> {
        self.suspect.get(node_id).copied()
    }

    /// The nodes this gateway's probes suspect right now.
    pub(crate) fn suspects(&self) -> impl Iterator<Item = (&str, SystemTime)> {
        self.suspect.iter().map(|(n, t)| (n.as_str(), *t))
    }

    /// A table identical to this one but for its freshness.
    pub(crate) fn with_freshness(&self, freshness: Freshness) -> Table {
        let mut next = self.next();
        next.freshness = freshness;
        next
    }

    /// Forgets gone nodes no mapping names any more, so the table does not grow with every
    /// node ID ever seen.
    fn prune_gone(&mut self) {
        let named: BTreeSet<&str> = self
            .mappings
            .values()
            .flat_map(|r| r.mapping.nodes.iter().map(NodeId::as_str))
            .collect();
        let health = &self.health;
        self.gone_addresses
            .retain(|node, _| named.contains(node.as_str()) && !health.nodes.contains_key(node));
        self.since
            .retain(|node, _| health.nodes.contains_key(node) || named.contains(node.as_str()));
    }

    /// Bumps on every rebuild; a watcher of the table compares it to skip old events.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether both watches have delivered a snapshot.
    pub(crate) fn is_loaded(&self) -> bool {
        self.mappings_loaded && self.health_loaded
    }

    /// How fresh the table is.
    pub(crate) fn freshness(&self) -> &Freshness {
        &self.freshness
    }

    /// The allow-list in force.
    pub(crate) fn allowed(&self) -> &AllowList {
        &self.allowed
    }

    /// Number of valid mappings.
    pub(crate) fn mapping_count(&self) -> usize {
        self.mappings.len()
    }

    /// Number of nodes registered in Consul.
    pub(crate) fn node_count(&self) -> usize {
        self.health.nodes.len()
    }

    /// The gRPC addresses of the nodes registered in Consul now; `None` until the health
    /// watch has delivered its first snapshot (an empty table knows nothing yet, which is
    /// not the same as "no node is left").
    pub(crate) fn registered_addresses(&self) -> Option<BTreeSet<&str>> {
        self.health_loaded.then(|| {
            self.health
                .nodes
                .values()
                .map(|h| h.address.as_str())
                .collect()
        })
    }

    /// The mapping of `data_id`, if there is a valid one.
    pub(crate) fn mapping(&self, data_id: &DataId) -> Option<&Mapping> {
        self.mappings.get(data_id).map(|r| &r.mapping)
    }

    fn not_loaded(&self) -> Option<RouteError> {
        (!self.is_loaded()).then(|| RouteError::NotLoaded {
            last_error: self.freshness.last_error.clone(),
        })
    }

    /// `node_id` as a route, or why it cannot be used.
    fn node(&self, node_id: &str) -> Result<NodeRoute, Unusable> {
        if !self.allowed.allows(node_id) {
            return Err(Unusable::NotAllowed);
        }
        let Some(health) = self.health.nodes.get(node_id) else {
            return Err(Unusable::NotRegistered);
        };
        if self.lost.contains_key(node_id) {
            return Err(Unusable::Lost);
        }
        match health.status {
            NodeStatus::Passing | NodeStatus::Warning => Ok(NodeRoute {
                node_id: node_id.to_owned(),
                address: health.address.clone(),
                status: health.status,
                suspect: self.suspect.contains_key(node_id),
            }),
            NodeStatus::Critical => Err(Unusable::Critical),
            NodeStatus::Gone => Err(Unusable::NotRegistered),
        }
    }

    /// The usable nodes of `data_id`'s mapping in the order readers should try them: passing
    /// ones first, then warning ones, then suspect ones (mapping order within each group), so
    /// the primary comes first when it passes and is not suspect.
    pub(crate) fn candidates(&self, data_id: &DataId) -> Result<Vec<NodeRoute>, RouteError> {
        self.ranked_candidates(data_id).map(|(c, _)| c)
    }

    /// How much a reader wants `node`: lower is better.
    fn read_rank(node: &NodeRoute) -> u8 {
        let suspect = u8::from(node.suspect);
        let warning = u8::from(node.status != NodeStatus::Passing);
        2 * suspect + warning
    }

    /// The candidates, and how many of them (from the front) are equally preferred.
    fn ranked_candidates(&self, data_id: &DataId) -> Result<(Vec<NodeRoute>, usize), RouteError> {
        if let Some(e) = self.not_loaded() {
            return Err(e);
        }
        let routed = self
            .mappings
            .get(data_id)
            .ok_or_else(|| RouteError::NotFound {
                data_id: data_id.clone(),
            })?;
        let mut usable = Vec::with_capacity(routed.mapping.nodes.len());
        let mut unusable = Vec::new();
        for node in &routed.mapping.nodes {
            match self.node(node.as_str()) {
                Ok(r) => usable.push(r),
                Err(why) => unusable.push((node.clone(), why)),
            }
        }
        if usable.is_empty() {
            return Err(RouteError::NoHealthyNode {
                data_id: data_id.clone(),
                nodes: unusable,
            });
        }
        // Stable: mapping order within each rank.
        usable.sort_by_key(Table::read_rank);
        let best = Table::read_rank(&usable[0]);
        let preferred = usable
            .iter()
            .take_while(|n| Table::read_rank(n) == best)
            .count();
        Ok((usable, preferred))
    }

    /// Where to read `data_id`: a node picked round-robin among the most preferred candidates
    /// (passing ones; warning ones when none passes; suspect ones only when nothing else is
    /// usable), with all candidates and the primary.
    #[cfg(test)]
    pub(crate) fn route(&self, data_id: &DataId) -> Result<Route, RouteError> {
        let (route, i) = self.pick(data_id)?;
        Ok(Route {
            chosen: route.candidates[i].clone(),
            primary: route.primary.clone(),
            candidates: route.candidates.clone(),
        })
    }

    /// The route of every valid mapping, as [`Table::route`] gives it but without a pick
    /// (so without moving any round-robin turn); `None` while the table is not loaded.
    /// Computed once per table.
    pub(crate) fn read_routes(&self) -> Option<Arc<ReadRoutes>> {
        self.is_loaded().then(|| self.served().clone())
    }

    /// Every mapping's route, computed on first use.
    fn served(&self) -> &Arc<ReadRoutes> {
        self.routes.get_or_init(|| {
            let routes = self
                .mappings
                .iter()
                .map(|(data_id, routed)| {
                    let primary = routed.mapping.primary().clone();
                    let route = match self.ranked_candidates(data_id) {
                        Ok((candidates, preferred)) => ReadRoute {
                            primary,
                            candidates,
                            preferred,
                            unavailable: None,
                        },
                        Err(e) => ReadRoute {
                            primary,
                            candidates: Vec::new(),
                            preferred: 0,
                            unavailable: Some(e.to_string()),
                        },
                    };
                    (
                        data_id.clone(),
                        Served::with_turn(route, routed.turn.clone()),
                    )
                })
                .collect();
            Arc::new(routes)
        })
    }

    /// Where to read `data_id`, without copying anything: its route and the index of the
    /// candidate picked for this request (round-robin among the preferred ones).
    pub(crate) fn pick(&self, data_id: &DataId) -> Result<(&ReadRoute, usize), RouteError> {
        self.pick_served(data_id)
            .map(|(served, i)| (&served.route, i))
    }

    /// Like [`Table::pick`], answered with `encode`'s bytes for the route and pick, which
    /// are encoded once per table and pick and then shared.
    ///
    /// Why: `GetNodeForData` answers the same few bytes for a data ID until the table
    /// changes, and building and encoding the answer (its strings, its candidates) was about
    /// 5 % of the lookup's throughput (BENCHMARKS.md, *twenty-sixth round*).
    pub(crate) fn pick_encoded(
        &self,
        data_id: &DataId,
        encode: impl FnOnce(&ReadRoute, usize) -> Bytes,
    ) -> Result<Bytes, RouteError> {
        let (served, i) = self.pick_served(data_id)?;
        Ok(served.answers[i]
            .get_or_init(|| encode(&served.route, i))
            .clone())
    }

    /// [`Table::pick`]'s route as served, with the pick: always an index of a candidate.
    fn pick_served(&self, data_id: &DataId) -> Result<(&Served, usize), RouteError> {
        if let Some(e) = self.not_loaded() {
            return Err(e);
        }
        let served = self
            .served()
            .get(data_id)
            .ok_or_else(|| RouteError::NotFound {
                data_id: data_id.clone(),
            })?;
        if served.route.candidates.is_empty() {
            // Rare: say why node by node, as computed from the table itself.
            return Err(self.ranked_candidates(data_id).err().unwrap_or_else(|| {
                RouteError::NoHealthyNode {
                    data_id: data_id.clone(),
                    nodes: Vec::new(),
                }
            }));
        }
        let preferred = served
            .route
            .preferred
            .clamp(1, served.route.candidates.len());
        let i = served.turn.fetch_add(1, Ordering::Relaxed) % preferred;
        Ok((served, i))
    }

    /// Where to write `data_id`: its primary, if usable.
    pub(crate) fn primary(&self, data_id: &DataId) -> Result<NodeRoute, RouteError> {
        if let Some(e) = self.not_loaded() {
            return Err(e);
        }
        let mapping = self.mapping(data_id).ok_or_else(|| RouteError::NotFound {
            data_id: data_id.clone(),
        })?;
        let primary = mapping.primary();
        self.node(primary.as_str())
            .map_err(|why| RouteError::PrimaryUnavailable {
                data_id: data_id.clone(),
                primary: primary.clone(),
                why,
            })
    }

    /// Whether `node_id` may keep serving readers of `data_id`: the mapping still names it,
    /// it is usable, and it is not suspect while a candidate that is not suspect exists (a
    /// reader leaves a suspect node only for a better one, so it never moves in circles).
    /// `true` while the table is not loaded (nothing is known yet).
    pub(crate) fn serves(&self, data_id: &DataId, node_id: &str) -> bool {
        if !self.is_loaded() {
            return true;
        }
        let named = self
            .mapping(data_id)
            .is_some_and(|m| m.nodes.iter().any(|n| n.as_str() == node_id));
        if !named || self.node(node_id).is_err() {
            return false;
        }
        !self.suspect.contains_key(node_id)
            || self.candidates(data_id).is_ok_and(|c| {
                c.first()
                    .is_none_or(|best| self.suspect.contains_key(&best.node_id))
            })
    }

    /// The state of one node, registered or only named by a mapping.
    fn node_state(&self, node_id: &str, data_ids: Vec<DataId>) -> NodeState {
        let since = self.since.get(node_id).copied();
        match self.health.nodes.get(node_id) {
            Some(h) => NodeState {
                node_id: node_id.to_owned(),
                address: h.address.clone(),
                status: h.status,
                since,
                checks_passing: h.checks_passing,
                checks_total: h.checks_total,
                data_ids,
            },
            None => NodeState {
                node_id: node_id.to_owned(),
                address: self
                    .gone_addresses
                    .get(node_id)
                    .cloned()
                    .unwrap_or_default(),
                status: NodeStatus::Gone,
                since,
                checks_passing: 0,
                checks_total: 0,
                data_ids,
            },
        }
    }

    /// Whether Consul's catalog (as last seen) has `node_id` registered as a streaming
    /// node; `None` while the table is not loaded.
    pub(crate) fn is_registered(&self, node_id: &str) -> Option<bool> {
        self.is_loaded()
            .then(|| self.health.nodes.contains_key(node_id))
    }

    /// Every node registered in Consul, plus every node a mapping names that is not
    /// registered (as gone), sorted by ID.
    pub(crate) fn nodes(&self) -> Vec<NodeState> {
        let mut data_ids: BTreeMap<&str, Vec<DataId>> = self
            .health
            .nodes
            .keys()
            .map(|n| (n.as_str(), Vec::new()))
            .collect();
        for (data_id, routed) in &self.mappings {
            for node in &routed.mapping.nodes {
                data_ids
                    .entry(node.as_str())
                    .or_default()
                    .push(data_id.clone());
            }
        }
        data_ids
            .into_iter()
            .map(|(node, ids)| self.node_state(node, ids))
            .collect()
    }

    /// Every valid mapping with its nodes' health, and the problems: keys whose value is not
    /// a valid mapping, and mappings naming nodes the allow-list excludes.
    pub(crate) fn mappings(&self) -> (Vec<MappingView>, Vec<MappingProblem>) {
        let mut problems = self.problems.clone();
        let views = self
            .mappings
            .values()
            .map(|routed| {
                let nodes = routed
                    .mapping
                    .nodes
                    .iter()
                    .map(|n| {
                        let state = self.node_state(n.as_str(), Vec::new());
                        if !self.allowed.allows(n.as_str()) {
                            problems.push(MappingProblem {
                                key: routed.mapping.data_id.to_string(),
                                reason: format!(
                                    "node {n} is not in gateway.allowed_nodes; it is never routed to"
                                ),
                            });
                        }
                        NodeRoute {
                            suspect: self.suspect.contains_key(&state.node_id),
                            node_id: state.node_id,
                            address: state.address,
                            status: state.status,
                        }
                    })
                    .collect();
                MappingView {
                    mapping: routed.mapping.clone(),
                    nodes,
                }
            })
            .collect();
        (views, problems)
    }
}

/// The current [`Table`], shared by the service, the proxy's resolvers and the feeder.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct RoutingTable {
    current: Arc<watch::Sender<Arc<Table>>>,
}

impl RoutingTable {
    /// A routing table that is not loaded yet and routes only to `allowed` nodes (all if empty).
    pub(crate) fn new(allowed: AllowList) -> RoutingTable {
        let (tx, _) = watch::channel(Arc::new(Table::empty(allowed)));
        RoutingTable {
            current: Arc::new(tx),
        }
    }

    /// The table in force now.
    pub(crate) fn current(&self) -> Arc<Table> {
        self.current.borrow().clone()
    }

    /// A receiver that wakes on every new table.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Table>> {
        self.current.subscribe()
    }

    /// Puts `table` in force.
    pub(crate) fn publish(&self, table: Table) {
        self.current.send_replace(Arc::new(table));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ec_discovery::{HealthTransition, NodeHealth};

    use super::*;

    fn id(s: &str) -> DataId {
        DataId::parse(s).expect("valid")
    }

    fn node(s: &str) -> NodeId {
        NodeId::parse(s).expect("valid")
    }

    fn mapping(data_id: &str, nodes: &[&str]) -> Mapping {
        Mapping {
            data_id: id(data_id),
            nodes: nodes.iter().map(|n| node(n)).collect(),
            modify_index: 7,
        }
    }

    fn mappings(ms: &[Mapping]) -> MappingSnapshot {
        MappingSnapshot {
            mappings: ms.iter().map(|m| (m.data_id.clone(), m.clone())).collect(),
            problems: vec![],
            index: 1,
        }
    }

    fn health(nodes: &[(&str, NodeStatus)]) -> HealthSnapshot {
        HealthSnapshot {
            nodes: nodes
                .iter()
                .map(|(n, s)| {
                    (
                        (*n).to_owned(),
                        NodeHealth {
                            node_id: (*n).to_owned(),
                            address: format!("{n}:1"),
                            status: *s,
                            checks_passing: u32::from(*s == NodeStatus::Passing),
                            checks_total: 1,
                            meta: BTreeMap::new(),
                        },
                    )
                })
                .collect(),
            index: 1,
        }
    }

    fn table(allowed: &[&str], ms: &[Mapping], h: &[(&str, NodeStatus)]) -> Table {
        let t = Table::empty(AllowList::new(allowed.iter().map(|n| node(n))));
        let h = health(h);
        let changes = ec_discovery::transitions(&t.health, &h, SystemTime::UNIX_EPOCH);
        t.with_mappings(Some(&mappings(ms)))
            .with_health(&h, &changes)
    }

    fn ids(nodes: &[NodeRoute]) -> Vec<&str> {
        nodes.iter().map(|n| n.node_id.as_str()).collect()
    }

    use NodeStatus::{Critical, Passing, Warning};

    #[test]
    fn not_loaded_is_unavailable_not_not_found() {
        let t = Table::empty(AllowList::default());
        assert!(matches!(
            t.route(&id("d")),
            Err(RouteError::NotLoaded { .. })
        ));
        let t = t.with_mappings(Some(&mappings(&[])));
        assert!(matches!(
            t.primary(&id("d")),
            Err(RouteError::NotLoaded { .. })
        ));
        assert!(t.serves(&id("d"), "n1"), "nothing known: keep serving");
        assert_eq!(
            t.registered_addresses(),
            None,
            "no health yet: nothing is known"
        );
        let t = t.with_health(&health(&[("n1", Passing)]), &[]);
        assert_eq!(
            t.registered_addresses(),
            Some(BTreeSet::from(["n1:1"])),
            "registered nodes only"
        );
    }

    /// `t` with `suspect` suspected by the probes (Consul's health unchanged).
    fn suspecting(t: &Table, suspect: &[&str]) -> Table {
        let probes = Reachability {
            suspect: suspect
                .iter()
                .map(|n| ((*n).to_owned(), SystemTime::UNIX_EPOCH))
                .collect(),
            generation: 1,
            ..Reachability::default()
        };
        let snapshot = t.health.clone();
        t.with_probed_health(&snapshot, &probes, SystemTime::UNIX_EPOCH)
            .0
    }

    #[test]
    fn readers_leave_a_suspect_node_for_a_better_one_and_writes_stay() {
        let t = table(
            &[],
            &[mapping("d", &["n1", "n2", "n3"])],
            &[("n1", Passing), ("n2", Warning), ("n3", Passing)],
        );
        let s = suspecting(&t, &["n1"]);
        assert_eq!(
            ids(&s.candidates(&id("d")).expect("candidates")),
            ["n3", "n2", "n1"],
            "suspect last, behind even a warning node"
        );
        for _ in 0..4 {
            assert_eq!(s.route(&id("d")).expect("route").chosen.node_id, "n3");
        }
        assert!(!s.serves(&id("d"), "n1"), "a reader leaves the suspect");
        assert!(s.serves(&id("d"), "n3"));
        assert_eq!(
            s.primary(&id("d"))
                .expect("writes ignore suspicion")
                .node_id,
            "n1"
        );
        assert!(s.lost("n1").is_none());

        // Everyone suspect: they are still served (no better node to move to), no circles.
        let all = suspecting(&t, &["n1", "n2", "n3"]);
        assert_eq!(
            ids(&all.candidates(&id("d")).expect("candidates")),
            ["n1", "n3", "n2"]
        );
        assert!(all.serves(&id("d"), "n1") && all.serves(&id("d"), "n2"));

        // Answers again: back at once.
        let back = suspecting(&s, &[]);
        assert!(back.serves(&id("d"), "n1"));
        assert_eq!(
            ids(&back.candidates(&id("d")).expect("candidates")),
            ["n1", "n3", "n2"]
        );
    }

    #[test]
    fn round_robin_over_passing_nodes_then_warning_ones() {
        let t = table(
            &[],
            &[mapping("d", &["n1", "n2", "n3", "n4"])],
            &[
                ("n1", Warning),
                ("n2", Passing),
                ("n3", Critical),
                ("n4", Passing),
            ],
        );
        let picks: Vec<String> = (0..4)
            .map(|_| t.route(&id("d")).expect("route").chosen.node_id)
            .collect();
        assert_eq!(picks, ["n2", "n4", "n2", "n4"]);
        let route = t.route(&id("d")).expect("route");
        assert_eq!(ids(&route.candidates), ["n2", "n4", "n1"]);
        assert_eq!(route.primary.as_str(), "n1");
        assert_eq!(route.chosen.address, "n2:1");

        // Only warning nodes left: they are used.
        let t = table(
            &[],
            &[mapping("d", &["n1", "n2"])],
            &[("n1", Warning), ("n2", Warning)],
        );
        let picks: Vec<String> = (0..3)
            .map(|_| t.route(&id("d")).expect("route").chosen.node_id)
            .collect();
        assert_eq!(picks, ["n1", "n2", "n1"]);
    }

    #[test]
    fn read_routes_are_the_routes_without_a_pick() {
        let t = table(
            &[],
            &[
                mapping("a", &["n1", "n2", "n3"]),
                mapping("b", &["n3"]),
                mapping("c", &["n4"]),
            ],
            &[("n1", Warning), ("n2", Passing), ("n3", Passing)],
        );
        assert!(Table::empty(AllowList::default()).read_routes().is_none());
        let t = suspecting(&t, &["n3"]);
        let routes = t.read_routes().expect("loaded");
        assert_eq!(
            routes.keys().map(DataId::as_str).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        let a = &routes[&id("a")].route;
        let route = t.route(&id("a")).expect("route");
        assert_eq!(
            a.candidates, route.candidates,
            "same order as GetNodeForData"
        );
        assert_eq!(ids(&a.candidates), ["n2", "n1", "n3"]);
        assert_eq!(
            a.candidates.iter().map(|c| c.suspect).collect::<Vec<_>>(),
            [false, false, true]
        );
        assert_eq!((a.primary.as_str(), a.preferred), ("n1", 1));
        assert_eq!(a.unavailable, None);
        // Only a suspect node left: it is the preferred one.
        assert_eq!(routes[&id("b")].route.preferred, 1);
        let c = &routes[&id("c")].route;
        assert!(c.candidates.is_empty());
        assert_eq!(
            c.unavailable.as_deref(),
            Some(
                t.route(&id("c"))
                    .expect_err("none usable")
                    .to_string()
                    .as_str()
            )
        );

        // Reading the routes does not move the round-robin turn.
        let t = table(
            &[],
            &[mapping("d", &["n1", "n2"])],
            &[("n1", Passing), ("n2", Passing)],
        );
        assert_eq!(t.route(&id("d")).expect("route").chosen.node_id, "n1");
        for _ in 0..3 {
            t.read_routes().expect("loaded");
        }
        assert_eq!(t.route(&id("d")).expect("route").chosen.node_id, "n2");
    }

    #[test]
    fn every_rebuild_computes_its_own_routes() {
        let t = table(
            &[],
            &[mapping("d", &["n1", "n2"])],
            &[("n1", Passing), ("n2", Passing)],
        );
        assert_eq!(
            ids(&t.route(&id("d")).expect("route").candidates),
            ["n1", "n2"]
        );
        let critical = health(&[("n1", Passing), ("n2", Critical)]);
        let changes = ec_discovery::transitions(&t.health, &critical, SystemTime::UNIX_EPOCH);
        let t = t.with_health(&critical, &changes);
        assert_eq!(ids(&t.route(&id("d")).expect("route").candidates), ["n1"]);
        let t = suspecting(&t, &["n1"]);
        assert!(t.route(&id("d")).expect("route").candidates[0].suspect);
        let t = t.with_mappings(Some(&mappings(&[mapping("e", &["n1"])])));
        assert!(matches!(
            t.route(&id("d")),
            Err(RouteError::NotFound { .. })
        ));
        assert!(t.route(&id("e")).is_ok());
        let t = t.with_freshness(Freshness::default());
        assert_eq!(t.read_routes().expect("loaded").len(), 1);
    }

    #[test]
    fn encoded_answers_are_made_once_per_table_and_pick_and_follow_the_rotation() {
        let t = table(
            &[],
            &[mapping("d", &["n1", "n2", "n3"])],
            &[("n1", Passing), ("n2", Passing), ("n3", Warning)],
        );
        let encoded = std::cell::Cell::new(0);
        let answer = |t: &Table| {
            let encode = |route: &ReadRoute, i: usize| {
                encoded.set(encoded.get() + 1);
                Bytes::from(route.candidates[i].node_id.clone())
            };
            t.pick_encoded(&id("d"), encode).expect("answer")
        };
        let picks: Vec<Bytes> = (0..4).map(|_| answer(&t)).collect();
        assert_eq!(picks, ["n1", "n2", "n1", "n2"]);
        assert_eq!(encoded.get(), 2, "one encoding per pick");
        assert_eq!(picks[0].as_ptr(), picks[2].as_ptr(), "shared, not copied");

        // A new table encodes anew, from its own routes; the rotation goes on.
        let t = t.with_freshness(Freshness::default());
        assert_eq!(answer(&t), "n1");
        assert_eq!(encoded.get(), 3);
        let t = table(
            &[],
            &[mapping("d", &["n1", "n2", "n3"])],
            &[("n1", Critical), ("n2", Warning), ("n3", Passing)],
        );
        assert_eq!([answer(&t), answer(&t)], ["n3", "n3"]);

        // A refusal is not encoded.
        let refused = t.pick_encoded(&id("x"), |_, _| unreachable!("encoded a refusal"));
        assert_eq!(refused, Err(RouteError::NotFound { data_id: id("x") }));
    }

    #[test]
    fn rotation_survives_a_rebuild() {
        let t = table(
            &[],
            &[mapping("d", &["n1", "n2"])],
            &[("n1", Passing), ("n2", Passing)],
        );
        assert_eq!(t.route(&id("d")).expect("route").chosen.node_id, "n1");
        let t = t.with_freshness(Freshness::default());
        assert_eq!(t.route(&id("d")).expect("route").chosen.node_id, "n2");
    }

    #[test]
    fn errors_name_the_data_id_and_each_node() {
        let t = table(
            &["n1", "n2"],
            &[mapping("d", &["n1", "n2", "n3"])],
            &[("n1", Critical), ("n3", Passing)],
        );
        assert_eq!(
            t.route(&id("x")),
            Err(RouteError::NotFound { data_id: id("x") })
        );
        let err = t.route(&id("d")).expect_err("none usable");
        assert_eq!(
            err,
            RouteError::NoHealthyNode {
                data_id: id("d"),
                nodes: vec![
                    (node("n1"), Unusable::Critical),
                    (node("n2"), Unusable::NotRegistered),
                    (node("n3"), Unusable::NotAllowed),
                ],
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains("n1 critical") && msg.contains("n3 not in gateway.allowed_nodes"),
            "{msg}"
        );
        let err = t.primary(&id("d")).expect_err("primary critical");
        assert!(err.to_string().contains("primary node n1"), "{err}");
        assert!(!t.serves(&id("d"), "n3"));
        assert!(!t.serves(&id("d"), "n1"));
    }

    #[test]
    fn primary_is_the_first_node_and_warning_is_usable_for_writes() {
        let t = table(
            &[],
            &[mapping("d", &["n2", "n1"])],
            &[("n1", Passing), ("n2", Warning)],
        );
        assert_eq!(t.primary(&id("d")).expect("usable").node_id, "n2");
        assert!(t.serves(&id("d"), "n2"));
        assert!(!t.serves(&id("d"), "n9"), "not in the mapping");
    }

    #[test]
    fn nodes_list_registered_and_mapped_ones_with_their_data_ids_and_since() {
        let t = table(
            &[],
            &[mapping("a", &["n1", "n2"]), mapping("b", &["n2"])],
            &[("n1", Passing), ("n9", Critical)],
        );
        let nodes = t.nodes();
        let by_id: BTreeMap<&str, &NodeState> =
            nodes.iter().map(|n| (n.node_id.as_str(), n)).collect();
        assert_eq!(by_id.len(), 3);
        assert_eq!(by_id["n1"].data_ids, [id("a")]);
        assert_eq!(by_id["n2"].status, NodeStatus::Gone);
        assert_eq!(by_id["n2"].data_ids, [id("a"), id("b")]);
        assert_eq!(by_id["n2"].since, None);
        assert_eq!(by_id["n9"].status, Critical);
        assert_eq!(by_id["n1"].since, Some(SystemTime::UNIX_EPOCH));

        // n1 leaves Consul: it stays listed as gone with its last address while mapped.
        let later = SystemTime::UNIX_EPOCH + Duration::from_secs(5);
        let h = health(&[("n9", Critical)]);
        let changes: Vec<HealthTransition> = ec_discovery::transitions(&t.health, &h, later);
        let t = t.with_health(&h, &changes);
        let n1 = t
            .nodes()
            .into_iter()
            .find(|n| n.node_id == "n1")
            .expect("n1");
        assert_eq!(
            (n1.status, n1.since, n1.address.as_str()),
            (NodeStatus::Gone, Some(later), "n1:1")
        );
    }

    #[test]
    fn mappings_report_nodes_outside_the_allow_list() {
        let t = table(
            &["n1"],
            &[mapping("a", &["n1", "n2"])],
            &[("n1", Passing), ("n2", Passing)],
        );
        let (views, problems) = t.mappings();
        assert_eq!(ids(&views[0].nodes), ["n1", "n2"]);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].reason.contains("n2"), "{:?}", problems[0]);
        assert_eq!(ids(&t.route(&id("a")).expect("route").candidates), ["n1"]);
    }

    #[test]
    fn staleness_is_zero_while_reachable() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let mut f = Freshness {
            consul_reachable: true,
            last_contact: Some(SystemTime::UNIX_EPOCH),
            last_error: None,
        };
        assert_eq!(f.staleness(now), Some(Duration::ZERO));
        f.consul_reachable = false;
        assert_eq!(f.staleness(now), Some(Duration::from_secs(100)));
        f.last_contact = None;
        assert_eq!(f.staleness(now), None);
    }
}
