//! Agent registration and health against a real agent: HTTP checks are run and reported,
//! nulls decode as empty, the agent's 429/503 answers are answers, unknown services are
//! `None`, and errors name the URL.

use std::time::{Duration, Instant};

use ec_discovery::{CheckStatus, ConsulClient, DiscoveryError, QueryOptions, ServiceRegistration};
use ec_testkit::{ConsulAgent, free_port, wait_for};

use crate::util::{CheckTarget, DEADLINE, client, registration};

#[tokio::test]
async fn leader_is_known() {
    let agent = ConsulAgent::start_dev().await;
    let leader = client(&agent).leader().await.expect("leader");
    assert!(leader.starts_with("127.0.0.1:"), "{leader:?}");
}

/// Rule 7 (agent endpoint, checks run) and rule 2 (nulls): a registered service shows up
/// passing in the cluster's health view with all its fields, and an unchecked service with
/// no tags or meta (Consul sends `null`) decodes as empty.
#[tokio::test]
async fn registered_service_with_http_check_turns_passing() {
    let agent = ConsulAgent::start_dev().await;
    let c = client(&agent);
    let target = CheckTarget::start().await;
    let reg = registration("node-a", "streaming-node", &target);
    c.register_service(&reg).await.expect("register");
    let bare = ServiceRegistration {
        id: "node-bare".into(),
        name: "streaming-node".into(),
        port: 7,
        ..Default::default()
    };
    c.register_service(&bare).await.expect("register bare");

    let held = c
        .agent_service("node-a")
        .await
        .expect("agent service")
        .expect("known");
    assert!(held.matches(&reg), "{held:?} vs {reg:?}");

    let entries = wait_for("node-a passing in /v1/health/service", DEADLINE, || {
        let c = c.clone();
        async move {
            let e = c
                .health_service("streaming-node", &QueryOptions::now())
                .await
                .ok()?;
            let a = e.value.iter().find(|e| e.service.id == "node-a")?;
            a.aggregate_status().is_passing().then_some(e)
        }
    })
    .await;
    assert!(entries.index > 0);
    let a = entries
        .value
        .iter()
        .find(|e| e.service.id == "node-a")
        .expect("node-a");
    assert_eq!(a.service.service, "streaming-node");
    assert_eq!((a.address(), a.service.port), ("127.0.0.1", 50052));
    assert_eq!(a.service.tags, ["ec"]);
    assert_eq!(
        a.service.meta.get("data_ids").map(String::as_str),
        Some("a,b")
    );
    assert!(
        a.checks.iter().any(|ch| ch.check_id == "serfHealth"),
        "node checks included"
    );
    let svc_check = a
        .checks
        .iter()
        .find(|ch| ch.service_id == "node-a")
        .expect("service check");
    assert_eq!(svc_check.status, CheckStatus::Passing);

    let b = entries
        .value
        .iter()
        .find(|e| e.service.id == "node-bare")
        .expect("node-bare");
    assert!(b.service.tags.is_empty() && b.service.meta.is_empty());
    assert_eq!(b.address(), "127.0.0.1", "falls back to the node address");
    // Only the node's own check: passing.
    assert_eq!(b.aggregate_status(), CheckStatus::Passing);

    // An unknown service is an empty list with an index, not an error.
    let none = c
        .health_service("no-such-service", &QueryOptions::now())
        .await
        .expect("health");
    assert!(none.value.is_empty() && none.index > 0);
}

/// A blocking health query wakes when a check changes status.
#[tokio::test]
async fn health_watch_wakes_on_check_transition() {
    let agent = ConsulAgent::start_dev().await;
    let c = client(&agent);
    let target = CheckTarget::start().await;
    c.register_service(&registration("node-w", "watched", &target))
        .await
        .expect("register");
    let passing = wait_for("node-w passing", DEADLINE, || {
        let c = c.clone();
        async move {
            let e = c
                .health_service("watched", &QueryOptions::now())
                .await
                .ok()?;
            e.value
                .first()?
                .aggregate_status()
                .is_passing()
                .then_some(e)
        }
    })
    .await;

    target.set_status(500);
    let t0 = Instant::now();
    let mut index = passing.index;
    loop {
        let e = c
            .health_service(
                "watched",
                &QueryOptions::blocking(index, Duration::from_secs(20)),
            )
            .await
            .expect("watch");
        index = ec_discovery::next_index(index, e.index);
        if e.value.first().map(|e| e.aggregate_status()) == Some(CheckStatus::Critical) {
            break;
        }
        assert!(t0.elapsed() < DEADLINE, "never turned critical");
    }
}

/// Rule 8: the agent's local health answers 200/429/503 with a body; all are answers.
#[tokio::test]
async fn agent_local_health_maps_429_and_503_to_answers() {
    let agent = ConsulAgent::start_dev().await;
    let c = client(&agent);
    assert!(
        c.agent_health_service("nobody")
            .await
            .expect("unknown id")
            .is_none()
    );

    let target = CheckTarget::start().await;
    c.register_service(&registration("node-h", "h", &target))
        .await
        .expect("register");
    for (code, want) in [
        (200, CheckStatus::Passing),
        (429, CheckStatus::Warning),
        (503, CheckStatus::Critical),
        (200, CheckStatus::Passing),
    ] {
        target.set_status(code);
        let got = wait_for(
            &format!("agent health {want} after HTTP {code}"),
            DEADLINE,
            || {
                let c = c.clone();
                let want = want.clone();
                async move {
                    let h = c
                        .agent_health_service("node-h")
                        .await
                        .expect("agent health")?;
                    (h.aggregated_status == want).then_some(h)
                }
            },
        )
        .await;
        assert_eq!(got.service.id, "node-h");
        assert_eq!(got.checks.len(), 1);
    }
}

/// Deregistering removes the service; an unknown one is fine; `agent_service` of an
/// unknown ID is `None`.
#[tokio::test]
async fn deregister_is_idempotent() {
    let agent = ConsulAgent::start_dev().await;
    let c = client(&agent);
    let target = CheckTarget::start().await;
    c.register_service(&registration("node-d", "d", &target))
        .await
        .expect("register");
    assert!(c.agent_service("node-d").await.expect("get").is_some());
    c.deregister_service("node-d").await.expect("deregister");
    assert!(c.agent_service("node-d").await.expect("get").is_none());
    c.deregister_service("node-d")
        .await
        .expect("deregister again");
    c.deregister_service("never/was here")
        .await
        .expect("odd unknown id");
    assert!(
        c.agent_service("never/was here")
            .await
            .expect("get odd")
            .is_none()
    );
}

/// Errors say which URL failed and what to check.
#[tokio::test]
async fn errors_name_the_url_and_the_fix() {
    // Nothing listens here.
    let port = free_port();
    let c = ConsulClient::new(&format!("127.0.0.1:{port}"), None).expect("client");
    assert_eq!(c.base_url(), format!("http://127.0.0.1:{port}"));
    let e = c.kv_get("k").await.expect_err("no agent");
    assert!(e.is_transport(), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("http://127.0.0.1:{port}/v1/kv/k")),
        "{msg}"
    );
    assert!(msg.contains("is Consul running at"), "{msg}");
    assert!(
        msg.to_lowercase().contains("refused"),
        "root cause missing: {msg}"
    );

    // Consul's own refusal comes back with its status and reason.
    let agent = ConsulAgent::start_dev().await;
    let c = client(&agent);
    let nameless = ServiceRegistration::default();
    match c.register_service(&nameless).await {
        Err(DiscoveryError::Status { url, status, body }) => {
            assert!(url.ends_with("/v1/agent/service/register"), "{url}");
            assert_eq!(status, 400);
            assert!(body.contains("name"), "{body}");
        }
        other => panic!("expected a status error, got {other:?}"),
    }
}
