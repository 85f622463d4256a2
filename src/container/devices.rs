//! Device nodes for a container: the CRI's devices resolved on the host (stat of the host
//! path, directories walked), and all of the host's `/dev` for privileged containers, as
//! containerd's `oci.WithDevices` / `oci.WithHostDevices` find them. This is the I/O half;
//! `spec::generate` only copies the result into the spec.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::config::Device;
use super::spec::SpecError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Block,
    Char,
}

/// One device node as the container gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Path inside the container (under `/dev`).
    pub path: PathBuf,
    pub kind: DeviceKind,
    pub major: i64,
    pub minor: i64,
    pub file_mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// cgroup access (`rwm` subset) for a CRI device; empty for the host's devices of a
    /// privileged container (those are allowed by the allow-all rule).
    pub permissions: String,
}

/// glibc's `gnu_dev_major` / `gnu_dev_minor`.
fn major_minor(rdev: u64) -> (i64, i64) {
    (i64::from(libc::major(rdev)), i64::from(libc::minor(rdev)))
}

/// The node at `path` (not following a final symlink, as containerd's `Lstat`); `None`
/// when it is no block or char device.
fn node(path: &Path) -> std::io::Result<Option<DeviceNode>> {
    let md = std::fs::symlink_metadata(path)?;
    let ft = md.file_type();
    let kind = if ft.is_block_device() {
        DeviceKind::Block
    } else if ft.is_char_device() {
        DeviceKind::Char
    } else {
        return Ok(None);
    };
    let (major, minor) = major_minor(md.rdev());
    Ok(Some(DeviceNode {
        path: path.to_path_buf(),
        kind,
        major,
        minor,
        file_mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        permissions: String::new(),
    }))
}

/// Directories under `/dev` containerd never walks.
const SKIPPED_DIRS: [&str; 7] = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// Device nodes under `dir`, recursively, the container path of each mapped from `dir` to
/// `container_dir` (`None`: the same path).
fn walk(
    dir: &Path,
    container_dir: Option<&Path>,
    out: &mut Vec<DeviceNode>,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let path = e.path();
        let cpath = container_dir.map(|c| c.join(&name));
        let ft = e.file_type()?;
        if ft.is_dir() {
            if SKIPPED_DIRS.iter().any(|s| name == *s) {
                continue;
            }
            walk(&path, cpath.as_deref(), out)?;
            continue;
        }
        if name == "console" {
            continue;
        }
        match node(&path) {
            Ok(Some(mut n)) => {
                if let Some(c) = cpath {
                    n.path = c;
                }
                out.push(n);
            }
            Ok(None) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The CRI's devices, each host path resolved through symlinks and stat-ed; a directory
/// gives every device below it. A host path that is missing or not a device is
/// `InvalidArgument`, as containerd refuses it.
pub fn resolve(devices: &[Device]) -> Result<Vec<DeviceNode>, SpecError> {
    let mut out = Vec::new();
    for d in devices {
        let host = std::fs::canonicalize(&d.host_path)
            .map_err(|e| SpecError::InvalidArgument(format!("device {:?}: {e}", d.host_path)))?;
        let container = if d.container_path.is_empty() {
            PathBuf::from(&d.host_path)
        } else {
            PathBuf::from(&d.container_path)
        };
        let invalid = |e: std::io::Error| {
            SpecError::InvalidArgument(format!("device {:?}: {e}", d.host_path))
        };
        let first = out.len();
        if host.is_dir() {
            walk(&host, Some(&container), &mut out).map_err(invalid)?;
        } else {
            let mut n = node(&host).map_err(invalid)?.ok_or_else(|| {
                SpecError::InvalidArgument(format!("device {:?} is not a device node", d.host_path))
            })?;
            n.path = container;
            out.push(n);
        }
        for n in &mut out[first..] {
            n.permissions = d.permissions.clone();
        }
    }
    Ok(out)
}

/// Every device node under the host's `/dev` (privileged containers).
pub fn host_devices() -> std::io::Result<Vec<DeviceNode>> {
    let mut out = Vec::new();
    walk(Path::new("/dev"), None, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_numbers_split_as_glibc_does() {
        // /dev/null is 1:3; a large device number keeps its high bits.
        assert_eq!(major_minor(0x103), (1, 3));
        assert_eq!(major_minor((259 << 8) | 5), (259, 5));
        assert_eq!(major_minor(libc::makedev(0x1234, 0x5678)), (0x1234, 0x5678));
    }

    #[test]
    fn resolves_dev_null_and_rejects_files() {
        let d = resolve(&[Device {
            container_path: "/dev/mynull".into(),
            host_path: "/dev/null".into(),
            permissions: "rw".into(),
        }])
        .unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].path, PathBuf::from("/dev/mynull"));
        assert_eq!(
            (d[0].kind, d[0].major, d[0].minor),
            (DeviceKind::Char, 1, 3)
        );
        assert_eq!(d[0].permissions, "rw");

        let e = resolve(&[Device {
            container_path: String::new(),
            host_path: "/etc/hostname".into(),
            permissions: "rwm".into(),
        }]);
        assert!(matches!(e, Err(SpecError::InvalidArgument(_))));
        let e = resolve(&[Device {
            container_path: String::new(),
            host_path: "/dev/does-not-exist".into(),
            permissions: "rwm".into(),
        }]);
        assert!(matches!(e, Err(SpecError::InvalidArgument(_))));
    }

    #[test]
    fn host_devices_include_null_but_not_console_or_pts() {
        let all = host_devices().unwrap();
        assert!(all.iter().any(|d| d.path == Path::new("/dev/null")));
        assert!(!all.iter().any(|d| d.path == Path::new("/dev/console")));
        assert!(!all.iter().any(|d| d.path.starts_with("/dev/pts")));
    }
}
