//! The Consul KV layout: every key this project reads or writes, derived from one setting,
//! the mapping prefix (`consul.kv_prefix`, `streaming/data/` by default). Nodes, gateways, the
//! console, the tests and the benchmark all take their keys from here; nothing else spells
//! them.
//!
//! | what | key | for the default prefix |
//! |---|---|---|
//! | a data ID's mapping | `<prefix><data_id>` | `streaming/data/orders` |
//! | a data ID's leader epoch | `<base>.epochs/<data_id>` | `streaming/data.epochs/orders` |
//! | the failover lock | `<base>.failover/lock` | `streaming/data.failover/lock` |
//! | the cluster secret | `<base>.cluster/secret` | `streaming/data.cluster/secret` |
//!
//! `<base>` is the prefix without its trailing `/`. Everything but the mappings sits *beside*
//! the mapping prefix, never under it: a listing of the mappings never sees these keys (they
//! would be nested keys there, reported as problems), and an ACL policy granting
//! `key_prefix "streaming/data/"` (what a gateway reads) reveals none of them. A prefix of
//! `""` or `"/"` (refused by the configuration, possible through the library) would put them
//! at the root: they go under `event-catcher.` instead.

use ec_core::DataId;

/// `consul.kv_prefix` by default (the configuration's default too; a test in the gateway's
/// `cli.rs` checks that the two agree).
pub const DEFAULT_KV_PREFIX: &str = "streaming/data/";

/// Where one deployment's keys live, given its mapping prefix. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvLayout {
    /// The mapping prefix, as configured (used as given: keys are the prefix glued to the
    /// data ID).
    prefix: String,
}

impl Default for KvLayout {
    fn default() -> Self {
        KvLayout::new(DEFAULT_KV_PREFIX)
    }
}

impl KvLayout {
    /// The layout around the mapping prefix `kv_prefix` (e.g. `streaming/data/`).
    pub fn new(kv_prefix: &str) -> KvLayout {
        KvLayout {
            prefix: kv_prefix.to_owned(),
        }
    }

    /// The mapping prefix: every mapping key starts with it.
    pub fn mapping_prefix(&self) -> &str {
        &self.prefix
    }

    /// The key of `data_id`'s mapping: `<prefix><data_id>`.
    pub fn mapping_key(&self, data_id: &DataId) -> String {
        format!("{}{data_id}", self.prefix)
    }

    /// The prefix of the leader-epoch records: `<base>.epochs/`.
    pub fn epoch_prefix(&self) -> String {
        self.beside("epochs/")
    }

    /// The key of `data_id`'s leader-epoch record: `<base>.epochs/<data_id>`.
    pub fn epoch_key(&self, data_id: &DataId) -> String {
        format!("{}{data_id}", self.epoch_prefix())
    }

    /// The prefix of the gateways' failover keys (the lock): `<base>.failover/`.
    pub fn failover_prefix(&self) -> String {
        self.beside("failover/")
    }

    /// The key of the lock the gateway that promotes holds: `<base>.failover/lock`.
    pub fn failover_lock_key(&self) -> String {
        format!("{}lock", self.failover_prefix())
    }

    /// The key of the secret cluster members replicate with: `<base>.cluster/secret`.
    pub fn cluster_secret_key(&self) -> String {
        self.beside("cluster/secret")
    }

    /// `<base>.<rest>`, where `<base>` is the prefix without its trailing `/` (or
    /// `event-catcher` when that leaves nothing).
    fn beside(&self, rest: &str) -> String {
        let base = self.prefix.strip_suffix('/').unwrap_or(&self.prefix);
        let base = if base.is_empty() {
            "event-catcher"
        } else {
            base
        };
        format!("{base}.{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DataId {
        DataId::parse(s).expect("valid")
    }

    #[test]
    fn keys_of_the_default_prefix() {
        let l = KvLayout::default();
        assert_eq!(l.mapping_prefix(), "streaming/data/");
        assert_eq!(l.mapping_key(&id("orders")), "streaming/data/orders");
        assert_eq!(l.epoch_prefix(), "streaming/data.epochs/");
        assert_eq!(l.epoch_key(&id("orders")), "streaming/data.epochs/orders");
        assert_eq!(l.failover_prefix(), "streaming/data.failover/");
        assert_eq!(l.failover_lock_key(), "streaming/data.failover/lock");
        assert_eq!(l.cluster_secret_key(), "streaming/data.cluster/secret");
    }

    #[test]
    fn nothing_lands_under_the_mapping_prefix_or_at_the_root() {
        for prefix in ["streaming/data/", "x/", "", "/"] {
            let l = KvLayout::new(prefix);
            for key in [
                l.epoch_key(&id("d")),
                l.failover_lock_key(),
                l.cluster_secret_key(),
            ] {
                assert!(
                    prefix.is_empty() || !key.starts_with(prefix),
                    "{key} under {prefix:?}"
                );
                assert!(!key.starts_with('.') && !key.starts_with('/'), "{key}");
            }
        }
        assert_eq!(KvLayout::new("ec/map").epoch_prefix(), "ec/map.epochs/");
        assert_eq!(KvLayout::new("/").epoch_prefix(), "event-catcher.epochs/");
        assert_eq!(
            KvLayout::new("").failover_lock_key(),
            "event-catcher.failover/lock"
        );
        assert_eq!(
            KvLayout::new("/").cluster_secret_key(),
            "event-catcher.cluster/secret"
        );
    }
}
