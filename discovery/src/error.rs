//! The one error type of this crate, [`DiscoveryError`].
//!
//! Every variant carries the URL that was asked (or the address that was refused), and its
//! `Display` says what to check, because the person reading it is usually an operator looking
//! at a log line (`error = %e`), not a programmer walking the `source()` chain. For that
//! reason the transport variant also prints the innermost cause ("Connection refused"),
//! which `reqwest`'s own message hides in its source chain.

/// What went wrong while talking to Consul.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The Consul address given to [`crate::ConsulClient::new`] cannot be used.
    #[error(
        "invalid Consul address {address:?}: {reason} \
         (expected \"http://host:port\" or \"host:port\", e.g. \"http://127.0.0.1:8500\")"
    )]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// Why it was refused.
        reason: String,
    },

    /// The CA file for Consul over HTTPS (`consul.ca_file`) cannot be used.
    #[error("cannot use {} as the CA of Consul's HTTPS certificate (consul.ca_file): {reason}", path.display())]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A KV key (or service ID/name) that cannot be sent to Consul without it reading or
    /// writing a different key (Go's HTTP router rewrites `a//b`, `a/./b`, `a/../b`).
    #[error("invalid Consul key {key:?}: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// No HTTP answer: connection refused, reset, timed out, or the body broke off.
    #[error(
        "cannot reach Consul at {url}: {} (is Consul running at {base}?)",
        root_cause(source)
    )]
    Transport {
        /// The request URL.
        url: String,
        /// The agent's base URL, for the hint.
        base: String,
        /// The underlying error.
        source: reqwest::Error,
    },

    /// Consul answered with a status this call does not expect.
    #[error("Consul at {url} answered {status}: {body}")]
    Status {
        /// The request URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The answer's body, shortened to a few hundred bytes (Consul puts its reason here,
        /// e.g. "No cluster leader" or "Permission denied").
        body: String,
    },

    /// Consul refused the request for lack of ACL rights (HTTP 403), or hid what the token
    /// may not read (detected by a probe, e.g. an empty listing of an unreadable prefix).
    #[error(
        "permission denied by Consul's ACLs at {url} ({body}); give consul.token the rights in README \"Consul ACLs\" (key read on the mapping prefix, service read)"
    )]
    PermissionDenied {
        /// The request URL.
        url: String,
        /// Consul's reason, e.g. "Permission denied" or "ACL not found".
        body: String,
    },

    /// Consul answered 2xx but the body is not what this call expects.
    #[error(
        "cannot decode Consul's answer from {url}: {source} (is {url} really a Consul 1.x agent?)"
    )]
    Decode {
        /// The request URL.
        url: String,
        /// The JSON error.
        source: serde_json::Error,
    },

    /// A blocking-query endpoint answered without a usable `X-Consul-Index` header.
    #[error(
        "Consul at {url} answered without a valid X-Consul-Index header ({header:?}); \
         is a proxy between us and Consul stripping headers?"
    )]
    MissingIndex {
        /// The request URL.
        url: String,
        /// The header's value, if there was one.
        header: Option<String>,
    },
}

/// The innermost error of a chain, which is the part a human can act on
/// ("Connection refused", "operation timed out") — `reqwest` says only "error sending
/// request" at the top.
fn root_cause(e: &reqwest::Error) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    if e.is_timeout() {
        format!("timed out ({cur})")
    } else {
        cur.to_string()
    }
}

impl DiscoveryError {
    /// True when Consul could not be reached at all (as opposed to answering with an error);
    /// callers use it to choose between "retry later" and "report the answer".
    pub fn is_transport(&self) -> bool {
        matches!(self, DiscoveryError::Transport { .. })
    }

    /// True when Consul's ACLs refused the request.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, DiscoveryError::PermissionDenied { .. })
    }
}
