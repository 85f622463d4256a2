//! The per-pod shim process.
//!
//! berthd runs `berth-shim` with a length-delimited [`SandboxConfig`] on stdin. The process
//! forks; the child detaches (own session, subreaper, stdio to `<state_dir>/shim.log`),
//! makes the pod's namespaces and pins or links them (`sandbox::namespaces`), starts the
//! pod init when the pod has its own PID namespace, listens on `<state_dir>/shim.sock` and
//! writes `<state_dir>/shim.pid`, then reports ready through a pipe. The parent prints the child's pid and exits 0 (or prints
//! the child's error and exits 1), so berthd knows the shim is serving once its own child
//! has exited, and the shim is not berthd's child.
//!
//! With a PID namespace of its own the pod's init is PID 1 of it, and the shim returns to
//! its own namespace afterwards: libcontainer's processes must see host pids, and
//! containers join the pod's namespace through `<state_dir>/ns/pid` in their spec: a link
//! to the init's, removed when the shim reaps the init (a pin in a user-namespaced pod).
//!
//! The shim is one thread with no async runtime: a `poll` loop over the listener, its
//! connections, a signalfd (SIGCHLD: reap everything, as the subreaper; SIGTERM/SIGINT:
//! shut down) and the containers' and execs' output pipes (see `containers`). Requests and
//! answers are prost length-delimited; a connection gets one Response per Request, in
//! order. An ExecSync is answered when the command is done, without holding up the loop;
//! an interactive Exec is answered when it started and again when it ended (its
//! connection closing first kills it); Exec and Attach carry fds (SCM_RIGHTS) both ways;
//! a SubscribeRequest is answered with an Empty, then an Event message per container
//! event for as long as the connection lasts. Answers are written without blocking
//! (what the socket does not take waits for POLLOUT); a subscriber that leaves 1 MiB
//! unread is dropped. Shutdown (request or signal) stops the containers (SIGTERM, then
//! SIGKILL to their cgroups after the timeout), reaps them, deletes them with
//! libcontainer, unpins and unlinks the namespaces, answers and exits. After container
//! work the loop gives memory back once idle (`memory::trim`).

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};
use prost::Message;

use super::containers::{Failure, Runtime, Source};
use super::fdpass;
use super::framing::{self, Frame};
use super::init::{self, Init};
use super::interactive;
use super::memory;
use super::sysctl;
use crate::network::netlink;
use crate::proto::shim::{
    AttachResponse, CreateContainerResponse, Empty, ExecExit, ExecStarted, NamespaceMode,
    OpenPtyResponse, PingResponse, Request, Response, SandboxConfig, ShutdownResponse, request,
    response,
};
use crate::sandbox::namespaces::{self, Namespace};

/// Shutdown timeout used on SIGTERM/SIGINT.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// After SIGKILL, how long to wait for the last processes before giving up on them.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed at accept. An interactive exec holds
/// its connection for as long as it runs: room for a few dozen of them beside probes'
/// ExecSyncs and berthd's requests.
const MAX_CONNECTIONS: usize = 128;
/// How often the loop wakes up with nothing to do, to check its state directory.
const TICK: Duration = Duration::from_secs(30);
/// How long the loop must have been idle after container work before it gives memory
/// back (see `memory::trim`).
const TRIM_IDLE: Duration = Duration::from_millis(200);

/// The shim's socket, in the pod's state directory.
pub const SOCKET_NAME: &str = "shim.sock";

/// Files of the pod's state directory that the shim owns.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_NAME)
}
pub fn pid_path(state_dir: &Path) -> PathBuf {
    state_dir.join("shim.pid")
}
pub fn log_path(state_dir: &Path) -> PathBuf {
    state_dir.join("shim.log")
}

#[doc(hidden)]
pub fn log_line(args: std::fmt::Arguments<'_>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let _ = writeln!(
        std::io::stderr().lock(),
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z berth-shim[{}] {args}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        now.subsec_millis(),
        std::process::id()
    );
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// What the shim will do, checked before it forks.
#[derive(Debug)]
struct Plan {
    state_dir: PathBuf,
    /// The pod's own namespaces among net, ipc, uts.
    own: Vec<Namespace>,
    pid_ns: bool,
    hostname: Option<String>,
    loopback_up: bool,
    /// (key as given, file under /proc/sys, value)
    sysctls: Vec<(String, PathBuf, String)>,
    /// A user-namespaced pod: the contents of its uid_map and gid_map.
    userns: Option<(String, String)>,
}

/// `/proc/PID/uid_map` content: one `container host length` line per mapping.
fn id_map(what: &str, maps: &[crate::proto::shim::IdMapping]) -> Result<String, String> {
    if maps.is_empty() {
        return Err(format!("user namespace without {what} mappings"));
    }
    Ok(maps
        .iter()
        .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.length))
        .collect())
}

fn plan(config: &SandboxConfig) -> Result<Plan, String> {
    let state_dir = PathBuf::from(&config.state_dir);
    if !state_dir.is_absolute() {
        return Err(format!(
            "state_dir {:?} is not an absolute path",
            config.state_dir
        ));
    }
    let pod = |m: i32| m == NamespaceMode::Pod as i32;
    let mut own = Vec::new();
    for (mode, ns) in [
        (config.network, Namespace::Net),
        (config.ipc, Namespace::Ipc),
        (config.uts, Namespace::Uts),
    ] {
        NamespaceMode::try_from(mode)
            .map_err(|_| format!("unknown namespace mode {mode} for {}", ns.name()))?;
        if pod(mode) {
            own.push(ns);
        }
    }
    NamespaceMode::try_from(config.pid)
        .map_err(|_| format!("unknown namespace mode {} for pid", config.pid))?;
    let hostname = (own.contains(&Namespace::Uts) && !config.hostname.is_empty())
        .then(|| config.hostname.clone());
    if let Some(h) = hostname.as_ref().filter(|h| h.len() > 64) {
        return Err(format!("hostname {h:?} is longer than 64 bytes"));
    }
    let mut sysctls = Vec::new();
    let mut keys: Vec<_> = config.sysctls.iter().collect();
    keys.sort();
    for (key, value) in keys {
        let path = sysctl::check(key, |ns| own.contains(&ns))?;
        sysctls.push((key.clone(), path, value.clone()));
    }
    let userns = if config.uid_mappings.is_empty() && config.gid_mappings.is_empty() {
        None
    } else {
        // Namespaces the host owns cannot be joined from inside the pod's user namespace.
        if own.len() != 3 {
            return Err(
                "a user-namespaced pod needs its own network, IPC and UTS namespaces".into(),
            );
        }
        Some((
            id_map("UID", &config.uid_mappings)?,
            id_map("GID", &config.gid_mappings)?,
        ))
    };
    Ok(Plan {
        state_dir,
        userns,
        pid_ns: pod(config.pid),
        loopback_up: config.loopback_up && own.contains(&Namespace::Net),
        own,
        hostname,
        sysctls,
    })
}

/// Entry point of the `berth-shim` binary.
pub fn main() -> ExitCode {
    let config = match read_config(&mut std::io::stdin().lock()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berth-shim: {e}");
            return ExitCode::FAILURE;
        }
    };
    let plan = match plan(&config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("berth-shim: pod {}: {e}", config.pod_id);
            return ExitCode::FAILURE;
        }
    };
    let (r, w) = match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("berth-shim: pipe: {e}");
            return ExitCode::FAILURE;
        }
    };
    match init::fork() {
        Err(e) => {
            eprintln!("berth-shim: {e}");
            ExitCode::FAILURE
        }
        Ok(ForkResult::Parent { child }) => {
            drop(w);
            wait_ready(child, r)
        }
        Ok(ForkResult::Child) => {
            drop(r);
            run(config, plan, w)
        }
    }
}

/// Reads the config from stdin: one length-delimited message (stdin need not be closed).
fn read_config(input: &mut impl Read) -> Result<SandboxConfig, String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        match framing::split(&buf) {
            Frame::Complete { header, len } => {
                return SandboxConfig::decode(&buf[header..header + len])
                    .map_err(|e| format!("bad SandboxConfig on stdin: {e}"));
            }
            Frame::Invalid(e) => return Err(format!("bad SandboxConfig on stdin: {e}")),
            Frame::Incomplete => {}
        }
        match input.read(&mut chunk) {
            Ok(0) => return Err("stdin closed before a whole SandboxConfig".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read stdin: {e}")),
        }
    }
}

/// The parent's side: wait for `R` (ready) or `E<error>` from the child.
fn wait_ready(child: Pid, r: OwnedFd) -> ExitCode {
    let mut msg = Vec::new();
    let _ = std::fs::File::from(r).read_to_end(&mut msg);
    match msg.split_first() {
        Some((b'R', _)) => {
            println!("{child}");
            ExitCode::SUCCESS
        }
        Some((b'E', text)) => {
            let _ = waitpid(child, None);
            eprintln!("berth-shim: {}", String::from_utf8_lossy(text));
            ExitCode::FAILURE
        }
        _ => {
            let status = waitpid(child, None);
            eprintln!("berth-shim: the shim exited during startup ({status:?})");
            ExitCode::FAILURE
        }
    }
}

/// The detached shim (the forked child).
fn run(config: SandboxConfig, plan: Plan, ready: OwnedFd) -> ExitCode {
    let mut ready = std::fs::File::from(ready);
    let rt = Runtime::new(&plan.state_dir);
    let mut shim = Shim {
        pod_id: config.pod_id,
        plan,
        init: None,
        sigfd: None,
        listener: None,
        conns: Vec::new(),
        next_conn: 0,
        rt,
        stopping: None,
        dir_missing: false,
        trim_at: None,
    };
    match shim.start() {
        Ok(()) => {
            log!("pod {}: ready", shim.pod_id);
            let _ = ready.write_all(b"R");
            drop(ready);
            shim.serve()
        }
        Err(e) => {
            log!("pod {}: start failed: {e}", shim.pod_id);
            shim.abort_start();
            let _ = ready.write_all(format!("E{e}").as_bytes());
            ExitCode::FAILURE
        }
    }
}

/// Bytes a subscriber may leave unread before it is dropped.
const MAX_QUEUED_EVENTS: usize = 1 << 20;

struct Conn {
    id: u64,
    stream: UnixStream,
    buf: Vec<u8>,
    /// Answers not yet written (the socket was full), from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
    /// Gets events (SubscribeRequest).
    subscriber: bool,
    /// An ExecSync of this connection runs: its later requests wait for the answer.
    busy: bool,
    /// Hung up or broken: removed at the end of the loop's round.
    closed: bool,
    /// Fds received (SCM_RIGHTS) that no request has claimed yet, oldest first.
    fds: Vec<OwnedFd>,
    /// Fds to send with the answer that starts at that offset of `out`.
    out_fds: Vec<(usize, Vec<OwnedFd>)>,
}

/// Fds a connection may have received and not yet claimed before it is dropped.
const MAX_UNCLAIMED_FDS: usize = 2 * fdpass::MAX_FDS;

impl Conn {
    fn new(id: u64, stream: UnixStream) -> Conn {
        Conn {
            id,
            stream,
            buf: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            subscriber: false,
            busy: false,
            closed: false,
            fds: Vec::new(),
            out_fds: Vec::new(),
        }
    }

    fn queue(&mut self, resp: &Response) {
        self.queue_with_fds(resp, Vec::new());
    }

    /// Queues an answer that carries `fds` (attached to its first byte).
    fn queue_with_fds(&mut self, resp: &Response, fds: Vec<OwnedFd>) {
        if self.closed {
            return;
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        if !fds.is_empty() {
            self.out_fds.push((self.out.len(), fds));
        }
        resp.encode_length_delimited(&mut self.out)
            .expect("a Vec grows");
        self.flush();
    }

    /// The `n` oldest fds received, for the request being served; None when fewer came.
    fn take_fds(&mut self, n: usize) -> Option<Vec<OwnedFd>> {
        (self.fds.len() >= n).then(|| self.fds.drain(..n).collect())
    }

    fn pending(&self) -> bool {
        self.out_pos < self.out.len()
    }

    /// Writes what the socket takes now.
    fn flush(&mut self) {
        while self.pending() {
            // Up to the next answer with fds; that one goes with sendmsg.
            let end = self
                .out_fds
                .iter()
                .map(|(at, _)| *at)
                .find(|&at| at > self.out_pos)
                .unwrap_or(self.out.len());
            let with_fds = self
                .out_fds
                .first()
                .is_some_and(|(at, _)| *at == self.out_pos);
            let written = if with_fds {
                fdpass::send(
                    self.stream.as_fd(),
                    &self.out[self.out_pos..end],
                    &self.out_fds[0].1,
                )
            } else {
                (&self.stream).write(&self.out[self.out_pos..end])
            };
            match written {
                Ok(0) => {
                    self.closed = true;
                    break;
                }
                Ok(n) => {
                    if with_fds {
                        // The peer has them now; our copies close.
                        self.out_fds.remove(0);
                    }
                    self.out_pos += n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.closed = true;
                    break;
                }
            }
        }
        if !self.pending() {
            self.out = Vec::new();
            self.out_pos = 0;
            self.out_fds = Vec::new();
        }
    }

    /// Writes what is queued, waiting up to a second (the shim's last answer).
    fn flush_blocking(&mut self) {
        let _ = self.stream.set_nonblocking(false);
        let _ = self.stream.set_write_timeout(Some(Duration::from_secs(1)));
        if self.pending() {
            let _ = (&self.stream).write_all(&self.out[self.out_pos..]);
        }
    }
}

/// The shutdown under way.
struct Stopping {
    /// The connection that asked for it (it gets the answer); None after a signal.
    reply_to: Option<u64>,
    /// SIGTERM was sent to the containers and execs; SIGKILL goes to everything at
    /// `deadline`, or once they are all gone.
    killing: bool,
    deadline: Instant,
}

struct Shim {
    pod_id: String,
    plan: Plan,
    init: Option<Init>,
    sigfd: Option<SignalFd>,
    listener: Option<UnixListener>,
    conns: Vec<Conn>,
    next_conn: u64,
    rt: Runtime,
    stopping: Option<Stopping>,
    dir_missing: bool,
    /// When to give memory back, once the loop is idle (see `memory::trim`).
    trim_at: Option<Instant>,
}

enum After {
    Continue,
    Exit,
}

/// What the loop polls, by position in the poll set.
#[derive(Clone, Copy)]
enum Token {
    Signals,
    Listener,
    Conn(usize),
    Runtime(Source),
}

fn ok(kind: response::Kind) -> Response {
    Response {
        error: String::new(),
        error_kind: 0,
        kind: Some(kind),
    }
}

fn failed(f: Failure) -> Response {
    Response {
        error: f.message,
        error_kind: f.kind as i32,
        kind: None,
    }
}

fn empty() -> Response {
    ok(response::Kind::Empty(Empty {}))
}

impl Shim {
    fn state_dir(&self) -> &Path {
        &self.plan.state_dir
    }

    /// Everything up to serving. On error the caller runs [`Shim::abort_start`].
    /// A user-namespaced pod: a child cloned into a new user namespace together with the
    /// pod's network, IPC, UTS (and PID) namespaces, which the user namespace then owns. The
    /// shim writes its ID maps, joins its network, IPC and UTS namespaces (so that the rest
    /// of `start` works as without a user namespace) and pins its user (and PID) namespace.
    /// Returns the child when it is the pod's init; otherwise it has done its job and is
    /// reaped here.
    fn userns_owner(
        &self,
        dir: &Path,
        uid_map: &str,
        gid_map: &str,
    ) -> Result<Option<Init>, String> {
        use nix::sched::CloneFlags;
        let mut flags = CloneFlags::CLONE_NEWUSER;
        for ns in &self.plan.own {
            flags |= ns.clone_flag();
        }
        if self.plan.pid_ns {
            flags |= CloneFlags::CLONE_NEWPID;
        }
        let owner = init::spawn_owner(flags, self.plan.pid_ns)?;
        let pid = owner.pid;
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let setup = || -> Result<(), String> {
            for (file, content) in [("uid_map", uid_map), ("gid_map", gid_map)] {
                std::fs::write(proc_dir.join(file), content)
                    .map_err(|e| format!("write {file} {content:?}: {e}"))?;
            }
            for &ns in &self.plan.own {
                let path = proc_dir.join("ns").join(ns.name());
                let f = std::fs::File::open(&path)
                    .map_err(|e| format!("open {}: {e}", path.display()))?;
                nix::sched::setns(f, ns.clone_flag())
                    .map_err(|e| format!("join the pod's {} namespace: {e}", ns.name()))?;
            }
            let paths = namespaces::ns_paths(dir);
            namespaces::pin(&proc_dir.join("ns/user"), &paths.user).map_err(|e| e.to_string())?;
            if self.plan.pid_ns {
                namespaces::pin(&proc_dir.join("ns/pid"), &paths.pid).map_err(|e| e.to_string())?;
            }
            Ok(())
        };
        let result = setup();
        if result.is_err() || !self.plan.pid_ns {
            // The holder exits once its pipe closes; the init dies by PDEATHSIG with the shim.
            if result.is_err() {
                let _ = kill(pid, Signal::SIGKILL);
            }
            drop(owner);
            let _ = waitpid(pid, None);
            return result.map(|()| None);
        }
        Ok(Some(owner))
    }

    fn start(&mut self) -> Result<(), String> {
        let dir = self.plan.state_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(log_path(&dir))
            .map_err(|e| format!("open {}: {e}", log_path(&dir).display()))?;
        let null = std::fs::File::open("/dev/null").map_err(|e| format!("open /dev/null: {e}"))?;
        nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| format!("PR_SET_CHILD_SUBREAPER: {e}"))?;
        for (from, to) in [
            (null.as_raw_fd(), 0),
            (log.as_raw_fd(), 1),
            (log.as_raw_fd(), 2),
        ] {
            nix::unistd::dup2(from, to).map_err(|e| format!("dup2: {e}"))?;
        }
        drop((log, null));
        // Pin no mount of berthd's working directory.
        nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;

        let signals = init::handled_signals();
        signals
            .thread_block()
            .map_err(|e| format!("block signals: {e}"))?;
        self.sigfd = Some(
            SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
                .map_err(|e| format!("signalfd: {e}"))?,
        );

        if let Some((uid_map, gid_map)) = self.plan.userns.clone() {
            self.init = self.userns_owner(&dir, &uid_map, &gid_map)?;
        } else {
            namespaces::unshare(&self.plan.own).map_err(|e| e.to_string())?;
        }
        if let Some(h) = &self.plan.hostname {
            nix::unistd::sethostname(h).map_err(|e| format!("sethostname {h:?}: {e}"))?;
        }
        if self.plan.loopback_up {
            netlink::loopback_up().map_err(|e| e.to_string())?;
        }
        for (key, path, value) in &self.plan.sysctls {
            std::fs::write(path, value.as_bytes())
                .map_err(|e| format!("sysctl {key}={value:?}: {e}"))?;
        }
        let userns = self.plan.userns.is_some();
        for &ns in &self.plan.own {
            if ns.needs_pin(userns) {
                namespaces::pin_own(&dir, ns).map_err(|e| e.to_string())?;
            } else {
                // The shim is in them and owns them: they end when it does.
                namespaces::link(&dir, ns, std::process::id()).map_err(|e| e.to_string())?;
            }
        }
        if self.plan.pid_ns && !userns {
            // The shim's own PID namespace, to return to once the init is made: the
            // processes libcontainer forks for containers and execs must see host pids
            // (it reports the pids its intermediate process sees), and containers join
            // the pod's namespace through its link to the init, as the spec says.
            let host_pid_ns = std::fs::File::open("/proc/self/ns/pid")
                .map_err(|e| format!("open /proc/self/ns/pid: {e}"))?;
            namespaces::unshare(&[Namespace::Pid]).map_err(|e| e.to_string())?;
            let init = init::spawn()?;
            let pid = init.pid;
            self.init = Some(init);
            namespaces::link(&dir, Namespace::Pid, pid.as_raw() as u32)
                .map_err(|e| e.to_string())?;
            nix::sched::setns(host_pid_ns, nix::sched::CloneFlags::CLONE_NEWPID)
                .map_err(|e| format!("setns back to the shim's PID namespace: {e}"))?;
        }

        let sock = socket_path(&dir);
        match std::fs::remove_file(&sock) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("remove stale {}: {e}", sock.display()));
            }
            _ => {}
        }
        let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o177));
        // Bound by a relative name from inside the state directory: a socket path is
        // limited to 107 bytes, and state dirs under a long root exceed that.
        let bound = std::env::set_current_dir(&dir).and_then(|()| {
            let l = UnixListener::bind(SOCKET_NAME);
            let _ = std::env::set_current_dir("/");
            l
        });
        nix::sys::stat::umask(old);
        let listener = bound.map_err(|e| format!("listen on {}: {e}", sock.display()))?;
        self.listener = Some(listener);
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("chmod {}: {e}", sock.display()))?;
        self.listener
            .as_ref()
            .unwrap()
            .set_nonblocking(true)
            .map_err(|e| format!("listener: {e}"))?;

        let pid_file = pid_path(&dir);
        let tmp = dir.join("shim.pid.tmp");
        std::fs::write(&tmp, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&tmp, &pid_file))
            .map_err(|e| format!("write {}: {e}", pid_file.display()))?;
        Ok(())
    }

    /// Undoes what a failed start did: no process, mount or file of ours stays behind
    /// (shim.log aside).
    fn abort_start(&mut self) {
        if let Some(init) = self.init.take() {
            let _ = kill(init.pid, Signal::SIGKILL);
            let _ = waitpid(init.pid, None);
        }
        self.release();
    }

    /// Unpins and unlinks the namespaces and removes the socket and pid file.
    fn release(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = namespaces::unpin_all(&self.plan.state_dir) {
            problems.push(e.to_string());
        }
        self.listener = None;
        for p in [socket_path(self.state_dir()), pid_path(self.state_dir())] {
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    problems.push(format!("remove {}: {e}", p.display()));
                }
                _ => {}
            }
        }
        let _ = std::fs::remove_dir(self.rt.lc_root());
        problems
    }

    fn init_pid(&self) -> u32 {
        self.init.as_ref().map_or(0, |i| i.pid.as_raw() as u32)
    }

    fn serve(mut self) -> ExitCode {
        self.trim_at = Some(Instant::now() + TRIM_IDLE);
        loop {
            let now = Instant::now();
            let mut wake = now + TICK;
            if let Some(t) = self.trim_at {
                if now >= t {
                    memory::trim();
                    self.trim_at = None;
                } else {
                    wake = wake.min(t);
                }
            }
            if let Some(d) = self.rt.check_deadlines(now) {
                wake = wake.min(d);
            }
            if let Some(s) = &self.stopping {
                // Orphans may still be arriving: look at the children often.
                wake = wake.min(s.deadline).min(now + Duration::from_millis(100));
            }
            let timeout = PollTimeout::try_from(wake.saturating_duration_since(now))
                .unwrap_or(PollTimeout::NONE);

            let mut ready: Vec<(Token, PollFlags)> = Vec::new();
            {
                let mut fds = Vec::with_capacity(2 + self.conns.len());
                let mut tokens = Vec::with_capacity(fds.capacity());
                fds.push(PollFd::new(
                    self.sigfd.as_ref().expect("signalfd").as_fd(),
                    PollFlags::POLLIN,
                ));
                tokens.push(Token::Signals);
                if let Some(l) = &self.listener {
                    fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
                    tokens.push(Token::Listener);
                }
                for (i, c) in self.conns.iter().enumerate() {
                    let mut ev = PollFlags::POLLIN;
                    if c.pending() {
                        ev |= PollFlags::POLLOUT;
                    }
                    fds.push(PollFd::new(c.stream.as_fd(), ev));
                    tokens.push(Token::Conn(i));
                }
                let mut rt_fds = Vec::new();
                self.rt.poll_fds(&mut rt_fds);
                for (fd, src) in rt_fds {
                    // An attached reader is only watched for going away (POLLERR/POLLHUP,
                    // which poll always reports).
                    let ev = match src {
                        Source::Attached(..) => PollFlags::empty(),
                        _ => PollFlags::POLLIN,
                    };
                    fds.push(PollFd::new(fd, ev));
                    tokens.push(Token::Runtime(src));
                }
                match nix::poll::poll(&mut fds, timeout) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => {
                        log!("poll: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                for (fd, tok) in fds.iter().zip(tokens) {
                    if let Some(f) = fd.revents().filter(|f| !f.is_empty()) {
                        ready.push((tok, f));
                    }
                }
            }
            self.check_state_dir();

            // Output first, so that what a process wrote before it exited is in the log
            // before its exit is recorded.
            for &(tok, _) in &ready {
                if let Token::Runtime(src) = tok {
                    self.rt.on_ready(src);
                }
            }
            if ready.iter().any(|(t, _)| matches!(t, Token::Signals)) {
                self.on_signals();
            }
            self.answer_execs();
            if ready.iter().any(|(t, _)| matches!(t, Token::Listener)) {
                self.accept();
            }
            for &(tok, flags) in &ready {
                if let Token::Conn(i) = tok {
                    self.on_conn(i, flags);
                }
            }
            self.send_events();
            for c in self.conns.iter().filter(|c| c.closed) {
                self.rt.conn_closed(c.id);
            }
            self.conns.retain(|c| !c.closed);
            if ready
                .iter()
                .any(|(t, _)| !matches!(t, Token::Listener | Token::Runtime(_)))
            {
                // A request or an exit: container work may have run.
                self.trim_at = Some(Instant::now() + TRIM_IDLE);
            }
            if let After::Exit = self.advance_stop() {
                return ExitCode::SUCCESS;
            }
        }
    }

    fn check_state_dir(&mut self) {
        let missing = !self.plan.state_dir.is_dir();
        if missing && !self.dir_missing {
            log!(
                "pod {}: state directory {} disappeared; still serving",
                self.pod_id,
                self.plan.state_dir.display()
            );
        }
        self.dir_missing = missing;
    }

    fn on_signals(&mut self) {
        let mut shutdown = false;
        while let Ok(Some(info)) = self.sigfd.as_ref().expect("signalfd").read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => {}
                Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => shutdown = true,
                Ok(s) => log!("pod {}: ignoring {s}", self.pod_id),
                Err(_) => {}
            }
        }
        // SIGCHLDs coalesce: reap whatever there is, whatever signal woke us.
        self.reap();
        if shutdown && self.stopping.is_none() {
            log!("pod {}: shutting down on signal", self.pod_id);
            self.begin_stop(DEFAULT_SHUTDOWN_TIMEOUT, None);
        }
    }

    /// Reaps every exited child (the shim is the subreaper: orphans of the pod come here)
    /// and hands the containers' and execs' exits to the runtime. Returns false once the
    /// shim has no children left.
    fn reap(&mut self) -> bool {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => return true,
                Ok(status) => {
                    let Some(pid) = status.pid() else { continue };
                    if Some(pid) == self.init.as_ref().map(|i| i.pid) {
                        if self.stopping.is_none() {
                            log!(
                                "pod {}: pod init {} exited unexpectedly: {status:?}",
                                self.pod_id,
                                self.init_pid()
                            );
                        }
                        self.init = None;
                        // Its pid is free for reuse from now on: the link must go (a pin,
                        // in a user-namespaced pod, stays until shutdown).
                        if let Err(e) = namespaces::unlink(&self.plan.state_dir, Namespace::Pid) {
                            log!("pod {}: {e}", self.pod_id);
                        }
                    } else if !self.rt.on_exit(pid, &status) && self.stopping.is_none() {
                        log!("pod {}: reaped {status:?}", self.pod_id);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(Errno::ECHILD) => return false,
                Err(e) => {
                    log!("waitpid: {e}");
                    return true;
                }
            }
        }
    }

    fn accept(&mut self) {
        let Some(listener) = self.listener.as_ref() else {
            return;
        };
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if self.conns.len() >= MAX_CONNECTIONS {
                        log!("pod {}: too many connections, closing one", self.pod_id);
                        continue;
                    }
                    if stream.set_nonblocking(true).is_ok() {
                        self.next_conn += 1;
                        self.conns.push(Conn::new(self.next_conn, stream));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log!("accept: {e}");
                    return;
                }
            }
        }
    }

    fn on_conn(&mut self, idx: usize, flags: PollFlags) {
        let mut chunk = [0u8; 4096];
        let conn = &mut self.conns[idx];
        if conn.closed {
            return;
        }
        if flags.contains(PollFlags::POLLOUT) {
            conn.flush();
        }
        let mut hung_up = false;
        loop {
            match fdpass::recv(conn.stream.as_fd(), &mut chunk, &mut conn.fds) {
                Ok(0) => {
                    hung_up = true;
                    break;
                }
                Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    hung_up = true;
                    break;
                }
            }
            if conn.buf.len() > framing::MAX_MESSAGE + 16 {
                break;
            }
            if conn.fds.len() > MAX_UNCLAIMED_FDS {
                log!(
                    "pod {}: a connection sent fds no request claims; closing it",
                    self.pod_id
                );
                hung_up = true;
                break;
            }
        }
        if flags.intersects(PollFlags::POLLERR | PollFlags::POLLNVAL) {
            hung_up = true;
        }
        self.serve_requests(idx);
        if hung_up {
            self.conns[idx].closed = true;
        }
    }

    /// Answers every whole request received on connection `idx`, in order, unless one
    /// of its requests is still running.
    fn serve_requests(&mut self, idx: usize) {
        loop {
            let conn = &mut self.conns[idx];
            if conn.busy || conn.closed {
                return;
            }
            match framing::split(&conn.buf) {
                Frame::Incomplete => return,
                Frame::Invalid(e) => {
                    conn.queue(&failed(Failure::internal(format!("garbled request: {e}"))));
                    conn.buf.clear();
                    conn.flush_blocking();
                    conn.closed = true;
                    return;
                }
                Frame::Complete { header, len } => {
                    let body: Vec<u8> = conn.buf.drain(..header + len).skip(header).collect();
                    if conn.buf.is_empty() {
                        conn.buf = Vec::new();
                    }
                    if let Some(resp) = self.handle(idx, &body) {
                        self.conns[idx].queue(&resp);
                    }
                }
            }
        }
    }

    /// The answer to one request, or None when it comes later (ExecSync, Shutdown).
    fn handle(&mut self, idx: usize, body: &[u8]) -> Option<Response> {
        let req = match Request::decode(body) {
            Ok(r) => r,
            Err(e) => return Some(failed(Failure::internal(format!("garbled request: {e}")))),
        };
        let stopping = self.stopping.is_some();
        let refuse = || {
            failed(Failure::precondition(
                "the pod's shim is shutting down".to_string(),
            ))
        };
        let result = |r: Result<(), Failure>| r.map_or_else(failed, |()| empty());
        Some(match req.kind {
            Some(request::Kind::Ping(_)) => ok(response::Kind::Ping(PingResponse {
                pid: std::process::id(),
                init_pid: self.init_pid(),
            })),
            Some(request::Kind::Shutdown(s)) => {
                let timeout = Duration::from_millis(u64::from(s.timeout_ms));
                log!("pod {}: shutdown requested ({timeout:?})", self.pod_id);
                let id = self.conns[idx].id;
                self.begin_stop(timeout, Some(id));
                return None;
            }
            Some(request::Kind::CreateContainer(_)) if stopping => refuse(),
            Some(request::Kind::CreateContainer(c)) => {
                let (id, bundle) = (c.id.clone(), c.bundle.clone());
                match self.rt.create(c) {
                    Ok(pid) => {
                        log!("container {id}: created from {bundle}, init {pid}");
                        ok(response::Kind::CreateContainer(CreateContainerResponse {
                            pid,
                        }))
                    }
                    Err(f) => {
                        log!("container {id}: create failed: {}", f.message);
                        failed(f)
                    }
                }
            }
            Some(request::Kind::StartContainer(_)) if stopping => refuse(),
            Some(request::Kind::StartContainer(s)) => {
                let r = self.rt.start(&s.id);
                if let Err(f) = &r {
                    log!("container {}: start failed: {}", s.id, f.message);
                }
                result(r)
            }
            Some(request::Kind::KillContainer(k)) => result(self.rt.kill(&k.id, k.signal, k.all)),
            Some(request::Kind::DeleteContainer(d)) => {
                let r = self.rt.delete(&d.id);
                if let Err(f) = &r {
                    log!("container {}: delete failed: {}", d.id, f.message);
                }
                result(r)
            }
            Some(request::Kind::ContainerState(s)) => self
                .rt
                .state(&s.id)
                .map_or_else(failed, |st| ok(response::Kind::ContainerState(st))),
            Some(request::Kind::ExecSync(_)) if stopping => refuse(),
            Some(request::Kind::ExecSync(e)) => {
                let conn = self.conns[idx].id;
                match self.rt.exec(conn, e) {
                    Ok(()) => {
                        self.conns[idx].busy = true;
                        return None;
                    }
                    Err(f) => failed(f),
                }
            }
            Some(request::Kind::ReopenLog(r)) => result(self.rt.reopen_log(&r.id)),
            Some(request::Kind::Subscribe(_)) => {
                // The empty answer says that events from now on will come.
                self.conns[idx].subscriber = true;
                empty()
            }
            Some(request::Kind::Exec(_)) if stopping => refuse(),
            Some(request::Kind::Exec(e)) => {
                let Some(fds) = self.conns[idx].take_fds(interactive::exec_fd_count(&e)) else {
                    return Some(failed(Failure::invalid(
                        "exec: the request came without its fds",
                    )));
                };
                let conn = self.conns[idx].id;
                let id = e.container_id.clone();
                match self.rt.exec_interactive(conn, e, fds) {
                    Ok(pid) => {
                        // Its next answer is the exit.
                        self.conns[idx].busy = true;
                        ok(response::Kind::ExecStarted(ExecStarted { pid }))
                    }
                    Err(f) => {
                        log!("container {id}: exec failed: {}", f.message);
                        failed(f)
                    }
                }
            }
            Some(request::Kind::OpenPty(p)) => match self.rt.open_pty(&p.container_id) {
                Ok((master, slave, name)) => {
                    let resp = ok(response::Kind::OpenPty(OpenPtyResponse { name }));
                    self.conns[idx].queue_with_fds(&resp, vec![master, slave]);
                    return None;
                }
                Err(f) => failed(f),
            },
            Some(request::Kind::Attach(a)) => {
                let n = usize::from(a.stdout) + usize::from(a.stderr);
                let Some(fds) = self.conns[idx].take_fds(n) else {
                    return Some(failed(Failure::invalid(
                        "attach: the request came without its fds",
                    )));
                };
                let mut fds = fds.into_iter();
                let stdout = if a.stdout { fds.next() } else { None };
                let stderr = if a.stderr { fds.next() } else { None };
                match self.rt.attach(&a.id, stdout, stderr) {
                    Ok((stdin, tty)) => {
                        let resp = ok(response::Kind::Attach(AttachResponse {
                            stdin: stdin.is_some(),
                            tty,
                        }));
                        self.conns[idx].queue_with_fds(&resp, stdin.into_iter().collect());
                        return None;
                    }
                    Err(f) => failed(f),
                }
            }
            None => failed(Failure::internal("unknown request")),
        })
    }

    /// Sends the answers of the execs that are done.
    fn answer_execs(&mut self) {
        for (conn, exit_code) in self.rt.finished_interactive() {
            // Gone: the exec was killed for that.
            let Some(idx) = self.conns.iter().position(|c| c.id == conn) else {
                continue;
            };
            self.conns[idx].busy = false;
            self.conns[idx].queue(&ok(response::Kind::ExecExit(ExecExit { exit_code })));
            self.serve_requests(idx);
        }
        for (conn, resp) in self.rt.finished_execs(Instant::now()) {
            let Some(idx) = self.conns.iter().position(|c| c.id == conn) else {
                continue;
            };
            self.conns[idx].busy = false;
            self.conns[idx].queue(&ok(response::Kind::ExecSync(resp)));
            // Requests that arrived meanwhile.
            self.serve_requests(idx);
        }
    }

    fn send_events(&mut self) {
        if self.rt.events.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.rt.events);
        for c in self.conns.iter_mut().filter(|c| c.subscriber && !c.closed) {
            for e in &events {
                c.queue(&ok(response::Kind::Event(e.clone())));
            }
            if c.out.len() - c.out_pos > MAX_QUEUED_EVENTS {
                log!(
                    "pod {}: dropping a subscriber that does not read",
                    self.pod_id
                );
                c.closed = true;
            }
        }
    }

    /// Starts stopping everything (answered, for `reply_to`, once done): SIGTERM to the
    /// containers, execs and other processes of the pod but the init; SIGKILL to all
    /// (through the containers' cgroups too) after `timeout` or once the containers are
    /// gone; then the containers are deleted, the namespaces unpinned and the shim exits.
    fn begin_stop(&mut self, timeout: Duration, reply_to: Option<u64>) {
        if let Some(s) = &mut self.stopping {
            if s.reply_to.is_none() {
                s.reply_to = reply_to;
            }
            return;
        }
        // New connections would only wait for an answer that never comes.
        self.listener = None;
        let _ = std::fs::remove_file(socket_path(self.state_dir()));
        self.rt.terminate_all();
        let init = self.init.as_ref().map(|i| i.pid);
        for pid in children() {
            if Some(pid) != init {
                let _ = kill(pid, Signal::SIGTERM);
            }
        }
        self.stopping = Some(Stopping {
            reply_to,
            killing: false,
            deadline: Instant::now() + timeout,
        });
    }

    fn advance_stop(&mut self) -> After {
        let Some(s) = self.stopping.as_mut() else {
            return After::Continue;
        };
        let now = Instant::now();
        if !s.killing {
            let init = self.init.as_ref().map(|i| i.pid);
            let others_left = children().into_iter().any(|p| Some(p) != init);
            if others_left && now < s.deadline {
                return After::Continue;
            }
            s.killing = true;
            s.deadline = now + KILL_GRACE;
            self.rt.kill_all();
            signal_children(Signal::SIGKILL);
        }
        // Orphans may still be arriving: look the children up each round.
        let left = self.reap();
        let s = self.stopping.as_ref().expect("stopping");
        if left && now < s.deadline {
            signal_children(Signal::SIGKILL);
            return After::Continue;
        }
        let mut problems = Vec::new();
        if left {
            problems.push(format!(
                "processes still running after SIGKILL: {:?}",
                children()
            ));
        }
        self.answer_execs();
        self.send_events();
        problems.extend(self.rt.delete_all());
        problems.extend(self.release());
        for p in &problems {
            log!("pod {}: {p}", self.pod_id);
        }
        let reply_to = self.stopping.as_ref().and_then(|s| s.reply_to);
        for c in &mut self.conns {
            if Some(c.id) == reply_to {
                c.queue(&Response {
                    error: problems.join("; "),
                    error_kind: 0,
                    kind: Some(response::Kind::Shutdown(ShutdownResponse {})),
                });
            }
            c.flush_blocking();
        }
        After::Exit
    }
}

/// Pids of the shim's children (its own and the orphans it adopted).
fn children() -> Vec<Pid> {
    let me = std::process::id();
    std::fs::read_to_string(format!("/proc/{me}/task/{me}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok().map(Pid::from_raw))
        .collect()
}

fn signal_children(sig: Signal) {
    for pid in children() {
        let _ = kill(pid, sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn plans() {
        let mut c = SandboxConfig {
            pod_id: "p".into(),
            state_dir: "/run/x".into(),
            hostname: "h".into(),
            ..Default::default()
        };
        c.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
        let p = plan(&c).unwrap();
        assert_eq!(p.own, [Namespace::Net, Namespace::Ipc, Namespace::Uts]);
        assert!(p.pid_ns);
        assert_eq!(p.hostname.as_deref(), Some("h"));
        assert_eq!(p.sysctls[0].1, Path::new("/proc/sys/net/ipv4/ip_forward"));

        c.network = NamespaceMode::Host as i32;
        assert!(plan(&c).unwrap_err().contains("net.ipv4.ip_forward"));
        c.sysctls.clear();
        c.uts = NamespaceMode::Host as i32;
        assert_eq!(plan(&c).unwrap().hostname, None);
        c.state_dir = "relative".into();
        assert!(plan(&c).is_err());
        c.state_dir = "/x".into();
        c.pid = 7;
        assert!(plan(&c).is_err());
    }

    #[test]
    fn config_from_stdin() {
        let c = SandboxConfig {
            pod_id: "abc".into(),
            ..Default::default()
        };
        let mut bytes = c.encode_length_delimited_to_vec();
        bytes.extend(b"trailing garbage is not read");
        assert_eq!(read_config(&mut &bytes[..]).unwrap(), c);
        let cut = &c.encode_length_delimited_to_vec()[..3];
        assert!(read_config(&mut &cut[..]).unwrap_err().contains("closed"));
    }
}
