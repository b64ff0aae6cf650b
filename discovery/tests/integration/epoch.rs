//! Epoch records against a real agent: create only if absent, CAS on the exact index each
//! write returns, a lost race names what is stored, listing beside (not under) the mappings.

use ec_core::{DataId, Epoch, NodeId};
use ec_discovery::{EpochError, EpochStore, MappingStore, QueryOptions};
use ec_testkit::ConsulAgent;

use crate::util::client;

fn n(s: &str) -> NodeId {
    NodeId::parse(s).expect("node id")
}

#[tokio::test]
async fn claims_are_check_and_set_and_one_of_two_racers_wins() {
    let agent = ConsulAgent::start_dev().await;
    let store = EpochStore::new(client(&agent), "streaming/data/");
    let d = DataId::parse("orders").expect("id");
    assert_eq!(store.get(&d).await.expect("get"), None);
    assert_eq!(store.key(&d), "streaming/data.epochs/orders");

    let first = store
        .put(&d, Epoch(5), &n("a"), &[n("a"), n("b")], None)
        .await
        .expect("create");
    assert_eq!(store.get(&d).await.expect("get"), Some(first.clone()));
    // Creating again is a conflict that shows what is there.
    match store.put(&d, Epoch(6), &n("b"), &[n("b")], None).await {
        Err(EpochError::Conflict { current, .. }) => assert_eq!(current, Some(first.clone())),
        other => panic!("expected a conflict, got {other:?}"),
    }

    // Two claimers read the same version; exactly one write lands.
    let (a, b) = (n("a"), n("b"));
    let (only_b, both) = ([b.clone()], [a.clone(), b.clone()]);
    let (x, y) = tokio::join!(
        store.put(&d, Epoch(6), &b, &only_b, Some(first.modify_index)),
        store.put(&d, Epoch(6), &a, &both, Some(first.modify_index)),
    );
    assert_eq!(
        [x.is_ok(), y.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "{x:?} {y:?}"
    );
    let now = store.get(&d).await.expect("get").expect("present");
    assert_eq!(now.epoch, Epoch(6));
    assert!(now.modify_index > first.modify_index);

    // Chained writes use the index each write answered.
    let next = store
        .put(
            &d,
            Epoch(6),
            &now.primary,
            &now.in_sync,
            Some(now.modify_index),
        )
        .await
        .expect("same content, same index");
    let after = store
        .put(&d, Epoch(7), &n("b"), &[n("b")], Some(next.modify_index))
        .await
        .expect("chained");
    assert_eq!(store.get(&d).await.expect("get"), Some(after));

    // Invalid requests never reach Consul.
    let e = store
        .put(&d, Epoch(8), &n("c"), &[n("b")], None)
        .await
        .expect_err("primary outside its in-sync set");
    assert!(matches!(e, EpochError::Invalid { .. }), "{e}");
}

#[tokio::test]
async fn records_are_listed_beside_the_mappings_not_under_them() {
    let agent = ConsulAgent::start_dev().await;
    let c = client(&agent);
    let store = EpochStore::new(c.clone(), "streaming/data/");
    let mappings = MappingStore::new(c.clone(), "streaming/data/");
    let d = DataId::parse("d1").expect("id");
    mappings.put(&d, &[n("a")], None).await.expect("mapping");
    store
        .put(&d, Epoch(3), &n("a"), &[n("a")], None)
        .await
        .expect("epoch");
    c.kv_put("streaming/data.epochs/bad", b"not json", None)
        .await
        .expect("garbage");

    let snap = mappings.list(&QueryOptions::now()).await.expect("mappings");
    assert_eq!(snap.mappings.len(), 1);
    assert!(snap.problems.is_empty(), "{:?}", snap.problems);

    let (states, problems, index) = store.list(&QueryOptions::now()).await.expect("list");
    assert_eq!(states.len(), 1);
    assert_eq!(states[&d].primary, n("a"));
    assert_eq!(problems.len(), 1);
    assert!(problems[0].0.ends_with("/bad") && problems[0].1.contains("JSON"));
    assert!(index > 0);
}
