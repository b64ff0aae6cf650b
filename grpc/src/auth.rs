//! What the node's and the gateway's permission checks read off a gRPC request, and how a
//! refusal becomes a status: one place for the transport side of `ec_core::auth`.
//!
//! A caller's certificate identity is the list of DNS names in the subjectAltName of the
//! client certificate it presented ([`certificate_names`]). The TLS handshake has verified
//! that certificate against `tls.ca_file` before any request arrives, so the names are as
//! trustworthy as the CA; the common name is not read (SANs are what rustls verifies
//! server names against, and one rule for both directions is easier to reason about).

use std::net::SocketAddr;

use ec_core::auth::{Refusal, bearer_token};
use tonic::{Request, Status};

/// Who called, as far as the checks care: the bearer token and the peer's address.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token of an `authorization: Bearer …` header, if any.
    pub bearer: Option<String>,
    /// The peer's address (`None` if the transport does not tell).
    pub peer: Option<SocketAddr>,
}

impl Caller {
    /// The caller of `req`.
    pub fn of<T>(req: &Request<T>) -> Caller {
        let bearer = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .map(str::to_owned);
        Caller {
            bearer,
            peer: req.remote_addr(),
        }
    }
}

/// The status a refusal is answered with: `UNAUTHENTICATED` or `PERMISSION_DENIED`.
pub fn refusal_status(refusal: Refusal) -> Status {
    match refusal {
        Refusal::Unauthenticated(m) => Status::unauthenticated(m),
        Refusal::Denied(m) => Status::permission_denied(m),
    }
}

/// The DNS names (subjectAltName) of the client certificate the caller of `req` presented
/// and the TLS handshake verified; `None` when it presented none (TLS off, or a listener that
/// does not ask for client certificates). A certificate that cannot be parsed names nothing:
/// `Some(vec![])`, which no identity check accepts.
pub fn certificate_names<T>(req: &Request<T>) -> Option<Vec<String>> {
    let certs = req.peer_certs()?;
    let leaf = certs.first()?;
    let names = match webpki::EndEntityCert::try_from(leaf) {
        Ok(cert) => cert.valid_dns_names().map(str::to_owned).collect(),
        Err(_) => Vec::new(),
    };
    Some(names)
}
