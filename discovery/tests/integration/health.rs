//! The health watch against a real agent: a node whose HTTP check target flips
//! 200 → 429 → 500 shows passing, warning, then critical; deregistered, it disappears; and
//! [`transitions`] between the watched snapshots report each change, `Gone` exactly once.

use std::time::{Duration, SystemTime};

use ec_discovery::{HealthSnapshot, NodeStatus, Watched, transitions, watch_health};
use ec_testkit::ConsulAgent;
use tokio_util::sync::CancellationToken;

use crate::util::{CheckTarget, client, init_logs, registration, watch_until};

const SERVICE: &str = "streaming-node";
const NODE: &str = "node-h1";

fn status(w: &Watched<HealthSnapshot>) -> Option<NodeStatus> {
    w.value.as_ref()?.node(NODE).map(|n| n.status)
}

fn moves(
    prev: &HealthSnapshot,
    next: &HealthSnapshot,
) -> Vec<(String, Option<NodeStatus>, NodeStatus)> {
    transitions(prev, next, SystemTime::now())
        .into_iter()
        .map(|t| (t.node_id, t.from, t.to))
        .collect()
}

#[tokio::test]
async fn health_watch_follows_checks_and_transitions_report_them() {
    init_logs();
    let agent = ConsulAgent::start_dev().await;
    let c = client(&agent);
    let target = CheckTarget::start().await;
    c.register_service(&registration(NODE, SERVICE, &target))
        .await
        .expect("register");

    let shutdown = CancellationToken::new();
    let mut rx = watch_health(
        c.clone(),
        SERVICE,
        Duration::from_secs(30),
        shutdown.clone(),
    );

    let w = watch_until(&mut rx, "passing", |w| {
        status(w) == Some(NodeStatus::Passing)
    })
    .await;
    let passing = w.value.expect("snapshot");
    let node = passing.node(NODE).expect("node").clone();
    assert_eq!(node.address, "127.0.0.1:50052");
    // The service's HTTP check and the Consul node's serfHealth.
    assert_eq!((node.checks_passing, node.checks_total), (2, 2));
    assert_eq!(node.meta.get("data_ids").map(String::as_str), Some("a,b"));
    assert_eq!(
        moves(&HealthSnapshot::default(), &passing),
        [(NODE.to_string(), None, NodeStatus::Passing)]
    );

    target.set_status(429);
    let w = watch_until(&mut rx, "warning", |w| {
        status(w) == Some(NodeStatus::Warning)
    })
    .await;
    let warning = w.value.expect("snapshot");
    assert_eq!(
        moves(&passing, &warning),
        [(
            NODE.to_string(),
            Some(NodeStatus::Passing),
            NodeStatus::Warning
        )]
    );

    target.set_status(500);
    let w = watch_until(&mut rx, "critical", |w| {
        status(w) == Some(NodeStatus::Critical)
    })
    .await;
    let critical = w.value.expect("snapshot");
    assert_eq!(critical.node(NODE).map(|n| n.checks_passing), Some(1));
    assert_eq!(
        moves(&warning, &critical),
        [(
            NODE.to_string(),
            Some(NodeStatus::Warning),
            NodeStatus::Critical
        )]
    );
    assert!(moves(&critical, &critical).is_empty());

    c.deregister_service(NODE).await.expect("deregister");
    let w = watch_until(&mut rx, "the node gone", |w| {
        w.value.as_ref().is_some_and(|v| v.node(NODE).is_none())
    })
    .await;
    let gone = w.value.expect("snapshot");
    let t = transitions(&critical, &gone, SystemTime::now());
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!(
        (
            t[0].node_id.as_str(),
            t[0].from,
            t[0].to,
            t[0].address.as_str()
        ),
        (
            NODE,
            Some(NodeStatus::Critical),
            NodeStatus::Gone,
            "127.0.0.1:50052"
        )
    );
    assert!(moves(&gone, &gone).is_empty(), "Gone is reported once");
    shutdown.cancel();
}
