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

use std::sync::Arc;

use ec_core::auth::{Action, Policy, Refusal};
use tonic::{Request, Status};

pub(crate) use ec_grpc::auth::Caller;

/// The gateway's checks, shared by every RPC.
#[derive(Clone, Default)]
pub(crate) struct Guard {
    pub(crate) policy: Arc<Policy>,
}

fn status(refusal: Refusal) -> Status {
    ec_grpc::auth::refusal_status(refusal)
}

impl Guard {
    /// May the caller of `req` do `action`?
    pub(crate) fn check<T>(&self, req: &Request<T>, action: Action<'_>) -> Result<(), Status> {
        // Lookups run this on every call: skip reading the caller when nobody is refused.
        if !self.policy.depends_on_caller(action) {
            return Ok(());
        }
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
