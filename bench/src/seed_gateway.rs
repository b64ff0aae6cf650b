//! The seed's way of answering `GetNodeForData`, as a process of its own (`ec-bench
//! seed-gateway`), so the lookup scenario compares two separate gateway processes: for every
//! request, read the mapping from Consul's KV (`GET /v1/kv/<prefix><id>`, base64 value, first
//! node), then ask for the passing instances of `streaming-node`
//! (`GET /v1/health/service/streaming-node?passing`) and answer that node's address. Nothing
//! is remembered between requests. Only `GetNodeForData` is implemented.

use std::pin::Pin;

use base64::Engine;
use color_eyre::eyre::{Result, WrapErr};
use ec_proto::gateway_server::{Gateway, GatewayServer};
use ec_proto::*;
use tonic::{Request, Response, Status, Streaming};

use crate::cli::SeedGatewayArgs;

/// Serves until killed.
pub(crate) async fn serve(args: SeedGatewayArgs) -> Result<()> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .build()
        .wrap_err("cannot build an HTTP client")?;
    let service = SeedGateway {
        http,
        consul: format!("http://{}", args.consul_addr),
        prefix: args.kv_prefix,
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], args.port));
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(GatewayServer::new(service))
        .serve(addr)
        .await
        .wrap_err_with(|| format!("seed gateway on {addr} failed"))
}

struct SeedGateway {
    http: reqwest::Client,
    consul: String,
    prefix: String,
}

impl SeedGateway {
    async fn lookup(&self, data_id: &str) -> Result<GetNodeResponse, Status> {
        let unavailable = |e: reqwest::Error| Status::unavailable(format!("consul: {e}"));
        let kv: serde_json::Value = self
            .http
            .get(format!("{}/v1/kv/{}{data_id}", self.consul, self.prefix))
            .send()
            .await
            .map_err(unavailable)?
            .error_for_status()
            .map_err(|_| Status::not_found(format!("no mapping for {data_id}")))?
            .json()
            .await
            .map_err(unavailable)?;
        let value = kv[0]["Value"].as_str().unwrap_or_default();
        let value = base64::engine::general_purpose::STANDARD
            .decode(value)
            .map_err(|e| Status::internal(format!("bad mapping value: {e}")))?;
        let node_id = String::from_utf8_lossy(&value)
            .split(',')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let instances: serde_json::Value = self
            .http
            .get(format!(
                "{}/v1/health/service/streaming-node?passing",
                self.consul
            ))
            .send()
            .await
            .map_err(unavailable)?
            .json()
            .await
            .map_err(unavailable)?;
        let instance = instances
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["Service"]["ID"].as_str() == Some(node_id.as_str()))
            .ok_or_else(|| Status::unavailable(format!("{node_id} is not passing")))?;
        let service = &instance["Service"];
        let address = service["Address"]
            .as_str()
            .filter(|a| !a.is_empty())
            .or_else(|| instance["Node"]["Address"].as_str())
            .unwrap_or_default();
        Ok(GetNodeResponse {
            node_address: format!("{address}:{}", service["Port"].as_u64().unwrap_or(0)),
            node_id,
            ..Default::default()
        })
    }
}

type BoxStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented(
        "the seed gateway of ec-bench only answers GetNodeForData",
    ))
}

#[tonic::async_trait]
impl Gateway for SeedGateway {
    async fn get_node_for_data(
        &self,
        req: Request<GetNodeRequest>,
    ) -> Result<Response<GetNodeResponse>, Status> {
        self.lookup(&req.get_ref().data_id).await.map(Response::new)
    }
    async fn register_node(
        &self,
        _: Request<RegisterNodeRequest>,
    ) -> Result<Response<RegisterNodeResponse>, Status> {
        unimplemented()
    }
    type SubscribeStream = BoxStream<EventBatch>;
    async fn subscribe(
        &self,
        _: Request<StreamRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        unimplemented()
    }
    async fn publish(
        &self,
        _: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        unimplemented()
    }
    type PublishStreamStream = BoxStream<PublishAcks>;
    async fn publish_stream(
        &self,
        _: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        unimplemented()
    }
    async fn list_mappings(
        &self,
        _: Request<ListMappingsRequest>,
    ) -> Result<Response<ListMappingsResponse>, Status> {
        unimplemented()
    }
    async fn put_mapping(
        &self,
        _: Request<PutMappingRequest>,
    ) -> Result<Response<PutMappingResponse>, Status> {
        unimplemented()
    }
    async fn delete_mapping(
        &self,
        _: Request<DeleteMappingRequest>,
    ) -> Result<Response<DeleteMappingResponse>, Status> {
        unimplemented()
    }
    async fn list_nodes(
        &self,
        _: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        unimplemented()
    }
    type WatchHealthStream = BoxStream<HealthEvent>;
    async fn watch_health(
        &self,
        _: Request<WatchHealthRequest>,
    ) -> Result<Response<Self::WatchHealthStream>, Status> {
        unimplemented()
    }
    async fn get_status(
        &self,
        _: Request<GetStatusRequest>,
    ) -> Result<Response<GatewayStatus>, Status> {
        unimplemented()
    }
    type WatchRoutesStream = BoxStream<RouteUpdate>;
    async fn watch_routes(
        &self,
        _: Request<WatchRoutesRequest>,
    ) -> Result<Response<Self::WatchRoutesStream>, Status> {
        unimplemented()
    }
}
