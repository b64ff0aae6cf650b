//! State of the Mappings view: the last mappings snapshot from Consul, the filter, and the
//! selected row.
//!
//! Invariants: the selection is kept by data ID, not by row number, so a mapping added or
//! removed elsewhere never moves the cursor to another mapping; when the selected mapping
//! disappears (or is filtered out) the selection moves to the row that took its place.

use std::collections::BTreeMap;

use ec_core::DataId;
use ec_discovery::{Mapping, MappingSnapshot};

/// The Mappings view's state.
#[derive(Debug, Clone, Default)]
pub struct MappingsState {
    /// The last snapshot; `None` until Consul first answers.
    pub snapshot: Option<MappingSnapshot>,
    /// Case-insensitive substring matched against the data ID and the node IDs.
    pub filter: String,
    /// The selected data ID.
    pub selected: Option<DataId>,
    /// For each node ID, the data IDs whose mapping names it (for the Health view).
    pub by_node: BTreeMap<String, Vec<DataId>>,
}

impl MappingsState {
    /// Takes a new snapshot; returns the primary changes (data ID, old, new) it shows.
    pub fn update(&mut self, snapshot: MappingSnapshot) -> Vec<(DataId, String, String)> {
        let mut promotions = Vec::new();
        if let Some(old) = &self.snapshot {
            for (id, new) in &snapshot.mappings {
                if let Some(before) = old.mappings.get(id)
                    && before.primary() != new.primary()
                {
                    promotions.push((
                        id.clone(),
                        before.primary().to_string(),
                        new.primary().to_string(),
                    ));
                }
            }
        }
        let mut by_node: BTreeMap<String, Vec<DataId>> = BTreeMap::new();
        for m in snapshot.mappings.values() {
            for n in &m.nodes {
                by_node
                    .entry(n.to_string())
                    .or_default()
                    .push(m.data_id.clone());
            }
        }
        self.by_node = by_node;
        let previous_rows: Vec<DataId> = self.rows().iter().map(|m| m.data_id.clone()).collect();
        self.snapshot = Some(snapshot);
        self.keep_selection(&previous_rows);
        promotions
    }

    /// The mappings shown, in data-ID order, after the filter.
    pub fn rows(&self) -> Vec<&Mapping> {
        let Some(snap) = &self.snapshot else {
            return Vec::new();
        };
        let needle = self.filter.to_lowercase();
        snap.mappings
            .values()
            .filter(|m| {
                needle.is_empty()
                    || m.data_id.as_str().to_lowercase().contains(&needle)
                    || m.nodes
                        .iter()
                        .any(|n| n.as_str().to_lowercase().contains(&needle))
            })
            .collect()
    }

    /// Index of the selected row among [`MappingsState::rows`].
    pub fn selected_index(&self) -> Option<usize> {
        let rows = self.rows();
        let sel = self.selected.as_ref()?;
        rows.iter().position(|m| &m.data_id == sel)
    }

    /// The selected mapping, if it is shown.
    pub fn selected_mapping(&self) -> Option<&Mapping> {
        let sel = self.selected.as_ref()?;
        self.rows().into_iter().find(|m| &m.data_id == sel)
    }

    /// Moves the selection by `delta` rows, clamped to the list.
    pub fn move_by(&mut self, delta: isize) {
        let rows = self.rows();
        if rows.is_empty() {
            self.selected = None;
            return;
        }
        let current = self
            .selected
            .as_ref()
            .and_then(|s| rows.iter().position(|m| &m.data_id == s));
        let next = match current {
            None => 0,
            Some(i) => i.saturating_add_signed(delta).min(rows.len() - 1),
        };
        self.selected = Some(rows[next].data_id.clone());
    }

    /// Selects the first (`false`) or last (`true`) row.
    pub fn select_end(&mut self, last: bool) {
        let rows = self.rows();
        self.selected = if last { rows.last() } else { rows.first() }.map(|m| m.data_id.clone());
    }

    /// Sets the filter and keeps a sensible selection.
    pub fn set_filter(&mut self, filter: String) {
        let previous_rows: Vec<DataId> = self.rows().iter().map(|m| m.data_id.clone()).collect();
        self.filter = filter;
        self.keep_selection(&previous_rows);
    }

    /// After the rows changed: keep the selected data ID if still shown, else select the row
    /// now at its old position (or the last one).
    fn keep_selection(&mut self, previous_rows: &[DataId]) {
        let rows = self.rows();
        if rows.is_empty() {
            return;
        }
        if let Some(sel) = &self.selected
            && rows.iter().any(|m| &m.data_id == sel)
        {
            return;
        }
        let old_pos = self
            .selected
            .as_ref()
            .and_then(|s| previous_rows.iter().position(|d| d == s))
            .unwrap_or(0);
        let at = old_pos.min(rows.len() - 1);
        self.selected = Some(rows[at].data_id.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ec_core::NodeId;

    fn snap(entries: &[(&str, &[&str], u64)]) -> MappingSnapshot {
        MappingSnapshot {
            mappings: entries
                .iter()
                .map(|(d, nodes, i)| {
                    let data_id = DataId::parse(d).expect("valid");
                    (
                        data_id.clone(),
                        Mapping {
                            data_id,
                            nodes: nodes
                                .iter()
                                .map(|n| NodeId::parse(n).expect("valid"))
                                .collect(),
                            modify_index: *i,
                        },
                    )
                })
                .collect(),
            problems: vec![],
            index: 1,
        }
    }

    #[test]
    fn selection_follows_the_data_id_and_survives_removal() {
        let mut s = MappingsState::default();
        s.update(snap(&[
            ("a", &["n1"], 1),
            ("b", &["n1"], 2),
            ("c", &["n2"], 3),
        ]));
        assert_eq!(s.selected_index(), Some(0));
        s.move_by(1);
        assert_eq!(s.selected_mapping().map(|m| m.data_id.as_str()), Some("b"));
        s.update(snap(&[
            ("0", &["n1"], 4),
            ("a", &["n1"], 1),
            ("b", &["n1"], 2),
            ("c", &["n2"], 3),
        ]));
        assert_eq!(s.selected_mapping().map(|m| m.data_id.as_str()), Some("b"));
        s.update(snap(&[
            ("0", &["n1"], 4),
            ("a", &["n1"], 1),
            ("c", &["n2"], 3),
        ]));
        assert_eq!(s.selected_mapping().map(|m| m.data_id.as_str()), Some("c"));
        assert_eq!(s.by_node["n1"].len(), 2);
    }

    #[test]
    fn filter_matches_data_ids_and_nodes_and_reports_promotions() {
        let mut s = MappingsState::default();
        s.update(snap(&[
            ("orders", &["n1", "n2"], 1),
            ("payments", &["n3"], 2),
        ]));
        s.set_filter("N2".into());
        assert_eq!(s.rows().len(), 1);
        assert_eq!(
            s.selected_mapping().map(|m| m.data_id.as_str()),
            Some("orders")
        );
        let promoted = s.update(snap(&[
            ("orders", &["n2", "n1"], 5),
            ("payments", &["n3"], 2),
        ]));
        assert_eq!(
            promoted,
            [(
                DataId::parse("orders").expect("valid"),
                "n1".into(),
                "n2".into()
            )]
        );
    }
}
