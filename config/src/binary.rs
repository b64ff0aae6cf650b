//! [`Binary`]: which program loads the settings. Each binary reads only some keys, and only
//! the rules of those keys may stop it from starting: a node-only rule (a health-check
//! interval below 1 s, a health port equal to the node port) must not keep `ec-gateway`,
//! `ec-console` or `ec-client` from running. A broken value of a key the binary does not
//! read becomes a warning naming the binary that would refuse it.

use std::fmt;

/// A program of this project, for [`crate::Loader::for_binary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Binary {
    /// `ec-node`: `node.*`, `consul.*`, `tls.*`, `security.*`, `limits.*`, `log.*`.
    Node,
    /// `ec-gateway`: `gateway.*`, `consul.*`, `tls.*`, `security.*`, `client.*`, `limits.*`,
    /// `log.*`.
    Gateway,
    /// `ec-console`: where the gateway is (`gateway.host`, `gateway.port`), `consul.*`,
    /// `tls.*`, `client.*`, `log.*`.
    Console,
    /// `ec-client`: where the gateway is (`gateway.host`, `gateway.port`), `tls.*`,
    /// `client.*`.
    Client,
}

impl Binary {
    /// The keys (a full key, or a section ending in `.`) this binary reads.
    fn reads_list(self) -> &'static [&'static str] {
        match self {
            Binary::Node => &["node.", "consul.", "tls.", "security.", "limits.", "log."],
            Binary::Gateway => &[
                "gateway.",
                "consul.",
                "tls.",
                "security.",
                "client.",
                "limits.",
                "log.",
            ],
            Binary::Console => &[
                "gateway.host",
                "gateway.port",
                "consul.",
                "tls.",
                "client.",
                "log.",
            ],
            Binary::Client => &["gateway.host", "gateway.port", "tls.", "client."],
        }
    }

    /// Whether this binary reads `key` (a dotted key such as `node.health_check.interval`).
    pub fn reads(self, key: &str) -> bool {
        self.reads_list().iter().any(|r| match r.strip_suffix('.') {
            Some(section) => key
                .strip_prefix(section)
                .is_some_and(|k| k.starts_with('.')),
            None => key == *r,
        })
    }

    /// The program's name, e.g. `ec-node`.
    pub fn name(self) -> &'static str {
        match self {
            Binary::Node => "ec-node",
            Binary::Gateway => "ec-gateway",
            Binary::Console => "ec-console",
            Binary::Client => "ec-client",
        }
    }
}

impl fmt::Display for Binary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether a rule of `keys` binds when `binary` loads (`None`: every rule binds).
pub(crate) fn binds(binary: Option<Binary>, keys: &[&str]) -> bool {
    binary.is_none_or(|b| keys.iter().all(|k| b.reads(k)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_table;

    #[test]
    fn every_key_is_read_by_some_binary() {
        let all = [
            Binary::Node,
            Binary::Gateway,
            Binary::Console,
            Binary::Client,
        ];
        for info in key_table() {
            assert!(
                all.iter().any(|b| b.reads(info.key)),
                "{} is read by no binary",
                info.key
            );
        }
    }

    #[test]
    fn sections_match_whole_names_only() {
        assert!(Binary::Node.reads("node.health_check.interval"));
        assert!(!Binary::Gateway.reads("node.health_check.interval"));
        assert!(Binary::Console.reads("gateway.port"));
        assert!(!Binary::Console.reads("gateway.metrics.port"));
        assert!(!Binary::Client.reads("consul.host"));
        assert!(!Binary::Node.reads("nodes.x"));
    }
}
