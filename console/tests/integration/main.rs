//! End-to-end tests of `ec-console`: the real binary under tmux against a real Consul agent,
//! real nodes and the real gateway. Screens are polled with `capture-pane` until a deadline,
//! never after fixed sleeps.

// Helpers in `util` are shared by the test modules of this one binary; nothing is exported.
#![allow(unreachable_pub)]

mod e2e;
mod replication;
mod util;
