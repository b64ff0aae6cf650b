//! The SDK's route cache against the real gateway: once `WatchRoutes` has delivered its
//! snapshot, resolving (routes, publishes) makes no `GetNodeForData` call (counted by the
//! gateway's `/metrics`), pushes of mapping and health changes reach it, it keeps resolving
//! from the last routes while the gateway is down, asks `GetNodeForData` for what it does not
//! hold (same errors as before), and watches again once the gateway is back.

use ec_client::{Client, ClientError, RouteCacheStatus};
use ec_core::auth::TokenTable;
use ec_testkit::{ConsulAgent, wait_for};
use tonic::Code;

use crate::util::*;

/// Every `GetNodeForData` the gateway answered, whatever the result.
async fn lookups(gateway: &TestGateway) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", gateway.metrics_addr))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("body");
    text.lines()
        .filter(|l| l.starts_with("ec_gateway_lookups_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until `client`'s routes are fresh from the gateway's watch.
async fn wait_fresh(client: &Client) {
    wait_for("the SDK's route cache is fresh", DEADLINE, || {
        let status = client.route_cache();
        async move { matches!(status, Some(RouteCacheStatus::Fresh { .. })).then_some(()) }
    })
    .await;
}

async fn wait_resolves(
    client: &Client,
    data_id: &str,
    what: &str,
    pred: impl Fn(&ec_client::Route) -> bool,
) -> ec_client::Route {
    wait_for(what, DEADLINE, || {
        let route = client.clone();
        let pred = &pred;
        async move { route.route(data_id).await.ok().filter(|r| pred(r)) }
    })
    .await
}

fn ids(route: &ec_client::Route) -> Vec<&str> {
    route
        .candidates
        .iter()
        .map(|c| c.node_id.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_resolves_from_pushed_routes_and_keeps_them_while_the_gateway_is_down() {
    let consul = ConsulAgent::start_dev().await;
    let url = consul.http_url();
    let node1 = TestNode::start(&url, "node1").await;
    let node2 = TestNode::start(&url, "node2").await;
    let s = store(&consul);
    s.put_force(&data_id("r"), &[node_id("node1"), node_id("node2")])
        .await
        .expect("map r");
    s.put_force(&data_id("w1"), &[node_id("node1")])
        .await
        .expect("map w1");
    s.put_force(&data_id("w2"), &[node_id("node2")])
        .await
        .expect("map w2");
    let gateway = TestGateway::start(&url, &[]).await;
    let gw = gateway.client().await;
    wait_route(&gw, "r", "r routed to both nodes", |r| {
        r.candidates.len() == 2
    })
    .await;
    let client = Client::connect(&gateway.addr.to_string())
        .await
        .expect("connect");
    wait_fresh(&client).await;
    wait_resolves(&client, "r", "r in the cache with both nodes", |r| {
        r.candidates.len() == 2
    })
    .await;

    // From here on, nothing the SDK does asks GetNodeForData.
    let asked = lookups(&gateway).await;
    let mut chosen = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let route = client.route("r").await.expect("route");
        assert_eq!(route.primary, "node1");
        chosen.insert(route.chosen.node_id);
    }
    assert_eq!(
        chosen.into_iter().collect::<Vec<_>>(),
        ["node1", "node2"],
        "readers are spread over the passing nodes"
    );
    let p1 = client
        .publish("w1", vec!["one".into()])
        .await
        .expect("publish w1");
    let p2 = client
        .publish("w2", vec!["two".into()])
        .await
        .expect("publish w2");
    assert_eq!((p1.first.0, p2.first.0), (0, 0));
    assert_eq!(read_log(&mut node1.client().await, "w1").await.len(), 1);
    assert_eq!(read_log(&mut node2.client().await, "w2").await.len(), 1);

    // Pushes: node2 turns critical, then r's primary moves.
    set_maintenance(&consul, "node2", true).await;
    wait_resolves(&client, "r", "critical node2 leaves r's route", |r| {
        ids(r) == ["node1"]
    })
    .await;
    let err = client.route("w2").await.expect_err("w2 has no usable node");
    assert!(
        matches!(&err, ClientError::Unroutable { code: Code::Unavailable, reason, .. } if reason.contains("node2")),
        "{err:?}"
    );
    set_maintenance(&consul, "node2", false).await;
    s.put_force(&data_id("r"), &[node_id("node2"), node_id("node1")])
        .await
        .expect("edit r");
    wait_resolves(&client, "r", "r's new primary is pushed", |r| {
        r.primary == "node2" && r.candidates.len() == 2
    })
    .await;
    wait_resolves(&client, "w2", "node2 back for w2", |r| {
        r.healthy_primary().is_some()
    })
    .await;
    assert_eq!(
        lookups(&gateway).await,
        asked,
        "resolutions and publishes were answered from the route cache"
    );

    // The gateway goes away: the last pushed routes keep resolving, and a write still goes
    // to the data ID's primary.
    gateway.stop().await.expect("clean stop");
    wait_for("the route cache turns stale", DEADLINE, || {
        let status = client.route_cache();
        async move { matches!(status, Some(RouteCacheStatus::Stale { .. })).then_some(()) }
    })
    .await;
    let route = client
        .route("w2")
        .await
        .expect("the last route, gateway down");
    assert_eq!(route.primary, "node2");
    let p = client
        .publish("w2", vec!["three".into()])
        .await
        .expect("publish with the gateway down");
    assert_eq!(p.first.0, 1);
    assert_eq!(read_log(&mut node2.client().await, "w2").await.len(), 2);
    // What the cache never held must still be asked, and the gateway cannot answer.
    let err = client.route("never-mapped").await.expect_err("no gateway");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    drop((node1, node2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_asks_the_gateway_for_what_it_does_not_hold_and_watches_again_after_a_restart() {
    let consul = ConsulAgent::start_dev().await;
    let url = consul.http_url();
    let node1 = TestNode::start(&url, "n1").await;
    let s = store(&consul);
    s.put_force(&data_id("orders"), &[node_id("n1")])
        .await
        .expect("map orders");
    s.put_force(&data_id("billing"), &[node_id("n1")])
        .await
        .expect("map billing");
    let tokens = || TokenTable::parse(&["app read:orders*"]).expect("valid tokens");
    let gateway = TestGateway::start_with(&url, |s| s.policy.tokens = tokens()).await;
    let addr = gateway.addr;
    let channels = ec_client::ChannelCache::default()
        .with_token("app")
        .expect("ascii token");
    let client = Client::connect_with(&addr.to_string(), channels)
        .await
        .expect("connect");
    wait_fresh(&client).await;
    wait_resolves(&client, "orders", "orders resolvable", |_| true).await;

    // The token may read orders* only: billing is not pushed to it, so it is asked, and the
    // answer is the gateway's refusal, as without a cache; a readable data ID without a
    // mapping is NOT_FOUND, as without a cache.
    let asked = lookups(&gateway).await;
    client.route("orders").await.expect("from the cache");
    assert_eq!(lookups(&gateway).await, asked);
    let err = client.route("billing").await.expect_err("not readable");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.status().is_some(), "the gateway's own answer: {err:?}");
    let err = client
        .route("orders-unmapped")
        .await
        .expect_err("no mapping");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert!(err.is_terminal(), "{err}");
    // (A refusal comes before the lookup the metric counts: only the NOT_FOUND shows.)
    assert_eq!(lookups(&gateway).await, asked + 1.0, "asked once each");

    // Restarted at the same address with a change made while it was down: the SDK watches
    // again and is pushed the new picture.
    gateway.stop().await.expect("clean stop");
    s.put_force(&data_id("orders"), &[node_id("n2"), node_id("n1")])
        .await
        .expect("edit while the gateway is down");
    let gateway = TestGateway::restart_at(addr, &url, |s| s.policy.tokens = tokens()).await;
    wait_resolves(
        &client,
        "orders",
        "the new primary after the restart",
        |r| r.primary == "n2",
    )
    .await;
    wait_fresh(&client).await;
    let asked = lookups(&gateway).await;
    for _ in 0..10 {
        let route = client.route("orders").await.expect("route");
        assert_eq!(route.primary, "n2");
    }
    assert_eq!(
        lookups(&gateway).await,
        asked,
        "fresh again: answered from the cache"
    );
    gateway.stop().await.expect("clean stop");
    drop(node1);
}
