//! The `:` command line: parsing a typed line into a [`Command`], and the seek targets.
//!
//! The command names come from [`crate::keymap::COMMANDS`] (the help overlay's list), so a
//! command shown in the help is a command the parser knows. Errors are full sentences that
//! say what was expected, shown on the status line.

use std::time::{SystemTime, UNIX_EPOCH};

use ec_core::{DataId, TimestampMs};

use crate::keymap::COMMANDS;

/// Where a seek restarts the tail stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekTarget {
    /// This offset (clamped to the earliest retained one).
    Offset(u64),
    /// This many events before the end.
    FromEnd(u64),
    /// The earliest retained event.
    Earliest,
    /// Only new events.
    Latest,
    /// The first event committed at or after this time.
    Time(TimestampMs),
}

impl std::fmt::Display for SeekTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SeekTarget::Offset(o) => write!(f, "offset {o}"),
            SeekTarget::FromEnd(n) => write!(f, "{n} events before the end"),
            SeekTarget::Earliest => f.write_str("earliest"),
            SeekTarget::Latest => f.write_str("latest"),
            SeekTarget::Time(t) => write!(f, "@{}", format_rfc3339(t.0)),
        }
    }
}

/// A parsed `:` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Show the Mappings view.
    Mappings,
    /// Show the Health view.
    Health,
    /// Show the Replication view.
    Replication,
    /// Tail a data ID, or open the picker.
    Tail(Option<DataId>),
    /// Restart the tail stream.
    Seek(SeekTarget),
    /// Set (or clear, when empty) the mappings filter.
    Filter(String),
    /// Show the help.
    Help,
    /// Leave.
    Quit,
}

/// Parses a command line (without the leading `:`).
pub fn parse(line: &str) -> Result<Command, String> {
    let line = line.trim();
    let (name, rest) = line
        .split_once(char::is_whitespace)
        .map_or((line, ""), |(n, r)| (n, r.trim()));
    if name.is_empty() {
        return Err("empty command; try :help".into());
    }
    let Some(spec) = COMMANDS.iter().find(|c| c.names.contains(&name)) else {
        return Err(format!(
            "unknown command :{name}; commands are {}",
            COMMANDS
                .iter()
                .map(|c| format!(":{}", c.names[0]))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let no_args = |cmd: Command| {
        if rest.is_empty() {
            Ok(cmd)
        } else {
            Err(format!(":{} takes no argument", spec.names[0]))
        }
    };
    match spec.names[0] {
        "mappings" => no_args(Command::Mappings),
        "health" => no_args(Command::Health),
        "replication" => no_args(Command::Replication),
        "help" => no_args(Command::Help),
        "quit" => no_args(Command::Quit),
        "filter" => Ok(Command::Filter(rest.to_owned())),
        "tail" if rest.is_empty() => Ok(Command::Tail(None)),
        "tail" => DataId::parse(rest)
            .map(|d| Command::Tail(Some(d)))
            .map_err(|e| e.to_string()),
        "seek" => parse_seek(rest).map(Command::Seek),
        other => Err(format!(":{other} is listed but not implemented")),
    }
}

/// Parses the argument of `:seek`.
pub fn parse_seek(arg: &str) -> Result<SeekTarget, String> {
    const USAGE: &str =
        "use :seek N, :seek -N, :seek earliest, :seek latest or :seek @2026-11-26T12:00:00Z";
    let arg = arg.trim();
    match arg {
        "" => Err(format!("where to? {USAGE}")),
        "earliest" | "begin" | "start" => Ok(SeekTarget::Earliest),
        "latest" | "end" => Ok(SeekTarget::Latest),
        _ => {
            if let Some(time) = arg.strip_prefix('@') {
                return parse_time(time).map(SeekTarget::Time);
            }
            if let Some(n) = arg.strip_prefix('-') {
                return n
                    .parse::<u64>()
                    .map(SeekTarget::FromEnd)
                    .map_err(|_| format!("{arg:?} is not -N with N a whole number; {USAGE}"));
            }
            arg.parse::<u64>()
                .map(SeekTarget::Offset)
                .map_err(|_| format!("{arg:?} is not an offset; {USAGE}"))
        }
    }
}

/// An RFC 3339 time in UTC (`2026-11-26T12:00:00Z`, fraction optional, `Z` optional).
fn parse_time(s: &str) -> Result<TimestampMs, String> {
    let t = humantime::parse_rfc3339_weak(s.trim_end_matches('Z'))
        .map_err(|e| format!("{s:?} is not a time ({e}); use :seek @2026-11-26T12:00:00Z (UTC)"))?;
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("{s:?} is before 1970"))?
        .as_millis();
    Ok(TimestampMs(i64::try_from(ms).unwrap_or(i64::MAX)))
}

/// Milliseconds since the epoch as `2026-11-26T12:03:04.512Z`.
pub fn format_rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// `HH:MM:SS.mmm` (UTC) of a point in time.
pub fn clock_time(t: SystemTime) -> String {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    clock_time_ms(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// `HH:MM:SS.mmm` (UTC) of milliseconds since the epoch.
pub fn clock_time_ms(ms: i64) -> String {
    let ms = ms.max(0);
    let day_ms = ms % 86_400_000;
    let (h, m, s, milli) = (
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000,
    );
    format!("{h:02}:{m:02}:{s:02}.{milli:03}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seek_forms() {
        assert_eq!(parse_seek("42"), Ok(SeekTarget::Offset(42)));
        assert_eq!(parse_seek("-10"), Ok(SeekTarget::FromEnd(10)));
        assert_eq!(parse_seek("earliest"), Ok(SeekTarget::Earliest));
        assert_eq!(parse_seek("latest"), Ok(SeekTarget::Latest));
        assert_eq!(
            parse_seek("@2026-11-26T12:00:00Z"),
            Ok(SeekTarget::Time(TimestampMs(1_795_694_400_000)))
        );
        assert_eq!(
            parse_seek("@2026-11-26T12:00:00.250Z"),
            Ok(SeekTarget::Time(TimestampMs(1_795_694_400_250)))
        );
        for bad in ["", "x", "-x", "@yesterday", "1.5"] {
            let err = parse_seek(bad).expect_err(bad);
            assert!(err.contains(":seek"), "{bad}: {err}");
        }
    }

    #[test]
    fn commands_and_their_errors() {
        assert_eq!(parse("m"), Ok(Command::Mappings));
        assert_eq!(
            parse(" tail orders "),
            Ok(Command::Tail(Some(DataId::parse("orders").expect("valid"))))
        );
        assert_eq!(parse("t"), Ok(Command::Tail(None)));
        assert_eq!(parse("seek -5"), Ok(Command::Seek(SeekTarget::FromEnd(5))));
        assert_eq!(parse("filter "), Ok(Command::Filter(String::new())));
        assert!(parse("tail ../x").expect_err("bad id").contains("data ID"));
        assert!(parse("frobnicate").expect_err("unknown").contains(":seek"));
        assert!(parse("quit now").is_err());
    }

    #[test]
    fn clock_times_are_utc() {
        assert_eq!(clock_time_ms(1_795_694_584_512), "12:03:04.512");
        assert_eq!(
            format_rfc3339(1_795_694_584_512),
            "2026-11-26T12:03:04.512Z"
        );
    }
}
