//! The CRI operations the pod, container and memory figures share, each checked the way
//! the figures need (the pod really Ready with an IP, the container really RUNNING), and
//! the bookkeeping that lets the benchmark remove every pod it made, also after an error
//! or an interrupt.
//!
//! Every pod is named uniquely (`berth-bench-FIGURE-N` in namespace `berth-bench`, uid
//! `TOKEN-N`) and labelled `berth-bench/run=TOKEN` (TOKEN: this process's pid and start
//! time), `berth-bench/role=endpoint|vs` and `berth-bench/figure=FIGURE`. A pod is recorded in the [`Tracker`] as soon as
//! `RunPodSandbox` returns its id and forgotten once `RemovePodSandbox` succeeded; the
//! sweep ([`Ops::sweep`]) stops and removes every recorded pod and every pod that carries
//! this run's label (which also finds a pod whose `RunPodSandbox` answer was lost).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use tonic::Code;
use tonic::transport::Channel;

use super::cri;
use super::request;
use cri::image_service_client::ImageServiceClient;
use cri::runtime_service_client::RuntimeServiceClient;

/// Deadline of an RPC of the pod and container figures (kubelet's default is 2 minutes).
pub const RPC_TIMEOUT: Duration = Duration::from_secs(120);
/// Deadline of the setup pull of the container image.
const PULL_TIMEOUT: Duration = Duration::from_secs(600);
/// The pods' Kubernetes namespace.
pub const NAMESPACE: &str = "berth-bench";
pub const LABEL_RUN: &str = "berth-bench/run";
/// "endpoint" or "vs": which runtime made the pod (the two may be one daemon).
pub const LABEL_ROLE: &str = "berth-bench/role";
pub const LABEL_FIGURE: &str = "berth-bench/figure";

/// This process's run token: `PID-STARTNANOSHEX`, a valid label value.
pub fn run_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        format!("{}-{:x}", std::process::id(), nanos as u64)
    })
}

/// The pods this benchmark made on one runtime and has not removed yet.
#[derive(Clone, Default)]
pub struct Tracker {
    inner: Arc<Mutex<TrackerInner>>,
}

#[derive(Default)]
struct TrackerInner {
    pods: BTreeSet<String>,
}

/// A number for a unique pod name, unique in this process (two runtimes given may be one
/// daemon).
fn next_seq() -> u64 {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    SEQ.fetch_add(1, Ordering::Relaxed) + 1
}

impl Tracker {
    fn add(&self, id: &str) {
        self.inner
            .lock()
            .expect("tracker")
            .pods
            .insert(id.to_string());
    }

    fn forget(&self, id: &str) {
        self.inner.lock().expect("tracker").pods.remove(id);
    }

    fn pods(&self) -> Vec<String> {
        self.inner
            .lock()
            .expect("tracker")
            .pods
            .iter()
            .cloned()
            .collect()
    }
}

/// The container image of the container figures, as the runtime knows it.
#[derive(Debug, Clone)]
pub struct Image {
    /// As given (`--image-busybox`).
    pub reference: String,
    /// The image id (`ImageStatus`), what kubelet passes to `CreateContainer`.
    pub id: String,
    /// Whether this benchmark pulled it (then it removes it at the end).
    pub pulled: bool,
}

/// A pod made by [`Ops::run_pod`]: its id and the config (CreateContainer needs it).
#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    pub config: cri::PodSandboxConfig,
}

/// One runtime's CRI clients plus its [`Tracker`]; cheap to clone, so that concurrent
/// figures can hold one each.
#[derive(Clone)]
pub struct Ops {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
    pub tracker: Tracker,
    /// "endpoint" or "vs", for the role label.
    pub role: &'static str,
}

/// Timings of a stop + remove.
#[derive(Debug, Clone, Copy)]
pub struct StopRemove {
    pub stop: Duration,
    pub remove: Duration,
}

impl Ops {
    /// A pod config like kubelet's for an ordinary pod (pod network, IPC shared in the pod,
    /// a PID namespace per container), named uniquely for `figure`.
    pub fn pod_config(&self, figure: &str) -> cri::PodSandboxConfig {
        let n = next_seq();
        let token = run_token();
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: format!("berth-bench-{figure}-{n}"),
                uid: format!("{token}-{n}"),
                namespace: NAMESPACE.into(),
                attempt: 0,
            }),
            hostname: format!("bb-{figure}-{n}"),
            labels: HashMap::from([
                (LABEL_RUN.to_string(), token.to_string()),
                (LABEL_ROLE.to_string(), self.role.to_string()),
                (LABEL_FIGURE.to_string(), figure.to_string()),
            ]),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Pod as i32,
                        pid: cri::NamespaceMode::Container as i32,
                        ipc: cri::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// `RunPodSandbox`; the pod is tracked as soon as the id is known.
    pub async fn run_pod(&mut self, config: &cri::PodSandboxConfig) -> Result<String> {
        let name = pod_name(config);
        let id = self
            .runtime
            .run_pod_sandbox(request(
                cri::RunPodSandboxRequest {
                    config: Some(config.clone()),
                    runtime_handler: String::new(),
                },
                RPC_TIMEOUT,
            ))
            .await
            .with_context(|| format!("RunPodSandbox {name}"))?
            .into_inner()
            .pod_sandbox_id;
        if id.is_empty() {
            bail!("RunPodSandbox {name} returned an empty pod id");
        }
        self.tracker.add(&id);
        Ok(id)
    }

    pub async fn pod_status(&mut self, id: &str) -> Result<cri::PodSandboxStatus> {
        self.runtime
            .pod_sandbox_status(request(
                cri::PodSandboxStatusRequest {
                    pod_sandbox_id: id.into(),
                    verbose: false,
                },
                RPC_TIMEOUT,
            ))
            .await
            .with_context(|| format!("PodSandboxStatus {id}"))?
            .into_inner()
            .status
            .with_context(|| format!("PodSandboxStatus {id} answered without a status"))
    }

    /// The pod is SANDBOX_READY, is the one asked for, and has a pod IP from the network
    /// plugin. Returns the IP.
    pub async fn verify_pod_ready(
        &mut self,
        id: &str,
        config: &cri::PodSandboxConfig,
    ) -> Result<String> {
        let st = self.pod_status(id).await?;
        if st.state != cri::PodSandboxState::SandboxReady as i32 {
            bail!(
                "pod {id} ({}) is {:?} right after RunPodSandbox returned, not SANDBOX_READY",
                pod_name(config),
                cri::PodSandboxState::try_from(st.state)
            );
        }
        if st.id != id {
            bail!("PodSandboxStatus {id} reports id {:?}", st.id);
        }
        let (want, got) = (config.metadata.as_ref(), st.metadata.as_ref());
        if want.map(|m| (&m.name, &m.uid)) != got.map(|m| (&m.name, &m.uid)) {
            bail!(
                "PodSandboxStatus {id} reports metadata {got:?}, RunPodSandbox was given {want:?}"
            );
        }
        let ip = st.network.map(|n| n.ip).unwrap_or_default();
        if ip.is_empty() {
            bail!(
                "pod {id} is Ready but has no IP: the network plugin did not run (the figure \
                 measures pods on the CNI network)"
            );
        }
        Ok(ip)
    }

    /// `StopPodSandbox` then `RemovePodSandbox`, each timed; the pod is forgotten once
    /// removed.
    pub async fn stop_remove_pod(&mut self, id: &str) -> Result<StopRemove> {
        let t0 = Instant::now();
        self.stop_pod(id).await?;
        let stop = t0.elapsed();
        let t1 = Instant::now();
        self.remove_pod(id).await?;
        Ok(StopRemove {
            stop,
            remove: t1.elapsed(),
        })
    }

    pub async fn stop_pod(&mut self, id: &str) -> Result<()> {
        self.runtime
            .stop_pod_sandbox(request(
                cri::StopPodSandboxRequest {
                    pod_sandbox_id: id.into(),
                },
                RPC_TIMEOUT,
            ))
            .await
            .with_context(|| format!("StopPodSandbox {id}"))?;
        Ok(())
    }

    pub async fn remove_pod(&mut self, id: &str) -> Result<()> {
        self.runtime
            .remove_pod_sandbox(request(
                cri::RemovePodSandboxRequest {
                    pod_sandbox_id: id.into(),
                },
                RPC_TIMEOUT,
            ))
            .await
            .with_context(|| format!("RemovePodSandbox {id}"))?;
        self.tracker.forget(id);
        Ok(())
    }

    /// `PodSandboxStatus` must answer NotFound: the pod really is gone.
    pub async fn verify_pod_gone(&mut self, id: &str) -> Result<()> {
        match self
            .runtime
            .pod_sandbox_status(request(
                cri::PodSandboxStatusRequest {
                    pod_sandbox_id: id.into(),
                    verbose: false,
                },
                RPC_TIMEOUT,
            ))
            .await
        {
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(s).with_context(|| format!("PodSandboxStatus {id} after removal")),
            Ok(r) => bail!(
                "RemovePodSandbox {id} succeeded but PodSandboxStatus still finds it: {:?}",
                r.into_inner()
                    .status
                    .map(|s| cri::PodSandboxState::try_from(s.state))
            ),
        }
    }

    /// Status must report `NetworkReady` (the figures measure pods on the CNI network).
    pub async fn verify_network_ready(&mut self) -> Result<()> {
        let st = self
            .runtime
            .status(request(cri::StatusRequest { verbose: false }, RPC_TIMEOUT))
            .await
            .context("Status")?
            .into_inner()
            .status
            .context("Status answered without a status")?;
        match st.conditions.iter().find(|c| c.r#type == "NetworkReady") {
            Some(c) if c.status => Ok(()),
            Some(c) => bail!(
                "the runtime reports NetworkReady=false ({}: {}): no CNI network to measure pods on",
                c.reason,
                c.message
            ),
            None => bail!("the runtime's Status has no NetworkReady condition"),
        }
    }

    /// The image as the runtime knows it; pulled if absent.
    pub async fn ensure_image(&mut self, reference: &str) -> Result<Image> {
        let spec = image_spec(reference);
        if let Some(img) = self.image_status(reference).await? {
            return Ok(Image {
                reference: reference.into(),
                id: img.id,
                pulled: false,
            });
        }
        let image_ref = self
            .images
            .pull_image(request(
                cri::PullImageRequest {
                    image: Some(spec),
                    auth: None,
                    sandbox_config: None,
                },
                PULL_TIMEOUT,
            ))
            .await
            .with_context(|| format!("PullImage {reference}"))?
            .into_inner()
            .image_ref;
        let img = self.image_status(reference).await?.with_context(|| {
            format!("PullImage {reference} succeeded but ImageStatus finds nothing")
        })?;
        if img.id != image_ref {
            bail!(
                "PullImage {reference} returned {image_ref:?} but ImageStatus reports id {:?}",
                img.id
            );
        }
        Ok(Image {
            reference: reference.into(),
            id: img.id,
            pulled: true,
        })
    }

    async fn image_status(&mut self, reference: &str) -> Result<Option<cri::Image>> {
        Ok(self
            .images
            .image_status(request(
                cri::ImageStatusRequest {
                    image: Some(image_spec(reference)),
                    verbose: false,
                },
                RPC_TIMEOUT,
            ))
            .await
            .with_context(|| format!("ImageStatus {reference}"))?
            .into_inner()
            .image)
    }

    pub async fn remove_image(&mut self, reference: &str) -> Result<()> {
        self.images
            .remove_image(request(
                cri::RemoveImageRequest {
                    image: Some(image_spec(reference)),
                },
                RPC_TIMEOUT,
            ))
            .await
            .with_context(|| format!("RemoveImage {reference}"))?;
        Ok(())
    }

    /// `CreateContainer` of `image` running `command` in `pod`, named `name`.
    pub async fn create_container(
        &mut self,
        pod: &Pod,
        name: &str,
        image: &Image,
        command: &[&str],
    ) -> Result<String> {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: image.id.clone(),
                user_specified_image: image.reference.clone(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            labels: HashMap::from([(LABEL_RUN.to_string(), run_token().to_string())]),
            linux: Some(cri::LinuxContainerConfig::default()),
            ..Default::default()
        };
        let id = self
            .runtime
            .create_container(request(
                cri::CreateContainerRequest {
                    pod_sandbox_id: pod.id.clone(),
                    config: Some(config),
                    sandbox_config: Some(pod.config.clone()),
                },
                RPC_TIMEOUT,
            ))
            .await
            .with_context(|| format!("CreateContainer {name} in pod {}", pod.id))?
            .into_inner()
            .container_id;
        if id.is_empty() {
            bail!("CreateContainer {name} returned an empty container id");
        }
        Ok(id)
    }

    pub async fn start_container(&mut self, id: &str) -> Result<()> {
        self.runtime
            .start_container(request(
                cri::StartContainerRequest {
                    container_id: id.into(),
                },
                RPC_TIMEOUT,
            ))
            .await
            .with_context(|| format!("StartContainer {id}"))?;
        Ok(())
    }

    pub async fn container_status(&mut self, id: &str) -> Result<cri::ContainerStatus> {
        self.runtime
            .container_status(request(
                cri::ContainerStatusRequest {
                    container_id: id.into(),
                    verbose: false,
                },
                RPC_TIMEOUT,
            ))
            .await
            .with_context(|| format!("ContainerStatus {id}"))?
            .into_inner()
            .status
            .with_context(|| format!("ContainerStatus {id} answered without a status"))
    }

    /// The container is CONTAINER_RUNNING, started, not finished.
    pub async fn verify_running(&mut self, id: &str) -> Result<()> {
        let st = self.container_status(id).await?;
        if st.state != cri::ContainerState::ContainerRunning as i32 {
            bail!(
                "container {id} is {:?} after StartContainer returned, not CONTAINER_RUNNING \
                 (exit code {}, reason {:?}, message {:?})",
                cri::ContainerState::try_from(st.state),
                st.exit_code,
                st.reason,
                st.message
            );
        }
        if st.started_at == 0 || st.finished_at != 0 {
            bail!(
                "container {id} is RUNNING but started_at = {}, finished_at = {}",
                st.started_at,
                st.finished_at
            );
        }
        Ok(())
    }

    /// `StopContainer` (timeout 0: SIGKILL) then `RemoveContainer`; then ContainerStatus
    /// must answer NotFound.
    pub async fn stop_remove_container(&mut self, id: &str) -> Result<()> {
        self.runtime
            .stop_container(request(
                cri::StopContainerRequest {
                    container_id: id.into(),
                    timeout: 0,
                },
                RPC_TIMEOUT,
            ))
            .await
            .with_context(|| format!("StopContainer {id}"))?;
        self.runtime
            .remove_container(request(
                cri::RemoveContainerRequest {
                    container_id: id.into(),
                },
                RPC_TIMEOUT,
            ))
            .await
            .with_context(|| format!("RemoveContainer {id}"))?;
        match self
            .runtime
            .container_status(request(
                cri::ContainerStatusRequest {
                    container_id: id.into(),
                    verbose: false,
                },
                RPC_TIMEOUT,
            ))
            .await
        {
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(s).with_context(|| format!("ContainerStatus {id} after removal")),
            Ok(_) => bail!("RemoveContainer {id} succeeded but ContainerStatus still finds it"),
        }
    }

    pub async fn exec_sync(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout_s: i64,
    ) -> Result<cri::ExecSyncResponse> {
        Ok(self
            .runtime
            .exec_sync(request(
                cri::ExecSyncRequest {
                    container_id: id.into(),
                    cmd: cmd.iter().map(|s| s.to_string()).collect(),
                    timeout: timeout_s,
                },
                Duration::from_secs(timeout_s as u64 + 30),
            ))
            .await
            .with_context(|| format!("ExecSync {cmd:?} in {id}"))?
            .into_inner())
    }

    /// The pods this run made on this runtime (of one figure, or all), as the runtime
    /// lists them by their labels.
    pub async fn list_pods(&mut self, figure: Option<&str>) -> Result<Vec<cri::PodSandbox>> {
        let mut selector = HashMap::from([
            (LABEL_RUN.to_string(), run_token().to_string()),
            (LABEL_ROLE.to_string(), self.role.to_string()),
        ]);
        if let Some(f) = figure {
            selector.insert(LABEL_FIGURE.to_string(), f.to_string());
        }
        Ok(self
            .runtime
            .list_pod_sandbox(request(
                cri::ListPodSandboxRequest {
                    filter: Some(cri::PodSandboxFilter {
                        label_selector: selector,
                        ..Default::default()
                    }),
                },
                RPC_TIMEOUT,
            ))
            .await
            .context("ListPodSandbox")?
            .into_inner()
            .items)
    }

    /// The containers this run made on this runtime, as the runtime lists them by label.
    pub async fn list_containers(&mut self) -> Result<Vec<cri::Container>> {
        Ok(self
            .runtime
            .list_containers(request(
                cri::ListContainersRequest {
                    filter: Some(cri::ContainerFilter {
                        label_selector: HashMap::from([(
                            LABEL_RUN.to_string(),
                            run_token().to_string(),
                        )]),
                        ..Default::default()
                    }),
                },
                RPC_TIMEOUT,
            ))
            .await
            .context("ListContainers")?
            .into_inner()
            .containers)
    }

    /// Stops and removes every pod of this run on this runtime (of one figure, or all):
    /// the tracked ones and those listed with this run's and role's labels. Returns how
    /// many.
    pub async fn sweep(&mut self, figure: Option<&str>) -> Result<usize> {
        let mut ids: BTreeSet<String> = self.tracker.pods().into_iter().collect();
        let mut first_err = None;
        match self.list_pods(figure).await {
            Ok(pods) => ids.extend(pods.into_iter().map(|p| p.id)),
            Err(e) => first_err = Some(e.context("cleanup")),
        }
        let mut n = 0;
        for id in ids {
            match self.stop_remove_pod(&id).await {
                Ok(_) => n += 1,
                Err(e) => {
                    eprintln!("berth-bench: cleanup: {e:#}");
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }
}

pub fn image_spec(reference: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: reference.into(),
        ..Default::default()
    }
}

fn pod_name(config: &cri::PodSandboxConfig) -> String {
    config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_a_label_value() {
        let t = run_token();
        assert!(t.len() <= 63 && !t.is_empty());
        assert!(t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        assert_eq!(run_token(), t);
    }
}
