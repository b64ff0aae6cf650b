//! Throughput of the node's event log, without the network: durable appends (fsync before
//! acknowledge) from 1, 8 and 64 concurrent appenders, one event or 16-event batches per
//! append, over 10 streams, and sequential reads by one reader.
//!
//! Each scenario runs in a fresh directory (on the filesystem of `--dir`, default the system
//! temp dir — make sure it is not a tmpfs, or fsync costs nothing) `--runs` times; the median
//! is printed. Run in release:
//!
//! ```text
//! cargo run --release -p ec-node --example log_bench -- [--runs 3] [--secs 3] [--size 200]
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ec_core::{DataId, Offset};
use ec_node::log::{EventLog, FsyncPolicy, LogOptions};

/// Streams the appenders spread over.
const STREAMS: usize = 10;

struct Args {
    runs: usize,
    secs: u64,
    size: usize,
    read_events: u64,
    dir: PathBuf,
    interval: bool,
    read_only: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        runs: 3,
        secs: 3,
        size: 200,
        read_events: 1_000_000,
        dir: std::env::temp_dir(),
        interval: false,
        read_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--runs" => {
                args.runs = value()
                    .parse()
                    .unwrap_or_else(|_| usage("--runs: a number"))
            }
            "--secs" => {
                args.secs = value()
                    .parse()
                    .unwrap_or_else(|_| usage("--secs: a number"))
            }
            "--size" => {
                args.size = value()
                    .parse()
                    .unwrap_or_else(|_| usage("--size: a number"))
            }
            "--read-events" => {
                args.read_events = value()
                    .parse()
                    .unwrap_or_else(|_| usage("--read-events: a number"))
            }
            "--dir" => args.dir = PathBuf::from(value()),
            "--interval" => args.interval = true,
            "--read-only" => args.read_only = true,
            other => usage(&format!("unknown flag {other}")),
        }
    }
    args
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "log_bench: {msg}\nusage: log_bench [--runs N] [--secs S] [--size BYTES] [--read-events N] [--dir DIR] [--interval] [--read-only]"
    );
    std::process::exit(2)
}

fn options(interval: bool) -> LogOptions {
    LogOptions {
        fsync: if interval {
            FsyncPolicy::Interval(Duration::from_secs(1))
        } else {
            FsyncPolicy::Always
        },
        ..LogOptions::default()
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// One append run: returns (events per second, events per commit).
async fn append_run(args: &Args, appenders: usize, batch: usize) -> (f64, f64) {
    let dir = tempfile::tempdir_in(&args.dir).expect("temp dir");
    let log = EventLog::open(dir.path(), options(args.interval)).expect("open log");
    let streams: Vec<DataId> = (0..STREAMS)
        .map(|i| DataId::parse(&format!("bench-{i}")).expect("valid id"))
        .collect();
    for s in &streams {
        log.append(s, vec![Bytes::from_static(b"warm-up")], true)
            .await
            .expect("create stream");
    }
    let payload = Bytes::from(vec![0xAB; args.size]);
    let commits_before = log.commit_count();
    let deadline = Instant::now() + Duration::from_secs(args.secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for a in 0..appenders {
        let log = log.clone();
        let stream = streams[a % STREAMS].clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut events = 0u64;
            while Instant::now() < deadline {
                log.append(&stream, vec![payload.clone(); batch], false)
                    .await
                    .expect("append");
                events += batch as u64;
            }
            events
        }));
    }
    let mut total = 0u64;
    for t in tasks {
        total += t.await.expect("appender task");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let commits = (log.commit_count() - commits_before).max(1);
    log.close().await.expect("close");
    (total as f64 / elapsed, total as f64 / commits as f64)
}

/// One read run over a log of `read_events` events in one stream: events per second of a
/// single reader reading 1000 events (or 1 MiB) per call from offset 0 to the end.
async fn read_run(args: &Args) -> (f64, f64) {
    let dir = tempfile::tempdir_in(&args.dir).expect("temp dir");
    let id = DataId::parse("bench-read").expect("valid id");
    {
        let log = EventLog::open(dir.path(), options(true)).expect("open log");
        let payload = Bytes::from(vec![0xCD; args.size]);
        let mut written = 0;
        while written < args.read_events {
            let n = (args.read_events - written).min(1000) as usize;
            log.append(&id, vec![payload.clone(); n], true)
                .await
                .expect("fill");
            written += n as u64;
        }
        log.close().await.expect("close");
    }
    let log = EventLog::open(dir.path(), options(false)).expect("reopen log");
    let pass = || {
        let start = Instant::now();
        let mut next = Offset(0);
        let mut events = 0u64;
        loop {
            let batch = log.read(&id, next, 1000, 1 << 20).expect("read");
            let Some(last) = batch.last() else { break };
            next = last.offset.next();
            events += batch.len() as u64;
        }
        assert_eq!(events, args.read_events);
        events as f64 / start.elapsed().as_secs_f64()
    };
    // First pass right after reopen (block cache cold, OS page cache warm), then a warm one.
    let cold = pass();
    let warm = pass();
    log.close().await.expect("close");
    (cold, warm)
}

/// Median latency of appending 200 bytes to a preallocated file and fdatasyncing it: the
/// floor under one commit on this disk, printed for context.
fn raw_fdatasync(dir: &std::path::Path) -> Duration {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = tempfile::tempfile_in(dir).expect("probe file");
    file.set_len(16 << 20).expect("preallocate");
    file.sync_all().expect("sync");
    file.seek(SeekFrom::Start(0)).expect("seek");
    let mut samples: Vec<Duration> = (0..200)
        .map(|_| {
            let start = Instant::now();
            file.write_all(&[0x5A; 200]).expect("write");
            file.sync_data().expect("fdatasync");
            start.elapsed()
        })
        .collect();
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let policy = if args.interval {
        "fsync every 1 s"
    } else {
        "fsync before ack"
    };
    println!(
        "event log bench: {}-byte events, {STREAMS} streams, {policy}, {} s per run, median of {} runs, dir {}",
        args.size,
        args.secs,
        args.runs,
        args.dir.display()
    );
    println!(
        "raw 200-byte write + fdatasync on this disk: median {:?}",
        raw_fdatasync(&args.dir)
    );
    runtime.block_on(async {
        let batches: &[usize] = if args.read_only { &[] } else { &[1, 16] };
        for &batch in batches {
            for appenders in [1usize, 8, 64] {
                let mut rates = Vec::new();
                let mut per_commit = Vec::new();
                for _ in 0..args.runs {
                    let (rate, events_per_commit) = append_run(&args, appenders, batch).await;
                    rates.push(rate);
                    per_commit.push(events_per_commit);
                }
                println!(
                    "append  appenders={appenders:>2} batch={batch:>2}: {:>9.0} ev/s  ({:.1} events per commit; runs: {})",
                    median(rates.clone()),
                    median(per_commit),
                    rates
                        .iter()
                        .map(|r| format!("{r:.0}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
        }
        let mut cold = Vec::new();
        let mut warm = Vec::new();
        for _ in 0..args.runs {
            let (c, w) = read_run(&args).await;
            cold.push(c);
            warm.push(w);
        }
        println!(
            "read    1 reader, {} events: {:>9.0} ev/s after reopen, {:>9.0} ev/s second pass",
            args.read_events,
            median(cold),
            median(warm)
        );
    });
}
