//! Linux capability names: validation of the CRI's names, containerd's default set, and
//! the add/drop arithmetic containerd applies.

use std::str::FromStr;

use oci_spec::runtime::Capability;

/// Every capability by number (`CAP_CHOWN` is 0), as far as oci-spec 0.10 knows them.
pub const KNOWN: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// containerd's (and Docker's) default capability set, in containerd's order.
pub const DEFAULT: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The special name that stands for every capability, in add and in drop lists.
pub const ALL: &str = "ALL";

/// A CRI capability name (`chown`, `CHOWN`, `CAP_CHOWN`, `all`) in canonical form
/// (`CAP_CHOWN`, `ALL`); `None` when it is no capability this runtime knows.
pub fn normalize(name: &str) -> Option<String> {
    let upper = name.trim().to_ascii_uppercase();
    if upper == ALL {
        return Some(ALL.to_string());
    }
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    KNOWN.contains(&full.as_str()).then_some(full)
}

/// The capabilities in a `/proc/<pid>/status` mask (`CapEff:` etc., hex), by number.
pub fn from_mask(mask: u64) -> Vec<String> {
    KNOWN
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, c)| c.to_string())
        .collect()
}

/// containerd's `WithCapabilities` for a CRI security context: start from `base`, then
/// `ALL` in add sets `all` (the capabilities the runtime itself holds), `ALL` in drop
/// clears them, then the named adds are appended and the named drops removed. Names must
/// already be canonical.
pub fn apply(base: &[String], add: &[String], drop: &[String], all: &[String]) -> Vec<String> {
    let mut caps: Vec<String> = base.to_vec();
    if add.iter().any(|c| c == ALL) {
        caps = all.to_vec();
    }
    if drop.iter().any(|c| c == ALL) {
        caps.clear();
    }
    for c in add.iter().filter(|c| *c != ALL) {
        if !caps.contains(c) {
            caps.push(c.clone());
        }
    }
    caps.retain(|c| !drop.contains(c));
    caps
}

/// The oci-spec value of a canonical name.
pub fn to_oci(name: &str) -> Option<Capability> {
    Capability::from_str(name.strip_prefix("CAP_")?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_name_maps_to_oci() {
        for name in KNOWN {
            assert!(to_oci(name).is_some(), "{name}");
        }
        assert_eq!(to_oci("CAP_SYS_ADMIN"), Some(Capability::SysAdmin));
        assert_eq!(to_oci("CAP_NOPE"), None);
    }

    #[test]
    fn names_normalise() {
        assert_eq!(normalize("chown").as_deref(), Some("CAP_CHOWN"));
        assert_eq!(normalize("NET_ADMIN").as_deref(), Some("CAP_NET_ADMIN"));
        assert_eq!(normalize("CAP_SYS_ADMIN").as_deref(), Some("CAP_SYS_ADMIN"));
        assert_eq!(normalize("all").as_deref(), Some("ALL"));
        assert_eq!(normalize("NOPE"), None);
        assert_eq!(normalize("CAP_NOPE"), None);
        assert_eq!(normalize(""), None);
    }

    #[test]
    fn masks_decode() {
        assert_eq!(from_mask(0x1ff_ffff_ffff).len(), 41);
        // This VM's daemon: everything but CAP_SYS_RESOURCE (24).
        let caps = from_mask(0x1ff_feff_ffff);
        assert_eq!(caps.len(), 40);
        assert!(!caps.contains(&"CAP_SYS_RESOURCE".to_string()));
        assert_eq!(from_mask(0b101), vec!["CAP_CHOWN", "CAP_DAC_READ_SEARCH"]);
    }

    #[test]
    fn add_drop_arithmetic() {
        let base: Vec<String> = DEFAULT.iter().map(|s| s.to_string()).collect();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let all = from_mask(u64::MAX);
        let caps = apply(&base, &s(&["CAP_SYS_ADMIN"]), &s(&["CAP_CHOWN"]), &all);
        assert!(caps.contains(&"CAP_SYS_ADMIN".to_string()));
        assert!(!caps.contains(&"CAP_CHOWN".to_string()));
        assert_eq!(caps.len(), 14);
        // ALL then drop one.
        let caps = apply(&base, &s(&["ALL"]), &s(&["CAP_CHOWN"]), &all);
        assert_eq!(caps.len(), 40);
        // Drop ALL then add one back.
        let caps = apply(&base, &s(&["CAP_NET_RAW"]), &s(&["ALL"]), &all);
        assert_eq!(caps, s(&["CAP_NET_RAW"]));
        // Adding what is there already does not duplicate.
        let caps = apply(&base, &s(&["CAP_CHOWN"]), &[], &all);
        assert_eq!(caps.len(), 14);
    }
}
