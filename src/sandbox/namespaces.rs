//! Creating, pinning, linking and releasing a pod's namespaces.
//!
//! Every pod namespace is reachable at `<state_dir>/ns/<kind>`, in one of two ways:
//!
//! - **pinned**: its `/proc/<pid>/ns/<kind>` file bind-mounted onto an empty file there, which
//!   keeps it alive without any process. Only what must outlive the shim is pinned (see
//!   [`Namespace::needs_pin`]): the network namespace (CNI DEL after the shim died and berthd
//!   restarted; port-forward and CNI open the path) and a user-namespaced pod's namespaces
//!   (berthd opens its user namespace for idmapped mounts, and the pod's processes, being in
//!   that user namespace, may not open another process's `/proc/<pid>/ns` files).
//! - **linked**: a symlink to `/proc/<owner>/ns/<kind>`, where the owner is the shim (IPC and
//!   UTS) or its child the pod init (PID). Each pin is a host mount, and every host mount
//!   makes each container create slower (libcontainer and the kernel walk the whole mount
//!   table), so these namespaces, which die with their owner anyway, are not pinned. Only the
//!   shim's own children (libcontainer) follow a link, while the shim is alive; the owner's
//!   pid cannot be reused while the link exists, as the shim removes the init's link when it
//!   reaps the init (a zombie's `/proc/<pid>/ns` files do not open, so the link fails rather
//!   than reach another process until then) and its own at exit. A link left by a killed
//!   shim may point at a reused pid, but nothing follows it: berthd removes it with
//!   [`unpin_all`] without following it.
//!
//! The shim makes them at start and releases them at shutdown; [`unpin_all`] is also what
//! berthd calls after a shim died. Everything here is idempotent where the name says so, and
//! works from any process in the host's mount namespace.
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

    /// Whether a pod's namespace of this kind is pinned (it must outlive the shim, or be
    /// opened by processes that may not open the owner's `/proc/<pid>/ns` files) rather
    /// than linked to its owner. See the module doc.
    pub fn needs_pin(self, user_namespaced: bool) -> bool {
        user_namespaced || self == Namespace::Net
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
    #[error("link {path} to {target}: {source}")]
    Link {
        path: PathBuf,
        target: PathBuf,
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

/// Makes `<state_dir>/ns/<kind>` a symlink to `/proc/<owner>/ns/<kind>` (replacing what is
/// there), for a namespace that needs no pin: see the module doc for why that is safe.
pub fn link(state_dir: &Path, kind: Namespace, owner: u32) -> Result<(), Error> {
    let path = ns_paths(state_dir).get(kind).to_path_buf();
    let target = PathBuf::from(format!("/proc/{owner}/ns/{}", kind.name()));
    let err = |source: io::Error| Error::Link {
        path: path.clone(),
        target: target.clone(),
        source,
    };
    std::fs::create_dir_all(ns_dir(state_dir)).map_err(err)?;
    // Made aside and renamed over: a stale link of a previous owner is replaced at once.
    let tmp = link_aside(state_dir, kind);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&target, &tmp)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(err)
}

/// Where [`link`] makes a link before renaming it into place.
fn link_aside(state_dir: &Path, kind: Namespace) -> PathBuf {
    ns_dir(state_dir).join(format!(".{}.tmp", kind.name()))
}

/// Removes `<state_dir>/ns/<kind>` if it is a link (a pin stays). Idempotent; the shim
/// calls it when it reaps the namespace's owner.
pub fn unlink(state_dir: &Path, kind: Namespace) -> Result<(), Error> {
    let paths = ns_paths(state_dir);
    let path = paths.get(kind);
    if !is_link(path) {
        return Ok(());
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::Unpin {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn is_link(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// Whether `path` is a pinned namespace (an nsfs bind mount, not a link).
pub fn is_pinned(path: &Path) -> bool {
    !is_link(path) && statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// Whether `path` is a link to a live namespace (see [`link`]).
pub fn is_linked(path: &Path) -> bool {
    is_link(path) && statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// Unmounts (lazily) every mount stacked on `target` and removes the file. A missing
/// file, one that is not mounted or a link (never followed) is fine: calling it twice is
/// a no-op.
pub fn unpin(target: &Path) -> Result<(), Error> {
    let err = |source: io::Error| Error::Unpin {
        path: target.to_path_buf(),
        source,
    };
    // A pin may have been made twice; bounded so that a weird mount cannot loop us.
    for _ in 0..16 {
        // NOFOLLOW: a link's owner may be gone and its pid reused.
        match nix::mount::umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
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

/// Unpins or unlinks every namespace of the pod and removes `<state_dir>/ns` when it is
/// empty.
/// Idempotent; used by the shim at shutdown and by berthd after a shim died. All pins are
/// tried; the first error is returned.
pub fn unpin_all(state_dir: &Path) -> Result<(), Error> {
    let paths = ns_paths(state_dir);
    let mut first = None;
    for kind in Namespace::ALL {
        if let Err(e) = unpin(paths.get(kind)) {
            first.get_or_insert(e);
        }
        // A link made aside by a shim killed before its rename.
        let _ = std::fs::remove_file(link_aside(state_dir, kind));
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

    #[test]
    fn pins_only_what_outlives_the_shim() {
        for kind in Namespace::ALL {
            assert!(kind.needs_pin(true), "{kind:?}");
            assert_eq!(kind.needs_pin(false), kind == Namespace::Net, "{kind:?}");
        }
    }

    #[test]
    fn links_point_at_the_owner_and_go_without_being_followed() {
        let d = std::env::temp_dir().join(format!("berth-ns-link-{}", std::process::id()));
        let paths = ns_paths(&d);
        link(&d, Namespace::Ipc, std::process::id()).unwrap();
        assert_eq!(
            std::fs::read_link(&paths.ipc).unwrap(),
            PathBuf::from(format!("/proc/{}/ns/ipc", std::process::id()))
        );
        assert!(is_linked(&paths.ipc));
        assert!(!is_pinned(&paths.ipc));
        // Opening it reaches our own IPC namespace.
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        assert_eq!(ino(&paths.ipc), ino(Path::new("/proc/self/ns/ipc")));
        // A new owner replaces the link; a dead one leaves it dangling, not linked.
        link(&d, Namespace::Ipc, u32::MAX).unwrap();
        assert!(!is_linked(&paths.ipc));
        // A plain file is no link: unlink leaves it.
        std::fs::write(&paths.uts, b"").unwrap();
        unlink(&d, Namespace::Uts).unwrap();
        assert!(paths.uts.exists());
        unlink(&d, Namespace::Ipc).unwrap();
        assert!(std::fs::symlink_metadata(&paths.ipc).is_err());
        unlink(&d, Namespace::Ipc).unwrap();
        link(&d, Namespace::Pid, std::process::id()).unwrap();
        unpin_all(&d).unwrap();
        assert!(!ns_dir(&d).exists());
        let _ = std::fs::remove_dir_all(&d);
    }
}
