//! Compiles `proto/floor.proto` (the empty unary RPC of `ec-bench floor-server`) with protox,
//! as `ec-proto` does: pure Rust, no protoc needed. The descriptor set is written too: the
//! floor served the way the gateway serves (`ec-grpc`) offers reflection, as the gateway does.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["proto/floor.proto"], ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("floor_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto/floor.proto");
    Ok(())
}
