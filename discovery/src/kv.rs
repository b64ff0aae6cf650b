//! Consul KV: get one key, list a prefix (blocking), put and delete with check-and-set.
//!
//! Invariants:
//! - `recurse` is sent only by [`ConsulClient::kv_list`]. Consul checks whether the
//!   parameter is *present*, never its value, so `recurse=false` on a delete would delete
//!   every key sharing the prefix (the `rs-consul` bug). Single-key calls never send it.
//! - A missing key is `None`, a missing prefix is an empty list carrying Consul's index
//!   (a 404 with `X-Consul-Index`), so a watcher can keep blocking on a prefix that does not
//!   exist yet.
//! - Values are bytes: base64-decoded on the way in, sent raw on the way out; a `null`
//!   value (a key written with no body) is empty.
//! - `kv_put`/`kv_delete` return Consul's own `true`/`false`: with `cas`, `false` means
//!   the index was stale and nothing was written.
//! - [`ConsulClient::kv_put_indexed`] writes through a one-operation transaction so that the
//!   caller learns the exact `ModifyIndex` its write produced (a plain PUT answers only
//!   `true`, and reading back afterwards could see someone else's later write). Keys go
//!   through the same checks as in a URL, so both paths accept exactly the same keys.

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::blocking::{Indexed, QueryOptions};
use crate::client::{ConsulClient, PLAIN_TIMEOUT, Param, encode_key};
use crate::error::DiscoveryError;

/// One KV entry as Consul stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvPair {
    /// The full key.
    pub key: String,
    /// The value's bytes (empty when Consul holds `null`).
    pub value: Vec<u8>,
    /// Raft index at which the key was created.
    pub create_index: u64,
    /// Raft index of the last write; pass it as `cas` to update only if nobody else wrote.
    pub modify_index: u64,
    /// Opaque flags set by the writer.
    pub flags: u64,
    /// The session holding a lock on this key, if any.
    pub session: Option<String>,
}

/// The wire form of a KV entry.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireKv {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    create_index: u64,
    #[serde(default)]
    modify_index: u64,
    #[serde(default)]
    flags: u64,
    #[serde(default)]
    session: Option<String>,
}

impl WireKv {
    fn decode(self, url: &str) -> Result<KvPair, DiscoveryError> {
        let value = match self.value {
            None => Vec::new(),
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| DiscoveryError::Decode {
                    url: url.to_string(),
                    source: serde::de::Error::custom(format!(
                        "value of key {:?} is not base64: {e}",
                        self.key
                    )),
                })?,
        };
        Ok(KvPair {
            key: self.key,
            value,
            create_index: self.create_index,
            modify_index: self.modify_index,
            flags: self.flags,
            session: self.session.filter(|s| !s.is_empty()),
        })
    }
}

fn decode_list(answer: &crate::client::Answer) -> Result<Vec<KvPair>, DiscoveryError> {
    // Consul answers `null`? Not for KV, but treat it as empty rather than failing.
    let wire: Option<Vec<WireKv>> = answer.json()?;
    wire.unwrap_or_default()
        .into_iter()
        .map(|w| w.decode(&answer.url))
        .collect()
}

impl ConsulClient {
    /// Reads one key; `None` if it does not exist. Never lists the keys under it.
    pub async fn kv_get(&self, key: &str) -> Result<Option<KvPair>, DiscoveryError> {
        let path = format!("/v1/kv/{}", encode_key(key, false)?);
        let answer = self
            .send(Method::GET, &path, &[], None, PLAIN_TIMEOUT)
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let answer = answer.success()?;
        let mut pairs = decode_list(&answer)?;
        // A single-key read answers a one-element list; look for the exact key anyway so a
        // misbehaving proxy cannot hand us a neighbour.
        let pos = pairs.iter().position(|p| p.key == key);
        Ok(pos.map(|i| pairs.swap_remove(i)))
    }

    /// Lists every key starting with `prefix` (`""` = the whole store), possibly blocking
    /// until something under it changes. A missing prefix is an empty list with an index.
    pub async fn kv_list(
        &self,
        prefix: &str,
        q: &QueryOptions,
    ) -> Result<Indexed<Vec<KvPair>>, DiscoveryError> {
        let path = format!("/v1/kv/{}", encode_key(prefix, true)?);
        let answer = self.get_blocking(&path, &[Param::Recurse], q).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(Indexed {
                value: Vec::new(),
                index: answer.index()?,
            });
        }
        let answer = answer.success()?;
        let index = answer.index()?;
        let mut value = decode_list(&answer)?;
        value.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Indexed { value, index })
    }

    /// Writes `value` at `key`. With `cas = Some(i)`, writes only if the key's
    /// `modify_index` is still `i` (`Some(0)`: only if the key does not exist). Returns
    /// Consul's answer: `false` means the CAS failed and nothing was written.
    pub async fn kv_put(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u64>,
    ) -> Result<bool, DiscoveryError> {
        let path = format!("/v1/kv/{}", encode_key(key, false)?);
        let params: Vec<Param> = cas.map(Param::Cas).into_iter().collect();
        let answer = self
            .send(
                Method::PUT,
                &path,
                &params,
                Some(value.to_vec()),
                PLAIN_TIMEOUT,
            )
            .await?
            .success()?;
        answer.json()
    }

    /// Deletes exactly `key` (never the keys under it). With `cas = Some(i)`, deletes only
    /// if the key's `modify_index` is still `i`. Returns Consul's answer; deleting a key
    /// that does not exist is `true` without `cas`.
    pub async fn kv_delete(&self, key: &str, cas: Option<u64>) -> Result<bool, DiscoveryError> {
        let path = format!("/v1/kv/{}", encode_key(key, false)?);
        let params: Vec<Param> = cas.map(Param::Cas).into_iter().collect();
        let answer = self
            .send(Method::DELETE, &path, &params, None, PLAIN_TIMEOUT)
            .await?
            .success()?;
        answer.json()
    }
}

/// One KV operation of a `/v1/txn` request.
#[derive(Serialize)]
struct TxnOp<'a> {
    #[serde(rename = "KV")]
    kv: TxnKv<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TxnKv<'a> {
    /// `set` (unconditional) or `cas`.
    verb: &'static str,
    key: &'a str,
    /// Base64, as the transaction endpoint wants it.
    value: String,
    /// The `cas` index; ignored by `set`.
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u64>,
}

/// The answer of `/v1/txn` (200 with results, or 409 with errors).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnAnswer {
    #[serde(default, deserialize_with = "crate::wire::null_as_default")]
    results: Vec<TxnResult>,
    #[serde(default, deserialize_with = "crate::wire::null_as_default")]
    errors: Vec<TxnError>,
}

#[derive(Deserialize)]
struct TxnResult {
    #[serde(rename = "KV")]
    kv: Option<WireKv>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnError {
    #[serde(default)]
    what: String,
}

/// How Consul 1.x words a failed `cas` inside a transaction (for both "index differs" and
/// "cas=0 but the key exists").
const STALE_INDEX: &str = "index is stale";

impl ConsulClient {
    /// Writes `value` at `key` and returns the key's `ModifyIndex` after the write, or
    /// `None` when `cas` did not match and nothing was written. `cas = None` writes
    /// unconditionally, `Some(0)` only creates, `Some(i)` writes only if the key's
    /// `ModifyIndex` is still `i`.
    ///
    /// An identical rewrite leaves the index where it was (Consul does not rewrite equal
    /// values, so watchers do not wake); the returned index is then the existing one.
    pub async fn kv_put_indexed(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u64>,
    ) -> Result<Option<u64>, DiscoveryError> {
        // Validated exactly as for a URL, though the key travels in the JSON body here.
        encode_key(key, false)?;
        let op = TxnOp {
            kv: TxnKv {
                verb: if cas.is_some() { "cas" } else { "set" },
                key,
                value: base64::engine::general_purpose::STANDARD.encode(value),
                index: cas,
            },
        };
        let url = format!("{}/v1/txn", self.base_url());
        let body =
            serde_json::to_vec(&[op]).map_err(|source| DiscoveryError::Decode { url, source })?;
        let answer = self
            .send(Method::PUT, "/v1/txn", &[], Some(body), PLAIN_TIMEOUT)
            .await?;
        match answer.status {
            StatusCode::OK => {
                let txn: TxnAnswer = answer.json()?;
                let kv = txn.results.into_iter().find_map(|r| r.kv);
                match kv {
                    Some(kv) => Ok(Some(kv.modify_index)),
                    None => Err(DiscoveryError::Decode {
                        url: answer.url.clone(),
                        source: serde::de::Error::custom(format!(
                            "the transaction writing {key:?} succeeded but returned no KV result"
                        )),
                    }),
                }
            }
            StatusCode::CONFLICT => {
                // 409 carries every failed operation; only a stale index is an answer, any
                // other reason (ACL, size) is an error to show as Consul worded it.
                let stale = answer
                    .json::<TxnAnswer>()
                    .is_ok_and(|t| t.errors.iter().any(|e| e.what.contains(STALE_INDEX)));
                if stale {
                    Ok(None)
                } else {
                    Err(answer.into_status_error())
                }
            }
            _ => Err(answer.into_status_error()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_values_and_nulls() {
        let json = r#"[
            {"LockIndex":0,"Key":"a","Flags":3,"Value":"bm9kZTEsbm9kZTI=","CreateIndex":5,"ModifyIndex":9},
            {"LockIndex":0,"Key":"b","Flags":0,"Value":null,"CreateIndex":6,"ModifyIndex":6,"Session":"s-1"}
        ]"#;
        let wire: Vec<WireKv> = serde_json::from_str(json).expect("json");
        let pairs: Vec<KvPair> = wire
            .into_iter()
            .map(|w| w.decode("u").expect("decode"))
            .collect();
        assert_eq!(pairs[0].value, b"node1,node2");
        assert_eq!((pairs[0].create_index, pairs[0].modify_index), (5, 9));
        assert_eq!(pairs[0].flags, 3);
        assert_eq!(pairs[0].session, None);
        assert!(pairs[1].value.is_empty());
        assert_eq!(pairs[1].session.as_deref(), Some("s-1"));
    }

    #[test]
    fn txn_bodies_are_what_consul_reads() {
        let op = TxnOp {
            kv: TxnKv {
                verb: "cas",
                key: "p/a",
                value: "bjE=".into(),
                index: Some(0),
            },
        };
        assert_eq!(
            serde_json::to_value([op]).expect("json"),
            serde_json::json!([{"KV": {"Verb": "cas", "Key": "p/a", "Value": "bjE=", "Index": 0}}])
        );
        let ok: TxnAnswer = serde_json::from_str(
            r#"{"Results":[{"KV":{"LockIndex":0,"Key":"p/a","Flags":0,"Value":null,
                "CreateIndex":13,"ModifyIndex":16}}],"Errors":null}"#,
        )
        .expect("json");
        assert_eq!(ok.results[0].kv.as_ref().map(|k| k.modify_index), Some(16));
        let stale: TxnAnswer = serde_json::from_str(
            r#"{"Results":null,"Errors":[{"OpIndex":0,"What":"failed to set key \"p/a\", index is stale"}]}"#,
        )
        .expect("json");
        assert!(stale.results.is_empty() && stale.errors[0].what.contains(STALE_INDEX));
    }

    #[test]
    fn bad_base64_is_a_decode_error_naming_the_key() {
        let wire: WireKv =
            serde_json::from_str(r#"{"Key":"k","Value":"!!!","CreateIndex":1,"ModifyIndex":1}"#)
                .expect("json");
        let e = wire.decode("http://x/v1/kv/k").expect_err("bad base64");
        assert!(matches!(e, DiscoveryError::Decode { .. }));
        assert!(e.to_string().contains("\"k\""), "{e}");
    }
}
