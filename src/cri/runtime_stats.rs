//! Pod sandbox stats and metrics: `sandbox::PodUsage` as the CRI reports it.

use std::collections::HashMap;

use tonic::{Request, Response, Status};

use super::Cri;
use crate::proto::runtime::v1 as cri;
use crate::sandbox::PodUsage;
use crate::sandbox::spec::PodRecord;

fn u64v(v: Option<u64>) -> Option<cri::UInt64Value> {
    v.map(|value| cri::UInt64Value { value })
}

fn iface(i: &crate::stats::InterfaceUsage) -> cri::NetworkInterfaceUsage {
    cri::NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: u64v(Some(i.rx_bytes)),
        rx_errors: u64v(Some(i.rx_errors)),
        tx_bytes: u64v(Some(i.tx_bytes)),
        tx_errors: u64v(Some(i.tx_errors)),
    }
}

fn pod_stats(p: &PodRecord, u: &PodUsage) -> cri::PodSandboxStats {
    let c = &u.cgroup;
    let ts = u.timestamp;
    let network = (!u.interfaces.is_empty()).then(|| cri::NetworkUsage {
        timestamp: ts,
        default_interface: u
            .interfaces
            .iter()
            .find(|i| i.name == "eth0")
            .or(u.interfaces.first())
            .map(iface),
        interfaces: u.interfaces.iter().map(iface).collect(),
    });
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: p.id.clone(),
            metadata: Some(cri::PodSandboxMetadata {
                name: p.spec.metadata.name.clone(),
                uid: p.spec.metadata.uid.clone(),
                namespace: p.spec.metadata.namespace.clone(),
                attempt: p.spec.metadata.attempt,
            }),
            labels: p.spec.labels.clone().into_iter().collect(),
            annotations: p.spec.annotations.clone().into_iter().collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: c.cpu_ns.map(|ns| cri::CpuUsage {
                timestamp: ts,
                usage_core_nano_seconds: u64v(Some(ns)),
                usage_nano_cores: u64v(u.nano_cores),
                psi: None,
            }),
            memory: c.memory_usage.map(|usage| cri::MemoryUsage {
                timestamp: ts,
                working_set_bytes: u64v(c.working_set),
                available_bytes: u64v(c.available),
                usage_bytes: u64v(Some(usage)),
                rss_bytes: u64v(c.rss),
                page_faults: u64v(c.page_faults),
                major_page_faults: u64v(c.major_page_faults),
                psi: None,
            }),
            network,
            process: c.processes.map(|n| cri::ProcessUsage {
                timestamp: ts,
                process_count: u64v(Some(n)),
            }),
            containers: Vec::new(),
            io: None,
        }),
        windows: None,
    }
}

/// The metrics berth reports per pod (cAdvisor's names, so dashboards keep working).
const METRICS: &[(&str, &str, bool)] = &[
    (
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        false,
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        false,
    ),
    (
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        false,
    ),
    ("container_memory_rss", "Size of RSS in bytes.", false),
    (
        "container_processes",
        "Number of processes running inside the container.",
        false,
    ),
    (
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
        true,
    ),
    (
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
        true,
    ),
    (
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
        true,
    ),
    (
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
        true,
    ),
];

fn label_keys(per_interface: bool) -> Vec<String> {
    let mut k = vec!["id".to_string(), "namespace".into(), "pod".into()];
    if per_interface {
        k.push("interface".into());
    }
    k
}

fn pod_metrics(p: &PodRecord, u: &PodUsage) -> cri::PodSandboxMetrics {
    let labels = vec![
        p.id.clone(),
        p.spec.metadata.namespace.clone(),
        p.spec.metadata.name.clone(),
    ];
    let c = &u.cgroup;
    let mut metrics = Vec::new();
    let mut push = |name: &str, counter: bool, extra: Option<&str>, value: Option<u64>| {
        let Some(value) = value else { return };
        let mut label_values = labels.clone();
        if let Some(e) = extra {
            label_values.push(e.to_string());
        }
        metrics.push(cri::Metric {
            name: name.to_string(),
            timestamp: u.timestamp,
            metric_type: if counter {
                cri::MetricType::Counter as i32
            } else {
                cri::MetricType::Gauge as i32
            },
            label_values,
            value: u64v(Some(value)),
        });
    };
    push(
        "container_cpu_usage_seconds_total",
        true,
        None,
        c.cpu_ns.map(|ns| ns / 1_000_000_000),
    );
    push("container_memory_usage_bytes", false, None, c.memory_usage);
    push(
        "container_memory_working_set_bytes",
        false,
        None,
        c.working_set,
    );
    push("container_memory_rss", false, None, c.rss);
    push("container_processes", false, None, c.processes);
    for i in &u.interfaces {
        let n = Some(i.name.as_str());
        push(
            "container_network_receive_bytes_total",
            true,
            n,
            Some(i.rx_bytes),
        );
        push(
            "container_network_transmit_bytes_total",
            true,
            n,
            Some(i.tx_bytes),
        );
        push(
            "container_network_receive_errors_total",
            true,
            n,
            Some(i.rx_errors),
        );
        push(
            "container_network_transmit_errors_total",
            true,
            n,
            Some(i.tx_errors),
        );
    }
    cri::PodSandboxMetrics {
        pod_sandbox_id: p.id.clone(),
        metrics,
        container_metrics: Vec::new(),
    }
}

fn selected(p: &PodRecord, id: &str, labels: &HashMap<String, String>) -> bool {
    (id.is_empty() || p.id.starts_with(id))
        && labels.iter().all(|(k, v)| p.spec.labels.get(k) == Some(v))
}

impl Cri {
    pub(super) async fn pod_sandbox_stats_impl(
        &self,
        req: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let id = req.into_inner().pod_sandbox_id;
        super::record("pod_id", &id);
        let pod = self.sandboxes.get(&id)?;
        let usage = self.sandboxes.usage(&pod);
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(pod_stats(&pod, &usage)),
        }))
    }

    pub(super) async fn list_pod_sandbox_stats_impl(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let f = req.into_inner().filter.unwrap_or_default();
        let stats = self
            .sandboxes
            .list()?
            .iter()
            .filter(|p| selected(p, &f.id, &f.label_selector))
            .map(|p| pod_stats(p, &self.sandboxes.usage(p)))
            .collect();
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }

    pub(super) async fn list_metric_descriptors_impl(
        &self,
        _req: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        let descriptors = METRICS
            .iter()
            .map(|(name, help, per_if)| cri::MetricDescriptor {
                name: name.to_string(),
                help: help.to_string(),
                label_keys: label_keys(*per_if),
            })
            .collect();
        Ok(Response::new(cri::ListMetricDescriptorsResponse {
            descriptors,
        }))
    }

    pub(super) async fn list_pod_sandbox_metrics_impl(
        &self,
        _req: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        let pod_metrics = self
            .sandboxes
            .list()?
            .iter()
            .map(|p| pod_metrics(p, &self.sandboxes.usage(p)))
            .collect();
        Ok(Response::new(cri::ListPodSandboxMetricsResponse {
            pod_metrics,
        }))
    }

    pub(super) async fn update_pod_sandbox_resources_impl(
        &self,
        req: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<cri::UpdatePodSandboxResourcesResponse>, Status> {
        let r = req.into_inner();
        super::record("pod_id", &r.pod_sandbox_id);
        let conv = super::runtime_sandbox::resources;
        self.sandboxes
            .update_resources(
                &r.pod_sandbox_id,
                r.overhead.as_ref().map(conv),
                r.resources.as_ref().map(conv),
            )
            .await?;
        Ok(Response::new(cri::UpdatePodSandboxResourcesResponse {}))
    }
}
