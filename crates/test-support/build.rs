//! Generates the test device plugin's gRPC code (server, and the client of the kubelet's
//! registration service) from our own `.proto` with `protoc` (Debian's protobuf-compiler;
//! `cargo xtask ci` installs it).

fn main() -> std::io::Result<()> {
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .compile_protos(&["proto/deviceplugin.proto"], &["proto"])
}
