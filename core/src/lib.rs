//! Domain types every Event Catcher crate shares.
//!
//! A [`DataId`] names one stream of events; a [`NodeId`] names one storage node; an [`Offset`]
//! is a position in one data ID's log; an [`Epoch`] is one primary's term over it. They are
//! newtypes so that the compiler catches a node ID passed where a data ID belongs (or an
//! epoch where an offset belongs), and so that a value of the ID types is always valid: the
//! only way to build one from user input is `parse`, which checks the rules.

pub mod auth;

use std::fmt;
use std::str::FromStr;

/// Longest data ID or node ID accepted, in characters.
pub const MAX_ID_LEN: usize = 128;

/// Why a string is not a valid data ID or node ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string is empty.
    #[error("{kind} is empty; it must be 1-128 characters of [A-Za-z0-9._-]")]
    Empty {
        /// "data ID" or "node ID".
        kind: &'static str,
    },
    /// The string is longer than [`MAX_ID_LEN`].
    #[error("{kind} is {len} characters long; the limit is 128 characters of [A-Za-z0-9._-]")]
    TooLong {
        /// "data ID" or "node ID".
        kind: &'static str,
        /// Length in characters.
        len: usize,
    },
    /// The string holds a character outside `[A-Za-z0-9._-]`.
    #[error("{kind} {value:?} contains {ch:?}; only [A-Za-z0-9._-] is allowed")]
    BadChar {
        /// "data ID" or "node ID".
        kind: &'static str,
        /// The rejected input, shortened to 64 characters.
        value: String,
        /// The first character that is not allowed.
        ch: char,
    },
    /// The string is `.` or `..`.
    #[error("{kind} {value:?} is reserved; {kind}s may not be \".\" or \"..\"")]
    Reserved {
        /// "data ID" or "node ID".
        kind: &'static str,
        /// The rejected input.
        value: String,
    },
}

fn check_id(kind: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    let len = s.chars().count();
    if len > MAX_ID_LEN {
        return Err(IdError::TooLong { kind, len });
    }
    if let Some(ch) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(IdError::BadChar {
            kind,
            value: s.chars().take(64).collect(),
            ch,
        });
    }
    if s == "." || s == ".." {
        return Err(IdError::Reserved {
            kind,
            value: s.to_owned(),
        });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Checks `s` against the ID rules: 1-128 characters of `[A-Za-z0-9._-]`, not `.` or `..`.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check_id($kind, s)?;
                Ok(Self(s.to_owned()))
            }

            /// The ID as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// Names one stream of events. Never used as a path on disk.
    DataId,
    "data ID"
);
id_type!(
    /// Names one storage node; also its Consul service ID.
    NodeId,
    "node ID"
);

/// A position in one data ID's log: dense, starting at 0, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub u64);

impl Offset {
    /// The offset after this one.
    pub fn next(self) -> Offset {
        Offset(self.0 + 1)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A leader epoch: which primary's term wrote an event. Epochs of a data ID only grow from
/// one primary to the next (each claim in Consul takes a new one); 0 is the epoch of a node
/// writing outside any mapping. On disk and on the wire it is the bare number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Milliseconds since the Unix epoch: the timestamp carried by every event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TimestampMs(pub i64);

impl TimestampMs {
    /// The current wall-clock time.
    pub fn now() -> TimestampMs {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        TimestampMs(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        for ok in ["a", "test-data", "A.b_c-9", "..a", &"x".repeat(128)] {
            assert!(DataId::parse(ok).is_ok(), "{ok:?} should be valid");
        }
    }

    #[test]
    fn rejects_invalid_ids_with_the_rule() {
        let cases = [
            ("", "empty"),
            (".", "reserved"),
            ("..", "reserved"),
            ("../x", "'/'"),
            ("a b", "' '"),
            ("caf\u{e9}", "'\u{e9}'"),
        ];
        for (bad, needle) in cases {
            let err = DataId::parse(bad).expect_err(bad).to_string();
            assert!(err.contains(needle), "{bad:?}: {err}");
            assert!(err.starts_with("data ID"), "{err}");
        }
        let long = "x".repeat(129);
        let err = DataId::parse(&long).expect_err("129 chars").to_string();
        assert!(err.contains("129 characters"), "{err}");
    }
}
