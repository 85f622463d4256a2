//! Unpacked layers on disk: `<root>/layers/<chain-id hex>/` is one layer's directory in
//! overlayfs lower-dir format. A layer is unpacked into a `.tmp-*` sibling and renamed into
//! place when complete, so a partial unpack is never visible under its final name.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct LayerDirs {
    root: PathBuf,
}

/// A directory being filled; removed on drop unless persisted.
pub struct TmpDir {
    path: Option<PathBuf>,
}

impl TmpDir {
    pub fn path(&self) -> &Path {
        self.path.as_deref().expect("live tmp dir")
    }

    /// Renames the directory to `dest`. If `dest` already exists (another pull of the same
    /// layer won), this one is discarded: both hold the same verified content.
    pub fn persist(mut self, dest: &Path) -> std::io::Result<()> {
        let path = self.path.take().expect("live tmp dir");
        match std::fs::rename(&path, dest) {
            Ok(()) => Ok(()),
            Err(e) if dest.is_dir() => {
                tracing::debug!(dest = %dest.display(), error = %e, "layer already present");
                let _ = std::fs::remove_dir_all(&path);
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&path);
                Err(e)
            }
        }
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

fn hex_of(chain_id: &str) -> &str {
    chain_id.strip_prefix("sha256:").unwrap_or(chain_id)
}

impl LayerDirs {
    pub fn new(root: PathBuf) -> std::io::Result<LayerDirs> {
        std::fs::create_dir_all(&root)?;
        Ok(LayerDirs { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn dir(&self, chain_id: &str) -> PathBuf {
        self.root.join(hex_of(chain_id))
    }

    pub fn tmp_dir(&self, chain_id: &str) -> std::io::Result<TmpDir> {
        static NONCE: AtomicU64 = AtomicU64::new(0);
        let n = NONCE.fetch_add(1, Ordering::Relaxed);
        let path = self.root.join(format!(
            ".tmp-{}-{}-{n}",
            &hex_of(chain_id)[..hex_of(chain_id).len().min(16)],
            std::process::id()
        ));
        std::fs::create_dir(&path)?;
        Ok(TmpDir { path: Some(path) })
    }

    /// Moves a layer directory out of the way; the returned `TmpDir` deletes it on drop.
    pub fn discard(&self, chain_id: &str) -> std::io::Result<Option<TmpDir>> {
        let dir = self.dir(chain_id);
        if !dir.exists() {
            return Ok(None);
        }
        let tmp = self.tmp_dir(chain_id)?;
        let path = tmp.path().to_path_buf();
        std::fs::remove_dir(&path)?;
        std::fs::rename(&dir, &path)?;
        Ok(Some(tmp))
    }

    pub fn remove(&self, chain_id: &str) -> std::io::Result<()> {
        match std::fs::remove_dir_all(self.dir(chain_id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes every directory that is not a known layer: leftovers of a crash.
    pub fn sweep(&self, known: &HashSet<String>) -> std::io::Result<usize> {
        let keep: HashSet<&str> = known.iter().map(|c| hex_of(c)).collect();
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if keep.contains(name.as_ref()) {
                continue;
            }
            let p = entry.path();
            let res = if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            match res {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "cannot remove stale layer")
                }
            }
        }
        Ok(removed)
    }
}
