//! Routing from the table: it follows KV edits and health changes made in Consul, keeps
//! answering while Consul is down (and says so in `GetStatus`), resumes its watches when
//! Consul comes back, and streams health transitions to `WatchHealth`.

use std::time::{Duration, Instant};

use ec_proto::{GetStatusRequest, HealthEvent, HealthStatus, ListNodesRequest, WatchHealthRequest};
use ec_testkit::ConsulAgent;

use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_follows_kv_edits_and_health_changes() {
    let consul = ConsulAgent::start_dev().await;
    let node1 = TestNode::start(&consul.http_url(), "node1").await;
    let node2 = TestNode::start(&consul.http_url(), "node2").await;
    let gateway = TestGateway::start(&consul.http_url(), &[]).await;
    let mut gw = gateway.client().await;
    let s = store(&consul);

    s.put_force(&data_id("d"), &[node_id("node1")])
        .await
        .expect("put");
    let r = wait_route(&gw, "d", "d routed to node1", |r| r.node_id == "node1").await;
    assert_eq!(r.node_address, node1.address());
    assert_eq!(r.primary_node_id, "node1");

    // A KV edit made behind the gateway's back.
    let edited = Instant::now();
    s.put_force(&data_id("d"), &[node_id("node2"), node_id("node1")])
        .await
        .expect("edit");
    wait_route(&gw, "d", "the edit reaches routing", |r| {
        r.primary_node_id == "node2" && candidate_ids(r) == ["node2", "node1"]
    })
    .await;
    println!("KV edit reached routing after {:?}", edited.elapsed());
    assert!(
        edited.elapsed() < Duration::from_secs(5),
        "a KV edit took {:?} to reach routing",
        edited.elapsed()
    );

    // Readers rotate over both healthy nodes.
    let picks: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(get_node(&mut gw, "d").await.expect("route").node_id);
        }
        v
    };
    assert!(
        picks.contains(&"node1".to_owned()) && picks.contains(&"node2".to_owned()),
        "{picks:?}"
    );

    // A health change: node2 goes into maintenance (critical).
    let changed = Instant::now();
    set_maintenance(&consul, "node2", true).await;
    let r = wait_route(&gw, "d", "critical node2 leaves routing", |r| {
        candidate_ids(r) == ["node1"]
    })
    .await;
    println!(
        "health change reached routing after {:?}",
        changed.elapsed()
    );
    assert_eq!(
        (r.node_id.as_str(), r.node_address.as_str()),
        ("node1", node1.address().as_str())
    );
    assert_eq!(r.primary_node_id, "node2", "the primary stays the primary");
    let nodes = gw
        .list_nodes(ListNodesRequest {})
        .await
        .expect("nodes")
        .into_inner()
        .nodes;
    let n2 = nodes
        .iter()
        .find(|n| n.node_id == "node2")
        .expect("node2 listed");
    assert_eq!(n2.status, HealthStatus::Critical as i32);
    assert_eq!(n2.data_ids, ["d"]);
    assert!(n2.since > 0);

    set_maintenance(&consul, "node2", false).await;
    wait_route(&gw, "d", "node2 back in routing", |r| {
        candidate_ids(r) == ["node2", "node1"]
    })
    .await;

    // A graceful stop deregisters node1: gone from routing.
    node1.stop().await.expect("node1 stops");
    wait_route(&gw, "d", "stopped node1 leaves routing", |r| {
        candidate_ids(r) == ["node2"]
    })
    .await;

    gateway.stop().await.expect("clean stop");
    node2.stop().await.expect("node2");
}

async fn status(
    gw: &mut ec_proto::gateway_client::GatewayClient<tonic::transport::Channel>,
) -> ec_proto::GatewayStatus {
    gw.get_status(GetStatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_outage_keeps_routing_and_watches_resume_after_restart() {
    // A one-server agent with a data dir: KV and registrations survive its restart.
    let mut consul = ConsulAgent::start_server().await;
    let node1 = TestNode::start(&consul.http_url(), "node1").await;
    let gateway = TestGateway::start(&consul.http_url(), &[]).await;
    let mut gw = gateway.client().await;
    store(&consul)
        .put_force(&data_id("d"), &[node_id("node1")])
        .await
        .expect("put");
    wait_route(&gw, "d", "d routed", |r| r.node_id == "node1").await;
    let s = status(&mut gw).await;
    assert!(s.consul_reachable && s.last_consul_contact > 0, "{s:?}");
    assert_eq!((s.mappings, s.nodes), (1, 1));

    consul.kill();
    let s = ec_testkit::wait_for("GetStatus reports Consul unreachable", DEADLINE, || {
        let mut gw = gw.clone();
        async move { Some(status(&mut gw).await).filter(|s| !s.consul_reachable) }
    })
    .await;
    assert!(!s.last_error.is_empty(), "{s:?}");
    // Routing keeps answering from the last table, many times, without Consul.
    for _ in 0..50 {
        let r = get_node(&mut gw, "d")
            .await
            .expect("answered from the table");
        assert_eq!(r.node_address, node1.address());
    }
    let s = ec_testkit::wait_for("staleness grows", DEADLINE, || {
        let mut gw = gw.clone();
        async move { Some(status(&mut gw).await).filter(|s| s.staleness_ms > 0) }
    })
    .await;
    assert_eq!(s.mappings, 1, "{s:?}");
    // gRPC health stays SERVING: the gateway is still useful.
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(channel(gateway.addr).await);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("check")
        .into_inner()
        .status;
    assert_eq!(
        serving,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    consul.restart().await;
    ec_testkit::wait_for("GetStatus reports Consul reachable again", DEADLINE, || {
        let mut gw = gw.clone();
        async move { Some(status(&mut gw).await).filter(|s| s.consul_reachable && s.staleness_ms == 0) }
    })
    .await;
    // The watches follow Consul again: a new edit reaches routing.
    store(&consul)
        .put_force(&data_id("d2"), &[node_id("node1")])
        .await
        .expect("put after restart");
    wait_route(
        &gw,
        "d2",
        "an edit after the restart reaches routing",
        |r| r.node_id == "node1",
    )
    .await;
    gateway.stop().await.expect("clean stop");
    node1.stop().await.expect("node1");
}

async fn next_event(stream: &mut tonic::Streaming<HealthEvent>) -> HealthEvent {
    tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("an event within the deadline")
        .expect("stream ok")
        .expect("stream open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_health_sends_the_current_state_then_transitions() {
    let consul = ConsulAgent::start_dev().await;
    let node1 = TestNode::start(&consul.http_url(), "node1").await;
    let gateway = TestGateway::start(&consul.http_url(), &[]).await;
    let mut gw = gateway.client().await;
    store(&consul)
        .put_force(&data_id("d"), &[node_id("node1")])
        .await
        .expect("put");
    wait_route(&gw, "d", "node1 passing", |r| r.node_id == "node1").await;

    let mut watch = gw
        .watch_health(WatchHealthRequest {})
        .await
        .expect("watch")
        .into_inner();
    let first = next_event(&mut watch).await;
    assert!(first.initial, "{first:?}");
    assert_eq!(first.node_id, "node1");
    assert_eq!(first.to, HealthStatus::Passing as i32);
    assert_eq!(first.address, node1.address());
    assert!(first.detail.contains('d'), "{first:?}");

    // A second watcher shares the same transitions.
    let mut watch2 = gw
        .watch_health(WatchHealthRequest {})
        .await
        .expect("watch")
        .into_inner();
    assert!(next_event(&mut watch2).await.initial);

    set_maintenance(&consul, "node1", true).await;
    for w in [&mut watch, &mut watch2] {
        let e = next_event(w).await;
        assert!(!e.initial, "{e:?}");
        assert_eq!(e.node_id, "node1");
        assert_eq!(
            (e.from, e.to),
            (HealthStatus::Passing as i32, HealthStatus::Critical as i32)
        );
        assert!(e.at > 0);
    }

    // Graceful stop: NOT_SERVING, then deregistration shows as gone.
    set_maintenance(&consul, "node1", false).await;
    let e = next_event(&mut watch).await;
    assert_eq!(e.to, HealthStatus::Passing as i32, "{e:?}");
    node1.stop().await.expect("node1");
    // The drain may show critical first (health 503) before the deregistration.
    loop {
        let e = next_event(&mut watch).await;
        if e.to == HealthStatus::Gone as i32 {
            break;
        }
        assert_eq!(e.to, HealthStatus::Critical as i32, "{e:?}");
    }

    // Shutdown ends the watch streams.
    gateway.stop().await.expect("clean stop");
    let end = tokio::time::timeout(DEADLINE, watch.message())
        .await
        .expect("the stream ends with the gateway");
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
}
