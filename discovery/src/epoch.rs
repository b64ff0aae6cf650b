//! Leader epochs in Consul KV: for each replicated data ID, who is its primary in which epoch
//! and which nodes are in sync with it. This is the record every replication decision is
//! agreed on; nothing else decides who may write.
//!
//! Where: [`KvLayout::epoch_key`] — for the default prefix `streaming/data/` that is
//! `streaming/data.epochs/orders`. The key sits *beside* the
//! mapping prefix, not under it, so a listing of the mappings never sees it (it would be a
//! nested key there, reported as a problem).
//!
//! Value: JSON `{"epoch":12,"primary":"node2","in_sync":["node2","node3"]}`.
//!
//! Invariants this module keeps for its callers:
//! - Every write is a check-and-set on the key's `ModifyIndex` (`None`: it must not exist),
//!   answered with the exact index it produced; a lost race is [`EpochError::Conflict`]
//!   carrying what is stored now. So of two writers that read the same version, one wins.
//! - A stored value is always valid when written here: the primary is in the in-sync set,
//!   node IDs are valid and unique. A value that is not is reported as
//!   [`EpochError::Invalid`] naming the key, never decoded into something half-right.
//!
//! The rules that make this a protocol (only a node in the in-sync set may claim a new epoch;
//! a claim removes the previous primary; only the primary shrinks or grows the set, each time
//! by CAS on the version it last wrote) live with their users, the node and the gateway.

use std::collections::BTreeMap;
use std::fmt;

use ec_core::{DataId, Epoch, NodeId};
use serde::{Deserialize, Serialize};

use crate::blocking::QueryOptions;
use crate::client::ConsulClient;
use crate::error::DiscoveryError;
use crate::layout::KvLayout;

/// The epoch a node claims after `ended`: above the ended one, above the Consul index of the
/// mapping that named it primary (so a later mapping always means a later epoch), and above
/// the last epoch in its own log. One rule: the node claims with it, and the gateway names
/// the epoch its promotion leads to with it (`last_in_log` 0: a replica's log holds no
/// epoch later than the record's).
pub fn next_epoch(ended: Epoch, mapping_index: u64, last_in_log: Epoch) -> Epoch {
    Epoch((ended.0 + 1).max(mapping_index).max(last_in_log.0 + 1))
}

/// One data ID's epoch record, as stored at one `ModifyIndex`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochState {
    /// The data ID.
    pub data_id: DataId,
    /// The current leader epoch: only `primary` writes events in it.
    pub epoch: Epoch,
    /// The node that claimed `epoch`.
    pub primary: NodeId,
    /// Nodes holding everything the primary has acknowledged to `acks=all` publishers (and
    /// everything readers may have seen); the primary is always one of them. Only these may
    /// claim the next epoch.
    pub in_sync: Vec<NodeId>,
    /// The key's `ModifyIndex` when read or written: the expected index of the next write.
    pub modify_index: u64,
}

impl EpochState {
    /// True when `node` is in the in-sync set.
    pub fn is_in_sync(&self, node: &NodeId) -> bool {
        self.in_sync.contains(node)
    }
}

impl fmt::Display for EpochState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let isr: Vec<&str> = self.in_sync.iter().map(NodeId::as_str).collect();
        write!(
            f,
            "{}: epoch {} primary {} in sync [{}] (ModifyIndex {})",
            self.data_id,
            self.epoch,
            self.primary,
            isr.join(","),
            self.modify_index
        )
    }
}

/// The stored JSON (the epoch as a bare number).
#[derive(Serialize, Deserialize)]
struct Wire {
    epoch: u64,
    primary: String,
    in_sync: Vec<String>,
}

/// What went wrong reading or writing an epoch record.
#[derive(Debug, thiserror::Error)]
pub enum EpochError {
    /// Consul could not be asked, or answered with an error.
    #[error(transparent)]
    Consul(#[from] DiscoveryError),
    /// The check-and-set failed: the record changed since the expected index.
    #[error(
        "the epoch record of {data_id} was changed by someone else; it is now {}",
        current.as_ref().map_or_else(|| "absent".to_string(), ToString::to_string)
    )]
    Conflict {
        /// The data ID.
        data_id: DataId,
        /// What is stored now (`None`: nothing).
        current: Option<EpochState>,
    },
    /// A stored or requested record is not valid.
    #[error("invalid epoch record at {key}: {reason}")]
    Invalid {
        /// The Consul key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// Reads and writes the epoch records beside one mapping prefix. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EpochStore {
    client: ConsulClient,
    prefix: String,
}

impl EpochStore {
    /// The epoch records of the mappings under `kv_prefix` (see [`KvLayout::epoch_prefix`]).
    pub fn new(client: ConsulClient, kv_prefix: &str) -> EpochStore {
        EpochStore {
            client,
            prefix: KvLayout::new(kv_prefix).epoch_prefix(),
        }
    }

    /// The Consul client this store uses.
    pub fn client(&self) -> &ConsulClient {
        &self.client
    }

    /// The prefix of the records (`streaming/data.epochs/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Consul key of `data_id`'s record.
    pub fn key(&self, data_id: &DataId) -> String {
        format!("{}{}", self.prefix, data_id)
    }

    /// `data_id`'s record; `None` if no primary ever claimed an epoch.
    pub async fn get(&self, data_id: &DataId) -> Result<Option<EpochState>, EpochError> {
        let key = self.key(data_id);
        match self.client.kv_get(&key).await? {
            None => Ok(None),
            Some(pair) => decode(&key, data_id.clone(), &pair.value, pair.modify_index).map(Some),
        }
    }

    /// Every record under the prefix (blocking until something changes when `q.index` is
    /// set), with Consul's index; keys that do not decode are returned as problems
    /// `(key, reason)`, not as an error.
    pub async fn list(
        &self,
        q: &QueryOptions,
    ) -> Result<(BTreeMap<DataId, EpochState>, Vec<(String, String)>, u64), EpochError> {
        let answer = self.client.kv_list(&self.prefix, q).await?;
        let mut states = BTreeMap::new();
        let mut problems = Vec::new();
        for pair in answer.value {
            let Some(rest) = pair.key.strip_prefix(&self.prefix) else {
                continue;
            };
            if rest.is_empty() {
                continue;
            }
            let decoded = DataId::parse(rest)
                .map_err(|e| EpochError::Invalid {
                    key: pair.key.clone(),
                    reason: format!("the key does not end in a data ID: {e}"),
                })
                .and_then(|id| decode(&pair.key, id, &pair.value, pair.modify_index));
            match decoded {
                Ok(state) => {
                    states.insert(state.data_id.clone(), state);
                }
                Err(e) => problems.push((pair.key.clone(), e.to_string())),
            }
        }
        Ok((states, problems, answer.index))
    }

    /// Writes `data_id`'s record if it is still at `expected` (`None`: only if there is
    /// none); returns it as stored, or [`EpochError::Conflict`] with what is there now.
    /// `in_sync` must contain `primary`.
    pub async fn put(
        &self,
        data_id: &DataId,
        epoch: Epoch,
        primary: &NodeId,
        in_sync: &[NodeId],
        expected: Option<u64>,
    ) -> Result<EpochState, EpochError> {
        let key = self.key(data_id);
        check(&key, primary, in_sync)?;
        let wire = Wire {
            epoch: epoch.0,
            primary: primary.to_string(),
            in_sync: in_sync.iter().map(ToString::to_string).collect(),
        };
        let value = serde_json::to_vec(&wire).map_err(|e| EpochError::Invalid {
            key: key.clone(),
            reason: format!("cannot encode: {e}"),
        })?;
        match self
            .client
            .kv_put_indexed(&key, &value, Some(expected.unwrap_or(0)))
            .await?
        {
            Some(modify_index) => Ok(EpochState {
                data_id: data_id.clone(),
                epoch,
                primary: primary.clone(),
                in_sync: in_sync.to_vec(),
                modify_index,
            }),
            None => Err(EpochError::Conflict {
                data_id: data_id.clone(),
                current: self.get(data_id).await?,
            }),
        }
    }

    /// Deletes `data_id`'s record whatever it holds (an operator removing a data ID).
    pub async fn delete_force(&self, data_id: &DataId) -> Result<(), EpochError> {
        self.client.kv_delete(&self.key(data_id), None).await?;
        Ok(())
    }
}

fn check(key: &str, primary: &NodeId, in_sync: &[NodeId]) -> Result<(), EpochError> {
    let invalid = |reason: String| EpochError::Invalid {
        key: key.to_string(),
        reason,
    };
    if !in_sync.contains(primary) {
        return Err(invalid(format!(
            "the primary {primary} is not in its own in-sync set"
        )));
    }
    for (i, n) in in_sync.iter().enumerate() {
        if in_sync[..i].contains(n) {
            return Err(invalid(format!("{n} appears twice in the in-sync set")));
        }
    }
    Ok(())
}

fn decode(
    key: &str,
    data_id: DataId,
    raw: &[u8],
    modify_index: u64,
) -> Result<EpochState, EpochError> {
    let invalid = |reason: String| EpochError::Invalid {
        key: key.to_string(),
        reason,
    };
    let wire: Wire = serde_json::from_slice(raw).map_err(|e| {
        invalid(format!(
            "not JSON like {{\"epoch\":1,\"primary\":\"node1\",\"in_sync\":[\"node1\"]}}: {e}"
        ))
    })?;
    let node = |s: &str| NodeId::parse(s).map_err(|e| invalid(e.to_string()));
    let primary = node(&wire.primary)?;
    let in_sync = wire
        .in_sync
        .iter()
        .map(|s| node(s))
        .collect::<Result<Vec<_>, _>>()?;
    check(key, &primary, &in_sync)?;
    Ok(EpochState {
        data_id,
        epoch: Epoch(wire.epoch),
        primary,
        in_sync,
        modify_index,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeId {
        NodeId::parse(s).expect("node id")
    }

    #[test]
    fn the_next_epoch_is_above_everything_it_follows() {
        let e = Epoch;
        assert_eq!(next_epoch(e(0), 0, e(0)), e(1), "the first epoch");
        assert_eq!(next_epoch(e(21), 5, e(3)), e(22), "after the ended one");
        assert_eq!(
            next_epoch(e(21), 37, e(3)),
            e(37),
            "the mapping's index, when later"
        );
        assert_eq!(
            next_epoch(e(21), 5, e(40)),
            e(41),
            "after the log's last epoch"
        );
    }

    #[test]
    fn decodes_valid_and_names_what_is_wrong() {
        let id = DataId::parse("d").expect("id");
        let ok = decode(
            "k",
            id.clone(),
            br#"{"epoch":7,"primary":"b","in_sync":["b","a"]}"#,
            9,
        )
        .expect("valid");
        assert_eq!(
            (
                ok.epoch,
                ok.primary.clone(),
                ok.in_sync.clone(),
                ok.modify_index
            ),
            (Epoch(7), n("b"), vec![n("b"), n("a")], 9)
        );
        assert!(ok.is_in_sync(&n("a")) && !ok.is_in_sync(&n("c")));
        for bad in [
            &b"node1"[..],
            br#"{"epoch":1,"primary":"a","in_sync":["b"]}"#,
            br#"{"epoch":1,"primary":"a","in_sync":["a","a"]}"#,
            br#"{"epoch":1,"primary":"a b","in_sync":["a b"]}"#,
        ] {
            let e = decode("the/key", id.clone(), bad, 1).expect_err("invalid");
            assert!(e.to_string().contains("the/key"), "{e}");
        }
    }
}
