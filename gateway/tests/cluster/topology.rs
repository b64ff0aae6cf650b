//! The failures a multi-machine deployment meets, one after another on one topology, with
//! writers and readers running throughout; and a machine whose Consul agent died while its
//! node still runs, which Consul marks critical through Serf (the `serfHealth` check).

use std::time::{Duration, Instant};

use ec_client::Client;
use ec_testkit::wait_for;
use tokio_util::sync::CancellationToken;

use crate::util::*;

const D: &str = "cluster";

/// The node IDs `n1`, `n2`, `n3`: the mapping of every test data ID.
fn all_nodes() -> Vec<ec_core::NodeId> {
    ["n1", "n2", "n3"].iter().map(|n| node_id(n)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_and_reads_survive_node_machine_and_consul_server_failures() {
    let _turn = TOPOLOGY.lock().await;
    let mut t = Topology::start().await;
    let gw = t.gateway.client().await;
    let admin = store(t.consul.client(MACHINES));
    admin
        .put(&data_id(D), &all_nodes(), None)
        .await
        .expect("map");

    // Routing: every node is a candidate, at the address its own machine's agent registered.
    let route = wait_route(&gw, D, "all three nodes routable", |r| {
        r.candidates.len() == MACHINES
    })
    .await;
    assert_eq!(route.primary_node_id, "n1");
    for c in &route.candidates {
        let node = t.nodes[t.machine_of(&c.node_id)]
            .as_ref()
            .expect("node runs");
        assert_eq!(
            c.address,
            node.address(),
            "{} routed to its own address",
            c.node_id
        );
    }

    let stop = CancellationToken::new();
    let (pipe_acks, pipe) = producer(&t.gateway, D, "pipe", 8, stop.clone());
    let (one_acks, one) = producer(&t.gateway, D, "one", 1, stop.clone());
    let seen = reader(&t.gateway, D, stop.clone());
    wait_acks(&one_acks, 20, "writes flow").await;

    // 1. The primary's process dies: a replica is promoted and writes resume.
    let primary = route.primary_node_id.clone();
    let m = t.machine_of(&primary);
    t.kill_node(m);
    let took = wait_acks(
        &one_acks,
        10,
        "writes resume after the primary node's SIGKILL",
    )
    .await;
    println!("cluster: node SIGKILL: writes resumed after {took:?}");
    let route = wait_route(&gw, D, "a new primary", |r| r.primary_node_id != primary).await;
    t.restart_node(m);
    wait_route(&gw, D, "the restarted node routable again", |r| {
        r.candidates.len() == MACHINES
    })
    .await;

    // 2. The new primary's whole machine dies (agent and node): Consul's Serf failure
    // detection marks its node critical, a replica is promoted, writes resume.
    let primary = route.primary_node_id.clone();
    let m = t.machine_of(&primary);
    let killed = Instant::now();
    t.kill_machine(m);
    let took = wait_acks(&one_acks, 10, "writes resume after the machine's SIGKILL").await;
    println!("cluster: machine SIGKILL: writes resumed after {took:?}");
    wait_for("Serf marks the dead machine failed", DEADLINE, || async {
        (t.consul.serf_health(t.consul.client(m)).await.as_deref() == Some("critical"))
            .then_some(())
    })
    .await;
    println!(
        "cluster: machine SIGKILL: serfHealth critical after {:?}",
        killed.elapsed()
    );
    wait_route(&gw, D, "the dead machine's node out of the route", |r| {
        r.primary_node_id != primary && !candidate_ids(r).contains(&primary.as_str())
    })
    .await;
    t.restart_machine(m).await;
    // A Consul server can miss the restarted agent's return: seen once in CI, where the
    // leader kept the machine's serfHealth critical for the whole 30 s wait while every
    // other agent saw it alive again. A join from the agent to each server exchanges their
    // full state at once; gossip's own periodic exchange (every 30 s on a LAN) is the
    // fallback, hence the longer wait.
    t.consul.rejoin(m).await;
    wait_route_within(
        &gw,
        D,
        "the rebooted machine's node routable again",
        DEADLINE * 3,
        |r| r.candidates.len() == MACHINES,
    )
    .await;

    // 3. One Consul server is lost for good: two of three keep quorum, so writes go on and
    // mapping edits still commit.
    let leader = t.consul.wait_leader(DEADLINE).await;
    let lost = (leader + 1) % SERVERS;
    t.consul.server_mut(lost).kill();
    wait_acks(&one_acks, 10, "writes go on without one Consul server").await;
    admin
        .put(&data_id("after-server-loss"), &all_nodes(), None)
        .await
        .expect("a mapping edit commits with two of three servers");
    wait_route(
        &gw,
        "after-server-loss",
        "a mapping made without one server routes",
        |r| r.candidates.len() == MACHINES,
    )
    .await;
    t.consul.server_mut(lost).restart().await;

    // 4. The Consul leader restarts: a new one is elected, everything goes on.
    let leader = t.consul.wait_leader(DEADLINE).await;
    let killed = Instant::now();
    t.consul.server_mut(leader).kill();
    let new_leader = t.consul.wait_leader(DEADLINE).await;
    println!(
        "cluster: Consul leader SIGKILL: server {new_leader} leads after {:?}",
        killed.elapsed()
    );
    t.consul.server_mut(leader).restart().await;
    wait_acks(
        &one_acks,
        10,
        "writes go on after the Consul leader restarted",
    )
    .await;
    admin
        .put(&data_id("after-leader-restart"), &all_nodes(), None)
        .await
        .expect("a mapping edit commits after the leader restarted");
    wait_route(
        &gw,
        "after-leader-restart",
        "a mapping made after the restart routes",
        |r| r.candidates.len() == MACHINES,
    )
    .await;
    wait_acks(&pipe_acks, 10, "the pipelined producer goes on").await;

    stop.cancel();
    for p in [pipe, one] {
        tokio::time::timeout(Duration::from_secs(150), p)
            .await
            .expect("a producer still waits for acknowledgements")
            .expect("producer task");
    }
    let log = t.converged_log(D).await;
    check_producer("", "pipe", &pipe_acks, &log);
    check_producer("", "one", &one_acks, &log);
    assert!(
        !seen.lock().expect("lock").is_empty(),
        "the reader saw events"
    );
    check_reader("", "the reader", &seen, &log);
    println!(
        "cluster: final log {} events; producers {}+{} batches; reader saw {}",
        log.len(),
        pipe_acks.lock().expect("lock").len(),
        one_acks.lock().expect("lock").len(),
        seen.lock().expect("lock").len()
    );
    t.gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_agent_died_is_critical_through_serf_and_not_routed() {
    let _turn = TOPOLOGY.lock().await;
    let mut t = Topology::start().await;
    let gw = t.gateway.client().await;
    store(t.consul.client(MACHINES))
        .put(&data_id(D), &all_nodes(), None)
        .await
        .expect("map");
    wait_route(&gw, D, "all three nodes routable", |r| {
        r.candidates.len() == MACHINES
    })
    .await;

    // Only machine 3's agent dies; its node (a replica) still runs and answers the gateway's
    // probes. Consul's last HTTP check result for it was passing; serfHealth decides.
    let m = t.machine_of("n3");
    t.consul.client_mut(m).kill();
    wait_for("Serf marks machine 3's agent failed", DEADLINE, || async {
        (t.consul.serf_health(t.consul.client(m)).await.as_deref() == Some("critical"))
            .then_some(())
    })
    .await;
    let route = wait_route(&gw, D, "n3 out of the route", |r| {
        !candidate_ids(r).contains(&"n3")
    })
    .await;
    assert_eq!(candidate_ids(&route), ["n1", "n2"]);
    let client = Client::connect(&t.gateway.addr.to_string())
        .await
        .expect("sdk");
    client
        .publish(D, batch("w", 0))
        .await
        .expect("writes go on to the primary");

    // The agent comes back: Serf marks it alive and the node is routed again. As after the
    // machine's reboot in the test above, the leader can keep the agent failed after it is
    // back (seen once in CI: the agent came back 60 ms after the leader marked it failed,
    // and the leader still held it failed 30 s later), so the agent joins every server
    // again, and the wait covers gossip's own 30 s exchange.
    t.consul.client_mut(m).restart().await;
    t.consul.rejoin(m).await;
    wait_route_within(&gw, D, "n3 routable again", DEADLINE * 3, |r| {
        candidate_ids(r).contains(&"n3")
    })
    .await;
    t.gateway.stop().await;
}
