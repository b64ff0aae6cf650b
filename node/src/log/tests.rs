//! Tests of the event log through its public API, each in its own temporary directory.
//! Waits are bounded by generous deadlines; nothing sleeps bare.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use ec_core::{DataId, Offset, TimestampMs};
use tokio::time::timeout;

use super::*;

const DEADLINE: Duration = Duration::from_secs(30);

fn id(s: &str) -> DataId {
    DataId::parse(s).unwrap()
}

fn ev(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn open(dir: &Path) -> EventLog {
    EventLog::open(dir, LogOptions::default()).unwrap()
}

fn open_with_retention(dir: &Path, retention: Retention) -> EventLog {
    EventLog::open(
        dir,
        LogOptions {
            retention,
            ..LogOptions::default()
        },
    )
    .unwrap()
}

fn payloads(events: &[StoredEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| String::from_utf8(e.data.to_vec()).unwrap())
        .collect()
}

/// Appends until the committer's clock has moved past `after`, so the returned append has a
/// strictly later timestamp. Bounded by the test deadline.
async fn append_after(
    log: &EventLog,
    data_id: &DataId,
    after: TimestampMs,
    payload: &str,
) -> Appended {
    timeout(DEADLINE, async {
        while TimestampMs::now() <= after {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap();
    let appended = log.append(data_id, vec![ev(payload)], false).await.unwrap();
    assert!(appended.timestamp > after);
    appended
}

#[tokio::test]
async fn round_trip_across_streams() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let (a, b) = (id("a"), id("b"));

    let first = log
        .append(&a, vec![ev("a0"), ev("a1")], true)
        .await
        .unwrap();
    assert_eq!((first.first, first.last), (Offset(0), Offset(1)));
    let other = log.append(&b, vec![ev("b0")], true).await.unwrap();
    assert_eq!((other.first, other.last), (Offset(0), Offset(0)));
    let second = log.append(&a, vec![ev("a2")], false).await.unwrap();
    assert_eq!((second.first, second.last), (Offset(2), Offset(2)));
    assert!(second.timestamp >= first.timestamp);

    let read = log.read(&a, Offset(0), 100, usize::MAX).unwrap();
    assert_eq!(payloads(&read), ["a0", "a1", "a2"]);
    assert_eq!(
        read.iter().map(|e| e.offset).collect::<Vec<_>>(),
        [Offset(0), Offset(1), Offset(2)]
    );
    assert_eq!(read[2].timestamp, second.timestamp);
    assert_eq!(
        payloads(&log.read(&b, Offset(0), 100, usize::MAX).unwrap()),
        ["b0"]
    );

    // Limits: by count, by bytes (but always at least one event), from the middle, at the end.
    assert_eq!(
        payloads(&log.read(&a, Offset(0), 2, usize::MAX).unwrap()),
        ["a0", "a1"]
    );
    assert_eq!(payloads(&log.read(&a, Offset(0), 100, 3).unwrap()), ["a0"]);
    assert_eq!(
        payloads(&log.read(&a, Offset(0), 100, 4).unwrap()),
        ["a0", "a1"]
    );
    assert_eq!(payloads(&log.read(&a, Offset(0), 100, 0).unwrap()), ["a0"]);
    assert_eq!(
        payloads(&log.read(&a, Offset(1), 100, usize::MAX).unwrap()),
        ["a1", "a2"]
    );
    assert!(log.read(&a, Offset(3), 100, usize::MAX).unwrap().is_empty());
    assert!(
        log.read(&a, Offset(99), 100, usize::MAX)
            .unwrap()
            .is_empty()
    );

    let stats = log.stats(&a).unwrap();
    assert_eq!(
        (stats.earliest, stats.next, stats.events, stats.bytes),
        (Offset(0), Offset(3), 3, 6)
    );
    assert_eq!(stats.first_timestamp, Some(first.timestamp));
    assert_eq!(stats.last_timestamp, Some(second.timestamp));
    let listed: Vec<_> = log.list().into_iter().map(|s| s.data_id).collect();
    assert_eq!(listed, [a.clone(), b.clone()]);
    assert!(log.contains(&a) && !log.contains(&id("c")));
    log.close().await.unwrap();
}

#[tokio::test]
async fn unknown_stream_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let x = id("missing");
    let err = log.append(&x, vec![ev("e")], false).await.unwrap_err();
    assert!(
        matches!(&err, LogError::NotFound { data_id } if *data_id == x),
        "{err}"
    );
    assert!(err.to_string().contains("missing"), "{err}");
    assert!(matches!(
        log.read(&x, Offset(0), 1, 1),
        Err(LogError::NotFound { .. })
    ));
    assert!(matches!(log.stats(&x), Err(LogError::NotFound { .. })));
    assert!(matches!(log.subscribe(&x), Err(LogError::NotFound { .. })));
    assert!(matches!(
        log.offset_at_time(&x, TimestampMs(0)),
        Err(LogError::NotFound { .. })
    ));
    assert!(!log.contains(&x));
    assert!(log.list().is_empty());
    assert!(matches!(
        log.append(&x, Vec::new(), true).await,
        Err(LogError::EmptyBatch)
    ));
    assert!(
        !log.contains(&x),
        "an empty append must not create the stream"
    );
}

#[tokio::test]
async fn close_then_append_is_closed_and_close_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let a = id("a");
    log.append(&a, vec![ev("x")], true).await.unwrap();
    let clone = log.clone();
    log.close().await.unwrap();
    clone.close().await.unwrap();
    assert!(matches!(
        clone.append(&a, vec![ev("y")], true).await,
        Err(LogError::Closed)
    ));
    assert!(matches!(
        log.enforce_retention(TimestampMs::now()),
        Err(LogError::Closed)
    ));
    // Reads still work on a closed log.
    assert_eq!(
        payloads(&log.read(&a, Offset(0), 10, usize::MAX).unwrap()),
        ["x"]
    );
}

#[tokio::test]
async fn offsets_stay_dense_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let a = id("a");
    let log = open(dir.path());
    log.append(&a, vec![ev("0"), ev("1")], true).await.unwrap();
    log.append(&id("b"), vec![ev("b0")], true).await.unwrap();
    let before = log.stats(&a).unwrap();
    log.close().await.unwrap();
    drop(log);

    let log = open(dir.path());
    assert_eq!(log.stats(&a).unwrap(), before);
    let appended = log.append(&a, vec![ev("2")], false).await.unwrap();
    assert_eq!(appended.first, Offset(2));
    assert!(appended.timestamp >= before.last_timestamp.unwrap());
    let c = log.append(&id("c"), vec![ev("c0")], true).await.unwrap();
    assert_eq!(c.first, Offset(0));
    assert_eq!(
        payloads(&log.read(&a, Offset(0), 10, usize::MAX).unwrap()),
        ["0", "1", "2"]
    );
    assert_eq!(
        payloads(&log.read(&id("b"), Offset(0), 10, usize::MAX).unwrap()),
        ["b0"]
    );
    assert_eq!(
        payloads(&log.read(&id("c"), Offset(0), 10, usize::MAX).unwrap()),
        ["c0"]
    );
    log.close().await.unwrap();
    drop(log);

    // Stream numbers are not reused: all three streams keep their own events after another reopen.
    let log = open(dir.path());
    assert_eq!(log.list().len(), 3);
    assert_eq!(log.stream_count(), 3);
    assert_eq!(
        payloads(&log.read(&id("c"), Offset(0), 10, usize::MAX).unwrap()),
        ["c0"]
    );
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_get_dense_offsets_with_fewer_fsyncs() {
    let (commits, appends) = concurrent_appenders(LogOptions::default()).await;
    assert!(
        commits < appends,
        "{commits} commits for {appends} appends: group commit did not batch"
    );
}

// Under `Interval` some requests are committed inline, some by the committer thread: the
// same guarantees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_get_dense_offsets_committed_inline_or_queued() {
    concurrent_appenders(interval()).await;
}

/// 64 tasks append 20 events each to two streams; checks that each task's offsets rise,
/// every stream's offsets are dense and what was acknowledged is stored; returns the
/// number of commits and appends.
async fn concurrent_appenders(opts: LogOptions) -> (u64, u64) {
    const TASKS: usize = 64;
    const APPENDS: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path(), opts).unwrap();
    let streams = [id("s0"), id("s1")];
    for s in &streams {
        log.append(s, vec![ev("seed")], true).await.unwrap();
    }
    let commits_before = log.commit_count();

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let log = log.clone();
        let stream = streams[t % 2].clone();
        tasks.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for i in 0..APPENDS {
                let payload = format!("{t}:{i}");
                let appended = log
                    .append(&stream, vec![ev(&payload)], false)
                    .await
                    .unwrap();
                assert_eq!(appended.first, appended.last);
                offsets.push((stream.clone(), appended.first, payload));
            }
            offsets
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let offsets = timeout(DEADLINE, task).await.unwrap().unwrap();
        // One publisher's appends land in the order it made them.
        assert!(offsets.windows(2).all(|w| w[0].1 < w[1].1));
        all.extend(offsets);
    }
    let appends = (TASKS * APPENDS) as u64;
    for s in &streams {
        let mut mine: Vec<_> = all.iter().filter(|(d, _, _)| d == s).collect();
        mine.sort_by_key(|(_, o, _)| *o);
        let offsets: Vec<u64> = mine.iter().map(|(_, o, _)| o.0).collect();
        let expected: Vec<u64> = (1..=appends / 2).collect();
        assert_eq!(offsets, expected, "offsets of {s} are not dense");
        // What was acknowledged at an offset is what is stored there.
        let read = log.read(s, Offset(1), usize::MAX, usize::MAX).unwrap();
        let stored = payloads(&read);
        let acked: Vec<_> = mine.iter().map(|(_, _, p)| p.clone()).collect();
        assert_eq!(stored, acked);
    }
    let commits = log.commit_count() - commits_before;
    log.close().await.unwrap();
    (commits, appends)
}

#[tokio::test]
async fn submitted_appends_keep_submission_order_and_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let a = id("a");
    log.append(&a, vec![ev("seed")], true).await.unwrap();
    let commits_before = log.commit_count();
    let mut pending = Vec::new();
    for i in 0..50 {
        pending.push(
            log.submit(&a, vec![ev(&i.to_string())], false)
                .await
                .unwrap(),
        );
    }
    for (i, mut p) in pending.into_iter().enumerate() {
        let appended = match p.try_result() {
            Some(result) => result.unwrap(),
            None => timeout(DEADLINE, p).await.unwrap().unwrap(),
        };
        assert_eq!(appended.first, Offset(i as u64 + 1));
    }
    let commits = log.commit_count() - commits_before;
    assert!(commits < 50, "{commits} commits for 50 pipelined appends");
    let read = log.read(&a, Offset(1), 100, usize::MAX).unwrap();
    assert_eq!(
        payloads(&read),
        (0..50).map(|i| i.to_string()).collect::<Vec<_>>()
    );
    log.close().await.unwrap();
}

#[tokio::test]
async fn subscribe_wakes_on_commit() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let a = id("a");
    log.append(&a, vec![ev("0")], true).await.unwrap();
    let mut end = log.subscribe(&a).unwrap();
    assert_eq!(*end.borrow_and_update(), Offset(1));

    let writer = log.clone();
    let stream = a.clone();
    let publish =
        tokio::spawn(async move { writer.append(&stream, vec![ev("1"), ev("2")], false).await });
    timeout(DEADLINE, end.changed()).await.unwrap().unwrap();
    assert_eq!(*end.borrow_and_update(), Offset(3));
    // The readable end never runs ahead of what a read returns.
    assert_eq!(log.read(&a, Offset(1), 10, usize::MAX).unwrap().len(), 2);
    timeout(DEADLINE, publish).await.unwrap().unwrap().unwrap();
    log.close().await.unwrap();
}

#[tokio::test]
async fn retention_by_events_trims_head_and_reports_earliest() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_with_retention(
        dir.path(),
        Retention {
            max_events: Some(3),
            ..Retention::default()
        },
    );
    let (a, b) = (id("a"), id("b"));
    let events: Vec<_> = (0..10).map(|i| ev(&format!("e{i}"))).collect();
    log.append(&a, events, true).await.unwrap();
    log.append(&b, vec![ev("b0")], true).await.unwrap();

    let trimmed = log.enforce_retention(TimestampMs::now()).unwrap();
    assert_eq!(trimmed, [(a.clone(), Offset(7))]);
    let err = log.read(&a, Offset(6), 10, usize::MAX).unwrap_err();
    assert!(
        matches!(
            &err,
            LogError::BelowRetention {
                requested: Offset(6),
                earliest: Offset(7),
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("data ID a") && msg.contains('7') && msg.contains('6'),
        "{msg}"
    );
    assert_eq!(
        payloads(&log.read(&a, Offset(7), 10, usize::MAX).unwrap()),
        ["e7", "e8", "e9"]
    );
    let stats = log.stats(&a).unwrap();
    assert_eq!(
        (stats.earliest, stats.next, stats.events, stats.bytes),
        (Offset(7), Offset(10), 3, 6)
    );
    assert!(stats.first_timestamp.is_some());

    // Nothing more to trim; offsets continue after the trim point.
    assert!(
        log.enforce_retention(TimestampMs::now())
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        log.append(&a, vec![ev("e10")], false).await.unwrap().first,
        Offset(10)
    );
    log.close().await.unwrap();
    drop(log);

    // The trim point survives a reopen.
    let log = open(dir.path());
    let stats = log.stats(&a).unwrap();
    assert_eq!(
        (stats.earliest, stats.next, stats.bytes),
        (Offset(7), Offset(11), 9)
    );
    assert!(matches!(
        log.read(&a, Offset(0), 10, usize::MAX),
        Err(LogError::BelowRetention {
            earliest: Offset(7),
            ..
        })
    ));
    log.close().await.unwrap();
}

#[tokio::test]
async fn retention_by_bytes_keeps_newest_within_budget() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_with_retention(
        dir.path(),
        Retention {
            max_bytes: Some(35),
            ..Retention::default()
        },
    );
    let a = id("a");
    let events: Vec<_> = (0..6).map(|i| ev(&format!("event-{i:04}"))).collect(); // 10 bytes each
    log.append(&a, events, true).await.unwrap();
    assert_eq!(
        log.enforce_retention(TimestampMs::now()).unwrap(),
        [(a.clone(), Offset(3))]
    );
    let stats = log.stats(&a).unwrap();
    assert_eq!(
        (stats.earliest, stats.events, stats.bytes),
        (Offset(3), 3, 30)
    );
    log.close().await.unwrap();
}

#[tokio::test]
async fn retention_by_age_and_offset_at_time() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_with_retention(
        dir.path(),
        Retention {
            max_age: Some(Duration::from_secs(60)),
            ..Retention::default()
        },
    );
    let a = id("a");
    let old = log
        .append(&a, vec![ev("o0"), ev("o1")], true)
        .await
        .unwrap();
    let new = append_after(&log, &a, old.timestamp, "n2").await;
    assert_eq!(new.first, Offset(2));

    assert_eq!(
        log.offset_at_time(&a, TimestampMs(i64::MIN)).unwrap(),
        Offset(0)
    );
    assert_eq!(log.offset_at_time(&a, old.timestamp).unwrap(), Offset(0));
    assert_eq!(
        log.offset_at_time(&a, TimestampMs(old.timestamp.0 + 1))
            .unwrap(),
        Offset(2)
    );
    assert_eq!(log.offset_at_time(&a, new.timestamp).unwrap(), Offset(2));
    assert_eq!(
        log.offset_at_time(&a, TimestampMs(new.timestamp.0 + 1))
            .unwrap(),
        Offset(3)
    );

    // Nothing is older than 60 s yet.
    assert!(
        log.enforce_retention(TimestampMs::now())
            .unwrap()
            .is_empty()
    );
    // 60 s after the new event: the cutoff is exactly its timestamp, so only it survives.
    let now = TimestampMs(new.timestamp.0 + 60_000);
    assert_eq!(
        log.enforce_retention(now).unwrap(),
        [(a.clone(), Offset(2))]
    );
    let stats = log.stats(&a).unwrap();
    assert_eq!(stats.first_timestamp, Some(new.timestamp));
    assert_eq!(
        log.offset_at_time(&a, TimestampMs(i64::MIN)).unwrap(),
        Offset(2)
    );

    // Later still: everything goes, the stream is empty but keeps its offsets.
    let later = TimestampMs(new.timestamp.0 + 120_000);
    assert_eq!(
        log.enforce_retention(later).unwrap(),
        [(a.clone(), Offset(3))]
    );
    let stats = log.stats(&a).unwrap();
    assert_eq!(
        (stats.earliest, stats.next, stats.events, stats.bytes),
        (Offset(3), Offset(3), 0, 0)
    );
    assert_eq!((stats.first_timestamp, stats.last_timestamp), (None, None));
    assert!(log.read(&a, Offset(3), 10, usize::MAX).unwrap().is_empty());
    assert_eq!(log.offset_at_time(&a, TimestampMs(0)).unwrap(), Offset(3));
    let next = log.append(&a, vec![ev("n3")], false).await.unwrap();
    assert_eq!(next.first, Offset(3));
    assert!(next.timestamp >= new.timestamp);
    log.close().await.unwrap();
}

#[tokio::test]
async fn large_trim_is_chunked_and_exact() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_with_retention(
        dir.path(),
        Retention {
            max_events: Some(5),
            ..Retention::default()
        },
    );
    let a = id("a");
    for chunk in 0..20 {
        let events: Vec<_> = (0..1000)
            .map(|i| ev(&format!("{:05}", chunk * 1000 + i)))
            .collect();
        log.append(&a, events, true).await.unwrap();
    }
    assert_eq!(
        log.enforce_retention(TimestampMs::now()).unwrap(),
        [(a.clone(), Offset(19_995))]
    );
    let stats = log.stats(&a).unwrap();
    assert_eq!((stats.events, stats.bytes), (5, 25));
    assert_eq!(
        payloads(&log.read(&a, Offset(19_995), 10, usize::MAX).unwrap()),
        ["19995", "19996", "19997", "19998", "19999"]
    );
    // Only the last request's chunk is still stored: every chunk whose events are all
    // trimmed is gone from disk.
    let store = &log.inner.store;
    let stored = store.events.prefix(record::stream_prefix(0)).count();
    assert_eq!(stored, 1);
    log.close().await.unwrap();
}

#[tokio::test]
async fn interval_policy_acks_after_write_and_persists_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        fsync: FsyncPolicy::Interval(Duration::from_millis(5)),
        ..LogOptions::default()
    };
    let a = id("a");
    let log = EventLog::open(dir.path(), opts.clone()).unwrap();
    for i in 0..50 {
        log.append(&a, vec![ev(&i.to_string())], true)
            .await
            .unwrap();
    }
    assert_eq!(log.read(&a, Offset(0), 100, usize::MAX).unwrap().len(), 50);
    log.close().await.unwrap();
    drop(log);
    let log = EventLog::open(dir.path(), opts).unwrap();
    assert_eq!(log.stats(&a).unwrap().next, Offset(50));
    log.close().await.unwrap();
}

#[tokio::test]
async fn open_refuses_events_that_disagree_with_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let a = id("a");
    let log = open(dir.path());
    log.append(&a, vec![ev("0"), ev("1")], true).await.unwrap();
    log.close().await.unwrap();
    drop(log);

    // Damage the store behind the log's back: an event past the committed end.
    {
        let db = fjall::Database::builder(dir.path()).open().unwrap();
        let events = db
            .keyspace("events", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        events
            .insert(
                record::event_key(0, 5),
                record::encode_event(0, 0, None, b"stray"),
            )
            .unwrap();
        db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    let err = EventLog::open(dir.path(), LogOptions::default())
        .err()
        .unwrap();
    assert!(
        matches!(
            &err,
            LogError::Inconsistent {
                next: Offset(2),
                last_stored: Some(Offset(5)),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("data ID a"), "{err}");
}

/// Rewrites stream 0's events as an older node stored them: one key per event (format 1,
/// or 2 with a producer tag), in place of the chunks this node wrote.
fn rewrite_one_key_per_event(dir: &Path, events: &[(u64, Option<ProducerTag>, &str)]) {
    let db = fjall::Database::builder(dir).open().unwrap();
    let keyspace = db
        .keyspace("events", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    let keys: Vec<_> = keyspace
        .prefix(record::stream_prefix(0))
        .map(|g| g.key().unwrap())
        .collect();
    assert!(!keys.is_empty());
    for key in keys {
        keyspace.remove(key).unwrap();
    }
    for (offset, producer, payload) in events {
        let value = record::encode_event(1_000, 0, *producer, payload.as_bytes());
        keyspace
            .insert(record::event_key(0, *offset), value)
            .unwrap();
    }
    db.persist(fjall::PersistMode::SyncAll).unwrap();
}

#[tokio::test]
async fn a_log_stored_one_event_per_key_reads_trims_and_grows_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let a = id("a");
    let log = open(dir.path());
    publish_as(&log, &a, tag(7, 1), &["0", "1", "2", "3"])
        .await
        .unwrap();
    log.close().await.unwrap();
    drop(log);
    let old: Vec<_> = (0..4u64)
        .map(|i| (i, tag(7, 1), ["0", "1", "2", "3"][i as usize]))
        .collect();
    rewrite_one_key_per_event(dir.path(), &old);

    let log = open_with_retention(
        dir.path(),
        Retention {
            max_events: Some(5),
            ..Retention::default()
        },
    );
    // The old values read as before, from any offset.
    assert_eq!(
        payloads(&log.read(&a, Offset(1), 10, usize::MAX).unwrap()),
        ["1", "2", "3"]
    );
    // A retry of the producer's earlier batch is found by scanning them.
    publish_as(&log, &a, tag(7, 2), &["4"]).await.unwrap();
    let again = publish_as(&log, &a, tag(7, 1), &["dup"]).await.unwrap();
    assert_eq!((again.first, again.last), (Offset(0), Offset(3)));
    // New events go into chunks after them; retention trims across both kinds.
    log.append(&a, vec![ev("5"), ev("6"), ev("7")], true)
        .await
        .unwrap();
    log.enforce_retention(TimestampMs::now()).unwrap();
    assert_eq!(
        payloads(&log.read(&a, Offset(3), 10, usize::MAX).unwrap()),
        ["3", "4", "5", "6", "7"]
    );
    let log = reopen(log, dir.path()).await;
    let stats = log.stats(&a).unwrap();
    assert_eq!(
        (stats.earliest, stats.next, stats.bytes),
        (Offset(3), Offset(8), 5)
    );
    log.close().await.unwrap();
}

#[tokio::test]
async fn many_readers_share_one_stream_while_publishing() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let a = id("a");
    log.append(&a, vec![ev("0")], true).await.unwrap();
    const TOTAL: u64 = 200;

    let mut readers = Vec::new();
    for _ in 0..4 {
        let log = log.clone();
        let a = a.clone();
        readers.push(tokio::spawn(async move {
            let mut end = log.subscribe(&a).unwrap();
            let mut next = Offset(0);
            let mut seen = Vec::new();
            while next.0 < TOTAL {
                let batch = log.read(&a, next, 7, usize::MAX).unwrap();
                if batch.is_empty() {
                    end.changed().await.unwrap();
                    continue;
                }
                for e in batch {
                    assert_eq!(e.offset, next, "gap or duplicate");
                    next = next.next();
                    seen.push(e.offset.0);
                }
            }
            seen
        }));
    }
    for i in 1..TOTAL {
        log.append(&a, vec![ev(&i.to_string())], false)
            .await
            .unwrap();
    }
    for reader in readers {
        let seen = timeout(DEADLINE, reader).await.unwrap().unwrap();
        assert_eq!(seen.into_iter().collect::<HashSet<_>>().len() as u64, TOTAL);
    }
    log.close().await.unwrap();
}

/// Environment variable that turns [`kill9_child`] into the writer of [`survives_kill_9`].
const CRASH_DIR_ENV: &str = "EC_LOG_KILL9_CHILD_DIR";
/// `1` makes [`kill9_child`] write under `FsyncPolicy::Interval`.
const CRASH_INTERVAL_ENV: &str = "EC_LOG_KILL9_CHILD_INTERVAL";

/// The crash tests' log: `Always`, or `Interval` (1 s).
fn crash_options_for(interval: bool) -> LogOptions {
    let mut opts = LogOptions::default();
    if interval {
        opts.fsync = FsyncPolicy::Interval(Duration::from_secs(1));
    }
    opts
}

/// What [`kill9_child`] stores for `payload`: the payload and 12 KiB of filler, so that each
/// cycle writes ~18 MiB and crosses several write-ahead log segment switches (8 MiB each),
/// and a kill can land while the keeper is releasing or recycling a segment.
fn crash_event(payload: &str) -> Bytes {
    let mut data = payload.as_bytes().to_vec();
    data.resize(payload.len() + 12 * 1024, b'.');
    Bytes::from(data)
}

/// Child half of [`survives_kill_9`]: a no-op unless started by it. Appends from 8 tasks to
/// 3 streams forever, half of them in gathered groups ([`Gathered`]), printing `ACK data_id
/// offset payload` for each acknowledged event.
#[test]
fn kill9_child() {
    use std::io::Write;
    let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let interval = std::env::var(CRASH_INTERVAL_ENV).is_ok_and(|v| v == "1");
        let log = EventLog::open(Path::new(&dir), crash_options_for(interval)).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        for task in 0..8 {
            let log = log.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let stream = id(&format!("s{}", task % 3));
                // Odd tasks gather three requests and commit them as one group, as a
                // publish stream does.
                let grouped = task % 2 == 1;
                for i in 0.. {
                    let mut gathered = log.gather();
                    let mut pending = Vec::new();
                    for k in 0..if grouped { 3 } else { 1 } {
                        let payload = format!("t{task}-{i}-{k}");
                        let events = vec![crash_event(&payload); 1 + (i + k) % 3];
                        let submitted = if grouped {
                            gathered.submit_as(&stream, events, true, None).await
                        } else {
                            log.submit(&stream, events, true).await
                        };
                        pending.push((payload, submitted.unwrap()));
                    }
                    gathered.commit();
                    for (payload, appended) in pending {
                        let appended = appended.await.unwrap();
                        for offset in appended.first.0..=appended.last.0 {
                            tx.send(format!("ACK {stream} {offset} {payload}")).unwrap();
                        }
                    }
                }
            });
        }
        let mut out = std::io::stdout().lock();
        while let Some(line) = rx.recv().await {
            writeln!(out, "{line}").unwrap();
            out.flush().unwrap();
        }
    });
}

/// Kills a writer process (`fsync: always`) with SIGKILL mid-stream, three times, and checks
/// after each restart that every acknowledged event is there, with its payload, in a dense
/// log.
#[test]
fn survives_kill_9() {
    kill_9_cycles(false);
}

/// As [`survives_kill_9`] under `fsync: interval`: a killed process loses nothing it
/// acknowledged (the write-ahead log record of each batch is written to the OS before the
/// answer, and fjall gets it only afterwards, from the applier).
#[test]
fn survives_kill_9_under_interval() {
    kill_9_cycles(true);
}

fn kill_9_cycles(interval: bool) {
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let mut acked: HashMap<(String, u64), String> = HashMap::new();
    for cycle in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "log::tests::kill9_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_DIR_ENV, dir.path())
            .env(CRASH_INTERVAL_ENV, if interval { "1" } else { "0" })
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut this_cycle = 0;
        // Kill after 1500 acknowledged events (the child never stops by itself).
        while this_cycle < 1500 {
            let line = lines.next().expect("writer exited early").unwrap();
            let Some(ack) = line.strip_prefix("ACK ") else {
                continue; // test harness chatter
            };
            let mut parts = ack.split(' ');
            let (Some(stream), Some(offset), Some(payload)) =
                (parts.next(), parts.next(), parts.next())
            else {
                panic!("malformed ack line {line:?}");
            };
            let offset: u64 = offset.parse().unwrap();
            acked.insert((stream.to_owned(), offset), payload.to_owned());
            this_cycle += 1;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let log = EventLog::open(dir.path(), crash_options_for(interval)).unwrap();
            for stats in log.list() {
                let events = log
                    .read(&stats.data_id, Offset(0), usize::MAX, usize::MAX)
                    .unwrap();
                assert_eq!(
                    events.len() as u64,
                    stats.next.0,
                    "cycle {cycle}: {} not dense",
                    stats.data_id
                );
                for (i, e) in events.iter().enumerate() {
                    assert_eq!(e.offset.0, i as u64);
                    if let Some(payload) = acked.get(&(stats.data_id.to_string(), e.offset.0)) {
                        assert_eq!(e.data, crash_event(payload), "cycle {cycle}: wrong payload");
                    }
                }
            }
            for (stream, offset) in acked.keys() {
                let next = log.stats(&id(stream)).unwrap().next.0;
                assert!(
                    *offset < next,
                    "cycle {cycle}: acknowledged {stream}@{offset} lost (next {next})"
                );
            }
            log.close().await.unwrap();
        });
    }
}

// Replication support: epochs, copied appends, fencing, the high watermark, truncation.

fn copied(from: u64, epoch: u64, payloads: &[&str]) -> Vec<CopiedEvent> {
    payloads
        .iter()
        .enumerate()
        .map(|(i, p)| CopiedEvent {
            offset: Offset(from + i as u64),
            epoch: Epoch(epoch),
            timestamp: TimestampMs(1_000 + (from + i as u64) as i64),
            producer: None,
            data: ev(p),
        })
        .collect()
}

fn starts(log: &EventLog, data_id: &DataId) -> Vec<(u64, u64)> {
    log.epochs(data_id)
        .unwrap()
        .iter()
        .map(|e| (e.epoch.0, e.start.0))
        .collect()
}

#[tokio::test]
async fn leader_appends_carry_its_epoch_and_build_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let a = id("a");
    let log = open(dir.path());
    log.append(&a, vec![ev("0"), ev("1")], true).await.unwrap();
    log.ensure(&a, WriteAccess::Leader(Epoch(7))).await.unwrap();
    log.set_floor(&a, None).unwrap();
    log.append(&a, vec![ev("2")], false).await.unwrap();
    log.ensure(&a, WriteAccess::Leader(Epoch(9))).await.unwrap();
    log.set_floor(&a, None).unwrap();
    log.append(&a, vec![ev("3"), ev("4")], false).await.unwrap();
    let epochs: Vec<u64> = log
        .read_log(&a, Offset(0), 10, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| e.epoch.0)
        .collect();
    assert_eq!(epochs, vec![0, 0, 7, 9, 9]);
    assert_eq!(starts(&log, &a), vec![(0, 0), (7, 2), (9, 3)]);
    assert_eq!(log.stats(&a).unwrap().last_epoch, Epoch(9));
    log.close().await.unwrap();
    drop(log);

    // History, epochs and the coordinated mark survive a restart; a coordinated stream
    // comes back closed to publishes until its mapping is known.
    let log = open(dir.path());
    assert_eq!(starts(&log, &a), vec![(0, 0), (7, 2), (9, 3)]);
    assert_eq!(log.access(&a), WriteAccess::Closed);
    let err = log.append(&a, vec![ev("x")], false).await.unwrap_err();
    assert!(matches!(err, LogError::Fenced { .. }), "{err}");
    assert_eq!(log.stats(&a).unwrap().high_watermark, Offset(5));
    log.close().await.unwrap();
}

#[tokio::test]
async fn the_committer_fences_publishes_and_copies_by_access() {
    let dir = tempfile::tempdir().unwrap();
    let a = id("a");
    let log = open(dir.path());
    log.ensure(&a, WriteAccess::Replica).await.unwrap();
    let err = log.append(&a, vec![ev("x")], true).await.unwrap_err();
    assert!(
        matches!(
            err,
            LogError::Fenced {
                access: WriteAccess::Replica,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("replica"), "{err}");
    log.submit_copied(&a, copied(0, 3, &["p0", "p1"]))
        .await
        .unwrap()
        .await
        .unwrap();

    log.ensure(&a, WriteAccess::Leader(Epoch(5))).await.unwrap();
    let err = log
        .submit_copied(&a, copied(2, 3, &["p2"]))
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert!(matches!(err, LogError::Fenced { .. }), "{err}");
    let appended = log.append(&a, vec![ev("own")], false).await.unwrap();
    assert_eq!(appended.first, Offset(2));

    log.ensure(&a, WriteAccess::Closed).await.unwrap();
    assert!(log.append(&a, vec![ev("late")], false).await.is_err());
    assert_eq!(log.stats(&a).unwrap().next, Offset(3));
    log.close().await.unwrap();
}

#[tokio::test]
async fn copies_keep_offsets_epochs_timestamps_and_must_be_contiguous() {
    let dir = tempfile::tempdir().unwrap();
    let a = id("a");
    let log = open(dir.path());
    log.ensure(&a, WriteAccess::Replica).await.unwrap();
    let p1 = log
        .submit_copied(&a, copied(0, 2, &["a", "b"]))
        .await
        .unwrap();
    // Queued behind the first: offsets are checked at commit time, in queue order.
    let p2 = log.submit_copied(&a, copied(2, 4, &["c"])).await.unwrap();
    assert_eq!(p1.await.unwrap().last, Offset(1));
    assert_eq!(p2.await.unwrap().first, Offset(2));
    let stored = log.read_log(&a, Offset(0), 10, usize::MAX).unwrap();
    assert_eq!(payloads(&stored), vec!["a", "b", "c"]);
    assert_eq!(
        stored
            .iter()
            .map(|e| (e.epoch.0, e.timestamp.0))
            .collect::<Vec<_>>(),
        vec![(2, 1000), (2, 1001), (4, 1002)]
    );
    assert_eq!(starts(&log, &a), vec![(2, 0), (4, 2)]);

    let gap = log
        .submit_copied(&a, copied(5, 4, &["gap"]))
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert!(
        matches!(
            gap,
            LogError::OutOfSequence {
                expected: Offset(3),
                got: Offset(5),
                ..
            }
        ),
        "{gap}"
    );
    let back = log
        .submit_copied(&a, copied(3, 1, &["old epoch"]))
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert!(matches!(back, LogError::EpochRegression { .. }), "{back}");
    assert_eq!(log.stats(&a).unwrap().next, Offset(3));
    log.close().await.unwrap();
}

#[tokio::test]
async fn readers_see_up_to_the_high_watermark_only() {
    let dir = tempfile::tempdir().unwrap();
    let a = id("a");
    let log = open(dir.path());
    log.ensure(&a, WriteAccess::Leader(Epoch(1))).await.unwrap();
    // Replicas hold nothing yet: the high watermark holds at 0.
    log.set_floor(&a, Some(Offset(0))).unwrap();
    log.append(&a, vec![ev("0"), ev("1"), ev("2")], false)
        .await
        .unwrap();
    assert!(log.read(&a, Offset(0), 10, usize::MAX).unwrap().is_empty());
    assert_eq!(
        log.read_log(&a, Offset(0), 10, usize::MAX).unwrap().len(),
        3
    );
    let mut visible = log.subscribe(&a).unwrap();
    assert_eq!(*visible.borrow_and_update(), Offset(0));

    log.set_floor(&a, Some(Offset(2))).unwrap();
    timeout(DEADLINE, visible.changed()).await.unwrap().unwrap();
    assert_eq!(*visible.borrow(), Offset(2));
    assert_eq!(
        payloads(&log.read(&a, Offset(0), 10, usize::MAX).unwrap()),
        vec!["0", "1"]
    );
    // It never goes down, and never past the durable end.
    log.set_floor(&a, Some(Offset(1))).unwrap();
    assert_eq!(log.high_watermark(&a).unwrap(), Offset(2));
    log.set_floor(&a, Some(Offset(99))).unwrap();
    assert_eq!(log.high_watermark(&a).unwrap(), Offset(3));
    // Without a bound it follows each commit.
    log.set_floor(&a, None).unwrap();
    log.append(&a, vec![ev("3")], false).await.unwrap();
    assert_eq!(log.high_watermark(&a).unwrap(), Offset(4));
    let stats = log.stats(&a).unwrap();
    assert_eq!((stats.next, stats.high_watermark), (Offset(4), Offset(4)));
    log.close().await.unwrap();
}

#[tokio::test]
async fn the_high_watermark_is_persisted_never_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let a = id("a");
    let log = open(dir.path());
    log.ensure(&a, WriteAccess::Leader(Epoch(1))).await.unwrap();
    log.set_floor(&a, Some(Offset(0))).unwrap();
    log.append(&a, vec![ev("0"), ev("1")], false).await.unwrap();
    log.set_floor(&a, Some(Offset(1))).unwrap();
    // Stored with the next batch.
    log.append(&a, vec![ev("2")], false).await.unwrap();
    log.close().await.unwrap();
    drop(log);
    let log = open(dir.path());
    let stats = log.stats(&a).unwrap();
    assert_eq!((stats.high_watermark, stats.next), (Offset(1), Offset(3)));
    assert_eq!(
        payloads(&log.read(&a, Offset(0), 10, usize::MAX).unwrap()),
        vec!["0"]
    );
    log.close().await.unwrap();
}

#[tokio::test]
async fn truncation_drops_the_suffix_and_its_epochs_but_never_below_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let a = id("a");
    let log = open(dir.path());
    log.ensure(&a, WriteAccess::Replica).await.unwrap();
    log.submit_copied(&a, copied(0, 1, &["0", "1", "2"]))
        .await
        .unwrap()
        .await
        .unwrap();
    log.submit_copied(&a, copied(3, 2, &["3", "4"]))
        .await
        .unwrap()
        .await
        .unwrap();
    log.set_floor(&a, Some(Offset(2))).unwrap();

    let err = log.truncate(&a, Offset(1)).await.unwrap_err();
    assert!(
        matches!(err, LogError::WouldHideVisible { hwm: Offset(2), .. }),
        "{err}"
    );
    assert_eq!(log.truncate(&a, Offset(3)).await.unwrap(), 2);
    assert_eq!(starts(&log, &a), vec![(1, 0)]);
    let stats = log.stats(&a).unwrap();
    assert_eq!((stats.next, stats.bytes), (Offset(3), 3));
    assert_eq!(stats.last_timestamp, Some(TimestampMs(1002)));
    // The truncated offsets are written again with the new primary's content.
    log.submit_copied(&a, copied(3, 5, &["new3"]))
        .await
        .unwrap()
        .await
        .unwrap();
    log.close().await.unwrap();
    drop(log);
    let log = open(dir.path());
    assert_eq!(starts(&log, &a), vec![(1, 0), (5, 3)]);
    assert_eq!(
        payloads(&log.read_log(&a, Offset(0), 10, usize::MAX).unwrap()),
        vec!["0", "1", "2", "new3"]
    );
    log.close().await.unwrap();
}

/// A replica log in `dir` whose data ID `a` holds `n` events copied in one request, with
/// payloads "0", "1", … (one per offset).
async fn replica_holding(dir: &Path, n: u64) -> (EventLog, DataId) {
    let a = id("a");
    let log = open(dir);
    log.ensure(&a, WriteAccess::Replica).await.unwrap();
    let many: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    log.submit_copied(&a, copied(0, 1, &refs))
        .await
        .unwrap()
        .await
        .unwrap();
    (log, a)
}

/// Closes `log` and opens the log in `dir` again.
async fn reopen(log: EventLog, dir: &Path) -> EventLog {
    log.close().await.unwrap();
    drop(log);
    open(dir)
}

#[tokio::test]
async fn large_truncation_is_chunked_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (log, a) = replica_holding(dir.path(), 20_000).await;
    assert_eq!(log.truncate(&a, Offset(10)).await.unwrap(), 19_990);
    log.close().await.unwrap();
    drop(log);
    let log = open(dir.path());
    assert_eq!(log.stats(&a).unwrap().next, Offset(10));
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_truncation_inside_a_chunk_keeps_the_events_below_it() {
    let dir = tempfile::tempdir().unwrap();
    // One request: one chunk holding offsets 0..5.
    let (log, a) = replica_holding(dir.path(), 5).await;
    assert_eq!(log.truncate(&a, Offset(2)).await.unwrap(), 3);
    let stats = log.stats(&a).unwrap();
    assert_eq!((stats.next, stats.bytes), (Offset(2), 2));
    assert_eq!(stats.last_timestamp, Some(TimestampMs(1001)));
    log.submit_copied(&a, copied(2, 2, &["new2", "new3"]))
        .await
        .unwrap()
        .await
        .unwrap();
    let read = |log: &EventLog| payloads(&log.read_log(&a, Offset(0), 10, usize::MAX).unwrap());
    assert_eq!(read(&log), ["0", "1", "new2", "new3"]);
    let log = reopen(log, dir.path()).await;
    assert_eq!(read(&log), ["0", "1", "new2", "new3"]);
    assert_eq!(log.stats(&a).unwrap().bytes, 10);
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_large_skip_ahead_through_chunks_leaves_nothing_stored() {
    let dir = tempfile::tempdir().unwrap();
    // Several full chunks, and skip steps that end inside them.
    let (log, a) = replica_holding(dir.path(), 20_000).await;
    log.skip_to(&a, Offset(30_000)).await.unwrap();
    // Opening checks that no stored event is left at or beyond the new start.
    let log = reopen(log, dir.path()).await;
    let stats = log.stats(&a).unwrap();
    assert_eq!(
        (stats.earliest, stats.next, stats.events),
        (Offset(30_000), Offset(30_000), 0)
    );
    log.close().await.unwrap();
}

#[tokio::test]
async fn skip_ahead_drops_everything_and_starts_later() {
    let dir = tempfile::tempdir().unwrap();
    let a = id("a");
    let log = open(dir.path());
    log.ensure(&a, WriteAccess::Replica).await.unwrap();
    log.submit_copied(&a, copied(0, 1, &["0", "1"]))
        .await
        .unwrap()
        .await
        .unwrap();
    let err = log.skip_to(&a, Offset(1)).await.unwrap_err();
    assert!(matches!(err, LogError::SkipBackwards { .. }), "{err}");
    log.skip_to(&a, Offset(50)).await.unwrap();
    let stats = log.stats(&a).unwrap();
    assert_eq!(
        (
            stats.earliest,
            stats.next,
            stats.high_watermark,
            stats.events
        ),
        (Offset(50), Offset(50), Offset(50), 0)
    );
    assert!(log.epochs(&a).unwrap().is_empty());
    assert!(matches!(
        log.read(&a, Offset(0), 1, 1).unwrap_err(),
        LogError::BelowRetention { .. }
    ));
    log.submit_copied(&a, copied(50, 3, &["50"]))
        .await
        .unwrap()
        .await
        .unwrap();
    log.close().await.unwrap();
    drop(log);
    let log = open(dir.path());
    let stats = log.stats(&a).unwrap();
    assert_eq!((stats.earliest, stats.next), (Offset(50), Offset(51)));
    assert_eq!(starts(&log, &a), vec![(3, 50)]);
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_publish_cut_and_refilled_by_another_epoch_is_not_visible_as_ours() {
    let dir = tempfile::tempdir().unwrap();
    let a = id("a");
    let log = open(dir.path());
    log.ensure(&a, WriteAccess::Leader(Epoch(3))).await.unwrap();
    log.set_floor(&a, Some(Offset(0))).unwrap();
    let ours = log.append(&a, vec![ev("ours")], false).await.unwrap();
    assert_eq!(ours.epoch, Epoch(3));
    assert!(!log.is_visible(&a, &ours).unwrap(), "not replicated yet");

    // Deposed: the new primary (epoch 8) has other content at that offset.
    log.ensure(&a, WriteAccess::Replica).await.unwrap();
    assert_eq!(log.truncate(&a, Offset(0)).await.unwrap(), 1);
    log.submit_copied(&a, copied(0, 8, &["theirs"]))
        .await
        .unwrap()
        .await
        .unwrap();
    log.set_floor(&a, Some(Offset(1))).unwrap();
    assert_eq!(log.high_watermark(&a).unwrap(), Offset(1));
    assert!(
        !log.is_visible(&a, &ours).unwrap(),
        "the offset holds another event now"
    );

    // While leading, a visible publish needs no read to be confirmed.
    log.ensure(&a, WriteAccess::Leader(Epoch(9))).await.unwrap();
    log.set_floor(&a, None).unwrap();
    let mine = log.append(&a, vec![ev("mine")], false).await.unwrap();
    assert!(log.is_visible(&a, &mine).unwrap());
    log.close().await.unwrap();
}

// Idempotent producers: duplicates, gaps, restart, replication, truncation, expiry.

fn tag(id: u64, sequence: u64) -> Option<ProducerTag> {
    Some(ProducerTag { id, sequence })
}

async fn publish_as(
    log: &EventLog,
    data_id: &DataId,
    t: Option<ProducerTag>,
    p: &[&str],
) -> Result<Appended, LogError> {
    log.submit_as(data_id, p.iter().map(|s| ev(s)).collect(), true, t)
        .await?
        .await
}

/// Events copied from a primary that published them as producer batches `(id, seq, n)`,
/// with current timestamps, starting at `from`.
fn copied_batches(from: u64, epoch: u64, batches: &[(u64, u64, usize)]) -> Vec<CopiedEvent> {
    let now = TimestampMs::now();
    let mut offset = from;
    let mut out = Vec::new();
    for &(id, sequence, n) in batches {
        for i in 0..n {
            out.push(CopiedEvent {
                offset: Offset(offset),
                epoch: Epoch(epoch),
                timestamp: now,
                producer: tag(id, sequence),
                data: ev(&format!("{id}-{sequence}-{i}")),
            });
            offset += 1;
        }
    }
    out
}

#[tokio::test]
async fn a_retried_batch_is_answered_with_its_original_offsets_and_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let a = id("a");
    let first = publish_as(&log, &a, tag(7, 1), &["x", "y"]).await.unwrap();
    publish_as(&log, &a, None, &["other"]).await.unwrap();
    let retry = publish_as(&log, &a, tag(7, 1), &["x", "y"]).await.unwrap();
    assert!(retry.duplicate && !first.duplicate);
    assert_eq!(
        (retry.first, retry.last, retry.timestamp, retry.epoch),
        (first.first, first.last, first.timestamp, first.epoch)
    );
    let next = publish_as(&log, &a, tag(7, 2), &["z"]).await.unwrap();
    assert_eq!((next.first, next.duplicate), (Offset(3), false));
    assert_eq!(
        payloads(&log.read(&a, Offset(0), 10, usize::MAX).unwrap()),
        ["x", "y", "other", "z"]
    );
    // Another producer has its own sequence.
    assert!(
        !publish_as(&log, &a, tag(8, 1), &["w"])
            .await
            .unwrap()
            .duplicate
    );
    log.close().await.unwrap();
}

#[tokio::test]
async fn pipelined_batches_and_their_retries_in_one_queue_are_each_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let a = id("a");
    // Submitted back to back, so most share a commit; then all resent, as after a lost stream.
    let mut pending = Vec::new();
    for round in 0..2 {
        for seq in 1..=20u64 {
            let payload = format!("b{seq}");
            pending.push((
                round,
                seq,
                log.submit_as(&a, vec![ev(&payload)], true, tag(3, seq))
                    .await
                    .unwrap(),
            ));
        }
    }
    let mut first_offsets = std::collections::HashMap::new();
    for (round, seq, p) in pending {
        let got = p.await.unwrap();
        assert_eq!(got.duplicate, round == 1, "seq {seq} round {round}");
        let was = *first_offsets.entry(seq).or_insert(got.first);
        assert_eq!(
            got.first, was,
            "seq {seq}: a retry reports the original offset"
        );
    }
    let stored = payloads(&log.read(&a, Offset(0), 100, usize::MAX).unwrap());
    let expected: Vec<String> = (1..=20).map(|s| format!("b{s}")).collect();
    assert_eq!(stored, expected);
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_sequence_gap_is_refused_naming_the_expected_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let a = id("a");
    // A producer the log does not know may start anywhere (e.g. after expiry).
    publish_as(&log, &a, tag(5, 41), &["p"]).await.unwrap();
    let err = publish_as(&log, &a, tag(5, 43), &["q"]).await.unwrap_err();
    assert!(
        matches!(
            err,
            LogError::SequenceGap {
                expected: 42,
                got: 43,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("expected sequence is 42"), "{err}");
    assert_eq!(log.stats(&a).unwrap().next, Offset(1), "nothing stored");
    log.close().await.unwrap();
}

#[tokio::test]
async fn producers_are_remembered_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let a = id("a");
    let log = open(dir.path());
    publish_as(&log, &a, tag(9, 1), &["a"]).await.unwrap();
    let second = publish_as(&log, &a, tag(9, 2), &["b", "c"]).await.unwrap();
    log.close().await.unwrap();
    drop(log);

    let log = open(dir.path());
    let retry = publish_as(&log, &a, tag(9, 2), &["b", "c"]).await.unwrap();
    assert!(retry.duplicate);
    assert_eq!((retry.first, retry.last), (second.first, second.last));
    // An older batch is found in the log itself.
    let older = publish_as(&log, &a, tag(9, 1), &["a"]).await.unwrap();
    assert!(older.duplicate);
    assert_eq!((older.first, older.last), (Offset(0), Offset(0)));
    assert_eq!(log.stats(&a).unwrap().next, Offset(3));
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_replica_remembers_producers_so_a_promoted_primary_refuses_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let a = id("a");
    let log = open(dir.path());
    log.ensure(&a, WriteAccess::Replica).await.unwrap();
    // Producer 4's batch 2 arrives split over two replication messages.
    let mut events = copied_batches(0, 1, &[(4, 1, 2), (6, 1, 1), (4, 2, 3)]);
    let tail = events.split_off(4);
    log.submit_copied(&a, events).await.unwrap().await.unwrap();
    log.submit_copied(&a, tail).await.unwrap().await.unwrap();
    // Promotion, then the producer's retry of its last batch reaches the new primary.
    log.ensure(&a, WriteAccess::Leader(Epoch(2))).await.unwrap();
    let retry = publish_as(&log, &a, tag(4, 2), &["r0", "r1", "r2"])
        .await
        .unwrap();
    assert!(retry.duplicate);
    assert_eq!(
        (retry.first, retry.last, retry.epoch),
        (Offset(3), Offset(5), Epoch(1))
    );
    let earlier = publish_as(&log, &a, tag(4, 1), &["e"]).await.unwrap();
    assert_eq!(
        (earlier.first, earlier.last, earlier.duplicate),
        (Offset(0), Offset(1), true)
    );
    let next = publish_as(&log, &a, tag(4, 3), &["n"]).await.unwrap();
    assert_eq!((next.first, next.duplicate), (Offset(6), false));
    // The primary's events carry the tags, so its replicas learn them too.
    let read = log.read_log(&a, Offset(6), 1, usize::MAX).unwrap();
    assert_eq!(read[0].producer, tag(4, 3));
    log.close().await.unwrap();
}

#[tokio::test]
async fn truncation_rolls_producer_state_back_to_the_batches_kept() {
    let dir = tempfile::tempdir().unwrap();
    let a = id("a");
    let log = open(dir.path());
    log.ensure(&a, WriteAccess::Replica).await.unwrap();
    let events = copied_batches(0, 1, &[(4, 1, 2), (6, 1, 1), (4, 2, 3), (6, 2, 1)]);
    log.submit_copied(&a, events).await.unwrap().await.unwrap();
    // The new primary never had offsets 3.. (batch 2 of both producers): cut them.
    assert_eq!(log.truncate(&a, Offset(3)).await.unwrap(), 4);
    log.close().await.unwrap();
    drop(log);

    let log = open(dir.path());
    log.ensure(&a, WriteAccess::Leader(Epoch(2))).await.unwrap();
    // Batch 2 is no longer stored, so its retry is stored now, once.
    let again = publish_as(&log, &a, tag(4, 2), &["x"]).await.unwrap();
    assert_eq!((again.first, again.duplicate), (Offset(3), false));
    let dup = publish_as(&log, &a, tag(6, 1), &["y"]).await.unwrap();
    assert_eq!((dup.first, dup.duplicate), (Offset(2), true));
    assert!(
        !publish_as(&log, &a, tag(6, 2), &["z"])
            .await
            .unwrap()
            .duplicate
    );
    log.close().await.unwrap();
}

#[tokio::test]
async fn idle_producers_expire_and_may_then_start_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let a = id("a");
    let log = EventLog::open(
        dir.path(),
        LogOptions {
            producer_expiry: Duration::from_secs(60),
            ..LogOptions::default()
        },
    )
    .unwrap();
    publish_as(&log, &a, tag(2, 1), &["a"]).await.unwrap();
    assert_eq!(log.expire_producers(TimestampMs::now()).unwrap(), 0);
    assert_eq!(log.producer_count(&a).unwrap(), 1);
    let later = TimestampMs(TimestampMs::now().0 + 61_000);
    assert_eq!(log.expire_producers(later).unwrap(), 1);
    assert_eq!(log.producer_count(&a).unwrap(), 0);
    log.close().await.unwrap();
    drop(log);
    // Forgotten durably: after a restart a far-off sequence is taken as the first.
    let log = open(dir.path());
    assert_eq!(log.producer_count(&a).unwrap(), 0);
    assert!(
        !publish_as(&log, &a, tag(2, 50), &["b"])
            .await
            .unwrap()
            .duplicate
    );
    log.close().await.unwrap();
}

/// Copies the regular files of `from` into `to` (created).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[tokio::test]
async fn batches_fjall_lost_are_rebuilt_from_the_write_ahead_log() {
    // What a power cut does under `Always`: acknowledged batches are in the write-ahead log
    // (synced) but not in fjall (written without a sync). Simulated by giving the log's
    // write-ahead log, as it stands after the acknowledgements, to an empty database.
    let live = tempfile::tempdir().unwrap();
    let log = open(live.path());
    let (a, b) = (id("a"), id("b"));
    for i in 0..50 {
        log.append(&a, vec![ev(&format!("a{i}")), ev(&format!("a{i}+"))], true)
            .await
            .unwrap();
        log.append(&b, vec![ev(&format!("b{i}"))], true)
            .await
            .unwrap();
    }
    let lost = tempfile::tempdir().unwrap();
    copy_dir(&live.path().join("wal"), &lost.path().join("wal"));
    log.close().await.unwrap();

    let log = open(lost.path());
    let read_a = log.read(&a, Offset(0), 1000, usize::MAX).unwrap();
    let want_a: Vec<String> = (0..50)
        .flat_map(|i| [format!("a{i}"), format!("a{i}+")])
        .collect();
    assert_eq!(payloads(&read_a), want_a);
    let read_b = log.read(&b, Offset(0), 1000, usize::MAX).unwrap();
    let want_b: Vec<String> = (0..50).map(|i| format!("b{i}")).collect();
    assert_eq!(payloads(&read_b), want_b);
    // Appends continue at the end, and survive a reopen that has nothing left to replay.
    let next = log.append(&a, vec![ev("after")], false).await.unwrap();
    assert_eq!(next.first, Offset(100));
    log.close().await.unwrap();
    drop(log);
    let log = open(lost.path());
    assert_eq!(log.stats(&a).unwrap().next, Offset(101));
}

/// `read_into` hands a sink the very events `read` returns, for every start and limit.
fn lends_what_it_reads(log: &EventLog, data_id: &DataId) {
    #[derive(Default)]
    struct Lent(Vec<(Offset, TimestampMs, Vec<u8>)>);
    impl ReadSink for Lent {
        fn take(&mut self, offset: Offset, timestamp: TimestampMs, data: &[u8]) {
            self.0.push((offset, timestamp, data.to_vec()));
        }
    }
    let end = log.stats(data_id).unwrap().high_watermark.0;
    for from in 0..=end {
        for (max_events, max_bytes) in [(100, usize::MAX), (2, usize::MAX), (100, 9), (1, 0)] {
            let read = log
                .read(data_id, Offset(from), max_events, max_bytes)
                .unwrap();
            let mut lent = Lent::default();
            let taken = log
                .read_into(data_id, Offset(from), max_events, max_bytes, &mut lent)
                .unwrap();
            let expected: Vec<_> = read
                .iter()
                .map(|e| (e.offset, e.timestamp, e.data.to_vec()))
                .collect();
            assert_eq!(lent.0, expected, "from {from}, {max_events}, {max_bytes}");
            assert_eq!(taken, read.len());
        }
    }
}

// The applier: commits do not wait for fjall, readers take what fjall lacks from the tail.

// The gate is held across appends on purpose: it blocks the applier thread, not this task.
#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn committed_events_are_served_while_fjall_has_not_got_them() {
    for fsync in [
        FsyncPolicy::Always,
        FsyncPolicy::Interval(Duration::from_secs(1)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let opts = || LogOptions {
            fsync,
            ..LogOptions::default()
        };
        let log = EventLog::open(dir.path(), opts()).unwrap();
        let a = id("a");
        log.append(&a, vec![ev("in fjall")], true).await.unwrap();
        log.inner.store.applied.drain();

        // fjall stalls (as behind a journal rotation): appends are still acknowledged,
        // and read back, from the pending tail and across its edge with fjall.
        let gate = log.inner.store.apply_gate.lock().unwrap();
        let first = log
            .append(&a, vec![ev("p1"), ev("p2")], false)
            .await
            .unwrap();
        let second = log.append(&a, vec![ev("p3")], false).await.unwrap();
        assert_eq!((first.first, second.last), (Offset(1), Offset(3)));
        let read = log.read(&a, Offset(0), 100, usize::MAX).unwrap();
        assert_eq!(payloads(&read), ["in fjall", "p1", "p2", "p3"], "{fsync:?}");
        let from_tail = log.read(&a, Offset(2), 100, usize::MAX).unwrap();
        assert_eq!(payloads(&from_tail), ["p2", "p3"]);
        assert_eq!(from_tail[0].timestamp, first.timestamp);
        // Limits hold across the edge.
        let two = log.read(&a, Offset(0), 2, usize::MAX).unwrap();
        assert_eq!(payloads(&two), ["in fjall", "p1"]);
        let small = log.read(&a, Offset(0), 100, 9).unwrap();
        assert_eq!(payloads(&small), ["in fjall"]);
        lends_what_it_reads(&log, &a);
        // Seeking by time finds events that only the tail holds (else it ends at 4).
        let at = read.iter().position(|e| e.timestamp >= second.timestamp);
        assert_eq!(
            log.offset_at_time(&a, second.timestamp).unwrap(),
            Offset(at.unwrap() as u64)
        );
        drop(gate);

        // Once applied, the same reads come from fjall, and a writer that reads fjall
        // (truncation) sees every committed event.
        log.inner.store.applied.drain();
        lends_what_it_reads(&log, &a);
        // What was acknowledged survives a reopen.
        let expected = ["in fjall", "p1", "p2", "p3"];
        holds_across_reopen(log, dir.path(), opts(), &a, &expected).await;
    }
}

// The gate is held across appends on purpose: it blocks the applier thread, not this task.
#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn batches_queued_behind_a_slow_apply_go_to_fjall_together() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path(), interval()).unwrap();
    let (a, b) = (id("a"), id("b"));
    let store = &log.inner.store;
    let commits = || {
        store
            .apply_commits
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let gate = store.apply_gate.lock().unwrap();
    let mut expected_a = Vec::new();
    for i in 0..10 {
        let (to, name) = if i % 3 == 0 { (&b, "b") } else { (&a, "a") };
        let e = format!("{name}{i}");
        log.append(to, vec![ev(&e)], true).await.unwrap();
        if to == &a {
            expected_a.push(e);
        }
    }
    drop(gate);
    store.applied.drain();
    // Whatever the applier had taken before the gate stopped it, and the rest in one batch.
    assert!(commits() <= 2, "{} fjall batches for 10 commits", commits());
    for s in [&a, &b] {
        let stream = store.stream(s).unwrap();
        assert_eq!(
            stream.pending.read(0, u64::MAX).0.len(),
            0,
            "{s}'s tail trimmed"
        );
    }
    // fjall itself holds each stream's latest metadata, though every commit in the merged
    // batch wrote it (a reopen would not tell: it replays the write-ahead log over fjall).
    for (s, next) in [(&a, 6), (&b, 4)] {
        let stream = store.stream(s).unwrap();
        let key = stream.number.to_be_bytes();
        let value = store.meta.get(key).unwrap().unwrap();
        let (_, data_id, meta) = super::record::decode_meta(&key, &value).unwrap();
        assert_eq!((&data_id, meta.next), (s, next));
    }
    let read = log.read(&b, Offset(0), 100, usize::MAX).unwrap();
    assert_eq!(payloads(&read), ["b0", "b3", "b6", "b9"]);
    let expected: Vec<&str> = expected_a.iter().map(String::as_str).collect();
    holds_across_reopen(log, dir.path(), interval(), &a, &expected).await;
}

/// Checks that `a` holds `expected` from offset 0, closes the log, and checks again after
/// a reopen with `opts`.
async fn holds_across_reopen(
    log: EventLog,
    dir: &Path,
    opts: LogOptions,
    a: &DataId,
    expected: &[&str],
) {
    let read = log.read(a, Offset(0), 100, usize::MAX).unwrap();
    assert_eq!(payloads(&read), expected);
    log.close().await.unwrap();
    drop(log);
    let log = EventLog::open(dir, opts).unwrap();
    let read = log.read(a, Offset(0), 100, usize::MAX).unwrap();
    assert_eq!(payloads(&read), expected, "after a reopen");
    log.close().await.unwrap();
}

// Inline commits (`committer::Inline`): under `Interval` a publisher to an idle log commits
// its request itself; behind anything queued it queues, so order holds either way.

/// Commits made by publishers on their own threads (`committer::Inline`).
fn inline_count(log: &EventLog) -> u64 {
    log.inner
        .store
        .inline_commits
        .load(std::sync::atomic::Ordering::Relaxed)
}

fn interval() -> LogOptions {
    LogOptions {
        fsync: FsyncPolicy::Interval(Duration::from_secs(1)),
        ..LogOptions::default()
    }
}

// The locks are held across submits on purpose: they stop the committer thread, not this
// task, which only ever tries the writer lock.
#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn an_idle_interval_log_commits_inline_but_never_ahead_of_queued_requests() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path(), interval()).unwrap();
    let a = id("a");
    let store = &log.inner.store;
    let inline = || inline_count(&log);

    publish_as(&log, &a, tag(7, 1), &["p1"]).await.unwrap();
    assert_eq!(
        (inline(), log.commit_count()),
        (1, 1),
        "idle: committed inline"
    );

    // Another writer (retention, truncation) holds the lock: p2 is queued, and the
    // committer thread, having taken it, is held at the gate.
    let gate = store.commit_gate.lock().unwrap();
    let writer = store.lock_for_commit();
    let mut p2 = log
        .submit_as(&a, vec![ev("p2")], true, tag(7, 2))
        .await
        .unwrap();
    drop(writer);
    // The lock is free now, but p2 is not committed: p3 must queue behind it.
    let mut p3 = log
        .submit_as(&a, vec![ev("p3")], true, tag(7, 3))
        .await
        .unwrap();
    assert!(p2.try_result().is_none() && p3.try_result().is_none());
    assert_eq!(inline(), 1, "p3 was committed ahead of the queued p2");
    drop(gate);
    let (p2, p3) = (
        timeout(DEADLINE, p2).await.unwrap().unwrap(),
        timeout(DEADLINE, p3).await.unwrap().unwrap(),
    );
    assert_eq!((p2.first, p3.first), (Offset(1), Offset(2)));

    // Idle again, and answered only after the committer's count dropped: inline.
    let p4 = publish_as(&log, &a, tag(7, 4), &["p4"]).await.unwrap();
    assert_eq!((p4.first, inline()), (Offset(3), 2));
    // A retry of an inline commit is a duplicate with the original offset.
    let again = publish_as(&log, &a, tag(7, 4), &["p4"]).await.unwrap();
    assert!(again.duplicate && again.first == Offset(3));
    // A retry of an older batch needs a scan of the log: the committer thread answers it.
    let before = inline();
    let older = publish_as(&log, &a, tag(7, 2), &["p2"]).await.unwrap();
    assert!(older.duplicate && older.first == Offset(1));
    assert_eq!(
        inline(),
        before,
        "the older batch's retry was committed inline"
    );

    holds_across_reopen(log, dir.path(), interval(), &a, &["p1", "p2", "p3", "p4"]).await;
}

#[tokio::test]
async fn an_always_log_never_commits_inline() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let a = id("a");
    for i in 0..5 {
        log.append(&a, vec![ev(&i.to_string())], true)
            .await
            .unwrap();
    }
    // An fdatasync on the publisher's async worker would stall everything else on it.
    assert_eq!((inline_count(&log), log.commit_count()), (0, 5));
    log.close().await.unwrap();
}

// Gathered commits (`Gathered`): under `Always` a publisher's requests at hand are
// committed as one batch on its own thread; behind anything queued, they queue in order.

fn gather_as<'l>(
    gathered: &mut Gathered<'l>,
    a: &DataId,
    t: Option<ProducerTag>,
    p: &str,
) -> impl std::future::Future<Output = Result<PendingAppend, LogError>> {
    gathered.submit_as(a, vec![ev(p)], true, t)
}

#[tokio::test]
async fn gathered_publishes_commit_as_one_batch_with_one_sync() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let a = id("a");
    let mut gathered = log.gather();
    let mut pending = Vec::new();
    for (i, p) in ["g1", "g2", "g3"].into_iter().enumerate() {
        let t = tag(9, i as u64 + 1);
        pending.push(gather_as(&mut gathered, &a, t, p).await.unwrap());
    }
    // The same producer batch again, in the same group: judged after the first.
    pending.push(gather_as(&mut gathered, &a, tag(9, 3), "g3").await.unwrap());
    assert!(
        pending.iter_mut().all(|p| p.try_result().is_none()),
        "answered before the group's commit"
    );
    assert_eq!(log.commit_count(), 0);
    gathered.commit();
    assert_eq!((log.commit_count(), inline_count(&log)), (1, 1));
    let answers: Vec<Appended> = pending
        .iter_mut()
        .map(|p| p.try_result().unwrap().unwrap())
        .collect();
    let firsts: Vec<u64> = answers.iter().map(|a| a.first.0).collect();
    assert_eq!(firsts, [0, 1, 2, 2]);
    assert!(!answers[2].duplicate && answers[3].duplicate);
    holds_across_reopen(
        log,
        dir.path(),
        LogOptions::default(),
        &a,
        &["g1", "g2", "g3"],
    )
    .await;
}

// The locks are held across submits on purpose: they stop the committer thread, not this
// task, which never takes the writer lock before its group's commit.
#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn a_gathered_group_commits_before_what_must_queue_and_never_ahead_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let (a, b) = (id("a"), id("b"));
    publish_as(&log, &a, tag(7, 1), &["p1"]).await.unwrap();
    publish_as(&log, &a, tag(7, 2), &["p2"]).await.unwrap();
    publish_as(&log, &b, None, &["b0"]).await.unwrap();
    let store = &log.inner.store;

    // p3 is gathered; p1's retry needs a scan of the log, so the group is committed first
    // and the retry goes to the committer thread.
    let mut gathered = log.gather();
    let mut p3 = gather_as(&mut gathered, &a, tag(7, 3), "p3").await.unwrap();
    let retry = gather_as(&mut gathered, &a, tag(7, 1), "p1").await.unwrap();
    let p3 = p3
        .try_result()
        .expect("p3 was not committed before the retry queued");
    assert_eq!(p3.unwrap().first, Offset(2));
    let retry = timeout(DEADLINE, retry).await.unwrap().unwrap();
    assert!(retry.duplicate && retry.first == Offset(0));
    gathered.commit();

    // Another publisher's request waits at the committer thread: nothing is gathered ahead
    // of it, not even on another stream.
    let gate = store.commit_gate.lock().unwrap();
    let queued = log.submit(&b, vec![ev("b1")], true).await.unwrap();
    let mut gathered = log.gather();
    let p4 = gather_as(&mut gathered, &a, tag(7, 4), "p4").await.unwrap();
    let b2 = gather_as(&mut gathered, &b, None, "b2").await.unwrap();
    drop(gate);
    gathered.commit();
    let b1 = timeout(DEADLINE, queued).await.unwrap().unwrap();
    let b2 = timeout(DEADLINE, b2).await.unwrap().unwrap();
    assert_eq!((b1.first, b2.first), (Offset(1), Offset(2)));
    assert_eq!(
        timeout(DEADLINE, p4).await.unwrap().unwrap().first,
        Offset(3)
    );

    // A group dropped uncommitted (its publisher cancelled) is committed all the same.
    let mut gathered = log.gather();
    let mut p5 = gather_as(&mut gathered, &a, tag(7, 5), "p5").await.unwrap();
    drop(gathered);
    assert_eq!(p5.try_result().unwrap().unwrap().first, Offset(4));
    let all = ["p1", "p2", "p3", "p4", "p5"];
    holds_across_reopen(log, dir.path(), LogOptions::default(), &a, &all).await;
}

/// A group the disk has no room for is refused as a whole, each publisher told why, and
/// nothing of it is stored.
#[tokio::test]
async fn a_gathered_group_without_disk_room_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        min_free_bytes: u64::MAX / 2,
        ..LogOptions::default()
    };
    let log = EventLog::open(dir.path(), opts).unwrap();
    let a = id("a");
    let mut gathered = log.gather();
    let mut p1 = gather_as(&mut gathered, &a, tag(3, 1), "p1").await.unwrap();
    let mut p2 = gather_as(&mut gathered, &a, tag(3, 2), "p2").await.unwrap();
    gathered.commit();
    for p in [&mut p1, &mut p2] {
        let refused = p.try_result().expect("answered by the group's commit");
        assert!(
            matches!(refused, Err(LogError::DiskFull { .. })),
            "{refused:?}"
        );
    }
    assert_eq!(log.commit_count(), 0);
    assert!(
        log.stats(&a).is_err(),
        "the refused group created its data ID"
    );
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_gathered_group_is_split_at_the_batch_limit() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        max_batch_bytes: 3 * 1024,
        ..LogOptions::default()
    };
    let log = EventLog::open(dir.path(), opts.clone()).unwrap();
    let a = id("a");
    let payloads: Vec<String> = (0..5).map(|i| format!("{i}{}", ".".repeat(1023))).collect();
    let mut gathered = log.gather();
    let mut pending = Vec::new();
    for p in &payloads {
        pending.push(gather_as(&mut gathered, &a, None, p).await.unwrap());
    }
    gathered.commit();
    // Two of about 1 KiB fit under 3 KiB, a third does not: 2 + 2 + 1.
    assert_eq!(log.commit_count(), 3);
    for (i, p) in pending.iter_mut().enumerate() {
        assert_eq!(p.try_result().unwrap().unwrap().first, Offset(i as u64));
    }
    let expected: Vec<&str> = payloads.iter().map(String::as_str).collect();
    holds_across_reopen(log, dir.path(), opts, &a, &expected).await;
}

#[tokio::test]
async fn under_interval_gathering_commits_each_request_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path(), interval()).unwrap();
    let a = id("a");
    let mut gathered = log.gather();
    let mut p1 = gather_as(&mut gathered, &a, None, "p1").await.unwrap();
    assert_eq!(p1.try_result().unwrap().unwrap().first, Offset(0));
    let mut p2 = gather_as(&mut gathered, &a, None, "p2").await.unwrap();
    assert_eq!(p2.try_result().unwrap().unwrap().first, Offset(1));
    gathered.commit();
    assert_eq!((log.commit_count(), inline_count(&log)), (2, 2));
    holds_across_reopen(log, dir.path(), interval(), &a, &["p1", "p2"]).await;
}

/// The events keyspace's tables are uncompressed at every level (fjall's default would
/// compress the third and below): replays of older ranges and compactions skip lz4.
#[test]
fn event_tables_are_created_uncompressed_at_every_level() {
    let options = store::events_keyspace_options();
    let policy = &options.data_block_compression_policy;
    assert!(!policy.is_empty());
    assert!(
        policy.iter().all(|c| *c == fjall::CompressionType::None),
        "{policy:?}"
    );
}

/// fjall's journal repeats the write-ahead log, so it is written uncompressed: a value that
/// lz4 would shrink to almost nothing is found in it byte for byte.
#[tokio::test]
async fn fjall_journal_holds_events_uncompressed() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let pattern = b"event-catcher ";
    let payload: Vec<u8> = pattern.iter().copied().cycle().take(8 << 10).collect();
    log.append(&id("a"), vec![Bytes::from(payload.clone())], true)
        .await
        .unwrap();
    log.inner.store.applied.drain();

    let mut journals = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jnl") {
            journals.push(std::fs::read(&path).unwrap());
        }
    }
    assert!(!journals.is_empty(), "no journal file in {:?}", dir.path());
    let found = journals.iter().any(|bytes| {
        (0..bytes.len().saturating_sub(payload.len()))
            .filter(|&i| bytes[i..].starts_with(pattern))
            .any(|i| bytes[i..].starts_with(&payload))
    });
    assert!(found, "the 8 KiB event is not in fjall's journal as it is");
}
