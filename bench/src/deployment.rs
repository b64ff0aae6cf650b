//! `deployment`: how long each failover takes in the deployment shape: 3 Consul servers in a
//! Raft cluster, one Consul client agent per machine, a replicating `ec-node` registered with
//! each of three machines' agents, and `ec-gateway` on a fourth machine's agent, all on
//! loopback. Consul runs with its own Serf timings (a dead machine is noticed the way it
//! would be in a deployment); every ec process runs at its default settings except ports,
//! data dirs and which agent it talks to.
//!
//! Each trial builds a fresh deployment, puts load on it (a producer through the SDK in
//! redirect mode, one publish of 4 events every 5 ms, and a reader following from offset 0),
//! injects one fault, and measures from the kill:
//! - `write`: the first acknowledgement completed after the kill (the SDK retries inside
//!   `publish`, so this is when writes flow again; a few ms when nothing was interrupted);
//! - `read`: the first delivery to the reader after the kill;
//! - `serf` (machine): until the servers report the dead machine's `serfHealth` critical;
//! - `election` (leader): until a running server is leader;
//! - `kv` (server, leader): until a KV write through the gateway's agent commits.
//!
//! The Consul agents are `ec_testkit` processes: they die with this process on Ctrl-C (they
//! share its process group) and on drop.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::ValueEnum;
use color_eyre::eyre::{Result, WrapErr, bail};
use ec_client::{Client, Delivery, Start, StreamOptions};
use ec_testkit::ConsulCluster;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::cli::DeploymentArgs;
use crate::cluster::{self, KV_PREFIX};
use crate::procs::{Workdir, own_binary};
use crate::stats::median_min_max;
use crate::systems::ec::{Node, spawn_default_node};

/// The data ID under load, mapped to every node, node1 first.
const DATA_ID: &str = "deployment";
/// The node IDs, one per machine.
const NODES: [&str; 3] = ["node1", "node2", "node3"];
/// Time between two publishes of the producer.
const PUBLISH_EVERY: Duration = Duration::from_millis(5);
/// Load before the fault, after the first acknowledgement and delivery.
const WARM: Duration = Duration::from_millis(1500);
/// Longest wait for anything to resume.
const RESUME_DEADLINE: Duration = Duration::from_secs(60);

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Fault {
    /// SIGKILL the primary's ec-node process.
    Node,
    /// SIGKILL the primary's machine: its Consul agent and its ec-node.
    Machine,
    /// SIGKILL one Consul server that is not the leader (two of three keep quorum).
    Server,
    /// SIGKILL the Consul leader, then start it again.
    Leader,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Node => "node",
            Fault::Machine => "machine",
            Fault::Server => "server",
            Fault::Leader => "leader",
        }
    }
}

/// What one trial measured, in ms from the kill.
#[derive(Debug, Default, Clone)]
struct Trial {
    write: Option<f64>,
    read: Option<f64>,
    serf: Option<f64>,
    election: Option<f64>,
    kv: Option<f64>,
}

/// Runs every fault `trials` times and prints each trial and the medians.
pub(crate) async fn run(args: DeploymentArgs) -> Result<()> {
    let node_bin = own_binary("ec-node", args.bin_dir.as_deref())?;
    let gateway_bin = own_binary("ec-gateway", args.bin_dir.as_deref())?;
    let mut summary = Vec::new();
    for fault in &args.faults {
        let mut trials = Vec::new();
        for t in 1..=args.trials.max(1) {
            let trial = run_trial(*fault, &node_bin, &gateway_bin)
                .await
                .wrap_err_with(|| format!("fault {} trial {t}", fault.name()))?;
            println!(
                "deployment fault={} trial={t} {}",
                fault.name(),
                show(&trial)
            );
            trials.push(trial);
        }
        summary.push((*fault, trials));
    }
    println!();
    println!(
        "{:<8} {:>7} {:>22} {:>22} {:>22} {:>22} {:>22}",
        "fault", "trials", "write ms", "read ms", "serf ms", "election ms", "kv ms"
    );
    for (fault, trials) in &summary {
        let col = |f: fn(&Trial) -> Option<f64>| {
            let v: Vec<f64> = trials.iter().filter_map(f).collect();
            match median_min_max(&v) {
                Some((med, min, max)) => format!("{med:.0} ({min:.0}-{max:.0})"),
                None => "-".to_owned(),
            }
        };
        println!(
            "{:<8} {:>7} {:>22} {:>22} {:>22} {:>22} {:>22}",
            fault.name(),
            trials.len(),
            col(|t| t.write),
            col(|t| t.read),
            col(|t| t.serf),
            col(|t| t.election),
            col(|t| t.kv)
        );
    }
    println!("(median (min-max) over the trials, ms from the SIGKILL)");
    Ok(())
}

fn show(t: &Trial) -> String {
    let f = |name: &str, v: Option<f64>| v.map(|v| format!(" {name}_ms={v:.0}"));
    [
        f("write", t.write),
        f("read", t.read),
        f("serf", t.serf),
        f("election", t.election),
        f("kv", t.kv),
    ]
    .into_iter()
    .flatten()
    .collect::<String>()
    .trim()
    .to_owned()
}

/// Completion times of acknowledgements and deliveries, shared with the load tasks.
#[derive(Default)]
struct Progress {
    acks: Vec<Instant>,
    deliveries: Vec<Instant>,
    /// Last offset acknowledged; acknowledgements must only go up.
    last_acked: Option<u64>,
    error: Option<String>,
}

fn lock(p: &Mutex<Progress>) -> std::sync::MutexGuard<'_, Progress> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

async fn run_trial(fault: Fault, node_bin: &Path, gateway_bin: &Path) -> Result<Trial> {
    let dir = Workdir::new("deployment")?;
    let mut consul = ConsulCluster::start_with_consul_timings(3, NODES.len() + 1).await;
    let gateway_agent = consul.client(NODES.len()).http_addr();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .wrap_err("cannot build an HTTP client")?;
    put_mapping(&http, gateway_agent, DATA_ID, &NODES.join(",")).await?;
    let mut nodes: Vec<Node> = Vec::new();
    for (m, id) in NODES.iter().enumerate() {
        nodes.push(spawn_default_node(node_bin, id, consul.client(m).http_addr(), &dir).await?);
    }
    let (_gateway, gateway_addr) =
        cluster::start_default_gateway(gateway_bin, gateway_agent, &dir, DATA_ID).await?;
    let gateway = gateway_addr.to_string();
    let admin = Client::connect(&gateway).await?;

    let progress = Arc::new(Mutex::new(Progress::default()));
    let stop = CancellationToken::new();
    let producer = tokio::spawn(produce(
        Client::connect(&gateway).await?,
        progress.clone(),
        stop.clone(),
    ));
    let reader = tokio::spawn(read(
        Client::connect(&gateway).await?,
        progress.clone(),
        stop.clone(),
    ));
    wait(&progress, "the first acknowledgement and delivery", |p| {
        !p.acks.is_empty() && !p.deliveries.is_empty()
    })
    .await?;
    tokio::time::sleep(WARM).await;

    let primary = admin.route(DATA_ID).await?.primary;
    let Some(m) = NODES.iter().position(|n| *n == primary) else {
        bail!("the gateway names {primary} primary, none of {NODES:?}");
    };
    let mut trial = Trial::default();
    // The leader that was killed, to start it again at the end.
    let mut killed_leader = None;
    let killed = Instant::now();
    match fault {
        Fault::Node => nodes[m].process.kill(),
        Fault::Machine => {
            consul.client_mut(m).kill();
            nodes[m].process.kill();
        }
        Fault::Server => {
            let leader = consul.wait_leader(RESUME_DEADLINE).await;
            consul
                .server_mut((leader + 1) % consul.server_count())
                .kill();
        }
        Fault::Leader => {
            let leader = consul.wait_leader(RESUME_DEADLINE).await;
            consul.server_mut(leader).kill();
            killed_leader = Some(leader);
            consul.wait_leader(RESUME_DEADLINE).await;
            trial.election = Some(ms(killed.elapsed()));
        }
    }
    if matches!(fault, Fault::Server | Fault::Leader) {
        let end = killed + RESUME_DEADLINE;
        loop {
            if put_mapping(&http, gateway_agent, "kv-probe", "node1")
                .await
                .is_ok()
            {
                trial.kv = Some(ms(killed.elapsed()));
                break;
            }
            if Instant::now() >= end {
                bail!("no KV write committed within {RESUME_DEADLINE:?} of the kill");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    wait(&progress, "an acknowledgement after the kill", |p| {
        p.acks.last().is_some_and(|a| *a > killed)
    })
    .await?;
    wait(&progress, "a delivery after the kill", |p| {
        p.deliveries.last().is_some_and(|d| *d > killed)
    })
    .await?;
    {
        let p = lock(&progress);
        let first_after = |v: &[Instant]| v.iter().find(|t| **t > killed).map(|t| ms(*t - killed));
        trial.write = first_after(&p.acks);
        trial.read = first_after(&p.deliveries);
    }
    if fault == Fault::Machine {
        let end = killed + RESUME_DEADLINE;
        loop {
            if consul.serf_health(consul.client(m)).await.as_deref() == Some("critical") {
                trial.serf = Some(ms(killed.elapsed()));
                break;
            }
            if Instant::now() >= end {
                bail!("Serf did not mark the dead machine failed within {RESUME_DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    if let Some(leader) = killed_leader {
        consul.server_mut(leader).restart().await;
    }
    stop.cancel();
    producer.await.wrap_err("the producer task failed")??;
    reader.await.wrap_err("the reader task failed")?;
    if let Some(e) = lock(&progress).error.take() {
        bail!("{e}");
    }
    drop(nodes);
    Ok(trial)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Writes `<kv_prefix><data_id> = value` through the agent at `agent`.
async fn put_mapping(
    http: &reqwest::Client,
    agent: SocketAddr,
    data_id: &str,
    value: &str,
) -> Result<()> {
    let resp = http
        .put(format!("http://{agent}/v1/kv/{KV_PREFIX}{data_id}"))
        .body(value.to_owned())
        .send()
        .await
        .wrap_err("cannot write to Consul")?;
    if !resp.status().is_success() {
        bail!("Consul refused the write of {data_id}: {}", resp.status());
    }
    Ok(())
}

/// Waits until `done` holds for the progress, up to [`RESUME_DEADLINE`].
async fn wait(
    progress: &Mutex<Progress>,
    what: &str,
    done: impl Fn(&Progress) -> bool,
) -> Result<()> {
    let end = Instant::now() + RESUME_DEADLINE;
    loop {
        {
            let p = lock(progress);
            if let Some(e) = &p.error {
                bail!("{e}");
            }
            if done(&p) {
                return Ok(());
            }
        }
        if Instant::now() >= end {
            bail!("no {what} within {RESUME_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Publishes 4 events every [`PUBLISH_EVERY`] until `stop`; records each acknowledgement.
async fn produce(
    client: Client,
    progress: Arc<Mutex<Progress>>,
    stop: CancellationToken,
) -> Result<()> {
    let mut n = 0u64;
    while !stop.is_cancelled() {
        let events: Vec<Bytes> = (0..4).map(|i| Bytes::from(format!("b{n}-e{i}"))).collect();
        match client.publish(DATA_ID, events).await {
            Ok(published) => {
                let mut p = lock(&progress);
                if p.last_acked.is_some_and(|l| l >= published.first.0) {
                    p.error = Some(format!(
                        "batch {n} acknowledged at offset {} after offset {:?}",
                        published.first.0, p.last_acked
                    ));
                }
                p.last_acked = Some(published.last.0);
                p.acks.push(Instant::now());
            }
            Err(e) => {
                lock(&progress).error = Some(format!("the producer gave up on batch {n}: {e}"));
                return Ok(());
            }
        }
        n += 1;
        tokio::time::sleep(PUBLISH_EVERY).await;
    }
    Ok(())
}

/// Follows `DATA_ID` from offset 0 until `stop`; records each delivery, checks gaplessness.
async fn read(client: Client, progress: Arc<Mutex<Progress>>, stop: CancellationToken) {
    let mut stream = client.stream(
        DATA_ID,
        StreamOptions::from_start(Start::Offset(ec_client::Offset(0))),
    );
    let mut next = 0u64;
    loop {
        let item = tokio::select! {
            () = stop.cancelled() => return,
            item = stream.next() => item,
        };
        match item {
            Some(Ok(Delivery::Batch { events, .. })) => {
                let mut p = lock(&progress);
                for e in &events {
                    if e.offset.0 != next {
                        p.error = Some(format!(
                            "the reader got offset {} where {next} was due",
                            e.offset.0
                        ));
                    }
                    next = e.offset.0 + 1;
                }
                p.deliveries.push(Instant::now());
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                lock(&progress).error = Some(format!("the reader failed: {e}"));
                return;
            }
            None => return,
        }
    }
}
