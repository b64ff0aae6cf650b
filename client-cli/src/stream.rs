//! `ec-client stream`: print a data ID's events, one per line, resuming across failovers.
//!
//! Text lines are `OFFSET TIMESTAMP DATA` with the commit time in RFC 3339 (UTC, ms) and the
//! payload as text when it is valid, printable UTF-8 on one line, else as `0x` and hex, so that
//! every event is exactly one line. `--json` prints one JSON object per line instead, with the
//! payload's encoding named. Output is flushed after every batch so a pipe sees events live.

use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use color_eyre::eyre::{Result, WrapErr};
use ec_client::{Client, Delivery, Event, Offset, Start, StreamOptions, TimestampMs};
use tokio_stream::StreamExt;

/// Flags of `ec-client stream`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("start").multiple(false))]
pub(crate) struct StreamArgs {
    /// Data ID to read: 1-128 characters of [A-Za-z0-9._-].
    #[arg(long, value_name = "ID")]
    data_id: String,
    /// Start at this offset exactly.
    #[arg(long, value_name = "N", group = "start")]
    offset: Option<u64>,
    /// Start at the earliest retained event, or only at events written from now on
    /// [default: earliest].
    #[arg(long, value_name = "WHERE", group = "start")]
    from: Option<Named>,
    /// Start at the first event committed at or after this time, RFC 3339
    /// (e.g. 2024-05-01T12:00:00Z; without a zone, UTC).
    #[arg(long, value_name = "TIME", group = "start", value_parser = parse_since)]
    since: Option<TimestampMs>,
    /// Exit (status 0) after this many events.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Exit at the end of the stored events instead of waiting for new ones.
    #[arg(long)]
    no_follow: bool,
    /// Give up after this many failed attempts in a row to reach a node [default: keep
    /// retrying, with backoff up to 2 s, as a follower should].
    #[arg(long, value_name = "N")]
    retries: Option<u32>,
    /// Read through the gateway's Subscribe (proxy mode) instead of from the nodes directly.
    #[arg(long)]
    pub(crate) proxy: bool,
    /// Print one JSON object per line: offset, timestamp (ms), time, node, encoding
    /// ("utf8" or "hex") and data.
    #[arg(long)]
    json: bool,
}

/// Named start positions.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Named {
    /// The earliest retained event.
    Earliest,
    /// Only events written after the stream opens.
    Latest,
}

fn parse_since(s: &str) -> Result<TimestampMs, String> {
    let time = humantime::parse_rfc3339_weak(s).map_err(|e| {
        format!("{e}; expected RFC 3339 like 2024-05-01T12:00:00Z or 2024-05-01 12:00:00")
    })?;
    let ms = time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "times before 1970 are not supported".to_owned())?
        .as_millis();
    Ok(TimestampMs(i64::try_from(ms).unwrap_or(i64::MAX)))
}

pub(crate) async fn run(client: &Client, args: StreamArgs) -> Result<()> {
    let start = match (args.offset, args.from, args.since) {
        (Some(n), _, _) => Start::Offset(Offset(n)),
        (_, Some(Named::Latest), _) => Start::Latest,
        (_, _, Some(t)) => Start::Time(t),
        _ => Start::Earliest,
    };
    let opts = StreamOptions::from_start(start)
        .follow(!args.no_follow)
        .max_count(args.count)
        .max_retries(args.retries);
    let mut deliveries = if args.proxy {
        client.subscribe(&args.data_id, opts)
    } else {
        client.stream(&args.data_id, opts)
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    while let Some(delivery) = deliveries.next().await {
        let delivery = delivery.wrap_err_with(|| format!("streaming data ID {}", args.data_id))?;
        match delivery {
            Delivery::Batch { node_id, events } => {
                for event in &events {
                    let line = if args.json {
                        json_line(event, &node_id)
                    } else {
                        text_line(event)
                    };
                    if !write_line(&mut out, &line)? {
                        return Ok(());
                    }
                }
                if !flush(&mut out)? {
                    return Ok(());
                }
            }
            Delivery::Failover {
                from,
                to,
                resume_at,
                reason,
            } => {
                // One line per failover, once the stream goes on: the loss itself is not
                // printed (nor logged by the SDK as a warning), so it is never said twice.
                // While no node answers, the SDK warns of each failed attempt.
                eprintln!(
                    "failover: {} -> {to}, resumed at {resume_at} ({reason})",
                    from.as_deref().unwrap_or("(no stream yet)")
                );
            }
            Delivery::Lost { .. } => {}
        }
    }
    flush(&mut out)?;
    Ok(())
}

/// Writes one line; `false` when the reader went away (e.g. `| head`), which ends quietly.
fn write_line(out: &mut impl Write, line: &str) -> Result<bool> {
    match writeln!(out, "{line}") {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).wrap_err("cannot write to standard output"),
    }
}

fn flush(out: &mut impl Write) -> Result<bool> {
    match out.flush() {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).wrap_err("cannot write to standard output"),
    }
}

/// The payload as one line of text, if it is printable UTF-8.
fn printable(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data)
        .ok()
        .filter(|s| !s.chars().any(|c| c.is_control() && c != '\t'))
}

fn hex(data: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

fn rfc3339(ts: TimestampMs) -> String {
    let time = u64::try_from(ts.0)
        .ok()
        .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
        .unwrap_or(UNIX_EPOCH);
    humantime::format_rfc3339_millis(time).to_string()
}

pub(crate) fn text_line(event: &Event) -> String {
    let data = match printable(&event.data) {
        Some(text) => text.to_owned(),
        None => format!("0x{}", hex(&event.data)),
    };
    format!("{} {} {data}", event.offset, rfc3339(event.timestamp))
}

pub(crate) fn json_line(event: &Event, node_id: &str) -> String {
    let (encoding, data) = match std::str::from_utf8(&event.data) {
        Ok(text) => ("utf8", text.to_owned()),
        Err(_) => ("hex", hex(&event.data)),
    };
    serde_json::json!({
        "offset": event.offset.0,
        "timestamp": event.timestamp.0,
        "time": rfc3339(event.timestamp),
        "node": node_id,
        "encoding": encoding,
        "data": data,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn event(data: &'static [u8]) -> Event {
        Event {
            offset: Offset(7),
            timestamp: TimestampMs(1_714_564_800_123),
            data: Bytes::from_static(data),
        }
    }

    #[test]
    fn text_lines_show_printable_text_and_hex_otherwise() {
        assert_eq!(
            text_line(&event(b"hello world")),
            "7 2024-05-01T12:00:00.123Z hello world"
        );
        assert_eq!(
            text_line(&event(b"\x00\x01\xff")),
            "7 2024-05-01T12:00:00.123Z 0x0001ff"
        );
        assert!(text_line(&event(b"two\nlines")).ends_with("0x74776f0a6c696e6573"));
    }

    #[test]
    fn json_lines_name_the_encoding() {
        let v: serde_json::Value =
            serde_json::from_str(&json_line(&event(b"\xff"), "node1")).expect("json");
        assert_eq!(v["encoding"], "hex");
        assert_eq!(v["data"], "ff");
        assert_eq!(v["offset"], 7);
        assert_eq!(v["node"], "node1");
        let v: serde_json::Value =
            serde_json::from_str(&json_line(&event(b"a\"b\n"), "n")).expect("json");
        assert_eq!(
            (v["encoding"].as_str(), v["data"].as_str()),
            (Some("utf8"), Some("a\"b\n"))
        );
    }

    #[test]
    fn since_accepts_rfc3339_and_names_the_format() {
        assert_eq!(
            parse_since("2024-05-01T12:00:00.123Z"),
            Ok(TimestampMs(1_714_564_800_123))
        );
        assert_eq!(
            parse_since("2024-05-01 12:00:00"),
            Ok(TimestampMs(1_714_564_800_000))
        );
        let err = parse_since("yesterday").expect_err("not a time");
        assert!(err.contains("RFC 3339"), "{err}");
    }
}
