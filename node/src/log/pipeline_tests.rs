//! Tests of the pipelined group commit under `Always`: no answer and no visibility before
//! the fsync covering a batch, batches written while an fsync runs, other writers waiting
//! for the pipeline to drain, and dense offsets under many concurrent appenders.
//!
//! [`Hooks`] lets a test hold the fsync thread just before it syncs and watch which batches
//! the committer has written. Waits are bounded by generous deadlines; nothing sleeps bare.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ec_core::{DataId, Offset};
use tokio::time::timeout;

use super::super::{EventLog, LogOptions, WriteAccess};

const DEADLINE: Duration = Duration::from_secs(30);

/// Test hooks inside [`super::Pipeline`].
#[derive(Default)]
pub(in crate::log) struct Hooks {
    /// While true, the fsync thread waits before it syncs.
    held: Mutex<bool>,
    released: Condvar,
    /// Sequence number of the last batch the committer handed over.
    written: AtomicU64,
    /// Syncs started (the fsync thread passed the hold).
    syncs: AtomicU64,
}

impl Hooks {
    fn hold(&self) {
        *self.held.lock().unwrap() = true;
    }

    fn release(&self) {
        *self.held.lock().unwrap() = false;
        self.released.notify_all();
    }

    /// Called by the fsync thread before each sync.
    pub(super) fn before_sync(&self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        while *held {
            held = self.released.wait(held).unwrap_or_else(|e| e.into_inner());
        }
        self.syncs.fetch_add(1, Ordering::SeqCst);
    }

    /// Called by the committer after handing batch `seq` over.
    pub(super) fn note_written(&self, seq: u64) {
        self.written.store(seq, Ordering::SeqCst);
    }

    /// Waits (bounded) until the committer has handed over batch `seq`.
    async fn wait_written(&self, seq: u64) {
        let started = Instant::now();
        while self.written.load(Ordering::SeqCst) < seq {
            assert!(
                started.elapsed() < DEADLINE,
                "batch {seq} was never written"
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

fn id(s: &str) -> DataId {
    DataId::parse(s).unwrap()
}

fn ev(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn hooks(log: &EventLog) -> &Hooks {
    &log.inner.store.pipeline.test
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_answered_or_shown_before_the_covering_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path(), LogOptions::default()).unwrap();
    let a = id("a");
    log.append(&a, vec![ev("seed")], true).await.unwrap();
    let written_before = hooks(&log).written.load(Ordering::SeqCst);
    let commits_before = log.commit_count();

    hooks(&log).hold();
    let mut first = log.submit(&a, vec![ev("1"), ev("2")], false).await.unwrap();
    hooks(&log).wait_written(written_before + 1).await;
    // Written to the journal, not yet synced: not answered, not readable, not durable end.
    assert!(first.try_result().is_none());
    assert_eq!(log.high_watermark(&a).unwrap(), Offset(1));
    assert_eq!(log.stats(&a).unwrap().next, Offset(1));
    assert!(log.read(&a, Offset(1), 10, usize::MAX).unwrap().is_empty());

    // The pipeline: more batches are written while the first one's fsync is held, and a
    // stream created by one of them is not visible yet.
    let mut second = log.submit(&a, vec![ev("3")], false).await.unwrap();
    hooks(&log).wait_written(written_before + 2).await;
    let b = id("b");
    let mut created = log.submit(&b, vec![ev("b0")], true).await.unwrap();
    hooks(&log).wait_written(written_before + 3).await;
    assert!(second.try_result().is_none());
    assert!(created.try_result().is_none());
    assert!(!log.contains(&b));
    assert_eq!(log.commit_count(), commits_before);

    hooks(&log).release();
    let first = timeout(DEADLINE, first).await.unwrap().unwrap();
    let second = timeout(DEADLINE, second).await.unwrap().unwrap();
    let created = timeout(DEADLINE, created).await.unwrap().unwrap();
    assert_eq!((first.first, first.last), (Offset(1), Offset(2)));
    assert_eq!((second.first, second.last), (Offset(3), Offset(3)));
    assert_eq!(created.first, Offset(0));
    // Answered only after a sync ran.
    assert!(log.commit_count() > commits_before);
    assert!(hooks(&log).syncs.load(Ordering::SeqCst) >= 1);
    assert_eq!(log.high_watermark(&a).unwrap(), Offset(4));
    assert!(log.contains(&b));
    let read = log.read(&a, Offset(1), 10, usize::MAX).unwrap();
    assert_eq!(read.len(), 3);
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_writers_wait_for_batches_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path(), LogOptions::default()).unwrap();
    let a = id("a");
    log.append(&a, vec![ev("seed")], true).await.unwrap();
    let written_before = hooks(&log).written.load(Ordering::SeqCst);

    hooks(&log).hold();
    let pending = log.submit(&a, vec![ev("old role")], false).await.unwrap();
    hooks(&log).wait_written(written_before + 1).await;
    // Becoming leader must wait until the batch written as a standalone node is durable.
    let ensure = {
        let log = log.clone();
        let a = a.clone();
        tokio::spawn(async move {
            log.ensure(&a, WriteAccess::Leader(super::super::Epoch(7)))
                .await
        })
    };
    let mut ensure = ensure;
    assert!(
        timeout(Duration::from_millis(100), &mut ensure)
            .await
            .is_err(),
        "ensure() went ahead of a batch in flight"
    );
    hooks(&log).release();
    timeout(DEADLINE, ensure).await.unwrap().unwrap().unwrap();
    let old = timeout(DEADLINE, pending).await.unwrap().unwrap();
    assert_eq!(old.epoch.0, 0);
    let new = log.append(&a, vec![ev("new role")], false).await.unwrap();
    assert_eq!((new.first, new.epoch.0), (Offset(2), 7));
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_pipelined_appenders_get_distinct_dense_offsets() {
    const TASKS: usize = 48;
    const APPENDS: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path(), LogOptions::default()).unwrap();
    // Three streams, all created by the appenders themselves, concurrently.
    let streams = [id("s0"), id("s1"), id("s2")];
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let log = log.clone();
        let stream = streams[t % streams.len()].clone();
        tasks.push(tokio::spawn(async move {
            // Each task keeps several appends in flight, as a pipelined publisher does.
            let mut pending = Vec::new();
            for i in 0..APPENDS {
                let payloads = vec![ev(&format!("{t}:{i}:a")), ev(&format!("{t}:{i}:b"))];
                pending.push((i, log.submit(&stream, payloads, true).await.unwrap()));
            }
            let mut got = Vec::new();
            for (i, p) in pending {
                let appended = timeout(DEADLINE, p).await.unwrap().unwrap();
                assert_eq!(appended.last.0, appended.first.0 + 1);
                got.push((appended.first.0, format!("{t}:{i}:a")));
            }
            (stream, got)
        }));
    }
    let mut by_stream: Vec<Vec<(u64, String)>> = vec![Vec::new(); streams.len()];
    for task in tasks {
        let (stream, got) = timeout(DEADLINE, task).await.unwrap().unwrap();
        // One publisher's appends land in the order it submitted them.
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
        let index = streams.iter().position(|s| *s == stream).unwrap();
        by_stream[index].extend(got);
    }
    for (stream, mut got) in streams.iter().zip(by_stream) {
        got.sort();
        let firsts: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
        let expected: Vec<u64> = (0..firsts.len() as u64).map(|i| i * 2).collect();
        assert_eq!(
            firsts, expected,
            "offsets of {stream} are not distinct and dense"
        );
        let read = log.read(stream, Offset(0), usize::MAX, usize::MAX).unwrap();
        assert_eq!(read.len(), got.len() * 2);
        for (offset, payload) in &got {
            assert_eq!(read[*offset as usize].data, ev(payload));
        }
        assert_eq!(log.high_watermark(stream).unwrap().0, read.len() as u64);
    }
    // Group commit: far fewer fsyncs than appends.
    assert!(log.commit_count() < (TASKS * APPENDS) as u64);
    log.close().await.unwrap();
    drop(log);
    // Everything acknowledged is there after a reopen.
    let log = EventLog::open(dir.path(), LogOptions::default()).unwrap();
    for stream in &streams {
        let expected = (TASKS / streams.len() * APPENDS * 2) as u64;
        assert_eq!(log.stats(stream).unwrap().next, Offset(expected));
    }
    log.close().await.unwrap();
}

#[test]
fn the_active_journal_is_found_where_fjall_keeps_it() {
    // If a fjall upgrade moves its journals, syncing falls back to `persist` (correct but
    // not overlapped): this test says so instead of letting the pipeline silently stop.
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let log = EventLog::open(dir.path(), LogOptions::default()).unwrap();
        log.append(&id("a"), vec![ev("x")], true).await.unwrap();
        assert!(super::newest_journal(dir.path()).unwrap().is_some());
        let mut sync = super::JournalSync::new(dir.path());
        assert!(sync.refresh().unwrap());
        log.close().await.unwrap();
    });
}
