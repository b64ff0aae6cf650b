//! `GET /metrics` on the health port, scraped after known traffic: the numbers must match
//! what was sent, on a standalone node and on a replicating pair.

use bytes::Bytes;
use ec_proto::PublishRequest;
use ec_testkit::{ConsulAgent, wait_for};

use crate::replication::{map, wait_in_sync};
use crate::util::*;

/// The value of the sample `series` (name with its labels, as printed) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.split(' ').next()?.parse().ok()
    })
}

/// A standalone node: a replicating one would refuse publishes until it has read the
/// mappings.
fn standalone(consul: &ConsulAgent, dir: &std::path::Path) -> NodeProcess {
    NodeProcess::spawn_env(
        &dir.join("n1"),
        &consul.http_addr().to_string(),
        "n1",
        &[],
        &[("EVENT_CATCHER_NODE_STANDALONE", "true")],
    )
}

/// Asserts that each metric of `expected`, with `labels` (as printed), samples as given in
/// `text` (`None`: the series is absent).
fn assert_samples(text: &str, labels: &str, expected: &[(&str, Option<f64>)]) {
    for (name, value) in expected {
        let series = format!("{name}{labels}");
        assert_eq!(sample(text, &series), *value, "{series} in\n{text}");
    }
}

async fn scrape(node: &NodeProcess) -> String {
    let resp = reqwest::get(format!("http://{}/metrics", node.health_addr))
        .await
        .expect("GET /metrics");
    assert!(resp.status().is_success());
    resp.text().await.expect("body")
}

#[tokio::test]
async fn a_standalone_node_counts_what_it_was_sent() {
    let consul = ConsulAgent::start_dev().await;
    let dir = tempfile::tempdir().expect("dir");
    let node = standalone(&consul, dir.path());
    let mut c = connect(node.grpc_addr).await;
    // 7 events of 10 bytes, in 3 publishes; then a retried producer batch (a duplicate).
    for n in [2, 2, 3] {
        publish(
            &mut c,
            "m",
            (0..n).map(|_| Bytes::from("0123456789")).collect(),
        )
        .await
        .expect("publish");
    }
    for _ in 0..2 {
        c.publish(PublishRequest {
            data_id: "m".into(),
            events: vec![Bytes::from("0123456789")],
            producer_id: 42,
            producer_sequence: 1,
            ..Default::default()
        })
        .await
        .expect("idempotent publish");
    }
    // A refused publish: an empty batch.
    let refused = publish(&mut c, "m", vec![]).await.expect_err("empty batch");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    // Read all 8 events once.
    let log = full_log(&mut c, "m").await.expect("read");
    assert_eq!(log.len(), 8);

    let text = wait_for("the reader is closed in the metrics", DEADLINE, || {
        let node = &node;
        async move {
            let text = scrape(node).await;
            (sample(&text, "ec_node_open_readers") == Some(0.0)).then_some(text)
        }
    })
    .await;
    assert_samples(
        &text,
        "{data_id=\"m\"}",
        &[
            ("ec_node_published_events_total", Some(8.0)),
            ("ec_node_published_bytes_total", Some(80.0)),
            ("ec_node_producer_duplicates_total", Some(1.0)),
            ("ec_node_read_events_total", Some(8.0)),
            ("ec_node_read_bytes_total", Some(80.0)),
            ("ec_node_log_events", Some(8.0)),
            ("ec_node_log_end_offset", Some(8.0)),
            ("ec_node_high_watermark", Some(8.0)),
        ],
    );
    assert_eq!(
        sample(
            &text,
            "ec_node_grpc_errors_total{method=\"Publish\",code=\"InvalidArgument\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "ec_node_publish_duration_seconds_count"),
        Some(5.0)
    );
    let commits = sample(&text, "ec_node_commit_duration_seconds_count").expect("commits");
    assert!(
        (1.0..=4.0).contains(&commits),
        "4 stored publishes in 1..=4 commits: {commits}"
    );
    assert_eq!(sample(&text, "ec_node_commit_batch_events_sum"), Some(8.0));
    assert_eq!(sample(&text, "ec_node_disk_low"), Some(0.0));
}

#[tokio::test]
async fn data_ids_beyond_the_label_cap_add_up_their_sizes_under_other() {
    const CAP: usize = 1000;
    let consul = ConsulAgent::start_dev().await;
    let dir = tempfile::tempdir().expect("dir");
    let node = standalone(&consul, dir.path());
    let mut c = connect(node.grpc_addr).await;
    // One event each for the first CAP data IDs (each gets its label), then 1 and 2 events
    // of 10 bytes for two more, which share `_other`.
    for i in 0..CAP + 2 {
        let events = if i == CAP + 1 { 2 } else { 1 };
        publish(
            &mut c,
            &format!("m{i:04}"),
            (0..events).map(|_| Bytes::from("0123456789")).collect(),
        )
        .await
        .expect("publish");
    }
    let text = scrape(&node).await;
    // m1000's and m1001's sizes add up (the last one's alone would be 2 events); positions
    // do not, so `_other` has none.
    assert_samples(
        &text,
        "{data_id=\"_other\"}",
        &[
            ("ec_node_log_events", Some(3.0)),
            ("ec_node_log_bytes", Some(30.0)),
            ("ec_node_published_events_total", Some(3.0)),
            ("ec_node_high_watermark", None),
            ("ec_node_log_end_offset", None),
            ("ec_node_epoch", None),
        ],
    );
    assert_samples(
        &text,
        "{data_id=\"m0999\"}",
        &[
            ("ec_node_high_watermark", Some(1.0)),
            ("ec_node_log_events", Some(1.0)),
        ],
    );
}

#[tokio::test]
async fn a_primary_reports_its_replicas_and_a_replica_what_it_copied() {
    let consul = ConsulAgent::start_dev().await;
    let dir = tempfile::tempdir().expect("dir");
    let addr = consul.http_addr().to_string();
    let n1 = NodeProcess::spawn(&dir.path().join("n1"), &addr, "n1", &[]);
    let n2 = NodeProcess::spawn(&dir.path().join("n2"), &addr, "n2", &[]);
    let c1 = connect(n1.grpc_addr).await;
    map(&consul, "r", &["n1", "n2"]).await;
    wait_in_sync(&c1, "r", &["n1", "n2"]).await;
    publish_acks(
        &mut c1.clone(),
        "r",
        (0..5).map(|_| Bytes::from("abcd")).collect(),
        "all",
    )
    .await
    .expect("acks=all");

    let d = "{data_id=\"r\"}";
    let primary = wait_for(
        "the primary's metrics show the replica caught up",
        DEADLINE,
        || {
            let n1 = &n1;
            async move {
                let text = scrape(n1).await;
                (sample(
                    &text,
                    "ec_node_replica_lag_events{data_id=\"r\",replica=\"n2\"}",
                ) == Some(0.0)
                    && sample(&text, &format!("ec_node_high_watermark{d}")) == Some(5.0))
                .then_some(text)
            }
        },
    )
    .await;
    assert_eq!(
        sample(&primary, &format!("ec_node_in_sync_replicas{d}")),
        Some(2.0)
    );
    assert!(sample(&primary, &format!("ec_node_epoch{d}")).is_some_and(|e| e >= 1.0));
    let replica = wait_for("the replica counted the copies", DEADLINE, || {
        let n2 = &n2;
        async move {
            let text = scrape(n2).await;
            (sample(&text, &format!("ec_node_replicated_events_total{d}")) == Some(5.0))
                .then_some(text)
        }
    })
    .await;
    assert_eq!(
        sample(&replica, &format!("ec_node_replicated_bytes_total{d}")),
        Some(20.0)
    );
    assert_eq!(
        sample(&replica, &format!("ec_node_published_events_total{d}")),
        None
    );
}
