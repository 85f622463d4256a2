//! Resource usage of a pod or container, read from its cgroup (v1 or v2) and, for the network, from
//! `/proc/<pid>/net/dev` of a process inside the network namespace (a pod's shim).

use std::collections::HashMap;
use std::path::Path;

use crate::sandbox::cgroup::Hierarchy;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    pub cpu_ns: Option<u64>,
    pub memory_usage: Option<u64>,
    pub working_set: Option<u64>,
    pub rss: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
    /// Limit minus working set, when there is a limit.
    pub available: Option<u64>,
    pub processes: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceUsage {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn read_kv(p: &Path) -> HashMap<String, u64> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Limits at or above this are "no limit" (v1 reports a page-rounded i64::MAX).
const NO_LIMIT: u64 = 1 << 62;

pub fn cgroup_usage(h: &Hierarchy, rel: &str) -> CgroupUsage {
    let rel = rel.trim_start_matches('/');
    let mut u = CgroupUsage::default();
    match h {
        Hierarchy::V1(mounts) => {
            let dir = |ctrl: &str| {
                mounts
                    .iter()
                    .find(|(c, _)| c.iter().any(|x| x == ctrl))
                    .map(|(_, mp)| mp.join(rel))
            };
            if let Some(d) = dir("cpuacct") {
                u.cpu_ns = read_u64(&d.join("cpuacct.usage"));
            }
            if let Some(d) = dir("memory")
                && d.is_dir()
            {
                u.memory_usage = read_u64(&d.join("memory.usage_in_bytes"));
                let stat = read_kv(&d.join("memory.stat"));
                let inactive = stat.get("total_inactive_file").copied().unwrap_or(0);
                u.working_set = u.memory_usage.map(|m| m.saturating_sub(inactive));
                u.rss = stat.get("total_rss").copied();
                u.page_faults = stat.get("total_pgfault").copied();
                u.major_page_faults = stat.get("total_pgmajfault").copied();
                if let (Some(limit), Some(ws)) =
                    (read_u64(&d.join("memory.limit_in_bytes")), u.working_set)
                    && limit < NO_LIMIT
                {
                    u.available = Some(limit.saturating_sub(ws));
                }
            }
            if let Some(d) = dir("pids") {
                u.processes = read_u64(&d.join("pids.current"));
            }
        }
        Hierarchy::V2(root) => {
            let d = root.join(rel);
            if !d.is_dir() {
                return u;
            }
            u.cpu_ns = read_kv(&d.join("cpu.stat"))
                .get("usage_usec")
                .map(|us| us * 1000);
            u.memory_usage = read_u64(&d.join("memory.current"));
            let stat = read_kv(&d.join("memory.stat"));
            let inactive = stat.get("inactive_file").copied().unwrap_or(0);
            u.working_set = u.memory_usage.map(|m| m.saturating_sub(inactive));
            u.rss = stat.get("anon").copied();
            u.page_faults = stat.get("pgfault").copied();
            u.major_page_faults = stat.get("pgmajfault").copied();
            if let (Some(limit), Some(ws)) = (read_u64(&d.join("memory.max")), u.working_set) {
                u.available = Some(limit.saturating_sub(ws));
            }
            u.processes = read_u64(&d.join("pids.current"));
        }
    }
    u
}

/// Disk usage of a tree (bytes in blocks, inodes), counting each inode once.
pub fn disk_usage(root: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut bytes, mut inodes) = (0, 0);
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if seen.insert((md.dev(), md.ino())) {
            bytes += md.blocks() * 512;
            inodes += 1;
        }
        if md.is_dir()
            && let Ok(rd) = std::fs::read_dir(&p)
        {
            stack.extend(rd.flatten().map(|e| e.path()));
        }
    }
    (bytes, inodes)
}

/// Interfaces of the network namespace `pid` lives in, loopback left out.
pub fn net_dev(pid: u32) -> Vec<InterfaceUsage> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap_or_default();
    parse_net_dev(&text)
}

fn parse_net_dev(text: &str) -> Vec<InterfaceUsage> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let name = name.trim();
            if name == "lo" {
                return None;
            }
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if f.len() < 11 {
                return None;
            }
            Some(InterfaceUsage {
                name: name.to_string(),
                rx_bytes: f[0],
                rx_errors: f[2],
                tx_bytes: f[8],
                tx_errors: f[10],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_parses_and_skips_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0
  eth0:    2048      10    1    0    0     0          0         0     4096      20    2    0    0     0       0          0
";
        let v = parse_net_dev(text);
        assert_eq!(
            v,
            vec![InterfaceUsage {
                name: "eth0".into(),
                rx_bytes: 2048,
                rx_errors: 1,
                tx_bytes: 4096,
                tx_errors: 2
            }]
        );
    }

    #[test]
    fn own_cgroup_has_figures() {
        // berth's tests run in some cgroup of this host: its root must read.
        let u = cgroup_usage(&Hierarchy::detect(), "/");
        assert!(u.cpu_ns.is_some_and(|c| c > 0), "{u:?}");
        assert!(u.memory_usage.is_some(), "{u:?}");
    }
}
