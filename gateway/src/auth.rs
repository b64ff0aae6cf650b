//! Who may call the gateway: the checks the gRPC layer makes before it does anything.
//!
//! With `security.tokens`, every call needs a bearer token: admin calls (mappings,
//! `RegisterNode`, `PromoteReplica`) the `admin` permission, routing and subscriptions `read`
//! on the data ID, publishes `publish` on it; listings show only what the token may read.
//! Without tokens (and without TLS), protected mode refuses admin calls and publishes from
//! peers that are not on loopback. A refusal changes nothing.
//!
//! Publishes are forwarded to the primary with the caller's token, so the node applies its
//! own permissions (per data ID also inside a publish stream, and `create`); when the caller
//! sent none, the gateway presents its own `client.token`, if configured.

use std::net::SocketAddr;
use std::sync::Arc;

use ec_core::auth::{Action, Policy, Refusal, bearer_token};
use tonic::{Request, Status};

/// Who called, as far as the checks care.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    bearer: Option<String>,
    peer: Option<SocketAddr>,
}

impl Caller {
    /// The caller of `req`: its bearer token (if any) and its address.
    pub(crate) fn of<T>(req: &Request<T>) -> Caller {
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

/// The gateway's checks, shared by every RPC.
#[derive(Clone, Default)]
pub(crate) struct Guard {
    pub(crate) policy: Arc<Policy>,
}

fn status(refusal: Refusal) -> Status {
    match refusal {
        Refusal::Unauthenticated(m) => Status::unauthenticated(m),
        Refusal::Denied(m) => Status::permission_denied(m),
    }
}

impl Guard {
    /// May the caller of `req` do `action`?
    pub(crate) fn check<T>(&self, req: &Request<T>, action: Action<'_>) -> Result<(), Status> {
        self.allows(&Caller::of(req), action)
    }

    /// May `caller` do `action`?
    pub(crate) fn allows(&self, caller: &Caller, action: Action<'_>) -> Result<(), Status> {
        self.policy
            .check(caller.bearer.as_deref(), caller.peer, action)
            .map_err(status)
    }

    /// May the caller of `req` use a call that needs no particular permission?
    pub(crate) fn authenticate<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let caller = Caller::of(req);
        self.policy
            .authenticate(caller.bearer.as_deref())
            .map_err(status)
    }
}
