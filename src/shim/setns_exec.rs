//! Exec into a running container by joining it, as runc's setns path does, for every
//! container: libcontainer 0.7's tenant builder re-reads the container's state and spec,
//! walks procfs with hundreds of checked lookups and forks through its own channels on
//! every exec (most of ExecSync's time), and cannot join a user namespace at all (its
//! fixed namespace list has no `user`: its exec would run as the host's root inside the
//! container's mounts). What an exec needs of its container is read once into a
//! [`Target`]; each exec then goes, in runc's order:
//!
//! 1. a fork of the shim (still the host's root, no longer dumpable) moves itself into
//!    the container's cgroups, sets the container's rlimits and `oom_score_adj`, joins
//!    the container's user namespace first (if it has one), then its other namespaces;
//! 2. it clones the process proper with `CLONE_PARENT` (so the shim is its parent and
//!    reaps it; in the container's PID namespace), reports its pid and exits;
//! 3. the process becomes a session leader, takes its stdio, working directory, the
//!    container's credentials, capabilities, no_new_privs and environment (HOME from the
//!    container's /etc/passwd when the spec has none, as libcontainer does), then
//!    [`BerthExecutor`] loads the seccomp filter and execs. A failure before `execve`
//!    comes back on a close-on-exec pipe with the message the tenant builder would give.
//!
//! Settings this path does not apply (an AppArmor profile, an SELinux label, I/O priority,
//! scheduler, exec CPU affinity, personality) send the exec to the tenant builder instead
//! ([`Target::needs_tenant_builder`]); berth's specs set none of them.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability};
use libcontainer::workload::Executor;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Gid, Pid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};

use super::exec::Stdio;
use super::init;
use super::workload::{BerthExecutor, EXEC_ERROR, find_executable};

/// Why an exec could not start: the caller's fault (a missing command) or not.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Internal(String),
}

/// What an exec needs of a running container, read at its first exec and kept while its
/// init runs (nothing of it changes meanwhile).
pub struct Target {
    /// The container's spec (its `config.json`), parsed once instead of per exec.
    pub spec: Spec,
    /// The container's init, whose namespaces and cgroups an exec joins.
    pub init: Pid,
    namespaces: Vec<(&'static str, CloneFlags)>,
    /// The init's cgroups.
    cgroups: Vec<Cgroup>,
    /// The init's `/proc/PID/uid_map` when the container has a user namespace.
    uid_map: Option<String>,
}

impl Target {
    /// Reads the spec in `bundle` and what the container's `init` is in.
    pub fn load(bundle: &Path, init: Pid) -> Result<Target, String> {
        let spec =
            Spec::load(bundle.join("config.json")).map_err(|e| format!("load config.json: {e}"))?;
        let namespaces = namespaces(&spec);
        let uid_map = if namespaces.iter().any(|(n, _)| *n == "user") {
            let path = format!("/proc/{init}/uid_map");
            Some(std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?)
        } else {
            None
        };
        Ok(Target {
            cgroups: cgroups(init).map_err(|e| format!("cgroups: {e}"))?,
            spec,
            init,
            namespaces,
            uid_map,
        })
    }

    pub fn uid_map(&self) -> Option<&str> {
        self.uid_map.as_deref()
    }

    /// Whether `process` asks for what only libcontainer's tenant builder applies (see the
    /// module's doc). Never with a user namespace, which the tenant builder cannot join.
    pub fn needs_tenant_builder(&self, process: &Process) -> bool {
        self.uid_map.is_none()
            && (process.apparmor_profile().is_some()
                || process.selinux_label().is_some()
                || process.io_priority().is_some()
                || process.scheduler().is_some()
                || process.exec_cpu_affinity().is_some()
                || self
                    .spec
                    .linux()
                    .as_ref()
                    .is_some_and(|l| l.personality().is_some()))
    }
}

/// The `/proc/<init>/ns/` names to join, user first, mount last.
fn namespaces(spec: &Spec) -> Vec<(&'static str, CloneFlags)> {
    use LinuxNamespaceType as T;
    let listed: Vec<T> = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .map(|ns| ns.iter().map(|n| n.typ()).collect())
        .unwrap_or_default();
    [
        (T::User, "user", CloneFlags::CLONE_NEWUSER),
        (T::Ipc, "ipc", CloneFlags::CLONE_NEWIPC),
        (T::Uts, "uts", CloneFlags::CLONE_NEWUTS),
        (T::Network, "net", CloneFlags::CLONE_NEWNET),
        (T::Pid, "pid", CloneFlags::CLONE_NEWPID),
        (T::Cgroup, "cgroup", CloneFlags::CLONE_NEWCGROUP),
        (
            T::Time,
            "time",
            CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
        ),
        (T::Mount, "mnt", CloneFlags::CLONE_NEWNS),
    ]
    .into_iter()
    .filter(|(t, _, _)| listed.contains(t))
    .map(|(_, name, flag)| (name, flag))
    .collect()
}

/// A cgroup an exec joins.
struct Cgroup {
    /// Its line of `/proc/PID/cgroup` (`ID:CONTROLLERS:PATH`).
    line: String,
    /// The file a process writes `0` to to move itself in: `tasks` in a v1 hierarchy, which
    /// moves the calling thread without the global lock (and the RCU grace period, 5-10
    /// ms here) that a write to `cgroup.procs` takes; `cgroup.procs` in the v2 one.
    file: PathBuf,
}

/// The cgroups `pid` is in (each v1 hierarchy, found where it is mounted, and the v2 one).
/// One that cannot be found is an error: the exec would escape that hierarchy's limits.
fn cgroups(pid: Pid) -> Result<Vec<Cgroup>, String> {
    use crate::sandbox::cgroup::Hierarchy;
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("read /proc/{pid}/cgroup: {e}"))?;
    let (v1, v2) = match Hierarchy::detect() {
        Hierarchy::V2(root) => (Vec::new(), Some(root)),
        Hierarchy::V1(mounts) => {
            let unified = PathBuf::from("/sys/fs/cgroup/unified");
            (
                mounts,
                unified.join("cgroup.procs").exists().then_some(unified),
            )
        }
    };
    let mut out = Vec::new();
    for (line, dir, file) in join_plan(&text, &v1, v2.as_deref())? {
        if !dir.join("cgroup.procs").exists() {
            return Err(format!("the container's cgroup {} is gone", dir.display()));
        }
        out.push(Cgroup {
            file: dir.join(file),
            line,
        });
    }
    Ok(out)
}

/// For each line of `/proc/PID/cgroup` (`ID:CONTROLLERS:PATH`): the line, the cgroup's
/// directory and the file to write to join it. `v1` is each mounted v1 hierarchy's options
/// (its controllers among them) and mount point; `v2` the v2 mount, if any (without one, the
/// `0::` line names nothing to join).
fn join_plan(
    text: &str,
    v1: &[(Vec<String>, PathBuf)],
    v2: Option<&Path>,
) -> Result<Vec<(String, PathBuf, &'static str)>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            continue;
        };
        let path = path.trim_start_matches('/');
        if controllers.is_empty() {
            if let Some(v2) = v2 {
                out.push((line.to_string(), v2.join(path), "cgroup.procs"));
            }
            continue;
        }
        let wanted: Vec<&str> = controllers.split(',').collect();
        let (_, mount) = v1
            .iter()
            .find(|(opts, _)| wanted.iter().all(|w| opts.iter().any(|o| o == w)))
            .ok_or_else(|| format!("the cgroup v1 hierarchy {controllers:?} is not mounted"))?;
        out.push((line.to_string(), mount.join(path), "tasks"));
    }
    Ok(out)
}

/// The files an exec's fork writes to join `target`'s cgroups: those of the cgroups the
/// shim (and so the fork) is not already in.
fn cgroups_to_join(target: &Target) -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    target
        .cgroups
        .iter()
        .filter(|c| !own.lines().any(|l| l == c.line))
        .map(|c| c.file.clone())
        .collect()
}

/// Starts `process` (the container's process settings with the exec's args) in the
/// container `target`, with `stdio`; with `tty` stdin is a terminal that becomes its
/// controlling terminal. Returns the new process's pid: the caller's child.
pub fn spawn(target: &Target, process: &Process, stdio: Stdio, tty: bool) -> Result<Pid, Error> {
    let internal = |what: &str, e: &dyn std::fmt::Display| Error::Internal(format!("{what}: {e}"));
    let init = target.init;
    let mut ns_files = Vec::with_capacity(target.namespaces.len());
    for (name, flag) in &target.namespaces {
        let path = format!("/proc/{init}/ns/{name}");
        let f = std::fs::File::open(&path).map_err(|e| internal(&path, &e))?;
        ns_files.push((f, *flag));
    }
    let seccomp = target
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref());
    let cgroups = cgroups_to_join(target);
    // report: the process's pid. errors: what failed before execve (close-on-exec: EOF
    // means it ran).
    let (rep_r, rep_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| internal("pipe", &e))?;
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| internal("pipe", &e))?;

    match init::fork().map_err(|e| internal("fork", &e))? {
        ForkResult::Child => {
            drop((rep_r, err_r));
            let code = match joiner(
                (rep_w, &err_w),
                &cgroups,
                ns_files,
                seccomp,
                process,
                stdio,
                tty,
            ) {
                Ok(()) => 0,
                Err(e) => {
                    report(&err_w, &e);
                    1
                }
            };
            init::exit_now(code)
        }
        ForkResult::Parent { child } => {
            drop((rep_w, err_w, stdio));
            drop(ns_files);
            let mut pid_bytes = [0u8; 4];
            let reported = std::fs::File::from(rep_r).read_exact(&mut pid_bytes);
            let _ = waitpid(child, None);
            let mut msg = String::new();
            let _ = std::fs::File::from(err_r).read_to_string(&mut msg);
            if !msg.is_empty() {
                // The process (if it was made) has exited on its own; the shim reaps it.
                return Err(if msg.starts_with(EXEC_ERROR) {
                    Error::Invalid(msg)
                } else {
                    Error::Internal(msg)
                });
            }
            reported.map_err(|e| internal("the exec's pid", &e))?;
            Ok(Pid::from_raw(i32::from_ne_bytes(pid_bytes)))
        }
    }
}

fn report(err_w: &OwnedFd, msg: &str) {
    let _ = nix::unistd::write(err_w, msg.as_bytes());
}

/// The fork: cgroups, namespaces, then the process.
fn joiner(
    (rep_w, err_w): (OwnedFd, &OwnedFd),
    cgroups: &[PathBuf],
    ns_files: Vec<(std::fs::File, CloneFlags)>,
    seccomp: Option<&oci_spec::runtime::LinuxSeccomp>,
    process: &Process,
    stdio: Stdio,
    tty: bool,
) -> Result<(), String> {
    // Nothing in the container may ptrace this copy of the shim (its memory, its fds) once
    // it is in the container's PID namespace; execve makes the program dumpable again.
    nix::sys::prctl::set_dumpable(false).map_err(|e| format!("dumpable: {e}"))?;
    for f in cgroups {
        std::fs::write(f, "0").map_err(|e| format!("join {}: {e}", f.display()))?;
    }
    // While still the host's root (raising a hard limit needs CAP_SYS_RESOURCE there); the
    // process inherits them.
    let syscall = libcontainer::syscall::syscall::create_syscall();
    for limit in process.rlimits().iter().flatten() {
        syscall
            .set_rlimit(limit)
            .map_err(|e| format!("rlimit {}: {e}", limit.typ()))?;
    }
    // Likewise: lowering it needs CAP_SYS_RESOURCE there.
    if let Some(adj) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| format!("oom_score_adj {adj}: {e}"))?;
    }
    for (f, flag) in ns_files {
        nix::sched::setns(f, flag).map_err(|e| format!("join the container's {flag:?}: {e}"))?;
    }
    match init::clone_fork(libc::CLONE_PARENT as libc::c_ulong)? {
        0 => {
            drop(rep_w);
            let e = exec_process(seccomp, process, stdio, tty);
            report(err_w, &e);
            init::exit_now(127)
        }
        pid => {
            let _ = nix::unistd::write(&rep_w, &(pid as i32).to_ne_bytes());
            Ok(())
        }
    }
}

/// In the container's namespaces: becomes the process, or says why not.
fn exec_process(
    seccomp: Option<&oci_spec::runtime::LinuxSeccomp>,
    process: &Process,
    stdio: Stdio,
    tty: bool,
) -> String {
    if let Err(e) = prepare(process, stdio) {
        return e;
    }
    // The executor reads only the process (its args) of the spec it is given.
    let mut spec = Spec::default();
    spec.set_process(Some(process.clone()));
    let executor = BerthExecutor {
        seccomp: seccomp.cloned(),
        controlling_tty: tty,
    };
    match executor.exec(&spec) {
        Ok(()) => "exec returned".into(),
        Err(e) => e.to_string(),
    }
}

fn dup_to(fd: &OwnedFd, to: RawFd) -> Result<(), String> {
    nix::unistd::dup2(fd.as_raw_fd(), to).map_err(|e| format!("dup2 to {to}: {e}"))?;
    Ok(())
}

#[allow(unsafe_code)]
fn prepare(process: &Process, stdio: Stdio) -> Result<(), String> {
    // A session (and process group) of its own, as libcontainer and runc make it: a
    // timed-out exec is killed with its process group.
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    dup_to(&stdio.stdin, 0)?;
    dup_to(&stdio.stdout, 1)?;
    dup_to(&stdio.stderr, 2)?;
    drop(stdio.stdin);
    drop(stdio.stdout);
    drop(stdio.stderr);
    // Everything else the shim had open closes at execve (the error pipe included).
    // SAFETY: close_range takes no pointers; CLOSE_RANGE_CLOEXEC only marks descriptors.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };

    // Before the credentials change (root may enter what the user may not), and again
    // after it when root may not (a root-squashing mount), as libcontainer and runc do.
    let cwd = process.cwd();
    let chdir_later = match nix::unistd::chdir(cwd) {
        Ok(()) => false,
        Err(nix::errno::Errno::EPERM | nix::errno::Errno::EACCES) => true,
        Err(e) => return Err(format!("chdir {cwd:?}: {e}")),
    };
    let user = process.user();
    nix::sys::prctl::set_keepcaps(true).map_err(|e| format!("keepcaps: {e}"))?;
    let groups: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).map_err(|e| format!("setgroups {groups:?}: {e}"))?;
    let (uid, gid) = (Uid::from_raw(user.uid()), Gid::from_raw(user.gid()));
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setgid {gid}: {e}"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setuid {uid}: {e}"))?;
    if let Some(mask) = user.umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }
    set_capabilities(process)?;
    if process.no_new_privileges() == Some(true) {
        nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    }
    if chdir_later {
        nix::unistd::chdir(cwd).map_err(|e| format!("chdir {cwd:?}: {e}"))?;
    }
    verify_cwd()?;

    // The process's environment replaces the shim's (execvp then searches its PATH).
    let vars: Vec<std::ffi::OsString> = std::env::vars_os().map(|(k, _)| k).collect();
    for k in vars {
        // SAFETY: this forked process has a single thread.
        unsafe { std::env::remove_var(k) };
    }
    for kv in process.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=')
            && !k.is_empty()
        {
            // SAFETY: this forked process has a single thread.
            unsafe { std::env::set_var(k, v) };
        }
    }
    if std::env::var_os("HOME").is_none_or(|h| h.is_empty())
        && let Some(home) = crate::container::rootfs::read_file_in_root(
            Path::new("/"),
            "etc/passwd",
            crate::container::rootfs::ACCOUNT_FILE_MAX,
        )
        .ok()
        .flatten()
        .and_then(|p| passwd_home(&p, user.uid()))
    {
        // SAFETY: this forked process has a single thread.
        unsafe { std::env::set_var("HOME", home) };
    }
    let cmd = process
        .args()
        .as_ref()
        .and_then(|a| a.first())
        .ok_or("no command")?;
    let path = std::env::var("PATH").unwrap_or_default();
    find_executable(
        cmd,
        if path.is_empty() {
            "/bin:/usr/bin"
        } else {
            &path
        },
    )?;
    // Checked: a NUL in an argument would fail in the executor with a vaguer message.
    for a in process.args().iter().flatten() {
        CString::new(a.as_bytes()).map_err(|_| format!("argument {a:?} contains NUL"))?;
    }
    Ok(())
}

/// Refuses a working directory outside the container's root, as libcontainer's
/// `verify_cwd` and runc do (CVE-2024-21626): until `execve` this process still holds the
/// shim's descriptors (close-on-exec only), so a cwd such as `/proc/self/fd/N` (from the
/// image's WORKDIR or the spec) would put the program in a host directory. The kernel
/// reports such a directory as unreachable; glibc's `getcwd` then fails with ENOENT.
fn verify_cwd() -> Result<(), String> {
    const ESCAPE: &str = "the working directory is outside the container's root";
    match nix::unistd::getcwd() {
        Ok(p) if p.is_absolute() => Ok(()),
        Ok(p) => Err(format!("{ESCAPE} ({p:?})")),
        Err(e) => Err(format!("{ESCAPE} (getcwd: {e})")),
    }
}

/// The home directory of `uid` in an `/etc/passwd` (`name:pw:uid:gid:gecos:dir:shell`).
fn passwd_home(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 7 && f[2].parse() == Ok(uid) && !f[5].is_empty()).then(|| f[5].to_string())
    })
}

/// `CAP_NET_BIND_SERVICE`: oci-spec displays its capabilities without the prefix.
fn cap_name(c: &oci_spec::runtime::Capability) -> String {
    let name = c.to_string();
    if name.starts_with("CAP_") {
        name
    } else {
        format!("CAP_{name}")
    }
}

/// The spec's capability sets, bounding first (while CAP_SETPCAP is still held).
fn set_capabilities(process: &Process) -> Result<(), String> {
    let Some(c) = process.capabilities() else {
        return Ok(());
    };
    let set = |s: &Option<std::collections::HashSet<oci_spec::runtime::Capability>>| {
        s.iter()
            .flatten()
            .filter_map(|c| cap_name(c).parse::<Capability>().ok())
            .collect::<caps::CapsHashSet>()
    };
    // A uid change cleared the effective set (keepcaps kept the permitted one): dropping
    // from the bounding set needs CAP_SETPCAP effective again, as in libcontainer.
    let permitted =
        caps::read(None, CapSet::Permitted).map_err(|e| format!("capabilities: {e}"))?;
    caps::set(None, CapSet::Effective, &permitted)
        .map_err(|e| format!("capabilities Effective: {e}"))?;
    let bounding = set(c.bounding());
    for cap in caps::all() {
        if !bounding.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|e| format!("drop {cap}: {e}"))?;
        }
    }
    for (which, wanted) in [
        (CapSet::Inheritable, set(c.inheritable())),
        (CapSet::Effective, set(c.effective())),
        (CapSet::Permitted, set(c.permitted())),
    ] {
        caps::set(None, which, &wanted).map_err(|e| format!("capabilities {which:?}: {e}"))?;
    }
    for cap in set(c.ambient()) {
        caps::raise(None, CapSet::Ambient, cap).map_err(|e| format!("ambient {cap}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroups_are_joined_where_their_hierarchies_are_mounted() {
        let v1 = vec![
            (
                vec!["cpu".into(), "cpuacct".into()],
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"),
            ),
            (vec!["memory".into()], PathBuf::from("/cg/mem")),
            (
                vec!["xattr".into(), "name=systemd".into()],
                PathBuf::from("/sys/fs/cgroup/systemd"),
            ),
        ];
        let text = "4:memory:/pod/c\n3:cpu,cpuacct:/pod/c\n1:name=systemd:/user.slice\n0::/\n";
        let plan = join_plan(text, &v1, None).unwrap();
        let dirs: Vec<_> = plan
            .iter()
            .map(|(_, d, f)| (d.display().to_string(), *f))
            .collect();
        assert_eq!(
            dirs,
            [
                ("/cg/mem/pod/c".to_string(), "tasks"),
                ("/sys/fs/cgroup/cpu,cpuacct/pod/c".to_string(), "tasks"),
                ("/sys/fs/cgroup/systemd/user.slice".to_string(), "tasks"),
            ]
        );
        let with_v2 = join_plan(text, &v1, Some(Path::new("/u"))).unwrap();
        assert_eq!(with_v2.last().unwrap().1, PathBuf::from("/u/"));
        assert_eq!(with_v2.last().unwrap().2, "cgroup.procs");
        // A hierarchy the exec cannot find is an error, not a limit silently escaped.
        let err = join_plan("5:pids:/pod/c\n", &v1, None).unwrap_err();
        assert!(err.contains("\"pids\""), "{err}");
    }
    use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder, SpecBuilder};

    fn spec(types: &[LinuxNamespaceType]) -> Spec {
        let ns = types
            .iter()
            .map(|t| LinuxNamespaceBuilder::default().typ(*t).build().unwrap())
            .collect::<Vec<_>>();
        SpecBuilder::default()
            .linux(LinuxBuilder::default().namespaces(ns).build().unwrap())
            .build()
            .unwrap()
    }

    #[test]
    fn user_first_mount_last_and_only_what_the_spec_lists() {
        use LinuxNamespaceType as T;
        let s = spec(&[T::Mount, T::Network, T::User, T::Pid]);
        let names: Vec<&str> = namespaces(&s).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["user", "net", "pid", "mnt"]);
        let names: Vec<&str> = namespaces(&spec(&[T::Mount, T::Pid]))
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["pid", "mnt"]);
    }

    #[test]
    fn home_from_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/nonexistent:/bin/false\nweird\nu:x:1000:1000::/home/u:/bin/sh\n";
        assert_eq!(passwd_home(passwd, 0).as_deref(), Some("/root"));
        assert_eq!(passwd_home(passwd, 1000).as_deref(), Some("/home/u"));
        assert_eq!(passwd_home(passwd, 42), None);
    }

    /// A working directory reached through a descriptor that leads out of the root (what
    /// `chdir("/proc/self/fd/N")` does with a leaked directory fd) is refused; one inside is
    /// not. Root only: the child makes a mount namespace with /proc inside a chroot.
    #[test]
    #[allow(unsafe_code)]
    fn a_working_directory_outside_the_root_is_refused() {
        if !Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let base = std::env::temp_dir().join(format!("berth-cwd-{}", std::process::id()));
        let root = base.join("root");
        std::fs::create_dir_all(root.join("proc")).unwrap();
        std::fs::create_dir_all(root.join("inside")).unwrap();
        let outside = std::fs::File::open(&base).unwrap();
        let leaked = format!("/proc/self/fd/{}", outside.as_raw_fd());
        // SAFETY: the child only makes system calls and allocates (glibc's malloc is
        // fork-safe), then leaves with _exit.
        let code = match unsafe { nix::unistd::fork() }.unwrap() {
            ForkResult::Child => {
                let ok = (|| -> Result<bool, String> {
                    nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(|e| e.to_string())?;
                    nix::mount::mount(
                        None::<&str>,
                        "/",
                        None::<&str>,
                        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
                        None::<&str>,
                    )
                    .map_err(|e| e.to_string())?;
                    nix::mount::mount(
                        Some("proc"),
                        &root.join("proc"),
                        Some("proc"),
                        nix::mount::MsFlags::empty(),
                        None::<&str>,
                    )
                    .map_err(|e| e.to_string())?;
                    nix::unistd::chroot(&root).map_err(|e| e.to_string())?;
                    nix::unistd::chdir("/inside").map_err(|e| e.to_string())?;
                    let inside_ok = verify_cwd().is_ok();
                    nix::unistd::chdir(leaked.as_str()).map_err(|e| e.to_string())?;
                    let outside_refused = verify_cwd().is_err();
                    Ok(inside_ok && outside_refused)
                })();
                init::exit_now(match ok {
                    Ok(true) => 0,
                    Ok(false) => 1,
                    Err(_) => 2,
                })
            }
            ForkResult::Parent { child } => waitpid(child, None).unwrap(),
        };
        let _ = std::fs::remove_dir_all(&base);
        assert_eq!(
            code,
            nix::sys::wait::WaitStatus::Exited(code.pid().unwrap(), 0)
        );
    }

    #[test]
    fn capability_names_parse() {
        let c: Capability = cap_name(&oci_spec::runtime::Capability::NetBindService)
            .parse()
            .unwrap();
        assert_eq!(c, Capability::CAP_NET_BIND_SERVICE);
    }
}
