//! The pod sandbox RPCs: CRI messages to `sandbox::spec` and back.

use std::collections::HashMap;

use tonic::{Request, Response, Status};

use super::{Cri, record};
use crate::container::config::NamespaceMode;
use crate::proto::runtime::v1 as cri;
use crate::sandbox::Error as SandboxError;
use crate::sandbox::spec::{
    Dns, NsMode, PodMetadata, PodRecord, PodSpec, PodState, PortMapping, Resources, UserNs,
};

impl From<SandboxError> for Status {
    fn from(e: SandboxError) -> Status {
        use crate::network::cni::Error as Cni;
        let msg = e.to_string();
        match &e {
            SandboxError::NotFound(_) => Status::not_found(msg),
            SandboxError::Ambiguous(_) | SandboxError::InvalidArgument(_) => {
                Status::invalid_argument(msg)
            }
            SandboxError::AlreadyExists { .. } => Status::already_exists(msg),
            SandboxError::Network { source, .. } => match source {
                Cni::Timeout { .. } => Status::deadline_exceeded(msg),
                Cni::Plugin { .. } => Status::internal(msg),
                _ => Status::failed_precondition(msg),
            },
            SandboxError::Shim { .. } | SandboxError::Internal { .. } | SandboxError::Store(_) => {
                Status::internal(msg)
            }
        }
    }
}

fn ns_mode(v: i32) -> NsMode {
    match cri::NamespaceMode::try_from(v).unwrap_or(cri::NamespaceMode::Pod) {
        cri::NamespaceMode::Pod | cri::NamespaceMode::Target => NsMode::Pod,
        cri::NamespaceMode::Container => NsMode::Container,
        cri::NamespaceMode::Node => NsMode::Node,
    }
}

fn ns_mode_to_cri(m: NsMode) -> i32 {
    match m {
        NsMode::Pod => cri::NamespaceMode::Pod as i32,
        NsMode::Container => cri::NamespaceMode::Container as i32,
        NsMode::Node => cri::NamespaceMode::Node as i32,
    }
}

pub(super) fn resources(r: &cri::LinuxContainerResources) -> Resources {
    Resources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit: r.memory_limit_in_bytes,
        memory_swap: r.memory_swap_limit_in_bytes,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
    }
}

fn port_u16(v: i32, what: &str) -> Result<u16, Status> {
    u16::try_from(v).map_err(|_| Status::invalid_argument(format!("{what} {v} is not a port")))
}

/// A `POD` user namespace owns the pod's other namespaces, so none of them may be the
/// host's (kubelet refuses `hostUsers: false` with host namespaces too).
fn pod_user_ns(ns: &cri::NamespaceOption) -> Result<Option<UserNs>, Status> {
    let Some(u) = ns.userns_options.as_ref() else {
        return Ok(None);
    };
    let u = super::container_config::userns(u)?;
    if u.mode != NamespaceMode::Pod {
        return Ok(None);
    }
    let node = cri::NamespaceMode::Node as i32;
    for (what, mode) in [("network", ns.network), ("IPC", ns.ipc), ("PID", ns.pid)] {
        if mode == node {
            return Err(Status::invalid_argument(format!(
                "a pod with its own user namespace cannot use the host's {what} namespace"
            )));
        }
    }
    Ok(Some(UserNs {
        uids: u.uids,
        gids: u.gids,
    }))
}

fn pod_spec(c: cri::PodSandboxConfig, runtime_handler: String) -> Result<PodSpec, Status> {
    let m = c
        .metadata
        .ok_or_else(|| Status::invalid_argument("pod sandbox config has no metadata"))?;
    let linux = c.linux.unwrap_or_default();
    let sc = linux.security_context.unwrap_or_default();
    let ns = sc.namespace_options.unwrap_or_default();
    let user_ns = pod_user_ns(&ns)?;
    let dns = c.dns_config.unwrap_or_default();
    let mut port_mappings = Vec::new();
    for p in c.port_mappings {
        let protocol = match cri::Protocol::try_from(p.protocol) {
            Ok(cri::Protocol::Udp) => "udp",
            Ok(cri::Protocol::Sctp) => "sctp",
            _ => "tcp",
        };
        port_mappings.push(PortMapping {
            protocol: protocol.into(),
            container_port: port_u16(p.container_port, "container port")?,
            host_port: if p.host_port <= 0 {
                0
            } else {
                port_u16(p.host_port, "host port")?
            },
            host_ip: p.host_ip,
        });
    }
    Ok(PodSpec {
        user_ns,
        metadata: PodMetadata {
            name: m.name,
            uid: m.uid,
            namespace: m.namespace,
            attempt: m.attempt,
        },
        hostname: c.hostname,
        log_directory: c.log_directory,
        dns: Dns {
            servers: dns.servers,
            searches: dns.searches,
            options: dns.options,
        },
        port_mappings,
        labels: c.labels.into_iter().collect(),
        annotations: c.annotations.into_iter().collect(),
        cgroup_parent: linux.cgroup_parent,
        network: match ns_mode(ns.network) {
            NsMode::Node => NsMode::Node,
            _ => NsMode::Pod,
        },
        pid: ns_mode(ns.pid),
        ipc: match ns_mode(ns.ipc) {
            NsMode::Node => NsMode::Node,
            _ => NsMode::Pod,
        },
        sysctls: linux.sysctls.into_iter().collect(),
        overhead: linux.overhead.as_ref().map(resources),
        resources: linux.resources.as_ref().map(resources),
        runtime_handler,
        privileged: sc.privileged,
    })
}

fn metadata(p: &PodRecord) -> cri::PodSandboxMetadata {
    let m = &p.spec.metadata;
    cri::PodSandboxMetadata {
        name: m.name.clone(),
        uid: m.uid.clone(),
        namespace: m.namespace.clone(),
        attempt: m.attempt,
    }
}

fn state(p: &PodRecord) -> i32 {
    match p.state {
        PodState::Ready => cri::PodSandboxState::SandboxReady as i32,
        _ => cri::PodSandboxState::SandboxNotready as i32,
    }
}

fn to_map(m: &std::collections::BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub(super) fn status_of(p: &PodRecord) -> cri::PodSandboxStatus {
    let network = (p.spec.network == NsMode::Pod && !p.ips.is_empty()).then(|| {
        cri::PodSandboxNetworkStatus {
            ip: p.ips[0].clone(),
            additional_ips: p.ips[1..]
                .iter()
                .map(|ip| cri::PodIp { ip: ip.clone() })
                .collect(),
        }
    });
    cri::PodSandboxStatus {
        id: p.id.clone(),
        metadata: Some(metadata(p)),
        state: state(p),
        created_at: p.created_at,
        network: Some(network.unwrap_or_default()),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(cri::NamespaceOption {
                    network: ns_mode_to_cri(p.spec.network),
                    pid: ns_mode_to_cri(p.spec.pid),
                    ipc: ns_mode_to_cri(p.spec.ipc),
                    ..Default::default()
                }),
            }),
        }),
        labels: to_map(&p.spec.labels),
        annotations: to_map(&p.spec.annotations),
        runtime_handler: p.spec.runtime_handler.clone(),
    }
}

fn matches(p: &PodRecord, f: &cri::PodSandboxFilter) -> bool {
    if !f.id.is_empty() && !p.id.starts_with(&f.id) {
        return false;
    }
    if let Some(s) = &f.state
        && s.state != state(p)
    {
        return false;
    }
    f.label_selector
        .iter()
        .all(|(k, v)| p.spec.labels.get(k) == Some(v))
}

impl Cri {
    pub(super) async fn run_pod_sandbox_impl(
        &self,
        req: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let r = req.into_inner();
        if !r.runtime_handler.is_empty() {
            return Err(Status::not_found(format!(
                "runtime handler {:?} is not configured (berth has only the default handler)",
                r.runtime_handler
            )));
        }
        let config = r
            .config
            .ok_or_else(|| Status::invalid_argument("RunPodSandbox without a config"))?;
        let spec = pod_spec(config, r.runtime_handler)?;
        let pod = self.sandboxes.run(spec).await?;
        record("pod_id", &pod.id);
        tracing::info!(ips = ?pod.ips, "pod sandbox ready");
        Ok(Response::new(cri::RunPodSandboxResponse {
            pod_sandbox_id: pod.id,
        }))
    }

    pub(super) async fn stop_pod_sandbox_impl(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        let id = req.into_inner().pod_sandbox_id;
        record("pod_id", &id);
        if let Ok(pod) = self.sandboxes.resolve(&id) {
            self.containers
                .stop_pod_containers(&pod, std::time::Duration::ZERO)
                .await?;
        }
        self.sandboxes.stop(&id).await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    pub(super) async fn remove_pod_sandbox_impl(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        let id = req.into_inner().pod_sandbox_id;
        record("pod_id", &id);
        if let Ok(pod) = self.sandboxes.resolve(&id) {
            self.containers
                .stop_pod_containers(&pod, std::time::Duration::ZERO)
                .await?;
            self.sandboxes.stop(&pod).await?;
            self.containers.remove_pod_containers(&pod).await?;
        }
        self.sandboxes.remove(&id).await?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    pub(super) async fn pod_sandbox_status_impl(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let r = req.into_inner();
        record("pod_id", &r.pod_sandbox_id);
        let pod = self.sandboxes.get(&r.pod_sandbox_id)?;
        let mut info = HashMap::new();
        if r.verbose {
            let dir = self.sandboxes.pod_dir(&pod.id);
            let v = serde_json::json!({
                "stateDir": dir,
                "reason": pod.reason,
                "cgroups": pod.cgroups,
                "spec": pod.spec,
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok(Response::new(cri::PodSandboxStatusResponse {
            status: Some(status_of(&pod)),
            info,
            containers_statuses: if r.verbose {
                self.containers
                    .list()?
                    .iter()
                    .filter(|c| c.pod_id == pod.id)
                    .map(super::runtime_container::status)
                    .collect()
            } else {
                Vec::new()
            },
            timestamp: crate::sandbox::now_ns(),
        }))
    }

    pub(super) async fn list_pod_sandbox_impl(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let filter = req.into_inner().filter.unwrap_or_default();
        let items = self
            .sandboxes
            .list()?
            .into_iter()
            .filter(|p| matches(p, &filter))
            .map(|p| cri::PodSandbox {
                id: p.id.clone(),
                metadata: Some(metadata(&p)),
                state: state(&p),
                created_at: p.created_at,
                labels: to_map(&p.spec.labels),
                annotations: to_map(&p.spec.annotations),
                runtime_handler: p.spec.runtime_handler.clone(),
            })
            .collect();
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "p".into(),
                uid: "u".into(),
                namespace: "n".into(),
                attempt: 1,
            }),
            port_mappings: vec![cri::PortMapping {
                protocol: cri::Protocol::Udp as i32,
                container_port: 53,
                host_port: 5353,
                host_ip: String::new(),
            }],
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Node as i32,
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

    #[test]
    fn config_translates() {
        let s = pod_spec(config(), String::new()).unwrap();
        assert_eq!(s.metadata.attempt, 1);
        assert_eq!(
            (s.network, s.pid, s.ipc),
            (NsMode::Node, NsMode::Container, NsMode::Pod)
        );
        assert_eq!(s.port_mappings[0].protocol, "udp");
        assert_eq!(s.port_mappings[0].host_port, 5353);
    }

    #[test]
    fn missing_metadata_and_bad_ports_are_invalid() {
        let mut c = config();
        c.metadata = None;
        assert_eq!(
            pod_spec(c, String::new()).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let mut c = config();
        c.port_mappings[0].container_port = 70000;
        assert_eq!(
            pod_spec(c, String::new()).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn filters() {
        let spec = pod_spec(config(), String::new()).unwrap();
        let mut p = PodRecord {
            id: "abcdef".into(),
            spec,
            state: PodState::Ready,
            created_at: 1,
            ips: vec![],
            reason: String::new(),
            cgroups: vec![],
        };
        p.spec.labels.insert("app".into(), "web".into());
        let f = |id: &str, st: Option<i32>, l: &[(&str, &str)]| cri::PodSandboxFilter {
            id: id.into(),
            state: st.map(|state| cri::PodSandboxStateValue { state }),
            label_selector: l
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        assert!(matches(&p, &f("", None, &[])));
        assert!(matches(&p, &f("abc", Some(0), &[("app", "web")])));
        assert!(!matches(&p, &f("x", None, &[])));
        assert!(!matches(&p, &f("", Some(1), &[])));
        assert!(!matches(&p, &f("", None, &[("app", "db")])));
    }
}
