//! What a pod asks for, in berth's own terms (the CRI layer translates into these), and
//! what berth records about it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::container::config::IdMapping;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum NsMode {
    /// The pod's own namespace, shared by its containers.
    #[default]
    Pod,
    /// Each container its own (PID only).
    Container,
    /// The host's.
    Node,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodMetadata {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    pub container_port: u16,
    pub host_port: u16,
    pub host_ip: String,
}

/// cgroup limits for the pod (overhead plus pod-level resources), as the CRI gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit: i64,
    /// Memory plus swap (cgroup v1 memsw); 0: leave as is.
    #[serde(default)]
    pub memory_swap: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSpec {
    pub metadata: PodMetadata,
    pub hostname: String,
    pub log_directory: String,
    pub dns: Dns,
    pub port_mappings: Vec<PortMapping>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub cgroup_parent: String,
    pub network: NsMode,
    pub pid: NsMode,
    pub ipc: NsMode,
    pub sysctls: BTreeMap<String, String>,
    pub overhead: Option<Resources>,
    pub resources: Option<Resources>,
    pub runtime_handler: String,
    /// Requested but not applied to the sandbox itself (no pause process runs as it).
    pub privileged: bool,
    /// A user-namespaced pod (CRI `NamespaceMode::POD` user namespace): its mappings.
    #[serde(default)]
    pub user_ns: Option<UserNs>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
/// A pod's user namespace: its ID mappings (the container module's type: containers of the
/// pod run with the same ones).
pub struct UserNs {
    pub uids: Vec<IdMapping>,
    pub gids: Vec<IdMapping>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodState {
    /// Being set up; a pod found in this state at start-up is torn down.
    Creating,
    Ready,
    NotReady,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    pub spec: PodSpec,
    pub state: PodState,
    /// Unix nanoseconds.
    pub created_at: i64,
    /// Pod IPs from CNI, the primary first.
    pub ips: Vec<String>,
    /// Why the pod is NotReady when it was not stopped on purpose (e.g. its shim died).
    pub reason: String,
    /// The pod's cgroup directories, one per hierarchy (empty without a cgroup parent).
    pub cgroups: Vec<String>,
}

impl PodRecord {
    /// The key that must be unique among pods (CRI: name, namespace, uid, attempt).
    pub fn name_key(&self) -> String {
        name_key(&self.spec.metadata)
    }
}

pub fn name_key(m: &PodMetadata) -> String {
    format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}
