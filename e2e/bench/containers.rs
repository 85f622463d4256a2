//! The container figures, each in one pod of its own made at setup: `create-start`
//! (CreateContainer + StartContainer of busybox `sleep 3600`) and `exec` (ExecSync `true`
//! in a running container).

use std::time::Instant;

use anyhow::{Result, bail};
use serde_json::json;

use super::ops::{Image, Ops, Pod};
use super::report::{self, FigureReport};
use super::{Figure, Runs, Runtime, Sample, targets};

/// A pod on the CNI network, verified Ready; swept if anything after its creation fails.
pub async fn ready_pod(ops: &mut Ops, figure: &str) -> Result<Pod> {
    ops.verify_network_ready().await?;
    let config = ops.pod_config(figure);
    let id = ops.run_pod(&config).await?;
    ops.verify_pod_ready(&id, &config).await?;
    Ok(Pod { id, config })
}

/// Passes `r` through; on error, first removes the figure's pods (a setup that fails gets
/// no teardown).
pub async fn or_sweep<T>(ops: &mut Ops, figure: &str, r: Result<T>) -> Result<T> {
    if r.is_err()
        && let Err(e) = ops.sweep(Some(figure)).await
    {
        eprintln!("berth-bench: {figure}: also, cleaning up: {e:#}");
    }
    r
}

/// CreateContainer + StartContainer timed together; the container is then verified
/// RUNNING, and stopped and removed (not timed).
pub struct CreateStart;

pub struct CreateStartState {
    pod: Pod,
    image: Image,
    n: u32,
}

impl Figure for CreateStart {
    type State = CreateStartState;

    fn name(&self) -> &'static str {
        "create-start"
    }

    async fn setup(&self, rt: &mut Runtime) -> Result<CreateStartState> {
        let image = rt.image()?;
        let mut ops = rt.ops();
        let pod = ready_pod(&mut ops, self.name()).await;
        let pod = or_sweep(&mut ops, self.name(), pod).await?;
        Ok(CreateStartState { pod, image, n: 0 })
    }

    async fn run(&self, rt: &mut Runtime, st: &mut CreateStartState) -> Result<Sample> {
        let mut ops = rt.ops();
        st.n += 1;
        let name = format!("sleep-{}", st.n);
        let t0 = Instant::now();
        let cid = ops
            .create_container(&st.pod, &name, &st.image, &["sleep", "3600"])
            .await?;
        let created = t0.elapsed();
        ops.start_container(&cid).await?;
        let elapsed = t0.elapsed();
        ops.verify_running(&cid).await?;
        ops.stop_remove_container(&cid).await?;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        Ok(Sample {
            ms: ms(elapsed),
            bytes: None,
            detail: json!({
                "pod_id": st.pod.id,
                "container_id": cid,
                "create_ms": ms(created),
                "start_ms": ms(elapsed - created),
            }),
        })
    }

    async fn teardown(&self, rt: &mut Runtime, _: CreateStartState) -> Result<()> {
        rt.ops().sweep(Some(self.name())).await.map(drop)
    }

    fn report(&self, rts: &[Runtime], runs: &Runs) -> Result<FigureReport> {
        report::time_figure(
            self.name(),
            "Create+StartContainer",
            "CreateContainer + StartContainer of busybox `sleep 3600` in an existing Ready pod, \
             timed together; then ContainerStatus RUNNING verified; then StopContainer + \
             RemoveContainer, not timed",
            rts,
            runs,
            Some(targets::get("create-start")),
            vec![
                "Create+StartContainer: busybox `sleep 3600` in one pod made at setup (image \
                 pulled before, passed by id as kubelet does), verified RUNNING, then stopped \
                 (timeout 0) and removed untimed; the JSON splits create and start."
                    .into(),
            ],
        )
    }
}

/// ExecSync `true` in a running busybox container, timed; exit code 0 and no output
/// verified every run. At setup, an exec that prints the pod's hostname and exits 7 must
/// return exactly that (so the exec really runs in the container).
pub struct Exec;

pub struct ExecState {
    container: String,
}

impl Exec {
    async fn prepare(&self, ops: &mut Ops, image: &Image) -> Result<ExecState> {
        let pod = ready_pod(ops, self.name()).await?;
        let cid = ops
            .create_container(&pod, "sleep", image, &["sleep", "3600"])
            .await?;
        ops.start_container(&cid).await?;
        ops.verify_running(&cid).await?;
        let hostname = &pod.config.hostname;
        let r = ops
            .exec_sync(
                &cid,
                &["sh", "-c", "echo \"$(hostname) berth-bench\"; exit 7"],
                30,
            )
            .await?;
        let want = format!("{hostname} berth-bench\n");
        if r.exit_code != 7 || r.stdout != want.as_bytes() {
            bail!(
                "ExecSync check in container {cid}: want exit code 7 and stdout {want:?}, got \
                 exit code {} and stdout {:?} (stderr {:?})",
                r.exit_code,
                String::from_utf8_lossy(&r.stdout),
                String::from_utf8_lossy(&r.stderr)
            );
        }
        Ok(ExecState { container: cid })
    }
}

impl Figure for Exec {
    type State = ExecState;

    fn name(&self) -> &'static str {
        "exec"
    }

    async fn setup(&self, rt: &mut Runtime) -> Result<ExecState> {
        let image = rt.image()?;
        let mut ops = rt.ops();
        let st = self.prepare(&mut ops, &image).await;
        or_sweep(&mut ops, self.name(), st).await
    }

    async fn run(&self, rt: &mut Runtime, st: &mut ExecState) -> Result<Sample> {
        let mut ops = rt.ops();
        let t0 = Instant::now();
        let r = ops.exec_sync(&st.container, &["true"], 10).await?;
        let elapsed = t0.elapsed();
        if r.exit_code != 0 || !r.stdout.is_empty() || !r.stderr.is_empty() {
            bail!(
                "ExecSync true in {}: exit code {}, stdout {:?}, stderr {:?} (want 0 and no \
                 output)",
                st.container,
                r.exit_code,
                String::from_utf8_lossy(&r.stdout),
                String::from_utf8_lossy(&r.stderr)
            );
        }
        Ok(Sample {
            ms: elapsed.as_secs_f64() * 1e3,
            bytes: None,
            detail: json!({ "container_id": st.container, "exit_code": r.exit_code }),
        })
    }

    async fn teardown(&self, rt: &mut Runtime, _: ExecState) -> Result<()> {
        rt.ops().sweep(Some(self.name())).await.map(drop)
    }

    fn report(&self, rts: &[Runtime], runs: &Runs) -> Result<FigureReport> {
        report::time_figure(
            self.name(),
            "ExecSync true",
            "ExecSync [\"true\"] in a running busybox container, timed; exit code 0 and empty \
             stdout/stderr verified",
            rts,
            runs,
            Some(targets::get("exec")),
            vec![
                "ExecSync true: in one running busybox container; every run must exit 0 with no \
                 output; at setup an exec printing the pod's hostname and exiting 7 must return \
                 exactly that."
                    .into(),
            ],
        )
    }
}
