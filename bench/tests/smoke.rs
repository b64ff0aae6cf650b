//! Smoke test of the harness: `ec-bench suite --quick` with ours (and whichever peers are
//! installed) must finish, print the table and write well-formed JSON lines. It never
//! judges the numbers — CI machines are too noisy for ratios — only their shape.
//!
//! The node and gateway binaries are built first (same profile as this test) if missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bench_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ec-bench"))
}

/// Builds ec-node and ec-gateway into the directory holding ec-bench, unless they are there.
fn ensure_servers_built(bin_dir: &Path) {
    if bin_dir.join("ec-node").is_file() && bin_dir.join("ec-gateway").is_file() {
        return;
    }
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "-p", "ec-node", "-p", "ec-gateway", "--bins"]);
    if bin_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building ec-node and ec-gateway failed");
}

fn installed(env_var: &str, name: &str) -> bool {
    if std::env::var_os(env_var).is_some_and(|v| !v.is_empty()) {
        return true;
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

#[test]
fn quick_suite_prints_the_table_and_writes_json_lines() {
    let exe = bench_exe();
    let bin_dir = exe.parent().expect("bin dir").to_path_buf();
    ensure_servers_built(&bin_dir);
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("results.jsonl");

    let mut systems = vec!["ec"];
    if installed("EC_BENCH_REDIS_SERVER", "redis-server") {
        systems.push("redis");
    }
    if installed("EC_BENCH_NATS_SERVER", "nats-server") {
        systems.push("jetstream");
    }
    let mut child = Command::new(&exe)
        .args(["suite", "--quick", "--systems", &systems.join(",")])
        .args(["--events", "20000", "--e2e-rate", "1000"])
        .args(["--e2e-secs", "1", "--e2e-warmup", "0.2", "--idle-wait", "1"])
        .arg("--out")
        .arg(&out)
        .env("EC_BENCH_BIN_DIR", &bin_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ec-bench");

    // Read the output on threads so a full pipe never blocks the child.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).expect("read stdout");
        s
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).expect("read stderr");
        s
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ec-bench suite --quick did not finish within 300 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = out_thread.join().expect("stdout thread");
    let stderr = err_thread.join().expect("stderr thread");
    assert!(
        status.success(),
        "ec-bench failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );

    // The table: a section per scenario and tier, with the ratio columns when peers ran.
    for heading in [
        "floor — median",
        "publish, tier A",
        "publish, tier B",
        "replay, tier A",
        "resume, tier B",
        "e2e, tier A",
    ] {
        assert!(stdout.contains(heading), "no {heading:?} in:\n{stdout}");
    }
    for peer in &systems[1..] {
        assert!(
            stdout.contains(&format!("ec÷{peer}")),
            "no ratio column for {peer}:\n{stdout}"
        );
    }
    let consul = ec_testkit::consul_binary().is_ok();
    if consul {
        for heading in ["lookup — median", "proxy, tier A", "failover, tier A"] {
            assert!(stdout.contains(heading), "no {heading:?} in:\n{stdout}");
        }
    } else {
        assert!(stdout.contains("SKIPPED ec-cluster"), "{stdout}");
    }

    // The JSON lines: every line a record; each system measured in both tiers.
    let text = std::fs::read_to_string(&out).expect("results file");
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
        .collect();
    for system in &systems {
        for tier in ["a", "b"] {
            for scenario in ["publish", "replay", "resume", "e2e"] {
                let found = records.iter().any(|r| {
                    r["system"] == *system
                        && r["tier"] == tier
                        && r["scenario"] == scenario
                        && r["metrics"].as_object().is_some_and(|m| !m.is_empty())
                });
                assert!(
                    found,
                    "no {scenario} record of {system} in tier {tier}:\n{text}"
                );
            }
        }
    }
    let publish = records
        .iter()
        .find(|r| r["system"] == "ec" && r["scenario"] == "publish")
        .expect("ec publish");
    assert!(publish["metrics"]["ev_per_s"].as_f64().expect("rate") > 0.0);
    assert_eq!(publish["params"]["events"], 20000);
    if consul {
        let failover = records
            .iter()
            .find(|r| r["scenario"] == "failover")
            .expect("failover record");
        assert_eq!(failover["metrics"]["gapless"], 1.0, "{failover}");
    }
}

/// `failover --kill primary` is documented where a user looks first; running it takes a
/// failover at default settings (tens of seconds), so the scenario itself is left to
/// `ec-bench failover --kill primary` and BENCHMARKS.md.
#[test]
fn failover_help_explains_the_primary_kill() {
    let out = Command::new(bench_exe())
        .args(["failover", "--help"])
        .output()
        .expect("run ec-bench failover --help");
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--kill",
        "--signal",
        "SIGSTOP",
        "primary",
        "write pause",
        "read pause",
        "JetStream",
        "--publish-rate",
    ] {
        assert!(help.contains(needle), "no {needle:?} in:\n{help}");
    }
}
