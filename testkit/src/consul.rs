//! A real Consul agent run as a child process for one test.
//!
//! Invariants:
//! - The agent binds 127.0.0.1 only, on ports from [`free_port`]: HTTP, serf LAN, serf WAN and
//!   server RPC; DNS and gRPC are off (`-1`), the update check is disabled.
//! - Each agent has its own temp dir holding `consul.log` (the agent's stdout and stderr,
//!   appended across restarts) and, for [`ConsulAgent::start_server`], `data/`, which
//!   survives [`ConsulAgent::restart`] so KV written before a restart is still there.
//! - A restart reuses the same ports, node name and data dir, so clients keep their address.
//! - Dropping the agent SIGKILLs and reaps the process and removes the temp dir.
//! - Members of a multi-agent cluster ([`crate::ConsulCluster`]) keep `data/` too, gossip
//!   with timings short enough that a killed agent is marked failed in ~1.5 s, and retry
//!   joining the servers' serf LAN ports every 200 ms, so a restarted member finds the
//!   cluster again by itself.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::{consul_binary, free_port};

/// How long an agent may take from spawn to "has a leader and answers". A one-server agent
/// with `raft_multiplier = 1` needs ~1.5 s; generous because CI machines are slow and shared.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How long a SIGTERMed agent may take to shut down before it is SIGKILLed.
const STOP_DEADLINE: Duration = Duration::from_secs(30);
/// How often to re-check readiness and process exit.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Fresh-port attempts when an agent dies at start (usually another process took a port).
const START_ATTEMPTS: u32 = 5;
/// Lines of the agent's log that [`ConsulAgent::log_tail`] returns.
const LOG_TAIL_LINES: usize = 50;
/// Bytes read from the end of the log for the tail; 50 Consul lines fit easily.
const LOG_TAIL_BYTES: u64 = 64 * 1024;

/// Whether the agent runs in `-dev` mode (everything in memory) or as a one-server cluster
/// with a data dir (state survives restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Dev,
    Server,
    /// `-dev` with ACLs on, `default_policy = "deny"`, and [`MANAGEMENT_TOKEN`] as the
    /// management ("master") token.
    DevAcl,
    /// One of `expect` servers of a Raft cluster (`-server -bootstrap-expect <expect>`).
    ClusterServer {
        expect: usize,
        gossip: Gossip,
    },
    /// A client agent of a cluster: no Raft state, forwards to the servers.
    ClusterClient {
        gossip: Gossip,
    },
}

/// The Serf LAN timings of a cluster's members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gossip {
    /// `FAST_GOSSIP`: a dead member is failed ~1.5 s after its death; for tests.
    Fast,
    /// Consul's own defaults (probe every 1 s, suspicion multiplier 4): what a deployment
    /// gets, for measurements that should show it.
    ConsulDefault,
}

impl Mode {
    /// Whether the agent keeps state in `data/` that must survive a restart.
    fn has_data_dir(self) -> bool {
        matches!(
            self,
            Mode::Server | Mode::ClusterServer { .. } | Mode::ClusterClient { .. }
        )
    }
}

/// Serf LAN timings of cluster members: a member that stops answering is suspected after one
/// missed probe and declared failed (its `serfHealth` check critical) ~1.5 s after it died,
/// instead of ~5-10 s with Consul's defaults. Loopback has no packet loss to tolerate.
const FAST_GOSSIP: &str = "gossip_lan { gossip_interval = \"100ms\" probe_interval = \"200ms\" \
                           probe_timeout = \"100ms\" suspicion_mult = 2 }";

/// The management token of an agent started with [`ConsulAgent::start_dev_with_acls`].
pub const MANAGEMENT_TOKEN: &str = "6c1b5e7a-0000-4000-8000-ec7e57ac1000";

/// The loopback ports one agent listens on.
#[derive(Debug, Clone, Copy)]
struct Ports {
    http: u16,
    serf_lan: u16,
    serf_wan: u16,
    server: u16,
}

impl Ports {
    fn fresh() -> Self {
        Ports {
            http: free_port(),
            serf_lan: free_port(),
            serf_wan: free_port(),
            server: free_port(),
        }
    }
}

/// Why one spawn did not produce a ready agent.
enum StartFailure {
    /// The process exited before it was ready (often a port race); worth a retry on new ports.
    Exited(String),
    /// The process is alive but never became ready; retrying will not help.
    NotReady,
}

/// A Consul agent child process on loopback ports, owned by one test.
#[derive(Debug)]
pub struct ConsulAgent {
    /// The consul binary used for every (re)start.
    binary: PathBuf,
    mode: Mode,
    ports: Ports,
    /// Unique per agent so that logs and the catalog say which test's agent this is.
    node_name: String,
    /// Holds `consul.log` and, in server mode, `data/`; removed on drop.
    dir: TempDir,
    /// `None` after [`ConsulAgent::kill`] or [`ConsulAgent::stop`].
    child: Option<Child>,
    /// Shared client for readiness checks; short timeouts so a hung agent cannot stall a poll.
    http: reqwest::Client,
    /// An HTTPS listener next to the HTTP one: (port, certificate file, key file).
    https: Option<(u16, PathBuf, PathBuf)>,
    /// Serf LAN ports of the cluster's servers to `-retry-join` (cluster members only).
    join: Vec<u16>,
}

impl ConsulAgent {
    /// Starts `consul agent -dev` on free loopback ports and waits until it has a leader and
    /// `/v1/agent/self` answers. Retries with new ports if the agent dies at start.
    pub async fn start_dev() -> ConsulAgent {
        Self::start(Mode::Dev).await
    }

    /// Starts `consul agent -dev` with ACLs enabled and `default_policy = "deny"`: a request
    /// without a token sees nothing and may change nothing. [`MANAGEMENT_TOKEN`] may do
    /// everything; [`ConsulAgent::create_token`] makes tokens with narrower policies.
    pub async fn start_dev_with_acls() -> ConsulAgent {
        Self::start(Mode::DevAcl).await
    }

    /// Creates an ACL policy from `rules` (HCL) and a token holding it; returns the token's
    /// secret. Only for agents started with [`ConsulAgent::start_dev_with_acls`].
    pub async fn create_token(&self, name: &str, rules: &str) -> String {
        let url = self.http_url();
        let put = |path: &str, body: serde_json::Value| {
            self.http
                .put(format!("{url}{path}"))
                .header("X-Consul-Token", MANAGEMENT_TOKEN)
                .json(&body)
                .send()
        };
        let policy = put(
            "/v1/acl/policy",
            serde_json::json!({ "Name": name, "Rules": rules }),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot create ACL policy {name}: {e}"));
        assert!(
            policy.status().is_success(),
            "creating ACL policy {name} answered {}: {}",
            policy.status(),
            policy.text().await.unwrap_or_default()
        );
        let token = put(
            "/v1/acl/token",
            serde_json::json!({ "Description": name, "Policies": [{ "Name": name }] }),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot create ACL token {name}: {e}"));
        assert!(
            token.status().is_success(),
            "creating ACL token {name}: {}",
            token.status()
        );
        let body: serde_json::Value = token
            .json()
            .await
            .unwrap_or_else(|e| panic!("ACL token answer is not JSON: {e}"));
        body["SecretID"]
            .as_str()
            .unwrap_or_else(|| panic!("ACL token answer without SecretID: {body}"))
            .to_owned()
    }

    /// Starts a one-server agent (`-server -bootstrap-expect 1`) whose data dir survives
    /// [`ConsulAgent::restart`]; for tests that restart Consul and expect KV to persist.
    pub async fn start_server() -> ConsulAgent {
        Self::start(Mode::Server).await
    }

    /// [`ConsulAgent::start_dev`] with an HTTPS API too, on [`ConsulAgent::https_port`],
    /// serving the PEM certificate `cert_file` with `key_file` (readiness is still checked
    /// over HTTP).
    pub async fn start_dev_with_https(cert_file: &Path, key_file: &Path) -> ConsulAgent {
        Self::start_with(
            Mode::Dev,
            Some((free_port(), cert_file.to_owned(), key_file.to_owned())),
        )
        .await
    }

    /// The HTTPS API port of an agent started with [`ConsulAgent::start_dev_with_https`].
    pub fn https_port(&self) -> Option<u16> {
        self.https.as_ref().map(|(port, _, _)| *port)
    }

    async fn start(mode: Mode) -> ConsulAgent {
        Self::start_with(mode, None).await
    }

    async fn start_with(mode: Mode, https: Option<(u16, PathBuf, PathBuf)>) -> ConsulAgent {
        let mut agent = Self::unstarted(mode, https);
        agent.start_retrying().await;
        agent
    }

    /// An agent with fresh ports and its own dir, not running yet.
    fn unstarted(mode: Mode, https: Option<(u16, PathBuf, PathBuf)>) -> ConsulAgent {
        static NEXT_ID: AtomicU32 = AtomicU32::new(0);
        let binary = consul_binary().unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::Builder::new()
            .prefix("ec-consul-")
            .tempdir()
            .unwrap_or_else(|e| {
                panic!("cannot create a temp dir for a consul agent: {e}; check TMPDIR and free disk space")
            });
        let node_name = format!(
            "ec-test-{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
            .unwrap_or_else(|e| panic!("cannot build an HTTP client for readiness checks: {e}"));
        ConsulAgent {
            binary,
            mode,
            ports: Ports::fresh(),
            node_name,
            dir,
            child: None,
            http,
            https,
            join: Vec::new(),
        }
    }

    /// A server of a cluster of `expect` servers, not running yet (see [`crate::ConsulCluster`]).
    pub(crate) fn unstarted_cluster_server(expect: usize, gossip: Gossip) -> ConsulAgent {
        Self::unstarted(Mode::ClusterServer { expect, gossip }, None)
    }

    /// A client agent of a cluster, not running yet (see [`crate::ConsulCluster`]).
    pub(crate) fn unstarted_cluster_client(gossip: Gossip) -> ConsulAgent {
        Self::unstarted(Mode::ClusterClient { gossip }, None)
    }

    /// Sets the serf LAN ports this agent retry-joins.
    pub(crate) fn set_join(&mut self, serf_lan_ports: Vec<u16>) {
        self.join = serf_lan_ports;
    }

    /// Spawns the agent without waiting for it to be ready (members of a cluster are all
    /// spawned first: none has a leader before enough servers run).
    pub(crate) fn spawn_only(&mut self) {
        self.spawn_child();
    }

    /// Waits until an agent spawned with [`ConsulAgent::spawn_only`] is ready, respawning it
    /// on fresh ports if it died at start.
    pub(crate) async fn wait_started(&mut self) {
        match self.wait_ready().await {
            Ok(()) => {}
            Err(StartFailure::Exited(status)) => {
                eprintln!(
                    "ec-testkit: consul agent {} exited at start ({status}); retrying on new ports",
                    self.node_name
                );
                self.fresh_ports();
                self.start_retrying().await;
            }
            Err(StartFailure::NotReady) => self.panic_not_ready(),
        }
    }

    fn panic_not_ready(&self) -> ! {
        panic!(
            "consul agent on {} was not ready within {READY_DEADLINE:?} (no leader or \
             /v1/agent/self not answering); is the machine overloaded? Log tail:\n{}",
            self.http_url(),
            self.log_tail()
        )
    }

    /// New ports (and, for an agent with state, a clean data dir: a half-initialised raft
    /// store would tie the agent to the old ports).
    fn fresh_ports(&mut self) {
        self.ports = Ports::fresh();
        if let Some((port, _, _)) = self.https.as_mut() {
            *port = free_port();
        }
        if self.mode.has_data_dir() {
            let _ = std::fs::remove_dir_all(self.data_dir());
        }
    }

    /// Spawns and waits until ready, on fresh ports after each exit at start.
    async fn start_retrying(&mut self) {
        let agent = self;
        for attempt in 1..=START_ATTEMPTS {
            match agent.spawn_and_wait().await {
                Ok(()) => return,
                Err(StartFailure::Exited(status)) if attempt < START_ATTEMPTS => {
                    eprintln!(
                        "ec-testkit: consul agent {} exited at start ({status}), attempt \
                         {attempt}/{START_ATTEMPTS}; retrying on new ports",
                        agent.node_name
                    );
                    agent.fresh_ports();
                }
                Err(StartFailure::Exited(status)) => panic!(
                    "consul agent exited at start {START_ATTEMPTS} times (last: {status}); are \
                     loopback ports exhausted or is the consul binary broken? Try `{} version`. \
                     Log tail:\n{}",
                    agent.binary.display(),
                    agent.log_tail()
                ),
                Err(StartFailure::NotReady) => agent.panic_not_ready(),
            }
        }
        unreachable!("the last start attempt either returns or panics")
    }

    /// The agent's HTTP API address.
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports.http))
    }

    /// The agent's HTTP API base URL, `http://127.0.0.1:PORT`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr())
    }

    /// The host clients should connect to: always `127.0.0.1`.
    pub fn host(&self) -> String {
        Ipv4Addr::LOCALHOST.to_string()
    }

    /// The agent's HTTP API port.
    pub fn port(&self) -> u16 {
        self.ports.http
    }

    /// The agent's serf LAN port (what other agents join).
    pub fn serf_lan_port(&self) -> u16 {
        self.ports.serf_lan
    }

    /// The server RPC address, as `/v1/status/leader` names the leader (`127.0.0.1:PORT`).
    pub fn server_rpc_addr(&self) -> String {
        format!("{}:{}", Ipv4Addr::LOCALHOST, self.ports.server)
    }

    /// The agent's Consul node name (unique per agent).
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Whether the agent process is running (not killed or stopped by the test).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the agent with SIGKILL and reaps it; a crash, as far as Consul is concerned.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors mean the process already exited; reaping below still works.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM (graceful shutdown) and waits for the agent to exit; SIGKILLs it if it
    /// has not exited after 30 s.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + STOP_DEADLINE;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if tokio::time::Instant::now() >= deadline => {
                    eprintln!(
                        "ec-testkit: consul agent {} ignored SIGTERM for {STOP_DEADLINE:?}; \
                         killing it",
                        self.node_name
                    );
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                Ok(None) => tokio::time::sleep(POLL_INTERVAL).await,
            }
        }
    }

    /// Starts the agent again with the same ports, node name and data dir (killing it first
    /// if it is still running) and waits until it has a leader.
    pub async fn restart(&mut self) {
        self.kill();
        // Same ports on purpose: clients keep their address. If another process grabbed one
        // meanwhile the agent exits, and a few retries give the port a chance to free up.
        for attempt in 1..=START_ATTEMPTS {
            match self.spawn_and_wait().await {
                Ok(()) => return,
                Err(StartFailure::Exited(status)) if attempt < START_ATTEMPTS => {
                    eprintln!(
                        "ec-testkit: restarted consul agent {} exited ({status}), attempt \
                         {attempt}/{START_ATTEMPTS}; retrying on the same ports",
                        self.node_name
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(StartFailure::Exited(status)) => panic!(
                    "restarted consul agent on {} exited {START_ATTEMPTS} times (last: {status}); \
                     another process probably holds one of its ports ({:?}). Log tail:\n{}",
                    self.http_url(),
                    self.ports,
                    self.log_tail()
                ),
                Err(StartFailure::NotReady) => panic!(
                    "restarted consul agent on {} was not ready within {READY_DEADLINE:?}; is \
                     the machine overloaded? Log tail:\n{}",
                    self.http_url(),
                    self.log_tail()
                ),
            }
        }
    }

    /// The last ~50 lines of the agent's log (stdout and stderr, all runs), for assertion
    /// messages.
    pub fn log_tail(&self) -> String {
        let path = self.log_path();
        let read = || -> std::io::Result<String> {
            let mut file = File::open(&path)?;
            let len = file.metadata()?.len();
            file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut file, &mut bytes)?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        };
        match read() {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                let start = lines.len().saturating_sub(LOG_TAIL_LINES);
                lines[start..].join("\n")
            }
            Err(e) => format!("(cannot read consul log {}: {e})", path.display()),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("consul.log")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The full command line for this agent's mode and ports.
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("agent");
        match self.mode {
            Mode::Dev => {
                cmd.arg("-dev");
            }
            Mode::DevAcl => {
                // Consul 1.8 names the management token `master` (later `initial_management`).
                cmd.arg("-dev").args([
                    "-hcl",
                    &format!(
                        "acl {{ enabled = true default_policy = \"deny\" enable_token_persistence = false tokens {{ master = \"{MANAGEMENT_TOKEN}\" agent = \"{MANAGEMENT_TOKEN}\" }} }}"
                    ),
                ]);
            }
            Mode::Server => {
                cmd.args(["-server", "-bootstrap-expect", "1", "-data-dir"])
                    .arg(self.data_dir())
                    // Leader in ~1.5 s instead of ~9 s with the production default of 5.
                    .args(["-hcl", "performance { raft_multiplier = 1 }"]);
            }
            Mode::ClusterServer { expect, .. } => {
                cmd.args(["-server", "-bootstrap-expect", &expect.to_string()])
                    .arg("-data-dir")
                    .arg(self.data_dir())
                    // What Consul recommends for production servers too.
                    .args(["-hcl", "performance { raft_multiplier = 1 }"]);
            }
            Mode::ClusterClient { .. } => {
                cmd.arg("-data-dir").arg(self.data_dir());
            }
        }
        if let Mode::ClusterServer { gossip, .. } | Mode::ClusterClient { gossip } = self.mode {
            if gossip == Gossip::Fast {
                cmd.args(["-hcl", FAST_GOSSIP]);
            }
            cmd.args(["-retry-interval", "200ms"]);
            for port in &self.join {
                cmd.arg("-retry-join").arg(format!("127.0.0.1:{port}"));
            }
        }
        let port = |p: u16| p.to_string();
        cmd.args(["-node", &self.node_name])
            .args(["-bind", "127.0.0.1", "-client", "127.0.0.1"])
            .args(["-http-port", &port(self.ports.http)])
            .args(["-serf-lan-port", &port(self.ports.serf_lan)])
            .args(["-serf-wan-port", &port(self.ports.serf_wan)])
            .args(["-server-port", &port(self.ports.server)])
            .args(["-dns-port", "-1", "-grpc-port", "-1"])
            // The update check calls a HashiCorp server; tests must stay on loopback.
            .args(["-hcl", "disable_update_check = true"])
            // Random node IDs: two agents on one host must not derive the same one.
            .arg("-disable-host-node-id");
        if let Some((https, cert, key)) = &self.https {
            cmd.args(["-hcl", &format!("ports {{ https = {https} }}")])
                .args([
                    "-hcl",
                    &format!("cert_file = {:?}", cert.display().to_string()),
                ])
                .args([
                    "-hcl",
                    &format!("key_file = {:?}", key.display().to_string()),
                ]);
        }
        cmd
    }

    /// Spawns the agent (the log is appended to) and waits until it is ready.
    async fn spawn_and_wait(&mut self) -> Result<(), StartFailure> {
        self.spawn_child();
        self.wait_ready().await
    }

    /// Spawns the agent process; its output is appended to the log.
    fn spawn_child(&mut self) {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| {
                panic!(
                    "cannot open consul log {}: {e}; check free disk space in TMPDIR",
                    self.log_path().display()
                )
            });
        let _ = writeln!(
            log,
            "=== ec-testkit: starting consul ({:?} mode) node {} on {:?} ===",
            self.mode, self.node_name, self.ports
        );
        let stderr = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot duplicate the consul log file handle: {e}"));
        let mut cmd = self.command();
        cmd.current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; run scripts/install-consul.sh or set EC_CONSUL_BIN",
                self.binary.display()
            )
        });
        self.child = Some(child);
    }

    /// Waits until the spawned agent is ready, or has exited, or the deadline passed.
    async fn wait_ready(&mut self) -> Result<(), StartFailure> {
        let deadline = tokio::time::Instant::now() + READY_DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut() {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        self.child = None;
                        return Err(StartFailure::Exited(status.to_string()));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.kill();
                        return Err(StartFailure::Exited(format!("cannot wait on it: {e}")));
                    }
                }
            }
            if self.is_ready().await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StartFailure::NotReady);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Ready means: the cluster has elected a leader and the local agent's API answers.
    async fn is_ready(&self) -> bool {
        let url = self.http_url();
        let leader = match self
            .http
            .get(format!("{url}/v1/status/leader"))
            .send()
            .await
        {
            Ok(resp) if resp.status().is_success() => resp.text().await.unwrap_or_default(),
            _ => return false,
        };
        // The body is a JSON string: `""` while there is no leader.
        let leader = leader.trim().trim_matches('"');
        if leader.is_empty() {
            return false;
        }
        let mut agent_self = self.http.get(format!("{url}/v1/agent/self"));
        if self.mode == Mode::DevAcl {
            agent_self = agent_self.header("X-Consul-Token", MANAGEMENT_TOKEN);
        }
        matches!(
            agent_self.send().await,
            Ok(resp) if resp.status().is_success()
        )
    }
}

impl Drop for ConsulAgent {
    fn drop(&mut self) {
        // When the owning test is failing, the agent's own view is usually the missing clue.
        if std::thread::panicking() && self.child.is_some() {
            eprintln!(
                "ec-testkit: consul agent {} on {} log tail:\n{}",
                self.node_name,
                self.http_url(),
                self.log_tail()
            );
        }
        self.kill();
    }
}
