//! The registration keeper against a real agent: registers with a running check, survives
//! the agent forgetting the service and Consul restarts, waits for a Consul that is down at
//! start, follows registration changes, and deregisters on shutdown within a bound.

use std::time::{Duration, Instant};

use ec_discovery::registration::{Registrar, RegistrationState};
use ec_discovery::{ConsulClient, QueryOptions, ServiceRegistration};
use ec_testkit::{ConsulAgent, wait_for};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::util::{CheckTarget, DEADLINE, client, init_logs, registration};

const RECHECK: Duration = Duration::from_millis(200);

async fn wait_passing(c: &ConsulClient, name: &str, id: &str) {
    wait_for(
        &format!("{id} passing in health of {name}"),
        DEADLINE,
        || {
            let c = c.clone();
            async move {
                let e = c.health_service(name, &QueryOptions::now()).await.ok()?;
                let entry = e.value.iter().find(|e| e.service.id == id)?;
                entry.aggregate_status().is_passing().then_some(())
            }
        },
    )
    .await
}

async fn wait_state(
    state: &mut watch::Receiver<RegistrationState>,
    what: &str,
    pred: impl Fn(&RegistrationState) -> bool,
) -> RegistrationState {
    tokio::time::timeout(DEADLINE, state.wait_for(|s| pred(s)))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for registration state {what}"))
        .expect("keeper alive")
        .clone()
}

async fn wait_gone(c: &ConsulClient, id: &str) {
    wait_for(&format!("{id} gone from the agent"), DEADLINE, || {
        let c = c.clone();
        async move { matches!(c.agent_service(id).await, Ok(None)).then_some(()) }
    })
    .await
}

async fn wait_known(c: &ConsulClient, id: &str) {
    wait_for(&format!("{id} known to the agent"), DEADLINE, || {
        let c = c.clone();
        async move { matches!(c.agent_service(id).await, Ok(Some(_))).then_some(()) }
    })
    .await
}

#[tokio::test]
async fn registers_passes_and_deregisters_on_cancel() {
    init_logs();
    let agent = ConsulAgent::start_dev().await;
    let c = client(&agent);
    let target = CheckTarget::start().await;
    let (_tx, rx) = watch::channel(registration("node-r", "streaming-node", &target));
    let shutdown = CancellationToken::new();
    let (handle, mut state) = Registrar::spawn_with_state(c.clone(), rx, RECHECK, shutdown.clone());

    wait_state(&mut state, "Registered", |s| {
        *s == RegistrationState::Registered
    })
    .await;
    wait_passing(&c, "streaming-node", "node-r").await;

    let t0 = Instant::now();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("keeper did not stop")
        .expect("join");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t0.elapsed()
    );
    assert_eq!(*state.borrow(), RegistrationState::Stopped);
    assert!(
        c.agent_service("node-r").await.expect("get").is_none(),
        "still registered"
    );
}

/// If the agent forgets the service (here: someone deregisters it), the keeper puts it back.
#[tokio::test]
async fn re_registers_when_the_agent_forgets() {
    init_logs();
    let agent = ConsulAgent::start_dev().await;
    let c = client(&agent);
    let target = CheckTarget::start().await;
    let (_tx, rx) = watch::channel(registration("node-f", "streaming-node", &target));
    let shutdown = CancellationToken::new();
    let handle = Registrar::spawn(c.clone(), rx, RECHECK, shutdown.clone());
    wait_known(&c, "node-f").await;

    for _ in 0..2 {
        c.deregister_service("node-f")
            .await
            .expect("deregister behind its back");
        wait_known(&c, "node-f").await;
    }
    wait_passing(&c, "streaming-node", "node-f").await;
    shutdown.cancel();
    handle.await.expect("join");
}

/// A dev agent that is killed and restarted has lost everything: the keeper notices (state
/// goes to Retrying while the agent is down) and registers again by itself.
#[tokio::test]
async fn re_registers_after_dev_agent_restart() {
    init_logs();
    let mut agent = ConsulAgent::start_dev().await;
    let c = client(&agent);
    let target = CheckTarget::start().await;
    let (_tx, rx) = watch::channel(registration("node-k", "streaming-node", &target));
    let shutdown = CancellationToken::new();
    let (handle, mut state) = Registrar::spawn_with_state(c.clone(), rx, RECHECK, shutdown.clone());
    wait_state(&mut state, "Registered", |s| {
        *s == RegistrationState::Registered
    })
    .await;

    agent.kill();
    let down = wait_state(&mut state, "Retrying", |s| {
        matches!(s, RegistrationState::Retrying { .. })
    })
    .await;
    let RegistrationState::Retrying { error } = down else {
        unreachable!()
    };
    assert!(error.contains(&agent.http_url()), "{error}");

    agent.restart().await;
    wait_state(&mut state, "Registered again", |s| {
        *s == RegistrationState::Registered
    })
    .await;
    wait_passing(&c, "streaming-node", "node-k").await;
    shutdown.cancel();
    handle.await.expect("join");
    assert!(c.agent_service("node-k").await.expect("get").is_none());
}

/// A persistent one-server agent killed with SIGKILL and restarted: the service is back and
/// passing (restored from the agent's data dir or registered again by the keeper).
#[tokio::test]
async fn survives_server_agent_kill_and_restart() {
    init_logs();
    let mut agent = ConsulAgent::start_server().await;
    let c = client(&agent);
    let target = CheckTarget::start().await;
    let (_tx, rx) = watch::channel(registration("node-s", "streaming-node", &target));
    let shutdown = CancellationToken::new();
    let (handle, mut state) = Registrar::spawn_with_state(c.clone(), rx, RECHECK, shutdown.clone());
    wait_passing(&c, "streaming-node", "node-s").await;

    agent.kill();
    wait_state(&mut state, "Retrying", |s| {
        matches!(s, RegistrationState::Retrying { .. })
    })
    .await;
    agent.restart().await;
    wait_state(&mut state, "Registered again", |s| {
        *s == RegistrationState::Registered
    })
    .await;
    wait_passing(&c, "streaming-node", "node-s").await;

    // Forgetting still works on a server agent.
    c.deregister_service("node-s")
        .await
        .expect("deregister behind its back");
    wait_passing(&c, "streaming-node", "node-s").await;

    shutdown.cancel();
    handle.await.expect("join");
    assert!(c.agent_service("node-s").await.expect("get").is_none());
}

/// Consul down when the node starts: the keeper retries and registers once it is up.
#[tokio::test]
async fn registers_once_consul_comes_up() {
    init_logs();
    let mut agent = ConsulAgent::start_dev().await;
    agent.kill();
    let c = client(&agent);
    let target = CheckTarget::start().await;
    let (_tx, rx) = watch::channel(registration("node-late", "streaming-node", &target));
    let shutdown = CancellationToken::new();
    let (handle, mut state) = Registrar::spawn_with_state(c.clone(), rx, RECHECK, shutdown.clone());
    // Let it fail a few times so the backoff grows.
    for n in 0..3 {
        wait_state(&mut state, "Retrying", |s| {
            matches!(s, RegistrationState::Retrying { .. })
        })
        .await;
        state.mark_unchanged();
        let _ = n;
    }

    agent.restart().await;
    wait_state(&mut state, "Registered", |s| {
        *s == RegistrationState::Registered
    })
    .await;
    wait_passing(&c, "streaming-node", "node-late").await;
    shutdown.cancel();
    handle.await.expect("join");
}

/// A new registration (meta changed) is registered; a new ID replaces the old one.
#[tokio::test]
async fn follows_registration_updates() {
    init_logs();
    let agent = ConsulAgent::start_dev().await;
    let c = client(&agent);
    let target = CheckTarget::start().await;
    let first = registration("node-u", "streaming-node", &target);
    let (tx, rx) = watch::channel(first.clone());
    let shutdown = CancellationToken::new();
    let handle = Registrar::spawn(c.clone(), rx, Duration::from_secs(60), shutdown.clone());
    wait_known(&c, "node-u").await;

    let mut second = first.clone();
    second.meta.insert("data_ids".into(), "a,b,c".into());
    tx.send(second.clone()).expect("send");
    wait_for("meta updated", DEADLINE, || {
        let c = c.clone();
        async move {
            let s = c.agent_service("node-u").await.ok()??;
            (s.meta.get("data_ids").map(String::as_str) == Some("a,b,c")).then_some(())
        }
    })
    .await;

    let third = ServiceRegistration {
        id: "node-u2".into(),
        ..second
    };
    tx.send(third).expect("send");
    wait_known(&c, "node-u2").await;
    wait_gone(&c, "node-u").await;

    // The sender going away keeps the last registration.
    drop(tx);
    c.deregister_service("node-u2").await.expect("deregister");
    // Recheck is 60 s here, so nothing re-registers it; what matters is that the keeper
    // still shuts down cleanly and promptly with its sender gone.
    let t0 = Instant::now();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("keeper did not stop")
        .expect("join");
    assert!(t0.elapsed() < Duration::from_secs(5));
}

/// Shutdown while Consul is unreachable is bounded.
#[tokio::test]
async fn shutdown_with_consul_down_is_bounded() {
    init_logs();
    let mut agent = ConsulAgent::start_dev().await;
    agent.kill();
    let c = client(&agent);
    let target = CheckTarget::start().await;
    let (_tx, rx) = watch::channel(registration("node-x", "streaming-node", &target));
    let shutdown = CancellationToken::new();
    let (handle, mut state) = Registrar::spawn_with_state(c.clone(), rx, RECHECK, shutdown.clone());
    wait_state(&mut state, "Retrying", |s| {
        matches!(s, RegistrationState::Retrying { .. })
    })
    .await;
    let t0 = Instant::now();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("keeper did not stop")
        .expect("join");
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "stop took {:?}",
        t0.elapsed()
    );
}
