//! Container configuration in berth's own terms (the CRI layer translates into these).
//!
//! Everything a CRI `ContainerConfig` carries that shapes the OCI spec or the container's
//! life, already checked by `cri::container_config` (capability names normalised to
//! `CAP_…`, modes parsed into enums). berthd stores it as JSON, so every type is serde.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerMetadata {
    pub name: String,
    pub attempt: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub metadata: ContainerMetadata,
    /// The image as the CRI gave it (`ImageSpec.image`: an id, digest or reference).
    pub image: String,
    /// `ImageSpec.user_specified_image`, when kubelet knows it.
    pub user_specified_image: String,
    /// Replaces the image's entrypoint (and then drops the image's cmd).
    pub command: Vec<String>,
    /// Replaces the image's cmd.
    pub args: Vec<String>,
    pub working_dir: String,
    /// In the CRI's order; a later one wins over an earlier one and over the image's.
    pub envs: Vec<EnvVar>,
    pub mounts: Vec<Mount>,
    pub devices: Vec<Device>,
    /// Fully qualified CDI device names (`vendor.com/class=name`).
    pub cdi_devices: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Relative to the pod's log directory.
    pub log_path: String,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    /// `None` when the CRI gave no `linux.resources` (then no OOM score is set either).
    pub resources: Option<Resources>,
    pub security: SecurityContext,
    /// The CRI's stop signal by its `runtime.v1.Signal` name (`SIGUSR1`,
    /// `SIGRTMINPLUS3`, …); `None` for `RUNTIME_DEFAULT`.
    pub stop_signal: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Propagation {
    /// `rprivate`.
    #[default]
    Private,
    /// `rslave`: host mounts show up in the container.
    HostToContainer,
    /// `rshared`: both ways.
    Bidirectional,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    pub host_id: u32,
    pub container_id: u32,
    pub length: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute path in the container.
    pub container_path: String,
    /// Absolute path on the host. For an image volume (`image` set) the caller fills this
    /// in with the directory it prepared for the image before generating the spec.
    pub host_path: String,
    pub readonly: bool,
    /// Only with `readonly` and `Propagation::Private` (checked by the CRI layer).
    pub recursive_read_only: bool,
    pub propagation: Propagation,
    pub uid_mappings: Vec<IdMapping>,
    pub gid_mappings: Vec<IdMapping>,
    /// An image volume (KEP 4639): the image to mount, read-only.
    pub image: Option<String>,
    pub image_sub_path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub container_path: String,
    pub host_path: String,
    /// Some of `r`, `w`, `m`.
    pub permissions: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HugepageLimit {
    /// `2MB`, `1GB`, …
    pub page_size: String,
    pub limit: u64,
}

/// `LinuxContainerResources`; zero means "not set" as in the CRI.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit: i64,
    pub memory_swap_limit: i64,
    pub oom_score_adj: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    pub hugepage_limits: Vec<HugepageLimit>,
    /// cgroup v2 files and values (`memory.high` → `…`).
    pub unified: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// `CAP_…` names, or `ALL`.
    pub add: Vec<String>,
    /// `CAP_…` names, or `ALL`.
    pub drop: Vec<String>,
    /// `CAP_…` names. Kept, but not applied: containerd clears ambient capabilities.
    pub add_ambient: Vec<String>,
}

/// A container's view of one namespace kind, as the CRI `NamespaceMode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NamespaceMode {
    #[default]
    Pod,
    Container,
    Node,
    /// Another container's (PID only; `NamespaceOptions::target_id`).
    Target,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNamespace {
    /// `Pod` (with mappings) or `Node` (the host's, no mappings).
    pub mode: NamespaceMode,
    pub uids: Vec<IdMapping>,
    pub gids: Vec<IdMapping>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceOptions {
    pub network: NamespaceMode,
    pub pid: NamespaceMode,
    pub ipc: NamespaceMode,
    pub target_id: String,
    /// `None` when the CRI gave none: the host's user namespace.
    pub userns: Option<UserNamespace>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SupplementalGroupsPolicy {
    /// The image's `/etc/group` memberships plus `supplemental_groups`.
    #[default]
    Merge,
    /// Only the primary group and `supplemental_groups`.
    Strict,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeccompProfile {
    /// No filter (also what an absent CRI profile means, as in containerd).
    #[default]
    Unconfined,
    /// berth's default filter (containerd's default profile).
    RuntimeDefault,
    /// An OCI `LinuxSeccomp` JSON file on the node (absolute path).
    Localhost(PathBuf),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityContext {
    pub capabilities: Capabilities,
    pub privileged: bool,
    pub namespaces: NamespaceOptions,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_username: String,
    pub readonly_rootfs: bool,
    pub supplemental_groups: Vec<i64>,
    pub supplemental_groups_policy: SupplementalGroupsPolicy,
    pub no_new_privs: bool,
    /// Exactly these paths are masked; empty means none (containerd's behaviour).
    pub masked_paths: Vec<String>,
    /// Exactly these paths are read-only; empty means none (containerd's behaviour).
    pub readonly_paths: Vec<String>,
    pub seccomp: SeccompProfile,
}
