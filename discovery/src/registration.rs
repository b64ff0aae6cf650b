//! The registration keeper: keeps one service registered with the local Consul agent for as
//! long as the process runs, and deregisters it on graceful shutdown.
//!
//! Invariants:
//! - While not shut down, the task converges to "the agent holds exactly the latest
//!   registration": it registers at start, registers again when the registration changes,
//!   when the agent forgot it (Consul restarted with no state) or holds a different one, and
//!   retries with jittered exponential backoff (250 ms .. 10 s) while Consul is unreachable.
//!   Re-registering an unchanged service is harmless: the agent keeps the check's status.
//! - Shutdown wins over everything, including a request in flight; deregistration is then
//!   attempted once, bounded by [`DEREGISTER_TIMEOUT`], and the task returns.
//! - Every failure is logged at `warn` with the Consul URL and the error; the current state
//!   is also published on a `watch` channel for health endpoints.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::agent::ServiceRegistration;
use crate::backoff::Backoff;
use crate::client::ConsulClient;

/// How often the keeper asks the agent whether it still holds the service, by default.
pub const DEFAULT_RECHECK: Duration = Duration::from_secs(2);
/// First retry delay after a failed registration.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Upper bound on the deregistration at shutdown.
pub const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the keeper stands, for health endpoints and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationState {
    /// Not registered yet: the first attempt is under way.
    Starting,
    /// The agent holds the current registration (as of the last check).
    Registered,
    /// The last attempt failed; the keeper is retrying.
    Retrying {
        /// The last error, as displayed.
        error: String,
    },
    /// Shut down; the service was deregistered (best effort).
    Stopped,
}

/// Spawns the registration keeper (see the module docs).
#[derive(Debug)]
pub struct Registrar;

impl Registrar {
    /// Keeps `reg` registered with the local agent until `shutdown` is cancelled, then
    /// deregisters (best effort, bounded by a few seconds) and returns.
    ///
    /// Registers at start; if Consul is down, logs clearly and retries with jittered
    /// exponential backoff (250 ms .. 10 s). Every `recheck` it asks the agent for the
    /// service and registers again if the agent forgot it. When `reg` changes, registers
    /// the new value (deregistering the old ID first if the ID changed). If the sender of
    /// `reg` is dropped, the last value stays registered.
    pub fn spawn(
        client: ConsulClient,
        reg: watch::Receiver<ServiceRegistration>,
        recheck: Duration,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        Self::spawn_with_state(client, reg, recheck, shutdown).0
    }

    /// Like [`Registrar::spawn`], also returning the keeper's state.
    pub fn spawn_with_state(
        client: ConsulClient,
        reg: watch::Receiver<ServiceRegistration>,
        recheck: Duration,
        shutdown: CancellationToken,
    ) -> (JoinHandle<()>, watch::Receiver<RegistrationState>) {
        let (state_tx, state_rx) = watch::channel(RegistrationState::Starting);
        let keeper = Keeper {
            client,
            updates: reg,
            updates_open: true,
            recheck: recheck.max(Duration::from_millis(10)),
            shutdown,
            state: state_tx,
            backoff: Backoff::new(BACKOFF_MIN, BACKOFF_MAX),
        };
        (tokio::spawn(keeper.run()), state_rx)
    }
}

struct Keeper {
    client: ConsulClient,
    updates: watch::Receiver<ServiceRegistration>,
    /// False once the sender is gone: `changed()` would then return at once forever.
    updates_open: bool,
    recheck: Duration,
    shutdown: CancellationToken,
    state: watch::Sender<RegistrationState>,
    backoff: Backoff,
}

impl Keeper {
    async fn run(mut self) {
        let mut desired = self.updates.borrow_and_update().clone();
        // Whether the agent is believed to hold `desired`.
        let mut in_sync = false;
        let mut ever_registered = false;
        // Set when a mismatch was reported for `desired`, so a field the agent normalises
        // differently cannot produce a warning every `recheck`.
        let mut drift_reported = false;
        loop {
            let delay = if in_sync {
                self.recheck
            } else {
                let result = tokio::select! {
                    biased;
                    _ = self.shutdown.cancelled() => break,
                    r = self.client.register_service(&desired) => r,
                };
                match result {
                    Ok(()) => {
                        if ever_registered {
                            info!(consul = %self.client.base_url(), service_id = %desired.id, "re-registered with Consul");
                        } else {
                            info!(consul = %self.client.base_url(), service_id = %desired.id, service = %desired.name, "registered with Consul");
                        }
                        ever_registered = true;
                        in_sync = true;
                        self.backoff.reset();
                        self.state.send_replace(RegistrationState::Registered);
                        self.recheck
                    }
                    Err(e) => {
                        let retry_in = self.backoff.next_delay();
                        warn!(
                            consul = %self.client.base_url(),
                            service_id = %desired.id,
                            error = %e,
                            retry_in_ms = retry_in.as_millis() as u64,
                            "cannot register with Consul; retrying"
                        );
                        self.state.send_replace(RegistrationState::Retrying {
                            error: e.to_string(),
                        });
                        retry_in
                    }
                }
            };

            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                changed = self.updates.changed(), if self.updates_open => {
                    if changed.is_err() {
                        debug!(service_id = %desired.id, "registration sender dropped; keeping the last registration");
                        self.updates_open = false;
                        continue;
                    }
                    let next = self.updates.borrow_and_update().clone();
                    if next == desired {
                        continue;
                    }
                    if next.id != desired.id && ever_registered {
                        self.deregister(&desired.id).await;
                    }
                    info!(consul = %self.client.base_url(), service_id = %next.id, "registration changed; registering the new one");
                    desired = next;
                    in_sync = false;
                    drift_reported = false;
                    // A change is not a failure: try at once.
                    self.backoff.reset();
                }
                _ = tokio::time::sleep(delay) => {
                    if !in_sync {
                        continue;
                    }
                    let found = tokio::select! {
                        biased;
                        _ = self.shutdown.cancelled() => break,
                        r = self.client.agent_service(&desired.id) => r,
                    };
                    match found {
                        Ok(Some(s)) if s.matches(&desired) => {}
                        Ok(Some(s)) => {
                            if !drift_reported {
                                warn!(consul = %self.client.base_url(), service_id = %desired.id, held = ?s, "the agent holds a different registration; registering ours again");
                                drift_reported = true;
                            }
                            in_sync = false;
                        }
                        Ok(None) => {
                            warn!(consul = %self.client.base_url(), service_id = %desired.id, "the agent forgot the service (Consul restarted?); registering again");
                            in_sync = false;
                        }
                        Err(e) => {
                            // The registration attempt that follows logs the failure.
                            debug!(consul = %self.client.base_url(), error = %e, "cannot check the registration");
                            in_sync = false;
                        }
                    }
                }
            }
        }
        self.deregister(&desired.id).await;
        self.state.send_replace(RegistrationState::Stopped);
    }

    /// Best-effort deregistration, bounded by [`DEREGISTER_TIMEOUT`].
    async fn deregister(&self, service_id: &str) {
        match tokio::time::timeout(
            DEREGISTER_TIMEOUT,
            self.client.deregister_service(service_id),
        )
        .await
        {
            Ok(Ok(())) => {
                info!(consul = %self.client.base_url(), %service_id, "deregistered from Consul")
            }
            Ok(Err(e)) => {
                warn!(consul = %self.client.base_url(), %service_id, error = %e, "cannot deregister from Consul")
            }
            Err(_) => warn!(
                consul = %self.client.base_url(),
                %service_id,
                timeout_ms = DEREGISTER_TIMEOUT.as_millis() as u64,
                "deregistration from Consul timed out"
            ),
        }
    }
}
