//! A publish retry waiting out its backoff goes to the promoted primary as soon as the
//! gateway's `WatchRoutes` push names it: three replicating node processes, a real gateway
//! (probes, automatic promotion, route pushes) and a Consul agent; the primary is killed with
//! SIGKILL while `Client::publish` and a pipelined `Publisher` write. The publish backoff is
//! ten minutes, so only the push can end the wait within the test's deadline; every batch must
//! then be acknowledged exactly once and stored in send order on the new primary.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use ec_client::{Backoff, Client, PendingPublish, Published, RouteCacheStatus};
use ec_gateway::GatewaySettings;
use ec_testkit::{ConsulAgent, wait_for};
use tokio_util::sync::CancellationToken;

use crate::util::*;

const D: &str = "rerouted";
/// Batches of one event each: three of each producer before the kill, the rest after it.
const UNARY: usize = 4;
const PIPELINED: usize = 6;
const TOTAL: usize = UNARY + PIPELINED;

/// So long that a retry woken by anything but a route push misses every deadline below.
const TEN_MINUTES: Backoff = Backoff {
    initial: Duration::from_secs(600),
    max: Duration::from_secs(600),
    multiplier: 1.0,
    jitter: 0.0,
};

/// A gateway in this process at its default probes and `failover_after`; stopped on drop.
struct Gateway {
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Gateway {
    async fn start(consul_url: &str) -> Gateway {
        let mut settings = GatewaySettings::new(consul_url);
        settings.kv_prefix = ec_testnode::KV_PREFIX.into();
        settings.watch_wait = Duration::from_secs(10);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        tokio::spawn(ec_gateway::run(settings, listener, shutdown.clone()));
        Gateway { addr, shutdown }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn event(who: &str, n: usize) -> Bytes {
    Bytes::from(format!("{who}-{n}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waiting_out_a_long_backoff_goes_to_the_promoted_primary_when_pushed() {
    let consul = ConsulAgent::start_dev().await;
    let url = consul.http_url();
    let dir = tempfile::tempdir().expect("dir");
    let [mut n1, _n2, _n3] =
        ["n1", "n2", "n3"].map(|id| NodeProcess::spawn_replicated(&dir.path().join(id), &url, id));
    store(&consul)
        .put(
            &data_id(D),
            &[node_id("n1"), node_id("n2"), node_id("n3")],
            None,
        )
        .await
        .expect("map");
    wait_in_sync(&connect(n1.grpc_addr).await, D, 3).await;
    let gateway = Gateway::start(&url).await;
    let client = wait_for("the gateway accepts clients", DEADLINE, || async {
        Client::connect(&gateway.addr.to_string()).await.ok()
    })
    .await
    .with_publish_backoff(TEN_MINUTES);
    // The retries below must find n1 in the pushed routes, as a running client would.
    wait_for("the route cache names n1 primary", DEADLINE, || async {
        let route = client.route(D).await.ok()?;
        let fresh = matches!(client.route_cache(), Some(RouteCacheStatus::Fresh { .. }));
        (fresh && route.healthy_primary().is_some_and(|p| p.node_id == "n1")).then_some(())
    })
    .await;

    // Both producers write to n1 first.
    let publisher = client.publisher(D, 16).await.expect("publisher");
    let mut acked: Vec<(Bytes, Published)> = Vec::new();
    for n in 0..3 {
        let unary = event("unary", n);
        let published = client.publish(D, vec![unary.clone()]).await.expect("n1");
        acked.push((unary, published));
        let pipelined = event("pipelined", n);
        let pending = publisher.send(vec![pipelined.clone()]).await.expect("send");
        acked.push((pipelined, pending.await.expect("n1")));
    }

    n1.kill9();
    // Both fail against the dead n1 (or find no usable primary) long before the gateway
    // promotes a replica (`failover_after`, 1 s), and then wait ten minutes or for the push.
    let unary = {
        let client = client.clone();
        tokio::spawn(async move { client.publish(D, vec![event("unary", 3)]).await })
    };
    let mut pending: Vec<(Bytes, PendingPublish)> = Vec::new();
    for n in 3..6 {
        let pipelined = event("pipelined", n);
        let sent = publisher.send(vec![pipelined.clone()]).await.expect("send");
        pending.push((pipelined, sent));
    }
    let published = tokio::time::timeout(DEADLINE, unary)
        .await
        .expect("Client::publish acknowledged after the promotion, not after its backoff")
        .expect("task")
        .expect("published");
    acked.push((event("unary", 3), published));
    for (pipelined, sent) in pending {
        let published = tokio::time::timeout(DEADLINE, sent)
            .await
            .expect("the publisher's batch acknowledged after the promotion, not after its backoff")
            .expect("published");
        acked.push((pipelined, published));
    }
    tokio::time::timeout(DEADLINE, publisher.close())
        .await
        .expect("the publisher closes")
        .expect("nothing given up");

    // The log of the new primary: every batch once, each producer's in send order, at the
    // offsets acknowledged.
    let route = client.route(D).await.expect("route");
    let primary = route.healthy_primary().expect("a promoted primary");
    assert_ne!(primary.node_id, "n1", "a replica was promoted");
    let c = connect(primary.address.parse().expect("address")).await;
    let log: Vec<(u64, Bytes)> = wait_for("the new primary shows every batch", DEADLINE, || {
        let mut c = c.clone();
        async move {
            let log: Vec<(u64, Bytes)> = read_log(&mut c, D)
                .await
                .into_iter()
                .map(|e| (e.offset, e.data))
                .collect();
            (log.len() >= TOTAL).then_some(log)
        }
    })
    .await;
    assert_eq!(log.len(), TOTAL, "nothing stored twice: {log:?}");
    for (i, (offset, _)) in log.iter().enumerate() {
        assert_eq!(*offset, i as u64, "gapless offsets");
    }
    for (data, published) in &acked {
        assert_eq!(published.count(), 1);
        assert_eq!(
            log.get(published.first.0 as usize).map(|(_, d)| d),
            Some(data),
            "offset {} holds what was acknowledged there",
            published.first.0
        );
    }
    for (who, sent) in [("unary", UNARY), ("pipelined", PIPELINED)] {
        let stored: Vec<Bytes> = log
            .iter()
            .map(|(_, d)| d.clone())
            .filter(|d| d.starts_with(format!("{who}-").as_bytes()))
            .collect();
        let sent: Vec<Bytes> = (0..sent).map(|n| event(who, n)).collect();
        assert_eq!(stored, sent, "{who}: each once, in send order");
    }
}
