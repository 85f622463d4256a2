//! Creating, pinning and releasing a pod's namespaces.
//!
//! A pod's network, IPC, UTS (and, with a shared PID namespace, PID) namespaces are kept
//! alive by bind-mounting their `/proc/<pid>/ns/<kind>` file onto an empty file under the
//! pod's state directory (`<state_dir>/ns/<kind>`). The shim pins them at start and unpins
//! them at shutdown; [`unpin_all`] is also what berthd calls after a shim died. Everything
//! here is idempotent where the name says so, and works from any process in the host's
//! mount namespace.
//!
//! The nix wrappers used here are safe functions, so this module needs no `unsafe` today;
//! it is the place for namespace syscalls that would.

use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::statfs::{NSFS_MAGIC, statfs};

/// One kind of namespace a pod can have of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    Net,
    Ipc,
    Uts,
    Pid,
    /// Only with a user-namespaced pod: it owns the pod's other namespaces.
    User,
}

impl Namespace {
    pub const ALL: [Namespace; 5] = [
        Namespace::Net,
        Namespace::Ipc,
        Namespace::Uts,
        Namespace::Pid,
        Namespace::User,
    ];

    /// The name of its file under `/proc/<pid>/ns/` and under `<state_dir>/ns/`.
    pub fn name(self) -> &'static str {
        match self {
            Namespace::Net => "net",
            Namespace::Ipc => "ipc",
            Namespace::Uts => "uts",
            Namespace::Pid => "pid",
            Namespace::User => "user",
        }
    }

    pub fn clone_flag(self) -> CloneFlags {
        match self {
            Namespace::Net => CloneFlags::CLONE_NEWNET,
            Namespace::Ipc => CloneFlags::CLONE_NEWIPC,
            Namespace::Uts => CloneFlags::CLONE_NEWUTS,
            Namespace::Pid => CloneFlags::CLONE_NEWPID,
            Namespace::User => CloneFlags::CLONE_NEWUSER,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unshare({what}): {source}")]
    Unshare { what: String, source: Errno },
    #[error("pin {source_path} at {path}: {source}")]
    Pin {
        source_path: PathBuf,
        path: PathBuf,
        source: io::Error,
    },
    #[error("unpin {path}: {source}")]
    Unpin { path: PathBuf, source: io::Error },
}

/// Where a pod's pinned namespaces live (whether or not they are pinned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsPaths {
    pub net: PathBuf,
    pub ipc: PathBuf,
    pub uts: PathBuf,
    pub pid: PathBuf,
    pub user: PathBuf,
}

impl NsPaths {
    pub fn get(&self, ns: Namespace) -> &Path {
        match ns {
            Namespace::Net => &self.net,
            Namespace::Ipc => &self.ipc,
            Namespace::Uts => &self.uts,
            Namespace::Pid => &self.pid,
            Namespace::User => &self.user,
        }
    }
}

/// The directory holding the pins: `<state_dir>/ns`.
pub fn ns_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("ns")
}

pub fn ns_paths(state_dir: &Path) -> NsPaths {
    let d = ns_dir(state_dir);
    NsPaths {
        net: d.join("net"),
        ipc: d.join("ipc"),
        uts: d.join("uts"),
        pid: d.join("pid"),
        user: d.join("user"),
    }
}

/// Moves the calling process into new namespaces of the given kinds, with one
/// `unshare(2)`. For [`Namespace::Pid`] only the caller's future children go there.
pub fn unshare(kinds: &[Namespace]) -> Result<(), Error> {
    if kinds.is_empty() {
        return Ok(());
    }
    let flags = kinds
        .iter()
        .fold(CloneFlags::empty(), |f, k| f | k.clone_flag());
    nix::sched::unshare(flags).map_err(|source| Error::Unshare {
        what: kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join("|"),
        source,
    })
}

/// Keeps the namespace behind `source` (a `/proc/<pid>/ns/<kind>` file) alive by
/// bind-mounting it onto `target`, which is created empty (with its parent directory).
pub fn pin(source: &Path, target: &Path) -> Result<(), Error> {
    let err = |source_err: io::Error| Error::Pin {
        source_path: source.to_path_buf(),
        path: target.to_path_buf(),
        source: source_err,
    };
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(target)
        .map_err(err)?;
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| err(e.into()))
}

/// Pins the caller's own namespace of `kind` at its place under `state_dir`.
pub fn pin_own(state_dir: &Path, kind: Namespace) -> Result<(), Error> {
    let src = Path::new("/proc/self/ns").join(kind.name());
    pin(&src, ns_paths(state_dir).get(kind))
}

/// Whether `path` is a pinned namespace (an nsfs bind mount).
pub fn is_pinned(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// Unmounts (lazily) every mount stacked on `target` and removes the file. A missing
/// file or one that is not mounted is fine: calling it twice is a no-op.
pub fn unpin(target: &Path) -> Result<(), Error> {
    let err = |source: io::Error| Error::Unpin {
        path: target.to_path_buf(),
        source,
    };
    // A pin may have been made twice; bounded so that a weird mount cannot loop us.
    for _ in 0..16 {
        match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            // EINVAL: not a mount point (any more). ENOENT: nothing there.
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => break,
            // Without privileges every umount fails; that is fine when nothing is pinned.
            Err(_) if !is_pinned(target) => break,
            Err(e) => return Err(err(e.into())),
        }
    }
    match std::fs::remove_file(target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// Unpins every namespace of the pod and removes `<state_dir>/ns` when it is empty.
/// Idempotent; used by the shim at shutdown and by berthd after a shim died. All pins are
/// tried; the first error is returned.
pub fn unpin_all(state_dir: &Path) -> Result<(), Error> {
    let paths = ns_paths(state_dir);
    let mut first = None;
    for kind in Namespace::ALL {
        if let Err(e) = unpin(paths.get(kind)) {
            first.get_or_insert(e);
        }
    }
    // Not empty (something else lives there) or absent: leave it.
    let _ = std::fs::remove_dir(ns_dir(state_dir));
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let p = ns_paths(Path::new("/run/berth/pods/abc"));
        assert_eq!(p.net, Path::new("/run/berth/pods/abc/ns/net"));
        assert_eq!(p.ipc, Path::new("/run/berth/pods/abc/ns/ipc"));
        assert_eq!(p.uts, Path::new("/run/berth/pods/abc/ns/uts"));
        assert_eq!(p.pid, Path::new("/run/berth/pods/abc/ns/pid"));
        assert_eq!(p.get(Namespace::Uts), p.uts);
    }

    #[test]
    fn unpin_all_is_a_noop_when_nothing_is_there() {
        let d = std::env::temp_dir().join(format!("berth-ns-unit-{}", std::process::id()));
        unpin_all(&d).unwrap();
        std::fs::create_dir_all(ns_dir(&d)).unwrap();
        std::fs::write(ns_paths(&d).net, b"").unwrap();
        assert!(!is_pinned(&ns_paths(&d).net));
        unpin_all(&d).unwrap();
        assert!(!ns_dir(&d).exists());
        unpin_all(&d).unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }
}
