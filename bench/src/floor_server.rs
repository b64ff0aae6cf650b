//! `ec-bench floor-server`: the best a tonic unary call does on this machine, as a process of
//! its own. It serves one method that answers an empty message with an empty message, with
//! tonic's defaults and `TCP_NODELAY` (as every server in the run), so the lookup scenario
//! can put `GetNodeForData` beside the cost of the RPC alone: the same callers, connections
//! and runtime, nothing looked up, nothing checked, nothing to encode.

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

/// Serves until killed.
pub(crate) async fn serve(args: FloorServerArgs) -> Result<()> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], args.port));
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(FloorServer::new(Empty))
        .serve(addr)
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
