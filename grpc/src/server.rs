//! [`GrpcServer`]: the one way a binary serves its gRPC services.
//!
//! Built in three steps: `new` with the [`ServeSettings`], `add_service` per service the
//! binary implements (each is then reported SERVING by health and listed by reflection), and
//! `serve` on a bound listener, which spawns the server and returns a [`ServerTask`] to await.
//! [`Health`] flips every served service to NOT_SERVING when the binary starts draining.
//!
//! Shutdown: cancelling the token passed to `serve` stops accepting connections and lets
//! calls in flight finish; streams end when their producers see the binary's own token (tonic
//! cannot end an open stream by itself). The task then completes with `Ok`. A task that
//! panicked completes with [`ServeError::Panicked`], so the binary exits non-zero.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic::transport::server::{Connected, TcpIncoming};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::limits::MessageLimitLayer;

/// HTTP/2 connection-level flow-control window of every server, in bytes.
const CONNECTION_WINDOW: u32 = 16 << 20;
/// HTTP/2 stream-level flow-control window of every server, in bytes.
const STREAM_WINDOW: u32 = 4 << 20;
/// Largest HTTP/2 frame a client may send to a server, in bytes (the default is 16 KiB).
const MAX_FRAME: u32 = 1 << 20;

/// Why a server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listener could not report its address.
    #[error("listener has no local address: {0}")]
    Listener(#[source] std::io::Error),
    /// The TLS settings could not be applied (a certificate or key that is not valid PEM).
    #[error("grpc server TLS: {0}; check tls.cert_file, tls.key_file and tls.ca_file")]
    Tls(#[source] tonic::transport::Error),
    /// The reflection service could not be built from the descriptor sets.
    #[error("grpc reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The server failed.
    #[error("grpc server on {addr}: {source}")]
    Serve {
        /// Address served.
        addr: SocketAddr,
        /// What tonic reported.
        #[source]
        source: tonic::transport::Error,
    },
    /// A serving thread or its runtime could not be started.
    #[error("cannot start a gRPC serving thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The server task panicked.
    #[error("grpc server on {addr} panicked ({panic}); restart the process and report the panic")]
    Panicked {
        /// Address served.
        addr: SocketAddr,
        /// The panic, as the runtime described it.
        panic: String,
    },
}

/// Request-size limit when none is configured: tonic's default.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 << 20;

/// How a server is run.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// Longest request message accepted, in bytes as encoded on the wire; longer ones are
    /// refused with `RESOURCE_EXHAUSTED`. Give each added service's own tonic limit
    /// (`max_decoding_message_size`) at least this value, or tonic refuses first with
    /// `OUT_OF_RANGE`.
    pub max_message_bytes: usize,
    /// TLS of the listener (see [`crate::TlsFiles::server`]); `None`: plaintext.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Most concurrent calls (HTTP/2 streams) one connection may hold open
    /// (`limits.max_streams_per_connection`); `None`: h2's default.
    pub max_concurrent_streams: Option<u32>,
    /// How long each thread of [`GrpcServer::serve_on_threads`] polls its sockets after its
    /// last work before it sleeps ([`crate::IdlePoll`]); zero: it sleeps at once.
    /// [`GrpcServer::serve`] runs on the caller's runtime and leaves polling to it.
    pub idle_poll: std::time::Duration,
}

impl Default for ServeSettings {
    fn default() -> ServeSettings {
        ServeSettings {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            tls: None,
            max_concurrent_streams: None,
            idle_poll: std::time::Duration::ZERO,
        }
    }
}

/// Served by every server next to the binary's own services.
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";

/// A binary's gRPC server being assembled; see the module docs.
pub struct GrpcServer {
    settings: ServeSettings,
    routes: RoutesBuilder,
    health: Health,
    /// Encoded `FileDescriptorSet`s that describe the added services, for reflection.
    descriptors: Vec<&'static [u8]>,
}

impl GrpcServer {
    /// A server with health (reporting the empty service name SERVING) and nothing else yet.
    pub fn new(settings: ServeSettings) -> GrpcServer {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let mut routes = RoutesBuilder::default();
        routes.add_service(health_service);
        GrpcServer {
            settings,
            routes,
            health: Health {
                reporter,
                names: Arc::default(),
            },
            descriptors: vec![tonic_health::pb::FILE_DESCRIPTOR_SET],
        }
    }

    /// Serves `service`, described for reflection by `descriptor_set` (an encoded
    /// `FileDescriptorSet` holding it, e.g. `ec_proto::FILE_DESCRIPTOR_SET`). Health reports
    /// it SERVING from the start. To put authentication or another policy in front of one
    /// service, wrap it (tonic interceptor, tower layer) before adding it.
    pub async fn add_service<S>(mut self, service: S, descriptor_set: &'static [u8]) -> GrpcServer
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes.add_service(service);
        if !self.descriptors.contains(&descriptor_set) {
            self.descriptors.push(descriptor_set);
        }
        self.health.add(S::NAME).await;
        self
    }

    /// The health switch of the services added so far and to come.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Serves on `listener` until `shutdown` is cancelled, with `TCP_NODELAY` on every
    /// accepted socket.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<ServerTask, ServeError> {
        let addr = listener.local_addr().map_err(ServeError::Listener)?;
        // Nagle off on every accepted socket: tonic's `Server::tcp_nodelay` only reaches
        // listeners it binds itself. With Nagle on, a stream's small messages waited for the
        // reader's delayed ACKs (milliseconds of delivery latency at a few thousand events/s).
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        self.serve_incoming(addr, incoming, shutdown).await
    }

    /// Like [`GrpcServer::serve`], with the connections spread over `threads` threads that
    /// each run a single-threaded runtime, so every task of a connection stays on one thread
    /// (why, in `server/threads.rs`). Whatever the services spawn runs on the thread of the
    /// call that spawned it.
    pub async fn serve_on_threads(
        self,
        listener: TcpListener,
        threads: NonZeroUsize,
        shutdown: CancellationToken,
    ) -> Result<ServerTask, ServeError> {
        let addr = listener.local_addr().map_err(ServeError::Listener)?;
        let idle_poll = self.settings.idle_poll;
        let routes = self.into_routes().await?;
        let handle = threads::start(routes, listener, threads, addr, idle_poll, shutdown)?;
        Ok(ServerTask { addr, handle })
    }

    /// Serves connections from `incoming` (reported as `addr`) until `shutdown` is
    /// cancelled. [`GrpcServer::serve`] is this over a TCP listener.
    pub async fn serve_incoming<I, IO, IE>(
        self,
        addr: SocketAddr,
        incoming: I,
        shutdown: CancellationToken,
    ) -> Result<ServerTask, ServeError>
    where
        I: Stream<Item = Result<IO, IE>> + Send + 'static,
        IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let server = self
            .into_routes()
            .await?
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned());
        Ok(ServerTask {
            addr,
            handle: tokio::spawn(async move {
                server
                    .await
                    .map_err(|source| ServeError::Serve { addr, source })
            }),
        })
    }

    /// The configured server with every added service, health and reflection, all reported
    /// SERVING.
    async fn into_routes(mut self) -> Result<threads::Routes, ServeError> {
        // Reflection lists what this binary serves, not every service in the descriptors
        // (the node and the gateway share one .proto). Both versions list the same set,
        // both reflection services included, since both are served.
        let mut names = vec![HEALTH_SERVICE, REFLECTION_V1, REFLECTION_V1ALPHA];
        names.extend(self.health.names());
        let reflection = || {
            let mut b = tonic_reflection::server::Builder::configure()
                .include_reflection_service(false)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(
                    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
                );
            for set in &self.descriptors {
                b = b.register_encoded_file_descriptor_set(set);
            }
            for name in &names {
                b = b.with_service_name(*name);
            }
            b
        };
        let v1 = reflection().build_v1()?;
        let v1alpha = reflection().build_v1alpha()?;
        self.routes.add_service(v1).add_service(v1alpha);
        self.health.set_all(ServingStatus::Serving).await;

        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = self.settings.tls.take() {
            builder = builder.tls_config(tls).map_err(ServeError::Tls)?;
        }
        Ok(builder
            // h2 lets a connection hold only half its window in small unread DATA frames
            // before it answers GOAWAY ENHANCE_YOUR_CALM; a pipelined publisher of one-event
            // messages hit that at the 64 KiB default while the committer applied
            // backpressure. A larger window raises that budget (and lets fast streams run
            // without waiting for window updates).
            .initial_connection_window_size(CONNECTION_WINDOW)
            .initial_stream_window_size(STREAM_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_concurrent_streams(self.settings.max_concurrent_streams)
            .layer(MessageLimitLayer::new(self.settings.max_message_bytes))
            .add_routes(self.routes.routes()))
    }
}

/// The running server; await it for how it ended.
#[derive(Debug)]
pub struct ServerTask {
    addr: SocketAddr,
    handle: JoinHandle<Result<(), ServeError>>,
}

impl ServerTask {
    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Future for ServerTask {
    type Output = Result<(), ServeError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let addr = self.addr;
        Pin::new(&mut self.handle)
            .poll(cx)
            .map(|joined| match joined {
                Ok(served) => served,
                // A supervisor must see a crash as a crash: a panicked server is an error, so the
                // binary exits non-zero.
                Err(join) => {
                    tracing::error!(%addr, error = %join, "grpc server task panicked");
                    Err(ServeError::Panicked {
                        addr,
                        panic: join.to_string(),
                    })
                }
            })
    }
}

/// Reports the served services (and the server as a whole, the empty name) to
/// `grpc.health.v1.Health`. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    // A std mutex: held only to copy the names, never across an await.
    names: Arc<Mutex<Vec<&'static str>>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("services", &self.names())
            .finish()
    }
}

impl Health {
    async fn add(&self, name: &'static str) {
        self.names
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(name);
        self.reporter
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }

    fn names(&self) -> Vec<&'static str> {
        self.names
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Reports every served service and the server as SERVING.
    pub async fn serving(&self) {
        self.set_all(ServingStatus::Serving).await;
    }

    /// Reports every served service and the server as NOT_SERVING: the first step of a
    /// drain, so load balancers stop sending new calls.
    pub async fn not_serving(&self) {
        self.set_all(ServingStatus::NotServing).await;
    }

    async fn set_all(&self, status: ServingStatus) {
        self.reporter.set_service_status("", status).await;
        for name in self.names() {
            self.reporter.set_service_status(name, status).await;
        }
    }
}

mod threads;

#[cfg(test)]
mod tests;
