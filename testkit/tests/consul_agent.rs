//! Tests of `ConsulAgent` against the real Consul binary: a dev agent serves KV, a one-server
//! agent keeps KV across SIGKILL and SIGTERM restarts on the same port, and agents started
//! side by side never share a port.

use std::collections::HashSet;
use std::time::Duration;

use ec_testkit::{ConsulAgent, wait_for};

const DEADLINE: Duration = Duration::from_secs(30);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .expect("http client")
}

async fn kv_put(agent: &ConsulAgent, key: &str, value: &str) {
    let resp = client()
        .put(format!("{}/v1/kv/{key}", agent.http_url()))
        .body(value.to_owned())
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT {key}: {e}\n{}", agent.log_tail()));
    assert!(resp.status().is_success(), "PUT {key}: {}", resp.status());
    assert_eq!(resp.text().await.expect("body").trim(), "true");
}

async fn kv_get(agent: &ConsulAgent, key: &str) -> Option<String> {
    let resp = client()
        .get(format!("{}/v1/kv/{key}?raw", agent.http_url()))
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.text().await.ok()
}

#[tokio::test]
async fn dev_agent_answers_kv_put_and_get() {
    let agent = ConsulAgent::start_dev().await;
    assert_eq!(agent.host(), "127.0.0.1");
    assert_eq!(
        agent.http_url(),
        format!("http://127.0.0.1:{}", agent.port())
    );
    assert_eq!(agent.http_addr().port(), agent.port());

    kv_put(&agent, "ec-testkit/hello", "world").await;
    assert_eq!(
        kv_get(&agent, "ec-testkit/hello").await.as_deref(),
        Some("world")
    );
    assert!(
        agent.log_tail().contains("Consul agent running"),
        "{}",
        agent.log_tail()
    );
}

#[tokio::test]
async fn server_agent_keeps_kv_across_kill_and_stop() {
    let mut agent = ConsulAgent::start_server().await;
    let port = agent.port();
    kv_put(&agent, "ec-testkit/durable", "v1").await;

    agent.kill();
    assert!(
        kv_get(&agent, "ec-testkit/durable").await.is_none(),
        "killed agent still answers"
    );
    agent.restart().await;
    assert_eq!(agent.port(), port, "restart must keep the HTTP port");
    let value = wait_for("the KV value after a SIGKILL restart", DEADLINE, || {
        kv_get(&agent, "ec-testkit/durable")
    })
    .await;
    assert_eq!(value, "v1", "{}", agent.log_tail());

    kv_put(&agent, "ec-testkit/durable", "v2").await;
    agent.stop().await;
    agent.restart().await;
    let value = wait_for("the KV value after a SIGTERM restart", DEADLINE, || {
        kv_get(&agent, "ec-testkit/durable")
    })
    .await;
    assert_eq!(value, "v2", "{}", agent.log_tail());
}

#[tokio::test]
async fn agents_side_by_side_get_different_ports() {
    let (a, b) = tokio::join!(ConsulAgent::start_dev(), ConsulAgent::start_dev());
    assert_ne!(a.port(), b.port());
    kv_put(&a, "ec-testkit/which", "a").await;
    kv_put(&b, "ec-testkit/which", "b").await;
    assert_eq!(kv_get(&a, "ec-testkit/which").await.as_deref(), Some("a"));
    assert_eq!(kv_get(&b, "ec-testkit/which").await.as_deref(), Some("b"));

    let ports: HashSet<u16> = [a.port(), b.port()].into_iter().collect();
    assert_eq!(ports.len(), 2);
}

#[tokio::test]
async fn cluster_keeps_kv_through_server_loss_and_marks_a_dead_client_failed() {
    let mut cluster = ec_testkit::ConsulCluster::start(3, 2).await;
    // A write through one client agent is read through another: one cluster.
    kv_put(cluster.client(0), "ec/cluster", "one").await;
    assert_eq!(
        kv_get(cluster.client(1), "ec/cluster").await.as_deref(),
        Some("one")
    );

    // The leader dies: the other two elect a new one and KV goes on.
    let leader = cluster.wait_leader(DEADLINE).await;
    cluster.server_mut(leader).kill();
    let next = cluster.wait_leader(DEADLINE).await;
    assert_ne!(next, leader);
    wait_for("a KV write without the old leader", DEADLINE, || async {
        let resp = client()
            .put(format!("{}/v1/kv/ec/cluster", cluster.client(1).http_url()))
            .body("two")
            .send()
            .await
            .ok()?;
        resp.status().is_success().then_some(())
    })
    .await;
    // It comes back on its data dir and rejoins.
    cluster.server_mut(leader).restart().await;
    assert_eq!(
        kv_get(cluster.server(leader), "ec/cluster")
            .await
            .as_deref(),
        Some("two")
    );

    // A client agent SIGKILLed: Serf marks its node failed.
    assert_eq!(
        cluster.serf_health(cluster.client(1)).await.as_deref(),
        Some("passing")
    );
    cluster.client_mut(1).kill();
    wait_for(
        "serfHealth critical for the dead agent",
        DEADLINE,
        || async {
            (cluster.serf_health(cluster.client(1)).await.as_deref() == Some("critical"))
                .then_some(())
        },
    )
    .await;
    cluster.client_mut(1).restart().await;
    wait_for("serfHealth passing again", DEADLINE, || async {
        (cluster.serf_health(cluster.client(1)).await.as_deref() == Some("passing")).then_some(())
    })
    .await;
}
