//! Render snapshots: every view and popup drawn on ratatui's `TestBackend` at 80×24 and
//! 120×40, from states built with events at a fixed time, compared with the committed
//! `.snap` files (`INSTA_UPDATE=no` / `CI=true` fail on any difference or missing file).

use std::time::Duration;

use ec_client::Start;
use ec_core::Offset;
use ec_discovery::{MappingProblem, NodeStatus, Watched};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::KeyCode;
use ratatui::style::Color;

use crate::app::tests::{
    app, ch, events, health_msg, key, mapping, mappings_msg, t0, tail_msg, type_text,
};
use crate::app::{App, Effect};
use crate::event::{AppEvent, BackendMsg, GatewayState, TailMsg, WriteFailure};

mod replication;

const SIZES: [(u16, u16); 2] = [(80, 24), (120, 40)];

fn render(app: &App, width: u16, height: u16) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test terminal");
    terminal
        .draw(|f| super::draw(f, app))
        .expect("draw on the test backend");
    terminal
}

/// Snapshots `build()`'s state at both sizes (the state is rebuilt per size, since paging
/// depends on the screen).
fn snap(name: &str, build: impl Fn((u16, u16)) -> App) {
    for (w, h) in SIZES {
        let app = build((w, h));
        let terminal = render(&app, w, h);
        insta::assert_snapshot!(format!("{name}_{w}x{h}"), terminal.backend());
    }
}

fn sized(mut app: App, size: (u16, u16)) -> App {
    app.handle(AppEvent::Resize(size.0, size.1), app.now);
    app
}

fn gateway_up(app: &mut App) {
    app.handle(
        AppEvent::Backend(BackendMsg::Gateway(GatewayState::Up {
            consul_reachable: Some(true),
            staleness_ms: 0,
        })),
        t0(),
    );
}

/// The base app with the gateway up and a bad key under the prefix.
fn cluster(size: (u16, u16)) -> App {
    let mut app = sized(app(), size);
    gateway_up(&mut app);
    let mut snapshot = ec_discovery::MappingSnapshot {
        mappings: [
            mapping("orders", &["node1", "node2"], 41),
            mapping("payments", &["node2"], 43),
            mapping("audit.log-2026", &["node3", "node1", "node9"], 52),
        ]
        .into_iter()
        .map(|m| (m.data_id.clone(), m))
        .collect(),
        problems: vec![MappingProblem {
            key: "streaming/data/broken".into(),
            reason: "empty value; expected comma-separated node IDs".into(),
        }],
        index: 52,
    };
    snapshot.index = 52;
    app.handle(
        AppEvent::Backend(BackendMsg::Mappings(Watched {
            value: Some(snapshot),
            reachable: true,
            last_contact: Some(t0()),
            last_error: None,
            generation: 7,
        })),
        t0(),
    );
    app
}

/// A Tail view of `orders` with 200 events from node1, then a failover to node2.
fn tailing(size: (u16, u16)) -> (App, u64) {
    let mut app = cluster(size);
    let effects = app.handle(key(KeyCode::Enter), t0());
    let [Effect::StartTail { generation, .. }] = effects.as_slice() else {
        panic!("tail started: {effects:?}");
    };
    let g = *generation;
    app.handle(AppEvent::Tick, t0());
    app.handle(
        tail_msg(
            g,
            TailMsg::Started {
                start: Start::Offset(Offset(900)),
                clamped: None,
                end: None,
            },
        ),
        t0(),
    );
    app.handle(events(g, "node1", 900..1042), t0());
    app.handle(
        tail_msg(
            g,
            TailMsg::Failover {
                from: Some("node1".into()),
                to: "node2".into(),
                resume_at: Start::Offset(Offset(1042)),
                reason: "node1 turned critical".into(),
            },
        ),
        t0() + Duration::from_millis(512),
    );
    app.handle(
        events(g, "node2", 1042..1100),
        t0() + Duration::from_millis(600),
    );
    app.handle(AppEvent::Tick, t0() + Duration::from_secs(1));
    (app, g)
}

#[test]
fn mappings_view() {
    snap("mappings", cluster);
}

#[test]
fn mappings_view_filtered_while_typing() {
    snap("mappings_filter", |size| {
        let mut app = cluster(size);
        app.handle(ch('/'), t0());
        type_text(&mut app, "node1");
        app
    });
}

#[test]
fn mappings_view_waiting_for_consul_and_gateway() {
    snap("mappings_connecting", |size| {
        let mut app = App::new(crate::app::AppConfig::default(), t0(), size);
        app.handle(
            AppEvent::Backend(BackendMsg::Mappings(Watched {
                value: None,
                reachable: false,
                last_contact: None,
                last_error: Some("error sending request for url (http://127.0.0.1:8500/v1/kv/streaming/data/?recurse): connection refused".into()),
                generation: 0,
            })),
            t0(),
        );
        app.handle(
            AppEvent::Backend(BackendMsg::Gateway(GatewayState::Down {
                error: "connection refused".into(),
            })),
            t0(),
        );
        app
    });
}

#[test]
fn header_names_an_acl_refusal() {
    snap("mappings_consul_permission_denied", |size| {
        let mut app = App::new(crate::app::AppConfig::default(), t0(), size);
        app.handle(
            AppEvent::Backend(BackendMsg::Mappings(Watched {
                value: None,
                reachable: false,
                last_contact: None,
                last_error: Some("permission denied by Consul's ACLs at http://127.0.0.1:8500/v1/kv/streaming/data/ (Permission denied)".into()),
                generation: 0,
            })),
            t0(),
        );
        app
    });
}

#[test]
fn mappings_view_consul_lost_keeps_last_data() {
    snap("mappings_consul_down", |size| {
        let mut app = cluster(size);
        let later = t0() + Duration::from_secs(75);
        app.handle(
            AppEvent::Backend(BackendMsg::Mappings(Watched {
                value: None,
                reachable: false,
                last_contact: Some(t0()),
                last_error: Some("connection refused".into()),
                generation: 7,
            })),
            later,
        );
        app
    });
}

#[test]
fn health_view() {
    snap("health", |size| {
        let mut app = cluster(size);
        app.handle(ch('2'), t0());
        let mut now = t0();
        let mut generation = 1;
        for (node2, node3) in [
            (NodeStatus::Critical, NodeStatus::Critical),
            (NodeStatus::Passing, NodeStatus::Critical),
            (NodeStatus::Critical, NodeStatus::Warning),
            (NodeStatus::Passing, NodeStatus::Warning),
        ] {
            generation += 1;
            now += Duration::from_millis(31_512);
            app.handle(
                health_msg(
                    &[
                        ("node1", NodeStatus::Passing),
                        ("node2", node2),
                        ("node3", node3),
                    ],
                    generation,
                ),
                now,
            );
        }
        now += Duration::from_secs(5);
        app.handle(
            health_msg(
                &[
                    ("node1", NodeStatus::Passing),
                    ("node2", NodeStatus::Passing),
                ],
                generation + 1,
            ),
            now,
        );
        app.handle(
            mappings_msg(
                &[
                    mapping("orders", &["node2", "node1"], 80),
                    mapping("payments", &["node2"], 43),
                ],
                9,
            ),
            now,
        );
        app.handle(AppEvent::Tick, now + Duration::from_secs(3));
        app
    });
}

#[test]
fn health_view_since_is_never_cut() {
    snap("health_since", |size| {
        let mut app = cluster(size);
        app.handle(ch('2'), t0());
        let passing = [
            ("node1", NodeStatus::Passing),
            ("node2", NodeStatus::Passing),
        ];
        app.handle(health_msg(&passing, 2), t0());
        let later = t0() + Duration::from_secs(600);
        app.handle(
            health_msg(
                &[
                    ("node1", NodeStatus::Passing),
                    ("node2", NodeStatus::Critical),
                ],
                3,
            ),
            later,
        );
        app.handle(AppEvent::Tick, later + Duration::from_secs(104));
        app
    });
}

#[test]
fn tail_view_following_with_a_failover() {
    snap("tail_follow", |size| tailing(size).0);
}

#[test]
fn tail_view_paused_with_a_gap_and_hex() {
    snap("tail_paused_gap", |size| {
        let (mut app, g) = tailing(size);
        app.handle(key(KeyCode::Up), t0() + Duration::from_secs(1));
        app.handle(key(KeyCode::Up), t0() + Duration::from_secs(1));
        app.handle(
            events(g, "node2", 1105..1130),
            t0() + Duration::from_secs(2),
        );
        app.handle(ch('x'), t0() + Duration::from_secs(2));
        app
    });
}

#[test]
fn tail_view_clamped_seek() {
    snap("tail_clamped", |size| {
        let (mut app, _) = tailing(size);
        app.handle(ch(':'), t0());
        type_text(&mut app, "seek 3");
        let effects = app.handle(key(KeyCode::Enter), t0());
        let [Effect::StartTail { generation, .. }] = effects.as_slice() else {
            panic!("{effects:?}");
        };
        let g = *generation;
        app.handle(
            tail_msg(
                g,
                TailMsg::Started {
                    start: Start::Offset(Offset(500)),
                    clamped: Some((3, 500)),
                    end: None,
                },
            ),
            t0(),
        );
        app.handle(events(g, "node1", 500..530), t0());
        app
    });
}

/// `:seek TEXT` in the Tail view; returns the new generation.
fn seek(app: &mut App, text: &str) -> u64 {
    app.handle(ch(':'), t0());
    type_text(app, &format!("seek {text}"));
    let effects = app.handle(key(KeyCode::Enter), t0());
    let [Effect::StartTail { generation, .. }] = effects.as_slice() else {
        panic!("{effects:?}");
    };
    *generation
}

fn started(app: &mut App, g: u64, start: Start, end: Option<u64>) {
    app.handle(
        tail_msg(
            g,
            TailMsg::Started {
                start,
                clamped: None,
                end,
            },
        ),
        t0(),
    );
}

#[test]
fn tail_view_history_after_a_seek_is_not_new() {
    snap("tail_seek_history", |size| {
        let (mut app, _) = tailing(size);
        let g = seek(&mut app, "5");
        started(&mut app, g, Start::Offset(Offset(5)), Some(1100));
        app.handle(events(g, "node2", 5..578), t0());
        // Published after the seek: these five are news.
        app.handle(events(g, "node2", 578..1105), t0());
        app
    });
}

#[test]
fn tail_view_waits_past_the_end() {
    snap("tail_beyond_end", |size| {
        let (mut app, _) = tailing(size);
        let g = seek(&mut app, "99999");
        started(&mut app, g, Start::Offset(Offset(99_999)), Some(1100));
        app
    });
}

#[test]
fn tail_view_seek_latest_keeps_the_last_rows() {
    snap("tail_seek_latest", |size| {
        let (mut app, _) = tailing(size);
        let effects = app.handle(ch('>'), t0());
        let [Effect::StartTail { generation: g, .. }] = effects.as_slice() else {
            panic!("{effects:?}");
        };
        let g = *g;
        started(&mut app, g, Start::Latest, None);
        app.handle(events(g, "node2", 1100..1103), t0());
        app
    });
}

#[test]
fn tail_view_nothing_picked_and_gateway_wait() {
    snap("tail_empty", |size| {
        let mut app = cluster(size);
        app.handle(ch('3'), t0());
        app
    });
    snap("tail_waiting", |size| {
        let mut app = cluster(size);
        let effects = app.handle(key(KeyCode::Enter), t0());
        let [Effect::StartTail { generation, .. }] = effects.as_slice() else {
            panic!("{effects:?}");
        };
        app.handle(
            tail_msg(
                *generation,
                TailMsg::Waiting {
                    detail: "cannot connect to the gateway at 127.0.0.1:50051: transport error; retrying".into(),
                },
            ),
            t0(),
        );
        app
    });
}

#[test]
fn help_popup() {
    snap("help_mappings", |size| {
        let mut app = cluster(size);
        app.handle(ch('?'), t0());
        app
    });
    snap("help_tail_scrolled", |size| {
        let (mut app, _) = tailing(size);
        app.handle(ch('?'), t0());
        for _ in 0..3 {
            app.handle(key(KeyCode::Down), t0());
        }
        app
    });
}

#[test]
fn add_form_popup_validating() {
    snap("form_add", |size| {
        let mut app = cluster(size);
        app.handle(ch('a'), t0());
        type_text(&mut app, "orders");
        app.handle(key(KeyCode::Tab), t0());
        type_text(&mut app, "node3,node9,no");
        app
    });
}

#[test]
fn edit_form_popup() {
    snap("form_edit", |size| {
        let mut app = cluster(size);
        app.handle(ch('e'), t0());
        type_text(&mut app, ",node2");
        app
    });
}

#[test]
fn delete_and_promote_popups() {
    snap("confirm_delete", |size| {
        let mut app = cluster(size);
        app.handle(ch('d'), t0());
        app
    });
    snap("promote", |size| {
        let mut app = cluster(size);
        app.handle(ch('p'), t0());
        app
    });
    snap("promote_refused", |size| {
        let mut app = cluster(size);
        app.handle(ch('p'), t0());
        let effects = app.handle(key(KeyCode::Enter), t0());
        let [Effect::Write { id, .. }] = effects.as_slice() else {
            panic!("{effects:?}");
        };
        app.handle(
            AppEvent::Backend(BackendMsg::WriteDone {
                id: *id,
                result: Err(WriteFailure::Refused {
                    reason: "node node2 is not in sync for data ID orders (epoch 3, in sync \
                             [node1]); promoting it may lose acknowledged events — pass force \
                             to do it anyway"
                        .into(),
                    forceable: true,
                }),
            }),
            t0(),
        );
        app
    });
}

#[test]
fn conflict_popup() {
    snap("conflict", |size| {
        let mut app = cluster(size);
        app.handle(ch('e'), t0());
        type_text(&mut app, ",node3");
        let effects = app.handle(key(KeyCode::Enter), t0());
        let [Effect::Write { id, .. }] = effects.as_slice() else {
            panic!("{effects:?}");
        };
        app.handle(
            AppEvent::Backend(BackendMsg::WriteDone {
                id: *id,
                result: Err(WriteFailure::Conflict {
                    current: Some(mapping("orders", &["node2", "node3"], 57)),
                }),
            }),
            t0(),
        );
        app
    });
}

#[test]
fn event_detail_and_picker_popups() {
    snap("detail_text", |size| {
        let (mut app, _) = tailing(size);
        app.handle(key(KeyCode::Enter), t0());
        app
    });
    snap("detail_hex", |size| {
        let (mut app, _) = tailing(size);
        app.handle(key(KeyCode::Enter), t0());
        app.handle(ch('x'), t0());
        app
    });
    snap("picker", |size| {
        let mut app = cluster(size);
        app.handle(ch('3'), t0());
        app.handle(ch('t'), t0());
        type_text(&mut app, "o");
        app.handle(key(KeyCode::Down), t0());
        app
    });
    snap("command_line", |size| {
        let (mut app, _) = tailing(size);
        app.handle(ch('s'), t0());
        type_text(&mut app, "@2026-11-26T12:00:00Z");
        app
    });
}

#[test]
fn no_color_draws_no_color() {
    let (mut app, _) = tailing((120, 40));
    app.config.no_color = true;
    app.handle(ch('2'), t0());
    let terminal = render(&app, 120, 40);
    let buffer = terminal.backend().buffer();
    for cell in buffer.content() {
        assert_eq!(cell.fg, Color::Reset, "fg color at {:?}", cell.symbol());
        assert_eq!(cell.bg, Color::Reset, "bg color at {:?}", cell.symbol());
    }
    // And with colors, critical is red.
    app.config.no_color = false;
    let terminal = render(&app, 120, 40);
    assert!(
        terminal
            .backend()
            .buffer()
            .content()
            .iter()
            .any(|c| c.fg == Color::Red)
    );
}

#[test]
fn tiny_terminals_do_not_panic() {
    let (app, _) = tailing((10, 4));
    for (w, h) in [(1, 1), (10, 4), (20, 6), (40, 10)] {
        for view in ['1', '2', '3', '4'] {
            let mut a = app.clone();
            a.handle(ch(view), t0());
            render(&a, w, h);
            a.handle(ch('?'), t0());
            render(&a, w, h);
        }
    }
}
