//! Generates the Datadog IPC gRPC code from our own `.proto` files (written from the wire facts)
//! with `protoc` (Debian's protobuf-compiler; `cargo xtask ci` installs it).

fn main() -> std::io::Result<()> {
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(true)
        .compile_protos(&["proto/datadog/api/v1/api.proto"], &["proto"])
}
