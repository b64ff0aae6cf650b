//! Compiles `streaming.proto` with protox (pure Rust, no protoc needed) and writes the
//! descriptor set next to the generated code so that servers can offer reflection.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["streaming.proto"], ["."])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("streaming_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .bytes(".streaming")
        // Malformed messages are INVALID_ARGUMENT, in one place for every RPC.
        .codec_path("crate::codec::StrictCodec")
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=streaming.proto");
    Ok(())
}
