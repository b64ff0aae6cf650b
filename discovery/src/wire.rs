//! Consul's JSON quirks, in one place: `null` where a list or map is empty, and durations
//! written as Go duration strings.
//!
//! Invariants: a `null` (or missing) `Tags`, `Meta` or `Checks` decodes as empty — Consul 1.8
//! sends `null` for them whenever they are empty — and a [`Duration`] is always written in a
//! unit that keeps it exact (`"10s"`, `"500ms"`, `"1500us"`), never rounded.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Decodes `null` (and, with `#[serde(default)]`, a missing field) as `T::default()`.
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A duration as Go's `time.ParseDuration` reads it, in the largest unit that is exact.
pub fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        "0s".to_string()
    } else if nanos.is_multiple_of(1_000_000_000) {
        format!("{}s", nanos / 1_000_000_000)
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{}ms", nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) {
        format!("{}us", nanos / 1_000)
    } else {
        format!("{nanos}ns")
    }
}

/// `serialize_with` for a [`Duration`] field.
pub(crate) fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&go_duration(*d))
}

/// `serialize_with` for an `Option<Duration>` field (used with `skip_serializing_if`).
pub(crate) fn ser_opt_duration<S: Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&go_duration(*d)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_stay_exact() {
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(go_duration(Duration::from_micros(1500)), "1500us");
        assert_eq!(go_duration(Duration::from_nanos(7)), "7ns");
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_secs(90)), "90s");
    }

    #[test]
    fn null_and_missing_are_empty() {
        #[derive(Deserialize)]
        struct T {
            #[serde(default, deserialize_with = "null_as_default")]
            tags: Vec<String>,
        }
        let t: T = serde_json::from_str(r#"{"tags":null}"#).expect("null");
        assert!(t.tags.is_empty());
        let t: T = serde_json::from_str(r#"{}"#).expect("missing");
        assert!(t.tags.is_empty());
        let t: T = serde_json::from_str(r#"{"tags":["a"]}"#).expect("value");
        assert_eq!(t.tags, ["a"]);
    }
}
