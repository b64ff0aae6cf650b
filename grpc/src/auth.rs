//! What the node's and the gateway's permission checks read off a gRPC request, and how a
//! refusal becomes a status: one place for the transport side of `ec_core::auth`.

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
