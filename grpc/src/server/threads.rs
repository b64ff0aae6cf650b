//! Serving on threads that each run a runtime of their own: [`GrpcServer::serve_on_threads`].
//!
//! Why: on tokio's multi-threaded runtime, a task woken while it is being polled is queued
//! again as a yield, and tokio wakes an idle worker thread to take it. hyper's pipe of a
//! streamed response body does that once per message: it registers its own task as h2's
//! send task, then reserves capacity, which h2 grants by waking that same task. A gateway
//! relaying a stream therefore woke its second core for every event it passed on. On a
//! single-threaded runtime the same wake is a push onto a local queue.
//!
//! So each serving thread runs a current-thread runtime, and every task of a connection
//! (its HTTP/2 driver, its calls, what the calls spawn) stays on the thread it was given
//! to. One accept loop, on the caller's runtime, hands each new connection to the thread
//! holding the fewest open ones. The socket is handed over as a plain `std` socket and
//! registered with that thread's own reactor: left with the accepting runtime's, every
//! readiness event would go through that runtime's thread first.
//!
//! [`GrpcServer::serve_on_threads`]: super::GrpcServer::serve_on_threads

use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, Router, TcpConnectInfo};
use tower::layer::util::{Identity, Stack};

use super::ServeError;
use crate::limits::MessageLimitLayer;

/// The server every thread runs a clone of.
pub(super) type Routes = Router<Stack<MessageLimitLayer, Identity>>;

/// Pause after a failed accept (out of file descriptors, say), so the loop does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// One serving thread, as the accept loop sees it.
struct Thread {
    connections: mpsc::UnboundedSender<(std::net::TcpStream, Arc<()>)>,
    /// Cloned into each connection handed to this thread: its clones beyond this one count
    /// the connections not yet closed.
    open: Arc<()>,
}

/// Starts `threads` serving threads and the accept loop on `listener`. Each thread polls its
/// sockets for `idle_poll` after its last work before it sleeps ([`crate::IdlePoll`]; zero:
/// never). The returned task ends when `shutdown` is cancelled and every thread has drained
/// its connections.
pub(super) fn start(
    routes: Routes,
    listener: TcpListener,
    threads: NonZeroUsize,
    addr: SocketAddr,
    idle_poll: Duration,
    shutdown: CancellationToken,
) -> Result<JoinHandle<Result<(), ServeError>>, ServeError> {
    let mut serving = Vec::with_capacity(threads.get());
    let mut stopped = Vec::with_capacity(threads.get());
    for i in 0..threads.get() {
        let runtime = crate::IdlePoll::runtime(
            idle_poll,
            tokio::runtime::Builder::new_current_thread().enable_all(),
        )
        .map_err(ServeError::Thread)?;
        let (connections, accepted) = mpsc::unbounded_channel();
        // Polled on the serving thread, so each socket joins that thread's reactor.
        let incoming = UnboundedReceiverStream::new(accepted)
            .map(|(io, open)| TcpStream::from_std(io).map(|io| Counted { io, _open: open }));
        let server = routes
            .clone()
            .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
        let (done, served) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("grpc-serve-{i}"))
            .spawn(move || {
                // Nobody waits any more when the accept task was dropped; nothing to report.
                let _ = done.send(runtime.block_on(server));
            })
            .map_err(ServeError::Thread)?;
        serving.push(Thread {
            connections,
            open: Arc::default(),
        });
        stopped.push(served);
    }
    Ok(tokio::spawn(async move {
        accept(&listener, &serving, &shutdown).await;
        // Closing the listener and every thread's queue of connections.
        drop((listener, serving));
        let mut result = Ok(());
        for (i, served) in stopped.into_iter().enumerate() {
            let this = match served.await {
                Ok(served) => served.map_err(|source| ServeError::Serve { addr, source }),
                Err(_) => Err(ServeError::Panicked {
                    addr,
                    panic: format!("serving thread grpc-serve-{i} panicked"),
                }),
            };
            result = result.and(this);
        }
        result
    }))
}

/// Accepts until `shutdown`, giving each connection (Nagle off) to the thread with the
/// fewest open ones.
async fn accept(listener: &TcpListener, threads: &[Thread], shutdown: &CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let io = match accepted {
            Ok((io, _)) => io,
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a gRPC connection; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(ACCEPT_RETRY) => continue,
                }
            }
        };
        // Nagle off, as `GrpcServer::serve` does; a socket that refuses is served anyway.
        if let Err(e) = io.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted connection");
        }
        let Some(thread) = threads.iter().min_by_key(|t| Arc::strong_count(&t.open)) else {
            return;
        };
        let io = match io.into_std() {
            Ok(io) => io,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand an accepted gRPC connection over");
                continue;
            }
        };
        // Refused only when that thread's server has stopped: dropping closes the socket.
        let _ = thread.connections.send((io, thread.open.clone()));
    }
}

/// An accepted connection on its serving thread, counted there until dropped.
struct Counted {
    io: TcpStream,
    _open: Arc<()>,
}

impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
