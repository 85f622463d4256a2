//! Pod networking: the CNI executor and the netlink helpers.

pub mod cni;
pub mod netlink;
