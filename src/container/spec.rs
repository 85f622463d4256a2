//! The OCI runtime spec generator: a pure function from a container's config, its image's
//! config, its pod and a few host facts to an `oci_spec` `Spec`, following containerd's CRI
//! plugin (`internal/cri/server/container_create*.go`, `internal/cri/opts`, `pkg/oci`).
//!
//! Everything that touches the system is the caller's: reading the image's `/etc/passwd`
//! and `/etc/group`, reading a `Localhost` seccomp profile, stat-ing devices
//! (`devices::resolve`, `devices::host_devices`), probing the host (`HostFeatures::probe`),
//! creating missing host paths (`host_paths_to_create`, `mounts::prepare_host_paths`) and
//! image volume directories.
//!
//! The spec is shaped for libcontainer 0.7, whose reading differs from runc's in three
//! places (each checked by running busybox through libcontainer on this VM): seccomp
//! `SCMP_CMP_MASKED_EQ` operands are swapped (`seccomp::swap_masked_eq_operands`),
//! `noNewPrivileges: false` is written as absent, and on cgroup v1 no `cgroup` mount is
//! handed over: its emulation of one reads the wrong process's cgroups in a shared PID
//! namespace, so the spec carries runc's emulation itself (`cgroup_mounts`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities as OciCapabilities, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpu, LinuxDevice,
    LinuxDeviceBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType,
    LinuxHugepageLimitBuilder, LinuxIdMapping, LinuxIdMappingBuilder, LinuxMemory, LinuxNamespace,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResources, Mount, MountBuilder, ProcessBuilder,
    RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use serde::Deserialize;

use super::capabilities;
use super::cdi::{self, Injection};
use super::config::{ContainerConfig, IdMapping, NamespaceMode, Propagation, SeccompProfile};
use super::devices::{DeviceKind, DeviceNode};
use super::host::HostFeatures;
use super::seccomp;
use super::user;
use crate::sandbox::spec::NsMode;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The request cannot be honoured as given (bad user string, no command, …).
    #[error("{0}")]
    InvalidArgument(String),
    /// Something the request names does not exist (a user in the image's `/etc/passwd`,
    /// a group).
    #[error("{0}")]
    NotFound(String),
    /// Valid, but this runtime cannot do it (idmapped mounts).
    #[error("{0}")]
    Unsupported(String),
    /// A bug: oci-spec refused a value built here.
    #[error("building the OCI spec: {0}")]
    Internal(String),
}

fn internal(e: impl std::fmt::Display) -> SpecError {
    SpecError::Internal(e.to_string())
}

/// containerd's default `PATH` (`pkg/oci` `defaultUnixEnv`).
pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The parts of an image's config that shape a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub user: String,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub stop_signal: String,
    /// `Volumes` (container paths); see `image_volume_mounts`.
    pub volumes: Vec<String>,
}

impl ImageConfig {
    /// From the image config JSON as stored: the whole Docker/OCI image config document
    /// (`{"architecture":…,"config":{…}}`) or just its `config` section.
    pub fn from_json(config_json: &str) -> Result<ImageConfig, SpecError> {
        #[derive(Deserialize, Default)]
        struct Section {
            #[serde(rename = "User", default)]
            user: Option<String>,
            #[serde(rename = "Env", default)]
            env: Option<Vec<String>>,
            #[serde(rename = "Entrypoint", default)]
            entrypoint: Option<Vec<String>>,
            #[serde(rename = "Cmd", default)]
            cmd: Option<Vec<String>>,
            #[serde(rename = "WorkingDir", default)]
            working_dir: Option<String>,
            #[serde(rename = "StopSignal", default)]
            stop_signal: Option<String>,
            #[serde(rename = "Volumes", default)]
            volumes: Option<BTreeMap<String, serde_json::Value>>,
        }
        let doc: serde_json::Value = serde_json::from_str(config_json)
            .map_err(|e| SpecError::InvalidArgument(format!("image config is not JSON: {e}")))?;
        let section = match doc.get("config") {
            Some(serde_json::Value::Null) => serde_json::Value::Object(Default::default()),
            Some(c) => c.clone(),
            None => doc,
        };
        let s: Section = serde_json::from_value(section)
            .map_err(|e| SpecError::InvalidArgument(format!("image config: {e}")))?;
        Ok(ImageConfig {
            user: s.user.unwrap_or_default(),
            env: s.env.unwrap_or_default(),
            entrypoint: s.entrypoint.unwrap_or_default(),
            cmd: s.cmd.unwrap_or_default(),
            working_dir: s.working_dir.unwrap_or_default(),
            stop_signal: s.stop_signal.unwrap_or_default(),
            volumes: s
                .volumes
                .map(|v| v.into_keys().collect())
                .unwrap_or_default(),
        })
    }
}

/// What a container takes from its pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodContext {
    pub pod_id: String,
    pub pod_name: String,
    pub pod_namespace: String,
    pub pod_uid: String,
    /// The `HOSTNAME` containers see (the node's for host-network pods).
    pub hostname: String,
    /// Privileged containers are only allowed in privileged pods.
    pub privileged: bool,
    /// `Some(path)`: join that pinned namespace; `None`: the host's.
    pub net_ns: Option<PathBuf>,
    pub ipc_ns: Option<PathBuf>,
    pub uts_ns: Option<PathBuf>,
    /// The pod's PID namespace, when `pid_mode` is `Pod`.
    pub pid_ns: Option<PathBuf>,
    /// `Pod`: containers join `pid_ns`; `Container`: each its own; `Node`: the host's.
    pub pid_mode: NsMode,
    /// The pod's user namespace, when it has one (user-namespaced pods).
    pub user_ns: Option<PathBuf>,
    pub host_network: bool,
    pub host_ipc: bool,
    /// The pod's files; an empty path means the pod has none (not mounted).
    pub hostname_file: PathBuf,
    pub hosts_file: PathBuf,
    pub resolv_conf_file: PathBuf,
    /// The pod's `/dev/shm` (a tmpfs in its state dir); `None` with host IPC, where the
    /// host's `/dev/shm` is bound instead.
    pub shm_dir: Option<PathBuf>,
    /// The pod's sysctls. Not copied into container specs: the shim applies them when it
    /// creates the pod's namespaces, which containers then join (containerd likewise sets
    /// them only on the sandbox).
    pub sysctls: BTreeMap<String, String>,
}

pub struct SpecInput<'a> {
    pub id: &'a str,
    pub config: &'a ContainerConfig,
    pub image: &'a ImageConfig,
    pub pod: &'a PodContext,
    pub rootfs: &'a Path,
    /// As libcontainer takes it (cgroupfs path or `slice:prefix:name`); empty: none.
    pub cgroups_path: String,
    /// The image's `/etc/passwd` content, `None` when it has none.
    pub passwd: Option<&'a str>,
    /// The image's `/etc/group` content, `None` when it has none.
    pub group: Option<&'a str>,
    /// The content of the `Localhost` seccomp profile the config names (the caller reads
    /// it and answers NotFound when it is missing).
    pub seccomp_localhost: Option<&'a str>,
    /// `config.devices` resolved on the host (`devices::resolve`).
    pub devices: &'a [DeviceNode],
    /// The host's `/dev` (`devices::host_devices`); used for privileged containers only.
    pub host_devices: &'a [DeviceNode],
    /// `config.cdi_devices` resolved to their edits (`cdi::resolve`), applied last as
    /// containerd's `WithCDI`.
    pub cdi: &'a Injection,
    /// For PID `NamespaceMode::Target`: the target container's PID namespace.
    pub target_pid_ns: Option<&'a Path>,
    /// Where the image's `Volumes` get their host directories (`image_volume_mounts`);
    /// `None`: image volumes are not mounted.
    pub image_volumes_dir: Option<&'a Path>,
    pub host: &'a HostFeatures,
}

/// Host directories that must exist before the spec is used: CRI mount sources that are
/// missing are created (mode 0755) as containerd does at create time.
pub fn host_paths_to_create(config: &ContainerConfig) -> Vec<PathBuf> {
    config
        .mounts
        .iter()
        .filter(|m| m.image.is_none() && !m.host_path.is_empty())
        .map(|m| PathBuf::from(&m.host_path))
        .collect()
}

/// Image `Volumes` not covered by a CRI mount, each with its host directory under
/// `dir` (the caller creates these), as containerd's `volumeMounts`.
pub fn image_volume_mounts(
    config: &ContainerConfig,
    image: &ImageConfig,
    dir: &Path,
) -> Vec<(PathBuf, PathBuf)> {
    let mut out = Vec::new();
    for v in &image.volumes {
        let dst = clean(v);
        if config
            .mounts
            .iter()
            .any(|m| clean(&m.container_path) == dst)
        {
            continue;
        }
        let name: String = dst
            .to_string_lossy()
            .trim_start_matches('/')
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        out.push((
            dst,
            dir.join(if name.is_empty() { "root".into() } else { name }),
        ));
    }
    out
}

/// The signal `StopContainer` sends: the CRI config's, else the image's `StopSignal`
/// (name or number), else SIGTERM.
pub fn stop_signal(config: &ContainerConfig, image: &ImageConfig) -> Result<i32, SpecError> {
    if let Some(s) = &config.stop_signal {
        return signal_number(s)
            .ok_or_else(|| SpecError::InvalidArgument(format!("unknown stop signal {s:?}")));
    }
    if !image.stop_signal.is_empty() {
        return signal_number(&image.stop_signal).ok_or_else(|| {
            SpecError::InvalidArgument(format!(
                "unknown stop signal {:?} in the image config",
                image.stop_signal
            ))
        });
    }
    Ok(libc::SIGTERM)
}

const SIGRTMIN: i32 = 34;
const SIGRTMAX: i32 = 64;

/// A signal by number (`15`), name (`SIGTERM`, `TERM`, `sigterm`), real-time name
/// (`SIGRTMIN+3`, `RTMAX-1`) or CRI enum name (`SIGRTMINPLUS3`, `SIGRTMAXMINUS1`).
pub fn signal_number(s: &str) -> Option<i32> {
    let s = s.trim().to_ascii_uppercase();
    if let Ok(n) = s.parse::<i32>() {
        return (1..=SIGRTMAX).contains(&n).then_some(n);
    }
    let name = s.strip_prefix("SIG").unwrap_or(&s);
    let rt = |rest: &str, base: i32, sign: i32| -> Option<i32> {
        let n = if rest.is_empty() {
            0
        } else {
            rest.parse::<i32>().ok()?
        };
        let v = base + sign * n;
        (SIGRTMIN..=SIGRTMAX).contains(&v).then_some(v)
    };
    for (prefix, base, sign) in [
        ("RTMINPLUS", SIGRTMIN, 1),
        ("RTMAXMINUS", SIGRTMAX, -1),
        ("RTMIN+", SIGRTMIN, 1),
        ("RTMAX-", SIGRTMAX, -1),
    ] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return rt(rest, base, sign);
        }
    }
    Some(match name {
        "RTMIN" => SIGRTMIN,
        "RTMAX" => SIGRTMAX,
        "ABRT" | "IOT" => libc::SIGABRT,
        "ALRM" => libc::SIGALRM,
        "BUS" => libc::SIGBUS,
        "CHLD" | "CLD" => libc::SIGCHLD,
        "CONT" => libc::SIGCONT,
        "FPE" => libc::SIGFPE,
        "HUP" => libc::SIGHUP,
        "ILL" => libc::SIGILL,
        "INT" => libc::SIGINT,
        "IO" | "POLL" => libc::SIGIO,
        "KILL" => libc::SIGKILL,
        "PIPE" => libc::SIGPIPE,
        "PROF" => libc::SIGPROF,
        "PWR" => libc::SIGPWR,
        "QUIT" => libc::SIGQUIT,
        "SEGV" => libc::SIGSEGV,
        "STKFLT" => libc::SIGSTKFLT,
        "STOP" => libc::SIGSTOP,
        "SYS" => libc::SIGSYS,
        "TERM" => libc::SIGTERM,
        "TRAP" => libc::SIGTRAP,
        "TSTP" => libc::SIGTSTP,
        "TTIN" => libc::SIGTTIN,
        "TTOU" => libc::SIGTTOU,
        "URG" => libc::SIGURG,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "VTALRM" => libc::SIGVTALRM,
        "WINCH" => libc::SIGWINCH,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        _ => return None,
    })
}

/// `filepath.Clean` for absolute container paths (`.`/`..`/duplicate slashes resolved).
fn clean(p: &str) -> PathBuf {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    PathBuf::from(format!("/{}", parts.join("/")))
}

/// containerd's `WithProcessArgs` (moby's rules): a CRI command replaces the image's
/// entrypoint and then drops the image's cmd; CRI args replace the cmd.
fn process_args(config: &ContainerConfig, image: &ImageConfig) -> Result<Vec<String>, SpecError> {
    let mut command = config.command.clone();
    let mut args = config.args.clone();
    if command.is_empty() {
        if args.is_empty() {
            args = image.cmd.clone();
        }
        if !(image.entrypoint.len() == 1 && image.entrypoint[0].is_empty()) {
            command = image.entrypoint.clone();
        }
    }
    command.extend(args);
    if command.is_empty() {
        return Err(SpecError::InvalidArgument(format!(
            "no command specified for container {:?}: neither the config nor the image has one",
            config.metadata.name
        )));
    }
    Ok(command)
}

/// containerd's `replaceOrAppendEnvValues`: a key already present is replaced in place,
/// a new one appended; `KEY` without `=` removes it.
fn merge_env(env: &mut Vec<String>, overrides: impl IntoIterator<Item = String>) {
    for v in overrides {
        let (key, set) = match v.split_once('=') {
            Some((k, _)) => (k.to_string(), true),
            None => (v.clone(), false),
        };
        let pos = env
            .iter()
            .position(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key);
        match (pos, set) {
            (Some(i), true) => env[i] = v,
            (None, true) => env.push(v),
            (Some(i), false) => {
                env.remove(i);
            }
            (None, false) => {}
        }
    }
}

fn env(config: &ContainerConfig, image: &ImageConfig, hostname: &str) -> Vec<String> {
    let mut env = vec![DEFAULT_PATH_ENV.to_string()];
    if config.tty {
        env.push("TERM=xterm".into());
    }
    merge_env(&mut env, [format!("HOSTNAME={hostname}")]);
    merge_env(
        &mut env,
        image
            .env
            .iter()
            .cloned()
            .chain(config.envs.iter().map(|e| format!("{}={}", e.key, e.value))),
    );
    env
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn mount(dst: &str, typ: &str, src: &str, options: &[&str]) -> Result<Mount, SpecError> {
    MountBuilder::default()
        .destination(dst)
        .typ(typ)
        .source(src)
        .options(strings(options))
        .build()
        .map_err(internal)
}

/// containerd's default mounts without `/run`, plus the cgroup mounts (`cgroup_mounts`).
fn default_mounts(input: &SpecInput) -> Result<Vec<Mount>, SpecError> {
    let sys_mode = if input.config.security.privileged {
        "rw"
    } else {
        "ro"
    };
    let mut out = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_mode],
        )?,
    ];
    out.extend(cgroup_mounts(input, sys_mode)?);
    Ok(out)
}

/// The v1 controllers whose hierarchies libcontainer 0.7's cgroup manager puts a container
/// in (libcgroups' private `v1::controller_type::CONTROLLERS`).
const LIBCONTAINER_V1_CONTROLLERS: [&str; 12] = [
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "hugetlb",
    "memory",
    "pids",
    "perf_event",
    "blkio",
    "net_prio",
    "net_cls",
    "freezer",
];

/// Whether libcontainer 0.7 makes the container a cgroup of its own in the v1 hierarchy
/// mounted at `/sys/fs/cgroup/<dir>`. libcgroups finds a controller's hierarchy by the
/// mount point's name: the controller's own, or the comounts `cpu,cpuacct`,
/// `net_cls,net_prio` and `net_prio,net_cls`. Named hierarchies (`systemd`) and
/// controllers it does not manage (`rdma`, `misc`) get none: there the container stays in
/// the shim's cgroup.
fn libcontainer_v1_hierarchy(dir: &str) -> bool {
    LIBCONTAINER_V1_CONTROLLERS.contains(&dir)
        || matches!(dir, "cpu,cpuacct" | "net_cls,net_prio" | "net_prio,net_cls")
}

/// The cgroup filesystem at `/sys/fs/cgroup`, `mode` (`ro`, or `rw` for privileged
/// containers).
///
/// cgroup v2: the `cgroup` mount as containerd writes it (libcontainer mounts cgroup2
/// there; its PID namespace bug is in the v1 path only).
///
/// cgroup v1: runc's emulation, written out here because libcontainer 0.7's
/// (`mount_cgroup_v1`) breaks in a shared PID namespace. It takes "the parent's" cgroups
/// from the host's `/proc/<pid>/cgroup`, where pid is the init's own pid when its parent
/// is outside its PID namespace — a pid of the pod's namespace looked up in the host's
/// procfs: the create fails ("failed to prepare rootfs") when no host process has that
/// pid, and an unrelated host process's cgroup is stripped from the container's paths
/// when one does. So, as runc: a tmpfs, and in it, for each hierarchy where libcontainer
/// creates the container's cgroup, a bind of that cgroup (made by libcontainer's
/// intermediate process, which joins it before it forks the init that mounts). The
/// cgroup path is libcontainer's (`cgroups_path`, its default when empty), joined under
/// each mount point as libcgroups' v1 manager joins it, for either cgroup driver (berth
/// always runs libcontainer's cgroupfs manager on v1). Hierarchies where the container has
/// no cgroup of its own are left out rather than showing the shim's cgroup, which holds
/// the shim, its other containers and, under systemd, berthd and every other pod. No
/// comount symlinks (`cpu` -> `cpu,cpuacct`): OCI mounts cannot make symlinks. The tmpfs
/// stays writable until the binds' mount points are made in it (`cgroup_v1_readonly_paths`).
fn cgroup_mounts(input: &SpecInput, mode: &str) -> Result<Vec<Mount>, SpecError> {
    if input.host.cgroup_v2 {
        return Ok(vec![mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", mode],
        )?]);
    }
    let mut out = vec![mount(
        "/sys/fs/cgroup",
        "tmpfs",
        "tmpfs",
        &["nosuid", "noexec", "nodev", "mode=755"],
    )?];
    let cgroup = libcontainer::utils::get_cgroup_path(&cgroups_path(input), input.id);
    let cgroup = cgroup.strip_prefix("/").unwrap_or(&cgroup);
    for dir in input
        .host
        .cgroup_v1_hierarchies
        .iter()
        .filter(|d| libcontainer_v1_hierarchy(d))
    {
        let dst = format!("/sys/fs/cgroup/{dir}");
        let src = Path::new(&dst).join(cgroup);
        out.push(
            MountBuilder::default()
                .destination(dst)
                .typ("bind")
                .source(src)
                .options(strings(&["rbind", "nosuid", "noexec", "nodev", mode]))
                .build()
                .map_err(internal)?,
        );
    }
    Ok(out)
}

/// `linux.cgroupsPath`: the caller's, none when empty.
fn cgroups_path(input: &SpecInput) -> Option<PathBuf> {
    (!input.cgroups_path.is_empty()).then(|| PathBuf::from(&input.cgroups_path))
}

/// A bind mount as containerd's `WithMounts` turns a CRI mount into one.
struct BindMount {
    container_path: PathBuf,
    host_path: PathBuf,
    readonly: bool,
    recursive_read_only: bool,
    propagation: Propagation,
    uid_mappings: Vec<IdMapping>,
    gid_mappings: Vec<IdMapping>,
    image: bool,
}

/// The pod's files and `/dev/shm`, unless the CRI mounts its own there.
fn pod_mounts(input: &SpecInput) -> Vec<BindMount> {
    let config = input.config;
    let pod = input.pod;
    let sc = &config.security;
    let in_cri = |p: &str| {
        config
            .mounts
            .iter()
            .any(|m| clean(&m.container_path) == Path::new(p))
    };
    let file = |dst: &str, src: &Path| BindMount {
        container_path: dst.into(),
        host_path: src.to_path_buf(),
        readonly: sc.readonly_rootfs,
        recursive_read_only: false,
        propagation: Propagation::Private,
        uid_mappings: Vec::new(),
        gid_mappings: Vec::new(),
        image: false,
    };
    let mut out = Vec::new();
    for (dst, src) in [
        ("/etc/hostname", &pod.hostname_file),
        ("/etc/hosts", &pod.hosts_file),
        ("/etc/resolv.conf", &pod.resolv_conf_file),
    ] {
        if !src.as_os_str().is_empty() && !in_cri(dst) {
            out.push(file(dst, src));
        }
    }
    if !in_cri("/dev/shm") {
        let host_ipc = pod.host_ipc || sc.namespaces.ipc == NamespaceMode::Node;
        let shm = if host_ipc {
            Some(PathBuf::from("/dev/shm"))
        } else {
            pod.shm_dir.clone()
        };
        if let Some(shm) = shm {
            let mut m = file("/dev/shm", &shm);
            m.readonly = false;
            out.push(m);
        }
    }
    out
}

fn id_mappings(m: &[IdMapping]) -> Result<Vec<LinuxIdMapping>, SpecError> {
    m.iter()
        .map(|m| {
            LinuxIdMappingBuilder::default()
                .host_id(m.host_id)
                .container_id(m.container_id)
                .size(m.length)
                .build()
                .map_err(internal)
        })
        .collect()
}

/// All mounts, in containerd's order, and the rootfs propagation they need.
fn mounts(input: &SpecInput) -> Result<(Vec<Mount>, Option<String>), SpecError> {
    let config = input.config;
    let mut binds: Vec<BindMount> = Vec::new();
    for m in &config.mounts {
        if m.container_path.is_empty() || !m.container_path.starts_with('/') {
            return Err(SpecError::InvalidArgument(format!(
                "mount container path {:?} is not absolute",
                m.container_path
            )));
        }
        if m.host_path.is_empty() {
            return Err(SpecError::InvalidArgument(match &m.image {
                Some(image) => format!(
                    "image volume {image:?} for {:?} was not prepared (no host directory)",
                    m.container_path
                ),
                None => format!("mount {:?} has no host path", m.container_path),
            }));
        }
        binds.push(BindMount {
            container_path: clean(&m.container_path),
            host_path: PathBuf::from(&m.host_path),
            readonly: m.readonly || m.image.is_some(),
            recursive_read_only: m.recursive_read_only,
            propagation: m.propagation,
            uid_mappings: m.uid_mappings.clone(),
            gid_mappings: m.gid_mappings.clone(),
            image: m.image.is_some(),
        });
    }
    binds.extend(pod_mounts(input));
    if let Some(dir) = input.image_volumes_dir {
        for (dst, src) in image_volume_mounts(config, input.image, dir) {
            binds.push(BindMount {
                container_path: dst,
                host_path: src,
                readonly: false,
                recursive_read_only: false,
                propagation: Propagation::Private,
                uid_mappings: Vec::new(),
                gid_mappings: Vec::new(),
                image: false,
            });
        }
    }
    // Fewer path components first, so that a parent never shadows a child (stable).
    binds.sort_by_key(|b| b.container_path.components().count());

    let targets: HashSet<&Path> = binds.iter().map(|b| b.container_path.as_path()).collect();
    let dev_mounted = targets.contains(Path::new("/dev"));
    // A CRI mount at /sys/fs/cgroup replaces the whole (emulated) cgroup mount.
    let cgroup_mounted = targets.contains(Path::new("/sys/fs/cgroup"));
    let mut out: Vec<Mount> = default_mounts(input)?
        .into_iter()
        .filter(|m| {
            let dst = m.destination().as_path();
            let under_dev = dev_mounted && dst.starts_with("/dev");
            let under_cgroup = cgroup_mounted && dst.starts_with("/sys/fs/cgroup");
            !(targets.contains(dst) || under_dev || under_cgroup)
        })
        .collect();

    let mut rootfs_propagation: Option<String> = None;
    for b in binds {
        let mut options = vec!["rbind".to_string()];
        match b.propagation {
            Propagation::Private => options.push("rprivate".into()),
            Propagation::HostToContainer => {
                options.push("rslave".into());
                // containerd writes "rslave"/"rshared"; libcontainer 0.7 knows the
                // propagation types only without the "r" (it always applies them
                // recursively) and refuses the rest.
                if rootfs_propagation.as_deref() != Some("shared") {
                    rootfs_propagation = Some("slave".into());
                }
            }
            Propagation::Bidirectional => {
                options.push("rshared".into());
                rootfs_propagation = Some("shared".into());
            }
        }
        let dst = b.container_path.display().to_string();
        if b.readonly {
            if b.recursive_read_only {
                if b.propagation != Propagation::Private {
                    return Err(SpecError::InvalidArgument(format!(
                        "recursive read-only mount {dst:?} needs private propagation"
                    )));
                }
                options.push("rro".into());
            } else {
                options.push("ro".into());
            }
        } else {
            if b.recursive_read_only {
                return Err(SpecError::InvalidArgument(format!(
                    "recursive read-only mount {dst:?} conflicts with a read-write mount \
                     (readonly must be set too)"
                )));
            }
            options.push("rw".into());
        }
        if b.image {
            options.push("noexec".into());
        }
        if !b.uid_mappings.is_empty() || !b.gid_mappings.is_empty() {
            // libcontainer 0.7 refuses every idmapped mount (MountIdmapUnsupported).
            return Err(SpecError::Unsupported(format!(
                "mount {dst:?} asks for an idmapped mount (uid/gid mappings), which this \
                 runtime does not support"
            )));
        }
        out.push(
            MountBuilder::default()
                .destination(b.container_path)
                .typ("bind")
                .source(b.host_path)
                .options(options)
                .build()
                .map_err(internal)?,
        );
    }
    Ok((out, rootfs_propagation))
}

fn namespace(typ: LinuxNamespaceType, path: Option<&Path>) -> Result<LinuxNamespace, SpecError> {
    let b = LinuxNamespaceBuilder::default().typ(typ);
    match path {
        Some(p) => b.path(p),
        None => b,
    }
    .build()
    .map_err(internal)
}

/// The container's namespaces: the pod's network, IPC and UTS (none listed = the host's),
/// PID by mode, a new mount namespace, a cgroup namespace on cgroup v2 (not privileged),
/// and a user namespace when the config asks for one.
fn namespaces(input: &SpecInput) -> Result<Vec<LinuxNamespace>, SpecError> {
    use LinuxNamespaceType as T;
    let pod = input.pod;
    let ns = &input.config.security.namespaces;
    let mut out = Vec::new();

    match ns.pid {
        NamespaceMode::Container => out.push(namespace(T::Pid, None)?),
        NamespaceMode::Target => {
            let path = input.target_pid_ns.ok_or_else(|| {
                SpecError::NotFound(format!(
                    "PID namespace of target container {:?} is unknown",
                    ns.target_id
                ))
            })?;
            out.push(namespace(T::Pid, Some(path))?);
        }
        NamespaceMode::Pod | NamespaceMode::Node => match pod.pid_mode {
            NsMode::Pod => {
                let path = pod.pid_ns.as_deref().ok_or_else(|| {
                    SpecError::InvalidArgument(format!(
                        "pod {} shares a PID namespace but has none pinned",
                        pod.pod_id
                    ))
                })?;
                out.push(namespace(T::Pid, Some(path))?);
            }
            NsMode::Container => out.push(namespace(T::Pid, None)?),
            NsMode::Node => {}
        },
    }
    for (typ, path) in [
        (T::Ipc, &pod.ipc_ns),
        (T::Uts, &pod.uts_ns),
        (T::Network, &pod.net_ns),
    ] {
        if let Some(p) = path {
            out.push(namespace(typ, Some(p))?);
        }
    }
    out.push(namespace(T::Mount, None)?);
    if input.host.cgroup_v2 && !input.config.security.privileged {
        out.push(namespace(T::Cgroup, None)?);
    }
    if let Some(u) = &ns.userns
        && u.mode == NamespaceMode::Pod
    {
        out.push(namespace(T::User, pod.user_ns.as_deref())?);
    }
    Ok(out)
}

fn oci_caps(names: &[String]) -> Result<OciCapabilities, SpecError> {
    names
        .iter()
        .map(|n| {
            capabilities::to_oci(n)
                .ok_or_else(|| SpecError::InvalidArgument(format!("unknown capability {n:?}")))
        })
        .collect()
}

fn canonical_caps(names: &[String]) -> Result<Vec<String>, SpecError> {
    names
        .iter()
        .map(|n| {
            capabilities::normalize(n)
                .ok_or_else(|| SpecError::InvalidArgument(format!("unknown capability {n:?}")))
        })
        .collect()
}

/// The bounding (= effective = permitted) capability set.
fn capability_set(input: &SpecInput) -> Result<Vec<String>, SpecError> {
    let sc = &input.config.security;
    let all = &input.host.capabilities;
    // Validate even when privileged, so a typo is caught either way.
    let add = canonical_caps(&sc.capabilities.add)?;
    let drop = canonical_caps(&sc.capabilities.drop)?;
    canonical_caps(&sc.capabilities.add_ambient)?;
    let base = strings(&capabilities::DEFAULT);
    let caps = capabilities::apply(&base, &add, &drop, all);
    Ok(if sc.privileged { all.clone() } else { caps })
}

fn device_type(k: DeviceKind) -> LinuxDeviceType {
    match k {
        DeviceKind::Block => LinuxDeviceType::B,
        DeviceKind::Char => LinuxDeviceType::C,
    }
}

fn linux_device(d: &DeviceNode) -> Result<LinuxDevice, SpecError> {
    LinuxDeviceBuilder::default()
        .path(d.path.clone())
        .typ(device_type(d.kind))
        .major(d.major)
        .minor(d.minor)
        .file_mode(d.file_mode)
        .uid(d.uid)
        .gid(d.gid)
        .build()
        .map_err(internal)
}

fn device_rule(
    allow: bool,
    node: Option<&DeviceNode>,
    access: &str,
) -> Result<LinuxDeviceCgroup, SpecError> {
    let b = LinuxDeviceCgroupBuilder::default()
        .allow(allow)
        .access(access.to_string());
    match node {
        Some(d) => b.typ(device_type(d.kind)).major(d.major).minor(d.minor),
        None => b,
    }
    .build()
    .map_err(internal)
}

/// Devices and their cgroup rules: deny all, then each CRI device; privileged: the
/// host's devices too and allow all.
fn devices(input: &SpecInput) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>), SpecError> {
    let mut devs = Vec::new();
    let mut seen = HashSet::new();
    let mut rules = vec![device_rule(false, None, "rwm")?];
    for d in input.devices {
        for c in d.permissions.chars() {
            if !"rwm".contains(c) {
                return Err(SpecError::InvalidArgument(format!(
                    "device {}: invalid permissions {:?} (use r, w and m)",
                    d.path.display(),
                    d.permissions
                )));
            }
        }
        if seen.insert(d.path.clone()) {
            devs.push(linux_device(d)?);
        }
        let access = if d.permissions.is_empty() {
            "rwm"
        } else {
            &d.permissions
        };
        rules.push(device_rule(true, Some(d), access)?);
    }
    if input.config.security.privileged {
        for d in input.host_devices {
            if seen.insert(d.path.clone()) {
                devs.push(linux_device(d)?);
            }
        }
        rules = vec![device_rule(true, None, "rwm")?];
    }
    Ok((devs, rules))
}

/// containerd's `WithResources` (and the device rules).
fn resources(
    input: &SpecInput,
    device_rules: Vec<LinuxDeviceCgroup>,
) -> Result<LinuxResources, SpecError> {
    let mut res = LinuxResources::default();
    res.set_devices(Some(device_rules));
    let Some(r) = &input.config.resources else {
        return Ok(res);
    };
    let host = input.host;

    let mut cpu = LinuxCpu::default();
    if r.cpu_period > 0 {
        cpu.set_period(Some(r.cpu_period as u64));
    }
    if r.cpu_quota != 0 {
        cpu.set_quota(Some(r.cpu_quota));
    }
    if r.cpu_shares > 0 {
        cpu.set_shares(Some(r.cpu_shares as u64));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.set_cpus(Some(r.cpuset_cpus.clone()));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.set_mems(Some(r.cpuset_mems.clone()));
    }
    if cpu != LinuxCpu::default() {
        res.set_cpu(Some(cpu));
    }

    let mut mem = LinuxMemory::default();
    if r.memory_limit != 0 {
        mem.set_limit(Some(r.memory_limit));
        // No swap beyond the memory limit unless asked (containerd).
        if r.memory_swap_limit == 0 && host.swap_accounting {
            mem.set_swap(Some(r.memory_limit));
        }
    }
    if r.memory_swap_limit != 0 && host.swap_accounting {
        mem.set_swap(Some(r.memory_swap_limit));
    }
    if mem != LinuxMemory::default() {
        res.set_memory(Some(mem));
    }

    if host.hugetlb && !r.hugepage_limits.is_empty() {
        let limits = r
            .hugepage_limits
            .iter()
            .map(|h| {
                LinuxHugepageLimitBuilder::default()
                    .page_size(h.page_size.clone())
                    .limit(i64::try_from(h.limit).unwrap_or(i64::MAX))
                    .build()
                    .map_err(internal)
            })
            .collect::<Result<Vec<_>, _>>()?;
        res.set_hugepage_limits(Some(limits));
    }
    if !r.unified.is_empty() {
        res.set_unified(Some(
            r.unified
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ));
    }
    Ok(res)
}

/// containerd's CRI annotations, over the config's own.
fn annotations(input: &SpecInput) -> HashMap<String, String> {
    let c = input.config;
    let pod = input.pod;
    let image = if c.user_specified_image.is_empty() {
        &c.image
    } else {
        &c.user_specified_image
    };
    let mut a: HashMap<String, String> = c.annotations.clone().into_iter().collect();
    for (k, v) in [
        ("io.kubernetes.cri.container-type", "container"),
        ("io.kubernetes.cri.sandbox-id", pod.pod_id.as_str()),
        (
            "io.kubernetes.cri.sandbox-namespace",
            pod.pod_namespace.as_str(),
        ),
        ("io.kubernetes.cri.sandbox-uid", pod.pod_uid.as_str()),
        ("io.kubernetes.cri.sandbox-name", pod.pod_name.as_str()),
        ("io.kubernetes.cri.container-name", c.metadata.name.as_str()),
        ("io.kubernetes.cri.image-name", image.as_str()),
    ] {
        a.insert(k.to_string(), v.to_string());
    }
    a
}

/// The emulated v1 cgroup tmpfs (`cgroup_mounts`) is mounted writable, since the binds'
/// mount points are made in it; listed as a read-only path, libcontainer remounts it `ro`
/// after all mounts (a recursive bind onto itself, then a remount of the top only: the
/// binds keep their own `ro`). Nothing for privileged containers, v2, or when a CRI mount
/// replaced it.
fn cgroup_v1_readonly_paths(input: &SpecInput, mounts: &[Mount]) -> Vec<String> {
    let kept = mounts.iter().any(|m| {
        m.typ().as_deref() == Some("tmpfs") && m.destination() == Path::new("/sys/fs/cgroup")
    });
    if input.config.security.privileged || input.host.cgroup_v2 || !kept {
        return Vec::new();
    }
    vec!["/sys/fs/cgroup".to_string()]
}

/// The container's OCI runtime spec. See the module doc for what the caller supplies.
pub fn generate(input: &SpecInput) -> Result<Spec, SpecError> {
    let config = input.config;
    let sc = &config.security;
    let pod = input.pod;

    if sc.privileged && !pod.privileged {
        return Err(SpecError::InvalidArgument(format!(
            "privileged container {:?} is not allowed in the non-privileged pod {}",
            config.metadata.name, pod.pod_id
        )));
    }
    if let Some(d) = config
        .cdi_devices
        .iter()
        .find(|d| !input.cdi.devices.contains(d))
    {
        return Err(SpecError::Internal(format!(
            "CDI device {d:?} was not resolved"
        )));
    }

    let args = process_args(config, input.image)?;
    let env = env(config, input.image, &pod.hostname);
    let cwd = if !config.working_dir.is_empty() {
        config.working_dir.clone()
    } else if !input.image.working_dir.is_empty() {
        input.image.working_dir.clone()
    } else {
        "/".to_string()
    };
    if !cwd.starts_with('/') {
        return Err(SpecError::InvalidArgument(format!(
            "working directory {cwd:?} is not absolute"
        )));
    }
    let u = user::resolve(sc, &input.image.user, input.passwd, input.group)?;

    let caps = capability_set(input)?;
    let oci = oci_caps(&caps)?;
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(oci.clone())
        .effective(oci.clone())
        .permitted(oci)
        .inheritable(OciCapabilities::new())
        .ambient(OciCapabilities::new())
        .build()
        .map_err(internal)?;

    let mut process = ProcessBuilder::default()
        .terminal(config.tty)
        .user(
            UserBuilder::default()
                .uid(u.uid)
                .gid(u.gid)
                .additional_gids(u.additional_gids)
                .build()
                .map_err(internal)?,
        )
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(capabilities)
        .build()
        .map_err(internal)?;
    // Absent rather than `false`: libcontainer 0.7 tests `no_new_privileges` with
    // `is_some()` to decide when to load seccomp, so `Some(false)` makes it load the filter
    // after dropping capabilities, without no_new_privs, and the load fails.
    process.set_no_new_privileges(sc.no_new_privs.then_some(true));
    process.set_rlimits(None);
    process.set_apparmor_profile(None);
    process.set_selinux_label(None);
    process.set_oom_score_adj(config.resources.as_ref().map(|r| {
        r.oom_score_adj
            .clamp(i64::from(input.host.min_oom_score_adj), 1000) as i32
    }));

    let seccomp = if sc.privileged {
        None
    } else {
        match &sc.seccomp {
            SeccompProfile::Unconfined => None,
            SeccompProfile::RuntimeDefault => Some(seccomp::default_profile(&caps)),
            SeccompProfile::Localhost(path) => {
                let content = input.seccomp_localhost.ok_or_else(|| {
                    SpecError::NotFound(format!("seccomp profile {} not loaded", path.display()))
                })?;
                Some(seccomp::parse_localhost(path, content)?)
            }
        }
    }
    .map(|mut s| {
        seccomp::swap_masked_eq_operands(&mut s);
        s
    });

    let (mounts, rootfs_propagation) = mounts(input)?;
    let (devices, device_rules) = devices(input)?;
    let resources = resources(input, device_rules)?;

    let mut linux = LinuxBuilder::default().build().map_err(internal)?;
    linux.set_namespaces(Some(namespaces(input)?));
    linux.set_resources(Some(resources));
    linux.set_devices((!devices.is_empty()).then_some(devices));
    linux.set_cgroups_path(cgroups_path(input));
    linux.set_rootfs_propagation(rootfs_propagation);
    linux.set_seccomp(seccomp);
    linux.set_sysctl(None);
    linux.set_mount_label(None);
    let (masked, mut readonly) = if sc.privileged {
        (Vec::new(), Vec::new())
    } else {
        (sc.masked_paths.clone(), sc.readonly_paths.clone())
    };
    readonly.extend(cgroup_v1_readonly_paths(input, &mounts));
    linux.set_masked_paths((!masked.is_empty()).then_some(masked));
    linux.set_readonly_paths((!readonly.is_empty()).then_some(readonly));
    match &sc.namespaces.userns {
        Some(u) if u.mode == NamespaceMode::Pod => {
            linux.set_uid_mappings(Some(id_mappings(&u.uids)?));
            linux.set_gid_mappings(Some(id_mappings(&u.gids)?));
        }
        _ => {
            linux.set_uid_mappings(None);
            linux.set_gid_mappings(None);
        }
    }

    let mut spec = SpecBuilder::default()
        .version(oci_spec::runtime::VERSION)
        .root(
            RootBuilder::default()
                .path(input.rootfs)
                .readonly(sc.readonly_rootfs)
                .build()
                .map_err(internal)?,
        )
        .process(process)
        .mounts(mounts)
        .annotations(annotations(input))
        .linux(linux)
        .build()
        .map_err(internal)?;
    spec.set_hostname(None);
    spec.set_domainname(None);
    cdi::apply(&input.cdi.edits, &mut spec);
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{Capability, LinuxSeccompAction, LinuxSeccompOperator};

    use super::*;
    use crate::container::config::{
        Capabilities, ContainerMetadata, EnvVar, HugepageLimit, Mount as CriMount,
        NamespaceOptions, Resources, SupplementalGroupsPolicy, UserNamespace,
    };

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:root,alice\nalice:x:1000:\nstaff:x:50:alice\n";

    /// Everything `SpecInput` borrows, owned, with defaults for an ordinary pod.
    struct Fixture {
        config: ContainerConfig,
        image: ImageConfig,
        pod: PodContext,
        host: HostFeatures,
        passwd: Option<String>,
        group: Option<String>,
        seccomp_localhost: Option<String>,
        devices: Vec<DeviceNode>,
        host_devices: Vec<DeviceNode>,
        cdi: Injection,
        target_pid_ns: Option<PathBuf>,
        image_volumes_dir: Option<PathBuf>,
        cgroups_path: String,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                config: ContainerConfig {
                    metadata: ContainerMetadata {
                        name: "app".into(),
                        attempt: 0,
                    },
                    image: "docker.io/library/busybox:latest".into(),
                    ..Default::default()
                },
                image: ImageConfig {
                    env: vec!["PATH=/img/bin:/bin".into(), "IMG=1".into()],
                    cmd: vec!["sh".into()],
                    ..Default::default()
                },
                pod: PodContext {
                    pod_id: "pod1".into(),
                    pod_name: "web".into(),
                    pod_namespace: "default".into(),
                    pod_uid: "uid-1".into(),
                    hostname: "web-0".into(),
                    net_ns: Some("/run/berth/pod1/ns/net".into()),
                    ipc_ns: Some("/run/berth/pod1/ns/ipc".into()),
                    uts_ns: Some("/run/berth/pod1/ns/uts".into()),
                    pid_ns: None,
                    pid_mode: NsMode::Container,
                    hostname_file: "/run/berth/pod1/hostname".into(),
                    hosts_file: "/run/berth/pod1/hosts".into(),
                    resolv_conf_file: "/run/berth/pod1/resolv.conf".into(),
                    shm_dir: Some("/run/berth/pod1/shm".into()),
                    ..Default::default()
                },
                host: HostFeatures {
                    min_oom_score_adj: -998,
                    capabilities: capabilities::from_mask(u64::MAX),
                    swap_accounting: true,
                    hugetlb: false,
                    cgroup_v2: false,
                    cgroup_v1_hierarchies: sv(&["memory", "systemd"]),
                },
                passwd: Some(PASSWD.into()),
                group: Some(GROUP.into()),
                seccomp_localhost: None,
                devices: Vec::new(),
                host_devices: Vec::new(),
                cdi: Injection::default(),
                target_pid_ns: None,
                image_volumes_dir: None,
                cgroups_path: "/kubepods/pod1/c1".into(),
            }
        }

        fn spec(&self) -> Result<Spec, SpecError> {
            generate(&SpecInput {
                id: "c1",
                config: &self.config,
                image: &self.image,
                pod: &self.pod,
                rootfs: Path::new("/var/lib/berth/containers/c1/rootfs"),
                cgroups_path: self.cgroups_path.clone(),
                passwd: self.passwd.as_deref(),
                group: self.group.as_deref(),
                seccomp_localhost: self.seccomp_localhost.as_deref(),
                devices: &self.devices,
                host_devices: &self.host_devices,
                cdi: &self.cdi,
                target_pid_ns: self.target_pid_ns.as_deref(),
                image_volumes_dir: self.image_volumes_dir.as_deref(),
                host: &self.host,
            })
        }

        fn ok(&self) -> Spec {
            self.spec().unwrap()
        }
    }

    fn process(s: &Spec) -> &oci_spec::runtime::Process {
        s.process().as_ref().unwrap()
    }

    fn linux(s: &Spec) -> &oci_spec::runtime::Linux {
        s.linux().as_ref().unwrap()
    }

    fn args(s: &Spec) -> Vec<String> {
        process(s).args().clone().unwrap()
    }

    fn env(s: &Spec) -> Vec<String> {
        process(s).env().clone().unwrap()
    }

    fn sv(v: &[&str]) -> Vec<String> {
        strings(v)
    }

    fn find_mount<'a>(s: &'a Spec, dst: &str) -> Option<&'a Mount> {
        s.mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new(dst))
    }

    fn opts(s: &Spec, dst: &str) -> Vec<String> {
        find_mount(s, dst)
            .unwrap_or_else(|| panic!("no mount at {dst}"))
            .options()
            .clone()
            .unwrap()
    }

    fn bounding(s: &Spec) -> OciCapabilities {
        process(s)
            .capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .clone()
            .unwrap()
    }

    fn ns(s: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
        linux(s)
            .namespaces()
            .clone()
            .unwrap()
            .into_iter()
            .map(|n| (n.typ(), n.path().clone()))
            .collect()
    }

    fn cri_mount(dst: &str, src: &str) -> CriMount {
        CriMount {
            container_path: dst.into(),
            host_path: src.into(),
            ..Default::default()
        }
    }

    // ---- image config, args, env, cwd -------------------------------------------------

    #[test]
    fn image_config_from_either_document_shape() {
        let full = r#"{"architecture":"amd64","config":{"User":"alice:staff","Env":["A=1"],
            "Entrypoint":["/e"],"Cmd":null,"WorkingDir":"/w","StopSignal":"SIGQUIT",
            "Volumes":{"/data":{}}},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c = ImageConfig::from_json(full).unwrap();
        assert_eq!(c.user, "alice:staff");
        assert_eq!(c.env, sv(&["A=1"]));
        assert_eq!(c.entrypoint, sv(&["/e"]));
        assert!(c.cmd.is_empty());
        assert_eq!(c.working_dir, "/w");
        assert_eq!(c.stop_signal, "SIGQUIT");
        assert_eq!(c.volumes, sv(&["/data"]));
        let section = ImageConfig::from_json(r#"{"Cmd":["sh"]}"#).unwrap();
        assert_eq!(section.cmd, sv(&["sh"]));
        assert_eq!(
            ImageConfig::from_json(r#"{"config":null}"#).unwrap(),
            ImageConfig::default()
        );
        assert!(ImageConfig::from_json("nope").is_err());
    }

    #[test]
    fn args_merge_as_containerd() {
        let mut f = Fixture::new();
        f.image.entrypoint = sv(&["/entry", "-x"]);
        f.image.cmd = sv(&["a", "b"]);
        assert_eq!(args(&f.ok()), sv(&["/entry", "-x", "a", "b"]));
        // CRI args replace the image's cmd, keep its entrypoint.
        f.config.args = sv(&["c"]);
        assert_eq!(args(&f.ok()), sv(&["/entry", "-x", "c"]));
        // A CRI command replaces the entrypoint and drops the image's cmd.
        f.config.args.clear();
        f.config.command = sv(&["/bin/run"]);
        assert_eq!(args(&f.ok()), sv(&["/bin/run"]));
        f.config.args = sv(&["--flag"]);
        assert_eq!(args(&f.ok()), sv(&["/bin/run", "--flag"]));
        // An entrypoint of [""] means none.
        let mut f = Fixture::new();
        f.image.entrypoint = sv(&[""]);
        f.image.cmd = sv(&["top"]);
        assert_eq!(args(&f.ok()), sv(&["top"]));
        // Nothing at all is an error.
        f.image.cmd.clear();
        assert!(matches!(f.spec(), Err(SpecError::InvalidArgument(_))));
    }

    #[test]
    fn env_merges_image_then_cri() {
        let mut f = Fixture::new();
        f.config.envs = vec![
            EnvVar {
                key: "IMG".into(),
                value: "2".into(),
            },
            EnvVar {
                key: "NEW".into(),
                value: "x=y".into(),
            },
        ];
        assert_eq!(
            env(&f.ok()),
            sv(&["PATH=/img/bin:/bin", "HOSTNAME=web-0", "IMG=2", "NEW=x=y"])
        );
        // Default PATH when the image sets none; TERM with a tty; a CRI HOSTNAME wins.
        f.image.env = sv(&["IMG=1"]);
        f.config.tty = true;
        f.config.envs = vec![EnvVar {
            key: "HOSTNAME".into(),
            value: "mine".into(),
        }];
        assert_eq!(
            env(&f.ok()),
            sv(&[DEFAULT_PATH_ENV, "TERM=xterm", "HOSTNAME=mine", "IMG=1"])
        );
        // An image entry without '=' unsets.
        f.image.env = sv(&["TERM"]);
        f.config.envs.clear();
        assert_eq!(env(&f.ok()), sv(&[DEFAULT_PATH_ENV, "HOSTNAME=web-0"]));
    }

    #[test]
    fn working_dir_precedence() {
        let mut f = Fixture::new();
        assert_eq!(process(&f.ok()).cwd(), Path::new("/"));
        f.image.working_dir = "/img".into();
        assert_eq!(process(&f.ok()).cwd(), Path::new("/img"));
        f.config.working_dir = "/cri".into();
        assert_eq!(process(&f.ok()).cwd(), Path::new("/cri"));
        f.config.working_dir = "rel".into();
        assert!(matches!(f.spec(), Err(SpecError::InvalidArgument(_))));
    }

    #[test]
    fn tty_sets_terminal() {
        let mut f = Fixture::new();
        assert_eq!(process(&f.ok()).terminal(), Some(false));
        f.config.tty = true;
        assert_eq!(process(&f.ok()).terminal(), Some(true));
    }

    // ---- user ---------------------------------------------------------------------------

    #[test]
    fn user_resolves_from_image_and_cri() {
        let mut f = Fixture::new();
        let u = |s: &Spec| {
            let u = process(s).user();
            (u.uid(), u.gid(), u.additional_gids().clone().unwrap())
        };
        assert_eq!(u(&f.ok()), (0, 0, vec![0, 10]));
        f.image.user = "alice".into();
        assert_eq!(u(&f.ok()), (1000, 1000, vec![10, 50, 1000]));
        f.config.security.supplemental_groups = vec![4000];
        f.config.security.supplemental_groups_policy = SupplementalGroupsPolicy::Strict;
        assert_eq!(u(&f.ok()), (1000, 1000, vec![1000, 4000]));
        f.config.security.run_as_user = Some(2000);
        f.config.security.run_as_group = Some(3000);
        assert_eq!(u(&f.ok()), (2000, 3000, vec![3000, 4000]));
        let mut f = Fixture::new();
        f.config.security.run_as_username = "bob".into();
        assert!(matches!(f.spec(), Err(SpecError::NotFound(_))));
        let mut f = Fixture::new();
        f.image.user = "alice".into();
        f.passwd = None;
        assert!(matches!(f.spec(), Err(SpecError::NotFound(_))));
    }

    // ---- mounts -------------------------------------------------------------------------

    #[test]
    fn default_mounts_and_pod_files() {
        let f = Fixture::new();
        let s = f.ok();
        let dsts: Vec<_> = s
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect();
        assert_eq!(
            dsts,
            sv(&[
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup",
                "/sys/fs/cgroup/memory",
                "/etc/hostname",
                "/etc/hosts",
                "/etc/resolv.conf",
                "/dev/shm",
            ])
        );
        assert!(find_mount(&s, "/run").is_none());
        assert_eq!(opts(&s, "/sys"), sv(&["nosuid", "noexec", "nodev", "ro"]));
        assert!(opts(&s, "/sys/fs/cgroup/memory").contains(&"ro".to_string()));
        assert_eq!(opts(&s, "/etc/hosts"), sv(&["rbind", "rprivate", "rw"]));
        let shm = find_mount(&s, "/dev/shm").unwrap();
        assert_eq!(shm.typ().as_deref(), Some("bind"));
        assert_eq!(
            shm.source().as_deref(),
            Some(Path::new("/run/berth/pod1/shm"))
        );
        assert_eq!(s.root().as_ref().unwrap().readonly(), Some(false));
    }

    #[test]
    fn readonly_rootfs_makes_pod_files_readonly_but_not_shm() {
        let mut f = Fixture::new();
        f.config.security.readonly_rootfs = true;
        let s = f.ok();
        assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
        for p in ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"] {
            assert_eq!(opts(&s, p), sv(&["rbind", "rprivate", "ro"]), "{p}");
        }
        assert_eq!(opts(&s, "/dev/shm"), sv(&["rbind", "rprivate", "rw"]));
    }

    #[test]
    fn host_ipc_binds_the_hosts_shm() {
        let mut f = Fixture::new();
        f.pod.host_ipc = true;
        f.pod.ipc_ns = None;
        f.pod.shm_dir = None;
        let s = f.ok();
        let shm = find_mount(&s, "/dev/shm").unwrap();
        assert_eq!(shm.source().as_deref(), Some(Path::new("/dev/shm")));
        // Without a pod shm dir and not host IPC: the default tmpfs.
        let mut f = Fixture::new();
        f.pod.shm_dir = None;
        let s = f.ok();
        assert_eq!(
            find_mount(&s, "/dev/shm").unwrap().typ().as_deref(),
            Some("tmpfs")
        );
    }

    #[test]
    fn cri_mounts_propagation_readonly_and_order() {
        let mut f = Fixture::new();
        let mut a = cri_mount("/data/sub", "/host/sub");
        a.readonly = true;
        let mut b = cri_mount("/data", "/host/data");
        b.propagation = Propagation::HostToContainer;
        let mut c = cri_mount("/shared", "/host/shared");
        c.propagation = Propagation::Bidirectional;
        let mut d = cri_mount("/rro", "/host/rro");
        d.readonly = true;
        d.recursive_read_only = true;
        f.config.mounts = vec![a, b, c, d];
        let s = f.ok();
        assert_eq!(opts(&s, "/data/sub"), sv(&["rbind", "rprivate", "ro"]));
        assert_eq!(opts(&s, "/data"), sv(&["rbind", "rslave", "rw"]));
        assert_eq!(opts(&s, "/shared"), sv(&["rbind", "rshared", "rw"]));
        assert_eq!(opts(&s, "/rro"), sv(&["rbind", "rprivate", "rro"]));
        assert_eq!(linux(&s).rootfs_propagation().as_deref(), Some("shared"));
        // Parents before children.
        let ms = s.mounts().as_ref().unwrap();
        let pos = |d: &str| ms.iter().position(|m| m.destination() == Path::new(d));
        assert!(pos("/data") < pos("/data/sub"));

        // rslave alone sets slave root propagation (libcontainer spelling).
        let mut f = Fixture::new();
        let mut b = cri_mount("/data", "/host/data");
        b.propagation = Propagation::HostToContainer;
        f.config.mounts = vec![b];
        assert_eq!(
            linux(&f.ok()).rootfs_propagation().as_deref(),
            Some("slave")
        );
        // No propagation asked: none set.
        let mut f = Fixture::new();
        f.config.mounts = vec![cri_mount("/data", "/host/data")];
        assert_eq!(linux(&f.ok()).rootfs_propagation(), &None);
    }

    #[test]
    fn bad_mounts_are_rejected() {
        let bad = |m: CriMount| {
            let mut f = Fixture::new();
            f.config.mounts = vec![m];
            f.spec().unwrap_err()
        };
        let mut m = cri_mount("/rro", "/h");
        m.recursive_read_only = true;
        assert!(matches!(bad(m.clone()), SpecError::InvalidArgument(_)));
        m.readonly = true;
        m.propagation = Propagation::HostToContainer;
        assert!(matches!(bad(m), SpecError::InvalidArgument(_)));
        assert!(matches!(
            bad(cri_mount("rel", "/h")),
            SpecError::InvalidArgument(_)
        ));
        assert!(matches!(
            bad(cri_mount("/x", "")),
            SpecError::InvalidArgument(_)
        ));
        let mut m = cri_mount("/x", "/h");
        m.uid_mappings = vec![IdMapping {
            host_id: 100000,
            container_id: 0,
            length: 65536,
        }];
        m.gid_mappings = m.uid_mappings.clone();
        assert!(matches!(bad(m), SpecError::Unsupported(_)));
    }

    #[test]
    fn cri_mounts_override_pod_files_and_dev() {
        let mut f = Fixture::new();
        f.config.mounts = vec![
            cri_mount("/etc/hosts", "/mine/hosts"),
            cri_mount("/dev", "/host/dev"),
        ];
        let s = f.ok();
        let hosts: Vec<_> = s
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.destination() == Path::new("/etc/hosts"))
            .collect();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].source().as_deref(), Some(Path::new("/mine/hosts")));
        // A CRI /dev drops the default /dev, /dev/pts, /dev/mqueue (but the pod's shm
        // mount is kept, as in containerd).
        let devs: Vec<_> = s
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.destination().starts_with("/dev"))
            .map(|m| m.source().clone().unwrap())
            .collect();
        assert_eq!(
            devs,
            vec![
                PathBuf::from("/host/dev"),
                PathBuf::from("/run/berth/pod1/shm")
            ]
        );
    }

    #[test]
    fn image_volume_mounts_and_image_mounts() {
        let mut f = Fixture::new();
        f.image.volumes = sv(&["/data", "/var/lib/db"]);
        f.config.mounts = vec![cri_mount("/data", "/host/data")];
        f.image_volumes_dir = Some("/var/lib/berth/containers/c1/volumes".into());
        let s = f.ok();
        let db = find_mount(&s, "/var/lib/db").unwrap();
        assert_eq!(
            db.source().as_deref(),
            Some(Path::new("/var/lib/berth/containers/c1/volumes/var_lib_db"))
        );
        assert_eq!(
            find_mount(&s, "/data").unwrap().source().as_deref(),
            Some(Path::new("/host/data"))
        );
        let mut f = Fixture::new();
        f.config.mounts = vec![CriMount {
            container_path: "/img".into(),
            image: Some("sha256:abc".into()),
            ..Default::default()
        }];
        assert!(matches!(f.spec(), Err(SpecError::InvalidArgument(_))));
        f.config.mounts[0].host_path = "/var/lib/berth/image-mounts/abc".into();
        assert_eq!(
            opts(&f.ok(), "/img"),
            sv(&["rbind", "rprivate", "ro", "noexec"])
        );
        assert!(host_paths_to_create(&f.config).is_empty());
    }

    #[test]
    fn host_paths_to_create_lists_cri_sources() {
        let c = ContainerConfig {
            mounts: vec![cri_mount("/a", "/host/a"), cri_mount("/b", "/host/b")],
            ..Default::default()
        };
        assert_eq!(
            host_paths_to_create(&c),
            vec![PathBuf::from("/host/a"), PathBuf::from("/host/b")]
        );
    }

    // ---- capabilities -------------------------------------------------------------------

    fn caps(v: &[&str]) -> OciCapabilities {
        v.iter().map(|c| capabilities::to_oci(c).unwrap()).collect()
    }

    #[test]
    fn default_capabilities_are_containerds() {
        let s = Fixture::new().ok();
        let c = process(&s).capabilities().as_ref().unwrap();
        assert_eq!(bounding(&s), caps(&capabilities::DEFAULT));
        assert_eq!(c.effective().clone().unwrap(), caps(&capabilities::DEFAULT));
        assert_eq!(c.permitted().clone().unwrap(), caps(&capabilities::DEFAULT));
        assert!(c.inheritable().clone().unwrap().is_empty());
        assert!(c.ambient().clone().unwrap().is_empty());
    }

    #[test]
    fn capabilities_add_drop_all() {
        let mut f = Fixture::new();
        f.config.security.capabilities = Capabilities {
            add: sv(&["CAP_SYS_ADMIN"]),
            drop: sv(&["CAP_CHOWN", "CAP_KILL"]),
            add_ambient: Vec::new(),
        };
        let b = bounding(&f.ok());
        assert!(b.contains(&Capability::SysAdmin));
        assert!(!b.contains(&Capability::Chown));
        assert!(!b.contains(&Capability::Kill));
        assert_eq!(b.len(), 13);

        f.config.security.capabilities.add = sv(&["ALL"]);
        f.config.security.capabilities.drop = sv(&["CAP_NET_ADMIN"]);
        let b = bounding(&f.ok());
        assert_eq!(b.len(), 40);
        assert!(!b.contains(&Capability::NetAdmin));

        f.config.security.capabilities.add = sv(&["CAP_NET_BIND_SERVICE"]);
        f.config.security.capabilities.drop = sv(&["ALL"]);
        assert_eq!(bounding(&f.ok()), caps(&["CAP_NET_BIND_SERVICE"]));

        // ALL is what berth holds: here, all but CAP_SYS_RESOURCE.
        f.host.capabilities = capabilities::from_mask(0x1ff_feff_ffff);
        f.config.security.capabilities.add = sv(&["ALL"]);
        f.config.security.capabilities.drop.clear();
        let b = bounding(&f.ok());
        assert_eq!(b.len(), 40);
        assert!(!b.contains(&Capability::SysResource));
    }

    #[test]
    fn invalid_capability_is_rejected() {
        for bad in ["CAP_NOPE", "NOPE"] {
            let mut f = Fixture::new();
            f.config.security.capabilities.add = sv(&[bad]);
            assert!(
                matches!(f.spec(), Err(SpecError::InvalidArgument(_))),
                "{bad}"
            );
            let mut f = Fixture::new();
            f.config.security.capabilities.drop = sv(&[bad]);
            assert!(
                matches!(f.spec(), Err(SpecError::InvalidArgument(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn privileged_gets_everything() {
        let mut f = Fixture::new();
        f.config.security.privileged = true;
        // Only in a privileged pod.
        assert!(matches!(f.spec(), Err(SpecError::InvalidArgument(_))));
        f.pod.privileged = true;
        f.config.security.seccomp = SeccompProfile::RuntimeDefault;
        f.config.security.masked_paths = sv(&["/proc/kcore"]);
        f.config.security.readonly_paths = sv(&["/proc/sys"]);
        f.config.security.capabilities.drop = sv(&["ALL"]);
        f.host_devices = vec![DeviceNode {
            path: "/dev/fuse".into(),
            kind: DeviceKind::Char,
            major: 10,
            minor: 229,
            file_mode: 0o666,
            uid: 0,
            gid: 0,
            permissions: String::new(),
        }];
        f.host.capabilities = capabilities::from_mask(0x1ff_feff_ffff);
        let s = f.ok();
        assert_eq!(bounding(&s).len(), 40);
        assert!(linux(&s).seccomp().is_none());
        assert!(linux(&s).masked_paths().is_none());
        assert!(linux(&s).readonly_paths().is_none());
        assert!(opts(&s, "/sys").contains(&"rw".to_string()));
        assert!(opts(&s, "/sys/fs/cgroup/memory").contains(&"rw".to_string()));
        let devs = linux(&s).devices().clone().unwrap();
        assert_eq!(devs[0].path(), Path::new("/dev/fuse"));
        let rules = linux(&s)
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .clone()
            .unwrap();
        assert_eq!(rules.len(), 1);
        assert!(rules[0].allow());
        assert_eq!(rules[0].access().as_deref(), Some("rwm"));
    }

    // ---- seccomp ------------------------------------------------------------------------

    fn seccomp_rules(s: &Spec) -> Vec<oci_spec::runtime::LinuxSyscall> {
        linux(s)
            .seccomp()
            .as_ref()
            .unwrap()
            .syscalls()
            .clone()
            .unwrap()
    }

    fn allowed(s: &Spec, name: &str) -> bool {
        seccomp_rules(s).iter().any(|r| {
            r.action() == LinuxSeccompAction::ScmpActAllow
                && r.args().is_none()
                && r.names().iter().any(|n| n == name)
        })
    }

    #[test]
    fn seccomp_runtime_default() {
        let mut f = Fixture::new();
        assert!(linux(&f.ok()).seccomp().is_none(), "unset means unconfined");
        f.config.security.seccomp = SeccompProfile::RuntimeDefault;
        let s = f.ok();
        let p = linux(&s).seccomp().as_ref().unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert!(allowed(&s, "read") && allowed(&s, "execve") && allowed(&s, "chroot"));
        for denied in [
            "mount",
            "unshare",
            "setns",
            "bpf",
            "reboot",
            "kexec_load",
            "ptrace_x",
        ] {
            assert!(!allowed(&s, denied), "{denied}");
        }
        // clone without namespace flags (operands as libcontainer reads them), clone3 ENOSYS.
        let rules = seccomp_rules(&s);
        let clone = rules.iter().find(|r| r.names() == &sv(&["clone"])).unwrap();
        let a = clone.args().clone().unwrap()[0];
        assert_eq!(a.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!((a.value(), a.value_two()), (0, Some(0x7E02_0000)));
        let clone3 = rules
            .iter()
            .find(|r| r.names() == &sv(&["clone3"]))
            .unwrap();
        assert_eq!(clone3.action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(clone3.errno_ret(), Some(38));
        let vsock = rules
            .iter()
            .find(|r| r.names() == &sv(&["socket"]))
            .unwrap();
        assert_eq!(vsock.args().clone().unwrap()[0].value(), 40);

        // CAP_SYS_ADMIN opens mount & co and drops the clone restrictions.
        f.config.security.capabilities.add = sv(&["CAP_SYS_ADMIN"]);
        let s = f.ok();
        assert!(allowed(&s, "mount") && allowed(&s, "unshare") && allowed(&s, "clone3"));
        assert!(!seccomp_rules(&s).iter().any(|r| r.errno_ret() == Some(38)));
        // Dropping SYS_CHROOT closes chroot.
        f.config.security.capabilities.drop = sv(&["CAP_SYS_CHROOT"]);
        assert!(!allowed(&f.ok(), "chroot"));
    }

    #[test]
    fn seccomp_unconfined_and_localhost() {
        let mut f = Fixture::new();
        f.config.security.seccomp = SeccompProfile::Unconfined;
        assert!(linux(&f.ok()).seccomp().is_none());

        f.config.security.seccomp =
            SeccompProfile::Localhost("/var/lib/kubelet/seccomp/p.json".into());
        assert!(matches!(f.spec(), Err(SpecError::NotFound(_))));
        f.seccomp_localhost = Some(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","archMap":[{"architecture":"SCMP_ARCH_X86_64"}],
                "syscalls":[{"names":["sethostname"],"action":"SCMP_ACT_ERRNO","errnoRet":1},
                {"names":["clone"],"action":"SCMP_ACT_ERRNO",
                 "args":[{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]}]}"#
                .into(),
        );
        let s = f.ok();
        let p = linux(&s).seccomp().as_ref().unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActAllow);
        let rules = p.syscalls().clone().unwrap();
        assert_eq!(rules[0].names(), &sv(&["sethostname"]));
        let a = rules[1].args().clone().unwrap()[0];
        assert_eq!((a.value(), a.value_two()), (0, Some(2114060288)));

        f.seccomp_localhost = Some("{not json".into());
        assert!(matches!(f.spec(), Err(SpecError::InvalidArgument(_))));
    }

    /// Loads the generated default profile into a scratch thread (with no_new_privs, so no
    /// privilege is needed) through libcontainer itself, then spawns a process from that
    /// thread: glibc tries `clone3` (ENOSYS by the profile) and falls back to `clone`,
    /// which the profile allows without namespace flags; `unshare` stays denied.
    #[test]
    fn seccomp_default_profile_works_under_libcontainer() {
        let mut f = Fixture::new();
        f.config.security.seccomp = SeccompProfile::RuntimeDefault;
        let profile = linux(&f.ok()).seccomp().clone().unwrap();
        let (spawned, unshare) = std::thread::spawn(move || {
            nix::sys::prctl::set_no_new_privs().unwrap();
            libcontainer::seccomp::initialize_seccomp(&profile).unwrap();
            let spawned = std::process::Command::new("/bin/true")
                .status()
                .is_ok_and(|s| s.success());
            let unshare = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS);
            (spawned, unshare)
        })
        .join()
        .unwrap();
        assert!(spawned);
        assert_eq!(unshare, Err(nix::errno::Errno::EPERM));
    }

    // ---- masked / readonly paths, no_new_privs ------------------------------------------

    #[test]
    fn masked_and_readonly_paths_are_the_configs() {
        let cgroup = sv(&["/sys/fs/cgroup"]);
        let mut f = Fixture::new();
        let s = f.ok();
        assert!(linux(&s).masked_paths().is_none());
        // Nothing of /proc unless asked; the v1 cgroup tmpfs always (see below).
        assert_eq!(linux(&s).readonly_paths().clone().unwrap(), cgroup);
        f.config.security.masked_paths = sv(&["/proc/kcore", "/sys/firmware"]);
        f.config.security.readonly_paths = sv(&["/proc/sys"]);
        let s = f.ok();
        assert_eq!(
            linux(&s).masked_paths().clone().unwrap(),
            sv(&["/proc/kcore", "/sys/firmware"])
        );
        let mut expected = sv(&["/proc/sys"]);
        expected.extend(cgroup);
        assert_eq!(linux(&s).readonly_paths().clone().unwrap(), expected);
    }

    /// The cgroup mounts under `/sys/fs/cgroup`: (destination, type, source, options).
    fn cgroup_mounts_of(s: &Spec) -> Vec<(String, String, String, Vec<String>)> {
        s.mounts()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.destination().starts_with("/sys/fs/cgroup"))
            .map(|m| {
                (
                    m.destination().display().to_string(),
                    m.typ().clone().unwrap_or_default(),
                    m.source()
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    m.options().clone().unwrap_or_default(),
                )
            })
            .collect()
    }

    fn v1_fixture() -> Fixture {
        let mut f = Fixture::new();
        f.host.cgroup_v1_hierarchies = sv(&[
            "cpu,cpuacct",
            "cpuset",
            "memory",
            "net_cls,net_prio",
            "systemd",
            "rdma",
            "pids",
            "misc",
        ]);
        f
    }

    /// cgroup v1: no `cgroup` mount reaches libcontainer (its emulation reads the host's
    /// `/proc/<pid in the pod's PID namespace>/cgroup`); a tmpfs and read-only binds of
    /// the container's own cgroup in each hierarchy libcontainer creates it in instead.
    #[test]
    fn cgroup_v1_is_emulated_with_binds_of_the_containers_cgroups() {
        let f = v1_fixture();
        let s = f.ok();
        let ro = sv(&["rbind", "nosuid", "noexec", "nodev", "ro"]);
        let bind = |dir: &str| {
            (
                format!("/sys/fs/cgroup/{dir}"),
                "bind".to_string(),
                format!("/sys/fs/cgroup/{dir}/kubepods/pod1/c1"),
                ro.clone(),
            )
        };
        assert_eq!(
            cgroup_mounts_of(&s),
            vec![
                (
                    "/sys/fs/cgroup".to_string(),
                    "tmpfs".to_string(),
                    "tmpfs".to_string(),
                    sv(&["nosuid", "noexec", "nodev", "mode=755"]),
                ),
                bind("cpu,cpuacct"),
                bind("cpuset"),
                bind("memory"),
                bind("net_cls,net_prio"),
                bind("pids"),
            ]
        );
        assert!(
            s.mounts()
                .as_ref()
                .unwrap()
                .iter()
                .all(|m| m.typ().as_deref() != Some("cgroup"))
        );
        // No cgroup namespace on v1, and the cgroups path libcontainer uses is the same.
        assert!(ns(&s).iter().all(|(t, _)| *t != LinuxNamespaceType::Cgroup));
        assert_eq!(
            linux(&s).cgroups_path().as_deref(),
            Some(Path::new("/kubepods/pod1/c1"))
        );
        // The tmpfs is made read-only after the binds are in it; the binds are `ro`.
        assert_eq!(
            linux(&s).readonly_paths().clone().unwrap(),
            sv(&["/sys/fs/cgroup"])
        );

        // The systemd driver's path is a plain path to libcontainer's v1 manager too.
        let mut f = v1_fixture();
        let scope = "kubepods-besteffort-pod1.slice/berth-c1.scope";
        f.cgroups_path = format!("/kubepods.slice/kubepods-besteffort.slice/{scope}");
        assert!(cgroup_mounts_of(&f.ok()).contains(&(
            "/sys/fs/cgroup/memory".to_string(),
            "bind".to_string(),
            format!("/sys/fs/cgroup/memory/kubepods.slice/kubepods-besteffort.slice/{scope}"),
            ro.clone(),
        )));
        // No path: libcontainer's default.
        f.cgroups_path = String::new();
        let s = f.ok();
        assert!(linux(&s).cgroups_path().is_none());
        assert_eq!(
            find_mount(&s, "/sys/fs/cgroup/pids")
                .unwrap()
                .source()
                .as_deref(),
            Some(Path::new("/sys/fs/cgroup/pids/:youki:c1"))
        );
    }

    /// containerd gives privileged containers the cgroup mount read-write.
    #[test]
    fn cgroup_v1_binds_are_writable_for_privileged_containers() {
        let mut f = v1_fixture();
        f.config.security.privileged = true;
        f.pod.privileged = true;
        let s = f.ok();
        let m = cgroup_mounts_of(&s);
        assert_eq!(m.len(), 6, "{m:?}");
        assert_eq!(m[0].3, sv(&["nosuid", "noexec", "nodev", "mode=755"]));
        for (dst, typ, _, opts) in &m[1..] {
            assert_eq!(typ, "bind", "{dst}");
            assert_eq!(opts, &sv(&["rbind", "nosuid", "noexec", "nodev", "rw"]));
        }
        assert!(linux(&s).readonly_paths().is_none());
    }

    /// A CRI mount at /sys/fs/cgroup replaces the whole emulation; one at a hierarchy
    /// replaces that bind only.
    #[test]
    fn cri_mounts_replace_cgroup_mounts() {
        let mut f = v1_fixture();
        f.config.mounts = vec![cri_mount("/sys/fs/cgroup", "/host/cg")];
        let s = f.ok();
        let m = cgroup_mounts_of(&s);
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!(m[0].2, "/host/cg");
        assert!(linux(&s).readonly_paths().is_none());

        f.config.mounts = vec![cri_mount("/sys/fs/cgroup/memory", "/host/mem")];
        let s = f.ok();
        let memory: Vec<_> = cgroup_mounts_of(&s)
            .into_iter()
            .filter(|m| m.0 == "/sys/fs/cgroup/memory")
            .collect();
        assert_eq!(memory.len(), 1, "{memory:?}");
        assert_eq!(memory[0].2, "/host/mem");
        assert_eq!(
            linux(&s).readonly_paths().clone().unwrap(),
            sv(&["/sys/fs/cgroup"])
        );
    }

    /// cgroup v2 keeps the one `cgroup` mount (libcontainer mounts cgroup2 in the
    /// container's cgroup namespace), `ro` unless privileged, with no read-only paths.
    #[test]
    fn cgroup_v2_keeps_the_cgroup_mount() {
        let mut f = v1_fixture();
        f.host.cgroup_v2 = true;
        f.host.cgroup_v1_hierarchies = Vec::new();
        let s = f.ok();
        assert_eq!(
            cgroup_mounts_of(&s),
            vec![(
                "/sys/fs/cgroup".to_string(),
                "cgroup".to_string(),
                "cgroup".to_string(),
                sv(&["nosuid", "noexec", "nodev", "relatime", "ro"]),
            )]
        );
        assert!(linux(&s).readonly_paths().is_none());
        f.config.security.privileged = true;
        f.pod.privileged = true;
        let m = cgroup_mounts_of(&f.ok());
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].3, sv(&["nosuid", "noexec", "nodev", "relatime", "rw"]));
    }

    #[test]
    fn no_new_privs_follows_the_config() {
        let mut f = Fixture::new();
        assert_eq!(process(&f.ok()).no_new_privileges(), None);
        f.config.security.no_new_privs = true;
        assert_eq!(process(&f.ok()).no_new_privileges(), Some(true));
        assert!(process(&f.ok()).rlimits().is_none());
    }

    // ---- namespaces ---------------------------------------------------------------------

    #[test]
    fn namespaces_per_mode() {
        use LinuxNamespaceType as T;
        let p = |s: &str| Some(PathBuf::from(s));
        let mut f = Fixture::new();
        // Default fixture: pod with its own net/ipc/uts, PID per container.
        assert_eq!(
            ns(&f.ok()),
            vec![
                (T::Pid, None),
                (T::Ipc, p("/run/berth/pod1/ns/ipc")),
                (T::Uts, p("/run/berth/pod1/ns/uts")),
                (T::Network, p("/run/berth/pod1/ns/net")),
                (T::Mount, None),
            ]
        );
        // Shared PID namespace.
        f.pod.pid_mode = NsMode::Pod;
        f.pod.pid_ns = p("/run/berth/pod1/ns/pid");
        assert_eq!(ns(&f.ok())[0], (T::Pid, p("/run/berth/pod1/ns/pid")));
        // A container asking for its own PID namespace in a shared-PID pod gets one.
        f.config.security.namespaces.pid = NamespaceMode::Container;
        assert_eq!(ns(&f.ok())[0], (T::Pid, None));
        // Host PID, network, IPC: no entries (the host's).
        let mut f = Fixture::new();
        f.pod.pid_mode = NsMode::Node;
        f.pod.net_ns = None;
        f.pod.ipc_ns = None;
        f.pod.uts_ns = None;
        f.pod.host_network = true;
        f.pod.host_ipc = true;
        assert_eq!(ns(&f.ok()), vec![(T::Mount, None)]);
        // Target: another container's PID namespace.
        let mut f = Fixture::new();
        f.config.security.namespaces = NamespaceOptions {
            pid: NamespaceMode::Target,
            target_id: "c0".into(),
            ..Default::default()
        };
        assert!(matches!(f.spec(), Err(SpecError::NotFound(_))));
        f.target_pid_ns = p("/proc/4242/ns/pid");
        assert_eq!(ns(&f.ok())[0], (T::Pid, p("/proc/4242/ns/pid")));
        // Shared PID mode without a pinned namespace is a caller bug, reported.
        let mut f = Fixture::new();
        f.pod.pid_mode = NsMode::Pod;
        assert!(matches!(f.spec(), Err(SpecError::InvalidArgument(_))));
        // cgroup v2: a cgroup namespace (not for privileged containers).
        let mut f = Fixture::new();
        f.host.cgroup_v2 = true;
        assert!(ns(&f.ok()).contains(&(T::Cgroup, None)));
    }

    #[test]
    fn user_namespace_with_mappings() {
        use LinuxNamespaceType as T;
        let map = IdMapping {
            host_id: 100000,
            container_id: 0,
            length: 65536,
        };
        let mut f = Fixture::new();
        f.config.security.namespaces.userns = Some(UserNamespace {
            mode: NamespaceMode::Pod,
            uids: vec![map],
            gids: vec![map],
        });
        let s = f.ok();
        assert!(ns(&s).contains(&(T::User, None)));
        let m = linux(&s).uid_mappings().clone().unwrap();
        assert_eq!(
            (m[0].host_id(), m[0].container_id(), m[0].size()),
            (100000, 0, 65536)
        );
        assert_eq!(linux(&s).gid_mappings().clone().unwrap().len(), 1);
        // The pod's own user namespace is joined when it has one.
        f.pod.user_ns = Some("/run/berth/pod1/ns/user".into());
        assert!(ns(&f.ok()).contains(&(T::User, Some("/run/berth/pod1/ns/user".into()))));
        // Node mode: no user namespace.
        f.config.security.namespaces.userns = Some(UserNamespace {
            mode: NamespaceMode::Node,
            ..Default::default()
        });
        let s = f.ok();
        assert!(!ns(&s).iter().any(|(t, _)| *t == T::User));
        assert!(linux(&s).uid_mappings().is_none());
    }

    // ---- resources, devices -------------------------------------------------------------

    #[test]
    fn resources_map_as_containerd() {
        let mut f = Fixture::new();
        let s = f.ok();
        let r = linux(&s).resources().as_ref().unwrap();
        assert!(r.cpu().is_none() && r.memory().is_none());
        assert_eq!(
            process(&s).oom_score_adj(),
            None,
            "no resources, no OOM score"
        );
        assert_eq!(r.devices().clone().unwrap().len(), 1);
        assert_eq!(
            linux(&s).cgroups_path().as_deref(),
            Some(Path::new("/kubepods/pod1/c1"))
        );

        f.config.resources = Some(Resources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit: 64 << 20,
            oom_score_adj: 500,
            cpuset_cpus: "0-1".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![HugepageLimit {
                page_size: "2MB".into(),
                limit: 1 << 21,
            }],
            unified: [("memory.high".to_string(), "1000000".to_string())].into(),
            ..Default::default()
        });
        let s = f.ok();
        let r = linux(&s).resources().as_ref().unwrap();
        let cpu = r.cpu().as_ref().unwrap();
        assert_eq!(
            (cpu.period(), cpu.quota(), cpu.shares()),
            (Some(100_000), Some(50_000), Some(512))
        );
        assert_eq!(
            (cpu.cpus().as_deref(), cpu.mems().as_deref()),
            (Some("0-1"), Some("0"))
        );
        let mem = r.memory().as_ref().unwrap();
        // Swap limited to the memory limit when unset.
        assert_eq!((mem.limit(), mem.swap()), (Some(64 << 20), Some(64 << 20)));
        // No hugetlb controller here: no hugepage limits.
        assert!(r.hugepage_limits().is_none());
        assert_eq!(r.unified().as_ref().unwrap()["memory.high"], "1000000");
        assert_eq!(process(&s).oom_score_adj(), Some(500));

        // Explicit swap; hugetlb present.
        f.host.hugetlb = true;
        f.config.resources.as_mut().unwrap().memory_swap_limit = 128 << 20;
        let s = f.ok();
        let r = linux(&s).resources().as_ref().unwrap();
        assert_eq!(r.memory().as_ref().unwrap().swap(), Some(128 << 20));
        assert_eq!(r.hugepage_limits().as_ref().unwrap()[0].page_size(), "2MB");
        // No swap accounting: no swap limit at all.
        f.host.swap_accounting = false;
        assert_eq!(
            linux(&f.ok())
                .resources()
                .as_ref()
                .unwrap()
                .memory()
                .as_ref()
                .unwrap()
                .swap(),
            None
        );
    }

    #[test]
    fn oom_score_adj_is_clamped() {
        let mut f = Fixture::new();
        f.config.resources = Some(Resources {
            oom_score_adj: -999,
            ..Default::default()
        });
        assert_eq!(process(&f.ok()).oom_score_adj(), Some(-998));
        f.config.resources.as_mut().unwrap().oom_score_adj = 2000;
        assert_eq!(process(&f.ok()).oom_score_adj(), Some(1000));
        f.config.resources.as_mut().unwrap().oom_score_adj = 0;
        assert_eq!(process(&f.ok()).oom_score_adj(), Some(0));
    }

    #[test]
    fn devices_and_cdi() {
        let mut f = Fixture::new();
        let fuse = DeviceNode {
            path: "/dev/fuse".into(),
            kind: DeviceKind::Char,
            major: 10,
            minor: 229,
            file_mode: 0o666,
            uid: 0,
            gid: 0,
            permissions: "rw".into(),
        };
        f.devices = vec![fuse.clone()];
        let s = f.ok();
        let d = &linux(&s).devices().clone().unwrap()[0];
        assert_eq!(
            (d.typ(), d.major(), d.minor()),
            (LinuxDeviceType::C, 10, 229)
        );
        let rules = linux(&s)
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .clone()
            .unwrap();
        assert!(!rules[0].allow());
        assert!(rules[1].allow());
        assert_eq!(rules[1].access().as_deref(), Some("rw"));
        assert_eq!((rules[1].major(), rules[1].minor()), (Some(10), Some(229)));
        f.devices[0].permissions = "rwx".into();
        assert!(matches!(f.spec(), Err(SpecError::InvalidArgument(_))));

        // CDI: a device the caller did not resolve is a bug; resolved edits come last.
        f.config.cdi_devices = sv(&["vendor.com/gpu=0"]);
        assert!(matches!(f.spec(), Err(SpecError::Internal(_))));
        f.cdi = Injection {
            devices: sv(&["vendor.com/gpu=0"]),
            edits: cdi::ContainerEdits {
                env: sv(&["IMG=cdi", "GPU=0"]),
                device_nodes: vec![cdi::DeviceNodeEdit {
                    path: "/dev/gpu0".into(),
                    typ: "c".into(),
                    major: 195,
                    minor: 0,
                    ..Default::default()
                }],
                mounts: vec![cdi::MountEdit {
                    host_path: "/usr/lib/gpu".into(),
                    container_path: "/usr/lib/gpu".into(),
                    options: sv(&["ro", "bind"]),
                    typ: String::new(),
                }],
                ..Default::default()
            },
        };
        f.devices[0].permissions = "rw".into();
        let s = f.ok();
        assert!(env(&s).contains(&"IMG=cdi".to_string()));
        assert!(!env(&s).contains(&"IMG=1".to_string()));
        assert_eq!(env(&s).last().map(String::as_str), Some("GPU=0"));
        let devs = linux(&s).devices().clone().unwrap();
        assert_eq!(devs.len(), 2);
        assert_eq!((devs[1].major(), devs[1].minor()), (195, 0));
        let rules = linux(&s)
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .clone()
            .unwrap();
        assert_eq!(rules.len(), 3);
        assert_eq!(
            (rules[2].major(), rules[2].access().as_deref()),
            (Some(195), Some("rwm"))
        );
        assert!(
            s.mounts()
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| m.destination() == Path::new("/usr/lib/gpu"))
        );
    }

    // ---- annotations, stop signal -------------------------------------------------------

    #[test]
    fn annotations_carry_the_cri_ones_and_containerds() {
        let mut f = Fixture::new();
        f.config.annotations = [
            ("a".to_string(), "b".to_string()),
            (
                "io.kubernetes.cri.container-type".to_string(),
                "forged".to_string(),
            ),
        ]
        .into();
        let s = f.ok();
        let a = s.annotations().as_ref().unwrap();
        assert_eq!(a["a"], "b");
        assert_eq!(a["io.kubernetes.cri.container-type"], "container");
        assert_eq!(a["io.kubernetes.cri.sandbox-id"], "pod1");
        assert_eq!(a["io.kubernetes.cri.sandbox-name"], "web");
        assert_eq!(a["io.kubernetes.cri.sandbox-namespace"], "default");
        assert_eq!(a["io.kubernetes.cri.sandbox-uid"], "uid-1");
        assert_eq!(a["io.kubernetes.cri.container-name"], "app");
        assert_eq!(
            a["io.kubernetes.cri.image-name"],
            "docker.io/library/busybox:latest"
        );
        assert!(s.hostname().is_none());
    }

    #[test]
    fn stop_signal_precedence_and_names() {
        let mut c = ContainerConfig::default();
        let mut i = ImageConfig::default();
        assert_eq!(stop_signal(&c, &i).unwrap(), libc::SIGTERM);
        i.stop_signal = "SIGQUIT".into();
        assert_eq!(stop_signal(&c, &i).unwrap(), libc::SIGQUIT);
        i.stop_signal = "9".into();
        assert_eq!(stop_signal(&c, &i).unwrap(), 9);
        c.stop_signal = Some("SIGUSR1".into());
        assert_eq!(stop_signal(&c, &i).unwrap(), libc::SIGUSR1);
        c.stop_signal = None;
        i.stop_signal = "SIGNOPE".into();
        assert!(stop_signal(&c, &i).is_err());
        for (name, n) in [
            ("TERM", 15),
            ("sigint", 2),
            ("SIGRTMIN", 34),
            ("SIGRTMIN+3", 37),
            ("SIGRTMINPLUS15", 49),
            ("SIGRTMAXMINUS1", 63),
            ("RTMAX", 64),
            ("SIGRTMAX-20", 44),
            ("SIGPWR", 30),
            ("SIGIOT", 6),
        ] {
            assert_eq!(signal_number(name), Some(n), "{name}");
        }
        for bad in ["0", "65", "SIGRTMIN+40", "RTMAX-31", ""] {
            assert_eq!(signal_number(bad), None, "{bad}");
        }
    }

    // ---- the whole spec, as libcontainer reads it ---------------------------------------

    /// A plain busybox container: written with `Spec::save`, read back with `Spec::load`
    /// (what libcontainer's builder does), then put through libcontainer's own validator
    /// and mount option parser.
    #[test]
    fn busybox_spec_round_trips_and_passes_libcontainer_checks() {
        let mut f = Fixture::new();
        f.config.security.seccomp = SeccompProfile::RuntimeDefault;
        f.config.security.masked_paths = sv(&["/proc/kcore"]);
        f.config.security.readonly_paths = sv(&["/proc/sys"]);
        f.config.resources = Some(Resources {
            cpu_shares: 2,
            memory_limit: 32 << 20,
            ..Default::default()
        });
        f.config.mounts = vec![cri_mount("/data", "/tmp")];
        let spec = f.ok();
        let dir = std::env::temp_dir().join(format!("berth-spec-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        spec.save(&path).unwrap();
        let back = Spec::load(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(back, spec);
        assert!(back.version().starts_with("1."));
        libcontainer::validator::Validator::validate_spec(&back).unwrap();
        for m in back.mounts().as_ref().unwrap() {
            libcontainer::rootfs::utils::parse_mount(m)
                .unwrap_or_else(|e| panic!("{:?}: {e}", m.destination()));
        }
        let json = serde_json::to_value(&back).unwrap();
        assert!(json.get("hostname").is_none());
        assert_eq!(
            json["process"]["user"]["additionalGids"],
            serde_json::json!([0, 10])
        );
    }
}
