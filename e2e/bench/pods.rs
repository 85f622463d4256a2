//! The pod figures: `runp` (RunPodSandbox), `stop-remove` (StopPodSandbox +
//! RemovePodSandbox) and `full-pod` (sandbox + one running container, many pods kept
//! running, sequentially or `--concurrency` at a time).
//!
//! Every pod is on the runtime's configured CNI network (the runtime's `Status` must say
//! `NetworkReady`, and each pod must have an IP). Every figure's teardown stops and removes
//! every pod it made (tracked, or listed by this run's label), whatever went wrong.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use futures_util::future::join_all;
use serde_json::json;

use super::ops::{Image, Pod};
use super::report::{self, FigureReport};
use super::{Figure, Runs, Runtime, Sample, cri, measured, targets};

/// `RunPodSandbox` timed; then the pod verified Ready with an IP, then stopped and removed
/// (not timed).
pub struct Runp;

impl Figure for Runp {
    type State = ();

    fn name(&self) -> &'static str {
        "runp"
    }

    async fn setup(&self, rt: &mut Runtime) -> Result<()> {
        rt.ops().verify_network_ready().await
    }

    async fn run(&self, rt: &mut Runtime, _: &mut ()) -> Result<Sample> {
        let mut ops = rt.ops();
        let config = ops.pod_config(self.name());
        let t0 = Instant::now();
        let id = ops.run_pod(&config).await?;
        let elapsed = t0.elapsed();
        let ip = ops.verify_pod_ready(&id, &config).await?;
        ops.stop_remove_pod(&id).await?;
        Ok(Sample {
            ms: elapsed.as_secs_f64() * 1e3,
            bytes: None,
            detail: json!({ "pod_id": id, "ip": ip }),
        })
    }

    async fn teardown(&self, rt: &mut Runtime, _: ()) -> Result<()> {
        rt.ops().sweep(Some(self.name())).await.map(drop)
    }

    fn report(&self, rts: &[Runtime], runs: &Runs) -> Result<FigureReport> {
        report::time_figure(
            self.name(),
            "RunPodSandbox",
            "RunPodSandbox timed (CNI network); then PodSandboxStatus Ready with an IP; \
             then StopPodSandbox + RemovePodSandbox, not timed",
            rts,
            runs,
            Some(targets::get("runp")),
            vec![
                "RunPodSandbox: a new uniquely named pod per run on the runtime's CNI network; \
                 verified SANDBOX_READY with a pod IP, then stopped and removed untimed."
                    .into(),
            ],
        )
    }
}

/// StopPodSandbox + RemovePodSandbox of a Ready pod, timed together (the PodSandboxStatus
/// in between, which checks NotReady, is not timed).
pub struct StopRemove;

impl Figure for StopRemove {
    type State = ();

    fn name(&self) -> &'static str {
        "stop-remove"
    }

    async fn setup(&self, rt: &mut Runtime) -> Result<()> {
        rt.ops().verify_network_ready().await
    }

    async fn run(&self, rt: &mut Runtime, _: &mut ()) -> Result<Sample> {
        let mut ops = rt.ops();
        let config = ops.pod_config(self.name());
        let id = ops.run_pod(&config).await?;
        ops.verify_pod_ready(&id, &config).await?;

        let t0 = Instant::now();
        ops.stop_pod(&id).await?;
        let stop = t0.elapsed();
        let st = ops.pod_status(&id).await?;
        if st.state != cri::PodSandboxState::SandboxNotready as i32 {
            bail!(
                "StopPodSandbox {id} succeeded but the pod is {:?}, not SANDBOX_NOTREADY",
                cri::PodSandboxState::try_from(st.state)
            );
        }
        let t1 = Instant::now();
        ops.remove_pod(&id).await?;
        let remove = t1.elapsed();
        ops.verify_pod_gone(&id).await?;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        Ok(Sample {
            ms: ms(stop) + ms(remove),
            bytes: None,
            detail: json!({ "pod_id": id, "stop_ms": ms(stop), "remove_ms": ms(remove) }),
        })
    }

    async fn teardown(&self, rt: &mut Runtime, _: ()) -> Result<()> {
        rt.ops().sweep(Some(self.name())).await.map(drop)
    }

    fn report(&self, rts: &[Runtime], runs: &Runs) -> Result<FigureReport> {
        let mut rep = report::time_figure(
            self.name(),
            "Stop+RemovePodSandbox",
            "StopPodSandbox + RemovePodSandbox of a Ready pod with an IP, timed together \
             (the NotReady check between them not timed); then NotFound verified",
            rts,
            runs,
            None,
            vec![
                "Stop+RemovePodSandbox: a Ready pod (made untimed) stopped and removed, the two \
                 RPCs timed together; \"StopPodSandbox\" is the stop alone, from the same runs."
                    .into(),
            ],
        )?;
        rep.rows[0].target = "see StopPodSandbox alone, below".into();
        // StopPodSandbox alone, which is what DESIGN.md's target is about
        let stops = runs
            .iter()
            .map(|r| {
                measured(r)
                    .map(|r| {
                        r.sample.detail["stop_ms"]
                            .as_f64()
                            .context("stop-remove sample without stop_ms")
                    })
                    .collect::<Result<Vec<f64>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let (rows, sums) = report::rows(
            "  StopPodSandbox",
            "ms",
            rts,
            &stops,
            Some(targets::get("stop")),
            "faster",
        )?;
        rep.rows.extend(rows);
        rep.json["stop_only_summary_ms"] = json!(sums);
        rep.json["target"] = json!(targets::get("stop").design);
        rep.json["target_what"] = json!(targets::get("stop").what);
        Ok(rep)
    }
}

/// Full pods: RunPodSandbox + CreateContainer + StartContainer of busybox `sleep 3600`,
/// timed per pod, `concurrency` pods at a time; all of them kept running until the
/// teardown, so the last pods start beside `pods` running ones.
pub struct FullPod {
    pub pods: u32,
    pub concurrency: u32,
    pub warmup: u32,
}

pub struct FullPodState {
    image: Image,
    /// Pods still to start (warm-up batches first, then the measured ones).
    to_go: u32,
}

impl FullPod {
    fn label(&self) -> String {
        if self.concurrency == 1 {
            "full pod (sequential)".into()
        } else {
            format!("full pod ({} at a time)", self.concurrency)
        }
    }
}

/// A full pod started (not yet verified) and its times in ms: the whole, and its three
/// RPCs (which one grows, as pods accumulate, says where the time goes).
pub struct FullPodTimes {
    pub pod: Pod,
    pub container: String,
    pub ms: f64,
    pub runp_ms: f64,
    pub create_ms: f64,
    pub start_ms: f64,
}

/// One full pod of `figure`, timed: RunPodSandbox + CreateContainer + StartContainer of
/// busybox `sleep 3600`.
pub async fn full_pod(
    mut ops: super::ops::Ops,
    image: Image,
    figure: &str,
) -> Result<FullPodTimes> {
    let config = ops.pod_config(figure);
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    let t0 = Instant::now();
    let id = ops.run_pod(&config).await?;
    let runp_ms = ms(t0);
    let pod = Pod { id, config };
    let t1 = Instant::now();
    let container = ops
        .create_container(&pod, "sleep", &image, &["sleep", "3600"])
        .await?;
    let create_ms = ms(t1);
    let t2 = Instant::now();
    ops.start_container(&container).await?;
    let start_ms = ms(t2);
    Ok(FullPodTimes {
        pod,
        container,
        ms: ms(t0),
        runp_ms,
        create_ms,
        start_ms,
    })
}

impl Figure for FullPod {
    type State = FullPodState;

    fn name(&self) -> &'static str {
        "full-pod"
    }

    fn plan(&self, warmup: u32, _count: u32) -> (u32, u32) {
        (warmup, self.pods.div_ceil(self.concurrency))
    }

    async fn setup(&self, rt: &mut Runtime) -> Result<FullPodState> {
        rt.ops().verify_network_ready().await?;
        Ok(FullPodState {
            image: rt.image()?,
            to_go: self.warmup * self.concurrency + self.pods,
        })
    }

    async fn run(&self, _: &mut Runtime, _: &mut FullPodState) -> Result<Sample> {
        unreachable!("full-pod runs in batches")
    }

    async fn run_batch(&self, rt: &mut Runtime, st: &mut FullPodState) -> Result<Vec<Sample>> {
        let k = self.concurrency.min(st.to_go);
        if k == 0 {
            bail!("full-pod: more batches than pods (a bug)");
        }
        st.to_go -= k;
        let t0 = Instant::now();
        let results =
            join_all((0..k).map(|_| full_pod(rt.ops(), st.image.clone(), self.name()))).await;
        let batch_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut done = Vec::new();
        for r in results {
            done.push(r?);
        }
        let mut ops = rt.ops();
        let mut out = Vec::new();
        for t in done {
            let ip = ops.verify_pod_ready(&t.pod.id, &t.pod.config).await?;
            ops.verify_running(&t.container).await?;
            out.push(Sample {
                ms: t.ms,
                bytes: None,
                detail: json!({
                    "pod_id": t.pod.id,
                    "container_id": t.container,
                    "ip": ip,
                    "runp_ms": t.runp_ms,
                    "create_ms": t.create_ms,
                    "start_ms": t.start_ms,
                    "batch": k,
                    "batch_ms": batch_ms,
                }),
            });
        }
        Ok(out)
    }

    async fn teardown(&self, rt: &mut Runtime, _: FullPodState) -> Result<()> {
        let t0 = Instant::now();
        let n = rt.ops().sweep(Some(self.name())).await?;
        eprintln!(
            "{:<12} {:<24} removed {n} pods in {:.1} s",
            self.name(),
            rt.label,
            t0.elapsed().as_secs_f64()
        );
        Ok(())
    }

    fn report(&self, rts: &[Runtime], runs: &Runs) -> Result<FigureReport> {
        let mut rep = report::time_figure(
            self.name(),
            &self.label(),
            "RunPodSandbox + CreateContainer + StartContainer (busybox sleep 3600) timed per \
             pod; pods kept running until the figure ends; each then verified Ready with an IP \
             and RUNNING",
            rts,
            runs,
            Some(targets::get("full-pod")),
            vec![format!(
                "full pod: RunPodSandbox + CreateContainer + StartContainer timed per pod, {} \
                 pods (+ warm-up) kept running until the end, each verified Ready with an IP \
                 and its container RUNNING; DESIGN's target is p99 over 100 pods.",
                self.pods
            )],
        )?;
        rep.json["pods"] = json!(self.pods);
        rep.json["concurrency"] = json!(self.concurrency);
        Ok(rep)
    }
}
