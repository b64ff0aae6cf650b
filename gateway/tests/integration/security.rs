//! Who may call the gateway, against a real Consul: admin calls need an admin token when
//! tokens are configured, and are refused from non-loopback peers when nothing is secured
//! (protected mode); mappings are bounded in size on write and on read.

use ec_core::auth::TokenTable;
use ec_proto::gateway_client::GatewayClient;
use ec_proto::{DeleteMappingRequest, ListMappingsRequest, PutMappingRequest, RegisterNodeRequest};
use ec_testkit::{ConsulAgent, wait_for};
use tonic::Code;
use tonic::transport::Channel;

use crate::util::*;

fn as_token<T>(inner: T, token: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(inner);
    if let Some(t) = token {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("ascii"),
        );
    }
    req
}

fn put(data_id: &str, nodes: &[&str]) -> PutMappingRequest {
    PutMappingRequest {
        data_id: data_id.into(),
        node_ids: nodes.iter().map(|n| n.to_string()).collect(),
        force: true,
        ..Default::default()
    }
}

async fn put_as(
    gw: &mut GatewayClient<Channel>,
    token: Option<&str>,
    req: PutMappingRequest,
) -> Result<(), tonic::Status> {
    gw.put_mapping(as_token(req, token)).await.map(|_| ())
}

#[tokio::test]
async fn admin_calls_need_the_admin_permission_and_change_nothing_when_refused() {
    let consul = ConsulAgent::start_dev().await;
    let gateway = TestGateway::start_with(&consul.http_url(), |s| {
        s.policy.tokens =
            TokenTable::parse(&["adm admin read", "rd read:*"]).expect("valid tokens");
        s.max_nodes_per_mapping = 3;
    })
    .await;
    let mut gw = gateway.client().await;
    let store = store(&consul);

    let err = put_as(&mut gw, None, put("orders", &["n1"]))
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = put_as(&mut gw, Some("rd"), put("orders", &["n1"]))
        .await
        .expect_err("reader");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("admin"), "{err:?}");
    let err = gw
        .register_node(as_token(
            RegisterNodeRequest {
                node_id: "evil".into(),
                data_id: "orders".into(),
            },
            Some("rd"),
        ))
        .await
        .expect_err("reader registers");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = gw
        .delete_mapping(as_token(
            DeleteMappingRequest {
                data_id: "orders".into(),
                force: true,
                ..Default::default()
            },
            None,
        ))
        .await
        .expect_err("anonymous delete");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let mut failover = ec_proto::failover_client::FailoverClient::new(channel(gateway.addr).await);
    let err = failover
        .promote_replica(as_token(
            ec_proto::PromoteReplicaRequest {
                data_id: "orders".into(),
                node_id: "n2".into(),
                force: true,
            },
            Some("rd"),
        ))
        .await
        .expect_err("reader promotes");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        store.get(&data_id("orders")).await.expect("read").is_none(),
        "a refused call wrote a mapping"
    );

    // The admin token: the mapping bound holds for PutMapping and RegisterNode.
    let huge: Vec<String> = (0..45_000).map(|i| format!("n{i}")).collect();
    let huge: Vec<&str> = huge.iter().map(String::as_str).collect();
    let err = put_as(&mut gw, Some("adm"), put("orders", &huge))
        .await
        .expect_err("45000 nodes");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("limits.max_nodes_per_mapping"),
        "{err:?}"
    );
    put_as(&mut gw, Some("adm"), put("orders", &["n1", "n2", "n3"]))
        .await
        .expect("admin writes");
    let err = gw
        .register_node(as_token(
            RegisterNodeRequest {
                node_id: "n4".into(),
                data_id: "orders".into(),
            },
            Some("adm"),
        ))
        .await
        .expect_err("a fourth node");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("limits.max_nodes_per_mapping (3)"),
        "{err:?}"
    );
    assert_eq!(
        store
            .get(&data_id("orders"))
            .await
            .expect("read")
            .expect("mapped")
            .value(),
        "n1,n2,n3"
    );

    // A mapping written around the gateway is reported as a problem, not routed.
    store
        .client()
        .kv_put(&format!("{KV_PREFIX}huge"), b"a,b,c,d", None)
        .await
        .expect("write around the gateway");
    let problems = wait_for("the oversized mapping is reported", DEADLINE, || {
        let mut gw = gw.clone();
        async move {
            let list = gw
                .list_mappings(as_token(ListMappingsRequest::default(), Some("rd")))
                .await
                .ok()?
                .into_inner();
            (!list.problems.is_empty()).then_some(list.problems)
        }
    })
    .await;
    assert!(
        problems[0].key.ends_with("huge") && problems[0].reason.contains("4 nodes"),
        "{problems:?}"
    );
    drop(gateway);
}

#[tokio::test]
async fn protected_mode_refuses_remote_admin_calls_but_not_reads() {
    let consul = ConsulAgent::start_dev().await;
    let gateway = TestGateway::start_on("0.0.0.0", &consul.http_url(), |_| {}).await;
    let port = gateway.addr.port();
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut gw = GatewayClient::new(channel(local).await);
    put_as(&mut gw, None, put("orders", &["n1"]))
        .await
        .expect("loopback admin call");

    let ip = {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
        socket
            .connect("192.0.2.1:9")
            .ok()
            .and(socket.local_addr().ok())
            .map(|a| a.ip())
    };
    let Some(ip) = ip.filter(|ip| !ip.is_loopback() && !ip.is_unspecified()) else {
        eprintln!("no non-loopback address on this machine; remote half of the test skipped");
        return;
    };
    let mut remote = GatewayClient::new(channel(std::net::SocketAddr::new(ip, port)).await);
    let err = put_as(&mut remote, None, put("orders", &["evil"]))
        .await
        .expect_err("remote admin call in protected mode");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("protected mode")
            && err.message().contains("security.protected_mode: false"),
        "{err:?}"
    );
    let listed = remote
        .list_mappings(ListMappingsRequest::default())
        .await
        .expect("remote read")
        .into_inner();
    assert_eq!(
        store(&consul)
            .get(&data_id("orders"))
            .await
            .expect("read")
            .expect("mapped")
            .value(),
        "n1",
        "{listed:?}"
    );
    drop(gateway);
}

/// The smallest Consul ACL policy of a gateway that routes only (README, "Consul ACLs").
const GATEWAY_READ_POLICY: &str = r#"
key_prefix "streaming/data/" { policy = "read" }
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }
"#;

#[tokio::test]
async fn a_gateway_without_consul_rights_says_permission_denied_not_no_mapping() {
    let consul = ConsulAgent::start_dev_with_acls().await;
    let url = consul.http_url();
    let admin = ec_discovery::MappingStore::new(
        ec_discovery::ConsulClient::new(&url, Some(ec_testkit::MANAGEMENT_TOKEN.into()))
            .expect("client"),
        KV_PREFIX,
    );
    admin
        .put(&data_id("orders"), &[node_id("n1")], None)
        .await
        .expect("write mapping as management");

    let blind = TestGateway::start_with(&url, |s| s.auto_failover = false).await;
    let mut gw = blind.client().await;
    let status = wait_for("the gateway reports the ACL refusal", DEADLINE, || {
        let mut gw = gw.clone();
        async move {
            let s = gw
                .get_status(ec_proto::GetStatusRequest::default())
                .await
                .ok()?
                .into_inner();
            s.last_error.contains("permission denied").then_some(s)
        }
    })
    .await;
    assert_eq!(status.mappings, 0, "{status:?}");
    let err = get_node(&mut gw, "orders").await.expect_err("routed blind");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message()
            .contains("cannot read mappings from Consul: permission denied"),
        "{err:?}"
    );
    drop(blind);

    let token = consul.create_token("ec-gateway", GATEWAY_READ_POLICY).await;
    let gateway = TestGateway::start_with(&url, |s| {
        s.auto_failover = false;
        s.consul_token = Some(token);
    })
    .await;
    let mut gw = gateway.client().await;
    let listed = wait_for(
        "the mapping is visible with the minimal policy",
        DEADLINE,
        || {
            let mut gw = gw.clone();
            async move {
                let list = gw
                    .list_mappings(ListMappingsRequest::default())
                    .await
                    .ok()?
                    .into_inner();
                (!list.mappings.is_empty()).then_some(list)
            }
        },
    )
    .await;
    assert_eq!(listed.mappings[0].data_id, "orders");
    let status = gw
        .get_status(ec_proto::GetStatusRequest::default())
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.last_error, "", "{status:?}");
    // Routing answers from the mapping: no node is registered, so UNAVAILABLE, not
    // NOT_FOUND.
    let err = get_node(&mut gw, "orders").await.expect_err("no node");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    drop(gateway);
}

#[tokio::test]
async fn the_sdk_presents_its_token_to_a_secured_gateway() {
    let consul = ConsulAgent::start_dev().await;
    let url = consul.http_url();
    let node = TestNode::start(&url, "n1").await;
    store(&consul)
        .put(&data_id("orders"), &[node_id("n1")], None)
        .await
        .expect("map orders");
    let gateway = TestGateway::start_with(&url, |s| {
        s.policy.tokens =
            TokenTable::parse(&["app publish:orders read:orders"]).expect("valid tokens");
    })
    .await;
    let address = gateway.addr.to_string();

    let anonymous = ec_client::Client::connect(&address).await.expect("connect");
    let err = anonymous.route("orders").await.expect_err("no token");
    assert!(err.to_string().contains("credential"), "{err}");

    let channels = ec_client::ChannelCache::default()
        .with_token("app")
        .expect("ascii token");
    let app = ec_client::Client::connect_with(&address, channels)
        .await
        .expect("connect")
        .with_mode(ec_client::Mode::Proxy);
    wait_for("orders routable with the token", DEADLINE, || {
        let app = app.clone();
        async move { app.route("orders").await.ok() }
    })
    .await;
    let published = app
        .publish("orders", vec!["hello".into()])
        .await
        .expect("publish through the gateway with the token");
    assert_eq!(published.first.0, 0);
    let err = app
        .publish("billing", vec!["x".into()])
        .await
        .expect_err("outside the token's pattern");
    assert!(err.to_string().contains("publish:billing"), "{err}");
    drop((gateway, node));
}

#[tokio::test]
async fn the_gateway_forwards_the_callers_token_to_a_secured_node() {
    let consul = ConsulAgent::start_dev().await;
    let url = consul.http_url();
    let tokens = TokenTable::parse(&[
        "app publish:orders create:orders read:orders",
        "ro read",
        "gw read",
    ])
    .expect("valid tokens");
    // A node with the same tokens, registered in this Consul.
    let dir = tempfile::tempdir().expect("dir");
    let mut settings = ec_testnode::node_settings(dir.path(), &url, "n1");
    settings.policy.tokens = tokens.clone();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let health = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let stop = tokio_util::sync::CancellationToken::new();
    let node = tokio::spawn(ec_node::run(
        settings,
        ec_node::Listeners { grpc, health },
        stop.clone(),
    ));
    store(&consul)
        .put(&data_id("orders"), &[node_id("n1")], None)
        .await
        .expect("map orders");
    let gateway = TestGateway::start_with(&url, |s| {
        s.policy.tokens = tokens;
        s.node_token = ec_core::auth::Secret::new("gw");
    })
    .await;
    let mut gw = gateway.client().await;
    wait_for("orders routable", DEADLINE, || {
        let mut gw = gw.clone();
        async move {
            gw.get_node_for_data(as_token(
                ec_proto::GetNodeRequest {
                    data_id: "orders".into(),
                },
                Some("app"),
            ))
            .await
            .ok()
        }
    })
    .await;
    let publish = |token| {
        as_token(
            ec_proto::PublishRequest {
                data_id: "orders".into(),
                events: vec!["e".into()],
                ..Default::default()
            },
            token,
        )
    };
    // The node has tokens too: it takes the publish only because the gateway forwarded
    // the caller's credential.
    gw.publish(publish(Some("app")))
        .await
        .expect("the node accepts the forwarded token");
    let err = gw
        .publish(publish(Some("ro")))
        .await
        .expect_err("read-only");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // A read through the gateway: the gateway checks the caller's token, then reads from
    // the node presenting its own client.token (the node refuses reads without one).
    let mut events = gw
        .subscribe(as_token(
            ec_proto::StreamRequest {
                data_id: "orders".into(),
                offset: 0,
                ..Default::default()
            },
            Some("ro"),
        ))
        .await
        .expect("subscribe through the gateway")
        .into_inner();
    let batch = events
        .message()
        .await
        .expect("a batch, not a refusal")
        .expect("a batch");
    assert_eq!(batch.events.len(), 1, "{batch:?}");
    drop(events);
    stop.cancel();
    let _ = node.await;
    drop(gateway);
}

/// README's policy for a gateway that also promotes (automatic failover, admin calls).
const GATEWAY_FAILOVER_POLICY: &str = r#"
key_prefix "streaming/data/" { policy = "write" }
key_prefix "streaming/data.epochs/" { policy = "write" }
key_prefix "streaming/data.failover/" { policy = "write" }
session_prefix "" { policy = "write" }
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }
"#;

async fn status_of(gw: &mut GatewayClient<Channel>) -> Option<ec_proto::GatewayStatus> {
    gw.get_status(ec_proto::GetStatusRequest::default())
        .await
        .ok()
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn a_token_without_the_failover_rights_is_reported_at_start() {
    let consul = ConsulAgent::start_dev_with_acls().await;
    let url = consul.http_url();

    // A token that reads the mappings (routing works) but cannot take the failover lock or
    // promote: reported in GetStatus right away, naming each missing rule.
    let partial = consul
        .create_token("ec-gateway-read", GATEWAY_READ_POLICY)
        .await;
    let gateway = TestGateway::start_with(&url, |s| s.consul_token = Some(partial)).await;
    let gw = gateway.client().await;
    let status = wait_for("the missing rights are reported", DEADLINE, || {
        let mut gw = gw.clone();
        async move {
            let s = status_of(&mut gw).await?;
            (!s.consul_rights_missing.is_empty()).then_some(s)
        }
    })
    .await;
    let missing = status.consul_rights_missing.join("\n");
    for rule in [
        r#"key_prefix "streaming/data.failover/" { policy = "write" }"#,
        r#"session_prefix "" { policy = "write" }"#,
        r#"key_prefix "streaming/data/" { policy = "write" }"#,
        r#"key_prefix "streaming/data.epochs/" { policy = "write" }"#,
    ] {
        assert!(missing.contains(rule), "{rule} in {missing}");
    }
    assert!(
        !missing.contains("read the data-to-node mappings"),
        "{missing}"
    );
    assert!(status.last_error.contains("failover lock"), "{status:?}");
    drop(gateway);

    // README's failover policy: nothing missing.
    let full = consul
        .create_token("ec-gateway-failover", GATEWAY_FAILOVER_POLICY)
        .await;
    // The probes themselves, as the gateway runs them: nothing missing, nothing written.
    let client = ec_discovery::ConsulClient::new(&url, Some(full.clone())).expect("client");
    let needs = ec_discovery::gateway_needs(KV_PREFIX, true);
    let missing = ec_discovery::missing_rights(&client, &needs)
        .await
        .expect("Consul answers");
    assert!(missing.is_empty(), "{missing:?}");
    let admin = ec_discovery::ConsulClient::new(&url, Some(ec_testkit::MANAGEMENT_TOKEN.into()))
        .expect("client");
    let keys = admin
        .kv_list("streaming", &ec_discovery::QueryOptions::now())
        .await
        .expect("list");
    assert!(
        keys.value
            .iter()
            .all(|k| !k.key.contains("ec-rights-probe")),
        "a probe wrote a key: {keys:?}"
    );
    let gateway = TestGateway::start_with(&url, |s| s.consul_token = Some(full)).await;
    let mut gw = gateway.client().await;
    wait_for("the gateway reaches Consul", DEADLINE, || {
        let mut gw = gw.clone();
        async move { status_of(&mut gw).await.filter(|s| s.consul_reachable) }
    })
    .await;
    let status = status_of(&mut gw).await.expect("status");
    assert!(status.consul_rights_missing.is_empty(), "{status:?}");
    assert_eq!(status.last_error, "", "{status:?}");
    drop(gateway);
}
