//! The pod's containers, run in-process with youki's libcontainer.
//!
//! [`Runtime`] holds the containers and the running execs (see [`super::exec`]) and
//! answers the container requests of the shim protocol; the server owns the poll loop
//! and hands it the readiness of the container's pipes, the exits it reaped and the time.
//!
//! - **Create** runs libcontainer's init builder (`<state_dir>/lc` is its root). The
//!   container's init is a child of the shim (libcontainer clones its init with
//!   `CLONE_PARENT`), waiting for StartContainer. Its stdout and stderr are pipes whose
//!   read ends the shim keeps, non-blocking; with a tty, the init sends the pty master
//!   over a console socket and the master is the output.
//! - **Exit.** When the server reaps the init: the pipes are drained into the log, the
//!   exit (code, or 128 + signal; time; whether the OOM killer hit the container's memory
//!   cgroup) is written to `<state_dir>/exits/<id>.json` (fsynced), and only then is it
//!   visible: in ContainerState and as an EXITED event.
//! - **Logs** are written in the CRI format by [`super::logs`], as output arrives.

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use libcontainer::container::Container as LcContainer;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;

use super::exec::{self, Exec};
use super::exits::{self, ExitRecord};
use super::interactive::{self, Interactive};
use super::logs::{LineSplitter, LogFile, Stream, timestamp};
use super::setns_exec::Target;
use super::workload::{BerthExecutor, EXEC_ERROR};
use crate::proto::shim::{
    ContainerState, CreateContainerRequest, ErrorKind, Event, ExecRequest, ExecSyncRequest,
    container_state, event,
};

/// Most bytes read from one pipe per wakeup, so that one chatty container cannot starve
/// the others or the socket.
const READ_BUDGET: usize = 256 * 1024;
/// Most bytes drained from a container's pipes when its init exits (a process of a shared
/// PID namespace may keep writing forever).
const EXIT_DRAIN_BUDGET: usize = 4 << 20;
/// Size of one read.
const CHUNK: usize = 32 * 1024;

/// A failed request: what went wrong and whose fault it is.
#[derive(Debug)]
pub struct Failure {
    pub kind: ErrorKind,
    pub message: String,
}

impl Failure {
    pub fn internal(message: impl Into<String>) -> Failure {
        Failure {
            kind: ErrorKind::Internal,
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Failure {
        Failure {
            kind: ErrorKind::NotFound,
            message: message.into(),
        }
    }
    pub fn precondition(message: impl Into<String>) -> Failure {
        Failure {
            kind: ErrorKind::FailedPrecondition,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Failure {
        Failure {
            kind: ErrorKind::InvalidArgument,
            message: message.into(),
        }
    }

    /// A libcontainer error about `what` (e.g. `create container abc`): the whole chain of
    /// causes, InvalidArgument when the command cannot be run or the spec is bad. A
    /// command that cannot be run reads like runc's: `create container abc: exec: "x":
    /// executable file not found in $PATH`.
    pub fn libcontainer(what: &str, err: &libcontainer::error::LibcontainerError) -> Failure {
        use libcontainer::error::LibcontainerError as E;
        let text = error_chain(err);
        // A command that cannot be run: runc's message, without libcontainer's layers.
        if let Some(i) = text.find(EXEC_ERROR) {
            return Failure::invalid(format!("{what}: {}", &text[i..]));
        }
        let message = format!("{what}: {text}");
        let caller = text.contains("no command to run")
            || text.contains("no command to run")
            || matches!(
                err,
                E::InvalidID(_) | E::MissingSpec(_) | E::InvalidSpec(_) | E::Spec(_)
            );
        if caller {
            Failure::invalid(message)
        } else {
            Failure::internal(message)
        }
    }
}

/// `err` and its sources, each once, joined with ": ".
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(err);
    while let Some(e) = cur {
        let s = e.to_string();
        // thiserror's transparent wrappers repeat their source's text.
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

/// Container ids name files: libcontainer's rules (`[A-Za-z0-9_+.-]`, not `.` or `..`).
pub fn check_id(id: &str) -> Result<(), Failure> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Failure::invalid(format!("invalid container id {id:?}")))
    }
}

pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Exited,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
        }
    }
}

/// One output of a container (stdout, stderr, or the tty as stdout) on its way to the log.
struct Output {
    fd: OwnedFd,
    stream: Stream,
    splitter: LineSplitter,
}

pub struct Container {
    pub id: String,
    lc: LcContainer,
    pub pid: Pid,
    pub status: Status,
    started_at: i64,
    finished_at: i64,
    exit_code: i32,
    oom_killed: bool,
    /// `linux.cgroupsPath` of the spec, for the OOM check.
    cgroup_path: Option<PathBuf>,
    log: Option<LogFile>,
    /// [stdout or tty, stderr]; None once at EOF.
    outputs: [Option<Output>; 2],
    /// Write end of the container's stdin pipe (CreateContainerRequest.stdin), or the pty
    /// master's duplicate with a tty and stdin; kept for attach (non-blocking).
    stdin: Option<OwnedFd>,
    /// Attach hands over `stdin` instead of a duplicate.
    stdin_once: bool,
    tty: bool,
    /// Attached readers of [stdout or tty, stderr] (see `interactive`); a slot is emptied
    /// when its reader is dropped, and kept so that the poll loop's indexes stay valid.
    attached: [Vec<Option<OwnedFd>>; 2],
    /// What its execs join, read at the first one (see `setns_exec::Target`).
    exec_target: Option<Target>,
}

impl Container {
    fn state(&self) -> ContainerState {
        ContainerState {
            id: self.id.clone(),
            status: match self.status {
                Status::Created => container_state::Status::Created,
                Status::Running => container_state::Status::Running,
                Status::Exited => container_state::Status::Exited,
            } as i32,
            pid: self.pid.as_raw() as u32,
            exit_code: self.exit_code,
            started_at: self.started_at,
            finished_at: self.finished_at,
            oom_killed: self.oom_killed,
        }
    }

    /// Reads what `outputs[slot]` has, up to `budget` bytes, into the log.
    fn pump(&mut self, slot: usize, budget: usize) {
        let mut chunk = [0u8; CHUNK];
        let mut total = 0;
        let mut records = Vec::new();
        while total < budget {
            let Some(out) = self.outputs[slot].as_mut() else {
                return;
            };
            let (data, eof) = match read_some(out.fd.as_fd(), &mut chunk) {
                Read::Data(n) => (&chunk[..n], false),
                Read::Eof => (&chunk[..0], true),
                Read::Empty => break,
            };
            total += data.len();
            interactive::forward(&mut self.attached[slot], data, &self.id);
            if self.log.is_some() {
                let ts = timestamp(SystemTime::now());
                out.splitter.push(out.stream, &ts, data, eof, &mut records);
            }
            if eof {
                self.outputs[slot] = None;
                // Nothing more will come: the readers see EOF.
                self.attached[slot] = Vec::new();
            }
            self.write_log(&records);
            records.clear();
            if eof {
                break;
            }
        }
    }

    fn write_log(&mut self, bytes: &[u8]) {
        let Some(log) = self.log.as_mut() else {
            return;
        };
        if let Err(e) = log.write(bytes)
            && log.errors == 1
        {
            log!(
                "container {}: write {}: {e} (output is dropped until the next reopen)",
                self.id,
                log.path().display()
            );
        }
    }

    /// Reads what the pipes hold now (bounded), e.g. when the init has exited.
    fn drain(&mut self) {
        for slot in 0..2 {
            self.pump(slot, EXIT_DRAIN_BUDGET);
        }
    }

    /// Drains and closes the outputs; an unfinished line goes out as partial.
    fn close_outputs(&mut self) {
        self.drain();
        let ts = timestamp(SystemTime::now());
        let mut records = Vec::new();
        for slot in 0..2 {
            if let Some(mut out) = self.outputs[slot].take() {
                out.splitter.push(out.stream, &ts, &[], true, &mut records);
            }
        }
        self.write_log(&records);
        self.attached = Default::default();
    }
}

enum Read {
    Data(usize),
    Eof,
    Empty,
}

/// One non-blocking read. A pty master reads EIO once its last slave is closed: EOF.
fn read_some(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Read {
    loop {
        match nix::unistd::read(fd.as_raw_fd(), buf) {
            Ok(0) => return Read::Eof,
            Ok(n) => return Read::Data(n),
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return Read::Empty,
            Err(_) => return Read::Eof,
        }
    }
}

/// Where the memory cgroups are, found once.
#[derive(Debug, Clone)]
enum MemoryCgroups {
    /// v1 (or hybrid): the memory hierarchy's mount point.
    V1(PathBuf),
    /// v2: the unified mount point.
    V2(PathBuf),
    Unknown,
}

impl MemoryCgroups {
    fn detect() -> MemoryCgroups {
        use libcgroups::common::{CgroupSetup, get_cgroup_setup};
        match get_cgroup_setup() {
            Ok(CgroupSetup::Legacy | CgroupSetup::Hybrid) => {
                libcgroups::v1::util::get_subsystem_mount_point(
                    &libcgroups::v1::ControllerType::Memory,
                )
                .map_or(MemoryCgroups::Unknown, MemoryCgroups::V1)
            }
            Ok(CgroupSetup::Unified) => libcgroups::v2::util::get_unified_mount_point()
                .map_or(MemoryCgroups::Unknown, MemoryCgroups::V2),
            Err(_) => MemoryCgroups::Unknown,
        }
    }

    /// Whether the OOM killer killed a process of the cgroup at `cgroup_path` (relative to
    /// the hierarchy's root, as in the spec).
    fn oom_killed(&self, cgroup_path: &Path) -> bool {
        let rel = cgroup_path.strip_prefix("/").unwrap_or(cgroup_path);
        let file = match self {
            MemoryCgroups::V1(root) => root.join(rel).join("memory.oom_control"),
            MemoryCgroups::V2(root) => root.join(rel).join("memory.events"),
            MemoryCgroups::Unknown => return false,
        };
        std::fs::read_to_string(file).is_ok_and(|text| oom_kills(&text) > 0)
    }
}

/// The `oom_kill N` counter of a v1 `memory.oom_control` or v2 `memory.events` file.
pub fn oom_kills(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The exit code the CRI reports: the status, or 128 + the signal.
pub fn exit_code(status: &WaitStatus) -> (i32, i32) {
    match *status {
        WaitStatus::Exited(_, code) => (code, 0),
        WaitStatus::Signaled(_, sig, _) => (128 + sig as i32, sig as i32),
        _ => (255, 0),
    }
}

/// Where a readable fd of the runtime belongs.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    Container(usize, usize),
    Exec(usize, usize),
    /// An attached reader (container, output, index): ready means gone (POLLERR/POLLHUP).
    Attached(usize, usize, usize),
}

pub struct Runtime {
    state_dir: PathBuf,
    containers: Vec<Container>,
    execs: Vec<Exec>,
    interactive: Vec<Interactive>,
    /// Events not yet sent to subscribers.
    pub events: Vec<Event>,
    cgroups: Option<MemoryCgroups>,
    exec_seq: u64,
}

impl Runtime {
    pub fn new(state_dir: &Path) -> Runtime {
        Runtime {
            state_dir: state_dir.to_path_buf(),
            containers: Vec::new(),
            execs: Vec::new(),
            interactive: Vec::new(),
            events: Vec::new(),
            cgroups: None,
            exec_seq: 0,
        }
    }

    /// libcontainer's root: `<state_dir>/lc`.
    pub fn lc_root(&self) -> PathBuf {
        self.state_dir.join("lc")
    }

    fn find(&self, id: &str) -> Option<usize> {
        self.containers.iter().position(|c| c.id == id)
    }

    fn event(&mut self, id: &str, kind: event::Kind, exit_code: i32) {
        self.events.push(Event {
            container_id: id.to_string(),
            kind: kind as i32,
            at: now_nanos(),
            exit_code,
        });
    }

    /// The fds to poll, with where each belongs.
    pub fn poll_fds<'a>(&'a self, out: &mut Vec<(BorrowedFd<'a>, Source)>) {
        for (ci, c) in self.containers.iter().enumerate() {
            for (slot, o) in c.outputs.iter().enumerate() {
                if let Some(o) = o {
                    out.push((o.fd.as_fd(), Source::Container(ci, slot)));
                }
            }
            for (slot, readers) in c.attached.iter().enumerate() {
                for (k, fd) in readers.iter().enumerate() {
                    if let Some(fd) = fd {
                        out.push((fd.as_fd(), Source::Attached(ci, slot, k)));
                    }
                }
            }
        }
        for (ei, e) in self.execs.iter().enumerate() {
            for (slot, fd) in e.pipes() {
                out.push((fd, Source::Exec(ei, slot)));
            }
        }
    }

    pub fn on_ready(&mut self, source: Source) {
        match source {
            Source::Container(ci, slot) => {
                if let Some(c) = self.containers.get_mut(ci) {
                    c.pump(slot, READ_BUDGET);
                }
            }
            Source::Exec(ei, slot) => {
                if let Some(e) = self.execs.get_mut(ei) {
                    e.pump(slot, READ_BUDGET);
                }
            }
            Source::Attached(ci, slot, k) => {
                if let Some(fd) = self
                    .containers
                    .get_mut(ci)
                    .and_then(|c| c.attached[slot].get_mut(k))
                {
                    *fd = None;
                }
            }
        }
    }

    /// A reaped child: a container's init or an exec. False when it is neither.
    pub fn on_exit(&mut self, pid: Pid, status: &WaitStatus) -> bool {
        if let Some(ci) = self
            .containers
            .iter()
            .position(|c| c.pid == pid && c.status != Status::Exited)
        {
            self.container_exited(ci, status);
            return true;
        }
        if let Some(e) = self.execs.iter_mut().find(|e| e.pid == pid) {
            e.exited(status);
            return true;
        }
        if let Some(x) = self
            .interactive
            .iter_mut()
            .find(|x| x.pid == pid && x.exit.is_none())
        {
            x.exit = Some(exit_code(status).0);
            return true;
        }
        false
    }

    fn container_exited(&mut self, ci: usize, status: &WaitStatus) {
        let cgroups = self
            .cgroups
            .get_or_insert_with(MemoryCgroups::detect)
            .clone();
        let c = &mut self.containers[ci];
        c.drain();
        // The attached readers see EOF.
        c.attached = Default::default();
        let (code, signal) = exit_code(status);
        c.exit_code = code;
        c.finished_at = now_nanos();
        c.oom_killed = c
            .cgroup_path
            .as_deref()
            .is_some_and(|p| cgroups.oom_killed(p));
        c.status = Status::Exited;
        let record = ExitRecord {
            id: c.id.clone(),
            pid: c.pid.as_raw() as u32,
            exit_code: code,
            signal,
            started_at: c.started_at,
            finished_at: c.finished_at,
            oom_killed: c.oom_killed,
        };
        if let Err(e) = exits::write(&self.state_dir, &record) {
            log!("container {}: write exit record: {e}", record.id);
        }
        log!(
            "container {}: init {} exited with {code}{}",
            record.id,
            record.pid,
            if record.oom_killed {
                " (OOM killed)"
            } else {
                ""
            }
        );
        self.event(&record.id, event::Kind::Exited, code);
    }

    pub fn create(&mut self, req: CreateContainerRequest) -> Result<u32, Failure> {
        check_id(&req.id)?;
        if self.find(&req.id).is_some() {
            return Err(Failure::precondition(format!(
                "container {} already exists",
                req.id
            )));
        }
        let bundle = PathBuf::from(&req.bundle);
        if !bundle.is_absolute() {
            return Err(Failure::invalid(format!(
                "bundle {:?} is not an absolute path",
                req.bundle
            )));
        }
        let spec = Spec::load(bundle.join("config.json")).map_err(|e| {
            Failure::invalid(format!(
                "container {}: load {}/config.json: {}",
                req.id,
                bundle.display(),
                error_chain(&e)
            ))
        })?;
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        if terminal != req.tty {
            return Err(Failure::invalid(format!(
                "container {}: tty is {} but the spec's process.terminal is {terminal}",
                req.id, req.tty
            )));
        }
        let cgroup_path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone())
            .filter(|p| !p.as_os_str().to_string_lossy().contains(':'));
        drop(spec);

        let lc_root = self.lc_root();
        std::fs::create_dir_all(&lc_root)
            .map_err(|e| Failure::internal(format!("create {}: {e}", lc_root.display())))?;
        let log = if req.log_path.is_empty() {
            None
        } else {
            Some(LogFile::open(Path::new(&req.log_path)).map_err(|e| {
                Failure::internal(format!(
                    "container {}: open log {}: {e}",
                    req.id, req.log_path
                ))
            })?)
        };
        let io_err = |what: &str, e: &dyn std::fmt::Display| {
            Failure::internal(format!("container {}: {what}: {e}", req.id))
        };

        let mut builder = ContainerBuilder::new(req.id.clone(), SyscallType::Linux)
            .with_executor(BerthExecutor::default())
            .with_root_path(&lc_root)
            .map_err(|e| Failure::libcontainer(&format!("create container {}", req.id), &e))?;
        let mut outputs: [Option<Output>; 2] = [None, None];
        let mut stdin_keep = None;
        let mut console = None;
        if req.tty {
            let c = ConsoleSocket::bind(&self.state_dir, &req.id)
                .map_err(|e| io_err("console socket", &e))?;
            builder = builder.with_console_socket(Some(&c.path));
            console = Some(c);
        } else {
            if req.stdin {
                let (r, w) = pipe().map_err(|e| io_err("stdin pipe", &e))?;
                set_nonblocking(&w).map_err(|e| io_err("stdin pipe", &e))?;
                builder = builder.with_stdin(r);
                stdin_keep = Some(w);
            } else {
                builder = builder.with_stdin(dev_null(false).map_err(|e| io_err("/dev/null", &e))?);
            }
            // Pipes even without a log: attach reads them.
            for (slot, stream) in [(0, Stream::Stdout), (1, Stream::Stderr)] {
                let (r, w) = pipe().map_err(|e| io_err("output pipe", &e))?;
                set_nonblocking(&r).map_err(|e| io_err("output pipe", &e))?;
                outputs[slot] = Some(Output {
                    fd: r,
                    stream,
                    splitter: LineSplitter::default(),
                });
                builder = match stream {
                    Stream::Stdout => builder.with_stdout(w),
                    Stream::Stderr => builder.with_stderr(w),
                };
            }
        }

        let built = {
            let _oom = OomScoreGuard::save();
            builder.validate_id().and_then(|b| {
                b.as_init(&bundle)
                    .with_systemd(false)
                    .with_detach(true)
                    .build()
            })
        };
        let lc = match built {
            Ok(lc) => lc,
            Err(e) => {
                drop(console);
                return Err(Failure::libcontainer(
                    &format!("create container {}", req.id),
                    &e,
                ));
            }
        };
        let pid = lc.pid().ok_or_else(|| {
            Failure::internal(format!("container {}: libcontainer gave no pid", req.id))
        });
        let pid = match pid {
            Ok(p) => p,
            Err(f) => {
                let mut lc = lc;
                let _ = lc.delete(true);
                return Err(f);
            }
        };
        if let Some(c) = console {
            match c.receive_pty() {
                Ok(master) => {
                    if let Err(e) = set_nonblocking(&master) {
                        log!("container {}: pty master: {e}", req.id);
                    }
                    if req.stdin {
                        stdin_keep = master.try_clone().ok();
                    }
                    outputs[0] = Some(Output {
                        fd: master,
                        stream: Stream::Stdout,
                        splitter: LineSplitter::default(),
                    });
                }
                Err(e) => {
                    let _ = kill(pid, Signal::SIGKILL);
                    wait_for(pid);
                    let mut lc = lc;
                    let _ = lc.delete(true);
                    return Err(Failure::internal(format!(
                        "container {}: receive the pty master: {e}",
                        req.id
                    )));
                }
            }
        }
        // A previous container of this id may have left its record.
        let _ = exits::remove(&self.state_dir, &req.id);
        self.containers.push(Container {
            id: req.id.clone(),
            lc,
            pid,
            status: Status::Created,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            oom_killed: false,
            cgroup_path,
            log,
            outputs,
            stdin: stdin_keep,
            stdin_once: req.stdin_once,
            tty: req.tty,
            attached: Default::default(),
            exec_target: None,
        });
        self.event(&req.id, event::Kind::Created, 0);
        Ok(pid.as_raw() as u32)
    }

    pub fn start(&mut self, id: &str) -> Result<(), Failure> {
        let ci = self.lookup(id)?;
        let c = &mut self.containers[ci];
        if c.status != Status::Created {
            return Err(Failure::precondition(format!(
                "container {id} is {}, not created",
                c.status.name()
            )));
        }
        if let Err(e) = c.lc.start() {
            if matches!(
                e,
                libcontainer::error::LibcontainerError::IncorrectStatus(_)
            ) {
                return Err(Failure::precondition(format!(
                    "start container {id}: its init is gone"
                )));
            }
            return Err(Failure::libcontainer(&format!("start container {id}"), &e));
        }
        c.status = Status::Running;
        c.started_at = now_nanos();
        self.event(id, event::Kind::Started, 0);
        Ok(())
    }

    pub fn kill(&mut self, id: &str, signal: u32, all: bool) -> Result<(), Failure> {
        let sig = i32::try_from(signal)
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .ok_or_else(|| Failure::invalid(format!("invalid signal {signal}")))?;
        let ci = self.lookup(id)?;
        let c = &mut self.containers[ci];
        if c.status == Status::Exited && !all {
            return Err(Failure::precondition(format!(
                "container {id} is not running"
            )));
        }
        c.lc.kill(sig, all)
            .map_err(|e| Failure::libcontainer(&format!("kill container {id} with {sig}"), &e))
    }

    /// Forgets a container that is not running; an unknown id is fine.
    pub fn delete(&mut self, id: &str) -> Result<(), Failure> {
        check_id(id)?;
        let Some(ci) = self.find(id) else {
            // Leftovers of a container this shim does not know (a failed create).
            let dir = self.lc_root().join(id);
            if dir.exists() {
                if let Ok(mut lc) = LcContainer::load(dir.clone()) {
                    let _ = lc.delete(true);
                }
                let _ = std::fs::remove_dir_all(&dir);
            }
            return exits::remove(&self.state_dir, id)
                .map_err(|e| Failure::internal(format!("remove exit record of {id}: {e}")));
        };
        let c = &mut self.containers[ci];
        match c.status {
            Status::Running => {
                return Err(Failure::precondition(format!(
                    "container {id} is running; kill it first"
                )));
            }
            Status::Created => {
                // Never started: its init waits in libcontainer's code. Reap it here so
                // that the pid cannot be reused before libcontainer looks at it.
                let _ = kill(c.pid, Signal::SIGKILL);
                wait_for(c.pid);
            }
            Status::Exited => {}
        }
        c.lc.delete(true)
            .map_err(|e| Failure::libcontainer(&format!("delete container {id}"), &e))?;
        let mut c = self.containers.remove(ci);
        c.close_outputs();
        exits::remove(&self.state_dir, id)
            .map_err(|e| Failure::internal(format!("remove exit record of {id}: {e}")))?;
        self.event(id, event::Kind::Deleted, c.exit_code);
        Ok(())
    }

    /// What the shim knows of a container, or its exit record.
    pub fn state(&self, id: &str) -> Result<ContainerState, Failure> {
        check_id(id)?;
        if let Some(ci) = self.find(id) {
            return Ok(self.containers[ci].state());
        }
        match exits::read(&self.state_dir, id) {
            Ok(Some(r)) => Ok(ContainerState {
                id: r.id,
                status: container_state::Status::Exited as i32,
                pid: r.pid,
                exit_code: r.exit_code,
                started_at: r.started_at,
                finished_at: r.finished_at,
                oom_killed: r.oom_killed,
            }),
            Ok(None) => Err(Failure::not_found(format!("container {id} not found"))),
            Err(e) => Err(Failure::internal(format!("read exit record of {id}: {e}"))),
        }
    }

    pub fn reopen_log(&mut self, id: &str) -> Result<(), Failure> {
        let ci = self.lookup(id)?;
        let c = &mut self.containers[ci];
        if c.status != Status::Running {
            return Err(Failure::precondition(format!(
                "container {id} is not running"
            )));
        }
        // What is in the pipes belongs to the old file.
        c.drain();
        match c.log.as_mut() {
            Some(log) => log.reopen().map_err(|e| {
                Failure::internal(format!(
                    "container {id}: reopen {}: {e}",
                    log.path().display()
                ))
            }),
            None => Ok(()),
        }
    }

    fn lookup(&self, id: &str) -> Result<usize, Failure> {
        check_id(id)?;
        self.find(id)
            .ok_or_else(|| Failure::not_found(format!("container {id} not found")))
    }

    /// The running container `id` as its execs see it, read once.
    fn exec_target(&mut self, id: &str) -> Result<&Target, Failure> {
        let ci = self.lookup(id)?;
        let c = &mut self.containers[ci];
        if c.status != Status::Running {
            return Err(Failure::precondition(format!(
                "container {id} is not running"
            )));
        }
        if c.exec_target.as_ref().is_none_or(|t| t.init != c.pid) {
            let t = Target::load(c.lc.bundle(), c.pid)
                .map_err(|e| Failure::internal(format!("exec in container {id}: {e}")))?;
            c.exec_target = Some(t);
        }
        Ok(c.exec_target.as_ref().expect("just set"))
    }

    /// Starts an exec whose answer goes to connection `conn` once it is done.
    pub fn exec(&mut self, conn: u64, req: ExecSyncRequest) -> Result<(), Failure> {
        let lc_root = self.lc_root();
        self.exec_seq += 1;
        let seq = self.exec_seq;
        let target = self.exec_target(&req.container_id)?;
        let e = exec::spawn(
            target,
            &lc_root,
            &req.container_id,
            conn,
            seq,
            req.args,
            req.timeout_ms,
        )?;
        self.execs.push(e);
        Ok(())
    }

    /// Starts an interactive exec with the stdio berthd sent (`fds`, see
    /// `interactive::exec_stdio`); its exit goes to connection `conn`. Returns its pid.
    pub fn exec_interactive(
        &mut self,
        conn: u64,
        req: ExecRequest,
        fds: Vec<OwnedFd>,
    ) -> Result<u32, Failure> {
        let lc_root = self.lc_root();
        self.exec_seq += 1;
        let seq = self.exec_seq;
        let target = self.exec_target(&req.container_id)?;
        let stdio = interactive::exec_stdio(&req, fds)?;
        let pid = exec::start_process(
            target,
            &lc_root,
            &req.container_id,
            seq,
            req.args,
            req.tty,
            stdio,
        )?;
        self.interactive.push(Interactive {
            conn,
            pid,
            exit: None,
        });
        Ok(pid.as_raw() as u32)
    }

    /// Interactive execs that have exited, removed, with the connection that waits for
    /// each and its exit code.
    pub fn finished_interactive(&mut self) -> Vec<(u64, i32)> {
        let mut done = Vec::new();
        self.interactive.retain(|x| match x.exit {
            Some(code) => {
                done.push((x.conn, code));
                false
            }
            None => true,
        });
        done
    }

    /// Connection `conn` went away: the interactive execs it waits for are killed.
    pub fn conn_closed(&mut self, conn: u64) {
        for x in self
            .interactive
            .iter()
            .filter(|x| x.conn == conn && x.exit.is_none())
        {
            log!("exec {}: its client went away; killing it", x.pid);
            x.kill();
        }
    }

    /// A new pty in the running container's /dev/pts: (master, slave, the slave's name).
    pub fn open_pty(&mut self, id: &str) -> Result<(OwnedFd, OwnedFd, String), Failure> {
        let ci = self.lookup(id)?;
        let c = &self.containers[ci];
        if c.status != Status::Running {
            return Err(Failure::precondition(format!(
                "container {id} is not running"
            )));
        }
        interactive::open_pty(c.pid)
            .map_err(|e| Failure::internal(format!("container {id}: open a pty: {e}")))
    }

    /// Attaches `stdout` and `stderr` (either may be absent) to the container's output
    /// until it exits; returns the container's stdin (None without one, or once a
    /// stdin_once container's has been handed over) and whether it has a tty. With a
    /// tty all output is the terminal's, and `stderr` is closed at once.
    pub fn attach(
        &mut self,
        id: &str,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    ) -> Result<(Option<OwnedFd>, bool), Failure> {
        let ci = self.lookup(id)?;
        let c = &mut self.containers[ci];
        if c.status == Status::Exited {
            return Err(Failure::precondition(format!(
                "container {id} is not running"
            )));
        }
        let io_err =
            |e: &dyn std::fmt::Display| Failure::internal(format!("attach to container {id}: {e}"));
        let stdin = if c.stdin_once {
            c.stdin.take()
        } else {
            c.stdin
                .as_ref()
                .map(OwnedFd::try_clone)
                .transpose()
                .map_err(|e| io_err(&e))?
        };
        for (slot, fd) in [(0, stdout), (1, stderr)] {
            let Some(fd) = fd else { continue };
            // A tty has one output; a stream at EOF gives none: the reader sees EOF now.
            if (c.tty && slot == 1) || c.outputs[slot].is_none() {
                continue;
            }
            interactive::prepare_output(&fd).map_err(|e| io_err(&e))?;
            c.attached[slot].retain(Option::is_some);
            c.attached[slot].push(Some(fd));
        }
        Ok((stdin, c.tty))
    }

    /// Kills the execs whose time is up; the earliest deadline still ahead.
    pub fn check_deadlines(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for e in &mut self.execs {
            if let Some(d) = e.deadline(now) {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        }
        next
    }

    /// Execs that are done, removed, with the connection their answer goes to.
    pub fn finished_execs(
        &mut self,
        now: Instant,
    ) -> Vec<(u64, crate::proto::shim::ExecSyncResponse)> {
        let mut done = Vec::new();
        let mut i = 0;
        while i < self.execs.len() {
            if self.execs[i].is_done(now) {
                let e = self.execs.swap_remove(i);
                done.push((e.conn, e.finish()));
            } else {
                i += 1;
            }
        }
        done
    }

    /// Pids of the container inits that have not exited and of the running execs.
    pub fn live_pids(&self) -> Vec<Pid> {
        let mut pids: Vec<Pid> = self
            .containers
            .iter()
            .filter(|c| c.status != Status::Exited)
            .map(|c| c.pid)
            .collect();
        pids.extend(self.execs.iter().filter(|e| !e.has_exited()).map(|e| e.pid));
        pids.extend(
            self.interactive
                .iter()
                .filter(|x| x.exit.is_none())
                .map(|x| x.pid),
        );
        pids
    }

    /// SIGTERM to each container's init and exec (shutdown's polite phase).
    pub fn terminate_all(&mut self) {
        for pid in self.live_pids() {
            let _ = kill(pid, Signal::SIGTERM);
        }
    }

    /// SIGKILL to every process of every container (its cgroup) and to the execs.
    pub fn kill_all(&mut self) {
        for c in &mut self.containers {
            if c.status != Status::Exited {
                let _ = kill(c.pid, Signal::SIGKILL);
            }
            let _ = c.lc.kill(Signal::SIGKILL, true);
        }
        for e in &self.execs {
            if !e.has_exited() {
                let _ = kill(e.pid, Signal::SIGKILL);
            }
        }
        for x in self.interactive.iter().filter(|x| x.exit.is_none()) {
            x.kill();
        }
    }

    /// Deletes every container with libcontainer (their cgroups and state); the exit
    /// records stay for berthd. Returns what failed.
    pub fn delete_all(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        for mut c in std::mem::take(&mut self.containers) {
            c.close_outputs();
            if let Err(e) = c.lc.delete(true) {
                problems.push(format!("delete container {}: {}", c.id, error_chain(&e)));
            }
        }
        self.execs.clear();
        self.interactive.clear();
        problems
    }
}

/// The socket a tty container's init sends its pty master over: bound by a relative
/// name from inside `<state_dir>/console` (socket paths are limited to 107 bytes).
struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    fn bind(state_dir: &Path, id: &str) -> std::io::Result<ConsoleSocket> {
        let dir = state_dir.join("console");
        std::fs::create_dir_all(&dir)?;
        let name = format!("{id}.sock");
        let path = dir.join(&name);
        let _ = std::fs::remove_file(&path);
        std::env::set_current_dir(&dir)?;
        let l = UnixListener::bind(&name);
        let _ = std::env::set_current_dir("/");
        Ok(ConsoleSocket { path, listener: l? })
    }

    /// The connection libcontainer made during create and the fd its init sent on it.
    #[allow(unsafe_code)]
    fn receive_pty(&self) -> Result<OwnedFd, String> {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
        self.listener
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        let (stream, _) = self.listener.accept().map_err(|e| format!("accept: {e}"))?;
        let mut buf = [0u8; 1024];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
        )
        .map_err(|e| format!("recvmsg: {e}"))?;
        let mut received = None;
        for c in msg.cmsgs().map_err(|e| format!("recvmsg: {e}"))? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for fd in fds {
                    // SAFETY: the kernel just installed this fd in our table for us; it
                    // is owned by nothing else.
                    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                    received.get_or_insert(owned);
                }
            }
        }
        received.ok_or_else(|| "no fd in the console socket's message".to_string())
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// libcontainer writes the spec's `oom_score_adj` to the caller's
/// `/proc/self/oom_score_adj` so that the container inherits it; the shim keeps its own.
pub struct OomScoreGuard(Option<String>);

impl OomScoreGuard {
    pub fn save() -> OomScoreGuard {
        OomScoreGuard(std::fs::read_to_string("/proc/self/oom_score_adj").ok())
    }
}

impl Drop for OomScoreGuard {
    fn drop(&mut self) {
        if let Some(v) = &self.0
            && std::fs::read_to_string("/proc/self/oom_score_adj")
                .ok()
                .as_ref()
                != Some(v)
        {
            let _ = std::fs::write("/proc/self/oom_score_adj", v.trim());
        }
    }
}

/// A pipe, both ends close-on-exec (libcontainer dup2s the child's end onto 0, 1 or 2).
pub fn pipe() -> nix::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC)
}

pub fn set_nonblocking(fd: &OwnedFd) -> nix::Result<()> {
    use nix::fcntl::{FcntlArg, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}

pub fn dev_null(write: bool) -> std::io::Result<OwnedFd> {
    std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")
        .map(OwnedFd::from)
}

/// Waits (bounded) for a child that was sent SIGKILL.
fn wait_for(pid: Pid) {
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => {}
            _ => return,
        }
        if Instant::now() > deadline {
            log!("pid {pid} did not die within 5s of SIGKILL");
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["abc", "a.b-c_d+e", "0123456789abcdef", "..."] {
            assert!(check_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "../x", "a b", "é"] {
            let f = check_id(bad).unwrap_err();
            assert_eq!(f.kind, ErrorKind::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn oom_counters() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(oom_kills(v1), 2);
        let v2 = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(oom_kills(v2), 1);
        assert_eq!(oom_kills("oom_kill_disable 0\nunder_oom 0\n"), 0);
    }

    #[test]
    fn exit_codes() {
        let p = Pid::from_raw(1);
        assert_eq!(exit_code(&WaitStatus::Exited(p, 3)), (3, 0));
        assert_eq!(
            exit_code(&WaitStatus::Signaled(p, Signal::SIGTERM, false)),
            (143, 15)
        );
        assert_eq!(
            exit_code(&WaitStatus::Signaled(p, Signal::SIGKILL, true)),
            (137, 9)
        );
    }

    #[test]
    fn error_chains_skip_repeats() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let e = E(
            "outer",
            Some(Box::new(E("inner", Some(Box::new(E("inner", None)))))),
        );
        assert_eq!(error_chain(&e), "outer: inner");
    }
}
