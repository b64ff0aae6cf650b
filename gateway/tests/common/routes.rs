//! Waiting on the gateway's routing answers, shared by the gateway's two test binaries
//! (`integration` and `cluster`, each including this file with `#[path]`).

use ec_proto::gateway_client::GatewayClient;
use ec_proto::{GetNodeRequest, GetNodeResponse};
use ec_testnode::DEADLINE;
use tonic::transport::Channel;

/// Waits until `GetNodeForData(data_id)` answers and `pred` holds for the answer.
pub async fn wait_route(
    gw: &GatewayClient<Channel>,
    data_id: &str,
    what: &str,
    pred: impl Fn(&GetNodeResponse) -> bool,
) -> GetNodeResponse {
    wait_route_within(gw, data_id, what, DEADLINE, pred).await
}

/// [`wait_route`] with its own deadline.
pub async fn wait_route_within(
    gw: &GatewayClient<Channel>,
    data_id: &str,
    what: &str,
    deadline: std::time::Duration,
    pred: impl Fn(&GetNodeResponse) -> bool,
) -> GetNodeResponse {
    ec_testkit::wait_for(what, deadline, || {
        let mut gw = gw.clone();
        let pred = &pred;
        async move {
            gw.get_node_for_data(GetNodeRequest {
                data_id: data_id.into(),
            })
            .await
            .ok()
            .map(tonic::Response::into_inner)
            .filter(|r| pred(r))
        }
    })
    .await
}

/// The candidates' node IDs of a route.
pub fn candidate_ids(r: &GetNodeResponse) -> Vec<&str> {
    r.candidates.iter().map(|c| c.node_id.as_str()).collect()
}
