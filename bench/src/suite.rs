//! What runs when. A run is `trials` rounds; each round measures the floor, then for each
//! tier every system in turn (A B C, A B C, …: systems interleave, so a slow drift of the
//! machine hits all of them alike), each on a fresh server, then the scenarios of ours alone
//! (lookup, proxy, failover), then the primary's loss (ours, and JetStream's beside it when
//! `failover` asks). Before each measurement the run waits for an idle machine and
//! marks the records CONTENDED if it never got one.
//!
//! A peer whose binary is missing is SKIPPED (printed and recorded) and the rest runs; a
//! measurement that fails is recorded as failed and the run goes on, exiting non-zero at the
//! end so that CI notices.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use color_eyre::eyre::{Result, WrapErr, bail};

use crate::cli::{Command, KillTarget, Settings, SystemKind, Tier};
use crate::machine::{self, Idle};
use crate::report::{Record, Report, record};
use crate::systems::{self, Server};
use crate::workload::{self, E2eShape, Position};
use crate::{failover, floor, lookup, primary_kill, procs, proxy};

/// Which scenarios a command runs.
#[derive(Debug, Clone, Copy, Default)]
struct Scenarios {
    floor: bool,
    publish: bool,
    replay: bool,
    resume: bool,
    e2e: bool,
    lookup: bool,
    proxy: bool,
    failover: bool,
    /// The primary killed and stopped (`failover --kill primary`; ours only in `suite`).
    primary_kill: bool,
}

impl Scenarios {
    fn of(command: &str) -> Scenarios {
        let none = Scenarios::default();
        match command {
            "suite" => Scenarios {
                floor: true,
                publish: true,
                replay: true,
                resume: true,
                e2e: true,
                lookup: true,
                proxy: true,
                failover: true,
                primary_kill: true,
            },
            "floor" => Scenarios {
                floor: true,
                ..none
            },
            "publish" => Scenarios {
                publish: true,
                ..none
            },
            "replay" => Scenarios {
                replay: true,
                ..none
            },
            "e2e" => Scenarios {
                e2e: true,
                resume: true,
                ..none
            },
            "lookup" => Scenarios {
                lookup: true,
                ..none
            },
            "proxy" => Scenarios {
                proxy: true,
                ..none
            },
            "failover" => Scenarios {
                failover: true,
                ..none
            },
            _ => none,
        }
    }

    fn per_system(&self) -> bool {
        self.publish || self.replay || self.resume || self.e2e
    }
}

/// Runs `command` (anything but the internal seed gateway).
pub(crate) async fn run(command: Command) -> Result<()> {
    let name = command.name();
    let mut scen = Scenarios::of(name);
    // How the primary is taken out, and whether JetStream runs beside ours.
    let mut primary_faults = vec![primary_kill::Fault::Kill, primary_kill::Fault::Stop];
    let mut primary_shape = None;
    let mut jetstream_too = false;
    let args = match command {
        Command::Suite(a)
        | Command::Floor(a)
        | Command::Publish(a)
        | Command::Replay(a)
        | Command::E2e(a)
        | Command::Lookup(a)
        | Command::Proxy(a) => a,
        Command::Failover(f) => {
            scen.failover = f.kill.contains(&KillTarget::Replica);
            scen.primary_kill = f.kill.contains(&KillTarget::Primary);
            primary_shape = Some(f.primary_kill_shape());
            primary_faults = f.signal.iter().map(|s| s.fault()).collect();
            primary_faults.dedup();
            jetstream_too = true;
            f.run
        }
        Command::SeedGateway(_)
        | Command::FloorServer(_)
        | Command::Table { .. }
        | Command::Deployment(_)
        | Command::Scale(_)
        | Command::Growth(_) => bail!("{name} is not a suite scenario"),
    };
    let s = args.settings();
    let primary_shape =
        primary_shape.unwrap_or_else(|| primary_kill::Shape::defaults(s.payload, s.quick));
    let mut report = Report::new(s.out.as_deref())?;
    println!("ec-bench {name} on {}", machine::describe());
    println!(
        "trials {}, tiers {:?}, {} events of {} B ({} in the proxy scenario), {} in flight (batches of ≤ {}), e2e {} ev/s for {:?} (first {:?} dropped){}",
        s.trials,
        s.tiers.iter().map(|t| t.name()).collect::<Vec<_>>(),
        s.events,
        s.payload,
        s.proxy_events,
        s.in_flight,
        s.batch,
        s.e2e_rate,
        s.e2e_duration,
        s.e2e_warmup,
        if s.quick { ", --quick" } else { "" }
    );

    let mut failures = 0usize;
    let available = if scen.per_system() {
        locate_systems(&s, name, &mut report)?
    } else {
        Vec::new()
    };
    let cluster_bins = if (scen.lookup || scen.proxy || scen.failover || scen.primary_kill)
        && s.systems.contains(&SystemKind::Ec)
    {
        match cluster_binaries(&s) {
            Ok(b) => Some(b),
            Err(why) => {
                let mut r = record(name, "ec-cluster", false, None, 0, idle_now());
                r.skipped = Some(why);
                report.add(r)?;
                None
            }
        }
    } else {
        None
    };

    // JetStream's side of the primary kill: its own cluster of nats-servers.
    let nats = if scen.primary_kill && jetstream_too && s.systems.contains(&SystemKind::Jetstream) {
        match systems::locate(SystemKind::Jetstream, &s) {
            Ok(bin) => Some(bin),
            Err(why) => {
                let mut r = record(
                    primary_kill::Fault::Kill.scenario(),
                    "jetstream",
                    true,
                    None,
                    0,
                    idle_now(),
                );
                r.skipped = Some(why);
                report.add(r)?;
                None
            }
        }
    } else {
        None
    };

    for trial in 1..=s.trials {
        println!("\n== trial {trial}/{} ==", s.trials);
        if scen.floor {
            let idle = wait_idle(&s).await;
            match floor::measure(s.quick).await {
                Ok(f) => {
                    let mut r = record("floor", "machine", false, None, trial, idle);
                    r.metrics.insert("tcp_rtt_p50_us".into(), f.rtt_p50_us);
                    r.metrics.insert("tcp_rtt_p99_us".into(), f.rtt_p99_us);
                    if let Some(cross) = f.rtt_cross_p50_us {
                        r.metrics.insert("tcp_rtt_cross_p50_us".into(), cross);
                    }
                    r.metrics.insert("tcp_mb_per_s".into(), f.tcp_mb_per_s);
                    r.metrics.insert("fsync_p50_us".into(), f.fsync_p50_us);
                    r.metrics.insert("fsync_p99_us".into(), f.fsync_p99_us);
                    r.metrics.insert("pause_per_s".into(), f.pauses.per_s);
                    r.metrics.insert("pause_max_us".into(), f.pauses.max_us);
                    report.add(r)?;
                }
                Err(e) => failures += fail(&mut report, "floor", "machine", None, trial, e)?,
            }
        }
        if scen.per_system() {
            for &tier in &s.tiers {
                for (kind, bin) in &available {
                    let idle = wait_idle(&s).await;
                    let outcome =
                        system_trial(*kind, bin.clone(), tier, trial, idle, &s, scen, &mut report)
                            .await;
                    if let Err(e) = outcome {
                        failures += fail(&mut report, name, kind.name(), Some(tier), trial, e)?;
                    }
                }
            }
        }
        if let Some(bins) = &cluster_bins {
            failures += cluster_trial(bins, trial, &s, scen, &mut report).await?;
        }
        if scen.primary_kill {
            for &fault in &primary_faults {
                failures += primary_kill_trial(
                    cluster_bins.as_ref(),
                    nats.as_ref(),
                    primary_shape,
                    fault,
                    trial,
                    &s,
                    &mut report,
                )
                .await?;
            }
        }
    }

    report.finish(failures)
}

/// Binaries for the scenarios with Consul and a gateway.
struct ClusterBins {
    consul: PathBuf,
    node: PathBuf,
    gateway: PathBuf,
}

fn cluster_binaries(s: &Settings) -> Result<ClusterBins, String> {
    let consul = procs::consul_binary().ok_or_else(|| {
        "no consul binary (run scripts/install-consul.sh or set EC_CONSUL_BIN); lookup, proxy and failover need it".to_owned()
    })?;
    let node = procs::own_binary("ec-node", s.bin_dir.as_deref()).map_err(|e| format!("{e:#}"))?;
    let gateway =
        procs::own_binary("ec-gateway", s.bin_dir.as_deref()).map_err(|e| format!("{e:#}"))?;
    Ok(ClusterBins {
        consul,
        node,
        gateway,
    })
}

/// The binaries of the systems `s` names; a system that cannot be found is recorded as
/// skipped for `scenario`, with why, and left out.
pub(crate) fn locate_systems(
    s: &Settings,
    scenario: &str,
    report: &mut Report,
) -> Result<Vec<(SystemKind, PathBuf)>> {
    let mut available = Vec::new();
    for &kind in &s.systems {
        match systems::locate(kind, s) {
            Ok(bin) => available.push((kind, bin)),
            Err(why) => {
                let mut r = record(
                    scenario,
                    kind.name(),
                    kind != SystemKind::Ec,
                    None,
                    0,
                    idle_now(),
                );
                r.skipped = Some(why);
                report.add(r)?;
            }
        }
    }
    Ok(available)
}

pub(crate) fn idle_now() -> Idle {
    Idle {
        percent: 0.0,
        contended: false,
    }
}

pub(crate) async fn wait_idle(s: &Settings) -> Idle {
    let idle = machine::wait_idle(s.idle_threshold, s.idle_wait).await;
    if idle.contended {
        println!(
            "  CONTENDED: the machine was only {:.0}% idle after waiting {:?}",
            idle.percent, s.idle_wait
        );
    }
    idle
}

/// Records a failed measurement; returns 1 (to count it).
pub(crate) fn fail(
    report: &mut Report,
    scenario: &str,
    system: &str,
    tier: Option<Tier>,
    trial: usize,
    error: color_eyre::Report,
) -> Result<usize> {
    let mut r = record(scenario, system, false, tier, trial, idle_now());
    r.failed = Some(format!("{error:#}"));
    report.add(r)?;
    Ok(1)
}

/// Publish, replay, resume and end-to-end of one system in one tier, on a fresh server.
#[allow(clippy::too_many_arguments)]
async fn system_trial(
    kind: SystemKind,
    bin: PathBuf,
    tier: Tier,
    trial: usize,
    idle: Idle,
    s: &Settings,
    scen: Scenarios,
    report: &mut Report,
) -> Result<()> {
    let server = Server::start(kind, bin, tier)
        .await
        .wrap_err_with(|| format!("cannot start {}", kind.name()))?;
    let baseline = kind != SystemKind::Ec;
    let base = |scenario: &str| {
        let mut r: Record = record(scenario, kind.name(), baseline, Some(tier), trial, idle);
        r.notes.push(server.describe());
        r
    };
    let payloads = workload::Payloads::new(s.payload);
    let mut stored = 0;
    if scen.publish || scen.replay || scen.resume {
        let mut publisher = server.publisher().await?;
        let cpu_before = server.pid().and_then(machine::process_cpu_secs);
        let own_before = machine::process_cpu_secs(std::process::id());
        let done = workload::publish_window(
            publisher.as_mut(),
            s.events,
            s.in_flight,
            s.batch,
            &payloads,
            s.publish_max,
        )
        .await
        .wrap_err("publish failed")?;
        let cpu_after = server.pid().and_then(machine::process_cpu_secs);
        let own_after = machine::process_cpu_secs(std::process::id());
        stored = done.events;
        if scen.publish {
            let secs = done.elapsed.as_secs_f64();
            let mut r = base("publish");
            r.metrics
                .insert("ev_per_s".into(), done.events as f64 / secs);
            r.metrics.insert(
                "mb_per_s".into(),
                done.events as f64 * s.payload as f64 / 1e6 / secs,
            );
            if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
                r.metrics.insert(
                    "server_cpu_s_per_1m".into(),
                    (b - a) / done.events as f64 * 1e6,
                );
            }
            if let (Some(a), Some(b)) = (own_before, own_after) {
                r.metrics.insert(
                    "client_cpu_s_per_1m".into(),
                    (b - a) / done.events as f64 * 1e6,
                );
            }
            r.params = serde_json::json!({
                "events": done.events, "payload": s.payload, "in_flight": s.in_flight, "batch": s.batch,
            });
            if done.capped {
                r.notes.push(format!(
                    "stopped at the {:?} cap after {} of {} events",
                    s.publish_max, done.events, s.events
                ));
            }
            report.add(r)?;
        }
    }
    if scen.replay {
        let mut sub = server.subscriber(Position::Offset(0), false).await?;
        let done = workload::replay(sub.as_mut(), stored)
            .await
            .wrap_err("replay failed")?;
        let secs = done.elapsed.as_secs_f64();
        let mut r = base("replay");
        r.metrics
            .insert("ev_per_s".into(), done.events as f64 / secs);
        r.metrics
            .insert("mb_per_s".into(), done.bytes as f64 / 1e6 / secs);
        r.params = serde_json::json!({ "events": done.events, "payload": s.payload });
        report.add(r)?;
    }
    if scen.resume && stored >= 2 {
        let reps = if s.quick { 3 } else { 7 };
        let mut times = Vec::new();
        for _ in 0..reps {
            let start = Instant::now();
            let mut sub = server
                .subscriber(Position::Offset(stored / 2), true)
                .await?;
            let first = tokio::time::timeout(Duration::from_secs(10), sub.next_batch())
                .await
                .wrap_err("no first event within 10 s of resuming")??;
            if first.is_none() {
                bail!("resuming from {} delivered nothing", stored / 2);
            }
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        let mut r = base("resume");
        if let Some((median, _, _)) = crate::stats::median_min_max(&times) {
            r.metrics.insert("ttfe_ms".into(), median);
        }
        r.params = serde_json::json!({ "from": stored / 2, "repetitions": reps, "connect_included": true });
        report.add(r)?;
    }
    if scen.e2e {
        let shape = E2eShape {
            rate: s.e2e_rate,
            duration: s.e2e_duration,
            warmup: s.e2e_warmup,
            payload: s.payload,
        };
        // CPU is read around the whole phase (connecting and priming included) and divided
        // by the ticks sent: what each delivery costs the server, and this process.
        let cpu_before = crate::growth::cpu_now(server.pid());
        let e = workload::on_one_worker(async {
            let publisher = server.publisher().await?;
            let sub = server.subscriber(Position::New, true).await?;
            workload::end_to_end(publisher, vec![sub], shape).await
        })
        .await
        .wrap_err("end-to-end failed")?;
        let cpu_after = crate::growth::cpu_now(server.pid());
        let mut r = base("e2e");
        crate::growth::insert_cpu(&mut r, cpu_before, cpu_after, "delivery", e.ticks);
        if let Some(d) = &e.delivery {
            r.insert_percentiles("delivery", d);
        }
        if let Some(a) = &e.ack {
            r.insert_percentiles("ack", a);
        }
        r.metrics.insert("late_ticks".into(), e.late_ticks as f64);
        r.metrics.insert("lost".into(), e.lost as f64);
        r.metrics
            .insert("out_of_order".into(), e.out_of_order as f64);
        r.metrics.insert("publish_errors".into(), e.errors as f64);
        r.params = serde_json::json!({
            "rate": s.e2e_rate, "secs": s.e2e_duration.as_secs_f64(),
            "warmup_secs": s.e2e_warmup.as_secs_f64(), "ticks": e.ticks, "payload": s.payload,
        });
        report.add(r)?;
    }
    Ok(())
}

/// Lookup, proxy and failover for one trial; returns the number of failures.
async fn cluster_trial(
    bins: &ClusterBins,
    trial: usize,
    s: &Settings,
    scen: Scenarios,
    report: &mut Report,
) -> Result<usize> {
    let mut failures = 0;
    let reverse = trial.is_multiple_of(2);
    if scen.lookup {
        let idle = wait_idle(s).await;
        let run = lookup::LookupRun {
            consul: &bins.consul,
            gateway: &bins.gateway,
            base_gateway: s.lookup_base_gateway.as_deref(),
            callers: s.lookup_callers,
            duration: s.lookup_duration,
            reverse,
        };
        match lookup::run(run).await {
            Ok(results) => {
                for l in results {
                    let mut r = record(
                        "lookup",
                        l.variant,
                        lookup::is_baseline(l.variant),
                        None,
                        trial,
                        idle,
                    );
                    r.metrics.insert("lookups_per_s".into(), l.rate);
                    r.metrics.insert("p50_us".into(), l.latency.p50);
                    r.metrics.insert("p99_us".into(), l.latency.p99);
                    if let Some(cpu) = l.server_cpu_us {
                        r.metrics.insert("server_cpu_us_per_lookup".into(), cpu);
                    }
                    r.params = serde_json::json!({
                        "callers": s.lookup_callers, "secs": s.lookup_duration.as_secs_f64(),
                        "data_ids": 100, "nodes": 3,
                    });
                    if l.variant == "gateway-base"
                        && let Some(bin) = &s.lookup_base_gateway
                    {
                        r.notes.push(format!("GetNodeForData of {}", bin.display()));
                    }
                    report.add(r)?;
                }
            }
            Err(e) => failures += fail(report, "lookup", "gateway", None, trial, e)?,
        }
    }
    if scen.proxy {
        let idle = wait_idle(s).await;
        let run = proxy::ProxyRun {
            consul: &bins.consul,
            node: &bins.node,
            gateway: &bins.gateway,
            events: s.proxy_events,
            payload: s.payload,
            window: s.in_flight,
            batch: s.batch,
            shape: E2eShape {
                rate: s.e2e_rate,
                duration: s.e2e_duration,
                warmup: s.e2e_warmup,
                payload: s.payload,
            },
            reverse,
        };
        match proxy::run(run).await {
            Ok(results) => {
                for p in results {
                    let mut r = record(
                        "proxy",
                        p.variant,
                        p.variant == "direct",
                        Some(Tier::A),
                        trial,
                        idle,
                    );
                    r.metrics
                        .insert("replay_ev_per_s".into(), p.replay_ev_per_s);
                    for (name, value) in proxy::CPU_METRICS.iter().zip(p.cpu_us_per_ev) {
                        if let Some(v) = value {
                            r.metrics.insert((*name).into(), v);
                        }
                    }
                    if let Some(e) = p.e2e {
                        r.metrics.insert("e2e_p50_us".into(), e.p50);
                        r.metrics.insert("e2e_p99_us".into(), e.p99);
                    }
                    r.params = serde_json::json!({
                        "events": s.proxy_events, "payload": s.payload, "rate": s.e2e_rate,
                        "secs": s.e2e_duration.as_secs_f64(),
                    });
                    report.add(r)?;
                }
            }
            Err(e) => failures += fail(report, "proxy", "proxy", Some(Tier::A), trial, e)?,
        }
    }
    if scen.failover {
        let idle = wait_idle(s).await;
        match failover::run(&bins.consul, &bins.node, &bins.gateway).await {
            Ok(f) => {
                let mut r = record("failover", "ec", false, Some(Tier::A), trial, idle);
                r.metrics
                    .insert("pause_ms".into(), f.pause.as_secs_f64() * 1e3);
                r.metrics
                    .insert("max_gap_ms".into(), f.max_gap.as_secs_f64() * 1e3);
                r.metrics
                    .insert("gapless".into(), if f.gapless { 1.0 } else { 0.0 });
                r.metrics.insert("events".into(), f.events as f64);
                r.metrics
                    .insert("publish_errors".into(), f.publish_errors as f64);
                r.params = serde_json::json!({
                    "killed": "node2 (replica serving the reader)", "publish_rate": 2000,
                    "max_lag_time": failover::MAX_LAG_TIME, "check_interval": "1s",
                });
                if !f.gapless {
                    failures += 1;
                    r.failed = Some("offsets were not gapless".into());
                }
                report.add(r)?;
            }
            Err(e) => failures += fail(report, "failover", "ec", Some(Tier::A), trial, e)?,
        }
    }
    Ok(failures)
}

/// The primary taken out by `fault` for one trial: ours, then JetStream (each skipped when
/// its binaries are missing or not asked for); returns the number of failures. A check that fails on ours
/// (an acknowledged event lost or stored twice, a reader's gap) counts as a failure; on
/// JetStream it is recorded in the notes.
async fn primary_kill_trial(
    ours: Option<&ClusterBins>,
    nats: Option<&PathBuf>,
    shape: primary_kill::Shape,
    fault: primary_kill::Fault,
    trial: usize,
    s: &Settings,
    report: &mut Report,
) -> Result<usize> {
    let mut failures = 0;
    let scenario = fault.scenario();
    let params = serde_json::json!({
        "signal": format!("{:?}", fault.signal()),
        "batches_per_s": shape.rate, "events_per_batch": shape.events_per_batch,
        "payload": shape.payload, "before_secs": shape.before.as_secs_f64(),
        "after_secs": shape.after.as_secs_f64(),
        "retry_delay_ms": primary_kill::RETRY_DELAY.as_secs_f64() * 1e3,
    });
    if let Some(bins) = ours {
        let idle = wait_idle(s).await;
        let outcome =
            primary_kill::ec::run(&bins.consul, &bins.node, &bins.gateway, shape, fault).await;
        match outcome {
            Ok((observed, log)) => {
                let result = primary_kill::analyse(&observed, &log, shape.events_per_batch);
                let mut r = record(scenario, "ec", false, None, trial, idle);
                primary_kill::fill(&mut r, &result, fault, primary_kill::ec::DESCRIBE, &params);
                if !result.correct() {
                    failures += 1;
                }
                report.add(r)?;
            }
            Err(e) => failures += fail(report, scenario, "ec", None, trial, e)?,
        }
    }
    if let Some(bin) = nats {
        let idle = wait_idle(s).await;
        match primary_kill::jetstream::run(bin, shape, fault).await {
            Ok((observed, log)) => {
                let result = primary_kill::analyse(&observed, &log, shape.events_per_batch);
                let mut r = record(scenario, "jetstream", true, None, trial, idle);
                primary_kill::fill(
                    &mut r,
                    &result,
                    fault,
                    primary_kill::jetstream::DESCRIBE,
                    &params,
                );
                report.add(r)?;
            }
            Err(e) => {
                let mut r = record(scenario, "jetstream", true, None, trial, idle_now());
                r.failed = Some(format!("{e:#}"));
                report.add(r)?;
                failures += 1;
            }
        }
    }
    Ok(failures)
}
