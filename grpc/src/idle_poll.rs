//! Keeping a runtime's worker polling for I/O for a short while before it sleeps.
//!
//! A tokio worker with nothing to do sleeps in `epoll_wait`, and its CPU goes idle. On a
//! virtual machine whose idle vCPUs halt at once (the `haltpoll` idle driver with
//! `guest_halt_poll_ns=0`, as on the machines Event Catcher is measured on), the next
//! packet must then wake a halted vCPU: an exit to the host and back, tens of µs at the
//! median and far more when the host is busy. The kernel's own answer is to poll for a
//! while before halting (`haltpoll`'s default is 200 µs); a server that cannot count on the
//! machine's setting can do the same for its own worker, as Seastar's reactor does.
//!
//! [`IdlePoll`] does it with tokio's public API: the runtime calls a hook each time a worker
//! wakes from sleep, which wakes the poller task; the poller then yields over and over, and
//! a worker with a yielded task polls its I/O driver without waiting (`epoll_wait` with a
//! zero timeout) before running it again. Each round first offers the CPU to the machine's
//! other threads (`sched_yield`), so the polling takes only time that nothing else on that
//! CPU wants. Whatever arrives meanwhile is run at once, and each round in which other work
//! ran starts the window again. When the window passes with nothing else to do, the poller
//! waits for the next wake-up and the worker sleeps. An idle process polls for nothing; one
//! that keeps receiving more often than the window keeps one core busy. One poller serves a
//! runtime, so at most one worker polls at a time.

use std::sync::Arc;
#[cfg(test)]
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// A poll round that took longer than this ran other work: the window starts again. An empty
/// round (a zero-timeout `epoll_wait` and the poller polled again) takes about 1 µs; an
/// interrupt can make one take longer, which is why windows are kept short (a millisecond or
/// less): the longer the window, the likelier such a false start.
const OTHER_WORK: Duration = Duration::from_micros(10);

/// Polls a runtime's I/O for `window` after its worker wakes and after each piece of work,
/// before letting it sleep. See the module documentation.
#[derive(Debug, Clone)]
pub struct IdlePoll {
    window: Duration,
    woken: Arc<Notify>,
    /// Rounds made, for the tests: the poll loop counts nothing in a release build.
    #[cfg(test)]
    rounds: Arc<AtomicU64>,
}

impl IdlePoll {
    /// Builds `builder`'s runtime with a poller of `window` running on it; a zero window
    /// builds it plain (its workers sleep at once).
    pub fn runtime(
        window: Duration,
        builder: &mut tokio::runtime::Builder,
    ) -> std::io::Result<tokio::runtime::Runtime> {
        match Self::new(window) {
            Some(poll) => poll.start(builder),
            None => builder.build(),
        }
    }

    /// A poller with this window; `None` for a zero window.
    fn new(window: Duration) -> Option<Self> {
        (!window.is_zero()).then(|| Self {
            window,
            woken: Arc::new(Notify::new()),
            #[cfg(test)]
            rounds: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Hooks `builder` so that each worker waking from sleep wakes this poller, builds the
    /// runtime and spawns the poller on it.
    fn start(
        self,
        builder: &mut tokio::runtime::Builder,
    ) -> std::io::Result<tokio::runtime::Runtime> {
        let woken = Arc::clone(&self.woken);
        builder.on_thread_unpark(move || woken.notify_one());
        let runtime = builder.build()?;
        runtime.spawn(self.run());
        Ok(runtime)
    }

    /// Poll rounds made so far (each one yield to the runtime).
    #[cfg(test)]
    fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// The poller, spawned by [`IdlePoll::start`]. It never returns.
    async fn run(self) {
        loop {
            self.woken.notified().await;
            let mut until = Instant::now() + self.window;
            loop {
                // Offer the CPU to any other thread that wants it; the time it takes is theirs,
                // not this runtime's work, so it does not count below.
                std::thread::yield_now();
                let round = Instant::now();
                // Let the runtime poll its I/O without waiting and run whatever arrived: at
                // least once after a wake-up, even when other threads took the whole window.
                tokio::task::yield_now().await;
                #[cfg(test)]
                self.rounds.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                if now - round > OTHER_WORK {
                    until = now + self.window;
                } else if now >= until {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits up to 30 s for `rounds` to stop growing for 500 ms (far longer than a window,
    /// even on a loaded machine), and returns it then.
    fn settled(poll: &IdlePoll) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let before = poll.rounds();
            std::thread::sleep(Duration::from_millis(500));
            let after = poll.rounds();
            if after == before {
                return after;
            }
            assert!(
                Instant::now() < deadline,
                "the poller never stopped polling"
            );
        }
    }

    #[test]
    fn a_zero_window_means_no_poller() {
        assert!(IdlePoll::new(Duration::ZERO).is_none());
    }

    #[test]
    fn polls_after_a_wake_up_and_sleeps_when_idle() {
        let poll = IdlePoll::new(Duration::from_micros(200)).expect("a non-zero window");
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(1).enable_all();
        let runtime = poll.clone().start(&mut builder).expect("a runtime");
        polls_only_after_wake_ups(&poll, runtime.handle());
    }

    /// The same on a current-thread runtime, as each of the gateway's serving threads runs
    /// (`server/threads.rs`): its thread is the one in `block_on`.
    #[test]
    fn polls_on_a_current_thread_runtime_too() {
        let poll = IdlePoll::new(Duration::from_micros(200)).expect("a non-zero window");
        let mut builder = tokio::runtime::Builder::new_current_thread();
        builder.enable_all();
        let runtime = poll.clone().start(&mut builder).expect("a runtime");
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || runtime.block_on(stopped));
        polls_only_after_wake_ups(&poll, &handle);
        drop(stop);
        thread
            .join()
            .expect("the runtime's thread")
            .expect_err("stopped by the dropped sender");
    }

    /// Wakes the runtime behind `handle` twice; `poll` must make rounds after each wake-up and
    /// none while the runtime sleeps in between.
    fn polls_only_after_wake_ups(poll: &IdlePoll, handle: &tokio::runtime::Handle) {
        // A timer wakes the sleeping worker: the poller polls, then stops.
        handle.spawn(async { tokio::time::sleep(Duration::from_millis(50)).await });
        let after_first = settled(poll);
        assert!(after_first > 0, "no poll round after the worker woke");

        // Nothing wakes the worker: no round is made while it sleeps.
        assert_eq!(
            settled(poll),
            after_first,
            "the poller polled an idle runtime"
        );

        // The next wake-up polls again.
        handle.spawn(async {});
        let after_second = settled(poll);
        assert!(
            after_second > after_first,
            "no poll round after the second wake-up"
        );
    }
}
