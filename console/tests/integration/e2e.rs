//! The console as an operator uses it: the real binary in a detached tmux session, driven by
//! keystrokes, checked through `capture-pane` and through Consul's KV — against a real
//! Consul, real nodes and the real gateway.

use std::process::Command;

use crate::util::{
    DEADLINE, NodeProcess, TestGateway, TestNode, Tmux, connect, console_args, console_binary,
    data_id, line_with, node_id, publish, publish_with, store,
};
use ec_testkit::ConsulAgent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mappings_edits_land_in_consul_and_outside_changes_and_health_show_up() {
    let consul = ConsulAgent::start_dev().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node1 = NodeProcess::spawn(&dir.path().join("node1"), &consul.http_url(), "node1");
    let _node2 = NodeProcess::spawn(&dir.path().join("node2"), &consul.http_url(), "node2");
    let gateway = TestGateway::start(&consul.http_url()).await;

    let tmux = Tmux::start(
        &console_binary(),
        &console_args(&consul, &gateway.addr.to_string()),
        120,
        40,
    );
    tmux.wait("both nodes known and no mappings yet", |s| {
        s.contains("No mappings under streaming/data/") && s.contains("Consul 127.0.0.1")
    })
    .await;
    tmux.wait_text(&format!("Gateway {} ● up", gateway.addr))
        .await;

    // Add a mapping with keystrokes; the form completes the known node name.
    tmux.keys(&["a"]);
    tmux.wait_text("Add mapping").await;
    tmux.type_text("orders");
    tmux.keys(&["Tab"]);
    tmux.wait("known nodes suggested", |s| {
        s.contains("Known nodes:") && s.contains("node1") && s.contains("node2")
    })
    .await;
    tmux.type_text("node1,no");
    tmux.keys(&["Tab"]);
    tmux.wait_text("node1,node2").await;
    tmux.keys(&["Enter"]);
    let store = store(&consul);
    let mapping = ec_testkit::wait_for("orders mapping in Consul KV", DEADLINE, || {
        let store = store.clone();
        async move { store.get(&data_id("orders")).await.ok().flatten() }
    })
    .await;
    assert_eq!(mapping.nodes, [node_id("node1"), node_id("node2")]);
    tmux.wait_text("saved orders").await;
    // The table row follows from the watch on Consul, possibly a frame after the status
    // line saying it was saved (which also contains "orders").
    tmux.wait("the orders row shows node1 as primary and node2", |s| {
        s.lines()
            .any(|l| l.contains("orders ") && l.contains("node1*") && l.contains("node2"))
    })
    .await;

    // A change made elsewhere shows up without a keypress.
    let script = ec_testkit::workspace_root().join("scripts/setup-consul.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args([
            "--data-id=payments",
            "--node-id=node2,node1",
            &format!("--consul-addr={}:{}", consul.host(), consul.port()),
            "--kv-prefix=streaming/data/",
        ])
        .output()
        .expect("run setup-consul.sh");
    assert!(
        out.status.success(),
        "setup-consul.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let screen = tmux
        .wait("payments from setup-consul.sh on screen", |s| {
            line_with(s, "payments").is_some_and(|l| l.contains("node2*"))
        })
        .await;
    assert!(screen.contains("Mappings (2)"), "{screen}");

    // Health: both passing, then node1 killed → critical, with the transition logged.
    tmux.keys(&["2"]);
    tmux.wait("both nodes passing in the health view", |s| {
        line_with(s, "node1 ").is_some_and(|l| l.contains("passing"))
            && line_with(s, "node2 ").is_some_and(|l| l.contains("passing"))
    })
    .await;
    node1.kill9();
    let screen = tmux.wait_text("node1 passing → critical").await;
    let row = screen
        .lines()
        .find(|l| l.contains("node1") && l.contains("127.0.0.1:"))
        .expect("node1 row");
    assert!(
        row.contains("critical"),
        "{row}\n{node1_log}",
        node1_log = node1.log()
    );

    // q leaves cleanly, with the terminal restored.
    tmux.keys(&["q"]);
    assert_eq!(
        tmux.wait_exit().await,
        (0, false),
        "exit status, still on the alternate screen"
    );
}

/// `p` asks the gateway; a replica that is not in sync (standalone nodes never confirm one)
/// is refused with the reason and the mapping is untouched, until the operator forces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_refuses_an_out_of_sync_replica_until_forced() {
    let consul = ConsulAgent::start_dev().await;
    let _node1 = TestNode::start(&consul.http_url(), "node1").await;
    let _node2 = TestNode::start(&consul.http_url(), "node2").await;
    let gateway = TestGateway::start(&consul.http_url()).await;
    let store = store(&consul);
    let before = store
        .put(
            &data_id("orders"),
            &[node_id("node1"), node_id("node2")],
            None,
        )
        .await
        .expect("mapping");

    let tmux = Tmux::start(
        &console_binary(),
        &console_args(&consul, &gateway.addr.to_string()),
        120,
        40,
    );
    tmux.wait("orders listed with both nodes passing", |s| {
        line_with(s, "orders").is_some_and(|l| l.contains("✓node1*") && l.contains("✓node2"))
    })
    .await;

    tmux.keys(&["p"]);
    tmux.wait_text("Promote a replica").await;
    tmux.keys(&["Enter"]);
    let screen = tmux.wait_text("Promotion refused").await;
    assert!(screen.contains("not in sync"), "{screen}");
    assert_eq!(
        store.get(&data_id("orders")).await.expect("get"),
        Some(before.clone()),
        "a refused promotion changed the mapping"
    );

    tmux.keys(&["f"]);
    let after = ec_testkit::wait_for("node2 primary in Consul", DEADLINE, || {
        let store = store.clone();
        async move {
            store
                .get(&data_id("orders"))
                .await
                .ok()
                .flatten()
                .filter(|m| m.primary() == &node_id("node2"))
        }
    })
    .await;
    assert_eq!(after.nodes, [node_id("node2"), node_id("node1")]);
    tmux.wait_text("node2 is now the primary of orders").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_pause_counts_and_seek_shows_the_offset_first() {
    let consul = ConsulAgent::start_dev().await;
    let node1 = TestNode::start(&consul.http_url(), "node1").await;
    let gateway = TestGateway::start(&consul.http_url()).await;
    store(&consul)
        .put(&data_id("orders"), &[node_id("node1")], None)
        .await
        .expect("mapping");
    publish(node1.grpc_addr, "orders", "first", 50).await;

    let tmux = Tmux::start(
        &console_binary(),
        &console_args(&consul, &gateway.addr.to_string()),
        120,
        40,
    );
    tmux.wait("orders listed", |s| {
        line_with(s, "orders").is_some_and(|l| l.contains("node1*"))
    })
    .await;

    // Enter on the mapping tails it, following, with the last events on screen.
    tmux.keys(&["Enter"]);
    let screen = tmux
        .wait("offset 49 streamed and following", |s| {
            s.contains("FOLLOWING") && line_with(s, "first-49").is_some()
        })
        .await;
    assert!(screen.contains("50 events in order, no gap"), "{screen}");
    assert!(line_with(&screen, "first-49").is_some_and(|l| l.contains("node1")));

    // Pause; the stream keeps running and the counter shows what arrived.
    tmux.keys(&["Space"]);
    tmux.wait_text("PAUSED +0 new").await;
    publish(node1.grpc_addr, "orders", "second", 20).await;
    let screen = tmux.wait_text("PAUSED +20 new").await;
    assert!(
        line_with(&screen, "second-").is_none(),
        "the view stayed put:\n{screen}"
    );
    assert!(screen.contains("70 events in order, no gap"), "{screen}");

    // Resume shows the new events.
    tmux.keys(&["Space"]);
    tmux.wait("following again with the new events", |s| {
        s.contains("FOLLOWING") && line_with(s, "second-19").is_some()
    })
    .await;

    // :seek 10 shows offset 10 first.
    tmux.keys(&[":"]);
    tmux.type_text("seek 10");
    tmux.keys(&["Enter"]);
    let screen = tmux
        .wait("offset 10 is the first row", |s| {
            first_row(s).is_some_and(|r| r.starts_with("10 ") && r.contains("first-10"))
        })
        .await;
    // Offsets 10..69 were there before the seek: history, not news.
    assert!(screen.contains("PAUSED +0 new"), "{screen}");

    // A start past the end says where it waits and where the end is.
    tmux.keys(&[":"]);
    tmux.type_text("seek 99999");
    tmux.keys(&["Enter"]);
    tmux.wait_text("waiting at offset 99999 (the end is 70)")
        .await;

    // :seek -5 starts 5 before the end (offset 65).
    tmux.keys(&[":"]);
    tmux.type_text("seek -5");
    tmux.keys(&["Enter"]);
    tmux.wait("offset 65 is the first row", |s| {
        first_row(s).is_some_and(|r| r.starts_with("65 ") && r.contains("second-15"))
    })
    .await;

    // > jumps to latest (follow): the last rows stay on screen above a marker, and what is
    // published afterwards comes below it. The stream opens asynchronously, so publish until
    // an event shows up.
    tmux.keys(&[">"]);
    let screen = tmux.wait_text("FOLLOWING").await;
    assert!(
        line_with(&screen, "second-19").is_some() && screen.contains("seek to latest"),
        "the old rows stay, marked:\n{screen}"
    );
    let deadline = std::time::Instant::now() + DEADLINE;
    let screen = loop {
        publish(node1.grpc_addr, "orders", "third", 1).await;
        let screen = tmux.screen();
        if line_with(&screen, "third-0").is_some() {
            break screen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no new event after seek latest:\n{screen}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let row = |text: &str| screen.lines().position(|l| l.contains(text));
    let (old, marker, new) = (row("second-19"), row("seek to latest"), row("third-0"));
    assert!(
        old.is_some() && old < marker && marker < new,
        "old rows, the marker, then the new ones:\n{screen}"
    );
    assert!(screen.contains("in order, no gap"), "{screen}");

    // SIGTERM also restores the terminal and exits cleanly.
    let pid = tmux.console_pid();
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert_eq!(
        tmux.wait_exit().await,
        (0, false),
        "exit status, still on the alternate screen"
    );
}

/// The first row of the tail table (the line after the `OFFSET` header), trimmed of the
/// border and the selection marker.
fn first_row(screen: &str) -> Option<String> {
    let mut lines = screen.lines();
    lines.find(|l| l.contains("OFFSET") && l.contains("PAYLOAD"))?;
    let row = lines.next()?;
    Some(
        row.trim_matches(|c: char| c == '│' || c.is_whitespace() || c == '▶')
            .to_owned(),
    )
}

/// The Tail view under load: 50 000 events/s published for 10 s while the console tails them
/// through the gateway. Checks that keys still answer promptly, the gap check stays clean and
/// the console catches up with every event. Timing-dependent and heavy, so not part of the
/// default run: `cargo test --release -p ec-console --test integration -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load test: run explicitly (release build recommended)"]
async fn tail_keeps_up_at_50k_events_per_second() {
    const RATE: u64 = 50_000;
    const SECONDS: u64 = 10;
    const PER_BATCH: u64 = 500;
    let consul = ConsulAgent::start_dev().await;
    let node1 = TestNode::start(&consul.http_url(), "node1").await;
    let gateway = TestGateway::start(&consul.http_url()).await;
    store(&consul)
        .put(&data_id("load"), &[node_id("node1")], None)
        .await
        .expect("mapping");
    publish(node1.grpc_addr, "load", "warmup", 1).await;
    let tmux = Tmux::start(
        &console_binary(),
        &console_args(&consul, &gateway.addr.to_string()),
        120,
        40,
    );
    tmux.wait("load listed", |s| {
        line_with(s, "load").is_some_and(|l| l.contains("node1*"))
    })
    .await;
    tmux.keys(&["Enter"]);
    tmux.wait_text("1 event in order, no gap").await;

    // Publish RATE events/s in batches, paced by the clock.
    let addr = node1.grpc_addr;
    let mut client = connect(addr).await;
    let producer = tokio::spawn(async move {
        let start = std::time::Instant::now();
        let batches = RATE * SECONDS / PER_BATCH;
        for b in 0..batches {
            let due = start
                + std::time::Duration::from_secs_f64(b as f64 * PER_BATCH as f64 / RATE as f64);
            tokio::time::sleep_until(due.into()).await;
            publish_with(&mut client, "load", "x", PER_BATCH as usize).await;
        }
        start.elapsed()
    });

    // While it runs: how long does a key take to show on screen?
    let mut latencies = Vec::new();
    let mut peak_rate = 0u64;
    while !producer.is_finished() {
        let t = std::time::Instant::now();
        tmux.keys(&["Space"]);
        tmux.wait_text("PAUSED").await;
        latencies.push(t.elapsed());
        let t = std::time::Instant::now();
        tmux.keys(&["Space"]);
        let screen = tmux.wait_text("FOLLOWING").await;
        latencies.push(t.elapsed());
        if let Some(rate) = line_with(&screen, "ev/s").and_then(|l| {
            let before = l.split(" ev/s").next()?;
            before
                .rsplit(' ')
                .next()?
                .replace(',', "")
                .parse::<u64>()
                .ok()
        }) {
            peak_rate = peak_rate.max(rate);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let took = producer.await.expect("producer");
    let total = RATE * SECONDS + 1;
    let caught_up = std::time::Instant::now();
    let screen = tmux
        .wait("every event checked", |s| {
            s.contains(&format!("{} events in order, no gap", group(total)))
        })
        .await;
    latencies.sort();
    let max = latencies.last().copied().unwrap_or_default();
    let median = latencies[latencies.len() / 2];
    println!(
        "published {total} events in {took:?} ({:.0} ev/s); console peak {peak_rate} ev/s; \
         key-to-screen latency median {median:?}, max {max:?} over {} keys; caught up {:?} after \
         the producer stopped\n{screen}",
        (RATE * SECONDS) as f64 / took.as_secs_f64(),
        latencies.len(),
        caught_up.elapsed(),
    );
    assert!(
        max < std::time::Duration::from_secs(2),
        "keys answered within 2 s"
    );
}

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Prints each view of a small live cluster as text, for the README and for reviewing the
/// layout on a real terminal: `cargo test -p ec-console --test integration -- --ignored
/// --nocapture print_screens`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints screens for documentation; asserts only that they appear"]
async fn print_screens() {
    let consul = ConsulAgent::start_dev().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let node1 = TestNode::start(&consul.http_url(), "node1").await;
    let _node2 = TestNode::start(&consul.http_url(), "node2").await;
    let mut node3 = NodeProcess::spawn(&dir.path().join("node3"), &consul.http_url(), "node3");
    let gateway = TestGateway::start(&consul.http_url()).await;
    let store = store(&consul);
    for (d, nodes) in [
        ("orders", &["node1", "node2"][..]),
        ("payments", &["node2", "node3"][..]),
        ("audit", &["node3"][..]),
    ] {
        let nodes: Vec<_> = nodes.iter().map(|n| node_id(n)).collect();
        store.put(&data_id(d), &nodes, None).await.expect("mapping");
    }
    let mut client = connect(node1.grpc_addr).await;
    for i in 0..5 {
        publish_with(
            &mut client,
            "orders",
            &format!("{{\"order\":{i},\"sku\":\"A-1\"}}"),
            20,
        )
        .await;
    }
    let tmux = Tmux::start(
        &console_binary(),
        &console_args(&consul, &gateway.addr.to_string()),
        100,
        30,
    );
    let mappings = tmux
        .wait("three mappings, every node passing", |s| {
            s.contains("Mappings (3)") && s.contains("✓node1") && s.contains("✓node3*")
        })
        .await;
    node3.kill9();
    tmux.keys(&["2"]);
    let health = tmux.wait_text("node3 passing → critical").await;
    tmux.keys(&["1", "Down", "Enter"]);
    tmux.wait_text("100 events in order").await;
    tmux.keys(&["Up", "Up"]);
    publish_with(&mut client, "orders", "late", 7).await;
    let tail = tmux.wait_text("PAUSED +7 new").await;
    println!("--- mappings ---\n{mappings}\n--- health ---\n{health}\n--- tail ---\n{tail}");
}

/// A user error (here a bad Consul port) reads the same on a pipe and on a terminal: colour
/// only on a terminal without `NO_COLOR`, and no backtrace even with `RUST_BACKTRACE=1`.
#[test]
fn a_user_error_is_plain_text_without_a_backtrace() {
    ec_testkit::terminal::assert_plain_user_error(
        &crate::util::console_binary(),
        &["--consul-addr", "127.0.0.1:99999"],
        "consul.port",
    );
}
