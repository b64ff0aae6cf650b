//! Scaffolding for driving the real `ec-console` binary: a private tmux server (its own
//! socket, so nothing touches the user's tmux), screen polling with deadlines, and a small
//! cluster — a real Consul agent, real nodes from `ec-testnode` (in-process, or child
//! processes that can be killed with SIGKILL), and the real gateway in-process.
//!
//! `NodeProcess` re-runs this very test binary filtered to the ignored test
//! `util::node_process_child` below ([`ec_testnode::CHILD_TEST`]), which runs the node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ec_gateway::GatewaySettings;
use ec_proto::node_client::NodeClient;
use ec_testkit::ConsulAgent;
pub use ec_testnode::{
    DEADLINE, KV_PREFIX, NodeProcess, TestNode, connect, data_id, node_id, store,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// A tmux server of our own running one console in a detached session.
pub struct Tmux {
    socket: String,
    target: String,
    /// Where the wrapper shell writes the console's exit status.
    status_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-u", "-L", &self.socket, "-f", "/dev/null"]);
        c
    }

    /// Starts `program args` in a detached `width`×`height` session, under a shell that
    /// records the program's exit status in a file once it exits.
    ///
    /// The status is not read from tmux's `#{pane_dead_status}`: tmux 3.3 with libutempter
    /// loses the SIGCHLD of a pane process that exits while the utmp helper runs, and the
    /// status then never appears.
    pub fn start(program: &Path, args: &[String], width: u16, height: u16) -> Tmux {
        let dir = tempfile::tempdir().expect("temp dir");
        let status_file = dir.path().join("exit-status");
        let tmux = Tmux {
            socket: format!(
                "ec-console-test-{}-{}",
                std::process::id(),
                ec_testkit::free_port()
            ),
            target: "console".into(),
            status_file,
            _dir: dir,
        };
        let mut command = vec![shell_quote(&program.display().to_string())];
        command.extend(args.iter().map(|a| shell_quote(a)));
        let command = format!(
            "{}; echo $? > {}.tmp && mv {}.tmp {}",
            command.join(" "),
            shell_quote(&tmux.status_file.display().to_string()),
            shell_quote(&tmux.status_file.display().to_string()),
            shell_quote(&tmux.status_file.display().to_string()),
        );
        let status = tmux
            .cmd()
            .env("LANG", "C.UTF-8")
            .args(["new-session", "-d", "-s", &tmux.target])
            .args(["-x", &width.to_string(), "-y", &height.to_string()])
            .arg(command)
            .args([";", "set-option", "-g", "remain-on-exit", "on"])
            .status()
            .expect("tmux runs (it is installed on every machine of this project)");
        assert!(status.success(), "tmux new-session failed: {status}");
        tmux
    }

    /// The console's process ID (a child of the pane's shell).
    pub fn console_pid(&self) -> i32 {
        let shell = self.pane_format("#{pane_pid}");
        let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
            .expect("the pane's shell is running");
        children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no child of the pane's shell {shell}: {children:?}"))
    }

    /// The visible screen, one line per row.
    pub fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", &self.target])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `text` literally.
    pub fn type_text(&self, text: &str) {
        let status = self
            .cmd()
            .args(["send-keys", "-t", &self.target, "-l", text])
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }

    /// Presses named keys (`Enter`, `Tab`, `Space`, `Escape`, `Up`, ...).
    pub fn keys(&self, keys: &[&str]) {
        let status = self
            .cmd()
            .args(["send-keys", "-t", &self.target])
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }

    /// Polls the screen until `pred` holds; panics with the last screen after `DEADLINE`.
    pub async fn wait(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + DEADLINE;
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < end,
                "timed out after {DEADLINE:?} waiting for {what}; the screen is:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the screen contains `needle`.
    pub async fn wait_text(&self, needle: &str) -> String {
        self.wait(&format!("{needle:?} on screen"), |s| s.contains(needle))
            .await
    }

    /// Asks tmux for a format string of the pane, e.g. `#{pane_pid}`.
    pub fn pane_format(&self, format: &str) -> String {
        let out = self
            .cmd()
            .args(["display-message", "-p", "-t", &self.target, format])
            .output()
            .expect("tmux display-message");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Waits for the console to exit; returns its exit status and whether the pane was left
    /// on the alternate screen (a console that did not restore the terminal).
    pub async fn wait_exit(&self) -> (i32, bool) {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Ok(text) = std::fs::read_to_string(&self.status_file) {
                let code = text.trim().parse().expect("exit status");
                return (code, self.pane_format("#{alternate_on}") == "1");
            }
            assert!(
                Instant::now() < end,
                "the console did not exit; screen:\n{}",
                self.screen()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The line of `screen` holding `needle`, for assertions on one row.
pub fn line_with<'a>(screen: &'a str, needle: &str) -> Option<&'a str> {
    screen.lines().find(|l| l.contains(needle))
}

/// Publishes `n` events `"{prefix}-{i}"` to `data_id` through `client`.
pub async fn publish_with(client: &mut NodeClient<Channel>, data_id: &str, prefix: &str, n: usize) {
    ec_testnode::publish(client, data_id, ec_testnode::payloads(prefix, n))
        .await
        .expect("publish");
}

/// Publishes `n` events `"{prefix}-{i}"` to `data_id` on the node at `addr`.
pub async fn publish(addr: SocketAddr, data_id: &str, prefix: &str, n: usize) {
    publish_with(&mut connect(addr).await, data_id, prefix, n).await;
}

/// The gateway, in-process, against `consul_url`.
pub struct TestGateway {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
}

impl TestGateway {
    pub async fn start(consul_url: &str) -> TestGateway {
        TestGateway::start_with(consul_url, |_| {}).await
    }

    /// [`TestGateway::start`] with `tweak` applied to the settings.
    pub async fn start_with(
        consul_url: &str,
        tweak: impl FnOnce(&mut GatewaySettings),
    ) -> TestGateway {
        let mut settings = GatewaySettings::new(consul_url);
        settings.kv_prefix = KV_PREFIX.into();
        settings.watch_wait = Duration::from_secs(10);
        tweak(&mut settings);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        tokio::spawn(ec_gateway::run(settings, listener, shutdown.clone()));
        TestGateway { addr, shutdown }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The arguments that point the console at this test's Consul and gateway.
pub fn console_args(consul: &ConsulAgent, gateway: &str) -> Vec<String> {
    vec![
        "--consul-addr".into(),
        format!("{}:{}", consul.host(), consul.port()),
        "--gateway".into(),
        gateway.into(),
        "--kv-prefix".into(),
        KV_PREFIX.into(),
        // A file that does not exist would be an error; an empty one gives the defaults, so
        // a config/config.yaml in the working directory cannot change the test.
        "--config".into(),
        empty_config().display().to_string(),
    ]
}

fn empty_config() -> PathBuf {
    let path = std::env::temp_dir().join(format!("ec-console-test-{}.yaml", std::process::id()));
    if !path.exists() {
        std::fs::write(&path, "{}\n").expect("write empty config");
    }
    path
}

/// The console binary built by Cargo for these tests.
pub fn console_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ec-console"))
}

/// Not a test: the body of a [`NodeProcess`] (see [`ec_testnode::child_main`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "entry point of the node child process started by NodeProcess::spawn"]
async fn node_process_child() {
    ec_testnode::child_main().await;
}
