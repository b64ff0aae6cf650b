//! The SDK's route cache: the gateway's routing table, pushed by `Gateway.WatchRoutes`, so
//! that resolving a data ID (a publisher's primary, a reader's candidates) is a lookup in
//! memory instead of a `GetNodeForData` call.
//!
//! One task per [`GatewayResolver`](crate::GatewayResolver) (shared by its clones, started
//! by the first lookup, ended when the last clone is dropped) follows the watch: the first
//! message is a snapshot, the next ones change single data IDs. When the watch breaks or is
//! refused the cache turns *stale* and the task opens it again after a backoff (up to
//! [`WATCH_BACKOFF`]'s maximum, also against a gateway without `WatchRoutes`, which may be
//! upgraded behind the same address).
//!
//! Rules of a lookup ([`RouteCache::lookup`]; `resolve.rs` acts on its answer):
//! - Fresh and present: the route, answered in memory. The reader's pick is round-robin over
//!   the equally preferred candidates, as `GetNodeForData` picks.
//! - Fresh, present, but no usable node: `UNAVAILABLE` with the gateway's reason, in memory
//!   (retried by readers and publishers as the gateway's answer would be).
//! - Fresh and absent: asked with `GetNodeForData`, whose answer is the authority: the
//!   mapping may be newer than the last push (a client that just created it must not be told
//!   "no mapping"), and a token that may not read the data ID gets `PERMISSION_DENIED`, not
//!   `NOT_FOUND`. So an absent data ID fails exactly as it did before the cache.
//! - Not fresh (starting, or stale): asked with `GetNodeForData`. Only if the gateway cannot
//!   be reached at all is the last route it pushed used (a stale route is better than none;
//!   the node itself refuses a write if it is no longer the primary).
//!
//! Every applied message is announced to [`RouteCache::until_primary_changes`], which a
//! publisher waiting out its backoff uses to retry as soon as the gateway names a new usable
//! primary for its data ID. It compares the pushed primary of that one data ID, so pushes of
//! other data IDs (or a repeat of the same route) wake nobody.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use ec_core::DataId;
use ec_proto::gateway_client::GatewayClient;
use ec_proto::{DataRoute, RouteUpdate, WatchRoutesRequest};
use tonic::Code;
use tonic::transport::Channel;
use tracing::debug;

use crate::backoff::{Backoff, BackoffState};
use crate::channel::ChannelCache;
use crate::resolve::{Candidate, Route, usable_candidates};

/// Waits between attempts to open the watch again: from 100 ms after a break up to 30 s
/// while the gateway refuses it (an older gateway, a token it does not know).
pub(crate) const WATCH_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(30),
    multiplier: 2.0,
    jitter: 0.5,
};

/// Where a [`GatewayResolver`](crate::GatewayResolver)'s routes come from right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteCacheStatus {
    /// No lookup has started the watch yet, or it has delivered no snapshot yet: lookups
    /// ask the gateway.
    Starting,
    /// Kept current by the gateway's `WatchRoutes`: lookups of the data IDs it holds are
    /// answered in memory.
    Fresh {
        /// Data IDs held.
        routes: usize,
        /// The gateway's table generation of the last update.
        version: u64,
    },
    /// The watch broke or was refused: lookups ask the gateway until it is open again.
    Stale {
        /// Why, e.g. the gateway's status.
        reason: String,
    },
}

/// One data ID's route as pushed.
#[derive(Debug)]
struct Entry {
    primary: String,
    /// Usable nodes, in readers' order.
    candidates: Vec<Candidate>,
    /// How many candidates, from the first, are equally preferred (at least 1 when there
    /// are candidates).
    preferred: usize,
    /// Why no node is usable, when none is.
    unavailable: Option<String>,
    /// Round-robin position over the preferred candidates; carried over when the entry is
    /// replaced, so a push does not restart the rotation.
    turn: Arc<AtomicUsize>,
}

impl Entry {
    fn decode(route: DataRoute, turn: Arc<AtomicUsize>) -> Entry {
        let candidates = usable_candidates(route.candidates);
        let preferred = usize::try_from(route.preferred)
            .unwrap_or(usize::MAX)
            .clamp(1, candidates.len().max(1));
        let unavailable = candidates.is_empty().then(|| {
            if route.unavailable.is_empty() {
                format!("no healthy node holds data ID {}", route.data_id)
            } else {
                route.unavailable
            }
        });
        Entry {
            primary: route.primary_node_id,
            candidates,
            preferred,
            unavailable,
            turn,
        }
    }

    /// The route with the next pick of the rotation first.
    fn route(&self) -> Option<Route> {
        let pick = self.turn.fetch_add(1, Ordering::Relaxed) % self.preferred;
        let chosen = self.candidates.get(pick)?.clone();
        Some(Route::ordered(
            chosen,
            self.primary.clone(),
            self.candidates.clone(),
        ))
    }
}

/// What the cache knows of a data ID.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// Fresh: where to read and write it.
    Route(Route),
    /// Fresh: the data ID is mapped but no node can serve it, for this reason.
    Unavailable(String),
    /// Fresh, but not held: ask the gateway.
    Miss,
    /// Not fresh: ask the gateway; the last pushed route, if any, for when it is unreachable.
    Stale(Option<Route>),
}

#[derive(Debug, Default)]
struct State {
    /// Whether `routes` follows a live watch.
    fresh: bool,
    /// Why not, once the watch failed.
    stale_reason: Option<String>,
    routes: HashMap<String, Arc<Entry>>,
    version: u64,
}

/// The routes pushed by one gateway, and the task that follows its watch.
#[derive(Default)]
pub(crate) struct RouteCache {
    state: RwLock<State>,
    /// Told after every applied message, so waiters look at their data ID's route again.
    applied: tokio::sync::watch::Sender<()>,
    started: AtomicBool,
    /// Ends the watch task when the cache is dropped.
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl fmt::Debug for RouteCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteCache")
            .field("status", &self.status())
            .finish()
    }
}

impl Drop for RouteCache {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

impl RouteCache {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts following the watch of the gateway behind `client`, once; needs a Tokio
    /// runtime (without one, nothing starts and every lookup asks the gateway).
    pub(crate) fn start(
        self: &Arc<RouteCache>,
        client: &GatewayClient<Channel>,
        credentials: &ChannelCache,
        address: &str,
    ) {
        if self.started.load(Ordering::Relaxed) || self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let task = runtime.spawn(follow(
            Arc::downgrade(self),
            client.clone(),
            credentials.clone(),
            address.to_owned(),
        ));
        *self.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task.abort_handle());
    }

    /// What the cache says about `data_id` now.
    pub(crate) fn lookup(&self, data_id: &DataId) -> Lookup {
        let state = self.read();
        let entry = state.routes.get(data_id.as_str()).cloned();
        let fresh = state.fresh;
        drop(state);
        match (fresh, entry) {
            (true, None) => Lookup::Miss,
            (true, Some(entry)) => match entry.route() {
                Some(route) => Lookup::Route(route),
                None => Lookup::Unavailable(
                    entry
                        .unavailable
                        .clone()
                        .unwrap_or_else(|| format!("no healthy node holds data ID {data_id}")),
                ),
            },
            (false, entry) => Lookup::Stale(entry.and_then(|e| e.route())),
        }
    }

    /// Applies one message of the watch; changes before the first snapshot are ignored
    /// (they change a picture this cache does not hold).
    fn apply(&self, update: RouteUpdate) {
        let mut state = self.write();
        if !update.snapshot && !state.fresh {
            return;
        }
        let mut previous = if update.snapshot {
            std::mem::take(&mut state.routes)
        } else {
            HashMap::new()
        };
        for route in update.routes {
            let data_id = route.data_id.clone();
            let old = previous
                .remove(&data_id)
                .or_else(|| state.routes.get(&data_id).cloned());
            let turn = old.map(|e| e.turn.clone()).unwrap_or_default();
            state
                .routes
                .insert(data_id, Arc::new(Entry::decode(route, turn)));
        }
        for data_id in update.removed {
            state.routes.remove(&data_id);
        }
        state.version = update.version;
        state.fresh = true;
        state.stale_reason = None;
        drop(state);
        self.applied.send_replace(());
    }

    /// The usable primary of `data_id` as the gateway last pushed it: `None` while the cache
    /// is not fresh, does not hold the data ID, or the pushed primary is not usable.
    pub(crate) fn pushed_primary(&self, data_id: &DataId) -> Option<Candidate> {
        let state = self.read();
        if !state.fresh {
            return None;
        }
        let entry = state.routes.get(data_id.as_str())?;
        entry
            .candidates
            .iter()
            .find(|c| c.node_id == entry.primary)
            .cloned()
    }

    /// Resolves once the gateway pushes a usable primary of `data_id` other than the last
    /// one seen, starting from `seen` (what [`RouteCache::pushed_primary`] said when the
    /// caller last tried). A push that leaves no usable primary wakes nobody (there is
    /// nowhere to go), but it is remembered: the same node named usable again afterwards (it
    /// came back) does wake. Never resolves while the cache is not fresh.
    pub(crate) async fn until_primary_changes(&self, data_id: &DataId, seen: Option<Candidate>) {
        // Subscribed before looking, so a push between the look and the wait is not missed.
        let mut applied = self.applied.subscribe();
        let mut seen = seen;
        loop {
            let now = self.pushed_primary(data_id);
            if now.is_some() && now != seen {
                return;
            }
            seen = now;
            if applied.changed().await.is_err() {
                // Not while `self` is borrowed; kept total all the same.
                return std::future::pending().await;
            }
        }
    }

    /// The watch is gone: lookups ask the gateway until a new snapshot arrives.
    fn mark_stale(&self, reason: String) {
        let mut state = self.write();
        state.fresh = false;
        state.stale_reason = Some(reason);
    }

    /// Where routes come from right now.
    pub(crate) fn status(&self) -> RouteCacheStatus {
        let state = self.read();
        match (&state.stale_reason, state.fresh) {
            (_, true) => RouteCacheStatus::Fresh {
                routes: state.routes.len(),
                version: state.version,
            },
            (Some(reason), false) => RouteCacheStatus::Stale {
                reason: reason.clone(),
            },
            (None, false) => RouteCacheStatus::Starting,
        }
    }
}

/// Follows the gateway's `WatchRoutes` into `cache` until the cache is dropped, opening it
/// again after every break.
async fn follow(
    cache: Weak<RouteCache>,
    mut client: GatewayClient<Channel>,
    credentials: ChannelCache,
    address: String,
) {
    let mut backoff = BackoffState::new(WATCH_BACKOFF);
    loop {
        let mut req = tonic::Request::new(WatchRoutesRequest {});
        credentials.authorize(&mut req);
        let reason = match client.watch_routes(req).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(update)) => {
                            let Some(cache) = cache.upgrade() else {
                                return;
                            };
                            cache.apply(update);
                            backoff.reset();
                        }
                        Ok(None) => break format!("gateway {address} ended WatchRoutes"),
                        Err(status) => {
                            break format!("WatchRoutes on gateway {address} broke: {status}");
                        }
                    }
                }
            }
            Err(status) if status.code() == Code::Unimplemented => format!(
                "gateway {address} has no WatchRoutes (an older gateway); every lookup asks \
                 GetNodeForData"
            ),
            Err(status) => format!("gateway {address} refused WatchRoutes: {status}"),
        };
        let Some(strong) = cache.upgrade() else {
            return;
        };
        debug!(gateway = %address, %reason, "route cache stale; lookups ask the gateway until the watch is back");
        strong.mark_stale(reason);
        drop(strong);
        backoff.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use ec_proto::{HealthStatus, NodeRef};

    use super::*;

    fn id(s: &str) -> DataId {
        DataId::parse(s).expect("valid")
    }

    fn data_route(data_id: &str, primary: &str, candidates: &[&str], preferred: u32) -> DataRoute {
        DataRoute {
            data_id: data_id.into(),
            primary_node_id: primary.into(),
            candidates: candidates
                .iter()
                .map(|n| NodeRef {
                    node_id: (*n).into(),
                    address: format!("{n}:1"),
                    status: HealthStatus::Passing as i32,
                    suspect: false,
                })
                .collect(),
            preferred,
            unavailable: String::new(),
        }
    }

    fn update(snapshot: bool, routes: Vec<DataRoute>, removed: &[&str]) -> RouteUpdate {
        RouteUpdate {
            snapshot,
            routes,
            removed: removed.iter().map(|d| (*d).to_owned()).collect(),
            version: 1,
        }
    }

    fn route_of(cache: &RouteCache, data_id: &str) -> Route {
        match cache.lookup(&id(data_id)) {
            Lookup::Route(r) => r,
            other => panic!("expected a route for {data_id}, got {other:?}"),
        }
    }

    fn ids(route: &Route) -> Vec<&str> {
        route
            .candidates
            .iter()
            .map(|c| c.node_id.as_str())
            .collect()
    }

    #[test]
    fn nothing_is_known_before_the_first_snapshot() {
        let cache = RouteCache::default();
        assert_eq!(cache.status(), RouteCacheStatus::Starting);
        assert!(matches!(cache.lookup(&id("a")), Lookup::Stale(None)));
        cache.apply(update(false, vec![data_route("a", "n1", &["n1"], 1)], &[]));
        assert!(
            matches!(cache.lookup(&id("a")), Lookup::Stale(None)),
            "changes before a snapshot are ignored"
        );
    }

    #[test]
    fn a_snapshot_then_changes_answer_lookups_in_memory() {
        let cache = RouteCache::default();
        cache.apply(update(
            true,
            vec![
                data_route("a", "n1", &["n1", "n2", "n3"], 2),
                data_route("b", "n2", &["n2"], 1),
            ],
            &[],
        ));
        assert_eq!(
            cache.status(),
            RouteCacheStatus::Fresh {
                routes: 2,
                version: 1
            }
        );
        // Round-robin over the two preferred candidates, the pick first, then the others in
        // the gateway's order.
        let picks: Vec<Vec<String>> = (0..3)
            .map(|_| {
                ids(&route_of(&cache, "a"))
                    .into_iter()
                    .map(str::to_owned)
                    .collect()
            })
            .collect();
        assert_eq!(
            picks,
            [["n1", "n2", "n3"], ["n2", "n1", "n3"], ["n1", "n2", "n3"]]
        );
        assert_eq!(route_of(&cache, "a").primary, "n1");
        assert!(matches!(cache.lookup(&id("zzz")), Lookup::Miss));

        // A change of a, b removed: the rotation of a goes on where it was.
        cache.apply(update(
            false,
            vec![data_route("a", "n2", &["n2", "n3"], 2)],
            &["b"],
        ));
        // Four lookups so far: the fifth takes the first preferred candidate, the sixth the
        // second.
        let r = route_of(&cache, "a");
        assert_eq!((ids(&r), r.primary.as_str()), (vec!["n2", "n3"], "n2"));
        assert_eq!(ids(&route_of(&cache, "a")), ["n3", "n2"]);
        assert!(matches!(cache.lookup(&id("b")), Lookup::Miss));

        // A new snapshot replaces everything.
        cache.apply(update(true, vec![data_route("c", "n1", &["n1"], 1)], &[]));
        assert!(matches!(cache.lookup(&id("a")), Lookup::Miss));
        assert_eq!(ids(&route_of(&cache, "c")), ["n1"]);
    }

    #[test]
    fn a_route_without_usable_nodes_is_unavailable_with_the_gateways_reason() {
        let cache = RouteCache::default();
        let mut down = data_route("a", "n1", &[], 0);
        down.unavailable = "no healthy node holds data ID a: n1 critical in Consul".into();
        cache.apply(update(true, vec![down], &[]));
        match cache.lookup(&id("a")) {
            Lookup::Unavailable(reason) => assert!(reason.contains("n1 critical"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn only_a_newly_usable_primary_of_the_data_id_wakes_a_waiter() {
        use futures_util::FutureExt;

        let cache = RouteCache::default();
        cache.apply(update(
            true,
            vec![
                data_route("a", "n1", &["n1", "n2"], 1),
                data_route("b", "n1", &["n1", "n2"], 1),
            ],
            &[],
        ));
        let a = id("a");
        let seen = cache.pushed_primary(&a);
        assert_eq!(seen.as_ref().map(|c| c.node_id.as_str()), Some("n1"));
        let waiter = cache.until_primary_changes(&a, seen);
        tokio::pin!(waiter);
        assert!(
            (&mut waiter).now_or_never().is_none(),
            "nothing changed yet"
        );

        // Another data ID moves, a's route is pushed again unchanged, then a's primary is
        // lost: none of it names a new place to write a.
        for change in [
            data_route("b", "n2", &["n2"], 1),
            data_route("a", "n1", &["n1", "n2"], 1),
            data_route("a", "n1", &["n2"], 1),
        ] {
            cache.apply(update(false, vec![change], &[]));
            assert!((&mut waiter).now_or_never().is_none());
        }
        // A promotion names n2.
        cache.apply(update(false, vec![data_route("a", "n2", &["n2"], 1)], &[]));
        assert_eq!((&mut waiter).now_or_never(), Some(()));
    }

    #[tokio::test]
    async fn the_same_primary_usable_again_wakes_a_waiter_that_saw_it_lost() {
        use futures_util::FutureExt;

        let cache = RouteCache::default();
        cache.apply(update(true, vec![data_route("a", "n1", &["n1"], 1)], &[]));
        let a = id("a");
        let waiter = cache.until_primary_changes(&a, cache.pushed_primary(&a));
        tokio::pin!(waiter);
        cache.apply(update(false, vec![data_route("a", "n1", &[], 0)], &[]));
        assert!(
            (&mut waiter).now_or_never().is_none(),
            "lost: nowhere to go"
        );
        cache.apply(update(false, vec![data_route("a", "n1", &["n1"], 1)], &[]));
        assert_eq!((&mut waiter).now_or_never(), Some(()), "n1 is back");

        // A stale cache names nothing, and a waiter that saw nothing wakes only on a push.
        cache.mark_stale("broke".into());
        assert_eq!(cache.pushed_primary(&a), None);
        let waiter = cache.until_primary_changes(&a, None);
        tokio::pin!(waiter);
        assert!((&mut waiter).now_or_never().is_none());
        cache.apply(update(true, vec![data_route("a", "n1", &["n1"], 1)], &[]));
        assert_eq!((&mut waiter).now_or_never(), Some(()));
    }

    #[test]
    fn a_stale_cache_offers_its_last_route_only_as_a_fallback() {
        let cache = RouteCache::default();
        cache.apply(update(true, vec![data_route("a", "n1", &["n1"], 1)], &[]));
        cache.mark_stale("broke".into());
        assert_eq!(
            cache.status(),
            RouteCacheStatus::Stale {
                reason: "broke".into()
            }
        );
        match cache.lookup(&id("a")) {
            Lookup::Stale(Some(r)) => assert_eq!(r.primary, "n1"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(cache.lookup(&id("b")), Lookup::Stale(None)));
        // A new watch's snapshot makes it fresh again.
        cache.apply(update(true, vec![data_route("b", "n2", &["n2"], 1)], &[]));
        assert!(matches!(cache.lookup(&id("b")), Lookup::Route(_)));
    }
}
