//! [`Loader`]: reads the layers (defaults, YAML file, `EVENT_CATCHER_*`, flags) in that order
//! into one [`PartialConfig`], remembering which layer set each key, then validates once.
//!
//! The order is fixed by [`Loader::load`], not by the order of the builder calls, so a flag
//! always beats the environment, which always beats the file. All four layers go through the
//! per-key parsers of the key table, so `EVENT_CATCHER_NODE_PORT=x`, `node: {port: x}` and a
//! `--port x` flag are parsed, and rejected, the same way. The loader never reads the process
//! environment by itself: the caller passes it in, which keeps tests free of global state.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_yaml::Value;

use crate::binary::{Binary, binds};
use crate::keys::{OPS, RawValue, index_of, index_of_env, key_table};
use crate::partial::PartialConfig;
use crate::validate::{Origins, validate};
use crate::{Config, ConfigError, Source};

/// The file read when no `--config` is given, relative to the working directory, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "config/config.yaml";

/// Prefix of the environment variables that set keys.
pub const ENV_PREFIX: &str = "EVENT_CATCHER_";

/// Collects the layers, then [`Loader::load`]s them into a [`Config`].
// No `Debug`: it holds environment values, which may include the Consul token.
#[derive(Clone)]
pub struct Loader {
    /// Whose rules bind; `None`: every rule.
    binary: Option<Binary>,
    config_file: Option<PathBuf>,
    default_file: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
    flags: Vec<FlagLayer>,
}

/// One piece of the flag layer, applied in the order given.
#[derive(Clone)]
enum FlagLayer {
    Value {
        key: String,
        value: String,
        source: Source,
    },
    Partial {
        partial: Box<PartialConfig>,
        source: Source,
    },
}

/// The result of [`Loader::load`].
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated settings.
    pub config: Config,
    /// Things the operator should hear about but that do not stop the process, such as an
    /// unknown `EVENT_CATCHER_*` variable. Print or log them at warning level.
    pub warnings: Vec<String>,
    /// The YAML file that was read, if any.
    pub file: Option<PathBuf>,
    /// The layer that set each key's effective value, by dotted key.
    pub origins: BTreeMap<&'static str, Source>,
    /// Keys no layer set whose value is not their default, because a default would have
    /// conflicted with a key the operator did set; with why, as `--print-config` shows it.
    pub derived: BTreeMap<&'static str, String>,
}

impl Loaded {
    /// The effective settings as YAML, for `--print-config`: [`Config::to_yaml`], with a
    /// comment on each [`Loaded::derived`] key saying why it has that value.
    pub fn to_yaml(&self) -> String {
        crate::render::to_yaml_noted(&self.config, &self.derived)
    }
}

impl Default for Loader {
    fn default() -> Self {
        Self::new()
    }
}

impl Loader {
    /// A loader with only the defaults and [`DEFAULT_CONFIG_FILE`] (read if it exists).
    pub fn new() -> Self {
        Loader {
            binary: None,
            config_file: None,
            default_file: Some(PathBuf::from(DEFAULT_CONFIG_FILE)),
            env: Vec::new(),
            flags: Vec::new(),
        }
    }

    /// Checks only the rules of the keys `binary` reads: a broken value of any other key is
    /// a warning in [`Loaded::warnings`], not an error. Without this, every rule binds.
    pub fn for_binary(mut self, binary: Binary) -> Self {
        self.binary = Some(binary);
        self
    }

    /// The file given with `--config`: when `Some`, it is read instead of the default file
    /// and must exist.
    pub fn config_file(mut self, path: Option<PathBuf>) -> Self {
        self.config_file = path;
        self
    }

    /// The file read when no `--config` is given, if it exists ([`DEFAULT_CONFIG_FILE`]
    /// unless changed); `None` reads no file. Tests use this to stay independent of the
    /// working directory.
    pub fn default_file(mut self, path: Option<PathBuf>) -> Self {
        self.default_file = path;
        self
    }

    /// The environment: binaries pass `std::env::vars_os()`, tests a list or map. Only
    /// `EVENT_CATCHER_*` variables are kept. An empty value counts as unset, as in the
    /// original (Viper) implementation.
    pub fn env<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        let prefix = ENV_PREFIX.as_bytes();
        self.env.extend(
            vars.into_iter()
                .map(|(name, value)| (name.into(), value.into()))
                .filter(|(name, _)| name.as_encoded_bytes().starts_with(prefix)),
        );
        self
    }

    /// A command-line flag: sets `key` (e.g. `node.port`) to `value`, parsed like the
    /// environment variable of that key, with `flag` (e.g. `--port`) named as the source in
    /// errors. `None` (the flag was not given) changes nothing, so a clap `Option<T>` field
    /// can be passed as is.
    pub fn flag<V: ToString>(self, key: &str, flag: &str, value: Option<V>) -> Self {
        match value {
            Some(value) => self.set(key, value.to_string(), Source::Flag(flag.to_owned())),
            None => self,
        }
    }

    /// Sets `key` to `value` (parsed like its environment variable) in the flag layer, with
    /// any `source`. An unknown key is reported by [`Loader::load`].
    pub fn set(mut self, key: &str, value: impl Into<String>, source: Source) -> Self {
        self.flags.push(FlagLayer::Value {
            key: key.to_owned(),
            value: value.into(),
            source,
        });
        self
    }

    /// Adds already-typed values to the flag layer: every field that is `Some` overrides the
    /// lower layers and is reported as coming from `source`.
    pub fn layer(mut self, partial: PartialConfig, source: Source) -> Self {
        self.flags.push(FlagLayer::Partial {
            partial: Box::new(partial),
            source,
        });
        self
    }

    /// Reads and merges the layers, then validates them into a [`Config`].
    pub fn load(self) -> Result<Loaded, ConfigError> {
        let mut layers = Layers {
            binary: self.binary,
            ..Layers::default()
        };
        for (index, info) in key_table().iter().enumerate() {
            layers.apply(
                index,
                &RawValue::Text(info.default.to_owned()),
                Source::Default,
            )?;
        }

        let file = match (self.config_file, self.default_file) {
            (Some(path), _) => {
                let text = read(&path)?;
                Some((path, text))
            }
            (None, Some(path)) => match read(&path) {
                Ok(text) => Some((path, text)),
                Err(ConfigError::ReadFile { source, .. })
                    if source.kind() == io::ErrorKind::NotFound =>
                {
                    None
                }
                Err(e) => return Err(e),
            },
            (None, None) => None,
        };
        if let Some((path, text)) = &file {
            layers.apply_yaml(path, text)?;
        }

        layers.apply_env(self.env)?;

        for flag in self.flags {
            match flag {
                FlagLayer::Value { key, value, source } => {
                    let index = index_of(&key).ok_or_else(|| ConfigError::UnknownKey {
                        hint: unknown_key_hint(&key),
                        key,
                        origin: source.clone(),
                    })?;
                    layers.apply(index, &RawValue::Text(value), source)?;
                }
                FlagLayer::Partial {
                    mut partial,
                    source,
                } => {
                    for (info, ops) in key_table().iter().zip(OPS) {
                        if (ops.take)(&mut layers.partial, &mut partial) {
                            layers.origins.insert(info.key, source.clone());
                        }
                    }
                }
            }
        }

        let validated = validate(layers.partial, &layers.origins, self.binary)?;
        let mut warnings = layers.warnings;
        warnings.extend(validated.warnings);
        Ok(Loaded {
            config: validated.config,
            warnings,
            file: file.map(|(path, _)| path),
            origins: layers.origins,
            derived: validated.derived,
        })
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })
}

/// The layers merged so far.
#[derive(Default)]
struct Layers {
    binary: Option<Binary>,
    partial: PartialConfig,
    origins: Origins,
    warnings: Vec<String>,
}

impl Layers {
    /// Parses `raw` into key number `index`, overriding any lower layer.
    /// A value that does not parse is an error, or, for a key the binary does not read, a
    /// warning that leaves the lower layer's value in place.
    fn apply(&mut self, index: usize, raw: &RawValue, source: Source) -> Result<(), ConfigError> {
        let key = key_table()[index].key;
        if let Err(expected) = (OPS[index].parse)(&mut self.partial, raw) {
            let error = ConfigError::Invalid {
                key: key.to_owned(),
                value: raw.shown(),
                origin: source,
                expected,
            };
            return match self.binary {
                Some(binary) if !binds(Some(binary), &[key]) => {
                    self.warnings.push(format!(
                        "{error} (ignored: {binary} does not use {key}; other programs will refuse it)"
                    ));
                    Ok(())
                }
                _ => Err(error),
            };
        }
        self.origins.insert(key, source);
        Ok(())
    }

    fn apply_yaml(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let doc: Value = serde_yaml::from_str(text).map_err(|e| {
            let location = e.location();
            let mut message = e.to_string();
            if let Some(at) = &location {
                // The error's own text repeats the position that our message leads with.
                let repeated = format!(" at line {} column {}", at.line(), at.column());
                if let Some(start) = message.find(&repeated) {
                    message.replace_range(start..start + repeated.len(), "");
                }
            }
            ConfigError::Syntax {
                path: path.to_owned(),
                line: location.as_ref().map(|l| l.line()),
                column: location.as_ref().map(|l| l.column()),
                message,
            }
        })?;
        match doc {
            // An empty file, or one with only comments, sets nothing.
            Value::Null => Ok(()),
            Value::Mapping(map) => self.apply_mapping(&map, "", path),
            other => Err(ConfigError::Invalid {
                key: "(top level)".to_owned(),
                value: describe(&other),
                origin: Source::File(path.to_owned()),
                expected: format!("a mapping with the sections {}", sections("").join(", ")),
            }),
        }
    }

    /// Applies one YAML mapping whose keys sit under `prefix` (`""` or `"node."`).
    fn apply_mapping(
        &mut self,
        map: &serde_yaml::Mapping,
        prefix: &str,
        path: &Path,
    ) -> Result<(), ConfigError> {
        let origin = || Source::File(path.to_owned());
        for (name, value) in map {
            let key = format!("{prefix}{}", describe(name));
            if let Some(index) = index_of(&key) {
                match yaml_value(value) {
                    // `key:` with nothing after it leaves the key to lower layers.
                    Ok(None) => {}
                    Ok(Some(raw)) => self.apply(index, &raw, origin())?,
                    Err(expected) => {
                        return Err(ConfigError::Invalid {
                            key,
                            value: describe(value),
                            origin: origin(),
                            expected,
                        });
                    }
                }
            } else if !sections(&key).is_empty() {
                match value {
                    Value::Mapping(inner) => self.apply_mapping(inner, &format!("{key}."), path)?,
                    Value::Null => {}
                    other => {
                        return Err(ConfigError::Invalid {
                            expected: format!(
                                "a section with the keys {}",
                                sections(&key).join(", ")
                            ),
                            key,
                            value: describe(other),
                            origin: origin(),
                        });
                    }
                }
            } else {
                return Err(ConfigError::UnknownKey {
                    hint: unknown_key_hint(&key),
                    key,
                    origin: origin(),
                });
            }
        }
        Ok(())
    }

    fn apply_env(&mut self, vars: Vec<(OsString, OsString)>) -> Result<(), ConfigError> {
        let mut vars = vars;
        // Sorted, so that warnings and the first error do not depend on the environment's order.
        vars.sort();
        for (name, value) in vars {
            let Some(name) = name.to_str() else {
                self.warnings.push(format!(
                    "ignoring environment variable {} (its name is not UTF-8)",
                    name.to_string_lossy()
                ));
                continue;
            };
            let Some(index) = index_of_env(name) else {
                self.warnings.push(unknown_env_warning(name));
                continue;
            };
            let Some(value) = value.to_str() else {
                return Err(ConfigError::Invalid {
                    key: key_table()[index].key.to_owned(),
                    value: value.to_string_lossy().into_owned(),
                    origin: Source::Env(name.to_owned()),
                    expected: "valid UTF-8".to_owned(),
                });
            };
            if value.is_empty() {
                continue;
            }
            self.apply(
                index,
                &RawValue::Text(value.to_owned()),
                Source::Env(name.to_owned()),
            )?;
        }
        Ok(())
    }
}

/// Converts a YAML value at a key's place: `Ok(None)` for null, the error says what is
/// allowed.
fn yaml_value(value: &Value) -> Result<Option<RawValue>, String> {
    fn scalar(value: &Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    match value {
        Value::Null => Ok(None),
        Value::Sequence(items) => items
            .iter()
            .map(|item| scalar(item).ok_or_else(|| "a list of plain values".to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map(|items| Some(RawValue::List(items))),
        Value::Mapping(_) => Err("a single value, not a section".to_owned()),
        Value::Tagged(_) => Err("a plain value (YAML tags are not supported)".to_owned()),
        other => Ok(scalar(other).map(RawValue::Text)),
    }
}

/// A short rendering of a YAML value for messages.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Sequence(_) => "[...]".to_owned(),
        Value::Mapping(_) => "{...}".to_owned(),
        Value::Tagged(tagged) => format!("{} ...", tagged.tag),
    }
}

/// The names directly under section `section` (`""` for the top level), in table order.
fn sections(section: &str) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for info in key_table() {
        let rest = if section.is_empty() {
            Some(info.key)
        } else {
            info.key
                .strip_prefix(section)
                .and_then(|rest| rest.strip_prefix('.'))
        };
        if let Some(rest) = rest {
            let name = rest.split('.').next().unwrap_or(rest);
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// `; did you mean ...? Keys under ...: ...` for an unknown dotted key.
fn unknown_key_hint(key: &str) -> String {
    let (mut parent, mut last) = key.rsplit_once('.').unwrap_or(("", key));
    if sections(parent).is_empty() {
        // The section itself is unknown: suggest from the top level.
        (parent, last) = ("", key.split('.').next().unwrap_or(key));
    }
    let names = sections(parent);
    let mut hint = String::from("; ");
    if let Some(best) = closest(last, &names) {
        let full = if parent.is_empty() {
            best.to_owned()
        } else {
            format!("{parent}.{best}")
        };
        hint.push_str(&format!("did you mean `{full}`? "));
    }
    let list = names.join(", ");
    match (parent.is_empty(), hint.len() > 2) {
        (true, true) => hint.push_str(&format!("The sections are {list}")),
        (true, false) => hint.push_str(&format!("the sections are {list}")),
        (false, true) => hint.push_str(&format!("Keys under `{parent}`: {list}")),
        (false, false) => hint.push_str(&format!("keys under `{parent}`: {list}")),
    }
    hint
}

fn unknown_env_warning(name: &str) -> String {
    let names: Vec<&str> = key_table().iter().map(|info| info.env).collect();
    match closest(name, &names) {
        Some(best) => {
            format!("ignoring unknown environment variable {name}; did you mean {best}?")
        }
        None => format!(
            "ignoring unknown environment variable {name}; no configuration key has that name"
        ),
    }
}

/// The candidate closest to `word` by edit distance, if close enough to be a typo.
fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|candidate| {
            (
                edit_distance(&word, &candidate.to_ascii_lowercase()),
                *candidate,
            )
        })
        .filter(|(distance, candidate)| *distance <= (candidate.len() / 4).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Edit distance counting insertions, deletions, substitutions and swaps of two adjacent
/// characters (optimal string alignment), so that `prot` is one edit from `port`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between the first i chars of a and the first j chars of b.
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests;
