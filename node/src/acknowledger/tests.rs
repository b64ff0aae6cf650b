//! Property tests of the acknowledger: requests that finish in any order, some failing,
//! answered at arbitrary moments, then the stream's end.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::{Acknowledger, Outcome, Reply};

#[derive(Debug, Clone)]
enum Step {
    /// The next request arrives.
    Push,
    /// The next request in completion order finishes.
    Finish,
    /// The task answers what it can.
    Answer,
}

/// Request `i`: its completion rank, and whether it fails.
fn requests() -> impl Strategy<Value = Vec<(usize, bool)>> {
    (1..60usize).prop_flat_map(|n| {
        let order = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
        // Failures are rare, so that long runs of acknowledgements are common too.
        let fails = proptest::collection::vec(proptest::bool::weighted(0.05), n);
        (order, fails).prop_map(|(order, fails)| order.into_iter().zip(fails).collect())
    })
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![Just(Step::Push), Just(Step::Finish), Just(Step::Answer)];
    proptest::collection::vec(step, 0..200)
}

/// Runs the scenario and returns every message sent, in order.
fn run(reqs: &[(usize, bool)], steps: &[Step], max: usize) -> Vec<Reply<u64, u64>> {
    let n = reqs.len();
    // Requests in the order they finish.
    let mut finishing: Vec<usize> = (0..n).collect();
    finishing.sort_by_key(|i| reqs[*i].0);
    let mut finished = vec![false; n];
    let (mut pushed, mut done) = (0, 0);
    let mut ack = Acknowledger::new(max);
    let mut sent = Vec::new();
    let outcome = |finished: &[bool], i: &mut usize| match (finished[*i], reqs[*i].1) {
        (false, _) => Outcome::Waiting,
        (true, false) => Outcome::Done(*i as u64 * 10),
        (true, true) => Outcome::Failed(*i as u64),
    };
    for s in steps {
        match s {
            Step::Push if pushed < n => {
                ack.push(pushed as u64, pushed);
                pushed += 1;
            }
            Step::Finish if done < n => {
                finished[finishing[done]] = true;
                done += 1;
            }
            Step::Answer => sent.extend(ack.answer(|i| outcome(&finished, i))),
            _ => {}
        }
    }
    // The stream ends: every request arrives and finishes, and the task answers until
    // nothing is left.
    for i in pushed..n {
        ack.push(i as u64, i);
    }
    finished.iter_mut().for_each(|f| *f = true);
    while !ack.is_empty() && !ack.is_over() {
        let replies = ack.answer(|i| outcome(&finished, i));
        assert!(
            !replies.is_empty(),
            "a finished first request is always answered"
        );
        sent.extend(replies);
    }
    sent
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn in_order_and_exactly_once(
        reqs in requests(),
        steps in steps(),
        max in 1..8usize,
    ) {
        let sent = run(&reqs, &steps, max);
        let first_failure = reqs.iter().position(|(_, fails)| *fails);
        let mut acked = Vec::new();
        for (i, reply) in sent.iter().enumerate() {
            match reply {
                Reply::Acks(acks) => {
                    prop_assert!(!acks.is_empty() && acks.len() <= max, "message of {} acks", acks.len());
                    for (sequence, a) in acks {
                        prop_assert_eq!(*a, sequence * 10, "ack carries its own request's answer");
                        acked.push(*sequence);
                    }
                }
                Reply::Failed(e) => {
                    prop_assert_eq!(Some(*e as usize), first_failure, "the first failure in request order");
                    prop_assert_eq!(i, sent.len() - 1, "the failure is the last message");
                }
            }
        }
        // Acknowledged: exactly the requests before the first failure, each once, in order.
        let answered = first_failure.unwrap_or(reqs.len());
        prop_assert_eq!(acked, (0..answered as u64).collect::<Vec<_>>());
        prop_assert_eq!(first_failure.is_some(), matches!(sent.last(), Some(Reply::Failed(_))));
    }
}

#[test]
fn waits_for_the_first_request() {
    let mut ack = Acknowledger::new(10);
    ack.push(7, Outcome::<u64, ()>::Waiting);
    ack.push(8, Outcome::Done(80));
    assert!(
        ack.answer(|o| o.clone()).is_empty(),
        "nothing before the first is answered"
    );
    *ack.first().unwrap() = Outcome::Done(70);
    assert_eq!(
        ack.answer(|o| o.clone()),
        vec![Reply::Acks(vec![(7, 70), (8, 80)])]
    );
    assert!(ack.is_empty());
}
