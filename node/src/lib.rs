//! Event Catcher storage node (placeholder; being written).
