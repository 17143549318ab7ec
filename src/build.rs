//! Compiles the collectors' gRPC contract (`src/ingest/grpc/raven.proto`) with
//! protox, a pure-Rust protobuf compiler: the build needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=src/ingest/grpc/raven.proto");
    let fds = protox::compile(["raven.proto"], ["src/ingest/grpc"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
