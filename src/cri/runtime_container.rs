//! The container RPCs: create, start, stop, remove, status, list, exec, stats, update,
//! log reopening and the event stream.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use tonic::{Request, Response, Status};

use super::{Cri, record};
use crate::container::Error as ContainerError;
use crate::container::lifecycle::EventKind;
use crate::proto::runtime::v1 as cri;
use crate::store::containers::{ContainerRecord, ContainerState};

impl From<ContainerError> for Status {
    fn from(e: ContainerError) -> Status {
        let msg = e.to_string();
        match e {
            ContainerError::NotFound(_) | ContainerError::ImageNotFound(_) => {
                Status::not_found(msg)
            }
            ContainerError::Ambiguous(_) | ContainerError::InvalidArgument(_) => {
                Status::invalid_argument(msg)
            }
            ContainerError::AlreadyExists { .. } => Status::already_exists(msg),
            ContainerError::FailedPrecondition(_) => Status::failed_precondition(msg),
            ContainerError::Internal { .. } | ContainerError::Store(_) => Status::internal(msg),
        }
    }
}

fn state(s: ContainerState) -> i32 {
    match s {
        ContainerState::Creating | ContainerState::Created => {
            cri::ContainerState::ContainerCreated as i32
        }
        ContainerState::Running => cri::ContainerState::ContainerRunning as i32,
        ContainerState::Exited => cri::ContainerState::ContainerExited as i32,
        ContainerState::Unknown => cri::ContainerState::ContainerUnknown as i32,
    }
}

fn metadata(c: &ContainerRecord) -> cri::ContainerMetadata {
    cri::ContainerMetadata {
        name: c.config.metadata.name.clone(),
        attempt: c.config.metadata.attempt,
    }
}

fn image_spec(c: &ContainerRecord) -> cri::ImageSpec {
    cri::ImageSpec {
        image: c.image_name.clone(),
        user_specified_image: c.config.user_specified_image.clone(),
        ..Default::default()
    }
}

fn map(m: &std::collections::BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn resources(c: &ContainerRecord) -> Option<cri::ContainerResources> {
    let r = c.config.resources.as_ref()?;
    Some(cri::ContainerResources {
        linux: Some(cri::LinuxContainerResources {
            cpu_period: r.cpu_period,
            cpu_quota: r.cpu_quota,
            cpu_shares: r.cpu_shares,
            memory_limit_in_bytes: r.memory_limit,
            oom_score_adj: r.oom_score_adj,
            cpuset_cpus: r.cpuset_cpus.clone(),
            cpuset_mems: r.cpuset_mems.clone(),
            hugepage_limits: r
                .hugepage_limits
                .iter()
                .map(|h| cri::HugepageLimit {
                    page_size: h.page_size.clone(),
                    limit: h.limit,
                })
                .collect(),
            unified: map(&r.unified),
            memory_swap_limit_in_bytes: r.memory_swap_limit,
        }),
        windows: None,
    })
}

fn mounts(c: &ContainerRecord) -> Vec<cri::Mount> {
    use crate::container::config::Propagation;
    c.config
        .mounts
        .iter()
        .map(|m| cri::Mount {
            container_path: m.container_path.clone(),
            host_path: m.host_path.clone(),
            readonly: m.readonly,
            selinux_relabel: false,
            propagation: match m.propagation {
                Propagation::Private => cri::MountPropagation::PropagationPrivate as i32,
                Propagation::HostToContainer => {
                    cri::MountPropagation::PropagationHostToContainer as i32
                }
                Propagation::Bidirectional => {
                    cri::MountPropagation::PropagationBidirectional as i32
                }
            },
            recursive_read_only: m.recursive_read_only,
            ..Default::default()
        })
        .collect()
}

pub(super) fn status(c: &ContainerRecord) -> cri::ContainerStatus {
    cri::ContainerStatus {
        id: c.id.clone(),
        metadata: Some(metadata(c)),
        state: state(c.state),
        created_at: c.created_at,
        started_at: c.started_at,
        finished_at: c.finished_at,
        exit_code: c.exit_code,
        image: Some(image_spec(c)),
        image_ref: c.image_ref.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        labels: map(&c.config.labels),
        annotations: map(&c.config.annotations),
        mounts: mounts(c),
        log_path: c.log_path.clone(),
        resources: resources(c),
        image_id: c.image_id.clone(),
        user: Some(cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: c.uid,
                gid: c.gid,
                supplemental_groups: c.supplemental_groups.clone(),
            }),
        }),
        stop_signal: 0,
    }
}

fn matches(c: &ContainerRecord, f: &cri::ContainerFilter) -> bool {
    if !f.id.is_empty() && !c.id.starts_with(&f.id) {
        return false;
    }
    if !f.pod_sandbox_id.is_empty() && !c.pod_id.starts_with(&f.pod_sandbox_id) {
        return false;
    }
    if let Some(s) = &f.state
        && s.state != state(c.state)
    {
        return false;
    }
    f.label_selector
        .iter()
        .all(|(k, v)| c.config.labels.get(k) == Some(v))
}

fn u64v(v: Option<u64>) -> Option<cri::UInt64Value> {
    v.map(|value| cri::UInt64Value { value })
}

pub type EventStream =
    Pin<Box<dyn Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send + 'static>>;

impl Cri {
    pub(super) fn container_stats(&self, c: &ContainerRecord) -> cri::ContainerStats {
        let (cg, bytes, inodes) = self.containers.usage(c);
        let ts = crate::sandbox::now_ns();
        cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: c.id.clone(),
                metadata: Some(metadata(c)),
                labels: map(&c.config.labels),
                annotations: map(&c.config.annotations),
            }),
            cpu: Some(cri::CpuUsage {
                timestamp: ts,
                usage_core_nano_seconds: u64v(cg.cpu_ns),
                usage_nano_cores: None,
                psi: None,
            }),
            memory: Some(cri::MemoryUsage {
                timestamp: ts,
                working_set_bytes: u64v(cg.working_set),
                available_bytes: u64v(cg.available),
                usage_bytes: u64v(cg.memory_usage),
                rss_bytes: u64v(cg.rss),
                page_faults: u64v(cg.page_faults),
                major_page_faults: u64v(cg.major_page_faults),
                psi: None,
            }),
            writable_layer: Some(cri::FilesystemUsage {
                timestamp: ts,
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: self.config.root.join("containers").display().to_string(),
                }),
                used_bytes: u64v(Some(bytes)),
                inodes_used: u64v(Some(inodes)),
            }),
            swap: None,
            io: None,
        }
    }

    pub(super) async fn create_container_impl(
        &self,
        req: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let r = req.into_inner();
        record("pod_id", &r.pod_sandbox_id);
        let config = r
            .config
            .ok_or_else(|| Status::invalid_argument("CreateContainer without a config"))?;
        record(
            "image",
            config
                .image
                .as_ref()
                .map(|i| i.image.as_str())
                .unwrap_or_default(),
        );
        let config = super::container_config::container_config(&config)?;
        let c = self.containers.create(&r.pod_sandbox_id, config).await?;
        record("container_id", &c.id);
        Ok(Response::new(cri::CreateContainerResponse {
            container_id: c.id,
        }))
    }

    pub(super) async fn start_container_impl(
        &self,
        req: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        let id = req.into_inner().container_id;
        record("container_id", &id);
        self.containers.start(&id).await?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    pub(super) async fn stop_container_impl(
        &self,
        req: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let r = req.into_inner();
        record("container_id", &r.container_id);
        let timeout = Duration::from_secs(r.timeout.max(0) as u64);
        match self.containers.stop(&r.container_id, timeout).await {
            Ok(()) => {}
            // Stopping what is gone is done (CRI: idempotent).
            Err(ContainerError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    pub(super) async fn remove_container_impl(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        let id = req.into_inner().container_id;
        record("container_id", &id);
        self.containers.remove(&id).await?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    pub(super) async fn container_status_impl(
        &self,
        req: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let r = req.into_inner();
        record("container_id", &r.container_id);
        let c = self.containers.status(&r.container_id).await?;
        let mut st = status(&c);
        // As containerd: the image's first tag when it has one (kubelet creates
        // containers by image ID).
        if let Some(tag) = self
            .images
            .resolve(&c.image_id)
            .ok()
            .flatten()
            .and_then(|i| i.repo_tags.first().cloned())
            && let Some(img) = st.image.as_mut()
        {
            img.image = tag;
        }
        let mut info = HashMap::new();
        if r.verbose {
            let v = serde_json::json!({
                "pid": c.pid,
                "sandboxID": c.pod_id,
                "cgroup": c.cgroup,
                "config": c.config,
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok(Response::new(cri::ContainerStatusResponse {
            status: Some(st),
            info,
        }))
    }

    pub(super) async fn list_containers_impl(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let f = req.into_inner().filter.unwrap_or_default();
        let containers = self
            .containers
            .list()?
            .iter()
            .filter(|c| matches(c, &f))
            .map(|c| cri::Container {
                id: c.id.clone(),
                pod_sandbox_id: c.pod_id.clone(),
                metadata: Some(metadata(c)),
                image: Some(image_spec(c)),
                image_ref: c.image_ref.clone(),
                state: state(c.state),
                created_at: c.created_at,
                labels: map(&c.config.labels),
                annotations: map(&c.config.annotations),
                image_id: c.image_id.clone(),
            })
            .collect();
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    pub(super) async fn exec_sync_impl(
        &self,
        req: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let r = req.into_inner();
        record("container_id", &r.container_id);
        let timeout = Duration::from_secs(r.timeout.max(0) as u64);
        let out = self
            .containers
            .exec_sync(&r.container_id, r.cmd, timeout)
            .await?;
        if out.timed_out {
            return Err(Status::deadline_exceeded(format!(
                "command timed out after {}s",
                r.timeout
            )));
        }
        Ok(Response::new(cri::ExecSyncResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
        }))
    }

    pub(super) async fn container_stats_impl(
        &self,
        req: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let id = req.into_inner().container_id;
        record("container_id", &id);
        let c = self.containers.get(&id)?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(self.container_stats(&c)),
        }))
    }

    pub(super) async fn list_container_stats_impl(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let f = req.into_inner().filter.unwrap_or_default();
        let stats = self
            .containers
            .list()?
            .iter()
            .filter(|c| c.state == ContainerState::Running)
            .filter(|c| f.id.is_empty() || c.id.starts_with(&f.id))
            .filter(|c| f.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&f.pod_sandbox_id))
            .filter(|c| {
                f.label_selector
                    .iter()
                    .all(|(k, v)| c.config.labels.get(k) == Some(v))
            })
            .map(|c| self.container_stats(c))
            .collect();
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    pub(super) async fn update_container_resources_impl(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let r = req.into_inner();
        record("container_id", &r.container_id);
        let Some(linux) = r.linux else {
            return Ok(Response::new(cri::UpdateContainerResourcesResponse {}));
        };
        self.containers
            .update_resources(&r.container_id, super::container_config::resources(&linux)?)
            .await?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    pub(super) async fn reopen_container_log_impl(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        let id = req.into_inner().container_id;
        record("container_id", &id);
        self.containers.reopen_log(&id).await?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    pub(super) async fn get_container_events_impl(
        &self,
        _req: Request<cri::GetEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let rx = self.containers.subscribe();
        let containers = self.containers.clone();
        let sandboxes = self.sandboxes.clone();
        let stream = futures_util::stream::unfold(rx, move |mut rx| {
            let containers = containers.clone();
            let sandboxes = sandboxes.clone();
            async move {
                loop {
                    match rx.recv().await {
                        Ok(ev) => {
                            let kind = match ev.kind {
                                EventKind::Created => {
                                    cri::ContainerEventType::ContainerCreatedEvent
                                }
                                EventKind::Started => {
                                    cri::ContainerEventType::ContainerStartedEvent
                                }
                                EventKind::Stopped => {
                                    cri::ContainerEventType::ContainerStoppedEvent
                                }
                                EventKind::Deleted => {
                                    cri::ContainerEventType::ContainerDeletedEvent
                                }
                            };
                            let pod = sandboxes
                                .get(&ev.pod_id)
                                .ok()
                                .map(|p| super::runtime_sandbox::status_of(&p));
                            let statuses = containers
                                .list()
                                .unwrap_or_default()
                                .iter()
                                .filter(|c| c.pod_id == ev.pod_id)
                                .map(status)
                                .collect();
                            let resp = cri::ContainerEventResponse {
                                container_id: ev.container_id,
                                container_event_type: kind as i32,
                                created_at: ev.at,
                                pod_sandbox_status: pod,
                                containers_statuses: statuses,
                            };
                            return Some((Ok(resp), rx));
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(
                                missed = n,
                                "event stream client too slow; events dropped"
                            );
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
