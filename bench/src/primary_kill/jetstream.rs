//! JetStream for `failover --kill primary`: three `nats-server`s clustered on loopback
//! (`server_name` n1..n3, a `cluster` block with routes to all three, JetStream with a
//! `store_dir` each; every other setting the default, so storage syncs on the server's
//! default interval and the R3 stream acknowledges once a quorum stored a message) and one
//! R3 file stream. The producer publishes each event with `Nats-Msg-Id` set to its identity
//! (JetStream's deduplication, default window 2 min) and awaits the batch's acks together;
//! the reader is an ordered pull consumer. Clients connect with all three URLs and the
//! client library's defaults. The stream leader (stream info → `cluster.leader`) is
//! SIGKILLed or SIGSTOPped (and continued before the final log is read with a fresh
//! ordered consumer).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};
use bytes::Bytes;
use color_eyre::eyre::{Result, WrapErr, bail, eyre};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;

use super::{Fault, Observed, Producer, ReadBatch, Reader, Seen, Shape, event_id};
use crate::procs::{Spawned, Workdir, free_port, loopback};

const STREAM: &str = "bench";
const SUBJECT: &str = "bench";
const SERVERS: [&str; 3] = ["n1", "n2", "n3"];

/// How JetStream was set up, for the record.
pub(crate) const DESCRIBE: &str = "3 nats-servers clustered on loopback, R3 file stream, all server settings default (sync_interval default); Nats-Msg-Id per event; async-nats defaults (ordered pull consumer)";

/// Runs one leader kill (or stop) on JetStream; returns what was observed and the final
/// log's payloads.
pub(crate) async fn run(
    binary: &Path,
    shape: Shape,
    fault: Fault,
) -> Result<(Observed, Vec<Bytes>)> {
    let dir = Workdir::new("primary-kill-js")?;
    let client_ports: Vec<u16> = SERVERS.iter().map(|_| free_port()).collect();
    let route_ports: Vec<u16> = SERVERS.iter().map(|_| free_port()).collect();
    let routes = route_ports
        .iter()
        .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut servers: Vec<(&str, Spawned)> = Vec::new();
    for (i, name) in SERVERS.iter().enumerate() {
        let config = format!(
            "server_name: \"{name}\"\nlisten: \"127.0.0.1:{}\"\njetstream {{\n  store_dir: \"{}\"\n}}\ncluster {{\n  name: \"ec-bench\"\n  listen: \"127.0.0.1:{}\"\n  routes: [{routes}]\n}}\n",
            client_ports[i],
            dir.path().join(name).display(),
            route_ports[i],
        );
        let path = dir.path().join(format!("{name}.conf"));
        std::fs::write(&path, config)
            .wrap_err_with(|| format!("cannot write {}", path.display()))?;
        let mut cmd = Command::new(binary);
        cmd.arg("-c").arg(&path);
        let process = Spawned::spawn(&format!("nats-{name}"), cmd, dir.path())?;
        servers.push((name, process));
    }
    for (i, (_, process)) in servers.iter_mut().enumerate() {
        process
            .wait_for_port(loopback(client_ports[i]), Duration::from_secs(20))
            .await?;
    }
    let urls: Vec<String> = client_ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect();

    let admin = jetstream::new(connect(&urls).await?);
    let mut stream = create_stream(&admin, &mut servers).await?;

    let producer = Box::new(JsProducer {
        js: jetstream::new(connect(&urls).await?),
    });
    let reader = ordered_from_start(&jetstream::new(connect(&urls).await?)).await?;
    let readers: Vec<(String, Box<dyn Reader>)> =
        vec![("ordered".into(), Box::new(JsReader(reader)))];

    let observed = super::drive(
        shape,
        producer,
        readers,
        async || stream_leader(&mut stream).await,
        |leader| {
            let Some((_, process)) = servers.iter_mut().find(|(n, _)| *n == leader) else {
                bail!("the stream leader {leader} is none of {SERVERS:?}");
            };
            match fault {
                Fault::Kill => process.kill(),
                Fault::Stop => process.signal(fault.signal()),
            }
            Ok(())
        },
    )
    .await?;
    // A frozen server would stall the clients below that try it first.
    for (_, process) in &servers {
        process.signal(nix::sys::signal::Signal::SIGCONT);
    }

    // The final log: a fresh consumer up to the stream's last sequence.
    let js = jetstream::new(connect(&urls).await?);
    let last = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match js.get_stream(STREAM).await {
                Ok(mut s) => match s.info().await {
                    Ok(info) => break info.state.last_sequence,
                    Err(e) if Instant::now() >= deadline => {
                        bail!("no stream info after the failover: {e}")
                    }
                    Err(_) => {}
                },
                Err(e) if Instant::now() >= deadline => {
                    bail!("cannot open the stream after the failover: {e}")
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let mut log = Vec::new();
    let mut messages = ordered_from_start(&js).await?;
    while (log.len() as u64) < last {
        let m = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .wrap_err("reading the final log stalled for 30 s")?
            .ok_or_else(|| eyre!("the final log ended before sequence {last}"))?
            .map_err(|e| eyre!("cannot read the final log: {e}"))?;
        let seq = m
            .info()
            .map_err(|e| eyre!("a message without JetStream info: {e}"))?
            .stream_sequence;
        if seq != log.len() as u64 + 1 {
            bail!(
                "the final log has sequence {seq} where {} was due",
                log.len() + 1
            );
        }
        log.push(m.message.payload.clone());
    }
    drop(servers);
    Ok((observed, log))
}

async fn connect(urls: &[String]) -> Result<async_nats::Client> {
    async_nats::connect(urls)
        .await
        .wrap_err_with(|| format!("cannot connect to {urls:?}"))
}

/// Creates the R3 stream once the cluster has a meta leader, and waits until the stream
/// has a leader and both followers are current.
async fn create_stream(
    js: &jetstream::Context,
    servers: &mut [(&str, Spawned)],
) -> Result<stream::Stream> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stream = loop {
        for (_, p) in servers.iter_mut() {
            p.check_running()?;
        }
        let created = js
            .get_or_create_stream(stream::Config {
                name: STREAM.into(),
                subjects: vec![SUBJECT.into()],
                storage: stream::StorageType::File,
                num_replicas: 3,
                ..Default::default()
            })
            .await;
        match created {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => {
                bail!("the cluster did not create the R3 stream within 60 s: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    loop {
        if let Ok(info) = stream.info().await
            && info.cluster.as_ref().is_some_and(|c| {
                c.leader.is_some() && c.replicas.len() == 2 && c.replicas.iter().all(|r| r.current)
            })
        {
            return Ok(stream);
        }
        if Instant::now() >= deadline {
            bail!("the R3 stream had no leader with two current followers within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stream_leader(stream: &mut stream::Stream) -> Result<String> {
    let info = stream
        .info()
        .await
        .map_err(|e| eyre!("cannot ask for the stream leader: {e}"))?;
    info.cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .ok_or_else(|| eyre!("the stream has no leader"))
}

async fn ordered_from_start(js: &jetstream::Context) -> Result<consumer::pull::Ordered> {
    let stream = js
        .get_stream(STREAM)
        .await
        .map_err(|e| eyre!("cannot open the stream: {e}"))?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| eyre!("cannot create an ordered consumer: {e}"))?;
    consumer
        .messages()
        .await
        .map_err(|e| eyre!("cannot start consuming: {e}"))
}

struct JsProducer {
    js: jetstream::Context,
}

impl Producer for JsProducer {
    fn publish(&mut self, _batch: u64, events: Vec<Bytes>) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let mut acks = Vec::with_capacity(events.len());
            for payload in events {
                let (batch, index) =
                    event_id(&payload).ok_or_else(|| eyre!("a payload without identity"))?;
                let message = PublishMessage::build()
                    .payload(payload)
                    .message_id(format!("{batch}-{index}"));
                let ack = self
                    .js
                    .send_publish(SUBJECT, message)
                    .await
                    .map_err(|e| eyre!("JetStream publish failed: {e}"))?;
                acks.push(ack);
            }
            let mut last = 0;
            for ack in acks {
                let ack = ack
                    .await
                    .map_err(|e| eyre!("JetStream did not acknowledge: {e}"))?;
                last = last.max(ack.sequence);
            }
            // Sequences start at 1.
            Ok(last.saturating_sub(1))
        })
    }
}

struct JsReader(consumer::pull::Ordered);

impl Reader for JsReader {
    fn next(&mut self) -> BoxFuture<'_, Result<Option<ReadBatch>>> {
        Box::pin(async move {
            let Some(m) = self.0.next().await else {
                return Ok(None);
            };
            let m = m.map_err(|e| eyre!("ordered consumer: {e}"))?;
            let info = m
                .info()
                .map_err(|e| eyre!("a message without JetStream info: {e}"))?;
            Ok(Some(ReadBatch {
                events: vec![Seen {
                    offset: info.stream_sequence.saturating_sub(1),
                    committed_ns: info.published.unix_timestamp_nanos(),
                }],
                source: None,
                notice: None,
            }))
        })
    }
}
