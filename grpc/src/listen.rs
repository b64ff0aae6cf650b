//! Binding the servers' listening sockets with a backlog sized for bursts of new connections.
//!
//! `tokio::net::TcpListener::bind` listens with a backlog of 128 connections. When more clients
//! than that connect at once (a thousand consumers started together, each with its own
//! connection), the kernel's accept queue overflows before the server has accepted them:
//! the surplus handshakes are dropped and retried with backoff, or answered with SYN
//! cookies. In `ec-bench growth`'s 1,000 followers, a consumer then now and then saw
//! `UNAVAILABLE: connection reset` from a node that was up all along (`nstat` counted
//! hundreds of `ListenOverflows`, SYN cookies sent and a failed one). With a larger backlog
//! the burst waits in the queue until accepted.

use std::io;

use tokio::net::{TcpListener, TcpSocket, lookup_host};

/// Connections the kernel queues for a listener before the server accepts them; the kernel
/// caps it at `net.core.somaxconn` (4096 by default since Linux 5.4).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Listens on `addr` (`host:port`, the host a name or an address) with [`LISTEN_BACKLOG`],
/// trying each address the host resolves to, as `TcpListener::bind` does.
pub async fn bind(addr: &str) -> io::Result<TcpListener> {
    let mut last_error = None;
    for candidate in lookup_host(addr).await? {
        let socket = if candidate.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        };
        let bound = socket.and_then(|socket| {
            // As std and tokio do: a restarted server can listen on its port again while
            // connections of its previous run linger in TIME_WAIT.
            socket.set_reuseaddr(true)?;
            socket.bind(candidate)?;
            socket.listen(LISTEN_BACKLOG)
        });
        match bound {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr} resolves to no address"),
        )
    }))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::net::TcpStream;

    use super::*;

    /// The accept queue length of the listener on `port`, from `/proc/net/tcp` (`rx_queue`
    /// of a socket in state `0A`, LISTEN, is the number of connections waiting for
    /// `accept`).
    fn accept_queue(port: u16) -> Option<u64> {
        let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
        let local = format!(":{port:04X}");
        table.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let listening = fields.get(3) == Some(&"0A");
            if !listening || !fields.get(1)?.ends_with(&local) {
                return None;
            }
            let (_, rx) = fields.get(4)?.split_once(':')?;
            u64::from_str_radix(rx, 16).ok()
        })
    }

    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_accept_queue() {
        // More than tokio's default backlog of 128, which held at most 129.
        const BURST: u64 = 300;
        let listener = bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert_eq!(
            accept_queue(port),
            Some(0),
            "the listener is in /proc/net/tcp"
        );

        // Nothing accepts while the burst connects: every completed handshake waits in the
        // queue. Past the backlog a handshake does not complete (its SYN is dropped and
        // resent with backoff), hence the deadline on the connects too.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut clients = Vec::new();
        for _ in 0..BURST {
            let connect = TcpStream::connect(("127.0.0.1", port));
            match tokio::time::timeout_at(deadline.into(), connect).await {
                Ok(client) => clients.push(client.expect("connect")),
                Err(_) => break,
            }
        }
        let mut queued = accept_queue(port);
        while queued != Some(BURST) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            queued = accept_queue(port);
        }
        assert_eq!(
            (clients.len() as u64, queued),
            (BURST, Some(BURST)),
            "every connection of the burst completes (connected, queued); net.core.somaxconn: {:?}",
            std::fs::read_to_string("/proc/sys/net/core/somaxconn").map(|s| s.trim().to_owned())
        );

        for _ in 0..BURST {
            listener.accept().await.expect("accept");
        }
    }

    #[tokio::test]
    async fn an_address_that_cannot_be_bound_is_an_error() {
        let taken = bind("127.0.0.1:0").await.expect("bind");
        let addr = taken.local_addr().expect("addr").to_string();
        let e = bind(&addr).await.expect_err("port in use");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        assert!(bind("no-port").await.is_err());
    }
}
