//! `growth`: what happens when a user grows. Five curves, each point measured on a fresh
//! server of every system in turn (ours, then the peers: systems interleave within a point,
//! so a drift of the shared machine hits them alike), tier A (acknowledged after the write,
//! fsync within 1 s), with the suite's idle check before each measurement:
//!
//! - `ids`: publish throughput and server CPU per event against the number of data IDs
//!   written at once. One publisher per data ID on one shared connection ([`Server::publishers`]),
//!   each data ID created first (one event, 100 data IDs at a time; timed apart, as data IDs
//!   created a second), then
//!   batches of [`IDS_BATCH`] events taking turns over the IDs ([`RoundRobin`]) with
//!   [`IDS_WINDOW`] events in flight, so up to 64 data IDs have a batch in flight at any time
//!   and every data ID is written at least twice.
//! - `followers`: e2e delivery latency over all followers of one data ID (each follower its
//!   own connection and subscription, as separate consumers are) while one publisher sends
//!   `--follower-rate` events/s; also the server's CPU per delivered event.
//! - `size`: publish events/s and MB/s against event size, with at most
//!   [`SIZE_BYTES_IN_FLIGHT`] and 256 events in flight and batches of at most
//!   [`SIZE_BATCH_BYTES`] (so a 1 MiB event travels alone and memory stays bounded).
//! - `memory`: the server's RSS per data ID (that many data IDs created with one event each,
//!   100 at a time, their publishers closed, minus the server before) and per follower (that many
//!   followers attached and waiting, minus none).
//! - `replay`: replay throughput from offset 0 against the log size, after a preload of
//!   100-byte events at full speed (the suite's window).
//!
//! Every measurement is one [`Record`] with scenario `growth-<curve>` and the point in
//! `params.x`; the same publish, replay and end-to-end drivers as the suite do the work.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use color_eyre::eyre::{Result, WrapErr, bail, eyre};

use crate::cli::{Curve, GrowthArgs, Settings, SystemKind, Tier};
use crate::machine::{self, Idle};
use crate::report::{Record, Report, record};
use crate::suite::{fail, locate_systems, wait_idle};
use crate::systems::Server;
use crate::workload::{self, E2eShape, Position, Publish, RoundRobin, Subscribe};

/// Events per batch in the `ids` curve: a small producer's batch, so that many data IDs are
/// in flight at once.
pub(crate) const IDS_BATCH: usize = 16;
/// Events in flight in the `ids` curve (64 batches, so up to 64 data IDs at once).
pub(crate) const IDS_WINDOW: usize = 1024;
/// Payload of every curve but `size`, as in the suite.
const PAYLOAD: usize = 100;
/// Most payload bytes in flight in the `size` curve.
pub(crate) const SIZE_BYTES_IN_FLIGHT: usize = 16 << 20;
/// Most payload bytes in one batch in the `size` curve (ours: one `PublishRequest`).
pub(crate) const SIZE_BATCH_BYTES: usize = 1 << 20;
/// Longest wait for a follower's first event when attaching followers.
const ATTACH_DEADLINE: Duration = Duration::from_secs(60);

/// Every point of every curve, resolved from the flags and `--quick`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    pub(crate) curves: Vec<Curve>,
    pub(crate) ids: Vec<u64>,
    /// Events published at least in an `ids` point (more when 2 batches per ID need more).
    pub(crate) ids_events: u64,
    pub(crate) followers: Vec<u64>,
    pub(crate) follower_rate: u64,
    pub(crate) follower_secs: f64,
    pub(crate) follower_warmup: f64,
    pub(crate) sizes: Vec<u64>,
    /// Most events published in a `size` point.
    pub(crate) size_events: u64,
    /// Most payload bytes published in a `size` point.
    pub(crate) size_bytes: u64,
    pub(crate) memory_ids: u64,
    pub(crate) memory_followers: u64,
    pub(crate) log_sizes: Vec<u64>,
}

impl Plan {
    /// The points of `args` (defaults: the issue's; with `--quick`, seconds in all).
    pub(crate) fn of(args: &GrowthArgs) -> Plan {
        let quick = args.run.quick;
        let pick = |given: &Option<crate::cli::Points>, full: &[u64], short: &[u64]| {
            given
                .as_ref()
                .map(|p| p.0.clone())
                .unwrap_or_else(|| if quick { short } else { full }.to_vec())
        };
        let mut curves = Vec::new();
        for c in if args.curves.is_empty() {
            &Curve::ALL[..]
        } else {
            &args.curves[..]
        } {
            if !curves.contains(c) {
                curves.push(*c);
            }
        }
        Plan {
            curves,
            ids: pick(&args.ids, &[1, 100, 10_000], &[1, 10, 100]),
            ids_events: if quick { 10_000 } else { 200_000 },
            followers: pick(&args.followers, &[1, 100, 1000], &[1, 10]),
            follower_rate: args.follower_rate.max(1),
            follower_secs: args
                .run
                .e2e_secs
                .unwrap_or(if quick { 1.0 } else { 5.0 })
                .max(0.1),
            follower_warmup: args
                .run
                .e2e_warmup
                .unwrap_or(if quick { 0.2 } else { 1.0 })
                .max(0.0),
            sizes: pick(
                &args.sizes,
                &[100, 1 << 10, 64 << 10, 1 << 20],
                &[100, 1 << 10, 64 << 10],
            ),
            size_events: if quick { 5_000 } else { 200_000 },
            size_bytes: if quick { 8 << 20 } else { 512 << 20 },
            memory_ids: args
                .memory_ids
                .unwrap_or(if quick { 200 } else { 10_000 })
                .max(1),
            memory_followers: args
                .memory_followers
                .unwrap_or(if quick { 20 } else { 1000 })
                .max(1),
            log_sizes: pick(&args.log_sizes, &[1_000_000, 10_000_000], &[20_000, 50_000]),
        }
    }
}

/// Events published in an `ids` point of `ids` data IDs: at least `min`, and two batches
/// per data ID.
pub(crate) fn ids_events(ids: u64, min: u64) -> u64 {
    min.max(ids * IDS_BATCH as u64 * 2)
}

/// How a `size` point publishes events of `size` bytes: (events in flight, events per
/// batch, events in all), bounded by bytes in flight, bytes per batch, `max_events` and
/// `max_bytes` (but at least 64 events).
pub(crate) fn size_shape(size: u64, max_events: u64, max_bytes: u64) -> (usize, usize, u64) {
    let size = size.max(1);
    let window = (SIZE_BYTES_IN_FLIGHT as u64 / size).clamp(1, 256) as usize;
    let batch = ((SIZE_BATCH_BYTES as u64 / size).clamp(1, 64) as usize).min(window);
    let events = (max_bytes / size).clamp(64, max_events.max(64));
    (window, batch, events)
}

/// The data IDs of a point: `g00000`, `g00001`, …
fn data_ids(n: u64) -> Vec<String> {
    (0..n).map(|i| format!("g{i:05}")).collect()
}

/// Runs `growth`.
pub(crate) async fn run(args: GrowthArgs) -> Result<()> {
    let plan = Plan::of(&args);
    let mut s = args.run.settings();
    s.trials = args.run.trials.unwrap_or(1).max(1);
    let mut report = Report::new(s.out.as_deref())?;
    println!("ec-bench growth on {}", machine::describe());
    println!(
        "trials {}, tier A, curves {:?}{}",
        s.trials,
        plan.curves.iter().map(|c| c.name()).collect::<Vec<_>>(),
        if s.quick { ", --quick" } else { "" }
    );
    let available = locate_systems(&s, "growth", &mut report)?;
    let mut failures = 0usize;
    for trial in 1..=s.trials {
        println!("\n== trial {trial}/{} ==", s.trials);
        for &curve in &plan.curves {
            let points: Vec<u64> = match curve {
                Curve::Ids => plan.ids.clone(),
                Curve::Followers => plan.followers.clone(),
                Curve::Size => plan.sizes.clone(),
                Curve::Memory => vec![plan.memory_ids],
                Curve::Replay => plan.log_sizes.clone(),
            };
            for x in points {
                for (kind, bin) in &available {
                    let idle = wait_idle(&s).await;
                    let point = Point {
                        kind: *kind,
                        trial,
                        idle,
                        x,
                    };
                    let outcome = measure(curve, &point, bin.clone(), &plan, &s).await;
                    let scenario = format!("growth-{}", curve.name());
                    match outcome {
                        Ok(r) => report.add(r)?,
                        Err(e) => {
                            failures += fail(
                                &mut report,
                                &scenario,
                                kind.name(),
                                Some(Tier::A),
                                trial,
                                e.wrap_err(format!("at x = {x}")),
                            )?;
                        }
                    }
                }
            }
        }
    }
    report.finish(failures)
}

/// One system at one point of a curve.
struct Point {
    kind: SystemKind,
    trial: usize,
    idle: Idle,
    x: u64,
}

/// Measures `curve` at `point` on a fresh server.
async fn measure(
    curve: Curve,
    point: &Point,
    bin: PathBuf,
    plan: &Plan,
    s: &Settings,
) -> Result<Record> {
    let server = Server::start_for_growth(point.kind, bin, Tier::A)
        .await
        .wrap_err_with(|| format!("cannot start {}", point.kind.name()))?;
    let pid = server
        .pid()
        .ok_or_else(|| eyre!("{} has no PID", point.kind.name()))?;
    let mut r = record(
        &format!("growth-{}", curve.name()),
        point.kind.name(),
        point.kind != SystemKind::Ec,
        Some(Tier::A),
        point.trial,
        point.idle,
    );
    r.notes.push(server.describe());
    match curve {
        Curve::Ids => ids_point(&server, pid, point.x, plan, s, &mut r).await?,
        Curve::Followers => followers_point(&server, pid, point.x, plan, &mut r).await?,
        Curve::Size => size_point(&server, pid, point.x, plan, s, &mut r).await?,
        Curve::Memory => memory_point(&server, pid, plan, &mut r).await?,
        Curve::Replay => replay_point(&server, pid, point.x, s, &mut r).await?,
    }
    Ok(r)
}

/// CPU seconds of the server and of this process, to difference around a phase.
pub(crate) fn cpu_now(pid: impl Into<Option<u32>>) -> (Option<f64>, Option<f64>) {
    (
        pid.into().and_then(machine::process_cpu_secs),
        machine::process_cpu_secs(std::process::id()),
    )
}

/// Inserts `<who>_cpu_us_per_<per>` from two [`cpu_now`] readings over `count` things.
pub(crate) fn insert_cpu(
    r: &mut Record,
    before: (Option<f64>, Option<f64>),
    after: (Option<f64>, Option<f64>),
    per: &str,
    count: u64,
) {
    let count = count.max(1) as f64;
    if let (Some(a), Some(b)) = (before.0, after.0) {
        r.metrics
            .insert(format!("server_cpu_us_per_{per}"), (b - a) / count * 1e6);
    }
    if let (Some(a), Some(b)) = (before.1, after.1) {
        r.metrics
            .insert(format!("client_cpu_us_per_{per}"), (b - a) / count * 1e6);
    }
}

/// Publishes through `publisher` and records events/s, MB/s and CPU per event.
#[allow(clippy::too_many_arguments)]
async fn timed_publish(
    publisher: &mut dyn Publish,
    pid: u32,
    events: u64,
    window: usize,
    batch: usize,
    payload: usize,
    s: &Settings,
    r: &mut Record,
) -> Result<workload::Published> {
    let payloads = workload::Payloads::new(payload);
    let before = cpu_now(pid);
    let done = workload::publish_window(publisher, events, window, batch, &payloads, s.publish_max)
        .await
        .wrap_err("publish failed")?;
    let after = cpu_now(pid);
    let secs = done.elapsed.as_secs_f64().max(1e-9);
    r.metrics
        .insert("ev_per_s".into(), done.events as f64 / secs);
    r.metrics.insert(
        "mb_per_s".into(),
        done.events as f64 * payload as f64 / 1e6 / secs,
    );
    insert_cpu(r, before, after, "ev", done.events);
    if done.capped {
        r.notes.push(format!(
            "stopped at the {:?} cap after {} of {events} events",
            s.publish_max, done.events
        ));
    }
    Ok(done)
}

async fn ids_point(
    server: &Server,
    pid: u32,
    ids: u64,
    plan: &Plan,
    s: &Settings,
    r: &mut Record,
) -> Result<()> {
    let names = data_ids(ids);
    // Creating data IDs is what growing by data IDs costs first: each opened and given its
    // first event, [`crate::systems::OPEN_CHUNK`] at a time.
    let creating = Instant::now();
    let publishers = server.publishers(&names).await?;
    r.metrics.insert(
        "create_ids_per_s".into(),
        ids as f64 / creating.elapsed().as_secs_f64().max(1e-9),
    );
    let mut rr = RoundRobin::new(publishers)?;
    let events = ids_events(ids, plan.ids_events);
    let done = timed_publish(&mut rr, pid, events, IDS_WINDOW, IDS_BATCH, PAYLOAD, s, r).await?;
    r.params = serde_json::json!({
        "x": ids, "events": done.events, "window": IDS_WINDOW, "batch": IDS_BATCH,
        "payload": PAYLOAD,
    });
    Ok(())
}

async fn size_point(
    server: &Server,
    pid: u32,
    size: u64,
    plan: &Plan,
    s: &Settings,
    r: &mut Record,
) -> Result<()> {
    let (window, batch, events) = size_shape(size, plan.size_events, plan.size_bytes);
    let mut publisher = server.publisher().await?;
    let done = timed_publish(
        publisher.as_mut(),
        pid,
        events,
        window,
        batch,
        size as usize,
        s,
        r,
    )
    .await?;
    r.params = serde_json::json!({
        "x": size, "events": done.events, "window": window, "batch": batch, "payload": size,
    });
    Ok(())
}

async fn followers_point(
    server: &Server,
    pid: u32,
    followers: u64,
    plan: &Plan,
    r: &mut Record,
) -> Result<()> {
    let mut publisher = server.publisher().await?;
    create_stream(publisher.as_mut()).await?;
    let mut subs = Vec::with_capacity(followers as usize);
    for _ in 0..followers {
        subs.push(server.subscriber(Position::New, true).await?);
    }
    let shape = E2eShape {
        rate: plan.follower_rate,
        duration: Duration::from_secs_f64(plan.follower_secs),
        warmup: Duration::from_secs_f64(plan.follower_warmup),
        payload: PAYLOAD,
    };
    let before = cpu_now(pid);
    let e = workload::end_to_end(publisher, subs, shape)
        .await
        .wrap_err("end-to-end failed")?;
    let after = cpu_now(pid);
    if let Some(d) = &e.delivery {
        r.insert_percentiles("delivery", d);
    }
    r.metrics.insert("lost".into(), e.lost as f64);
    r.metrics
        .insert("out_of_order".into(), e.out_of_order as f64);
    r.metrics.insert("late_ticks".into(), e.late_ticks as f64);
    r.metrics.insert("publish_errors".into(), e.errors as f64);
    // Priming and the grace period are inside the window too; they add little CPU.
    insert_cpu(r, before, after, "delivery", e.ticks * followers);
    r.params = serde_json::json!({
        "x": followers, "rate": plan.follower_rate, "secs": plan.follower_secs,
        "warmup_secs": plan.follower_warmup, "ticks": e.ticks, "payload": PAYLOAD,
        "connections": "one per follower",
    });
    Ok(())
}

/// Attaches `n` followers of the main data ID and waits until each got a probe event,
/// then leaves each waiting for more: the state a server keeps for idle
/// followers. Returns the tasks holding them (abort to detach).
async fn attach_followers(
    server: &Server,
    n: u64,
) -> Result<(Vec<tokio::task::JoinHandle<()>>, Box<dyn Publish>)> {
    let mut publisher = server.publisher().await?;
    create_stream(publisher.as_mut()).await?;
    let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel::<Result<()>>();
    let mut tasks = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let mut sub: Box<dyn Subscribe> = server.subscriber(Position::New, true).await?;
        let got = got_tx.clone();
        tasks.push(tokio::spawn(async move {
            let first = sub.next_batch().await.map(|_| ());
            let _ = got.send(first);
            // Waits for an event that never comes, keeping the subscription open.
            let _ = sub.next_batch().await;
        }));
    }
    drop(got_tx);
    // Publish until every follower has seen something: a subscription may start after the
    // first probe.
    let deadline = Instant::now() + ATTACH_DEADLINE;
    let mut seen = 0u64;
    while seen < n {
        let ack = publisher.submit(vec![Bytes::from_static(b"probe")]).await?;
        ack.await.wrap_err("a probe publish failed")?;
        let round_end = Instant::now() + Duration::from_millis(500);
        while seen < n {
            match tokio::time::timeout_at(round_end.into(), got_rx.recv()).await {
                Ok(Some(first)) => {
                    first.wrap_err("a follower failed")?;
                    seen += 1;
                }
                Ok(None) => bail!("the followers ended early"),
                Err(_) => break,
            }
        }
        if Instant::now() >= deadline {
            bail!("only {seen} of {n} followers got an event within {ATTACH_DEADLINE:?}");
        }
    }
    Ok((tasks, publisher))
}

/// Publishes one event, so that the data ID exists before anyone follows it (ours refuses
/// to follow a data ID nobody wrote: NOT_FOUND). The end-to-end readers skip it (too short
/// to carry a tick).
async fn create_stream(publisher: &mut dyn Publish) -> Result<()> {
    let ack = publisher.submit(vec![Bytes::from_static(b"c")]).await?;
    tokio::time::timeout(Duration::from_secs(10), ack)
        .await
        .map_err(|_| eyre!("the first publish was not acknowledged within 10 s"))?
        .wrap_err("the first publish failed")
}

/// RSS of `pid` once it has settled (after a pause for allocator and lazy work).
async fn settled_rss(pid: u32) -> Result<u64> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    machine::process_rss_bytes(pid)
}

async fn memory_point(server: &Server, pid: u32, plan: &Plan, r: &mut Record) -> Result<()> {
    const MIB: f64 = (1 << 20) as f64;
    let ids = plan.memory_ids;
    let empty = settled_rss(pid).await?;
    // Each data ID gets its one event as it is created; the publishers then close, so what
    // stays is what the server keeps per data ID.
    drop(server.publishers(&data_ids(ids)).await?);
    let with_ids = settled_rss(pid).await?;
    let (tasks, _publisher) = attach_followers(server, plan.memory_followers).await?;
    let with_followers = settled_rss(pid).await?;
    for t in &tasks {
        t.abort();
    }
    r.metrics.insert("rss_empty_mib".into(), empty as f64 / MIB);
    r.metrics
        .insert("rss_ids_mib".into(), with_ids as f64 / MIB);
    r.metrics
        .insert("rss_followers_mib".into(), with_followers as f64 / MIB);
    r.metrics.insert(
        "bytes_per_id".into(),
        (with_ids as f64 - empty as f64) / ids as f64,
    );
    r.metrics.insert(
        "bytes_per_follower".into(),
        (with_followers as f64 - with_ids as f64) / plan.memory_followers as f64,
    );
    r.params = serde_json::json!({
        "x": ids, "ids": ids, "followers": plan.memory_followers, "payload": PAYLOAD,
        "followers_of": "one data ID, one connection each, attached and waiting",
    });
    Ok(())
}

async fn replay_point(
    server: &Server,
    pid: u32,
    size: u64,
    s: &Settings,
    r: &mut Record,
) -> Result<()> {
    let payloads = workload::Payloads::new(PAYLOAD);
    let mut publisher = server.publisher().await?;
    let preload = workload::publish_window(
        publisher.as_mut(),
        size,
        s.in_flight,
        s.batch,
        &payloads,
        s.publish_max,
    )
    .await
    .wrap_err("preload failed")?;
    drop(publisher);
    if preload.capped {
        r.notes.push(format!(
            "preload stopped at the {:?} cap after {} of {size} events",
            s.publish_max, preload.events
        ));
    }
    r.metrics.insert(
        "preload_ev_per_s".into(),
        preload.events as f64 / preload.elapsed.as_secs_f64().max(1e-9),
    );
    let mut sub = server.subscriber(Position::Offset(0), false).await?;
    let before = cpu_now(pid);
    let done = workload::replay(sub.as_mut(), preload.events)
        .await
        .wrap_err("replay failed")?;
    let after = cpu_now(pid);
    let secs = done.elapsed.as_secs_f64().max(1e-9);
    r.metrics
        .insert("ev_per_s".into(), done.events as f64 / secs);
    r.metrics
        .insert("mb_per_s".into(), done.bytes as f64 / 1e6 / secs);
    insert_cpu(r, before, after, "ev", done.events);
    r.metrics.insert(
        "rss_mib".into(),
        machine::process_rss_bytes(pid)? as f64 / (1 << 20) as f64,
    );
    r.params = serde_json::json!({
        "x": size, "events": done.events, "payload": PAYLOAD, "window": s.in_flight,
        "batch": s.batch,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn plan(args: &[&str]) -> Plan {
        let mut all = vec!["ec-bench", "growth"];
        all.extend_from_slice(args);
        let cli = crate::cli::Cli::try_parse_from(all).expect("flags");
        let crate::cli::Command::Growth(g) = cli.command else {
            panic!("not growth");
        };
        Plan::of(&g)
    }

    #[test]
    fn default_points_are_the_issues() {
        let p = plan(&[]);
        assert_eq!(p.curves, Curve::ALL.to_vec());
        assert_eq!(p.ids, vec![1, 100, 10_000]);
        assert_eq!(p.followers, vec![1, 100, 1000]);
        assert_eq!(p.sizes, vec![100, 1024, 65_536, 1_048_576]);
        assert_eq!((p.memory_ids, p.memory_followers), (10_000, 1000));
        assert_eq!(p.log_sizes, vec![1_000_000, 10_000_000]);
        assert_eq!(p.follower_rate, 1000);
    }

    #[test]
    fn quick_is_small_and_flags_win() {
        let p = plan(&["--quick", "--curves", "size,ids,size", "--ids", "5,50"]);
        assert_eq!(p.curves, vec![Curve::Size, Curve::Ids]);
        assert_eq!(p.ids, vec![5, 50]);
        assert_eq!(p.log_sizes, vec![20_000, 50_000]);
        assert!(p.follower_secs <= 1.0);
    }

    #[test]
    fn every_id_gets_two_batches() {
        assert_eq!(ids_events(1, 200_000), 200_000);
        assert_eq!(ids_events(10_000, 200_000), 320_000);
    }

    #[test]
    fn size_shape_bounds_bytes_in_flight_and_per_batch() {
        let (max_events, max_bytes) = (200_000, 512 << 20);
        assert_eq!(size_shape(100, max_events, max_bytes), (256, 64, 200_000));
        assert_eq!(size_shape(1024, max_events, max_bytes), (256, 64, 200_000));
        assert_eq!(size_shape(64 << 10, max_events, max_bytes), (256, 16, 8192));
        assert_eq!(size_shape(1 << 20, max_events, max_bytes), (16, 1, 512));
        // Never fewer than 64 events, never a zero window.
        assert_eq!(size_shape(1 << 30, max_events, max_bytes), (1, 1, 64));
    }

    #[test]
    fn data_ids_are_valid_and_distinct() {
        let ids = data_ids(3);
        assert_eq!(ids, vec!["g00000", "g00001", "g00002"]);
        assert!(ids.iter().all(|i| ec_core::DataId::parse(i).is_ok()));
    }
}
