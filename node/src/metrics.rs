//! The node's Prometheus metrics, served as `GET /metrics` on the health port.
//!
//! Counters and histograms are recorded where things happen (publish, read, commit, copy);
//! everything that is state (log sizes, high watermarks, epochs, the in-sync set, replica
//! lag) is read from the log and the replication layer at scrape time, so it can never drift
//! from what `GetStreamInfo` and `GetReplicationStatus` report.
//!
//! Names follow Prometheus conventions: `ec_node_` prefix, base units (`_seconds`, `_bytes`),
//! `_total` for counters. Per-data-ID labels are capped: the first [`MAX_DATA_ID_LABELS`]
//! data IDs seen get their own label value, later ones share `data_id="_other"`, so a node
//! with a million data IDs does not make a million series. Under `_other`, counters and the
//! retained sizes are sums over those data IDs; positions (high watermark, log end, epoch,
//! in-sync set, replica lag) are per data ID only, as a sum of them would mean nothing.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ec_core::DataId;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::log::{CommitStats, EventLog};
use crate::replication::Replication;

/// Most data IDs with a label value of their own.
pub(crate) const MAX_DATA_ID_LABELS: usize = 1000;

/// The label value shared by data IDs beyond the cap.
const OTHER: &str = "_other";

type Labels = Vec<(&'static str, String)>;

/// Everything the node measures. Cheap to clone (all handles are shared).
#[derive(Clone)]
pub(crate) struct NodeMetrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Mutex<Registry>,
    named: Mutex<HashSet<String>>,
    published_events: Family<Labels, Counter>,
    published_bytes: Family<Labels, Counter>,
    read_events: Family<Labels, Counter>,
    read_bytes: Family<Labels, Counter>,
    replicated_events: Family<Labels, Counter>,
    replicated_bytes: Family<Labels, Counter>,
    duplicates: Family<Labels, Counter>,
    grpc_errors: Family<Labels, Counter>,
    publish_seconds: Histogram,
    commit_events: Histogram,
    commit_seconds: Histogram,
    open_readers: Gauge,
    retention_trims: Counter,
    retained_events: Family<Labels, Gauge>,
    retained_bytes: Family<Labels, Gauge>,
    high_watermark: Family<Labels, Gauge>,
    log_end: Family<Labels, Gauge>,
    epoch: Family<Labels, Gauge>,
    in_sync: Family<Labels, Gauge>,
    replica_lag_events: Family<Labels, Gauge>,
    replica_lag_seconds: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    disk_low: Gauge,
}

impl NodeMetrics {
    pub(crate) fn new() -> NodeMetrics {
        let mut registry = Registry::with_prefix("ec_node");
        macro_rules! reg {
            ($name:literal, $help:literal, $metric:expr) => {{
                let m = $metric;
                registry.register($name, $help, m.clone());
                m
            }};
        }
        let inner = Inner {
            published_events: reg!(
                "published_events",
                "Events stored by publishes on this node (duplicates not counted)",
                Family::default()
            ),
            published_bytes: reg!(
                "published_bytes",
                "Payload bytes stored by publishes on this node",
                Family::default()
            ),
            read_events: reg!(
                "read_events",
                "Events delivered to readers",
                Family::default()
            ),
            read_bytes: reg!(
                "read_bytes",
                "Payload bytes delivered to readers",
                Family::default()
            ),
            replicated_events: reg!(
                "replicated_events",
                "Events this node stored as a replica, copied from its primary",
                Family::default()
            ),
            replicated_bytes: reg!(
                "replicated_bytes",
                "Payload bytes this node stored as a replica",
                Family::default()
            ),
            duplicates: reg!(
                "producer_duplicates",
                "Producer batches answered as duplicates instead of being stored again",
                Family::default()
            ),
            grpc_errors: reg!(
                "grpc_errors",
                "RPCs that ended with an error status, by method and code",
                Family::default()
            ),
            publish_seconds: reg!(
                "publish_duration_seconds",
                "Time from a publish's arrival to its acknowledgement",
                Histogram::new(exponential_buckets(50e-6, 2.0, 16))
            ),
            commit_events: reg!(
                "commit_batch_events",
                "Events written per group commit (one write and, under fsync=always, one fsync)",
                Histogram::new(exponential_buckets(1.0, 2.0, 16))
            ),
            commit_seconds: reg!(
                "commit_duration_seconds",
                "Time to write and sync one group commit (the fsync latency under fsync=always)",
                Histogram::new(exponential_buckets(20e-6, 2.0, 16))
            ),
            open_readers: reg!("open_readers", "Read streams open now", Gauge::default()),
            retention_trims: reg!(
                "retention_trims",
                "Times retention trimmed the head of a data ID",
                Counter::default()
            ),
            retained_events: reg!(
                "log_events",
                "Events retained per data ID",
                Family::default()
            ),
            retained_bytes: reg!(
                "log_bytes",
                "Payload bytes retained per data ID",
                Family::default()
            ),
            high_watermark: reg!(
                "high_watermark",
                "Offset below which readers see events (durable on the whole in-sync set)",
                Family::default()
            ),
            log_end: reg!(
                "log_end_offset",
                "Durable end of the log: the next offset to be written",
                Family::default()
            ),
            epoch: reg!(
                "epoch",
                "Leader epoch this node holds or follows per data ID",
                Family::default()
            ),
            in_sync: reg!(
                "in_sync_replicas",
                "Size of the in-sync set, primary included (primary only)",
                Family::default()
            ),
            replica_lag_events: reg!(
                "replica_lag_events",
                "Events a replica is behind its primary's log end (primary only)",
                Family::default()
            ),
            replica_lag_seconds: reg!(
                "replica_lag_seconds",
                "Time since a replica last caught up with the primary's log end (primary only)",
                Family::default()
            ),
            disk_low: reg!(
                "disk_low",
                "1 while publishes are refused for lack of disk space (node.storage.min_free_bytes)",
                Gauge::default()
            ),
            named: Mutex::new(HashSet::new()),
            registry: Mutex::new(registry),
        };
        NodeMetrics {
            inner: Arc::new(inner),
        }
    }

    /// The label set for `data_id`, shared by all data IDs beyond the cap.
    fn data_id(&self, data_id: &DataId) -> Labels {
        let name = data_id.to_string();
        let mut named = lock(&self.inner.named);
        if named.contains(&name) || named.len() < MAX_DATA_ID_LABELS {
            named.insert(name.clone());
            vec![("data_id", name)]
        } else {
            vec![("data_id", OTHER.to_owned())]
        }
    }

    /// A publish of `events` events and `bytes` bytes was stored (`duplicate`: it was not,
    /// being a retry), `took` after it arrived.
    pub(crate) fn published(
        &self,
        data_id: &DataId,
        events: u64,
        bytes: u64,
        duplicate: bool,
        took: Duration,
    ) {
        let labels = self.data_id(data_id);
        if duplicate {
            self.inner.duplicates.get_or_create(&labels).inc();
        } else {
            self.inner
                .published_events
                .get_or_create(&labels)
                .inc_by(events);
            self.inner
                .published_bytes
                .get_or_create(&labels)
                .inc_by(bytes);
        }
        self.inner.publish_seconds.observe(took.as_secs_f64());
    }

    /// Events were delivered to a reader.
    pub(crate) fn read(&self, data_id: &DataId, events: u64, bytes: u64) {
        let labels = self.data_id(data_id);
        self.inner.read_events.get_or_create(&labels).inc_by(events);
        self.inner.read_bytes.get_or_create(&labels).inc_by(bytes);
    }

    /// Events copied from the primary were stored.
    fn replicated(&self, data_id: &DataId, events: u64, bytes: u64) {
        let labels = self.data_id(data_id);
        self.inner
            .replicated_events
            .get_or_create(&labels)
            .inc_by(events);
        self.inner
            .replicated_bytes
            .get_or_create(&labels)
            .inc_by(bytes);
    }

    /// An RPC ended with `code` (not OK).
    pub(crate) fn grpc_error(&self, method: &'static str, code: tonic::Code) {
        let labels = vec![("method", method.to_owned()), ("code", format!("{code:?}"))];
        self.inner.grpc_errors.get_or_create(&labels).inc();
    }

    /// A group commit was written.
    pub(crate) fn committed(&self, c: &CommitStats) {
        self.inner.commit_events.observe(c.events as f64);
        self.inner.commit_seconds.observe(c.took.as_secs_f64());
        for (data_id, events, bytes) in &c.copied {
            self.replicated(data_id, *events, *bytes);
        }
    }

    /// Retention trimmed `n` data IDs.
    pub(crate) fn trimmed(&self, n: usize) {
        self.inner.retention_trims.inc_by(n as u64);
    }

    /// A reader opened; the guard counts it until dropped.
    pub(crate) fn reader(&self) -> ReaderGuard {
        self.inner.open_readers.inc();
        ReaderGuard {
            metrics: self.clone(),
        }
    }

    /// The metrics in Prometheus' text format, with the state gauges read now.
    pub(crate) fn render(&self, log: &EventLog, replication: &Replication) -> String {
        self.refresh(log, replication);
        let mut out = String::new();
        let registry = lock(&self.inner.registry);
        if encode(&mut out, &registry).is_err() {
            // Writing into a String cannot fail; an error here would be a bug in encoding.
            out.clear();
        }
        out
    }

    fn refresh(&self, log: &EventLog, replication: &Replication) {
        let i = &self.inner;
        for family in [
            &i.retained_events,
            &i.retained_bytes,
            &i.high_watermark,
            &i.log_end,
            &i.epoch,
            &i.in_sync,
            &i.replica_lag_events,
        ] {
            family.clear();
        }
        i.replica_lag_seconds.clear();
        for s in log.list() {
            let labels = self.data_id(&s.data_id);
            let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            // Sizes add up under `_other` (a named label gets exactly one data ID's); the
            // positions below do not, so `_other` has none of them.
            i.retained_events
                .get_or_create(&labels)
                .inc_by(clamp(s.events));
            i.retained_bytes
                .get_or_create(&labels)
                .inc_by(clamp(s.bytes));
            if labels[0].1 == OTHER {
                continue;
            }
            let set = |f: &Family<Labels, Gauge>, v: u64| f.get_or_create(&labels).set(clamp(v));
            set(&i.high_watermark, s.high_watermark.0);
            set(&i.log_end, s.next.0);
            let mut epoch = s.last_epoch.0;
            if let Some(term) = replication.term(&s.data_id) {
                epoch = term.epoch.0;
                let (in_sync, replicas) = term.status();
                set(&i.in_sync, in_sync.len() as u64);
                for r in replicas {
                    let mut l = labels.clone();
                    l.push(("replica", r.node.to_string()));
                    let lag = s.next.0.saturating_sub(r.position.unwrap_or(0));
                    i.replica_lag_events
                        .get_or_create(&l)
                        .set(i64::try_from(lag).unwrap_or(i64::MAX));
                    i.replica_lag_seconds
                        .get_or_create(&l)
                        .set(r.caught_up_ago.as_secs_f64());
                }
            }
            set(&i.epoch, epoch);
        }
        i.disk_low.set(i64::from(log.disk_full().is_some()));
    }
}

/// Counts one open reader while alive.
pub(crate) struct ReaderGuard {
    metrics: NodeMetrics,
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        self.metrics.inner.open_readers.dec();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn scrape(m: &NodeMetrics) -> String {
        let mut out = String::new();
        encode(&mut out, &lock(&m.inner.registry)).unwrap();
        out
    }

    fn id(i: usize) -> DataId {
        DataId::parse(&format!("d{i}")).unwrap()
    }

    #[test]
    fn data_ids_beyond_the_cap_share_one_label_and_their_counts_add_up() {
        let m = NodeMetrics::new();
        for i in 0..MAX_DATA_ID_LABELS + 3 {
            m.published(&id(i), 2, 10, false, Duration::ZERO);
        }
        // Counted again, through the handles kept from the first time.
        m.published(&id(0), 1, 5, false, Duration::ZERO);
        m.published(&id(MAX_DATA_ID_LABELS + 1), 1, 5, false, Duration::ZERO);
        let text = scrape(&m);
        assert!(
            text.contains("ec_node_published_events_total{data_id=\"d0\"} 3\n"),
            "{text}"
        );
        let last_named = MAX_DATA_ID_LABELS - 1;
        assert!(text.contains(&format!(
            "ec_node_published_events_total{{data_id=\"d{last_named}\"}} 2\n"
        )));
        assert!(!text.contains(&format!("data_id=\"d{MAX_DATA_ID_LABELS}\"")));
        assert!(
            text.contains("ec_node_published_events_total{data_id=\"_other\"} 7\n"),
            "{text}"
        );
        assert!(text.contains("ec_node_published_bytes_total{data_id=\"_other\"} 35\n"));
    }

    #[test]
    fn a_series_appears_only_once_something_is_counted_in_it() {
        let m = NodeMetrics::new();
        m.read(&id(1), 4, 40);
        let text = scrape(&m);
        assert!(
            text.contains("ec_node_read_events_total{data_id=\"d1\"} 4\n"),
            "{text}"
        );
        assert!(!text.contains("ec_node_published_events_total{"), "{text}");
        m.published(&id(1), 1, 1, true, Duration::ZERO);
        let text = scrape(&m);
        assert!(
            text.contains("ec_node_producer_duplicates_total{data_id=\"d1\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("ec_node_published_events_total{"), "{text}");
    }
}
