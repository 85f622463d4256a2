//! Images: references, the registry client, the layer store and the image index.
//!
//! Pulled images live in the metadata DB (`store::images`); their layers are unpacked
//! directories under `<root>/layers`. Compressed blobs are not kept: each layer streams from
//! the registry through verification and decompression straight into its directory.

pub mod flight;
pub mod layers;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod unpack;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Deserialize;

pub use reference::Reference;
pub use registry::Credentials;
pub use store::ImageRecord;

use crate::config::Config;
use crate::store::{self, Db};
use flight::Flights;
use layers::LayerDirs;
use registry::{FetchError, Registries};

/// What went wrong with an image, always naming it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidReference(String),
    #[error("image {image:?} not found: {detail}")]
    NotFound { image: String, detail: String },
    #[error("pulling {image:?}: not authorized: {detail}")]
    Unauthorized { image: String, detail: String },
    #[error("pulling {image:?}: access denied: {detail}")]
    Forbidden { image: String, detail: String },
    #[error("pulling {image:?}: registry unavailable: {detail}")]
    Unavailable { image: String, detail: String },
    #[error("pulling {image:?}: corrupt content: {detail}")]
    Corrupt { image: String, detail: String },
    #[error("pulling {image:?}: invalid image: {detail}")]
    Invalid { image: String, detail: String },
    #[error("pulling {image:?}: deadline exceeded")]
    DeadlineExceeded { image: String },
    #[error("pulling {image:?}: cancelled")]
    Cancelled { image: String },
    #[error("image {image:?}: {detail}")]
    Internal { image: String, detail: String },
}

impl Error {
    fn fetch(image: &str, e: FetchError) -> Error {
        let image = image.to_string();
        let detail = e.to_string();
        match e {
            FetchError::NotFound { .. } => Error::NotFound { image, detail },
            FetchError::Unauthorized { .. } => Error::Unauthorized { image, detail },
            FetchError::Forbidden { .. } => Error::Forbidden { image, detail },
            FetchError::Unreachable { .. } => Error::Unavailable { image, detail },
            FetchError::Invalid(_) => Error::Invalid { image, detail },
            FetchError::Corrupt { .. } => Error::Corrupt { image, detail },
        }
    }

    fn internal(image: &str, e: impl std::fmt::Display) -> Error {
        Error::Internal {
            image: image.to_string(),
            detail: e.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Filesystem usage for `ImageFsInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsUsage {
    pub mountpoint: PathBuf,
    pub used_bytes: u64,
    pub inodes_used: u64,
}

/// The user an image runs as by default, as the CRI reports it: a numeric user is a uid,
/// anything else a username (the group part is ignored).
pub fn image_user(config_json: &str) -> (Option<i64>, String) {
    #[derive(Deserialize, Default)]
    struct Cfg {
        #[serde(default, rename = "User")]
        user: Option<String>,
    }
    #[derive(Deserialize)]
    struct Doc {
        #[serde(default)]
        config: Option<Cfg>,
    }
    let user = serde_json::from_str::<Doc>(config_json)
        .ok()
        .and_then(|d| d.config)
        .and_then(|c| c.user)
        .unwrap_or_default();
    let name = user.split(':').next().unwrap_or_default();
    if name.is_empty() {
        return (None, String::new());
    }
    match name.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, name.to_string()),
    }
}

pub(crate) struct Inner {
    db: Arc<Db>,
    layers: LayerDirs,
    registries: Registries,
    containers_dir: PathBuf,
    pulls: Flights<Result<ImageRecord>>,
    layer_pulls: Flights<Result<store::LayerRecord>>,
    /// Chain IDs in-flight pulls rely on; removal must not free them.
    active: Mutex<HashMap<String, usize>>,
}

/// The image service: pull, look up, list, remove, usage.
#[derive(Clone)]
pub struct ImageService {
    inner: Arc<Inner>,
}

/// Marks chain IDs as in use by a pull until dropped. A pull that ends without committing
/// (an error, or aborted by its caller's deadline) takes away the layers it unpacked that
/// no image and no other pull uses: nothing half-stored stays behind.
struct ActiveGuard<'a> {
    inner: &'a Inner,
    ids: Vec<String>,
    committed: bool,
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        let mut trash = Vec::new();
        {
            let mut a = self.inner.active.lock().unwrap_or_else(|e| e.into_inner());
            for id in &self.ids {
                let Some(n) = a.get_mut(id) else { continue };
                *n -= 1;
                if *n > 0 {
                    continue;
                }
                a.remove(id);
                if self.committed || !matches!(self.inner.db.layer(id), Ok(None)) {
                    continue;
                }
                // Renamed away under the lock, so that a pull starting now cannot find
                // the directory half-deleted.
                match self.inner.layers.discard(id) {
                    Ok(Some(t)) => trash.push(t),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(layer = %id, error = %e, "cannot discard layer"),
                }
            }
        }
        // Deleted before the failed pull answers, so its caller sees a clean store.
        drop(trash);
    }
}

impl Inner {
    fn activate(&self, ids: &[String]) -> ActiveGuard<'_> {
        let mut a = self.active.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            *a.entry(id.clone()).or_default() += 1;
        }
        ActiveGuard {
            inner: self,
            ids: ids.to_vec(),
            committed: false,
        }
    }

    fn active_ids(&self) -> HashSet<String> {
        let a = self.active.lock().unwrap_or_else(|e| e.into_inner());
        a.keys().cloned().collect()
    }
}

impl ImageService {
    /// Opens the image store and makes disk agree with the DB: half-unpacked layers,
    /// layers no image references and images whose layers are gone are removed.
    pub fn open(config: &Config, db: Arc<Db>) -> std::result::Result<ImageService, String> {
        let layers = LayerDirs::new(config.root.join("layers")).map_err(|e| {
            format!(
                "cannot create {}: {e}",
                config.root.join("layers").display()
            )
        })?;
        let inner = Inner {
            db,
            layers,
            registries: Registries::new(config.registry.clone()),
            containers_dir: config.root.join("containers"),
            pulls: Flights::default(),
            layer_pulls: Flights::default(),
            active: Mutex::new(HashMap::new()),
        };
        let svc = ImageService {
            inner: Arc::new(inner),
        };
        svc.recover()
            .map_err(|e| format!("image store recovery: {e}"))?;
        Ok(svc)
    }

    fn recover(&self) -> std::result::Result<(), store::Error> {
        let i = &self.inner;
        for image in i.db.images()? {
            let missing = image
                .chain_ids
                .iter()
                .find(|c| !i.layers.dir(c).is_dir())
                .cloned();
            if let Some(c) = missing {
                tracing::warn!(image = %image.id, layer = %c, "layer directory missing; dropping image so it can be pulled again");
                i.db.remove_image(&image.id, &HashSet::new())?;
            }
        }
        let freed = i.db.collect_layers(&HashSet::new())?;
        let known: HashSet<String> = i.db.layers()?.into_iter().map(|l| l.chain_id).collect();
        match i.layers.sweep(&known) {
            Ok(n) if n > 0 || !freed.is_empty() => {
                tracing::info!(
                    removed_dirs = n,
                    freed_records = freed.len(),
                    "cleaned up image store"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot sweep layer directory"),
        }
        Ok(())
    }

    pub fn layer_dir(&self, chain_id: &str) -> PathBuf {
        self.inner.layers.dir(chain_id)
    }

    /// Finds an image by ID (`sha256:…`, bare hex, or a unique hex prefix), or by any
    /// reference that names it, as containerd resolves them.
    pub fn resolve(&self, name: &str) -> Result<Option<ImageRecord>> {
        let db = &self.inner.db;
        let name = name.trim();
        if name.is_empty() {
            return Err(Error::InvalidReference("image reference is empty".into()));
        }
        let st = |e: store::Error| Error::internal(name, e);
        if name.strip_prefix("sha256:").is_some_and(|h| h.len() == 64) {
            return db.image(name).map_err(st);
        }
        if let Ok(r) = Reference::parse(name)
            && let Some(img) = db.image_by_name(&r.to_string()).map_err(st)?
        {
            return Ok(Some(img));
        }
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if !hex.is_empty() && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let id = format!("sha256:{hex}");
            let matches: Vec<ImageRecord> = db
                .images()
                .map_err(st)?
                .into_iter()
                .filter(|i| i.id.starts_with(&id))
                .collect();
            if matches.len() == 1 {
                return Ok(matches.into_iter().next());
            }
        }
        Ok(None)
    }

    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        let mut v = self
            .inner
            .db
            .images()
            .map_err(|e| Error::internal("*", e))?;
        v.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(v)
    }

    /// Removes the image `name` resolves to, with all its references (as containerd's CRI
    /// does), and frees layers no other image uses. Removing an unknown image is not an error.
    pub async fn remove(&self, name: &str) -> Result<Option<ImageRecord>> {
        let Some(image) = self.resolve(name)? else {
            return Ok(None);
        };
        let inner = self.inner.clone();
        let keep = inner.active_ids();
        let removed = inner
            .db
            .remove_image(&image.id, &keep)
            .map_err(|e| Error::internal(name, e))?;
        let Some(removed) = removed else {
            return Ok(None);
        };
        let freed: Vec<String> = removed.layers.iter().map(|l| l.chain_id.clone()).collect();
        tokio::task::spawn_blocking(move || {
            for c in &freed {
                if let Err(e) = inner.layers.remove(c) {
                    tracing::warn!(layer = %c, error = %e, "cannot remove layer directory; it is removed at the next start");
                }
            }
        })
        .await
        .map_err(|e| Error::internal(name, e))?;
        Ok(Some(removed.image))
    }

    /// Frees layers that nothing references any more (after a container that held the
    /// layers of a removed image went away).
    pub async fn collect_layers(&self) -> Result<()> {
        let inner = self.inner.clone();
        let keep = inner.active_ids();
        let freed = inner
            .db
            .collect_layers(&keep)
            .map_err(|e| Error::internal("*", e))?;
        if freed.is_empty() {
            return Ok(());
        }
        tokio::task::spawn_blocking(move || {
            for l in &freed {
                if let Err(e) = inner.layers.remove(&l.chain_id) {
                    tracing::warn!(layer = %l.chain_id, error = %e, "cannot remove layer directory");
                }
            }
        })
        .await
        .map_err(|e| Error::internal("*", e))
    }

    /// Usage of the image filesystem (unpacked layers) and the container filesystem.
    pub async fn fs_usage(&self) -> Result<(FsUsage, FsUsage)> {
        let layers = self
            .inner
            .db
            .layers()
            .map_err(|e| Error::internal("*", e))?;
        let image_fs = FsUsage {
            mountpoint: self.inner.layers.root().to_path_buf(),
            used_bytes: layers.iter().map(|l| l.unpacked_bytes).sum(),
            inodes_used: layers.iter().map(|l| l.inodes).sum(),
        };
        let dir = self.inner.containers_dir.clone();
        let container_fs = tokio::task::spawn_blocking(move || {
            let (used_bytes, inodes_used) = crate::stats::disk_usage(&dir);
            FsUsage {
                mountpoint: dir,
                used_bytes,
                inodes_used,
            }
        })
        .await
        .map_err(|e| Error::internal("*", e))?;
        Ok((image_fs, container_fs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_user_as_the_cri_reports_it() {
        let cfg = |u: &str| format!(r#"{{"config":{{"User":"{u}"}}}}"#);
        assert_eq!(image_user(&cfg("1002")), (Some(1002), String::new()));
        assert_eq!(image_user(&cfg("www-data")), (None, "www-data".into()));
        assert_eq!(image_user(&cfg("1003:1004")), (Some(1003), String::new()));
        assert_eq!(image_user(&cfg("www-data:1004")), (None, "www-data".into()));
        assert_eq!(image_user(&cfg("")), (None, String::new()));
        assert_eq!(image_user(r#"{"config":{}}"#), (None, String::new()));
        assert_eq!(image_user("{}"), (None, String::new()));
    }
}
