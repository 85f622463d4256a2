//! The density figure: full pods started one after another up to `--max-pods`, all kept
//! running, with the full-pod latency and the daemon's (and the shims') resident memory
//! at each step (100, 250, 500 pods: DESIGN.md's "500 pods on this VM with flat latency").
//!
//! One run per runtime. Each pod is RunPodSandbox + CreateContainer + StartContainer of
//! busybox `sleep 3600`, timed (as the full-pod figure), then verified Ready with a pod IP
//! of its own and its container RUNNING (untimed). At each step, after `SETTLE`, the
//! daemon's RSS, every pod's shim (exactly one each) and the pods the runtime lists are
//! read; the latency rows are the `WINDOW` pods ending at the step (pods 91-100, ...).
//! Then every pod is stopped and removed (each timed), and nothing may be left: no pod
//! or container of the figure listed, no shim of its pods alive.
//!
//! A runtime that fails at some pod count (or while removing) does not stop the figure:
//! its run records where and why, the other runtime still runs, the steps reached are
//! reported, and then the benchmark fails with that error. With `--vs` the runtimes run
//! one after the other (each holds hundreds of pods), not alternated.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::memory::{DaemonState, count_pods, shim_readings};
use super::ops::Pod;
use super::pods::full_pod;
use super::procfs;
use super::report::{self, FigureReport, Row};
use super::stats::Summary;
use super::{Figure, Runs, Runtime, Sample, measured, targets};

/// The pod counts at which the figure reads memory and reports latency (those not above
/// `--max-pods`; `--max-pods` itself is always one).
const STEPS: &[u32] = &[100, 250, 500];
/// Pods per latency window: the window of a step is the pods `step-WINDOW+1 ..= step`.
pub const WINDOW: u32 = 10;
/// Pause before a memory reading, so that what the last start left in flight settles.
const SETTLE: Duration = Duration::from_secs(1);
/// How long the shims of removed pods may take to exit.
const SHIM_EXIT: Duration = Duration::from_secs(30);
const MB: f64 = 1e6;

pub struct Density {
    pub max_pods: u32,
}

/// The steps of a figure with `max` pods, ascending.
pub fn steps(max: u32) -> Vec<u32> {
    let mut s: Vec<u32> = STEPS.iter().copied().filter(|&n| n < max).collect();
    s.push(max);
    s
}

/// The latency window of a step: 1-based pod numbers, inclusive.
pub fn window(step: u32) -> (u32, u32) {
    (step.saturating_sub(WINDOW - 1).max(1), step)
}

/// The p50 of the window of `step` in per-pod samples.
fn p50_of_window(xs: &[f64], step: u32) -> Result<f64> {
    let (a, b) = window(step);
    let w = xs
        .get(a as usize - 1..b as usize)
        .context("a window beyond the pods started (a bug)")?;
    Ok(Summary::of(w)?.context("an empty window (a bug)")?.p50)
}

/// What was read at one step.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StepReading {
    pods: u32,
    window_first: u32,
    window_last: u32,
    daemon_rss: u64,
    daemon_pss: Option<u64>,
    shims: usize,
    shims_rss_sum: u64,
    shims_pss_sum: Option<u64>,
    /// Shim binaries by name and count.
    shim_names: BTreeMap<String, usize>,
    /// Pods the runtime lists (all of them).
    pods_listed: usize,
    /// /proc/loadavg's first three fields when read.
    loadavg: String,
    /// p50 of the window's RunPodSandbox, CreateContainer and StartContainer alone.
    runp_p50_ms: f64,
    create_p50_ms: f64,
    start_p50_ms: f64,
    host: Host,
}

/// What grows on the host with the pods (and may make each new pod slower): mounts in
/// this mount namespace, network interfaces, iptables nat rules and the time one
/// `iptables -t nat -S` takes (the CNI plugins run iptables several times per pod).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Host {
    mounts: usize,
    net_interfaces: usize,
    nat_rules: Option<usize>,
    iptables_list_ms: Option<f64>,
}

impl Host {
    fn text(&self) -> String {
        let mut s = format!("{} mounts, {} interfaces", self.mounts, self.net_interfaces);
        if let (Some(n), Some(ms)) = (self.nat_rules, self.iptables_list_ms) {
            s.push_str(&format!(", {n} nat rules (iptables -S {ms:.0} ms)"));
        }
        s
    }

    fn read() -> Host {
        let count_lines = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.lines().count())
                .unwrap_or(0)
        };
        let t0 = Instant::now();
        let nat = std::process::Command::new("iptables")
            .args(["-w", "-t", "nat", "-S"])
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success());
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        Host {
            mounts: count_lines("/proc/self/mountinfo"),
            net_interfaces: std::fs::read_dir("/sys/class/net")
                .map(|d| d.count())
                .unwrap_or(0),
            nat_rules: nat.as_ref().map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.starts_with("-A "))
                    .count()
            }),
            iptables_list_ms: nat.map(|_| ms),
        }
    }
}

/// One runtime's run; kept in the sample's detail.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DensityRun {
    daemon_pid: u32,
    daemon_name: String,
    daemon_found_by: String,
    max_pods: u32,
    pods_before: usize,
    idle_rss: u64,
    /// Pods started and verified.
    started: u32,
    /// The timed full-pod latency of each started pod, in order, and its parts.
    latencies_ms: Vec<f64>,
    runp_ms: Vec<f64>,
    create_ms: Vec<f64>,
    start_ms: Vec<f64>,
    /// Pod ids in start order.
    pod_ids: Vec<String>,
    steps: Vec<StepReading>,
    /// Stop+remove of each pod, in order.
    stop_remove_ms: Vec<f64>,
    remove_all_s: f64,
    /// After the removal: pods and containers of the figure listed, shims alive.
    pods_left: usize,
    containers_left: usize,
    shims_left: usize,
    after_rss: u64,
    /// Where and why the run broke off (starting, reading or removing), if it did.
    failure: Option<String>,
}

impl Density {
    /// Starts pods up to `max_pods`, reading at each step, into `r`; an error says at
    /// which pod it happened.
    async fn fill(
        &self,
        rt: &mut Runtime,
        st: &DaemonState,
        r: &mut DensityRun,
        pods: &mut Vec<Pod>,
    ) -> Result<()> {
        let steps = steps(self.max_pods);
        let mut ips = BTreeSet::new();
        for n in 1..=self.max_pods {
            let what = || format!("pod {n} of {}", self.max_pods);
            let t = full_pod(rt.ops(), st.image.clone(), self.name())
                .await
                .with_context(what)?;
            let pod = t.pod.clone();
            pods.push(pod.clone());
            let mut ops = rt.ops();
            let ip = ops
                .verify_pod_ready(&pod.id, &pod.config)
                .await
                .with_context(what)?;
            ops.verify_running(&t.container).await.with_context(what)?;
            if !ips.insert(ip.clone()) {
                anyhow::bail!("{}: pod {} got the IP {ip} of another pod", what(), pod.id);
            }
            let ms = t.ms;
            r.latencies_ms.push(t.ms);
            r.runp_ms.push(t.runp_ms);
            r.create_ms.push(t.create_ms);
            r.start_ms.push(t.start_ms);
            r.pod_ids.push(pod.id.clone());
            r.started = n;
            if steps.contains(&n) {
                let reading = self.read_step(rt, st, n, r).await?;
                let (a, b) = window(n);
                let lat = p50_of_window(&r.latencies_ms, n)?;
                eprintln!(
                    "{:<12} {:<24} {n:>4} pods: pods {a}-{b} p50 {lat:.1} ms (runp {:.1}, \
                     create {:.1}, start {:.1}); daemon RSS {:.1} MB; {} shims {:.1} MB; \
                     host {}; load {}",
                    self.name(),
                    rt.label,
                    reading.runp_p50_ms,
                    reading.create_p50_ms,
                    reading.start_p50_ms,
                    reading.daemon_rss as f64 / MB,
                    reading.shims,
                    reading.shims_rss_sum as f64 / MB,
                    reading.host.text(),
                    reading.loadavg
                );
                r.steps.push(reading);
            } else if n % 50 == 0 {
                eprintln!(
                    "{:<12} {:<24} {n:>4} pods, last {ms:.1} ms",
                    self.name(),
                    rt.label
                );
            }
        }
        Ok(())
    }

    async fn read_step(
        &self,
        rt: &mut Runtime,
        st: &DaemonState,
        n: u32,
        r: &DensityRun,
    ) -> Result<StepReading> {
        tokio::time::sleep(SETTLE).await;
        let at = || format!("reading at {n} pods");
        let daemon = procfs::memory(st.pid).with_context(at)?;
        let shims = shim_readings(&r.pod_ids).with_context(at)?;
        let pods_listed = count_pods(rt).await.with_context(at)?;
        if pods_listed < n as usize {
            anyhow::bail!(
                "{}: the runtime lists {pods_listed} pods, fewer than started",
                at()
            );
        }
        let (a, b) = window(n);
        Ok(StepReading {
            pods: n,
            window_first: a,
            window_last: b,
            daemon_rss: daemon.rss,
            daemon_pss: daemon.pss,
            shims: shims.len(),
            shims_rss_sum: shims.iter().map(|s| s.rss).sum(),
            shims_pss_sum: shims.iter().map(|s| s.pss).sum(),
            shim_names: shims.iter().fold(BTreeMap::new(), |mut m, s| {
                *m.entry(s.name.clone()).or_insert(0) += 1;
                m
            }),
            pods_listed,
            loadavg: super::loadavg().unwrap_or_default(),
            runp_p50_ms: p50_of_window(&r.runp_ms, n)?,
            create_p50_ms: p50_of_window(&r.create_ms, n)?,
            start_p50_ms: p50_of_window(&r.start_ms, n)?,
            host: Host::read(),
        })
    }

    /// Stops and removes every pod, then checks nothing of them is left.
    async fn empty(&self, rt: &mut Runtime, r: &mut DensityRun, pods: &[Pod]) -> Result<()> {
        let mut ops = rt.ops();
        let t0 = Instant::now();
        let mut first_err = None;
        for pod in pods {
            match ops.stop_remove_pod(&pod.id).await {
                Ok(t) => r
                    .stop_remove_ms
                    .push((t.stop + t.remove).as_secs_f64() * 1e3),
                Err(e) => {
                    eprintln!("berth-bench: density: {e:#}");
                    first_err.get_or_insert(e);
                }
            }
        }
        r.remove_all_s = t0.elapsed().as_secs_f64();
        if let Some(e) = first_err {
            return Err(e.context("removing the pods"));
        }
        let ids: BTreeSet<&str> = pods.iter().map(|p| p.id.as_str()).collect();
        r.pods_left = ops.list_pods(Some(self.name())).await?.len();
        r.containers_left = ops
            .list_containers()
            .await?
            .iter()
            .filter(|c| ids.contains(c.pod_sandbox_id.as_str()))
            .count();
        let all: Vec<String> = pods.iter().map(|p| p.id.clone()).collect();
        let t1 = Instant::now();
        loop {
            r.shims_left = procfs::shims_of(&all).values().map(Vec::len).sum();
            if r.shims_left == 0 || t1.elapsed() > SHIM_EXIT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(SETTLE).await;
        r.after_rss = procfs::memory(r.daemon_pid)?.rss;
        if r.pods_left + r.containers_left + r.shims_left > 0 {
            anyhow::bail!(
                "after removing all {} pods: {} pods and {} containers still listed, {} shims \
                 alive {SHIM_EXIT:?} later",
                pods.len(),
                r.pods_left,
                r.containers_left,
                r.shims_left
            );
        }
        Ok(())
    }
}

impl Figure for Density {
    type State = DaemonState;

    fn name(&self) -> &'static str {
        "density"
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
        let mut r = DensityRun {
            daemon_pid: st.pid,
            daemon_name: procfs::name(st.pid),
            daemon_found_by: st.how.clone(),
            max_pods: self.max_pods,
            pods_before,
            idle_rss: idle.rss,
            started: 0,
            latencies_ms: Vec::new(),
            runp_ms: Vec::new(),
            create_ms: Vec::new(),
            start_ms: Vec::new(),
            pod_ids: Vec::new(),
            steps: Vec::new(),
            stop_remove_ms: Vec::new(),
            remove_all_s: 0.0,
            pods_left: 0,
            containers_left: 0,
            shims_left: 0,
            after_rss: 0,
            failure: None,
        };
        let t0 = Instant::now();
        let mut pods = Vec::new();
        if let Err(e) = self.fill(rt, st, &mut r, &mut pods).await {
            eprintln!(
                "{:<12} {:<24} FAILED after {} pods: {e:#}",
                self.name(),
                rt.label,
                r.started
            );
            r.failure = Some(format!("{e:#}"));
        }
        let start_ms = t0.elapsed().as_secs_f64() * 1e3;
        eprintln!(
            "{:<12} {:<24} removing {} pods",
            self.name(),
            rt.label,
            pods.len()
        );
        if let Err(e) = self.empty(rt, &mut r, &pods).await {
            let e = format!("{e:#}");
            eprintln!("{:<12} {:<24} FAILED: {e}", self.name(), rt.label);
            r.failure = Some(match r.failure.take() {
                Some(f) => format!("{f}; then {e}"),
                None => e,
            });
        }
        Ok(Sample {
            ms: start_ms,
            bytes: None,
            detail: serde_json::to_value(&r)?,
        })
    }

    async fn teardown(&self, rt: &mut Runtime, _: DaemonState) -> Result<()> {
        rt.ops().sweep(Some(self.name())).await.map(drop)
    }

    fn report(&self, rts: &[Runtime], runs: &Runs) -> Result<FigureReport> {
        let mut rs = Vec::new();
        for (rt, runs) in rts.iter().zip(runs) {
            let run = measured(runs)
                .next()
                .with_context(|| format!("density: no run on {}", rt.label))?;
            let r: DensityRun = serde_json::from_value(run.sample.detail.clone())
                .context("density: reading the sample back")?;
            rs.push(r);
        }
        let mut rows = Vec::new();
        for &step in &steps(self.max_pods) {
            let (a, b) = window(step);
            let at = |r: &DensityRun| r.steps.iter().find(|s| s.pods == step).cloned();
            let lat: Vec<Option<Vec<f64>>> = rs
                .iter()
                .map(|r| at(r).map(|_| r.latencies_ms[a as usize - 1..b as usize].to_vec()))
                .collect();
            let mut lat_rows = step_rows(
                &format!("density: full pod, pods {a}-{b}"),
                "ms",
                rts,
                &lat,
                "faster",
            )?;
            // flatness: the step's p50 over the first step's, on each runtime
            let first = steps(self.max_pods)[0];
            if step != first {
                for row in &mut lat_rows {
                    let k = rts.iter().position(|rt| rt.label == row.runtime);
                    let base = k.and_then(|k| {
                        let (fa, fb) = window(first);
                        let xs = rs[k].latencies_ms.get(fa as usize - 1..fb as usize)?;
                        Summary::of(xs).ok().flatten()
                    });
                    if let Some(base) = base {
                        let flat = format!(
                            "p50 {:.2}× that at pods {}-{}",
                            row.summary.p50 / base.p50,
                            window(first).0,
                            first
                        );
                        row.target = if row.target.is_empty() {
                            flat
                        } else {
                            format!("{flat}; {}", row.target)
                        };
                    }
                }
            }
            if step == self.max_pods
                && let Some(row) = lat_rows.first_mut()
                && row.runtime == rts[0].label
            {
                row.target = format!(
                    "{} · target: {}",
                    row.target,
                    targets::get("density").design
                );
            }
            rows.extend(lat_rows);
            let one = |f: &dyn Fn(&StepReading) -> u64| -> Vec<Option<Vec<f64>>> {
                rs.iter()
                    .map(|r| at(r).map(|s| vec![f(&s) as f64 / MB]))
                    .collect()
            };
            let mut rss = step_rows(
                &format!("density: daemon RSS at {step} pods"),
                "MB",
                rts,
                &one(&|s| s.daemon_rss),
                "smaller",
            )?;
            if step == 100
                && let Some(row) = rss.first_mut()
                && row.runtime == rts[0].label
            {
                let t = targets::get("daemon-rss");
                let s = row.summary;
                row.target = t.text(&s);
            }
            rows.extend(rss);
            rows.extend(step_rows(
                &format!("density: shims' RSS sum at {step} pods"),
                "MB",
                rts,
                &one(&|s| s.shims_rss_sum),
                "smaller",
            )?);
        }
        let removal: Vec<Option<Vec<f64>>> = rs
            .iter()
            .map(|r| (!r.stop_remove_ms.is_empty()).then(|| r.stop_remove_ms.clone()))
            .collect();
        rows.extend(step_rows(
            "density: Stop+RemovePodSandbox of each",
            "ms",
            rts,
            &removal,
            "faster",
        )?);

        let mut notes = vec![format!(
            "density: full pods (RunPodSandbox + CreateContainer + StartContainer of busybox \
             `sleep 3600`, timed; then verified Ready with a pod IP of its own and RUNNING) \
             started one after another up to {} and kept running; each latency row is the {} \
             pods ending at the step, memory read {SETTLE:?} after the step's last pod (shims' \
             RSS: the sum of VmRSS over each pod's one shim process, not its containers); then \
             every pod stopped and removed, one by one, and nothing of them may be left \
             listed or alive.{}",
            self.max_pods,
            WINDOW,
            if rts.len() > 1 {
                " The runtimes ran one after the other (each holds all its pods), not \
                 alternated."
            } else {
                ""
            }
        )];
        let mut per_rt = Vec::new();
        for (rt, r) in rts.iter().zip(&rs) {
            let names = r
                .steps
                .last()
                .map(|s| {
                    s.shim_names
                        .iter()
                        .map(|(k, v)| format!("{v}× {k}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|| "-".into());
            let loads = r
                .steps
                .iter()
                .map(|s| format!("{} at {}", s.loadavg, s.pods))
                .collect::<Vec<_>>()
                .join(", ");
            let parts = r
                .steps
                .iter()
                .map(|s| {
                    format!(
                        "pods {}-{}: RunPodSandbox {:.1}, CreateContainer {:.1}, \
                         StartContainer {:.1} ms; host {}",
                        s.window_first,
                        s.window_last,
                        s.runp_p50_ms,
                        s.create_p50_ms,
                        s.start_p50_ms,
                        s.host.text()
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            notes.push(format!(
                "density on {}: daemon {} (pid {}, {}), idle RSS {:.1} MB with {} pods listed \
                 before; {} of {} pods started; shims at the last step: {names}; p50 of the \
                 parts: {parts}; load average {loads}; all removed in {:.1} s, then {} pods, \
                 {} containers, {} shims left, daemon RSS {:.1} MB.{}",
                rt.label,
                r.daemon_name,
                r.daemon_pid,
                r.daemon_found_by,
                r.idle_rss as f64 / MB,
                r.pods_before,
                r.started,
                r.max_pods,
                r.remove_all_s,
                r.pods_left,
                r.containers_left,
                r.shims_left,
                r.after_rss as f64 / MB,
                match &r.failure {
                    Some(f) => format!(" FAILED: {f}"),
                    None => String::new(),
                }
            ));
            per_rt.push(json!({
                "runtime": rt.label,
                "role": rt.role,
                "endpoint": rt.endpoint,
                "run": r,
            }));
        }
        let failures: Vec<String> = rts
            .iter()
            .zip(&rs)
            .filter_map(|(rt, r)| {
                r.failure
                    .as_ref()
                    .map(|f| format!("{} after {} pods: {f}", rt.label, r.started))
            })
            .collect();
        Ok(FigureReport {
            rows,
            notes,
            json: json!({
                "name": self.name(),
                "what": "full pods started one after another up to max_pods, kept running; \
                         latency of the window of pods ending at each step; daemon and \
                         shims' RSS at each step; then all removed and nothing left",
                "max_pods": self.max_pods,
                "steps": steps(self.max_pods),
                "window": WINDOW,
                "settle_ms": SETTLE.as_millis() as u64,
                "order": if rts.len() > 1 { "one runtime after the other" } else { "one runtime" },
                "target": targets::get("density").design,
                "per_runtime": per_rt,
                "failures": failures,
            }),
        })
    }
}

/// Rows of one quantity for the runtimes that have samples (a runtime that failed before
/// the step has none): with both, as `report::rows` (the vs row compares); with one, its
/// row alone.
fn step_rows(
    label: &str,
    unit: &str,
    rts: &[Runtime],
    samples: &[Option<Vec<f64>>],
    better: &str,
) -> Result<Vec<Row>> {
    if samples.iter().all(Option::is_some) {
        let xs: Vec<Vec<f64>> = samples.iter().flatten().cloned().collect();
        return Ok(report::rows(label, unit, rts, &xs, None, better)?.0);
    }
    let mut rows = Vec::new();
    for (rt, xs) in rts.iter().zip(samples) {
        if let Some(xs) = xs {
            let mut r = report::rows(
                label,
                unit,
                std::slice::from_ref(rt),
                std::slice::from_ref(xs),
                None,
                better,
            )?
            .0;
            rows.append(&mut r);
        }
    }
    Ok(rows)
}

/// The failures a density report records (the benchmark fails on them once the report
/// is printed).
pub fn failures(rep: &FigureReport) -> Vec<String> {
    rep.json["failures"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_windows() {
        assert_eq!(steps(500), vec![100, 250, 500]);
        assert_eq!(steps(300), vec![100, 250, 300]);
        assert_eq!(steps(250), vec![100, 250]);
        assert_eq!(steps(600), vec![100, 250, 500, 600]);
        assert_eq!(steps(20), vec![20]);
        assert_eq!(steps(1), vec![1]);
        assert_eq!(window(100), (91, 100));
        assert_eq!(window(500), (491, 500));
        assert_eq!(window(10), (1, 10));
        assert_eq!(window(3), (1, 3));
    }
}
