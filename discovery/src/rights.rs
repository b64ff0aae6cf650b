//! What the Consul token may do, checked at start (and again now and then) so that a token
//! with part of the rights a binary needs is reported at once, naming the missing rule,
//! instead of surfacing later as a failover that never happens or an epoch that cannot be
//! claimed.
//!
//! How: by asking Consul to do each thing in a way that cannot change anything, so that
//! Consul's own ACL resolver decides — policies, roles, service identities, the default
//! policy and whatever a later Consul adds — and this crate never re-implements rule
//! matching. The token's self-description (`/v1/acl/token/self`) was the alternative: it
//! names the token's policies, but reading their rules needs `acl:read`, which a least-
//! privilege token does not have, and evaluating them would mean copying Consul's
//! longest-prefix and default-policy logic.
//! - key read: a single-key `GET`; Consul answers 403 without `key:read` (and 404 or the
//!   value with it);
//! - key write: a `PUT` with `cas=<u64::MAX>`: Consul checks `key:write` before the
//!   check-and-set, and no key ever has that ModifyIndex, so the write never happens;
//! - session write: the one right with no harmless probe — a session is created (named
//!   for the check, with a 10 s TTL) and destroyed at once.

use std::time::Duration;

use crate::client::ConsulClient;
use crate::error::DiscoveryError;
use crate::layout::KvLayout;

/// The key under a prefix used to probe write rights; never written.
const PROBE_KEY: &str = "ec-rights-probe";

/// One thing a binary needs from Consul.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    /// What the binary does with it, for the message ("claim leader epochs").
    pub purpose: &'static str,
    /// How it is checked.
    pub check: Check,
    /// The ACL rule that grants it, as README "Consul ACLs" writes it.
    pub rule: String,
}

/// How a [`Need`] is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// `key:read` on this key.
    KeyRead(String),
    /// `key:write` on this key.
    KeyWrite(String),
    /// `session:write` on the agent's node.
    SessionWrite,
}

/// What a node needs (see README "Consul ACLs"): read the mappings, write the epoch
/// records, and, unless `node.cluster_secret` is configured (`shared_secret`), read the
/// cluster secret (created once by the first node; reading is what every later start
/// needs). Registering its service is checked by the registration itself.
pub fn node_needs(kv_prefix: &str, shared_secret: bool) -> Vec<Need> {
    let layout = KvLayout::new(kv_prefix);
    let epochs = layout.epoch_prefix();
    let secret = layout.cluster_secret_key();
    let mut needs = vec![
        Need {
            purpose: "read the data-to-node mappings",
            check: Check::KeyRead(kv_prefix.to_owned()),
            rule: format!("key_prefix \"{kv_prefix}\" {{ policy = \"read\" }}"),
        },
        Need {
            purpose: "claim leader epochs and record in-sync sets",
            check: Check::KeyWrite(format!("{epochs}{PROBE_KEY}")),
            rule: format!("key_prefix \"{epochs}\" {{ policy = \"write\" }}"),
        },
    ];
    if !shared_secret {
        needs.push(Need {
            purpose: "read the cluster secret that replication checks",
            check: Check::KeyRead(secret.clone()),
            rule: format!("key \"{secret}\" {{ policy = \"write\" }}"),
        });
    }
    needs
}

/// What a gateway needs: read the mappings; with automatic failover also take the failover
/// lock (a session and a key), rewrite mappings and fence epochs when it promotes.
pub fn gateway_needs(kv_prefix: &str, auto_failover: bool) -> Vec<Need> {
    let mut needs = vec![Need {
        purpose: "read the data-to-node mappings",
        check: Check::KeyRead(kv_prefix.to_owned()),
        rule: format!("key_prefix \"{kv_prefix}\" {{ policy = \"read\" }}"),
    }];
    if auto_failover {
        let layout = KvLayout::new(kv_prefix);
        let failover = layout.failover_prefix();
        let epochs = layout.epoch_prefix();
        needs.extend([
            Need {
                purpose: "hold the failover lock (gateway.auto_failover)",
                check: Check::KeyWrite(layout.failover_lock_key()),
                rule: format!("key_prefix \"{failover}\" {{ policy = \"write\" }}"),
            },
            Need {
                purpose: "hold the failover lock's session (gateway.auto_failover)",
                check: Check::SessionWrite,
                rule: "session_prefix \"\" { policy = \"write\" }".to_owned(),
            },
            Need {
                purpose: "rewrite a mapping when promoting a replica",
                check: Check::KeyWrite(format!("{kv_prefix}{PROBE_KEY}")),
                rule: format!("key_prefix \"{kv_prefix}\" {{ policy = \"write\" }}"),
            },
            Need {
                purpose: "fence the old primary's epoch when promoting",
                check: Check::KeyWrite(format!("{epochs}{PROBE_KEY}")),
                rule: format!("key_prefix \"{epochs}\" {{ policy = \"write\" }}"),
            },
        ]);
    }
    needs
}

/// The needs the token lacks, each as a sentence naming the rule to add. `Err` when Consul
/// could not be asked (unreachable, or an answer that is neither yes nor a denial).
pub async fn missing_rights(
    client: &ConsulClient,
    needs: &[Need],
) -> Result<Vec<String>, DiscoveryError> {
    let mut missing = Vec::new();
    for need in needs {
        let answer = match &need.check {
            Check::KeyRead(key) => client.kv_get(key).await.map(drop),
            Check::KeyWrite(key) => client.kv_put(key, b"", Some(u64::MAX)).await.map(drop),
            Check::SessionWrite => match client
                .session_create("ec-rights-probe", Duration::from_secs(10), Duration::ZERO)
                .await
            {
                Ok(id) => client.session_destroy(&id).await,
                Err(e) => Err(e),
            },
        };
        match answer {
            Ok(()) => {}
            Err(e) if e.is_permission_denied() => missing.push(format!(
                "the Consul token (consul.token) cannot {}: add {} to its policy",
                need.purpose, need.rule
            )),
            Err(e) => return Err(e),
        }
    }
    Ok(missing)
}

/// How often the rights are checked again: a policy fixed in Consul is noticed without a
/// restart (and one taken away, before it is needed).
pub const RIGHTS_RECHECK: Duration = Duration::from_secs(30);

/// Checks `needs` now and every [`RIGHTS_RECHECK`] until `stop`, logging each change once
/// (an error per missing right, or that all are there again) as `binary` (`"node"`,
/// `"gateway"`). The receiver holds the current list of missing rights (empty: all there,
/// or not known yet).
pub fn watch_rights(
    client: ConsulClient,
    needs: Vec<Need>,
    binary: &'static str,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::sync::watch::Receiver<Vec<String>> {
    let (tx, rx) = tokio::sync::watch::channel(Vec::new());
    tokio::spawn(async move {
        loop {
            match missing_rights(&client, &needs).await {
                Ok(missing) if missing != *tx.borrow() => {
                    if missing.is_empty() {
                        tracing::info!(binary, "the Consul token now has every right needed");
                    }
                    for problem in &missing {
                        tracing::error!(binary, %problem, "Consul ACL: a right is missing");
                    }
                    tx.send_replace(missing);
                }
                Ok(_) => {}
                // Consul unreachable: the watches report that; check again later.
                Err(e) => {
                    tracing::debug!(binary, error = %e, "cannot check the Consul token's rights")
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(RIGHTS_RECHECK) => {}
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_name_the_keys_beside_the_prefix() {
        let node = node_needs("streaming/data/", false);
        assert_eq!(node.len(), 3);
        assert_eq!(node_needs("streaming/data/", true).len(), 2);
        assert!(node.iter().any(|n| n.check
            == Check::KeyWrite("streaming/data.epochs/ec-rights-probe".into())));
        assert!(
            node.iter()
                .any(|n| n.rule == "key_prefix \"streaming/data.epochs/\" { policy = \"write\" }")
        );
        assert_eq!(gateway_needs("streaming/data/", false).len(), 1);
        let gateway = gateway_needs("streaming/data/", true);
        assert!(
            gateway
                .iter()
                .any(|n| n.check == Check::KeyWrite("streaming/data.failover/lock".into()))
        );
        assert!(gateway.iter().any(|n| n.check == Check::SessionWrite));
    }
}
