//! Who may call a node, against real nodes and a real Consul: the forged-replica attack (a
//! plain gRPC client opening `Replicate` without, or with a wrong, cluster credential, as a
//! node the mapping does not name, or claiming events it was never sent), client tokens with
//! permissions, the limit on data IDs created by publishing, and, over mutual TLS between
//! `ec-node` processes, a node certificate that may replicate only as the node it names.

use std::time::Duration;

use ec_core::{DataId, Epoch, NodeId};
use ec_discovery::{EpochStore, KvLayout};
use ec_proto::node_client::NodeClient;
use ec_proto::{ReplicaMessage, ReplicationMessage};
use ec_testkit::{ConsulAgent, wait_for};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use crate::replication::{consul_client, map, status};
use crate::util::*;

/// Opens `Replicate` on `c` as a plain client would: `secret` as the cluster credential (if
/// any), a hello claiming `replica` at `next_offset`. Returns the session's first answer (or
/// its refusal), the sender for further reports and the inbound stream.
async fn open_replicate(
    c: &mut NodeClient<Channel>,
    secret: Option<&str>,
    data_id: &str,
    replica: &str,
    epoch: u64,
    next_offset: u64,
) -> Result<
    (
        ReplicationMessage,
        mpsc::Sender<ReplicaMessage>,
        Streaming<ReplicationMessage>,
    ),
    Status,
> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(ReplicaMessage {
        data_id: data_id.into(),
        replica_id: replica.into(),
        leader_epoch: epoch,
        epochs: Vec::new(),
        earliest_offset: 0,
        next_offset,
    })
    .await
    .expect("queue hello");
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(s) = secret {
        req.metadata_mut()
            .insert("ec-cluster-secret", s.parse().expect("ascii"));
    }
    let mut inbound = c.replicate(req).await?.into_inner();
    let first = inbound
        .message()
        .await?
        .ok_or_else(|| Status::aborted("closed"))?;
    Ok((first, tx, inbound))
}

#[tokio::test]
async fn forged_replica_sessions_are_refused_and_acks_all_waits_for_a_real_replica() {
    let consul = ConsulAgent::start_dev().await;
    let url = consul.http_url();
    let orders = DataId::parse("orders").expect("id");
    let (n1, n2) = (
        NodeId::parse("n1").expect("id"),
        NodeId::parse("n2").expect("id"),
    );
    // n2 is a real replica that is down: in the in-sync set of the last epoch, never here.
    // A long lag limit keeps it in the set for the whole test, as after a recent crash.
    let epochs = EpochStore::new(consul_client(&consul), KV_PREFIX);
    epochs
        .put(&orders, Epoch(1), &n1, &[n1.clone(), n2.clone()], None)
        .await
        .expect("seed epoch record");
    let node = TestNode::start_replicated(&url, "n1", |r| {
        r.max_lag_time = Duration::from_secs(600);
        r.ack_timeout = Duration::from_secs(2);
    })
    .await;
    let mut c = node.client().await;
    map(&consul, "orders", &["n1", "n2"]).await;
    let epoch = wait_for("n1 claims a new epoch", DEADLINE, || {
        let epochs = epochs.clone();
        let orders = orders.clone();
        async move {
            let r = epochs.get(&orders).await.ok()??;
            (r.primary.as_str() == "n1" && r.epoch > Epoch(1) && r.in_sync.len() == 2)
                .then_some(r.epoch.0)
        }
    })
    .await;
    for round in 0..11 {
        publish_acks(
            &mut c,
            "orders",
            payloads(&format!("r{round}"), 1),
            "leader",
        )
        .await
        .expect("acks=leader publish");
    }
    let secret = wait_for("the cluster secret is in Consul", DEADLINE, || {
        let consul = consul_client(&consul);
        async move {
            let pair = consul
                .kv_get(&KvLayout::new(KV_PREFIX).cluster_secret_key())
                .await
                .ok()??;
            String::from_utf8(pair.value).ok()
        }
    })
    .await;

    // No credential, a wrong one: not a cluster member.
    for (cred, what) in [(None, "missing"), (Some("not-the-secret"), "wrong")] {
        let Err(err) = open_replicate(&mut c, cred, "orders", "n2", epoch, 1011).await else {
            panic!("{what} credential accepted");
        };
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
        assert!(err.message().contains("ec-cluster-secret"), "{err:?}");
    }
    // The right credential, but a replica the mapping does not name.
    let Err(err) = open_replicate(&mut c, Some(&secret), "orders", "evil", epoch, 0).await else {
        panic!("a replica outside the mapping was accepted");
    };
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("evil"), "{err:?}");

    // None of that made a replica: acks=all is not acknowledged while n2 holds nothing.
    let err = publish_acks(&mut c, "orders", payloads("must-wait", 1), "all")
        .await
        .expect_err("acks=all acknowledged without a real replica");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    let s = status(&mut c, "orders").await.expect("status");
    assert_eq!(s.log_end_offset, 12);
    assert_eq!(s.high_watermark, 0, "n2 holds the high watermark: {s:?}");

    // The right credential and a named replica, claiming 1011 against a log ending at 12:
    // the session is cut to the primary's end, and the claim is refused, naming both.
    let (first, tx, mut inbound) =
        open_replicate(&mut c, Some(&secret), "orders", "n2", epoch, 1011)
            .await
            .expect("session opens");
    assert_eq!(first.truncate_to, Some(12), "{first:?}");
    tx.send(ReplicaMessage {
        next_offset: 1011,
        ..Default::default()
    })
    .await
    .expect("send report");
    let refused = loop {
        match inbound.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("session ended without a refusal"),
            Err(status) => break status,
        }
    };
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("1011") && refused.message().contains("12"),
        "{refused:?}"
    );
    // The claim counted for nothing: the high watermark never passed the log end and the
    // published event is still not acknowledged as replicated.
    let s = status(&mut c, "orders").await.expect("status");
    assert!(s.high_watermark <= 12, "{s:?}");
    let n2_progress = s.replicas.iter().find(|r| r.node_id == "n2").expect("n2");
    assert!(n2_progress.next_offset <= 12, "{n2_progress:?}");
    drop(node);
}

#[tokio::test]
async fn replicas_still_join_with_the_provisioned_secret() {
    // The default configuration: no node.cluster_secret anywhere; both nodes share the one
    // created in Consul, and replication works.
    let consul = ConsulAgent::start_dev().await;
    let url = consul.http_url();
    let n1 = TestNode::start_replicated(&url, "n1", |_| {}).await;
    let n2 = TestNode::start_replicated(&url, "n2", |_| {}).await;
    let mut c1 = n1.client().await;
    map(&consul, "orders", &["n1", "n2"]).await;
    crate::replication::wait_in_sync(&c1, "orders", &["n1", "n2"]).await;
    publish_acks(&mut c1, "orders", payloads("a", 3), "all")
        .await
        .expect("acks=all with a real replica");
    drop((n1, n2));
}

/// Publishes one event as `token` (if any) over `c`.
async fn publish_as(
    c: &mut NodeClient<Channel>,
    token: Option<&str>,
    data_id: &str,
) -> Result<ec_proto::PublishResponse, Status> {
    let mut req = tonic::Request::new(ec_proto::PublishRequest {
        data_id: data_id.into(),
        events: payloads("e", 1),
        ..Default::default()
    });
    if let Some(t) = token {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("ascii"),
        );
    }
    c.publish(req).await.map(tonic::Response::into_inner)
}

/// The data IDs `c` lists (as `token`).
async fn listed(c: &mut NodeClient<Channel>, token: Option<&str>) -> Vec<String> {
    let mut req = tonic::Request::new(ec_proto::ListStreamsRequest::default());
    if let Some(t) = token {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("ascii"),
        );
    }
    let mut ids: Vec<String> = c
        .list_streams(req)
        .await
        .expect("list")
        .into_inner()
        .streams
        .into_iter()
        .map(|s| s.data_id)
        .collect();
    ids.sort();
    ids
}

fn tokens(entries: &[&str]) -> ec_core::auth::TokenTable {
    ec_core::auth::TokenTable::parse(entries).expect("valid tokens")
}

#[tokio::test]
async fn tokens_grant_publish_read_and_create_per_data_id_pattern() {
    let node = TestNode::start(NO_CONSUL, |s| {
        s.policy.tokens = tokens(&[
            "writer publish:orders.* create:orders.* read:orders.*",
            "appender publish:*",
            "reader read:*",
        ]);
        s.max_created_data_ids = Some(2);
    })
    .await;
    let mut c = node.client().await;

    // No token, an unknown one: UNAUTHENTICATED, and nothing is created.
    let err = publish_as(&mut c, None, "orders.eu")
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("authorization: Bearer"), "{err:?}");
    let err = publish_as(&mut c, Some("guess"), "orders.eu")
        .await
        .expect_err("unknown token");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // A token without the permission: PERMISSION_DENIED naming it.
    let err = publish_as(&mut c, Some("reader"), "orders.eu")
        .await
        .expect_err("reader publishes");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("publish:orders.eu"), "{err:?}");
    let err = publish_as(&mut c, Some("writer"), "billing")
        .await
        .expect_err("outside the pattern");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // Publish without create: the data ID does not exist yet, so it is refused.
    let err = publish_as(&mut c, Some("appender"), "orders.eu")
        .await
        .expect_err("create without permission");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("create:orders.eu"), "{err:?}");
    assert!(listed(&mut c, Some("reader")).await.is_empty());

    publish_as(&mut c, Some("writer"), "orders.eu")
        .await
        .expect("writer creates");
    publish_as(&mut c, Some("appender"), "orders.eu")
        .await
        .expect("appender appends to an existing data ID");
    publish_as(&mut c, Some("writer"), "orders.us")
        .await
        .expect("second data ID");
    // limits.max_created_data_ids = 2.
    let err = publish_as(&mut c, Some("writer"), "orders.asia")
        .await
        .expect_err("third data ID");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("limits.max_created_data_ids"),
        "{err:?}"
    );
    assert_eq!(
        listed(&mut c, Some("reader")).await,
        ["orders.eu", "orders.us"]
    );

    // Reads need the read permission too.
    let err = c
        .get_stream_info(ec_proto::StreamInfoRequest {
            data_id: "orders.eu".into(),
        })
        .await
        .expect_err("read without token");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let mut read = collect_as(&mut c, Some("appender"), "orders.eu").await;
    assert_eq!(
        read.as_ref().map_err(Status::code),
        Err(Code::PermissionDenied)
    );
    read = collect_as(&mut c, Some("reader"), "orders.eu").await;
    assert_eq!(read.expect("reader reads").len(), 2);
    drop(node);
}

async fn collect_as(
    c: &mut NodeClient<Channel>,
    token: Option<&str>,
    data_id: &str,
) -> Result<Vec<ec_proto::Event>, Status> {
    let mut req = tonic::Request::new(read_from(data_id, 0));
    if let Some(t) = token {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("ascii"),
        );
    }
    let mut stream = c.stream_batches(req).await?.into_inner();
    let mut out = Vec::new();
    while let Some(batch) = stream.message().await? {
        out.extend(batch.events);
    }
    Ok(out)
}

#[tokio::test]
async fn protected_mode_refuses_remote_state_changes_and_allows_loopback() {
    // Through loopback, an unsecured node takes publishes (the default test setup).
    let node = TestNode::start_bound("0.0.0.0", |_| {}).await;
    let port = node.grpc_addr.port();
    let mut local = connect(std::net::SocketAddr::from(([127, 0, 0, 1], port))).await;
    publish_as(&mut local, None, "orders")
        .await
        .expect("loopback publishes");

    let Some(ip) = non_loopback_ip() else {
        // The peer-address rule itself is unit-tested in ec-core (auth::tests).
        eprintln!("no non-loopback address on this machine; remote half of the test skipped");
        return;
    };
    let mut remote = connect(std::net::SocketAddr::new(ip, port)).await;
    let err = publish_as(&mut remote, None, "orders")
        .await
        .expect_err("remote publish in protected mode");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    for needle in [
        "protected mode",
        "security.tokens",
        "security.protected_mode: false",
    ] {
        assert!(err.message().contains(needle), "{needle}: {err:?}");
    }
    // Reads stay open; nothing was appended by the refused publish.
    let info = remote
        .get_stream_info(ec_proto::StreamInfoRequest {
            data_id: "orders".into(),
        })
        .await
        .expect("remote read")
        .into_inner();
    assert_eq!(info.next_offset, 1);
    drop(node);

    // Opted out: remote publishes are taken.
    let open = TestNode::start_bound("0.0.0.0", |s| s.policy.protected_mode = false).await;
    let mut remote = connect(std::net::SocketAddr::new(ip, open.grpc_addr.port())).await;
    publish_as(&mut remote, None, "orders")
        .await
        .expect("protected_mode false");
    drop(open);

    // With credentials configured, a remote caller with a token is served.
    let secured = TestNode::start_bound("0.0.0.0", |s| {
        s.policy.tokens = tokens(&["w publish create read"]);
    })
    .await;
    let mut remote = connect(std::net::SocketAddr::new(ip, secured.grpc_addr.port())).await;
    publish_as(&mut remote, Some("w"), "orders")
        .await
        .expect("token from remote");
    drop(secured);
}

/// The smallest Consul ACL policy a node needs (README, "Consul ACLs").
pub const NODE_POLICY: &str = r#"
key_prefix "streaming/data/" { policy = "read" }
key_prefix "streaming/data.epochs/" { policy = "write" }
key "streaming/data.cluster/secret" { policy = "write" }
service "streaming-node" { policy = "write" }
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }
"#;

#[tokio::test]
async fn a_node_that_cannot_read_its_mappings_never_acts_standalone() {
    let consul = ConsulAgent::start_dev_with_acls().await;
    let url = consul.http_url();
    let admin = ec_discovery::MappingStore::new(
        ec_discovery::ConsulClient::new(&url, Some(ec_testkit::MANAGEMENT_TOKEN.into()))
            .expect("client"),
        KV_PREFIX,
    );
    admin
        .put(
            &DataId::parse("orders").expect("id"),
            &[
                NodeId::parse("n2").expect("id"),
                NodeId::parse("n1").expect("id"),
            ],
            None,
        )
        .await
        .expect("write mapping as management");

    // No Consul token: the mappings cannot be read, so neither the mapped data ID nor a
    // new one is taken as standalone.
    let blind = TestNode::start_replicated(&url, "n1", |_| {}).await;
    let mut c = blind.client().await;
    for data_id in ["orders", "fresh"] {
        let err = wait_for(
            &format!("{data_id} refused for a permission reason"),
            DEADLINE,
            || {
                let mut c = c.clone();
                async move {
                    let err = publish_acks(&mut c, data_id, payloads("x", 1), "leader")
                        .await
                        .err()?;
                    err.message().contains("permission denied").then_some(err)
                }
            },
        )
        .await;
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().contains("cannot read the mapping"), "{err:?}");
    }
    assert!(listed(&mut c, None).await.is_empty(), "nothing was created");
    drop(blind);

    // The minimal node policy: mapped elsewhere is refused naming the primary, a new data
    // ID is created (Consul is readable and has no mapping for it).
    let token = consul.create_token("ec-node", NODE_POLICY).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut s = settings(dir.path(), &url, "n3");
    s.consul_token = Some(token);
    let node = TestNode::start_replicated_with(s, replication()).await;
    let mut c = node.client().await;
    // Once the first mappings snapshot is in (UNAVAILABLE until then, as above).
    wait_for("auto-create with a readable Consul", DEADLINE, || {
        let mut c = c.clone();
        async move {
            publish_acks(&mut c, "fresh", payloads("x", 1), "leader")
                .await
                .ok()
        }
    })
    .await;
    let err = publish_acks(&mut c, "orders", payloads("x", 1), "leader")
        .await
        .expect_err("mapped to n2");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("n2"), "{err:?}");
    drop(node);
}

/// A CA and certificates for `nodes` and a client, by `scripts/dev-certs.sh`, in `dir`.
fn dev_certs(dir: &std::path::Path, nodes: &str) {
    let out = std::process::Command::new("bash")
        .arg(ec_testkit::workspace_root().join("scripts/dev-certs.sh"))
        .args(["--out", &dir.display().to_string(), "--nodes", nodes])
        .output()
        .expect("run dev-certs.sh");
    assert!(
        out.status.success(),
        "dev-certs.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A node client over mutual TLS presenting `name`'s certificate from `dir`.
async fn tls_client(
    dir: &std::path::Path,
    name: &str,
    addr: std::net::SocketAddr,
) -> NodeClient<Channel> {
    let tls = ec_grpc::TlsFiles {
        cert_file: Some(dir.join(format!("{name}.pem"))),
        key_file: Some(dir.join(format!("{name}.key"))),
        ca_file: Some(dir.join("ca.pem")),
        require_client_cert: false,
    }
    .client()
    .expect("client TLS files")
    .expect("TLS on");
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls config");
    let channel = wait_for("the node accepts TLS connections", DEADLINE, || {
        let endpoint = endpoint.clone();
        async move { endpoint.connect().await.ok() }
    })
    .await;
    NodeClient::new(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_replicates_only_as_the_node_it_names() {
    let certs = tempfile::tempdir().expect("temp dir");
    let dir = certs.path();
    dev_certs(dir, "n1,n2,n3");
    let consul = ConsulAgent::start_dev().await;
    map(&consul, "orders", &["n1", "n2", "n3"]).await;

    // Two ec-node processes on mutual TLS, each with its own node certificate; n3 is down.
    // The cluster secret is configured, so the attacker below holds it too: what stops it
    // is the certificate alone.
    let data = tempfile::tempdir().expect("temp dir");
    let secret = "s3cret-of-the-cluster";
    let spawn = |id: &str| {
        let (cert, key, ca) = (
            dir.join(format!("{id}.pem")),
            dir.join(format!("{id}.key")),
            dir.join("ca.pem"),
        );
        NodeProcess::spawn_env(
            &data.path().join(id),
            &consul.http_addr().to_string(),
            id,
            &[
                "--tls-cert",
                &cert.display().to_string(),
                "--tls-key",
                &key.display().to_string(),
                "--tls-ca",
                &ca.display().to_string(),
                "--tls-require-client-cert",
                "true",
            ],
            &[
                ("EVENT_CATCHER_NODE_CLUSTER_SECRET", secret),
                ("EVENT_CATCHER_NODE_REPLICATION_MIN_INSYNC", "1"),
            ],
        )
    };
    let n1 = spawn("n1");
    let n2 = spawn("n2");
    let mut c = tls_client(dir, "client", n1.grpc_addr).await;
    wait_for("n1 takes publishes as primary over TLS", DEADLINE, || {
        let mut c = c.clone();
        async move {
            publish_acks(&mut c, "orders", payloads("a", 3), "leader")
                .await
                .ok()
        }
    })
    .await;
    // The real n2 replicates over mutual TLS with its own certificate.
    crate::replication::wait_in_sync(&c, "orders", &["n1", "n2"]).await;
    let before = status(&mut c, "orders").await.expect("status");

    // n2's certificate (stolen, or n2 itself misbehaving) claiming to be n3: refused,
    // naming both, before anything of the session exists.
    let mut stolen = tls_client(dir, "n2", n1.grpc_addr).await;
    let Err(err) = open_replicate(
        &mut stolen,
        Some(secret),
        "orders",
        "n3",
        before.epoch,
        before.log_end_offset + 1000,
    )
    .await
    else {
        panic!("n2's certificate was accepted as n3");
    };
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    for needle in ["claims node ID n3", "names n2"] {
        assert!(err.message().contains(needle), "{needle}: {err:?}");
    }
    // A client certificate names no node at all.
    let mut client_cert = tls_client(dir, "client", n1.grpc_addr).await;
    let Err(err) = open_replicate(
        &mut client_cert,
        Some(secret),
        "orders",
        "n3",
        before.epoch,
        0,
    )
    .await
    else {
        panic!("a client certificate was accepted as n3");
    };
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // Nothing changed: n3 never reported, the high watermark is within the log, and the
    // real n2 is still in sync.
    let after = status(&mut c, "orders").await.expect("status");
    let n3 = after.replicas.iter().find(|r| r.node_id == "n3");
    assert!(n3.is_none_or(|r| !r.known && !r.connected), "{after:?}");
    assert!(after.high_watermark <= after.log_end_offset, "{after:?}");
    assert_eq!(after.log_end_offset, before.log_end_offset);
    assert!(after.in_sync.iter().any(|n| n == "n2"), "{after:?}");
    drop((n1, n2));
}

/// A node policy that reads the mappings and registers, but cannot claim epochs or read the
/// cluster secret.
const NODE_READ_ONLY_POLICY: &str = r#"
key_prefix "streaming/data/" { policy = "read" }
service "streaming-node" { policy = "write" }
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }
"#;

#[tokio::test]
async fn a_node_token_missing_rights_is_reported_by_the_health_endpoint() {
    let consul = ConsulAgent::start_dev_with_acls().await;
    let url = consul.http_url();
    let partial = consul
        .create_token("ec-node-partial", NODE_READ_ONLY_POLICY)
        .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut s = settings(dir.path(), &url, "n1");
    s.consul_token = Some(partial);
    let node = TestNode::start_replicated_with(s, replication()).await;
    let health = format!("http://{}/health", node.health_addr);
    let body = wait_for(
        "the health endpoint lists the missing rights",
        DEADLINE,
        || {
            let health = health.clone();
            async move {
                let body = reqwest::get(&health).await.ok()?.text().await.ok()?;
                body.contains("consul_rights_missing").then_some(body)
            }
        },
    )
    .await;
    for rule in [
        r#"key_prefix \"streaming/data.epochs/\" { policy = \"write\" }"#,
        r#"key \"streaming/data.cluster/secret\""#,
    ] {
        assert!(body.contains(rule), "{rule} in {body}");
    }
    assert!(!body.contains("read the data-to-node mappings"), "{body}");
    drop(node);

    // README's node policy: nothing missing, and the probes wrote nothing.
    let token = consul.create_token("ec-node", NODE_POLICY).await;
    let client = ec_discovery::ConsulClient::new(&url, Some(token)).expect("client");
    let missing =
        ec_discovery::missing_rights(&client, &ec_discovery::node_needs(KV_PREFIX, false))
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
        "{keys:?}"
    );
}
