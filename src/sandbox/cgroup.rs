//! The pod's cgroup under kubelet's `cgroup_parent`, for the cgroupfs and systemd drivers,
//! on cgroup v1 (and hybrid) and v2. kubelet usually creates pod cgroups itself; berth
//! creates whatever is missing, applies the pod's limits, and removes only what it created.
//!
//! Written on plain cgroupfs files: libcgroups (with libcontainer) manages container
//! cgroups; a pod cgroup is a handful of directories and limit files.

use std::path::{Path, PathBuf};

use super::spec::Resources;
use crate::config::CgroupDriver;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// One mount per controller set: (controllers, mount point).
    V1(Vec<(Vec<String>, PathBuf)>),
    V2(PathBuf),
}

impl Hierarchy {
    pub fn detect() -> Hierarchy {
        if Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
            return Hierarchy::V2(PathBuf::from(CGROUP_ROOT));
        }
        let mut mounts = Vec::new();
        if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
            for line in info.lines() {
                // ... mount_point ... - fstype source super_options
                let Some((pre, post)) = line.split_once(" - ") else {
                    continue;
                };
                let mut post = post.split(' ');
                if post.next() != Some("cgroup") {
                    continue;
                }
                let opts = post.nth(1).unwrap_or_default();
                let Some(mp) = pre.split(' ').nth(4) else {
                    continue;
                };
                let controllers: Vec<String> = opts
                    .split(',')
                    .filter(|o| {
                        !matches!(
                            *o,
                            "rw" | "ro" | "relatime" | "noatime" | "nosuid" | "nodev" | "noexec"
                        )
                    })
                    .map(str::to_string)
                    .collect();
                mounts.push((controllers, PathBuf::from(mp)));
            }
        }
        Hierarchy::V1(mounts)
    }

    /// Directories that make up the cgroup `rel` in this hierarchy.
    pub fn dirs(&self, rel: &str) -> Vec<PathBuf> {
        let rel = rel.trim_start_matches('/');
        match self {
            Hierarchy::V2(root) => vec![root.join(rel)],
            Hierarchy::V1(mounts) => mounts.iter().map(|(_, mp)| mp.join(rel)).collect(),
        }
    }
}

/// The cgroup path (relative to the hierarchy root) that `parent` names under `driver`.
/// The systemd driver names slices (`kubepods-burstable-pod1.slice`), expanded the way
/// systemd nests them (`kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice`).
pub fn parent_path(parent: &str, driver: CgroupDriver) -> Result<String, String> {
    if parent.contains("..") {
        return Err(format!("cgroup parent {parent:?} must not contain '..'"));
    }
    match driver {
        CgroupDriver::Cgroupfs => {
            if parent.ends_with(".slice") && !parent.contains('/') {
                return Err(format!(
                    "cgroup parent {parent:?} is a systemd slice but the cgroup driver is cgroupfs"
                ));
            }
            Ok(parent.trim_matches('/').to_string())
        }
        CgroupDriver::Systemd => {
            if parent.is_empty() || parent == "/" || parent == "-.slice" {
                return Ok(String::new());
            }
            let Some(name) = parent.strip_suffix(".slice") else {
                return Err(format!(
                    "cgroup parent {parent:?} is not a systemd slice (NAME.slice) but the cgroup driver is systemd"
                ));
            };
            if name.contains('/')
                || name.starts_with('-')
                || name.ends_with('-')
                || name.contains("--")
            {
                return Err(format!("invalid systemd slice name {parent:?}"));
            }
            let mut path = Vec::new();
            let mut prefix = String::new();
            for part in name.split('-') {
                if !prefix.is_empty() {
                    prefix.push('-');
                }
                prefix.push_str(part);
                path.push(format!("{prefix}.slice"));
            }
            Ok(path.join("/"))
        }
    }
}

fn write(dir: &Path, file: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(dir.join(file), value)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.join(file).display())))
}

/// The leaf directories of cgroup `rel`, one per hierarchy, as strings for the records.
pub fn create_leaves(h: &Hierarchy, rel: &str) -> Vec<String> {
    h.dirs(rel)
        .iter()
        .map(|p| p.display().to_string())
        .collect()
}

/// Creates the missing directories of cgroup `rel` and applies `res`. Returns the
/// directories it created, deepest last, for `remove`.
pub fn create(h: &Hierarchy, rel: &str, res: Option<&Resources>) -> std::io::Result<Vec<PathBuf>> {
    let mut created = Vec::new();
    let result = (|| {
        for dir in h.dirs(rel) {
            let mut missing = Vec::new();
            let mut cur = dir.as_path();
            while !cur.exists() {
                missing.push(cur.to_path_buf());
                match cur.parent() {
                    Some(p) => cur = p,
                    None => break,
                }
            }
            for m in missing.into_iter().rev() {
                std::fs::create_dir(&m).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("mkdir {}: {e}", m.display()))
                })?;
                created.push(m.clone());
                init_cpuset(&m)?;
            }
        }
        if let Some(r) = res {
            apply(h, rel, r)?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(created),
        Err(e) => {
            remove(&created);
            Err(e)
        }
    }
}

/// A new v1 cpuset cgroup starts with no CPUs and no memory nodes: copy the parent's.
fn init_cpuset(dir: &Path) -> std::io::Result<()> {
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let own = dir.join(f);
        if !own.exists() || dir.join("cgroup.controllers").exists() {
            continue;
        }
        if std::fs::read_to_string(&own)?.trim().is_empty()
            && let Some(parent) = dir.parent()
        {
            let v = std::fs::read_to_string(parent.join(f))?;
            write(dir, f, v.trim())?;
        }
    }
    Ok(())
}

pub fn apply(h: &Hierarchy, rel: &str, r: &Resources) -> std::io::Result<()> {
    match h {
        Hierarchy::V1(mounts) => {
            let dir_for = |ctrl: &str| {
                mounts
                    .iter()
                    .find(|(c, _)| c.iter().any(|x| x == ctrl))
                    .map(|(_, mp)| mp.join(rel.trim_start_matches('/')))
            };
            if let Some(d) = dir_for("cpu") {
                if r.cpu_shares > 0 {
                    write(&d, "cpu.shares", &r.cpu_shares.to_string())?;
                }
                if r.cpu_period > 0 {
                    write(&d, "cpu.cfs_period_us", &r.cpu_period.to_string())?;
                }
                if r.cpu_quota != 0 {
                    write(&d, "cpu.cfs_quota_us", &r.cpu_quota.to_string())?;
                }
            }
            if let Some(d) = dir_for("memory") {
                set_v1_memory(&d, r.memory_limit, r.memory_swap)?;
            }
            if let Some(d) = dir_for("cpuset") {
                if !r.cpuset_cpus.is_empty() {
                    write(&d, "cpuset.cpus", &r.cpuset_cpus)?;
                }
                if !r.cpuset_mems.is_empty() {
                    write(&d, "cpuset.mems", &r.cpuset_mems)?;
                }
            }
        }
        Hierarchy::V2(root) => {
            let d = root.join(rel.trim_start_matches('/'));
            if r.cpu_shares > 0 {
                // The conversion kubelet and runc use.
                let weight = 1 + ((r.cpu_shares.clamp(2, 262_144) - 2) * 9999) / 262_142;
                write(&d, "cpu.weight", &weight.to_string())?;
            }
            if r.cpu_quota != 0 || r.cpu_period > 0 {
                let quota = if r.cpu_quota > 0 {
                    r.cpu_quota.to_string()
                } else {
                    "max".into()
                };
                let period = if r.cpu_period > 0 {
                    r.cpu_period
                } else {
                    100_000
                };
                write(&d, "cpu.max", &format!("{quota} {period}"))?;
            }
            if r.memory_limit > 0 {
                write(&d, "memory.max", &r.memory_limit.to_string())?;
                if r.memory_swap > 0 && d.join("memory.swap.max").exists() {
                    let swap = (r.memory_swap - r.memory_limit).max(0);
                    write(&d, "memory.swap.max", &swap.to_string())?;
                }
            }
            if !r.cpuset_cpus.is_empty() {
                write(&d, "cpuset.cpus", &r.cpuset_cpus)?;
            }
            if !r.cpuset_mems.is_empty() {
                write(&d, "cpuset.mems", &r.cpuset_mems)?;
            }
        }
    }
    Ok(())
}

/// v1 memory and memory+swap limits, in the order the kernel accepts: memsw may never be
/// below the memory limit, so a raise writes memsw first and a cut writes it last.
fn set_v1_memory(d: &Path, limit: i64, swap: i64) -> std::io::Result<()> {
    if limit <= 0 {
        return Ok(());
    }
    let memsw = d.join("memory.memsw.limit_in_bytes");
    let has_memsw = swap > 0 && memsw.exists();
    let current: i64 = std::fs::read_to_string(d.join("memory.limit_in_bytes"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(i64::MAX);
    if has_memsw && limit > current {
        write(d, "memory.memsw.limit_in_bytes", &swap.to_string())?;
        write(d, "memory.limit_in_bytes", &limit.to_string())
    } else {
        write(d, "memory.limit_in_bytes", &limit.to_string())?;
        if has_memsw {
            write(d, "memory.memsw.limit_in_bytes", &swap.to_string())?;
        }
        Ok(())
    }
}

/// Removes cgroup directories berth created, deepest first; idempotent. A cgroup that
/// still holds processes (EBUSY) is retried briefly, then left with a warning.
pub fn remove(created: &[PathBuf]) {
    for dir in created.iter().rev() {
        for attempt in 0..20 {
            match std::fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if attempt == 19 => {
                    tracing::warn!(cgroup = %dir.display(), error = %e, "cannot remove cgroup");
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
    }
}

/// Pod overhead and pod-level resources together: what the pod's cgroup must allow.
pub fn pod_limits(
    overhead: Option<&Resources>,
    resources: Option<&Resources>,
) -> Option<Resources> {
    match (overhead, resources) {
        (None, None) => None,
        (Some(r), None) | (None, Some(r)) => Some(r.clone()),
        (Some(o), Some(r)) => Some(Resources {
            cpu_period: if r.cpu_period > 0 {
                r.cpu_period
            } else {
                o.cpu_period
            },
            cpu_quota: if r.cpu_quota > 0 && o.cpu_quota > 0 {
                r.cpu_quota + o.cpu_quota
            } else {
                r.cpu_quota
            },
            cpu_shares: r.cpu_shares + o.cpu_shares,
            memory_limit: if r.memory_limit > 0 {
                r.memory_limit + o.memory_limit.max(0)
            } else {
                0
            },
            memory_swap: 0,
            cpuset_cpus: r.cpuset_cpus.clone(),
            cpuset_mems: r.cpuset_mems.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_slices_expand_as_systemd_nests_them() {
        let p = |s| parent_path(s, CgroupDriver::Systemd);
        assert_eq!(
            p("kubepods-burstable-pod1234.slice").unwrap(),
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice"
        );
        assert_eq!(p("kubepods.slice").unwrap(), "kubepods.slice");
        assert_eq!(p("-.slice").unwrap(), "");
        assert!(p("/kubepods/pod1").is_err());
        assert!(p("a--b.slice").is_err());
    }

    #[test]
    fn cgroupfs_paths() {
        let p = |s| parent_path(s, CgroupDriver::Cgroupfs);
        assert_eq!(
            p("/kubepods/besteffort/pod1").unwrap(),
            "kubepods/besteffort/pod1"
        );
        assert!(p("kubepods.slice").is_err());
        assert!(p("/a/../b").is_err());
    }

    #[test]
    fn overhead_adds_to_pod_resources() {
        let o = Resources {
            cpu_shares: 10,
            memory_limit: 100,
            cpu_quota: 1000,
            ..Default::default()
        };
        let r = Resources {
            cpu_shares: 1024,
            memory_limit: 1 << 20,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            ..Default::default()
        };
        let l = pod_limits(Some(&o), Some(&r)).unwrap();
        assert_eq!(
            (l.cpu_shares, l.memory_limit, l.cpu_quota),
            (1034, (1 << 20) + 100, 51_000)
        );
        assert_eq!(pod_limits(None, None), None);
    }

    #[test]
    fn detects_this_hosts_hierarchy() {
        match Hierarchy::detect() {
            Hierarchy::V2(root) => assert!(root.join("cgroup.controllers").exists()),
            Hierarchy::V1(m) => assert!(m.iter().any(|(c, _)| c.iter().any(|x| x == "memory"))),
        }
    }
}
