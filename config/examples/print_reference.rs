//! Prints the configuration reference table (every key, default, env var) as Markdown,
//! for README.md: `cargo run -q -p ec-config --example print_reference`.

fn main() {
    print!("{}", ec_config::markdown_reference());
}
