//! Interactive exec and attach (`ContainerService::exec_interactive` / `attach`, what the
//! streaming server calls) against real containers: berthd's services in this process
//! (its image, pod and container services over a real metadata store), the real pod shim
//! and libcontainer, and a real registry serving berth's busybox test image.
//!
//! Each test has its own registry, temporary root and state directory, and puts its pod's
//! cgroups under `/berth-test-<pid>-<tag>`. The [`Env`] Drop guard (which also runs when a
//! test panics) kills the pod's shim (its containers and execs die with it), removes the
//! cgroups and unmounts what the test mounted.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth::config::Config;
use berth::container::config::{ContainerConfig, ContainerMetadata};
use berth::container::{ContainerService, Error, ProcessIo};
use berth::image::{Credentials, ImageService, Reference};
use berth::sandbox::SandboxService;
use berth::sandbox::spec::{NsMode, PodMetadata, PodSpec};
use berth::store::Db;
use common::TempDir;
use common::registry::{Registry, testimg};
use common::world::CgroupGuard;
use nix::fcntl::OFlag;

/// One test's world: berthd's services over a temporary root, a pod (host network, so no
/// CNI; a PID namespace per container) and the busybox image pulled from the test's own registry.
struct Env {
    containers: ContainerService,
    sandboxes: SandboxService,
    pod: String,
    image: String,
    /// `berth-test-<pid>-<tag>`: the pod's cgroup tree.
    cg: CgroupGuard,
    logs: PathBuf,
    state: PathBuf,
    dir: TempDir,
    _reg: Registry,
}

impl Env {
    async fn new(tag: &str) -> Env {
        let reg = Registry::start_only(&[testimg::BUSYBOX]);
        let dir = TempDir::new("berth-interactive");
        let (root, state) = (dir.path().join("root"), dir.path().join("state"));
        let cfg = Config::parse(&format!(
            "root = {root:?}\nstate_dir = {state:?}\nsocket = {:?}\nshim_path = {:?}\n\
             [registry.hosts.\"{}\"]\nplain_http = true\n",
            dir.path().join("berth.sock"),
            env!("CARGO_BIN_EXE_berth-shim"),
            reg.addr()
        ))
        .expect("config");
        for d in [&root, &state] {
            std::fs::create_dir_all(d).unwrap();
        }
        let db = Arc::new(Db::open(&cfg.db_path()).expect("open db"));
        let images = ImageService::open(&cfg, db.clone()).expect("image service");
        let sandboxes = SandboxService::open(&cfg, db.clone()).expect("sandbox service");
        let containers = ContainerService::open(&cfg, db, images.clone(), sandboxes.clone())
            .expect("container service");
        let image = reg.reference(testimg::BUSYBOX);
        images
            .pull(&Reference::parse(&image).unwrap(), Credentials::Anonymous)
            .await
            .expect("pull busybox");
        let cg = CgroupGuard::new(tag);
        let logs = dir.path().join("logs");
        let mut env = Env {
            containers,
            sandboxes,
            pod: String::new(),
            image,
            cg,
            logs,
            state,
            dir,
            _reg: reg,
        };
        let spec = PodSpec {
            metadata: PodMetadata {
                name: format!("interactive-{tag}"),
                uid: format!("uid-{}-{tag}", std::process::id()),
                namespace: "berth-test".into(),
                attempt: 0,
            },
            hostname: "interactive".into(),
            log_directory: env.logs.display().to_string(),
            cgroup_parent: env.cg.parent("pod"),
            network: NsMode::Node,
            // Kubernetes' default. (A shared PID namespace makes libcontainer 0.7's cgroup
            // v1 mount look at the host's /proc/<pid in the pod>: creates fail at random.)
            pid: NsMode::Container,
            ..Default::default()
        };
        env.pod = env.sandboxes.run(spec).await.expect("run pod").id;
        env
    }

    /// Creates and starts a container running `cmd`, its log at `<logs>/<name>.log`.
    async fn container(
        &self,
        name: &str,
        cmd: &[&str],
        stdin: bool,
        once: bool,
        tty: bool,
    ) -> String {
        self.container_as(name, cmd, stdin, once, tty, None).await
    }

    /// [`Env::container`] with `run_as_user`.
    async fn container_as(
        &self,
        name: &str,
        cmd: &[&str],
        stdin: bool,
        once: bool,
        tty: bool,
        user: Option<i64>,
    ) -> String {
        let mut config = ContainerConfig {
            metadata: ContainerMetadata {
                name: name.into(),
                attempt: 0,
            },
            image: self.image.clone(),
            command: cmd.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            stdin,
            stdin_once: once,
            tty,
            ..Default::default()
        };
        config.security.run_as_user = user;
        let rec = self
            .containers
            .create(&self.pod, config)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "create {name}: {e}\n{}\n{}",
                    self.shim_log(),
                    self.log(name)
                )
            });
        self.containers.start(&rec.id).await.expect("start");
        rec.id
    }

    fn shim_log(&self) -> String {
        let p = self.state.join("pods").join(&self.pod).join("shim.log");
        std::fs::read_to_string(p).unwrap_or_default()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// ExecSync's stdout.
    async fn exec_sync(&self, id: &str, cmd: &str) -> String {
        let r = self
            .containers
            .exec_sync(
                id,
                vec!["sh".into(), "-c".into(), cmd.into()],
                Duration::from_secs(10),
            )
            .await
            .expect("exec_sync");
        String::from_utf8_lossy(&r.stdout).into_owned()
    }

    async fn wait_exited(&self, id: &str) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let rec = self.containers.status(id).await.expect("status");
            if rec.state == berth::store::containers::ContainerState::Exited {
                return rec.exit_code;
            }
            assert!(Instant::now() < deadline, "{id} did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Removes the pod as kubelet would; the Drop guard then finds nothing left.
    async fn finish(self) {
        self.containers
            .remove_pod_containers(&self.pod)
            .await
            .expect("remove containers");
        self.sandboxes.stop(&self.pod).await.expect("stop pod");
        self.sandboxes.remove(&self.pod).await.expect("remove pod");
        assert!(common::shims_under(self.dir.path()).is_empty());
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- shim log ---\n{}", self.shim_log());
        }
        for pid in common::shims_under(self.dir.path()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        self.cg.clear();
        let mut mounts: Vec<String> = common::mounts_under(self.dir.path())
            .iter()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// A pipe, both ends close-on-exec: (read, write).
fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap()
}

/// Reads an fd to its end (EOF, or EIO from a pty master whose slave is gone) on a
/// thread of its own, so that the test can look at what arrived so far.
struct Collector {
    buf: Arc<Mutex<Vec<u8>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    fn new(fd: OwnedFd) -> Collector {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b = buf.clone();
        let thread = std::thread::spawn(move || {
            let mut f = std::fs::File::from(fd);
            let mut chunk = [0u8; 4096];
            while let Ok(n) = f.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                b.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        Collector {
            buf,
            thread: Some(thread),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }

    fn eof(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits until what arrived contains `needle`.
    async fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "{needle:?} did not arrive; got {:?}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for EOF and returns everything.
    async fn wait_eof(mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.eof() {
            assert!(Instant::now() < deadline, "no EOF; got {:?}", self.text());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.thread.take().unwrap().join().unwrap();
        self.text()
    }
}

/// Writes all of `data`, waiting while a non-blocking fd is full.
fn write_all(fd: &OwnedFd, data: &[u8]) {
    let mut rest = data;
    while !rest.is_empty() {
        match nix::unistd::write(fd, rest) {
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("write: {e}"),
        }
    }
}

/// Sets a terminal's size, as the streaming server does on a resize message.
#[allow(unsafe_code)]
fn set_size(master: &OwnedFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize, which lives across the call.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    assert_eq!(r, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_pipes() {
    let env = Env::new("exec-pipes").await;
    let id = env
        .container("main", &["sleep", "100000"], false, false, false)
        .await;

    let (in_r, in_w) = pipe();
    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();
    let (out, err) = (Collector::new(out_r), Collector::new(err_r));
    let svc = env.containers.clone();
    let cid = id.clone();
    let exec = tokio::spawn(async move {
        let io = ProcessIo {
            stdin: Some(in_r),
            stdout: Some(out_w),
            stderr: Some(err_w),
        };
        let cmd = args(&["sh", "-c", "read x; echo got $x; echo err >&2; exit 3"]);
        svc.exec_interactive(&cid, cmd, false, io).await
    });
    let mut stdin = std::fs::File::from(in_w);
    stdin.write_all(b"hi\n").unwrap();
    drop(stdin);
    let code = tokio::time::timeout(Duration::from_secs(10), exec)
        .await
        .expect("exec ends")
        .unwrap()
        .expect("exec");
    assert_eq!(code, 3);
    // berthd and the shim closed their copies: the process's exit is EOF.
    assert_eq!(out.wait_eof().await, "got hi\n");
    assert_eq!(err.wait_eof().await, "err\n");

    // Only stdout given: stdin and stderr are /dev/null.
    let (out_r, out_w) = pipe();
    let out = Collector::new(out_r);
    let io = ProcessIo {
        stdout: Some(out_w),
        ..Default::default()
    };
    let cmd = args(&["sh", "-c", "cat; echo done; echo hidden >&2; kill -9 $$"]);
    let code = env
        .containers
        .exec_interactive(&id, cmd, false, io)
        .await
        .unwrap();
    assert_eq!(code, 128 + 9, "killed by SIGKILL");
    assert_eq!(out.wait_eof().await, "done\n");

    // A process of another user owns its pipes, as with runc: it may reopen them.
    let user = env
        .container_as(
            "user",
            &["sleep", "100000"],
            false,
            false,
            false,
            Some(1000),
        )
        .await;
    let (out_r, out_w) = pipe();
    let out = Collector::new(out_r);
    let io = ProcessIo {
        stdout: Some(out_w),
        ..Default::default()
    };
    let cmd = args(&["sh", "-c", "id -u > /dev/stdout"]);
    let code = env.containers.exec_interactive(&user, cmd, false, io).await;
    assert_eq!(code.unwrap(), 0);
    assert_eq!(out.wait_eof().await, "1000\n");

    // The errors ExecSync gives.
    let e = env
        .containers
        .exec_interactive(&id, args(&["no-such-cmd"]), false, ProcessIo::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("executable file not found")),
        "{e:?}"
    );
    let e = env
        .containers
        .exec_interactive(
            "no-such-container",
            args(&["true"]),
            false,
            ProcessIo::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");
    let stopped = env
        .container("stopped", &["true"], false, false, false)
        .await;
    env.wait_exited(&stopped).await;
    let e = env
        .containers
        .exec_interactive(&stopped, args(&["true"]), false, ProcessIo::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::FailedPrecondition(_)), "{e:?}");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_a_tty() {
    let env = Env::new("exec-tty").await;
    let id = env
        .container("main", &["sleep", "100000"], false, false, false)
        .await;

    // A pty of the container's own /dev/pts: the process knows its name.
    let pty = env.containers.open_pty(&id).await.expect("open_pty");
    assert!(pty.name.starts_with("/dev/pts/"), "{}", pty.name);
    let master = pty.master;
    let out = Collector::new(master.try_clone().unwrap());
    let svc = env.containers.clone();
    let cid = id.clone();
    let script = "tty; test -t 0 && test -t 1 && test -t 2 && echo isatty; \
                  echo \"TERM=$TERM\"; echo ctty > /dev/tty; read x; stty size";
    let exec = tokio::spawn(async move {
        let io = ProcessIo {
            stdin: Some(pty.slave),
            ..Default::default()
        };
        svc.exec_interactive(&cid, args(&["sh", "-c", script]), true, io)
            .await
    });
    out.wait_for("isatty").await;
    // /dev/tty opens only as the controlling terminal.
    out.wait_for("ctty").await;
    set_size(&master, 33, 97);
    write_all(&master, b"\n");
    let code = tokio::time::timeout(Duration::from_secs(10), exec)
        .await
        .expect("exec ends")
        .unwrap()
        .expect("exec");
    assert_eq!(code, 0);
    let text = out.wait_eof().await;
    assert!(text.starts_with(&format!("{}\r\n", pty.name)), "{text:?}");
    assert!(text.contains("TERM=xterm"), "{text:?}");
    assert!(text.contains("33 97"), "{text:?}");

    // A pty of the host's works too, nameless inside.
    let host = nix::pty::openpty(None, None).expect("openpty");
    let out = Collector::new(host.master);
    let io = ProcessIo {
        stdout: Some(host.slave),
        ..Default::default()
    };
    let cmd = args(&["sh", "-c", "test -t 0 && echo isatty"]);
    assert_eq!(
        env.containers
            .exec_interactive(&id, cmd, true, io)
            .await
            .unwrap(),
        0
    );
    assert_eq!(out.wait_eof().await, "isatty\r\n");

    // A process of another user owns its terminal, as with runc: it may reopen it.
    let user = env
        .container_as(
            "user",
            &["sleep", "100000"],
            false,
            false,
            false,
            Some(1000),
        )
        .await;
    let pty = env.containers.open_pty(&user).await.unwrap();
    let out = Collector::new(pty.master);
    let io = ProcessIo {
        stdin: Some(pty.slave),
        ..Default::default()
    };
    let cmd = args(&[
        "sh",
        "-c",
        "id -u; stat -c %u $(tty); echo reopened > /dev/stdout",
    ]);
    let code = env.containers.exec_interactive(&user, cmd, true, io).await;
    let text = out.wait_eof().await;
    assert_eq!(code.unwrap(), 0, "{text:?}");
    assert_eq!(text, "1000\r\n1000\r\nreopened\r\n");

    let e = env
        .containers
        .open_pty("no-such-container")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_exec_kills_it() {
    let env = Env::new("exec-drop").await;
    let id = env
        .container("main", &["sleep", "100000"], false, false, false)
        .await;
    let count = "ps | grep -c '[s]leep 100[01]$'";

    let (out_r, out_w) = pipe();
    let out = Collector::new(out_r);
    let svc = env.containers.clone();
    let cid = id.clone();
    let exec = tokio::spawn(async move {
        let io = ProcessIo {
            stdout: Some(out_w),
            ..Default::default()
        };
        // A child in the background too: the whole process group goes.
        let cmd = args(&["sh", "-c", "sleep 1000 & echo started; sleep 1001"]);
        svc.exec_interactive(&cid, cmd, false, io).await
    });
    out.wait_for("started").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.exec_sync(&id, count).await.trim() != "2" {
        assert!(Instant::now() < deadline, "the exec's sleeps did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    exec.abort();
    assert!(exec.await.unwrap_err().is_cancelled());
    while env.exec_sync(&id, count).await.trim() != "0" {
        assert!(
            Instant::now() < deadline,
            "the exec outlived its client: {}",
            env.exec_sync(&id, "ps").await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its stdout was only held by the killed processes.
    out.wait_eof().await;
    // The container itself runs on.
    assert_eq!(env.exec_sync(&id, "echo alive").await, "alive\n");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_with_pipes() {
    let env = Env::new("attach-pipes").await;
    let id = env.container("shell", &["sh"], true, false, false).await;

    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();
    let (out, err) = (Collector::new(out_r), Collector::new(err_r));
    let a = env
        .containers
        .attach(&id, Some(out_w), Some(err_w))
        .await
        .expect("attach");
    assert!(!a.tty);
    let stdin = a.stdin.expect("the container has stdin");
    write_all(&stdin, b"echo hello\n");
    out.wait_for("hello\n").await;
    write_all(&stdin, b"echo oops >&2\n");
    err.wait_for("oops\n").await;
    assert_eq!(out.text(), "hello\n");

    // A second client at the same time: both see the output; the log still gets it.
    let (out2_r, out2_w) = pipe();
    let b = env
        .containers
        .attach(&id, Some(out2_w), None)
        .await
        .unwrap();
    let stdin2 = b.stdin.expect("not stdin_once: every attach gets stdin");
    write_all(&stdin2, b"echo two\n");
    out.wait_for("two\n").await;
    let mut second = [0u8; 4];
    std::fs::File::from(out2_r.try_clone().unwrap())
        .read_exact(&mut second)
        .unwrap();
    assert_eq!(&second, b"two\n");
    let log = env.log("shell");
    assert!(
        log.contains("stdout F hello") && log.contains("stderr F oops"),
        "{log}"
    );

    // A client that goes away is dropped; the others carry on.
    drop(out2_r);
    write_all(&stdin, b"echo three\n");
    out.wait_for("three\n").await;

    write_all(&stdin, b"exit 7\n");
    assert_eq!(env.wait_exited(&id).await, 7);
    // The container's exit is EOF for the attached clients.
    assert_eq!(out.wait_eof().await, "hello\ntwo\nthree\n");
    assert_eq!(err.wait_eof().await, "oops\n");

    let (_r, w) = pipe();
    let e = env.containers.attach(&id, Some(w), None).await.unwrap_err();
    assert!(matches!(e, Error::FailedPrecondition(_)), "{e:?}");
    let e = env
        .containers
        .attach("no-such-container", None, None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_with_a_tty() {
    let env = Env::new("attach-tty").await;
    let id = env.container("term", &["sh"], true, false, true).await;

    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();
    let (out, err) = (Collector::new(out_r), Collector::new(err_r));
    let a = env
        .containers
        .attach(&id, Some(out_w), Some(err_w))
        .await
        .expect("attach");
    assert!(a.tty);
    // A terminal has one output: the stderr pipe is closed at once.
    assert_eq!(err.wait_eof().await, "");
    let master = a.stdin.expect("the pty master");
    write_all(&master, b"echo hel''lo\n");
    out.wait_for("hello\r\n").await;
    set_size(&master, 40, 120);
    write_all(&master, b"stty size\n");
    out.wait_for("40 120\r\n").await;
    write_all(&master, b"exit\n");
    assert_eq!(env.wait_exited(&id).await, 0);
    out.wait_eof().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_stdin_once() {
    let env = Env::new("attach-once").await;
    let id = env.container("cat", &["cat"], true, true, false).await;

    let (out_r, out_w) = pipe();
    let out = Collector::new(out_r);
    let a = env.containers.attach(&id, Some(out_w), None).await.unwrap();
    let stdin = a.stdin.expect("the first attach gets stdin");
    // The shim handed over its only copy: later clients get none.
    let b = env.containers.attach(&id, None, None).await.unwrap();
    assert!(b.stdin.is_none());
    write_all(&stdin, b"abc\n");
    out.wait_for("abc\n").await;
    // Closing it is EOF for cat, which exits.
    drop(stdin);
    assert_eq!(env.wait_exited(&id).await, 0);
    assert_eq!(out.wait_eof().await, "abc\n");
    assert!(env.log("cat").contains("stdout F abc"));
    env.finish().await;
}
