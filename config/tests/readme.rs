//! The configuration reference in README.md is generated from the key table; this test keeps
//! the two from drifting apart.

#[test]
fn readme_configuration_reference_matches_the_key_table() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).expect("README.md is readable");
    assert!(
        readme.contains(&ec_config::markdown_reference()),
        "the configuration table in {} is out of date; regenerate it with \
         `cargo run -q -p ec-config --example print_reference`",
        path.display()
    );
}
