//! The machine's floor, measured in the same run as the systems: what no system can beat.
//!
//! - TCP loopback round trip: 1 byte back and forth, `TCP_NODELAY`, one thread per side,
//!   placed by the scheduler; and the same with each side pinned to a CPU of its own. The
//!   scheduler often keeps the two sides on one CPU, where a wake-up is a context switch; a
//!   hop between processes on different CPUs (the gateway's relay, say) must wake the other
//!   CPU, which on a VM whose idle vCPUs halt is an exit to the host. The pinned figure is
//!   that cost, so it ranks sittings where the placed one may not.
//! - TCP loopback stream: 100-byte messages written in 64 KiB chunks, read as fast as possible.
//! - write + fdatasync: append 100 bytes to a file in the temp dir (where every system keeps
//!   its data) and sync it, one after another — the cost of one durable acknowledgement
//!   without group commit.
//! - Pauses: a thread that only sleeps, 100 µs at a time, and counts the wake-ups that came
//!   1 ms or more after the one before. On the machines of BENCHMARKS.md these are a thread
//!   of another process at a higher priority (nice −10) taking one CPU for 1.5–3 ms about
//!   once a second (*Issue 13, ninth round*); every system's e2e tail holds those stalls, so
//!   their rate and length bound what a p99.9 can be.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use color_eyre::eyre::{Result, WrapErr, eyre};
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

use crate::procs::Workdir;
use crate::stats::Samples;

/// What the floor measured.
#[derive(Debug, Clone)]
pub(crate) struct Floor {
    pub(crate) rtt_p50_us: f64,
    pub(crate) rtt_p99_us: f64,
    /// The round trip p50 with the two sides pinned to different CPUs; `None` where the
    /// process may run on one CPU only.
    pub(crate) rtt_cross_p50_us: Option<f64>,
    pub(crate) tcp_mb_per_s: f64,
    pub(crate) fsync_p50_us: f64,
    pub(crate) fsync_p99_us: f64,
    pub(crate) pauses: Pauses,
}

/// How often, and how long, a sleeping thread was kept from running.
#[derive(Debug, Clone)]
pub(crate) struct Pauses {
    /// Wake-ups [`PAUSE`] or more after the previous one, per second.
    pub(crate) per_s: f64,
    /// The longest time between two wake-ups, in µs.
    pub(crate) max_us: f64,
}

/// The sleep of the pause probe.
const NAP: Duration = Duration::from_micros(100);
/// A gap between wake-ups this long or longer counts as a pause (10 naps).
const PAUSE: Duration = Duration::from_millis(1);

/// Measures the floor; `quick` uses fewer iterations.
pub(crate) async fn measure(quick: bool) -> Result<Floor> {
    tokio::task::spawn_blocking(move || measure_blocking(quick))
        .await
        .wrap_err("the floor measurement panicked")?
}

fn measure_blocking(quick: bool) -> Result<Floor> {
    let (round_trips, stream_bytes, syncs, probe) = if quick {
        (2_000, 50 << 20, 100, Duration::from_secs(1))
    } else {
        (20_000, 500 << 20, 1_000, Duration::from_secs(10))
    };
    let rtt = tcp_round_trips(round_trips, None)?;
    let rtt_cross = match two_cpus()? {
        Some(cpus) => Some(tcp_round_trips(round_trips, Some(cpus))?.p50),
        None => None,
    };
    let mb_per_s = tcp_stream(stream_bytes)?;
    let fsync = write_fdatasync(syncs)?;
    Ok(Floor {
        rtt_p50_us: rtt.p50,
        rtt_p99_us: rtt.p99,
        rtt_cross_p50_us: rtt_cross,
        tcp_mb_per_s: mb_per_s,
        fsync_p50_us: fsync.p50,
        fsync_p99_us: fsync.p99,
        pauses: pauses(probe),
    })
}

/// Sleeps [`NAP`] at a time for `length` (with 1 µs timer slack, as the e2e pacer) and
/// counts the gaps between wake-ups of [`PAUSE`] or more.
fn pauses(length: Duration) -> Pauses {
    // Without this a nap may be stretched by the default 50 µs of slack. The thread is the
    // blocking pool's, so its slack is put back afterwards.
    let slack = nix::sys::prctl::get_timerslack().ok();
    let _ = nix::sys::prctl::set_timerslack(1);
    let start = Instant::now();
    let (mut last, mut count, mut longest) = (start, 0u64, Duration::ZERO);
    while last.duration_since(start) < length {
        std::thread::sleep(NAP);
        let now = Instant::now();
        let gap = now.duration_since(last);
        if gap >= PAUSE {
            count += 1;
        }
        longest = longest.max(gap);
        last = now;
    }
    if let Some(slack) = slack {
        let _ = nix::sys::prctl::set_timerslack(slack as u64);
    }
    Pauses {
        per_s: count as f64 / last.duration_since(start).as_secs_f64(),
        max_us: longest.as_secs_f64() * 1e6,
    }
}

/// The first two CPUs this process may run on, or `None` if it may run on only one.
fn two_cpus() -> Result<Option<[usize; 2]>> {
    let allowed = sched_getaffinity(Pid::from_raw(0)).wrap_err("cannot read the CPU affinity")?;
    let mut cpus = cpus_in(&allowed);
    Ok(cpus.next().zip(cpus.next()).map(|(a, b)| [a, b]))
}

/// The CPUs in `set`, lowest first.
fn cpus_in(set: &CpuSet) -> impl Iterator<Item = usize> + '_ {
    (0..CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false))
}

/// Runs the calling thread on `cpu` only.
fn pin_to(cpu: usize) -> std::io::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(std::io::Error::other)?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(std::io::Error::other)
}

/// `n` round trips of one byte over loopback TCP, after a tenth as many to warm up; with
/// `cpus`, the echoing side runs on the first and the timing side on the second.
fn tcp_round_trips(n: usize, cpus: Option<[usize; 2]>) -> Result<crate::stats::Percentiles> {
    let listener = TcpListener::bind("127.0.0.1:0").wrap_err("cannot bind loopback")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        if let Some([cpu, _]) = cpus {
            pin_to(cpu)?;
        }
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        loop {
            if s.read(&mut b)? == 0 {
                return Ok(());
            }
            s.write_all(&b)?;
        }
    });
    // A thread of its own, so that pinning it leaves the caller's affinity alone.
    let timer = std::thread::spawn(move || -> std::io::Result<Samples> {
        let pinned = cpus.map_or(Ok(()), |[_, cpu]| pin_to(cpu));
        // Connected before a failed pin is returned, so that the echo thread's accept ends.
        let mut s = TcpStream::connect(addr)?;
        pinned?;
        s.set_nodelay(true)?;
        let mut samples = Samples::with_capacity(n);
        let mut b = [1u8; 1];
        for i in 0..n + n / 10 {
            let t = Instant::now();
            s.write_all(&b)?;
            s.read_exact(&mut b)?;
            // The first tenth warms up caches and the scheduler.
            if i >= n / 10 {
                samples.push(t.elapsed().as_nanos() as u64);
            }
        }
        Ok(samples)
    });
    let samples = timer
        .join()
        .map_err(|_| eyre!("timing thread panicked"))?
        .wrap_err("timing thread failed")?;
    echo.join()
        .map_err(|_| eyre!("echo thread panicked"))?
        .wrap_err("echo thread failed")?;
    samples.percentiles().ok_or_else(|| eyre!("no round trips"))
}

fn tcp_stream(total: usize) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").wrap_err("cannot bind loopback")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 256 << 10];
        let mut got = 0;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(got);
            }
            got += n;
        }
    });
    let mut s = TcpStream::connect(addr)?;
    // 655 messages of 100 bytes per write.
    let chunk = vec![b'x'; 65_500];
    let start = Instant::now();
    let mut sent = 0;
    while sent < total {
        s.write_all(&chunk)?;
        sent += chunk.len();
    }
    drop(s);
    let got = reader
        .join()
        .map_err(|_| eyre!("reader thread panicked"))?
        .wrap_err("reader thread failed")?;
    Ok(got as f64 / 1e6 / start.elapsed().as_secs_f64())
}

fn write_fdatasync(n: usize) -> Result<crate::stats::Percentiles> {
    let dir = Workdir::new("floor")?;
    let path = dir.path().join("fsync-probe");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .wrap_err_with(|| format!("cannot create {}", path.display()))?;
    let record = [b'x'; 100];
    let mut samples = Samples::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&record)?;
        f.sync_data()
            .wrap_err_with(|| format!("fdatasync of {} failed", path.display()))?;
        samples.push(t.elapsed().as_nanos() as u64);
    }
    samples.percentiles().ok_or_else(|| eyre!("no syncs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_probe_reports_its_gaps() {
        let p = pauses(Duration::from_millis(100));
        // Every gap is at least one nap, so the longest is too; a count is never negative
        // and cannot exceed one pause per PAUSE of the probe's length.
        assert!(p.max_us >= NAP.as_secs_f64() * 1e6, "{p:?}");
        assert!(p.per_s >= 0.0 && p.per_s <= 1_000.0, "{p:?}");
    }

    #[test]
    fn a_pinned_thread_runs_on_that_cpu_only() {
        let Some([_, cpu]) = two_cpus().expect("affinity") else {
            return; // one CPU allowed: nothing to pin apart
        };
        let (allowed, running_on) = std::thread::spawn(move || {
            pin_to(cpu).expect("pin");
            let allowed = sched_getaffinity(Pid::from_raw(0)).expect("affinity");
            (allowed, nix::sched::sched_getcpu().expect("current CPU"))
        })
        .join()
        .expect("thread");
        assert_eq!(cpus_in(&allowed).collect::<Vec<_>>(), vec![cpu]);
        assert_eq!(running_on, cpu);
    }

    #[test]
    fn pinned_round_trips_are_timed_and_leave_the_caller_alone() {
        let before = sched_getaffinity(Pid::from_raw(0)).expect("affinity");
        let Some(cpus) = two_cpus().expect("affinity") else {
            return; // one CPU allowed: nothing to pin apart
        };
        assert_ne!(cpus[0], cpus[1]);
        let rtt = tcp_round_trips(200, Some(cpus)).expect("round trips");
        assert!(rtt.p50 > 0.0 && rtt.p50 <= rtt.p99, "{rtt:?}");
        assert_eq!(
            sched_getaffinity(Pid::from_raw(0)).expect("affinity"),
            before
        );
    }

    #[test]
    fn pinning_to_a_cpu_outside_the_set_fails_with_a_reason() {
        let err = std::thread::spawn(|| pin_to(CpuSet::count()))
            .join()
            .expect("thread")
            .expect_err("no such CPU");
        assert!(!err.to_string().is_empty());
    }
}
