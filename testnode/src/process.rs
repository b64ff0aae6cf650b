//! Nodes in child processes: [`NodeProcess`] re-runs the current test binary filtered to its
//! ignored entry test [`CHILD_TEST`], which calls [`child_main`]; the node's identity, ports,
//! Consul and mode travel in `EC_TESTNODE_*` environment variables.
//!
//! Invariants:
//! - The child exits when its stdin pipe closes, which happens when the parent dies however
//!   it dies, so a crashed test run leaves no node behind.
//! - Every signal goes to a process that has not been reaped yet, so a recycled PID is never
//!   hit; a dropped [`NodeProcess`] is continued (in case a test stopped it), killed and
//!   reaped.
//! - Each spawn writes its own log file next to the data dir (the name has the node ID and
//!   the gRPC port), so a node started again on the same dir keeps the previous run's log.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{Mode, node_settings, serve};

/// The path of the entry test that [`NodeProcess`] runs in a re-run of the current test
/// binary. Every test binary that spawns a [`NodeProcess`] must have, in its `util` module:
///
/// ```ignore
/// #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// #[ignore = "entry point of the node child process started by NodeProcess::spawn"]
/// async fn node_process_child() {
///     ec_testnode::child_main().await;
/// }
/// ```
pub const CHILD_TEST: &str = "util::node_process_child";

/// Environment of the child: the node ID; its presence marks a child started by us.
const ENV_NODE_ID: &str = "EC_TESTNODE_NODE_ID";
const ENV_DATA_DIR: &str = "EC_TESTNODE_DATA_DIR";
const ENV_GRPC_PORT: &str = "EC_TESTNODE_GRPC_PORT";
const ENV_HEALTH_PORT: &str = "EC_TESTNODE_HEALTH_PORT";
const ENV_CONSUL_URL: &str = "EC_TESTNODE_CONSUL_URL";
/// `replicated` or `standalone`.
const ENV_MODE: &str = "EC_TESTNODE_MODE";

/// A node in a child process with its own ports, registered in the Consul at the URL it was
/// spawned with; continued, killed with SIGKILL and reaped when dropped.
pub struct NodeProcess {
    /// The node's ID, as registered in Consul.
    pub node_id: String,
    /// Where the node serves gRPC (it may not accept connections yet: use [`crate::connect`]).
    pub grpc_addr: SocketAddr,
    child: Child,
    log_path: PathBuf,
}

impl NodeProcess {
    /// A standalone node on `data_dir` (created by the node if missing).
    pub fn spawn(data_dir: &Path, consul_url: &str, node_id: &str) -> NodeProcess {
        NodeProcess::spawn_as(data_dir, consul_url, node_id, Mode::Standalone)
    }

    /// A node on `data_dir` that follows its mappings: primary or replica per the mapping.
    pub fn spawn_replicated(data_dir: &Path, consul_url: &str, node_id: &str) -> NodeProcess {
        NodeProcess::spawn_as(data_dir, consul_url, node_id, Mode::Replicated)
    }

    /// Spawns the child and waits until it has bound its ports. A port that was free when
    /// picked can be taken before the child binds it (another process, or an outgoing
    /// connection's local port); the child then exits with [`PORT_TAKEN_EXIT`], and the node
    /// is spawned again on new ports.
    fn spawn_as(data_dir: &Path, consul_url: &str, node_id: &str, mode: Mode) -> NodeProcess {
        ec_testkit::spawn_until_bound(
            &format!("ec-testnode: node {node_id}"),
            || NodeProcess::spawn_once(data_dir, consul_url, node_id, mode),
            NodeProcess::port_was_taken,
        )
    }

    /// Whether the child exited because one of its ports was taken, after waiting until it
    /// either bound them (or exited for any other reason) or [`crate::DEADLINE`] passed.
    fn port_was_taken(&mut self) -> bool {
        ec_testkit::poll_blocking(crate::DEADLINE, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code() == Some(PORT_TAKEN_EXIT));
            }
            self.log().contains(LISTENING).then_some(false)
        })
        .unwrap_or(false)
    }

    fn spawn_once(data_dir: &Path, consul_url: &str, node_id: &str, mode: Mode) -> NodeProcess {
        let grpc_port = ec_testkit::free_port();
        let health_port = ec_testkit::free_port();
        let log_path = data_dir.with_extension(format!("{node_id}.{grpc_port}.log"));
        let log = std::fs::File::create(&log_path).expect("log file");
        let mode = match mode {
            Mode::Standalone => "standalone",
            Mode::Replicated => "replicated",
        };
        let child = Command::new(std::env::current_exe().expect("test binary path"))
            .args(["--ignored", "--exact", CHILD_TEST, "--nocapture"])
            .env(ENV_NODE_ID, node_id)
            .env(ENV_DATA_DIR, data_dir)
            .env(ENV_GRPC_PORT, grpc_port.to_string())
            .env(ENV_HEALTH_PORT, health_port.to_string())
            .env(ENV_CONSUL_URL, consul_url)
            .env(ENV_MODE, mode)
            .env_remove("RUST_LOG")
            // The child exits when this pipe closes, so a crashed test leaves no node behind.
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn the node child process");
        NodeProcess {
            node_id: node_id.to_owned(),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], grpc_port)),
            child,
            log_path,
        }
    }

    /// The gRPC address as the node registers it (`127.0.0.1:port`).
    pub fn address(&self) -> String {
        self.grpc_addr.to_string()
    }

    /// What the node wrote to stdout and stderr so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Kills the node with SIGKILL and reaps it: a crash, nothing flushed or deregistered.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (e.g. SIGSTOP, SIGCONT, SIGTERM) to the running node; after SIGSTOP or
    /// SIGCONT, returns once the node is stopped or running again.
    pub fn signal(&mut self, signal: Signal) {
        assert!(
            self.is_running(),
            "node {} has already exited; not sending {signal}",
            self.node_id
        );
        ec_testkit::send_signal(self.child.id(), signal, &format!("node {}", self.node_id));
    }

    /// Whether the process has not been reaped yet (so its PID is still ours to signal).
    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("a PID fits in i32"))
    }
}

/// Lines of a node's output shown when the test that owns it fails.
const LOG_TAIL_LINES: usize = 60;

impl Drop for NodeProcess {
    fn drop(&mut self) {
        // When the owning test is failing, what the node was doing is often the missing clue
        // (its log lives in the test's temporary directory, gone after the test).
        if std::thread::panicking() {
            // T for a frozen node, from /proc where there is one.
            let state = match self.is_running() {
                true => ec_testkit::process_state(self.child.id())
                    .map_or_else(|| "running".into(), |s| format!("state {s}")),
                false => "exited".into(),
            };
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "ec-testnode: node {} (gRPC {}, {state}) log tail:\n{}",
                self.node_id,
                self.grpc_addr,
                lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
            );
        }
        if self.is_running() {
            // A stopped process still dies of SIGKILL; continue it anyway so that nothing
            // lingers stopped should the kill fail.
            let _ = nix::sys::signal::kill(self.pid(), Signal::SIGCONT);
        }
        self.kill9();
    }
}

/// The exit code of a node child whose port was taken.
const PORT_TAKEN_EXIT: i32 = 75;
/// What a node child prints once it has bound its ports.
const LISTENING: &str = "ec-testnode: listening";

/// Binds 127.0.0.1 on the port in the environment variable `var`; exits with
/// [`PORT_TAKEN_EXIT`] if the port is in use, so that the parent starts the node again.
async fn bind(var: &str) -> TcpListener {
    match TcpListener::bind(("127.0.0.1", port(var))).await {
        Ok(listener) => listener,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            println!("ec-testnode: the port in {var} is taken: {e}");
            std::process::exit(PORT_TAKEN_EXIT);
        }
        Err(e) => panic!("cannot bind the port in {var}: {e}"),
    }
}

/// The body of a [`NodeProcess`]: what the ignored entry test [`CHILD_TEST`] calls. In a child
/// started by [`NodeProcess`], runs the node until killed or until stdin closes, and panics if
/// the node stops by itself; anywhere else (someone running the ignored tests), returns at once.
///
/// Needs a multi-threaded runtime: the node's committer and servers share it.
pub async fn child_main() {
    let Some(node_id) = std::env::var_os(ENV_NODE_ID) else {
        return;
    };
    let node_id = node_id.to_string_lossy().into_owned();
    let data_dir = PathBuf::from(std::env::var_os(ENV_DATA_DIR).expect(ENV_DATA_DIR));
    let grpc = bind(ENV_GRPC_PORT).await;
    let health = bind(ENV_HEALTH_PORT).await;
    println!("{LISTENING}");
    let consul_url = std::env::var(ENV_CONSUL_URL).expect(ENV_CONSUL_URL);
    let mode = match std::env::var(ENV_MODE).as_deref() {
        Ok("standalone") => Mode::Standalone,
        Ok("replicated") => Mode::Replicated,
        other => panic!("{ENV_MODE} must be standalone or replicated, got {other:?}"),
    };
    // Into the node's log file, which a failing test shows (see `Drop for NodeProcess`).
    let _ = tracing_subscriber::fmt()
        .with_env_filter("ec_node=info,ec_discovery=info")
        .with_ansi(false)
        .try_init();
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let result = serve(
        node_settings(&data_dir, &consul_url, &node_id),
        mode.replication(),
        ec_node::Listeners { grpc, health },
        CancellationToken::new(),
    )
    .await;
    panic!("node {node_id} stopped: {result:?}");
}

/// A port number from the environment variable `name`.
fn port(name: &str) -> u16 {
    let value = std::env::var(name).unwrap_or_default();
    value
        .parse()
        .unwrap_or_else(|_| panic!("{name} must be a port number, got {value:?}"))
}

impl ec_testkit::Freezable for NodeProcess {
    fn freeze(&mut self) {
        self.signal(Signal::SIGSTOP);
    }

    fn thaw(&mut self) {
        self.signal(Signal::SIGCONT);
    }

    fn output(&self) -> String {
        self.log()
    }
}
