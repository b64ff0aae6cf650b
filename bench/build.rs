//! Compiles `proto/floor.proto` (the empty unary RPC of `ec-bench floor-server`) with protox,
//! as `ec-proto` does: pure Rust, no protoc needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["proto/floor.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto/floor.proto");
    Ok(())
}
