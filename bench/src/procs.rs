//! Child processes and their temp dirs: finding the binaries, spawning each server in its own
//! fresh directory on loopback ports, waiting until it answers, and never leaving one behind.
//!
//! Invariants:
//! - Every child is registered (by PID) from spawn until it is reaped; every temp dir from
//!   creation until it is removed. Dropping a [`Spawned`] kills (SIGKILL) and reaps its child;
//!   dropping a [`Workdir`] removes its directory.
//! - On SIGINT or SIGTERM, [`kill_children_on_signal`] kills and reaps every registered child,
//!   removes every registered directory and exits with 130: Ctrl-C leaves nothing running.
//! - Children run in their own process group, so a terminal's Ctrl-C reaches only this
//!   process, which then stops them in order; they inherit no `EVENT_CATCHER_*` variable and
//!   start in their temp dir, so no stray config file or environment changes what is measured.

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use color_eyre::eyre::{Result, WrapErr, bail, eyre};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Children and directories alive right now, for the signal handler.
#[derive(Default)]
struct Registry {
    children: HashMap<u32, String>,
    dirs: Vec<PathBuf>,
}

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Installs the SIGINT/SIGTERM handler that stops every child and exits.
pub(crate) fn kill_children_on_signal() {
    tokio::spawn(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            eprintln!("warning: cannot install signal handlers; Ctrl-C may leave servers running");
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        let mut reg = registry();
        eprintln!(
            "\ninterrupted: stopping {} child process(es)",
            reg.children.len()
        );
        for (pid, name) in reg.children.drain() {
            let pid = Pid::from_raw(pid as i32);
            let _ = kill(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
            eprintln!("  stopped {name}");
        }
        for dir in reg.dirs.drain(..) {
            let _ = std::fs::remove_dir_all(dir);
        }
        std::process::exit(130);
    });
}

/// A fresh temp directory, removed on drop (and on Ctrl-C).
pub(crate) struct Workdir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Workdir {
    /// Creates `ec-bench-<label>-XXXX` in the temp dir (`TMPDIR`).
    pub(crate) fn new(label: &str) -> Result<Workdir> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ec-bench-{label}-"))
            .tempdir()
            .wrap_err("cannot create a temp dir; check TMPDIR and free disk space")?;
        let path = dir.path().to_path_buf();
        registry().dirs.push(path.clone());
        Ok(Workdir {
            dir: Some(dir),
            path,
        })
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        registry().dirs.retain(|d| d != &self.path);
        if let Some(dir) = self.dir.take() {
            // EC_BENCH_KEEP_DIRS=1 keeps the data and the servers' logs for a post-mortem.
            if std::env::var_os("EC_BENCH_KEEP_DIRS").is_some_and(|v| v == "1") {
                eprintln!("kept {}", dir.keep().display());
            }
        }
    }
}

/// A running child process; killed and reaped on drop.
pub(crate) struct Spawned {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Spawned {
    /// Runs `cmd` (already holding its program and arguments) as `name`, in `dir`, with
    /// stdout and stderr appended to `dir/<name>.log`.
    pub(crate) fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Result<Spawned> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log)
            .wrap_err_with(|| format!("cannot create the log file {}", log.display()))?;
        let err = out
            .try_clone()
            .wrap_err("cannot duplicate a log file handle")?;
        let explicit: Vec<std::ffi::OsString> =
            cmd.get_envs().map(|(k, _)| k.to_os_string()).collect();
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("EVENT_CATCHER_") && !explicit.contains(&key) {
                cmd.env_remove(key);
            }
        }
        cmd.current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        // Register under the lock so a signal between spawn and insert cannot miss the child.
        let mut reg = registry();
        let child = cmd
            .spawn()
            .wrap_err_with(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        reg.children.insert(child.id(), name.to_owned());
        Ok(Spawned {
            name: name.to_owned(),
            child: Some(child),
            log,
        })
    }

    /// The child's PID (for /proc and signals).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The name given at spawn.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Fails with the log tail if the child has exited.
    pub(crate) fn check_running(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} was already stopped", self.name);
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                let pid = child.id();
                self.child = None;
                registry().children.remove(&pid);
                Err(eyre!(
                    "{} exited ({status}); last lines of {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail(20)
                ))
            }
            Err(e) => Err(eyre!("cannot check on {}: {e}", self.name)),
        }
    }

    /// Waits until `addr` accepts TCP connections, failing early if the child exits.
    pub(crate) async fn wait_for_port(
        &mut self,
        addr: SocketAddr,
        deadline: Duration,
    ) -> Result<()> {
        let end = Instant::now() + deadline;
        loop {
            self.check_running()?;
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= end {
                bail!(
                    "{} did not listen on {addr} within {deadline:?}; last lines of {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `signal` (e.g. SIGSTOP, SIGCONT) to the child, if it runs.
    pub(crate) fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// SIGKILLs and reaps the child now; returns when it is gone.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id();
            let _ = child.kill();
            let _ = child.wait();
            registry().children.remove(&pid);
        }
    }

    /// The last `lines` lines of the child's log.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        match std::fs::read_to_string(&self.log) {
            Ok(text) => {
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(e) => format!("(cannot read {}: {e})", self.log.display()),
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where the benchmark's own binaries (ec-node, ec-gateway) are, as an absolute path.
pub(crate) fn own_binary(name: &str, bin_dir: Option<&Path>) -> Result<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = bin_dir {
        dirs.push(dir.to_path_buf());
    } else if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        dirs.push(dir.to_path_buf());
        // A test binary runs from target/<profile>/deps.
        if dir.file_name().is_some_and(|n| n == "deps")
            && let Some(parent) = dir.parent()
        {
            dirs.push(parent.to_path_buf());
        }
    }
    if let Some(path) = dirs.iter().find_map(|dir| executable(&dir.join(name))) {
        return Ok(path);
    }
    bail!(
        "{name} not found in {}; build it (cargo build --release -p ec-node -p ec-gateway) or \
         pass --bin-dir / EC_BENCH_BIN_DIR",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A peer's server binary: `$env_var`, else `name` on PATH; `None` if neither exists.
pub(crate) fn peer_binary(env_var: &str, name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env_var).filter(|v| !v.is_empty()) {
        return executable(Path::new(&path));
    }
    on_path(name)
}

/// Consul: `$EC_CONSUL_BIN`, `<workspace>/.tools/consul`, or PATH.
pub(crate) fn consul_binary() -> Option<PathBuf> {
    ec_testkit::consul_binary().ok()
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find_map(|d| executable(&d.join(name)))
}

/// `path` made absolute if it is an executable file. Absolute, because every server runs
/// in its own data directory, where a relative path (`--bin-dir ./bin`) names nothing.
fn executable(path: &Path) -> Option<PathBuf> {
    if !is_executable(path) {
        return None;
    }
    std::path::absolute(path).ok()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A loopback port free right now (never handed out twice by this process).
pub(crate) fn free_port() -> u16 {
    ec_testkit::free_port()
}

/// `127.0.0.1:port`.
pub(crate) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--bin-dir ./bin` must still name the binary once a server runs in its own data
    /// directory (found when `ec-bench growth --bin-dir ./dir` could start no node).
    #[test]
    fn a_relative_bin_dir_gives_an_absolute_binary() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let bin = dir.path().join("ec-node");
        std::fs::write(&bin, "#!/bin/sh\n").expect("write the stand-in binary");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))
            .expect("make it executable");
        // The temp dir, named relative to the working directory: `../` up to the root.
        let cwd = std::env::current_dir().expect("working directory");
        let mut relative = PathBuf::new();
        for _ in cwd.components().skip(1) {
            relative.push("..");
        }
        relative.push(dir.path().strip_prefix("/").expect("an absolute temp dir"));
        assert!(relative.is_relative());

        let found = own_binary("ec-node", Some(&relative)).expect("found");
        assert!(found.is_absolute(), "{} is relative", found.display());
        assert!(is_executable(&found));
        assert!(own_binary("ec-gateway", Some(&relative)).is_err());
    }
}
