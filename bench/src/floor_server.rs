//! `ec-bench floor-server`: the best a tonic unary call does on this machine, as a process of
//! its own. It serves one method that answers an empty message with an empty message, with
//! `TCP_NODELAY` (as every server in the run), so the lookup scenario can put
//! `GetNodeForData` beside the cost of the RPC alone: the same callers, connections and
//! runtime, nothing looked up, nothing checked, nothing to encode.
//!
//! Two ways of serving it, each its own process and variant in `lookup`: tonic's default
//! server on a default multi-threaded runtime (`floor`), and the way `ec-gateway` serves
//! (`--per-thread`, `floor-threads`: `ec-grpc`'s server, one thread per core holding its
//! connections whole and, with `--idle-poll-us`, polling before it sleeps). The better of
//! the two is the floor a lookup is held to, so neither the gateway's serving nor tonic's
//! default flatters the ratio.

use std::time::Duration;

use color_eyre::eyre::{Result, WrapErr};
use tonic::{Request, Response, Status};

use crate::cli::FloorServerArgs;

/// The generated code of `proto/floor.proto`.
pub(crate) mod proto {
    #![allow(missing_docs, unreachable_pub, clippy::all)]
    tonic::include_proto!("ecbench.floor");
}

use proto::Nothing;
use proto::floor_server::{Floor, FloorServer};

/// The descriptor set of `proto/floor.proto`, for the reflection `ec-grpc` offers.
const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("floor_descriptor");

/// Serves until killed.
pub(crate) async fn serve(args: FloorServerArgs) -> Result<()> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], args.port));
    if args.per_thread {
        return serve_per_thread(addr, Duration::from_micros(args.idle_poll_us)).await;
    }
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(FloorServer::new(Empty))
        .serve(addr)
        .await
        .wrap_err_with(|| format!("floor server on {addr} failed"))
}

/// Serves as `ec-gateway` does: `ec-grpc`'s server, one thread per core, each polling for
/// `idle_poll` before it sleeps.
async fn serve_per_thread(addr: std::net::SocketAddr, idle_poll: Duration) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .wrap_err_with(|| format!("floor server cannot listen on {addr}"))?;
    let threads = std::thread::available_parallelism().unwrap_or(std::num::NonZeroUsize::MIN);
    let server = ec_grpc::GrpcServer::new(ec_grpc::ServeSettings {
        max_message_bytes: 4 << 20,
        tls: None,
        max_concurrent_streams: None,
        idle_poll,
    })
    .add_service(FloorServer::new(Empty), FILE_DESCRIPTOR_SET)
    .await;
    let stop = tokio_util::sync::CancellationToken::new();
    server
        .serve_on_threads(listener, threads, stop)
        .await
        .wrap_err_with(|| format!("floor server on {addr} failed to start"))?
        .await
        .wrap_err_with(|| format!("floor server on {addr} failed"))
}

struct Empty;

#[tonic::async_trait]
impl Floor for Empty {
    async fn empty(&self, _: Request<Nothing>) -> Result<Response<Nothing>, Status> {
        Ok(Response::new(Nothing {}))
    }
}
