//! The shim's containers against the real binary and kernel, as root: libcontainer create,
//! start, kill, delete; exits, exit records and events; CRI logs (pipes and tty); ExecSync
//! with timeouts and concurrency; OOM kills; shutdown and a killed shim.
//!
//! Each test runs its own pod shim over a busybox-static rootfs and puts its containers'
//! cgroups under `/berth-test-<pid>-<n>`. A Drop guard (which also runs when a test
//! panics) kills the shim and every process of those cgroups, removes the cgroups, unpins
//! the namespaces and removes the files.

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use berth::proto::shim::{
    ContainerState, CreateContainerRequest, NamespaceMode, SandboxConfig, container_state, event,
};
use berth::sandbox::namespaces;
use berth::shim::{self, ExitRecord, ShimClient};
use common::TempDir;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use oci_spec::runtime::{
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, RootBuilder,
    Spec,
};

const SHIM: &str = env!("CARGO_BIN_EXE_berth-shim");
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The shim under test: `BERTH_SHIM` (e.g. the release build, to measure it), else the
/// one cargo built with the tests.
fn shim_bin() -> PathBuf {
    std::env::var_os("BERTH_SHIM").map_or_else(|| PathBuf::from(SHIM), PathBuf::from)
}

/// Busybox applets the tests use.
const APPLETS: &[&str] = &[
    "sh", "sleep", "echo", "cat", "true", "false", "id", "ls", "head", "tr", "printf", "tty", "ps",
    "grep", "env", "pwd", "kill", "stty",
];

struct Pod {
    dir: TempDir,
    state: PathBuf,
    rootfs: PathBuf,
    /// `berth-test-<pid>-<n>`: the parent of the containers' cgroups.
    cgroup_parent: String,
    shim_pid: u32,
    pid_mode: NamespaceMode,
}

impl Pod {
    /// A pod with its own network, IPC and UTS namespaces and the given PID mode.
    async fn start(pid_mode: NamespaceMode) -> Pod {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = TempDir::new("berth-shimc-test");
        let state = dir.path().join("pod");
        let rootfs = dir.path().join("rootfs");
        make_rootfs(&rootfs);
        let cgroup_parent = format!(
            "berth-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut pod = Pod {
            dir,
            state,
            rootfs,
            cgroup_parent,
            shim_pid: 0,
            pid_mode,
        };
        let config = SandboxConfig {
            pod_id: "test-pod".into(),
            state_dir: pod.state.to_str().unwrap().into(),
            network: NamespaceMode::Pod as i32,
            ipc: NamespaceMode::Pod as i32,
            uts: NamespaceMode::Pod as i32,
            pid: pid_mode as i32,
            hostname: "berth-test-pod".into(),
            sysctls: Default::default(),
            loopback_up: true,
            ..Default::default()
        };
        pod.shim_pid = shim::spawn(&shim_bin(), &config).await.expect("spawn shim");
        pod
    }

    fn client(&self) -> ShimClient {
        ShimClient::new(&self.state)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.state.join("shim.log")).unwrap_or_default()
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.dir.path().join("logs").join(format!("{id}.log"))
    }

    fn cgroup_path(&self, id: &str) -> String {
        format!("/{}/{id}", self.cgroup_parent)
    }

    /// The container's memory cgroup directory.
    fn memory_cgroup(&self, id: &str) -> PathBuf {
        Path::new(CGROUP_ROOT)
            .join("memory")
            .join(&self.cgroup_parent)
            .join(id)
    }

    /// A spec as berthd would write it: the pod's net, IPC and UTS namespaces, a mount
    /// namespace of its own, its own PID namespace (or the pod's with `pod_pid`).
    fn spec(&self, id: &str, args: &[&str], pod_pid: bool) -> Spec {
        let mut spec = Spec::default();
        spec.set_hostname(None);
        spec.set_root(Some(
            RootBuilder::default()
                .path(&self.rootfs)
                .readonly(true)
                .build()
                .unwrap(),
        ));
        let mut process = spec.process().clone().unwrap();
        process.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
        process.set_terminal(Some(false));
        spec.set_process(Some(process));
        let pins = namespaces::ns_paths(&self.state);
        let ns = |typ, path: Option<&Path>| -> LinuxNamespace {
            let b = LinuxNamespaceBuilder::default().typ(typ);
            match path {
                Some(p) => b.path(p).build().unwrap(),
                None => b.build().unwrap(),
            }
        };
        let pid = if pod_pid {
            assert_eq!(self.pid_mode, NamespaceMode::Pod);
            ns(LinuxNamespaceType::Pid, Some(&pins.pid))
        } else {
            ns(LinuxNamespaceType::Pid, None)
        };
        let mut linux = spec.linux().clone().unwrap();
        linux.set_namespaces(Some(vec![
            ns(LinuxNamespaceType::Network, Some(&pins.net)),
            ns(LinuxNamespaceType::Ipc, Some(&pins.ipc)),
            ns(LinuxNamespaceType::Uts, Some(&pins.uts)),
            pid,
            ns(LinuxNamespaceType::Mount, None),
        ]));
        linux.set_cgroups_path(Some(PathBuf::from(self.cgroup_path(id))));
        spec.set_linux(Some(linux));
        spec
    }

    /// Writes `<dir>/bundles/<id>/config.json`.
    fn bundle(&self, id: &str, spec: &Spec) -> PathBuf {
        let b = self.dir.path().join("bundles").join(id);
        std::fs::create_dir_all(&b).unwrap();
        spec.save(b.join("config.json")).unwrap();
        b
    }

    fn request(&self, id: &str, spec: &Spec) -> CreateContainerRequest {
        CreateContainerRequest {
            id: id.into(),
            bundle: self.bundle(id, spec).to_str().unwrap().into(),
            log_path: self.log_path(id).to_str().unwrap().into(),
            tty: false,
            stdin: false,
            stdin_once: false,
        }
    }

    async fn create(&self, id: &str, args: &[&str], pod_pid: bool) -> u32 {
        let spec = self.spec(id, args, pod_pid);
        self.client()
            .create_container(self.request(id, &spec))
            .await
            .unwrap_or_else(|e| panic!("create {id}: {e}\n{}", self.log()))
    }

    async fn run(&self, id: &str, args: &[&str], pod_pid: bool) -> u32 {
        let pid = self.create(id, args, pod_pid).await;
        self.client().start_container(id).await.expect("start");
        pid
    }

    async fn wait_exited(&self, id: &str) -> ContainerState {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.client().container_state(id).await.expect("state");
            if s.status == container_state::Status::Exited as i32 {
                return s;
            }
            assert!(Instant::now() < deadline, "{id} did not exit: {s:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The cgroup directories of this pod, deepest first.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        for ctrl in std::fs::read_dir(CGROUP_ROOT).unwrap().flatten() {
            let top = ctrl.path().join(&self.cgroup_parent);
            if top.is_dir() {
                collect_dirs(&top, &mut dirs);
            }
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        dirs
    }

    /// Pids in this pod's cgroups.
    fn cgroup_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .cgroup_dirs()
            .iter()
            .flat_map(|d| {
                std::fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        pids.sort();
        pids.dedup();
        pids
    }

    fn assert_nothing_left(&self) {
        assert!(!shim::shim_alive(&self.state), "shim still there");
        assert_eq!(self.cgroup_pids(), Vec::<u32>::new(), "processes left");
        let leaf: Vec<_> = self
            .cgroup_dirs()
            .into_iter()
            .filter(|d| d.file_name().unwrap() != self.cgroup_parent.as_str())
            .collect();
        assert_eq!(leaf, Vec::<PathBuf>::new(), "container cgroups left");
        assert!(!namespaces::ns_dir(&self.state).exists(), "pins left");
        let lc = self.state.join("lc");
        assert!(
            !lc.exists() || std::fs::read_dir(&lc).unwrap().next().is_none(),
            "libcontainer state left"
        );
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if self.shim_pid != 0 && is_berth_shim(self.shim_pid) {
            let _ = kill(Pid::from_raw(self.shim_pid as i32), Signal::SIGKILL);
            wait_gone(self.shim_pid, Duration::from_secs(5));
        }
        for _ in 0..50 {
            let pids = self.cgroup_pids();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for d in self.cgroup_dirs() {
            let _ = std::fs::remove_dir(&d);
        }
        let _ = namespaces::unpin_all(&self.state);
        if std::thread::panicking() {
            eprintln!("--- shim.log ---\n{}", self.log());
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&e.path(), out);
        }
    }
}

fn make_rootfs(root: &Path) {
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
    for a in APPLETS {
        symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
}

fn is_berth_shim(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "berth-shim")
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !matches!(
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().as_bytes()[0]),
            Some(b'Z' | b'X')
        )
    })
}

/// Waits until the process is dead (gone, or a zombie: a dead shim's children are
/// reaped by PID 1, which here takes its time); false on timeout.
fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

fn status_field(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// Waits until the process runs `comm` (it has exec'd its program).
fn wait_comm(pid: u32, comm: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if c.trim() == comm {
            return;
        }
        assert!(Instant::now() < deadline, "{pid} runs {c:?}, not {comm}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Pids of processes whose command line is exactly `args`.
fn processes_running(args: &[&str]) -> Vec<u32> {
    let mut want = Vec::new();
    for a in args {
        want.extend_from_slice(a.as_bytes());
        want.push(0);
    }
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

fn exit_record(pod: &Pod, id: &str) -> ExitRecord {
    shim::exits::read(&pod.state, id)
        .expect("read exit record")
        .unwrap_or_else(|| panic!("no exit record for {id}"))
}

/// The records of a CRI log file: (stream, tag, content), checking the timestamps.
fn log_records(path: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let mut parts = l.splitn(4, ' ');
            let ts = parts.next().unwrap();
            // 2024-01-02T03:04:05.123456789Z
            assert_eq!(ts.len(), 30, "timestamp {ts:?} in {l:?}");
            assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts:?}");
            let stream = parts.next().unwrap().to_string();
            let tag = parts.next().unwrap().to_string();
            let content = parts.next().unwrap_or("").to_string();
            (stream, tag, content)
        })
        .collect()
}

fn rec(stream: &str, tag: &str, content: &str) -> (String, String, String) {
    (stream.into(), tag.into(), content.into())
}

#[tokio::test]
async fn lifecycle_events_signals_exec_and_delete() {
    let pod = Pod::start(NamespaceMode::Pod).await;
    let client = pod.client();
    let mut events = client.subscribe().await.expect("subscribe");
    let mut events2 = client.subscribe().await.expect("second subscriber");

    // `sleep` in the pod's PID namespace: not a PID 1, so SIGTERM's default action kills
    // it, if its signal mask and dispositions are clean.
    let pid = pod.create("sleeper", &["sleep", "1000"], true).await;
    let s = client.container_state("sleeper").await.unwrap();
    assert_eq!(s.status, container_state::Status::Created as i32);
    assert_eq!(s.pid, pid);
    assert_eq!(s.started_at, 0);
    // A host pid, a child of the shim, in the pod's PID namespace (not its PID 1).
    assert_eq!(status_field(pid, "PPid"), pod.shim_pid.to_string());
    let nspid: Vec<String> = status_field(pid, "NSpid")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(nspid.len(), 2, "NSpid {nspid:?}");
    assert_eq!(nspid[0], pid.to_string());
    assert_ne!(nspid[1], "1");
    assert!(pod.memory_cgroup("sleeper").is_dir());
    // Not started twice, not created twice.
    let again = client
        .create_container(pod.request("sleeper", &pod.spec("sleeper", &["true"], true)))
        .await
        .unwrap_err();
    assert!(
        matches!(again, shim::Error::FailedPrecondition(_)),
        "{again:?}"
    );

    client.start_container("sleeper").await.expect("start");
    let s = client.container_state("sleeper").await.unwrap();
    assert_eq!(s.status, container_state::Status::Running as i32);
    assert!(s.started_at > 0);
    wait_comm(pid, "sleep");
    // Whatever the shim blocks or ignores (its signalfd's signals, SIGPIPE, and glibc's
    // 32 and 33, which posix_spawn leaves ignored), the container starts clean.
    assert_ne!(status_field(pod.shim_pid, "SigBlk"), "0000000000000000");
    assert_ne!(status_field(pod.shim_pid, "SigIgn"), "0000000000000000");
    assert_eq!(status_field(pid, "SigBlk"), "0000000000000000");
    assert_eq!(status_field(pid, "SigIgn"), "0000000000000000");
    let r = client
        .exec_sync(
            "sleeper",
            vec![
                "grep".into(),
                "-E".into(),
                "SigBlk|SigIgn".into(),
                "/proc/self/status".into(),
            ],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n",
        "an exec starts clean too"
    );
    let err = client.start_container("sleeper").await.unwrap_err();
    assert!(matches!(err, shim::Error::FailedPrecondition(_)), "{err:?}");
    // libcontainer forks from the shim: it must still have a single thread.
    let threads = std::fs::read_dir(format!("/proc/{}/task", pod.shim_pid))
        .unwrap()
        .count();
    assert_eq!(threads, 1);

    // ExecSync: output, exit codes, a missing command.
    let r = client
        .exec_sync(
            "sleeper",
            vec!["echo".into(), "hi".into()],
            Duration::from_secs(10),
        )
        .await
        .expect("exec");
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice()),
        (&b"hi\n"[..], &b""[..])
    );
    assert_eq!((r.exit_code, r.timed_out), (0, false));
    let r = client
        .exec_sync(
            "sleeper",
            vec!["sh".into(), "-c".into(), "echo oops >&2; exit 5".into()],
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!((r.stderr.as_slice(), r.exit_code), (&b"oops\n"[..], 5));
    // The exec gets the container's settings: its environment, cwd, namespaces, user.
    let r = client
        .exec_sync(
            "sleeper",
            vec![
                "sh".into(),
                "-c".into(),
                "echo $PATH; pwd; id -u; cat /proc/1/cmdline | tr '\\0' ' '".into(),
            ],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&r.stdout).to_string();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    assert_eq!(lines[1..3], ["/", "0"]);
    // PID 1 of the pod's namespace is the shim's init (a fork of berth-shim).
    assert!(lines[3].contains("berth-shim"), "{out}");
    let err = client
        .exec_sync(
            "sleeper",
            vec!["no-such-command".into()],
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
    let shim::Error::InvalidArgument(text) = &err else {
        panic!("{err:?}")
    };
    assert!(text.contains("no-such-command"), "{text}");
    assert!(text.contains("not found"), "{text}");
    let err = client
        .exec_sync(
            "no-such-container",
            vec!["true".into()],
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, shim::Error::NotFound(_)), "{err:?}");

    // Timeout: killed, answered timed_out, gone.
    let t0 = Instant::now();
    let r = client
        .exec_sync(
            "sleeper",
            vec![
                "sh".into(),
                "-c".into(),
                "echo before; sleep 3737; true".into(),
            ],
            Duration::from_millis(500),
        )
        .await
        .expect("exec with timeout");
    assert!(r.timed_out, "{r:?}");
    assert_eq!(r.exit_code, 137);
    assert_eq!(r.stdout, b"before\n");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    // The shell is reaped before the answer; its child got the same SIGKILL (process group)
    // and is gone a moment later.
    let gone = Instant::now() + Duration::from_secs(2);
    while !processes_running(&["sleep", "3737"]).is_empty() && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(processes_running(&["sleep", "3737"]), Vec::<u32>::new());

    // Concurrent execs are served side by side.
    let t0 = Instant::now();
    let run = |n: u32| {
        let c = client.clone();
        async move {
            c.exec_sync(
                "sleeper",
                vec!["sh".into(), "-c".into(), format!("sleep 0.4; echo {n}")],
                Duration::from_secs(10),
            )
            .await
        }
    };
    let (a, b, c) = tokio::join!(run(1), run(2), run(3));
    for (r, n) in [(a, 1), (b, 2), (c, 3)] {
        assert_eq!(r.unwrap().stdout, format!("{n}\n").as_bytes());
    }
    assert!(
        t0.elapsed() < Duration::from_millis(1100),
        "{:?}",
        t0.elapsed()
    );

    // SIGTERM: 143, recorded before it is reported.
    let err = client
        .kill_container("sleeper", 0, false)
        .await
        .unwrap_err();
    assert!(matches!(err, shim::Error::InvalidArgument(_)), "{err:?}");
    let err = client.delete_container("sleeper").await.unwrap_err();
    assert!(matches!(err, shim::Error::FailedPrecondition(_)), "{err:?}");
    client
        .kill_container("sleeper", Signal::SIGTERM as i32, false)
        .await
        .expect("kill");
    let s = pod.wait_exited("sleeper").await;
    assert_eq!(s.exit_code, 143);
    assert!(s.finished_at >= s.started_at && s.started_at > 0);
    assert!(!s.oom_killed);
    let record = exit_record(&pod, "sleeper");
    assert_eq!(
        (
            record.exit_code,
            record.signal,
            record.pid,
            record.finished_at
        ),
        (143, 15, pid, s.finished_at)
    );
    assert!(wait_gone(pid, Duration::from_secs(5)));
    let err = client
        .kill_container("sleeper", Signal::SIGKILL as i32, false)
        .await
        .unwrap_err();
    assert!(matches!(err, shim::Error::FailedPrecondition(_)), "{err:?}");
    client
        .kill_container("sleeper", Signal::SIGKILL as i32, true)
        .await
        .expect("kill all of an exited container");
    let err = client
        .exec_sync("sleeper", vec!["true".into()], Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, shim::Error::FailedPrecondition(_)), "{err:?}");

    client.delete_container("sleeper").await.expect("delete");
    assert!(!pod.memory_cgroup("sleeper").exists(), "cgroup left");
    assert!(!pod.state.join("lc/sleeper").exists());
    assert!(shim::exits::read(&pod.state, "sleeper").unwrap().is_none());
    let err = client.container_state("sleeper").await.unwrap_err();
    assert!(matches!(err, shim::Error::NotFound(_)), "{err:?}");
    client
        .delete_container("sleeper")
        .await
        .expect("delete is idempotent");
    let err = client.start_container("sleeper").await.unwrap_err();
    assert!(matches!(err, shim::Error::NotFound(_)), "{err:?}");

    // Both subscribers saw the whole life, in order.
    for rx in [&mut events, &mut events2] {
        let mut got = Vec::new();
        while got.len() < 4 {
            let e = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("an event")
                .expect("open stream");
            got.push(e);
        }
        let kinds: Vec<i32> = got.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                event::Kind::Created as i32,
                event::Kind::Started as i32,
                event::Kind::Exited as i32,
                event::Kind::Deleted as i32
            ]
        );
        assert!(got.iter().all(|e| e.container_id == "sleeper" && e.at > 0));
        assert_eq!(got[2].exit_code, 143);
    }
    // A subscriber that went away is dropped; the others still get events.
    drop(events2);
    pod.create("later", &["true"], false).await;
    let e = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (e.container_id.as_str(), e.kind),
        ("later", event::Kind::Created as i32)
    );
    client
        .delete_container("later")
        .await
        .expect("delete a created container");
    let e = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (e.container_id.as_str(), e.kind),
        ("later", event::Kind::Deleted as i32)
    );

    client
        .shutdown(Duration::from_secs(2))
        .await
        .expect("shutdown");
    // The event stream ends with the shim.
    let end = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
    assert!(matches!(end, Ok(None)), "{end:?}");
    assert!(wait_gone(pod.shim_pid, Duration::from_secs(5)));
    pod.assert_nothing_left();
}

#[tokio::test]
async fn logs_exit_codes_and_records() {
    let pod = Pod::start(NamespaceMode::Pod).await;
    let client = pod.client();
    let pid = pod
        .run(
            "talker",
            &[
                "sh",
                "-c",
                "echo out; echo err >&2; echo; printf 'a\\r\\nno newline'; exit 3",
            ],
            false,
        )
        .await;
    let s = pod.wait_exited("talker").await;
    assert_eq!((s.exit_code, s.pid), (3, pid));
    let record = exit_record(&pod, "talker");
    assert_eq!(
        (record.id.as_str(), record.exit_code, record.signal),
        ("talker", 3, 0)
    );
    assert_eq!(record.started_at, s.started_at);
    let mut records = log_records(&pod.log_path("talker"));
    // The two streams are read separately: compare each stream's records in order.
    records.sort_by_key(|r| r.0 == "stderr");
    assert_eq!(
        records,
        [
            rec("stdout", "F", "out"),
            rec("stdout", "F", ""),
            rec("stdout", "F", "a"),
            rec("stdout", "P", "no newline"),
            rec("stderr", "F", "err"),
        ]
    );

    // The exit record outlives the shim's memory of the container: a record alone is
    // answered as an exited container.
    let ghost = ExitRecord {
        id: "ghost".into(),
        pid: 1234,
        exit_code: 7,
        signal: 0,
        started_at: 1,
        finished_at: 2,
        oom_killed: false,
    };
    shim::exits::write(&pod.state, &ghost).unwrap();
    let s = client.container_state("ghost").await.unwrap();
    assert_eq!(
        (s.status, s.exit_code, s.pid, s.finished_at),
        (container_state::Status::Exited as i32, 7, 1234, 2)
    );
    client.delete_container("ghost").await.unwrap();
    assert!(matches!(
        client.container_state("ghost").await,
        Err(shim::Error::NotFound(_))
    ));

    // A long line is cut at 16 KiB.
    pod.run(
        "long",
        &["sh", "-c", "head -c 20000 /dev/zero | tr '\\0' x; echo"],
        false,
    )
    .await;
    assert_eq!(pod.wait_exited("long").await.exit_code, 0);
    let records = log_records(&pod.log_path("long"));
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!((records[0].1.as_str(), records[0].2.len()), ("P", 16384));
    assert_eq!(
        (records[1].1.as_str(), records[1].2.len()),
        ("F", 20000 - 16384)
    );

    // A container that keeps writing: its log is rotated and reopened.
    pod.run(
        "ticker",
        &["sh", "-c", "while true; do echo tick; sleep 0.05; done"],
        false,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rotated = pod.log_path("ticker").with_extension("log.1");
    std::fs::rename(pod.log_path("ticker"), &rotated).unwrap();
    client.reopen_log("ticker").await.expect("reopen");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old = log_records(&rotated);
    let new = log_records(&pod.log_path("ticker"));
    assert!(!old.is_empty() && !new.is_empty(), "{old:?} {new:?}");
    assert!(
        new.iter().all(|r| *r == rec("stdout", "F", "tick")),
        "{new:?}"
    );
    assert!(matches!(
        client.reopen_log("talker").await,
        Err(shim::Error::FailedPrecondition(_))
    ));
    assert!(matches!(
        client.reopen_log("nope").await,
        Err(shim::Error::NotFound(_))
    ));

    // A tty: the pty's output is the log's stdout, "\r\n" made "\n".
    let mut spec = pod.spec("tty", &["sh", "-c", "echo hello; tty; exit 4"], false);
    let mut process = spec.process().clone().unwrap();
    process.set_terminal(Some(true));
    spec.set_process(Some(process));
    let mut req = pod.request("tty", &spec);
    req.tty = true;
    client.create_container(req).await.expect("create tty");
    client.start_container("tty").await.unwrap();
    assert_eq!(pod.wait_exited("tty").await.exit_code, 4);
    // The pty reaches EOF after the exit: give the loop a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let records = log_records(&pod.log_path("tty"));
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0], rec("stdout", "F", "hello"));
    assert!(records[1].2.starts_with("/dev/"), "{records:?}");
    // tty and spec disagree: refused.
    let mut req = pod.request("tty2", &spec);
    req.tty = false;
    let err = client.create_container(req).await.unwrap_err();
    assert!(matches!(err, shim::Error::InvalidArgument(_)), "{err:?}");

    client
        .kill_container("ticker", Signal::SIGKILL as i32, true)
        .await
        .unwrap();
    assert_eq!(pod.wait_exited("ticker").await.exit_code, 137);
    for id in ["talker", "long", "ticker", "tty"] {
        client.delete_container(id).await.unwrap();
    }
    client.shutdown(Duration::from_secs(1)).await.unwrap();
    assert!(wait_gone(pod.shim_pid, Duration::from_secs(5)));
    pod.assert_nothing_left();
}

#[tokio::test]
async fn bad_commands_and_specs_fail_create_and_leave_nothing() {
    let pod = Pod::start(NamespaceMode::Host).await;
    let client = pod.client();
    for (id, args, want) in [
        ("missing", vec!["no-such-binary"], "no-such-binary"),
        ("missing-path", vec!["/bin/nope"], "/bin/nope"),
        ("not-exec", vec!["/etc/passwd"], "permission denied"),
    ] {
        let spec = pod.spec(id, &args, false);
        let err = client
            .create_container(pod.request(id, &spec))
            .await
            .unwrap_err();
        let shim::Error::InvalidArgument(text) = &err else {
            panic!("{id}: {err:?}")
        };
        assert!(text.contains(want), "{id}: {text}");
        assert!(!pod.state.join("lc").join(id).exists(), "{id}: state left");
        assert!(!pod.memory_cgroup(id).exists(), "{id}: cgroup left");
        assert!(matches!(
            client.container_state(id).await,
            Err(shim::Error::NotFound(_))
        ));
        // The failed container's processes are reaped, none left.
        assert_eq!(pod.cgroup_pids(), Vec::<u32>::new());
    }
    let bad = CreateContainerRequest {
        id: "../escape".into(),
        bundle: "/tmp".into(),
        ..Default::default()
    };
    let err = client.create_container(bad).await.unwrap_err();
    assert!(matches!(err, shim::Error::InvalidArgument(_)), "{err:?}");
    let nobundle = CreateContainerRequest {
        id: "nobundle".into(),
        bundle: pod.dir.path().join("no-bundle").to_str().unwrap().into(),
        ..Default::default()
    };
    let err = client.create_container(nobundle).await.unwrap_err();
    assert!(matches!(err, shim::Error::InvalidArgument(_)), "{err:?}");
    // The shim still works.
    pod.run("fine", &["true"], false).await;
    assert_eq!(pod.wait_exited("fine").await.exit_code, 0);
    client.delete_container("fine").await.unwrap();
    client.shutdown(Duration::from_secs(1)).await.unwrap();
    assert!(wait_gone(pod.shim_pid, Duration::from_secs(5)));
    pod.assert_nothing_left();
}

#[tokio::test]
async fn oom_kill_is_reported() {
    let pod = Pod::start(NamespaceMode::Pod).await;
    let client = pod.client();
    let mut spec = pod.spec(
        "hog",
        &[
            "sh",
            "-c",
            "x=$(head -c 64m /dev/zero | tr '\\0' a); echo survived",
        ],
        false,
    );
    let mut linux = spec.linux().clone().unwrap();
    let mut resources = linux.resources().clone().unwrap_or_default();
    resources.set_memory(Some(
        LinuxMemoryBuilder::default()
            .limit(16 << 20)
            .swap(16 << 20)
            .build()
            .unwrap(),
    ));
    linux.set_resources(Some(resources));
    spec.set_linux(Some(linux));
    client
        .create_container(pod.request("hog", &spec))
        .await
        .expect("create");
    client.start_container("hog").await.unwrap();
    let s = pod.wait_exited("hog").await;
    assert_eq!((s.exit_code, s.oom_killed), (137, true), "{s:?}");
    assert!(exit_record(&pod, "hog").oom_killed);
    assert!(log_records(&pod.log_path("hog")).is_empty());
    client.delete_container("hog").await.unwrap();
    assert!(!pod.memory_cgroup("hog").exists());
    client.shutdown(Duration::from_secs(1)).await.unwrap();
    assert!(wait_gone(pod.shim_pid, Duration::from_secs(5)));
    pod.assert_nothing_left();
}

#[tokio::test]
async fn shutdown_stops_running_containers() {
    let pod = Pod::start(NamespaceMode::Pod).await;
    let client = pod.client();
    // Dies of SIGTERM (in the pod's namespace, not a PID 1).
    let polite = pod.run("polite", &["sleep", "1000"], true).await;
    // PID 1 of its own namespace without a handler: SIGTERM does nothing, SIGKILL after
    // the grace does.
    let stubborn = pod.run("stubborn", &["sleep", "1000"], false).await;
    // Created, never started.
    let created = pod.create("created", &["sleep", "1000"], false).await;
    wait_comm(polite, "sleep");
    wait_comm(stubborn, "sleep");
    let t0 = Instant::now();
    client
        .shutdown(Duration::from_millis(700))
        .await
        .expect("shutdown");
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(600), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    for pid in [polite, stubborn, created] {
        assert!(wait_gone(pid, Duration::from_secs(5)), "{pid} still there");
    }
    assert!(wait_gone(pod.shim_pid, Duration::from_secs(5)));
    assert_eq!(exit_record(&pod, "polite").exit_code, 143);
    assert_eq!(exit_record(&pod, "stubborn").exit_code, 137);
    assert!(pod.log().contains("shutdown requested"), "{}", pod.log());
    pod.assert_nothing_left();
}

/// A shim killed with SIGKILL takes its containers with it: those in the pod's PID
/// namespace die with the pod's init, the others of PR_SET_PDEATHSIG (their parent is the
/// shim). Their cgroups stay for berthd to remove.
#[tokio::test]
async fn killed_shim_takes_its_containers_down() {
    let pod = Pod::start(NamespaceMode::Pod).await;
    let shared = pod.run("shared", &["sleep", "1000"], true).await;
    let own = pod.run("own", &["sleep", "1000"], false).await;
    wait_comm(shared, "sleep");
    wait_comm(own, "sleep");
    assert!(alive(shared) && alive(own));
    kill(Pid::from_raw(pod.shim_pid as i32), Signal::SIGKILL).unwrap();
    assert!(wait_gone(pod.shim_pid, Duration::from_secs(5)));
    for pid in [shared, own] {
        assert!(
            wait_gone(pid, Duration::from_secs(5)),
            "{pid} outlived the shim"
        );
    }
    assert_eq!(pod.cgroup_pids(), Vec::<u32>::new());
    assert!(pod.memory_cgroup("own").exists(), "berthd removes these");
}

#[tokio::test]
async fn host_pid_pod_runs_containers() {
    let pod = Pod::start(NamespaceMode::Host).await;
    let client = pod.client();
    let pid = pod.run("c", &["sleep", "1000"], false).await;
    wait_comm(pid, "sleep");
    // Its own PID namespace: PID 1 there.
    let nspid = status_field(pid, "NSpid");
    assert_eq!(nspid, format!("{pid}\t1"));
    let r = client
        .exec_sync("c", vec!["ps".into()], Duration::from_secs(10))
        .await
        .unwrap();
    let ps = String::from_utf8_lossy(&r.stdout);
    assert!(ps.contains("sleep 1000"), "{ps}");
    client
        .kill_container("c", Signal::SIGKILL as i32, false)
        .await
        .unwrap();
    assert_eq!(pod.wait_exited("c").await.exit_code, 137);
    client.delete_container("c").await.unwrap();
    client.shutdown(Duration::from_secs(1)).await.unwrap();
    assert!(wait_gone(pod.shim_pid, Duration::from_secs(5)));
    pod.assert_nothing_left();
}

/// The shim's resident memory with one running container (DESIGN target: 2 MB for the
/// release build; run with `BERTH_SHIM=target/release/berth-shim` to measure that).
#[tokio::test]
async fn shim_memory_with_one_container() {
    let pod = Pod::start(NamespaceMode::Pod).await;
    let client = pod.client();
    let pid = pod
        .run("c", &["sh", "-c", "echo started; exec sleep 1000"], false)
        .await;
    wait_comm(pid, "sleep");
    let r = client
        .exec_sync("c", vec!["true".into()], Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(r.exit_code, 0);
    // The shim gives memory back once idle for a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = status_field(pod.shim_pid, "VmRSS");
    let [hwm, anon, file] = ["VmHWM", "RssAnon", "RssFile"].map(|f| status_field(pod.shim_pid, f));
    eprintln!(
        "berth-shim {}: VmRSS {rss} (anon {anon}, file {file}), VmHWM {hwm}, with one running container",
        shim_bin().display()
    );
    // Latency of `true` back to back and after the loop went idle (and trimmed).
    if std::env::var_os("BERTH_EXEC_TIMING").is_some() {
        for idle in [0u64, 300] {
            let mut times = Vec::new();
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(idle)).await;
                let t = Instant::now();
                client
                    .exec_sync("c", vec!["true".into()], Duration::from_secs(10))
                    .await
                    .unwrap();
                times.push(t.elapsed());
            }
            times.sort();
            eprintln!(
                "exec true after {idle} ms idle: p50 {:?} max {:?}",
                times[5], times[9]
            );
        }
        for idle in [0u64, 300] {
            tokio::time::sleep(Duration::from_millis(idle)).await;
            let t = Instant::now();
            client.ping().await.unwrap();
            eprintln!("ping after {idle} ms idle: {:?}", t.elapsed());
        }
    }
    let kb: u64 = rss.trim_end_matches(" kB").trim().parse().unwrap();
    if std::env::var_os("BERTH_SHIM").is_some() {
        assert!(kb <= 2048, "VmRSS {kb} kB over the 2 MB target");
    }
    client
        .kill_container("c", Signal::SIGKILL as i32, true)
        .await
        .unwrap();
    pod.wait_exited("c").await;
    client.delete_container("c").await.unwrap();
    client.shutdown(Duration::from_secs(1)).await.unwrap();
    assert!(wait_gone(pod.shim_pid, Duration::from_secs(5)));
    pod.assert_nothing_left();
}
