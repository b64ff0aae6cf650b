//! How fast the console's state and drawing absorb a tail stream: feeds `App::handle` with
//! tail messages as fast as it can, drawing the Tail view on ratatui's `TestBackend` every
//! 33 ms of wall time (the runner's frame interval), and reports events/s absorbed and the
//! cost of a draw. The network is not involved: this is the ceiling the UI side sets, to
//! compare with the 50 000 events/s the console must keep up with.
//!
//! `cargo run --release -p ec-console --example tail_load [EVENTS_PER_MESSAGE] [PAYLOAD_BYTES]`

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use ec_client::Event;
use ec_console::event::{TailBatch, TailMsg};
use ec_console::{App, AppConfig, AppEvent, BackendMsg, Effect};
use ec_core::{Offset, TimestampMs};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

fn key(code: KeyCode) -> AppEvent {
    AppEvent::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let per_message: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let payload: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let total: u64 = 5_000_000;
    let now = SystemTime::now();

    let mut app = App::new(AppConfig::default(), now, (120, 40));
    app.handle(key(KeyCode::Char(':')), now);
    for c in "tail orders".chars() {
        app.handle(key(KeyCode::Char(c)), now);
    }
    let effects = app.handle(key(KeyCode::Enter), now);
    let Some(Effect::StartTail { generation, .. }) = effects.first() else {
        panic!("the console did not start a tail: {effects:?}");
    };
    let generation = *generation;
    let node: Arc<str> = "node1".into();
    let data = Bytes::from(vec![b'x'; payload]);
    let mut terminal = Terminal::new(TestBackend::new(120, 40)).expect("test terminal");

    let frame = Duration::from_millis(33);
    let start = Instant::now();
    let mut last_draw = start;
    let mut draws = 0u32;
    let mut draw_time = Duration::ZERO;
    let mut max_draw = Duration::ZERO;
    let mut offset = 0u64;
    while offset < total {
        let events = (offset..offset + per_message)
            .map(|o| Event {
                offset: Offset(o),
                timestamp: TimestampMs(1_795_694_400_000 + o as i64),
                data: data.clone(),
            })
            .collect();
        offset += per_message;
        let msg = AppEvent::Backend(BackendMsg::Tail {
            generation,
            msg: TailMsg::Events(vec![TailBatch {
                node: node.clone(),
                events,
            }]),
        });
        app.handle(msg, SystemTime::now());
        if last_draw.elapsed() >= frame {
            app.handle(AppEvent::Tick, SystemTime::now());
            let t = Instant::now();
            terminal
                .draw(|f| ec_console::ui::draw(f, &app))
                .expect("draw");
            let took = t.elapsed();
            draw_time += took;
            max_draw = max_draw.max(took);
            draws += 1;
            last_draw = Instant::now();
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(app.tail.gaps, 0, "the gap check must pass");
    println!(
        "{total} events ({per_message}/message, {payload} B) in {:.2} s: {:.0} events/s absorbed \
         while drawing {draws} frames (mean {:.2} ms, max {:.2} ms per draw); buffer {}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        draw_time.as_secs_f64() * 1000.0 / f64::from(draws.max(1)),
        max_draw.as_secs_f64() * 1000.0,
        app.tail.buffer.len(),
    );
}
