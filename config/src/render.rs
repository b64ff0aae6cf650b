//! Printing a [`Config`] as YAML for `--print-config`.
//!
//! The output has the layout of `config/config.yaml` (sections from the dotted keys, in key
//! table order) and reads back through the loader to the same config: "unset" optional values
//! print as the value that means unset (`""`, `0`, `0s`). Strings are always double-quoted so
//! that values like `no`, `1.0` or `*` stay strings. The exceptions to the round trip are the
//! secrets (`consul.token`, `node.cluster_secret`, `security.tokens`, `client.token`),
//! printed as `<redacted>` when set.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use ec_core::auth::{Secret, TokenTable};

use crate::keys::{OPS, key_table};
use crate::{AcksPolicy, Config, FsyncPolicy, LogFormat, LogLevel};

/// One printed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rendered {
    /// Printed double-quoted.
    Quoted(String),
    /// Printed as is (numbers, booleans, enum names).
    Plain(String),
    /// Printed as a flow sequence of quoted strings.
    List(Vec<String>),
}

/// How a final config value prints.
pub(crate) trait Render {
    fn render(&self) -> Rendered;
}

impl Render for String {
    fn render(&self) -> Rendered {
        Rendered::Quoted(self.clone())
    }
}

impl Render for u16 {
    fn render(&self) -> Rendered {
        Rendered::Plain(self.to_string())
    }
}

impl Render for u64 {
    fn render(&self) -> Rendered {
        Rendered::Plain(self.to_string())
    }
}

impl Render for bool {
    fn render(&self) -> Rendered {
        Rendered::Plain(self.to_string())
    }
}

impl Render for Duration {
    fn render(&self) -> Rendered {
        Rendered::Quoted(humantime::format_duration(*self).to_string())
    }
}

impl Render for PathBuf {
    fn render(&self) -> Rendered {
        // A non-UTF-8 path cannot be written in YAML; the lossy form is the best we can show.
        Rendered::Quoted(self.to_string_lossy().into_owned())
    }
}

impl Render for Vec<String> {
    fn render(&self) -> Rendered {
        Rendered::List(self.clone())
    }
}

impl Render for Option<String> {
    fn render(&self) -> Rendered {
        Rendered::Quoted(self.clone().unwrap_or_default())
    }
}

impl Render for Option<PathBuf> {
    fn render(&self) -> Rendered {
        self.clone().unwrap_or_default().render()
    }
}

impl Render for Option<u64> {
    fn render(&self) -> Rendered {
        self.unwrap_or(0).render()
    }
}

/// `None` is the key's 0 ("one per core").
impl Render for Option<NonZeroUsize> {
    fn render(&self) -> Rendered {
        self.map_or(0, NonZeroUsize::get).render()
    }
}

impl Render for Option<Duration> {
    fn render(&self) -> Rendered {
        self.unwrap_or(Duration::ZERO).render()
    }
}

impl Render for usize {
    fn render(&self) -> Rendered {
        Rendered::Plain(self.to_string())
    }
}

impl Render for u32 {
    fn render(&self) -> Rendered {
        Rendered::Plain(self.to_string())
    }
}

// Secrets render as themselves only for the round-trip shape; `to_yaml` redacts every key
// in SECRET_KEYS before printing.
impl Render for Option<Secret> {
    fn render(&self) -> Rendered {
        Rendered::Quoted(
            self.as_ref()
                .map(|s| s.expose().to_owned())
                .unwrap_or_default(),
        )
    }
}

impl Render for TokenTable {
    fn render(&self) -> Rendered {
        if self.is_empty() {
            Rendered::List(Vec::new())
        } else {
            Rendered::Quoted("<redacted>".to_owned())
        }
    }
}

impl Render for FsyncPolicy {
    fn render(&self) -> Rendered {
        Rendered::Plain(self.to_string())
    }
}

impl Render for AcksPolicy {
    fn render(&self) -> Rendered {
        Rendered::Plain(self.to_string())
    }
}

impl Render for LogLevel {
    fn render(&self) -> Rendered {
        Rendered::Plain(self.to_string())
    }
}

impl Render for LogFormat {
    fn render(&self) -> Rendered {
        Rendered::Plain(self.to_string())
    }
}

/// Keys whose value must never be printed.
const SECRET_KEYS: &[&str] = &[
    "consul.token",
    "node.cluster_secret",
    "security.tokens",
    "client.token",
];

pub(crate) fn to_yaml(config: &Config) -> String {
    to_yaml_noted(config, &BTreeMap::new())
}

/// [`to_yaml`] with `# note` after the value of each key in `notes`.
pub(crate) fn to_yaml_noted(config: &Config, notes: &BTreeMap<&'static str, String>) -> String {
    let mut out = String::new();
    let mut open: Vec<&str> = Vec::new();
    for (info, ops) in key_table().iter().zip(OPS) {
        let mut parts: Vec<&str> = info.key.split('.').collect();
        let leaf = parts.pop().unwrap_or_default();
        // Close sections that this key is not in, open the ones it is in.
        let common = open.iter().zip(&parts).take_while(|(a, b)| a == b).count();
        open.truncate(common);
        for section in &parts[common..] {
            out.push_str(&"  ".repeat(open.len()));
            out.push_str(section);
            out.push_str(":\n");
            open.push(section);
        }
        let mut value = (ops.render)(config);
        if SECRET_KEYS.contains(&info.key)
            && value != Rendered::Quoted(String::new())
            && value != Rendered::List(Vec::new())
        {
            value = Rendered::Quoted("<redacted>".to_owned());
        }
        out.push_str(&"  ".repeat(open.len()));
        out.push_str(leaf);
        out.push_str(": ");
        match value {
            Rendered::Quoted(text) => out.push_str(&quote(&text)),
            Rendered::Plain(text) => out.push_str(&text),
            Rendered::List(items) => {
                let items: Vec<String> = items.iter().map(|item| quote(item)).collect();
                out.push('[');
                out.push_str(&items.join(", "));
                out.push(']');
            }
        }
        if let Some(note) = notes.get(info.key) {
            out.push_str("  # ");
            out.push_str(&note.replace('\n', " "));
        }
        out.push('\n');
    }
    out
}

/// A YAML double-quoted scalar: backslash, quote and control characters escaped.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_awkward_strings() {
        assert_eq!(quote("a\"b\\c\nd\u{1}"), r#""a\"b\\c\nd\u0001""#);
    }

    #[test]
    fn default_yaml_has_nested_sections() {
        let yaml = Config::default().to_yaml();
        assert!(
            yaml.starts_with("gateway:\n  host: \"0.0.0.0\"\n  port: 50051\n"),
            "{yaml}"
        );
        assert!(
            yaml.contains("\n  health_check:\n    path: \"/health\"\n"),
            "{yaml}"
        );
        assert!(
            yaml.contains("\nconsul:\n  host: \"localhost\"\n"),
            "{yaml}"
        );
        assert!(yaml.contains("\n  token: \"\"\n"), "{yaml}");
    }
}
