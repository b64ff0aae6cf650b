//! Results: one [`Record`] per measurement, appended to the `--out` file as a JSON line the
//! moment it exists (an interrupted run keeps what it measured), and the table printed at the
//! end: per scenario and tier, each system's median with min–max over trials, and the ratio
//! ours ÷ each baseline (a peer, the direct stream, or the per-request Consul lookup).
//!
//! A cell with a trial marked CONTENDED (the machine was busy when it started) carries `*`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use color_eyre::eyre::{Result, WrapErr, bail};
use serde::{Deserialize, Serialize};

use crate::stats::median_min_max;

/// One measurement of one system in one trial.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    /// Identifies the run (Unix seconds at its start).
    pub(crate) run: u64,
    /// floor, publish, replay, resume, e2e, lookup, proxy, failover, primary-kill,
    /// primary-stop.
    pub(crate) scenario: String,
    /// ec, redis, jetstream, or a variant (lookup: sdk-cache, gateway, consul-x2, floor,
    /// floor-threads, gateway-base; proxy: direct, proxy).
    pub(crate) system: String,
    /// True for the side ours is compared against.
    pub(crate) baseline: bool,
    /// Durability tier (a or b), if the scenario has one.
    pub(crate) tier: Option<String>,
    /// 1-based trial number.
    pub(crate) trial: usize,
    /// The machine never got idle enough before this trial.
    pub(crate) contended: bool,
    /// Idle CPU percent measured just before the trial.
    pub(crate) idle_pct: f64,
    /// The numbers, by name (units in the name: `_per_s`, `_us`, `_ms`, `_s`).
    pub(crate) metrics: BTreeMap<String, f64>,
    /// Sizes and settings the numbers depend on.
    pub(crate) params: serde_json::Value,
    /// Anything a reader of the numbers should know.
    pub(crate) notes: Vec<String>,
    /// Why this system did not run, if it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) skipped: Option<String>,
    /// Why this measurement failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) failed: Option<String>,
}

/// Collects records, writes them out, prints the table.
pub(crate) struct Report {
    records: Vec<Record>,
    out: Option<File>,
    pub(crate) run: u64,
}

impl Record {
    /// Adds `{name}_p50_us`, `_p99_us`, `_p999_us` and `_max_us` from `p`.
    pub(crate) fn insert_percentiles(&mut self, name: &str, p: &crate::stats::Percentiles) {
        for (suffix, value) in [
            ("p50", p.p50),
            ("p99", p.p99),
            ("p999", p.p999),
            ("max", p.max),
        ] {
            self.metrics.insert(format!("{name}_{suffix}_us"), value);
        }
    }
}

impl Report {
    /// A report appending to `out`, if given.
    pub(crate) fn new(out: Option<&Path>) -> Result<Report> {
        let out = match out {
            Some(path) => Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .wrap_err_with(|| format!("cannot open {} for appending", path.display()))?,
            ),
            None => None,
        };
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(Report {
            records: Vec::new(),
            out,
            run,
        })
    }

    /// Records `record`, writes its JSON line and prints a one-line summary.
    pub(crate) fn add(&mut self, mut record: Record) -> Result<()> {
        record.run = self.run;
        let line = serde_json::to_string(&record).wrap_err("cannot encode a record")?;
        if let Some(out) = self.out.as_mut() {
            writeln!(out, "{line}").wrap_err("cannot write to the --out file")?;
            out.flush().wrap_err("cannot write to the --out file")?;
        }
        if let Some(reason) = &record.skipped {
            println!("SKIPPED {} ({}): {reason}", record.system, record.scenario);
        } else if let Some(error) = &record.failed {
            println!(
                "FAILED {} {} tier {} trial {}: {error}",
                record.scenario,
                record.system,
                record.tier.as_deref().unwrap_or("-"),
                record.trial
            );
        } else {
            let metrics: Vec<String> = record
                .metrics
                .iter()
                .map(|(k, v)| format!("{k}={}", human(*v)))
                .collect();
            println!(
                "  {:<9} {:<18} {:<2} trial {}{}: {}",
                record.scenario,
                record.system,
                record.tier.as_deref().unwrap_or("-"),
                record.trial,
                if record.contended { " CONTENDED" } else { "" },
                metrics.join(" ")
            );
            for note in &record.notes {
                println!("      note: {note}");
            }
        }
        self.records.push(record);
        Ok(())
    }

    /// The table of medians and ratios, as printed at the end of a run.
    pub(crate) fn table(&self) -> String {
        render_table(&self.records)
    }

    /// Ends a run: prints the table, then fails if any of the run's `failures` measurements
    /// failed (so that CI notices; each was printed as FAILED when it happened).
    pub(crate) fn finish(&self, failures: usize) -> Result<()> {
        println!("\n{}", self.table());
        if failures > 0 {
            bail!("{failures} measurement(s) failed; see FAILED above");
        }
        Ok(())
    }
}

/// The table of the records in a JSON-lines file written with `--out`.
pub(crate) fn table_of_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .wrap_err_with(|| format!("cannot read {}", path.display()))?;
    let mut records = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let record: Record = serde_json::from_str(line)
            .wrap_err_with(|| format!("{} line {} is not a record", path.display(), i + 1))?;
        records.push(record);
    }
    Ok(render_table(&records))
}

/// The metrics shown in the table for a scenario, in order, with their labels.
fn shown_metrics(scenario: &str) -> &'static [(&'static str, &'static str)] {
    match scenario {
        "floor" => &[
            ("tcp_rtt_p50_us", "TCP round trip p50 µs"),
            ("tcp_rtt_p99_us", "TCP round trip p99 µs"),
            ("tcp_rtt_cross_p50_us", "TCP round trip, 2 CPUs, p50 µs"),
            ("tcp_mb_per_s", "TCP stream MB/s"),
            ("fsync_p50_us", "write+fdatasync p50 µs"),
            ("fsync_p99_us", "write+fdatasync p99 µs"),
            ("pause_per_s", "pauses ≥ 1 ms per s"),
            ("pause_max_us", "longest pause µs"),
        ],
        "publish" => &[
            ("ev_per_s", "events/s"),
            ("mb_per_s", "MB/s"),
            ("server_cpu_s_per_1m", "server CPU s / 1M ev"),
        ],
        "replay" => &[("ev_per_s", "events/s"), ("mb_per_s", "MB/s")],
        "resume" => &[("ttfe_ms", "first event from N/2, ms")],
        "e2e" => &[
            ("delivery_p50_us", "delivery p50 µs"),
            ("delivery_p99_us", "delivery p99 µs"),
            ("delivery_p999_us", "delivery p99.9 µs"),
            ("delivery_max_us", "delivery max µs"),
            ("ack_p50_us", "publish ack p50 µs"),
            ("ack_p99_us", "publish ack p99 µs"),
            ("late_ticks", "late ticks"),
            ("server_cpu_us_per_delivery", "server CPU µs/delivery"),
            ("client_cpu_us_per_delivery", "client CPU µs/delivery"),
            ("lost", "events not delivered"),
            ("out_of_order", "delivered out of order"),
        ],
        "lookup" => &[
            ("lookups_per_s", "lookups/s"),
            ("p50_us", "p50 µs"),
            ("p99_us", "p99 µs"),
            ("server_cpu_us_per_lookup", "server CPU µs / lookup"),
        ],
        "proxy" => &[
            ("replay_ev_per_s", "replay events/s"),
            ("node_cpu_us_per_ev", "replay: node CPU µs/event"),
            ("gateway_cpu_us_per_ev", "replay: gateway CPU µs/event"),
            ("reader_cpu_us_per_ev", "replay: reader CPU µs/event"),
            ("e2e_p50_us", "e2e delivery p50 µs"),
            ("e2e_p99_us", "e2e delivery p99 µs"),
        ],
        "failover" => &[
            ("pause_ms", "kill → event from another node, ms"),
            ("max_gap_ms", "longest delivery gap, ms"),
            ("gapless", "offsets gapless (1 = yes)"),
            ("events", "events delivered"),
        ],
        "primary-kill" | "primary-stop" => &[
            ("write_pause_ms", "write pause ms"),
            ("write_max_gap_ms", "longest ack gap ms"),
            ("read_moved_ms", "read pause ms (on a replica)"),
            ("proxy_read_moved_ms", "read pause ms, via gateway"),
            ("read_lost_ms", "reader told of the loss ms"),
            ("read_pause_ms", "first new event ms"),
            ("proxy_read_pause_ms", "first new event ms, gateway"),
            ("read_max_gap_ms", "longest delivery gap ms"),
            ("lost", "acked events lost"),
            ("duplicates", "events stored twice"),
            ("readers_gapless", "readers gapless (1 = yes)"),
            ("batches_per_s", "batches/s before the kill"),
        ],
        _ => &[],
    }
}

/// The ratio columns of a scenario: ours ÷ each baseline, except where only some pairs
/// answer a question (lookup: the SDK's cache against the seed's way, GetNodeForData against
/// the floor, the seed's way and another build).
fn ratio_pairs<'a>(scenario: &str, ours: &[&'a str], peers: &[&'a str]) -> Vec<(&'a str, &'a str)> {
    let all = ours
        .iter()
        .flat_map(|o| peers.iter().map(move |p| (*o, *p)));
    match scenario {
        "lookup" => all
            .filter(|pair| {
                matches!(
                    *pair,
                    ("sdk-cache", "consul-x2")
                        | ("gateway", "floor")
                        | ("gateway", "floor-threads")
                        | ("gateway", "consul-x2")
                        | ("gateway", "gateway-base")
                )
            })
            .collect(),
        _ => all.collect(),
    }
}

const SCENARIO_ORDER: [&str; 10] = [
    "floor",
    "publish",
    "replay",
    "resume",
    "e2e",
    "lookup",
    "proxy",
    "failover",
    "primary-kill",
    "primary-stop",
];

fn render_table(records: &[Record]) -> String {
    let mut out = String::new();
    for scenario in SCENARIO_ORDER {
        let of_scenario: Vec<&Record> = records
            .iter()
            .filter(|r| r.scenario == scenario && r.skipped.is_none() && r.failed.is_none())
            .collect();
        if of_scenario.is_empty() {
            continue;
        }
        let mut tiers: Vec<Option<String>> = Vec::new();
        for r in &of_scenario {
            if !tiers.contains(&r.tier) {
                tiers.push(r.tier.clone());
            }
        }
        for tier in tiers {
            let recs: Vec<&Record> = of_scenario
                .iter()
                .copied()
                .filter(|r| r.tier == tier)
                .collect();
            // Ours first, then the baselines, each in the order first seen.
            let mut systems: Vec<(&str, bool)> = Vec::new();
            for r in &recs {
                if !systems.iter().any(|(s, _)| *s == r.system) {
                    systems.push((&r.system, r.baseline));
                }
            }
            systems.sort_by_key(|(_, baseline)| *baseline);
            let ours: Vec<&str> = systems.iter().filter(|s| !s.1).map(|s| s.0).collect();
            let peers: Vec<&str> = systems.iter().filter(|s| s.1).map(|s| s.0).collect();
            let trials = recs.iter().map(|r| r.trial).max().unwrap_or(0);
            out.push_str(&format!(
                "\n{scenario}{} — median (min–max) of {trials} trial(s)\n",
                tier.as_deref()
                    .map(|t| format!(", tier {}", t.to_uppercase()))
                    .unwrap_or_default()
            ));
            let mut header = vec![format!("{:<28}", "")];
            for (s, _) in &systems {
                header.push(format!("{s:>26}"));
            }
            let pairs = ratio_pairs(scenario, &ours, &peers);
            for (o, p) in &pairs {
                header.push(format!("{:>12}", format!("{o}÷{p}")));
            }
            out.push_str(header.join(" ").trim_end());
            out.push('\n');
            for (metric, label) in shown_metrics(scenario) {
                let stats = |system: &str| {
                    let values: Vec<f64> = recs
                        .iter()
                        .filter(|r| r.system == system)
                        .filter_map(|r| r.metrics.get(*metric).copied())
                        .collect();
                    let contended = recs.iter().any(|r| r.system == system && r.contended);
                    median_min_max(&values).map(|m| (m, contended))
                };
                if systems.iter().all(|(s, _)| stats(s).is_none()) {
                    continue;
                }
                let mut row = vec![format!("{label:<28}")];
                for (s, _) in &systems {
                    let cell = match stats(s) {
                        Some(((med, min, max), contended)) => format!(
                            "{}{} ({}–{})",
                            if contended { "*" } else { "" },
                            human(med),
                            human(min),
                            human(max)
                        ),
                        None => "—".into(),
                    };
                    row.push(format!("{cell:>26}"));
                }
                for (o, p) in &pairs {
                    let ratio = match (stats(o), stats(p)) {
                        (Some(((a, _, _), _)), Some(((b, _, _), _))) if b != 0.0 => {
                            format!("{:.2}×", a / b)
                        }
                        _ => "—".into(),
                    };
                    row.push(format!("{ratio:>12}"));
                }
                out.push_str(row.join(" ").trim_end());
                out.push('\n');
            }
        }
    }
    out.push_str(&render_growth(records));
    if records.iter().any(|r| r.contended) {
        out.push_str("\n* a trial in this cell started on a busy machine (CONTENDED)\n");
    }
    let skipped: Vec<String> = records
        .iter()
        .filter_map(|r| {
            r.skipped
                .as_ref()
                .map(|why| format!("SKIPPED {} ({}): {why}", r.system, r.scenario))
        })
        .collect();
    for line in dedup(skipped) {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The `growth` curves, in the order they run.
const GROWTH_ORDER: [&str; 5] = [
    "growth-ids",
    "growth-followers",
    "growth-size",
    "growth-memory",
    "growth-replay",
];

/// The metrics of a growth curve shown in the table, with their labels.
fn growth_metrics(scenario: &str) -> &'static [(&'static str, &'static str)] {
    match scenario {
        "growth-ids" => &[
            ("ev_per_s", "events/s"),
            ("server_cpu_us_per_ev", "server CPU µs/event"),
            ("client_cpu_us_per_ev", "client CPU µs/event"),
            ("create_ids_per_s", "data IDs created/s"),
        ],
        "growth-followers" => &[
            ("delivery_p50_us", "delivery p50 µs"),
            ("delivery_p99_us", "delivery p99 µs"),
            ("server_cpu_us_per_delivery", "server CPU µs/delivery"),
            ("lost", "not delivered"),
        ],
        "growth-size" => &[
            ("ev_per_s", "events/s"),
            ("mb_per_s", "MB/s"),
            ("server_cpu_us_per_ev", "server CPU µs/event"),
        ],
        "growth-memory" => &[
            ("rss_empty_mib", "RSS empty MiB"),
            ("bytes_per_id", "bytes per data ID"),
            ("bytes_per_follower", "bytes per follower"),
        ],
        "growth-replay" => &[
            ("ev_per_s", "replay events/s"),
            ("server_cpu_us_per_ev", "server CPU µs/event"),
            ("preload_ev_per_s", "preload events/s"),
            ("rss_mib", "server RSS MiB"),
        ],
        _ => &[],
    }
}

/// The growth curves: per curve, metric and point (`params.x`), each system's median over
/// trials and the ratio ours ÷ each peer.
fn render_growth(records: &[Record]) -> String {
    let mut out = String::new();
    for scenario in GROWTH_ORDER {
        let recs: Vec<&Record> = records
            .iter()
            .filter(|r| r.scenario == scenario && r.skipped.is_none() && r.failed.is_none())
            .collect();
        if recs.is_empty() {
            continue;
        }
        let mut systems: Vec<(&str, bool)> = Vec::new();
        let mut xs: Vec<u64> = Vec::new();
        for r in &recs {
            if !systems.iter().any(|(s, _)| *s == r.system) {
                systems.push((&r.system, r.baseline));
            }
            if let Some(x) = r.params["x"].as_u64()
                && !xs.contains(&x)
            {
                xs.push(x);
            }
        }
        systems.sort_by_key(|(_, baseline)| *baseline);
        xs.sort_unstable();
        let ours: Vec<&str> = systems.iter().filter(|s| !s.1).map(|s| s.0).collect();
        let peers: Vec<&str> = systems.iter().filter(|s| s.1).map(|s| s.0).collect();
        let trials = recs.iter().map(|r| r.trial).max().unwrap_or(0);
        out.push_str(&format!(
            "\n{scenario}, tier A — median of {trials} trial(s) per point x\n"
        ));
        let mut header = vec![format!("{:<24} {:>9}", "", "x")];
        for (s, _) in &systems {
            header.push(format!("{s:>12}"));
        }
        for o in &ours {
            for p in &peers {
                header.push(format!("{:>12}", format!("{o}÷{p}")));
            }
        }
        out.push_str(header.join(" ").trim_end());
        out.push('\n');
        for (metric, label) in growth_metrics(scenario) {
            for &x in &xs {
                let median = |system: &str| {
                    let values: Vec<f64> = recs
                        .iter()
                        .filter(|r| r.system == system && r.params["x"].as_u64() == Some(x))
                        .filter_map(|r| r.metrics.get(*metric).copied())
                        .collect();
                    let contended = recs.iter().any(|r| {
                        r.system == system && r.params["x"].as_u64() == Some(x) && r.contended
                    });
                    median_min_max(&values).map(|(m, _, _)| (m, contended))
                };
                if systems.iter().all(|(s, _)| median(s).is_none()) {
                    continue;
                }
                let mut row = vec![format!("{label:<24} {:>9}", point_label(x))];
                for (s, _) in &systems {
                    let cell = match median(s) {
                        Some((m, contended)) => {
                            format!("{}{}", if contended { "*" } else { "" }, human(m))
                        }
                        None => "—".into(),
                    };
                    row.push(format!("{cell:>12}"));
                }
                for o in &ours {
                    for p in &peers {
                        let ratio = match (median(o), median(p)) {
                            (Some((a, _)), Some((b, _))) if b != 0.0 => format!("{:.2}×", a / b),
                            _ => "—".into(),
                        };
                        row.push(format!("{ratio:>12}"));
                    }
                }
                out.push_str(row.join(" ").trim_end());
                out.push('\n');
            }
        }
    }
    out
}

/// A point of a growth curve: sizes that are powers of two in KiB/MiB, counts as numbers.
fn point_label(x: u64) -> String {
    if x >= 1024 && x.is_power_of_two() {
        if x >= 1 << 20 {
            format!("{}MiB", x >> 20)
        } else {
            format!("{}KiB", x >> 10)
        }
    } else {
        human(x as f64)
    }
}

fn dedup(mut lines: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    lines.retain(|l| seen.insert(l.clone()));
    lines
}

/// A number in a few significant digits, with k/M suffixes for large values.
pub(crate) fn human(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        format!("{v}")
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A record with the common fields filled; the caller adds metrics, params and notes.
pub(crate) fn record(
    scenario: &str,
    system: &str,
    baseline: bool,
    tier: Option<crate::cli::Tier>,
    trial: usize,
    idle: crate::machine::Idle,
) -> Record {
    Record {
        run: 0,
        scenario: scenario.into(),
        system: system.into(),
        baseline,
        tier: tier.map(|t| t.name().to_owned()),
        trial,
        contended: idle.contended,
        idle_pct: (idle.percent * 10.0).round() / 10.0,
        metrics: BTreeMap::new(),
        params: serde_json::Value::Null,
        notes: Vec::new(),
        skipped: None,
        failed: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Tier;
    use crate::machine::Idle;

    fn rec(system: &str, baseline: bool, trial: usize, rate: f64) -> Record {
        let mut r = record(
            "publish",
            system,
            baseline,
            Some(Tier::A),
            trial,
            Idle {
                percent: 99.0,
                contended: trial == 2 && system == "redis",
            },
        );
        r.metrics.insert("ev_per_s".into(), rate);
        r
    }

    #[test]
    fn table_has_medians_ranges_and_ratios() {
        let records = vec![
            rec("ec", false, 1, 400_000.0),
            rec("redis", true, 1, 200_000.0),
            rec("ec", false, 2, 500_000.0),
            rec("redis", true, 2, 250_000.0),
            rec("ec", false, 3, 450_000.0),
            rec("redis", true, 3, 150_000.0),
        ];
        let table = render_table(&records);
        assert!(
            table.contains("publish, tier A — median (min–max) of 3 trial(s)"),
            "{table}"
        );
        assert!(table.contains("ec÷redis"), "{table}");
        assert!(table.contains("450k (400k–500k)"), "{table}");
        assert!(table.contains("*200k (150k–250k)"), "{table}");
        assert!(table.contains("2.25×"), "{table}");
        assert!(table.contains("CONTENDED"), "{table}");
    }

    #[test]
    fn lookup_shows_the_ratios_of_its_goals() {
        let lookup = |system: &str, rate: f64| {
            let mut r = record(
                "lookup",
                system,
                crate::lookup::is_baseline(system),
                None,
                1,
                Idle {
                    percent: 99.0,
                    contended: false,
                },
            );
            r.metrics.insert("lookups_per_s".into(), rate);
            r
        };
        let table = render_table(&[
            lookup("sdk-cache", 2_000_000.0),
            lookup("gateway", 30_000.0),
            lookup("consul-x2", 4_000.0),
            lookup("floor", 32_000.0),
            lookup("floor-threads", 40_000.0),
        ]);
        assert!(table.contains("sdk-cache÷consul-x2"), "{table}");
        assert!(table.contains("gateway÷floor"), "{table}");
        assert!(table.contains("gateway÷floor-threads"), "{table}");
        assert!(!table.contains("sdk-cache÷floor"), "{table}");
        assert!(
            table.contains("500.00×") && table.contains("0.94×") && table.contains("0.75×"),
            "{table}"
        );
    }

    #[test]
    fn human_numbers() {
        assert_eq!(human(1_234_567.0), "1.23M");
        assert_eq!(human(354_000.0), "354k");
        assert_eq!(human(6_300.0), "6.3k");
        assert_eq!(human(223.4), "223");
        assert_eq!(human(12.34), "12.3");
        assert_eq!(human(1.234), "1.23");
        assert_eq!(human(3.0), "3");
    }

    #[test]
    fn growth_table_has_a_row_per_point_and_ratios() {
        let point = |system: &str, baseline: bool, x: u64, rate: f64| {
            let mut r = record(
                "growth-ids",
                system,
                baseline,
                Some(Tier::A),
                1,
                Idle {
                    percent: 99.0,
                    contended: false,
                },
            );
            r.metrics.insert("ev_per_s".into(), rate);
            r.params = serde_json::json!({ "x": x });
            r
        };
        let table = render_table(&[
            point("ec", false, 1, 400_000.0),
            point("redis", true, 1, 200_000.0),
            point("ec", false, 10_000, 100_000.0),
            point("redis", true, 10_000, 200_000.0),
        ]);
        assert!(table.contains("growth-ids, tier A"), "{table}");
        let rows: Vec<&str> = table
            .lines()
            .filter(|l| l.starts_with("events/s"))
            .collect();
        assert_eq!(rows.len(), 2, "{table}");
        assert!(
            rows[0].contains("400k") && rows[0].contains("2.00×"),
            "{table}"
        );
        assert!(
            rows[1].contains("10k") && rows[1].contains("0.50×"),
            "{table}"
        );
    }
}
