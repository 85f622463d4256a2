//! The memory figure: the daemon's resident memory idle and with `--pods` running pods
//! (one busybox `sleep 3600` container each), and each of those pods' shim's.
//!
//! One run per runtime: read the daemon's RSS (idle: whatever pods the runtime already
//! had, counted in the JSON), start the pods one by one (each verified Ready with an IP
//! and its container RUNNING), wait `SETTLE`, read the daemon's RSS and every shim's, stop
//! and remove the pods, wait `SETTLE`, read the daemon's RSS again.
//!
//! The daemon is `--daemon-pid` (`--vs-daemon-pid`) or the process holding the endpoint's
//! listening socket (/proc/net/unix inode → /proc/*/fd); the report says which. A pod's
//! shim is the process named `berth-shim` or `containerd-shim-runc-v2` whose parent is
//! not a shim and whose command line, working directory or open files name the pod id;
//! each pod must have exactly one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::ops::{Image, Pod};
use super::procfs;
use super::report::{self, FigureReport};
use super::{Figure, RPC_TIMEOUT, Runs, Runtime, Sample, cri, measured, request, targets};

/// Pause before a reading, so that what a start or stop left in flight settles.
const SETTLE: Duration = Duration::from_secs(1);
const MB: f64 = 1e6;

pub struct Memory {
    pub pods: u32,
}

/// What the memory and density figures need: the daemon (pid, how it was found) and the
/// image their pods run.
pub struct DaemonState {
    pub pid: u32,
    pub how: String,
    pub image: Image,
}

impl DaemonState {
    /// The network is ready and the daemon is found; `figure` names it in errors.
    pub async fn setup(rt: &mut Runtime, figure: &str) -> Result<DaemonState> {
        rt.ops().verify_network_ready().await?;
        let (pid, how) = find_daemon(rt, figure)?;
        Ok(DaemonState {
            pid,
            how,
            image: rt.image()?,
        })
    }
}

/// One pod's shim and its resident memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimReading {
    pub pod_id: String,
    pub pid: u32,
    pub name: String,
    pub rss: u64,
    pub pss: Option<u64>,
}

/// The daemon of `rt` (`--daemon-pid`, `--vs-daemon-pid` or the owner of its socket) and
/// how it was found; its memory must be readable.
pub fn find_daemon(rt: &Runtime, figure: &str) -> Result<(u32, String)> {
    let (pid, how) = match rt.daemon_pid {
        Some(pid) => (
            pid,
            match rt.role {
                super::Role::Endpoint => "--daemon-pid".to_string(),
                super::Role::Vs => "--vs-daemon-pid".to_string(),
            },
        ),
        None => procfs::daemon_by_socket(&super::socket_path(&rt.endpoint)?)?,
    };
    procfs::memory(pid).with_context(|| format!("daemon pid {pid}"))?;
    eprintln!(
        "{figure:<12} {:<24} daemon: pid {pid} ({}), found by {how}",
        rt.label,
        procfs::name(pid)
    );
    Ok((pid, how))
}

/// The shim of each pod and its memory; every pod must have exactly one shim.
pub fn shim_readings(pods: &[String]) -> Result<Vec<ShimReading>> {
    let mut readings = Vec::new();
    for (pod_id, pids) in &procfs::shims_of(pods) {
        match pids.as_slice() {
            [pid] => {
                let m = procfs::memory(*pid)
                    .with_context(|| format!("shim pid {pid} of pod {pod_id}"))?;
                readings.push(ShimReading {
                    pod_id: pod_id.clone(),
                    pid: *pid,
                    name: procfs::name(*pid),
                    rss: m.rss,
                    pss: m.pss,
                });
            }
            [] => bail!(
                "no shim process ({}) names pod {pod_id}",
                procfs::SHIM_NAMES.join(" or ")
            ),
            many => bail!("several shim processes name pod {pod_id}: {many:?}"),
        }
    }
    Ok(readings)
}

/// What one run read; kept in the sample's detail.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Reading {
    daemon_pid: u32,
    daemon_name: String,
    daemon_found_by: String,
    pods_before: usize,
    pods_started: u32,
    pods_listed_loaded: usize,
    idle_rss: u64,
    idle_pss: Option<u64>,
    loaded_rss: u64,
    loaded_pss: Option<u64>,
    after_rss: u64,
    after_pss: Option<u64>,
    shims: Vec<ShimReading>,
}

/// How many pods the runtime lists (all of them, not only this run's).
pub async fn count_pods(rt: &mut Runtime) -> Result<usize> {
    Ok(rt
        .runtime
        .list_pod_sandbox(request(
            cri::ListPodSandboxRequest { filter: None },
            RPC_TIMEOUT,
        ))
        .await
        .context("ListPodSandbox")?
        .into_inner()
        .items
        .len())
}

impl Figure for Memory {
    type State = DaemonState;

    fn name(&self) -> &'static str {
        "memory"
    }

    fn plan(&self, _warmup: u32, _count: u32) -> (u32, u32) {
        (0, 1)
    }

    async fn setup(&self, rt: &mut Runtime) -> Result<DaemonState> {
        DaemonState::setup(rt, self.name()).await
    }

    async fn run(&self, rt: &mut Runtime, st: &mut DaemonState) -> Result<Sample> {
        let pods_before = count_pods(rt).await?;
        let idle = procfs::memory(st.pid)?;

        let mut ops = rt.ops();
        let t0 = Instant::now();
        let mut pods = Vec::new();
        for _ in 0..self.pods {
            let config = ops.pod_config(self.name());
            let id = ops.run_pod(&config).await?;
            let pod = Pod { id, config };
            ops.verify_pod_ready(&pod.id, &pod.config).await?;
            let cid = ops
                .create_container(&pod, "sleep", &st.image, &["sleep", "3600"])
                .await?;
            ops.start_container(&cid).await?;
            ops.verify_running(&cid).await?;
            pods.push(pod.id);
        }
        let start_ms = t0.elapsed().as_secs_f64() * 1e3;
        tokio::time::sleep(SETTLE).await;

        let loaded = procfs::memory(st.pid)?;
        let pods_listed_loaded = count_pods(rt).await?;
        let readings = shim_readings(&pods)?;

        for id in &pods {
            ops.stop_remove_pod(id).await?;
        }
        tokio::time::sleep(SETTLE).await;
        let after = procfs::memory(st.pid)?;

        let reading = Reading {
            daemon_pid: st.pid,
            daemon_name: procfs::name(st.pid),
            daemon_found_by: st.how.clone(),
            pods_before,
            pods_started: self.pods,
            pods_listed_loaded,
            idle_rss: idle.rss,
            idle_pss: idle.pss,
            loaded_rss: loaded.rss,
            loaded_pss: loaded.pss,
            after_rss: after.rss,
            after_pss: after.pss,
            shims: readings,
        };
        Ok(Sample {
            ms: start_ms,
            bytes: None,
            detail: serde_json::to_value(&reading)?,
        })
    }

    async fn teardown(&self, rt: &mut Runtime, _: DaemonState) -> Result<()> {
        rt.ops().sweep(Some(self.name())).await.map(drop)
    }

    fn report(&self, rts: &[Runtime], runs: &Runs) -> Result<FigureReport> {
        let mut readings = Vec::new();
        for (rt, runs) in rts.iter().zip(runs) {
            let run = measured(runs)
                .next()
                .with_context(|| format!("memory: no run on {}", rt.label))?;
            let r: Reading = serde_json::from_value(run.sample.detail.clone())
                .context("memory: reading the sample back")?;
            readings.push(r);
        }
        let mb = |b: u64| b as f64 / MB;
        let one = |f: &dyn Fn(&Reading) -> u64| -> Vec<Vec<f64>> {
            readings.iter().map(|r| vec![mb(f(r))]).collect()
        };
        let n = self.pods;
        let mut rows = Vec::new();
        rows.extend(
            report::rows(
                "daemon RSS idle",
                "MB",
                rts,
                &one(&|r| r.idle_rss),
                Some(targets::get("daemon-rss-idle")),
                "smaller",
            )?
            .0,
        );
        let mut loaded = report::rows(
            &format!("daemon RSS, {n} pods"),
            "MB",
            rts,
            &one(&|r| r.loaded_rss),
            Some(targets::get("daemon-rss")),
            "smaller",
        )?
        .0;
        if n != 100 {
            loaded[0].target = format!("at {n} pods (target at 100): {}", loaded[0].target);
        }
        rows.extend(loaded);
        rows.extend(
            report::rows(
                "daemon RSS after removing them",
                "MB",
                rts,
                &one(&|r| r.after_rss),
                None,
                "smaller",
            )?
            .0,
        );
        let shim_rss: Vec<Vec<f64>> = readings
            .iter()
            .map(|r| r.shims.iter().map(|s| mb(s.rss)).collect())
            .collect();
        rows.extend(
            report::rows(
                "shim RSS per pod (1 container)",
                "MB",
                rts,
                &shim_rss,
                Some(targets::get("shim-rss")),
                "smaller",
            )?
            .0,
        );
        let shim_pss: Vec<Vec<f64>> = readings
            .iter()
            .map(|r| r.shims.iter().filter_map(|s| s.pss).map(mb).collect())
            .collect();
        let mut notes = vec![format!(
            "memory: RSS = VmRSS of /proc/PID/status (1 MB = 10^6 bytes); {n} pods with one \
             busybox `sleep 3600` each, read {SETTLE:?} after the last started; shim p50 is \
             the median (nearest rank) over the pods."
        )];
        let mut per_rt = Vec::new();
        for ((rt, r), pss) in rts.iter().zip(&readings).zip(&shim_pss) {
            let shim_names: BTreeMap<String, usize> =
                r.shims.iter().fold(BTreeMap::new(), |mut m, s| {
                    *m.entry(s.name.clone()).or_insert(0) += 1;
                    m
                });
            notes.push(format!(
                "memory on {}: daemon {} (pid {}), found by {}; {} pods listed idle, {} \
                 loaded; shims: {}{}.",
                rt.label,
                r.daemon_name,
                r.daemon_pid,
                r.daemon_found_by,
                r.pods_before,
                r.pods_listed_loaded,
                if shim_names.is_empty() {
                    "-".to_string()
                } else {
                    shim_names
                        .iter()
                        .map(|(k, v)| format!("{v}× {k}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                match super::stats::Summary::of(pss)? {
                    Some(s) => format!(
                        ", shim PSS p50 {:.2} MB max {:.2} MB (shared pages split among the \
                         shims)",
                        s.p50, s.max
                    ),
                    None => String::new(),
                }
            ));
            per_rt.push(json!({
                "runtime": rt.label,
                "role": rt.role,
                "endpoint": rt.endpoint,
                "reading_bytes": r,
            }));
        }
        let target_json: Vec<_> = ["daemon-rss-idle", "daemon-rss", "shim-rss"]
            .iter()
            .map(|k| {
                let t = targets::get(k);
                json!({"what": t.what, "target": t.design, "containerd_here": t.containerd_here})
            })
            .collect();
        Ok(FigureReport {
            rows,
            notes,
            json: json!({
                "name": self.name(),
                "what": "daemon RSS idle, with N running pods (1 container each) and after \
                         removing them; per-pod shim RSS and PSS",
                "unit": "bytes",
                "pods": n,
                "settle_ms": SETTLE.as_millis() as u64,
                "targets": target_json,
                "per_runtime": per_rt,
            }),
        })
    }
}
