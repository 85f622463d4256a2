//! What the memory figure reads from /proc: resident memory of a process, the process that
//! listens on a unix socket (the daemon), and the per-pod shims of given pods.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// Names of per-pod shim binaries (argv[0]'s file name): berth's, and containerd's runc v2
/// shim (its `comm` is cut to 15 characters, so argv[0] is what is compared).
pub const SHIM_NAMES: &[&str] = &["berth-shim", "containerd-shim-runc-v2"];

/// Resident memory of one process, in bytes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Memory {
    /// `VmRSS` of /proc/PID/status: what `ps` and `top` call RSS.
    pub rss: u64,
    /// `Pss` of /proc/PID/smaps_rollup (shared pages divided among their users), when readable.
    pub pss: Option<u64>,
}

/// `VmRSS` (and `Pss`) of `pid`.
pub fn memory(pid: u32) -> Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (has the process exited?)"))?;
    let rss = kib_field(&status, "VmRSS:")
        .with_context(|| format!("no VmRSS in /proc/{pid}/status (a kernel thread or zombie?)"))?;
    let pss = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| kib_field(&s, "Pss:"));
    Ok(Memory { rss, pss })
}

/// `NAME:   1234 kB` → bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|k| k * 1024)
}

/// Every pid in /proc.
fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// The parent pid of `pid`.
pub fn ppid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|p| p.trim().parse().ok())
}

/// The program name of `pid`: the file name of argv[0], else `comm`.
pub fn name(pid: u32) -> String {
    let argv0 = std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|c| {
            let first = c.split(|b| *b == 0).next()?.to_vec();
            let s = String::from_utf8_lossy(&first).into_owned();
            let base = s.rsplit('/').next()?.to_string();
            (!base.is_empty()).then_some(base)
        });
    argv0.unwrap_or_else(|| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    })
}

/// Inodes of the unix sockets bound to `path`, from /proc/net/unix (this network
/// namespace's): the listening ones (`__SO_ACCEPTCON`) if any, else every one.
pub fn socket_inodes(path: &Path) -> Result<Vec<u64>> {
    let text = std::fs::read_to_string("/proc/net/unix").context("reading /proc/net/unix")?;
    let mut wanted = vec![path.to_string_lossy().into_owned()];
    if let Ok(c) = std::fs::canonicalize(path) {
        wanted.push(c.to_string_lossy().into_owned());
    }
    Ok(parse_net_unix(&text, &wanted))
}

/// The inodes of /proc/net/unix lines whose path is one of `paths` (listening ones first).
fn parse_net_unix(text: &str, paths: &[String]) -> Vec<u64> {
    const SO_ACCEPTCON: u32 = 0x10000;
    let mut listening = Vec::new();
    let mut other = Vec::new();
    // Num RefCount Protocol Flags Type St Inode Path
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            continue;
        }
        let path = fields[7..].join(" ");
        if !paths.contains(&path) {
            continue;
        }
        let Ok(inode) = fields[6].parse::<u64>() else {
            continue;
        };
        let flags = u32::from_str_radix(fields[3], 16).unwrap_or(0);
        if flags & SO_ACCEPTCON != 0 {
            listening.push(inode);
        } else {
            other.push(inode);
        }
    }
    if listening.is_empty() {
        other
    } else {
        listening
    }
}

/// Processes (not this one) holding a file descriptor on one of these socket inodes.
fn holders(inodes: &[u64]) -> BTreeSet<u32> {
    let want: BTreeSet<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let me = std::process::id();
    let mut out = BTreeSet::new();
    for pid in pids() {
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(l) = std::fs::read_link(fd.path())
                && want.contains(l.to_string_lossy().as_ref())
            {
                out.insert(pid);
                break;
            }
        }
    }
    out
}

/// The daemon serving the unix socket `path`: the process holding its listening socket.
/// Returns the pid and how it was found.
pub fn daemon_by_socket(path: &Path) -> Result<(u32, String)> {
    let inodes = socket_inodes(path)?;
    if inodes.is_empty() {
        bail!(
            "no unix socket bound to {} in /proc/net/unix (is the daemon in another network \
             namespace?): give --daemon-pid",
            path.display()
        );
    }
    let holders = holders(&inodes);
    // shims that inherited the socket are not the daemon
    let daemons: Vec<u32> = holders
        .iter()
        .copied()
        .filter(|p| !SHIM_NAMES.contains(&name(*p).as_str()))
        .collect();
    // a daemon that forked helpers: keep the one whose parent is not a holder
    let top: Vec<u32> = daemons
        .iter()
        .copied()
        .filter(|p| ppid(*p).is_none_or(|pp| !daemons.contains(&pp)))
        .collect();
    match top.as_slice() {
        [pid] => Ok((
            *pid,
            format!(
                "the owner of the listening socket {} (inode {})",
                path.display(),
                inodes
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        )),
        [] => bail!(
            "no process holds the socket {} (inodes {inodes:?}; not root?): give --daemon-pid",
            path.display()
        ),
        many => bail!(
            "several processes hold the socket {}: {}; give --daemon-pid",
            path.display(),
            many.iter()
                .map(|p| format!("{p} ({})", name(*p)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Text of a process that may name a pod id: its command line, working directory and the
/// targets of its open files (berth's shim has its log open under the pod's state
/// directory; containerd's shim has `-id SANDBOX` on its command line and its bundle as
/// working directory).
fn identity_text(pid: u32) -> String {
    let mut s = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default();
    if let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) {
        s.push(' ');
        s.push_str(&cwd.to_string_lossy());
    }
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(l) = std::fs::read_link(fd.path()) {
            s.push(' ');
            s.push_str(&l.to_string_lossy());
        }
    }
    s
}

/// The top-level shim processes (named one of [`SHIM_NAMES`], parent not so named: a
/// shim's forked helpers, e.g. berth's pod init, are not counted) that name each pod id.
pub fn shims_of(pod_ids: &[String]) -> BTreeMap<String, Vec<u32>> {
    let mut out: BTreeMap<String, Vec<u32>> =
        pod_ids.iter().map(|id| (id.clone(), Vec::new())).collect();
    for pid in pids() {
        let n = name(pid);
        if !SHIM_NAMES.contains(&n.as_str()) {
            continue;
        }
        if ppid(pid).is_some_and(|pp| SHIM_NAMES.contains(&name(pp).as_str())) {
            continue;
        }
        let text = identity_text(pid);
        for id in pod_ids {
            if text.contains(id.as_str()) {
                out.get_mut(id).expect("pod id").push(pid);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_unix_lines() {
        let text = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 111 /run/x.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 222 /run/x.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 333\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 444 /run/other.sock\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 555 /run/with space.sock\n";
        assert_eq!(parse_net_unix(text, &["/run/x.sock".into()]), vec![111]);
        assert_eq!(
            parse_net_unix(text, &["/run/with space.sock".into()]),
            vec![555]
        );
        assert!(parse_net_unix(text, &["/run/none.sock".into()]).is_empty());
        // no listener: the connected ones
        let only_conn = "h\n0: 00000003 00000000 00000000 0001 03 222 /run/y.sock\n";
        assert_eq!(
            parse_net_unix(only_conn, &["/run/y.sock".into()]),
            vec![222]
        );
    }

    #[test]
    fn kib() {
        assert_eq!(
            kib_field("VmPeak:\t 10 kB\nVmRSS:\t    2048 kB\n", "VmRSS:"),
            Some(2 << 20)
        );
        assert_eq!(kib_field("x", "VmRSS:"), None);
    }

    #[test]
    fn own_memory_and_name() {
        let m = memory(std::process::id()).unwrap();
        assert!(m.rss > 0);
        assert!(!name(std::process::id()).is_empty());
        assert!(ppid(std::process::id()).is_some());
    }
}
