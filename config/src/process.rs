//! Addresses as binaries take them: `--consul-addr HOST:PORT` onto `consul.host` and
//! `consul.port`, the Consul agent's URL from the validated settings, and whether standard
//! error takes colour ([`stderr_colors`]). Flags themselves
//! (clap), error reports and the shutdown signal live in the binaries' `ec-cli` crate.

use std::io::IsTerminal;

use crate::{ConsulConfig, Loader};

/// Whether standard error may carry ANSI colours: it is a terminal, and `NO_COLOR`
/// (<https://no-color.org>) is unset or empty. A log file or a pipe gets plain text.
pub fn stderr_colors() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `host:port` → (host, Some(port)); `host` → (host, None). Accepts `http://` and IPv6 in
/// brackets, which are taken off.
pub fn split_host_port(addr: &str) -> (String, Option<String>) {
    let addr = addr
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/');
    match addr.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.ends_with(':') => {
            (h.trim_matches(['[', ']']).to_owned(), Some(p.to_owned()))
        }
        _ => (addr.to_owned(), None),
    }
}

impl Loader {
    /// The `--consul-addr HOST[:PORT]` flag: sets `consul.host` and, when given, `consul.port`,
    /// both reported as coming from `flag`.
    pub fn consul_addr_flag(self, flag: &str, addr: Option<&str>) -> Self {
        let (host, port) = match addr.map(split_host_port) {
            Some((h, p)) => (Some(h), p),
            None => (None, None),
        };
        self.flag("consul.host", flag, host)
            .flag("consul.port", flag, port)
    }
}

impl ConsulConfig {
    /// Base URL of the agent's HTTP API, e.g. `http://localhost:8500` (IPv6 in brackets);
    /// `https://` when `consul.ca_file` is set.
    pub fn http_url(&self) -> String {
        let scheme = if self.ca_file.is_some() {
            "https"
        } else {
            "http"
        };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("127.0.0.1:8500"),
            ("127.0.0.1".into(), Some("8500".into()))
        );
        assert_eq!(
            split_host_port("http://consul:8501/"),
            ("consul".into(), Some("8501".into()))
        );
        assert_eq!(split_host_port("consul"), ("consul".into(), None));
        assert_eq!(
            split_host_port("[::1]:8500"),
            ("::1".into(), Some("8500".into()))
        );
    }

    #[test]
    fn consul_addr_flag_sets_both_keys_and_url() {
        let loaded = Loader::new()
            .default_file(None)
            .consul_addr_flag("--consul-addr", Some("10.0.0.9:8600"))
            .load()
            .expect("valid");
        assert_eq!(loaded.config.consul.http_url(), "http://10.0.0.9:8600");
        let err = Loader::new()
            .default_file(None)
            .consul_addr_flag("--consul-addr", Some("h:99999"))
            .load()
            .expect_err("bad port")
            .to_string();
        assert!(
            err.contains("--consul-addr") && err.contains("consul.port"),
            "{err}"
        );
        let v6 = ConsulConfig {
            host: "::1".into(),
            ..crate::Config::default().consul
        };
        assert_eq!(v6.http_url(), "http://[::1]:8500");
    }
}
