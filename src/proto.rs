//! Generated protobuf and gRPC code.

/// The Kubernetes CRI, pinned from cri-api v0.34 (`proto/api.proto`).
pub mod runtime {
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic)]
        tonic::include_proto!("runtime.v1");

        /// Credentials never reach a log line.
        impl std::fmt::Debug for AuthConfig {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct("AuthConfig")
                    .field("username", &self.username)
                    .field("server_address", &self.server_address)
                    .finish_non_exhaustive()
            }
        }
    }
}

/// berth's daemon <-> shim protocol (`proto/shim.proto`).
pub mod shim {
    #![allow(clippy::all, clippy::pedantic)]
    include!(concat!(env!("OUT_DIR"), "/berth.shim.v1.rs"));
}
