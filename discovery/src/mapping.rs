//! The data-to-node mapping in Consul KV: `<kv_prefix><data_id>` holds `"node1,node2"`,
//! comma-separated node IDs, the first being the primary (the seed's single ID stays valid).
//!
//! Invariants:
//! - A [`Mapping`] is always valid: a valid data ID, at least one valid node ID, no node
//!   twice. Nothing that is not valid is ever written by this module, and whatever else is
//!   found under the prefix (empty values, bad node IDs, duplicates, bytes that are not UTF-8,
//!   keys whose data-ID part is not a data ID, nested keys) becomes a [`MappingProblem`]
//!   naming the key: it is skipped and reported, never a crash, and never hides the valid
//!   mappings next to it.
//! - Every write is a check-and-set on the key's `ModifyIndex` (`cas=0` for "must not
//!   exist") except the explicit `*_force` calls, and a write answers the exact index it
//!   produced (through a one-operation transaction), so the caller can chain CAS writes.
//! - Read-modify-write ([`MappingStore::update`] and the helpers built on it) re-reads and
//!   retries when another writer got in between, with jittered backoff, for at most
//!   [`MAX_CAS_ATTEMPTS`] attempts: two operators (or twenty registering nodes) editing one
//!   mapping at once lose nothing. A stored value that is not a valid mapping is never
//!   edited in place: the caller is told, and only a forced write or delete replaces it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use ec_core::{DataId, IdError, NodeId};
use tracing::debug;

use crate::backoff::Backoff;
use crate::blocking::QueryOptions;
use crate::client::ConsulClient;
use crate::error::DiscoveryError;
use crate::kv::KvPair;
use crate::layout::KvLayout;

/// How many check-and-set attempts a read-modify-write makes before giving up.
pub const MAX_CAS_ATTEMPTS: u32 = 64;
/// First delay after a lost check-and-set; short, because the winner is done already.
const CAS_BACKOFF_MIN: Duration = Duration::from_millis(4);
/// Longest delay between two check-and-set attempts.
const CAS_BACKOFF_MAX: Duration = Duration::from_millis(200);
/// How much of a bad value is quoted in a problem's reason.
const MAX_QUOTED: usize = 64;

/// The nodes holding one data ID, primary first, as stored at one `ModifyIndex`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// The data ID this mapping routes.
    pub data_id: DataId,
    /// The nodes holding it: non-empty, no duplicates; the first is the primary (writers go
    /// there).
    pub nodes: Vec<NodeId>,
    /// The key's `ModifyIndex` when this was read or written: pass it as the expected index
    /// of the next [`MappingStore::put`] or [`MappingStore::delete`].
    pub modify_index: u64,
}

impl Mapping {
    /// The primary node: publishes go there.
    pub fn primary(&self) -> &NodeId {
        // `nodes` is non-empty by construction (parse/validate refuse an empty list).
        &self.nodes[0]
    }

    /// Parses a KV value: comma-separated node IDs, whitespace around each tolerated. An
    /// empty value, an invalid ID, a duplicate or bytes that are not UTF-8 give the reason
    /// as an `Err`.
    pub fn parse(
        data_id: DataId,
        raw: &[u8],
        modify_index: u64,
    ) -> Result<Mapping, InvalidMapping> {
        Mapping::parse_within(data_id, raw, modify_index, DEFAULT_MAX_NODES_PER_MAPPING)
    }

    /// [`Mapping::parse`] refusing more than `max_nodes` node IDs
    /// (`limits.max_nodes_per_mapping`), counted before any is parsed so that a huge value
    /// costs one pass.
    pub fn parse_within(
        data_id: DataId,
        raw: &[u8],
        modify_index: u64,
        max_nodes: usize,
    ) -> Result<Mapping, InvalidMapping> {
        let text = std::str::from_utf8(raw).map_err(InvalidMapping::NotUtf8)?;
        if text.trim().is_empty() {
            return Err(InvalidMapping::EmptyValue);
        }
        let count = text.split(',').count();
        if count > max_nodes {
            return Err(InvalidMapping::TooMany {
                count,
                max: max_nodes,
            });
        }
        let mut nodes = Vec::new();
        for (i, part) in text.split(',').enumerate() {
            let node = NodeId::parse(part.trim()).map_err(|error| InvalidMapping::BadNode {
                entry: i + 1,
                value: quoted(text),
                error,
            })?;
            nodes.push(node);
        }
        check_nodes(&nodes, max_nodes)?;
        Ok(Mapping {
            data_id,
            nodes,
            modify_index,
        })
    }

    /// The value as stored in Consul: `"node1,node2"`.
    pub fn value(&self) -> String {
        join(&self.nodes)
    }

    /// True when `node` is one of this mapping's nodes.
    pub fn contains(&self, node: &NodeId) -> bool {
        self.nodes.contains(node)
    }
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} = {} (ModifyIndex {})",
            self.data_id,
            self.value(),
            self.modify_index
        )
    }
}

/// A key under the prefix that is not a valid mapping, and why; it is skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingProblem {
    /// The full Consul key.
    pub key: String,
    /// What is wrong with it, in words an operator can act on.
    pub reason: String,
}

impl fmt::Display for MappingProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// Every mapping under the prefix at one Consul index, plus the keys that were skipped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MappingSnapshot {
    /// The valid mappings by data ID.
    pub mappings: BTreeMap<DataId, Mapping>,
    /// The keys that were skipped, in key order.
    pub problems: Vec<MappingProblem>,
    /// Consul's `X-Consul-Index` of the listing.
    pub index: u64,
}

impl MappingSnapshot {
    /// Builds a snapshot from the KV pairs listed under `prefix`: each key is `prefix` plus
    /// a data ID. The prefix's own key (a "folder" created in the Consul UI) is ignored;
    /// every other key that is not a valid mapping becomes a [`MappingProblem`].
    pub fn from_kv(prefix: &str, pairs: Vec<KvPair>, index: u64) -> MappingSnapshot {
        MappingSnapshot::from_kv_within(prefix, pairs, index, DEFAULT_MAX_NODES_PER_MAPPING)
    }

    /// [`MappingSnapshot::from_kv`] where a mapping naming more than `max_nodes` nodes is a
    /// [`MappingProblem`], not a mapping.
    pub fn from_kv_within(
        prefix: &str,
        pairs: Vec<KvPair>,
        index: u64,
        max_nodes: usize,
    ) -> MappingSnapshot {
        let mut snap = MappingSnapshot {
            index,
            ..MappingSnapshot::default()
        };
        for pair in pairs {
            let problem = |reason: String| MappingProblem {
                key: pair.key.clone(),
                reason,
            };
            let Some(rest) = pair.key.strip_prefix(prefix) else {
                // Consul lists only keys with the prefix; anything else is not ours.
                snap.problems.push(problem(format!(
                    "listed under prefix {prefix:?} but does not start with it"
                )));
                continue;
            };
            if rest.is_empty() {
                continue;
            }
            if rest.contains('/') {
                snap.problems.push(problem(format!(
                    "nested key: {:?} is not a data ID (data IDs cannot contain '/'; \
                     mappings live directly under {prefix:?})",
                    quoted(rest)
                )));
                continue;
            }
            let data_id = match DataId::parse(rest) {
                Ok(d) => d,
                Err(e) => {
                    snap.problems
                        .push(problem(format!("the key does not end in a data ID: {e}")));
                    continue;
                }
            };
            match Mapping::parse_within(data_id.clone(), &pair.value, pair.modify_index, max_nodes)
            {
                Ok(m) => {
                    snap.mappings.insert(data_id, m);
                }
                Err(reason) => snap.problems.push(problem(reason.to_string())),
            }
        }
        snap
    }
}

/// What went wrong reading or editing a mapping.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// Consul could not be asked, or answered with an error.
    #[error(transparent)]
    Consul(#[from] DiscoveryError),

    /// The check-and-set failed: someone changed (or created, or deleted) the mapping
    /// since the expected index. `current` is what is stored now.
    #[error(
        "the mapping of {data_id} was changed by someone else; it is now {}",
        describe(current.as_ref())
    )]
    Conflict {
        /// The data ID.
        data_id: DataId,
        /// The mapping as stored now (`None`: there is none).
        current: Option<Mapping>,
    },

    /// The requested mapping is not valid (no node, a node twice, too many nodes).
    #[error("invalid mapping for {data_id}: {reason}")]
    Invalid {
        /// The data ID.
        data_id: DataId,
        /// What is wrong.
        reason: InvalidMapping,
    },

    /// The stored value is not a valid mapping, so it is neither routed to nor edited in
    /// place: only a forced put or a delete replaces it.
    #[error(
        "key {key:?} holds a value that is not a mapping (at ModifyIndex {modify_index}): \
         {reason}; replace it with a forced put or delete it"
    )]
    Unreadable {
        /// The data ID.
        data_id: DataId,
        /// The Consul key.
        key: String,
        /// The key's `ModifyIndex`.
        modify_index: u64,
        /// What is wrong with the value (boxed: it is rare, and keeps every `Result` small).
        reason: Box<InvalidMapping>,
    },

    /// A read-modify-write lost the check-and-set race this many times in a row.
    #[error(
        "the mapping of {data_id} kept changing while we edited it: gave up after {attempts} \
         check-and-set attempts (is something rewriting it in a loop?)"
    )]
    Contended {
        /// The data ID.
        data_id: DataId,
        /// How many attempts were made.
        attempts: u32,
    },
}

fn describe(current: Option<&Mapping>) -> String {
    match current {
        Some(m) => format!("{} at ModifyIndex {}", m.value(), m.modify_index),
        None => "absent".to_string(),
    }
}

/// What one key holds, as far as a read-modify-write is concerned.
enum Stored {
    Absent,
    Valid(Mapping),
    /// Present but not a valid mapping.
    Garbage {
        modify_index: u64,
        reason: InvalidMapping,
    },
}

/// Reads and writes the mappings under one KV prefix. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MappingStore {
    client: ConsulClient,
    /// The keys: `<prefix><data_id>`.
    layout: KvLayout,
    /// `limits.max_nodes_per_mapping`: longer mappings are neither written nor read.
    max_nodes: usize,
}

impl MappingStore {
    /// A store of the mappings at `<kv_prefix><data_id>` (e.g. `streaming/data/`). The prefix
    /// is used as given: with no trailing `/`, keys are `<prefix>` glued to the data ID.
    pub fn new(client: ConsulClient, kv_prefix: &str) -> MappingStore {
        MappingStore {
            client,
            layout: KvLayout::new(kv_prefix),
            max_nodes: DEFAULT_MAX_NODES_PER_MAPPING,
        }
    }

    /// This store refusing mappings of more than `max_nodes` nodes (at least 1), on write
    /// and on read (a stored one is reported as a problem).
    pub fn with_max_nodes(mut self, max_nodes: usize) -> MappingStore {
        self.max_nodes = max_nodes.max(1);
        self
    }

    /// Most nodes one mapping may name.
    pub fn max_nodes(&self) -> usize {
        self.max_nodes
    }

    /// The Consul client this store uses.
    pub fn client(&self) -> &ConsulClient {
        &self.client
    }

    /// The KV prefix.
    pub fn prefix(&self) -> &str {
        self.layout.mapping_prefix()
    }

    /// Where this deployment's keys live (mappings, epochs, locks, secret).
    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }

    /// The Consul key of `data_id`'s mapping.
    pub fn key(&self, data_id: &DataId) -> String {
        self.layout.mapping_key(data_id)
    }

    /// The mapping of `data_id`; `None` if there is none. A stored value that is not a
    /// valid mapping is [`MappingError::Unreadable`].
    pub async fn get(&self, data_id: &DataId) -> Result<Option<Mapping>, MappingError> {
        match self.read(data_id).await? {
            Stored::Absent => Ok(None),
            Stored::Valid(m) => Ok(Some(m)),
            Stored::Garbage {
                modify_index,
                reason,
            } => Err(self.garbage(data_id, modify_index, reason)),
        }
    }

    /// Every mapping under the prefix, blocking until something under it changes when
    /// `q.index` is set. Invalid keys are reported in `problems`, not as an error.
    pub async fn list(&self, q: &QueryOptions) -> Result<MappingSnapshot, MappingError> {
        let answer = self.client.kv_list(self.prefix(), q).await?;
        if answer.value.is_empty() {
            // Consul's ACLs hide keys a token may not read: the listing is then empty, as
            // for a prefix that holds nothing. A single-key read is refused outright (403),
            // so reading the prefix's own key tells the two apart: "no mappings" must never
            // be what a permission problem looks like.
            self.client.kv_get(self.prefix()).await?;
        }
        Ok(MappingSnapshot::from_kv_within(
            self.prefix(),
            answer.value,
            answer.index,
            self.max_nodes,
        ))
    }

    /// Writes `nodes` as `data_id`'s mapping if the stored one is still what the caller saw:
    /// `expected = None` (or `Some(0)`) → only if there is none; `Some(i)` → only if its
    /// `ModifyIndex` is still `i`. Otherwise [`MappingError::Conflict`] with what is stored.
    pub async fn put(
        &self,
        data_id: &DataId,
        nodes: &[NodeId],
        expected: Option<u64>,
    ) -> Result<Mapping, MappingError> {
        self.put_checked(data_id, nodes, Some(expected.unwrap_or(0)))
            .await
    }

    /// Writes `nodes` as `data_id`'s mapping whatever is stored (an operator's override; it
    /// also replaces a value that is not a valid mapping).
    pub async fn put_force(
        &self,
        data_id: &DataId,
        nodes: &[NodeId],
    ) -> Result<Mapping, MappingError> {
        self.put_checked(data_id, nodes, None).await
    }

    /// Deletes `data_id`'s mapping if its `ModifyIndex` is still `expected`; otherwise
    /// [`MappingError::Conflict`] with what is stored now, also when nothing is (the caller
    /// expected a mapping that is gone: someone else deleted it).
    pub async fn delete(&self, data_id: &DataId, expected: u64) -> Result<(), MappingError> {
        // Consul answers `true` to a check-and-set delete of a key that does not exist, so
        // absence is checked first; the CAS below still catches a change after this read.
        if self.client.kv_get(&self.key(data_id)).await?.is_none() {
            return Err(MappingError::Conflict {
                data_id: data_id.clone(),
                current: None,
            });
        }
        if self
            .client
            .kv_delete(&self.key(data_id), Some(expected))
            .await?
        {
            Ok(())
        } else {
            Err(self.conflict(data_id).await)
        }
    }

    /// Deletes `data_id`'s mapping whatever it holds (never the keys under it).
    pub async fn delete_force(&self, data_id: &DataId) -> Result<(), MappingError> {
        self.client.kv_delete(&self.key(data_id), None).await?;
        Ok(())
    }

    /// Read-modify-write with check-and-set: reads the mapping, calls `f(current)`, writes
    /// the node list it returns if nobody changed the mapping meanwhile, and otherwise
    /// starts again (jittered backoff, at most [`MAX_CAS_ATTEMPTS`] attempts, then
    /// [`MappingError::Contended`]). `f` returns `Some(nodes)` to write (an empty list
    /// deletes the key), `None` to leave the mapping as it is, or an error to stop. Returns
    /// the mapping as stored afterwards (`None`: there is none).
    ///
    /// `f` may run several times and must decide from its argument only. A stored value that
    /// is not a valid mapping stops the update with [`MappingError::Unreadable`]. A Consul error
    /// is returned at once: retrying when Consul is down is the caller's decision.
    pub async fn update<F>(
        &self,
        data_id: &DataId,
        mut f: F,
    ) -> Result<Option<Mapping>, MappingError>
    where
        F: FnMut(Option<&Mapping>) -> Result<Option<Vec<NodeId>>, MappingError> + Send,
    {
        let key = self.key(data_id);
        let mut backoff = Backoff::new(CAS_BACKOFF_MIN, CAS_BACKOFF_MAX);
        for attempt in 1..=MAX_CAS_ATTEMPTS {
            let current = match self.read(data_id).await? {
                Stored::Absent => None,
                Stored::Valid(m) => Some(m),
                Stored::Garbage {
                    modify_index,
                    reason,
                } => return Err(self.garbage(data_id, modify_index, reason)),
            };
            let Some(nodes) = f(current.as_ref())? else {
                return Ok(current);
            };
            if nodes.is_empty() {
                let Some(cur) = current else {
                    return Ok(None);
                };
                if self.client.kv_delete(&key, Some(cur.modify_index)).await? {
                    return Ok(None);
                }
            } else {
                if current.as_ref().is_some_and(|m| m.nodes == nodes) {
                    return Ok(current);
                }
                let expected = current.as_ref().map_or(0, |m| m.modify_index);
                if let Some(m) = self.write(data_id, &nodes, Some(expected)).await? {
                    return Ok(Some(m));
                }
            }
            if attempt < MAX_CAS_ATTEMPTS {
                let delay = backoff.next_delay();
                debug!(%data_id, attempt, delay_us = delay.as_micros() as u64, "mapping changed under us; retrying");
                tokio::time::sleep(delay).await;
            }
        }
        Err(MappingError::Contended {
            data_id: data_id.clone(),
            attempts: MAX_CAS_ATTEMPTS,
        })
    }

    /// Adds `node` at the end of `data_id`'s mapping (creating it, with `node` as primary,
    /// if there is none); a node already there stays where it is.
    pub async fn add_node(&self, data_id: &DataId, node: &NodeId) -> Result<Mapping, MappingError> {
        let after = self
            .update(data_id, |cur| {
                Ok(match cur {
                    None => Some(vec![node.clone()]),
                    Some(m) if m.contains(node) => None,
                    Some(m) => {
                        let mut nodes = m.nodes.clone();
                        nodes.push(node.clone());
                        Some(nodes)
                    }
                })
            })
            .await?;
        // The closure never asks for an empty list, so a mapping exists afterwards unless
        // someone deleted it in between.
        after.ok_or_else(|| MappingError::Conflict {
            data_id: data_id.clone(),
            current: None,
        })
    }

    /// Removes `node` from `data_id`'s mapping; removing the last node deletes the key.
    /// Returns the mapping afterwards (`None`: there is none).
    pub async fn remove_node(
        &self,
        data_id: &DataId,
        node: &NodeId,
    ) -> Result<Option<Mapping>, MappingError> {
        self.update(data_id, |cur| {
            Ok(match cur {
                Some(m) if m.contains(node) => {
                    Some(m.nodes.iter().filter(|n| *n != node).cloned().collect())
                }
                _ => None,
            })
        })
        .await
    }

    async fn read(&self, data_id: &DataId) -> Result<Stored, MappingError> {
        let Some(pair) = self.client.kv_get(&self.key(data_id)).await? else {
            return Ok(Stored::Absent);
        };
        Ok(
            match Mapping::parse_within(
                data_id.clone(),
                &pair.value,
                pair.modify_index,
                self.max_nodes,
            ) {
                Ok(m) => Stored::Valid(m),
                Err(reason) => Stored::Garbage {
                    modify_index: pair.modify_index,
                    reason,
                },
            },
        )
    }

    /// A validated write; `Ok(None)` when the check-and-set failed.
    async fn write(
        &self,
        data_id: &DataId,
        nodes: &[NodeId],
        cas: Option<u64>,
    ) -> Result<Option<Mapping>, MappingError> {
        check_nodes(nodes, self.max_nodes).map_err(|reason| MappingError::Invalid {
            data_id: data_id.clone(),
            reason,
        })?;
        let written = self
            .client
            .kv_put_indexed(&self.key(data_id), join(nodes).as_bytes(), cas)
            .await?;
        Ok(written.map(|modify_index| Mapping {
            data_id: data_id.clone(),
            nodes: nodes.to_vec(),
            modify_index,
        }))
    }

    /// A write whose lost check-and-set becomes a [`MappingError::Conflict`].
    async fn put_checked(
        &self,
        data_id: &DataId,
        nodes: &[NodeId],
        cas: Option<u64>,
    ) -> Result<Mapping, MappingError> {
        match self.write(data_id, nodes, cas).await? {
            Some(m) => Ok(m),
            None => Err(self.conflict(data_id).await),
        }
    }

    /// The error for a lost check-and-set: a conflict carrying what is stored now.
    async fn conflict(&self, data_id: &DataId) -> MappingError {
        match self.read(data_id).await {
            Ok(Stored::Absent) => MappingError::Conflict {
                data_id: data_id.clone(),
                current: None,
            },
            Ok(Stored::Valid(m)) => MappingError::Conflict {
                data_id: data_id.clone(),
                current: Some(m),
            },
            Ok(Stored::Garbage {
                modify_index,
                reason,
            }) => self.garbage(data_id, modify_index, reason),
            Err(e) => e,
        }
    }

    fn garbage(&self, data_id: &DataId, modify_index: u64, reason: InvalidMapping) -> MappingError {
        MappingError::Unreadable {
            data_id: data_id.clone(),
            key: self.key(data_id),
            modify_index,
            reason: Box::new(reason),
        }
    }
}

/// Refuses what must never be stored: no node, or a node twice.
fn check_nodes(nodes: &[NodeId], max_nodes: usize) -> Result<(), InvalidMapping> {
    if nodes.is_empty() {
        return Err(InvalidMapping::NoNodes);
    }
    if nodes.len() > max_nodes {
        return Err(InvalidMapping::TooMany {
            count: nodes.len(),
            max: max_nodes,
        });
    }
    let mut seen = std::collections::HashSet::with_capacity(nodes.len());
    for n in nodes {
        if !seen.insert(n) {
            return Err(InvalidMapping::Duplicate {
                node: n.clone(),
                value: quoted(&join(nodes)),
            });
        }
    }
    Ok(())
}

/// Most nodes in one mapping unless configured otherwise (`limits.max_nodes_per_mapping`):
/// every node of a mapping holds a copy, so a few suffice; a bound keeps one write from
/// costing every watcher work on each change.
pub const DEFAULT_MAX_NODES_PER_MAPPING: usize = 32;

/// Why a node list or a stored value is not a valid mapping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMapping {
    /// The stored bytes are not UTF-8.
    #[error(
        "the value is not UTF-8 ({0}); expected comma-separated node IDs such as \"node1,node2\""
    )]
    NotUtf8(std::str::Utf8Error),
    /// The stored value is empty (or only whitespace).
    #[error(
        "the value is empty; expected comma-separated node IDs, primary first, such as \"node1,node2\""
    )]
    EmptyValue,
    /// A node list to write is empty.
    #[error("the node list is empty; a mapping needs at least one node")]
    NoNodes,
    /// An entry is not a node ID.
    #[error("entry {entry} of {value:?} is not a node ID: {error}")]
    BadNode {
        /// 1-based position in the list.
        entry: usize,
        /// The value, shortened for the message.
        value: String,
        /// Why the entry is not a node ID.
        error: IdError,
    },
    /// A node is named twice.
    #[error("node {node} is listed twice in {value:?}")]
    Duplicate {
        /// The node.
        node: NodeId,
        /// The list, shortened for the message.
        value: String,
    },
    /// More nodes than `limits.max_nodes_per_mapping`.
    #[error(
        "it names {count} nodes, more than limits.max_nodes_per_mapping ({max}) allows; every node of a mapping holds a full copy, so list a few replicas, or raise the limit"
    )]
    TooMany {
        /// How many nodes it names.
        count: usize,
        /// The limit.
        max: usize,
    },
}

fn join(nodes: &[NodeId]) -> String {
    let mut out = String::new();
    for (i, n) in nodes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(n.as_str());
    }
    out
}

/// `s` shortened to [`MAX_QUOTED`] characters for an error message.
fn quoted(s: &str) -> String {
    if s.chars().count() <= MAX_QUOTED {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(MAX_QUOTED).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> DataId {
        DataId::parse(s).expect("data id")
    }

    fn n(s: &str) -> NodeId {
        NodeId::parse(s).expect("node id")
    }

    fn pair(key: &str, value: &[u8], modify_index: u64) -> KvPair {
        KvPair {
            key: key.into(),
            value: value.to_vec(),
            create_index: 1,
            modify_index,
            flags: 0,
            session: None,
        }
    }

    #[test]
    fn parses_values_primary_first_with_whitespace() {
        let m = Mapping::parse(d("a"), b" node1 ,\tnode2\n", 7).expect("valid");
        assert_eq!(m.nodes, [n("node1"), n("node2")]);
        assert_eq!(m.primary(), &n("node1"));
        assert_eq!(m.value(), "node1,node2");
        assert_eq!(m.modify_index, 7);
        // The seed's single ID stays valid.
        assert_eq!(
            Mapping::parse(d("a"), b"node1", 1).expect("single").nodes,
            [n("node1")]
        );
    }

    #[test]
    fn refuses_garbage_with_a_reason() {
        let cases: [(&[u8], &str); 8] = [
            (b"", "empty"),
            (b"  \n", "empty"),
            (b"../x", "'/'"),
            (b"a b", "' '"),
            (b"n1,n1", "twice"),
            (b"n1,,n2", "entry 2"),
            (b"n1,", "entry 2"),
            (&[0xff, 0xfe, b'n'], "UTF-8"),
        ];
        for (raw, want) in cases {
            let e = Mapping::parse(d("a"), raw, 1)
                .expect_err(&format!("{raw:?} accepted"))
                .to_string();
            assert!(e.contains(want), "{raw:?}: {e:?} lacks {want:?}");
        }
    }

    #[test]
    fn mappings_beyond_the_node_limit_are_problems() {
        let huge: Vec<String> = (0..45_000).map(|i| format!("n{i}")).collect();
        let huge = huge.join(",");
        let e = Mapping::parse(d("a"), huge.as_bytes(), 1)
            .expect_err("45000 nodes")
            .to_string();
        assert!(
            e.contains("45000 nodes") && e.contains("limits.max_nodes_per_mapping (32)"),
            "{e}"
        );
        let three = b"n1,n2,n3";
        assert!(Mapping::parse_within(d("a"), three, 1, 2).is_err());
        assert!(Mapping::parse_within(d("a"), three, 1, 3).is_ok());
        let snap = MappingSnapshot::from_kv_within(
            "p/",
            vec![pair("p/a", three, 2), pair("p/b", b"n1", 3)],
            3,
            2,
        );
        assert_eq!(snap.mappings.len(), 1);
        assert_eq!(snap.problems.len(), 1);
        assert_eq!(snap.problems[0].key, "p/a");
        let many: Vec<NodeId> = (0..33).map(|i| n(&format!("n{i}"))).collect();
        assert!(check_nodes(&many, 32).is_err());
        assert!(check_nodes(&many[..32], 32).is_ok());
    }

    #[test]
    fn snapshot_skips_and_reports_bad_keys() {
        let p = "streaming/data/";
        let pairs = vec![
            pair("streaming/data/", b"", 2),
            pair("streaming/data/a/b", b"n1", 3),
            pair("streaming/data/bad id", b"n1", 4),
            pair("streaming/data/empty", b"", 5),
            pair("streaming/data/good", b"n1, n2", 6),
            pair("streaming/data/x..y", b"n1", 7),
        ];
        let snap = MappingSnapshot::from_kv(p, pairs, 42);
        assert_eq!(snap.index, 42);
        assert_eq!(
            snap.mappings.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["good", "x..y"]
        );
        assert_eq!(snap.mappings[&d("good")].modify_index, 6);
        let keys: Vec<&str> = snap.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "streaming/data/a/b",
                "streaming/data/bad id",
                "streaming/data/empty"
            ]
        );
        assert!(
            snap.problems[0].reason.contains("nested"),
            "{:?}",
            snap.problems[0]
        );
        assert!(
            snap.problems[1].reason.contains("data ID"),
            "{:?}",
            snap.problems[1]
        );
    }

    #[test]
    fn node_lists_are_checked_before_writing() {
        assert!(check_nodes(&[], 32).is_err());
        assert!(
            check_nodes(&[n("a"), n("b"), n("a")], 32)
                .expect_err("dup")
                .to_string()
                .contains("twice")
        );
        assert!(check_nodes(&[n("a"), n("b")], 32).is_ok());
    }

    #[test]
    fn errors_say_what_is_stored() {
        let e = MappingError::Conflict {
            data_id: d("a"),
            current: Some(Mapping::parse(d("a"), b"n1,n2", 9).expect("m")),
        };
        assert_eq!(
            e.to_string(),
            "the mapping of a was changed by someone else; it is now n1,n2 at ModifyIndex 9"
        );
        let e = MappingError::Conflict {
            data_id: d("a"),
            current: None,
        };
        assert!(e.to_string().ends_with("it is now absent"), "{e}");
    }
}
