//! `ec-client` (work in progress).
fn main() {}
