//! Host-side preparation of a container's CRI mounts, as containerd's `WithMounts` does it
//! at create time: missing host paths are created, symlinks resolved, and a mount asking
//! for propagation must sit on a host mount that can propagate.

use std::path::{Path, PathBuf};

use super::config::{ContainerConfig, Propagation};
use super::spec::SpecError;

/// One `/proc/self/mountinfo` line: where it is mounted and its propagation tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_point: PathBuf,
    /// The optional fields: `shared:N`, `master:N`, `propagate_from:N`, `unbindable`.
    pub optional: Vec<String>,
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|l| {
            let (left, _) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            if f.len() < 6 {
                return None;
            }
            Some(MountInfo {
                mount_point: PathBuf::from(unescape(f[4])),
                optional: f[6..].iter().map(|s| s.to_string()).collect(),
            })
        })
        .collect()
}

/// The mount `path` lives on: the last-mounted one with the longest matching mount point.
fn mount_of<'a>(mounts: &'a [MountInfo], path: &Path) -> Option<&'a MountInfo> {
    let mut best: Option<&MountInfo> = None;
    for m in mounts {
        if path.starts_with(&m.mount_point)
            && best.is_none_or(|b| {
                m.mount_point.components().count() >= b.mount_point.components().count()
            })
        {
            best = Some(m);
        }
    }
    best
}

/// containerd's `ensureShared` / `ensureSharedOrSlave`: a `Bidirectional` mount's source
/// must be on a shared mount, a `HostToContainer` one's on a shared or slave mount.
/// `mountinfo` is `/proc/self/mountinfo`; host paths should already be resolved.
pub fn check_propagation(config: &ContainerConfig, mountinfo: &str) -> Result<(), SpecError> {
    let mounts = parse_mountinfo(mountinfo);
    for m in &config.mounts {
        let (need, what): (&[&str], &str) = match m.propagation {
            Propagation::Private => continue,
            Propagation::Bidirectional => (&["shared:"], "a shared mount"),
            Propagation::HostToContainer => (&["shared:", "master:"], "a shared or slave mount"),
        };
        let path = Path::new(&m.host_path);
        let info = mount_of(&mounts, path).ok_or_else(|| {
            SpecError::InvalidArgument(format!("host path {:?} is on no mount", m.host_path))
        })?;
        if !info
            .optional
            .iter()
            .any(|o| need.iter().any(|n| o.starts_with(n)))
        {
            return Err(SpecError::InvalidArgument(format!(
                "path {:?} is mounted on {:?} but it is not {what}",
                m.host_path,
                info.mount_point.display()
            )));
        }
    }
    Ok(())
}

/// Creates missing host paths of CRI mounts (directories, mode 0755), resolves symlinks
/// in every host path (in `config`), then checks propagation against this process's
/// mounts. Image volumes are left alone.
pub fn prepare_host_paths(config: &mut ContainerConfig) -> Result<(), SpecError> {
    use std::os::unix::fs::DirBuilderExt;
    for m in config.mounts.iter_mut().filter(|m| m.image.is_none()) {
        let path = Path::new(&m.host_path);
        match std::fs::symlink_metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(path)
                    .map_err(|e| {
                        SpecError::InvalidArgument(format!(
                            "mount {:?}: create host path {:?}: {e}",
                            m.container_path, m.host_path
                        ))
                    })?;
            }
            Err(e) => {
                return Err(SpecError::InvalidArgument(format!(
                    "mount {:?}: host path {:?}: {e}",
                    m.container_path, m.host_path
                )));
            }
        }
        let resolved = std::fs::canonicalize(path).map_err(|e| {
            SpecError::InvalidArgument(format!(
                "mount {:?}: resolve host path {:?}: {e}",
                m.container_path, m.host_path
            ))
        })?;
        m.host_path = resolved.display().to_string();
    }
    if config
        .mounts
        .iter()
        .any(|m| m.propagation != Propagation::Private)
    {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| SpecError::Internal(format!("read /proc/self/mountinfo: {e}")))?;
        check_propagation(config, &mountinfo)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::config::Mount;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:26 / /run rw,nosuid shared:5 - tmpfs tmpfs rw
40 22 0:40 / /srv/private rw - tmpfs tmpfs rw
41 22 0:41 / /srv/slave rw master:7 - tmpfs tmpfs rw
42 22 0:42 / /srv/with\\040space rw shared:9 - tmpfs tmpfs rw
";

    fn config(host: &str, p: Propagation) -> ContainerConfig {
        ContainerConfig {
            mounts: vec![Mount {
                container_path: "/m".into(),
                host_path: host.into(),
                propagation: p,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn mountinfo_parses() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 5);
        assert_eq!(m[4].mount_point, PathBuf::from("/srv/with space"));
        assert_eq!(m[0].optional, vec!["shared:1"]);
        assert!(m[2].optional.is_empty());
    }

    #[test]
    fn propagation_needs_the_right_host_mount() {
        use Propagation::*;
        let ok = |h: &str, p| check_propagation(&config(h, p), MOUNTINFO).is_ok();
        assert!(ok("/var/lib/x", Bidirectional)); // on / (shared)
        assert!(ok("/srv/with space/d", Bidirectional));
        assert!(!ok("/srv/private/d", Bidirectional));
        assert!(!ok("/srv/private/d", HostToContainer));
        assert!(ok("/srv/slave/d", HostToContainer));
        assert!(!ok("/srv/slave/d", Bidirectional));
        assert!(ok("/srv/private/d", Private));
    }

    #[test]
    fn missing_host_paths_are_created_and_resolved() {
        let base = std::env::temp_dir().join(format!("berth-mounts-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("real")).unwrap();
        std::os::unix::fs::symlink(base.join("real"), base.join("link")).unwrap();
        let mut c = config(
            &base.join("new/dir").display().to_string(),
            Propagation::Private,
        );
        c.mounts.push(Mount {
            container_path: "/l".into(),
            host_path: base.join("link").display().to_string(),
            ..Default::default()
        });
        prepare_host_paths(&mut c).unwrap();
        assert!(base.join("new/dir").is_dir());
        let real = std::fs::canonicalize(base.join("real")).unwrap();
        assert_eq!(c.mounts[1].host_path, real.display().to_string());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
