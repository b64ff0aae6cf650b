//! Redis Streams: one `redis-server` with the append-only file on (`appendfsync everysec`
//! for tier A, `always` for tier B; RDB snapshots off, every other setting the default),
//! written with pipelined `XADD key * d <payload>` and read with `XREAD COUNT … [BLOCK 0]`
//! through the `redis` crate's multiplexed connection.
//!
//! Redis IDs are times, not positions; to start a reader at the n-th event the publisher
//! remembers the ID the server gave the first event of every pipeline, and the reader starts
//! just before the nearest remembered ID at or below n.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use color_eyre::eyre::{Result, WrapErr, bail, eyre};
use futures_util::future::BoxFuture;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};

use crate::cli::Tier;
use crate::procs::{Spawned, Workdir, free_port, loopback};
use crate::workload::{Ack, Position, Publish, Subscribe, start_now};

const KEY: &str = "bench";
/// Entries per XREAD: large enough that a replay is not bound by round trips.
const PAGE: usize = 1000;

/// (event number, Redis ID) of the first event of each pipeline, in order.
type Marks = Arc<Mutex<Vec<(u64, String)>>>;

pub(crate) struct RedisServer {
    process: Spawned,
    _dir: Workdir,
    client: redis::Client,
    tier: Tier,
    marks: Marks,
}

impl RedisServer {
    pub(crate) async fn start(binary: PathBuf, tier: Tier) -> Result<RedisServer> {
        let dir = Workdir::new("redis")?;
        let addr = loopback(free_port());
        let mut cmd = Command::new(binary);
        cmd.args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir.path())
            .args(["--appendonly", "yes"])
            .args([
                "--appendfsync",
                match tier {
                    Tier::A => "everysec",
                    Tier::B => "always",
                },
            ])
            .args(["--save", "", "--protected-mode", "no", "--daemonize", "no"])
            .args(["--logfile", ""]);
        let mut process = Spawned::spawn("redis-server", cmd, dir.path())?;
        process.wait_for_port(addr, Duration::from_secs(20)).await?;
        let client =
            redis::Client::open(format!("redis://{addr}/")).wrap_err("bad redis address")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            process.check_running()?;
            let ping = async {
                let mut conn = connect(&client).await?;
                redis::cmd("PING").query_async::<String>(&mut conn).await?;
                Ok::<_, color_eyre::Report>(())
            };
            match ping.await {
                Ok(()) => break,
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.wrap_err("redis never answered PING"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        Ok(RedisServer {
            process,
            _dir: dir,
            client,
            tier,
            marks: Marks::default(),
        })
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    pub(crate) async fn publisher(&self) -> Result<Box<dyn Publish>> {
        Ok(Box::new(RedisPublish {
            conn: connect(&self.client).await?,
            key: KEY.to_owned(),
            next: 0,
            marks: self.marks.clone(),
        }))
    }

    /// One publisher per stream key `ids[i]`, all pipelining on one shared connection, as a
    /// Redis user writing many streams would.
    pub(crate) async fn publishers(&self, ids: &[String]) -> Result<Vec<Box<dyn Publish>>> {
        let conn = connect(&self.client).await?;
        Ok(ids
            .iter()
            .map(|id| {
                Box::new(RedisPublish {
                    conn: conn.clone(),
                    key: id.clone(),
                    next: 0,
                    // Only the main key's positions are ever looked up.
                    marks: Marks::default(),
                }) as Box<dyn Publish>
            })
            .collect())
    }

    pub(crate) async fn subscriber(
        &self,
        position: Position,
        follow: bool,
    ) -> Result<Box<dyn Subscribe>> {
        let after = match position {
            Position::New => "$".to_owned(),
            Position::Offset(0) => "0-0".to_owned(),
            Position::Offset(n) => {
                let marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
                let i = marks.partition_point(|(first, _)| *first <= n);
                match i.checked_sub(1).and_then(|i| marks.get(i)) {
                    Some((_, id)) => id_before(id)?,
                    None => "0-0".to_owned(),
                }
            }
        };
        Ok(Box::new(RedisSubscribe {
            conn: connect(&self.client).await?,
            after,
            follow,
        }))
    }

    pub(crate) fn describe(&self) -> String {
        match self.tier {
            Tier::A => "redis-server appendonly yes, appendfsync everysec".into(),
            Tier::B => "redis-server appendonly yes, appendfsync always".into(),
        }
    }
}

/// A connection without the crate's default 500 ms response timeout (XREAD BLOCK waits).
async fn connect(client: &redis::Client) -> Result<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new().set_response_timeout(None);
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .wrap_err("cannot connect to redis")
}

/// The stream ID just before `id` (`ms-seq`), so that `XREAD … <that>` starts at `id`.
fn id_before(id: &str) -> Result<String> {
    let (ms, seq) = id
        .split_once('-')
        .and_then(|(m, s)| Some((m.parse::<u64>().ok()?, s.parse::<u64>().ok()?)))
        .ok_or_else(|| eyre!("unexpected redis stream id {id:?}"))?;
    Ok(if seq > 0 {
        format!("{ms}-{}", seq - 1)
    } else if ms > 0 {
        format!("{}-{}", ms - 1, u64::MAX)
    } else {
        "0-0".to_owned()
    })
}

struct RedisPublish {
    conn: MultiplexedConnection,
    /// The stream key written.
    key: String,
    /// Number of the next event submitted.
    next: u64,
    marks: Marks,
}

impl Publish for RedisPublish {
    fn submit(&mut self, events: Vec<Bytes>) -> BoxFuture<'_, Result<Ack>> {
        let mut pipe = redis::pipe();
        for e in &events {
            pipe.cmd("XADD")
                .arg(&self.key)
                .arg("*")
                .arg("d")
                .arg(e.as_ref());
        }
        let first = self.next;
        self.next += events.len() as u64;
        let mut conn = self.conn.clone();
        let marks = self.marks.clone();
        Box::pin(async move {
            Ok(start_now(async move {
                let ids: Vec<String> = pipe.query_async(&mut conn).await?;
                if let Some(id) = ids.into_iter().next() {
                    let mut marks = marks.lock().unwrap_or_else(|p| p.into_inner());
                    // Acks may complete out of order; keep the list sorted by event number.
                    let at = marks.partition_point(|(n, _)| *n < first);
                    marks.insert(at, (first, id));
                }
                Ok(())
            })
            .await)
        })
    }
}

struct RedisSubscribe {
    conn: MultiplexedConnection,
    /// The last ID read (XREAD returns entries after it).
    after: String,
    follow: bool,
}

impl Subscribe for RedisSubscribe {
    fn next_batch(&mut self) -> BoxFuture<'_, Result<Option<Vec<Bytes>>>> {
        Box::pin(async move {
            loop {
                let mut cmd = redis::cmd("XREAD");
                cmd.arg("COUNT").arg(PAGE);
                if self.follow {
                    cmd.arg("BLOCK").arg(0);
                }
                cmd.arg("STREAMS").arg(KEY).arg(&self.after);
                let reply: Value = cmd.query_async(&mut self.conn).await?;
                let (last, payloads) = parse_xread(reply)?;
                if let Some(last) = last {
                    self.after = last;
                }
                if !payloads.is_empty() {
                    return Ok(Some(payloads));
                }
                if !self.follow {
                    return Ok(None);
                }
            }
        })
    }
}

/// `[[key, [[id, [field, value]], …]]]` → (last id, values); nil → nothing.
fn parse_xread(reply: Value) -> Result<(Option<String>, Vec<Bytes>)> {
    let streams = match reply {
        Value::Nil => return Ok((None, Vec::new())),
        Value::Array(streams) => streams,
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(k, v)| Value::Array(vec![k, v]))
            .collect(),
        other => bail!("unexpected XREAD reply {other:?}"),
    };
    let mut last = None;
    let mut payloads = Vec::new();
    for stream in streams {
        let Value::Array(mut key_entries) = stream else {
            bail!("unexpected XREAD stream {stream:?}");
        };
        let Some(Value::Array(entries)) = key_entries.pop() else {
            bail!("XREAD stream without entries");
        };
        payloads.reserve(entries.len());
        for entry in entries {
            let Value::Array(mut id_fields) = entry else {
                bail!("unexpected XREAD entry {entry:?}");
            };
            let fields = id_fields.pop();
            let id = id_fields.pop();
            if let Some(Value::BulkString(id)) = id {
                last = Some(String::from_utf8_lossy(&id).into_owned());
            }
            if let Some(Value::Array(mut fv)) = fields
                && let Some(Value::BulkString(value)) = fv.pop()
            {
                payloads.push(Bytes::from(value));
            }
        }
    }
    Ok((last, payloads))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_before_steps_back_one() {
        assert_eq!(id_before("5-3").expect("id"), "5-2");
        assert_eq!(id_before("5-0").expect("id"), format!("4-{}", u64::MAX));
        assert_eq!(id_before("0-0").expect("id"), "0-0");
        assert!(id_before("nonsense").is_err());
    }

    #[test]
    fn xread_reply_parses() {
        let entry = |id: &str, v: &str| {
            Value::Array(vec![
                Value::BulkString(id.into()),
                Value::Array(vec![
                    Value::BulkString(b"d".to_vec()),
                    Value::BulkString(v.into()),
                ]),
            ])
        };
        let reply = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"bench".to_vec()),
            Value::Array(vec![entry("1-0", "a"), entry("1-1", "b")]),
        ])]);
        let (last, payloads) = parse_xread(reply).expect("parse");
        assert_eq!(last.as_deref(), Some("1-1"));
        assert_eq!(payloads, vec![Bytes::from("a"), Bytes::from("b")]);
        assert_eq!(parse_xread(Value::Nil).expect("nil").1.len(), 0);
    }
}
