//! Event Catcher settings (placeholder; being written).
