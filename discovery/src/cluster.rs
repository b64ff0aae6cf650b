//! The cluster credential: the shared secret a node presents when it opens `Replicate` on
//! another node, so that only cluster members replicate.
//!
//! Where: [`KvLayout::cluster_secret_key`] (`streaming/data.cluster/secret` for the default
//! prefix), beside the mappings and the epoch records, so that a policy granting
//! `key_prefix "streaming/data/"` (what a gateway needs) does not reveal it.
//!
//! Zero configuration: the first node that finds no secret creates one — 32 random bytes,
//! hex — by check-and-set on "must not exist" (`cas=0`); of two nodes racing, one write wins
//! and the other reads the winner's. Every node then reads the same value with its Consul
//! token. An operator who configures `node.cluster_secret` bypasses this entirely.

use ec_core::auth::Secret;

use crate::client::ConsulClient;
use crate::error::DiscoveryError;
use crate::layout::KvLayout;

/// Rounds of create-then-read before giving up (only a concurrent delete could use them).
const ATTEMPTS: usize = 5;

/// Reads the cluster secret, creating it first if there is none.
pub async fn provision_cluster_secret(
    consul: &ConsulClient,
    kv_prefix: &str,
) -> Result<Secret, DiscoveryError> {
    let key = KvLayout::new(kv_prefix).cluster_secret_key();
    for _ in 0..ATTEMPTS {
        if let Some(pair) = consul.kv_get(&key).await? {
            let text = String::from_utf8_lossy(&pair.value).into_owned();
            if let Some(secret) = Secret::new(text) {
                return Ok(secret);
            }
            // An empty value would let anyone in; replace it by CAS on its index.
            if consul
                .kv_put(&key, fresh().as_bytes(), Some(pair.modify_index))
                .await?
            {
                continue;
            }
        } else if consul.kv_put(&key, fresh().as_bytes(), Some(0)).await? {
            tracing::info!(%key, "created the cluster secret in Consul");
        }
    }
    Err(DiscoveryError::Status {
        url: key,
        status: 409,
        body: "the cluster secret kept changing while it was read; is something deleting it?"
            .to_owned(),
    })
}

/// A new random secret: 32 bytes as hex.
fn fresh() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_fresh_hex() {
        assert_eq!(fresh().len(), 64);
        assert_ne!(fresh(), fresh());
    }
}
