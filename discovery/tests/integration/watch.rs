//! The mappings watch against a real agent: edits show up promptly, identical rewrites make
//! no new generation, the last snapshot survives Consul going away and the watch resumes by
//! itself when it returns, and a restarted dev agent that lost every mapping is logged loudly.

use std::time::{Duration, Instant};

use ec_discovery::{MappingSnapshot, Watched, watch_mappings};
use ec_testkit::ConsulAgent;
use tokio_util::sync::CancellationToken;

use crate::mapping::{d, n, store};
use crate::util::{LogCapture, init_logs, watch_until};

/// Long on purpose: a change must wake the blocking query, not the end of a `wait`.
const WAIT: Duration = Duration::from_secs(30);

fn value_of(w: &Watched<MappingSnapshot>, id: &str) -> Option<String> {
    w.value.as_ref()?.mappings.get(&d(id)).map(|m| m.value())
}

#[tokio::test]
async fn edits_show_up_and_identical_rewrites_do_not() {
    init_logs();
    let agent = ConsulAgent::start_dev().await;
    let s = store(&agent);
    let shutdown = CancellationToken::new();
    let mut rx = watch_mappings(s.clone(), WAIT, shutdown.clone());
    let first = watch_until(&mut rx, "the first (empty) snapshot", |w| w.value.is_some()).await;
    assert!(first.reachable && first.last_error.is_none() && first.last_contact.is_some());
    assert_eq!(first.generation, 1);
    assert!(first.value.as_ref().is_some_and(|v| v.mappings.is_empty()));

    let t = Instant::now();
    let m = s.put(&d("a"), &[n("node1")], None).await.expect("put");
    let w = watch_until(&mut rx, "a = node1", |w| {
        w.value.as_ref().and_then(|v| v.mappings.get(&d("a"))) == Some(&m)
    })
    .await;
    eprintln!("a new mapping reached the watch in {:?}", t.elapsed());
    let gen_a = w.generation;

    // An identical rewrite, then a fence: the fence is the only new generation.
    s.put_force(&d("a"), &[n("node1")]).await.expect("rewrite");
    s.put(&d("fence"), &[n("node1")], None)
        .await
        .expect("fence");
    let w = watch_until(&mut rx, "the fence", |w| value_of(w, "fence").is_some()).await;
    assert_eq!(
        w.generation,
        gen_a + 1,
        "the identical rewrite made a generation"
    );

    let t = Instant::now();
    let m = s.add_node(&d("a"), &n("node2")).await.expect("add");
    watch_until(&mut rx, "a = node1,node2", |w| {
        w.value.as_ref().and_then(|v| v.mappings.get(&d("a"))) == Some(&m)
    })
    .await;
    eprintln!("an edited mapping reached the watch in {:?}", t.elapsed());

    s.delete(&d("a"), m.modify_index).await.expect("delete");
    watch_until(&mut rx, "a deleted", |w| {
        w.value.is_some() && value_of(w, "a").is_none()
    })
    .await;
    shutdown.cancel();
}

/// Consul killed: the last snapshot stays, flagged unreachable with the error; Consul back
/// (same data dir, so KV survived): the watch recovers and follows new edits by itself.
#[tokio::test]
async fn keeps_the_last_snapshot_while_consul_is_down_and_resumes() {
    init_logs();
    let mut agent = ConsulAgent::start_server().await;
    let s = store(&agent);
    s.put(&d("a"), &[n("node1"), n("node2")], None)
        .await
        .expect("put");
    let shutdown = CancellationToken::new();
    let mut rx = watch_mappings(s.clone(), WAIT, shutdown.clone());
    let before = watch_until(&mut rx, "a in the watch", |w| value_of(w, "a").is_some()).await;

    agent.kill();
    let down = watch_until(&mut rx, "reachable = false", |w| !w.reachable).await;
    assert_eq!(
        value_of(&down, "a").as_deref(),
        Some("node1,node2"),
        "last snapshot kept"
    );
    assert_eq!(down.generation, before.generation);
    let error = down.last_error.clone().expect("the error is reported");
    assert!(error.contains(&agent.http_url()), "{error}");

    let t = Instant::now();
    agent.restart().await;
    let up = watch_until(&mut rx, "reachable again", |w| w.reachable).await;
    eprintln!(
        "watch reachable {:?} after the restarted agent had a leader",
        t.elapsed()
    );
    assert_eq!(up.last_error, None);
    assert_eq!(
        up.generation, before.generation,
        "same mappings: no new generation"
    );

    s.put(&d("b"), &[n("node3")], None)
        .await
        .expect("put after restart");
    watch_until(&mut rx, "b after the restart", |w| {
        value_of(w, "b").is_some()
    })
    .await;
    shutdown.cancel();
}

/// A `consul agent -dev` keeps KV in memory: restarted, it has lost every mapping. The watch
/// must publish the (empty) truth, say so at `warn`, and follow the new agent, whose index
/// starts again from a small number.
#[tokio::test]
async fn a_dev_agent_that_lost_every_mapping_is_logged_loudly() {
    let logs = LogCapture::default();
    let _guard = logs.install();
    let mut agent = ConsulAgent::start_dev().await;
    let s = store(&agent);
    for id in ["a", "b"] {
        s.put(&d(id), &[n("node1")], None).await.expect("put");
    }
    // Push the old agent's index well above where a fresh agent starts.
    for i in 0..40 {
        let node = if i % 2 == 0 { "node2" } else { "node1" };
        s.put_force(&d("a"), &[n(node)]).await.expect("churn");
    }
    let shutdown = CancellationToken::new();
    let mut rx = watch_mappings(s.clone(), WAIT, shutdown.clone());
    let full = watch_until(&mut rx, "two mappings", |w| {
        w.value.as_ref().is_some_and(|v| v.mappings.len() == 2)
    })
    .await;
    let index_before = full.value.as_ref().map_or(0, |v| v.index);

    agent.restart().await;
    let empty = watch_until(&mut rx, "the empty snapshot of the new agent", |w| {
        w.reachable && w.value.as_ref().is_some_and(|v| v.mappings.is_empty())
    })
    .await;
    assert_eq!(empty.generation, full.generation + 1);
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("ALL MAPPINGS VANISHED"))
        .unwrap_or_else(|| panic!("no loud line in the log:\n{text}"));
    assert!(line.contains("WARN") && line.contains("lost=2"), "{line}");

    let m = s
        .put(&d("c"), &[n("node1")], None)
        .await
        .expect("put on the new agent");
    assert!(
        m.modify_index < index_before,
        "the new agent's index ({}) should start below the old one ({index_before})",
        m.modify_index
    );
    watch_until(&mut rx, "c on the new agent", |w| {
        value_of(w, "c").is_some()
    })
    .await;
    shutdown.cancel();
}
