//! The mapping store against a real agent: CRUD with check-and-set conflicts that carry the
//! current value, exact `ModifyIndex`es from writes, read-modify-write that loses nothing
//! under concurrency, and garbage under the prefix reported per key and skipped.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ec_core::{DataId, NodeId};
use ec_discovery::{InvalidMapping, MappingError, MappingStore, QueryOptions, watch_mappings};
use ec_testkit::ConsulAgent;
use tokio::sync::Barrier;
use tokio_util::sync::CancellationToken;

use crate::util::{client, watch_until};

pub(crate) const PREFIX: &str = "streaming/data/";

pub(crate) fn d(s: &str) -> DataId {
    DataId::parse(s).expect("data id")
}

pub(crate) fn n(s: &str) -> NodeId {
    NodeId::parse(s).expect("node id")
}

pub(crate) fn store(agent: &ConsulAgent) -> MappingStore {
    MappingStore::new(client(agent), PREFIX)
}

#[tokio::test]
async fn put_get_delete_with_check_and_set() {
    let agent = ConsulAgent::start_dev().await;
    let s = store(&agent);
    let a = d("stream-a");
    assert_eq!(s.get(&a).await.expect("get missing"), None);

    let m1 = s
        .put(&a, &[n("node1"), n("node2")], None)
        .await
        .expect("create");
    assert_eq!(
        (m1.value(), m1.primary()),
        ("node1,node2".into(), &n("node1"))
    );
    // The index a write answers is exactly what a read sees.
    assert_eq!(s.get(&a).await.expect("get"), Some(m1.clone()));
    let raw = s
        .client()
        .kv_get("streaming/data/stream-a")
        .await
        .expect("raw get")
        .expect("present");
    assert_eq!(raw.value, b"node1,node2");

    // Create-only on an existing key: conflict with what is stored.
    match s.put(&a, &[n("node3")], None).await {
        Err(MappingError::Conflict { data_id, current }) => {
            assert_eq!((data_id, current), (a.clone(), Some(m1.clone())));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }

    let m2 = s
        .put(&a, &[n("node2"), n("node1")], Some(m1.modify_index))
        .await
        .expect("update with the current index");
    assert!(m2.modify_index > m1.modify_index);
    match s.put(&a, &[n("node3")], Some(m1.modify_index)).await {
        Err(MappingError::Conflict { current, .. }) => assert_eq!(current, Some(m2.clone())),
        other => panic!("expected a conflict on a stale index, got {other:?}"),
    }

    // Rewriting the same value does not move the index (so watchers do not wake).
    let same = s
        .put(&a, &m2.nodes, Some(m2.modify_index))
        .await
        .expect("identical rewrite");
    assert_eq!(same, m2);

    for bad in [vec![], vec![n("x"), n("x")]] {
        match s.put(&a, &bad, Some(m2.modify_index)).await {
            Err(MappingError::Invalid { .. }) => {}
            other => panic!("{bad:?} was not refused: {other:?}"),
        }
    }
    assert_eq!(
        s.get(&a).await.expect("get"),
        Some(m2.clone()),
        "refused writes wrote nothing"
    );

    match s.delete(&a, m1.modify_index).await {
        Err(MappingError::Conflict { current, .. }) => assert_eq!(current, Some(m2.clone())),
        other => panic!("expected a conflict on a stale delete, got {other:?}"),
    }
    s.delete(&a, m2.modify_index).await.expect("delete");
    assert_eq!(s.get(&a).await.expect("get"), None);
    // Deleting with an expected index what is gone is a conflict saying "absent", not OK.
    match s.delete(&a, m2.modify_index).await {
        Err(MappingError::Conflict { current: None, .. }) => {}
        other => panic!("expected a conflict with nothing stored, got {other:?}"),
    }
    // A stale expected index against a missing mapping is a conflict saying "absent".
    match s.put(&a, &[n("node1")], Some(m2.modify_index)).await {
        Err(MappingError::Conflict { current: None, .. }) => {}
        other => panic!("expected a conflict with nothing stored, got {other:?}"),
    }

    let forced = s.put_force(&a, &[n("node9")]).await.expect("force");
    assert_eq!(s.get(&a).await.expect("get"), Some(forced));
    s.delete_force(&a).await.expect("force delete");
    assert_eq!(s.get(&a).await.expect("get"), None);
}

/// Two writers with the same expected index: exactly one wins, the other is told what the
/// winner wrote. Several rounds, so that the two requests really meet in Consul.
#[tokio::test]
async fn concurrent_puts_with_the_same_expected_index_exactly_one_wins() {
    let agent = ConsulAgent::start_dev().await;
    let s = store(&agent);
    let a = d("race");
    let mut cur = s.put(&a, &[n("base")], None).await.expect("create");
    for round in 0..10 {
        let barrier = Arc::new(Barrier::new(2));
        let tasks: Vec<_> = ["left", "right"]
            .into_iter()
            .map(|who| {
                let (s, a, barrier) = (s.clone(), a.clone(), barrier.clone());
                let expected = cur.modify_index;
                tokio::spawn(async move {
                    barrier.wait().await;
                    s.put(&a, &[n(&format!("{who}{round}"))], Some(expected))
                        .await
                })
            })
            .collect();
        let mut won = Vec::new();
        let mut lost = Vec::new();
        for t in tasks {
            match t.await.expect("task") {
                Ok(m) => won.push(m),
                Err(MappingError::Conflict { current, .. }) => lost.push(current),
                Err(e) => panic!("round {round}: unexpected error {e}"),
            }
        }
        assert_eq!(
            (won.len(), lost.len()),
            (1, 1),
            "round {round}: {won:?} / {lost:?}"
        );
        assert_eq!(
            lost[0].as_ref(),
            Some(&won[0]),
            "the loser sees the winner's value"
        );
        cur = won.remove(0);
    }
}

/// Twenty nodes registering for one data ID at once: all twenty end up in the mapping and
/// the primary stays first; then twenty concurrent removals leave only the primary.
#[tokio::test]
async fn twenty_concurrent_add_node_lose_nothing() {
    let agent = ConsulAgent::start_dev().await;
    let s = store(&agent);
    let a = d("popular");
    s.put(&a, &[n("primary")], None).await.expect("create");

    let barrier = Arc::new(Barrier::new(20));
    let started = Instant::now();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (s, a, barrier) = (s.clone(), a.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                s.add_node(&a, &n(&format!("node-{i:02}"))).await
            })
        })
        .collect();
    for t in tasks {
        let m = t.await.expect("task").expect("add_node");
        assert_eq!(m.primary(), &n("primary"));
    }
    let took = started.elapsed();
    let m = s.get(&a).await.expect("get").expect("present");
    assert_eq!(m.primary(), &n("primary"));
    let got: BTreeSet<String> = m.nodes.iter().map(|x| x.to_string()).collect();
    let mut want: BTreeSet<String> = (0..20).map(|i| format!("node-{i:02}")).collect();
    want.insert("primary".into());
    assert_eq!(got, want);
    assert_eq!(m.nodes.len(), 21, "no duplicates: {}", m.value());
    eprintln!("20 concurrent add_node calls on one data ID took {took:?}");

    let barrier = Arc::new(Barrier::new(20));
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (s, a, barrier) = (s.clone(), a.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                s.remove_node(&a, &n(&format!("node-{i:02}"))).await
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("remove_node");
    }
    let m = s.get(&a).await.expect("get").expect("present");
    assert_eq!(m.value(), "primary");
}

#[tokio::test]
async fn read_modify_write_helpers() {
    let agent = ConsulAgent::start_dev().await;
    let s = store(&agent);
    let a = d("helpers");

    // add_node on a missing mapping creates it with the node as primary.
    let m = s.add_node(&a, &n("n1")).await.expect("add to nothing");
    assert_eq!(m.value(), "n1");
    let m = s.add_node(&a, &n("n2")).await.expect("add");
    assert_eq!(m.value(), "n1,n2");
    // Adding a node that is there already writes nothing.
    let again = s.add_node(&a, &n("n1")).await.expect("add again");
    assert_eq!(again, m);

    let m = s.add_node(&a, &n("n3")).await.expect("add n3");
    assert_eq!(m.value(), "n1,n2,n3");

    // An error from the closure stops the update and writes nothing.
    let err = s
        .update(&a, |_| {
            Err(MappingError::Invalid {
                data_id: d("helpers"),
                reason: InvalidMapping::NoNodes,
            })
        })
        .await
        .expect_err("closure error");
    assert!(
        matches!(
            err,
            MappingError::Invalid {
                reason: InvalidMapping::NoNodes,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(s.get(&a).await.expect("get"), Some(m.clone()));

    assert_eq!(
        s.remove_node(&a, &n("stranger"))
            .await
            .expect("remove non-member"),
        Some(m.clone())
    );
    let m = s.remove_node(&a, &n("n1")).await.expect("remove primary");
    assert_eq!(m.as_ref().map(|m| m.value()), Some("n2,n3".into()));
    s.remove_node(&a, &n("n3")).await.expect("remove n3");
    // Removing the last node deletes the key.
    assert_eq!(
        s.remove_node(&a, &n("n2")).await.expect("remove last"),
        None
    );
    assert_eq!(
        s.client()
            .kv_get("streaming/data/helpers")
            .await
            .expect("raw"),
        None
    );
    assert_eq!(
        s.remove_node(&a, &n("n2"))
            .await
            .expect("remove from nothing"),
        None
    );
}

/// Garbage written by hand (or by another tool) under the prefix: every bad key is reported
/// once with its reason, the good mappings next to it are listed, nothing crashes, and the
/// garbage is not edited in place — only a forced write replaces it.
#[tokio::test]
async fn garbage_under_the_prefix_is_reported_per_key_and_skipped() {
    let agent = ConsulAgent::start_dev().await;
    let c = client(&agent);
    let raw: [(&str, &[u8]); 12] = [
        ("streaming/data/", b""), // the "folder" the Consul UI creates: ignored
        ("streaming/data/good", b" node1 , node2 "),
        ("streaming/data/seed", b"node1"), // what the seed's setup-consul.sh writes
        ("streaming/data/empty", b""),
        ("streaming/data/dotdot", b"../x"),
        ("streaming/data/space", b"a b"),
        ("streaming/data/dup", b"n1,n1"),
        ("streaming/data/binary", &[0xff, 0xfe, 0x00, b'n']),
        ("streaming/data/bad id", b"node1"),
        ("streaming/data/caf\u{e9}", b"node1"),
        ("streaming/data/a/b", b"node1"),
        ("streaming/data/folder/", b""),
    ];
    for (k, v) in raw {
        assert!(c.kv_put(k, v, None).await.expect("raw put"), "{k}");
    }
    let s = MappingStore::new(c.clone(), PREFIX);
    let snap = s.list(&QueryOptions::now()).await.expect("list");
    assert_eq!(
        snap.mappings.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
        ["good", "seed"]
    );
    assert_eq!(snap.mappings[&d("good")].value(), "node1,node2");
    let problems: Vec<(&str, &str)> = snap
        .problems
        .iter()
        .map(|p| (p.key.as_str(), p.reason.as_str()))
        .collect();
    let keys: Vec<&str> = problems.iter().map(|p| p.0).collect();
    assert_eq!(
        keys,
        [
            "streaming/data/a/b",
            "streaming/data/bad id",
            "streaming/data/binary",
            "streaming/data/caf\u{e9}",
            "streaming/data/dotdot",
            "streaming/data/dup",
            "streaming/data/empty",
            "streaming/data/folder/",
            "streaming/data/space",
        ],
        "{problems:#?}"
    );
    for (key, want) in [
        ("streaming/data/a/b", "nested"),
        ("streaming/data/bad id", "data ID"),
        ("streaming/data/binary", "UTF-8"),
        ("streaming/data/dotdot", "'/'"),
        ("streaming/data/dup", "twice"),
        ("streaming/data/empty", "empty"),
        ("streaming/data/space", "' '"),
    ] {
        let reason = problems
            .iter()
            .find(|p| p.0 == key)
            .map(|p| p.1)
            .unwrap_or_default();
        assert!(reason.contains(want), "{key}: {reason:?} lacks {want:?}");
    }

    // The watch reads the same and does not fall over either.
    let shutdown = CancellationToken::new();
    let mut rx = watch_mappings(s.clone(), Duration::from_secs(30), shutdown.clone());
    let w = watch_until(&mut rx, "the first snapshot", |w| w.value.is_some()).await;
    let watched = w.value.expect("snapshot");
    assert_eq!(
        (watched.mappings, watched.problems),
        (snap.mappings.clone(), snap.problems.clone())
    );
    shutdown.cancel();

    // Garbage is not edited in place, and get says why.
    for id in ["empty", "dup", "binary"] {
        match s.get(&d(id)).await {
            Err(e @ MappingError::Unreadable { .. }) => {
                let e = e.to_string();
                assert!(e.contains(&format!("streaming/data/{id}")), "{e}")
            }
            other => panic!("{id}: expected Unreadable, got {other:?}"),
        }
        assert!(matches!(
            s.add_node(&d(id), &n("node7")).await,
            Err(MappingError::Unreadable { .. })
        ));
    }
    let still = c
        .kv_get("streaming/data/dup")
        .await
        .expect("raw")
        .expect("present");
    assert_eq!(still.value, b"n1,n1");
    let fixed = s
        .put_force(&d("dup"), &[n("n1")])
        .await
        .expect("force over garbage");
    assert_eq!(s.get(&d("dup")).await.expect("get"), Some(fixed));
}
