//! `ec-node` binary (placeholder).
fn main() {}
