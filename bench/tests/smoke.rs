//! Smoke test of the harness: `ec-bench suite --quick` and `ec-bench growth --quick` with
//! ours (and whichever peers are installed) must finish, print the table and write
//! well-formed JSON lines (which `scripts/plot-growth.py` turns into charts, when python3 is
//! there). It never
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
    std::env::var_os(env_var).is_some_and(|v| !v.is_empty()) || on_path(name)
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

/// Runs ec-bench with `args` (and the server binaries beside it) to the end; returns stdout.
fn run_bench(args: &[&str], deadline: Duration) -> String {
    let exe = bench_exe();
    let bin_dir = exe.parent().expect("bin dir").to_path_buf();
    ensure_servers_built(&bin_dir);
    let mut child = Command::new(&exe)
        .args(args)
        .env("EC_BENCH_BIN_DIR", &bin_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ec-bench");
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
    let end = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ec-bench {args:?} did not finish within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = out_thread.join().expect("stdout thread");
    let stderr = err_thread.join().expect("stderr thread");
    assert!(
        status.success(),
        "ec-bench {args:?} failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}

/// The installed systems, ours first.
fn installed_systems() -> Vec<&'static str> {
    let mut systems = vec!["ec"];
    if installed("EC_BENCH_REDIS_SERVER", "redis-server") {
        systems.push("redis");
    }
    if installed("EC_BENCH_NATS_SERVER", "nats-server") {
        systems.push("jetstream");
    }
    systems
}

#[test]
fn quick_growth_writes_every_curve_and_plots() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("growth.jsonl");
    let systems = installed_systems();
    let joined = systems.join(",");
    let out_arg = out.to_str().expect("utf-8 temp path");
    let stdout = run_bench(
        &[
            "growth",
            "--quick",
            "--systems",
            &joined,
            "--idle-wait",
            "1",
            "--ids",
            "1,10",
            "--followers",
            "1,3",
            "--sizes",
            "100,64KiB",
            "--memory-ids",
            "50",
            "--memory-followers",
            "5",
            "--log-sizes",
            "5k",
            "--e2e-secs",
            "0.5",
            "--e2e-warmup",
            "0.1",
            "--out",
            out_arg,
        ],
        Duration::from_secs(300),
    );
    for curve in ["ids", "followers", "size", "memory", "replay"] {
        let heading = format!("growth-{curve}, tier A");
        assert!(stdout.contains(&heading), "no {heading:?} in:\n{stdout}");
    }
    let text = std::fs::read_to_string(&out).expect("results file");
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
        .collect();
    for system in &systems {
        for (curve, points) in [
            ("ids", &[1, 10][..]),
            ("followers", &[1, 3]),
            ("size", &[100, 65_536]),
            ("memory", &[50]),
            ("replay", &[5000]),
        ] {
            for &x in points {
                let found = records.iter().any(|r| {
                    r["system"] == *system
                        && r["scenario"] == format!("growth-{curve}")
                        && r["params"]["x"] == x
                        && r["metrics"].as_object().is_some_and(|m| !m.is_empty())
                });
                assert!(
                    found,
                    "no growth-{curve} record of {system} at {x}:\n{text}"
                );
            }
        }
    }
    let followers = records
        .iter()
        .find(|r| {
            r["system"] == "ec" && r["scenario"] == "growth-followers" && r["params"]["x"] == 3
        })
        .expect("ec followers");
    assert_eq!(followers["metrics"]["lost"], 0.0, "{followers}");

    // The plot script draws every chart from these records (when python3 is there).
    if !on_path("python3") {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/plot-growth.py");
    let svg_dir = dir.path().join("svg");
    let plot = Command::new("python3")
        .arg(&script)
        .arg(&out)
        .arg("--out")
        .arg(&svg_dir)
        .args(["--commit", "smoke"])
        .output()
        .expect("run plot-growth.py");
    assert!(plot.status.success(), "{plot:?}");
    for chart in [
        "ids-throughput",
        "followers-latency",
        "size-bytes",
        "memory",
        "replay",
    ] {
        let svg = std::fs::read_to_string(svg_dir.join(format!("{chart}.svg")))
            .unwrap_or_else(|e| panic!("no {chart}.svg: {e}"));
        assert!(
            svg.starts_with("<svg") && svg.contains("commit smoke"),
            "{svg}"
        );
    }
    let selftest = Command::new("python3")
        .arg(&script)
        .arg("--self-test")
        .output()
        .expect("run plot-growth.py --self-test");
    assert!(selftest.status.success(), "{selftest:?}");
}

#[test]
fn quick_suite_prints_the_table_and_writes_json_lines() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("results.jsonl");

    let mut systems = vec!["ec"];
    if installed("EC_BENCH_REDIS_SERVER", "redis-server") {
        systems.push("redis");
    }
    if installed("EC_BENCH_NATS_SERVER", "nats-server") {
        systems.push("jetstream");
    }
    let system_list = systems.join(",");
    let stdout = run_bench(
        &[
            "suite",
            "--quick",
            "--systems",
            &system_list,
            "--events",
            "20000",
            "--proxy-events",
            "30000",
            "--e2e-rate",
            "1000",
            "--e2e-secs",
            "1",
            "--e2e-warmup",
            "0.2",
            "--idle-wait",
            "1",
            "--out",
            out.to_str().expect("temp path is UTF-8"),
        ],
        Duration::from_secs(300),
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
        // Each variant's replay CPU per event, process by process.
        for variant in ["direct", "proxy"] {
            let proxy = records
                .iter()
                .find(|r| r["scenario"] == "proxy" && r["system"] == variant)
                .unwrap_or_else(|| panic!("no proxy record of {variant}:\n{text}"));
            // Its own, longer log: --proxy-events, not --events.
            assert_eq!(proxy["params"]["events"], 30000, "{proxy}");
            for metric in [
                "node_cpu_us_per_ev",
                "gateway_cpu_us_per_ev",
                "reader_cpu_us_per_ev",
            ] {
                let v = proxy["metrics"][metric].as_f64();
                assert!(
                    v.is_some_and(|v| v >= 0.0),
                    "{metric} of {variant}: {proxy}"
                );
            }
        }
        assert!(stdout.contains("replay: gateway CPU µs/event"), "{stdout}");
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
