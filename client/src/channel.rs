//! One gRPC [`Channel`] per node address, shared by every stream and publish of a client.
//!
//! tonic multiplexes any number of calls over one HTTP/2 connection and reconnects a channel by
//! itself after the connection drops, so a cache keyed by address is all the connection
//! management the SDK needs: a failover to a node seen before reuses its channel, and a node
//! that died and came back is reconnected on the next call.
//!
//! Channels are built lazily (no I/O until the first call) with HTTP/2 keepalive, so a peer
//! that vanished without closing its socket (a cut cable, a frozen VM) is noticed within
//! `keepalive_interval + keepalive_timeout` instead of never, and with a connect timeout so a
//! black-holed address fails fast enough to move on to the next candidate.
//!
//! A server whose threads each run a runtime of their own (the gateway) keeps one channel
//! per address and per thread ([`ChannelSettings::per_thread`]): a channel's connection is a
//! task on the runtime that created it, so a call on another thread would wake that
//! runtime's thread for every message it receives.
//!
//! The cache only grows on its own; a process that outlives the nodes it talks to drops
//! the channels of departed nodes with [`ChannelCache::retain`] (the gateway does so on
//! every routing-table change).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::error::ClientError;

/// How channels are configured.
#[derive(Debug, Clone)]
pub struct ChannelSettings {
    /// Longest wait for a TCP connection to a node or the gateway.
    pub connect_timeout: Duration,
    /// How often an HTTP/2 PING is sent on a connection, idle or not.
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection counts as dead.
    pub keepalive_timeout: Duration,
    /// HTTP/2 flow-control window of one stream: large enough for a full 1 MiB batch, so
    /// a replay is not throttled by window updates.
    pub stream_window: u32,
    /// HTTP/2 flow-control window of a whole connection.
    pub connection_window: u32,
    /// Largest HTTP/2 frame the server may send: a 1 MiB batch then crosses as one or a
    /// few DATA frames instead of 64 frames of the 16 KiB default.
    pub max_frame: u32,
    /// TLS of every channel (addresses without a scheme are dialed as `https://`); `None`:
    /// plaintext.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// One channel per address and per thread, for a server whose threads each run a
    /// single-threaded runtime: a call then reads from a connection driven on its own
    /// thread. `false`: one channel per address.
    pub per_thread: bool,
}

impl Default for ChannelSettings {
    fn default() -> Self {
        ChannelSettings {
            connect_timeout: Duration::from_secs(2),
            keepalive_interval: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(5),
            stream_window: 2 << 20,
            connection_window: 8 << 20,
            max_frame: 1 << 20,
            tls: None,
            per_thread: false,
        }
    }
}

/// Channels by address (`host:port`); cheap to clone, shared between clones.
#[derive(Debug, Clone, Default)]
pub struct ChannelCache {
    settings: Arc<ChannelSettings>,
    /// `authorization: Bearer <token>` sent with every call of this client (never printed:
    /// tonic's metadata value hides sensitive values in `Debug`).
    authorization: Option<MetadataValue<Ascii>>,
    // A std mutex: held only to look up or insert, never across an await.
    channels: Arc<Mutex<HashMap<Option<ThreadId>, ByAddress>>>,
}

/// One thread's channels (`None`: every thread's, unless per thread), by address.
type ByAddress = HashMap<String, Channel>;

impl ChannelCache {
    /// An empty cache whose channels use `settings`.
    pub fn new(settings: ChannelSettings) -> ChannelCache {
        ChannelCache {
            settings: Arc::new(settings),
            authorization: None,
            channels: Arc::default(),
        }
    }

    /// This cache presenting `token` as `authorization: Bearer <token>` on every call made
    /// through the SDK (config `client.token`, `EVENT_CATCHER_CLIENT_TOKEN`, `--token`).
    pub fn with_token(mut self, token: &str) -> Result<ChannelCache, ClientError> {
        let mut value =
            MetadataValue::try_from(format!("Bearer {}", token.trim())).map_err(|_| {
                ClientError::InvalidAddress {
                    address: "client.token".into(),
                    reason: "the token must be printable ASCII without line breaks".into(),
                }
            })?;
        value.set_sensitive(true);
        self.authorization = Some(value);
        Ok(self)
    }

    /// Adds this client's credential (if any) to `req`.
    pub fn authorize<T>(&self, req: &mut tonic::Request<T>) {
        if let Some(v) = &self.authorization {
            req.metadata_mut().insert("authorization", v.clone());
        }
    }

    /// The channel to `address` (`host:port`, or a full `http://host:port` URI), created on
    /// first use. No connection is made until a call is sent on it.
    pub fn get(&self, address: &str) -> Result<Channel, ClientError> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let channels = channels.entry(self.cache_key()).or_default();
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let channel = self.endpoint(address)?.connect_lazy();
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }

    /// The channel to `address`, connected now: fails if `address` cannot be reached within
    /// the connect timeout. The channel joins the cache, so later calls to the same address
    /// through [`ChannelCache::get`] share its connection; if the cache already held one, that
    /// one is kept and returned (this connection, made only to check, is closed).
    pub async fn connect(&self, address: &str) -> Result<Channel, ClientError> {
        let connected = self
            .endpoint(address)?
            .connect()
            .await
            .map_err(|transport| ClientError::Connect {
                address: address.to_owned(),
                transport,
            })?;
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(channels
            .entry(self.cache_key())
            .or_default()
            .entry(address.to_owned())
            .or_insert(connected)
            .clone())
    }

    /// Whose channels a call on this thread uses: this thread's when per thread, else
    /// everyone's (`None`).
    fn cache_key(&self) -> Option<ThreadId> {
        self.settings
            .per_thread
            .then(|| std::thread::current().id())
    }

    /// Drops the channels to every address for which `keep` is false, so that a long-running
    /// process (the gateway) does not hold a channel, and its reconnect attempts, for each
    /// node that ever existed. Calls already made on a dropped channel go on: tonic closes
    /// the connection when the last clone is gone. Returns how many were dropped.
    pub fn retain(&self, mut keep: impl FnMut(&str) -> bool) -> usize {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut dropped = 0;
        for channels in channels.values_mut() {
            let before = channels.len();
            channels.retain(|address, _| keep(address));
            dropped += before - channels.len();
        }
        dropped
    }

    /// How many channels are cached (over every thread's, when per thread).
    pub fn len(&self) -> usize {
        self.channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .map(HashMap::len)
            .sum()
    }

    /// True when no channel is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A configured endpoint for `address`, for callers that want to connect eagerly.
    pub fn endpoint(&self, address: &str) -> Result<Endpoint, ClientError> {
        let s = &self.settings;
        let uri = match (address.contains("://"), s.tls.is_some()) {
            (true, _) => address.to_owned(),
            (false, true) => format!("https://{address}"),
            (false, false) => format!("http://{address}"),
        };
        let endpoint = Endpoint::from_shared(uri).map_err(|e| ClientError::InvalidAddress {
            address: address.to_owned(),
            reason: e.to_string(),
        })?;
        if endpoint.uri().port_u16().is_none() {
            return Err(ClientError::InvalidAddress {
                address: address.to_owned(),
                reason: "no port".into(),
            });
        }
        let endpoint = match &s.tls {
            Some(tls) => {
                endpoint
                    .tls_config(tls.clone())
                    .map_err(|e| ClientError::InvalidAddress {
                        address: address.to_owned(),
                        reason: format!("TLS settings: {e}"),
                    })?
            }
            None => endpoint,
        };
        Ok(endpoint
            .connect_timeout(s.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(s.keepalive_interval)
            .keep_alive_timeout(s.keepalive_timeout)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(s.stream_window)
            .initial_connection_window_size(s.connection_window)
            .max_frame_size(s.max_frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_channel_per_address_and_bad_addresses_are_named() {
        let cache = ChannelCache::default();
        cache.get("127.0.0.1:1").expect("valid");
        cache.get("http://127.0.0.1:2").expect("valid");
        assert_eq!(cache.len(), 2);
        cache.get("127.0.0.1:1").expect("cached");
        assert_eq!(cache.len(), 2);

        assert_eq!(cache.retain(|address| address == "127.0.0.1:1"), 1);
        assert_eq!(cache.len(), 1);
        cache.get("127.0.0.1:1").expect("still cached");
        assert_eq!(cache.len(), 1);

        for bad in ["127.0.0.1", "not an address:1"] {
            let err = cache.get(bad).expect_err(bad).to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[tokio::test]
    async fn a_per_thread_cache_keeps_one_channel_per_address_and_thread() {
        // A blocking-pool thread is another thread inside the same runtime.
        async fn cached_after_a_call_from_another_thread(cache: ChannelCache) -> usize {
            cache.get("127.0.0.1:1").expect("valid");
            cache.get("127.0.0.1:1").expect("cached");
            let other = cache.clone();
            tokio::task::spawn_blocking(move || other.get("127.0.0.1:1").map(drop))
                .await
                .expect("joined")
                .expect("valid");
            cache.len()
        }
        assert_eq!(
            cached_after_a_call_from_another_thread(ChannelCache::default()).await,
            1
        );
        let per_thread = ChannelCache::new(ChannelSettings {
            per_thread: true,
            ..ChannelSettings::default()
        });
        assert_eq!(
            cached_after_a_call_from_another_thread(per_thread.clone()).await,
            2
        );
        assert_eq!(
            per_thread.retain(|_| false),
            2,
            "departed nodes leave every thread"
        );
        assert!(per_thread.is_empty());
    }
}
