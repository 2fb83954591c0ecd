//! Generates the client of the kubelet's pod-resources API from our own `.proto` (the fields the
//! collector reads) with `protoc` (Debian's protobuf-compiler; `cargo xtask ci` installs it).

fn main() -> std::io::Result<()> {
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .build_transport(false)
        .compile_protos(&["proto/podresources.proto"], &["proto"])
}
