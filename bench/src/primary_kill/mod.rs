//! `failover --kill primary`: the write leader of a replicated stream is SIGKILLed (or, with
//! [`Fault::Stop`], SIGSTOPped: alive, its sockets open, answering nothing) while a producer
//! writes at a steady rate and readers follow, on ours (three replicating ec-nodes and a
//! gateway, [`ec`]) and on a three-server NATS JetStream cluster with an R3 stream
//! ([`jetstream`]), every server at its default settings except ports and data dirs. This is
//! the bench's only primary-loss scenario.
//!
//! The measurement is written once, here, for both systems; each only provides a
//! [`Producer`] (publish one numbered batch, resolve once every event is acknowledged), one or
//! more [`Reader`]s (the next delivered events with their offsets and commit times, and, where
//! the client says so, that its server was lost and where it reads now), the fault and a read
//! of the final log.
//!
//! What is measured, all from the moment just before the signal:
//! - **write pause**: the kill → the first acknowledgement of a publish attempt that started
//!   after the kill (so an acknowledgement the old leader sent just before it died does not
//!   count; a publish that was in flight at the kill and is retried inside the client counts
//!   from the next one, one publish round trip later). The producer's own loop retries every
//!   failed publish of the same batch (same payloads, same JetStream `Nats-Msg-Id`) every
//!   [`RETRY_DELAY`] until it is acknowledged; it never skips a batch.
//! - **read pause**: the kill → the reader reads again from a live in-sync server (the
//!   client's move, [`Notice::Moved`], after the kill; ours says so, JetStream's ordered
//!   consumer does not). A reader whose server was not the one killed is not interrupted and
//!   has none. Also the kill → the reader told its server was lost ([`Notice::Lost`]).
//! - **first new event**: the kill → the first delivery of an event past the last one the
//!   reader had seen, counting only events committed after the kill (by commit time, which
//!   both systems stamp from the same machine clock). Events the old leader had already sent
//!   and that arrive a fraction of a millisecond after the kill are thus not a resumption.
//!   It needs a new write, so it is never shorter than the write pause.
//! - the longest gap between two consecutive acknowledgements and between two consecutive
//!   deliveries over the whole run (the same outage seen without any definition of "after").
//! - correctness: the final log, read from the new leader, holds every acknowledged event
//!   exactly once (`lost`, `duplicates`: a payload stored twice, acknowledged or not), and
//!   every reader saw offsets gapless from 0, without a duplicate, up to the last
//!   acknowledged offset.

pub(crate) mod ec;
pub(crate) mod jetstream;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use color_eyre::eyre::{Result, bail, eyre};
use futures_util::future::BoxFuture;

/// How the write leader is taken out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// SIGKILL: the process is gone, its connections are reset.
    Kill,
    /// SIGSTOP: the process is frozen, its connections stay open and nothing answers; it is
    /// continued (SIGCONT) once the measurement is over.
    Stop,
}

impl Fault {
    /// The scenario's name in records and the table.
    pub(crate) fn scenario(self) -> &'static str {
        match self {
            Fault::Kill => "primary-kill",
            Fault::Stop => "primary-stop",
        }
    }

    /// The signal sent.
    pub(crate) fn signal(self) -> nix::sys::signal::Signal {
        match self {
            Fault::Kill => nix::sys::signal::Signal::SIGKILL,
            Fault::Stop => nix::sys::signal::Signal::SIGSTOP,
        }
    }
}

/// Wait between two attempts of the producer's loop at the same batch.
pub(crate) const RETRY_DELAY: Duration = Duration::from_millis(10);

/// The load and the time limits of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// Batches per second the producer aims at (one batch in flight at a time).
    pub(crate) rate: u32,
    /// Events per batch.
    pub(crate) events_per_batch: usize,
    /// Payload bytes per event (at least [`MIN_PAYLOAD`]).
    pub(crate) payload: usize,
    /// Steady load before the kill.
    pub(crate) before: Duration,
    /// Load kept up after the first acknowledgement past the kill.
    pub(crate) after: Duration,
    /// Longest wait for writes (and each reader) to resume after the kill.
    pub(crate) deadline: Duration,
}

impl Shape {
    /// The load `failover` uses by default (`suite` too): 400 batches/s of 4 events, 3 s
    /// before the fault and 2 s after writes resume (1 s each with `quick`), and up to 2 min
    /// for anything to resume.
    pub(crate) fn defaults(payload: usize, quick: bool) -> Shape {
        let (before, after) = if quick { (1.0, 1.0) } else { (3.0, 2.0) };
        Shape {
            rate: 400,
            events_per_batch: 4,
            payload: payload.max(MIN_PAYLOAD),
            before: Duration::from_secs_f64(before),
            after: Duration::from_secs_f64(after),
            deadline: Duration::from_secs(120),
        }
    }
}

/// Room for the identity at the start of every payload.
pub(crate) const MIN_PAYLOAD: usize = 21;

/// The payload of event `index` of batch `batch`: its identity, then padding.
pub(crate) fn payload(batch: u64, index: u32, size: usize) -> Bytes {
    let id = format!("pk:{batch:012}:{index:04}:");
    let mut b = BytesMut::with_capacity(size.max(id.len()));
    b.put_slice(id.as_bytes());
    b.resize(size.max(id.len()), b'x');
    b.freeze()
}

/// The (batch, index) identity of a payload written by [`payload`]; `None` for any other.
pub(crate) fn event_id(payload: &[u8]) -> Option<(u64, u32)> {
    // "pk:" + 12 digits + ":" + 4 digits + ":" (fixed width).
    let text = std::str::from_utf8(payload.get(..21)?).ok()?;
    let rest = text.strip_prefix("pk:")?;
    let (batch, rest) = rest.split_once(':')?;
    let (index, _) = rest.split_once(':')?;
    Some((batch.parse().ok()?, index.parse().ok()?))
}

/// Publishing numbered batches into the stream.
pub(crate) trait Producer: Send {
    /// Publishes `events` (batch `batch`, the same payloads on every retry); resolves once
    /// every event is acknowledged, with the offset (0-based) of the last one.
    fn publish(&mut self, batch: u64, events: Vec<Bytes>) -> BoxFuture<'_, Result<u64>>;
}

/// One delivered event: its offset (0-based) and commit time (ns since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) offset: u64,
    pub(crate) committed_ns: i128,
}

/// What a reader's client says about where it reads, beside the events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    /// The server it read from was lost; it is resuming elsewhere.
    Lost,
    /// It reads from this server now, after a break.
    Moved(String),
}

/// What a reader delivered at once.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReadBatch {
    /// In delivery order; empty only for a [`Notice`].
    pub(crate) events: Vec<Seen>,
    /// The node or server that served them, when the client says.
    pub(crate) source: Option<String>,
    /// The client's word about a break or a move, if this is one.
    pub(crate) notice: Option<Notice>,
}

/// Following the stream from offset 0.
pub(crate) trait Reader: Send {
    /// The next delivered events; `None` when the stream ended; an error is recorded and
    /// the reader is asked again (a client that recovers by itself goes on).
    fn next(&mut self) -> BoxFuture<'_, Result<Option<ReadBatch>>>;
}

/// One acknowledged batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AckRecord {
    pub(crate) batch: u64,
    /// When the attempt that was acknowledged started.
    pub(crate) started: Instant,
    pub(crate) acked: Instant,
    pub(crate) last_offset: u64,
}

/// One reader's deliveries.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReaderLog {
    pub(crate) name: String,
    /// (arrival, first offset, last offset, newest commit time ns) per delivery; offsets
    /// within one delivery are checked as they arrive.
    pub(crate) deliveries: Vec<(Instant, u64, u64, i128)>,
    /// When the client said its server was lost.
    pub(crate) lost: Vec<Instant>,
    /// When the client said it reads from another server, and which.
    pub(crate) moved: Vec<(Instant, String)>,
    /// Events within one delivery that did not follow each other.
    pub(crate) inner_breaks: u64,
    pub(crate) errors: Vec<String>,
    pub(crate) sources: Vec<String>,
    pub(crate) ended: bool,
}

#[derive(Default)]
struct State {
    acks: Vec<AckRecord>,
    publish_errors: u64,
    last_publish_error: Option<String>,
    readers: Vec<ReaderLog>,
}

/// What one run observed, before the final log is read.
pub(crate) struct Observed {
    pub(crate) killed: String,
    pub(crate) killed_at: Instant,
    /// The kill's wall-clock time, ns since the Unix epoch.
    pub(crate) killed_ns: i128,
    pub(crate) acks: Vec<AckRecord>,
    pub(crate) publish_errors: u64,
    pub(crate) last_publish_error: Option<String>,
    pub(crate) readers: Vec<ReaderLog>,
    /// Batches per second acknowledged before the kill.
    pub(crate) rate_before: f64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// Runs the producer and the readers; after `shape.before` asks `find_leader` which server
/// leads now and has `kill` signal it; waits until writes and every reader resumed, keeps the load for
/// `shape.after`, stops, and waits until every reader has reached the last acknowledged
/// offset.
pub(crate) async fn drive(
    shape: Shape,
    mut producer: Box<dyn Producer>,
    readers: Vec<(String, Box<dyn Reader>)>,
    find_leader: impl AsyncFnOnce() -> Result<String>,
    kill: impl FnOnce(&str) -> Result<()>,
) -> Result<Observed> {
    let state = Arc::new(Mutex::new(State::default()));
    // Bumped after every record, so the waits below wake at once.
    let (recorded, mut on_record) = tokio::sync::watch::channel(());
    let recorded = Arc::new(recorded);
    let stop = Arc::new(AtomicBool::new(false));

    let producer_task = {
        let (state, recorded, stop) = (state.clone(), recorded.clone(), stop.clone());
        tokio::spawn(async move {
            let period = Duration::from_secs_f64(1.0 / f64::from(shape.rate.max(1)));
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut batch = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                batch += 1;
                let events: Vec<Bytes> = (0..shape.events_per_batch as u32)
                    .map(|i| payload(batch, i, shape.payload))
                    .collect();
                let first_try = Instant::now();
                loop {
                    let started = Instant::now();
                    match producer.publish(batch, events.clone()).await {
                        Ok(last_offset) => {
                            lock(&state).acks.push(AckRecord {
                                batch,
                                started,
                                acked: Instant::now(),
                                last_offset,
                            });
                            recorded.send_replace(());
                            break;
                        }
                        Err(e) => {
                            {
                                let mut s = lock(&state);
                                s.publish_errors += 1;
                                s.last_publish_error = Some(format!("{e:#}"));
                            }
                            if first_try.elapsed() > shape.deadline + Duration::from_secs(30) {
                                return Err(eyre!(
                                    "batch {batch} was not acknowledged within {:?}: {e:#}",
                                    first_try.elapsed()
                                ));
                            }
                            tokio::time::sleep(RETRY_DELAY).await;
                        }
                    }
                }
            }
            Ok(())
        })
    };

    let mut reader_tasks = Vec::new();
    for (i, (name, mut reader)) in readers.into_iter().enumerate() {
        lock(&state).readers.push(ReaderLog {
            name,
            ..ReaderLog::default()
        });
        let (state, recorded) = (state.clone(), recorded.clone());
        reader_tasks.push(tokio::spawn(async move {
            loop {
                let next = reader.next().await;
                let arrival = Instant::now();
                let mut s = lock(&state);
                let log = &mut s.readers[i];
                match next {
                    Ok(Some(b)) => {
                        match &b.notice {
                            Some(Notice::Lost) => log.lost.push(arrival),
                            Some(Notice::Moved(to)) => log.moved.push((arrival, to.clone())),
                            None => {}
                        }
                        let (Some(first), Some(last)) = (b.events.first(), b.events.last()) else {
                            drop(s);
                            recorded.send_replace(());
                            continue;
                        };
                        for pair in b.events.windows(2) {
                            if pair[1].offset != pair[0].offset + 1 {
                                log.inner_breaks += 1;
                            }
                        }
                        let newest = b.events.iter().map(|e| e.committed_ns).max().unwrap_or(0);
                        log.deliveries
                            .push((arrival, first.offset, last.offset, newest));
                        if let Some(source) = b.source
                            && log.sources.last() != Some(&source)
                        {
                            log.sources.push(source);
                        }
                    }
                    Ok(None) => {
                        log.ended = true;
                        drop(s);
                        recorded.send_replace(());
                        return;
                    }
                    Err(e) => {
                        log.errors.push(format!("{e:#}"));
                        // A client that keeps failing at once would spin: give up then.
                        if log.errors.len() >= 1000 {
                            log.ended = true;
                            drop(s);
                            recorded.send_replace(());
                            return;
                        }
                    }
                }
                drop(s);
                recorded.send_replace(());
            }
        }));
    }

    let outcome = async {
        // Steady state first: acknowledgements and deliveries on every reader.
        let warm_deadline = Instant::now() + Duration::from_secs(30);
        wait_until(&mut on_record, warm_deadline, || {
            let s = lock(&state);
            !s.acks.is_empty() && s.readers.iter().all(|r| !r.deliveries.is_empty())
        })
        .await
        .map_err(|()| {
            let s = lock(&state);
            eyre!(
                "no steady state within 30 s: {} acknowledgement(s), deliveries per reader {:?}, last publish error {:?}, reader errors {:?}",
                s.acks.len(),
                s.readers.iter().map(|r| r.deliveries.len()).collect::<Vec<_>>(),
                s.last_publish_error,
                s.readers.iter().filter_map(|r| r.errors.last()).collect::<Vec<_>>()
            )
        })?;
        let warm_from = Instant::now();
        let acks_at_warm = lock(&state).acks.len();
        tokio::time::sleep(shape.before).await;
        let rate_before =
            (lock(&state).acks.len() - acks_at_warm) as f64 / warm_from.elapsed().as_secs_f64();

        let killed = find_leader().await?;
        let killed_ns = now_ns();
        let killed_at = Instant::now();
        kill(&killed)?;

        let resume_deadline = killed_at + shape.deadline;
        wait_until(&mut on_record, resume_deadline, || {
            lock(&state).acks.iter().any(|a| a.started >= killed_at)
        })
        .await
        .map_err(|()| {
            let s = lock(&state);
            eyre!(
                "no publish was acknowledged within {:?} of killing {killed}; last publish error: {}",
                shape.deadline,
                s.last_publish_error.as_deref().unwrap_or("none")
            )
        })?;
        // Readers resume at most `deadline` after the kill; the ones that do not are
        // reported without a read pause.
        let _ = wait_until(&mut on_record, resume_deadline, || {
            lock(&state).readers.iter().all(|r| {
                r.ended
                    || r
                        .deliveries
                        .iter()
                        .any(|d| d.0 > killed_at && d.3 > killed_ns)
            })
        })
        .await;
        tokio::time::sleep(shape.after).await;
        Ok::<_, color_eyre::Report>((killed, killed_at, killed_ns, rate_before))
    }
    .await;

    stop.store(true, Ordering::Relaxed);
    let produced = producer_task.await;
    let (killed, killed_at, killed_ns, rate_before) = match outcome {
        Ok(o) => o,
        Err(e) => {
            for t in &reader_tasks {
                t.abort();
            }
            return Err(e);
        }
    };
    match produced {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            for t in &reader_tasks {
                t.abort();
            }
            return Err(e);
        }
        Err(e) => bail!("the producer task failed: {e}"),
    }
    // Every reader up to the last acknowledged offset (or ended, or given up on).
    let last_acked = lock(&state).acks.iter().map(|a| a.last_offset).max();
    let _ = wait_until(
        &mut on_record,
        Instant::now() + Duration::from_secs(30),
        || {
            lock(&state)
                .readers
                .iter()
                .all(|r| r.ended || r.deliveries.last().map(|d| d.2) >= last_acked)
        },
    )
    .await;
    for t in &reader_tasks {
        t.abort();
    }
    let s = std::mem::take(&mut *lock(&state));
    Ok(Observed {
        killed,
        killed_at,
        killed_ns,
        acks: s.acks,
        publish_errors: s.publish_errors,
        last_publish_error: s.last_publish_error,
        readers: s.readers,
        rate_before,
    })
}

/// Waits until `done()` holds, waking on every record; `Err(())` at `deadline`.
async fn wait_until(
    on_record: &mut tokio::sync::watch::Receiver<()>,
    deadline: Instant,
    done: impl Fn() -> bool,
) -> Result<(), ()> {
    loop {
        if done() {
            return Ok(());
        }
        match tokio::time::timeout_at(deadline.into(), on_record.changed()).await {
            Ok(Ok(())) => {}
            // All senders gone (cannot happen while the caller holds one) or the deadline.
            Ok(Err(_)) | Err(_) => return if done() { Ok(()) } else { Err(()) },
        }
    }
}

/// One reader's figures.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ReaderResult {
    pub(crate) name: String,
    /// Kill → the client said it reads from another server; `None`: it never moved (its
    /// server was not the one killed, or the client does not say).
    pub(crate) moved: Option<Duration>,
    /// Kill → the client said its server was lost.
    pub(crate) told_lost: Option<Duration>,
    /// Kill → first event committed after the kill; `None`: none ever arrived.
    pub(crate) pause: Option<Duration>,
    pub(crate) max_gap: Duration,
    /// Offsets consecutive from 0, no duplicate, up to the last acknowledged offset.
    pub(crate) gapless: bool,
    pub(crate) sources: Vec<String>,
    pub(crate) errors: usize,
    pub(crate) last_error: Option<String>,
}

/// The figures of one run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PrimaryKill {
    pub(crate) killed: String,
    pub(crate) write_pause: Duration,
    pub(crate) write_max_gap: Duration,
    pub(crate) readers: Vec<ReaderResult>,
    pub(crate) acked_batches: u64,
    pub(crate) acked_events: u64,
    /// Acknowledged events missing from the final log.
    pub(crate) lost: u64,
    /// Extra copies of any producer event in the final log.
    pub(crate) duplicates: u64,
    /// Producer events in the final log that were never acknowledged (allowed).
    pub(crate) unacked_stored: u64,
    pub(crate) publish_errors: u64,
    pub(crate) last_publish_error: Option<String>,
    pub(crate) rate_before: f64,
}

impl PrimaryKill {
    /// Every acknowledged event stored once, and every reader gapless.
    pub(crate) fn correct(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.readers.iter().all(|r| r.gapless)
    }
}

/// The figures of `obs`, given the payloads of the final log in offset order.
pub(crate) fn analyse(obs: &Observed, final_log: &[Bytes], events_per_batch: usize) -> PrimaryKill {
    let write_pause = obs
        .acks
        .iter()
        .filter(|a| a.started >= obs.killed_at)
        .map(|a| a.acked.duration_since(obs.killed_at))
        .min()
        .unwrap_or(Duration::MAX);
    let write_max_gap = obs
        .acks
        .windows(2)
        .map(|p| p[1].acked.duration_since(p[0].acked))
        .max()
        .unwrap_or(Duration::ZERO);
    let last_acked = obs.acks.iter().map(|a| a.last_offset).max();

    let readers = obs
        .readers
        .iter()
        .map(|r| {
            let pause = r
                .deliveries
                .iter()
                .find(|d| d.0 > obs.killed_at && d.3 > obs.killed_ns)
                .map(|d| d.0.duration_since(obs.killed_at));
            let moved = r
                .moved
                .iter()
                .find(|m| m.0 > obs.killed_at)
                .map(|m| m.0.duration_since(obs.killed_at));
            let told_lost = r
                .lost
                .iter()
                .find(|t| **t > obs.killed_at)
                .map(|t| t.duration_since(obs.killed_at));
            let max_gap = r
                .deliveries
                .windows(2)
                .map(|p| p[1].0.duration_since(p[0].0))
                .max()
                .unwrap_or(Duration::ZERO);
            let consecutive = r.deliveries.windows(2).all(|p| p[1].1 == p[0].2 + 1);
            let gapless = r.inner_breaks == 0
                && consecutive
                && r.deliveries.first().is_some_and(|d| d.1 == 0)
                && r.deliveries.last().map(|d| d.2) >= last_acked;
            ReaderResult {
                name: r.name.clone(),
                moved,
                told_lost,
                pause,
                max_gap,
                gapless,
                sources: r.sources.clone(),
                errors: r.errors.len(),
                last_error: r.errors.last().cloned(),
            }
        })
        .collect();

    let mut stored: HashMap<(u64, u32), u64> = HashMap::new();
    for p in final_log {
        if let Some(id) = event_id(p) {
            *stored.entry(id).or_default() += 1;
        }
    }
    let duplicates = stored.values().map(|c| c - 1).sum();
    let mut lost = 0;
    let mut acked_ids = std::collections::HashSet::new();
    for a in &obs.acks {
        for i in 0..events_per_batch as u32 {
            acked_ids.insert((a.batch, i));
            if !stored.contains_key(&(a.batch, i)) {
                lost += 1;
            }
        }
    }
    let unacked_stored = stored.keys().filter(|k| !acked_ids.contains(k)).count() as u64;
    PrimaryKill {
        killed: obs.killed.clone(),
        write_pause,
        write_max_gap,
        readers,
        acked_batches: obs.acks.len() as u64,
        acked_events: obs.acks.len() as u64 * events_per_batch as u64,
        lost,
        duplicates,
        unacked_stored,
        publish_errors: obs.publish_errors,
        last_publish_error: obs.last_publish_error.clone(),
        rate_before: obs.rate_before,
    }
}

/// Puts `result` into `record`: the metrics, `params`, and notes naming the setup, the killed
/// server, who served each reader and any failed check.
pub(crate) fn fill(
    record: &mut crate::report::Record,
    result: &PrimaryKill,
    fault: Fault,
    describe: &str,
    params: &serde_json::Value,
) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let m = &mut record.metrics;
    m.insert("write_pause_ms".into(), ms(result.write_pause));
    m.insert("write_max_gap_ms".into(), ms(result.write_max_gap));
    for r in &result.readers {
        // The first reader is the one compared across systems.
        let prefix = if r.name == result.readers[0].name {
            "read".to_owned()
        } else {
            format!("{}_read", r.name)
        };
        if let Some(p) = r.moved {
            m.insert(format!("{prefix}_moved_ms"), ms(p));
        }
        if let Some(p) = r.told_lost {
            m.insert(format!("{prefix}_lost_ms"), ms(p));
        }
        if let Some(p) = r.pause {
            m.insert(format!("{prefix}_pause_ms"), ms(p));
        }
        m.insert(format!("{prefix}_max_gap_ms"), ms(r.max_gap));
    }
    m.insert(
        "readers_gapless".into(),
        if result.readers.iter().all(|r| r.gapless) {
            1.0
        } else {
            0.0
        },
    );
    m.insert("lost".into(), result.lost as f64);
    m.insert("duplicates".into(), result.duplicates as f64);
    m.insert("unacked_stored".into(), result.unacked_stored as f64);
    m.insert("acked_events".into(), result.acked_events as f64);
    m.insert("publish_errors".into(), result.publish_errors as f64);
    m.insert("batches_per_s".into(), result.rate_before);
    record.params = params.clone();
    record.notes.push(describe.to_owned());
    record.notes.push(format!(
        "{} {}",
        match fault {
            Fault::Kill => "killed",
            Fault::Stop => "stopped",
        },
        result.killed
    ));
    for r in &result.readers {
        let mut note = format!(
            "reader {}: served by {}",
            r.name,
            if r.sources.is_empty() {
                "(not said)".to_owned()
            } else {
                r.sources.join(" → ")
            }
        );
        if r.moved.is_none() {
            note.push_str("; not moved (not interrupted, or the client does not say)");
        }
        if r.pause.is_none() {
            note.push_str("; NO event committed after the kill arrived");
        }
        if r.errors > 0 {
            note.push_str(&format!(
                "; {} error(s), last: {}",
                r.errors,
                r.last_error.as_deref().unwrap_or("")
            ));
        }
        record.notes.push(note);
    }
    if let Some(e) = &result.last_publish_error {
        record.notes.push(format!("last publish error: {e}"));
    }
    if !result.correct() {
        record.notes.push(format!(
            "CHECK FAILED: {} acknowledged event(s) lost, {} duplicate(s), readers gapless: {:?}",
            result.lost,
            result.duplicates,
            result
                .readers
                .iter()
                .map(|r| (&r.name, r.gapless))
                .collect::<Vec<_>>()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_identity_round_trips() {
        let p = payload(123, 4, 100);
        assert_eq!(p.len(), 100);
        assert_eq!(event_id(&p), Some((123, 4)));
        assert_eq!(event_id(b"first"), None);
        assert_eq!(event_id(&payload(1, 0, 0)), Some((1, 0)));
    }

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    /// Kill at 1000 ms (wall clock 1_000 s); acks every 100 ms until 900, then from 3000.
    fn observed() -> Observed {
        let base = Instant::now();
        let killed_ns = 1_000_000_000_000i128;
        let mut acks = Vec::new();
        for (b, ms) in [(1, 800), (2, 900), (3, 3000), (4, 3100)] {
            acks.push(AckRecord {
                batch: b,
                // Batch 3 was in flight at the kill and retried from 1500.
                started: at(base, if b == 3 { 1500 } else { ms - 1 }),
                acked: at(base, ms),
                last_offset: b * 2 - 1,
            });
        }
        let ns = |ms: i128| killed_ns + (ms - 1000) * 1_000_000;
        let reader = ReaderLog {
            name: "r".into(),
            deliveries: vec![
                (at(base, 801), 0, 1, ns(800)),
                (at(base, 901), 2, 3, ns(900)),
                // Sent by the old leader just before it died: not a resumption.
                (at(base, 1001), 4, 4, ns(999)),
                (at(base, 3002), 5, 7, ns(3000)),
            ],
            // Told at 1005, reading from a replica at 1050 (before any new event).
            lost: vec![at(base, 1005)],
            moved: vec![(at(base, 1050), "n2".into())],
            ..ReaderLog::default()
        };
        Observed {
            killed: "n1".into(),
            killed_at: at(base, 1000),
            killed_ns,
            acks,
            publish_errors: 7,
            last_publish_error: None,
            readers: vec![reader],
            rate_before: 10.0,
        }
    }

    #[test]
    fn pauses_count_from_the_kill_to_new_data() {
        let obs = observed();
        let log: Vec<Bytes> = (1..=4)
            .flat_map(|b| (0..2).map(move |i| payload(b, i, 30)))
            .collect();
        let r = analyse(&obs, &log, 2);
        assert_eq!(r.write_pause, Duration::from_millis(2000));
        assert_eq!(r.write_max_gap, Duration::from_millis(2100));
        assert_eq!(r.readers[0].pause, Some(Duration::from_millis(2002)));
        assert_eq!(r.readers[0].told_lost, Some(Duration::from_millis(5)));
        assert_eq!(r.readers[0].moved, Some(Duration::from_millis(50)));
        assert_eq!(r.readers[0].max_gap, Duration::from_millis(2001));
        assert!(r.readers[0].gapless);
        assert_eq!((r.lost, r.duplicates, r.unacked_stored), (0, 0, 0));
        assert_eq!(r.acked_events, 8);
        assert!(r.correct());
    }

    #[test]
    fn losses_duplicates_and_gaps_are_found() {
        let mut obs = observed();
        obs.readers[0].deliveries.remove(1);
        let mut log: Vec<Bytes> = vec![Bytes::from_static(b"first")];
        log.extend([payload(1, 0, 30), payload(1, 1, 30), payload(1, 1, 30)]);
        log.extend([payload(3, 0, 30), payload(3, 1, 30), payload(9, 0, 30)]);
        log.extend([payload(4, 0, 30), payload(4, 1, 30)]);
        let r = analyse(&obs, &log, 2);
        assert_eq!(r.lost, 2, "batch 2 is missing");
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.unacked_stored, 1);
        assert!(!r.readers[0].gapless);
        assert!(!r.correct());
    }
}
