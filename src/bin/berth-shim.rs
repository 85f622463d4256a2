//! berth-shim: the per-pod process (see `berth::shim::server`).
fn main() -> std::process::ExitCode {
    berth::shim::server::main()
}
