//! The measurements, written once for every system: each system only provides a [`Publish`]
//! (hand over a batch, get a future for its acknowledgement) and a [`Subscribe`] (the next
//! batch of payloads, in order), so all systems run the very same driver code.
//!
//! - [`publish_window`]: at most `window` unacknowledged events; whenever slots are free they
//!   are filled with one batch of up to `batch` events (the system's own way of batching:
//!   one request, one pipeline, or that many async publishes).
//!   [`RoundRobin`] spreads those batches over many publishers (one per data ID), so the
//!   same driver writes 1 or 10,000 streams.
//! - [`replay`]: read `n` events from a subscriber.
//! - [`end_to_end`]: a pacer thread publishes one event per tick at a fixed rate (sleeping
//!   with 1 µs timer slack, never skipping a tick: a late tick is sent at once and counted);
//!   every payload carries its tick number and send time, so every subscriber (one or many
//!   followers of the stream, each read by a task of its own) measures delivery latency and
//!   the acknowledgement measures publish latency. Samples of the warm-up ticks are dropped.
//! - [`on_one_worker`]: the runtime, with one worker thread, that the scenarios' e2e phases
//!   connect their clients and measure on.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use color_eyre::eyre::{Result, WrapErr, bail, eyre};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::stats::{Percentiles, Samples};

/// A batch's acknowledgement: resolves once the system acknowledged every event of it.
pub(crate) type Ack = BoxFuture<'static, Result<()>>;

/// Publishing into one stream of a system.
pub(crate) trait Publish: Send {
    /// Hands `events` to the system (they are on their way when this resolves) and returns
    /// the future of their acknowledgement.
    fn submit(&mut self, events: Vec<Bytes>) -> BoxFuture<'_, Result<Ack>>;
}

/// Reading one stream of a system, in order.
pub(crate) trait Subscribe: Send {
    /// The next events' payloads (never empty), or `None` at the end of a non-following read.
    fn next_batch(&mut self) -> BoxFuture<'_, Result<Option<Vec<Bytes>>>>;
}

/// Where a subscriber starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Position {
    /// At the n-th event of the stream (0-based).
    Offset(u64),
    /// Only events published after the subscription is in place.
    New,
}

/// Polls `fut` once now, so that whatever it sends is handed over before the caller goes
/// on (the order of batches on the wire is the order of submits); the rest of it is
/// returned as an [`Ack`].
pub(crate) async fn start_now(fut: impl Future<Output = Result<()>> + Send + 'static) -> Ack {
    // Unconstrained: tokio's cooperative budget must not turn the first poll into a
    // `Pending` that sends nothing — a later submit could then overtake this one.
    let mut fut: Ack = Box::pin(tokio::task::unconstrained(fut));
    let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(result) => Box::pin(std::future::ready(result)),
        Poll::Pending => fut,
    }
}

/// Publishers taking turns: each submit goes to the next one, so consecutive batches land
/// on different streams (data IDs) and every stream gets its share.
pub(crate) struct RoundRobin {
    publishers: Vec<Box<dyn Publish>>,
    next: usize,
}

impl RoundRobin {
    /// Takes turns over `publishers` (at least one).
    pub(crate) fn new(publishers: Vec<Box<dyn Publish>>) -> Result<RoundRobin> {
        if publishers.is_empty() {
            bail!("round robin over no publisher");
        }
        Ok(RoundRobin {
            publishers,
            next: 0,
        })
    }
}

impl Publish for RoundRobin {
    fn submit(&mut self, events: Vec<Bytes>) -> BoxFuture<'_, Result<Ack>> {
        let i = self.next;
        self.next = (i + 1) % self.publishers.len();
        self.publishers[i].submit(events)
    }
}

/// What a publish phase did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Published {
    /// Events acknowledged.
    pub(crate) events: u64,
    /// From the first submit to the last acknowledgement.
    pub(crate) elapsed: Duration,
    /// Stopped at the time cap before `n` events.
    pub(crate) capped: bool,
}

/// Payloads of one size that nothing can compress: distinct pseudo-random bytes, taken in
/// turn, enough of them that no compressor's 64 KiB window sees one twice (for payloads of
/// 64 bytes or more; smaller ones repeat every 2,048 events).
///
/// Why: a system that compresses (ours: fjall's journal and deeper tables) would write
/// almost nothing for a payload of one repeated byte, or for one payload repeated through
/// a batch, while the peers store every byte. Application payloads are mostly serialized,
/// compressed or encrypted data, so every system is given bytes that do not compress.
pub(crate) struct Payloads {
    pool: Vec<Bytes>,
}

impl Payloads {
    /// Room the pool covers at least, twice a compressor's usual window.
    const SPAN: usize = 128 << 10;

    pub(crate) fn new(size: usize) -> Payloads {
        let count = Self::SPAN.div_ceil(size.max(1)).clamp(2, 2048);
        // Seeded, so that every run and every system gets the same bytes.
        let mut rng = StdRng::seed_from_u64(size as u64);
        let pool = (0..count)
            .map(|_| {
                let mut b = vec![0u8; size];
                rng.fill_bytes(&mut b);
                Bytes::from(b)
            })
            .collect();
        Payloads { pool }
    }

    /// The payloads of `k` events, the `first`th of the run onward.
    pub(crate) fn batch(&self, first: u64, k: usize) -> Vec<Bytes> {
        let len = self.pool.len() as u64;
        (0..k as u64)
            .map(|i| self.pool[((first + i) % len) as usize].clone())
            .collect()
    }
}

/// Publishes `n` events of `payloads` with at most `window` unacknowledged events, in
/// batches of at most `batch`, stopping early (and saying so) after `max_time`.
pub(crate) async fn publish_window(
    publisher: &mut dyn Publish,
    n: u64,
    window: usize,
    batch: usize,
    payloads: &Payloads,
    max_time: Duration,
) -> Result<Published> {
    let mut acks = FuturesUnordered::new();
    let (mut in_flight, mut sent, mut acked) = (0usize, 0u64, 0u64);
    let start = Instant::now();
    let mut capped = false;
    while sent < n {
        if start.elapsed() >= max_time {
            capped = true;
            break;
        }
        // Collect what is already acknowledged without waiting.
        while let Some(Some((k, result))) = acks.next().now_or_never() {
            result?;
            in_flight -= k;
            acked += k as u64;
        }
        if in_flight >= window {
            if let Some((k, result)) = acks.next().await {
                let result: Result<()> = result;
                result?;
                in_flight -= k;
                acked += k as u64;
            }
            continue;
        }
        let k = (window - in_flight).min(batch).min((n - sent) as usize);
        let ack = publisher.submit(payloads.batch(sent, k)).await?;
        acks.push(ack.map(move |r| (k, r)));
        in_flight += k;
        sent += k as u64;
    }
    while let Some((k, result)) = acks.next().await {
        result?;
        acked += k as u64;
    }
    Ok(Published {
        events: acked,
        elapsed: start.elapsed(),
        capped,
    })
}

/// What a replay did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Replayed {
    pub(crate) events: u64,
    pub(crate) bytes: u64,
    pub(crate) elapsed: Duration,
}

/// Reads `n` events from `subscriber` (which must start at the first of them).
pub(crate) async fn replay(subscriber: &mut dyn Subscribe, n: u64) -> Result<Replayed> {
    let start = Instant::now();
    let (mut events, mut bytes) = (0u64, 0u64);
    while events < n {
        match subscriber.next_batch().await? {
            Some(batch) => {
                events += batch.len() as u64;
                bytes += batch.iter().map(|b| b.len() as u64).sum::<u64>();
            }
            None => bail!("the replay ended after {events} of {n} events"),
        }
    }
    Ok(Replayed {
        events,
        bytes,
        elapsed: start.elapsed(),
    })
}

/// How an end-to-end run is shaped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct E2eShape {
    pub(crate) rate: u64,
    pub(crate) duration: Duration,
    pub(crate) warmup: Duration,
    pub(crate) payload: usize,
}

/// What an end-to-end run measured (samples after the warm-up only).
#[derive(Debug, Clone)]
pub(crate) struct E2e {
    pub(crate) delivery: Option<Percentiles>,
    pub(crate) ack: Option<Percentiles>,
    /// Ticks sent more than one period after their scheduled time.
    pub(crate) late_ticks: u64,
    /// Ticks never delivered within the grace period after the last tick, summed over the
    /// followers.
    pub(crate) lost: u64,
    /// Deliveries whose tick was not the one after the previous delivery's (of the same
    /// follower), summed over the followers.
    pub(crate) out_of_order: u64,
    pub(crate) ticks: u64,
    pub(crate) errors: u64,
}

/// Marks the events published only to learn that the subscription is live.
const PRIME: u64 = u64::MAX;

fn e2e_payload(tick: u64, sent_ns: u64, len: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(len);
    b.put_u64_le(tick);
    b.put_u64_le(sent_ns);
    b.resize(len.max(16), b'x');
    b.freeze()
}

fn decode(payload: &[u8]) -> Option<(u64, u64)> {
    let tick = u64::from_le_bytes(payload.get(0..8)?.try_into().ok()?);
    let sent = u64::from_le_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((tick, sent))
}

/// Appends `(send time, latency)` pairs (ns since `base`) to `path` as Unix µs and µs.
fn dump_deliveries(path: &std::ffi::OsStr, base_unix_us: u64, samples: &[(u64, u64)]) {
    use std::io::Write;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path);
    let Ok(file) = file else {
        eprintln!(
            "warning: cannot open {} for the delivery dump",
            path.to_string_lossy()
        );
        return;
    };
    let mut out = std::io::BufWriter::new(file);
    let _ = writeln!(out, "# run");
    for (sent, latency) in samples {
        let _ = writeln!(out, "{} {}", base_unix_us + sent / 1000, latency / 1000);
    }
}

/// What one follower's reader task saw: delivery latencies, events received, deliveries
/// out of order, and (with a dump asked for) each delivery's `(send time, latency)`.
type Followed = (Samples, u64, u64, Vec<(u64, u64)>);

/// Reads `subscriber` until `ticks` events arrived or `stop` fires: delivery latencies of the
/// ticks from `warm_ticks` on, events received, deliveries out of order. Bumps `primed` the
/// first time it sees a prime event.
fn follow(
    mut subscriber: Box<dyn Subscribe>,
    base: Instant,
    ticks: u64,
    warm_ticks: u64,
    primed: Arc<tokio::sync::watch::Sender<usize>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    dump: bool,
) -> tokio::task::JoinHandle<Result<Followed>> {
    tokio::spawn(async move {
        let mut delivery = Samples::with_capacity(ticks.saturating_sub(warm_ticks) as usize);
        let mut received = 0u64;
        let mut next_expected = 0u64;
        let mut out_of_order = 0u64;
        let mut dumped: Vec<(u64, u64)> = Vec::new();
        let mut seen_prime = false;
        while received < ticks {
            let batch = tokio::select! {
                b = subscriber.next_batch() => b,
                _ = stop.changed() => break,
            };
            let Some(batch) = batch? else { break };
            let now = base.elapsed().as_nanos() as u64;
            for payload in batch {
                let Some((tick, sent)) = decode(&payload) else {
                    continue;
                };
                if tick == PRIME {
                    if !seen_prime {
                        seen_prime = true;
                        primed.send_modify(|n| *n += 1);
                    }
                    continue;
                }
                // Counted, not fatal: a client library that hands concurrent sends to its
                // connection task out of order reorders them before the server sees them.
                if tick != next_expected {
                    out_of_order += 1;
                }
                next_expected = tick + 1;
                received += 1;
                if tick >= warm_ticks {
                    delivery.push(now.saturating_sub(sent));
                    if dump {
                        dumped.push((sent, now.saturating_sub(sent)));
                    }
                }
            }
        }
        Ok((delivery, received, out_of_order, dumped))
    })
}

/// Runs `scenario` (connecting its clients and measuring) on a runtime of its own with one
/// worker thread, and returns its result.
///
/// Why: the bench shares the machine's cores with the servers it measures. On the bench's
/// main runtime (a worker per core), each delivery hopped between the bench's two workers:
/// over 8 s of an e2e phase on 2 cores, 84k wake-ups from one bench worker to the other
/// (~1 per event each way), all competing with the server for a core. With one worker, a
/// client's connection task and its reader share a thread. Every system's clients run this
/// way, so the comparison stays like for like (see BENCHMARKS.md, "Issue 13, eighth
/// round").
pub(crate) async fn on_one_worker<T: Send>(
    scenario: impl Future<Output = Result<T>> + Send,
) -> Result<T> {
    tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name("e2e-runtime".into())
                .spawn_scoped(scope, || {
                    let runtime = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(1)
                        .thread_name("e2e-worker")
                        .enable_all()
                        .build()
                        .wrap_err("cannot start the end-to-end runtime")?;
                    runtime.block_on(scenario)
                })
                .wrap_err("cannot start the end-to-end runtime's thread")?;
            thread
                .join()
                .map_err(|_| eyre!("the end-to-end runtime's thread panicked"))?
        })
    })
}

/// Runs the fixed-rate end-to-end measurement with one publisher and any number of
/// followers (`subscribers`, at least one), whose delivery latencies are pooled. Each
/// subscriber must read from `Position::New` (or any position before the first tick); the
/// stream is primed until every subscriber has seen a prime event.
pub(crate) async fn end_to_end(
    mut publisher: Box<dyn Publish>,
    subscribers: Vec<Box<dyn Subscribe>>,
    shape: E2eShape,
) -> Result<E2e> {
    let followers = subscribers.len();
    if followers == 0 {
        bail!("an end-to-end run needs at least one subscriber");
    }
    let base = Instant::now();
    // With EC_BENCH_E2E_DUMP=FILE every delivery is appended to FILE as `send time (Unix
    // µs) latency (µs)`, so a tail can be lined up with the servers' logs.
    let base_unix_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let dump_path = std::env::var_os("EC_BENCH_E2E_DUMP");
    let ticks = (shape.rate as f64 * shape.duration.as_secs_f64()).round() as u64;
    let warm_ticks = (shape.rate as f64 * shape.warmup.as_secs_f64()).round() as u64;
    let period_ns = 1_000_000_000 / shape.rate;
    let period = Duration::from_nanos(period_ns);

    let (primed_tx, mut primed_rx) = tokio::sync::watch::channel(0usize);
    let primed_tx = Arc::new(primed_tx);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut readers: Vec<_> = subscribers
        .into_iter()
        .map(|sub| {
            follow(
                sub,
                base,
                ticks,
                warm_ticks,
                primed_tx.clone(),
                stop_rx.clone(),
                dump_path.is_some(),
            )
        })
        .collect();

    // Prime until every subscriber saw one: only then is each surely subscribed.
    let prime_deadline = Instant::now() + Duration::from_secs(20 + followers as u64 / 20);
    loop {
        let ack = publisher
            .submit(vec![e2e_payload(PRIME, 0, shape.payload)])
            .await?;
        tokio::time::timeout(Duration::from_secs(10), ack)
            .await
            .map_err(|_| eyre!("a priming publish was not acknowledged within 10 s"))?
            .wrap_err("a priming publish failed")?;
        let seen = tokio::time::timeout(
            Duration::from_millis(200),
            primed_rx.wait_for(|n| *n >= followers),
        );
        if matches!(seen.await, Ok(Ok(_))) {
            break;
        }
        // A reader that already ended (its subscription refused, say) will never prime.
        if let Some(i) = readers.iter().position(|r| r.is_finished()) {
            let ended = readers
                .swap_remove(i)
                .await
                .wrap_err("a reader task failed")?;
            ended.wrap_err("a subscriber failed before the run")?;
            bail!("a subscriber ended before it saw a priming event");
        }
        if Instant::now() >= prime_deadline {
            bail!(
                "only {} of {followers} subscribers saw a priming event within {:?}",
                *primed_rx.borrow(),
                prime_deadline.duration_since(base)
            );
        }
    }

    let handle = tokio::runtime::Handle::current();
    let acks = Arc::new(Mutex::new(Samples::with_capacity(ticks as usize)));
    let errors = Arc::new(Mutex::new((0u64, None::<String>)));
    let pacer = {
        let (acks, errors) = (acks.clone(), errors.clone());
        std::thread::Builder::new()
            .name("e2e-pacer".into())
            .spawn(move || -> Result<(u64, Box<dyn Publish>)> {
                // Sleep precisely: the default 50 µs timer slack is half a tick at 10k/s.
                let _ = nix::sys::prctl::set_timerslack(1);
                let start = Instant::now();
                let mut late = 0u64;
                for tick in 0..ticks {
                    let due = start + Duration::from_nanos(period_ns.saturating_mul(tick));
                    let now = Instant::now();
                    if now < due {
                        std::thread::sleep(due - now);
                    }
                    let sent_at = Instant::now();
                    if sent_at.duration_since(due) > period {
                        late += 1;
                    }
                    let sent_ns = sent_at.duration_since(base).as_nanos() as u64;
                    let payload = e2e_payload(tick, sent_ns, shape.payload);
                    let ack = handle.block_on(publisher.submit(vec![payload]))?;
                    let (acks, errors) = (acks.clone(), errors.clone());
                    handle.spawn(async move {
                        match ack.await {
                            Ok(()) if tick >= warm_ticks => {
                                let ns = sent_at.elapsed().as_nanos() as u64;
                                lock(&acks).push(ns);
                            }
                            Ok(()) => {}
                            Err(e) => {
                                let mut errors = lock(&errors);
                                errors.0 += 1;
                                errors.1.get_or_insert_with(|| format!("{e:#}"));
                            }
                        }
                    });
                }
                // Handed back: dropping it now would close the connection under the last acks.
                Ok((late, publisher))
            })
            .wrap_err("cannot start the pacer thread")?
    };
    let (late_ticks, _publisher) = tokio::task::spawn_blocking(move || pacer.join())
        .await
        .wrap_err("the pacer thread was lost")?
        .map_err(|_| eyre!("the pacer thread panicked"))??;

    // Grace period for the last deliveries, then the stragglers are stopped.
    let grace = tokio::time::sleep(Duration::from_secs(5));
    tokio::pin!(grace);
    let mut all = futures_util::future::join_all(readers);
    let outcomes = tokio::select! {
        r = &mut all => r,
        () = &mut grace => {
            let _ = stop_tx.send(true);
            all.await
        }
    };
    let mut delivery = Samples::default();
    let (mut received, mut out_of_order) = (0u64, 0u64);
    for outcome in outcomes {
        let (d, r, o, dumped) = outcome.wrap_err("a reader task failed")??;
        delivery.extend(d);
        received += r;
        out_of_order += o;
        if let Some(path) = &dump_path {
            dump_deliveries(path, base_unix_us, &dumped);
        }
    }
    // Acks of the last ticks may still be in flight; give them the same grace.
    let ack_deadline = Instant::now() + Duration::from_secs(5);
    while lock(&acks).len() + (lock(&errors).0 as usize) < (ticks - warm_ticks) as usize
        && Instant::now() < ack_deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ack = std::mem::take(&mut *lock(&acks)).percentiles();
    let (error_count, first_error) = lock(&errors).clone();
    if let Some(e) = first_error {
        eprintln!("warning: {error_count} end-to-end publishes failed; first: {e}");
    }
    Ok(E2e {
        delivery: delivery.percentiles(),
        ack,
        late_ticks,
        lost: (ticks * followers as u64).saturating_sub(received),
        out_of_order,
        ticks,
        errors: error_count,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A system that acknowledges at once and delivers through a channel.
    struct Loop {
        tx: tokio::sync::mpsc::UnboundedSender<Vec<Bytes>>,
    }
    struct LoopSub {
        rx: tokio::sync::mpsc::UnboundedReceiver<Vec<Bytes>>,
    }
    impl Publish for Loop {
        fn submit(&mut self, events: Vec<Bytes>) -> BoxFuture<'_, Result<Ack>> {
            let sent = self.tx.send(events).map_err(|_| eyre!("closed"));
            Box::pin(async move {
                sent?;
                Ok(Box::pin(async { Ok(()) }) as Ack)
            })
        }
    }
    impl Subscribe for LoopSub {
        fn next_batch(&mut self) -> BoxFuture<'_, Result<Option<Vec<Bytes>>>> {
            Box::pin(async move { Ok(self.rx.recv().await) })
        }
    }

    #[test]
    fn payloads_have_their_size_and_do_not_repeat_within_a_compressors_window() {
        for size in [64, 100, 1024, 65_536, 1 << 20] {
            let payloads = Payloads::new(size);
            // Events for 256 KiB of payload (at least two).
            let span = (2 * Payloads::SPAN / size).max(2);
            let batch = payloads.batch(0, span);
            assert!(batch.iter().all(|b| b.len() == size), "size {size}");
            // No 8-byte window of the bytes of the first 128 KiB of events repeats: a
            // compressor finds nothing to refer back to.
            let run: Vec<u8> = batch
                .iter()
                .flat_map(|b| b.iter().copied())
                .take(Payloads::SPAN)
                .collect();
            let mut seen = std::collections::HashSet::new();
            let repeats = run.windows(8).filter(|w| !seen.insert(*w)).count();
            assert_eq!(repeats, 0, "size {size}: {repeats} repeated 8-byte runs");
        }
        // The same run of payloads every time, so that runs compare.
        assert_eq!(
            Payloads::new(100).batch(5, 3),
            Payloads::new(100).batch(5, 3)
        );
    }

    #[tokio::test]
    async fn window_publishes_everything_and_replay_counts_it() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut p = Loop { tx };
        let payloads = Payloads::new(100);
        let done = publish_window(&mut p, 1000, 256, 64, &payloads, Duration::from_secs(30))
            .await
            .expect("publish");
        assert_eq!(done.events, 1000);
        assert!(!done.capped);
        let mut s = LoopSub { rx };
        let r = replay(&mut s, 1000).await.expect("replay");
        assert_eq!((r.events, r.bytes), (1000, 100_000));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn end_to_end_counts_every_tick() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let shape = E2eShape {
            rate: 2000,
            duration: Duration::from_millis(500),
            warmup: Duration::from_millis(100),
            payload: 100,
        };
        let e = end_to_end(Box::new(Loop { tx }), vec![Box::new(LoopSub { rx })], shape)
            .await
            .expect("e2e");
        assert_eq!(e.ticks, 1000);
        assert_eq!(e.lost, 0);
        assert_eq!(e.delivery.expect("samples").count, 800);
        assert_eq!(e.ack.expect("acks").count, 800);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_one_worker_measures_on_a_runtime_of_one_worker() {
        let shape = E2eShape {
            rate: 2000,
            duration: Duration::from_millis(200),
            warmup: Duration::from_millis(0),
            payload: 100,
        };
        // Borrowed from the caller, as the suite's server is.
        let label = String::from("borrowed");
        let (workers, e) = on_one_worker(async {
            let here = tokio::runtime::Handle::current();
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let e =
                end_to_end(Box::new(Loop { tx }), vec![Box::new(LoopSub { rx })], shape).await?;
            assert_eq!(label, "borrowed");
            Ok((here.metrics().num_workers(), e))
        })
        .await
        .expect("e2e on one worker");
        // The caller's runtime has two workers: this is another one.
        assert_eq!(workers, 1);
        assert_eq!((e.ticks, e.lost), (400, 0));

        let failed: Result<()> = on_one_worker(async { bail!("no server") }).await;
        let error = failed.expect_err("the scenario's error comes back");
        assert!(format!("{error:#}").contains("no server"), "{error:#}");
    }

    /// Hands every batch to each of several subscribers.
    struct Fanout {
        txs: Vec<tokio::sync::mpsc::UnboundedSender<Vec<Bytes>>>,
    }
    impl Publish for Fanout {
        fn submit(&mut self, events: Vec<Bytes>) -> BoxFuture<'_, Result<Ack>> {
            let sent = self
                .txs
                .iter()
                .try_for_each(|tx| tx.send(events.clone()).map_err(|_| eyre!("closed")));
            Box::pin(async move {
                sent?;
                Ok(Box::pin(async { Ok(()) }) as Ack)
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn end_to_end_pools_every_follower() {
        let (mut txs, mut subs) = (Vec::new(), Vec::<Box<dyn Subscribe>>::new());
        for _ in 0..3 {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            txs.push(tx);
            subs.push(Box::new(LoopSub { rx }));
        }
        let shape = E2eShape {
            rate: 1000,
            duration: Duration::from_millis(300),
            warmup: Duration::from_millis(100),
            payload: 64,
        };
        let e = end_to_end(Box::new(Fanout { txs }), subs, shape)
            .await
            .expect("e2e");
        assert_eq!(e.ticks, 300);
        assert_eq!((e.lost, e.out_of_order), (0, 0));
        assert_eq!(e.delivery.expect("samples").count, 3 * 200);
    }

    #[tokio::test]
    async fn round_robin_spreads_batches_over_the_publishers() {
        let (mut rxs, mut pubs) = (Vec::new(), Vec::<Box<dyn Publish>>::new());
        for _ in 0..3 {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            rxs.push(rx);
            pubs.push(Box::new(Loop { tx }));
        }
        let mut rr = RoundRobin::new(pubs).expect("publishers");
        let payloads = Payloads::new(10);
        let done = publish_window(&mut rr, 70, 100, 10, &payloads, Duration::from_secs(30))
            .await
            .expect("publish");
        assert_eq!(done.events, 70);
        let counts: Vec<usize> = rxs
            .iter_mut()
            .map(|rx| {
                let mut n = 0;
                while let Ok(batch) = rx.try_recv() {
                    n += batch.len();
                }
                n
            })
            .collect();
        // Seven batches of ten, taking turns: 3 + 2 + 2 batches.
        assert_eq!(counts, vec![30, 20, 20]);
        assert!(RoundRobin::new(Vec::new()).is_err());
    }

    #[test]
    fn payload_round_trip() {
        let p = e2e_payload(42, 4242, 100);
        assert_eq!(p.len(), 100);
        assert_eq!(decode(&p), Some((42, 4242)));
    }
}
