//! KV against a real agent: single-key calls never recurse, CAS loses nothing, blocking
//! queries wake on change only, missing prefixes are empty lists with an index, odd keys
//! round-trip, and an index that goes backwards is reset.

use std::time::{Duration, Instant};

use ec_discovery::{DiscoveryError, QueryOptions, next_index};
use ec_testkit::ConsulAgent;

use crate::util::client;

#[tokio::test]
async fn get_put_roundtrip_and_missing_key() {
    let agent = ConsulAgent::start_dev().await;
    let c = client(&agent);
    assert_eq!(c.kv_get("kv/none").await.expect("get missing"), None);

    let bytes: Vec<u8> = (0..=255).collect();
    assert!(c.kv_put("kv/bin", &bytes, None).await.expect("put"));
    let got = c.kv_get("kv/bin").await.expect("get").expect("present");
    assert_eq!(got.key, "kv/bin");
    assert_eq!(got.value, bytes);
    assert!(got.modify_index >= got.create_index && got.create_index > 0);
    assert_eq!(got.session, None);

    // An empty body is stored as `null`: it reads back as empty.
    assert!(c.kv_put("kv/empty", b"", None).await.expect("put empty"));
    let empty = c.kv_get("kv/empty").await.expect("get").expect("present");
    assert!(empty.value.is_empty());
}

/// Rule 1: `recurse` is never sent on a single-key get or delete.
#[tokio::test]
async fn single_key_calls_never_touch_neighbours() {
    let agent = ConsulAgent::start_dev().await;
    let c = client(&agent);
    for k in ["m/ab", "m/a/child"] {
        assert!(c.kv_put(k, k.as_bytes(), None).await.expect("put"));
    }
    // "m/a" does not exist; a recursive read would find "m/ab" and "m/a/child".
    assert_eq!(c.kv_get("m/a").await.expect("get"), None);

    assert!(c.kv_put("m/a", b"x", None).await.expect("put a"));
    assert!(c.kv_delete("m/a", None).await.expect("delete a"));
    assert_eq!(c.kv_get("m/a").await.expect("get a"), None);
    let left: Vec<String> = c
        .kv_list("m/", &QueryOptions::now())
        .await
        .expect("list")
        .value
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(
        left,
        ["m/a/child", "m/ab"],
        "deleting m/a deleted a neighbour"
    );
}

/// Check-and-set: a stale index writes nothing and says so; two writers incrementing one
/// counter with CAS retries lose no increment.
#[tokio::test]
async fn cas_with_a_stale_index_loses_nothing() {
    let agent = ConsulAgent::start_dev().await;
    let c = client(&agent);

    // cas=0: create only if absent.
    assert!(c.kv_put("cas/k", b"v1", Some(0)).await.expect("create"));
    assert!(
        !c.kv_put("cas/k", b"other", Some(0))
            .await
            .expect("create again")
    );
    let v1 = c.kv_get("cas/k").await.expect("get").expect("present");
    assert_eq!(v1.value, b"v1");

    assert!(
        c.kv_put("cas/k", b"v2", Some(v1.modify_index))
            .await
            .expect("cas put")
    );
    // The same (now stale) index fails and leaves v2 in place.
    assert!(
        !c.kv_put("cas/k", b"v3", Some(v1.modify_index))
            .await
            .expect("stale put")
    );
    let v2 = c.kv_get("cas/k").await.expect("get").expect("present");
    assert_eq!(v2.value, b"v2");

    assert!(
        !c.kv_delete("cas/k", Some(v1.modify_index))
            .await
            .expect("stale delete")
    );
    assert!(
        c.kv_get("cas/k").await.expect("get").is_some(),
        "stale CAS delete deleted"
    );
    assert!(
        c.kv_delete("cas/k", Some(v2.modify_index))
            .await
            .expect("cas delete")
    );
    assert_eq!(c.kv_get("cas/k").await.expect("get"), None);

    // Two writers, read-modify-write with CAS and retry.
    const PER_WRITER: u32 = 25;
    let writer = |c: ec_discovery::ConsulClient| async move {
        let mut conflicts = 0u32;
        for _ in 0..PER_WRITER {
            loop {
                let cur = c.kv_get("cas/counter").await.expect("get counter");
                let (n, idx) = match &cur {
                    None => (0u32, 0),
                    Some(p) => (
                        std::str::from_utf8(&p.value)
                            .expect("utf8")
                            .parse()
                            .expect("number"),
                        p.modify_index,
                    ),
                };
                let next = (n + 1).to_string();
                if c.kv_put("cas/counter", next.as_bytes(), Some(idx))
                    .await
                    .expect("put")
                {
                    break;
                }
                conflicts += 1;
            }
        }
        conflicts
    };
    let (a, b) = tokio::join!(
        tokio::spawn(writer(c.clone())),
        tokio::spawn(writer(c.clone()))
    );
    let conflicts = a.expect("writer a") + b.expect("writer b");
    let end = c
        .kv_get("cas/counter")
        .await
        .expect("get")
        .expect("counter");
    assert_eq!(
        end.value,
        (2 * PER_WRITER).to_string().as_bytes(),
        "conflicts: {conflicts}"
    );
}

/// Rule 9: every key segment is percent-encoded; keys the router would rewrite are refused.
#[tokio::test]
async fn odd_keys_roundtrip_exactly() {
    let agent = ConsulAgent::start_dev().await;
    let c = client(&agent);
    let keys = [
        "odd/with space",
        "odd/100%",
        "odd/what?x=1",
        "odd/frag#ment",
        "odd/plus+and&amp;=",
        "odd/é ü/漢字",
        "odd/%2F%41",
        "odd/folder/",
        "odd/..x/.y",
    ];
    for k in keys {
        assert!(c.kv_put(k, k.as_bytes(), None).await.expect(k), "{k}");
    }
    for k in keys {
        let got = c
            .kv_get(k)
            .await
            .expect(k)
            .unwrap_or_else(|| panic!("{k} missing"));
        assert_eq!(got.key, k);
        assert_eq!(got.value, k.as_bytes());
    }
    let mut listed: Vec<String> = c
        .kv_list("odd/", &QueryOptions::now())
        .await
        .expect("list")
        .value
        .into_iter()
        .map(|p| p.key)
        .collect();
    listed.sort();
    let mut want: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    want.sort();
    assert_eq!(listed, want, "a key was written somewhere else");
    // A prefix with odd characters lists only its own keys.
    let sub = c
        .kv_list("odd/é ü/", &QueryOptions::now())
        .await
        .expect("list");
    assert_eq!(sub.value.len(), 1);

    for bad in ["odd//x", "odd/./x", "odd/../x", "/odd", ""] {
        let e = c.kv_put(bad, b"x", None).await.expect_err(bad);
        assert!(
            matches!(e, DiscoveryError::InvalidKey { .. }),
            "{bad:?}: {e}"
        );
    }
    // Nothing was written by the refused keys.
    let all = c.kv_list("", &QueryOptions::now()).await.expect("list all");
    assert_eq!(all.value.len(), keys.len());
}

/// Rule 5: a missing prefix is an empty list with an index, and a watch on it wakes when
/// the first key appears.
#[tokio::test]
async fn missing_prefix_is_empty_and_watchable() {
    let agent = ConsulAgent::start_dev().await;
    let c = client(&agent);
    let first = c
        .kv_list("nothing/here/", &QueryOptions::now())
        .await
        .expect("list");
    assert!(first.value.is_empty());
    assert!(first.index > 0, "index {}", first.index);

    let watcher = {
        let c = c.clone();
        let q = QueryOptions::blocking(first.index, Duration::from_secs(20));
        tokio::spawn(async move { c.kv_list("nothing/here/", &q).await })
    };
    assert!(c.kv_put("nothing/here/x", b"1", None).await.expect("put"));
    let woke = tokio::time::timeout(Duration::from_secs(15), watcher)
        .await
        .expect("the watch did not wake on the first key")
        .expect("join")
        .expect("list");
    assert_eq!(woke.value.len(), 1);
    assert!(woke.index > first.index);
}

/// Rules 3 and 4: a blocking query is not woken by an identical rewrite (it answers after
/// `wait` with the same index, without a client timeout even though Consul adds up to
/// wait/16), and is woken at once by a real change.
#[tokio::test]
async fn blocking_query_wakes_on_change_only() {
    let agent = ConsulAgent::start_dev().await;
    let c = client(&agent);
    assert!(c.kv_put("w/k", b"same", None).await.expect("put"));
    let start = c.kv_list("w/", &QueryOptions::now()).await.expect("list");

    let wait = Duration::from_secs(2);
    let t0 = Instant::now();
    let watcher = {
        let c = c.clone();
        let q = QueryOptions::blocking(start.index, wait);
        tokio::spawn(async move { c.kv_list("w/", &q).await })
    };
    // Rewrite the identical value a few times while the watch waits.
    for _ in 0..3 {
        assert!(c.kv_put("w/k", b"same", None).await.expect("rewrite"));
    }
    let quiet = watcher.await.expect("join").expect("quiet watch answered");
    let waited = t0.elapsed();
    assert_eq!(
        quiet.index, start.index,
        "an identical rewrite bumped the index"
    );
    assert_eq!(quiet.value, start.value);
    assert!(
        waited >= wait - Duration::from_millis(50),
        "woke after {waited:?}"
    );
    assert_eq!(next_index(start.index, quiet.index), start.index);

    let t1 = Instant::now();
    let watcher = {
        let c = c.clone();
        let q = QueryOptions::blocking(quiet.index, Duration::from_secs(20));
        tokio::spawn(async move { c.kv_list("w/", &q).await })
    };
    assert!(c.kv_put("w/k", b"different", None).await.expect("change"));
    let changed = watcher.await.expect("join").expect("watch");
    assert!(
        t1.elapsed() < Duration::from_secs(10),
        "woke after {:?}",
        t1.elapsed()
    );
    assert!(changed.index > quiet.index);
    assert_eq!(changed.value[0].value, b"different");
}

/// Rule 6: after a dev agent restarts (all state lost) its index is lower than the one a
/// watcher holds. Blocking on the old index would sleep through the change; `next_index`
/// resets to 0, which answers at once with the new state.
#[tokio::test]
async fn index_going_backwards_resets_the_watch() {
    let mut agent = ConsulAgent::start_dev().await;
    let c = client(&agent);
    for i in 0..30 {
        assert!(
            c.kv_put("back/k", i.to_string().as_bytes(), None)
                .await
                .expect("put")
        );
    }
    let before = c
        .kv_list("back/", &QueryOptions::now())
        .await
        .expect("list");

    agent.restart().await;
    assert!(
        c.kv_put("back/k", b"after restart", None)
            .await
            .expect("put after restart")
    );

    // A watcher still holding the old index: Consul blocks it (the index is "in the future")
    // and answers after the wait with a *lower* index.
    let t0 = Instant::now();
    let stale = c
        .kv_list(
            "back/",
            &QueryOptions::blocking(before.index, Duration::from_secs(1)),
        )
        .await
        .expect("stale watch");
    assert!(
        stale.index < before.index,
        "index did not go backwards: {} then {}",
        before.index,
        stale.index
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "did not block: {:?}",
        t0.elapsed()
    );

    let reset = next_index(before.index, stale.index);
    assert_eq!(reset, 0);
    let t1 = Instant::now();
    let fresh = c
        .kv_list(
            "back/",
            &QueryOptions::blocking(reset, Duration::from_secs(20)),
        )
        .await
        .expect("fresh read");
    assert!(t1.elapsed() < Duration::from_secs(5), "index 0 blocked");
    assert_eq!(fresh.value[0].value, b"after restart");
}
