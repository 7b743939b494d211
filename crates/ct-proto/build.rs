//! Generates the ct.v1 gRPC code with the vendored protoc (no system protoc needed).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = ["volume.proto", "preprocess.proto", "model.proto", "ensemble.proto"].map(|f| root.join("ct/v1").join(f));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // `bytes` fields as `bytes::Bytes`: a relayed chunk is shared, not copied, per receiver
    config.bytes(["."]);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("ct_v1_descriptor.bin"))
        .compile_with_config(config, &files, &[root])?;
    Ok(())
}
