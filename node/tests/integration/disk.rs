//! A full disk, on a real small filesystem (a tmpfs mounted for the test, so root is needed,
//! as in CI): the node refuses publishes with RESOURCE_EXHAUSTED before the disk is full,
//! keeps serving reads, reports itself degraded, survives a kill -9 and restart in that state
//! without aborting, and takes writes again once space is freed, with every acknowledged
//! event intact byte for byte.

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use ec_proto::PublishResponse;
use ec_proto::node_client::NodeClient;
use ec_testkit::{ConsulAgent, wait_for};
use tonic::transport::Channel;

use crate::util::*;

const D: &str = "full";

/// A tmpfs mounted at a temp dir; unmounted (lazily) when dropped.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> SmallFs {
        let dir = tempfile::tempdir().expect("dir");
        run(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"],
            dir.path(),
        );
        SmallFs { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("node")
    }

    fn grow(&self, size: &str) {
        run(
            "mount",
            &["-o", &format!("remount,size={size}")],
            self.dir.path(),
        );
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn run(cmd: &str, args: &[&str], target: &Path) {
    let status = Command::new(cmd)
        .args(args)
        .arg(target)
        .status()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        status.success(),
        "{cmd} {args:?} {} failed: {status}",
        target.display()
    );
}

async fn health(n: &NodeProcess) -> Option<u16> {
    reqwest::get(format!("http://{}/health", n.health_addr))
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// Event `i`: 64 KiB that do not compress (the store compresses blocks), so the disk fills.
fn event(i: usize) -> Bytes {
    let mut e = format!("event-{i}-").into_bytes();
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while e.len() < 64 * 1024 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        e.extend_from_slice(&x.to_le_bytes());
    }
    Bytes::from(e)
}

/// Publishes one event to `D`. A node just started takes no publish until it has read its
/// mappings from Consul (UNAVAILABLE until then); that wait is retried, any other answer
/// is returned.
async fn publish_once_mapped(
    c: &NodeClient<Channel>,
    e: Bytes,
) -> Result<PublishResponse, tonic::Status> {
    wait_for("the node has read its mappings", DEADLINE, || {
        let (mut c, e) = (c.clone(), e.clone());
        async move {
            match publish(&mut c, D, vec![e]).await {
                Err(s) if s.code() == tonic::Code::Unavailable => None,
                answer => Some(answer),
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_full_disk_refuses_writes_keeps_reads_and_recovers_without_a_restart() {
    if !nix::unistd::geteuid().is_root() {
        panic!("this test mounts a tmpfs and needs root (CI runs as root)");
    }
    let consul = ConsulAgent::start_dev().await;
    let fs = SmallFs::mount("48m");
    let env = [("EVENT_CATCHER_NODE_STORAGE_MIN_FREE_BYTES", "12MiB")];
    let spawn =
        || NodeProcess::spawn_env(&fs.path(), &consul.http_addr().to_string(), "n1", &[], &env);
    let mut node = spawn();
    let mut c = connect(node.grpc_addr).await;

    // Publish 64 KiB events until the node refuses; every acknowledged one is kept.
    let mut acked: Vec<(u64, Bytes)> = Vec::new();
    let refusal = loop {
        let i = acked.len();
        assert!(
            i < 2000,
            "the node never refused although the disk is 48 MiB"
        );
        match publish_once_mapped(&c, event(i)).await {
            Ok(r) => acked.push((r.first_offset, event(i))),
            Err(status) => break status,
        }
    };
    assert_eq!(
        refusal.code(),
        tonic::Code::ResourceExhausted,
        "{refusal:?}"
    );
    assert!(
        refusal.message().contains("node.storage.min_free_bytes")
            && refusal.message().contains(&fs.path().display().to_string()),
        "the refusal names the setting and the data dir: {}",
        refusal.message()
    );
    assert!(acked.len() > 10, "only {} events fit", acked.len());
    let check = |log: Vec<(u64, i64, Bytes)>, acked: &[(u64, Bytes)]| {
        assert_eq!(log.len(), acked.len());
        for ((offset, _, data), (a_offset, a_data)) in log.iter().zip(acked) {
            assert_eq!((offset, data), (a_offset, a_data), "offset {offset} intact");
        }
    };
    check(full_log(&mut c, D).await.expect("reads go on"), &acked);
    assert_eq!(health(&node).await, Some(429), "degraded (Consul: warning)");

    // A restart on the full disk comes up and does not abort on a write: it takes what its
    // store's recovery freed (the journal it replayed), then refuses again.
    node.kill9();
    let mut node = spawn();
    let mut c = connect(node.grpc_addr).await;
    check(
        full_log(&mut c, D).await.expect("reads after restart"),
        &acked,
    );
    let again = loop {
        let i = acked.len();
        assert!(i < 4000, "the node never refused after its restart");
        match publish_once_mapped(&c, event(i)).await {
            Ok(r) => acked.push((r.first_offset, event(i))),
            Err(status) => break status,
        }
    };
    assert_eq!(again.code(), tonic::Code::ResourceExhausted, "{again:?}");
    assert!(
        node.child.try_wait().expect("status").is_none(),
        "the node is still running"
    );
    check(
        full_log(&mut c, D).await.expect("reads after restart"),
        &acked,
    );

    // Space is freed: writes resume without a restart.
    fs.grow("256m");
    let r = wait_for("publishes are taken again", DEADLINE, || {
        let mut c = c.clone();
        async move { publish(&mut c, D, vec![event(9999)]).await.ok() }
    })
    .await;
    acked.push((r.first_offset, event(9999)));
    check(full_log(&mut c, D).await.expect("reads"), &acked);
    assert_eq!(health(&node).await, Some(200));
    node.kill9();
}
