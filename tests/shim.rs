//! berth-shim against the real binary, as root: namespaces made and pinned, hostname,
//! sysctls, the pod init, the socket protocol, shutdown, a killed shim, a failed start.
//! Every test cleans up through a Drop guard (also when it panics) and checks that
//! nothing of its pod is left: no mount under its state directory, no process holding a
//! file there.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth::proto::shim::{NamespaceMode, SandboxConfig};
use berth::sandbox::namespaces::{self, Namespace};
use berth::shim::{self, ShimClient};
use common::TempDir;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const SHIM: &str = env!("CARGO_BIN_EXE_berth-shim");

/// One pod's state directory and whatever the shim started; all of it is killed,
/// unpinned and removed on drop.
struct Pod {
    dir: TempDir,
    state: PathBuf,
    pids: Vec<u32>,
}

impl Pod {
    fn new() -> Pod {
        let dir = TempDir::new("berth-shim-test");
        let state = dir.path().join("pod");
        Pod {
            dir,
            state,
            pids: Vec::new(),
        }
    }

    fn config(&self, mode: NamespaceMode) -> SandboxConfig {
        SandboxConfig {
            pod_id: "test-pod".into(),
            state_dir: self.state.to_str().unwrap().into(),
            network: mode as i32,
            ipc: mode as i32,
            uts: mode as i32,
            pid: mode as i32,
            hostname: "berth-test-pod".into(),
            sysctls: Default::default(),
            loopback_up: true,
            ..Default::default()
        }
    }

    async fn spawn(&mut self, config: &SandboxConfig) -> Result<u32, shim::Error> {
        let pid = shim::spawn(Path::new(SHIM), config).await?;
        self.pids.push(pid);
        Ok(pid)
    }

    fn client(&self) -> ShimClient {
        ShimClient::new(&self.state)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.state.join("shim.log")).unwrap_or_default()
    }

    /// Mounts under this pod's directory, from /proc/self/mountinfo.
    fn mounts(&self) -> Vec<String> {
        let root = self.dir.path().to_str().unwrap();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(root))
            .map(str::to_string)
            .collect()
    }

    /// Processes holding a file under this pod's directory open (the shim and its init
    /// have shim.log as stdout and stderr).
    fn processes(&self) -> Vec<u32> {
        let root = self.dir.path();
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
                continue;
            };
            if fds
                .flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.starts_with(root)))
            {
                found.push(pid);
            }
        }
        found
    }

    fn assert_nothing_left(&self) {
        assert_eq!(self.mounts(), Vec::<String>::new(), "mounts left");
        assert_eq!(self.processes(), Vec::<u32>::new(), "processes left");
        for pid in &self.pids {
            assert!(!is_berth_shim(*pid), "berth-shim {pid} still there");
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let mut pids = self.pids.clone();
        pids.extend(self.processes());
        for pid in &pids {
            if is_berth_shim(*pid) {
                let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
            }
        }
        for pid in &pids {
            wait_gone(*pid, Duration::from_secs(5));
        }
        let _ = namespaces::unpin_all(&self.state);
        if std::thread::panicking() {
            eprintln!("--- shim.log ---\n{}", self.log());
        }
    }
}

fn is_berth_shim(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "berth-shim")
}

/// Waits until /proc/<pid> is gone (exited and reaped); false on timeout.
fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

fn run(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn nsenter(kind: &str, pin: &Path, cmd: &[&str]) -> String {
    let arg = format!("--{kind}={}", pin.display());
    let mut full = vec!["nsenter", arg.as_str()];
    full.extend(cmd);
    run(&full).trim().to_string()
}

fn read_trim(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p).unwrap().trim().to_string()
}

fn status_field(pid: u32, field: &str) -> String {
    read_trim(format!("/proc/{pid}/status"))
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[tokio::test]
async fn pod_namespaces_hostname_sysctls_init_and_shutdown() {
    let host_forward = read_trim("/proc/sys/net/ipv4/ip_forward");
    let host_rmid = read_trim("/proc/sys/kernel/shm_rmid_forced");
    let host_name = run(&["hostname"]);

    let mut pod = Pod::new();
    let mut cfg = pod.config(NamespaceMode::Pod);
    cfg.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
    cfg.sysctls
        .insert("kernel.shm_rmid_forced".into(), "1".into());
    let pid = pod.spawn(&cfg).await.expect("spawn");
    assert!(shim::shim_alive(&pod.state));
    assert_eq!(read_trim(pod.state.join("shim.pid")), pid.to_string());
    // Detached: its own session, not our child.
    let stat = read_trim(format!("/proc/{pid}/stat"));
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    assert_eq!(fields[3], pid.to_string(), "session id: {stat}");
    assert_ne!(fields[1], std::process::id().to_string(), "parent: {stat}");
    let sock = pod.state.join("shim.sock");
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let ns = namespaces::ns_paths(&pod.state);
    // Only the network namespace is pinned (one host mount per pod); IPC and UTS are links
    // to the shim's, PID to the init's; the user namespace is only for user-namespaced pods.
    assert!(namespaces::is_pinned(&ns.net));
    assert_eq!(pod.mounts().len(), 1, "{:?}", pod.mounts());
    let init = pod.client().ping().await.unwrap().init_pid;
    for (kind, owner) in [
        (Namespace::Ipc, pid),
        (Namespace::Uts, pid),
        (Namespace::Pid, init),
    ] {
        assert!(namespaces::is_linked(ns.get(kind)), "{kind:?} not linked");
        assert_eq!(
            std::fs::read_link(ns.get(kind)).unwrap(),
            PathBuf::from(format!("/proc/{owner}/ns/{}", kind.name()))
        );
    }
    assert!(!ns.user.exists());
    let lo = nsenter("net", &ns.net, &["ip", "-o", "link", "show", "lo"]);
    assert!(lo.contains("UP"), "{lo}");
    assert_eq!(nsenter("uts", &ns.uts, &["hostname"]), "berth-test-pod");
    assert_eq!(
        nsenter("net", &ns.net, &["cat", "/proc/sys/net/ipv4/ip_forward"]),
        "1"
    );
    assert_eq!(
        nsenter("ipc", &ns.ipc, &["cat", "/proc/sys/kernel/shm_rmid_forced"]),
        "1"
    );
    // The host's are untouched.
    assert_eq!(read_trim("/proc/sys/net/ipv4/ip_forward"), host_forward);
    assert_eq!(read_trim("/proc/sys/kernel/shm_rmid_forced"), host_rmid);
    assert_eq!(run(&["hostname"]), host_name);

    let ping = pod.client().ping().await.expect("ping");
    assert_eq!(ping.pid, pid);
    let init = ping.init_pid;
    assert_ne!(init, 0);
    pod.pids.push(init);
    assert_eq!(status_field(init, "NSpid"), format!("{init}\t1"));
    assert_eq!(status_field(init, "PPid"), pid.to_string());
    let mut running = pod.processes();
    running.sort();
    assert_eq!(
        running,
        [pid, init],
        "the leak check sees the shim and its init"
    );
    // The init is PID 1 of the pinned namespace; the shim went back to its own, so
    // that libcontainer's processes see host pids (containers join the pin).
    {
        use std::os::unix::fs::MetadataExt;
        let init_ns = std::fs::metadata(format!("/proc/{init}/ns/pid")).unwrap();
        let pinned = std::fs::metadata(&ns.pid).unwrap();
        assert_eq!((init_ns.dev(), init_ns.ino()), (pinned.dev(), pinned.ino()));
    }
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/ns/pid_for_children")).unwrap(),
        std::fs::read_link("/proc/self/ns/pid").unwrap()
    );

    // Garbled and unknown requests are answered with an error; the shim keeps serving,
    // several exchanges on one connection included.
    let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(&[2, 0xff, 0xff]).unwrap(); // a body that is not a Request
    let answer = read_response(&mut c);
    assert!(answer.error.contains("garbled"), "{answer:?}");
    c.write_all(&[2, 0x7a, 0]).unwrap(); // field 15: a request kind the shim does not know
    let answer = read_response(&mut c);
    assert_eq!(answer.error, "unknown request");
    c.write_all(&[2, 0x0a, 0]).unwrap(); // ping
    let answer = read_response(&mut c);
    assert!(answer.error.is_empty(), "{answer:?}");
    // A length prefix over the limit: answered, then the connection is closed.
    c.write_all(&[0xff, 0xff, 0xff, 0x7f]).unwrap();
    let answer = read_response(&mut c);
    assert!(answer.error.contains("garbled"), "{answer:?}");
    drop(c);
    assert_eq!(pod.client().ping().await.unwrap().pid, pid);

    pod.client()
        .shutdown(Duration::from_secs(2))
        .await
        .expect("shutdown");
    assert!(wait_gone(pid, Duration::from_secs(5)), "shim still there");
    assert!(wait_gone(init, Duration::from_secs(5)), "init still there");
    for kind in Namespace::ALL {
        assert!(!ns.get(kind).exists(), "{kind:?} pin left");
    }
    assert!(!sock.exists());
    assert!(!pod.state.join("shim.pid").exists());
    assert!(!shim::shim_alive(&pod.state));
    assert!(matches!(
        pod.client().ping().await,
        Err(shim::Error::Gone(_))
    ));
    assert!(pod.log().contains("shutdown requested"), "{}", pod.log());
    pod.assert_nothing_left();
}

fn read_response(c: &mut std::os::unix::net::UnixStream) -> berth::proto::shim::Response {
    use prost::Message;
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    loop {
        if let berth::shim::framing::Frame::Complete { header, len } =
            berth::shim::framing::split(&buf)
        {
            return berth::proto::shim::Response::decode(&buf[header..header + len]).unwrap();
        }
        c.read_exact(&mut b).expect("an answer");
        buf.push(b[0]);
    }
}

#[tokio::test]
async fn host_namespaces_pin_nothing() {
    let host_name = run(&["hostname"]);
    let mut pod = Pod::new();
    let cfg = pod.config(NamespaceMode::Host);
    let pid = pod.spawn(&cfg).await.expect("spawn");
    let ns = namespaces::ns_paths(&pod.state);
    for kind in Namespace::ALL {
        assert!(!ns.get(kind).exists(), "{kind:?} pinned");
    }
    for kind in ["net", "ipc", "uts", "pid_for_children"] {
        assert_eq!(
            std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap(),
            std::fs::read_link(format!("/proc/self/ns/{kind}")).unwrap(),
            "{kind}"
        );
    }
    assert_eq!(run(&["hostname"]), host_name);
    let ping = pod.client().ping().await.unwrap();
    assert_eq!((ping.pid, ping.init_pid), (pid, 0));
    assert!(pod.mounts().is_empty());
    pod.client().shutdown(Duration::from_secs(1)).await.unwrap();
    assert!(wait_gone(pid, Duration::from_secs(5)));
    pod.assert_nothing_left();
}

/// A shim killed with SIGKILL leaves its pin and links (berthd removes them with `unpin_all`); the
/// pod init dies with it (PR_SET_PDEATHSIG), so the pod's PID namespace is torn down.
#[tokio::test]
async fn killed_shim_leaves_pins_for_unpin_all() {
    let mut pod = Pod::new();
    let cfg = pod.config(NamespaceMode::Pod);
    let pid = pod.spawn(&cfg).await.expect("spawn");
    let init = pod.client().ping().await.unwrap().init_pid;
    pod.pids.push(init);

    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    assert!(wait_gone(pid, Duration::from_secs(5)), "shim still there");
    assert!(
        wait_gone(init, Duration::from_secs(5)),
        "init outlived its shim"
    );
    assert!(!shim::shim_alive(&pod.state));
    assert!(matches!(
        pod.client().ping().await,
        Err(shim::Error::Gone(_))
    ));

    let ns = namespaces::ns_paths(&pod.state);
    assert!(namespaces::is_pinned(&ns.net));
    // The links to the dead shim and init lead nowhere (and are never followed).
    for kind in [Namespace::Ipc, Namespace::Uts, Namespace::Pid] {
        assert!(!namespaces::is_pinned(ns.get(kind)), "{kind:?} pinned");
        assert!(
            !namespaces::is_linked(ns.get(kind)),
            "{kind:?} still leads somewhere"
        );
        assert!(std::fs::symlink_metadata(ns.get(kind)).is_ok(), "{kind:?}");
    }
    // The network namespace outlives the shim.
    let lo = nsenter("net", &ns.net, &["ip", "-o", "link", "show", "lo"]);
    assert!(lo.contains("UP"), "{lo}");

    namespaces::unpin_all(&pod.state).unwrap();
    for kind in Namespace::ALL {
        assert!(
            std::fs::symlink_metadata(ns.get(kind)).is_err(),
            "{kind:?} pin or link left"
        );
    }
    namespaces::unpin_all(&pod.state).unwrap();
    pod.assert_nothing_left();
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly() {
    let mut pod = Pod::new();
    let cfg = pod.config(NamespaceMode::Pod);
    let pid = pod.spawn(&cfg).await.expect("spawn");
    let init = pod.client().ping().await.unwrap().init_pid;
    pod.pids.push(init);
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    assert!(wait_gone(pid, Duration::from_secs(10)));
    assert!(wait_gone(init, Duration::from_secs(5)));
    assert!(!namespaces::ns_dir(&pod.state).exists());
    assert!(!pod.state.join("shim.sock").exists());
    assert!(
        pod.log().contains("shutting down on signal"),
        "{}",
        pod.log()
    );
    pod.assert_nothing_left();
}

/// The init dying is logged and reported (init_pid 0); the shim keeps serving.
#[tokio::test]
async fn init_death_is_reported() {
    let mut pod = Pod::new();
    let cfg = pod.config(NamespaceMode::Pod);
    let pid = pod.spawn(&cfg).await.expect("spawn");
    let init = pod.client().ping().await.unwrap().init_pid;
    pod.pids.push(init);
    kill(Pid::from_raw(init as i32), Signal::SIGKILL).unwrap();
    assert!(wait_gone(init, Duration::from_secs(5)), "init not reaped");
    let ping = pod.client().ping().await.unwrap();
    assert_eq!((ping.pid, ping.init_pid), (pid, 0));
    // Its pid may be reused now: the link to its PID namespace went with it.
    let ns = namespaces::ns_paths(&pod.state);
    assert!(std::fs::symlink_metadata(&ns.pid).is_err(), "PID link left");
    assert!(namespaces::is_linked(&ns.ipc));
    assert!(pod.log().contains("exited unexpectedly"), "{}", pod.log());
    pod.client().shutdown(Duration::from_secs(1)).await.unwrap();
    assert!(wait_gone(pid, Duration::from_secs(5)));
    pod.assert_nothing_left();
}

#[tokio::test]
async fn bad_sysctls_fail_the_start_and_leave_nothing() {
    let host_name = run(&["hostname"]);
    for (key, want) in [
        // Refused before anything is made.
        ("vm.swappiness", "not in a separate kernel namespace"),
        ("../kernel/pid_max", "'..'"),
        ("/proc/sys/net/ipv4/ip_forward", "absolute"),
        // Refused by the kernel, after the namespaces were made and pinned.
        ("net.ipv4.no_such_sysctl", "No such file"),
    ] {
        let mut pod = Pod::new();
        let mut cfg = pod.config(NamespaceMode::Pod);
        cfg.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
        cfg.sysctls.insert(key.into(), "1".into());
        let err = pod.spawn(&cfg).await.expect_err(key);
        let shim::Error::Spawn(text) = &err else {
            panic!("{key}: {err:?}")
        };
        assert!(text.contains(key), "{key}: {text}");
        assert!(text.contains(want), "{key}: {text}");
        assert!(!namespaces::ns_dir(&pod.state).exists(), "{key}");
        assert!(!pod.state.join("shim.sock").exists(), "{key}");
        assert!(!pod.state.join("shim.pid").exists(), "{key}");
        pod.assert_nothing_left();
    }
    // A sysctl of a namespace the pod shares with the host would change the host.
    let mut pod = Pod::new();
    let mut cfg = pod.config(NamespaceMode::Host);
    cfg.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
    let err = pod.spawn(&cfg).await.expect_err("host net sysctl");
    assert!(err.to_string().contains("shares with the host"), "{err}");
    pod.assert_nothing_left();
    assert_eq!(run(&["hostname"]), host_name);
}

#[tokio::test]
async fn spawn_reports_bad_input() {
    let err = shim::spawn(
        Path::new("/nonexistent/berth-shim"),
        &SandboxConfig::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, shim::Error::Spawn(_)), "{err:?}");
    let cfg = SandboxConfig {
        state_dir: "relative/dir".into(),
        ..Default::default()
    };
    let err = shim::spawn(Path::new(SHIM), &cfg).await.unwrap_err();
    assert!(err.to_string().contains("not an absolute path"), "{err}");
    // Nobody at the socket.
    let dir = TempDir::new("berth-shim-test");
    assert!(matches!(
        ShimClient::new(dir.path()).ping().await,
        Err(shim::Error::Gone(_))
    ));
    assert!(!shim::shim_alive(dir.path()));
    // A pid file naming a process that is not a shim.
    std::fs::write(dir.path().join("shim.pid"), std::process::id().to_string()).unwrap();
    assert!(!shim::shim_alive(dir.path()));
}
