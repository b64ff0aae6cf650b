//! `ec-client publish`: publish standard input (one event per line) or synthetic events.
//!
//! Events are batched and pipelined over one publish stream: lines that are already waiting
//! on standard input go out together (up to `--batch`), so a pasted file is fast and a typed
//! line is sent at once. Acknowledgements are printed in the order batches were sent, one line
//! per batch (`offsets FIRST-LAST`), only once the primary made them durable. Progress (every
//! second, for `--count` runs longer than that) and the final summary go to standard error.
//!
//! The SDK's publisher retries through a lost primary, a failover and "not the primary" until
//! `--delivery-timeout`, resending unacknowledged batches under the same producer identity so
//! nothing is stored twice; synthetic payload numbers therefore stay continuous. One line
//! says when an outage starts and one when publishing resumed, not one per attempt.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use color_eyre::eyre::{Result, WrapErr, eyre};
use ec_client::{Acks, Client, Mode, PendingPublish, Published, PublisherEvent};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Flags of `ec-client publish`.
#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// Data ID to write to: 1-128 characters of [A-Za-z0-9._-].
    #[arg(long, value_name = "ID")]
    data_id: String,
    /// Publish this many synthetic events instead of reading standard input.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Size in bytes of each synthetic event (its sequence number padded with 'x').
    #[arg(long, value_name = "BYTES", requires = "count", default_value_t = 100)]
    size: usize,
    /// Synthetic events per second [default: as fast as they are acknowledged].
    #[arg(long, value_name = "R", requires = "count")]
    rate: Option<f64>,
    /// Most events in one publish request.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// Most batches sent but not yet acknowledged.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    in_flight: u64,
    /// Publish through the gateway, which forwards to the primary, instead of to the primary
    /// directly.
    #[arg(long)]
    pub(crate) proxy: bool,
    /// What an acknowledgement waits for: `leader` (durable on the primary) or `all` (also on
    /// every in-sync replica) [default: the primary's node.replication.acks].
    #[arg(long, value_name = "LEVEL", value_parser = parse_acks)]
    acks: Option<Acks>,
    /// How long a batch may wait for its acknowledgement while the publisher retries (the
    /// primary lost, a failover in progress, the gateway away) before giving up, e.g. 30s,
    /// 2m, 1h. Refusals no retry can fix (bad input, no permission) fail at once.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    delivery_timeout: Duration,
    /// Print only the final summary (on standard error): no line per acknowledged batch, no
    /// progress, no retry lines.
    #[arg(long)]
    quiet: bool,
}

/// `--delivery-timeout`: a number with a unit (ms, s, m, h).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; write e.g. 30s, 2m or 1h"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{s:?}: the unit must be ms, s, m or h, e.g. 2m")),
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("{s:?}: the delivery timeout must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `--acks`: `leader` or `all`.
fn parse_acks(s: &str) -> Result<Acks, String> {
    match s {
        "leader" => Ok(Acks::Leader),
        "all" => Ok(Acks::All),
        other => Err(format!(
            "{other:?} is not an acks level; use leader (durable on the primary) or all (also on every in-sync replica)"
        )),
    }
}

/// What was acknowledged so far.
#[derive(Debug, Default)]
struct Summary {
    events: u64,
    first: Option<u64>,
    last: Option<u64>,
}

impl Summary {
    fn add(&mut self, p: &Published) {
        self.events += p.count();
        self.first = Some(self.first.map_or(p.first.0, |f| f.min(p.first.0)));
        self.last = Some(self.last.map_or(p.last.0, |l| l.max(p.last.0)));
    }
}

pub(crate) async fn run(client: &Client, args: PublishArgs) -> Result<()> {
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err(eyre!(
            "--rate must be a positive number of events per second, got {rate}"
        ));
    }
    let mode = if args.proxy {
        Mode::Proxy
    } else {
        Mode::Redirect
    };
    let in_flight = usize::try_from(args.in_flight).unwrap_or(usize::MAX);
    let mut client = client
        .clone()
        .with_mode(mode)
        .with_delivery_timeout(args.delivery_timeout);
    if let Some(acks) = args.acks {
        client = client.with_acks(acks);
    }
    let publisher = client
        .publisher(&args.data_id, in_flight)
        .await
        .wrap_err_with(|| format!("cannot start publishing to data ID {}", args.data_id))?;

    if let Some(events) = publisher.events() {
        tokio::spawn(report_outages(events, args.quiet));
    }
    let (acks_tx, acks_rx) = mpsc::channel::<PendingPublish>(in_flight);
    let started = Instant::now();
    let printer = tokio::spawn(acknowledge(acks_rx, args.quiet, args.count, started));
    let batch = usize::try_from(args.batch).unwrap_or(usize::MAX);
    let produced = match args.count {
        Some(count) => synthetic(&publisher, &acks_tx, count, args.size, args.rate, batch).await,
        None => from_stdin(&publisher, &acks_tx, batch).await,
    };
    drop(acks_tx);
    // An acknowledgement failure stops the printer first; its error is the one to report.
    let summary = printer
        .await
        .wrap_err("the acknowledgement printer failed")??;
    produced?;
    publisher
        .close()
        .await
        .wrap_err_with(|| format!("publishing to data ID {}", args.data_id))?;

    let secs = started.elapsed().as_secs_f64();
    let range = match (summary.first, summary.last) {
        (Some(f), Some(l)) => format!(", offsets {f}-{l}"),
        _ => String::new(),
    };
    eprintln!(
        "published {} events to {} in {secs:.2}s ({:.0} events/s){range}",
        summary.events,
        args.data_id,
        summary.events as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// One line when an outage starts and one when publishing resumed (the SDK reports each
/// outage once, however many attempts it takes).
async fn report_outages(mut events: mpsc::UnboundedReceiver<PublisherEvent>, quiet: bool) {
    while let Some(event) = events.recv().await {
        if quiet {
            continue;
        }
        match event {
            PublisherEvent::Retrying {
                target,
                error,
                unacknowledged,
                delivery_timeout,
            } => {
                let target = if target.is_empty() {
                    String::new()
                } else {
                    format!(" ({target})")
                };
                let waiting = match unacknowledged {
                    0 => String::new(),
                    1 => " (1 batch waits for its acknowledgement)".to_owned(),
                    n => format!(" ({n} batches wait for their acknowledgement)"),
                };
                eprintln!(
                    "publishing interrupted{target}: {error}; retrying{waiting} until the primary is back or another node is promoted (giving up after {})",
                    humantime(delivery_timeout)
                );
            }
            PublisherEvent::Resumed {
                target,
                outage,
                attempts,
                resent,
            } => eprintln!(
                "publishing resumed on {target} after {:.1}s ({attempts} failed attempts, {resent} batches resent; the node recognises those already stored)",
                outage.as_secs_f64()
            ),
        }
    }
}

fn humantime(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs >= 60.0 && secs % 60.0 == 0.0 {
        format!("{}m", secs / 60.0)
    } else {
        format!("{secs}s")
    }
}

/// Sends one batch and queues its acknowledgement; `false` when the printer stopped.
async fn send(
    publisher: &ec_client::Publisher,
    acks: &mpsc::Sender<PendingPublish>,
    events: Vec<Bytes>,
) -> Result<bool> {
    let pending = publisher.send(events).await.wrap_err("publishing failed")?;
    Ok(acks.send(pending).await.is_ok())
}

async fn synthetic(
    publisher: &ec_client::Publisher,
    acks: &mpsc::Sender<PendingPublish>,
    count: u64,
    size: usize,
    rate: Option<f64>,
    batch: usize,
) -> Result<()> {
    // With a rate, send about a hundred requests a second: smooth, without tiny batches.
    let per_batch = match rate {
        Some(r) => ((r / 100.0) as usize).clamp(1, batch),
        None => batch,
    } as u64;
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < count {
        if let Some(rate) = rate {
            tokio::time::sleep_until(started + Duration::from_secs_f64(sent as f64 / rate)).await;
        }
        let n = per_batch.min(count - sent);
        let events = (sent..sent + n).map(|i| synthetic_event(i, size)).collect();
        if !send(publisher, acks, events).await? {
            return Ok(());
        }
        sent += n;
    }
    Ok(())
}

/// Event number `seq`: its zero-padded number, then 'x' up to `size` bytes.
fn synthetic_event(seq: u64, size: usize) -> Bytes {
    let mut data = format!("{seq:012}").into_bytes();
    data.resize(size, b'x');
    Bytes::from(data)
}

async fn from_stdin(
    publisher: &ec_client::Publisher,
    acks: &mpsc::Sender<PendingPublish>,
    batch: usize,
) -> Result<()> {
    let (lines_tx, mut lines) = mpsc::channel::<std::io::Result<Bytes>>(batch.min(65_536));
    tokio::spawn(async move {
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
        loop {
            let mut line = Vec::new();
            let read = match stdin.read_until(b'\n', &mut line).await {
                Ok(0) => return,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                    }
                    Ok(Bytes::from(line))
                }
                Err(e) => Err(e),
            };
            let failed = read.is_err();
            if lines_tx.send(read).await.is_err() || failed {
                return;
            }
        }
    });
    while let Some(first) = lines.recv().await {
        let mut events = vec![first.wrap_err("cannot read standard input")?];
        // Whatever else is already waiting goes in the same request.
        while events.len() < batch {
            match lines.try_recv() {
                Ok(line) => events.push(line.wrap_err("cannot read standard input")?),
                Err(_) => break,
            }
        }
        if !send(publisher, acks, events).await? {
            return Ok(());
        }
    }
    Ok(())
}

/// Awaits acknowledgements in sending order, prints them, reports progress.
async fn acknowledge(
    mut pending: mpsc::Receiver<PendingPublish>,
    quiet: bool,
    total: Option<u64>,
    started: Instant,
) -> Result<Summary> {
    let mut summary = Summary::default();
    let mut last_progress = started;
    let mut stdout_open = !quiet;
    while let Some(ack) = pending.recv().await {
        let published = ack.await.wrap_err("a batch was not acknowledged")?;
        summary.add(&published);
        if stdout_open {
            let line = if published.first == published.last {
                format!("offset {}", published.first)
            } else {
                format!("offsets {}-{}", published.first, published.last)
            };
            let mut out = std::io::stdout().lock();
            match writeln!(out, "{line}").and_then(|()| out.flush()) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => stdout_open = false,
                Err(e) => return Err(e).wrap_err("cannot write to standard output"),
            }
        }
        // Progress only for a known total (--count): with standard input each acknowledgement
        // is already a line on standard output, and a producer's log would fill with it.
        if let Some(total) = total
            && !quiet
            && last_progress.elapsed() >= Duration::from_secs(1)
        {
            last_progress = Instant::now();
            let rate = summary.events as f64 / started.elapsed().as_secs_f64();
            eprintln!(
                "published {}/{total} events ({rate:.0} events/s)",
                summary.events
            );
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_timeouts_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "5", "0s", "abc", "3d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn synthetic_events_have_the_asked_size_and_their_number() {
        assert_eq!(synthetic_event(42, 16), "000000000042xxxx");
        assert_eq!(synthetic_event(42, 4), "0000");
        assert_eq!(synthetic_event(7, 100).len(), 100);
    }
}
