//! Shared scaffolding: real nodes from `ec-testnode` (in-process `TestNode`, and
//! `NodeProcess` children that can be killed with SIGKILL), seen as the SDK's `Candidate`s,
//! plus resolvers and small gRPC conveniences.
//!
//! `NodeProcess` re-runs this very test binary filtered to the ignored test
//! `util::node_process_child` below ([`ec_testnode::CHILD_TEST`]), which runs the node.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use ec_client::{Candidate, ClientError, DataId, Resolver};
pub use ec_testnode::{
    DEADLINE, NO_CONSUL, NodeAcks, NodeProcess, Signal, TestNode, connect, data_id, node_id,
    payloads, publish, read_log, store, wait_in_sync,
};
use tokio::sync::Notify;

/// A node as the SDK sees it.
pub trait AsCandidate {
    fn candidate(&self) -> Candidate;
}

impl AsCandidate for TestNode {
    fn candidate(&self) -> Candidate {
        Candidate::new(self.node_id.clone(), self.address())
    }
}

impl AsCandidate for NodeProcess {
    fn candidate(&self) -> Candidate {
        Candidate::new(self.node_id.clone(), self.address())
    }
}

/// A fixed list of nodes that counts how often it was asked, and can mark a node unhealthy.
#[derive(Default)]
pub struct TestResolver {
    pub nodes: Mutex<Vec<Candidate>>,
    pub asked: AtomicUsize,
    unhealthy: Mutex<Vec<String>>,
    changed: Notify,
}

impl TestResolver {
    pub fn new(nodes: Vec<Candidate>) -> TestResolver {
        TestResolver {
            nodes: Mutex::new(nodes),
            ..TestResolver::default()
        }
    }

    pub fn asked(&self) -> usize {
        self.asked.load(Ordering::SeqCst)
    }

    /// Reports `node_id` unhealthy to streams open on it.
    pub fn mark_unhealthy(&self, node_id: &str) {
        self.unhealthy
            .lock()
            .expect("lock")
            .push(node_id.to_owned());
        self.changed.notify_waiters();
    }
}

#[tonic::async_trait]
impl Resolver for TestResolver {
    async fn candidates(&self, _: &DataId) -> Result<Vec<Candidate>, ClientError> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Ok(self.nodes.lock().expect("lock").clone())
    }

    async fn until_unhealthy(&self, _: &DataId, node_id: &str) {
        loop {
            let changed = self.changed.notified();
            if self
                .unhealthy
                .lock()
                .expect("lock")
                .iter()
                .any(|n| n == node_id)
            {
                return;
            }
            changed.await;
        }
    }
}

/// An address where nothing listens (a port that was free a moment ago).
pub fn dead_address() -> String {
    format!("127.0.0.1:{}", ec_testkit::free_port())
}

/// Not a test: the body of a [`NodeProcess`] (see [`ec_testnode::child_main`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "entry point of the node child process started by NodeProcess::spawn"]
async fn node_process_child() {
    ec_testnode::child_main().await;
}
