//! Compiles the pinned CRI proto and our shim protocol with protox, so no protoc is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["proto/api.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // RPCs not implemented yet answer Unimplemented.
        .generate_default_stubs(true)
        // AuthConfig carries credentials: its Debug is written by hand, redacted.
        .skip_debug(["runtime.v1.AuthConfig"])
        .compile_fds(fds)?;
    // The shim protocol: plain prost messages, no gRPC service (see proto/shim.proto).
    let shim = protox::compile(["proto/shim.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(shim)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
