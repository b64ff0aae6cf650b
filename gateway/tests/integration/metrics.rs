//! The gateway's `GET /metrics`, scraped after known traffic through it: lookups, forwarded
//! publishes, proxied streams, promotions and the routing table's state.

use bytes::Bytes;
use ec_proto::{PromoteReplicaRequest, PublishRequest, StreamRequest};
use ec_testkit::{ConsulAgent, wait_for};

use crate::util::*;

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.split(' ').next()?.parse().ok()
    })
}

async fn scrape(gateway: &TestGateway) -> String {
    reqwest::get(format!("http://{}/metrics", gateway.metrics_addr))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_went_through_the_gateway() {
    let consul = ConsulAgent::start_dev().await;
    let url = consul.http_url();
    let n1 = TestNode::start_replicated(&url, "n1").await;
    let n2 = TestNode::start_replicated(&url, "n2").await;
    let gateway = TestGateway::start(&url, &[]).await;
    let mut gw = gateway.client().await;
    store(&consul)
        .put(&data_id("m"), &[node_id("n1"), node_id("n2")], None)
        .await
        .expect("map");
    wait_route(&gw, "m", "both routable", |r| r.candidates.len() == 2).await;

    // 3 lookups (2 found, 1 unknown), 2 forwarded publishes of 3 events in all. The wait
    // above looked up too: count from here.
    let before = scrape(&gateway).await;
    let ok = "ec_gateway_lookups_total{result=\"ok\"}";
    let ok_before = sample(&before, ok).unwrap_or(0.0);
    let not_found = "ec_gateway_lookups_total{result=\"NotFound\"}";
    let not_found_before = sample(&before, not_found).unwrap_or(0.0);
    get_node(&mut gw, "m").await.expect("lookup");
    get_node(&mut gw, "m").await.expect("lookup");
    get_node(&mut gw, "nope").await.expect_err("unknown");
    // With a producer identity, so that a retry of a batch stored but refused (acks=all
    // before the replica is in sync) is not stored twice.
    for (sequence, events) in [
        (1, vec![Bytes::from("a")]),
        (2, vec![Bytes::from("b"), Bytes::from("c")]),
    ] {
        wait_for("a forwarded publish is taken", DEADLINE, || {
            let (mut gw, events) = (gw.clone(), events.clone());
            async move {
                gw.publish(PublishRequest {
                    data_id: "m".into(),
                    events,
                    producer_id: 77,
                    producer_sequence: sequence,
                    ..Default::default()
                })
                .await
                .ok()
            }
        })
        .await;
    }
    // A proxied read of the 3 events, then closed.
    let mut sub = gw
        .subscribe(StreamRequest {
            data_id: "m".into(),
            follow: Some(false),
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let mut read = 0;
    while let Some(b) = sub.message().await.expect("batch") {
        read += b.events.len();
    }
    assert_eq!(read, 3);
    // A requested promotion.
    let failover =
        ec_proto::failover_client::FailoverClient::connect(format!("http://{}", gateway.addr))
            .await
            .expect("connect");
    wait_for("n2 can be promoted", DEADLINE, || {
        let mut failover = failover.clone();
        async move {
            failover
                .promote_replica(PromoteReplicaRequest {
                    data_id: "m".into(),
                    node_id: "n2".into(),
                    force: false,
                })
                .await
                .ok()
        }
    })
    .await;

    let text = wait_for("the metrics show the traffic", DEADLINE, || {
        let gateway = &gateway;
        async move {
            let text = scrape(gateway).await;
            (sample(&text, "ec_gateway_proxy_streams_open") == Some(0.0)
                && sample(&text, "ec_gateway_promotions_total") == Some(1.0))
            .then_some(text)
        }
    })
    .await;
    assert_eq!(sample(&text, ok), Some(ok_before + 2.0), "{text}");
    assert_eq!(sample(&text, not_found), Some(not_found_before + 1.0));
    assert_eq!(
        sample(&text, "ec_gateway_forwarded_publishes_total{result=\"ok\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "ec_gateway_forwarded_events_total"),
        Some(3.0)
    );
    assert_eq!(sample(&text, "ec_gateway_proxy_streams_total"), Some(1.0));
    assert_eq!(sample(&text, "ec_gateway_routing_mappings"), Some(1.0));
    assert_eq!(sample(&text, "ec_gateway_routing_nodes"), Some(2.0));
    assert_eq!(sample(&text, "ec_gateway_consul_reachable"), Some(1.0));
    assert!(sample(&text, "ec_gateway_routing_staleness_seconds").is_some_and(|s| s < 60.0));
    gateway.stop().await.expect("stop");
    n1.stop().await.expect("n1");
    n2.stop().await.expect("n2");
}

/// `GET /health` status of a gateway.
async fn health_status(gateway: &TestGateway) -> Option<u16> {
    let resp = reqwest::get(format!("http://{}/health", gateway.metrics_addr))
        .await
        .ok()?;
    Some(resp.status().as_u16())
}

#[tokio::test]
async fn health_says_loading_until_the_routing_table_has_loaded() {
    // Nothing listens at this Consul address: the table can never load.
    let nowhere = format!("http://127.0.0.1:{}", ec_testkit::free_port());
    let stranded = TestGateway::start(&nowhere, &[]).await;
    let status = wait_for("GET /health answers", DEADLINE, || health_status(&stranded)).await;
    assert_eq!(status, 503, "a gateway without its table is not ready");

    let consul = ConsulAgent::start_dev().await;
    let gateway = TestGateway::start(&consul.http_url(), &[]).await;
    wait_for(
        "GET /health serving once the table loaded",
        DEADLINE,
        || async { (health_status(&gateway).await == Some(200)).then_some(()) },
    )
    .await;
    stranded.stop().await.expect("stop");
    gateway.stop().await.expect("stop");
}
