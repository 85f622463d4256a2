//! `berth-bench`: a CRI client that measures berth's headline figures against any CRI
//! endpoint and, with `--vs`, a second one side by side (DESIGN.md "Targets", issue 6).
//!
//! ```text
//! berth-bench --endpoint unix:///run/berth/berth.sock \
//!             [--vs unix:///run/containerd/containerd.sock] \
//!             [--count 10] [--warmup 1] [--only memory,pull,runp,...] [--json out.json] \
//!             [--image REF] [--image-busybox REF] [--pods 100] [--concurrency 1] \
//!             [--max-pods 500] [--daemon-pid PID] [--vs-daemon-pid PID]
//! ```
//!
//! Every figure is a [`Figure`]: set up once per runtime, then `--warmup` discarded runs and
//! `--count` measured runs, the runtimes alternating run by run (A B, B A, A B, …) so that
//! a machine drifting over the benchmark biases neither; then torn down. Each run checks
//! that it did what it claims to measure and fails loudly otherwise. The statistics (nearest
//! rank p50/p95/p99, min, max), the table and the JSON are shared by every figure.
//!
//! Figures, in the order they run (DESIGN.md's targets are in `bench/targets.rs`):
//! - `memory` (first, so that "idle" is a daemon that has not yet churned through the
//!   other figures' pods): the daemon's RSS idle, with `--pods` running pods and after
//!   removing them; the per-pod shim's RSS (`bench/memory.rs`);
//! - `pull`: cold-store pull + unpack of `--image`; MB/s (`bench/pull.rs`);
//! - `runp`: RunPodSandbox on the CNI network; `stop-remove`: StopPodSandbox +
//!   RemovePodSandbox (`bench/pods.rs`);
//! - `create-start`: CreateContainer + StartContainer of busybox `sleep 3600`; `exec`:
//!   ExecSync `true` (`bench/containers.rs`); `exec-ttfb`: Exec `echo x` to its first
//!   stdout byte over SPDY/3.1, as kubectl exec waits for it (`bench/exec_ttfb.rs`);
//! - `full-pod`: sandbox + one running container over `--pods` pods kept running,
//!   sequentially and, with `--concurrency C` > 1, C at a time (`bench/pods.rs`);
//! - `density` (last: it churns through hundreds of pods): full pods one after another up
//!   to `--max-pods`, the latency and the daemon's and shims' RSS at 100, 250 and 500
//!   pods; the runtimes one after the other, not alternated (`bench/density.rs`).
//!
//! The container figures use `--image-busybox`, pulled once before them if the runtime
//! lacks it (and then removed at the end). Every pod is labelled with this run's token and
//! removed by the figure's teardown; whatever is left (an error, SIGINT or SIGTERM) is
//! swept before the program exits (`bench/ops.rs`). Nothing here asserts a timing: the
//! targets are reported, never enforced; a run that did not do what it claims is an error.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint, Uri};

use berth::proto::runtime::v1 as cri;
use cri::image_service_client::ImageServiceClient;
use cri::runtime_service_client::RuntimeServiceClient;

#[path = "bench/containers.rs"]
mod containers;
#[path = "bench/density.rs"]
mod density;
#[path = "bench/exec_ttfb.rs"]
mod exec_ttfb;
#[path = "bench/memory.rs"]
mod memory;
#[path = "bench/ops.rs"]
mod ops;
#[path = "bench/pods.rs"]
mod pods;
#[path = "bench/procfs.rs"]
mod procfs;
#[path = "bench/pull.rs"]
mod pull;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/stats.rs"]
mod stats;
#[path = "bench/targets.rs"]
mod targets;

/// Message size limit, as kubelet's client sets it (large ListImages/ListContainers).
const MAX_MESSAGE: usize = 16 << 20;

#[derive(Parser, Debug)]
#[command(
    name = "berth-bench",
    version,
    about = "Measure a CRI runtime's headline figures, optionally side by side with another"
)]
struct Cli {
    /// CRI endpoint to measure, e.g. unix:///run/berth/berth.sock
    #[arg(long)]
    endpoint: String,
    /// A second CRI endpoint measured side by side (runs alternate), e.g.
    /// unix:///run/containerd/containerd.sock; the vs rows then say how many times faster
    /// (smaller, or for the pull: higher MB/s) the endpoint is
    #[arg(long)]
    vs: Option<String>,
    /// Image for the pull figure (pulled from its registry, so the runtime's registry
    /// configuration applies)
    #[arg(long, default_value = "berth-test/bench:latest")]
    image: String,
    /// Measured runs per figure and runtime
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    count: u32,
    /// Warm-up runs per figure and runtime, run first and discarded
    #[arg(long, default_value_t = 1)]
    warmup: u32,
    /// Write the machine, the parameters and every sample to this JSON file
    #[arg(long)]
    json: Option<PathBuf>,
    /// Only these figures (comma-separated or repeated); default: all
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<FigureName>,
    /// Image of the container figures (busybox: needs `sleep`, `sh`, `true`, `hostname`);
    /// pulled before them if the runtime lacks it, and then removed at the end
    #[arg(long, default_value = "berth-test/busybox:latest")]
    image_busybox: String,
    /// Pods of the full-pod figure (measured, kept running) and of the memory figure
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pods: u32,
    /// full-pod: also start the pods this many at a time (1: sequential only)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// density: start pods one after another up to this many (steps at 100, 250, 500)
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    max_pods: u32,
    /// memory: pid of the --endpoint daemon (default: the process holding its listening
    /// socket, found through /proc/net/unix and /proc/*/fd)
    #[arg(long)]
    daemon_pid: Option<u32>,
    /// memory: pid of the --vs daemon (default: found by its socket)
    #[arg(long, requires = "vs")]
    vs_daemon_pid: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum FigureName {
    /// Daemon RSS idle and with --pods running pods; per-pod shim RSS (MB)
    Memory,
    /// Cold-store pull + unpack of --image (ms, MB/s)
    Pull,
    /// RunPodSandbox on the CNI network (ms)
    Runp,
    /// StopPodSandbox + RemovePodSandbox of a Ready pod (ms)
    StopRemove,
    /// CreateContainer + StartContainer of busybox sleep (ms)
    CreateStart,
    /// ExecSync `true` in a running container (ms)
    Exec,
    /// Exec `echo x` over SPDY/3.1: RPC + connect + upgrade + first stdout byte (ms)
    ExecTtfb,
    /// Sandbox + one running container, --pods pods, sequential and --concurrency (ms)
    FullPod,
    /// Full pods up to --max-pods: latency, daemon and shims' RSS at 100, 250, 500 pods
    Density,
}

impl FigureName {
    /// Whether the figure runs containers of --image-busybox.
    fn needs_image(self) -> bool {
        matches!(
            self,
            FigureName::Memory
                | FigureName::CreateStart
                | FigureName::Exec
                | FigureName::ExecTtfb
                | FigureName::FullPod
                | FigureName::Density
        )
    }
}

/// Which command-line option a runtime came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Endpoint,
    Vs,
}

/// One runtime under test: its CRI clients over one connection (kept for the whole
/// benchmark, as kubelet keeps its own), and what its `Version` said.
pub struct Runtime {
    pub role: Role,
    pub endpoint: String,
    /// How the table names it: "berth 0.1.0", "containerd v1.7.24".
    pub label: String,
    pub version: cri::VersionResponse,
    pub images: ImageServiceClient<Channel>,
    pub runtime: RuntimeServiceClient<Channel>,
    /// The pods made here and not yet removed (see `bench/ops.rs`).
    pub tracker: ops::Tracker,
    /// The daemon's pid if given on the command line (the memory figure).
    pub daemon_pid: Option<u32>,
    /// The container figures' image, once ensured.
    pub image: Option<ops::Image>,
}

impl Runtime {
    /// The CRI operations of the pod and container figures, over this connection.
    pub fn ops(&self) -> ops::Ops {
        ops::Ops {
            runtime: self.runtime.clone(),
            images: self.images.clone(),
            tracker: self.tracker.clone(),
            role: match self.role {
                Role::Endpoint => "endpoint",
                Role::Vs => "vs",
            },
        }
    }

    /// The container figures' image (ensured before the figures run).
    pub fn image(&self) -> Result<ops::Image> {
        self.image
            .clone()
            .context("the container image was not prepared (a bug)")
    }

    async fn connect(role: Role, endpoint: &str, daemon_pid: Option<u32>) -> Result<Runtime> {
        let path = socket_path(endpoint)?;
        let p = path.clone();
        let channel = Endpoint::try_from("http://cri.invalid")?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let p = p.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
                }
            }))
            .await
            .with_context(|| format!("connecting to {endpoint} ({})", path.display()))?;
        let images = ImageServiceClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let mut runtime = RuntimeServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let version = runtime
            .version(request(cri::VersionRequest::default(), RPC_TIMEOUT))
            .await
            .with_context(|| format!("Version on {endpoint}"))?
            .into_inner();
        let label = format!("{} {}", version.runtime_name, version.runtime_version)
            .trim()
            .to_string();
        Ok(Runtime {
            role,
            endpoint: endpoint.to_string(),
            label,
            version,
            images,
            runtime,
            tracker: ops::Tracker::default(),
            daemon_pid,
            image: None,
        })
    }

    fn json(&self) -> Value {
        json!({
            "role": self.role,
            "endpoint": self.endpoint,
            "label": self.label,
            "runtime_name": self.version.runtime_name,
            "runtime_version": self.version.runtime_version,
            "runtime_api_version": self.version.runtime_api_version,
            "version": self.version.version,
        })
    }
}

/// `unix:///path` (or a bare absolute path) → the socket path.
fn socket_path(endpoint: &str) -> Result<PathBuf> {
    let path = match endpoint.strip_prefix("unix://") {
        Some(p) => p,
        None if endpoint.starts_with('/') => endpoint,
        None => bail!("endpoint {endpoint:?}: only unix:///absolute/path endpoints are supported"),
    };
    if !path.starts_with('/') {
        bail!("endpoint {endpoint:?}: the socket path must be absolute (unix:///run/x.sock)");
    }
    Ok(PathBuf::from(path))
}

/// Deadline of an ordinary RPC.
const RPC_TIMEOUT: Duration = Duration::from_secs(60);

/// A request with a deadline (sent as `grpc-timeout`, so the runtime sees it too).
pub fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

/// What one measured run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// The timed interval, in milliseconds.
    pub ms: f64,
    /// Bytes the run moved, for figures with a throughput (the pull: the image size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Whatever proves the run did what it claims (ids, sizes), for the JSON.
    pub detail: Value,
}

/// One run of a figure on one runtime.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// 0-based over warm-up and measured runs of this figure.
    pub iteration: u32,
    pub warmup: bool,
    /// When the run started, in ms since the figure started (shows the interleaving).
    pub at_ms: f64,
    #[serde(flatten)]
    pub sample: Sample,
}

/// The runs of one figure, indexed like the runtimes.
pub type Runs = Vec<Vec<Run>>;

/// The measured (non-warm-up) runs.
pub fn measured(runs: &[Run]) -> impl Iterator<Item = &Run> {
    runs.iter().filter(|r| !r.warmup)
}

/// A benchmark figure. `setup` once per runtime, then `run` warm-up + measured times per
/// runtime (alternating runtimes), then `teardown` once per runtime, even after a failed
/// run; `report` turns the runs into table rows and JSON. A setup that fails must undo
/// what it did itself (it gets no teardown).
trait Figure {
    /// Per-runtime state from `setup` (e.g. the pod a container figure starts in).
    type State;
    /// The name used by `--only` and in the table.
    fn name(&self) -> &'static str;
    /// (warm-up, measured) runs per runtime, from `--warmup` and `--count`; a figure with
    /// its own count (full-pod: `--pods`; memory: one) overrides it.
    fn plan(&self, warmup: u32, count: u32) -> (u32, u32) {
        (warmup, count)
    }
    async fn setup(&self, rt: &mut Runtime) -> Result<Self::State>;
    /// One run: do, time and verify what is measured.
    async fn run(&self, rt: &mut Runtime, state: &mut Self::State) -> Result<Sample>;
    /// One run that may measure several things at once (full-pod with `--concurrency`);
    /// by default one `run`.
    async fn run_batch(&self, rt: &mut Runtime, state: &mut Self::State) -> Result<Vec<Sample>> {
        Ok(vec![self.run(rt, state).await?])
    }
    async fn teardown(&self, rt: &mut Runtime, state: Self::State) -> Result<()>;
    fn report(&self, rts: &[Runtime], runs: &Runs) -> Result<report::FigureReport>;
}

/// Runs one figure over every runtime, alternating them run by run.
async fn measure<F: Figure>(
    fig: &F,
    rts: &mut [Runtime],
    warmup: u32,
    count: u32,
) -> Result<report::FigureReport> {
    let (warmup, count) = fig.plan(warmup, count);
    let mut states = Vec::with_capacity(rts.len());
    for rt in rts.iter_mut() {
        let st = fig.setup(rt).await.with_context(|| {
            format!(
                "{}: setting up on {} ({})",
                fig.name(),
                rt.label,
                rt.endpoint
            )
        });
        match st {
            Ok(st) => states.push(st),
            Err(e) => {
                // tear down what was set up already
                for (rt, st) in rts.iter_mut().zip(states) {
                    let _ = fig.teardown(rt, st).await;
                }
                return Err(e);
            }
        }
    }
    let mut runs: Runs = rts.iter().map(|_| Vec::new()).collect();
    let start = Instant::now();
    let mut result = Ok(());
    'runs: for i in 0..warmup + count {
        let order: Vec<usize> = if i % 2 == 0 {
            (0..rts.len()).collect()
        } else {
            (0..rts.len()).rev().collect()
        };
        for k in order {
            let rt = &mut rts[k];
            let at_ms = start.elapsed().as_secs_f64() * 1e3;
            let what = if i < warmup {
                format!("warm-up {}/{warmup}", i + 1)
            } else {
                format!("run {}/{count}", i - warmup + 1)
            };
            match fig.run_batch(rt, &mut states[k]).await {
                Ok(samples) => {
                    for sample in samples {
                        eprintln!(
                            "{:<12} {:<24} {what:<14} {:>9.1} ms",
                            fig.name(),
                            rt.label,
                            sample.ms
                        );
                        runs[k].push(Run {
                            iteration: i,
                            warmup: i < warmup,
                            at_ms,
                            sample,
                        });
                    }
                }
                Err(e) => {
                    result = Err(e.context(format!(
                        "{}: {what} on {} ({})",
                        fig.name(),
                        rt.label,
                        rt.endpoint
                    )));
                    break 'runs;
                }
            }
        }
    }
    for (rt, st) in rts.iter_mut().zip(states) {
        let td = fig.teardown(rt, st).await.with_context(|| {
            format!(
                "{}: tearing down on {} ({})",
                fig.name(),
                rt.label,
                rt.endpoint
            )
        });
        if result.is_ok() {
            result = td;
        } else if let Err(e) = td {
            eprintln!("berth-bench: also: {e:#}");
        }
    }
    result?;
    fig.report(rts, &runs)
}

/// What the numbers were measured on.
fn machine() -> Value {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .ok()
    };
    let cpu = read("/proc/cpuinfo").and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    });
    let mem_kib = read("/proc/meminfo").and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    });
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "kernel": read("/proc/sys/kernel/osrelease"),
        "hostname": read("/proc/sys/kernel/hostname"),
        "cpu": cpu,
        "mem_total_bytes": mem_kib.map(|k| k * 1024),
        "date": rfc3339_utc(now),
        "unix_time": now,
        "loadavg": loadavg(),
    })
}

/// /proc/loadavg's 1, 5 and 15 minute load averages (the benchmark shares the machine).
fn loadavg() -> Option<String> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// Seconds since the epoch → `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, proleptic Gregorian).
fn rfc3339_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Runs the selected figures in order, pushing each report as it completes (so that an
/// error leaves the finished ones to print).
async fn figures(
    cli: &Cli,
    rts: &mut [Runtime],
    reports: &mut Vec<report::FigureReport>,
) -> Result<()> {
    let only = |f: FigureName| cli.only.is_empty() || cli.only.contains(&f);
    let all = [
        FigureName::Memory,
        FigureName::Pull,
        FigureName::Runp,
        FigureName::StopRemove,
        FigureName::CreateStart,
        FigureName::Exec,
        FigureName::ExecTtfb,
        FigureName::FullPod,
        FigureName::Density,
    ];
    if all.iter().any(|f| only(*f) && f.needs_image()) {
        for rt in rts.iter_mut() {
            let img = rt
                .ops()
                .ensure_image(&cli.image_busybox)
                .await
                .with_context(|| format!("preparing the container image on {}", rt.label))?;
            eprintln!(
                "{:<12} {:<24} {} {} ({})",
                "image",
                rt.label,
                if img.pulled { "pulled" } else { "present:" },
                img.reference,
                img.id
            );
            rt.image = Some(img);
        }
    }
    let (w, c) = (cli.warmup, cli.count);
    for f in all.into_iter().filter(|f| only(*f)) {
        match f {
            FigureName::Memory => {
                reports.push(measure(&memory::Memory { pods: cli.pods }, rts, w, c).await?)
            }
            FigureName::Pull => {
                let fig = pull::Pull {
                    image: cli.image.clone(),
                };
                reports.push(measure(&fig, rts, w, c).await?);
            }
            FigureName::Runp => reports.push(measure(&pods::Runp, rts, w, c).await?),
            FigureName::StopRemove => reports.push(measure(&pods::StopRemove, rts, w, c).await?),
            FigureName::CreateStart => {
                reports.push(measure(&containers::CreateStart, rts, w, c).await?)
            }
            FigureName::Exec => reports.push(measure(&containers::Exec, rts, w, c).await?),
            FigureName::ExecTtfb => reports.push(measure(&exec_ttfb::ExecTtfb, rts, w, c).await?),
            FigureName::FullPod => {
                let mut conc = vec![1];
                if cli.concurrency > 1 {
                    conc.push(cli.concurrency);
                }
                for concurrency in conc {
                    let fig = pods::FullPod {
                        pods: cli.pods,
                        concurrency,
                        warmup: w,
                    };
                    reports.push(measure(&fig, rts, w, c).await?);
                }
            }
            FigureName::Density => {
                let fig = density::Density {
                    max_pods: cli.max_pods,
                };
                let rep = measure(&fig, rts, w, c).await?;
                let failures = density::failures(&rep);
                reports.push(rep);
                if !failures.is_empty() {
                    bail!("density: {}", failures.join("; "));
                }
            }
        }
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM, with the signal's name.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    tokio::select! {
        Some(_) = async { int.as_mut()?.recv().await } => "SIGINT",
        Some(_) = async { term.as_mut()?.recv().await } => "SIGTERM",
    }
}

/// Removes whatever this run left on each runtime: pods (tracked or labelled with this
/// run's token) and the container image if this run pulled it.
async fn clean_up(rts: &mut [Runtime]) -> Result<()> {
    let mut first_err = None;
    for rt in rts.iter_mut() {
        let mut ops = rt.ops();
        match ops.sweep(None).await {
            Ok(0) => {}
            Ok(n) => eprintln!(
                "berth-bench: cleanup: removed {n} pods left on {}",
                rt.label
            ),
            Err(e) => {
                first_err.get_or_insert(e.context(format!("cleaning up pods on {}", rt.label)));
            }
        }
        if let Some(img) = rt.image.take().filter(|i| i.pulled)
            && let Err(e) = ops.remove_image(&img.reference).await
        {
            first_err.get_or_insert(e.context(format!(
                "removing {} (pulled for the container figures) from {}",
                img.reference, rt.label
            )));
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn run(cli: Cli) -> Result<()> {
    let mut rts = vec![Runtime::connect(Role::Endpoint, &cli.endpoint, cli.daemon_pid).await?];
    if let Some(vs) = &cli.vs {
        rts.push(Runtime::connect(Role::Vs, vs, cli.vs_daemon_pid).await?);
        if rts[0].label == rts[1].label {
            rts[0].label.push_str(" (endpoint)");
            rts[1].label.push_str(" (vs)");
        }
    }
    let machine = machine();

    let mut reports = Vec::new();
    let result = tokio::select! {
        r = figures(&cli, &mut rts, &mut reports) => r,
        sig = interrupted() => Err(anyhow::anyhow!("interrupted by {sig}")),
    };
    let cleaned = clean_up(&mut rts).await;
    let result = match (result, cleaned) {
        (Ok(()), c) => c,
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(c)) => {
            eprintln!("berth-bench: also: {c:#}");
            Err(e)
        }
    };

    if !reports.is_empty() {
        if result.is_err() {
            eprintln!("berth-bench: the figures that completed:");
        }
        println!("{}", report::table(&reports, rts.len()));
        println!(
            "Load average (1, 5, 15 min) at the start {}, at the end {}; {} cores.",
            machine["loadavg"].as_str().unwrap_or("?"),
            loadavg().as_deref().unwrap_or("?"),
            machine["nproc"]
        );
    }
    if let Some(path) = &cli.json {
        let doc = json!({
            "berth_bench": {
                "version": env!("CARGO_PKG_VERSION"),
                "build": if cfg!(debug_assertions) { "debug" } else { "release" },
            },
            "machine": machine,
            "loadavg_end": loadavg(),
            "params": {
                "image": cli.image,
                "image_busybox": cli.image_busybox,
                "count": cli.count,
                "warmup": cli.warmup,
                "pods": cli.pods,
                "concurrency": cli.concurrency,
                "max_pods": cli.max_pods,
                "percentiles": "nearest rank over the measured runs (warm-up runs excluded)",
                "order": "runtimes alternate run by run: A B, B A, A B, ...",
            },
            "targets": targets::TARGETS.iter().map(|t| json!({
                "key": t.key,
                "what": t.what,
                "containerd_here": t.containerd_here,
                "berth_target": t.design,
            })).collect::<Vec<_>>(),
            "runtimes": rts.iter().map(Runtime::json).collect::<Vec<_>>(),
            "figures": reports.iter().map(|r| &r.json).collect::<Vec<_>>(),
            "error": result.as_ref().err().map(|e| format!("{e:#}")),
        });
        let text = serde_json::to_string_pretty(&doc)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("berth-bench: wrote {}", path.display());
    }
    result
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(1_704_067_200), "2024-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(1_709_164_800 + 3_723), "2024-02-29T01:02:03Z");
        assert_eq!(rfc3339_utc(1_735_689_599), "2024-12-31T23:59:59Z");
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path("unix:///run/berth/berth.sock").unwrap(),
            PathBuf::from("/run/berth/berth.sock")
        );
        assert_eq!(socket_path("/x.sock").unwrap(), PathBuf::from("/x.sock"));
        assert!(socket_path("unix://rel.sock").is_err());
        assert!(socket_path("tcp://127.0.0.1:1").is_err());
    }

    #[test]
    fn cli_parses() {
        let c = Cli::try_parse_from([
            "berth-bench",
            "--endpoint",
            "unix:///a.sock",
            "--only",
            "pull",
        ])
        .unwrap();
        assert_eq!((c.count, c.warmup), (10, 1));
        assert_eq!(c.image, "berth-test/bench:latest");
        assert_eq!(c.only, vec![FigureName::Pull]);
        assert_eq!(c.image_busybox, "berth-test/busybox:latest");
        assert_eq!((c.pods, c.concurrency, c.daemon_pid), (100, 1, None));
        assert!(Cli::try_parse_from(["berth-bench", "--endpoint", "/a", "--count", "0"]).is_err());
        assert!(Cli::try_parse_from(["berth-bench", "--endpoint", "/a", "--pods", "0"]).is_err());
        assert!(
            Cli::try_parse_from(["berth-bench", "--endpoint", "/a", "--vs-daemon-pid", "1"])
                .is_err()
        );
        let c = Cli::try_parse_from([
            "berth-bench",
            "--endpoint",
            "/a",
            "--only",
            "runp,stop-remove,create-start",
            "--only",
            "exec,full-pod,memory",
            "--concurrency",
            "4",
        ])
        .unwrap();
        assert_eq!(
            c.only,
            vec![
                FigureName::Runp,
                FigureName::StopRemove,
                FigureName::CreateStart,
                FigureName::Exec,
                FigureName::FullPod,
                FigureName::Memory
            ]
        );
        assert_eq!(c.concurrency, 4);
        assert!(Cli::try_parse_from(["berth-bench"]).is_err());
    }
}
