//! Generates the CRI v1 protocol (`proto/runtime/v1/api.proto`, as
//! cri-api v0.36 defines it) for `cri::api`: messages, the tonic servers
//! ketch serves and the clients its tests and benchmark use. Needs `protoc`
//! (Debian's protobuf-compiler; `deploy/install-deps.sh` installs it).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/runtime/v1/api.proto");
    tonic_prost_build::configure().compile_protos(&["proto/runtime/v1/api.proto"], &["proto"])?;
    Ok(())
}
