//! Consul over HTTPS (`consul.ca_file`): a real agent with an HTTPS listener serving a
//! certificate from `scripts/dev-certs.sh`; the client that trusts that CA reads and writes,
//! one trusting another CA and a plain-HTTP one are refused.

use std::path::Path;
use std::process::Command;

use ec_core::{DataId, NodeId};
use ec_discovery::{ConsulClient, DiscoveryError, MappingStore};
use ec_testkit::ConsulAgent;

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

#[tokio::test]
async fn consul_over_https_trusts_only_the_configured_ca() {
    let certs = tempfile::tempdir().expect("temp dir");
    let other = tempfile::tempdir().expect("temp dir");
    dev_certs(certs.path());
    dev_certs(other.path());
    // The gateway certificate is valid for 127.0.0.1, which is all the agent needs here.
    let agent = ConsulAgent::start_dev_with_https(
        &certs.path().join("gateway.pem"),
        &certs.path().join("gateway.key"),
    )
    .await;
    let https = format!("127.0.0.1:{}", agent.https_port().expect("https port"));

    let client = ConsulClient::with_ca_file(&https, None, Some(&certs.path().join("ca.pem")))
        .expect("https client");
    assert!(
        client.base_url().starts_with("https://"),
        "{}",
        client.base_url()
    );
    let store = MappingStore::new(client, "streaming/data/");
    let data_id = DataId::parse("secure").expect("valid");
    let written = store
        .put(&data_id, &[NodeId::parse("node1").expect("valid")], None)
        .await
        .expect("write over HTTPS");
    assert_eq!(store.get(&data_id).await.expect("read"), Some(written));

    // Another CA: the handshake fails, reported as a transport error naming the address.
    let stranger = ConsulClient::with_ca_file(&https, None, Some(&other.path().join("ca.pem")))
        .expect("client");
    match MappingStore::new(stranger, "streaming/data/")
        .get(&data_id)
        .await
    {
        Err(e) => assert!(e.to_string().contains(&https), "{e}"),
        Ok(m) => panic!("a client trusting another CA read {m:?}"),
    }
    // An https URL without a CA file is refused up front, and so is a missing CA file.
    match ConsulClient::new(&format!("https://{https}"), None) {
        Err(DiscoveryError::InvalidAddress { .. }) => {}
        other => panic!("https without consul.ca_file: {other:?}"),
    }
    match ConsulClient::with_ca_file(&https, None, Some(&certs.path().join("missing.pem"))) {
        Err(e @ DiscoveryError::CaFile { .. }) => {
            assert!(e.to_string().contains("missing.pem"), "{e}")
        }
        other => panic!("a missing CA file: {other:?}"),
    }
}
