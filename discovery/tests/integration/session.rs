//! Sessions and the lock against a real agent: one holder among contenders, a clean hand-over
//! when the holder stops, and the raw acquire/release answers.

use std::time::Duration;

use ec_discovery::{LockOptions, hold_lock};
use ec_testkit::{ConsulAgent, wait_for};
use tokio_util::sync::CancellationToken;

use crate::util::{DEADLINE, client};

#[tokio::test]
async fn acquire_and_release_answer_who_holds_the_lock() {
    let agent = ConsulAgent::start_dev().await;
    let c = client(&agent);
    let ttl = Duration::from_secs(10);
    // Right after start the agent answers "Missing node registration" until it has synced
    // its own node into the catalog.
    let a = wait_for("the agent creates sessions", DEADLINE, || {
        let c = c.clone();
        async move { c.session_create("a", ttl, Duration::ZERO).await.ok() }
    })
    .await;
    let b = c
        .session_create("b", ttl, Duration::ZERO)
        .await
        .expect("session b");
    assert!(c.lock_acquire("locks/x", b"a", &a).await.expect("acquire"));
    assert!(
        c.lock_acquire("locks/x", b"a", &a).await.expect("again"),
        "re-entrant"
    );
    assert!(
        !c.lock_acquire("locks/x", b"b", &b)
            .await
            .expect("contended")
    );
    let pair = c.kv_get("locks/x").await.expect("get").expect("present");
    assert_eq!(pair.session.as_deref(), Some(a.as_str()));
    assert!(!c.lock_release("locks/x", &b).await.expect("not the holder"));
    assert!(c.lock_release("locks/x", &a).await.expect("release"));
    assert!(
        c.lock_acquire("locks/x", b"b", &b)
            .await
            .expect("b takes it")
    );
    assert!(c.session_renew(&a).await.expect("renew"));
    c.session_destroy(&a).await.expect("destroy");
    assert!(!c.session_renew(&a).await.expect("renew gone"), "gone");
    // Destroying the holder's session releases its lock.
    c.session_destroy(&b).await.expect("destroy b");
    let pair = c.kv_get("locks/x").await.expect("get").expect("present");
    assert_eq!(pair.session, None);
}

#[tokio::test]
async fn exactly_one_contender_holds_and_a_successor_takes_over() {
    let agent = ConsulAgent::start_dev().await;
    let stops: Vec<CancellationToken> = (0..3).map(|_| CancellationToken::new()).collect();
    let held: Vec<_> = stops
        .iter()
        .enumerate()
        .map(|(i, stop)| {
            hold_lock(
                client(&agent),
                LockOptions::new("ec/failover-lock", format!("gw{i}")),
                stop.clone(),
            )
        })
        .collect();
    let holders = |held: &[tokio::sync::watch::Receiver<bool>]| {
        held.iter()
            .enumerate()
            .filter(|(_, h)| *h.borrow())
            .map(|(i, _)| i)
            .collect::<Vec<_>>()
    };
    let first = wait_for("one contender holds the lock", DEADLINE, || {
        let h = holders(&held);
        async move { (h.len() == 1).then(|| h[0]) }
    })
    .await;
    // And it stays one for a while (renewals, contenders polling).
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(holders(&held), vec![first], "never two holders");
    }
    let holder = client(&agent)
        .kv_get("ec/failover-lock")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(holder.value, format!("gw{first}").into_bytes());

    stops[first].cancel();
    let next = wait_for("another contender takes over", DEADLINE, || {
        let h = holders(&held);
        async move { (h.len() == 1 && h[0] != first).then(|| h[0]) }
    })
    .await;
    assert_ne!(next, first);
    for s in &stops {
        s.cancel();
    }
}
