//! State tests: events (keys, backend messages, ticks) in, state and effects out, at a fixed
//! time. No terminal, no network.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use ec_client::{Event, Start};
use ec_core::{Offset, TimestampMs};
use ec_discovery::{HealthSnapshot, MappingSnapshot, NodeHealth, NodeStatus};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::*;
use crate::event::{TailBatch, TailMsg};

pub(crate) fn t0() -> SystemTime {
    // 2026-11-26T12:00:00Z
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_694_400)
}

pub(crate) fn mapping(data_id: &str, nodes: &[&str], index: u64) -> Mapping {
    Mapping {
        data_id: DataId::parse(data_id).expect("valid"),
        nodes: nodes
            .iter()
            .map(|n| NodeId::parse(n).expect("valid"))
            .collect(),
        modify_index: index,
    }
}

pub(crate) fn mappings_msg(list: &[Mapping], generation: u64) -> AppEvent {
    let snapshot = MappingSnapshot {
        mappings: list
            .iter()
            .map(|m| (m.data_id.clone(), m.clone()))
            .collect(),
        problems: vec![],
        index: list.iter().map(|m| m.modify_index).max().unwrap_or(1),
    };
    AppEvent::Backend(BackendMsg::Mappings(Watched {
        value: Some(snapshot),
        reachable: true,
        last_contact: Some(t0()),
        last_error: None,
        generation,
    }))
}

pub(crate) fn health_msg(nodes: &[(&str, NodeStatus)], generation: u64) -> AppEvent {
    let snapshot = HealthSnapshot {
        nodes: nodes
            .iter()
            .enumerate()
            .map(|(i, (id, status))| {
                (
                    id.to_string(),
                    NodeHealth {
                        node_id: id.to_string(),
                        address: format!("127.0.0.1:{}", 50052 + i),
                        status: *status,
                        checks_passing: if *status == NodeStatus::Passing { 2 } else { 1 },
                        checks_total: 2,
                        meta: BTreeMap::new(),
                    },
                )
            })
            .collect(),
        index: 10 + generation,
    };
    AppEvent::Backend(BackendMsg::Health(Watched {
        value: Some(snapshot),
        reachable: true,
        last_contact: Some(t0()),
        last_error: None,
        generation,
    }))
}

pub(crate) fn key(code: KeyCode) -> AppEvent {
    AppEvent::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

pub(crate) fn ch(c: char) -> AppEvent {
    key(KeyCode::Char(c))
}

pub(crate) fn events(generation: u64, node: &str, offsets: std::ops::Range<u64>) -> AppEvent {
    AppEvent::Backend(BackendMsg::Tail {
        generation,
        msg: TailMsg::Events(vec![TailBatch {
            node: node.into(),
            events: offsets
                .map(|o| Event {
                    offset: Offset(o),
                    timestamp: TimestampMs(1_795_694_400_000 + o as i64 * 7),
                    data: Bytes::from(format!("{{\"order\":{o},\"amount\":{}}}", o * 3)),
                })
                .collect(),
        }]),
    })
}

pub(crate) fn tail_msg(generation: u64, msg: TailMsg) -> AppEvent {
    AppEvent::Backend(BackendMsg::Tail { generation, msg })
}

/// An app at `t0` on an 80×24 screen with three nodes and two mappings.
pub(crate) fn app() -> App {
    let mut app = App::new(AppConfig::default(), t0(), (80, 24));
    app.handle(
        health_msg(
            &[
                ("node1", NodeStatus::Passing),
                ("node2", NodeStatus::Passing),
                ("node3", NodeStatus::Critical),
            ],
            1,
        ),
        t0(),
    );
    app.handle(
        mappings_msg(
            &[
                mapping("orders", &["node1", "node2"], 41),
                mapping("payments", &["node2"], 43),
            ],
            1,
        ),
        t0(),
    );
    app
}

pub(crate) fn type_text(app: &mut App, text: &str) -> Vec<Effect> {
    text.chars().flat_map(|c| app.handle(ch(c), t0())).collect()
}

fn write_id(effects: &[Effect]) -> (u64, WriteOp) {
    match effects {
        [Effect::Write { id, op }] => (*id, op.clone()),
        other => panic!("expected one write, got {other:?}"),
    }
}

#[test]
fn cas_conflict_then_overwrite_is_again_check_and_set() {
    let mut app = app();
    app.handle(ch('e'), t0());
    let Some(Popup::Form(form)) = &app.popup else {
        panic!("edit form");
    };
    assert_eq!(form.nodes.text(), "node1,node2");
    type_text(&mut app, ",node3");
    let (id, op) = write_id(&app.handle(key(KeyCode::Enter), t0()));
    assert_eq!(
        op,
        WriteOp::Put {
            data_id: DataId::parse("orders").expect("valid"),
            nodes: ["node1", "node2", "node3"]
                .iter()
                .map(|n| NodeId::parse(n).expect("valid"))
                .collect(),
            expected: Some(41),
        }
    );
    assert!(matches!(&app.popup, Some(Popup::Form(f)) if f.saving));

    // Someone else moved orders to node2,node3 meanwhile.
    let theirs = mapping("orders", &["node2", "node3"], 57);
    app.handle(
        AppEvent::Backend(BackendMsg::WriteDone {
            id,
            result: Err(WriteFailure::Conflict {
                current: Some(theirs.clone()),
            }),
        }),
        t0(),
    );
    let Some(Popup::Conflict(c)) = &app.popup else {
        panic!("conflict popup, got {:?}", app.popup);
    };
    assert_eq!(c.theirs.as_ref(), Some(&theirs));
    assert!(app.pending.is_none());

    let (id2, op2) = write_id(&app.handle(ch('o'), t0()));
    assert!(id2 > id);
    assert!(
        matches!(op2, WriteOp::Put { expected: Some(57), ref nodes, .. } if nodes.len() == 3),
        "overwrite is CAS against their index: {op2:?}"
    );
    let mine = mapping("orders", &["node1", "node2", "node3"], 60);
    app.handle(
        AppEvent::Backend(BackendMsg::WriteDone {
            id: id2,
            result: Ok(WriteOk {
                mapping: Some(mine),
            }),
        }),
        t0(),
    );
    assert!(app.popup.is_none());
    let msg = app.message.clone().expect("a message");
    assert_eq!(msg.level, Level::Info);
    assert!(msg.text.contains("ModifyIndex 60"), "{}", msg.text);
}

#[test]
fn cas_conflict_reload_reopens_the_form_with_their_value() {
    let mut app = app();
    app.handle(ch('e'), t0());
    type_text(&mut app, ",node3");
    let (id, _) = write_id(&app.handle(key(KeyCode::Enter), t0()));
    let theirs = mapping("orders", &["node2"], 57);
    app.handle(
        AppEvent::Backend(BackendMsg::WriteDone {
            id,
            result: Err(WriteFailure::Conflict {
                current: Some(theirs.clone()),
            }),
        }),
        t0(),
    );
    assert!(
        app.handle(ch('r'), t0()).is_empty(),
        "reload writes nothing"
    );
    let Some(Popup::Form(form)) = &app.popup else {
        panic!("form again");
    };
    assert_eq!(form.nodes.text(), "node2");
    assert_eq!(form.mode, form::FormMode::Edit { original: theirs });
}

#[test]
fn delete_asks_naming_the_data_id_and_a_vanished_mapping_needs_no_overwrite() {
    let mut app = app();
    app.handle(ch('j'), t0());
    assert!(app.handle(ch('d'), t0()).is_empty(), "asks first");
    assert!(
        matches!(&app.popup, Some(Popup::ConfirmDelete(m)) if m.data_id.as_str() == "payments")
    );
    let (id, op) = write_id(&app.handle(ch('y'), t0()));
    assert_eq!(
        op,
        WriteOp::Delete {
            data_id: DataId::parse("payments").expect("valid"),
            expected: 43
        }
    );
    app.handle(
        AppEvent::Backend(BackendMsg::WriteDone {
            id,
            result: Err(WriteFailure::Conflict { current: None }),
        }),
        t0(),
    );
    assert!(app.handle(ch('o'), t0()).is_empty());
    assert!(app.popup.is_none());
    assert!(
        app.message
            .expect("message")
            .text
            .contains("already deleted")
    );
}

#[test]
fn promote_asks_the_gateway_and_never_reorders_the_mapping_itself() {
    let mut app = app();
    app.handle(ch('p'), t0());
    let (_, op) = write_id(&app.handle(key(KeyCode::Enter), t0()));
    assert_eq!(
        op,
        WriteOp::Promote {
            data_id: DataId::parse("orders").expect("valid"),
            node: NodeId::parse("node2").expect("valid"),
            force: false,
        }
    );

    // A mapping with one node has nothing to promote.
    app.pending = None;
    app.handle(ch('j'), t0());
    assert!(app.handle(ch('p'), t0()).is_empty());
    assert!(app.popup.is_none());
    assert_eq!(app.message.expect("message").level, Level::Warn);
}

fn refused(id: u64, forceable: bool) -> AppEvent {
    AppEvent::Backend(BackendMsg::WriteDone {
        id,
        result: Err(WriteFailure::Refused {
            reason: "node node2 is not in sync for data ID orders (epoch 3, in sync [node1])"
                .into(),
            forceable,
        }),
    })
}

#[test]
fn an_out_of_sync_replica_is_promoted_only_after_the_operator_forces_it() {
    let mut app = app();
    app.handle(ch('p'), t0());
    let (id, _) = write_id(&app.handle(key(KeyCode::Enter), t0()));
    assert!(app.handle(refused(id, true), t0()).is_empty());
    assert!(app.pending.is_none());
    let Some(Popup::PromoteRefused { node, reason, .. }) = &app.popup else {
        panic!("refusal popup, got {:?}", app.popup);
    };
    assert_eq!(node.as_str(), "node2");
    assert!(reason.contains("not in sync"), "{reason}");
    assert_eq!(app.context(), Context::PromoteRefused);

    // Esc keeps the primary: nothing is sent.
    assert!(app.handle(key(KeyCode::Esc), t0()).is_empty());
    assert!(app.popup.is_none());

    // Asked again and refused again, f sends the same promotion with force.
    app.handle(ch('p'), t0());
    let (id, _) = write_id(&app.handle(key(KeyCode::Enter), t0()));
    app.handle(refused(id, true), t0());
    let (id, op) = write_id(&app.handle(ch('f'), t0()));
    assert_eq!(
        op,
        WriteOp::Promote {
            data_id: DataId::parse("orders").expect("valid"),
            node: NodeId::parse("node2").expect("valid"),
            force: true,
        }
    );
    app.handle(
        AppEvent::Backend(BackendMsg::WriteDone {
            id,
            result: Ok(WriteOk {
                mapping: Some(mapping("orders", &["node2", "node1"], 60)),
            }),
        }),
        t0(),
    );
    let message = app.message.expect("message");
    assert_eq!(message.level, Level::Info);
    assert!(
        message.text.contains("node2 is now the primary of orders"),
        "{}",
        message.text
    );
}

#[test]
fn a_refusal_force_cannot_pass_is_an_error_without_the_force_choice() {
    let mut app = app();
    app.handle(ch('p'), t0());
    let (id, _) = write_id(&app.handle(key(KeyCode::Enter), t0()));
    app.handle(refused(id, false), t0());
    assert!(app.popup.is_none());
    assert!(app.handle(ch('f'), t0()).is_empty());
    let message = app.message.expect("message");
    assert_eq!(message.level, Level::Error);
    assert!(message.text.contains("refused"), "{}", message.text);
}

#[test]
fn add_form_refuses_invalid_input_and_writes_valid_input_with_cas_zero() {
    let mut app = app();
    app.handle(ch('a'), t0());
    type_text(&mut app, "bad id");
    assert!(app.handle(key(KeyCode::Tab), t0()).is_empty());
    type_text(&mut app, "node1");
    assert!(
        app.handle(key(KeyCode::Enter), t0()).is_empty(),
        "invalid: no write"
    );
    assert!(matches!(&app.popup, Some(Popup::Form(f)) if f.error.is_some()));

    // Fix the data ID: back to the first field, delete the space-separated tail.
    app.handle(key(KeyCode::BackTab), t0());
    app.handle(
        AppEvent::Key(KeyEvent::new(KeyCode::Char('u'), KeyModifiers::CONTROL)),
        t0(),
    );
    type_text(&mut app, "shipments");
    let (_, op) = write_id(&app.handle(key(KeyCode::Enter), t0()));
    assert!(
        matches!(&op, WriteOp::Put { expected: None, data_id, .. } if data_id.as_str() == "shipments"),
        "{op:?}"
    );
}

#[test]
fn a_late_answer_to_an_old_write_is_ignored() {
    let mut app = app();
    app.handle(ch('e'), t0());
    type_text(&mut app, ",node3");
    let (id, _) = write_id(&app.handle(key(KeyCode::Enter), t0()));
    app.handle(
        AppEvent::Backend(BackendMsg::WriteDone {
            id: id + 100,
            result: Ok(WriteOk { mapping: None }),
        }),
        t0(),
    );
    assert!(app.pending.is_some(), "not ours");
    assert!(matches!(app.popup, Some(Popup::Form(_))));
}

#[test]
fn seek_below_retention_is_clamped_and_old_generations_are_dropped() {
    let mut app = app();
    let effects = app.handle(key(KeyCode::Enter), t0());
    let [
        Effect::StartTail {
            generation: g1,
            target,
            ..
        },
    ] = effects.as_slice()
    else {
        panic!("start tail: {effects:?}");
    };
    assert_eq!(*target, SeekTarget::FromEnd(100));
    assert_eq!(app.view, View::Tail);
    app.handle(events(*g1, "node1", 900..1000), t0());

    app.handle(ch(':'), t0());
    type_text(&mut app, "seek 3");
    let effects = app.handle(key(KeyCode::Enter), t0());
    let [
        Effect::StartTail {
            generation: g2,
            target: SeekTarget::Offset(3),
            ..
        },
    ] = effects.as_slice()
    else {
        panic!("seek: {effects:?}");
    };
    assert!(app.tail.buffer.is_empty());
    app.handle(events(*g1, "node1", 1000..1010), t0());
    assert!(app.tail.buffer.is_empty(), "old stream dropped");
    app.handle(
        tail_msg(
            *g2,
            TailMsg::Started {
                start: Start::Offset(Offset(500)),
                clamped: Some((3, 500)),
                end: None,
            },
        ),
        t0(),
    );
    app.handle(events(*g2, "node1", 500..600), t0());
    assert!(
        app.tail
            .note
            .as_deref()
            .is_some_and(|n| n.contains("clamped"))
    );
    let rows = app.tail_rows();
    assert_eq!(
        app.tail.selected(rows).map(|e| e.offset),
        Some(500),
        "seek shows its offset first"
    );
    assert_eq!(app.tail.gaps, 0);
}

#[test]
fn pause_counts_arrivals_and_angle_brackets_seek_the_ends() {
    let mut app = app();
    let g = match app.handle(key(KeyCode::Enter), t0()).as_slice() {
        [Effect::StartTail { generation, .. }] => *generation,
        other => panic!("{other:?}"),
    };
    app.handle(events(g, "node1", 0..50), t0());
    app.handle(ch(' '), t0());
    app.handle(events(g, "node1", 50..62), t0());
    assert_eq!(app.tail.arrived_while_paused(), Some(12));
    app.handle(key(KeyCode::End), t0());
    assert_eq!(app.tail.arrived_while_paused(), None);

    let effects = app.handle(ch('<'), t0());
    assert!(
        matches!(
            effects.as_slice(),
            [Effect::StartTail {
                target: SeekTarget::Earliest,
                ..
            }]
        ),
        "< is earliest in the Tail view: {effects:?}"
    );
    assert_eq!(app.view, View::Tail);
    let effects = app.handle(ch('>'), t0());
    assert!(matches!(
        effects.as_slice(),
        [Effect::StartTail {
            target: SeekTarget::Latest,
            ..
        }]
    ));
    assert_eq!(app.tail.mode, tail::TailMode::Follow);
}

#[test]
fn gaps_and_failovers_from_the_stream_are_shown() {
    let mut app = app();
    let g = match app.handle(key(KeyCode::Enter), t0()).as_slice() {
        [Effect::StartTail { generation, .. }] => *generation,
        other => panic!("{other:?}"),
    };
    app.handle(
        tail_msg(
            g,
            TailMsg::Started {
                start: Start::Offset(Offset(1000)),
                clamped: None,
                end: None,
            },
        ),
        t0(),
    );
    app.handle(events(g, "node1", 1000..1042), t0());
    app.handle(
        tail_msg(
            g,
            TailMsg::Failover {
                from: Some("node1".into()),
                to: "node2".into(),
                resume_at: Start::Offset(Offset(1042)),
                reason: "node1 turned unhealthy".into(),
            },
        ),
        t0(),
    );
    app.handle(events(g, "node2", 1042..1050), t0());
    assert_eq!(app.tail.gaps, 0);
    assert_eq!(app.tail.serving.as_deref(), Some("node2"));
    app.handle(events(g, "node2", 1055..1060), t0());
    assert_eq!(
        app.tail.last_gap.map(|g| (g.expected, g.got)),
        Some((1050, 1055))
    );
}

#[test]
fn health_transitions_flapping_and_consul_outages_are_logged() {
    let mut app = app();
    let mut generation = 1;
    let mut now = t0();
    for status in [
        NodeStatus::Critical,
        NodeStatus::Passing,
        NodeStatus::Critical,
        NodeStatus::Passing,
    ] {
        generation += 1;
        now += Duration::from_secs(30);
        app.handle(
            health_msg(
                &[
                    ("node1", NodeStatus::Passing),
                    ("node2", status),
                    ("node3", NodeStatus::Critical),
                ],
                generation,
            ),
            now,
        );
    }
    let node2 = app.health.nodes["node2"].clone();
    assert!(app.health.is_flapping(&node2, now));
    assert!(
        !app.health
            .is_flapping(&app.health.nodes["node1"].clone(), now)
    );

    let down = AppEvent::Backend(BackendMsg::Health(Watched {
        value: None,
        reachable: false,
        last_contact: Some(now),
        last_error: Some("connection refused".into()),
        generation,
    }));
    app.handle(down, now);
    assert!(matches!(
        app.health.log.back().map(|e| &e.kind),
        Some(health::LogKind::ConsulLost { .. })
    ));
    assert_eq!(app.health.nodes.len(), 3, "last known state kept");
    app.handle(
        health_msg(&[("node1", NodeStatus::Passing)], generation),
        now,
    );
    assert_eq!(
        app.health.log.back().map(|e| &e.kind),
        Some(&health::LogKind::ConsulBack)
    );
}

#[test]
fn promotions_made_elsewhere_are_logged() {
    let mut app = app();
    app.handle(
        mappings_msg(
            &[
                mapping("orders", &["node2", "node1"], 70),
                mapping("payments", &["node2"], 43),
            ],
            2,
        ),
        t0(),
    );
    assert!(matches!(
        app.health.log.back().map(|e| &e.kind),
        Some(health::LogKind::Promotion { from, to, .. }) if from == "node1" && to == "node2"
    ));
}

#[test]
fn help_filter_and_views_by_keys() {
    let mut app = app();
    app.handle(ch('?'), t0());
    assert_eq!(app.context(), crate::keymap::Context::Help);
    app.handle(key(KeyCode::Esc), t0());
    assert!(app.popup.is_none());

    app.handle(ch('/'), t0());
    type_text(&mut app, "pay");
    assert_eq!(app.mappings.rows().len(), 1);
    app.handle(key(KeyCode::Esc), t0());
    assert_eq!(
        app.mappings.rows().len(),
        2,
        "Esc restores the filter before"
    );

    app.handle(key(KeyCode::Tab), t0());
    assert_eq!(app.view, View::Health);
    app.handle(ch('3'), t0());
    assert_eq!(app.view, View::Tail);
    app.handle(ch(':'), t0());
    type_text(&mut app, "m");
    app.handle(key(KeyCode::Enter), t0());
    assert_eq!(app.view, View::Mappings);
    app.handle(ch('q'), t0());
    assert!(app.should_quit());
}

#[test]
fn rate_uses_the_injected_clock() {
    let mut app = app();
    let g = match app.handle(key(KeyCode::Enter), t0()).as_slice() {
        [Effect::StartTail { generation, .. }] => *generation,
        other => panic!("{other:?}"),
    };
    app.handle(AppEvent::Tick, t0());
    app.handle(events(g, "node1", 0..10_000), t0());
    app.handle(AppEvent::Tick, t0() + Duration::from_secs(2));
    assert_eq!(app.tail.rate, 5000.0);
}
