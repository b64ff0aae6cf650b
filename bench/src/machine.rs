//! What the machine is doing, from /proc: how idle the CPUs are (a trial waits for an idle
//! machine, and is marked CONTENDED when it never gets one), how much CPU time one process
//! used (server CPU seconds per million events), its resident memory, and a one-line
//! description of the machine.

use std::time::{Duration, Instant};

use color_eyre::eyre::{Result, WrapErr, eyre};

/// Busy and total jiffies over all CPUs since boot (first line of /proc/stat).
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// Percent of all CPUs idle over `window`.
pub(crate) async fn idle_percent(window: Duration) -> f64 {
    let Some((busy0, total0)) = cpu_jiffies() else {
        return 100.0;
    };
    tokio::time::sleep(window).await;
    let Some((busy1, total1)) = cpu_jiffies() else {
        return 100.0;
    };
    let total = total1.saturating_sub(total0);
    if total == 0 {
        return 100.0;
    }
    100.0 * (1.0 - busy1.saturating_sub(busy0) as f64 / total as f64)
}

/// How idle the machine was when a trial started.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Idle {
    /// Idle percent in the last sample.
    pub(crate) percent: f64,
    /// True if the machine never reached the threshold within the wait.
    pub(crate) contended: bool,
}

/// Waits (up to `max_wait`) until the CPUs are at least `threshold` percent idle over a
/// 300 ms window.
pub(crate) async fn wait_idle(threshold: f64, max_wait: Duration) -> Idle {
    let end = Instant::now() + max_wait;
    loop {
        let percent = idle_percent(Duration::from_millis(300)).await;
        if percent >= threshold {
            return Idle {
                percent,
                contended: false,
            };
        }
        if Instant::now() >= end {
            return Idle {
                percent,
                contended: true,
            };
        }
    }
}

/// CPU seconds (user + system) used so far by process `pid`, all threads.
pub(crate) fn process_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // /proc reports in USER_HZ, which Linux fixes at 100 for user space on every platform.
    Some((utime + stime) / 100.0)
}

/// The resident set size of process `pid` (`VmRSS` in /proc/<pid>/status), in bytes.
pub(crate) fn process_rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .wrap_err_with(|| format!("cannot read /proc/{pid}/status"))?;
    vm_rss_bytes(&status).ok_or_else(|| eyre!("no VmRSS in /proc/{pid}/status"))
}

/// `VmRSS` of a /proc status text, in bytes.
fn vm_rss_bytes(status: &str) -> Option<u64> {
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())?;
    Some(kib * 1024)
}

/// CPU model, core count, memory and kernel, for the records and BENCHMARKS.md.
pub(crate) fn describe() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cores} cores, {mem_gib:.0} GiB, Linux {}",
        kernel.trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_is_readable() {
        let pid = std::process::id();
        let secs = process_cpu_secs(pid).expect("cpu time of this process");
        assert!(secs >= 0.0);
        assert!(describe().contains("cores"));
        assert!(process_rss_bytes(pid).expect("rss of this process") > 0);
    }

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tx\nVmPeak:\t  9 kB\nVmRSS:\t   1234 kB\nThreads: 3\n";
        assert_eq!(vm_rss_bytes(status), Some(1234 * 1024));
        assert_eq!(vm_rss_bytes("Name: x\n"), None);
    }
}
