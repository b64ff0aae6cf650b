//! Shared test fixtures: a client of a test agent, a tiny HTTP server that Consul's HTTP
//! check can probe (its answer status settable at run time), log setup and capture, and a
//! deadline-bounded wait on a watch channel.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ec_discovery::{ConsulClient, HttpCheck, ServiceRegistration, Watched};
use ec_testkit::ConsulAgent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Generous deadline for anything that waits on Consul.
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// Shows `tracing` output of the code under test (with `--nocapture`).
pub(crate) fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "ec_discovery=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A client of `agent`.
pub(crate) fn client(agent: &ConsulAgent) -> ConsulClient {
    ConsulClient::new(&agent.http_url(), None).expect("client of the test agent")
}

/// A loopback HTTP server answering every request with the current status and closing the
/// connection; stops when dropped.
pub(crate) struct CheckTarget {
    pub(crate) url: String,
    status: Arc<AtomicU16>,
    stop: CancellationToken,
}

impl CheckTarget {
    pub(crate) async fn start() -> CheckTarget {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind check target");
        let addr = listener.local_addr().expect("local addr");
        let status = Arc::new(AtomicU16::new(200));
        let stop = CancellationToken::new();
        let (st, stp) = (status.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = tokio::select! {
                    _ = stp.cancelled() => return,
                    r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                };
                let code = st.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    // Read the request head; Consul's check sends a bodiless GET.
                    let mut buf = Vec::with_capacity(1024);
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 * 1024 {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let resp = format!(
                        "HTTP/1.1 {code} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        CheckTarget {
            url: format!("http://{addr}/health"),
            status,
            stop,
        }
    }

    /// Makes every following answer use `code`.
    pub(crate) fn set_status(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }

    /// An HTTP check of this target, run every second (Consul's minimum).
    pub(crate) fn check(&self) -> HttpCheck {
        HttpCheck {
            http: self.url.clone(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            deregister_critical_service_after: None,
            initial_status: None,
        }
    }
}

impl Drop for CheckTarget {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A registration named `name` with ID `id` checked against `target`.
pub(crate) fn registration(id: &str, name: &str, target: &CheckTarget) -> ServiceRegistration {
    ServiceRegistration {
        id: id.into(),
        name: name.into(),
        address: "127.0.0.1".into(),
        port: 50052,
        tags: vec!["ec".into()],
        meta: [("data_ids".to_string(), "a,b".to_string())].into(),
        check: Some(target.check()),
    }
}

/// Waits (up to [`DEADLINE`]) until the watch publishes a state satisfying `pred`, and
/// returns that state. Panics naming `what` and showing the last state otherwise.
pub(crate) async fn watch_until<T: Clone + std::fmt::Debug>(
    rx: &mut watch::Receiver<Watched<T>>,
    what: &str,
    pred: impl FnMut(&Watched<T>) -> bool,
) -> Watched<T> {
    let result = tokio::time::timeout(DEADLINE, rx.wait_for(pred))
        .await
        .map(|r| r.map(|w| w.clone()));
    match result {
        Ok(Ok(w)) => w,
        Ok(Err(_)) => panic!("the watch ended while waiting for {what}"),
        Err(_) => panic!(
            "timed out after {DEADLINE:?} waiting for {what}; last state: {:?}",
            *rx.borrow()
        ),
    }
}

/// Collects the `tracing` output of the current thread (a `#[tokio::test]` runs its spawned
/// tasks on its own thread), for tests that assert a log line.
#[derive(Clone, Default)]
pub(crate) struct LogCapture {
    buf: Arc<Mutex<Vec<u8>>>,
}

impl LogCapture {
    /// Routes this thread's `tracing` events here until the guard is dropped.
    pub(crate) fn install(&self) -> tracing::subscriber::DefaultGuard {
        let me = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("ec_discovery=debug")
            .with_ansi(false)
            .with_writer(move || me.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// Everything logged so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
