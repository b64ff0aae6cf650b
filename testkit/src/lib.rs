//! Test support for Event Catcher: real Consul agents on free loopback ports (one dev agent,
//! or a multi-server cluster with client agents: [`ConsulCluster`]), waiting on
//! conditions with deadlines instead of bare sleeps, raw gRPC calls ([`raw_unary`]), and
//! binaries run on a terminal or a pipe to check what a person sees ([`terminal`]).
//!
//! Invariants this crate keeps for every test that uses it:
//! - Everything listens on 127.0.0.1 only; nothing here sends traffic anywhere else, and every
//!   Consul agent runs with `disable_update_check = true` (its checkpoint call would leave the
//!   machine).
//! - [`free_port`] never hands out the same port twice within one process, so tests running in
//!   parallel threads do not race each other for a port (other processes still can; agents
//!   retry on new ports when that happens at start).
//! - A [`ConsulAgent`] owns its process and its temp dir: dropping it kills the process with
//!   SIGKILL, reaps it and removes the dir, so a failing test leaves nothing behind.
//!
//! This is test code: failures panic, and every panic message says what to do about it.

mod cluster;
mod consul;
mod raw;
pub mod terminal;

use std::collections::HashSet;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

pub use cluster::ConsulCluster;
pub use consul::{ConsulAgent, MANAGEMENT_TOKEN};
pub use raw::{RawCodec, raw_unary};

/// How often [`wait_for`] polls its condition.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The root of the Cargo workspace (the folder holding `scripts/` and `.tools/`).
pub fn workspace_root() -> PathBuf {
    // testkit/ sits directly under the workspace root; this is fixed at compile time, so it
    // is right no matter which directory a test binary runs from.
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest_dir.to_path_buf())
}

/// Finds a Consul binary: `$EC_CONSUL_BIN`, then `<root>/.tools/consul`, then `consul` on PATH.
///
/// The error says where it looked and names the install command `scripts/install-consul.sh`.
pub fn consul_binary() -> Result<PathBuf, String> {
    let mut looked = Vec::new();
    if let Some(explicit) = std::env::var_os("EC_CONSUL_BIN").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(explicit);
        if is_executable(&path) {
            return Ok(absolute(path));
        }
        looked.push(format!(
            "EC_CONSUL_BIN={} (not an executable file)",
            path.display()
        ));
    } else {
        looked.push("EC_CONSUL_BIN (unset)".to_owned());
    }

    let tools = workspace_root().join(".tools").join("consul");
    if is_executable(&tools) {
        return Ok(tools);
    }
    looked.push(format!("{} (missing)", tools.display()));

    if let Some(path_var) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path_var) {
            let candidate = dir.join("consul");
            if is_executable(&candidate) {
                return Ok(absolute(candidate));
            }
        }
    }
    looked.push("consul on PATH (none)".to_owned());

    Err(format!(
        "no consul binary found; looked at: {}. Run scripts/install-consul.sh (from the \
         workspace root {}) or set EC_CONSUL_BIN to a consul binary",
        looked.join(", "),
        workspace_root().display()
    ))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

/// A port that is free on 127.0.0.1 right now, for both TCP and UDP.
///
/// Checked by binding it and dropping the socket, so another process may still take it
/// before the caller binds it; callers that spawn servers must cope (see
/// [`ConsulAgent::start_dev`]). Within this process a port is never handed out twice.
///
/// Ports come from below the kernel's ephemeral range when there is room there (see
/// [`fixed_ports`]). Why: a test that kills a server and starts it again on the same port
/// (a Consul server, in the cluster tests) found the port taken for good: in between, some
/// outgoing connection of the test process had been given it as its local port, which
/// only happens inside the ephemeral range.
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(|| Mutex::new(HashSet::new()));
    let fixed = fixed_ports();
    // Where to start looking in the fixed range, different per call and per process, so
    // that test processes running at once rarely probe the same ports.
    let seed = std::process::id() as usize
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as usize);

    for attempt in 0..1000usize {
        let candidate = fixed.as_ref().map_or(0, |range| {
            let offset = seed.wrapping_add(attempt.wrapping_mul(7919)) % range.len();
            range.start + offset as u16
        });
        let listener = match TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, candidate)) {
            Ok(listener) => listener,
            // Taken: try the next one.
            Err(_) if fixed.is_some() => continue,
            Err(e) => {
                panic!("cannot bind a TCP socket on 127.0.0.1: {e}; is the loopback interface up?")
            }
        };
        let port = match listener.local_addr() {
            Ok(addr) => addr.port(),
            Err(_) => continue,
        };
        // Consul's serf ports listen on UDP as well as TCP; check both so one helper serves
        // every port an agent needs.
        let udp_free = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_ok();
        drop(listener);
        if !udp_free {
            continue;
        }
        // A poisoned lock only means another test panicked while holding it; the set is
        // still usable.
        let mut set = handed_out.lock().unwrap_or_else(|p| p.into_inner());
        if set.insert(port) {
            return port;
        }
    }
    panic!("found no free loopback port in 1000 tries; are too many sockets open on this machine?")
}

/// The ports [`free_port`] picks from: from 10000 up to the start of the kernel's ephemeral
/// range (`/proc/sys/net/ipv4/ip_local_port_range`), which the kernel never hands to an
/// outgoing connection; `None` (let the kernel pick) when that leaves fewer than 2,000
/// ports or the range cannot be read. Read once per process.
fn fixed_ports() -> Option<std::ops::Range<u16>> {
    static FIXED: OnceLock<Option<std::ops::Range<u16>>> = OnceLock::new();
    FIXED
        .get_or_init(|| {
            const LOW: u16 = 10_000;
            let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
            let ephemeral_start: u16 = range.split_whitespace().next()?.parse().ok()?;
            (ephemeral_start >= LOW + 2_000).then_some(LOW..ephemeral_start)
        })
        .clone()
}

/// Polls `f` every ~20 ms until it returns `Some(v)` and returns `v`.
///
/// Panics with "timed out after {deadline:?} waiting for {what}" once `deadline` has passed,
/// including when a single call of `f` is still pending at the deadline.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    let end = start + deadline;
    loop {
        match tokio::time::timeout_at(end, f()).await {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            Err(_) => break,
        }
        let now = tokio::time::Instant::now();
        if now >= end {
            break;
        }
        tokio::time::sleep_until((now + POLL_INTERVAL).min(end)).await;
    }
    panic!("timed out after {deadline:?} waiting for {what}")
}

/// The process state letter of `pid` from `/proc/<pid>/status` (`R`, `S`, `T` for stopped,
/// ...); `None` where there is no `/proc` or no such process.
pub fn process_state(pid: u32) -> Option<char> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("State:"))
        .and_then(|state| state.trim_start().chars().next())
}

/// Waits until process `pid` is stopped (`stopped`: a SIGSTOP took hold) or running again
/// (a SIGCONT did), and panics naming `what` if that has not happened within 10 s. A signal
/// is delivered when the target next runs, not when `kill` returns, so a test that froze a
/// process checks here that it is frozen before relying on it. Returns at once where there
/// is no `/proc` to read.
pub fn wait_stopped(pid: u32, stopped: bool, what: &str) {
    wait_stopped_within(pid, stopped, what, Duration::from_secs(10));
}

fn wait_stopped_within(pid: u32, stopped: bool, what: &str, within: Duration) {
    // Settled: the wanted state, or no /proc to read it from.
    let settled = || process_state(pid).is_none_or(|s| (s == 'T') == stopped);
    if poll_blocking(within, || settled().then_some(())).is_none()
        && let Some(s) = process_state(pid)
    {
        panic!(
            "{what}: process {pid} is still in state {s} {within:?} after the signal; \
             something else is signalling it, or it is traced"
        );
    }
}

/// Sends `signal` to process `pid` (a test's own child, unreaped); after SIGSTOP or SIGCONT,
/// returns once it took hold ([`wait_stopped`]), so a test never relies on a freeze or a thaw
/// that is still on its way. `what` names the process in a failure.
pub fn send_signal(pid: u32, signal: nix::sys::signal::Signal, what: &str) {
    use nix::sys::signal::Signal;
    let raw = i32::try_from(pid).expect("a PID fits in i32");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), signal)
        .unwrap_or_else(|e| panic!("{what}: cannot send {signal} to process {pid}: {e}"));
    if matches!(signal, Signal::SIGSTOP | Signal::SIGCONT) {
        wait_stopped(
            pid,
            signal == Signal::SIGSTOP,
            &format!("{what} after {signal}"),
        );
    }
}

/// How many times [`spawn_until_bound`] starts a child whose port was taken.
const SPAWN_ATTEMPTS: usize = 5;

/// Starts a child server whose ports the parent picked free ([`free_port`]) and the child
/// binds a moment later. In between, another process or an outgoing connection's local port
/// can take one; the child then exits. `spawn` starts the child on newly picked ports;
/// `port_taken` waits until it has bound them or exited, and says whether it exited because
/// a port was in use, in which case it is started again, up to [`SPAWN_ATTEMPTS`] times in
/// all. `what` names the child in the output.
pub fn spawn_until_bound<P>(
    what: &str,
    mut spawn: impl FnMut() -> P,
    mut port_taken: impl FnMut(&mut P) -> bool,
) -> P {
    for _ in 1..SPAWN_ATTEMPTS {
        let mut child = spawn();
        if !port_taken(&mut child) {
            return child;
        }
        eprintln!("{what}: a port was taken before it could bind it; starting it again");
    }
    spawn()
}

/// [`wait_for`] for synchronous callers: polls `f` every millisecond, blocking the thread,
/// until it returns `Some(v)`; `None` once `within` has passed, for the caller to judge.
/// For conditions that settle in microseconds to milliseconds (a signal taking hold, a
/// child binding its ports), where a caller cannot await.
pub fn poll_blocking<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A test's child process that [`freeze_while`] can freeze.
pub trait Freezable {
    /// Stops the process where it is (SIGSTOP).
    fn freeze(&mut self);
    /// Lets it go on (SIGCONT).
    fn thaw(&mut self);
    /// What it wrote so far, for the test output.
    fn output(&self) -> String;
}

/// Freezes `process` once `premise` holds, and returns once it still holds with the process
/// frozen. If the premise broke just before the freeze, the process's output goes to the
/// test output, it is thawed and the whole is tried again; panics naming `what` if that
/// never succeeds within `deadline`.
///
/// For tests whose premise is a state the frozen process could leave just before it froze
/// (a replica in the in-sync set, whose session may end for a moment).
pub async fn freeze_while<F, Fut>(
    what: &str,
    deadline: Duration,
    process: &mut impl Freezable,
    mut premise: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<()>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        wait_for(what, deadline, &mut premise).await;
        process.freeze();
        if premise().await.is_some() {
            return;
        }
        eprintln!(
            "{what}: no longer true once frozen; the process's output:\n{}",
            process.output()
        );
        process.thaw();
        assert!(
            tokio::time::Instant::now() < end,
            "{what}: never held once the process was frozen"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_bindable_and_not_ephemeral() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        if let Some(fixed) = fixed_ports() {
            for port in &ports {
                assert!(fixed.contains(port), "port {port} is outside {fixed:?}");
            }
        }
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        for port in ports {
            TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
                .unwrap_or_else(|e| panic!("port {port} was not free: {e}"));
        }
    }

    #[test]
    fn spawn_until_bound_starts_again_while_a_port_was_taken() {
        let mut started = 0;
        let child = spawn_until_bound(
            "child",
            || {
                started += 1;
                started
            },
            |&mut n| n < 3,
        );
        assert_eq!(child, 3, "the third start bound its ports");
        let mut started = 0;
        let last = spawn_until_bound(
            "child",
            || {
                started += 1;
                started
            },
            |_| true,
        );
        assert_eq!(last, SPAWN_ATTEMPTS, "gives up after SPAWN_ATTEMPTS starts");
    }

    #[test]
    fn wait_stopped_follows_sigstop_and_sigcont() {
        use nix::sys::signal::{Signal, kill};
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("spawn sleep");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
        wait_stopped(child.id(), true, "sleep after SIGSTOP");
        assert_eq!(process_state(child.id()), Some('T'));
        kill(pid, Signal::SIGCONT).expect("SIGCONT");
        wait_stopped(child.id(), false, "sleep after SIGCONT");
        assert_ne!(process_state(child.id()), Some('T'));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(process_state(child.id()), None, "reaped: no state");
    }

    #[test]
    #[should_panic(expected = "is still in state")]
    fn wait_stopped_names_a_process_that_never_stops() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("spawn sleep");
        // Not signalled: the wait runs out and says so.
        let id = child.id();
        let guard = KillOnDrop(&mut child);
        wait_stopped_within(
            id,
            true,
            "sleep never signalled",
            Duration::from_millis(200),
        );
        drop(guard);
    }

    /// Kills and reaps a child when dropped, also while a test panics.
    struct KillOnDrop<'a>(&'a mut std::process::Child);

    impl Drop for KillOnDrop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("testkit").is_dir());
    }

    #[tokio::test]
    async fn wait_for_returns_the_first_some() {
        let mut calls = 0;
        let v = wait_for("the third call", Duration::from_secs(10), || {
            calls += 1;
            let now = calls;
            async move { (now >= 3).then_some(now) }
        })
        .await;
        assert_eq!(v, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 100ms waiting for nothing")]
    async fn wait_for_panics_at_the_deadline() {
        wait_for("nothing", Duration::from_millis(100), || async {
            None::<()>
        })
        .await;
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 100ms waiting for a hung call")]
    async fn wait_for_bounds_a_hung_call() {
        wait_for("a hung call", Duration::from_millis(100), || {
            std::future::pending::<Option<()>>()
        })
        .await;
    }
}
