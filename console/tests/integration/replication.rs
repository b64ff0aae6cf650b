//! The Replication view against real replicating nodes: a replica frozen with SIGSTOP drops
//! out of the in-sync set on screen, its lag grows with what is published meanwhile, and
//! after SIGCONT it catches up and rejoins; a frozen primary leaves its last answer on
//! screen, marked stale, while the view keeps updating.
//!
//! The nodes run with the test replication settings of `ec-testnode` (`max_lag_time` 3 s), so
//! the primary drops the frozen replica within seconds; every wait has the generous
//! [`DEADLINE`] and looks at the screen, never at a clock.

use std::time::Instant;

use ec_testkit::ConsulAgent;
use ec_testnode::Signal;

use crate::util::{
    DEADLINE, NodeProcess, TestGateway, Tmux, connect, console_args, console_binary, data_id,
    node_id, store,
};

/// The table row of `node` in the Replication view (the one with an in-sync cell, so not
/// the node's row in the rates panel below).
fn replica_row<'a>(screen: &'a str, node: &str) -> Option<&'a str> {
    screen
        .lines()
        .find(|l| l.contains(node) && (l.contains("✓ yes") || l.contains("✗ no")))
}

/// The row of the primary of `data_id`.
fn primary_row<'a>(screen: &'a str, data_id: &str) -> Option<&'a str> {
    screen.lines().find(|l| {
        l.trim_start_matches('│')
            .starts_with(&format!("{data_id} "))
    })
}

/// Publishes `n` events to `data_id` on the node at `addr`, retrying until the node takes
/// them (right after the mapping is written it may not hold the epoch yet). The batch has a
/// producer identity, so a retry of one that was stored but refused (acks=all while the
/// in-sync set is still too small) is answered as a duplicate, not stored again.
async fn publish_when_ready(addr: std::net::SocketAddr, data_id: &str, prefix: &str, n: usize) {
    let mut client = connect(addr).await;
    let deadline = Instant::now() + DEADLINE;
    let producer = 1 + prefix
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    loop {
        let req = ec_proto::PublishRequest {
            data_id: data_id.into(),
            events: ec_testnode::payloads(prefix, n),
            producer_id: producer,
            producer_sequence: 1,
            // acks=leader: with the replica frozen, acks=all is refused (min_insync 2), and
            // this test is about what the view shows, not about acknowledgements.
            acks: Some(ec_proto::Acks::Leader as i32),
            ..Default::default()
        };
        match client.publish(req).await {
            Ok(_) => return,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "publishing to {data_id} on {addr} kept failing: {e}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_replica_leaves_the_in_sync_set_on_screen_and_rejoins() {
    let consul = ConsulAgent::start_dev().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = consul.http_url();
    let node1 = NodeProcess::spawn_replicated(&dir.path().join("node1"), &url, "node1");
    let mut node2 = NodeProcess::spawn_replicated(&dir.path().join("node2"), &url, "node2");
    let gateway = TestGateway::start(&url).await;
    store(&consul)
        .put(
            &data_id("orders"),
            &[node_id("node1"), node_id("node2")],
            None,
        )
        .await
        .expect("mapping");
    publish_when_ready(node1.grpc_addr, "orders", "first", 50).await;

    let tmux = Tmux::start(
        &console_binary(),
        &console_args(&consul, &gateway.addr.to_string()),
        120,
        40,
    );
    tmux.wait("orders listed", |s| {
        s.lines()
            .any(|l| l.contains("orders") && l.contains("node1*"))
    })
    .await;
    tmux.keys(&["4"]);
    let screen = tmux
        .wait("node2 in sync with all 50 events", |s| {
            primary_row(s, "orders").is_some_and(|l| l.contains("in-sync node1,node2"))
                && replica_row(s, "node2")
                    .is_some_and(|l| l.contains("✓ yes") && l.contains(" 50 "))
        })
        .await;
    assert!(screen.contains("4 Replication"), "{screen}");

    // Freeze the replica: it stops reporting, and the primary drops it after max_lag_time.
    // Should the test fail while it is frozen, dropping `node2` continues and kills it.
    node2.signal(Signal::SIGSTOP);
    let screen = tmux
        .wait("node2 out of the in-sync set", |s| {
            replica_row(s, "node2").is_some_and(|l| l.contains("✗ no"))
                && primary_row(s, "orders").is_some_and(|l| {
                    l.contains("in-sync node1") && !l.contains("in-sync node1,node2")
                })
        })
        .await;
    assert!(
        primary_row(&screen, "orders").is_some_and(|l| l.contains("✓ yes")),
        "the primary stays in sync:\n{screen}"
    );

    // With node2 out, publishes are acknowledged again, and its lag grows by what it missed.
    publish_when_ready(node1.grpc_addr, "orders", "second", 20).await;
    tmux.wait("node2 lags by the 20 new events", |s| {
        replica_row(s, "node2").is_some_and(|l| l.contains("✗ no") && l.contains(" 20 "))
            && primary_row(s, "orders").is_some_and(|l| l.contains(" 70 "))
    })
    .await;

    // Thawed, it catches up and rejoins.
    node2.signal(Signal::SIGCONT);
    tmux.wait("node2 back in the in-sync set with all 70 events", |s| {
        replica_row(s, "node2").is_some_and(|l| l.contains("✓ yes") && l.contains(" 70 "))
            && primary_row(s, "orders").is_some_and(|l| l.contains("in-sync node1,node2"))
    })
    .await;

    tmux.keys(&["q"]);
    assert_eq!(
        tmux.wait_exit().await,
        (0, false),
        "exit status, still on the alternate screen"
    );
}

/// The `as of HH:MM:SS` of the view's title: when the last round of answers arrived.
fn as_of(screen: &str) -> Option<&str> {
    let at = screen.find("as of ")? + "as of ".len();
    screen.get(at..at + 8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_primary_is_shown_stale_and_the_view_keeps_updating() {
    let consul = ConsulAgent::start_dev().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = consul.http_url();
    let mut node1 = NodeProcess::spawn_replicated(&dir.path().join("node1"), &url, "node1");
    let _node2 = NodeProcess::spawn_replicated(&dir.path().join("node2"), &url, "node2");
    // No automatic promotion: the primary stays frozen and named for as long as it takes.
    let gateway = TestGateway::start_with(&url, |s| s.auto_failover = false).await;
    store(&consul)
        .put(
            &data_id("orders"),
            &[node_id("node1"), node_id("node2")],
            None,
        )
        .await
        .expect("mapping");
    publish_when_ready(node1.grpc_addr, "orders", "first", 30).await;

    let tmux = Tmux::start(
        &console_binary(),
        &console_args(&consul, &gateway.addr.to_string()),
        120,
        40,
    );
    tmux.wait("orders listed", |s| {
        s.lines()
            .any(|l| l.contains("orders") && l.contains("node1*"))
    })
    .await;
    tmux.keys(&["4"]);
    tmux.wait("node1's answer with all 30 events", |s| {
        primary_row(s, "orders").is_some_and(|l| l.contains(" 30 ") && l.contains("in-sync"))
    })
    .await;

    // Should the test fail while it is frozen, dropping `node1` continues and kills it.
    node1.signal(Signal::SIGSTOP);
    let stale = tmux
        .wait("orders marked stale with the reason", |s| {
            primary_row(s, "orders").is_some_and(|l| l.contains("STALE") && l.contains(" 30 "))
                && s.contains("orders: asking node1: no answer from")
        })
        .await;
    // Rounds keep coming: a frozen node costs each round one timeout, not the view.
    let first = as_of(&stale).map(str::to_owned);
    assert!(first.is_some(), "{stale}");
    tmux.wait("a later round while node1 is still frozen", |s| {
        as_of(s).is_some_and(|t| Some(t) != first.as_deref())
            && primary_row(s, "orders").is_some_and(|l| l.contains("STALE"))
    })
    .await;

    node1.signal(Signal::SIGCONT);
    tmux.wait("node1 answers again", |s| {
        primary_row(s, "orders").is_some_and(|l| !l.contains("STALE") && l.contains("in-sync"))
            && !s.contains("asking node1")
    })
    .await;
    tmux.keys(&["q"]);
    assert_eq!(tmux.wait_exit().await, (0, false));
}
