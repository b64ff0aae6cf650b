//! Runs `scripts/setup-consul.sh` against a real dev Consul agent: the seed's single-node form,
//! multi-node lists in both option forms, addresses and prefixes from the environment,
//! `--list`, `--delete` (which must not touch keys sharing a name prefix), refusal of invalid
//! IDs with nothing written, and a clear error when Consul is unreachable.

use std::process::Output;
use std::time::Duration;

use ec_testkit::{ConsulAgent, free_port, workspace_root};
use tokio::process::Command;

const SEED_PREFIX: &str = "streaming/data/";

/// Runs the script with a clean Consul-related environment plus `env`.
async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let script = workspace_root().join("scripts").join("setup-consul.sh");
    let mut cmd = Command::new(&script);
    cmd.args(args);
    for var in [
        "CONSUL_HTTP_ADDR",
        "CONSUL_HTTP_TOKEN",
        "EVENT_CATCHER_CONSUL_HOST",
        "EVENT_CATCHER_CONSUL_PORT",
        "EVENT_CATCHER_CONSUL_KV_PREFIX",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{} {args:?} did not finish within 60 s", script.display()))
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

fn addr_arg(agent: &ConsulAgent) -> String {
    format!("--consul-addr={}:{}", agent.host(), agent.port())
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .expect("http client")
}

async fn kv_get(agent: &ConsulAgent, key: &str) -> Option<String> {
    let resp = client()
        .get(format!("{}/v1/kv/{key}?raw", agent.http_url()))
        .send()
        .await
        .expect("GET kv");
    match resp.status().as_u16() {
        200 => Some(resp.text().await.expect("body")),
        404 => None,
        other => panic!("GET {key}: HTTP {other}"),
    }
}

/// Every key in the agent's KV store.
async fn all_keys(agent: &ConsulAgent) -> Vec<String> {
    let resp = client()
        .get(format!("{}/v1/kv/?keys", agent.http_url()))
        .send()
        .await
        .expect("GET keys");
    if resp.status().as_u16() == 404 {
        return Vec::new();
    }
    resp.json().await.expect("key list")
}

#[tokio::test]
async fn seed_form_writes_a_single_node() {
    let agent = ConsulAgent::start_dev().await;
    let out = run(
        &["--data-id=test-data", "--node-id=node1", &addr_arg(&agent)],
        &[],
    )
    .await;
    assert_ok(&out, "seed form");
    assert_eq!(
        kv_get(&agent, "streaming/data/test-data").await.as_deref(),
        Some("node1")
    );
    assert!(
        stdout(&out).contains("streaming/data/test-data = node1"),
        "{}",
        stdout(&out)
    );

    // Writing the same value again is a no-op that still succeeds.
    let again = run(
        &["--data-id=test-data", "--node-id=node1", &addr_arg(&agent)],
        &[],
    )
    .await;
    assert_ok(&again, "rewrite");
    assert!(stdout(&again).contains("unchanged"), "{}", stdout(&again));
}

#[tokio::test]
async fn multi_node_lists_in_both_forms_and_env_addresses() {
    let agent = ConsulAgent::start_dev().await;
    let url = agent.http_url();

    // `--x v` form, address from CONSUL_HTTP_ADDR with a scheme.
    let out = run(
        &["--data-id", "orders", "--node-id", "node1,node2"],
        &[("CONSUL_HTTP_ADDR", &url)],
    )
    .await;
    assert_ok(&out, "comma list");
    assert_eq!(
        kv_get(&agent, "streaming/data/orders").await.as_deref(),
        Some("node1,node2")
    );

    // Repeated --node-id overwrites an existing key (cas=ModifyIndex), primary first;
    // address from EVENT_CATCHER_CONSUL_HOST/PORT.
    let port = agent.port().to_string();
    let out = run(
        &["--data-id=orders", "--node-id=node3", "--node-id", "node1"],
        &[
            ("EVENT_CATCHER_CONSUL_HOST", "127.0.0.1"),
            ("EVENT_CATCHER_CONSUL_PORT", &port),
        ],
    )
    .await;
    assert_ok(&out, "repeated --node-id");
    assert_eq!(
        kv_get(&agent, "streaming/data/orders").await.as_deref(),
        Some("node3,node1")
    );
    assert!(
        stdout(&out).contains("was: node1,node2"),
        "{}",
        stdout(&out)
    );

    // Prefix from the environment, then from the flag (the flag wins).
    let out = run(
        &["--data-id=a.b_c-1", "--node-id=n1", &addr_arg(&agent)],
        &[("EVENT_CATCHER_CONSUL_KV_PREFIX", "env/prefix/")],
    )
    .await;
    assert_ok(&out, "env prefix");
    assert_eq!(
        kv_get(&agent, "env/prefix/a.b_c-1").await.as_deref(),
        Some("n1")
    );
    let out = run(
        &[
            "--data-id=x",
            "--node-id=n2",
            "--kv-prefix",
            "flag/",
            &addr_arg(&agent),
        ],
        &[("EVENT_CATCHER_CONSUL_KV_PREFIX", "env/prefix/")],
    )
    .await;
    assert_ok(&out, "flag prefix");
    assert_eq!(kv_get(&agent, "flag/x").await.as_deref(), Some("n2"));
}

#[tokio::test]
async fn list_prints_every_mapping_under_the_prefix() {
    let agent = ConsulAgent::start_dev().await;
    let addr = addr_arg(&agent);
    let empty = run(&["--list", &addr], &[]).await;
    assert_ok(&empty, "list of nothing");
    assert_eq!(stdout(&empty).trim(), "");

    for (data, nodes) in [("alpha", "node1"), ("beta", "node1,node2")] {
        assert_ok(
            &run(&["--data-id", data, "--node-id", nodes, &addr], &[]).await,
            "write",
        );
    }
    assert_ok(
        &run(
            &[
                "--data-id=gamma",
                "--node-id=n9",
                "--kv-prefix=other/",
                &addr,
            ],
            &[],
        )
        .await,
        "write elsewhere",
    );

    let out = run(&["--list", &addr], &[]).await;
    assert_ok(&out, "list");
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(lines, vec!["alpha -> node1", "beta -> node1,node2"]);
}

#[tokio::test]
async fn delete_removes_only_the_named_mapping() {
    let agent = ConsulAgent::start_dev().await;
    let addr = addr_arg(&agent);
    for data in ["x", "x2", "x/y"] {
        // "x/y" cannot be written through the script; put it directly to prove a delete of
        // "x" never acts on the whole prefix.
        if data.contains('/') {
            let resp = client()
                .put(format!("{}/v1/kv/{SEED_PREFIX}{data}", agent.http_url()))
                .body("node7")
                .send()
                .await
                .expect("PUT");
            assert!(resp.status().is_success());
        } else {
            assert_ok(
                &run(&["--data-id", data, "--node-id=node1", &addr], &[]).await,
                "write",
            );
        }
    }

    let out = run(&["--delete", "--data-id=x", &addr], &[]).await;
    assert_ok(&out, "delete");
    assert!(
        stdout(&out).contains("deleted streaming/data/x"),
        "{}",
        stdout(&out)
    );
    assert_eq!(kv_get(&agent, "streaming/data/x").await, None);
    assert_eq!(
        kv_get(&agent, "streaming/data/x2").await.as_deref(),
        Some("node1")
    );
    assert_eq!(
        kv_get(&agent, "streaming/data/x/y").await.as_deref(),
        Some("node7")
    );

    // Deleting what is not there succeeds and says so.
    let out = run(&["--delete", "--data-id", "x", &addr], &[]).await;
    assert_ok(&out, "delete again");
    assert!(
        stdout(&out).contains("nothing to delete"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test]
async fn invalid_ids_are_refused_and_nothing_is_written() {
    let agent = ConsulAgent::start_dev().await;
    let addr = addr_arg(&agent);
    let long = "a".repeat(129);
    let bad_data_ids = [
        "../x",
        "",
        ".",
        "..",
        "a/b",
        "a b",
        "héllo",
        "x,y",
        long.as_str(),
    ];
    for bad in bad_data_ids {
        let arg = format!("--data-id={bad}");
        let out = run(&[arg.as_str(), "--node-id=node1", &addr], &[]).await;
        assert_eq!(
            out.status.code(),
            Some(2),
            "data ID {bad:?}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("1-128 characters from [A-Za-z0-9._-]"),
            "data ID {bad:?}: {}",
            stderr(&out)
        );
        // Delete must refuse the same IDs.
        let out = run(&["--delete", arg.as_str(), &addr], &[]).await;
        assert_eq!(
            out.status.code(),
            Some(2),
            "delete {bad:?}: {}",
            stderr(&out)
        );
    }
    let bad_node_ids = [
        "node 1",
        "node1,,node2",
        "node1,",
        "..",
        "n/1",
        "nöde",
        long.as_str(),
    ];
    for bad in bad_node_ids {
        let arg = format!("--node-id={bad}");
        let out = run(&["--data-id=fine", arg.as_str(), &addr], &[]).await;
        assert_eq!(
            out.status.code(),
            Some(2),
            "node ID {bad:?}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("1-128 characters"),
            "node ID {bad:?}: {}",
            stderr(&out)
        );
    }
    let max = "b".repeat(128);
    let usage_errors: [&[&str]; 4] = [
        &["--data-id=fine"],
        &["--node-id=node1"],
        &["--data-id=fine", "--node-id=node1,node1"],
        &["--bogus"],
    ];
    for args in usage_errors {
        let mut args = args.to_vec();
        args.push(&addr);
        let out = run(&args, &[]).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(
        all_keys(&agent).await,
        Vec::<String>::new(),
        "a refused call wrote to Consul"
    );

    // The longest valid ID is accepted.
    let arg = format!("--data-id={max}");
    assert_ok(
        &run(&[arg.as_str(), "--node-id=node1", &addr], &[]).await,
        "128 chars",
    );
}

#[tokio::test]
async fn unreachable_consul_is_a_clear_error() {
    let port = free_port();
    let addr = format!("--consul-addr=127.0.0.1:{port}");
    let out = run(&["--data-id=test-data", "--node-id=node1", &addr], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("is Consul running at 127.0.0.1:{port}?")),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn help_describes_the_options() {
    let out = run(&["--help"], &[]).await;
    assert_ok(&out, "--help");
    for word in [
        "--data-id",
        "--node-id",
        "--delete",
        "--list",
        "--consul-addr",
        "--kv-prefix",
    ] {
        assert!(
            stdout(&out).contains(word),
            "help lacks {word}: {}",
            stdout(&out)
        );
    }
}
