//! Follows the mappings in Consul (one blocking-query watch) and runs one task per data ID
//! this node is named in or holds, telling each what it is now: primary, replica, holder of a
//! data ID mapped elsewhere, or holder of a data ID whose mapping was deleted.
//!
//! Invariants:
//! - At most one task per data ID, so claiming, following, truncating and fencing a data ID
//!   never race with each other; a task finishes what it does (a term ends by fencing the
//!   stream, a session's copies are either committed or refused) before it takes on the
//!   next role.
//! - Nothing happens before the first mappings snapshot: until then, streams that were under
//!   a mapping stay closed to publishes (as the log opened them) and new data IDs are
//!   standalone.
//! - A data ID that is mapped, but not to this node, is fenced here as soon as this node
//!   holds it (also one created by a standalone publish racing the mapping): the mapping
//!   decides who takes writes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ec_core::{DataId, NodeId};
use ec_discovery::{EpochStore, Mapping, MappingStore, watch_health, watch_mappings};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::{Replication, ReplicationSettings, Role, follower, leader};
use crate::SERVICE_NAME;
use crate::auth::ClusterCredential;
use crate::log::{EventLog, WriteAccess};

/// How long Consul may hold each blocking query of the watches.
const WATCH_WAIT: Duration = Duration::from_secs(30);
/// How often the held data IDs are checked against the last snapshot (a standalone publish
/// may have created one that is mapped elsewhere).
const RESCAN: Duration = Duration::from_secs(1);
/// Pause before a task tries its role again after it could not start it.
const RETRY: Duration = Duration::from_secs(1);

/// What the mapping makes this node for one data ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Assignment {
    Primary(Mapping),
    Replica(Mapping),
    /// Held here, mapped to other nodes only.
    NotMember(Mapping),
    /// Held here, under a mapping once, mapped no more.
    Unmapped,
}

impl Assignment {
    fn same_kind(&self, other: &Assignment) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

struct Task {
    assignment: watch::Sender<Assignment>,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

/// Starts replication: the mappings and health watches and the coordinator, in `tasks`.
/// Everything stops when `stop` is cancelled.
// Each argument is a distinct piece the coordinator owns from here on; a struct holding them
// would only be built to be taken apart again.
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn(
    me: NodeId,
    log: EventLog,
    store: MappingStore,
    settings: ReplicationSettings,
    client_tls: Option<tonic::transport::ClientTlsConfig>,
    cluster: ClusterCredential,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> Arc<Replication> {
    let consul = store.client().clone();
    let mapping_store = store.clone();
    let mappings = watch_mappings(store, WATCH_WAIT, stop.clone());
    let health = watch_health(consul.clone(), SERVICE_NAME, WATCH_WAIT, stop.clone());
    let epochs = EpochStore::new(consul, &settings.kv_prefix);
    let repl = Replication::new(
        me,
        log,
        settings.clone(),
        client_tls,
        mappings.clone(),
        health,
        cluster,
    );
    tasks.spawn(run(
        repl.clone(),
        epochs,
        mapping_store,
        settings,
        mappings,
        stop,
    ));
    repl
}

async fn run(
    repl: Arc<Replication>,
    epochs: EpochStore,
    mapping_store: MappingStore,
    settings: ReplicationSettings,
    mut mappings: watch::Receiver<ec_discovery::Watched<ec_discovery::MappingSnapshot>>,
    stop: CancellationToken,
) {
    let mut tasks: HashMap<DataId, Task> = HashMap::new();
    let mut rescan = tokio::time::interval(RESCAN);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            changed = mappings.changed() => if changed.is_err() { break },
            _ = rescan.tick() => {}
        }
        let Some(snapshot) = mappings.borrow_and_update().value.clone() else {
            continue;
        };
        let mut wanted: HashMap<DataId, Assignment> = HashMap::new();
        for (data_id, m) in &snapshot.mappings {
            if m.primary() == &repl.me {
                wanted.insert(data_id.clone(), Assignment::Primary(m.clone()));
            } else if m.contains(&repl.me) {
                wanted.insert(data_id.clone(), Assignment::Replica(m.clone()));
            }
        }
        for stream in repl.log.list() {
            if wanted.contains_key(&stream.data_id) {
                continue;
            }
            match snapshot.mappings.get(&stream.data_id) {
                Some(m) => {
                    wanted.insert(stream.data_id, Assignment::NotMember(m.clone()));
                }
                None if stream.access != WriteAccess::Open => {
                    wanted.insert(stream.data_id, Assignment::Unmapped);
                }
                None => {}
            }
        }

        tasks.retain(|data_id, task| {
            let keep = wanted.contains_key(data_id);
            if !keep {
                task.stop.cancel();
            }
            keep
        });
        for (data_id, assignment) in wanted {
            match tasks.get(&data_id) {
                Some(task) => {
                    task.assignment.send_if_modified(|current| {
                        let changed = *current != assignment;
                        if changed {
                            debug!(%data_id, ?assignment, "assignment changed");
                            *current = assignment;
                        }
                        changed
                    });
                }
                None => {
                    let (tx, rx) = watch::channel(assignment);
                    let task_stop = stop.child_token();
                    let handle = tokio::spawn(data_id_task(
                        repl.clone(),
                        epochs.clone(),
                        mapping_store.clone(),
                        settings.clone(),
                        data_id.clone(),
                        rx,
                        task_stop.clone(),
                    ));
                    tasks.insert(
                        data_id,
                        Task {
                            assignment: tx,
                            stop: task_stop,
                            handle,
                        },
                    );
                }
            }
        }
    }
    for task in tasks.values() {
        task.stop.cancel();
    }
    for (data_id, task) in tasks {
        if task.handle.await.is_err() {
            warn!(%data_id, "replication task panicked");
        }
    }
}

/// The one task of `data_id`: acts on each assignment in turn.
async fn data_id_task(
    repl: Arc<Replication>,
    epochs: EpochStore,
    mapping_store: MappingStore,
    settings: ReplicationSettings,
    data_id: DataId,
    mut assignment: watch::Receiver<Assignment>,
    stop: CancellationToken,
) {
    loop {
        if stop.is_cancelled() {
            return;
        }
        let current = assignment.borrow_and_update().clone();
        match &current {
            Assignment::Primary(_) => {
                let stores = (&epochs, &mapping_store);
                leader::lead(&repl, stores, &settings, &data_id, &mut assignment, &stop).await;
            }
            Assignment::Replica(_) => {
                follower::follow(&repl, &epochs, &data_id, &mut assignment, &stop).await;
            }
            Assignment::NotMember(m) => {
                fence(&repl, &data_id).await;
                repl.set_view(
                    &data_id,
                    Role::NotMember {
                        primary: m.primary().clone(),
                        mapping_index: m.modify_index,
                    },
                    format!("not in the mapping {}", m.value()),
                );
                wait_change(&mut assignment, &stop).await;
                continue;
            }
            Assignment::Unmapped => {
                fence(&repl, &data_id).await;
                repl.set_view(&data_id, Role::Unmapped, "the mapping was deleted");
                wait_change(&mut assignment, &stop).await;
                continue;
            }
        }
        // The role returned on its own (not because the assignment changed): it could not
        // start; try again after a pause.
        if assignment.borrow().same_kind(&current) && !assignment.has_changed().unwrap_or(true) {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = assignment.changed() => {}
                () = tokio::time::sleep(RETRY) => {}
            }
        }
    }
}

/// Closes `data_id` to publishes on this node, if it holds it.
async fn fence(repl: &Replication, data_id: &DataId) {
    if repl.log.contains(data_id)
        && let Err(e) = repl.log.ensure(data_id, WriteAccess::Closed).await
    {
        warn!(%data_id, error = %e, "cannot fence the stream");
    }
}

async fn wait_change(assignment: &mut watch::Receiver<Assignment>, stop: &CancellationToken) {
    tokio::select! {
        () = stop.cancelled() => {}
        _ = assignment.changed() => {}
    }
}
