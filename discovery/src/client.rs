//! [`ConsulClient`]: the HTTP plumbing shared by the KV, agent and health calls.
//!
//! Invariants kept here, so that no endpoint module can get them wrong:
//! - every URL path segment that comes from a caller (KV keys, service IDs and names) is
//!   percent-encoded segment by segment, and keys that Go's HTTP router would rewrite to a
//!   *different* key (`a//b`, `a/./b`, `a/../b`, a leading `/`) are refused before sending;
//! - query strings are built here from typed values only, so a flag such as `recurse` can
//!   appear only where an endpoint asks for it by name (Consul tests its presence, never
//!   its value);
//! - a blocking query's HTTP timeout is always longer than `wait + wait/16` (Consul's
//!   jitter) plus a margin, so a quiet watch ends with Consul's answer, not a client timeout;
//! - redirects are never followed (a 301 from Consul means a key was rewritten — following
//!   it would read or write another key) and no proxy is consulted (Consul is local).

use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, StatusCode};

use crate::blocking::QueryOptions;
use crate::error::DiscoveryError;

/// Timeout of a request that does not block (everything but a query with an index).
pub(crate) const PLAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to open a TCP connection to the agent; it is local, so this is generous.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How much of an error body goes into [`DiscoveryError::Status`].
const MAX_ERROR_BODY: usize = 512;

/// Bytes left as they are in a path segment: RFC 3986 "unreserved" characters. Everything
/// else (space, `%`, `?`, `#`, `/` inside a segment, non-ASCII) is encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A small typed client of one Consul agent's HTTP API. Cheap to clone (the connection pool
/// is shared).
#[derive(Clone, Debug)]
pub struct ConsulClient {
    http: reqwest::Client,
    /// `http://host:port`, no trailing slash.
    base: String,
    /// ACL token sent as `X-Consul-Token`, if any.
    token: Option<String>,
}

/// A decoded-enough HTTP answer: what every endpoint needs to decide what it means.
pub(crate) struct Answer {
    pub(crate) url: String,
    pub(crate) status: StatusCode,
    /// `X-Consul-Index`, raw (validated by [`Answer::index`]).
    index_header: Option<String>,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    /// The `X-Consul-Index` of a blocking-query endpoint, which must be there.
    pub(crate) fn index(&self) -> Result<u64, DiscoveryError> {
        self.index_header
            .as_deref()
            .and_then(|h| h.trim().parse::<u64>().ok())
            .ok_or_else(|| DiscoveryError::MissingIndex {
                url: self.url.clone(),
                header: self.index_header.clone(),
            })
    }

    /// Decodes a JSON body.
    pub(crate) fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, DiscoveryError> {
        serde_json::from_slice(&self.body).map_err(|source| DiscoveryError::Decode {
            url: self.url.clone(),
            source,
        })
    }

    /// `Ok(self)` when the status is 2xx, else a [`DiscoveryError::Status`] with the body.
    pub(crate) fn success(self) -> Result<Self, DiscoveryError> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(self.into_status_error())
        }
    }

    /// This answer as an unexpected-status error.
    pub(crate) fn into_status_error(self) -> DiscoveryError {
        let mut body = String::from_utf8_lossy(&self.body).trim().to_string();
        if body.len() > MAX_ERROR_BODY {
            let mut cut = MAX_ERROR_BODY;
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            body.truncate(cut);
            body.push('…');
        }
        if body.is_empty() {
            body = "(empty body)".to_string();
        }
        if self.status == StatusCode::FORBIDDEN {
            return DiscoveryError::PermissionDenied {
                url: self.url,
                body,
            };
        }
        DiscoveryError::Status {
            url: self.url,
            status: self.status.as_u16(),
            body,
        }
    }
}

/// One query-string parameter. Typed so that nothing but these can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Param {
    /// `recurse` (no value: Consul only looks at its presence).
    Recurse,
    /// `cas=<index>`.
    Cas(u64),
    /// `index=<index>`.
    Index(u64),
    /// `wait=<ms>ms`.
    Wait(Duration),
    /// `consistent` (no value).
    Consistent,
}

impl ConsulClient {
    /// A client of the agent at `base_url`: `"http://127.0.0.1:8500"` or `"127.0.0.1:8500"`
    /// (a bare `host:port` means plain HTTP). `token` is sent as `X-Consul-Token`.
    ///
    /// Plain `http` only; [`ConsulClient::with_ca_file`] speaks HTTPS. An `https` URL is
    /// refused here rather than failing on every request later.
    pub fn new(base_url: &str, token: Option<String>) -> Result<Self, DiscoveryError> {
        ConsulClient::build(base_url, token, None)
    }

    /// A client of the agent at `base_url` (`https://host:port`, or a bare `host:port`) over
    /// HTTPS, trusting only the CA certificate(s) in the PEM file `ca_file`; `None` is
    /// [`ConsulClient::new`].
    pub fn with_ca_file(
        base_url: &str,
        token: Option<String>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, DiscoveryError> {
        let Some(path) = ca_file else {
            return ConsulClient::new(base_url, token);
        };
        let ca_error = |reason: String| DiscoveryError::CaFile {
            path: path.to_owned(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| ca_error(format!("not a PEM certificate: {e}")))?;
        if certs.is_empty() {
            return Err(ca_error("it holds no PEM certificate".into()));
        }
        ConsulClient::build(base_url, token, Some(certs))
    }

    fn build(
        base_url: &str,
        token: Option<String>,
        ca: Option<Vec<reqwest::Certificate>>,
    ) -> Result<Self, DiscoveryError> {
        let base = normalize_base(base_url, ca.is_some())?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy();
        if let Some(certs) = ca {
            builder = builder.tls_built_in_root_certs(false).https_only(true);
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| DiscoveryError::InvalidAddress {
                address: base_url.to_string(),
                reason: format!("cannot build an HTTP client: {e}"),
            })?;
        Ok(ConsulClient {
            http,
            base,
            token: token.filter(|t| !t.is_empty()),
        })
    }

    /// The agent's base URL, `http://host:port` without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The Raft leader's address (`"127.0.0.1:8300"`), or an empty string while the cluster
    /// has none (e.g. just after a server started).
    pub async fn leader(&self) -> Result<String, DiscoveryError> {
        let answer = self
            .send(Method::GET, "/v1/status/leader", &[], None, PLAIN_TIMEOUT)
            .await?
            .success()?;
        answer.json()
    }

    /// Sends one request and reads the whole answer. `path` is already encoded (built with
    /// [`encode_key`] / [`encode_segment`]); `params` become the query string.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        params: &[Param],
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Answer, DiscoveryError> {
        let url = format!("{}{}{}", self.base, path, query_string(params));
        let mut req = self.http.request(method, &url).timeout(timeout);
        if let Some(token) = &self.token {
            req = req.header("X-Consul-Token", token);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let transport = |source| DiscoveryError::Transport {
            url: url.clone(),
            base: self.base.clone(),
            source,
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let index_header = resp
            .headers()
            .get("X-Consul-Index")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let body = resp.bytes().await.map_err(transport)?.to_vec();
        Ok(Answer {
            url,
            status,
            index_header,
            body,
        })
    }

    /// GET of a blocking-query endpoint: adds `index`/`wait` and the matching timeout.
    pub(crate) async fn get_blocking(
        &self,
        path: &str,
        extra: &[Param],
        q: &QueryOptions,
    ) -> Result<Answer, DiscoveryError> {
        let mut params = extra.to_vec();
        if q.consistent {
            params.push(Param::Consistent);
        }
        if let Some(index) = q.blocking_index() {
            params.push(Param::Index(index));
            if let Some(wait) = q.effective_wait() {
                params.push(Param::Wait(wait));
            }
        }
        self.send(Method::GET, path, &params, None, q.http_timeout())
            .await
    }
}

/// `"http://h:p"` from `"http://h:p/"` or `"h:p"`, refusing what would not work.
fn normalize_base(input: &str, https: bool) -> Result<String, DiscoveryError> {
    let invalid = |reason: &str| DiscoveryError::InvalidAddress {
        address: input.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(invalid("it is empty"));
    }
    let scheme = if https { "https" } else { "http" };
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_string()
    } else {
        format!("{scheme}://{trimmed}")
    };
    let url = reqwest::Url::parse(&with_scheme).map_err(|e| invalid(&e.to_string()))?;
    if url.scheme() != scheme {
        return Err(invalid(&format!(
            "scheme {:?} does not fit the settings: {scheme} is used {}",
            url.scheme(),
            if https {
                "because consul.ca_file is set"
            } else {
                "while consul.ca_file is empty"
            }
        )));
    }
    let host = url.host_str().ok_or_else(|| invalid("it has no host"))?;
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("it must not have a path, query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "it must not carry credentials; pass an ACL token instead",
        ));
    }
    // `Url` keeps IPv6 brackets in `host_str`, and drops the port when it is the scheme's
    // default (80 or 443), which is what we want to print back.
    Ok(match url.port() {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    })
}

fn query_string(params: &[Param]) -> String {
    let mut out = String::new();
    for (i, p) in params.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        match p {
            Param::Recurse => out.push_str("recurse"),
            Param::Cas(i) => out.push_str(&format!("cas={i}")),
            Param::Index(i) => out.push_str(&format!("index={i}")),
            Param::Wait(w) => out.push_str(&format!("wait={}ms", w.as_millis().max(1))),
            Param::Consistent => out.push_str("consistent"),
        }
    }
    out
}

/// Encodes a single path segment (a service ID or name): every byte outside the RFC 3986
/// unreserved set is percent-encoded, `/` included. Empty, `.` and `..` are refused because
/// the router would rewrite the path around them.
pub(crate) fn encode_segment(what: &str) -> Result<String, DiscoveryError> {
    let invalid = |reason| DiscoveryError::InvalidKey {
        key: what.to_string(),
        reason,
    };
    match what {
        "" => Err(invalid("it is empty")),
        "." | ".." => Err(invalid("\".\" and \"..\" cannot be sent in a URL path")),
        _ => Ok(utf8_percent_encode(what, SEGMENT).to_string()),
    }
}

/// Encodes a KV key (or a prefix, when `prefix` is true) for `/v1/kv/<key>`, one segment at
/// a time so that `/` keeps separating segments and everything else is literal.
///
/// Refused: an empty key (except as a prefix, where it means "everything"); a leading `/`,
/// an empty segment in the middle (`a//b`), and `.`/`..` segments — Go's router answers
/// those with a redirect to a *different* key. A single trailing `/` is fine (Consul
/// "folders" and prefixes end with one).
pub(crate) fn encode_key(key: &str, prefix: bool) -> Result<String, DiscoveryError> {
    let invalid = |reason| DiscoveryError::InvalidKey {
        key: key.to_string(),
        reason,
    };
    if key.is_empty() {
        return if prefix {
            Ok(String::new())
        } else {
            Err(invalid("it is empty"))
        };
    }
    if key.starts_with('/') {
        return Err(invalid("it starts with '/'"));
    }
    let body = key.strip_suffix('/').unwrap_or(key);
    let mut out = String::with_capacity(key.len() + 8);
    for (i, seg) in body.split('/').enumerate() {
        match seg {
            "" => return Err(invalid("it has an empty segment (\"//\")")),
            "." | ".." => return Err(invalid("it has a \".\" or \"..\" segment")),
            _ => {}
        }
        if i > 0 {
            out.push('/');
        }
        out.extend(utf8_percent_encode(seg, SEGMENT));
    }
    if body.len() != key.len() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_forms() {
        let ok = |s: &str| normalize_base(s, false).expect(s);
        assert_eq!(ok("http://127.0.0.1:8500"), "http://127.0.0.1:8500");
        assert_eq!(ok("http://127.0.0.1:8500/"), "http://127.0.0.1:8500");
        assert_eq!(ok("127.0.0.1:8500"), "http://127.0.0.1:8500");
        assert_eq!(ok(" localhost:8500 "), "http://localhost:8500");
        assert_eq!(ok("[::1]:8500"), "http://[::1]:8500");
        // With a CA file: HTTPS, and a plain http URL is the mistake.
        assert_eq!(
            normalize_base("127.0.0.1:8501", true).expect("https"),
            "https://127.0.0.1:8501"
        );
        assert!(normalize_base("http://127.0.0.1:8501", true).is_err());
        for bad in [
            "",
            "https://127.0.0.1:8500",
            "http://h:1/v1",
            "http://u:p@h:1",
            "h:x",
        ] {
            let e = normalize_base(bad, false).expect_err(bad);
            assert!(
                matches!(e, DiscoveryError::InvalidAddress { .. }),
                "{bad}: {e}"
            );
            assert!(
                e.to_string().contains("127.0.0.1:8500"),
                "hint missing: {e}"
            );
        }
    }

    #[test]
    fn keys_are_encoded_per_segment() {
        let enc = |k: &str| encode_key(k, false).expect(k);
        assert_eq!(enc("streaming/data/abc"), "streaming/data/abc");
        assert_eq!(enc("a b/%?#"), "a%20b/%25%3F%23");
        assert_eq!(enc("dir/"), "dir/");
        assert_eq!(enc("é"), "%C3%A9");
        assert_eq!(enc("a.b/c..d/-_~"), "a.b/c..d/-_~");
        assert_eq!(encode_key("", true).expect("empty prefix"), "");
        for bad in ["", "/a", "a//b", "a/./b", "a/../b", "..", "a//", "./a"] {
            assert!(encode_key(bad, false).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn segments_encode_slash() {
        assert_eq!(encode_segment("a/b c").expect("seg"), "a%2Fb%20c");
        assert!(encode_segment("..").is_err());
        assert!(encode_segment("").is_err());
    }

    #[test]
    fn query_strings() {
        assert_eq!(query_string(&[]), "");
        assert_eq!(query_string(&[Param::Recurse]), "?recurse");
        assert_eq!(
            query_string(&[Param::Recurse, Param::Consistent]),
            "?recurse&consistent"
        );
        assert_eq!(
            query_string(&[
                Param::Recurse,
                Param::Index(7),
                Param::Wait(Duration::from_secs(2))
            ]),
            "?recurse&index=7&wait=2000ms"
        );
        assert_eq!(query_string(&[Param::Cas(0)]), "?cas=0");
    }
}
