//! Who may do what: secrets compared in constant time, client tokens with permissions per
//! data-ID pattern, and the protected-mode rule for services exposed without security.
//!
//! Kept free of gRPC so that the node and the gateway make the same decisions and the rules
//! are unit-tested once; each service turns an [`Refusal`] into a status (`UNAUTHENTICATED`
//! or `PERMISSION_DENIED`) in its own thin layer.
//!
//! Invariants:
//! - A [`Secret`] never prints itself (`Debug` and `Display` show `<redacted>`), and is
//!   compared without an early exit on the first differing byte.
//! - With tokens configured, every guarded call needs a token that grants it; an unknown
//!   token is refused like a missing one, so a caller cannot probe which tokens exist.
//! - Without tokens (and without TLS), protected mode refuses state changes from any peer
//!   that is not on loopback; an unknown peer address counts as remote (fail closed).

use std::fmt;
use std::net::SocketAddr;

/// A shared secret or bearer token. Never printed; compared in constant time.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`; `None` when it is empty (an empty secret would match an empty header).
    pub fn new(value: impl Into<String>) -> Option<Secret> {
        let value = value.into();
        (!value.trim().is_empty()).then(|| Secret(value.trim().to_owned()))
    }

    /// The secret itself, for sending it (never for printing it).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this secret. Takes the same time whatever the content of
    /// `presented` (only its length may show), so the secret cannot be guessed byte by byte
    /// from response times.
    pub fn matches(&self, presented: &str) -> bool {
        constant_time_eq(self.0.as_bytes(), presented.as_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Byte equality without an early exit: every byte is looked at whatever came before.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keeps the optimiser from turning the fold back into a comparison that stops early.
    std::hint::black_box(diff) == 0
}

/// A data-ID pattern: `*` matches any run of characters (also none), everything else
/// matches itself. `orders.*` matches `orders.eu` and `orders.`, `*` matches everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `data_id` matches.
    pub fn matches(&self, data_id: &str) -> bool {
        glob(self.0.as_bytes(), data_id.as_bytes())
    }
}

/// Iterative glob with backtracking to the last `*`: linear in practice, never recursive, so
/// a hostile data ID cannot make it blow up.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// One permission a token may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permission {
    /// Mappings (put, delete), `RegisterNode`, promotion.
    Admin,
    /// Publish to data IDs matching the pattern.
    Publish(Pattern),
    /// Read (stream, info, status) data IDs matching the pattern.
    Read(Pattern),
    /// Create (by publishing) data IDs matching the pattern that the node does not hold yet.
    Create(Pattern),
}

impl Permission {
    /// Parses `admin`, `publish[:PATTERN]`, `read[:PATTERN]` or `create[:PATTERN]` (no
    /// pattern = `*`).
    pub fn parse(s: &str) -> Result<Permission, String> {
        let (kind, pattern) = match s.split_once(':') {
            Some((k, p)) => (k, Some(p)),
            None => (s, None),
        };
        let given = pattern;
        let pattern = || {
            let p = given.unwrap_or("*");
            if p.is_empty() {
                Err(format!(
                    "permission {s:?} has an empty pattern; use * for every data ID"
                ))
            } else {
                Ok(Pattern(p.to_owned()))
            }
        };
        match kind.to_ascii_lowercase().as_str() {
            "admin" if given.is_none() => Ok(Permission::Admin),
            "publish" => Ok(Permission::Publish(pattern()?)),
            "read" => Ok(Permission::Read(pattern()?)),
            "create" | "auto_create" => Ok(Permission::Create(pattern()?)),
            _ => Err(format!(
                "unknown permission {s:?}: use admin, publish[:PATTERN], read[:PATTERN] or create[:PATTERN] (PATTERN: data ID with * wildcards)"
            )),
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Permission::Admin => f.write_str("admin"),
            Permission::Publish(p) => write!(f, "publish:{}", p.as_str()),
            Permission::Read(p) => write!(f, "read:{}", p.as_str()),
            Permission::Create(p) => write!(f, "create:{}", p.as_str()),
        }
    }
}

/// What a call wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// Change mappings or registrations, promote a replica.
    Admin,
    /// Publish to this data ID.
    Publish(&'a str),
    /// Read this data ID.
    Read(&'a str),
    /// Create this data ID by publishing to it.
    Create(&'a str),
}

impl Action<'_> {
    /// Whether the action changes state (what protected mode guards).
    pub fn changes_state(&self) -> bool {
        !matches!(self, Action::Read(_))
    }
}

impl fmt::Display for Action<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Admin => f.write_str("admin"),
            Action::Publish(d) => write!(f, "publish:{d}"),
            Action::Read(d) => write!(f, "read:{d}"),
            Action::Create(d) => write!(f, "create:{d}"),
        }
    }
}

/// One configured credential: the token and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// How logs and errors name it: `token #N` (its position in the configuration), never
    /// the token itself.
    pub label: String,
    token: Secret,
    /// What it may do.
    pub permissions: Vec<Permission>,
}

impl Grant {
    /// Whether this credential may do `action`.
    pub fn allows(&self, action: Action<'_>) -> bool {
        self.permissions.iter().any(|p| match (p, action) {
            (Permission::Admin, Action::Admin) => true,
            (Permission::Publish(p), Action::Publish(d))
            | (Permission::Read(p), Action::Read(d))
            | (Permission::Create(p), Action::Create(d)) => p.matches(d),
            _ => false,
        })
    }
}

/// The configured client credentials (`security.tokens`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenTable {
    grants: Vec<Grant>,
}

impl TokenTable {
    /// Parses entries `"<token> <permission> <permission> ..."` (the permissions as in
    /// [`Permission::parse`]). Errors name the entry by position, never by its token.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<TokenTable, String> {
        let mut grants = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let label = format!("token #{}", i + 1);
            let mut words = entry.as_ref().split_whitespace();
            let Some(token) = words.next().and_then(Secret::new) else {
                continue;
            };
            let permissions = words
                .map(Permission::parse)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{label}: {e}"))?;
            if permissions.is_empty() {
                return Err(format!(
                    "{label} has no permissions: write \"<token> admin publish:orders.* read:*\" (any of admin, publish, read, create)"
                ));
            }
            if grants.iter().any(|g: &Grant| g.token == token) {
                return Err(format!("{label} repeats an earlier token"));
            }
            grants.push(Grant {
                label,
                token,
                permissions,
            });
        }
        Ok(TokenTable { grants })
    }

    /// True when no credential is configured (client authentication is off).
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    /// The grant of `presented`, if it is a configured token. Every configured token is
    /// compared, so the time taken does not say which one matched.
    pub fn find(&self, presented: &str) -> Option<&Grant> {
        let mut found = None;
        for g in &self.grants {
            if g.token.matches(presented) && found.is_none() {
                found = Some(g);
            }
        }
        found
    }
}

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No credential, or one that is not configured: `UNAUTHENTICATED`.
    #[error("{0}")]
    Unauthenticated(String),
    /// A known credential without the permission, or protected mode: `PERMISSION_DENIED`.
    #[error("{0}")]
    Denied(String),
}

/// How a service guards its calls.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Client credentials; empty = no client authentication.
    pub tokens: TokenTable,
    /// Whether the listener uses TLS (then protected mode does not apply).
    pub tls: bool,
    /// `security.protected_mode`: refuse remote state changes when nothing is secured.
    pub protected_mode: bool,
}

impl Policy {
    /// Whether a caller presenting `bearer` may use calls that need no particular
    /// permission (status, lists filtered by permission): any configured token, or any
    /// caller when no tokens are configured.
    pub fn authenticate(&self, bearer: Option<&str>) -> Result<(), Refusal> {
        if self.tokens.is_empty() {
            return Ok(());
        }
        match bearer {
            Some(presented) if self.tokens.find(presented).is_some() => Ok(()),
            Some(_) => Err(Refusal::Unauthenticated(
                "the bearer token is not a configured credential (security.tokens)".into(),
            )),
            None => Err(Refusal::Unauthenticated(
                "this service requires a credential: send metadata \"authorization: Bearer <token>\" (SDK and CLI: --token or EVENT_CATCHER_CLIENT_TOKEN)".into(),
            )),
        }
    }

    /// Whether [`Policy::check`] of `action` depends on who calls at all: always with
    /// tokens; without, only a state change in protected mode without TLS (it depends on the
    /// peer). When it does not, `check` allows every caller, and a hot path need not find
    /// out who called.
    pub fn depends_on_caller(&self, action: Action<'_>) -> bool {
        !self.tokens.is_empty() || (self.protected_mode && !self.tls && action.changes_state())
    }

    /// Whether `action` by a caller presenting `bearer` (the token of an `authorization:
    /// Bearer` header) from `peer` may go ahead.
    pub fn check(
        &self,
        bearer: Option<&str>,
        peer: Option<SocketAddr>,
        action: Action<'_>,
    ) -> Result<(), Refusal> {
        if !self.tokens.is_empty() {
            let Some(presented) = bearer else {
                return Err(Refusal::Unauthenticated(format!(
                    "this call needs a credential with permission {action}: send metadata \"authorization: Bearer <token>\" (SDK and CLI: --token or EVENT_CATCHER_CLIENT_TOKEN)"
                )));
            };
            let Some(grant) = self.tokens.find(presented) else {
                return Err(Refusal::Unauthenticated(
                    "the bearer token is not a configured credential (security.tokens)".into(),
                ));
            };
            if !grant.allows(action) {
                return Err(Refusal::Denied(format!(
                    "{} lacks permission {action}",
                    grant.label
                )));
            }
            return Ok(());
        }
        if self.protected_mode && !self.tls && action.changes_state() && !is_loopback(peer) {
            return Err(Refusal::Denied(protected_message(peer, action)));
        }
        Ok(())
    }
}

/// Whether `peer` is on this machine's loopback; an unknown peer is not.
pub fn is_loopback(peer: Option<SocketAddr>) -> bool {
    peer.is_some_and(|p| match p.ip() {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        // `::ffff:127.0.0.1` from a dual-stack listener is loopback too.
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    })
}

fn protected_message(peer: Option<SocketAddr>, action: Action<'_>) -> String {
    let from = peer.map_or_else(|| "an unknown address".to_owned(), |p| p.ip().to_string());
    format!(
        "protected mode: {action} from {from} refused because this service is reachable beyond loopback with neither TLS nor credentials configured. \
         Configure client credentials (security.tokens, e.g. EVENT_CATCHER_SECURITY_TOKENS=\"<token> admin publish:* read:* create:*\") and present one as \"authorization: Bearer <token>\", \
         or bind to 127.0.0.1, or opt out explicitly with security.protected_mode: false (EVENT_CATCHER_SECURITY_PROTECTED_MODE=false)"
    )
}

/// The token of an `authorization` header value `Bearer <token>` (scheme in any case).
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(s: &str) -> Option<SocketAddr> {
        Some(s.parse().expect("socket address"))
    }

    #[test]
    fn secrets_compare_and_never_print() {
        let s = Secret::new("abc123").expect("non-empty");
        assert!(s.matches("abc123"));
        assert!(!s.matches("abc124"));
        assert!(!s.matches("abc12"));
        assert!(!s.matches(""));
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
        assert!(Secret::new("  ").is_none());
    }

    #[test]
    fn a_check_that_does_not_depend_on_the_caller_allows_everyone() {
        let policies = [
            Policy::default(),
            Policy {
                protected_mode: true,
                ..Policy::default()
            },
            Policy {
                protected_mode: true,
                tls: true,
                ..Policy::default()
            },
            Policy {
                tokens: TokenTable::parse(&["t read"]).expect("valid"),
                ..Policy::default()
            },
        ];
        let actions = [
            Action::Admin,
            Action::Read("d"),
            Action::Publish("d"),
            Action::Create("d"),
        ];
        let callers = [
            (None, peer("10.0.0.1:1")),
            (Some("nope"), peer("127.0.0.1:1")),
            (None, None),
        ];
        for policy in &policies {
            for action in actions {
                if policy.depends_on_caller(action) {
                    continue;
                }
                for (bearer, from) in callers {
                    assert!(
                        policy.check(bearer, from, action).is_ok(),
                        "{policy:?} {action} {bearer:?} {from:?}"
                    );
                }
            }
        }
        assert!(!Policy::default().depends_on_caller(Action::Admin));
        assert!(policies[1].depends_on_caller(Action::Admin));
        assert!(!policies[1].depends_on_caller(Action::Read("d")));
    }

    #[test]
    fn patterns() {
        let p = |s: &str| Pattern(s.to_owned());
        assert!(p("orders.*").matches("orders.eu"));
        assert!(p("orders.*").matches("orders."));
        assert!(!p("orders.*").matches("orders"));
        assert!(!p("orders.*").matches("xorders.eu"));
        assert!(p("*").matches("anything"));
        assert!(p("*.eu").matches("orders.eu"));
        assert!(p("a*b*c").matches("aXXbYYc"));
        assert!(!p("a*b*c").matches("aXXbYY"));
        assert!(p("exact").matches("exact"));
        assert!(!p("exact").matches("exactly"));
        // Many stars against a long non-matching text stays cheap (no recursion).
        let long = "a".repeat(128);
        assert!(!p("*a*a*a*a*a*a*a*b").matches(&long));
    }

    #[test]
    fn token_entries_parse_and_grant() {
        let t = TokenTable::parse(&["adm admin", "w publish:orders.* read:* create:orders.*", ""])
            .expect("valid");
        let adm = t.find("adm").expect("adm");
        assert!(adm.allows(Action::Admin));
        assert!(!adm.allows(Action::Publish("orders.eu")));
        let w = t.find("w").expect("w");
        assert_eq!(w.label, "token #2");
        assert!(w.allows(Action::Publish("orders.eu")));
        assert!(!w.allows(Action::Publish("billing")));
        assert!(w.allows(Action::Read("billing")));
        assert!(w.allows(Action::Create("orders.x")));
        assert!(!w.allows(Action::Admin));
        assert!(t.find("nope").is_none());

        assert!(TokenTable::parse(&["lonely"]).is_err());
        let e = TokenTable::parse(&["t frobnicate"]).expect_err("bad permission");
        assert!(e.contains("token #1") && e.contains("frobnicate"), "{e}");
        assert!(!e.contains(" t "), "never shows the token: {e}");
        assert!(TokenTable::parse(&["t admin", "t read"]).is_err());
    }

    #[test]
    fn policy_with_tokens_needs_a_token_that_grants() {
        let policy = Policy {
            tokens: TokenTable::parse(&["w publish:orders.*"]).expect("valid"),
            tls: false,
            protected_mode: true,
        };
        let local = peer("127.0.0.1:5000");
        assert!(matches!(
            policy.check(None, local, Action::Publish("orders.1")),
            Err(Refusal::Unauthenticated(_))
        ));
        assert!(matches!(
            policy.check(Some("x"), local, Action::Publish("orders.1")),
            Err(Refusal::Unauthenticated(_))
        ));
        let denied = policy.check(Some("w"), local, Action::Admin);
        assert!(
            matches!(&denied, Err(Refusal::Denied(m)) if m.contains("admin")),
            "{denied:?}"
        );
        assert_eq!(
            policy.check(Some("w"), peer("10.0.0.9:1"), Action::Publish("orders.1")),
            Ok(())
        );
    }

    #[test]
    fn protected_mode_refuses_remote_state_changes_only() {
        let policy = Policy {
            tokens: TokenTable::default(),
            tls: false,
            protected_mode: true,
        };
        for local in [
            "127.0.0.1:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
            "127.8.9.10:1",
        ] {
            assert_eq!(
                policy.check(None, peer(local), Action::Admin),
                Ok(()),
                "{local}"
            );
        }
        for remote in [
            "10.1.2.3:1",
            "192.168.1.1:9",
            "[fe80::1]:1",
            "[::ffff:10.0.0.1]:1",
        ] {
            let r = policy.check(None, peer(remote), Action::Publish("x"));
            assert!(
                matches!(&r, Err(Refusal::Denied(m)) if m.contains("protected mode") && m.contains("security.protected_mode: false")),
                "{remote}: {r:?}"
            );
            assert_eq!(policy.check(None, peer(remote), Action::Read("x")), Ok(()));
        }
        assert!(
            policy.check(None, None, Action::Admin).is_err(),
            "unknown peer is remote"
        );
        let off = Policy {
            protected_mode: false,
            ..policy.clone()
        };
        assert_eq!(off.check(None, peer("10.1.2.3:1"), Action::Admin), Ok(()));
        let tls = Policy {
            tls: true,
            ..policy
        };
        assert_eq!(tls.check(None, peer("10.1.2.3:1"), Action::Admin), Ok(()));
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer   abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("abc"), None);
    }
}
