//! NATS JetStream: one `nats-server` with JetStream on file storage (`sync_interval: 1s` for
//! tier A, `always` for tier B; every other setting the default) and one stream, `bench`,
//! taking the subject `bench` (every scenario with one data ID) and `bench.<id>` (the growth
//! curves' many data IDs: subjects of one stream, as JetStream users map many keys),
//! written with async JetStream publishes (each acknowledged by the server after it
//! stored the message) and read with an ordered pull consumer, through `async-nats`.
//!
//! JetStream sequences start at 1, so the n-th event (0-based) is sequence n + 1.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use color_eyre::eyre::{Result, WrapErr, eyre};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};

use crate::cli::Tier;
use crate::procs::{Spawned, Workdir, free_port, loopback};
use crate::workload::{Ack, Position, Publish, Subscribe};

const STREAM: &str = "bench";
const SUBJECT: &str = "bench";
/// The subjects of the growth curves' data IDs: `bench.<id>`.
const ID_SUBJECTS: &str = "bench.>";
/// Messages taken at most per batch handed to the driver (whatever has already arrived).
const MAX_BATCH: usize = 1000;

pub(crate) struct NatsServer {
    process: Spawned,
    _dir: Workdir,
    url: String,
    tier: Tier,
}

impl NatsServer {
    pub(crate) async fn start(binary: PathBuf, tier: Tier) -> Result<NatsServer> {
        let dir = Workdir::new("nats")?;
        let addr = loopback(free_port());
        let sync = match tier {
            Tier::A => "\"1s\"",
            Tier::B => "always",
        };
        let config = format!(
            "listen: \"{addr}\"\nserver_name: \"ec-bench\"\njetstream {{\n  store_dir: \"{}\"\n  sync_interval: {sync}\n}}\n",
            dir.path().join("js").display()
        );
        let config_path = dir.path().join("nats.conf");
        std::fs::write(&config_path, config)
            .wrap_err_with(|| format!("cannot write {}", config_path.display()))?;
        let mut cmd = Command::new(binary);
        cmd.arg("-c").arg(&config_path);
        let mut process = Spawned::spawn("nats-server", cmd, dir.path())?;
        process.wait_for_port(addr, Duration::from_secs(20)).await?;
        let url = format!("nats://{addr}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            process.check_running()?;
            let created = async {
                let js = jetstream::new(connect(&url).await?);
                js.get_or_create_stream(stream::Config {
                    name: STREAM.into(),
                    subjects: vec![SUBJECT.into(), ID_SUBJECTS.into()],
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| eyre!("cannot create the stream: {e}"))?;
                Ok::<_, color_eyre::Report>(())
            };
            match created.await {
                Ok(()) => break,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        Ok(NatsServer {
            process,
            _dir: dir,
            url,
            tier,
        })
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    pub(crate) async fn publisher(&self) -> Result<Box<dyn Publish>> {
        Ok(Box::new(NatsPublish {
            js: jetstream::new(connect(&self.url).await?),
            subject: SUBJECT.to_owned(),
        }))
    }

    /// One publisher per data ID (subject `bench.<id>` of the one stream), all on one
    /// connection.
    pub(crate) async fn publishers(&self, ids: &[String]) -> Result<Vec<Box<dyn Publish>>> {
        let js = jetstream::new(connect(&self.url).await?);
        Ok(ids
            .iter()
            .map(|id| {
                Box::new(NatsPublish {
                    js: js.clone(),
                    subject: format!("{SUBJECT}.{id}"),
                }) as Box<dyn Publish>
            })
            .collect())
    }

    pub(crate) async fn subscriber(
        &self,
        position: Position,
        _follow: bool,
    ) -> Result<Box<dyn Subscribe>> {
        let js = jetstream::new(connect(&self.url).await?);
        let stream = js
            .get_stream(STREAM)
            .await
            .map_err(|e| eyre!("cannot open the stream: {e}"))?;
        let deliver_policy = match position {
            Position::Offset(n) => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: n + 1,
            },
            Position::New => consumer::DeliverPolicy::New,
        };
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| eyre!("cannot create an ordered consumer: {e}"))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| eyre!("cannot start consuming: {e}"))?;
        Ok(Box::new(NatsSubscribe { messages }))
    }

    pub(crate) fn describe(&self) -> String {
        match self.tier {
            Tier::A => "nats-server JetStream file storage, sync_interval 1s".into(),
            Tier::B => "nats-server JetStream file storage, sync_interval always".into(),
        }
    }
}

async fn connect(url: &str) -> Result<async_nats::Client> {
    async_nats::connect(url)
        .await
        .wrap_err_with(|| format!("cannot connect to {url}"))
}

struct NatsPublish {
    js: jetstream::Context,
    /// The subject published to.
    subject: String,
}

impl Publish for NatsPublish {
    fn submit(&mut self, events: Vec<Bytes>) -> BoxFuture<'_, Result<Ack>> {
        Box::pin(async move {
            let mut acks = Vec::with_capacity(events.len());
            for payload in events {
                let ack = self
                    .js
                    .publish(self.subject.clone(), payload)
                    .await
                    .map_err(|e| eyre!("JetStream publish failed: {e}"))?;
                acks.push(ack);
            }
            Ok(Box::pin(async move {
                for ack in acks {
                    ack.await
                        .map_err(|e| eyre!("JetStream did not acknowledge: {e}"))?;
                }
                Ok(())
            }) as Ack)
        })
    }
}

struct NatsSubscribe {
    messages: consumer::pull::Ordered,
}

impl Subscribe for NatsSubscribe {
    fn next_batch(&mut self) -> BoxFuture<'_, Result<Option<Vec<Bytes>>>> {
        Box::pin(async move {
            let Some(first) = self.messages.next().await else {
                return Ok(None);
            };
            let first = first.map_err(|e| eyre!("consumer failed: {e}"))?;
            let mut batch = vec![first.message.payload];
            // Whatever has already arrived goes into the same batch.
            while batch.len() < MAX_BATCH {
                match self.messages.next().now_or_never() {
                    Some(Some(Ok(m))) => batch.push(m.message.payload),
                    Some(Some(Err(e))) => return Err(eyre!("consumer failed: {e}")),
                    Some(None) | None => break,
                }
            }
            Ok(Some(batch))
        })
    }
}
