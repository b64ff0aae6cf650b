//! The `ec-client` binary against a real in-process node (`--node`): publish from standard
//! input and synthetic events, stream with `--count`, `--json`, `--offset`, `--since`, and
//! the errors a user sees for bad input or an unreachable gateway; and `publish` through a
//! gateway riding out the SIGKILL of the primary (three replicating node processes, automatic
//! promotion), in redirect and proxy mode.

use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::time::Duration;

use ec_core::NodeId;
use ec_node::{Listeners, NodeSettings};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(30);

/// A node on loopback ports with its own temp dir; stops when dropped.
struct Node {
    addr: SocketAddr,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start_node() -> Node {
    let dir = tempfile::tempdir().expect("dir");
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let health = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = grpc.local_addr().expect("addr");
    let settings = NodeSettings {
        check_interval: Duration::from_secs(1),
        check_timeout: Duration::from_millis(500),
        retention_interval: Duration::from_secs(1),
        ..NodeSettings::new(
            NodeId::parse("node1").expect("id"),
            dir.path(),
            "http://127.0.0.1:1",
        )
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(ec_node::run(
        settings,
        Listeners { grpc, health },
        shutdown.clone(),
    ));
    Node {
        addr,
        shutdown,
        _dir: dir,
    }
}

/// Runs `ec-client ARGS` with `stdin`, within the deadline.
async fn ec_client(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ec-client"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ec-client");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).await.expect("write stdin");
    drop(input);
    tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("ec-client finishes within the deadline")
        .expect("ec-client runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

/// Every offset named by `offsets A-B` / `offset N` lines, in order.
fn acknowledged(o: &Output) -> Vec<u64> {
    let mut all = Vec::new();
    for line in stdout(o).lines() {
        if let Some(range) = line.strip_prefix("offsets ") {
            let (a, b) = range.split_once('-').expect("A-B");
            all.extend(a.parse::<u64>().expect("A")..=b.parse::<u64>().expect("B"));
        } else if let Some(n) = line.strip_prefix("offset ") {
            all.push(n.parse().expect("N"));
        } else {
            panic!("unexpected line {line:?}");
        }
    }
    all
}

#[tokio::test]
async fn publish_stdin_then_stream_text_and_json() {
    let node = start_node().await;
    let addr = node.addr.to_string();

    let out = ec_client(
        &["--node", &addr, "publish", "--data-id", "cli"],
        b"hello world\nsecond line\r\n\nlast without newline",
    )
    .await;
    assert_ok(&out);
    assert_eq!(acknowledged(&out), [0, 1, 2, 3]);
    assert!(
        stderr(&out).contains("published 4 events to cli"),
        "{}",
        stderr(&out)
    );

    let out = ec_client(
        &[
            "stream",
            "--node",
            &addr,
            "--data-id",
            "cli",
            "--count",
            "4",
        ],
        b"",
    )
    .await;
    assert_ok(&out);
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    let fields: Vec<Vec<&str>> = lines.iter().map(|l| l.splitn(3, ' ').collect()).collect();
    assert_eq!(fields[0][0], "0");
    assert!(
        humantime::parse_rfc3339(fields[0][1]).is_ok(),
        "{}",
        fields[0][1]
    );
    assert_eq!(fields[0][2], "hello world");
    assert_eq!(fields[1][2], "second line");
    assert_eq!(
        fields[2].get(2),
        Some(&""),
        "an empty line is an empty event"
    );
    assert_eq!(fields[3][2], "last without newline");

    let out = ec_client(
        &[
            "--node",
            &addr,
            "stream",
            "--data-id",
            "cli",
            "--offset",
            "1",
            "--count",
            "2",
            "--json",
        ],
        b"",
    )
    .await;
    assert_ok(&out);
    let values: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(values.len(), 2);
    assert_eq!(values[0]["offset"], 1);
    assert_eq!(values[0]["data"], "second line");
    assert_eq!(values[0]["encoding"], "utf8");
    assert_eq!(values[0]["node"], "node1");
    assert!(values[1]["timestamp"].as_i64().is_some_and(|t| t > 0));

    // From a time after everything: nothing stored qualifies, so --no-follow ends at once.
    let out = ec_client(
        &[
            "--node",
            &addr,
            "stream",
            "--data-id",
            "cli",
            "--since",
            "2999-01-01T00:00:00Z",
            "--no-follow",
        ],
        b"",
    )
    .await;
    assert_ok(&out);
    assert_eq!(stdout(&out), "");
}

#[tokio::test]
async fn synthetic_publish_and_binary_payloads() {
    let node = start_node().await;
    let addr = node.addr.to_string();

    let out = ec_client(
        &[
            "--node",
            &addr,
            "publish",
            "--data-id",
            "syn",
            "--count",
            "250",
            "--size",
            "20",
            "--batch",
            "100",
        ],
        b"",
    )
    .await;
    assert_ok(&out);
    assert_eq!(acknowledged(&out), (0..250).collect::<Vec<_>>());

    // --quiet: only the final summary, on standard error.
    let out = ec_client(
        &[
            "--node",
            &addr,
            "publish",
            "--data-id",
            "quiet",
            "--count",
            "30",
            "--batch",
            "7",
            "--quiet",
        ],
        b"",
    )
    .await;
    assert_ok(&out);
    assert_eq!(stdout(&out), "");
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("published 30 events to quiet") && err.contains("offsets 0-29"),
        "{err}"
    );

    let out = ec_client(
        &[
            "--node",
            &addr,
            "stream",
            "--data-id",
            "syn",
            "--from",
            "earliest",
            "--no-follow",
        ],
        b"",
    )
    .await;
    assert_ok(&out);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 250);
    assert!(
        lines[249].ends_with(" 000000000249xxxxxxxx"),
        "{}",
        lines[249]
    );

    // Bytes that are not printable text come out as hex.
    let out = ec_client(
        &["--node", &addr, "publish", "--data-id", "bin"],
        b"\x00\x01\xfe\n",
    )
    .await;
    assert_ok(&out);
    let out = ec_client(
        &[
            "--node",
            &addr,
            "stream",
            "--data-id",
            "bin",
            "--count",
            "1",
        ],
        b"",
    )
    .await;
    assert_ok(&out);
    assert!(
        stdout(&out).trim_end().ends_with(" 0x0001fe"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test]
async fn user_errors_are_one_readable_message() {
    let node = start_node().await;
    let addr = node.addr.to_string();

    let out = ec_client(
        &[
            "--node",
            &addr,
            "stream",
            "--data-id",
            "../etc",
            "--count",
            "1",
        ],
        b"",
    )
    .await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("../etc") && err.contains("[A-Za-z0-9._-]"),
        "{err}"
    );

    let out = ec_client(
        &[
            "--node",
            &addr,
            "stream",
            "--data-id",
            "x",
            "--offset",
            "1",
            "--from",
            "latest",
        ],
        b"",
    )
    .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );

    let out = ec_client(
        &[
            "--node",
            &addr,
            "stream",
            "--data-id",
            "x",
            "--since",
            "yesterday",
        ],
        b"",
    )
    .await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("RFC 3339"), "{}", stderr(&out));

    let out = ec_client(
        &["--node", &addr, "stream", "--data-id", "x", "--proxy"],
        b"",
    )
    .await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--proxy"), "{}", stderr(&out));

    // A node that is not there: retried with backoff, then given up when told to.
    let dead = format!("127.0.0.1:{}", ec_testkit::free_port());
    let out = ec_client(
        &[
            "--node",
            &dead,
            "stream",
            "--data-id",
            "x",
            "--retries",
            "2",
        ],
        b"",
    )
    .await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("gave up on data ID x after 3 failed attempts") && err.contains(&dead),
        "{err}"
    );
    assert!(
        !err.contains("\x1b["),
        "no colors when stderr is not a terminal: {err}"
    );

    // No gateway listens there: the message says where it looked and what to do.
    let port = ec_testkit::free_port();
    let gateway = format!("127.0.0.1:{port}");
    let out = ec_client(&["--gateway", &gateway, "stream", "--data-id", "x"], b"").await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&gateway) && err.contains("--node"), "{err}");
}

#[tokio::test]
async fn help_explains_every_flag() {
    for (cmd, flags) in [
        (vec!["--help"], vec!["--gateway", "--node", "--config"]),
        (
            vec!["stream", "--help"],
            vec![
                "--data-id",
                "--offset",
                "--from",
                "--since",
                "--count",
                "--no-follow",
                "--retries",
                "--proxy",
                "--json",
            ],
        ),
        (
            vec!["publish", "--help"],
            vec![
                "--data-id",
                "--count",
                "--size",
                "--rate",
                "--batch",
                "--in-flight",
                "--proxy",
                "--delivery-timeout",
                "--quiet",
            ],
        ),
    ] {
        let out = ec_client(&cmd, b"").await;
        assert_ok(&out);
        let help = stdout(&out);
        for flag in flags {
            let line = help
                .lines()
                .find(|l| l.trim_start().starts_with(flag))
                .unwrap_or_else(|| panic!("{cmd:?} lists {flag}:\n{help}"));
            // The explanation is on the flag's line or the next one (long help).
            let explained = line.len() > flag.len() + 20
                || help
                    .split(line)
                    .nth(1)
                    .is_some_and(|rest| rest.lines().nth(1).is_some_and(|l| l.trim().len() > 10));
            assert!(explained, "{flag} is explained in {cmd:?}:\n{help}");
        }
    }
}

/// A gateway in this process, on an ephemeral port, promoting after 2 s.
struct Gateway {
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start_gateway(consul_url: &str) -> Gateway {
    let mut settings = ec_gateway::GatewaySettings::new(consul_url);
    settings.kv_prefix = ec_testnode::KV_PREFIX.into();
    settings.failover_after = Duration::from_secs(2);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    tokio::spawn(ec_gateway::run(settings, listener, shutdown.clone()));
    Gateway { addr, shutdown }
}

/// The payload numbers of data ID `data_id`'s whole log, in offset order.
async fn payload_numbers(client: &ec_client::Client, data_id: &str) -> Vec<u64> {
    use futures_util::StreamExt;
    client
        .stream(
            data_id,
            ec_client::StreamOptions::from_start(ec_client::Start::Earliest).follow(false),
        )
        .events()
        .map(|e| {
            let e = e.expect("event");
            let number = std::str::from_utf8(&e.data[..12]).expect("utf-8");
            number.parse::<u64>().expect("a payload number")
        })
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_rides_out_a_primary_sigkill_and_exits_zero() {
    use ec_testnode::{NodeProcess, connect, data_id, node_id, store};
    const COUNT: u64 = 600;
    let consul = ec_testkit::ConsulAgent::start_dev().await;
    let url = consul.http_url();
    let dir = tempfile::tempdir().expect("dir");
    let mut n1 = NodeProcess::spawn_replicated(&dir.path().join("n1"), &url, "n1");
    let _n2 = NodeProcess::spawn_replicated(&dir.path().join("n2"), &url, "n2");
    let _n3 = NodeProcess::spawn_replicated(&dir.path().join("n3"), &url, "n3");
    let c1 = connect(n1.grpc_addr).await;
    let gateway = start_gateway(&url).await;
    let nodes = [node_id("n1"), node_id("n2"), node_id("n3")];
    for d in ["direct", "proxied"] {
        store(&consul)
            .put(&data_id(d), &nodes, None)
            .await
            .expect("map");
    }
    let gw = gateway.addr.to_string();
    let client = ec_testkit::wait_for("the gateway answers", DEADLINE, || {
        let gw = gw.clone();
        async move { ec_client::Client::connect(&gw).await.ok() }
    })
    .await;
    for d in ["direct", "proxied"] {
        ec_testkit::wait_for("n1 primary with both replicas in sync", DEADLINE, || {
            let (mut c, client) = (c1.clone(), client.clone());
            async move {
                let s = c
                    .get_replication_status(ec_proto::StreamInfoRequest { data_id: d.into() })
                    .await
                    .ok()?
                    .into_inner();
                let route = client.route(d).await.ok()?;
                (s.in_sync.len() == 3 && route.primary == "n1").then_some(())
            }
        })
        .await;
    }

    let run = |extra: &'static [&'static str], d: &'static str| {
        let gw = gw.clone();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ec-client"));
        cmd.args(["publish", "--gateway", &gw, "--data-id", d])
            .args(["--count", &COUNT.to_string(), "--rate", "100"])
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd.spawn().expect("spawn ec-client")
    };
    let direct = run(&[], "direct");
    let proxied = run(&["--proxy"], "proxied");
    ec_testkit::wait_for("a third of the events published", DEADLINE, || {
        let mut c = c1.clone();
        async move {
            for d in ["direct", "proxied"] {
                let info = c
                    .get_stream_info(ec_proto::StreamInfoRequest { data_id: d.into() })
                    .await
                    .ok()?
                    .into_inner();
                if info.next_offset < COUNT / 3 {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    n1.kill9();

    for (d, child) in [("direct", direct), ("proxied", proxied)] {
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("ec-client finishes")
            .expect("ec-client runs");
        assert_ok(&out);
        let err = stderr(&out);
        let interrupted = err.matches("publishing interrupted").count();
        let resumed = err.matches("publishing resumed").count();
        // Through the gateway (--proxy) the gateway itself resends to the new primary, so the
        // CLI may see no outage at all; straight to the primary it must.
        if d == "direct" {
            assert!(interrupted >= 1, "{d}: the outage is reported:\n{err}");
        }
        assert_eq!(
            interrupted, resumed,
            "{d}: one line per outage, one when it ended:\n{err}"
        );
        assert!(
            err.contains(&format!("published {COUNT} events")),
            "{d}:\n{err}"
        );
        // Every batch acknowledged once, in order, at consecutive offsets.
        assert_eq!(acknowledged(&out), (0..COUNT).collect::<Vec<_>>(), "{d}");
        // Payload numbers continuous: each stored exactly once, in order, at its offset.
        assert_eq!(
            payload_numbers(&client, d).await,
            (0..COUNT).collect::<Vec<_>>(),
            "{d}: the log holds every number once, in order"
        );
    }
}

mod util {
    /// Not a test: the body of a `NodeProcess` (see `ec_testnode::child_main`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "entry point of the node child process started by NodeProcess::spawn"]
    async fn node_process_child() {
        ec_testnode::child_main().await;
    }
}

/// A user error (here a data ID breaking the naming rule) reads the same on a pipe and on a
/// terminal: colour only on a terminal without `NO_COLOR`, no backtrace even with
/// `RUST_BACKTRACE=1` (those are for bugs).
#[test]
fn a_user_error_is_plain_text_without_a_backtrace() {
    ec_testkit::terminal::assert_plain_user_error(
        std::path::Path::new(env!("CARGO_BIN_EXE_ec-client")),
        &["--node", "127.0.0.1:1", "stream", "--data-id", "../etc"],
        "[A-Za-z0-9._-]",
    );
}

/// `--gateway localhost` leads with the real problem (no port), not with a guess about a
/// gateway that is not running; and, like every user error, it reads the same on a pipe and
/// on a terminal: colour only on a terminal without `NO_COLOR`, no backtrace even with
/// `RUST_BACKTRACE=1`.
#[test]
fn a_bad_gateway_address_is_said_first_and_plainly() {
    let args = ["--gateway", "localhost", "stream", "--data-id", "x"];
    let program = std::path::Path::new(env!("CARGO_BIN_EXE_ec-client"));
    let printed = ec_testkit::terminal::run_piped(program, &args, &[]);
    let first = printed
        .text
        .lines()
        .find(|l| !l.trim().is_empty() && l.trim() != "Error:")
        .unwrap_or_default();
    assert!(
        first.contains("--gateway localhost") && first.contains("no port"),
        "{}",
        printed.text
    );
    assert!(
        !printed.text.contains("is a gateway running"),
        "{}",
        printed.text
    );
    ec_testkit::terminal::assert_plain_user_error(program, &args, "no port");
}

/// A node restarted under a reader: the CLI says so in one line (`failover: … resumed at
/// N`), not also as a log warning about the same break, and the reader goes on at the next
/// offset without a gap or a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_is_printed_once() {
    use tokio::io::AsyncBufReadExt;

    let dir = tempfile::tempdir().expect("dir");
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = grpc.local_addr().expect("addr");
    let start = |grpc: TcpListener| {
        let data = dir.path().to_owned();
        async move {
            let health = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let settings = NodeSettings::new(
                NodeId::parse("node1").expect("id"),
                &data,
                "http://127.0.0.1:1",
            );
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(ec_node::run(
                settings,
                Listeners { grpc, health },
                shutdown.clone(),
            ));
            (shutdown, task)
        }
    };
    let (shutdown, task) = start(grpc).await;
    let node = addr.to_string();
    assert_ok(
        &ec_client(
            &["--node", &node, "publish", "--data-id", "x"],
            b"a\nb\nc\n",
        )
        .await,
    );

    let mut reader = Command::new(env!("CARGO_BIN_EXE_ec-client"))
        .args([
            "--node",
            &node,
            "stream",
            "--data-id",
            "x",
            "--from",
            "earliest",
        ])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ec-client stream");
    let mut lines = tokio::io::BufReader::new(reader.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    let mut read_until = async |n: usize, seen: &mut Vec<String>| {
        while seen.len() < n {
            let line = tokio::time::timeout(DEADLINE, lines.next_line())
                .await
                .expect("the reader prints within the deadline")
                .expect("read stdout")
                .expect("the reader keeps running");
            seen.push(line);
        }
    };
    read_until(3, &mut seen).await;

    // Stop the node gracefully (its stream ends), then start it again on the same port and
    // data dir; the reader reconnects by itself.
    shutdown.cancel();
    task.await.expect("node task").expect("clean stop");
    let grpc = ec_testkit::wait_for("the port is free again", DEADLINE, || async move {
        TcpListener::bind(addr).await.ok()
    })
    .await;
    let (shutdown, task) = start(grpc).await;
    assert_ok(&ec_client(&["--node", &node, "publish", "--data-id", "x"], b"d\ne\n").await);
    read_until(5, &mut seen).await;
    let offsets_and_payloads: Vec<(&str, &str)> = seen
        .iter()
        .map(|l| {
            let (offset, rest) = l.split_once(' ').expect("OFFSET TIME PAYLOAD");
            (offset, rest.rsplit(' ').next().unwrap_or_default())
        })
        .collect();
    assert_eq!(
        offsets_and_payloads,
        [("0", "a"), ("1", "b"), ("2", "c"), ("3", "d"), ("4", "e")],
        "no gap, no duplicate"
    );

    reader.start_kill().expect("kill the reader");
    let out = reader.wait_with_output().await.expect("reader output");
    let err = stderr(&out);
    assert_eq!(err.matches("failover:").count(), 1, "once:\n{err}");
    assert!(err.contains("resumed at offset 3"), "{err}");
    assert!(
        !err.contains("stream broke"),
        "said once, not also as a warning:\n{err}"
    );
    shutdown.cancel();
    task.await.expect("node task").expect("clean stop");
}
