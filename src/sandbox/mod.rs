//! Pod sandboxes: a pod is a set of pinned namespaces held by its shim, the pod's files,
//! its cgroup and its CNI attachment; no pause container and no image.

pub mod cgroup;
pub mod files;
pub mod namespaces;
pub mod spec;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{CgroupDriver, Config};
use crate::network::cni::{self, Attachment, Capabilities, Cni};
use crate::proto::shim::{NamespaceMode, SandboxConfig};
use crate::shim::client::{self as shim, ShimClient};
use crate::store::{self, Db};
use spec::{NsMode, PodRecord, PodSpec, PodState};

/// How long a stopping pod's processes get between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("pod sandbox {0:?} not found")]
    NotFound(String),
    #[error("pod sandbox id prefix {0:?} is ambiguous")]
    Ambiguous(String),
    #[error("pod sandbox {name:?} already exists as {id}")]
    AlreadyExists { name: String, id: String },
    #[error("invalid pod sandbox config: {0}")]
    InvalidArgument(String),
    #[error("pod sandbox {id}: network: {source}")]
    Network { id: String, source: cni::Error },
    #[error("pod sandbox {id}: shim: {source}")]
    Shim { id: String, source: shim::Error },
    #[error("pod sandbox {id}: {detail}")]
    Internal { id: String, detail: String },
    #[error(transparent)]
    Store(#[from] store::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

fn internal(id: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal {
        id: id.to_string(),
        detail: format!("{what}: {e}"),
    }
}

/// Runs a pod's run, stop or remove to its end even when the RPC awaiting it is abandoned
/// (the client's deadline, a cancelled stream): cut midway, a CNI ADD or DEL cannot be
/// finished by a retry (a repeated bridge DEL finds no veth and skips the masquerade
/// teardown, whose rules then stay for good).
async fn to_completion<T: Send + 'static>(
    id: &str,
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(work)
        .await
        .map_err(|e| internal(id, "pod operation", e))?
}

struct Inner {
    db: Arc<Db>,
    pods_dir: PathBuf,
    cni: Cni,
    shim_bin: PathBuf,
    driver: CgroupDriver,
    hierarchy: cgroup::Hierarchy,
    /// One lock per pod id: run, stop and remove of a pod do not interleave.
    locks: crate::ids::Locks,
    /// The previous CPU sample per pod (time, cpu ns), for a usage rate.
    cpu_samples: Mutex<HashMap<String, (i64, u64)>>,
}

/// A pod's resource usage at one moment.
#[derive(Debug, Clone, Default)]
pub struct PodUsage {
    pub timestamp: i64,
    pub cgroup: crate::stats::CgroupUsage,
    /// CPU use since the previous sample, in nanocores.
    pub nano_cores: Option<u64>,
    pub interfaces: Vec<crate::stats::InterfaceUsage>,
}

#[derive(Clone)]
pub struct SandboxService {
    inner: Arc<Inner>,
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

fn ns_mode(m: NsMode) -> NamespaceMode {
    match m {
        NsMode::Node => NamespaceMode::Host,
        _ => NamespaceMode::Pod,
    }
}

/// Keys kubelet passes to CNI plugins (CNI_ARGS), as containerd and CRI-O do.
fn cni_args(id: &str, spec: &PodSpec) -> Vec<(String, String)> {
    vec![
        ("IgnoreUnknown".into(), "1".into()),
        ("K8S_POD_NAMESPACE".into(), spec.metadata.namespace.clone()),
        ("K8S_POD_NAME".into(), spec.metadata.name.clone()),
        ("K8S_POD_INFRA_CONTAINER_ID".into(), id.into()),
        ("K8S_POD_UID".into(), spec.metadata.uid.clone()),
    ]
}

fn capabilities(spec: &PodSpec) -> Capabilities {
    Capabilities {
        port_mappings: spec
            .port_mappings
            .iter()
            .filter(|p| p.host_port > 0)
            .map(|p| cni::PortMapping {
                host_port: p.host_port,
                container_port: p.container_port,
                protocol: p.protocol.clone(),
                host_ip: p.host_ip.clone(),
            })
            .collect(),
        dns: Some(cni::DnsCap {
            servers: spec.dns.servers.clone(),
            searches: spec.dns.searches.clone(),
            options: spec.dns.options.clone(),
        }),
        ..Default::default()
    }
}

/// Namespaced sysctls, as kubelet's safe and unsafe lists allow them to be set per pod.
fn validate_sysctl(key: &str, spec: &PodSpec) -> std::result::Result<(), String> {
    let k = key.replace('/', ".");
    if k.is_empty() || k.contains("..") || k.starts_with('.') {
        return Err(format!("invalid sysctl name {key:?}"));
    }
    let ipc = k.starts_with("kernel.shm")
        || k.starts_with("kernel.msg")
        || k == "kernel.sem"
        || k.starts_with("fs.mqueue.");
    let net = k.starts_with("net.");
    let uts = matches!(k.as_str(), "kernel.hostname" | "kernel.domainname");
    if ipc {
        if spec.ipc == NsMode::Node {
            return Err(format!("sysctl {key:?} is not allowed with host IPC"));
        }
    } else if net {
        if spec.network == NsMode::Node {
            return Err(format!("sysctl {key:?} is not allowed with host network"));
        }
    } else if !uts {
        return Err(format!(
            "sysctl {key:?} is not namespaced: it would change the node"
        ));
    }
    Ok(())
}

impl SandboxService {
    pub fn open(cfg: &Config, db: Arc<Db>) -> std::result::Result<SandboxService, String> {
        let pods_dir = cfg.state_dir.join("pods");
        std::fs::create_dir_all(&pods_dir)
            .map_err(|e| format!("cannot create {}: {e}", pods_dir.display()))?;
        let shim_bin = match &cfg.shim_path {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(|d| d.join("berth-shim")))
                .unwrap_or_else(|| PathBuf::from("berth-shim")),
        };
        let cni = Cni::new(
            cfg.cni.conf_dir.clone(),
            cfg.cni.bin_dirs.clone(),
            cfg.root.join("cni"),
        );
        Ok(SandboxService {
            inner: Arc::new(Inner {
                db,
                pods_dir,
                cni,
                shim_bin,
                driver: cfg.cgroup_driver,
                hierarchy: cgroup::Hierarchy::detect(),
                locks: Default::default(),
                cpu_samples: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn pod_dir(&self, id: &str) -> PathBuf {
        self.inner.pods_dir.join(id)
    }

    fn lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner.locks.get(id)
    }

    fn forget_lock(&self, id: &str) {
        self.inner.locks.forget(id);
    }

    /// Why pods cannot get a network now, if they cannot (the CRI NetworkReady condition).
    pub fn network_ready(&self) -> std::result::Result<(), String> {
        self.inner
            .cni
            .ready()
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Resolves a full id or a unique prefix.
    pub fn resolve(&self, id: &str) -> Result<String> {
        if id.is_empty() {
            return Err(Error::InvalidArgument("pod sandbox id is empty".into()));
        }
        let exists = self.inner.db.pod(id)?.is_some();
        let all = if exists {
            Vec::new()
        } else {
            self.inner.db.pods()?.into_iter().map(|p| p.id).collect()
        };
        match crate::ids::resolve(id, exists, all) {
            crate::ids::Resolve::Found(id) => Ok(id),
            crate::ids::Resolve::NotFound => Err(Error::NotFound(id.to_string())),
            crate::ids::Resolve::Ambiguous => Err(Error::Ambiguous(id.to_string())),
        }
    }

    /// The pod, with its readiness checked against its shim.
    pub fn get(&self, id: &str) -> Result<PodRecord> {
        let id = self.resolve(id)?;
        let pod = self
            .inner
            .db
            .pod(&id)?
            .ok_or_else(|| Error::NotFound(id.clone()))?;
        self.check_alive(pod)
    }

    pub fn list(&self) -> Result<Vec<PodRecord>> {
        let pods = self.inner.db.pods()?;
        let mut out = Vec::with_capacity(pods.len());
        for p in pods {
            if p.state == PodState::Creating {
                continue;
            }
            out.push(self.check_alive(p)?);
        }
        Ok(out)
    }

    /// A Ready pod whose shim is gone is NotReady from now on.
    fn check_alive(&self, mut pod: PodRecord) -> Result<PodRecord> {
        if pod.state == PodState::Ready && !shim::shim_alive(&self.pod_dir(&pod.id)) {
            tracing::warn!(pod_id = %pod.id, "the pod's shim is gone; pod is NotReady");
            pod.state = PodState::NotReady;
            pod.reason = "the pod's shim exited".into();
            self.inner.db.update_pod(&pod)?;
        }
        Ok(pod)
    }

    pub async fn run(&self, spec: PodSpec) -> Result<PodRecord> {
        let this = self.clone();
        to_completion("", async move { this.run_to_end(spec).await }).await
    }

    async fn run_to_end(&self, spec: PodSpec) -> Result<PodRecord> {
        let m = &spec.metadata;
        if m.name.is_empty() || m.namespace.is_empty() || m.uid.is_empty() {
            return Err(Error::InvalidArgument(
                "metadata name, namespace and uid are required".into(),
            ));
        }
        for k in spec.sysctls.keys() {
            validate_sysctl(k, &spec).map_err(Error::InvalidArgument)?;
        }
        let cg_rel = if spec.cgroup_parent.is_empty() {
            None
        } else {
            Some(
                cgroup::parent_path(&spec.cgroup_parent, self.inner.driver)
                    .map_err(Error::InvalidArgument)?,
            )
        };
        if spec.network == NsMode::Pod
            && let Err(e) = self.inner.cni.ready()
        {
            return Err(Error::Network {
                id: format!("{:?}", spec.metadata.name),
                source: e,
            });
        }

        let id = crate::ids::new_id();
        let mut pod = PodRecord {
            id: id.clone(),
            spec,
            state: PodState::Creating,
            created_at: now_ns(),
            ips: Vec::new(),
            reason: String::new(),
            cgroups: Vec::new(),
        };
        if let Some(existing) = self.inner.db.insert_pod(&pod)? {
            return Err(Error::AlreadyExists {
                name: pod.name_key(),
                id: existing,
            });
        }
        let lock = self.lock(&id);
        let _g = lock.lock().await;
        match self.setup(&mut pod, cg_rel.as_deref()).await {
            Ok(()) => {
                pod.state = PodState::Ready;
                self.inner.db.update_pod(&pod)?;
                Ok(pod)
            }
            Err(e) => {
                tracing::warn!(pod_id = %id, error = %e, "pod setup failed; undoing");
                self.teardown(&pod).await;
                self.remove_files(&pod).await;
                if let Err(err) = self.inner.db.delete_pod(&id) {
                    tracing::error!(pod_id = %id, error = %err, "cannot delete failed pod record");
                }
                drop(_g);
                self.forget_lock(&id);
                Err(e)
            }
        }
    }

    async fn setup(&self, pod: &mut PodRecord, cg_rel: Option<&str>) -> Result<()> {
        let id = pod.id.clone();
        let dir = self.pod_dir(&id);
        std::fs::create_dir_all(&dir).map_err(|e| internal(&id, "state dir", e))?;
        if pod.spec.user_ns.is_some() {
            searchable_by_others(&dir).map_err(|e| internal(&id, "user namespace", e))?;
        }
        files::write(&dir, &pod.spec).map_err(|e| internal(&id, "pod files", e))?;
        if pod.spec.ipc != NsMode::Node {
            files::mount_shm(&dir).map_err(|e| internal(&id, "/dev/shm", e))?;
        }
        if let Some(rel) = cg_rel {
            let limits =
                cgroup::pod_limits(pod.spec.overhead.as_ref(), pod.spec.resources.as_ref());
            let created = cgroup::create(&self.inner.hierarchy, rel, limits.as_ref())
                .map_err(|e| internal(&id, "pod cgroup", e))?;
            pod.cgroups = cgroup::create_leaves(&self.inner.hierarchy, rel);
            // Recorded before going on, so that a crash cannot leak them.
            let created: Vec<String> = created.iter().map(|p| p.display().to_string()).collect();
            self.inner.db.add_cgroups(&created)?;
            self.inner.db.update_pod(pod)?;
        }
        let config = SandboxConfig {
            pod_id: id.clone(),
            state_dir: dir.display().to_string(),
            network: ns_mode(pod.spec.network) as i32,
            ipc: ns_mode(pod.spec.ipc) as i32,
            uts: ns_mode(pod.spec.network) as i32,
            pid: match pod.spec.pid {
                NsMode::Pod => NamespaceMode::Pod as i32,
                _ => NamespaceMode::Host as i32,
            },
            hostname: files::hostname(&pod.spec),
            sysctls: pod.spec.sysctls.clone().into_iter().collect(),
            loopback_up: pod.spec.network == NsMode::Pod,
            uid_mappings: shim_id_mappings(pod.spec.user_ns.as_ref().map(|u| &u.uids)),
            gid_mappings: shim_id_mappings(pod.spec.user_ns.as_ref().map(|u| &u.gids)),
        };
        shim::spawn(&self.inner.shim_bin, &config)
            .await
            .map_err(|source| Error::Shim {
                id: id.clone(),
                source,
            })?;
        if pod.spec.network == NsMode::Pod {
            let netns = namespaces::ns_paths(&dir).net;
            let att = Attachment {
                container_id: &id,
                netns: &netns,
                ifname: "eth0",
                args: cni_args(&id, &pod.spec),
                capabilities: capabilities(&pod.spec),
            };
            let status = self
                .inner
                .cni
                .add(&att)
                .await
                .map_err(|source| Error::Network {
                    id: id.clone(),
                    source,
                })?;
            pod.ips = status.ips.iter().map(|ip| ip.to_string()).collect();
        }
        Ok(())
    }

    /// Everything that stopping a pod undoes; each step is idempotent, so this serves a
    /// failed start, a stop and a stop repeated after a crash.
    async fn teardown(&self, pod: &PodRecord) -> Vec<String> {
        let id = &pod.id;
        let dir = self.pod_dir(id);
        let mut problems = Vec::new();
        // A stopped pod's attachment is gone already: DEL without a cached result would
        // run every plugin again for nothing.
        let attached = pod.state != PodState::NotReady || !pod.ips.is_empty();
        if pod.spec.network == NsMode::Pod && attached {
            let netns = namespaces::ns_paths(&dir).net;
            let att = Attachment {
                container_id: id,
                netns: &netns,
                ifname: "eth0",
                args: cni_args(id, &pod.spec),
                capabilities: capabilities(&pod.spec),
            };
            if let Err(e) = self.inner.cni.del(&att).await {
                problems.push(format!("network: {e}"));
            }
        }
        if shim::shim_alive(&dir)
            && let Err(e) = ShimClient::new(&dir).shutdown(STOP_GRACE).await
        {
            problems.push(format!("shim: {e}"));
        }
        let d = dir.clone();
        let res = tokio::task::spawn_blocking(move || {
            let mut p = Vec::new();
            if let Err(e) = namespaces::unpin_all(&d) {
                p.push(format!("namespaces: {e}"));
            }
            if let Err(e) = files::unmount_shm(&d) {
                p.push(format!("/dev/shm: {e}"));
            }
            p
        })
        .await;
        problems.extend(res.unwrap_or_default());
        for p in &problems {
            tracing::warn!(pod_id = %id, problem = %p, "pod teardown");
        }
        problems
    }

    /// Stops the pod: its processes, network and namespaces. Idempotent.
    pub async fn stop(&self, id: &str) -> Result<()> {
        let (this, owned) = (self.clone(), id.to_string());
        to_completion(id, async move { this.stop_to_end(&owned).await }).await
    }

    async fn stop_to_end(&self, id: &str) -> Result<()> {
        let id = match self.resolve(id) {
            Ok(id) => id,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let lock = self.lock(&id);
        let _g = lock.lock().await;
        let Some(mut pod) = self.inner.db.pod(&id)? else {
            return Ok(());
        };
        let problems = self.teardown(&pod).await;
        if !problems.is_empty()
            && pod.spec.network == NsMode::Pod
            && problems.iter().any(|p| p.starts_with("network"))
        {
            return Err(internal(&id, "stop", problems.join("; ")));
        }
        if pod.state != PodState::NotReady || !pod.ips.is_empty() {
            pod.state = PodState::NotReady;
            // Released with the network attachment.
            pod.ips.clear();
            if pod.reason.is_empty() {
                pod.reason = "stopped".into();
            }
            // Not flushed: a crash that loses it leaves a Ready pod whose shim is gone,
            // which recovery marks NotReady, and StopPodSandbox tears down again.
            self.inner.db.update_pod_lazily(&pod)?;
        }
        Ok(())
    }

    /// Removes a pod, stopping it first if needed. Idempotent.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let (this, owned) = (self.clone(), id.to_string());
        to_completion(id, async move { this.remove_to_end(&owned).await }).await
    }

    async fn remove_to_end(&self, id: &str) -> Result<()> {
        let id = match self.resolve(id) {
            Ok(id) => id,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop_to_end(&id).await?;
        let lock = self.lock(&id);
        let _g = lock.lock().await;
        let Some(pod) = self.inner.db.pod(&id)? else {
            return Ok(());
        };
        self.remove_files(&pod).await;
        self.inner.db.delete_pod(&id)?;
        self.inner
            .cpu_samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        drop(_g);
        self.forget_lock(&id);
        // Off the RPC's path.
        tokio::task::spawn_blocking(crate::shim::memory::release_free_heap);
        Ok(())
    }

    async fn remove_files(&self, pod: &PodRecord) {
        let dir = self.pod_dir(&pod.id);
        // Cgroup directories berth created on the way to this pod's cgroup: those that
        // no other pod still uses go (a shared parent goes with its last pod).
        let created = self.inner.db.cgroups_created().unwrap_or_default();
        let others: Vec<String> = self
            .inner
            .db
            .pods()
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.id != pod.id)
            .flat_map(|p| p.cgroups)
            .collect();
        let mut mine: Vec<PathBuf> = created
            .iter()
            .filter(|c| pod.cgroups.iter().any(|leaf| is_within(leaf, c)))
            .filter(|c| !others.iter().any(|leaf| is_within(leaf, c)))
            .map(PathBuf::from)
            .collect();
        mine.sort_by_key(|p| p.components().count());
        let db = self.inner.db.clone();
        let _ = tokio::task::spawn_blocking(move || {
            cgroup::remove(&mine);
            let gone: Vec<String> = mine
                .iter()
                .filter(|p| !p.exists())
                .map(|p| p.display().to_string())
                .collect();
            if let Err(e) = db.forget_cgroups(&gone) {
                tracing::warn!(error = %e, "cannot update cgroup records");
            }
            if let Err(e) = remove_dir_safely(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove pod state dir");
            }
        })
        .await;
    }

    /// The pod's cgroup path relative to the hierarchy, if it has one.
    fn cgroup_rel(&self, pod: &PodRecord) -> Option<String> {
        if pod.spec.cgroup_parent.is_empty() {
            return None;
        }
        cgroup::parent_path(&pod.spec.cgroup_parent, self.inner.driver).ok()
    }

    /// Usage figures of a pod: its cgroup and its network namespace.
    pub fn usage(&self, pod: &PodRecord) -> PodUsage {
        let timestamp = now_ns();
        let cg = self
            .cgroup_rel(pod)
            .map(|rel| crate::stats::cgroup_usage(&self.inner.hierarchy, &rel))
            .unwrap_or_default();
        let nano_cores = cg.cpu_ns.and_then(|cpu| {
            let mut samples = self
                .inner
                .cpu_samples
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let prev = samples.insert(pod.id.clone(), (timestamp, cpu));
            prev.and_then(|(t0, c0)| {
                let dt = timestamp.checked_sub(t0).filter(|d| *d > 0)? as u128;
                Some((u128::from(cpu.saturating_sub(c0)) * 1_000_000_000 / dt) as u64)
            })
        });
        let dir = self.pod_dir(&pod.id);
        let interfaces = if pod.spec.network == NsMode::Pod && pod.state == PodState::Ready {
            std::fs::read_to_string(dir.join("shim.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
                .map(crate::stats::net_dev)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        PodUsage {
            timestamp,
            cgroup: cg,
            nano_cores,
            interfaces,
        }
    }

    /// Applies new pod-level resources and overhead to the pod's cgroup.
    pub async fn update_resources(
        &self,
        id: &str,
        overhead: Option<spec::Resources>,
        resources: Option<spec::Resources>,
    ) -> Result<()> {
        let id = self.resolve(id)?;
        let lock = self.lock(&id);
        let _g = lock.lock().await;
        let mut pod = self
            .inner
            .db
            .pod(&id)?
            .ok_or_else(|| Error::NotFound(id.clone()))?;
        if overhead.is_some() {
            pod.spec.overhead = overhead;
        }
        if resources.is_some() {
            pod.spec.resources = resources;
        }
        if let Some(rel) = self.cgroup_rel(&pod)
            && let Some(limits) =
                cgroup::pod_limits(pod.spec.overhead.as_ref(), pod.spec.resources.as_ref())
        {
            cgroup::apply(&self.inner.hierarchy, &rel, &limits)
                .map_err(|e| internal(&id, "update pod cgroup", e))?;
        }
        self.inner.db.update_pod(&pod)?;
        Ok(())
    }

    /// After a restart: pods caught half-created are torn down; Ready pods whose shim died
    /// are NotReady. Running pods are left alone.
    pub async fn recover(&self) -> Result<()> {
        for pod in self.inner.db.pods()? {
            if pod.state == PodState::Creating {
                tracing::info!(pod_id = %pod.id, "removing a pod whose creation was interrupted");
                self.teardown(&pod).await;
                self.remove_files(&pod).await;
                self.inner.db.delete_pod(&pod.id)?;
                continue;
            }
            let pod = self.check_alive(pod)?;
            tracing::info!(pod_id = %pod.id, state = ?pod.state, "recovered pod");
        }
        // State directories no pod owns are leftovers of a crash.
        let known: std::collections::HashSet<String> =
            self.inner.db.pods()?.into_iter().map(|p| p.id).collect();
        if let Ok(rd) = std::fs::read_dir(&self.inner.pods_dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !known.contains(&name) {
                    let dir = e.path();
                    let _ = namespaces::unpin_all(&dir);
                    let _ = files::unmount_shm(&dir);
                    if let Err(err) = remove_dir_safely(&dir) {
                        tracing::warn!(dir = %dir.display(), error = %err, "cannot remove stale pod dir");
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether path `leaf` is `dir` or below it.
fn is_within(leaf: &str, dir: &str) -> bool {
    leaf == dir || leaf.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
}

/// Removes a pod directory without crossing into anything still mounted below it.
fn remove_dir_safely(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = format!("{}/", dir.display());
    if let Some(m) = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .find(|m| m.starts_with(&prefix) || *m == dir.to_string_lossy())
    {
        return Err(std::io::Error::other(format!("{m} is still mounted")));
    }
    std::fs::remove_dir_all(dir)
}

/// A user-namespaced pod's containers reach their rootfs and the pod's files as the mapped
/// root, a stranger to the host's directories: every directory above the pod's must let
/// others through (containerd needs the same, 0711). Says which one does not.
fn searchable_by_others(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for d in dir.ancestors() {
        let mode = std::fs::metadata(d)?.permissions().mode();
        if mode & 0o001 == 0 {
            return Err(std::io::Error::other(format!(
                "{} (mode {:o}) is not searchable by others, which the pod's mapped root \
                 needs to reach its containers' root filesystems (chmod o+x it)",
                d.display(),
                mode & 0o7777
            )));
        }
    }
    Ok(())
}

fn shim_id_mappings(
    m: Option<&Vec<crate::container::config::IdMapping>>,
) -> Vec<crate::proto::shim::IdMapping> {
    m.into_iter()
        .flatten()
        .map(|m| crate::proto::shim::IdMapping {
            container_id: m.container_id,
            host_id: m.host_id,
            length: m.length,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_directory_above_a_user_namespaced_pod_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let top = std::env::temp_dir().join(format!("berth-search-{}", std::process::id()));
        let pod = top.join("pods/p1");
        std::fs::create_dir_all(&pod).unwrap();
        std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o711)).unwrap();
        let open = searchable_by_others(&pod);
        std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o700)).unwrap();
        let closed = searchable_by_others(&pod);
        let _ = std::fs::remove_dir_all(&top);
        // The system temp dir itself may be closed on some hosts; only compare ours.
        if open.is_ok() {
            let e = closed.unwrap_err().to_string();
            assert!(e.contains(&top.display().to_string()), "{e}");
            assert!(e.contains("mode 700"), "{e}");
        }
    }

    #[test]
    fn sysctls_must_be_namespaced_and_match_the_pods_namespaces() {
        let pod = PodSpec::default();
        assert!(validate_sysctl("net.ipv4.ip_forward", &pod).is_ok());
        assert!(validate_sysctl("net/ipv4/ip_forward", &pod).is_ok());
        assert!(validate_sysctl("kernel.shm_rmid_forced", &pod).is_ok());
        assert!(validate_sysctl("kernel.msgmax", &pod).is_ok());
        assert!(validate_sysctl("vm.swappiness", &pod).is_err());
        assert!(validate_sysctl("kernel.panic", &pod).is_err());
        assert!(validate_sysctl("net..x", &pod).is_err());
        let host = PodSpec {
            network: NsMode::Node,
            ipc: NsMode::Node,
            ..Default::default()
        };
        assert!(validate_sysctl("net.ipv4.ip_forward", &host).is_err());
        assert!(validate_sysctl("kernel.shm_rmid_forced", &host).is_err());
    }

    #[test]
    fn cni_args_as_kubelet_runtimes_pass_them() {
        let spec = PodSpec {
            metadata: spec::PodMetadata {
                name: "p".into(),
                namespace: "ns".into(),
                uid: "u".into(),
                attempt: 0,
            },
            ..Default::default()
        };
        let a = cni_args("id1", &spec);
        assert_eq!(a[0], ("IgnoreUnknown".into(), "1".into()));
        assert!(a.contains(&("K8S_POD_INFRA_CONTAINER_ID".into(), "id1".into())));
        assert!(a.contains(&("K8S_POD_NAMESPACE".into(), "ns".into())));
    }
}
