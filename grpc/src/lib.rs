//! How Event Catcher serves gRPC, written once for the node and the gateway.
//!
//! A binary builds a [`GrpcServer`], adds the services it implements, and calls
//! [`GrpcServer::serve`] on a listener it bound itself (or, as the gateway does,
//! [`GrpcServer::serve_on_threads`]: one single-threaded runtime per serving thread, each
//! holding whole connections). Every server then gets the same plumbing, so a rule about the
//! wire holds for both binaries or for neither:
//! - large HTTP/2 flow-control windows and `TCP_NODELAY` on every accepted socket (the
//!   reasons are next to the constants in `server.rs`);
//! - `grpc.health.v1.Health`, with every added service reported by name ([`Health`]);
//! - server reflection in both `v1` and `v1alpha`, listing only the services this binary
//!   serves (plus health and reflection);
//! - one request-size limit for every RPC, refused with `RESOURCE_EXHAUSTED` naming the limit
//!   before the message is buffered (`limits.rs`);
//! - TLS from the configured files, optionally requiring client certificates ([`TlsFiles`],
//!   which also gives the client side for the binaries' outgoing channels);
//! - the `GET /metrics` route of the HTTP port ([`metrics_route`]);
//! - graceful shutdown on a [`CancellationToken`](tokio_util::sync::CancellationToken), and a
//!   server task that panics reported as an error ([`ServeError::Panicked`]), never as a
//!   clean stop.
//!
//! A malformed protobuf message is `INVALID_ARGUMENT`: that rule lives in `ec-proto`'s codec,
//! since the generated code names its codec.
//!
//! Per-service policy (authentication, authorization) is not decided here: wrap a service in
//! a tonic interceptor or a tower layer before [`GrpcServer::add_service`]; the server serves
//! whatever it is given under the service's name.

pub mod auth;
mod idle_poll;
mod limits;
mod listen;
mod metrics;
mod server;
mod tls;

pub use idle_poll::IdlePoll;
pub use limits::MessageLimitLayer;
pub use listen::{LISTEN_BACKLOG, bind};
pub use metrics::metrics_route;
pub use server::{GrpcServer, Health, ServeError, ServeSettings, ServerTask};
pub use tls::{TlsError, TlsFiles};
