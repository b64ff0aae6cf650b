//! A randomized fault run (issues 4 and 10): publishers, retrying idempotent producers and
//! readers go through the gateway while replicating node processes are killed with SIGKILL
//! (and restarted) or frozen with SIGSTOP (and continued) at random; the gateway fails over
//! automatically. At the end a checker verifies: every acknowledged event is in the final log
//! with its bytes; every producer batch was acknowledged exactly once, in send order, and is
//! stored exactly once, in send order, even when a retry crossed a failover; every reader's
//! sequence is a gapless prefix of the final log (so no offset was ever seen with two
//! contents); all nodes converge to one byte-identical log.
//!
//! Seeded and reproducible: the seed is printed at the start and in every failure message;
//! set `EC_FAULT_SEED` to replay one, `EC_FAULT_SECS` to run longer than the default 12 s.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ec_client::{Client, Mode};
use ec_proto::gateway_client::GatewayClient;
use ec_proto::{PublishRequest, StreamRequest};
use ec_testkit::{ConsulAgent, wait_for};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::util::*;

const D: &str = "faults";

/// SplitMix64: small, seedable, good enough to pick faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A retrying idempotent producer until `stop`: pipelined (`window` batches in flight, a
/// batch every 5 ms) when `window > 1`, else one `Client::publish` at a time, back to back.
/// Fails the test if it ever gives up.
fn producer(
    client: Client,
    who: &'static str,
    window: usize,
    stop: CancellationToken,
    seed: u64,
) -> (Acks, tokio::task::JoinHandle<()>) {
    let acks: Acks = Arc::default();
    let producer = Producer {
        data_id: D,
        who,
        window,
        pause: if window <= 1 {
            Duration::ZERO
        } else {
            Duration::from_millis(5)
        },
        context: format!("seed {seed}: "),
    };
    let task = tokio::spawn(producer.run(client, stop, acks.clone()));
    (acks, task)
}

/// A reader through the gateway's `Subscribe`, resubscribing from its next offset when the
/// stream ends; it checks order as it goes.
fn proxy_reader(gw: GatewayClient<Channel>, stop: CancellationToken, seed: u64) -> Seen {
    let seen: Seen = Arc::default();
    let out = seen.clone();
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            let next = out.lock().expect("lock").len() as i64;
            let mut gw = gw.clone();
            let attempt = async {
                let mut sub = gw
                    .subscribe(StreamRequest {
                        data_id: D.into(),
                        offset: next,
                        ..Default::default()
                    })
                    .await
                    .ok()?
                    .into_inner();
                while let Ok(Some(b)) = sub.message().await {
                    let mut seen = out.lock().expect("lock");
                    for e in b.events {
                        assert_eq!(
                            e.offset,
                            seen.len() as u64,
                            "seed {seed}: subscribe reader got offsets out of order"
                        );
                        seen.push((e.offset, e.data));
                    }
                }
                Some(())
            };
            tokio::select! {
                () = stop.cancelled() => return,
                _ = attempt => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    seen
}

/// A reader in redirect mode through the SDK (its own resumable stream).
fn redirect_reader(client: Client, stop: CancellationToken, seed: u64) -> Seen {
    let seen: Seen = Arc::default();
    let context = format!("seed {seed}: ");
    tokio::spawn(read_redirected(client, D, context, stop, seen.clone()));
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_kills_and_restarts_lose_nothing_and_converge() {
    let seed: u64 = std::env::var("EC_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let secs: u64 = std::env::var("EC_FAULT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    println!("fault run: seed={seed} secs={secs} (EC_FAULT_SEED={seed} replays it)");
    let mut rng = Rng(seed);

    let consul = ConsulAgent::start_dev().await;
    let url = consul.http_url();
    let dir = tempfile::tempdir().expect("dir");
    let ids = ["n1", "n2", "n3"];
    let dirs: Vec<PathBuf> = ids.iter().map(|n| dir.path().join(n)).collect();
    let mut nodes: Vec<Option<NodeProcess>> = ids
        .iter()
        .zip(&dirs)
        .map(|(id, d)| Some(NodeProcess::spawn_replicated(d, &url, id)))
        .collect();
    let gateway = TestGateway::start_with(&url, |s| {
        s.failover_after = Duration::from_secs(1);
    })
    .await;
    let gw = gateway.client().await;
    map_three(&consul, D).await;
    wait_route(&gw, D, "routable", |r| r.candidates.len() == 3).await;

    let stop = CancellationToken::new();
    let acked: Arc<Mutex<BTreeMap<u64, Bytes>>> = Arc::default();
    let mut publishers = Vec::new();
    for p in 0..2 {
        let (mut gw, acked, stop) = (gw.clone(), acked.clone(), stop.clone());
        publishers.push(tokio::spawn(async move {
            let mut attempt = 0u64;
            while !stop.is_cancelled() {
                attempt += 1;
                let events: Vec<Bytes> = (0..5)
                    .map(|i| Bytes::from(format!("p{p}-a{attempt}-e{i}-{}", "z".repeat(150))))
                    .collect();
                let req = PublishRequest {
                    data_id: D.into(),
                    events: events.clone(),
                    sequence: 0,
                    ..Default::default()
                };
                match gw.publish(req).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        let mut acked = acked.lock().expect("lock");
                        for (i, e) in events.into_iter().enumerate() {
                            let previous = acked.insert(r.first_offset + i as u64, e.clone());
                            assert!(
                                previous.is_none(),
                                "offset {} acknowledged twice",
                                r.first_offset + i as u64
                            );
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
                }
            }
        }));
    }
    let gateway_addr = gateway.addr.to_string();
    let sdk = Client::connect(&gateway_addr).await.expect("sdk client");
    let (pipelined_acks, pipelined) = producer(
        sdk.clone().with_mode(Mode::Proxy),
        "pipe",
        8,
        stop.clone(),
        seed,
    );
    let (unary_acks, unary) = producer(sdk, "one", 1, stop.clone(), seed);
    let proxied = proxy_reader(gw.clone(), stop.clone(), seed);
    let client = Client::connect(&gateway.addr.to_string())
        .await
        .expect("sdk client");
    let redirected = redirect_reader(client, stop.clone(), seed);

    // Faults: at most one node down at a time, killed (then restarted) or frozen (then
    // continued); each one comes back after a while.
    let end = Instant::now() + Duration::from_secs(secs);
    let mut down: Option<(usize, bool, Instant)> = None;
    let (mut kills, mut stops) = (0, 0);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(500 + rng.below(1500))).await;
        match down {
            None => {
                let victim = rng.below(3) as usize;
                let freeze = rng.below(3) == 0;
                if freeze {
                    if let Some(n) = &mut nodes[victim] {
                        n.signal(ec_testnode::Signal::SIGSTOP);
                        stops += 1;
                    }
                } else if let Some(mut n) = nodes[victim].take() {
                    n.kill9();
                    kills += 1;
                }
                println!(
                    "seed {seed}: {} {} at {:?}",
                    if freeze { "SIGSTOP" } else { "SIGKILL" },
                    ids[victim],
                    end - Instant::now()
                );
                down = Some((
                    victim,
                    freeze,
                    Instant::now() + Duration::from_millis(1000 + rng.below(2500)),
                ));
            }
            Some((victim, freeze, back)) if Instant::now() >= back => {
                if freeze {
                    if let Some(n) = &mut nodes[victim] {
                        n.signal(ec_testnode::Signal::SIGCONT);
                    }
                    println!("seed {seed}: SIGCONT {}", ids[victim]);
                } else {
                    nodes[victim] = Some(NodeProcess::spawn_replicated(
                        &dirs[victim],
                        &url,
                        ids[victim],
                    ));
                    println!("seed {seed}: restart {}", ids[victim]);
                }
                down = None;
            }
            Some(_) => {}
        }
    }
    if let Some((victim, true, _)) = down
        && let Some(n) = &mut nodes[victim]
    {
        n.signal(ec_testnode::Signal::SIGCONT);
    }
    for (i, slot) in nodes.iter_mut().enumerate() {
        if slot.is_none() {
            *slot = Some(NodeProcess::spawn_replicated(&dirs[i], &url, ids[i]));
        }
    }
    // Let publishing resume after the last fault before stopping it.
    let before = acked.lock().expect("lock").len();
    wait_for(
        &format!("seed {seed}: publishing resumes"),
        DEADLINE,
        || {
            let n = acked.lock().expect("lock").len();
            async move { (n > before + 50).then_some(()) }
        },
    )
    .await;
    stop.cancel();
    for p in publishers {
        p.await.expect("publisher task");
    }
    for p in [pipelined, unary] {
        tokio::time::timeout(Duration::from_secs(150), p)
            .await
            .unwrap_or_else(|_| panic!("seed {seed}: a producer still waits for acknowledgements"))
            .expect("producer task");
    }

    // Converge: every node holds the same log, all of it visible.
    let mut clients = Vec::new();
    for n in nodes.iter().flatten() {
        clients.push(connect(n.grpc_addr).await);
    }
    let what = format!("seed {seed}: all nodes converge");
    wait_converged(&clients, D, &what, DEADLINE).await;
    let mut logs = Vec::new();
    for c in &mut clients {
        let log: Vec<_> = read_log(c, D)
            .await
            .into_iter()
            .map(|e| (e.offset, e.timestamp, e.data))
            .collect();
        logs.push(log);
    }
    for (i, log) in logs.iter().enumerate().skip(1) {
        assert!(
            log == &logs[0],
            "seed {seed}: {} and {} differ",
            ids[0],
            ids[i]
        );
    }
    let final_log = &logs[0];

    let acked = acked.lock().expect("lock").clone();
    for (offset, data) in &acked {
        assert_eq!(
            final_log.get(*offset as usize).map(|e| &e.2),
            Some(data),
            "seed {seed}: acknowledged offset {offset} is in the final log with its bytes"
        );
    }
    // Every producer batch: acknowledged once, in send order, at the offsets that hold its
    // bytes; stored once, in send order, whatever retries crossed the failovers.
    let payloads: Vec<(u64, Bytes)> = final_log.iter().map(|e| (e.0, e.2.clone())).collect();
    let context = format!("seed {seed}: ");
    for (who, acks) in [("pipe", &pipelined_acks), ("one", &unary_acks)] {
        check_producer(&context, who, acks, &payloads);
    }
    for (who, seen) in [("subscribe", &proxied), ("redirect", &redirected)] {
        check_reader(&context, who, seen, &payloads);
    }
    println!(
        "fault run: seed={seed} kills={kills} stops={stops} acknowledged={} producer batches={}+{} final log={} subscribe saw {} redirect saw {}",
        acked.len(),
        pipelined_acks.lock().expect("lock").len(),
        unary_acks.lock().expect("lock").len(),
        final_log.len(),
        proxied.lock().expect("lock").len(),
        redirected.lock().expect("lock").len()
    );
    assert!(
        kills + stops >= 2,
        "seed {seed}: the run killed or froze nodes"
    );
    assert!(!acked.is_empty());
    gateway.stop().await.expect("stop");
}
