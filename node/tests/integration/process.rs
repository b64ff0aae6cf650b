//! Real `ec-node` processes: SIGKILL loses no acknowledged event, SIGTERM drains and
//! deregisters, and the command line reports configuration the way operators expect.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ec_testkit::{ConsulAgent, wait_for};

use crate::util::*;

/// A payload that says who sent it, so that anything read back can be checked byte for byte.
fn payload(task: usize, seq: usize, i: usize) -> Bytes {
    Bytes::from(format!("t{task}-s{seq}-e{i}-{}", "p".repeat(150)))
}

/// Waits until the node has read its mappings from Consul: until then it refuses publishes
/// (UNAVAILABLE), since any data ID might be mapped to another primary.
async fn wait_until_it_takes_publishes(
    c: &ec_proto::node_client::NodeClient<tonic::transport::Channel>,
) {
    wait_for("the node takes publishes", DEADLINE, || {
        let mut c = c.clone();
        async move { publish(&mut c, "ready", payloads("r", 1)).await.ok() }
    })
    .await;
}

#[tokio::test]
async fn sigkill_during_publishing_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().expect("dir");
    let data_dir = dir.path().join("data");
    // Acknowledged offset -> payload, across all cycles.
    let acked: Arc<Mutex<BTreeMap<u64, Bytes>>> = Arc::default();
    // A node takes publishes only once it has read the mappings (none here).
    let consul = ConsulAgent::start_dev().await;
    let consul_addr = consul.http_addr().to_string();
    for cycle in 0..3 {
        let mut node = NodeProcess::spawn(&data_dir, &consul_addr, "node1", &[]);
        let client = connect(node.grpc_addr).await;
        wait_until_it_takes_publishes(&client).await;
        let mut publishers = Vec::new();
        for task in 0..4 {
            let mut c = client.clone();
            let acked = acked.clone();
            publishers.push(tokio::spawn(async move {
                for seq in 0.. {
                    let events: Vec<Bytes> = (0..10)
                        .map(|i| payload(cycle * 10 + task, seq, i))
                        .collect();
                    match publish(&mut c, "crash", events.clone()).await {
                        Ok(r) => {
                            assert_eq!(r.last_offset - r.first_offset + 1, 10);
                            let mut acked = acked.lock().expect("lock");
                            for (i, e) in events.into_iter().enumerate() {
                                acked.insert(r.first_offset + i as u64, e);
                            }
                        }
                        // The node was killed: this publisher is done.
                        Err(_) => return,
                    }
                }
            }));
        }
        let target = (cycle + 1) * 2000;
        wait_for("publishers to get acknowledgements", DEADLINE, || {
            let n = acked.lock().expect("lock").len();
            async move { (n >= target).then_some(()) }
        })
        .await;
        node.kill9();
        for p in publishers {
            p.await.expect("publisher ends when the node dies");
        }
    }

    let node = NodeProcess::spawn(&data_dir, "127.0.0.1:1", "node1", &[]);
    let mut c = connect(node.grpc_addr).await;
    let stored = collect(&mut c, read_from("crash", 0))
        .await
        .expect("read all");
    let acked = acked.lock().expect("lock").clone();
    // Dense from 0: no gap, no duplicate, nothing torn.
    for (i, (offset, data)) in stored.iter().enumerate() {
        assert_eq!(*offset, i as u64, "offsets are dense");
        assert!(
            data.len() > 150 && data.starts_with(b"t") && data.ends_with(b"ppp"),
            "offset {offset} holds a whole event: {:?}",
            String::from_utf8_lossy(&data[..data.len().min(40)])
        );
    }
    for (offset, want) in &acked {
        let got = stored.get(*offset as usize).map(|e| &e.1);
        assert_eq!(
            got,
            Some(want),
            "acknowledged offset {offset} survives with the same bytes"
        );
    }
    // Exactly once: every payload names its sender, batch and index, so none may repeat.
    let mut seen = std::collections::HashSet::new();
    for (offset, data) in &stored {
        assert!(
            seen.insert(data.clone()),
            "offset {offset} repeats an event"
        );
    }
    // In order: each publisher sent its batches one after another, so their acknowledged
    // offsets rise with the batch number.
    let mut last_by_sender: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (offset, data) in &acked {
        let text = String::from_utf8_lossy(data);
        let mut parts = text.split('-');
        let (sender, seq) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let seq: u64 = seq
            .trim_start_matches('s')
            .parse()
            .expect("payload names its batch");
        if let Some((prev_seq, prev_offset)) = last_by_sender.get(sender) {
            assert!(
                seq >= *prev_seq && offset > prev_offset,
                "{sender}: batch {seq} at offset {offset} after batch {prev_seq} at {prev_offset}"
            );
        }
        last_by_sender.insert(sender.to_owned(), (seq, *offset));
    }
    assert!(
        acked.len() >= 6000,
        "three cycles acknowledged {} events",
        acked.len()
    );
}

#[tokio::test]
async fn sigterm_deregisters_finishes_and_exits_zero() {
    let consul = ConsulAgent::start_dev().await;
    let dir = tempfile::tempdir().expect("dir");
    let mut node = NodeProcess::spawn(
        &dir.path().join("d"),
        &consul.http_addr().to_string(),
        "node-t",
        &[],
    );
    let mut c = connect(node.grpc_addr).await;
    wait_until_it_takes_publishes(&c).await;
    publish(&mut c, "t", payloads("x", 3))
        .await
        .expect("publish");
    let url = format!(
        "{}/v1/health/service/streaming-node?passing=1",
        consul.http_url()
    );
    wait_for("node-t passing in Consul", DEADLINE, || {
        let url = url.clone();
        async move {
            let v: serde_json::Value = reqwest::get(url).await.ok()?.json().await.ok()?;
            v.as_array()?
                .iter()
                .any(|e| e["Service"]["ID"] == "node-t")
                .then_some(())
        }
    })
    .await;
    // A follower is open while the signal arrives: shutdown must end it, not wait on it.
    let mut tail = c
        .stream_batches(ec_proto::StreamRequest {
            follow: Some(true),
            ..read_from("t", 0)
        })
        .await
        .expect("tail")
        .into_inner();
    tail.message().await.expect("first batch");
    node.sigterm();
    assert_eq!(node.wait_exit().await, Some(0), "log:\n{}", node.log());
    let v: serde_json::Value = reqwest::get(format!(
        "{}/v1/health/service/streaming-node",
        consul.http_url()
    ))
    .await
    .expect("consul")
    .json()
    .await
    .expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(0), "deregistered: {v}");
    let log = node.log();
    assert!(log.contains("draining"), "log says it drains:\n{log}");
}

fn ec_node() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ec-node"));
    for (k, _) in std::env::vars() {
        if k.starts_with("EVENT_CATCHER_") {
            cmd.env_remove(k);
        }
    }
    // Run where no config/config.yaml exists, so only defaults, env and flags apply.
    cmd.current_dir(std::env::temp_dir());
    cmd
}

#[test]
fn print_config_applies_every_seed_environment_variable() {
    let vars = [
        ("EVENT_CATCHER_GATEWAY_HOST", "10.1.2.3", "host: 10.1.2.3"),
        ("EVENT_CATCHER_GATEWAY_PORT", "6001", "port: 6001"),
        ("EVENT_CATCHER_NODE_ID", "node-env", "id: node-env"),
        ("EVENT_CATCHER_NODE_PORT", "6002", "port: 6002"),
        ("EVENT_CATCHER_NODE_HEALTH_CHECK_PATH", "/hc", "path: /hc"),
        (
            "EVENT_CATCHER_NODE_HEALTH_CHECK_INTERVAL",
            "7s",
            "interval: 7s",
        ),
        (
            "EVENT_CATCHER_NODE_HEALTH_CHECK_TIMEOUT",
            "3s",
            "timeout: 3s",
        ),
        (
            "EVENT_CATCHER_CONSUL_HOST",
            "consul.internal",
            "host: consul.internal",
        ),
        ("EVENT_CATCHER_CONSUL_PORT", "8600", "port: 8600"),
        (
            "EVENT_CATCHER_CONSUL_KV_PREFIX",
            "ec/map/",
            "kv_prefix: ec/map/",
        ),
        ("EVENT_CATCHER_LOG_LEVEL", "debug", "level: debug"),
        ("EVENT_CATCHER_LOG_FORMAT", "json", "format: json"),
    ];
    for (var, value, line) in vars {
        let out = ec_node()
            .arg("--print-config")
            .env(var, value)
            .output()
            .expect("run");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{var}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.lines().any(|l| l.trim().replace('"', "") == line),
            "{var}={value} shows as {line:?}:\n{stdout}"
        );
    }
}

#[test]
fn a_shorter_interval_carries_the_default_timeout_and_says_so() {
    let out = ec_node()
        .arg("--print-config")
        .env("EVENT_CATCHER_NODE_HEALTH_CHECK_INTERVAL", "1s")
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let timeout = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("timeout:"))
        .expect("timeout line");
    assert!(
        timeout.contains("\"1s\"") && timeout.contains("# follows node.health_check.interval"),
        "{stdout}"
    );
}

#[test]
fn bad_configuration_exits_non_zero_naming_key_and_source() {
    let dir = tempfile::tempdir().expect("dir");
    let bad_file = dir.path().join("bad.yaml");
    std::fs::write(&bad_file, "node:\n  port: 50052\n  colour: blue\n").expect("write");
    let missing = dir.path().join("missing.yaml");
    // (flags, environment, what the error must name)
    type Case = (Vec<String>, Vec<(&'static str, &'static str)>, Vec<String>);
    let cases: Vec<Case> = vec![
        (
            vec![],
            vec![("EVENT_CATCHER_LOG_LEVEL", "loud")],
            vec!["log.level".into(), "EVENT_CATCHER_LOG_LEVEL".into()],
        ),
        (
            vec![],
            vec![("EVENT_CATCHER_NODE_PORT", "70000")],
            vec!["node.port".into(), "EVENT_CATCHER_NODE_PORT".into()],
        ),
        (
            vec![],
            vec![("EVENT_CATCHER_NODE_HEALTH_CHECK_INTERVAL", "soon")],
            vec!["node.health_check.interval".into()],
        ),
        (
            vec!["--config".into(), bad_file.display().to_string()],
            vec![],
            vec!["colour".into(), bad_file.display().to_string()],
        ),
        (
            vec!["--config".into(), missing.display().to_string()],
            vec![],
            vec![missing.display().to_string()],
        ),
        (
            vec!["--port".into(), "70000".into()],
            vec![],
            vec!["--port".into()],
        ),
    ];
    for (args, env, needles) in cases {
        let out = ec_node()
            .args(&args)
            .arg("--print-config")
            .envs(env.clone())
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} {env:?} must fail");
        assert_ne!(out.status.code(), Some(101), "no panic: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("stack backtrace"),
            "{stderr}"
        );
        for n in needles {
            assert!(
                stderr.contains(&n),
                "{args:?} {env:?}: error names {n:?}:\n{stderr}"
            );
        }
    }
}

/// A user error reads the same on a pipe and on a terminal: colour only on a terminal
/// without `NO_COLOR`, and no backtrace even with `RUST_BACKTRACE=1` (those are for bugs).
#[test]
fn a_user_error_is_plain_text_without_a_backtrace() {
    ec_testkit::terminal::assert_plain_user_error(
        std::path::Path::new(env!("CARGO_BIN_EXE_ec-node")),
        &["--port", "99999"],
        "node.port",
    );
}
