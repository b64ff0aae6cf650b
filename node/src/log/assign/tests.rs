//! Property tests of the placement stage: arbitrary sequences of publishes (under any
//! access, with a wall clock that may go back) and copied appends (dense or not, epochs up or
//! down) against one tail, checked against the rules of the module doc.

use bytes::Bytes;
use ec_core::{DataId, Epoch};
use proptest::prelude::*;

use super::Tail;
use crate::log::committer::Copied;
use crate::log::record::StreamMeta;
use crate::log::{LogError, WriteAccess};

#[derive(Debug, Clone)]
enum Step {
    /// A publish of this many events at this wall-clock time, under this access.
    Publish(usize, i64, WriteAccess),
    /// A copied append: offsets from `next` shifted by `shift`, epochs from the tail's last
    /// one plus these steps (negative: going down), timestamps at `ts`.
    Copy {
        events: usize,
        shift: i64,
        epochs: Vec<i64>,
        ts: i64,
    },
}

fn access() -> impl Strategy<Value = WriteAccess> {
    prop_oneof![
        Just(WriteAccess::Open),
        (1..6u64).prop_map(|e| WriteAccess::Leader(Epoch(e))),
        Just(WriteAccess::Replica),
        Just(WriteAccess::Closed),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1..5usize, 0..100i64, access()).prop_map(|(n, now, a)| Step::Publish(n, now, a)),
        (
            1..5usize,
            prop_oneof![4 => Just(0i64), 1 => -2..3i64],
            0..100i64
        )
            .prop_flat_map(|(events, shift, ts)| {
                let epochs =
                    proptest::collection::vec(prop_oneof![6 => 0..2i64, 1 => Just(-1i64)], events);
                (Just(events), Just(shift), epochs, Just(ts))
            })
            .prop_map(|(events, shift, epochs, ts)| Step::Copy {
                events,
                shift,
                epochs,
                ts
            }),
    ]
}

fn payloads(n: usize) -> Vec<Bytes> {
    (0..n).map(|i| Bytes::from(vec![b'x'; i + 1])).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn placement_rules_hold(
        earliest in 0..20u64,
        last_epoch in proptest::option::of(0..4u64),
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        let data_id = DataId::parse("orders").expect("valid data ID");
        let meta = StreamMeta { earliest, next: earliest, ..StreamMeta::default() };
        let mut tail = Tail::new(meta, last_epoch);
        // Every placed event's (offset, epoch), in order.
        let mut placed: Vec<(u64, u64)> = Vec::new();
        let mut bytes = 0;
        for s in &steps {
            let before = tail.clone();
            match s {
                Step::Publish(n, now, access) => {
                    let events = payloads(*n);
                    match tail.publish_epoch(&data_id, *access) {
                        Err(LogError::Fenced { .. }) => {
                            prop_assert!(matches!(access, WriteAccess::Replica | WriteAccess::Closed));
                            continue;
                        }
                        Err(e) => return Err(TestCaseError::fail(format!("unexpected {e}"))),
                        Ok(epoch) => {
                            match access {
                                WriteAccess::Leader(e) => prop_assert_eq!(epoch, e.0),
                                _ => prop_assert_eq!(epoch, before.last_epoch.unwrap_or(0)),
                            }
                            let a = tail.place_publish(epoch, *now, &events);
                            prop_assert_eq!(a.first.0, before.meta.next, "starts at the end");
                            prop_assert_eq!(a.last.0 - a.first.0 + 1, *n as u64);
                            prop_assert!(a.timestamp.0 >= before.meta.last_ts.unwrap_or(i64::MIN));
                            prop_assert!(a.timestamp.0 >= *now);
                            placed.extend((a.first.0..=a.last.0).map(|o| (o, epoch)));
                            bytes += events.iter().map(|e| e.len() as u64).sum::<u64>();
                        }
                    }
                }
                Step::Copy { events, shift, epochs, ts } => {
                    let start = before.meta.next as i64 + shift;
                    if start < 0 {
                        continue;
                    }
                    let mut epoch = before.last_epoch.unwrap_or(0) as i64;
                    let copied: Vec<Copied> = epochs
                        .iter()
                        .enumerate()
                        .map(|(i, d)| {
                            epoch = (epoch + d).max(0);
                            Copied { offset: start as u64 + i as u64, epoch: epoch as u64, timestamp: *ts, producer: None }
                        })
                        .collect();
                    let data = payloads(*events);
                    let monotone = copied.iter().try_fold(before.last_epoch.unwrap_or(0), |last, c| (c.epoch >= last).then_some(c.epoch)).is_some();
                    let verdict = tail.check_copied(&data_id, WriteAccess::Replica, data.len(), &copied);
                    prop_assert_eq!(verdict.is_ok(), *shift == 0 && monotone, "{:?}", verdict);
                    let fenced = tail.check_copied(&data_id, WriteAccess::Open, data.len(), &copied);
                    prop_assert!(matches!(fenced, Err(LogError::Fenced { .. })), "only a replica takes copies");
                    if verdict.is_ok() {
                        let a = tail.place_copied(&copied, &data, 0);
                        prop_assert_eq!(a.first.0, before.meta.next);
                        placed.extend(copied.iter().map(|c| (c.offset, c.epoch)));
                        bytes += data.iter().map(|e| e.len() as u64).sum::<u64>();
                    }
                }
            }
            prop_assert!(tail.meta.last_ts >= before.meta.last_ts, "timestamps never go back");
        }
        // Dense offsets from the start, none twice.
        let offsets: Vec<u64> = placed.iter().map(|(o, _)| *o).collect();
        prop_assert_eq!(offsets, (earliest..tail.meta.next).collect::<Vec<_>>());
        prop_assert_eq!(tail.meta.bytes, bytes);
        // An epoch start exactly where the epoch changes, and nowhere else.
        let mut expected = Vec::new();
        let mut last = last_epoch;
        for (o, e) in &placed {
            if last != Some(*e) {
                expected.push((*e, *o));
                last = Some(*e);
            }
        }
        let starts: Vec<(u64, u64)> = tail.new_epochs.iter().map(|s| (s.epoch.0, s.start.0)).collect();
        prop_assert_eq!(starts, expected);
        prop_assert_eq!(tail.last_epoch, last);
    }
}
