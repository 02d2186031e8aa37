//! Generates the CRI v1 protocol (`proto/runtime/v1/api.proto`, as
//! cri-api v0.36 defines it) for `cri::api`: messages, the tonic servers
//! ketch serves and the clients its tests and benchmark use. Needs `protoc`
//! (Debian's protobuf-compiler; `deploy/install-deps.sh` installs it).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/runtime/v1/api.proto");
    // ketch-shim runs once per container (its monitor) and per exec. As a
    // position-independent executable, the loader would relocate its
    // read-only data (vtables, string tables: 250 KiB) into a private copy
    // in every one of those processes; linked at a fixed address, those
    // pages stay clean and shared through the page cache, and the loader
    // has no relocations to apply at each start. Libraries, heap and stack
    // are still placed at random.
    println!("cargo:rustc-link-arg-bin=ketch-shim=-no-pie");
    // The daemon stays position-independent. Its relocations (one per
    // pointer in its read-only data: 540 KiB of `.rela.dyn`) are read once
    // by the loader and then stay mapped and resident for the daemon's
    // life; packed as RELR (glibc 2.36, binutils 2.38) they take a few KiB.
    println!("cargo:rustc-link-arg-bin=ketch=-Wl,-z,pack-relative-relocs");
    tonic_prost_build::configure().compile_protos(&["proto/runtime/v1/api.proto"], &["proto"])?;
    Ok(())
}
