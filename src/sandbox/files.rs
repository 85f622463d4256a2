//! The files a pod's containers see: `/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf`
//! and `/dev/shm`, kept in the pod's state directory and bind-mounted into containers.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::spec::{Dns, NsMode, PodSpec};

const DEFAULT_HOSTS: &str = "127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
fe00::0\tip6-mcastprefix
fe00::1\tip6-allnodes
fe00::2\tip6-allrouters
";

/// Size of a pod's `/dev/shm`, as Docker and containerd default it.
const SHM_SIZE: &str = "65536k";

pub struct PodFiles {
    pub hostname: PathBuf,
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
    pub shm: PathBuf,
}

pub fn paths(dir: &Path) -> PodFiles {
    PodFiles {
        hostname: dir.join("hostname"),
        hosts: dir.join("hosts"),
        resolv_conf: dir.join("resolv.conf"),
        shm: dir.join("shm"),
    }
}

/// The hostname a pod gets: its own, or the node's for host-network pods and when unset.
pub fn hostname(spec: &PodSpec) -> String {
    if spec.network == NsMode::Node || spec.hostname.is_empty() {
        return nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
    }
    spec.hostname.clone()
}

/// `resolv.conf` from the pod's DNS config, laid out as containerd writes it.
pub fn resolv_conf(dns: &Dns) -> String {
    let mut s = String::new();
    if !dns.searches.is_empty() {
        s.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        s.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        s.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    s
}

/// Atomic, not durable: the state directory does not outlive a reboot by design.
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    std::fs::rename(&tmp, path)
}

/// Writes hostname, hosts and resolv.conf into `dir`. Host-network pods get the node's
/// `/etc/hosts`; pods without DNS config get the node's `/etc/resolv.conf`.
pub fn write(dir: &Path, spec: &PodSpec) -> std::io::Result<()> {
    let p = paths(dir);
    write_atomic(&p.hostname, format!("{}\n", hostname(spec)).as_bytes())?;
    let hosts = if spec.network == NsMode::Node {
        std::fs::read("/etc/hosts").unwrap_or_else(|_| DEFAULT_HOSTS.as_bytes().to_vec())
    } else {
        DEFAULT_HOSTS.as_bytes().to_vec()
    };
    write_atomic(&p.hosts, &hosts)?;
    let dns = &spec.dns;
    let resolv = if dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty() {
        std::fs::read("/etc/resolv.conf").unwrap_or_default()
    } else {
        resolv_conf(dns).into_bytes()
    };
    write_atomic(&p.resolv_conf, &resolv)
}

/// A tmpfs for the pod's `/dev/shm` (host-IPC pods use the host's `/dev/shm` instead).
pub fn mount_shm(dir: &Path) -> std::io::Result<()> {
    use nix::mount::{MsFlags, mount};
    let shm = paths(dir).shm;
    std::fs::create_dir_all(&shm)?;
    if is_mountpoint(&shm) {
        return Ok(());
    }
    let opts = format!("mode=1777,size={SHM_SIZE}");
    mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(opts.as_str()),
    )
    .map_err(std::io::Error::from)
}

/// Idempotent.
pub fn unmount_shm(dir: &Path) -> std::io::Result<()> {
    let shm = paths(dir).shm;
    while is_mountpoint(&shm) {
        nix::mount::umount2(&shm, nix::mount::MntFlags::MNT_DETACH)
            .map_err(std::io::Error::from)?;
    }
    Ok(())
}

/// Whether `path` is a mount point (bind mounts of files and directories too). Asks the
/// kernel for that one path (`statx`, `STATX_ATTR_MOUNT_ROOT`, Linux 5.8+): reading the
/// whole mount table instead costs more with every pod on the node.
#[allow(unsafe_code)]
pub fn is_mountpoint(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    if let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) {
        // SAFETY: an all-zero statx is a valid value of this plain C struct.
        let mut st: libc::statx = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is NUL-terminated and `st` is writable; both outlive the call.
        let r = unsafe {
            libc::statx(
                libc::AT_FDCWD,
                c.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT,
                0,
                &mut st,
            )
        };
        if r != 0 {
            return false;
        }
        let bit = libc::STATX_ATTR_MOUNT_ROOT as u64;
        if st.stx_attributes_mask & bit != 0 {
            return st.stx_attributes & bit != 0;
        }
    }
    is_mountpoint_by_table(path)
}

/// The mount table's answer, for kernels whose statx does not tell.
fn is_mountpoint_by_table(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|m| unescape_mountinfo(m) == want)
    })
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_as_the_mount_table_says() {
        for p in ["/", "/proc", "/sys", "/proc/1", "/etc", "/no/such/path"] {
            let p = Path::new(p);
            assert_eq!(
                is_mountpoint(p),
                is_mountpoint_by_table(p),
                "{}",
                p.display()
            );
        }
        assert!(is_mountpoint(Path::new("/proc")));
        assert!(!is_mountpoint(Path::new("/proc/1")));
    }

    #[test]
    fn resolv_conf_as_containerd_writes_it() {
        let dns = Dns {
            servers: vec!["10.0.0.10".into(), "8.8.8.8".into()],
            searches: vec!["ns.svc.cluster.local".into(), "cluster.local".into()],
            options: vec!["ndots:5".into(), "timeout:1".into()],
        };
        assert_eq!(
            resolv_conf(&dns),
            "search ns.svc.cluster.local cluster.local\nnameserver 10.0.0.10\nnameserver 8.8.8.8\noptions ndots:5 timeout:1\n"
        );
        assert_eq!(resolv_conf(&Dns::default()), "");
    }

    #[test]
    fn pod_hostname_unless_host_network() {
        let mut spec = PodSpec {
            hostname: "web-0".into(),
            ..Default::default()
        };
        assert_eq!(hostname(&spec), "web-0");
        spec.network = NsMode::Node;
        assert_ne!(hostname(&spec), "web-0");
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
    }
}
