//! The admin side against a real Consul: mapping CRUD with check-and-set conflicts, many
//! nodes registering at once, garbage values, and the refusals (`NOT_FOUND`, `UNAVAILABLE`,
//! `PERMISSION_DENIED`, `INVALID_ARGUMENT`).

use ec_proto::{
    DeleteMappingRequest, ListMappingsRequest, ListMappingsResponse, PutMappingRequest,
    RegisterNodeRequest,
};
use ec_testkit::ConsulAgent;
use tonic::Code;

use crate::util::*;

async fn list(
    gw: &mut ec_proto::gateway_client::GatewayClient<tonic::transport::Channel>,
) -> ListMappingsResponse {
    gw.list_mappings(ListMappingsRequest {})
        .await
        .expect("list")
        .into_inner()
}

fn put(data_id: &str, nodes: &[&str], expected: u64) -> PutMappingRequest {
    PutMappingRequest {
        data_id: data_id.into(),
        node_ids: nodes.iter().map(|n| (*n).to_owned()).collect(),
        expected_modify_index: expected,
        force: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapping_crud_with_check_and_set_conflicts() {
    let consul = ConsulAgent::start_dev().await;
    let gateway = TestGateway::start(&consul.http_url(), &[]).await;
    let mut gw = gateway.client().await;

    let created = gw
        .put_mapping(put("orders", &["node1", "node2"], 0))
        .await
        .expect("create")
        .into_inner()
        .mapping
        .expect("mapping");
    assert_eq!(created.node_ids, ["node1", "node2"]);
    let i1 = created.modify_index;
    assert!(i1 > 0);

    // Creating again: it exists now.
    let err = gw
        .put_mapping(put("orders", &["node3"], 0))
        .await
        .expect_err("exists");
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert!(
        err.message().contains("node1,node2") && err.message().contains(&i1.to_string()),
        "message shows the current value and index: {}",
        err.message()
    );

    let i2 = gw
        .put_mapping(put("orders", &["node2", "node1"], i1))
        .await
        .expect("update with the right index")
        .into_inner()
        .mapping
        .expect("mapping")
        .modify_index;
    assert!(i2 > i1);

    // A writer that still holds i1 loses and is told what is there now.
    let err = gw
        .put_mapping(put("orders", &["node9"], i1))
        .await
        .expect_err("stale index");
    assert_eq!(err.code(), Code::Aborted);
    assert!(
        err.message().contains("node2,node1") && err.message().contains(&i2.to_string()),
        "{}",
        err.message()
    );
    let err = gw
        .delete_mapping(DeleteMappingRequest {
            data_id: "orders".into(),
            expected_modify_index: i1,
            force: false,
        })
        .await
        .expect_err("stale delete");
    assert_eq!(err.code(), Code::Aborted);

    // The table follows: ListMappings shows the current value with its index.
    ec_testkit::wait_for("ListMappings shows the update", DEADLINE, || {
        let mut gw = gw.clone();
        async move {
            let l = list(&mut gw).await;
            l.mappings
                .iter()
                .any(|m| {
                    m.data_id == "orders"
                        && m.modify_index == i2
                        && m.node_ids == ["node2", "node1"]
                })
                .then_some(())
        }
    })
    .await;

    gw.delete_mapping(DeleteMappingRequest {
        data_id: "orders".into(),
        expected_modify_index: i2,
        force: false,
    })
    .await
    .expect("delete with the right index");
    assert!(
        store(&consul)
            .get(&data_id("orders"))
            .await
            .expect("get")
            .is_none()
    );

    // An expected index against a mapping that is gone is ABORTED saying so, for a delete
    // (Consul itself accepts a check-and-set delete of a missing key) and for a put.
    let err = gw
        .delete_mapping(DeleteMappingRequest {
            data_id: "orders".into(),
            expected_modify_index: 5,
            force: false,
        })
        .await
        .expect_err("delete of a missing mapping with an expected index");
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert!(err.message().contains("does not exist"), "{err:?}");
    let err = gw
        .put_mapping(put("orders", &["node1"], 5))
        .await
        .expect_err("put over a missing mapping with an expected index");
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert!(err.message().contains("does not exist"), "{err:?}");
    assert!(
        store(&consul)
            .get(&data_id("orders"))
            .await
            .expect("get")
            .is_none(),
        "a refused put wrote"
    );

    // Bad requests name the rule.
    let err = gw
        .put_mapping(put("orders", &[], 0))
        .await
        .expect_err("empty");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = gw
        .put_mapping(put("orders", &["bad node"], 0))
        .await
        .expect_err("bad node id");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = gw
        .put_mapping(put("orders", &["n1", "n1"], 0))
        .await
        .expect_err("duplicate");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = gw
        .delete_mapping(DeleteMappingRequest {
            data_id: "orders".into(),
            expected_modify_index: 0,
            force: false,
        })
        .await
        .expect_err("index required");
    assert_eq!(err.code(), Code::InvalidArgument);

    // Force writes ignore the index.
    gw.put_mapping(PutMappingRequest {
        force: true,
        ..put("orders", &["node5"], 12345)
    })
    .await
    .expect("forced put");
    gw.delete_mapping(DeleteMappingRequest {
        data_id: "orders".into(),
        expected_modify_index: 0,
        force: true,
    })
    .await
    .expect("forced delete");
    gateway.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_registrations_all_land() {
    let consul = ConsulAgent::start_dev().await;
    let gateway = TestGateway::start(&consul.http_url(), &[]).await;
    let gw = gateway.client().await;

    let nodes: Vec<String> = (1..=20).map(|i| format!("node{i:02}")).collect();
    let calls = nodes.iter().map(|n| {
        let mut gw = gw.clone();
        let n = n.clone();
        tokio::spawn(async move {
            gw.register_node(RegisterNodeRequest {
                node_id: n,
                data_id: "shared".into(),
            })
            .await
        })
    });
    for call in futures_util::future::join_all(calls).await {
        let resp = call.expect("task").expect("registered").into_inner();
        assert!(resp.success, "{}", resp.message);
    }
    let stored = store(&consul)
        .get(&data_id("shared"))
        .await
        .expect("get")
        .expect("mapping exists");
    let mut got: Vec<String> = stored.nodes.iter().map(ToString::to_string).collect();
    got.sort();
    assert_eq!(got, nodes, "no registration lost");

    // Registering again changes nothing.
    let mut gw2 = gw.clone();
    gw2.register_node(RegisterNodeRequest {
        node_id: "node01".into(),
        data_id: "shared".into(),
    })
    .await
    .expect("idempotent");
    let again = store(&consul)
        .get(&data_id("shared"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(again.nodes.len(), 20);
    gateway.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_not_found_unavailable_permission_denied() {
    let consul = ConsulAgent::start_dev().await;
    let node1 = TestNode::start(&consul.http_url(), "node1").await;
    let node2 = TestNode::start(&consul.http_url(), "node2").await;
    // node2 is healthy in Consul but not allowed.
    let gateway = TestGateway::start(&consul.http_url(), &["node1", "ghost"]).await;
    let mut gw = gateway.client().await;

    let s = store(&consul);
    s.put_force(&data_id("good"), &[node_id("node1")])
        .await
        .expect("put");
    s.put_force(&data_id("ghostly"), &[node_id("ghost")])
        .await
        .expect("put");
    s.put_force(&data_id("forbidden"), &[node_id("node2")])
        .await
        .expect("put");
    wait_route(&gw, "good", "node1 routable", |r| r.node_id == "node1").await;
    assert_eq!(
        get_node(&mut gw, "good").await.expect("route").node_address,
        node1.address()
    );

    let err = get_node(&mut gw, "missing").await.expect_err("no mapping");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("missing"), "{}", err.message());

    let err = get_node(&mut gw, "ghostly")
        .await
        .expect_err("never registered");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("ghost not registered"),
        "{}",
        err.message()
    );

    let err = get_node(&mut gw, "forbidden")
        .await
        .expect_err("not allowed");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("node2 not in gateway.allowed_nodes"),
        "{}",
        err.message()
    );

    let err = get_node(&mut gw, "../etc").await.expect_err("bad id");
    assert_eq!(err.code(), Code::InvalidArgument);

    let err = gw
        .register_node(RegisterNodeRequest {
            node_id: "node2".into(),
            data_id: "good".into(),
        })
        .await
        .expect_err("node2 not allowed");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("node2"), "{}", err.message());
    let unchanged = s.get(&data_id("good")).await.expect("get").expect("exists");
    assert_eq!(unchanged.nodes, [node_id("node1")], "nothing written");

    // A node Consul does not know is mapped (it may register later), with a warning; a
    // registered one without.
    let ghost = gw
        .register_node(RegisterNodeRequest {
            node_id: "ghost".into(),
            data_id: "haunted".into(),
        })
        .await
        .expect("mapped all the same")
        .into_inner();
    assert!(ghost.success, "{}", ghost.message);
    assert!(
        ghost
            .message
            .contains("node ghost is not registered in Consul"),
        "{}",
        ghost.message
    );
    let known = gw
        .register_node(RegisterNodeRequest {
            node_id: "node1".into(),
            data_id: "good".into(),
        })
        .await
        .expect("registered")
        .into_inner();
    assert!(!known.message.contains("warning"), "{}", known.message);

    let l = list(&mut gw).await;
    assert!(
        l.problems
            .iter()
            .any(|p| p.key == "forbidden" && p.reason.contains("node2")),
        "{:?}",
        l.problems
    );

    gateway.stop().await.expect("clean stop");
    node1.stop().await.expect("node1");
    node2.stop().await.expect("node2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_values_are_skipped_and_listed_as_problems() {
    let consul = ConsulAgent::start_dev().await;
    let client = ec_discovery::ConsulClient::new(&consul.http_url(), None).expect("client");
    for (key, value) in [
        ("empty", ""),
        ("commas", ",,"),
        ("spaces", "node 1"),
        ("dupes", "node1,node1"),
    ] {
        client
            .kv_put(&format!("{KV_PREFIX}{key}"), value.as_bytes(), None)
            .await
            .expect("put garbage");
    }
    client
        .kv_put(&format!("{KV_PREFIX}fine"), b" node1 , node2 ", None)
        .await
        .expect("put");
    let gateway = TestGateway::start(&consul.http_url(), &[]).await;
    let gw = gateway.client().await;

    let l = ec_testkit::wait_for("mappings loaded", DEADLINE, || {
        let mut gw = gw.clone();
        async move {
            let l = list(&mut gw).await;
            (!l.mappings.is_empty()).then_some(l)
        }
    })
    .await;
    let ids: Vec<&str> = l.mappings.iter().map(|m| m.data_id.as_str()).collect();
    assert_eq!(ids, ["fine"]);
    assert_eq!(
        l.mappings[0].node_ids,
        ["node1", "node2"],
        "whitespace tolerated"
    );
    let mut bad: Vec<&str> = l.problems.iter().map(|p| p.key.as_str()).collect();
    bad.sort();
    for key in ["commas", "dupes", "empty", "spaces"] {
        assert!(
            bad.iter().any(|k| k.ends_with(key)),
            "{key} reported: {:?}",
            l.problems
        );
    }
    assert!(l.problems.iter().all(|p| !p.reason.is_empty()));
    // ListMappings reads Consul; lookups wait for the routing table, UNAVAILABLE until it
    // has loaded.
    let err = ec_testkit::wait_for("a lookup answered from the loaded table", DEADLINE, || {
        let mut gw = gw.clone();
        async move {
            get_node(&mut gw, "dupes")
                .await
                .err()
                .filter(|e| e.code() != Code::Unavailable)
        }
    })
    .await;
    assert_eq!(err.code(), Code::NotFound, "skipped: {err:?}");
    gateway.stop().await.expect("clean stop");
}
