//! berth: a Kubernetes CRI container runtime.
//!
//! `cri/` is the thin gRPC layer; everything below it (`image/`, `store/`, …) knows nothing
//! of protobuf or gRPC. See DESIGN.md for the module map.
#![deny(unsafe_code)]

pub mod config;
pub mod container;
pub mod cri;
pub mod ids;
pub mod image;
pub mod network;
pub mod proto;
pub mod sandbox;
pub mod shim;
pub mod stats;
pub mod store;
pub mod streaming;
