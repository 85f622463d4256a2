//! The container lifecycle in berthd: create (rootfs, spec, bundle, shim create), start,
//! stop, remove, status, exec, through the pod's shim. The metadata DB is the record; a
//! watcher per pod follows its shim's events so that status reads need no round trip.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use super::config::ContainerConfig;
use super::rootfs;
use super::spec::{self, ImageConfig, PodContext, SpecInput};
use crate::config::{CgroupDriver, Config};
use crate::image::ImageService;
use crate::proto::shim as sp;
use crate::sandbox::spec::{NsMode, PodRecord, PodState};
use crate::sandbox::{SandboxService, cgroup, files, namespaces, now_ns};
use crate::shim::client::{self as shim, ShimClient};
use crate::store::containers::{ContainerRecord, ContainerState};
use crate::store::{self, Db};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container {0:?} not found")]
    NotFound(String),
    #[error("container id prefix {0:?} is ambiguous")]
    Ambiguous(String),
    #[error("container {name:?} already exists in the pod as {id}")]
    AlreadyExists { name: String, id: String },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("image {0:?} not found: pull it first")]
    ImageNotFound(String),
    #[error("container {id}: {detail}")]
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

fn spec_err(e: spec::SpecError) -> Error {
    match e {
        spec::SpecError::NotFound(m) => Error::NotFound(m),
        spec::SpecError::Internal(m) => Error::Internal {
            id: String::new(),
            detail: m,
        },
        other => Error::InvalidArgument(other.to_string()),
    }
}

/// A shim error, classified: the caller's mistakes keep their meaning.
pub(super) fn shim_err(id: &str, what: &str, e: shim::Error) -> Error {
    match e {
        shim::Error::NotFound(m) => Error::NotFound(format!("{id}: {m}")),
        shim::Error::FailedPrecondition(m) => {
            Error::FailedPrecondition(format!("container {id}: {what}: {m}"))
        }
        shim::Error::InvalidArgument(m) => {
            Error::InvalidArgument(format!("container {id}: {what}: {m}"))
        }
        other => internal(id, what, other),
    }
}

/// A container lifecycle event, for the CRI event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub container_id: String,
    pub pod_id: String,
    pub kind: EventKind,
    pub at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Started,
    Stopped,
    Deleted,
}

struct Inner {
    db: Arc<Db>,
    images: ImageService,
    sandboxes: SandboxService,
    containers_dir: PathBuf,
    driver: CgroupDriver,
    hierarchy: cgroup::Hierarchy,
    events: broadcast::Sender<Event>,
    locks: crate::ids::Locks,
    /// Pods whose shim events are being followed.
    watched: Mutex<std::collections::HashSet<String>>,
    host: super::host::HostFeatures,
    /// The node's devices, for privileged containers (probed once).
    host_devices: Vec<super::devices::DeviceNode>,
    /// Read again at each create that asks for CDI devices.
    cdi_spec_dirs: Vec<PathBuf>,
}

#[derive(Clone)]
pub struct ContainerService {
    inner: Arc<Inner>,
}

impl ContainerService {
    pub fn open(
        cfg: &Config,
        db: Arc<Db>,
        images: ImageService,
        sandboxes: SandboxService,
    ) -> std::result::Result<ContainerService, String> {
        let containers_dir = cfg.root.join("containers");
        std::fs::create_dir_all(&containers_dir)
            .map_err(|e| format!("cannot create {}: {e}", containers_dir.display()))?;
        let (events, _) = broadcast::channel(1024);
        Ok(ContainerService {
            inner: Arc::new(Inner {
                db,
                images,
                sandboxes,
                containers_dir,
                driver: cfg.cgroup_driver,
                hierarchy: cgroup::Hierarchy::detect(),
                events,
                locks: Default::default(),
                watched: Mutex::new(Default::default()),
                host: super::host::HostFeatures::probe(),
                host_devices: super::devices::host_devices().unwrap_or_default(),
                cdi_spec_dirs: cfg.cdi_spec_dirs.clone(),
            }),
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    fn emit(&self, c: &ContainerRecord, kind: EventKind) {
        let _ = self.inner.events.send(Event {
            container_id: c.id.clone(),
            pod_id: c.pod_id.clone(),
            kind,
            at: now_ns(),
        });
    }

    fn lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner.locks.get(id)
    }

    fn forget_lock(&self, id: &str) {
        self.inner.locks.forget(id);
    }

    /// The shim of the container's pod.
    pub(super) fn shim(&self, c: &ContainerRecord) -> ShimClient {
        ShimClient::new(&self.inner.sandboxes.pod_dir(&c.pod_id))
    }

    fn bundle(&self, c: &ContainerRecord) -> PathBuf {
        self.inner
            .sandboxes
            .pod_dir(&c.pod_id)
            .join("containers")
            .join(&c.id)
    }

    /// A full id or a unique prefix.
    pub fn resolve(&self, id: &str) -> Result<String> {
        if id.is_empty() {
            return Err(Error::InvalidArgument("container id is empty".into()));
        }
        let exists = self.inner.db.container(id)?.is_some();
        let all = if exists {
            Vec::new()
        } else {
            self.inner
                .db
                .containers()?
                .into_iter()
                .map(|c| c.id)
                .collect()
        };
        match crate::ids::resolve(id, exists, all) {
            crate::ids::Resolve::Found(id) => Ok(id),
            crate::ids::Resolve::NotFound => Err(Error::NotFound(id.to_string())),
            crate::ids::Resolve::Ambiguous => Err(Error::Ambiguous(id.to_string())),
        }
    }

    pub fn get(&self, id: &str) -> Result<ContainerRecord> {
        let id = self.resolve(id)?;
        self.inner.db.container(&id)?.ok_or(Error::NotFound(id))
    }

    pub fn list(&self) -> Result<Vec<ContainerRecord>> {
        Ok(self
            .inner
            .db
            .containers()?
            .into_iter()
            .filter(|c| c.state != ContainerState::Creating)
            .collect())
    }

    /// The relative cgroup path of a container of `pod`.
    fn cgroup_path(&self, pod: &PodRecord, id: &str) -> String {
        let parent = if pod.spec.cgroup_parent.is_empty() {
            "berth".to_string()
        } else {
            cgroup::parent_path(&pod.spec.cgroup_parent, self.inner.driver)
                .unwrap_or_else(|_| "berth".into())
        };
        match self.inner.driver {
            CgroupDriver::Systemd if pod.spec.cgroup_parent.ends_with(".slice") => {
                format!("/{parent}/berth-{id}.scope")
            }
            _ => format!("/{}/{id}", parent.trim_matches('/')),
        }
    }

    pub async fn create(&self, pod_id: &str, config: ContainerConfig) -> Result<ContainerRecord> {
        if config.metadata.name.is_empty() {
            return Err(Error::InvalidArgument(
                "container metadata name is empty".into(),
            ));
        }
        let pod = match self.inner.sandboxes.get(pod_id) {
            Ok(p) => p,
            Err(crate::sandbox::Error::NotFound(_)) => {
                return Err(Error::NotFound(format!("pod sandbox {pod_id}")));
            }
            Err(e) => return Err(internal(pod_id, "pod sandbox", e)),
        };
        if pod.state != PodState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                pod.id
            )));
        }
        let image = self
            .inner
            .images
            .resolve(&config.image)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?
            .ok_or_else(|| Error::ImageNotFound(config.image.clone()))?;
        let image_config = ImageConfig::from_json(&image.config)
            .map_err(|e| internal(&image.id, "image config", e))?;

        let id = crate::ids::new_id();
        let log_path = if config.log_path.is_empty() || pod.spec.log_directory.is_empty() {
            String::new()
        } else {
            Path::new(&pod.spec.log_directory)
                .join(&config.log_path)
                .display()
                .to_string()
        };
        let mut rec = ContainerRecord {
            id: id.clone(),
            pod_id: pod.id.clone(),
            image_name: config.image.clone(),
            image_id: image.id.clone(),
            image_ref: image
                .repo_digests
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.clone()),
            state: ContainerState::Creating,
            created_at: now_ns(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            pid: 0,
            log_path,
            stop_signal: spec::stop_signal(&config, &image_config)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?,
            uid: 0,
            gid: 0,
            supplemental_groups: Vec::new(),
            cgroup: self.cgroup_path(&pod, &id),
            chain_ids: image.chain_ids.clone(),
            config,
        };
        if let Some(existing) = self.inner.db.insert_container(&rec)? {
            return Err(Error::AlreadyExists {
                name: rec.config.metadata.name.clone(),
                id: existing,
            });
        }
        let lock = self.lock(&id);
        let _g = lock.lock().await;
        match self.setup(&mut rec, &pod, &image_config).await {
            Ok(()) => {
                rec.state = ContainerState::Created;
                self.inner.db.update_container(&rec)?;
                self.watch(&pod.id);
                self.emit(&rec, EventKind::Created);
                Ok(rec)
            }
            Err(e) => {
                tracing::warn!(container_id = %id, error = %e, "container create failed; undoing");
                self.teardown(&rec).await;
                if let Err(err) = self.inner.db.delete_container(&id) {
                    tracing::error!(container_id = %id, error = %err, "cannot delete failed container record");
                }
                drop(_g);
                self.forget_lock(&id);
                Err(e)
            }
        }
    }

    async fn setup(
        &self,
        rec: &mut ContainerRecord,
        pod: &PodRecord,
        image: &ImageConfig,
    ) -> Result<()> {
        let id = rec.id.clone();
        let pod_dir = self.inner.sandboxes.pod_dir(&pod.id);
        let ns = namespaces::ns_paths(&pod_dir);
        let bundle = self.bundle(rec);
        let rootfs_dir = bundle.join("rootfs");
        let layer = rootfs::layer(&self.inner.containers_dir, &id);
        let lowers: Vec<PathBuf> = rec
            .chain_ids
            .iter()
            .rev()
            .map(|c| self.inner.images.layer_dir(c))
            .collect();
        let (l, target) = (
            rootfs::Layer {
                upper: layer.upper.clone(),
                work: layer.work.clone(),
            },
            rootfs_dir.clone(),
        );
        // A user-namespaced pod: the rootfs is seen through the pod's ID mapping.
        let userns = pod.spec.user_ns.as_ref().map(|u| {
            let root = |m: &[super::config::IdMapping]| {
                m.iter()
                    .find(|m| m.container_id == 0)
                    .map_or(0, |m| m.host_id)
            };
            (ns.user.clone(), root(&u.uids), root(&u.gids))
        });
        tokio::task::spawn_blocking(move || {
            let idmap = userns.as_ref().map(|(p, uid, gid)| rootfs::IdMap {
                userns: p,
                root_uid: *uid,
                root_gid: *gid,
            });
            rootfs::mount_rootfs(&lowers, &l, &target, idmap)
        })
        .await
        .map_err(|e| internal(&id, "rootfs", e))?
        .map_err(|e| internal(&id, "rootfs", e))?;

        // Host paths of bind mounts that do not exist are made, as containerd does.
        super::mounts::prepare_host_paths(&mut rec.config).map_err(spec_err)?;
        pod_user_ns(&pod.spec, &mut rec.config).map_err(spec_err)?;
        let userns_file = pod.spec.user_ns.is_some().then(|| ns.user.clone());
        let (config, idmap) = (rec.config.clone(), rootfs::idmap_dir(&bundle));
        rec.config = tokio::task::spawn_blocking(move || {
            stage_idmapped_mounts(config, userns_file.as_deref(), &idmap)
        })
        .await
        .map_err(|e| internal(&id, "idmapped mounts", e))?
        .map_err(spec_err)?;
        let devices = super::devices::resolve(&rec.config.devices).map_err(spec_err)?;
        let cdi = super::cdi::resolve(&self.inner.cdi_spec_dirs, &rec.config.cdi_devices)
            .map_err(|e| spec_err(e.into()))?;
        let (passwd, group) = {
            let root = rootfs_dir.clone();
            tokio::task::spawn_blocking(move || {
                let read = |rel: &str| {
                    rootfs::read_file_in_root(&root, rel, rootfs::ACCOUNT_FILE_MAX)
                        .unwrap_or_else(|e| {
                            tracing::warn!(file = rel, error = %e, "the image's account file is ignored");
                            None
                        })
                };
                (read("etc/passwd"), read("etc/group"))
            })
            .await
            .map_err(|e| internal(&id, "read /etc/passwd", e))?
        };
        let seccomp_localhost = match &rec.config.security.seccomp {
            super::config::SeccompProfile::Localhost(p) => {
                Some(std::fs::read_to_string(p).map_err(|e| {
                    Error::NotFound(format!("seccomp profile {}: {e}", p.display()))
                })?)
            }
            _ => None,
        };
        let pf = files::paths(&pod_dir);
        let pod_ctx = PodContext {
            pod_id: pod.id.clone(),
            pod_name: pod.spec.metadata.name.clone(),
            pod_namespace: pod.spec.metadata.namespace.clone(),
            pod_uid: pod.spec.metadata.uid.clone(),
            user_ns: pod.spec.user_ns.is_some().then(|| ns.user.clone()),
            hostname: files::hostname(&pod.spec),
            privileged: pod.spec.privileged,
            net_ns: (pod.spec.network != NsMode::Node).then(|| ns.net.clone()),
            ipc_ns: (pod.spec.ipc != NsMode::Node).then(|| ns.ipc.clone()),
            uts_ns: (pod.spec.network != NsMode::Node).then(|| ns.uts.clone()),
            pid_ns: (pod.spec.pid == NsMode::Pod).then(|| ns.pid.clone()),
            pid_mode: pod.spec.pid,
            host_network: pod.spec.network == NsMode::Node,
            host_ipc: pod.spec.ipc == NsMode::Node,
            hostname_file: pf.hostname,
            hosts_file: pf.hosts,
            resolv_conf_file: pf.resolv_conf,
            shm_dir: (pod.spec.ipc != NsMode::Node).then_some(pf.shm),
            sysctls: Default::default(),
        };
        let input = SpecInput {
            id: &id,
            config: &rec.config,
            image,
            pod: &pod_ctx,
            rootfs: &rootfs_dir,
            cgroups_path: rec.cgroup.clone(),
            passwd: passwd.as_deref(),
            group: group.as_deref(),
            seccomp_localhost: seccomp_localhost.as_deref(),
            devices: &devices,
            host_devices: &self.inner.host_devices,
            cdi: &cdi,
            target_pid_ns: None,
            image_volumes_dir: None,
            host: &self.inner.host,
        };
        let oci = spec::generate(&input).map_err(spec_err)?;
        if let Some(user) = oci.process().as_ref().map(|p| p.user()) {
            rec.uid = i64::from(user.uid());
            rec.gid = i64::from(user.gid());
            rec.supplemental_groups = user
                .additional_gids()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(i64::from)
                .collect();
        }
        oci.save(bundle.join("config.json"))
            .map_err(|e| internal(&id, "write config.json", e))?;
        if !rec.log_path.is_empty()
            && let Some(dir) = Path::new(&rec.log_path).parent()
        {
            std::fs::create_dir_all(dir).map_err(|e| internal(&id, "log directory", e))?;
        }
        let client = ShimClient::new(&pod_dir);
        let pid = client
            .create_container(sp::CreateContainerRequest {
                id: id.clone(),
                bundle: bundle.display().to_string(),
                log_path: rec.log_path.clone(),
                tty: rec.config.tty,
                stdin: rec.config.stdin,
                stdin_once: rec.config.stdin_once,
            })
            .await
            .map_err(|e| shim_err(&id, "create", e))?;
        rec.pid = pid;
        Ok(())
    }

    /// Undoes a create; each step idempotent.
    async fn teardown(&self, rec: &ContainerRecord) {
        let pod_dir = self.inner.sandboxes.pod_dir(&rec.pod_id);
        if shim::shim_alive(&pod_dir)
            && let Err(e) = ShimClient::new(&pod_dir).delete_container(&rec.id).await
        {
            tracing::warn!(container_id = %rec.id, error = %e, "shim delete");
        }
        let bundle = self.bundle(rec);
        let layer = rootfs::layer(&self.inner.containers_dir, &rec.id);
        let dir = self.inner.containers_dir.join(&rec.id);
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = rootfs::unmount_rootfs(&bundle.join("rootfs")) {
                tracing::warn!(error = %e, "unmount rootfs");
                return;
            }
            if let Err(e) = rootfs::unmount_idmapped(&rootfs::idmap_dir(&bundle)) {
                tracing::warn!(error = %e, "unmount idmapped mounts");
                return;
            }
            let _ = std::fs::remove_dir_all(&bundle);
            let _ = std::fs::remove_dir_all(&layer.upper);
            let _ = std::fs::remove_dir_all(&dir);
        })
        .await;
    }

    pub async fn start(&self, id: &str) -> Result<()> {
        let id = self.resolve(id)?;
        let lock = self.lock(&id);
        let _g = lock.lock().await;
        let mut rec = self.get(&id)?;
        if rec.state != ContainerState::Created {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is {:?}, not created",
                rec.state
            )));
        }
        let pod_dir = self.inner.sandboxes.pod_dir(&rec.pod_id);
        let client = ShimClient::new(&pod_dir);
        // Taken before the process runs, so that a quick exit never precedes it.
        let started_at = now_ns();
        if let Err(e) = client.start_container(&id).await {
            // A start that fails (e.g. the command is not in the image) leaves the
            // container exited with the reason, as runc-based runtimes do.
            rec.state = ContainerState::Exited;
            rec.finished_at = now_ns();
            rec.exit_code = 128;
            rec.reason = "StartError".into();
            rec.message = e.to_string();
            self.inner.db.update_container(&rec)?;
            return Err(shim_err(&id, "start", e));
        }
        rec.state = ContainerState::Running;
        rec.started_at = started_at;
        // Not flushed: after a crash the record says Created and the shim, asked at
        // recovery, says Running with this start time (one fsync less per start).
        self.inner.db.update_container_lazily(&rec)?;
        self.emit(&rec, EventKind::Started);
        // It may have exited already: the watcher updates it; nothing to wait for here.
        Ok(())
    }

    /// Refreshes a container's state from its shim (or its exit file if the shim is gone).
    /// Callers hold the container's lock; the stored record is re-read under it, so an
    /// exit is recorded (and announced) once.
    async fn refresh(&self, rec: &mut ContainerRecord) -> Result<()> {
        match self.inner.db.container(&rec.id)? {
            Some(fresh) => *rec = fresh,
            None => return Ok(()),
        }
        if !matches!(rec.state, ContainerState::Running | ContainerState::Created) {
            return Ok(());
        }
        let pod_dir = self.inner.sandboxes.pod_dir(&rec.pod_id);
        let alive = shim::shim_alive(&pod_dir);
        let st = if alive {
            match ShimClient::new(&pod_dir).container_state(&rec.id).await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::debug!(container_id = %rec.id, error = %e, "state from shim");
                    None
                }
            }
        } else {
            None
        };
        let st = match st {
            Some(s) => s,
            None => match crate::shim::exits::read(&pod_dir, &rec.id).ok().flatten() {
                Some(x) => sp::ContainerState {
                    id: rec.id.clone(),
                    status: sp::container_state::Status::Exited as i32,
                    pid: x.pid,
                    exit_code: x.exit_code,
                    started_at: x.started_at,
                    finished_at: x.finished_at,
                    oom_killed: x.oom_killed,
                },
                None if !alive => {
                    // The shim died without recording an exit: it is gone, cause unknown.
                    rec.state = ContainerState::Exited;
                    rec.exit_code = 255;
                    rec.finished_at = now_ns();
                    rec.reason = "Unknown".into();
                    rec.message = "the pod's shim exited; the container's fate is unknown".into();
                    self.inner.db.update_container(rec)?;
                    self.emit(rec, EventKind::Stopped);
                    return Ok(());
                }
                None => return Ok(()),
            },
        };
        if st.status == sp::container_state::Status::Exited as i32 {
            rec.state = ContainerState::Exited;
            rec.exit_code = st.exit_code;
            rec.finished_at = if st.finished_at > 0 {
                st.finished_at
            } else {
                now_ns()
            };
            if rec.started_at == 0 {
                rec.started_at = st.started_at;
            }
            rec.reason = if st.oom_killed {
                "OOMKilled".into()
            } else if st.exit_code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            };
            self.inner.db.update_container(rec)?;
            self.emit(rec, EventKind::Stopped);
        }
        Ok(())
    }

    /// The container, its state brought up to date.
    pub async fn status(&self, id: &str) -> Result<ContainerRecord> {
        let mut rec = self.get(id)?;
        if matches!(rec.state, ContainerState::Running | ContainerState::Created) {
            let lock = self.lock(&rec.id);
            let _g = lock.lock().await;
            self.refresh(&mut rec).await?;
        }
        Ok(rec)
    }

    /// Stops a container: its stop signal, then SIGKILL after `timeout`. Idempotent.
    pub async fn stop(&self, id: &str, timeout: Duration) -> Result<()> {
        let id = self.resolve(id)?;
        let lock = self.lock(&id);
        let _g = lock.lock().await;
        let mut rec = self.get(&id)?;
        self.refresh(&mut rec).await?;
        if rec.state != ContainerState::Running && rec.state != ContainerState::Created {
            return Ok(());
        }
        let pod_dir = self.inner.sandboxes.pod_dir(&rec.pod_id);
        let client = ShimClient::new(&pod_dir);
        if rec.state == ContainerState::Running && !timeout.is_zero() {
            if let Err(e) = client.kill_container(&id, rec.stop_signal, false).await {
                tracing::debug!(container_id = %id, error = %e, "stop signal");
            }
            let deadline = tokio::time::Instant::now() + timeout;
            while tokio::time::Instant::now() < deadline {
                self.refresh(&mut rec).await?;
                if rec.state == ContainerState::Exited {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if let Err(e) = client.kill_container(&id, 9, true).await {
            tracing::debug!(container_id = %id, error = %e, "SIGKILL");
        }
        for _ in 0..500 {
            self.refresh(&mut rec).await?;
            if rec.state == ContainerState::Exited {
                return Ok(());
            }
            if rec.state == ContainerState::Created {
                // Never started: nothing runs; it counts as exited.
                rec.state = ContainerState::Exited;
                rec.finished_at = now_ns();
                rec.exit_code = 137;
                rec.reason = "Error".into();
                self.inner.db.update_container(&rec)?;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(internal(
            &id,
            "stop",
            "the container did not exit after SIGKILL",
        ))
    }

    /// Removes a container, killing it first if it runs. Idempotent.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let id = match self.resolve(id) {
            Ok(id) => id,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop(&id, Duration::ZERO).await?;
        let lock = self.lock(&id);
        let _g = lock.lock().await;
        let Some(rec) = self.inner.db.container(&id)? else {
            return Ok(());
        };
        self.teardown(&rec).await;
        self.inner.db.delete_container(&id)?;
        let pod_dir = self.inner.sandboxes.pod_dir(&rec.pod_id);
        let _ = crate::shim::exits::remove(&pod_dir, &id);
        self.emit(&rec, EventKind::Deleted);
        drop(_g);
        self.forget_lock(&id);
        if let Err(e) = self.inner.images.collect_layers().await {
            tracing::warn!(error = %e, "collecting unused layers");
        }
        Ok(())
    }

    /// Removes every container of a pod (RemovePodSandbox), after stopping them.
    pub async fn remove_pod_containers(&self, pod_id: &str) -> Result<()> {
        for c in self.inner.db.containers()? {
            if c.pod_id == pod_id {
                self.remove(&c.id).await?;
            }
        }
        self.inner
            .watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(pod_id);
        Ok(())
    }

    /// Stops every container of a pod (StopPodSandbox), with their stop signals.
    pub async fn stop_pod_containers(&self, pod_id: &str, timeout: Duration) -> Result<()> {
        for c in self.inner.db.containers()? {
            if c.pod_id == pod_id {
                self.stop(&c.id, timeout).await?;
            }
        }
        Ok(())
    }

    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<sp::ExecSyncResponse> {
        // The record (kept current by the shim's event stream) is enough: the shim checks
        // the state again, so no round trip to it is needed first (kubelet's exec probes
        // make this a hot path).
        let rec = self.get(id)?;
        if rec.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        if cmd.is_empty() {
            return Err(Error::InvalidArgument("exec: empty command".into()));
        }
        let pod_dir = self.inner.sandboxes.pod_dir(&rec.pod_id);
        ShimClient::new(&pod_dir)
            .exec_sync(&rec.id, cmd, timeout)
            .await
            .map_err(|e| shim_err(&rec.id, "exec", e))
    }

    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        let rec = self.status(id).await?;
        if rec.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        let pod_dir = self.inner.sandboxes.pod_dir(&rec.pod_id);
        ShimClient::new(&pod_dir)
            .reopen_log(&rec.id)
            .await
            .map_err(|e| shim_err(&rec.id, "reopen log", e))
    }

    /// Usage of a container: its cgroup and its writable layer.
    pub fn usage(&self, rec: &ContainerRecord) -> (crate::stats::CgroupUsage, u64, u64) {
        let cg = crate::stats::cgroup_usage(&self.inner.hierarchy, &rec.cgroup);
        let (bytes, inodes) = rootfs::usage(&rootfs::layer(&self.inner.containers_dir, &rec.id));
        (cg, bytes, inodes)
    }

    pub async fn update_resources(&self, id: &str, res: super::config::Resources) -> Result<()> {
        let id = self.resolve(id)?;
        let lock = self.lock(&id);
        let _g = lock.lock().await;
        let mut rec = self.get(&id)?;
        let r = crate::sandbox::spec::Resources {
            cpu_period: res.cpu_period,
            cpu_quota: res.cpu_quota,
            cpu_shares: res.cpu_shares,
            memory_limit: res.memory_limit,
            // As at create: without a swap limit, memory+swap is the memory limit.
            memory_swap: if res.memory_swap_limit != 0 {
                res.memory_swap_limit
            } else {
                res.memory_limit
            },
            cpuset_cpus: res.cpuset_cpus.clone(),
            cpuset_mems: res.cpuset_mems.clone(),
        };
        if matches!(rec.state, ContainerState::Running | ContainerState::Created) {
            cgroup::apply(&self.inner.hierarchy, &rec.cgroup, &r)
                .map_err(|e| internal(&id, "update resources", e))?;
        }
        rec.config.resources = Some(res);
        self.inner.db.update_container(&rec)?;
        Ok(())
    }

    /// Follows a pod's shim events: an exit is recorded as soon as the shim reports it.
    fn watch(&self, pod_id: &str) {
        {
            let mut w = self.inner.watched.lock().unwrap_or_else(|e| e.into_inner());
            if !w.insert(pod_id.to_string()) {
                return;
            }
        }
        let svc = self.clone();
        let pod_id = pod_id.to_string();
        tokio::spawn(async move {
            let pod_dir = svc.inner.sandboxes.pod_dir(&pod_id);
            let sub = ShimClient::new(&pod_dir).subscribe().await;
            if let Ok(mut rx) = sub {
                while let Some(ev) = rx.recv().await {
                    if ev.kind == sp::event::Kind::Exited as i32
                        && let Ok(id) = svc.resolve(&ev.container_id)
                    {
                        let lock = svc.lock(&id);
                        let _g = lock.lock().await;
                        let Ok(mut rec) = svc.get(&id) else { continue };
                        if let Err(e) = svc.refresh(&mut rec).await {
                            tracing::warn!(container_id = %rec.id, error = %e, "recording exit");
                        }
                    }
                }
            }
            // The shim went away: containers still recorded running learn their fate.
            svc.inner
                .watched
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&pod_id);
            if let Ok(all) = svc.inner.db.containers() {
                for mut c in all.into_iter().filter(|c| c.pod_id == pod_id) {
                    let lock = svc.lock(&c.id);
                    let _g = lock.lock().await;
                    let _ = svc.refresh(&mut c).await;
                }
            }
        });
    }

    /// After a restart: half-created containers are removed, running ones followed again,
    /// and those that exited while berthd was down get their exit from the exit files.
    pub async fn recover(&self) -> Result<()> {
        for mut c in self.inner.db.containers()? {
            if c.state == ContainerState::Creating {
                tracing::info!(container_id = %c.id, "removing a container whose creation was interrupted");
                self.teardown(&c).await;
                self.inner.db.delete_container(&c.id)?;
                continue;
            }
            {
                let lock = self.lock(&c.id);
                let _g = lock.lock().await;
                self.refresh(&mut c).await?;
            }
            if matches!(c.state, ContainerState::Running | ContainerState::Created) {
                self.watch(&c.pod_id);
            }
        }
        Ok(())
    }
}

/// A container of a user-namespaced pod runs in the pod's user namespace (which owns the
/// namespaces it joins), with the pod's mappings; a config that asks for another is refused.
fn pod_user_ns(
    pod: &crate::sandbox::spec::PodSpec,
    config: &mut super::config::ContainerConfig,
) -> std::result::Result<(), super::spec::SpecError> {
    use super::config::{NamespaceMode, UserNamespace};
    use super::spec::SpecError;
    let asked = &mut config.security.namespaces.userns;
    let Some(u) = &pod.user_ns else {
        if asked.as_ref().is_some_and(|a| a.mode == NamespaceMode::Pod) {
            return Err(SpecError::InvalidArgument(
                "the container asks for a pod user namespace but its pod has none".into(),
            ));
        }
        return Ok(());
    };
    let pod_ns = UserNamespace {
        mode: NamespaceMode::Pod,
        uids: u.uids.clone(),
        gids: u.gids.clone(),
    };
    match asked {
        Some(a) if a.mode == NamespaceMode::Node => Err(SpecError::InvalidArgument(
            "the container asks for the host's user namespace but its pod has its own".into(),
        )),
        Some(a) if *a != pod_ns => Err(SpecError::InvalidArgument(
            "the container's user namespace mappings differ from its pod's".into(),
        )),
        _ => {
            *asked = Some(pod_ns);
            Ok(())
        }
    }
}

/// CRI mounts with ID mappings (kubelet gives them for the volumes of user-namespaced
/// pods) are made here, idmapped through the pod's user namespace, under `idmap_dir`; the
/// returned config binds those instead. Mappings other than the pod's, or without a pod
/// user namespace, are refused.
fn stage_idmapped_mounts(
    mut config: super::config::ContainerConfig,
    userns_file: Option<&std::path::Path>,
    idmap_dir: &std::path::Path,
) -> std::result::Result<super::config::ContainerConfig, super::spec::SpecError> {
    use super::spec::SpecError;
    let pod_maps = config
        .security
        .namespaces
        .userns
        .as_ref()
        .map(|u| (u.uids.clone(), u.gids.clone()));
    for (n, m) in config.mounts.iter_mut().enumerate() {
        if m.uid_mappings.is_empty() && m.gid_mappings.is_empty() {
            continue;
        }
        let (Some(userns), Some((uids, gids))) = (userns_file, pod_maps.as_ref()) else {
            return Err(SpecError::InvalidArgument(format!(
                "mount {:?} asks for ID mappings but its pod has no user namespace",
                m.container_path
            )));
        };
        if (&m.uid_mappings, &m.gid_mappings) != (uids, gids) {
            return Err(SpecError::Unsupported(format!(
                "mount {:?}: ID mappings other than the pod's user namespace are not supported",
                m.container_path
            )));
        }
        let staging = idmap_dir.join(n.to_string());
        rootfs::idmapped_bind(std::path::Path::new(&m.host_path), &staging, userns).map_err(
            |e| SpecError::InvalidArgument(format!("idmapped mount {:?}: {e}", m.host_path)),
        )?;
        m.host_path = staging.display().to_string();
        m.uid_mappings.clear();
        m.gid_mappings.clear();
    }
    Ok(config)
}
