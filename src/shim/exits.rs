//! Exit records: what the shim writes when a container's init exits, before it tells
//! anyone, so that the exit survives the shim and berthd. One JSON file per container,
//! `<state_dir>/exits/<id>.json`, written atomically (temporary file, fsync, rename, fsync
//! of the directory). berthd reads it with [`read`] when a pod's shim is gone.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How a container's init ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The container id.
    pub id: String,
    /// The init's pid in the host's PID namespace.
    pub pid: u32,
    /// The exit status, or 128 + the signal number when a signal killed it.
    pub exit_code: i32,
    /// The signal that killed it, 0 when it exited by itself.
    #[serde(default)]
    pub signal: i32,
    /// Unix nanoseconds: when StartContainer started it (0 if it never started), and when
    /// the shim reaped it.
    pub started_at: i64,
    pub finished_at: i64,
    /// The kernel's OOM killer killed a process of the container's memory cgroup.
    pub oom_killed: bool,
}

/// `<state_dir>/exits`.
pub fn exits_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("exits")
}

/// `<state_dir>/exits/<id>.json`.
pub fn exit_path(state_dir: &Path, id: &str) -> PathBuf {
    exits_dir(state_dir).join(format!("{id}.json"))
}

/// Writes the record durably: once this returns, a crash of anything keeps it.
pub fn write(state_dir: &Path, record: &ExitRecord) -> io::Result<()> {
    let dir = exits_dir(state_dir);
    std::fs::create_dir_all(&dir)?;
    let path = exit_path(state_dir, &record.id);
    let tmp = dir.join(format!(".{}.json.tmp", record.id));
    let bytes = serde_json::to_vec(record).map_err(io::Error::other)?;
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(&dir)?.sync_all()
}

/// The record of container `id`, if one was written.
pub fn read(state_dir: &Path, id: &str) -> io::Result<Option<ExitRecord>> {
    match std::fs::read(exit_path(state_dir, id)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes the record; a missing one is fine.
pub fn remove(state_dir: &Path, id: &str) -> io::Result<()> {
    match std::fs::remove_file(exit_path(state_dir, id)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = std::env::temp_dir().join(format!("berth-exits-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(read(&dir, "c1").unwrap(), None);
        let r = ExitRecord {
            id: "c1".into(),
            pid: 42,
            exit_code: 137,
            signal: 9,
            started_at: 1,
            finished_at: 2,
            oom_killed: true,
        };
        write(&dir, &r).unwrap();
        assert_eq!(read(&dir, "c1").unwrap(), Some(r.clone()));
        // Overwritten atomically; no temporary file left.
        write(&dir, &ExitRecord { exit_code: 1, ..r }).unwrap();
        assert_eq!(read(&dir, "c1").unwrap().unwrap().exit_code, 1);
        let names: Vec<_> = std::fs::read_dir(exits_dir(&dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["c1.json"]);
        remove(&dir, "c1").unwrap();
        remove(&dir, "c1").unwrap();
        assert_eq!(read(&dir, "c1").unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
