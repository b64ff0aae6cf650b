//! The node as Consul and operators see it: health endpoints, registration with a passing
//! check, deregistration on shutdown, and registering again after Consul forgot it.

use ec_testkit::{ConsulAgent, wait_for};
use serde_json::Value;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::util::*;

/// Entries of `/v1/health/service/streaming-node` as raw JSON.
async fn health_entries(consul: &ConsulAgent) -> Option<Vec<Value>> {
    let url = format!("{}/v1/health/service/streaming-node", consul.http_url());
    reqwest::get(url).await.ok()?.json().await.ok()
}

fn check_status(entry: &Value) -> Option<&str> {
    entry["Checks"]
        .as_array()?
        .iter()
        .find(|c| c["ServiceID"] == entry["Service"]["ID"])?["Status"]
        .as_str()
}

/// Waits until node `id` is registered with a passing check; returns its entry.
async fn wait_passing(consul: &ConsulAgent, id: &str) -> Value {
    wait_for(
        &format!("{id} passing in Consul"),
        DEADLINE,
        || async move {
            let entries = health_entries(consul).await?;
            entries
                .into_iter()
                .find(|e| e["Service"]["ID"] == id && check_status(e) == Some("passing"))
        },
    )
    .await
}

async fn wait_absent(consul: &ConsulAgent, id: &str) {
    wait_for(&format!("{id} gone from Consul"), DEADLINE, || async move {
        let entries = health_entries(consul).await?;
        (!entries.iter().any(|e| e["Service"]["ID"] == id)).then_some(())
    })
    .await
}

#[tokio::test]
async fn registers_with_a_passing_check_and_deregisters_on_shutdown() {
    let consul = ConsulAgent::start_dev().await;
    let node = TestNode::start(&consul.http_url(), |s| s.tags = vec!["zone-a".into()]).await;
    let mut c = node.client().await;
    publish(&mut c, "held-1", payloads("x", 1))
        .await
        .expect("publish");

    let entry = wait_passing(&consul, "node1").await;
    let svc = &entry["Service"];
    assert_eq!(svc["Service"], "streaming-node");
    assert_eq!(svc["Address"], "127.0.0.1");
    assert_eq!(svc["Port"], node.grpc_addr.port());
    let tags: Vec<&str> = svc["Tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(tags.contains(&"zone-a"), "{tags:?}");
    assert_eq!(svc["Meta"]["version"], env!("CARGO_PKG_VERSION"));
    // The data IDs held appear in the meta once the node refreshes it.
    wait_for("meta lists held data IDs", DEADLINE, || async {
        let entries = health_entries(&consul).await?;
        let e = entries
            .into_iter()
            .find(|e| e["Service"]["ID"] == "node1")?;
        (e["Service"]["Meta"]["data_ids"] == "held-1").then_some(())
    })
    .await;

    node.stop().await.expect("clean stop");
    wait_absent(&consul, "node1").await;
}

#[tokio::test]
async fn is_passing_from_registration_before_consul_first_runs_its_check() {
    let consul = ConsulAgent::start_dev().await;
    // Consul runs an HTTP check first at a random moment within its interval: with an hour,
    // not during this test, so the status seen is the one the node registered with.
    let _node = TestNode::start(&consul.http_url(), |s| {
        s.check_interval = std::time::Duration::from_secs(3600);
    })
    .await;
    let entry = wait_for("node1 registered", DEADLINE, || async {
        health_entries(&consul)
            .await?
            .into_iter()
            .find(|e| e["Service"]["ID"] == "node1")
    })
    .await;
    assert_eq!(check_status(&entry), Some("passing"), "{entry}");
}

#[tokio::test]
async fn health_endpoints_report_serving_and_reflection_lists_services() {
    let node = TestNode::start(NO_CONSUL, |_| {}).await;
    let body = reqwest::get(format!("http://{}/health", node.health_addr))
        .await
        .expect("http health");
    assert_eq!(body.status(), 200);
    assert!(body.text().await.expect("body").contains("serving"));

    let channel = tonic::transport::Channel::from_shared(format!("http://{}", node.grpc_addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "streaming.Node"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("check")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("reflection")
        .into_inner();
    let msg = resp.message().await.expect("ok").expect("response");
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("unexpected reflection answer {msg:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["streaming.Node", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    // Only what the node serves: the gateway's services share the .proto but not the port.
    for other in ["streaming.Gateway", "streaming.Failover"] {
        assert!(!names.iter().any(|n| n == other), "{other} in {names:?}");
    }
    node.stop().await.expect("stop");
}

#[tokio::test]
async fn registers_again_after_consul_restarts_and_forgets_it() {
    let mut consul = ConsulAgent::start_server().await;
    let node = TestNode::start(&consul.http_url(), |_| {}).await;
    wait_passing(&consul, "node1").await;

    // A forced deregistration is what a restarted agent without the registration looks like.
    let url = format!("{}/v1/agent/service/deregister/node1", consul.http_url());
    let resp = reqwest::Client::new()
        .put(url)
        .send()
        .await
        .expect("deregister");
    assert!(resp.status().is_success());
    wait_passing(&consul, "node1").await;

    consul.kill();
    consul.restart().await;
    wait_passing(&consul, "node1").await;
    node.stop().await.expect("stop");
}

#[tokio::test]
async fn node_serves_and_stops_cleanly_while_consul_is_down() {
    let port = ec_testkit::free_port();
    let node = TestNode::start(&format!("http://127.0.0.1:{port}"), |_| {}).await;
    let mut c = node.client().await;
    publish(&mut c, "early", payloads("e", 2))
        .await
        .expect("serves without Consul");
    assert_eq!(
        collect(&mut c, read_from("early", 0))
            .await
            .expect("read")
            .len(),
        2
    );
    node.stop().await.expect("stop while Consul is down");
}
