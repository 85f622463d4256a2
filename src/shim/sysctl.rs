//! Which pod sysctls may be set, and where they are written.
//!
//! Only sysctls that live in one of the pod's own namespaces are accepted (as runc
//! validates them): `net.*` in its network namespace, the System V IPC and POSIX message
//! queue ones in its IPC namespace, `kernel.hostname`/`kernel.domainname` in its UTS
//! namespace. Anything else would change the host, and so does a namespaced sysctl whose
//! namespace the pod shares with the host: both are refused.

use std::path::PathBuf;

use crate::sandbox::namespaces::Namespace;

/// The kernel namespace a sysctl belongs to, from its `/`-separated name; `None` when it is
/// not namespaced.
pub fn namespace_of(path: &str) -> Option<Namespace> {
    const IPC: &[&str] = &[
        "kernel/msgmax",
        "kernel/msgmnb",
        "kernel/msgmni",
        "kernel/sem",
        "kernel/shmall",
        "kernel/shmmax",
        "kernel/shmmni",
        "kernel/shm_rmid_forced",
    ];
    if path.starts_with("net/") {
        Some(Namespace::Net)
    } else if path.starts_with("fs/mqueue/") || IPC.contains(&path) {
        Some(Namespace::Ipc)
    } else if path == "kernel/hostname" || path == "kernel/domainname" {
        Some(Namespace::Uts)
    } else {
        None
    }
}

/// The sysctl's name as a path relative to `/proc/sys`: `net.ipv4.ip_forward` →
/// `net/ipv4/ip_forward`. A name that already uses `/` (needed when a component holds a
/// dot, as in `net/ipv4/conf/eth0.100/rp_filter`) is taken as it is.
pub fn relative_path(key: &str) -> Result<String, String> {
    if key.is_empty() {
        return Err("empty sysctl name".into());
    }
    if key.starts_with('/') {
        return Err(format!("sysctl {key:?}: absolute names are not allowed"));
    }
    if key.contains("..") {
        return Err(format!("sysctl {key:?}: '..' is not allowed"));
    }
    let path = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
        || path.contains('\0')
    {
        return Err(format!("sysctl {key:?}: malformed name"));
    }
    Ok(path)
}

/// Checks one sysctl of a pod whose namespaces of each kind are its own when `own(kind)`;
/// returns the file to write under `/proc/sys`.
pub fn check(key: &str, own: impl Fn(Namespace) -> bool) -> Result<PathBuf, String> {
    let rel = relative_path(key)?;
    match namespace_of(&rel) {
        None => Err(format!(
            "sysctl {key:?} is not in a separate kernel namespace"
        )),
        Some(ns) if !own(ns) => Err(format!(
            "sysctl {key:?} belongs to the {} namespace, which the pod shares with the host",
            ns.name()
        )),
        Some(_) => Ok(PathBuf::from("/proc/sys").join(rel)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let all = |_| true;
        for (key, want) in [
            ("net.ipv4.ip_forward", Ok("/proc/sys/net/ipv4/ip_forward")),
            (
                "net/ipv4/conf/eth0.100/rp_filter",
                Ok("/proc/sys/net/ipv4/conf/eth0.100/rp_filter"),
            ),
            (
                "kernel.shm_rmid_forced",
                Ok("/proc/sys/kernel/shm_rmid_forced"),
            ),
            ("kernel.sem", Ok("/proc/sys/kernel/sem")),
            ("fs.mqueue.msg_max", Ok("/proc/sys/fs/mqueue/msg_max")),
            ("kernel.hostname", Ok("/proc/sys/kernel/hostname")),
            ("vm.swappiness", Err("not in a separate kernel namespace")),
            ("kernel.pid_max", Err("not in a separate kernel namespace")),
            ("/net/ipv4/ip_forward", Err("absolute")),
            ("net/../kernel/pid_max", Err("'..'")),
            ("net..ipv4", Err("'..'")),
            ("net.ipv4.", Err("malformed")),
            ("net//ipv4", Err("malformed")),
            ("net/./ipv4", Err("malformed")),
            ("", Err("empty")),
        ] {
            match (check(key, all), want) {
                (Ok(p), Ok(w)) => assert_eq!(p, PathBuf::from(w), "{key}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{key}: {e}"),
                (got, want) => panic!("{key}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn host_namespaces_are_refused() {
        let no_net = |ns| ns != Namespace::Net;
        let e = check("net.ipv4.ip_forward", no_net).unwrap_err();
        assert!(e.contains("net namespace"), "{e}");
        assert!(check("kernel.shm_rmid_forced", no_net).is_ok());
        let no_ipc = |ns| ns != Namespace::Ipc;
        assert!(check("fs.mqueue.msg_max", no_ipc).is_err());
        assert!(check("kernel.msgmax", no_ipc).is_err());
    }
}
