//! A container's root filesystem: an overlay of its image's unpacked layers (read-only
//! lower dirs, top layer first) and its own upper and work directories.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// Where one container's writable layer lives (persistent, under the root).
pub struct Layer {
    pub upper: PathBuf,
    pub work: PathBuf,
}

pub fn layer(containers_dir: &Path, id: &str) -> Layer {
    let dir = containers_dir.join(id);
    Layer {
        upper: dir.join("upper"),
        work: dir.join("work"),
    }
}

/// The overlay options; lower dirs are given top first. mount(2) takes at most one page
/// of options, which bounds the number of layers (about 45 under /var/lib/berth).
fn options(lowers: &[PathBuf], l: &Layer) -> String {
    let lower: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        l.upper.display(),
        l.work.display()
    )
}

/// For a container in a pod's user namespace: the namespace (its pinned file) and the host
/// IDs its root maps to.
pub struct IdMap<'a> {
    pub userns: &'a Path,
    pub root_uid: u32,
    pub root_gid: u32,
}

/// Mounts the rootfs at `target`. `lowers` are the image's layer directories, top first.
/// With `idmap`, each layer is given to overlayfs as an idmapped mount (files owned by host
/// root are the container's root, as without a user namespace) and the upper directory
/// belongs to the container's root, so the container may create its mount points and
/// change image files as usual.
pub fn mount_rootfs(
    lowers: &[PathBuf],
    l: &Layer,
    target: &Path,
    idmap: Option<IdMap>,
) -> std::io::Result<()> {
    for d in [&l.upper, &l.work, &target.to_path_buf()] {
        std::fs::create_dir_all(d)?;
    }
    // Kept open until the overlay is mounted: the lower dirs are their /proc/self/fd paths.
    let mut trees = Vec::new();
    let mapped: Vec<PathBuf>;
    let lowers = match &idmap {
        None => lowers,
        Some(m) => {
            let userns = std::fs::File::open(m.userns)?;
            for p in lowers {
                trees.push(idmapped_tree(p, &userns)?);
            }
            std::os::unix::fs::chown(&l.upper, Some(m.root_uid), Some(m.root_gid))?;
            mapped = trees
                .iter()
                .map(|fd| PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())))
                .collect();
            &mapped
        }
    };
    let opts = options(lowers, l);
    if opts.len() >= 4096 {
        return Err(std::io::Error::other(format!(
            "overlay options for {} layers are {} bytes, over the page-size limit",
            lowers.len(),
            opts.len()
        )));
    }
    if lowers.is_empty() {
        return Err(std::io::Error::other(
            "an image with no layers has no rootfs",
        ));
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| std::io::Error::other(format!("mount overlay at {}: {e}", target.display())))
}

/// Where a container's idmapped CRI mounts are staged: `<bundle>/idmap/<n>`.
pub fn idmap_dir(bundle: &Path) -> PathBuf {
    bundle.join("idmap")
}

/// A CRI mount with ID mappings (kubelet's volumes of user-namespaced pods): `source` seen
/// through the user namespace `userns` is mounted at `staging` (made here, a file or a
/// directory as `source` is), which the container then binds as an ordinary mount
/// (libcontainer 0.7 makes no idmapped mounts; a bind of an idmapped mount keeps its
/// mapping). [`unmount_idmapped`] undoes it.
#[allow(unsafe_code)]
pub fn idmapped_bind(source: &Path, staging: &Path, userns: &Path) -> std::io::Result<()> {
    if let Some(parent) = staging.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if std::fs::metadata(source)?.is_dir() {
        std::fs::create_dir_all(staging)?;
    } else {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(staging)?;
    }
    let tree = idmapped_tree(source, &std::fs::File::open(userns)?)?;
    let target = std::ffi::CString::new(staging.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("NUL in a staging path"))?;
    let empty = c"";
    // SAFETY: both strings outlive the call; `tree` is an open detached mount.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(
            e.kind(),
            format!("move_mount to {}: {e}", staging.display()),
        ));
    }
    Ok(())
}

/// Unmounts every staged idmapped mount under `dir` and removes it. Idempotent; when a
/// mount stays, nothing is removed (it would remove the volume's files).
pub fn unmount_idmapped(dir: &Path) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let p = e.path();
        while crate::sandbox::files::is_mountpoint(&p) {
            umount2(&p, MntFlags::MNT_DETACH)
                .map_err(|err| std::io::Error::other(format!("unmount {}: {err}", p.display())))?;
        }
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        let p = e.path();
        if p.is_dir() {
            std::fs::remove_dir(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    std::fs::remove_dir(dir)
}

/// A detached copy of the mount tree at `path` whose files' owners are seen through the
/// user namespace `userns` (`open_tree` + `mount_setattr(MOUNT_ATTR_IDMAP)`).
#[allow(unsafe_code)]
fn idmapped_tree(path: &Path, userns: &std::fs::File) -> std::io::Result<OwnedFd> {
    let err = |what: &str| {
        let e = std::io::Error::last_os_error();
        std::io::Error::new(
            e.kind(),
            format!(
                "{what} {}: {e} (idmapped mounts need Linux 5.12+)",
                path.display()
            ),
        )
    };
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("NUL in a layer path"))?;
    let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC as libc::c_uint;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    if fd < 0 {
        return Err(err("open_tree"));
    }
    // SAFETY: open_tree returned a new descriptor that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let empty = c"";
    // SAFETY: `attr` and `empty` outlive the call; the size passed is attr's.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r < 0 {
        return Err(err("idmap"));
    }
    Ok(tree)
}

/// Idempotent.
pub fn unmount_rootfs(target: &Path) -> std::io::Result<()> {
    while crate::sandbox::files::is_mountpoint(target) {
        umount2(target, MntFlags::MNT_DETACH)
            .map_err(|e| std::io::Error::other(format!("unmount {}: {e}", target.display())))?;
    }
    Ok(())
}

/// The most of a container's account file (`/etc/passwd`, `/etc/group`) that is read.
pub const ACCOUNT_FILE_MAX: u64 = 8 << 20;

/// Reads `rel` (`etc/passwd`, say) of the container root `root` as the image or the
/// container left it, which may be hostile: symlinks resolve inside `root` (an absolute
/// link does not reach the host's file) and never through `/proc` magic links, and only a
/// regular file of at most `max` bytes is read (a FIFO would block the reader for ever, a
/// link to `/dev/zero` would fill its memory). `Ok(None)` when there is no such file.
#[allow(unsafe_code)]
pub fn read_file_in_root(root: &Path, rel: &str, max: u64) -> std::io::Result<Option<String>> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
    use std::io::Read;
    let dir = std::fs::File::open(root)?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match openat2(dir.as_raw_fd(), rel, how) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    // SAFETY: `openat2` just returned this fd; nothing else owns it.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{rel} is not a regular file"),
        ));
    }
    if meta.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{rel} is {} bytes, over {max}", meta.len()),
        ));
    }
    let mut text = String::new();
    file.take(max).read_to_string(&mut text)?;
    Ok(Some(text))
}

/// Disk usage of the writable layer (bytes, inodes).
pub fn usage(l: &Layer) -> (u64, u64) {
    crate::stats::disk_usage(&l.upper)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_in_a_root_stay_in_it_and_must_be_small_regular_files() {
        let root = std::env::temp_dir().join(format!("berth-rootfs-read-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("etc")).unwrap();
        let outside = root.with_extension("outside");
        std::fs::write(&outside, "host secret\n").unwrap();
        let read = |rel: &str| read_file_in_root(&root, rel, 64);

        assert_eq!(read("etc/passwd").unwrap(), None);
        std::fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        assert_eq!(
            read("etc/passwd").unwrap().as_deref(),
            Some("root:x:0:0::/root:/bin/sh\n")
        );
        // An absolute link and a `..` walk resolve inside the root, not to the host file.
        std::os::unix::fs::symlink(&outside, root.join("etc/abs")).unwrap();
        assert_eq!(read("etc/abs").unwrap(), None);
        let up = format!("../../../../../../../..{}", outside.display());
        std::os::unix::fs::symlink(&up, root.join("etc/up")).unwrap();
        assert_eq!(read("etc/up").unwrap(), None);
        // A FIFO would block a plain read for ever; a device or an oversized file is refused.
        nix::unistd::mkfifo(
            &root.join("etc/group"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        assert!(read("etc/group").is_err());
        std::os::unix::fs::symlink("/dev/zero", root.join("etc/zero")).unwrap();
        assert_eq!(
            read("etc/zero").unwrap(),
            None,
            "/dev/zero inside the root does not exist"
        );
        std::fs::write(root.join("etc/big"), vec![b'x'; 65]).unwrap();
        assert!(read("etc/big").is_err());

        std::fs::remove_dir_all(&root).unwrap();
        std::fs::remove_file(&outside).unwrap();
    }

    #[test]
    fn options_list_lowers_top_first() {
        let l = Layer {
            upper: "/r/c/upper".into(),
            work: "/r/c/work".into(),
        };
        assert_eq!(
            options(&["/l/b".into(), "/l/a".into()], &l),
            "lowerdir=/l/b:/l/a,upperdir=/r/c/upper,workdir=/r/c/work"
        );
    }
}
