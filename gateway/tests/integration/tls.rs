//! TLS end to end, with certificates made by `scripts/dev-certs.sh`: a node and a gateway on
//! TLS listeners (the gateway requiring client certificates), the SDK publishing and reading
//! through the gateway (gateway to node over TLS too) and straight to the node; a client that
//! trusts another CA, one without a client certificate and one speaking plaintext are refused;
//! certificate problems the client finds in the handshake are not retried and name the setting.

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use ec_client::{ChannelCache, ChannelSettings, Client, Mode, Start, StreamOptions};
use ec_grpc::TlsFiles;
use ec_testkit::ConsulAgent;
use futures_util::StreamExt;

use crate::util::*;

/// A CA and certificates for node1, the gateway and a client, in `dir`.
fn dev_certs(dir: &Path) {
    let script = ec_testkit::workspace_root().join("scripts/dev-certs.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(["--out", &dir.display().to_string(), "--nodes", "node1"])
        .output()
        .expect("run dev-certs.sh");
    assert!(
        out.status.success(),
        "dev-certs.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn files(dir: &Path, name: Option<&str>, require_client_cert: bool) -> TlsFiles {
    TlsFiles {
        cert_file: name.map(|n| dir.join(format!("{n}.pem"))),
        key_file: name.map(|n| dir.join(format!("{n}.key"))),
        ca_file: Some(dir.join("ca.pem")),
        require_client_cert,
    }
}

async fn client(gateway: String, tls: TlsFiles) -> Result<Client, ec_client::ClientError> {
    client_with(gateway, tls.client().expect("client TLS files")).await
}

async fn client_with(
    gateway: String,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<Client, ec_client::ClientError> {
    let channels = ChannelCache::new(ChannelSettings {
        tls,
        ..ChannelSettings::default()
    });
    Client::connect_with(&gateway, channels).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_round_trip_and_refusals() {
    let certs = tempfile::tempdir().expect("temp dir");
    let other = tempfile::tempdir().expect("temp dir");
    dev_certs(certs.path());
    dev_certs(other.path());
    let dir = certs.path();

    let consul = ConsulAgent::start_dev().await;
    let node1 = TestNode::start_with(&consul.http_url(), "node1", |s| {
        s.tls = files(dir, Some("node1"), false);
    })
    .await;
    let gateway = TestGateway::start_with(&consul.http_url(), |s| {
        s.tls = files(dir, Some("gateway"), true);
    })
    .await;
    store(&consul)
        .put_force(&data_id("secure"), &[node_id("node1")])
        .await
        .expect("map");

    // Through the gateway (client → gateway → node, TLS on both hops, mutual on the first).
    let trusted = files(dir, Some("client"), false);
    let proxy = ec_testkit::wait_for("the gateway routes secure over TLS", DEADLINE, || {
        let connecting = client(gateway.addr.to_string(), trusted.clone());
        async move {
            let c = connecting.await.ok()?.with_mode(Mode::Proxy);
            c.publish("secure", vec![Bytes::from("one")]).await.ok()?;
            Some(c)
        }
    })
    .await;
    proxy
        .publish("secure", vec![Bytes::from("two")])
        .await
        .expect("publish through the gateway");
    // Straight to the node (redirect mode): the node's listener is TLS too.
    let direct = client(gateway.addr.to_string(), trusted.clone())
        .await
        .expect("client");
    direct
        .publish("secure", vec![Bytes::from("three")])
        .await
        .expect("publish to the node");
    let events: Vec<Bytes> = proxy
        .subscribe(
            "secure",
            StreamOptions::from_start(Start::Earliest)
                .follow(false)
                .max_count(Some(3)),
        )
        .events()
        .map(|e| e.expect("event").data)
        .collect()
        .await;
    assert_eq!(events, ["one", "two", "three"].map(Bytes::from));

    // Refused: a client trusting another CA, a client without a certificate (the gateway
    // requires one), and a plaintext client.
    let refusals = [
        ("another CA", files(other.path(), Some("client"), false)),
        ("no client certificate", files(dir, None, false)),
        ("plaintext", TlsFiles::default()),
    ];
    for (what, tls) in refusals {
        let refused = match client(gateway.addr.to_string(), tls).await {
            Err(e) => e.to_string(),
            // The retrying publisher would keep trying a refused handshake (it looks like a
            // lost connection) for its whole delivery timeout: keep that short here.
            Ok(c) => match c
                .with_mode(Mode::Proxy)
                .with_delivery_timeout(std::time::Duration::from_secs(3))
                .publish("secure", vec![Bytes::from("intruder")])
                .await
            {
                Err(e) => e.to_string(),
                Ok(p) => panic!("{what}: a publish was accepted: {p:?}"),
            },
        };
        // The refusal happens in the TLS handshake, before any RPC is decided: a transport
        // failure, reported as such or as the delivery timeout it ran into.
        assert!(
            refused.contains("cannot connect to the gateway")
                || refused.contains("transport error")
                || refused.contains("Cancelled")
                || refused.contains("canceled")
                || refused.contains("h2 protocol error"),
            "{what}: {refused}"
        );
    }
    // Certificate problems the client itself finds in the handshake end at once, as
    // UNAUTHENTICATED naming the setting to fix, instead of being retried as a lost
    // connection until the delivery timeout: a server certificate from another CA, and one
    // that does not name the host dialed.
    let wrong_name = files(dir, Some("client"), false)
        .client()
        .expect("client TLS files")
        .map(|t| t.domain_name("not-the-gateway.example"));
    let certificate_problems = [
        (
            "another CA",
            files(other.path(), Some("client"), false)
                .client()
                .expect("client TLS files"),
            "tls.ca_file",
        ),
        ("a name the certificate lacks", wrong_name, "does not name"),
    ];
    for (what, tls, setting) in certificate_problems {
        let refused = match client_with(gateway.addr.to_string(), tls).await {
            Err(e) => e,
            Ok(c) => tokio::time::timeout(
                std::time::Duration::from_secs(60),
                c.with_mode(Mode::Proxy)
                    .with_delivery_timeout(std::time::Duration::from_secs(600))
                    .publish("secure", vec![Bytes::from("intruder")]),
            )
            .await
            .unwrap_or_else(|_| panic!("{what}: the publisher kept retrying"))
            .expect_err("refused"),
        };
        let message = refused.to_string();
        assert_eq!(
            refused.code(),
            tonic::Code::Unauthenticated,
            "{what}: {message}"
        );
        assert!(!refused.is_retriable_publish(), "{what}: {message}");
        assert!(message.contains(setting), "{what}: {message}");
        assert!(message.contains("not retried"), "{what}: {message}");
    }

    let after: Vec<u64> = proxy
        .subscribe(
            "secure",
            StreamOptions::from_start(Start::Earliest).follow(false),
        )
        .events()
        .map(|e| e.expect("event").offset.0)
        .collect()
        .await;
    assert_eq!(after, [0, 1, 2], "nothing from a refused client was stored");

    gateway.stop().await.expect("clean stop");
    node1.stop().await.expect("clean stop");
}

/// Replication between nodes over mutual TLS: the replica dials its primary with its own
/// node certificate, and both listeners require one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_runs_over_mutual_tls() {
    let certs = tempfile::tempdir().expect("temp dir");
    let dir = certs.path();
    let out = Command::new("bash")
        .arg(ec_testkit::workspace_root().join("scripts/dev-certs.sh"))
        .args([
            "--out",
            &dir.display().to_string(),
            "--nodes",
            "node1,node2",
        ])
        .output()
        .expect("run dev-certs.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let consul = ConsulAgent::start_dev().await;
    store(&consul)
        .put_force(&data_id("r"), &[node_id("node1"), node_id("node2")])
        .await
        .expect("map");
    let node1 = TestNode::start_replicated_with_settings(&consul.http_url(), "node1", |s| {
        s.tls = files(dir, Some("node1"), true);
    })
    .await;
    let node2 = TestNode::start_replicated_with_settings(&consul.http_url(), "node2", |s| {
        s.tls = files(dir, Some("node2"), true);
    })
    .await;

    let channels = ChannelCache::new(ChannelSettings {
        tls: files(dir, Some("client"), false)
            .client()
            .expect("client TLS"),
        ..ChannelSettings::default()
    });
    let publisher = Client::with_nodes_and_channels(
        vec![ec_client::Candidate::new("node1", node1.address())],
        channels.clone(),
    )
    .expect("client");
    ec_testkit::wait_for("node1 takes writes as primary over TLS", DEADLINE, || {
        let publisher = publisher.clone();
        async move {
            publisher
                .publish("r", vec![Bytes::from("a"), Bytes::from("b")])
                .await
                .ok()
        }
    })
    .await;
    let replica = channels.get(&node2.address()).expect("channel");
    ec_testkit::wait_for("node2 holds the events, copied over TLS", DEADLINE, || {
        let mut node2 = ec_proto::node_client::NodeClient::new(replica.clone());
        async move {
            let info = node2
                .get_stream_info(ec_proto::StreamInfoRequest {
                    data_id: "r".into(),
                })
                .await
                .ok()?
                .into_inner();
            (info.log_end_offset >= 2).then_some(())
        }
    })
    .await;
    node2.stop().await.expect("clean stop");
    node1.stop().await.expect("clean stop");
}
