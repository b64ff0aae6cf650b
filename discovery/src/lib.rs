//! Event Catcher's Consul client (placeholder; being written).
