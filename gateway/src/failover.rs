//! Automatic failover: when a data ID's primary has been lost (this gateway's probes fail:
//! refused, reset, NOT_SERVING or no answer — see `probe.rs`) or gone from Consul for
//! `failover_after`, promote its most caught-up healthy in-sync replica.
//!
//! A primary that Consul reports critical while this gateway's probes still reach it is not
//! promoted away from (readers avoid it all the same): that is Consul's HTTP check failing
//! on a node that serves (a node whose first check has not run yet, an overloaded health
//! endpoint, maintenance mode), and a promotion would only cost a failover. An operator
//! promotes with `PromoteReplica` if that is what they want.
//!
//! The delay depends on nothing the nodes configure: the probes are the gateway's own, and a
//! node's `node.health_check.interval` (how often *Consul* checks it) plays no part. With the defaults (probe every 200 ms; refused or reset is lost at once,
//! 3 s without an answer is lost; `failover_after` 1 s), a killed primary is replaced about
//! 1.2 s after its death and a frozen one about 4.2 s after it stopped answering.
//!
//! Invariants:
//! - Only the holder of the Consul lock `KvLayout::failover_lock_key` acts, so of
//!   several gateways exactly one promotes; every gateway still watches, so a new holder
//!   acts at once on failures it has already seen long enough. The promotion itself is a
//!   check-and-set that also requires the primary to still be the failed one, so even a lock
//!   hand-over in the middle cannot promote twice for one failure.
//! - The clock starts when *this* gateway first sees the primary unusable in its table, and
//!   stops when the primary is usable again or the mapping names another primary.
//! - A failure that cannot be acted on (no in-sync replica is healthy, Consul refuses) is
//!   logged once and retried every `failover_after`, never in a tight loop.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ec_core::{DataId, NodeId};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::feed::HealthChange;
use crate::promotion::{PromoteError, Promoter, Request};
use crate::routing::{RouteError, RoutingTable, Unusable};

/// How often the table is looked at even if it did not change (time passing is the trigger).
const TICK: Duration = Duration::from_millis(100);

/// A primary this gateway sees unusable.
struct Failing {
    primary: NodeId,
    since: Instant,
    /// When a promotion was last tried for this failure.
    tried: Option<Instant>,
}

/// Runs until `shutdown`: watches the table, and while `lock` says this gateway holds the
/// failover lock, promotes replicas of primaries failing for `failover_after`. Each
/// promotion is sent on `events`.
pub(crate) async fn run(
    promoter: Promoter,
    table: RoutingTable,
    mut lock: watch::Receiver<bool>,
    failover_after: Duration,
    events: broadcast::Sender<HealthChange>,
    shutdown: CancellationToken,
) {
    let mut failing: HashMap<DataId, Failing> = HashMap::new();
    let mut tables = table.subscribe();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_holder = false;
    // The table is scanned only when it changed: a tick only moves the clocks of the
    // failures already known, so an idle gateway's cost does not grow with the table.
    // Whether it changed is the generation's to say, not which branch woke the loop: every
    // branch takes the current table (`borrow_and_update`), so a table published while a
    // tick was handled wakes no `changed()` afterwards, and a scan keyed on that branch
    // missed it: a primary lost in that moment was never failed over.
    let mut scanned: Option<u64> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            r = tables.changed() => if r.is_err() { return },
            r = lock.changed() => if r.is_err() { return },
        }
        let holder = *lock.borrow_and_update();
        if holder != was_holder {
            info!(
                holder,
                "failover lock {}",
                if holder {
                    "acquired: this gateway promotes replicas of failed primaries"
                } else {
                    "not held: another gateway promotes"
                }
            );
            was_holder = holder;
        }
        let current = tables.borrow_and_update().clone();
        if !current.is_loaded() {
            continue;
        }
        let now = Instant::now();
        if scanned != Some(current.generation()) {
            scanned = Some(current.generation());
            // Which primaries are unusable right now.
            let mut seen: HashMap<DataId, NodeId> = HashMap::new();
            let (views, _) = current.mappings();
            for view in views {
                let data_id = view.mapping.data_id.clone();
                if let Err(RouteError::PrimaryUnavailable {
                    primary,
                    why: Unusable::NotRegistered | Unusable::Lost,
                    ..
                }) = current.primary(&data_id)
                {
                    seen.insert(data_id, primary);
                }
            }
            failing.retain(|d, f| seen.get(d) == Some(&f.primary));
            for (data_id, primary) in seen {
                failing.entry(data_id).or_insert_with_key(|data_id| {
                    debug!(%data_id, %primary, holder, "primary unusable; failover clock started");
                    Failing {
                        primary,
                        since: now,
                        tried: None,
                    }
                });
            }
        }
        if !holder {
            continue;
        }
        let due: Vec<(DataId, NodeId)> = failing
            .iter()
            .filter(|(_, f)| {
                now.duration_since(f.since) >= failover_after
                    && f.tried
                        .is_none_or(|t| now.duration_since(t) >= failover_after)
            })
            .map(|(d, f)| (d.clone(), f.primary.clone()))
            .collect();
        for (data_id, primary) in due {
            if let Some(f) = failing.get_mut(&data_id) {
                f.tried = Some(now);
                debug!(%data_id, %primary, failing_ms = now.duration_since(f.since).as_millis() as u64, "promoting a replica");
            }
            let req = Request {
                data_id: data_id.clone(),
                node: None,
                force: false,
                failed_primary: Some(primary.clone()),
            };
            match promoter.promote(req).await {
                Ok(p) => {
                    failing.remove(&data_id);
                    let _ = events.send(HealthChange::promotion(&p, &current));
                }
                Err(PromoteError::PrimaryChanged { .. }) => {
                    failing.remove(&data_id);
                }
                Err(e) => warn!(
                    %data_id,
                    %primary,
                    error = %e,
                    retry_in_secs = failover_after.as_secs_f64(),
                    "the primary is down but no replica can be promoted automatically"
                ),
            }
        }
    }
}
