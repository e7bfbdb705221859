fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../../proto");
    tonic_prost_build::configure().bytes(".").compile_protos(
        &["../../proto/skiff/v1/objects.proto", "../../proto/skiff/v1/kubelet.proto"],
        &["../../proto"],
    )?;
    Ok(())
}
