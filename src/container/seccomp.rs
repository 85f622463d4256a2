//! Seccomp: berth's `RuntimeDefault` profile (containerd's default profile, rule for rule)
//! and `Localhost` profiles (OCI `LinuxSeccomp` JSON, as containerd reads them).
//!
//! The default profile denies every syscall with `EPERM` except an allow list (which
//! includes `ptrace` and `process_vm_readv`/`writev`, as containerd does on kernels >= 4.8);
//! a few more are allowed when the container holds the capability that guards them (e.g.
//! `mount`, `unshare`, `setns`, `bpf` with `CAP_SYS_ADMIN`; `kcmp`, `pidfd_getfd` with
//! `CAP_SYS_PTRACE`; `chroot` with `CAP_SYS_CHROOT`; `reboot` with `CAP_SYS_BOOT`;
//! `open_by_handle_at` with `CAP_DAC_READ_SEARCH`), `clone` is allowed only without
//! namespace flags and `clone3` answers `ENOSYS` unless `CAP_SYS_ADMIN` is held, `socket`
//! is allowed but not for `AF_VSOCK`, and `personality` only for the five harmless
//! personas. Denied by default: e.g. `kexec_load`, `init_module`, `open_by_handle_at`,
//! `add_key`/`keyctl`/`request_key`, `userfaultfd`, `swapon`, `mount`, `pivot_root`,
//! `umount2`, `unshare`, `setns`, `bpf`, `perf_event_open`, `acct`, `settimeofday`,
//! `iopl`/`ioperm`, `lookup_dcookie`, `quotactl`, `fanotify_init`, `vhangup`, `nfsservctl`,
//! `create_module`, `get_kernel_syms`, `uselib`, `ustat`, `sysfs`, `_sysctl`.

use std::path::Path;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};

use super::spec::SpecError;

/// Syscalls every container may make (containerd 2.x `contrib/seccomp`, in its order).
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listmount",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lsm_get_self_attr",
    "lsm_list_modules",
    "lsm_set_self_attr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "map_shadow_stack",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statmount",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Syscalls allowed when the bounding set holds a capability.
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// `CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
/// CLONE_NEWNET | CLONE_NEWCGROUP`: the flags `clone` may not carry without
/// `CAP_SYS_ADMIN`.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;
const AF_VSOCK: u64 = 40;
const ENOSYS: u32 = 38;

fn arches() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchArm, Arch::ScmpArchAarch64]
    } else {
        Vec::new()
    }
}

fn arch_specific() -> &'static [&'static str] {
    if cfg!(target_arch = "x86_64") {
        &["arch_prctl", "modify_ldt"]
    } else if cfg!(target_arch = "aarch64") {
        &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ]
    } else {
        &[]
    }
}

fn rule(names: &[&str], action: LinuxSeccompAction) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names.iter().map(|n| n.to_string()).collect());
    s.set_action(action);
    s
}

fn arg(
    index: usize,
    value: u64,
    value_two: Option<u64>,
    op: LinuxSeccompOperator,
) -> LinuxSeccompArg {
    let b = LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .op(op);
    let b = match value_two {
        Some(v) => b.value_two(v),
        None => b,
    };
    b.build().expect("every field of a seccomp argument is set")
}

fn with_args(names: &[&str], args: Vec<LinuxSeccompArg>) -> LinuxSyscall {
    let mut s = rule(names, LinuxSeccompAction::ScmpActAllow);
    s.set_args(Some(args));
    s
}

/// containerd's default profile for a container whose bounding set is `bounding`
/// (canonical `CAP_…` names). The kernel-version gate containerd has for `ptrace`
/// (>= 4.8) is taken as met.
pub fn default_profile(bounding: &[String]) -> LinuxSeccomp {
    use LinuxSeccompAction::{ScmpActAllow, ScmpActErrno};
    use LinuxSeccompOperator::{ScmpCmpEq, ScmpCmpMaskedEq, ScmpCmpNe};

    let mut syscalls = vec![
        rule(ALLOWED, ScmpActAllow),
        with_args(&["socket"], vec![arg(0, AF_VSOCK, None, ScmpCmpNe)]),
    ];
    for persona in [0x0, 0x0008, 0x20000, 0x20008, 0xffff_ffff] {
        syscalls.push(with_args(
            &["personality"],
            vec![arg(0, persona, None, ScmpCmpEq)],
        ));
    }
    syscalls.push(rule(
        &["process_vm_readv", "process_vm_writev", "ptrace"],
        ScmpActAllow,
    ));
    if !arch_specific().is_empty() {
        syscalls.push(rule(arch_specific(), ScmpActAllow));
    }
    let has = |c: &str| bounding.iter().any(|b| b == c);
    for (cap, names) in BY_CAPABILITY {
        if has(cap) {
            syscalls.push(rule(names, ScmpActAllow));
        }
    }
    if !has("CAP_SYS_ADMIN") {
        // Runtime-spec semantics: `(arg & value) == valueTwo`.
        syscalls.push(with_args(
            &["clone"],
            vec![arg(0, CLONE_NAMESPACE_FLAGS, Some(0), ScmpCmpMaskedEq)],
        ));
        let mut clone3 = rule(&["clone3"], ScmpActErrno);
        clone3.set_errno_ret(Some(ENOSYS));
        syscalls.push(clone3);
    }

    let mut s = LinuxSeccomp::default();
    s.set_default_action(ScmpActErrno);
    s.set_architectures(Some(arches()));
    s.set_syscalls(Some(syscalls));
    s
}

/// A `Localhost` profile: the file's content, an OCI `LinuxSeccomp` document (fields it
/// does not know, such as Docker's `archMap`, are ignored as containerd ignores them).
pub fn parse_localhost(path: &Path, content: &str) -> Result<LinuxSeccomp, SpecError> {
    serde_json::from_str(content).map_err(|e| {
        SpecError::InvalidArgument(format!(
            "decoding seccomp profile {} failed: {e}",
            path.display()
        ))
    })
}

/// libcontainer 0.7 reads `SCMP_CMP_MASKED_EQ` as `(arg & valueTwo) == value`
/// (`seccomp/mod.rs`: `MaskedEqual(value_two)` with `value` as the datum), the reverse of
/// the runtime spec and runc (`(arg & value) == valueTwo`). Profiles are written to the
/// spec's meaning; this swaps the two so libcontainer enforces what the profile says.
/// Without it the default profile's `clone` rule becomes `(arg & 0) == 0` (libseccomp
/// masks the datum too): every `clone` is allowed, namespace flags included.
pub fn swap_masked_eq_operands(seccomp: &mut LinuxSeccomp) {
    let Some(syscalls) = seccomp.syscalls().clone() else {
        return;
    };
    let syscalls = syscalls
        .into_iter()
        .map(|mut s| {
            if let Some(args) = s.args().clone() {
                let args = args
                    .into_iter()
                    .map(|a| {
                        if a.op() == LinuxSeccompOperator::ScmpCmpMaskedEq {
                            arg(
                                a.index(),
                                a.value_two().unwrap_or(0),
                                Some(a.value()),
                                a.op(),
                            )
                        } else {
                            a
                        }
                    })
                    .collect();
                s.set_args(Some(args));
            }
            s
        })
        .collect();
    seccomp.set_syscalls(Some(syscalls));
}
