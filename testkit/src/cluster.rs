//! Consul as it is run in production, on loopback: several servers forming a Raft cluster and
//! one client agent per "machine", every member with its own ports and data dir.
//!
//! Invariants:
//! - [`ConsulCluster::start`] returns only when every member runs, a leader is elected, and
//!   every member is `alive` in the LAN pool as the servers see it, so a test starts from the
//!   whole topology.
//! - Every member `-retry-join`s all the servers' serf LAN ports, so a restarted member
//!   (same ports, same data dir, same node ID) finds the cluster again by itself; losing any
//!   minority of the servers leaves a working cluster.
//! - Members gossip fast (see `FAST_GOSSIP` in `consul.rs`): a SIGKILLed agent's node turns
//!   `serfHealth` critical about 1.5 s after its death, as a dead machine would (with
//!   [`ConsulCluster::start_with_consul_timings`], after Consul's usual several seconds).
//! - Dropping the cluster SIGKILLs every member and removes every dir (each member is a
//!   [`ConsulAgent`]).

use std::time::Duration;

use crate::consul::Gossip;
use crate::{ConsulAgent, wait_for};

/// How long a freshly started cluster may take to elect a leader and see every member alive.
const FORMED_DEADLINE: Duration = Duration::from_secs(60);

/// A Consul cluster of servers and client agents on loopback, owned by one test.
#[derive(Debug)]
pub struct ConsulCluster {
    servers: Vec<ConsulAgent>,
    clients: Vec<ConsulAgent>,
    http: reqwest::Client,
}

impl ConsulCluster {
    /// Starts `servers` servers (`-bootstrap-expect servers`) and `clients` client agents, all
    /// joined to the servers, and waits until the cluster has a leader and sees every member
    /// alive.
    pub async fn start(servers: usize, clients: usize) -> ConsulCluster {
        Self::start_with(servers, clients, Gossip::Fast).await
    }

    /// [`ConsulCluster::start`] with Consul's own Serf timings instead of the fast ones (a
    /// dead machine is failed after several seconds, as in a deployment): for measurements.
    pub async fn start_with_consul_timings(servers: usize, clients: usize) -> ConsulCluster {
        Self::start_with(servers, clients, Gossip::ConsulDefault).await
    }

    async fn start_with(servers: usize, clients: usize, gossip: Gossip) -> ConsulCluster {
        assert!(servers > 0, "a Consul cluster needs at least one server");
        let mut server_agents: Vec<ConsulAgent> = (0..servers)
            .map(|_| ConsulAgent::unstarted_cluster_server(servers, gossip))
            .collect();
        let mut client_agents: Vec<ConsulAgent> = (0..clients)
            .map(|_| ConsulAgent::unstarted_cluster_client(gossip))
            .collect();
        let join: Vec<u16> = server_agents.iter().map(|s| s.serf_lan_port()).collect();
        for agent in server_agents.iter_mut().chain(client_agents.iter_mut()) {
            agent.set_join(join.clone());
            // No server has a leader until `servers` of them run: spawn all, then wait.
            agent.spawn_only();
        }
        for agent in server_agents.iter_mut().chain(client_agents.iter_mut()) {
            agent.wait_started().await;
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
            .unwrap_or_else(|e| panic!("cannot build an HTTP client for cluster checks: {e}"));
        let cluster = ConsulCluster {
            servers: server_agents,
            clients: client_agents,
            http,
        };
        let names: Vec<String> = cluster
            .members()
            .map(|a| a.node_name().to_owned())
            .collect();
        wait_for(
            "every Consul member alive in the LAN pool",
            FORMED_DEADLINE,
            || cluster.alive_members(names.clone()),
        )
        .await;
        cluster
    }

    /// Server `i` (0-based).
    pub fn server(&self, i: usize) -> &ConsulAgent {
        &self.servers[i]
    }

    /// Server `i`, to kill or restart it.
    pub fn server_mut(&mut self, i: usize) -> &mut ConsulAgent {
        &mut self.servers[i]
    }

    /// Client agent `i` (0-based): the agent of "machine" `i`.
    pub fn client(&self, i: usize) -> &ConsulAgent {
        &self.clients[i]
    }

    /// Client agent `i`, to kill or restart it.
    pub fn client_mut(&mut self, i: usize) -> &mut ConsulAgent {
        &mut self.clients[i]
    }

    /// How many servers the cluster has.
    pub fn server_count(&self) -> usize {
        self.servers.len()
    }

    /// Every member: servers first, then client agents.
    pub fn members(&self) -> impl Iterator<Item = &ConsulAgent> {
        self.servers.iter().chain(&self.clients)
    }

    /// The index of the current leader among the servers, as any running server sees it;
    /// `None` while there is none (an election is under way).
    pub async fn leader(&self) -> Option<usize> {
        for server in self.servers.iter().filter(|s| s.is_running()) {
            let Ok(resp) = self
                .http
                .get(format!("{}/v1/status/leader", server.http_url()))
                .send()
                .await
            else {
                continue;
            };
            let Ok(body) = resp.text().await else {
                continue;
            };
            let leader = body.trim().trim_matches('"').to_owned();
            if let Some(i) = self
                .servers
                .iter()
                .position(|s| s.server_rpc_addr() == leader)
            {
                return Some(i);
            }
        }
        None
    }

    /// Waits until a running server is the leader and returns its index.
    pub async fn wait_leader(&self, deadline: Duration) -> usize {
        wait_for(
            "a Consul leader among the running servers",
            deadline,
            || async {
                self.leader()
                    .await
                    .filter(|&i| self.servers[i].is_running())
            },
        )
        .await
    }

    /// `Some(())` once a running server lists every one of `names` as alive (status 1).
    async fn alive_members(&self, names: Vec<String>) -> Option<()> {
        let server = self.servers.iter().find(|s| s.is_running())?;
        let members: serde_json::Value = self
            .http
            .get(format!("{}/v1/agent/members", server.http_url()))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let alive: Vec<&str> = members
            .as_array()?
            .iter()
            .filter(|m| m["Status"] == 1)
            .filter_map(|m| m["Name"].as_str())
            .collect();
        names
            .iter()
            .all(|n| alive.contains(&n.as_str()))
            .then_some(())
    }

    /// Has client agent `i` join every running server again: each join is a full state
    /// exchange with that server, so a server that still holds the agent as failed from
    /// before a restart learns at once that it is back (or the agent refutes the failure).
    /// Failures are ignored: this only speeds up what gossip does anyway.
    pub async fn rejoin(&self, i: usize) {
        let agent = &self.clients[i];
        for server in self.servers.iter().filter(|s| s.is_running()) {
            let _ = self
                .http
                .put(format!(
                    "{}/v1/agent/join/127.0.0.1:{}",
                    agent.http_url(),
                    server.serf_lan_port()
                ))
                .send()
                .await;
        }
    }

    /// The `serfHealth` status of `agent`'s Consul node as the servers see it (`passing`,
    /// `critical`), or `None` if no server answers.
    pub async fn serf_health(&self, agent: &ConsulAgent) -> Option<String> {
        for server in self.servers.iter().filter(|s| s.is_running()) {
            let Ok(resp) = self
                .http
                .get(format!(
                    "{}/v1/health/node/{}",
                    server.http_url(),
                    agent.node_name()
                ))
                .send()
                .await
            else {
                continue;
            };
            let Ok(checks) = resp.json::<serde_json::Value>().await else {
                continue;
            };
            return checks
                .as_array()?
                .iter()
                .find(|c| c["CheckID"] == "serfHealth")
                .and_then(|c| c["Status"].as_str())
                .map(str::to_owned);
        }
        None
    }
}
