//! The test traffic through the gateway, shared by the gateway's two test binaries
//! (`integration` and `cluster`, each including this file with `#[path]`): numbered-batch
//! producers, resuming readers, and the checks of what they got back. `ec-testnode` cannot
//! hold them: it would have to depend on `ec-client`, whose own tests depend on `ec-testnode`.
//!
//! A [`Producer`] publishes its batch `n` as [`batch`]`(who, n)` until stopped and records
//! each acknowledgement with its batch number; [`check_producer`] then holds the final log to
//! the exactly-once, in-order promise of the retrying idempotent publisher. A redirect reader
//! ([`read_redirected`]) follows the log with the SDK's resumable stream; [`check_reader`]
//! holds what it saw to a gapless prefix of the final log.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ec_client::{Client, Start, StreamOptions};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

/// Events per numbered producer batch.
pub const EVENTS_PER_BATCH: usize = 3;

/// The payloads of batch `n` of producer `who`: `"{who}-{n:06}-{i}"`.
pub fn batch(who: &str, n: usize) -> Vec<Bytes> {
    (0..EVENTS_PER_BATCH)
        .map(|i| Bytes::from(format!("{who}-{n:06}-{i}")))
        .collect()
}

/// What one producer got back: (batch number, acknowledgement), in completion order.
pub type Acks = Arc<Mutex<Vec<(usize, ec_client::Published)>>>;

/// One producer: where it publishes, under which name, and at what pace.
pub struct Producer {
    /// The data ID it publishes to.
    pub data_id: &'static str,
    /// Its name, the prefix of its payloads ([`batch`]).
    pub who: &'static str,
    /// Batches in flight through `Client::publisher`; 1 or less: one `Client::publish` at a
    /// time.
    pub window: usize,
    /// The wait after each batch (none when zero).
    pub pause: Duration,
    /// Opens every panic message (e.g. the fault run's seed).
    pub context: String,
}

impl Producer {
    /// Publishes batches through `client` until `stop`, pushing each acknowledgement to
    /// `acks`. Panics if the producer ever gives up.
    pub async fn run(self, client: Client, stop: CancellationToken, acks: Acks) {
        let Producer {
            data_id,
            who,
            window,
            pause,
            context,
        } = self;
        let mut n = 0;
        if window <= 1 {
            while !stop.is_cancelled() {
                let published = client
                    .publish(data_id, batch(who, n))
                    .await
                    .unwrap_or_else(|e| panic!("{context}producer {who} gave up: {e}"));
                acks.lock().expect("lock").push((n, published));
                n += 1;
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            return;
        }
        let publisher = client
            .publisher(data_id, window)
            .await
            .unwrap_or_else(|e| panic!("{context}producer {who}: {e}"));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, ec_client::PendingPublish)>(64);
        let waiter_context = context.clone();
        let waiter = tokio::spawn(async move {
            while let Some((n, pending)) = rx.recv().await {
                let published = pending
                    .await
                    .unwrap_or_else(|e| panic!("{waiter_context}producer {who} gave up: {e}"));
                acks.lock().expect("lock").push((n, published));
            }
        });
        while !stop.is_cancelled() {
            let pending = publisher
                .send(batch(who, n))
                .await
                .unwrap_or_else(|e| panic!("{context}producer {who}: {e}"));
            if tx.send((n, pending)).await.is_err() {
                break;
            }
            n += 1;
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        drop(tx);
        waiter.await.expect("every batch acknowledged");
        publisher.close().await.expect("clean close");
    }
}

/// Every batch of `who` in `log` (offset, payload): acknowledged once, in send order, where
/// its acknowledgement says; stored exactly once, in send order. `context` opens every
/// failure message.
pub fn check_producer(context: &str, who: &str, acks: &Acks, log: &[(u64, Bytes)]) {
    let acks = acks.lock().expect("lock").clone();
    assert!(!acks.is_empty(), "{context}producer {who} published");
    let mut last_offset = None;
    for (i, (n, p)) in acks.iter().enumerate() {
        assert_eq!(
            *n, i,
            "{context}{who} acknowledged in send order, each once"
        );
        assert!(
            last_offset.is_none_or(|l| l < p.first.0),
            "{context}{who} batch {n} stored after the one before"
        );
        last_offset = Some(p.last.0);
        for (k, payload) in batch(who, *n).iter().enumerate() {
            assert_eq!(
                log.get(p.first.0 as usize + k).map(|e| &e.1),
                Some(payload),
                "{context}{who} batch {n} is where its acknowledgement says"
            );
        }
    }
    let prefix = format!("{who}-");
    let stored: Vec<&Bytes> = log
        .iter()
        .map(|e| &e.1)
        .filter(|d| d.starts_with(prefix.as_bytes()))
        .collect();
    let sent: Vec<Bytes> = (0..acks.len()).flat_map(|n| batch(who, n)).collect();
    assert_eq!(
        stored.len(),
        sent.len(),
        "{context}every {who} event stored exactly once (no duplicate, none missing)"
    );
    assert!(
        stored.iter().zip(&sent).all(|(a, b)| *a == b),
        "{context}{who}'s events are stored in its send order"
    );
}

/// What a reader saw: (offset, payload) in delivery order.
pub type Seen = Arc<Mutex<Vec<(u64, Bytes)>>>;

/// Follows `data_id` through `client`'s resumable stream (redirect mode: straight to a node
/// the gateway names) from offset 0 until `stop`, pushing each event to `seen`; when the
/// stream ends it starts a new one 50 ms later from the next offset. Panics on an offset out
/// of order; `context` opens the message.
pub async fn read_redirected(
    client: Client,
    data_id: &'static str,
    context: String,
    stop: CancellationToken,
    seen: Seen,
) {
    while !stop.is_cancelled() {
        let next = seen.lock().expect("lock").len() as u64;
        let mut stream = client.stream(
            data_id,
            StreamOptions::from_start(Start::Offset(ec_client::Offset(next))),
        );
        loop {
            let item = tokio::select! {
                () = stop.cancelled() => return,
                item = stream.next() => item,
            };
            match item {
                Some(Ok(ec_client::Delivery::Batch { events, .. })) => {
                    let mut seen = seen.lock().expect("lock");
                    for e in events {
                        assert_eq!(
                            e.offset.0,
                            seen.len() as u64,
                            "{context}redirect reader got offsets out of order"
                        );
                        seen.push((e.offset.0, e.data));
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reader `who` saw a gapless prefix of `log` (offset, payload), each offset with its
/// content. `context` opens every failure message.
pub fn check_reader(context: &str, who: &str, seen: &Seen, log: &[(u64, Bytes)]) {
    let seen = seen.lock().expect("lock").clone();
    assert!(
        seen.len() <= log.len(),
        "{context}{who} saw more than exists"
    );
    for (i, (offset, data)) in seen.iter().enumerate() {
        assert_eq!(*offset, i as u64, "{context}{who} gapless");
        assert_eq!(
            Some(data),
            log.get(i).map(|e| &e.1),
            "{context}{who} saw offset {i} with other content than the final log"
        );
    }
}
