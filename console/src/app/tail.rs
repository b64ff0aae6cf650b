//! State of the Tail view: the bounded buffer of received events, following vs paused, the
//! scroll position, the gap check, the serving node and failovers, and the event rate.
//!
//! Invariants:
//! - The buffer never holds more than `capacity` events: the oldest are dropped first. A
//!   paused view whose rows were dropped moves to the oldest event still held and says so.
//! - Messages of an older stream generation are ignored: a seek starts a new generation and
//!   clears the buffer, so nothing from before the seek can appear after it.
//! - The gap check looks at every event: each offset must be the previous one + 1 (and the
//!   first one must be the exact offset asked for, when an exact offset was asked for).
//!   Anything else is recorded as a gap and shown in red; it is never hidden.
//! - Pausing only freezes the view: the stream keeps running, events keep entering the
//!   buffer, and `arrived` counts the new ones among them: events at or past the end the
//!   log had when the stream started. History read after a seek is not news.
//! - A seek to the latest event keeps the last rows of the stream before it, shown above a
//!   marker until new events fill the table, so the screen never goes blank; they are
//!   display only and never enter the buffer or the gap check.
//! - Positions are kept as offsets, not row numbers, so dropping old events from the front of
//!   the buffer never shifts what a paused operator is looking at.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use ec_client::Start;
use ec_core::DataId;

use crate::app::command::SeekTarget;
use crate::event::{TailBatch, TailMsg};

/// One received event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailEvent {
    /// Its offset.
    pub offset: u64,
    /// Commit time, ms since the epoch.
    pub timestamp: i64,
    /// The payload.
    pub data: Bytes,
    /// The node that served it.
    pub node: Arc<str>,
}

/// Whether the view follows the end of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailMode {
    /// The newest events are shown as they arrive.
    Follow,
    /// The view stays where it is.
    Paused {
        /// New events (at or past the log's end at the start) received since pausing.
        arrived: u64,
    },
}

/// Where the stream is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamStatus {
    /// No data ID picked.
    Idle,
    /// Waiting for the gateway or for the start position; the text says what for.
    Waiting(String),
    /// Events can arrive.
    Streaming,
    /// The stream ended with this error and will not resume by itself.
    Failed(String),
}

/// A hole (or step back) in the offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The offset that should have come.
    pub expected: u64,
    /// The offset that came.
    pub got: u64,
    /// When it was seen.
    pub at: SystemTime,
}

/// A line about the stream moving between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverNote {
    /// When.
    pub at: SystemTime,
    /// E.g. `node1 lost → resumed at 1042 on node2`.
    pub text: String,
}

/// Most failover notes kept.
const FAILOVER_NOTES: usize = 5;

/// Most rows kept from before a seek to the latest event (more than any screen shows).
const PREVIOUS_ROWS: usize = 500;

/// The Tail view's state.
#[derive(Debug, Clone)]
pub struct TailState {
    /// The data ID tailed.
    pub data_id: Option<DataId>,
    /// The current stream's generation.
    pub generation: u64,
    /// The last seek asked for.
    pub requested: Option<SeekTarget>,
    /// Most events kept.
    pub capacity: usize,
    /// Received events, in offset order, at most `capacity`.
    pub buffer: VecDeque<TailEvent>,
    /// Following or paused.
    pub mode: TailMode,
    /// Paused: the first offset shown (`None` until an event arrives).
    pub top: Option<u64>,
    /// Paused: the selected offset.
    pub cursor: Option<u64>,
    /// Where the stream is.
    pub status: StreamStatus,
    /// The node that served the last batch.
    pub serving: Option<Arc<str>>,
    /// The offset the next event must have; `None` until known.
    pub next_expected: Option<u64>,
    /// Events that passed the gap check in this generation.
    pub checked: u64,
    /// Gaps seen in this generation.
    pub gaps: u64,
    /// The last gap.
    pub last_gap: Option<Gap>,
    /// Recent failovers, oldest first.
    pub failovers: VecDeque<FailoverNote>,
    /// The node whose loss was announced and whose resumption has not come yet.
    pub resuming_from: Option<String>,
    /// Something the operator must know about the start (a clamped seek).
    pub note: Option<String>,
    /// When `note` was set.
    pub note_at: Option<SystemTime>,
    /// Events received in this generation.
    pub received: u64,
    /// A paused view lost rows to the bounded buffer.
    pub trimmed: bool,
    /// Payloads as hex.
    pub hex: bool,
    /// Events per second over the last measured second.
    pub rate: f64,
    rate_window: Option<(SystemTime, u64)>,
    /// The log's end (next offset) when this stream started, if the backend learnt it.
    pub end_at_start: Option<u64>,
    /// The first offset this stream will deliver, when it is an exact one.
    pub first_expected: Option<u64>,
    /// The last rows before a seek to the latest event, shown above a marker until new
    /// rows fill the table.
    pub previous: Vec<TailEvent>,
}

impl TailState {
    /// Nothing tailed yet; keeps at most `capacity` events.
    pub fn new(capacity: usize) -> TailState {
        TailState {
            data_id: None,
            generation: 0,
            requested: None,
            capacity: capacity.max(1),
            buffer: VecDeque::new(),
            mode: TailMode::Follow,
            top: None,
            cursor: None,
            status: StreamStatus::Idle,
            serving: None,
            next_expected: None,
            checked: 0,
            gaps: 0,
            last_gap: None,
            failovers: VecDeque::new(),
            resuming_from: None,
            note: None,
            note_at: None,
            received: 0,
            trimmed: false,
            hex: false,
            rate: 0.0,
            rate_window: None,
            end_at_start: None,
            first_expected: None,
            previous: Vec::new(),
        }
    }

    /// Starts a new stream generation at `target`, following or paused at its first event.
    /// Returns the new generation.
    pub fn start(&mut self, data_id: DataId, target: SeekTarget, follow: bool) -> u64 {
        let hex = self.hex;
        let capacity = self.capacity;
        let generation = self.generation + 1;
        // Seeking the same data ID to its latest event: the old rows stay on screen until
        // new ones come (the newest first, with what was kept from an earlier seek).
        let keep = target == SeekTarget::Latest && self.data_id.as_ref() == Some(&data_id);
        let mut previous = std::mem::take(&mut self.previous);
        if keep {
            previous.extend(std::mem::take(&mut self.buffer));
            let excess = previous.len().saturating_sub(PREVIOUS_ROWS);
            previous.drain(..excess);
        } else {
            previous.clear();
        }
        *self = TailState::new(capacity);
        self.previous = previous;
        self.hex = hex;
        self.generation = generation;
        self.data_id = Some(data_id);
        self.requested = Some(target);
        self.status = StreamStatus::Waiting("connecting".into());
        self.mode = if follow {
            TailMode::Follow
        } else {
            TailMode::Paused { arrived: 0 }
        };
        generation
    }

    /// Handles a backend message; returns false if it belongs to an older generation.
    pub fn on_msg(&mut self, generation: u64, msg: TailMsg, now: SystemTime) -> bool {
        if generation != self.generation || self.data_id.is_none() {
            return false;
        }
        match msg {
            TailMsg::Waiting { detail } => {
                if !matches!(self.status, StreamStatus::Failed(_)) {
                    self.status = StreamStatus::Waiting(detail);
                }
            }
            TailMsg::Started {
                start,
                clamped,
                end,
            } => {
                self.status = StreamStatus::Streaming;
                if self.received == 0 {
                    self.end_at_start = end;
                }
                if let Start::Offset(o) = start
                    && self.next_expected.is_none()
                    && self.received == 0
                {
                    self.next_expected = Some(o.0);
                    self.first_expected = Some(o.0);
                }
                if let Some((asked, earliest)) = clamped {
                    self.note_at = Some(now);
                    self.note = Some(format!(
                        "seek to offset {asked} clamped to {earliest}: older offsets are no longer retained"
                    ));
                }
            }
            TailMsg::Events(batches) => {
                self.status = StreamStatus::Streaming;
                for batch in batches {
                    self.push(batch, now);
                }
            }
            TailMsg::Lost { node, .. } => {
                // Nobody serves until the Failover that follows; the note says so now.
                self.serving = None;
                self.resuming_from = Some(node.clone());
                self.note_failover(format!("{node} lost, resuming…"), now);
            }
            TailMsg::Failover {
                from,
                to,
                resume_at,
                reason,
            } => {
                let at = match resume_at {
                    Start::Offset(o) => o.0.to_string(),
                    other => other.to_string(),
                };
                let text = match &from {
                    Some(from) if *from == to => {
                        format!("{from} connection lost → resumed at {at} ({reason})")
                    }
                    Some(from) => format!("{from} lost → resumed at {at} on {to}"),
                    None => format!("connected to {to} at {at}"),
                };
                // The "lost, resuming…" note of the same loss becomes this one.
                if self
                    .resuming_from
                    .take()
                    .is_some_and(|lost| from.as_deref() == Some(lost.as_str()))
                    && self
                        .failovers
                        .back()
                        .is_some_and(|n| n.text.ends_with("resuming…"))
                {
                    self.failovers.pop_back();
                }
                self.serving = Some(to.into());
                self.note_failover(text, now);
            }
            TailMsg::Error {
                message,
                terminal,
                gap,
            } => {
                if let Some((expected, got)) = gap {
                    self.record_gap(expected, got, now);
                }
                self.status = if terminal {
                    StreamStatus::Failed(message)
                } else {
                    StreamStatus::Waiting(message)
                };
            }
        }
        true
    }

    fn note_failover(&mut self, text: String, now: SystemTime) {
        if self.failovers.len() == FAILOVER_NOTES {
            self.failovers.pop_front();
        }
        self.failovers.push_back(FailoverNote { at: now, text });
    }

    fn record_gap(&mut self, expected: u64, got: u64, now: SystemTime) {
        self.gaps += 1;
        self.last_gap = Some(Gap {
            expected,
            got,
            at: now,
        });
    }

    fn push(&mut self, batch: TailBatch, now: SystemTime) {
        let n = batch.events.len() as u64;
        if n == 0 {
            return;
        }
        // History read from before the log's end at the start is not news.
        let mut new = 0;
        for e in batch.events {
            let offset = e.offset.0;
            if self.end_at_start.is_none_or(|end| offset >= end) {
                new += 1;
            }
            match self.next_expected {
                Some(expected) if offset != expected => self.record_gap(expected, offset, now),
                _ => self.checked += 1,
            }
            self.next_expected = Some(offset + 1);
            self.buffer.push_back(TailEvent {
                offset,
                timestamp: e.timestamp.0,
                data: e.data,
                node: batch.node.clone(),
            });
        }
        self.serving = Some(batch.node);
        self.received += n;
        while self.buffer.len() > self.capacity {
            self.buffer.pop_front();
        }
        if let TailMode::Paused { arrived } = &mut self.mode {
            *arrived += new;
            let front = self.buffer.front().map(|e| e.offset);
            if self.top.is_none() {
                self.top = front;
                self.cursor = front;
            } else if let (Some(front), Some(top)) = (front, self.top)
                && top < front
            {
                self.top = Some(front);
                self.cursor = self.cursor.map(|c| c.max(front));
                self.trimmed = true;
            }
        }
    }

    /// Updates the rate once a second has passed since the last measurement.
    pub fn tick(&mut self, now: SystemTime) {
        match self.rate_window {
            None => self.rate_window = Some((now, self.received)),
            Some((since, count)) => {
                let elapsed = now.duration_since(since).unwrap_or_default();
                if elapsed >= Duration::from_secs(1) {
                    self.rate =
                        (self.received.saturating_sub(count)) as f64 / elapsed.as_secs_f64();
                    self.rate_window = Some((now, self.received));
                }
            }
        }
    }

    /// Index in the buffer of the first event at or after `offset`.
    fn index_of(&self, offset: u64) -> usize {
        self.buffer.partition_point(|e| e.offset < offset)
    }

    /// The rows shown in a table of `rows` lines: (first index, end index, selected index).
    pub fn window(&self, rows: usize) -> (usize, usize, Option<usize>) {
        let len = self.buffer.len();
        let rows = rows.max(1);
        match self.mode {
            TailMode::Follow => {
                let start = len.saturating_sub(rows);
                (start, len, len.checked_sub(1))
            }
            TailMode::Paused { .. } => {
                let start = self.top.map_or(0, |t| self.index_of(t)).min(len);
                let end = (start + rows).min(len);
                let selected = self.cursor.map(|c| self.index_of(c)).filter(|&i| i < len);
                (start, end, selected)
            }
        }
    }

    /// The selected event.
    pub fn selected(&self, rows: usize) -> Option<&TailEvent> {
        let (_, _, sel) = self.window(rows);
        sel.and_then(|i| self.buffer.get(i))
    }

    /// Freezes the view where it is.
    pub fn pause(&mut self, rows: usize) {
        if let TailMode::Follow = self.mode {
            let (start, _, sel) = self.window(rows);
            self.top = self.buffer.get(start).map(|e| e.offset);
            self.cursor = sel.and_then(|i| self.buffer.get(i)).map(|e| e.offset);
            self.mode = TailMode::Paused { arrived: 0 };
            self.trimmed = false;
        }
    }

    /// Follows the end again.
    pub fn follow(&mut self) {
        self.mode = TailMode::Follow;
        self.top = None;
        self.cursor = None;
        self.trimmed = false;
    }

    /// Space: pause, or resume following.
    pub fn toggle_pause(&mut self, rows: usize) {
        match self.mode {
            TailMode::Follow => self.pause(rows),
            TailMode::Paused { .. } => self.follow(),
        }
    }

    /// Moves the selection by `delta` rows (negative: up); moving pauses.
    pub fn scroll(&mut self, delta: isize, rows: usize) {
        if self.buffer.is_empty() {
            return;
        }
        if delta >= 0 && self.mode == TailMode::Follow {
            // Already at the end; moving down while following changes nothing.
            return;
        }
        self.pause(rows);
        let len = self.buffer.len();
        let current = self
            .cursor
            .map_or(len - 1, |c| self.index_of(c).min(len - 1));
        let next = current.saturating_add_signed(delta).min(len - 1);
        self.cursor = Some(self.buffer[next].offset);
        let mut start = self.top.map_or(0, |t| self.index_of(t));
        if next < start {
            start = next;
        } else if next >= start + rows.max(1) {
            start = next + 1 - rows.max(1);
        }
        self.top = self.buffer.get(start).map(|e| e.offset);
    }

    /// Home: the oldest event held (pauses).
    pub fn to_oldest(&mut self, rows: usize) {
        self.pause(rows);
        let front = self.buffer.front().map(|e| e.offset);
        self.top = front;
        self.cursor = front;
    }

    /// The stream starts past the log's end and nothing came yet: (start, end).
    pub fn waiting_beyond_end(&self) -> Option<(u64, u64)> {
        match (self.first_expected, self.end_at_start) {
            (Some(first), Some(end)) if first > end && self.received == 0 => Some((first, end)),
            _ => None,
        }
    }

    /// Rows kept from before a seek to the latest event that still fit above the marker in a
    /// following table of `rows` lines (the marker takes one line).
    pub fn previous_shown(&self, rows: usize) -> &[TailEvent] {
        if self.mode != TailMode::Follow || self.previous.is_empty() {
            return &[];
        }
        let room = rows.saturating_sub(self.buffer.len() + 1);
        &self.previous[self.previous.len().saturating_sub(room)..]
    }

    /// Events received while paused (0 when following).
    pub fn arrived_while_paused(&self) -> Option<u64> {
        match self.mode {
            TailMode::Follow => None,
            TailMode::Paused { arrived } => Some(arrived),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ec_client::Event;
    use ec_core::{Offset, TimestampMs};

    fn batch(node: &str, offsets: std::ops::Range<u64>) -> TailMsg {
        TailMsg::Events(vec![TailBatch {
            node: node.into(),
            events: offsets
                .map(|o| Event {
                    offset: Offset(o),
                    timestamp: TimestampMs(1_795_694_400_000 + o as i64),
                    data: Bytes::from(format!("event-{o}")),
                })
                .collect(),
        }])
    }

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_694_400)
    }

    fn started(tail: &mut TailState, target: SeekTarget, follow: bool) -> u64 {
        tail.start(DataId::parse("orders").expect("valid"), target, follow)
    }

    #[test]
    fn paused_counter_counts_while_the_view_stays() {
        let mut t = TailState::new(1000);
        let g = started(&mut t, SeekTarget::Latest, true);
        t.on_msg(
            g,
            TailMsg::Started {
                start: Start::Latest,
                clamped: None,
                end: None,
            },
            t0(),
        );
        t.on_msg(g, batch("node1", 0..30), t0());
        assert_eq!(t.window(10), (20, 30, Some(29)));
        t.toggle_pause(10);
        assert_eq!(t.arrived_while_paused(), Some(0));
        t.on_msg(g, batch("node1", 30..45), t0());
        assert_eq!(t.arrived_while_paused(), Some(15));
        assert_eq!(t.window(10), (20, 30, Some(29)), "view did not move");
        assert_eq!(t.buffer.len(), 45, "stream kept running");
        t.toggle_pause(10);
        assert_eq!(t.arrived_while_paused(), None);
        assert_eq!(t.window(10), (35, 45, Some(44)));
    }

    #[test]
    fn scrolling_up_pauses_and_follow_returns() {
        let mut t = TailState::new(1000);
        let g = started(&mut t, SeekTarget::Latest, true);
        t.on_msg(g, batch("n", 0..30), t0());
        t.scroll(1, 10);
        assert_eq!(t.mode, TailMode::Follow, "down at the end does nothing");
        t.scroll(-1, 10);
        assert_eq!(t.arrived_while_paused(), Some(0));
        assert_eq!(t.selected(10).map(|e| e.offset), Some(28));
        t.scroll(-15, 10);
        assert_eq!(t.window(10), (13, 23, Some(13)));
        t.to_oldest(10);
        assert_eq!(t.window(10), (0, 10, Some(0)));
        t.follow();
        assert_eq!(t.window(10), (20, 30, Some(29)));
    }

    #[test]
    fn a_seek_discards_the_old_generation() {
        let mut t = TailState::new(1000);
        let g1 = started(&mut t, SeekTarget::Latest, true);
        t.on_msg(g1, batch("n", 0..5), t0());
        let g2 = started(&mut t, SeekTarget::Offset(100), false);
        assert!(t.buffer.is_empty());
        assert!(!t.on_msg(g1, batch("n", 5..10), t0()), "old stream ignored");
        assert!(t.buffer.is_empty());
        t.on_msg(
            g2,
            TailMsg::Started {
                start: Start::Offset(Offset(100)),
                clamped: None,
                end: None,
            },
            t0(),
        );
        t.on_msg(g2, batch("n", 100..150), t0());
        assert_eq!(
            t.window(10),
            (0, 10, Some(0)),
            "seek shows its offset first"
        );
        assert_eq!(t.buffer[0].offset, 100);
        assert_eq!(t.arrived_while_paused(), Some(50));
    }

    #[test]
    fn clamped_seek_says_so() {
        let mut t = TailState::new(1000);
        let g = started(&mut t, SeekTarget::Offset(3), false);
        t.on_msg(
            g,
            TailMsg::Started {
                start: Start::Offset(Offset(500)),
                clamped: Some((3, 500)),
                end: None,
            },
            t0(),
        );
        let note = t.note.clone().expect("a note");
        assert!(note.contains("offset 3") && note.contains("500"), "{note}");
        t.on_msg(g, batch("n", 500..510), t0());
        assert_eq!(t.gaps, 0, "the clamped start is expected, not a gap");
    }

    #[test]
    fn gaps_are_detected_and_counted() {
        let mut t = TailState::new(1000);
        let g = started(&mut t, SeekTarget::Offset(10), false);
        t.on_msg(
            g,
            TailMsg::Started {
                start: Start::Offset(Offset(10)),
                clamped: None,
                end: None,
            },
            t0(),
        );
        t.on_msg(g, batch("n", 11..20), t0());
        assert_eq!(
            t.last_gap.map(|g| (g.expected, g.got)),
            Some((10, 11)),
            "first offset must be the asked one"
        );
        t.on_msg(g, batch("n", 20..25), t0());
        t.on_msg(g, batch("m", 30..31), t0());
        assert_eq!(t.gaps, 2);
        assert_eq!(t.last_gap.map(|g| (g.expected, g.got)), Some((25, 30)));
        assert_eq!(t.checked, 13);
        t.on_msg(
            g,
            TailMsg::Error {
                message: "gap".into(),
                terminal: true,
                gap: Some((31, 40)),
            },
            t0(),
        );
        assert_eq!(t.gaps, 3);
        assert!(matches!(t.status, StreamStatus::Failed(_)));
    }

    #[test]
    fn bounded_buffer_trims_a_paused_view() {
        let mut t = TailState::new(100);
        let g = started(&mut t, SeekTarget::Earliest, false);
        t.on_msg(g, batch("n", 0..60), t0());
        assert_eq!(t.top, Some(0));
        t.on_msg(g, batch("n", 60..250), t0());
        assert_eq!(t.buffer.len(), 100);
        assert_eq!(t.buffer[0].offset, 150);
        assert_eq!(t.top, Some(150));
        assert!(t.trimmed);
        assert_eq!(t.arrived_while_paused(), Some(250));
    }

    #[test]
    fn rate_is_measured_per_second_of_injected_time() {
        let mut t = TailState::new(100_000);
        let g = started(&mut t, SeekTarget::Latest, true);
        t.tick(t0());
        t.on_msg(g, batch("n", 0..25_000), t0());
        t.tick(t0() + Duration::from_millis(500));
        assert_eq!(t.rate, 0.0, "not a second yet");
        t.on_msg(g, batch("n", 25_000..50_000), t0());
        t.tick(t0() + Duration::from_secs(1));
        assert_eq!(t.rate, 50_000.0);
    }

    #[test]
    fn failovers_read_like_the_issue() {
        let mut t = TailState::new(100);
        let g = started(&mut t, SeekTarget::Latest, true);
        t.on_msg(
            g,
            TailMsg::Failover {
                from: Some("node1".into()),
                to: "node2".into(),
                resume_at: Start::Offset(Offset(1042)),
                reason: "x".into(),
            },
            t0(),
        );
        assert_eq!(t.failovers[0].text, "node1 lost → resumed at 1042 on node2");

        // A loss is said at once; the resumption replaces that note.
        t.on_msg(
            g,
            TailMsg::Lost {
                node: "node2".into(),
                resume_at: Start::Offset(Offset(1100)),
                reason: "connection refused".into(),
            },
            t0(),
        );
        assert_eq!(
            t.failovers.back().map(|n| n.text.as_str()),
            Some("node2 lost, resuming…")
        );
        assert_eq!(t.serving, None, "nobody serves while resuming");
        t.on_msg(
            g,
            TailMsg::Failover {
                from: Some("node2".into()),
                to: "node3".into(),
                resume_at: Start::Offset(Offset(1100)),
                reason: "x".into(),
            },
            t0(),
        );
        let texts: Vec<&str> = t.failovers.iter().map(|n| n.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "node1 lost → resumed at 1042 on node2",
                "node2 lost → resumed at 1100 on node3"
            ]
        );
        assert_eq!(t.serving.as_deref(), Some("node3"));
    }

    fn started_at(t: &mut TailState, g: u64, offset: u64, end: u64) {
        t.on_msg(
            g,
            TailMsg::Started {
                start: Start::Offset(Offset(offset)),
                clamped: None,
                end: Some(end),
            },
            t0(),
        );
    }

    #[test]
    fn history_after_a_seek_is_not_counted_as_new() {
        let mut t = TailState::new(10_000);
        let g = started(&mut t, SeekTarget::Offset(5), false);
        started_at(&mut t, g, 5, 1035);
        t.on_msg(g, batch("n", 5..578), t0());
        assert_eq!(t.arrived_while_paused(), Some(0), "all of it was history");
        t.on_msg(g, batch("n", 578..1040), t0());
        assert_eq!(t.arrived_while_paused(), Some(5), "1035..1040 are new");
    }

    #[test]
    fn a_start_past_the_end_says_so_until_events_come() {
        let mut t = TailState::new(100);
        let g = started(&mut t, SeekTarget::Offset(99_999), false);
        started_at(&mut t, g, 99_999, 1035);
        assert_eq!(t.waiting_beyond_end(), Some((99_999, 1035)));
        t.on_msg(g, batch("n", 99_999..100_000), t0());
        assert_eq!(t.waiting_beyond_end(), None);
        let g = started(&mut t, SeekTarget::Offset(1035), false);
        started_at(&mut t, g, 1035, 1035);
        assert_eq!(t.waiting_beyond_end(), None, "at the end is not past it");
    }

    #[test]
    fn seeking_latest_keeps_the_last_rows_above_a_marker() {
        let mut t = TailState::new(1000);
        let orders = DataId::parse("orders").expect("valid");
        let g = t.start(orders.clone(), SeekTarget::Latest, true);
        t.on_msg(g, batch("n", 0..30), t0());
        let g = t.start(orders.clone(), SeekTarget::Latest, true);
        assert!(t.buffer.is_empty(), "the new stream starts empty");
        let shown: Vec<u64> = t.previous_shown(10).iter().map(|e| e.offset).collect();
        assert_eq!(
            shown,
            (21..30).collect::<Vec<_>>(),
            "9 old rows + the marker"
        );
        t.on_msg(g, batch("n", 40..44), t0());
        assert_eq!(t.previous_shown(10).len(), 5, "new rows push old ones out");
        t.on_msg(g, batch("n", 44..60), t0());
        assert!(t.previous_shown(10).is_empty());
        assert_eq!(t.gaps, 0, "kept rows are not part of the gap check");

        // Another data ID, or another kind of seek, starts clean.
        t.start(orders, SeekTarget::Earliest, false);
        assert!(t.previous.is_empty());
    }
}
