//! Compiles the project's `.proto` files (`../../proto`) hermetically: `protox` parses them in
//! pure Rust (no system `protoc`), `tonic-prost-build` generates messages and gRPC stubs.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "moby/buildkit/v1/control.proto",
    "moby/buildkit/v1/types/worker.proto",
    "pb/ops.proto",
    "fsutil/types/wire.proto",
    "moby/filesync/v1/filesync.proto",
    "moby/filesync/v1/auth.proto",
    "moby/buildkit/secrets/v1/secrets.proto",
    "moby/sshforward/v1/ssh.proto",
    "grpc/health/v1/health.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    let fds = protox::compile(PROTOS, [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .emit_rerun_if_changed(false)
        .include_file("_includes.rs")
        .compile_fds(fds)?;
    Ok(())
}
