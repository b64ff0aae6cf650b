//! Render snapshots of the Replication view (see the parent module for how snapshots work):
//! before the first answer, and live — a healthy data ID, one whose replica fell out of the
//! in-sync set, and one whose primary stopped answering, with the node rates below.

use std::time::Duration;

use ratatui::crossterm::event::KeyCode;

use super::{cluster, snap};
use crate::app::replication::{
    ReplicaLag, ReplicationProbe, ReplicationReport, ReplicationRound, Role,
};
use crate::app::tests::{ch, key, t0};
use crate::app::{App, Effect};
use crate::event::{AppEvent, BackendMsg};

fn lag(node: &str, next: Option<u64>, in_sync: bool, lag_events: u64, ms: u64) -> ReplicaLag {
    ReplicaLag {
        node_id: node.into(),
        connected: in_sync || next.is_some(),
        in_sync,
        next_offset: next,
        lag_events,
        caught_up_ago: Duration::from_millis(ms),
    }
}

fn primary(primary: &str, end: u64, hwm: u64, replicas: Vec<ReplicaLag>) -> ReplicationReport {
    ReplicationReport {
        role: Role::Primary,
        epoch: 41,
        primary: primary.into(),
        high_watermark: hwm,
        log_end: end,
        in_sync: std::iter::once(primary.to_string())
            .chain(
                replicas
                    .iter()
                    .filter(|r| r.in_sync)
                    .map(|r| r.node_id.clone()),
            )
            .collect(),
        replicas,
        detail: String::new(),
    }
}

fn round(probes: Vec<(&str, &str, Result<ReplicationReport, String>)>) -> AppEvent {
    AppEvent::Backend(BackendMsg::Replication(ReplicationRound {
        probes: probes
            .into_iter()
            .map(|(d, n, result)| ReplicationProbe {
                data_id: ec_core::DataId::parse(d).expect("valid"),
                node_id: n.into(),
                result,
            })
            .collect(),
    }))
}

/// The cluster of the other snapshots (node3 critical) on the Replication view.
fn shown(size: (u16, u16)) -> App {
    let mut app = cluster(size);
    let effects = app.handle(ch('4'), t0());
    assert_eq!(effects, [Effect::PollReplication { active: true }]);
    app
}

#[test]
fn replication_view_before_the_first_answer() {
    snap("replication_asking", shown);
}

#[test]
fn replication_view_live() {
    snap("replication", |size| {
        let mut app = shown(size);
        app.handle(
            round(vec![
                (
                    "orders",
                    "node1",
                    Ok(primary(
                        "node1",
                        10_400,
                        10_400,
                        vec![lag("node2", Some(10_400), true, 0, 120)],
                    )),
                ),
                (
                    "payments",
                    "node2",
                    Ok(primary("node2", 5_000, 5_000, vec![])),
                ),
                (
                    "audit.log-2026",
                    "node3",
                    Ok(primary(
                        "node3",
                        812,
                        800,
                        vec![
                            lag("node1", Some(800), true, 12, 310),
                            lag("node9", None, false, 812, 4_200),
                        ],
                    )),
                ),
            ]),
            t0() + Duration::from_secs(1),
        );
        let later = t0() + Duration::from_secs(3);
        app.handle(
            round(vec![
                (
                    "orders",
                    "node1",
                    Ok(primary(
                        "node1",
                        12_400,
                        12_380,
                        vec![lag("node2", Some(12_380), true, 20, 40)],
                    )),
                ),
                (
                    "payments",
                    "node2",
                    Ok(primary("node2", 5_600, 5_600, vec![])),
                ),
                (
                    "audit.log-2026",
                    "node3",
                    Err("no answer from 127.0.0.1:50054 within 800ms".into()),
                ),
            ]),
            later,
        );
        app.handle(key(KeyCode::Down), later);
        app.handle(AppEvent::Tick, later);
        app
    });
}

#[test]
fn replica_out_of_sync_and_a_fenced_primary() {
    snap("replication_out_of_sync", |size| {
        let mut app = shown(size);
        let mut payments = primary("node2", 5_000, 5_000, vec![]);
        payments.role = Role::Fenced;
        payments.in_sync.clear();
        payments.detail = "named primary; claiming epoch 42".into();
        app.handle(
            round(vec![
                (
                    "orders",
                    "node1",
                    Ok(primary(
                        "node1",
                        1_520,
                        1_520,
                        vec![ReplicaLag {
                            connected: true,
                            ..lag("node2", Some(1_500), false, 20, 6_300)
                        }],
                    )),
                ),
                ("payments", "node2", Ok(payments)),
            ]),
            t0() + Duration::from_secs(1),
        );
        app
    });
}

#[test]
fn replication_view_reads_without_color() {
    let mut app = shown((120, 40));
    app.config.no_color = true;
    let mut report = primary(
        "node1",
        70,
        70,
        vec![lag("node2", Some(50), false, 20, 5_100)],
    );
    report.in_sync = vec!["node1".into()];
    app.handle(
        round(vec![("orders", "node1", Ok(report))]),
        t0() + Duration::from_secs(1),
    );
    let terminal = super::render(&app, 120, 40);
    let buffer = terminal.backend().buffer();
    for cell in buffer.content() {
        assert_eq!(
            cell.fg,
            ratatui::style::Color::Reset,
            "at {:?}",
            cell.symbol()
        );
        assert_eq!(
            cell.bg,
            ratatui::style::Color::Reset,
            "at {:?}",
            cell.symbol()
        );
    }
    // Out of sync is said in words, not by color alone.
    let text: String = buffer.content().iter().map(|c| c.symbol()).collect();
    assert!(text.contains("✗ no"), "{text}");
}
