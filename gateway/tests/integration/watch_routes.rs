//! `WatchRoutes` against a real Consul and real nodes: its snapshot says what
//! `GetNodeForData` says, a mapping edit and a node turning critical reach a watcher, and a
//! token that may read only some data IDs sees only those.

use std::collections::BTreeMap;

use ec_core::auth::TokenTable;
use ec_proto::gateway_client::GatewayClient;
use ec_proto::{DataRoute, RouteUpdate, WatchRoutesRequest};
use ec_testkit::ConsulAgent;
use tonic::Code;
use tonic::transport::Channel;

use crate::util::*;

/// The routes a watcher holds after applying what it received, with every update received.
#[derive(Default)]
struct Held {
    routes: BTreeMap<String, DataRoute>,
    received: Vec<RouteUpdate>,
}

impl Held {
    fn apply(&mut self, update: RouteUpdate) {
        if update.snapshot {
            self.routes.clear();
        }
        for r in &update.routes {
            self.routes.insert(r.data_id.clone(), r.clone());
        }
        for d in &update.removed {
            self.routes.remove(d);
        }
        self.received.push(update);
    }

    /// Reads updates until `pred` holds for the routes held.
    async fn until(
        &mut self,
        stream: &mut tonic::Streaming<RouteUpdate>,
        what: &str,
        pred: impl Fn(&BTreeMap<String, DataRoute>) -> bool,
    ) {
        while !pred(&self.routes) {
            let update = tokio::time::timeout(DEADLINE, stream.message())
                .await
                .unwrap_or_else(|_| panic!("{what}: no update within {DEADLINE:?}"))
                .expect("stream ok")
                .expect("stream open");
            self.apply(update);
        }
    }
}

fn ids(route: &DataRoute) -> Vec<&str> {
    route
        .candidates
        .iter()
        .map(|c| c.node_id.as_str())
        .collect()
}

async fn watch(
    gw: &mut GatewayClient<Channel>,
    token: Option<&str>,
) -> Result<tonic::Streaming<RouteUpdate>, tonic::Status> {
    let mut req = tonic::Request::new(WatchRoutesRequest {});
    if let Some(token) = token {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
    }
    gw.watch_routes(req).await.map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_routes_matches_get_node_for_data_then_pushes_changes() {
    let consul = ConsulAgent::start_dev().await;
    let url = consul.http_url();
    let node1 = TestNode::start(&url, "node1").await;
    let node2 = TestNode::start(&url, "node2").await;
    let gateway = TestGateway::start(&url, &[]).await;
    let mut gw = gateway.client().await;
    let s = store(&consul);
    s.put_force(&data_id("a"), &[node_id("node1"), node_id("node2")])
        .await
        .expect("map a");
    s.put_force(&data_id("b"), &[node_id("node2")])
        .await
        .expect("map b");
    // More routes than any change below touches, so that changes are sent as changes.
    for d in ["c", "d", "e"] {
        s.put_force(&data_id(d), &[node_id("node1")])
            .await
            .expect("map");
    }
    wait_route(&gw, "a", "a routed to both nodes", |r| {
        r.candidates.len() == 2
    })
    .await;
    wait_route(&gw, "b", "b routed", |r| r.node_id == "node2").await;

    let mut stream = watch(&mut gw, None).await.expect("watch");
    let mut held = Held::default();
    held.until(&mut stream, "the snapshot", |r| r.len() == 5)
        .await;
    assert!(held.received[0].snapshot, "the first message is a snapshot");
    assert!(held.received[0].version > 0);

    // The snapshot says what GetNodeForData says.
    for (data_id, route) in &held.routes {
        let answer = get_node(&mut gw, data_id).await.expect("lookup");
        assert_eq!(route.primary_node_id, answer.primary_node_id, "{data_id}");
        assert_eq!(route.candidates, answer.candidates, "{data_id}");
        assert!(route.unavailable.is_empty());
        let preferred = &route.candidates[..route.preferred as usize];
        assert!(
            preferred.iter().any(|c| c.node_id == answer.node_id),
            "GetNodeForData picks among the preferred candidates: {answer:?} vs {route:?}"
        );
    }
    assert_eq!(ids(&held.routes["a"]), ["node1", "node2"]);
    assert_eq!(held.routes["a"].candidates[0].address, node1.address());

    // A mapping edit made in Consul reaches the watcher.
    s.put_force(&data_id("a"), &[node_id("node2"), node_id("node1")])
        .await
        .expect("edit a");
    held.until(&mut stream, "the edit of a", |r| {
        r["a"].primary_node_id == "node2"
    })
    .await;
    assert!(!held.received.last().expect("received").snapshot);

    // node2 turns critical: it leaves every route, and b has no usable node left.
    set_maintenance(&consul, "node2", true).await;
    held.until(&mut stream, "critical node2 leaves the routes", |r| {
        ids(&r["a"]) == ["node1"] && r["b"].candidates.is_empty()
    })
    .await;
    let b = &held.routes["b"];
    assert!(b.unavailable.contains("node2"), "{b:?}");
    let refused = get_node(&mut gw, "b").await.expect_err("no usable node");
    assert_eq!(refused.code(), Code::Unavailable);
    assert_eq!(
        b.unavailable,
        refused.message(),
        "the same reason as GetNodeForData"
    );
    assert_eq!(
        b.primary_node_id, "node2",
        "the primary is named even when down"
    );

    // Back, and a deleted mapping is removed.
    set_maintenance(&consul, "node2", false).await;
    s.delete_force(&data_id("b")).await.expect("delete b");
    held.until(&mut stream, "node2 back and b removed", |r| {
        ids(&r["a"]) == ["node2", "node1"] && !r.contains_key("b")
    })
    .await;
    assert!(
        held.received.iter().any(|u| u.removed == ["b"]),
        "a single deletion is sent as a removal"
    );

    gateway.stop().await.expect("clean stop");
    assert!(
        tokio::time::timeout(DEADLINE, stream.message())
            .await
            .expect("the stream ends with the gateway")
            .map_or(true, |m| m.is_none()),
        "no update after the gateway stopped"
    );
    drop((node1, node2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_restricted_to_some_data_ids_watches_only_those() {
    let consul = ConsulAgent::start_dev().await;
    let url = consul.http_url();
    let node = TestNode::start(&url, "n1").await;
    let s = store(&consul);
    for d in ["orders-1", "orders-2", "billing"] {
        s.put_force(&data_id(d), &[node_id("n1")])
            .await
            .expect("map");
    }
    let gateway = TestGateway::start_with(&url, |s| {
        s.policy.tokens =
            TokenTable::parse(&["app read:orders-*", "ops read admin"]).expect("valid tokens");
    })
    .await;
    let mut gw = gateway.client().await;

    let err = watch(&mut gw, None).await.expect_err("no credential");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = watch(&mut gw, Some("nope"))
        .await
        .expect_err("unknown token");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    let mut ops = watch(&mut gw, Some("ops")).await.expect("ops watches");
    let mut ops_held = Held::default();
    ops_held
        .until(&mut ops, "ops sees every mapping", |r| r.len() == 3)
        .await;

    let mut app = watch(&mut gw, Some("app")).await.expect("app watches");
    let mut held = Held::default();
    held.until(&mut app, "app's snapshot", |r| !r.is_empty())
        .await;
    assert_eq!(
        held.routes.keys().map(String::as_str).collect::<Vec<_>>(),
        ["orders-1", "orders-2"]
    );

    // New mappings: app is told only of the one it may read.
    s.put_force(&data_id("billing-2"), &[node_id("n1")])
        .await
        .expect("map");
    s.put_force(&data_id("orders-3"), &[node_id("n1")])
        .await
        .expect("map");
    s.delete_force(&data_id("billing")).await.expect("delete");
    held.until(&mut app, "orders-3 reaches app", |r| {
        r.contains_key("orders-3")
    })
    .await;
    ops_held
        .until(&mut ops, "ops sees every change", |r| {
            r.contains_key("orders-3") && r.contains_key("billing-2") && !r.contains_key("billing")
        })
        .await;
    for update in &held.received {
        for d in update
            .routes
            .iter()
            .map(|r| &r.data_id)
            .chain(&update.removed)
        {
            assert!(d.starts_with("orders-"), "app was shown {d}: {update:?}");
        }
    }
    gateway.stop().await.expect("clean stop");
    drop(node);
}
