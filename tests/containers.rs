//! Containers with the real berthd, the real pod shim (libcontainer in-tree), a real
//! registry serving berth's busybox test image and Debian's CNI plugins: lifecycle, logs,
//! exec, exit codes and reasons, OOM kills, crash safety, bad input, resources, stats,
//! events, log reopening and pod removal.
//!
//! Every test runs its own registry, network and berthd (their Drop guards kill and
//! remove them, also when the test panics) and puts its pods' cgroups under
//! `/berth-test-<pid>-<tag>`, which a [`CgroupGuard`] empties (SIGKILL to every process in
//! it) and removes on drop. Host directories the tests make are [`TempDir`]s.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::registry::{Registry, testimg};
use common::world::{self, CGROUP_ROOT, CgroupGuard, entries, wait_listening};
use common::{Berthd, TempDir, TestNetwork, cri, mounts_under, shims_under, spec};
use tonic::Code;

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// One test's world: its cgroup tree, berthd, CNI network, registry (dropped in this
/// order), the busybox reference pulled into berthd and a pod log directory.
struct Env {
    cg: CgroupGuard,
    d: Berthd,
    net: TestNetwork,
    /// Kept alive for the test's pulls; dropped (killed) last.
    #[allow(dead_code)]
    reg: Registry,
    logs: TempDir,
    image: String,
}

impl Env {
    async fn new(tag: &str) -> Env {
        let cg = CgroupGuard::new(tag);
        let reg = Registry::start_only(&[testimg::BUSYBOX]);
        let net = TestNetwork::new();
        let (d, image) = world::berthd_with_busybox("", &net, &reg).await;
        Env {
            cg,
            d,
            net,
            reg,
            logs: TempDir::new("berth-ctr-logs"),
            image,
        }
    }

    fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        let mut c = world::pod_config_in(&self.cg, name);
        c.log_directory = self.logs.path().join(name).display().to_string();
        c
    }

    async fn run_pod(&self, config: &cri::PodSandboxConfig) -> String {
        world::run_pod(&self.d, config).await
    }

    async fn remove_pod(&self, id: &str) {
        world::remove_pod(&self.d, id).await
    }

    fn config(&self, name: &str, cmd: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            log_path: format!("{name}/0.log"),
            ..world::busybox_config(&self.image, name, cmd)
        }
    }

    async fn create(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        world::create_container(&self.d, pod, pod_config, config).await
    }

    async fn start(&self, id: &str) -> Result<(), tonic::Status> {
        world::start_container(&self.d, id).await
    }

    /// Create and start.
    async fn run(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> String {
        let id = self.create(pod, pod_config, config).await.expect("create");
        self.start(&id).await.expect("start");
        id
    }

    async fn stop(&self, id: &str, timeout: i64) {
        self.d
            .runtime()
            .await
            .stop_container(cri::StopContainerRequest {
                container_id: id.into(),
                timeout,
            })
            .await
            .expect("stop container");
    }

    async fn remove(&self, id: &str) {
        self.d
            .runtime()
            .await
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .expect("remove container");
    }

    async fn status_verbose(
        &self,
        id: &str,
    ) -> Result<(cri::ContainerStatus, HashMap<String, String>), tonic::Status> {
        self.d
            .runtime()
            .await
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: true,
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                (r.status.unwrap(), r.info)
            })
    }

    async fn status(&self, id: &str) -> cri::ContainerStatus {
        self.status_verbose(id).await.expect("container status").0
    }

    /// The verbose `info` JSON.
    async fn info(&self, id: &str) -> serde_json::Value {
        let (_, info) = self.status_verbose(id).await.expect("container status");
        serde_json::from_str(info.get("info").expect("verbose info")).expect("info is JSON")
    }

    async fn list(&self, filter: Option<cri::ContainerFilter>) -> Vec<cri::Container> {
        world::list_containers(&self.d, filter).await
    }

    async fn exec(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<cri::ExecSyncResponse, tonic::Status> {
        self.d
            .runtime()
            .await
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout,
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Polls until the container has exited.
    async fn wait_exited(&self, id: &str, within: Duration) -> cri::ContainerStatus {
        let deadline = Instant::now() + within;
        loop {
            let st = self.status(id).await;
            if st.state == cri::ContainerState::ContainerExited as i32 {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} did not exit within {within:?}: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn containers_dir(&self) -> PathBuf {
        self.d.root.join("containers")
    }

    /// Entries of `<root>/containers` (one per container's writable layer).
    fn container_dirs(&self) -> Vec<String> {
        entries(&self.containers_dir())
    }

    /// The memory-controller directory of a cgroup path.
    fn cgroup_dir(&self, controller: &str, rel: &str) -> PathBuf {
        Path::new(CGROUP_ROOT)
            .join(controller)
            .join(rel.trim_start_matches('/'))
    }

    /// Nothing of any pod or container is left: no container listed, no mount, no shim,
    /// no pod state dir, no writable layer, no process rooted in a container, no IP
    /// lease, no cgroup of the test's tree.
    async fn assert_nothing_left(&self) {
        assert!(self.list(None).await.is_empty(), "containers left");
        let pods = self
            .d
            .runtime()
            .await
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .items;
        assert!(pods.is_empty(), "pods left: {pods:?}");
        let m = mounts_under(self.d.dir.path());
        assert!(m.is_empty(), "mounts left: {m:?}");
        assert!(shims_under(self.d.dir.path()).is_empty(), "shims left");
        let p = entries(&self.d.state.join("pods"));
        assert!(p.is_empty(), "pod state dirs left: {p:?}");
        let c = self.container_dirs();
        assert!(c.is_empty(), "container dirs left: {c:?}");
        let procs = procs_rooted_under(self.d.dir.path());
        assert!(procs.is_empty(), "container processes left: {procs:?}");
        assert!(
            self.net.leases().is_empty(),
            "IP leases left: {:?}",
            self.net.leases()
        );
        let cgs = self.cg.dirs();
        assert!(cgs.is_empty(), "cgroups left: {cgs:?}");
    }
}

/// Processes whose root filesystem comes from under `path`: containers' processes, whose
/// root is an overlay with its upper dir under berthd's root. (`/proc/<pid>/root` cannot
/// tell: read from another mount namespace it is just `/`.) With their command lines.
fn procs_rooted_under(path: &Path) -> Vec<(u32, String)> {
    let p = path.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let info = std::fs::read_to_string(e.path().join("mountinfo")).unwrap_or_default();
        let root_from_path = info
            .lines()
            .any(|l| l.split(' ').nth(4) == Some("/") && l.contains(&p));
        if root_from_path {
            out.push((pid, cmdline(pid)));
        }
    }
    out
}

/// `/proc/<pid>/cmdline`, NULs as spaces.
fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim_end_matches('\0')
                .replace('\0', " ")
        })
        .unwrap_or_default()
}

fn alive(pid: u32) -> bool {
    // A zombie is not alive.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// PIDs listed in a cgroup directory.
fn cgroup_procs(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The CRI log's records: (stream, tag, content).
fn log_records(path: &Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let ts = f.next().unwrap_or_default();
            // RFC 3339 with nanoseconds: 2024-01-01T00:00:00.123456789Z (or an offset).
            assert!(
                ts.len() >= 20 && ts.as_bytes()[4] == b'-' && ts.as_bytes()[10] == b'T',
                "timestamp {ts:?} in {l:?}"
            );
            (
                f.next().unwrap_or_default().to_string(),
                f.next().unwrap_or_default().to_string(),
                f.next().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Polls `f` until it is true, for up to `within`.
async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// 1 ---------------------------------------------------------------------------------------

#[tokio::test]
async fn lifecycle_logs_status_exec_stop_remove_and_filters() {
    let env = Env::new("life").await;
    let pc = env.pod_config("life");
    let pod = env.run_pod(&pc).await;
    let host_dir = TempDir::new("berth-ctr-mount");
    std::fs::write(host_dir.path().join("hello"), "from the host\n").unwrap();

    let mut cfg = env.config(
        "main",
        &["sh", "-c", "echo out; echo err >&2; exec sleep 1000"],
    );
    cfg.labels.insert("app".into(), "life".into());
    cfg.annotations.insert("note".into(), "kept".into());
    cfg.mounts.push(cri::Mount {
        container_path: "/data".into(),
        host_path: host_dir.path().display().to_string(),
        readonly: true,
        ..Default::default()
    });
    let before = now_ns();
    let id = env.create(&pod, &pc, cfg).await.expect("create");
    assert_eq!(id.len(), 64, "{id}");

    let l = env.list(None).await;
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(l[0].id, id);
    assert_eq!(l[0].pod_sandbox_id, pod);
    assert_eq!(l[0].state, cri::ContainerState::ContainerCreated as i32);
    assert!(l[0].created_at >= before, "{l:?}");
    let st = env.status(&id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerCreated as i32);
    assert_eq!(st.started_at, 0);

    env.start(&id).await.expect("start");
    let st = env.status(&id).await;
    assert_eq!(
        st.state,
        cri::ContainerState::ContainerRunning as i32,
        "{st:?}"
    );
    assert!(
        st.started_at >= st.created_at && st.created_at >= before,
        "{st:?}"
    );
    assert_eq!(st.finished_at, 0);

    // Status fields.
    let img = env
        .d
        .images()
        .await
        .image_status(cri::ImageStatusRequest {
            image: spec(&env.image),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .expect("image present");
    assert_eq!(st.metadata.as_ref().unwrap().name, "main");
    assert_eq!(st.image.as_ref().unwrap().image, env.image);
    assert_eq!(st.image_id, img.id);
    assert!(
        img.repo_digests.contains(&st.image_ref),
        "image_ref {} among {:?}",
        st.image_ref,
        img.repo_digests
    );
    assert_eq!(st.labels.get("app").map(String::as_str), Some("life"));
    assert_eq!(st.annotations.get("note").map(String::as_str), Some("kept"));
    assert_eq!(st.mounts.len(), 1, "{:?}", st.mounts);
    assert_eq!(st.mounts[0].container_path, "/data");
    assert!(st.mounts[0].readonly);
    assert_eq!(
        Path::new(&st.mounts[0].host_path),
        std::fs::canonicalize(host_dir.path()).unwrap()
    );
    let log_path = Path::new(&pc.log_directory).join("main/0.log");
    assert_eq!(st.log_path, log_path.display().to_string());
    let user = st.user.as_ref().unwrap().linux.as_ref().unwrap();
    assert_eq!(user.uid, 0);
    assert_eq!(user.gid, 0);

    // The CRI log: one full record per stream.
    assert!(
        eventually(Duration::from_secs(5), || log_records(&log_path).len() >= 2).await,
        "log records: {:?}",
        std::fs::read_to_string(&log_path)
    );
    let mut recs = log_records(&log_path);
    recs.sort();
    assert_eq!(
        recs,
        vec![
            ("stderr".into(), "F".into(), "err".into()),
            ("stdout".into(), "F".into(), "out".into()),
        ]
    );

    // Exec.
    let r = env.exec(&id, &["echo", "hi"], 5).await.expect("exec echo");
    assert_eq!((r.stdout.as_slice(), r.exit_code), (&b"hi\n"[..], 0));
    assert!(r.stderr.is_empty());
    let r = env
        .exec(&id, &["sh", "-c", "echo e >&2; exit 7"], 5)
        .await
        .unwrap();
    assert_eq!((r.exit_code, r.stderr.as_slice()), (7, &b"e\n"[..]));
    let r = env.exec(&id, &["cat", "/data/hello"], 5).await.unwrap();
    assert_eq!(r.stdout, b"from the host\n");
    let r = env.exec(&id, &["id", "-u"], 5).await.unwrap();
    assert_eq!(r.stdout, b"0\n");

    // A second container for the filters.
    let mut cfg2 = env.config("other", &["sleep", "1000"]);
    cfg2.labels.insert("app".into(), "other".into());
    let id2 = env.create(&pod, &pc, cfg2).await.expect("create other");
    let filter = |f: cri::ContainerFilter| Some(f);
    let ids = |l: Vec<cri::Container>| l.into_iter().map(|c| c.id).collect::<Vec<_>>();
    assert_eq!(env.list(None).await.len(), 2);
    assert_eq!(
        ids(env
            .list(filter(cri::ContainerFilter {
                id: id[..12].into(),
                ..Default::default()
            }))
            .await),
        vec![id.clone()]
    );
    assert_eq!(
        ids(env
            .list(filter(cri::ContainerFilter {
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerRunning as i32
                }),
                ..Default::default()
            }))
            .await),
        vec![id.clone()]
    );
    assert_eq!(
        ids(env
            .list(filter(cri::ContainerFilter {
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerCreated as i32
                }),
                ..Default::default()
            }))
            .await),
        vec![id2.clone()]
    );
    assert_eq!(
        env.list(filter(cri::ContainerFilter {
            pod_sandbox_id: pod.clone(),
            ..Default::default()
        }))
        .await
        .len(),
        2
    );
    assert!(
        env.list(filter(cri::ContainerFilter {
            pod_sandbox_id: "0000000000000000".into(),
            ..Default::default()
        }))
        .await
        .is_empty()
    );
    assert_eq!(
        ids(env
            .list(filter(cri::ContainerFilter {
                label_selector: [("app".to_string(), "other".to_string())].into(),
                ..Default::default()
            }))
            .await),
        vec![id2.clone()]
    );
    assert!(
        env.list(filter(cri::ContainerFilter {
            label_selector: [("app".to_string(), "none".to_string())].into(),
            ..Default::default()
        }))
        .await
        .is_empty()
    );
    // A unique prefix names the container for status as well.
    assert_eq!(env.status(&id[..12]).await.id, id);

    // Stop: SIGTERM kills `sleep` (not PID 1: the pod shares its PID namespace).
    let pid = env.info(&id).await["pid"].as_u64().expect("pid") as u32;
    assert!(
        alive(pid) && cmdline(pid) == "sleep 1000",
        "{pid}: {}",
        cmdline(pid)
    );
    // (The leak checks find container processes by their root: this one is found.)
    assert!(
        procs_rooted_under(env.d.dir.path())
            .iter()
            .any(|(p, _)| *p == pid),
        "{:?}",
        procs_rooted_under(env.d.dir.path())
    );
    let t = Instant::now();
    env.stop(&id, 2).await;
    assert!(
        t.elapsed() < Duration::from_millis(1900),
        "stopped by SIGTERM, not SIGKILL"
    );
    let st = env.status(&id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!((st.exit_code, st.reason.as_str()), (143, "Error"), "{st:?}");
    assert!(st.finished_at >= st.started_at);
    assert!(!alive(pid));
    env.stop(&id, 2).await; // idempotent
    let err = env.exec(&id, &["true"], 5).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());

    // Remove: gone, twice is fine; its writable layer and bundle go with it.
    env.remove(&id).await;
    env.remove(&id).await;
    let err = env.status_verbose(&id).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    assert_eq!(ids(env.list(None).await), vec![id2.clone()]);
    assert_eq!(env.container_dirs(), vec![id2.clone()]);
    // A created, never started container: stop and remove.
    env.stop(&id2, 0).await;
    env.remove(&id2).await;
    assert!(env.list(None).await.is_empty());
    assert!(env.container_dirs().is_empty());
    let bundles = env.d.state.join("pods").join(&pod).join("containers");
    assert!(entries(&bundles).is_empty(), "{:?}", entries(&bundles));
    // Unknown ids: stop and remove are no-ops, status NotFound.
    env.stop("no-such-container", 1).await;
    env.remove("no-such-container").await;
    assert_eq!(
        env.status_verbose("no-such-container")
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    env.remove_pod(&pod).await;
    env.assert_nothing_left().await;
    // The bind-mounted host directory is the host's: left alone.
    assert!(host_dir.path().join("hello").exists());
}

// 2 ---------------------------------------------------------------------------------------

#[tokio::test]
async fn exit_codes_and_reasons() {
    let env = Env::new("exit").await;
    let pc = env.pod_config("exit");
    let pod = env.run_pod(&pc).await;
    let three = env
        .run(
            &pod,
            &pc,
            env.config("three", &["sh", "-c", "echo bye; echo oops >&2; exit 3"]),
        )
        .await;
    let zero = env.run(&pod, &pc, env.config("zero", &["true"])).await;
    for (id, code, reason) in [(&three, 3, "Error"), (&zero, 0, "Completed")] {
        let st = env.wait_exited(id, Duration::from_secs(10)).await;
        assert_eq!((st.exit_code, st.reason.as_str()), (code, reason), "{st:?}");
        assert!(st.started_at > 0, "{st:?}");
        assert!(st.finished_at >= st.started_at, "{st:?}");
        assert!(st.started_at >= st.created_at, "{st:?}");
        // Status again: the same answer (the record, not a fresh guess).
        let again = env.status(id).await;
        assert_eq!(
            (again.exit_code, again.finished_at, again.reason.clone()),
            (st.exit_code, st.finished_at, st.reason.clone())
        );
    }
    // What a container wrote just before it exited is in its log.
    let mut recs = log_records(Path::new(&env.status(&three).await.log_path));
    recs.sort();
    assert_eq!(
        recs,
        vec![
            ("stderr".into(), "F".into(), "oops".into()),
            ("stdout".into(), "F".into(), "bye".into()),
        ]
    );
    let exited = env
        .list(Some(cri::ContainerFilter {
            state: Some(cri::ContainerStateValue {
                state: cri::ContainerState::ContainerExited as i32,
            }),
            ..Default::default()
        }))
        .await;
    assert_eq!(exited.len(), 2);

    // In a PID namespace of its own `sleep` is PID 1, which the kernel shields from
    // SIGTERM: StopContainer sends SIGKILL once the timeout is over.
    let mut cfg = env.config("pid1", &["sleep", "1000"]);
    cfg.linux.as_mut().unwrap().security_context = Some(cri::LinuxContainerSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            pid: cri::NamespaceMode::Container as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    let pid1 = env.run(&pod, &pc, cfg).await;
    let r = env
        .exec(&pid1, &["cat", "/proc/1/cmdline"], 5)
        .await
        .unwrap();
    assert_eq!(r.stdout, b"sleep\x001000\x00");
    let t = Instant::now();
    env.stop(&pid1, 1).await;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "stop took {took:?}"
    );
    let st = env.status(&pid1).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (137, "Error"), "{st:?}");

    env.remove(&three).await;
    env.remove(&zero).await;
    env.remove(&pid1).await;
    env.remove_pod(&pod).await;
    env.assert_nothing_left().await;
}

// 3 ---------------------------------------------------------------------------------------

#[tokio::test]
async fn exec_sync_timeout_kills_the_command() {
    let env = Env::new("exto").await;
    let pc = env.pod_config("exto");
    let pod = env.run_pod(&pc).await;
    let id = env
        .run(&pod, &pc, env.config("c", &["sleep", "1000"]))
        .await;
    let cgroup = env.info(&id).await["cgroup"]
        .as_str()
        .expect("cgroup")
        .to_string();
    let procs = env.cgroup_dir("pids", &cgroup);
    assert_eq!(
        cgroup_procs(&procs).len(),
        1,
        "only the container's process"
    );

    let t = Instant::now();
    let err = env.exec(&id, &["sleep", "10"], 1).await.unwrap_err();
    let took = t.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{}", err.message());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "answered after {took:?}"
    );
    // The command is gone: only the container's own process is left in its cgroup, and
    // no `sleep 10` runs anywhere in the container.
    assert!(
        eventually(Duration::from_secs(1), || cgroup_procs(&procs).len() == 1).await,
        "processes in the container's cgroup: {:?}",
        cgroup_procs(&procs)
            .iter()
            .map(|p| (p, cmdline(*p)))
            .collect::<Vec<_>>()
    );
    let left: Vec<_> = procs_rooted_under(env.d.dir.path())
        .into_iter()
        .filter(|(_, c)| c == "sleep 10")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let r = env.exec(&id, &["pidof", "sleep"], 5).await.unwrap();
    let pids = String::from_utf8_lossy(&r.stdout).trim().to_string();
    assert_eq!(pids.split_whitespace().count(), 1, "pidof sleep: {pids:?}");

    // A command within its timeout is unaffected; timeout 0 is no timeout.
    let r = env.exec(&id, &["sleep", "1"], 0).await.unwrap();
    assert_eq!(r.exit_code, 0);
    env.remove(&id).await;
    env.remove_pod(&pod).await;
    env.assert_nothing_left().await;
}

/// An exec takes HOME from the container's `/etc/passwd`, which the container may have
/// replaced with anything: a FIFO there must not hang the exec (or its pod's shim, which
/// waits for the exec to start).
#[tokio::test]
async fn exec_home_comes_from_the_containers_passwd_and_a_fifo_there_hangs_nothing() {
    let env = Env::new("exhome").await;
    let pc = env.pod_config("exhome");
    let pod = env.run_pod(&pc).await;
    let mut cfg = env.config("c", &["sleep", "1000"]);
    cfg.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .run_as_username = "www-data".into();
    let id = env.run(&pod, &pc, cfg).await;

    let r = env
        .exec(&id, &["sh", "-c", "id -u; echo \"[$HOME]\""], 5)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "33\n[/var/www]\n",
        "{r:?}"
    );

    // The container's root may write its own /etc/passwd; make it a FIFO.
    let root = env
        .run(&pod, &pc, env.config("r", &["sleep", "1000"]))
        .await;
    let r = env
        .exec(
            &root,
            &["sh", "-c", "rm /etc/passwd && mkfifo /etc/passwd"],
            5,
        )
        .await
        .unwrap();
    assert_eq!(r.exit_code, 0, "{r:?}");
    // Within the exec's timeout (5 s), or ExecSync fails with DeadlineExceeded.
    let r = env
        .exec(&root, &["sh", "-c", "echo \"[$HOME]\""], 5)
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&r.stdout), "[]\n", "{r:?}");
    // The shim still answers for both containers.
    assert_eq!(
        env.status(&id).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    env.remove(&id).await;
    env.remove(&root).await;
    env.remove_pod(&pod).await;
    env.assert_nothing_left().await;
}

/// CreateContainer, StartContainer and StopContainer abandoned at their deadlines (kubelet
/// and crictl give up on slow RPCs) leave nothing that removing the pod does not remove.
#[tokio::test]
async fn abandoned_container_rpcs_leave_nothing_behind() {
    let env = Env::new("cut").await;
    let pc = env.pod_config("cut");
    let pod = env.run_pod(&pc).await;
    let mut cut = 0;
    for (n, delay_ms) in [1u64, 3, 6, 10, 20].into_iter().enumerate() {
        let timeout = Duration::from_millis(delay_ms);
        let mut req = tonic::Request::new(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(env.config(&format!("c{n}"), &["sleep", "1000"])),
            sandbox_config: Some(pc.clone()),
        });
        req.set_timeout(timeout);
        let id = match env.d.runtime().await.create_container(req).await {
            Ok(id) => id,
            Err(e) => {
                // tonic's own timer (Cancelled) or berthd's answer to the deadline.
                assert!(
                    matches!(e.code(), Code::Cancelled | Code::DeadlineExceeded),
                    "{e:?}"
                );
                cut += 1;
                continue;
            }
        };
        let id = id.into_inner().container_id;
        let mut req = tonic::Request::new(cri::StartContainerRequest {
            container_id: id.clone(),
        });
        req.set_timeout(timeout);
        let _ = env.d.runtime().await.start_container(req).await;
        let mut req = tonic::Request::new(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        });
        req.set_timeout(timeout);
        let _ = env.d.runtime().await.stop_container(req).await;
    }
    assert!(cut > 0, "no CreateContainer was cut by its deadline");
    env.remove_pod(&pod).await;
    env.assert_nothing_left().await;
}

// 4 ---------------------------------------------------------------------------------------

#[tokio::test]
async fn oom_kill_is_reported_as_oomkilled_137() {
    let env = Env::new("oom").await;
    let pc = env.pod_config("oom");
    let pod = env.run_pod(&pc).await;
    let mut cfg = env.config(
        "hog",
        &[
            "sh",
            "-c",
            "x=$(head -c 64m /dev/zero | tr '\\0' a); echo survived",
        ],
    );
    cfg.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
        memory_limit_in_bytes: 16 << 20,
        ..Default::default()
    });
    let id = env.run(&pod, &pc, cfg).await;
    let st = env.wait_exited(&id, Duration::from_secs(20)).await;
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (137, "OOMKilled"),
        "{st:?}"
    );
    let log = std::fs::read_to_string(&st.log_path).unwrap_or_default();
    assert!(!log.contains("survived"), "{log}");
    env.remove(&id).await;
    env.remove_pod(&pod).await;
    env.assert_nothing_left().await;
}

// 5 ---------------------------------------------------------------------------------------

#[tokio::test]
async fn containers_survive_a_berthd_crash_and_exits_during_it_are_recorded() {
    let mut env = Env::new("crash").await;
    let mut running = Vec::new();
    for i in 0..3 {
        let pc = env.pod_config(&format!("crash-{i}"));
        let pod = env.run_pod(&pc).await;
        let id = env
            .run(&pod, &pc, env.config("sleeper", &["sleep", "1000"]))
            .await;
        let pid = env.info(&id).await["pid"].as_u64().expect("pid") as u32;
        assert!(alive(pid));
        running.push((pod, id, pid));
    }
    let pc = env.pod_config("crash-exit");
    let exit_pod = env.run_pod(&pc).await;
    let quitter = env
        .run(
            &exit_pod,
            &pc,
            env.config("quitter", &["sh", "-c", "sleep 2; exit 5"]),
        )
        .await;
    assert_eq!(
        env.status(&quitter).await.state,
        cri::ContainerState::ContainerRunning as i32
    );

    // Created before the crash, started after it.
    let late = env
        .create(&exit_pod, &pc, env.config("late", &["sleep", "1000"]))
        .await
        .expect("create late");

    let killed_at = now_ns();
    env.d.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (_, _, pid) in &running {
        assert!(alive(*pid), "container process {pid} outlives berthd");
    }
    let restarted_at = now_ns();
    env.d.restart();
    wait_listening(&env.d).await;

    for (_, id, pid) in &running {
        let st = env.status(id).await;
        assert_eq!(
            st.state,
            cri::ContainerState::ContainerRunning as i32,
            "{st:?}"
        );
        assert_eq!(env.info(id).await["pid"].as_u64(), Some(u64::from(*pid)));
        assert!(alive(*pid), "{pid}");
        assert_eq!(cmdline(*pid), "sleep 1000");
        // And berthd can still talk to it.
        let r = env
            .exec(id, &["echo", "back"], 5)
            .await
            .expect("exec after restart");
        assert_eq!(r.stdout, b"back\n");
    }
    let st = env.status(&quitter).await;
    assert_eq!(
        st.state,
        cri::ContainerState::ContainerExited as i32,
        "{st:?}"
    );
    assert_eq!((st.exit_code, st.reason.as_str()), (5, "Error"), "{st:?}");
    assert!(
        st.finished_at > killed_at && st.finished_at < restarted_at,
        "finished_at {} not within the outage [{killed_at}, {restarted_at}]",
        st.finished_at
    );
    assert!(st.finished_at - st.started_at >= 1_900_000_000, "{st:?}");
    let st = env.status(&late).await;
    assert_eq!(
        st.state,
        cri::ContainerState::ContainerCreated as i32,
        "{st:?}"
    );
    env.start(&late).await.expect("start after the restart");
    let r = env.exec(&late, &["echo", "late"], 5).await.unwrap();
    assert_eq!(r.stdout, b"late\n");

    for (pod, id, pid) in &running {
        env.stop(id, 2).await;
        assert!(!alive(*pid));
        env.remove(id).await;
        env.remove_pod(pod).await;
    }
    env.remove(&quitter).await;
    env.remove(&late).await;
    env.remove_pod(&exit_pod).await;
    env.assert_nothing_left().await;
}

// 6 ---------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_input_gets_clear_errors_and_leaks_nothing() {
    let env = Env::new("bad").await;
    let pc = env.pod_config("bad");
    let pod = env.run_pod(&pc).await;
    let bundles = env.d.state.join("pods").join(&pod).join("containers");
    let pod_cgroup = env.cg.parent("bad");
    let pod_pids = env.cg.pids();
    let scratch = TempDir::new("berth-ctr-bad");
    let file = scratch.path().join("file");
    std::fs::write(&file, "x").unwrap();

    let check_clean = |what: &str| {
        let what = what.to_string();
        let env = &env;
        let bundles = bundles.clone();
        let pod_pids = pod_pids.clone();
        let pod_cgroup = pod_cgroup.clone();
        async move {
            assert!(env.list(None).await.is_empty(), "{what}: container listed");
            let m: Vec<_> = mounts_under(&bundles);
            assert!(m.is_empty(), "{what}: mounts left: {m:?}");
            assert!(entries(&bundles).is_empty(), "{what}: bundles left");
            assert!(
                env.container_dirs().is_empty(),
                "{what}: container dirs left"
            );
            let procs = procs_rooted_under(env.d.dir.path());
            assert!(procs.is_empty(), "{what}: processes left: {procs:?}");
            assert_eq!(
                env.cg.pids(),
                pod_pids,
                "{what}: processes in the pod's cgroups"
            );
            let sub = entries(&env.cgroup_dir("memory", &pod_cgroup))
                .into_iter()
                .filter(|e| env.cgroup_dir("memory", &pod_cgroup).join(e).is_dir())
                .collect::<Vec<_>>();
            assert!(sub.is_empty(), "{what}: container cgroups left: {sub:?}");
        }
    };

    // Unknown image.
    let mut c = env.config("c", &["true"]);
    c.image = spec("127.0.0.1:1/no/such:image");
    let err = env.create(&pod, &pc, c).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    assert!(err.message().contains("no/such"), "{}", err.message());
    check_clean("unknown image").await;

    // Unknown pod.
    let err = env
        .create("0123456789abcdef", &pc, env.config("c", &["true"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    assert!(
        err.message().contains("0123456789abcdef"),
        "{}",
        err.message()
    );
    check_clean("unknown pod").await;

    // Bad mount sources: a relative path; a path under a regular file.
    for (src, what) in [
        ("relative/dir".to_string(), "relative host path"),
        (
            file.join("sub").display().to_string(),
            "host path under a file",
        ),
    ] {
        let mut c = env.config("c", &["true"]);
        c.mounts.push(cri::Mount {
            container_path: "/m".into(),
            host_path: src.clone(),
            ..Default::default()
        });
        let err = env.create(&pod, &pc, c).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{what}: {}",
            err.message()
        );
        assert!(err.message().contains(&src), "{what}: {}", err.message());
        check_clean(what).await;
    }

    // An invalid capability.
    let mut c = env.config("c", &["true"]);
    c.linux.as_mut().unwrap().security_context = Some(cri::LinuxContainerSecurityContext {
        capabilities: Some(cri::Capability {
            add_capabilities: vec!["CAP_NOPE".into()],
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = env.create(&pod, &pc, c).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("CAP_NOPE"), "{}", err.message());
    check_clean("invalid capability").await;

    // A missing seccomp Localhost profile.
    let profile = scratch.path().join("no-such-profile.json");
    let mut c = env.config("c", &["true"]);
    c.linux.as_mut().unwrap().security_context = Some(cri::LinuxContainerSecurityContext {
        seccomp: Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::Localhost as i32,
            localhost_ref: profile.display().to_string(),
        }),
        ..Default::default()
    });
    let err = env.create(&pod, &pc, c).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    assert!(
        err.message().contains("no-such-profile.json"),
        "{}",
        err.message()
    );
    check_clean("missing seccomp profile").await;

    // A command that is not in the image: refused at create (the shim's init checks it
    // before it reports ready), naming the command.
    let err = env
        .create(&pod, &pc, env.config("c", &["/no/such/binary"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        err.message().contains("/no/such/binary"),
        "{}",
        err.message()
    );
    check_clean("missing command").await;
    let err = env
        .create(&pod, &pc, env.config("c", &["no-such-cmd"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("no-such-cmd"), "{}", err.message());
    check_clean("command not in $PATH").await;

    // After all that, the pod still works.
    let id = env
        .run(&pod, &pc, env.config("c", &["sleep", "1000"]))
        .await;
    let r = env.exec(&id, &["echo", "ok"], 5).await.unwrap();
    assert_eq!(r.stdout, b"ok\n");
    env.remove(&id).await;
    check_clean("after a good container").await;
    env.remove_pod(&pod).await;
    env.assert_nothing_left().await;
}

// 7 ---------------------------------------------------------------------------------------

#[tokio::test]
async fn update_container_resources_writes_the_cgroup() {
    let env = Env::new("upd").await;
    let pc = env.pod_config("upd");
    let pod = env.run_pod(&pc).await;
    let mut cfg = env.config("c", &["sleep", "1000"]);
    cfg.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
        cpu_shares: 256,
        memory_limit_in_bytes: 128 << 20,
        ..Default::default()
    });
    let id = env.run(&pod, &pc, cfg).await;
    let cgroup = env.info(&id).await["cgroup"]
        .as_str()
        .expect("cgroup")
        .to_string();
    assert!(
        cgroup.starts_with(&env.cg.parent("upd")),
        "{cgroup} under the pod's cgroup"
    );
    let read = |ctrl: &str, file: &str| {
        std::fs::read_to_string(env.cgroup_dir(ctrl, &cgroup).join(file))
            .unwrap_or_else(|e| panic!("{ctrl}/{cgroup}/{file}: {e}"))
            .trim()
            .to_string()
    };
    assert_eq!(read("cpu", "cpu.shares"), "256");
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (128u64 << 20).to_string()
    );

    let new = cri::LinuxContainerResources {
        cpu_shares: 512,
        memory_limit_in_bytes: 64 << 20,
        cpu_period: 100_000,
        cpu_quota: 50_000,
        ..Default::default()
    };
    env.d
        .runtime()
        .await
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(new.clone()),
            ..Default::default()
        })
        .await
        .expect("update");
    assert_eq!(read("cpu", "cpu.shares"), "512");
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
    let st = env.status(&id).await;
    let r = st.resources.unwrap().linux.unwrap();
    assert_eq!(
        (r.cpu_shares, r.memory_limit_in_bytes, r.cpu_quota),
        (512, 64 << 20, 50_000)
    );
    // With swap accounting (memory.memsw.*), the container was created with mem+swap =
    // its memory limit (no swap, as containerd does): an update keeps them equal.
    let memsw = env
        .cgroup_dir("memory", &cgroup)
        .join("memory.memsw.limit_in_bytes")
        .exists();
    if memsw {
        assert_eq!(
            read("memory", "memory.memsw.limit_in_bytes"),
            (64u64 << 20).to_string(),
            "mem+swap follows the memory limit down"
        );
    }

    // Raising the memory limit above the one the container was created with (in-place
    // resize): mem+swap must go up first on cgroup v1, or the kernel refuses the write.
    let up = cri::LinuxContainerResources {
        cpu_shares: 512,
        memory_limit_in_bytes: 256 << 20,
        ..Default::default()
    };
    env.d
        .runtime()
        .await
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(up),
            ..Default::default()
        })
        .await
        .expect("raise the memory limit to 256 MiB");
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (256u64 << 20).to_string()
    );
    if memsw {
        assert_eq!(
            read("memory", "memory.memsw.limit_in_bytes"),
            (256u64 << 20).to_string()
        );
    }
    // Unknown container: NotFound.
    let err = env
        .d
        .runtime()
        .await
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: "no-such-container".into(),
            linux: Some(new),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    env.remove(&id).await;
    assert!(
        !env.cgroup_dir("memory", &cgroup).exists(),
        "container cgroup removed"
    );
    env.remove_pod(&pod).await;
    env.assert_nothing_left().await;
}

// 8 ---------------------------------------------------------------------------------------

#[tokio::test]
async fn container_stats_report_cpu_memory_and_writable_layer() {
    let env = Env::new("stats").await;
    let pc = env.pod_config("stats");
    let pod = env.run_pod(&pc).await;
    let mut cfg = env.config(
        "busy",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec sleep 1000",
        ],
    );
    cfg.labels.insert("stats".into(), "yes".into());
    let id = env.run(&pod, &pc, cfg).await;
    let idle = env
        .run(&pod, &pc, env.config("idle", &["sleep", "1000"]))
        .await;
    let r = env
        .exec(
            &id,
            &["dd", "if=/dev/zero", "of=/written", "bs=4096", "count=256"],
            10,
        )
        .await
        .unwrap();
    assert_eq!(r.exit_code, 0, "{}", String::from_utf8_lossy(&r.stderr));
    // The busy loop has run.
    let mut rt = env.d.runtime().await;
    let mut stats = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let s = rt
            .container_stats(cri::ContainerStatsRequest {
                container_id: id.clone(),
            })
            .await
            .expect("container stats")
            .into_inner()
            .stats
            .unwrap();
        if s.cpu
            .as_ref()
            .and_then(|c| c.usage_core_nano_seconds.as_ref())
            .map(|v| v.value)
            > Some(10_000_000)
        {
            stats = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = stats.expect("cpu usage grows past 10 ms");
    assert_eq!(s.attributes.as_ref().unwrap().id, id);
    assert_eq!(s.attributes.as_ref().unwrap().labels["stats"], "yes");
    let ws = s
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map(|v| v.value);
    assert!(ws > Some(0), "working set {ws:?}");
    let wl = s.writable_layer.as_ref().unwrap();
    let used = wl.used_bytes.as_ref().map(|v| v.value).unwrap_or(0);
    assert!(
        used >= 1 << 20,
        "writable layer {used} bytes after a 1 MiB file"
    );
    assert!(wl.inodes_used.as_ref().map(|v| v.value) >= Some(1));

    let list = rt
        .list_container_stats(cri::ListContainerStatsRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .stats;
    let mut listed: Vec<_> = list
        .iter()
        .map(|s| s.attributes.as_ref().unwrap().id.clone())
        .collect();
    listed.sort();
    let mut want = vec![id.clone(), idle.clone()];
    want.sort();
    assert_eq!(listed, want);
    let by_label = rt
        .list_container_stats(cri::ListContainerStatsRequest {
            filter: Some(cri::ContainerStatsFilter {
                label_selector: [("stats".to_string(), "yes".to_string())].into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(by_label.len(), 1);
    assert_eq!(by_label[0].attributes.as_ref().unwrap().id, id);
    let idle_used = list
        .iter()
        .find(|s| s.attributes.as_ref().unwrap().id == idle)
        .and_then(|s| s.writable_layer.as_ref()?.used_bytes.as_ref())
        .map(|v| v.value)
        .unwrap_or(0);
    assert!(idle_used < used, "idle {idle_used} < written {used}");

    let err = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: "no-such-container".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    env.remove(&id).await;
    env.remove(&idle).await;
    env.remove_pod(&pod).await;
    env.assert_nothing_left().await;
}

// 9 ---------------------------------------------------------------------------------------

#[tokio::test]
async fn container_events_arrive_in_order() {
    use futures_util::StreamExt;
    let env = Env::new("events").await;
    let pc = env.pod_config("events");
    let pod = env.run_pod(&pc).await;
    let mut stream = env
        .d
        .runtime()
        .await
        .get_container_events(cri::GetEventsRequest {})
        .await
        .expect("subscribe")
        .into_inner();
    let id = env
        .run(&pod, &pc, env.config("c", &["sleep", "1000"]))
        .await;
    env.stop(&id, 2).await;
    env.remove(&id).await;

    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("events so far: {got:?}"))
            .expect("stream open")
            .expect("event");
        if ev.container_id != id {
            continue;
        }
        assert_eq!(
            ev.pod_sandbox_status.as_ref().map(|p| p.id.as_str()),
            Some(pod.as_str())
        );
        assert!(ev.created_at > 0);
        let t = cri::ContainerEventType::try_from(ev.container_event_type).unwrap();
        got.push(t);
        if t == cri::ContainerEventType::ContainerDeletedEvent {
            break;
        }
    }
    // Anything after DELETED for this id would be wrong too; give it a moment.
    while let Ok(Some(Ok(ev))) =
        tokio::time::timeout(Duration::from_millis(300), stream.next()).await
    {
        if ev.container_id == id {
            got.push(cri::ContainerEventType::try_from(ev.container_event_type).unwrap());
        }
    }
    use cri::ContainerEventType as E;
    assert_eq!(
        got,
        vec![
            E::ContainerCreatedEvent,
            E::ContainerStartedEvent,
            E::ContainerStoppedEvent,
            E::ContainerDeletedEvent
        ]
    );

    // A container that exits by itself while its status is being polled (as kubelet
    // polls): still one STOPPED.
    let id = env
        .run(&pod, &pc, env.config("quick", &["sh", "-c", "sleep 0.3"]))
        .await;
    let poller = {
        let mut rt = env.d.runtime().await;
        let id = id.clone();
        tokio::spawn(async move {
            for _ in 0..40 {
                let _ = rt
                    .container_status(cri::ContainerStatusRequest {
                        container_id: id.clone(),
                        verbose: false,
                    })
                    .await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let _ = env.wait_exited(&id, Duration::from_secs(10)).await;
    poller.await.unwrap();
    env.remove(&id).await;
    let mut got = Vec::new();
    while let Ok(Some(Ok(ev))) =
        tokio::time::timeout(Duration::from_millis(500), stream.next()).await
    {
        if ev.container_id == id {
            got.push(cri::ContainerEventType::try_from(ev.container_event_type).unwrap());
        }
    }
    assert_eq!(
        got,
        vec![
            E::ContainerCreatedEvent,
            E::ContainerStartedEvent,
            E::ContainerStoppedEvent,
            E::ContainerDeletedEvent
        ],
        "a container that exits by itself"
    );

    drop(stream);
    env.remove_pod(&pod).await;
    env.assert_nothing_left().await;
}

// 12 --------------------------------------------------------------------------------------

/// kubelet creates containers with the image's ID (what PullImage returned) and the
/// user's reference in `user_specified_image`; containerd's ContainerStatus then names
/// the image by its first repo tag and its ref by repo digest (what `crictl inspect` and
/// kubelet's `status.containerStatuses[].image` show), while ListContainers gives the
/// config's image back.
#[tokio::test]
async fn a_container_created_by_image_id_reports_the_tag() {
    let env = Env::new("byid").await;
    let pc = env.pod_config("byid");
    let pod = env.run_pod(&pc).await;
    let img = env
        .d
        .images()
        .await
        .image_status(cri::ImageStatusRequest {
            image: spec(&env.image),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .expect("image present");
    let mut cfg = env.config("c", &["sleep", "1000"]);
    cfg.image = Some(cri::ImageSpec {
        image: img.id.clone(),
        user_specified_image: env.image.clone(),
        ..Default::default()
    });
    let id = env.run(&pod, &pc, cfg).await;
    let st = env.status(&id).await;
    assert_eq!(st.image_id, img.id);
    assert!(img.repo_digests.contains(&st.image_ref), "{st:?}");
    let l = env.list(None).await;
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].image_id, img.id);
    // ListContainers gives the config's image back (containerd's toCRIContainer).
    assert_eq!(l[0].image.as_ref().unwrap().image, img.id);
    assert_eq!(
        st.image.as_ref().unwrap().image,
        env.image,
        "ContainerStatus image: the first repo tag, as containerd reports it"
    );
    env.remove(&id).await;
    env.remove_pod(&pod).await;
    env.assert_nothing_left().await;
}

// 10 --------------------------------------------------------------------------------------

#[tokio::test]
async fn reopen_container_log_starts_a_new_file() {
    let env = Env::new("reopen").await;
    let pc = env.pod_config("reopen");
    let pod = env.run_pod(&pc).await;
    let id = env
        .run(
            &pod,
            &pc,
            env.config(
                "talker",
                &[
                    "sh",
                    "-c",
                    "i=0; while true; do echo line$i; i=$((i+1)); usleep 100000; done",
                ],
            ),
        )
        .await;
    let log = PathBuf::from(env.status(&id).await.log_path);
    assert!(
        eventually(Duration::from_secs(5), || log_records(&log).len() >= 3).await,
        "no output in {}",
        log.display()
    );
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    env.d
        .runtime()
        .await
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .expect("reopen");
    assert!(
        eventually(Duration::from_secs(5), || log_records(&log).len() >= 3).await,
        "no output in the new {}",
        log.display()
    );
    // The rotated file is no longer written to; the new one continues the sequence.
    let old = log_records(&rotated);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(log_records(&rotated), old, "the rotated file still grows");
    let last_old: u32 = old
        .last()
        .unwrap()
        .2
        .trim_start_matches("line")
        .parse()
        .unwrap();
    let new = log_records(&log);
    let first_new: u32 = new[0].2.trim_start_matches("line").parse().unwrap();
    assert!(first_new > last_old, "{last_old} then {first_new}");
    assert!(
        new.iter().all(|(s, t, _)| s == "stdout" && t == "F"),
        "{new:?}"
    );

    // Not running: FailedPrecondition.
    env.stop(&id, 0).await;
    let err = env
        .d
        .runtime()
        .await
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    env.remove(&id).await;
    env.remove_pod(&pod).await;
    env.assert_nothing_left().await;
}

// 11 --------------------------------------------------------------------------------------

#[tokio::test]
async fn removing_a_pod_removes_its_running_containers() {
    let env = Env::new("rmpod").await;
    let pc = env.pod_config("rmpod");
    let pod = env.run_pod(&pc).await;
    let a = env
        .run(&pod, &pc, env.config("a", &["sleep", "1000"]))
        .await;
    let b = env
        .run(&pod, &pc, env.config("b", &["sleep", "1000"]))
        .await;
    let created = env
        .create(&pod, &pc, env.config("never-started", &["sleep", "1000"]))
        .await
        .unwrap();
    let pids = [
        env.info(&a).await["pid"].as_u64().unwrap() as u32,
        env.info(&b).await["pid"].as_u64().unwrap() as u32,
    ];
    assert!(pids.iter().all(|p| alive(*p)));
    // No StopPodSandbox first: RemovePodSandbox forces it.
    env.d
        .runtime()
        .await
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("remove pod");
    for p in pids {
        assert!(!alive(p), "container process {p} killed");
    }
    for id in [&a, &b, &created] {
        let err = env.status_verbose(id).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{id}: {}", err.message());
    }
    env.assert_nothing_left().await;
}

// user namespaces ---------------------------------------------------------------------------

#[tokio::test]
async fn user_namespaced_pod_maps_root_and_owns_its_rootfs() {
    let env = Env::new("userns").await;
    // A host range no other test uses; the container's root is host 231072.
    let map = |c: u32, h: u32| {
        vec![cri::IdMapping {
            container_id: c,
            host_id: h,
            length: 65536,
        }]
    };
    let userns = |uids: Vec<cri::IdMapping>, gids: Vec<cri::IdMapping>| cri::NamespaceOption {
        userns_options: Some(cri::UserNamespace {
            mode: cri::NamespaceMode::Pod as i32,
            uids,
            gids,
        }),
        ..Default::default()
    };
    let mut pc = env.pod_config("userns");
    pc.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
        namespace_options: Some(userns(map(0, 231072), map(0, 231072))),
        ..Default::default()
    });
    let pod = env.run_pod(&pc).await;
    let script = "cat /proc/self/uid_map; id -u; stat -c %u:%g /bin/sh; \
                  echo x > /bin/made && stat -c %u /bin/made; ls /proc/1 >/dev/null && echo proc; \
                  stat -c %u /vol/f; touch /vol/new && echo vol";
    // A volume as kubelet gives it to a user-namespaced pod: with the pod's mappings, so
    // that host root's files are the container root's and back.
    let vol = TempDir::new("berth-userns-vol");
    std::fs::write(vol.path().join("f"), b"x").unwrap();
    let mut cfg = env.config("u", &["sh", "-c", script]);
    cfg.mounts = vec![cri::Mount {
        container_path: "/vol".into(),
        host_path: vol.path().display().to_string(),
        uid_mappings: map(0, 231072),
        gid_mappings: map(0, 231072),
        ..Default::default()
    }];
    cfg.linux.as_mut().unwrap().security_context = Some(cri::LinuxContainerSecurityContext {
        namespace_options: Some(userns(map(0, 231072), map(0, 231072))),
        ..Default::default()
    });
    let id = env.run(&pod, &pc, cfg).await;
    let st = env.wait_exited(&id, Duration::from_secs(10)).await;
    let out: Vec<String> = log_records(Path::new(&st.log_path))
        .into_iter()
        .map(|(_, _, l)| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    // Root in the pod is host 231072; the image's root-owned files are root's inside
    // (idmapped layers), and what the container writes is its root's.
    assert_eq!(
        out,
        vec!["0 231072 65536", "0", "0:0", "0", "proc", "0", "vol"],
        "{st:?}"
    );
    assert_eq!(std::fs::metadata(vol.path().join("new")).unwrap().uid(), 0);
    assert_eq!(st.exit_code, 0, "{st:?}");
    // On the host the new file belongs to the mapped root.
    let made = env.containers_dir().join(&id).join("upper/bin/made");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&made).unwrap().uid(), 231072);

    // The pod's user namespace is pinned in its state dir and owns its network namespace.
    let sleeper = env
        .run(&pod, &pc, env.config("sleeper", &["sleep", "1000"]))
        .await;
    let pid = env.info(&sleeper).await["pid"].as_u64().expect("pid") as u32;
    let host_userns = std::fs::read_link("/proc/self/ns/user").unwrap();
    let ctr_userns = std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
    assert_ne!(host_userns, ctr_userns);
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/uid_map"))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0", "231072", "65536"]
    );
    // An exec joins the container's user namespace too (as its root, not the host's), with
    // the container's capabilities, cgroup and PID namespace.
    let r = env
        .exec(
            &sleeper,
            &[
                "sh",
                "-c",
                "id -u; cat /proc/self/uid_map; grep CapEff /proc/self/status; \
                 readlink /proc/self/ns/pid; grep :pids: /proc/self/cgroup; \
                 touch /etc/by-exec; exit 4",
            ],
            5,
        )
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&r.stdout);
    let lines: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        r.exit_code,
        4,
        "{out} {}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(lines[0], "0", "{out}");
    assert_eq!(lines[1], "0 231072 65536", "{out}");
    // containerd's default set: no CAP_SYS_ADMIN (bit 21).
    let eff = u64::from_str_radix(lines[2].trim_start_matches("CapEff: "), 16).unwrap();
    assert_eq!(eff & (1 << 21), 0, "{out}");
    assert_ne!(eff, 0, "{out}");
    let pid_ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
    assert_eq!(lines[3], pid_ns.display().to_string(), "{out}");
    let by_exec = env
        .containers_dir()
        .join(&sleeper)
        .join("upper/etc/by-exec");
    assert_eq!(std::fs::metadata(&by_exec).unwrap().uid(), 231072);
    // The exec is in the container's cgroup (no cgroup namespace on v1: full paths).
    let init_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let init_pids = init_cgroup.lines().find(|l| l.contains(":pids:")).unwrap();
    assert_eq!(lines[4], init_pids, "{out}");
    let err = env
        .exec(&sleeper, &["no-such-command"], 5)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // Mappings the pod does not have, or the host's user namespace, are refused.
    let mut other = env.config("other", &["true"]);
    other.linux.as_mut().unwrap().security_context = Some(cri::LinuxContainerSecurityContext {
        namespace_options: Some(userns(map(0, 300000), map(0, 300000))),
        ..Default::default()
    });
    let err = env.create(&pod, &pc, other).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    env.stop(&sleeper, 0).await;
    env.remove(&sleeper).await;
    env.remove(&id).await;
    env.remove_pod(&pod).await;
    env.assert_nothing_left().await;
}

#[tokio::test]
async fn bad_user_namespace_requests_are_refused() {
    let env = Env::new("userns-bad").await;
    let m = |c: u32, h: u32| cri::IdMapping {
        container_id: c,
        host_id: h,
        length: 1000,
    };
    let cases: Vec<(&str, cri::NamespaceOption)> = vec![
        (
            "two mappings",
            cri::NamespaceOption {
                userns_options: Some(cri::UserNamespace {
                    mode: cri::NamespaceMode::Pod as i32,
                    uids: vec![m(0, 400000), m(0, 500000)],
                    gids: vec![m(0, 400000)],
                }),
                ..Default::default()
            },
        ),
        (
            "root unmapped",
            cri::NamespaceOption {
                userns_options: Some(cri::UserNamespace {
                    mode: cri::NamespaceMode::Pod as i32,
                    uids: vec![m(1, 400000)],
                    gids: vec![m(1, 400000)],
                }),
                ..Default::default()
            },
        ),
        (
            "container mode",
            cri::NamespaceOption {
                userns_options: Some(cri::UserNamespace {
                    mode: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
        (
            "host network",
            cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                userns_options: Some(cri::UserNamespace {
                    mode: cri::NamespaceMode::Pod as i32,
                    uids: vec![m(0, 400000)],
                    gids: vec![m(0, 400000)],
                }),
                ..Default::default()
            },
        ),
    ];
    for (what, ns) in cases {
        let mut pc = env.pod_config("bad");
        pc.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(ns),
            ..Default::default()
        });
        let err = env
            .d
            .runtime()
            .await
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pc),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
    }
    env.assert_nothing_left().await;
}

// cgroup v1 mounts in a shared PID namespace ------------------------------------------------

/// The pid of a host process in its innermost PID namespace (the last `NSpid` field).
fn innermost_pid(host_pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{host_pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

fn host_has_pid(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// libcontainer 0.7 builds its emulated v1 cgroup mount from the host's
/// `/proc/<init's pid in its own PID namespace>/cgroup`: in a pod's shared PID namespace a
/// container whose init gets a pid that no host process has failed to create ("failed to
/// prepare rootfs"). berth now emits the emulation itself; every container must start,
/// and see only its own cgroups under `/sys/fs/cgroup`, read-only unless privileged.
#[tokio::test]
async fn shared_pid_namespace_containers_get_their_own_v1_cgroups() {
    if Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
        eprintln!("cgroup v2 host: the v1 cgroup mount emulation does not apply");
        return;
    }
    let env = Env::new("pidns-cg").await;
    let shared_pid = || cri::NamespaceOption {
        pid: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    };
    let mut pc = env.pod_config("pidns-cg");
    pc.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
        namespace_options: Some(shared_pid()),
        privileged: true,
        ..Default::default()
    });
    let pod = env.run_pod(&pc).await;
    let sleeper = |name: &str, memory: i64, privileged: bool| {
        let mut cfg = env.config(name, &["sleep", "1000"]);
        let linux = cfg.linux.as_mut().unwrap();
        linux.security_context = Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(shared_pid()),
            privileged,
            ..Default::default()
        });
        linux.resources = Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: memory,
            ..Default::default()
        });
        cfg
    };
    let mut ids = vec![env.run(&pod, &pc, sleeper("c0", 64 << 20, false)).await];

    // Move the pod's PID counter up to a pid the host lacks, then start a container there.
    let mut hit: Option<(String, u32)> = None;
    for attempt in 1..=40 {
        let r = env
            .exec(&ids[0], &["sh", "-c", "echo $$"], 10)
            .await
            .expect("exec");
        let last: u32 = String::from_utf8_lossy(&r.stdout).trim().parse().unwrap();
        let gap = (last + 1..50_000)
            .find(|p| !host_has_pid(*p))
            .expect("a pid the host does not use");
        if gap > last + 8 {
            // Each `(:)` forks once; stop short and come back to step singly.
            let burn = format!(
                "i=0; while [ $i -lt {} ]; do (:); i=$((i+1)); done",
                gap - last - 4
            );
            env.exec(&ids[0], &["sh", "-c", &burn], 60)
                .await
                .expect("burn pids");
            continue;
        }
        if gap > last + 1 {
            continue; // this exec used one more pid
        }
        let name = format!("c{attempt}");
        let id = env
            .create(&pod, &pc, sleeper(&name, 96 << 20, false))
            .await
            .unwrap_or_else(|e| panic!("create {name} (pod pid {gap}): {e}"));
        env.start(&id)
            .await
            .unwrap_or_else(|e| panic!("start {name} (pod pid {gap}): {e}"));
        ids.push(id.clone());
        let host_pid = env.info(&id).await["pid"].as_u64().expect("pid") as u32;
        let pod_pid = innermost_pid(host_pid).expect("NSpid");
        if !host_has_pid(pod_pid) {
            hit = Some((id, pod_pid));
            break;
        }
    }
    let (id, pod_pid) = hit.expect("no container init got a pid the host lacks");
    eprintln!(
        "container {id} runs as pid {pod_pid} of the pod's PID namespace, unused on the host"
    );
    assert_eq!(
        env.status(&id).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    // More containers after it start too.
    for name in ["after1", "after2"] {
        ids.push(env.run(&pod, &pc, sleeper(name, 64 << 20, false)).await);
    }

    // Inside: the container's own cgroup in every hierarchy mounted, its limit, read-only.
    let cgroup = env.info(&id).await["cgroup"]
        .as_str()
        .expect("cgroup")
        .to_string();
    let script = "cat /proc/self/cgroup; echo ---; \
                  cat /sys/fs/cgroup/memory/memory.limit_in_bytes; echo ---; \
                  for d in /sys/fs/cgroup/*/; do n=${d%/}; n=${n##*/}; \
                  if grep -qx $$ $d/cgroup.procs; then echo \"$n own\"; else echo \"$n other\"; fi; \
                  done; echo ---; \
                  echo 1000000000 > /sys/fs/cgroup/memory/memory.limit_in_bytes && echo wrote; \
                  mkdir /sys/fs/cgroup/x && echo made; \
                  grep -qx 1 /sys/fs/cgroup/memory/cgroup.procs || echo no-pod-init";
    let r = env.exec(&id, &["sh", "-c", script], 10).await.unwrap();
    let out = String::from_utf8_lossy(&r.stdout).to_string();
    let parts: Vec<&str> = out.split("---\n").collect();
    assert_eq!(parts.len(), 4, "{out}");
    let memory_line = parts[0]
        .lines()
        .find(|l| l.split(':').nth(1) == Some("memory"))
        .unwrap_or_else(|| panic!("no memory line: {out}"));
    assert!(memory_line.ends_with(&format!(":{cgroup}")), "{out}");
    assert_eq!(parts[1].trim(), (96u64 << 20).to_string(), "{out}");
    let seen: Vec<&str> = parts[2].lines().collect();
    assert!(seen.contains(&"memory own"), "{out}");
    assert!(seen.iter().all(|l| l.ends_with(" own")), "{out}");
    assert!(!parts[3].contains("wrote"), "{out}");
    assert!(!parts[3].contains("made"), "{out}");
    assert!(parts[3].contains("no-pod-init"), "{out}");
    assert_eq!(
        std::fs::read_to_string(
            env.cgroup_dir("memory", &cgroup)
                .join("memory.limit_in_bytes")
        )
        .unwrap()
        .trim(),
        (96u64 << 20).to_string()
    );
    assert!(
        !host_has_pid(pod_pid),
        "pod pid {pod_pid} appeared on the host"
    );

    // A privileged container gets its cgroups read-write (lowering the limit: above the
    // swap limit, which equals it, the kernel refuses it).
    let privileged = env.run(&pod, &pc, sleeper("priv", 64 << 20, true)).await;
    ids.push(privileged.clone());
    let r = env
        .exec(
            &privileged,
            &[
                "sh",
                "-c",
                "echo 50331648 > /sys/fs/cgroup/memory/memory.limit_in_bytes && \
                 cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
            ],
            10,
        )
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&r.stdout).trim(),
        "50331648",
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let priv_cgroup = env.info(&privileged).await["cgroup"]
        .as_str()
        .expect("cgroup")
        .to_string();
    assert_eq!(
        std::fs::read_to_string(
            env.cgroup_dir("memory", &priv_cgroup)
                .join("memory.limit_in_bytes")
        )
        .unwrap()
        .trim(),
        "50331648"
    );

    for id in &ids {
        env.stop(id, 0).await;
        env.remove(id).await;
    }
    env.remove_pod(&pod).await;
    env.assert_nothing_left().await;
}
