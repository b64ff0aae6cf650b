//! The add/edit mapping form and its validation, which runs on every keystroke.
//!
//! Rules (the same as everywhere else in the project, via `ec-core`): the data ID follows the
//! data-ID rule; the node list is non-empty, each node ID follows the node-ID rule, no node
//! twice, the first one is the primary. Nodes that Consul does not know are allowed (a node
//! may register later) but warned about, as are nodes that are not passing. Validation is a
//! pure function of the form and what the console knows, so the view can show it live and
//! the submit path uses exactly the same verdict.

use std::collections::BTreeMap;

use ec_core::{DataId, NodeId};
use ec_discovery::{Mapping, MappingSnapshot, NodeStatus};

use crate::app::line::LineEdit;

/// Adding a new mapping or editing an existing one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormMode {
    /// A new mapping: the data ID must not be mapped yet.
    Add,
    /// An existing mapping, as it was when the form opened (its ModifyIndex is the CAS guard).
    Edit {
        /// The mapping being edited.
        original: Mapping,
    },
}

/// The field with the cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The data ID (read-only when editing).
    DataId,
    /// The node list.
    Nodes,
}

/// The add/edit form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingForm {
    /// Add or edit.
    pub mode: FormMode,
    /// The data ID field.
    pub data_id: LineEdit,
    /// The node list field: node IDs separated by commas or spaces, primary first.
    pub nodes: LineEdit,
    /// Where typing goes.
    pub focus: Field,
    /// Why the last save failed (other than a conflict, which has its own popup).
    pub error: Option<String>,
    /// A save is in flight.
    pub saving: bool,
}

/// The verdict on a form's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation {
    /// The data ID, or why it is not valid.
    pub data_id: Result<DataId, String>,
    /// The node list, or why it is not valid.
    pub nodes: Result<Vec<NodeId>, String>,
    /// Things that do not block saving but deserve a look.
    pub warnings: Vec<String>,
    /// Known nodes not listed yet, those matching the node being typed first.
    pub suggestions: Vec<(String, NodeStatus)>,
}

impl Validation {
    /// The data ID and nodes to write, if both are valid.
    pub fn ready(&self) -> Option<(DataId, Vec<NodeId>)> {
        match (&self.data_id, &self.nodes) {
            (Ok(d), Ok(n)) => Some((d.clone(), n.clone())),
            _ => None,
        }
    }
}

impl MappingForm {
    /// An empty form for a new mapping.
    pub fn add() -> MappingForm {
        MappingForm {
            mode: FormMode::Add,
            data_id: LineEdit::default(),
            nodes: LineEdit::default(),
            focus: Field::DataId,
            error: None,
            saving: false,
        }
    }

    /// A form editing `mapping`, with its nodes filled in.
    pub fn edit(mapping: Mapping) -> MappingForm {
        MappingForm {
            data_id: LineEdit::with(mapping.data_id.as_str()),
            nodes: LineEdit::with(mapping.value()),
            mode: FormMode::Edit { original: mapping },
            focus: Field::Nodes,
            error: None,
            saving: false,
        }
    }

    /// The field with the cursor.
    pub fn focused_mut(&mut self) -> &mut LineEdit {
        match self.focus {
            Field::DataId => &mut self.data_id,
            Field::Nodes => &mut self.nodes,
        }
    }

    /// Moves to the other field (the data ID cannot be focused when editing).
    pub fn switch_field(&mut self) {
        self.focus = match (self.focus, &self.mode) {
            (Field::DataId, _) | (_, FormMode::Edit { .. }) => Field::Nodes,
            (Field::Nodes, FormMode::Add) => Field::DataId,
        };
    }

    /// The node being typed: the text after the last separator.
    fn current_token(&self) -> &str {
        let text = self.nodes.text();
        text.rsplit([',', ' ']).next().unwrap_or("")
    }

    /// Completes the node being typed to the single known node it is a prefix of (or the
    /// first, in order); false if there is nothing to complete.
    pub fn complete(&mut self, known: &BTreeMap<String, NodeStatus>) -> bool {
        if self.focus != Field::Nodes {
            return false;
        }
        let token = self.current_token().to_owned();
        if token.is_empty() {
            return false;
        }
        let listed = split_nodes(self.nodes.text());
        let Some(candidate) = known.keys().find(|k| {
            k.starts_with(&token) && k.as_str() != token && !listed.contains(&k.as_str())
        }) else {
            return false;
        };
        let text = self.nodes.text();
        let keep = &text[..text.len() - token.len()];
        let completed = format!("{keep}{candidate}");
        self.nodes.set(completed);
        true
    }

    /// Checks the form against the rules and what the console knows: `known` nodes (from
    /// Consul's health) and the `existing` mappings.
    pub fn validate(
        &self,
        known: &BTreeMap<String, NodeStatus>,
        existing: Option<&MappingSnapshot>,
    ) -> Validation {
        let mut warnings = Vec::new();
        let data_id = DataId::parse(self.data_id.text().trim())
            .map_err(|e| e.to_string())
            .and_then(
                |d| match (&self.mode, existing.and_then(|s| s.mappings.get(&d))) {
                    (FormMode::Add, Some(m)) => Err(format!(
                        "{d} is already mapped to {}; press Esc and use e to edit it",
                        m.value()
                    )),
                    _ => Ok(d),
                },
            );

        let tokens = split_nodes(self.nodes.text());
        let nodes = parse_nodes(&tokens);
        // The node being typed that is still the start of a known node is not "unknown" yet.
        let typing = (!self.nodes.text().ends_with([',', ' ']))
            .then(|| tokens.last().copied())
            .flatten()
            .filter(|t| known.keys().any(|k| k.starts_with(t) && k != t));
        if let Ok(list) = &nodes {
            for node in list {
                match known.get(node.as_str()) {
                    None if typing == Some(node.as_str()) => {}
                    None => warnings.push(format!(
                        "{node} is not registered in Consul (allowed: it can register later)"
                    )),
                    Some(NodeStatus::Passing) => {}
                    Some(status) => warnings.push(format!("{node} is {status}")),
                }
            }
            if let FormMode::Edit { original } = &self.mode {
                if *list == original.nodes {
                    warnings.push("nothing changed".into());
                } else if list.first() != original.nodes.first() {
                    warnings.push(format!(
                        "the primary changes from {} to {}",
                        original.primary(),
                        list[0]
                    ));
                }
            }
        }

        let token = self.current_token();
        let mut suggestions: Vec<(String, NodeStatus)> = known
            .iter()
            .filter(|(id, _)| !tokens.contains(&id.as_str()))
            .map(|(id, s)| (id.clone(), *s))
            .collect();
        suggestions.sort_by_key(|(id, _)| !id.starts_with(token));
        Validation {
            data_id,
            nodes,
            warnings,
            suggestions,
        }
    }
}

/// The node IDs typed, split on commas and spaces, empty pieces dropped.
pub fn split_nodes(text: &str) -> Vec<&str> {
    text.split([',', ' '])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

fn parse_nodes(tokens: &[&str]) -> Result<Vec<NodeId>, String> {
    if tokens.is_empty() {
        return Err("at least one node ID is needed; the first one is the primary".into());
    }
    let mut nodes: Vec<NodeId> = Vec::with_capacity(tokens.len());
    for t in tokens {
        let node = NodeId::parse(t).map_err(|e| e.to_string())?;
        if nodes.contains(&node) {
            return Err(format!(
                "{node} is listed twice; each node holds a data ID once"
            ));
        }
        nodes.push(node);
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> BTreeMap<String, NodeStatus> {
        [
            ("node1", NodeStatus::Passing),
            ("node2", NodeStatus::Passing),
            ("node3", NodeStatus::Critical),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn mapping(data_id: &str, nodes: &[&str], index: u64) -> Mapping {
        Mapping {
            data_id: DataId::parse(data_id).expect("valid"),
            nodes: nodes
                .iter()
                .map(|n| NodeId::parse(n).expect("valid"))
                .collect(),
            modify_index: index,
        }
    }

    fn typed(form: &mut MappingForm, text: &str) {
        for c in text.chars() {
            form.focused_mut().insert(c);
        }
    }

    #[test]
    fn validates_as_you_type() {
        let snap = MappingSnapshot {
            mappings: [(
                DataId::parse("orders").expect("valid"),
                mapping("orders", &["node1"], 5),
            )]
            .into_iter()
            .collect(),
            problems: vec![],
            index: 5,
        };
        let mut form = MappingForm::add();
        let v = form.validate(&known(), Some(&snap));
        assert!(v.data_id.as_ref().expect_err("empty").contains("empty"));
        assert!(
            v.nodes
                .as_ref()
                .expect_err("empty")
                .contains("at least one")
        );

        typed(&mut form, "ord/ers");
        let v = form.validate(&known(), Some(&snap));
        assert!(v.data_id.expect_err("slash").contains("'/'"));

        form.data_id.set("orders");
        let v = form.validate(&known(), Some(&snap));
        assert!(v.data_id.expect_err("exists").contains("already mapped"));

        form.data_id.set("payments");
        form.switch_field();
        typed(&mut form, "node2, node9,node3");
        let v = form.validate(&known(), Some(&snap));
        let (d, nodes) = v.ready().expect("valid");
        assert_eq!(d.as_str(), "payments");
        assert_eq!(
            nodes.iter().map(NodeId::as_str).collect::<Vec<_>>(),
            ["node2", "node9", "node3"]
        );
        assert_eq!(v.warnings.len(), 2, "{:?}", v.warnings);
        assert!(v.warnings[0].contains("node9 is not registered"));
        assert!(v.warnings[1].contains("node3 is critical"));

        form.nodes.set("node2,node2");
        let v = form.validate(&known(), Some(&snap));
        assert!(v.nodes.expect_err("dup").contains("listed twice"));
        form.nodes.set("node2,no de");
        assert!(
            form.validate(&known(), None).ready().is_some(),
            "spaces separate"
        );
        form.nodes.set("node2,nöde");
        assert!(form.validate(&known(), None).nodes.is_err());
    }

    #[test]
    fn suggests_and_completes_known_nodes() {
        let mut form = MappingForm::add();
        form.switch_field();
        typed(&mut form, "node1,no");
        let v = form.validate(&known(), None);
        let names: Vec<_> = v.suggestions.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["node2", "node3"]);
        assert!(form.complete(&known()));
        assert_eq!(form.nodes.text(), "node1,node2");
        assert!(!form.complete(&known()), "node2 is complete");
    }

    #[test]
    fn edit_reports_primary_change_and_no_change() {
        let m = mapping("orders", &["node1", "node2"], 9);
        let mut form = MappingForm::edit(m);
        assert_eq!(form.focus, Field::Nodes);
        form.switch_field();
        assert_eq!(form.focus, Field::Nodes, "data ID is fixed when editing");
        let v = form.validate(&known(), None);
        assert_eq!(v.warnings, ["nothing changed"]);
        form.nodes.set("node2,node1");
        let v = form.validate(&known(), None);
        assert_eq!(v.warnings, ["the primary changes from node1 to node2"]);
    }
}
