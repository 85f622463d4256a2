//! What the host offers containers, probed once at start-up and handed to the (pure) spec
//! generator: the OOM score floor, the capabilities berth holds, cgroup controllers.

use std::path::Path;

use super::capabilities;

/// Host facts the spec depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFeatures {
    /// The lowest `oom_score_adj` berth may give a process: its own (without
    /// `CAP_SYS_RESOURCE` a process cannot go below that).
    pub min_oom_score_adj: i32,
    /// The capabilities berth itself holds (its effective set, containerd's
    /// `cap.Current()`): privileged containers and `ALL` get exactly these, since asking
    /// for more makes `capset` fail (this VM's root lacks `CAP_SYS_RESOURCE`).
    pub capabilities: Vec<String>,
    /// The memory controller accounts swap (`memory.memsw.*` on v1, `memory.swap.max` on
    /// v2): only then is a swap limit written.
    pub swap_accounting: bool,
    /// A hugetlb controller exists: only then are hugepage limits written (containerd
    /// skips them otherwise).
    pub hugetlb: bool,
    /// `/sys/fs/cgroup` is cgroup2 (unified): containers then get a cgroup namespace.
    pub cgroup_v2: bool,
    /// On cgroup v1 (and hybrid): the v1 hierarchies mounted under `/sys/fs/cgroup`, by
    /// directory name (`memory`, `cpu,cpuacct`, `systemd`, …).
    pub cgroup_v1_hierarchies: Vec<String>,
}

impl Default for HostFeatures {
    /// A conventional root host: no OOM floor, every capability, v1 with swap accounting,
    /// no hugetlb.
    fn default() -> Self {
        HostFeatures {
            min_oom_score_adj: -1000,
            capabilities: capabilities::from_mask(u64::MAX),
            swap_accounting: true,
            hugetlb: false,
            cgroup_v2: false,
            cgroup_v1_hierarchies: Vec::new(),
        }
    }
}

/// Mount points of `cgroup` (v1) filesystems directly under `/sys/fs/cgroup`, from
/// `/proc/self/mountinfo` text.
pub fn cgroup_v1_hierarchies(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            if right.split_whitespace().next()? != "cgroup" {
                return None;
            }
            let dir = left
                .split_whitespace()
                .nth(4)?
                .strip_prefix("/sys/fs/cgroup/")?;
            (!dir.is_empty() && !dir.contains('/')).then(|| dir.to_string())
        })
        .collect()
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

impl HostFeatures {
    /// Reads the facts from `/proc` and `/sys/fs/cgroup`; anything unreadable falls back to
    /// the cautious answer (no swap limit, no hugetlb, own OOM score 0).
    pub fn probe() -> HostFeatures {
        let cgroup_v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let (swap_accounting, hugetlb) = if cgroup_v2 {
            let controllers = read_trimmed("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
            let own = read_trimmed("/proc/self/cgroup")
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
                })
                .unwrap_or_default();
            let swap = Path::new("/sys/fs/cgroup")
                .join(own.trim_start_matches('/'))
                .join("memory.swap.max")
                .exists();
            (swap, controllers.split_whitespace().any(|c| c == "hugetlb"))
        } else {
            (
                Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists(),
                Path::new("/sys/fs/cgroup/hugetlb").is_dir(),
            )
        };
        HostFeatures {
            min_oom_score_adj: read_trimmed("/proc/self/oom_score_adj")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            capabilities: capabilities::from_mask(
                read_trimmed("/proc/self/status")
                    .and_then(|s| {
                        s.lines()
                            .find_map(|l| l.strip_prefix("CapEff:"))
                            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                    })
                    .unwrap_or(0),
            ),
            swap_accounting,
            hugetlb,
            cgroup_v2,
            cgroup_v1_hierarchies: if cgroup_v2 {
                Vec::new()
            } else {
                cgroup_v1_hierarchies(
                    &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
                )
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_hierarchies_from_mountinfo() {
        let mi = "35 25 0:30 / /sys/fs/cgroup/memory rw,nosuid shared:15 - cgroup cgroup rw,memory
36 25 0:31 / /sys/fs/cgroup/cpu,cpuacct rw shared:16 - cgroup cgroup rw,cpu,cpuacct
37 25 0:32 / /sys/fs/cgroup/unified rw shared:10 - cgroup2 cgroup2 rw
38 25 0:33 / /sys/fs/cgroup/systemd rw shared:9 - cgroup cgroup rw,name=systemd
39 25 0:34 / /var/lib/x/sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";
        assert_eq!(
            cgroup_v1_hierarchies(mi),
            vec!["memory", "cpu,cpuacct", "systemd"]
        );
    }

    #[test]
    fn probe_reads_this_host() {
        let h = HostFeatures::probe();
        assert!((-1000..=1000).contains(&h.min_oom_score_adj));
        assert!(h.capabilities.contains(&"CAP_CHOWN".to_string()), "{h:?}");
    }
}
