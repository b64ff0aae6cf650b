//! Consul sessions and the one lock built on them: at most one holder among many processes
//! (e.g. the gateway that may promote replicas), handed over when the holder stops or dies.
//!
//! - [`ConsulClient::session_create`] / [`ConsulClient::session_renew`] /
//!   [`ConsulClient::session_destroy`]: sessions with a TTL and `release` behaviour, not tied
//!   to any health check of the agent's node (a process that stops renewing loses the lock
//!   after the TTL — Consul may take up to twice the TTL to notice).
//! - [`ConsulClient::lock_acquire`] / [`ConsulClient::lock_release`]: acquire and release a key
//!   through `/v1/txn` (`lock` / `unlock` verbs), so the answer says plainly whether *this*
//!   session holds it.
//! - [`hold_lock`]: a task that keeps trying to hold a key, renews while it does, and says on a
//!   `watch` channel whether it holds it right now.
//!
//! Invariants of [`hold_lock`]:
//! - `held` is `true` only between a successful acquisition and the first sign of losing it:
//!   a failed or refused renewal, or the key showing another session (or none). It turns
//!   `false` *before* the lock could have been taken by someone else: renewals come every
//!   TTL/3, and Consul never expires a session before its TTL.
//! - A session is created with a short lock delay, so a successor can take over soon after
//!   the holder's session ends; the holder releases and destroys its session on shutdown.
//! - Errors are retried with backoff until `shutdown`; nothing here panics on Consul's answers.

use std::time::Duration;

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::blocking::{QueryOptions, next_index};
use crate::client::{ConsulClient, PLAIN_TIMEOUT, encode_key, encode_segment};
use crate::error::DiscoveryError;
use crate::wire::go_duration;

/// The wire form of `/v1/session/create`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CreateSession<'a> {
    name: &'a str,
    #[serde(rename = "TTL")]
    ttl: String,
    lock_delay: String,
    behavior: &'static str,
    /// No node checks: the session lives by its TTL alone, so a healthy process on a node
    /// whose other checks fail keeps it, and a hung one loses it.
    #[serde(rename = "NodeChecks")]
    node_checks: Vec<String>,
    #[serde(rename = "Checks")]
    checks: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Created {
    #[serde(rename = "ID")]
    id: String,
}

#[derive(Serialize)]
struct TxnOp<'a> {
    #[serde(rename = "KV")]
    kv: TxnKv<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TxnKv<'a> {
    verb: &'static str,
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    session: &'a str,
}

impl ConsulClient {
    /// Creates a session named `name` that expires unless renewed within `ttl` (Consul
    /// accepts 10 s to 24 h) and releases its locks when it ends; `lock_delay` is how long a
    /// released lock stays unavailable to others. Returns its ID.
    ///
    /// A freshly started agent answers 500 "Missing node registration" until it has synced
    /// its own node into the catalog; [`hold_lock`] retries, a direct caller should too.
    pub async fn session_create(
        &self,
        name: &str,
        ttl: Duration,
        lock_delay: Duration,
    ) -> Result<String, DiscoveryError> {
        let body = CreateSession {
            name,
            ttl: go_duration(ttl),
            lock_delay: go_duration(lock_delay),
            behavior: "release",
            node_checks: Vec::new(),
            checks: Vec::new(),
        };
        let url = format!("{}/v1/session/create", self.base_url());
        let body =
            serde_json::to_vec(&body).map_err(|source| DiscoveryError::Decode { url, source })?;
        let answer = self
            .send(
                Method::PUT,
                "/v1/session/create",
                &[],
                Some(body),
                PLAIN_TIMEOUT,
            )
            .await?
            .success()?;
        Ok(answer.json::<Created>()?.id)
    }

    /// Renews session `id`; `false` when Consul no longer knows it (expired or destroyed).
    pub async fn session_renew(&self, id: &str) -> Result<bool, DiscoveryError> {
        let path = format!("/v1/session/renew/{}", encode_segment(id)?);
        let answer = self
            .send(Method::PUT, &path, &[], None, PLAIN_TIMEOUT)
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        answer.success()?;
        Ok(true)
    }

    /// Destroys session `id`, releasing its locks (destroying an unknown session succeeds).
    pub async fn session_destroy(&self, id: &str) -> Result<(), DiscoveryError> {
        let path = format!("/v1/session/destroy/{}", encode_segment(id)?);
        self.send(Method::PUT, &path, &[], None, PLAIN_TIMEOUT)
            .await?
            .success()?;
        Ok(())
    }

    /// Takes the lock on `key` for session `session`, storing `value`; `true` if this session
    /// holds it now (also when it already did), `false` if another session holds it, or the
    /// lock delay of a released lock has not passed, or the session is gone.
    pub async fn lock_acquire(
        &self,
        key: &str,
        value: &[u8],
        session: &str,
    ) -> Result<bool, DiscoveryError> {
        let value = base64::engine::general_purpose::STANDARD.encode(value);
        self.txn_lock("lock", key, Some(value), session).await
    }

    /// Releases the lock on `key` if `session` holds it; `true` if it did.
    pub async fn lock_release(&self, key: &str, session: &str) -> Result<bool, DiscoveryError> {
        self.txn_lock("unlock", key, None, session).await
    }

    async fn txn_lock(
        &self,
        verb: &'static str,
        key: &str,
        value: Option<String>,
        session: &str,
    ) -> Result<bool, DiscoveryError> {
        // Validated as for a URL, though the key travels in the body.
        encode_key(key, false)?;
        let op = TxnOp {
            kv: TxnKv {
                verb,
                key,
                value,
                session,
            },
        };
        let url = format!("{}/v1/txn", self.base_url());
        let body =
            serde_json::to_vec(&[op]).map_err(|source| DiscoveryError::Decode { url, source })?;
        let answer = self
            .send(Method::PUT, "/v1/txn", &[], Some(body), PLAIN_TIMEOUT)
            .await?;
        match answer.status {
            StatusCode::OK => Ok(true),
            // 409: the operation failed (held by another session, lock delay, no session).
            StatusCode::CONFLICT => Ok(false),
            _ => Err(answer.into_status_error()),
        }
    }

    /// The session holding `key`, if any, with the key's index for a blocking re-read
    /// (`None` for the session also when the key does not exist).
    async fn lock_holder(
        &self,
        key: &str,
        q: &QueryOptions,
    ) -> Result<(Option<String>, u64), DiscoveryError> {
        let listed = self.kv_list(key, q).await?;
        let holder = listed
            .value
            .into_iter()
            .find(|p| p.key == key)
            .and_then(|p| p.session);
        Ok((holder, listed.index))
    }
}

/// How [`hold_lock`] holds its lock.
#[derive(Debug, Clone)]
pub struct LockOptions {
    /// The KV key locked.
    pub key: String,
    /// Stored in the key while held, and the session's name: who holds it, for operators.
    pub holder: String,
    /// Session TTL (at least 10 s, Consul's minimum); renewed every third of it.
    pub ttl: Duration,
    /// How long a released lock stays unavailable (Consul's default is 15 s).
    pub lock_delay: Duration,
    /// How long a contender's blocking query on the key may wait.
    pub wait: Duration,
}

impl LockOptions {
    /// A lock on `key` held by `holder`: TTL 10 s, lock delay 1 s, 30 s waits.
    pub fn new(key: impl Into<String>, holder: impl Into<String>) -> LockOptions {
        LockOptions {
            key: key.into(),
            holder: holder.into(),
            ttl: Duration::from_secs(10),
            lock_delay: Duration::from_secs(1),
            wait: Duration::from_secs(30),
        }
    }
}

/// Keeps trying to hold the lock `opts.key` until `shutdown`; the receiver says whether this
/// process holds it right now (see the module docs). Must be called inside a Tokio runtime.
pub fn hold_lock(
    client: ConsulClient,
    opts: LockOptions,
    shutdown: CancellationToken,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut session: Option<String> = None;
        loop {
            let result = tokio::select! {
                () = shutdown.cancelled() => break,
                r = lock_round(&client, &opts, &mut session, &tx, &shutdown) => r,
            };
            tx.send_replace(false);
            if let Err(e) = result {
                warn!(key = %opts.key, error = %e, "lock: Consul failed; retrying");
                // The session may be gone with the error; start again with a new one.
                session = None;
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            } else {
                backoff.reset();
            }
        }
        tx.send_replace(false);
        if let Some(id) = session {
            // Best effort: releasing lets a successor take over without waiting for the TTL.
            let _ = client.lock_release(&opts.key, &id).await;
            let _ = client.session_destroy(&id).await;
            info!(key = %opts.key, "lock released");
        }
    });
    rx
}

/// One attempt: make sure there is a session, take the lock or wait for it, hold it while
/// renewals succeed. Returns `Ok` when the lock was lost (or never taken) in an orderly way.
async fn lock_round(
    client: &ConsulClient,
    opts: &LockOptions,
    session: &mut Option<String>,
    held: &watch::Sender<bool>,
    shutdown: &CancellationToken,
) -> Result<(), DiscoveryError> {
    let id = match session {
        Some(id) => id.clone(),
        None => {
            let id = client
                .session_create(&opts.holder, opts.ttl, opts.lock_delay)
                .await?;
            *session = Some(id.clone());
            id
        }
    };
    if !client
        .lock_acquire(&opts.key, opts.holder.as_bytes(), &id)
        .await?
    {
        // Someone else holds it (or the lock delay runs): wait until the key changes, but
        // keep our session alive meanwhile.
        if !client.session_renew(&id).await? {
            *session = None;
            return Ok(());
        }
        let (_, index) = client.lock_holder(&opts.key, &QueryOptions::now()).await?;
        let wait = opts.wait.min(opts.ttl / 3).max(Duration::from_secs(1));
        let q = QueryOptions::blocking(next_index(0, index), wait);
        let _ = client.lock_holder(&opts.key, &q).await?;
        // A short pause so a lock delay in force is not hammered.
        tokio::time::sleep(Duration::from_millis(50)).await;
        return Ok(());
    }
    info!(key = %opts.key, holder = %opts.holder, "lock acquired");
    held.send_replace(true);
    let every = (opts.ttl / 3).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(every) => {}
        }
        let renewed = client.session_renew(&id).await;
        let still = match renewed {
            Ok(true) => client
                .lock_holder(&opts.key, &QueryOptions::now())
                .await
                .map(|(holder, _)| holder.as_deref() == Some(id.as_str())),
            Ok(false) => {
                *session = None;
                Ok(false)
            }
            Err(e) => Err(e),
        };
        match still {
            Ok(true) => debug!(key = %opts.key, "lock renewed"),
            Ok(false) => {
                warn!(key = %opts.key, "lock lost: the session ended or another holder took over");
                return Ok(());
            }
            Err(e) => {
                held.send_replace(false);
                return Err(e);
            }
        }
    }
}
