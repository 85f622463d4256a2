//! The on-disk result cache (like libcni's `/var/lib/cni/results`): one JSON file
//! per (container id, ifname) holding the exact config list, CNI_ARGS,
//! capability args and final result of an ADD, so that DEL/CHECK/GC work after a
//! restart and after the conf dir changed. Written atomically (tmp, rename) but, as
//! libcni does, not fsynced: a berthd crash keeps the page cache, and after a host
//! crash the namespaces the entries describe are gone anyway. (The fsyncs cost ~9 ms
//! per RunPodSandbox on this VM.)

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Format marker of the cache files.
pub(super) const KIND: &str = "berth.cni.result/v1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Entry {
    pub kind: String,
    pub container_id: String,
    pub if_name: String,
    pub network_name: String,
    /// The config file the list came from (for messages).
    pub config_file: PathBuf,
    /// The configuration list used, as parsed (single-plugin files wrapped).
    pub config: Value,
    pub netns: String,
    pub cni_args: Vec<(String, String)>,
    /// All capability args offered at ADD (filtered per plugin at each call).
    pub capability_args: Map<String, Value>,
    /// The final ADD result, in the list's cniVersion.
    pub result: Value,
}

/// `<container_id>@<ifname>.json`; container ids cannot hold `@`, so the first
/// `@` splits the name unambiguously.
pub(super) fn file_name(container_id: &str, ifname: &str) -> String {
    format!("{container_id}@{ifname}.json")
}

/// The inverse of [`file_name`]; `None` for other files (temporaries start with `.`).
pub(super) fn parse_file_name(name: &str) -> Option<(String, String)> {
    if name.starts_with('.') {
        return None;
    }
    let (cid, ifname) = name.strip_suffix(".json")?.split_once('@')?;
    (!cid.is_empty() && !ifname.is_empty()).then(|| (cid.to_string(), ifname.to_string()))
}

pub(super) fn encode(entry: &Entry) -> Vec<u8> {
    let mut v = serde_json::to_vec_pretty(entry).unwrap_or_default();
    v.push(b'\n');
    v
}

pub(super) fn decode(bytes: &[u8]) -> Result<Entry, String> {
    let entry: Entry = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if entry.kind != KIND {
        return Err(format!("unknown kind {:?}", entry.kind));
    }
    Ok(entry)
}

pub(super) fn path(dir: &Path, container_id: &str, ifname: &str) -> PathBuf {
    dir.join(file_name(container_id, ifname))
}

/// Writes `bytes` to `dir/name` atomically: readers see the old entry or the new one.
pub(super) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp-{}-{seq}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        fs::rename(&tmp, dir.join(name))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The raw bytes of an entry, `None` if there is none.
pub(super) fn read(dir: &Path, container_id: &str, ifname: &str) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path(dir, container_id, ifname)) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes an entry; a missing one is fine.
pub(super) fn remove(dir: &Path, container_id: &str, ifname: &str) -> io::Result<()> {
    match fs::remove_file(path(dir, container_id, ifname)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// All (container id, ifname) pairs with an entry, sorted.
pub(super) fn list(dir: &Path) -> io::Result<Vec<(String, String)>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        if let Some(key) = entry?.file_name().to_str().and_then(parse_file_name) {
            out.push(key);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn file_names_table() {
        let cases = [
            ("abc123", "eth0", "abc123@eth0.json"),
            ("a-b", "c-d", "a-b@c-d.json"),
            ("a_b.c", "net@1", "a_b.c@net@1.json"),
        ];
        for (cid, ifname, name) in cases {
            assert_eq!(file_name(cid, ifname), name);
            assert_eq!(
                parse_file_name(name),
                Some((cid.to_string(), ifname.to_string()))
            );
        }
        for other in [
            ".abc@eth0.json.tmp-1",
            "abc@eth0.json.tmp",
            "abc.json",
            "@eth0.json",
            "abc@.json",
            "lock",
        ] {
            assert_eq!(parse_file_name(other), None, "{other}");
        }
    }

    fn entry() -> Entry {
        Entry {
            kind: KIND.into(),
            container_id: "c1".into(),
            if_name: "eth0".into(),
            network_name: "net".into(),
            config_file: "/etc/cni/net.d/10-a.conflist".into(),
            config: json!({"cniVersion":"1.0.0","name":"net","plugins":[{"type":"bridge"}]}),
            netns: "/run/netns/x".into(),
            cni_args: vec![("IgnoreUnknown".into(), "1".into()), ("K8S_POD_NAME".into(), "p".into())],
            capability_args: json!({"portMappings":[{"hostPort":1,"containerPort":2,"protocol":"tcp","hostIP":""}]})
                .as_object()
                .unwrap()
                .clone(),
            result: json!({"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]}),
        }
    }

    #[test]
    fn encode_decode() {
        let e = entry();
        let bytes = encode(&e);
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        // Stable, readable field names.
        assert_eq!(v["kind"], KIND);
        assert_eq!(v["containerId"], "c1");
        assert_eq!(v["ifName"], "eth0");
        assert_eq!(
            v["cniArgs"],
            json!([["IgnoreUnknown", "1"], ["K8S_POD_NAME", "p"]])
        );
        assert_eq!(v["capabilityArgs"]["portMappings"][0]["hostPort"], 1);
        assert_eq!(decode(&bytes).unwrap(), e);
        let mut other = v.clone();
        other["kind"] = json!("cniCacheV1");
        assert!(
            decode(&serde_json::to_vec(&other).unwrap())
                .unwrap_err()
                .contains("unknown kind")
        );
        assert!(decode(b"{").is_err());
        assert!(decode(br#"{"kind":"berth.cni.result/v1"}"#).is_err());
    }

    #[test]
    fn write_read_list_remove() {
        let dir = std::env::temp_dir().join(format!("berth-cni-cache-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let sub = dir.join("results");
        assert_eq!(list(&sub).unwrap(), vec![]);
        assert_eq!(read(&sub, "c1", "eth0").unwrap(), None);
        let e = entry();
        write_atomic(&sub, &file_name("c1", "eth0"), &encode(&e)).unwrap();
        write_atomic(&sub, &file_name("c0", "eth0"), b"x").unwrap();
        write_atomic(&sub, &file_name("c1", "eth0"), &encode(&e)).unwrap(); // overwrite
        let names: Vec<_> = fs::read_dir(&sub)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temporary left: {names:?}");
        assert_eq!(
            list(&sub).unwrap(),
            vec![("c0".into(), "eth0".into()), ("c1".into(), "eth0".into())]
        );
        assert_eq!(
            decode(&read(&sub, "c1", "eth0").unwrap().unwrap()).unwrap(),
            e
        );
        remove(&sub, "c1", "eth0").unwrap();
        remove(&sub, "c1", "eth0").unwrap();
        assert_eq!(list(&sub).unwrap(), vec![("c0".into(), "eth0".into())]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
