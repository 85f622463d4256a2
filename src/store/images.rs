//! Image, name and layer records. An image's layers are referenced by chain ID; a layer
//! record exists exactly while its unpacked directory is meant to exist, and its reference
//! count is derived from the image records (never stored, so it cannot drift).

use std::collections::HashSet;

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{Db, Result, decode, encode};

const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
const NAMES: TableDefinition<&str, &str> = TableDefinition::new("image_names");
const LAYERS: TableDefinition<&str, &[u8]> = TableDefinition::new("layers");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The config digest, `sha256:…`: the image ID the CRI reports.
    pub id: String,
    /// Normalised `name:tag` references that point at this image.
    pub repo_tags: Vec<String>,
    /// Normalised `name@sha256:…` references (manifest or index digest as pulled).
    pub repo_digests: Vec<String>,
    /// Digest of the platform manifest that was unpacked.
    pub manifest_digest: String,
    /// The image config JSON as served by the registry (its sha256 is `id`).
    pub config: String,
    /// Chain IDs of the layers, bottom first.
    pub chain_ids: Vec<String>,
    /// Compressed size of config and layers, as the manifest declares.
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub chain_id: String,
    pub diff_id: String,
    /// Digest and size of the compressed blob it was unpacked from.
    pub digest: String,
    pub size: u64,
    /// Disk usage of the unpacked directory.
    pub unpacked_bytes: u64,
    pub inodes: u64,
}

pub(super) fn create_tables(tx: &WriteTransaction) -> Result<()> {
    tx.open_table(IMAGES)?;
    tx.open_table(NAMES)?;
    tx.open_table(LAYERS)?;
    Ok(())
}

/// What a removal freed: the image and the layers no image references any more.
#[derive(Debug)]
pub struct Removed {
    pub image: ImageRecord,
    pub layers: Vec<LayerRecord>,
}

impl Db {
    pub fn image(&self, id: &str) -> Result<Option<ImageRecord>> {
        let tx = self.read()?;
        let t = tx.open_table(IMAGES)?;
        match t.get(id)? {
            Some(v) => Ok(Some(decode("images", id, v.value())?)),
            None => Ok(None),
        }
    }

    /// The image a normalised reference (`name:tag` or `name@digest`) points at.
    pub fn image_by_name(&self, name: &str) -> Result<Option<ImageRecord>> {
        let tx = self.read()?;
        let names = tx.open_table(NAMES)?;
        let Some(id) = names.get(name)? else {
            return Ok(None);
        };
        let id = id.value().to_string();
        let t = tx.open_table(IMAGES)?;
        match t.get(id.as_str())? {
            Some(v) => Ok(Some(decode("images", &id, v.value())?)),
            None => Ok(None),
        }
    }

    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        let tx = self.read()?;
        let t = tx.open_table(IMAGES)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push(decode("images", k.value(), v.value())?);
        }
        Ok(out)
    }

    pub fn layer(&self, chain_id: &str) -> Result<Option<LayerRecord>> {
        let tx = self.read()?;
        let t = tx.open_table(LAYERS)?;
        match t.get(chain_id)? {
            Some(v) => Ok(Some(decode("layers", chain_id, v.value())?)),
            None => Ok(None),
        }
    }

    pub fn layers(&self) -> Result<Vec<LayerRecord>> {
        let tx = self.read()?;
        let t = tx.open_table(LAYERS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push(decode("layers", k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Records a pulled image, its new layers and its names in one transaction. A name that
    /// pointed at another image moves to this one (the other image keeps its other names).
    pub fn commit_image(
        &self,
        mut image: ImageRecord,
        layers: &[LayerRecord],
    ) -> Result<ImageRecord> {
        let tx = self.write()?;
        {
            let mut lt = tx.open_table(LAYERS)?;
            for l in layers {
                lt.insert(l.chain_id.as_str(), encode(l).as_slice())?;
            }
            let mut it = tx.open_table(IMAGES)?;
            let mut nt = tx.open_table(NAMES)?;
            if let Some(old) = it.get(image.id.as_str())? {
                let old: ImageRecord = decode("images", &image.id, old.value())?;
                merge_names(&mut image.repo_tags, old.repo_tags);
                merge_names(&mut image.repo_digests, old.repo_digests);
            }
            let new_names: Vec<String> = image
                .repo_tags
                .iter()
                .chain(&image.repo_digests)
                .cloned()
                .collect();
            for name in &new_names {
                let prev = nt
                    .insert(name.as_str(), image.id.as_str())?
                    .map(|p| p.value().to_string());
                if let Some(prev) = prev.filter(|p| *p != image.id) {
                    let rec = it.get(prev.as_str())?.map(|v| v.value().to_vec());
                    if let Some(bytes) = rec {
                        let mut other: ImageRecord = decode("images", &prev, &bytes)?;
                        other.repo_tags.retain(|n| n != name);
                        other.repo_digests.retain(|n| n != name);
                        it.insert(prev.as_str(), encode(&other).as_slice())?;
                    }
                }
            }
            it.insert(image.id.as_str(), encode(&image).as_slice())?;
        }
        tx.commit()?;
        Ok(image)
    }

    /// Removes an image and all its names, and the layer records that no remaining image
    /// references and that are not in `keep` (layers an in-flight pull is using).
    pub fn remove_image(&self, id: &str, keep: &HashSet<String>) -> Result<Option<Removed>> {
        super::blocking(|| {
            let tx = self.write()?;
            let removed = {
                let mut it = tx.open_table(IMAGES)?;
                let Some(bytes) = it.remove(id)?.map(|v| v.value().to_vec()) else {
                    return Ok(None);
                };
                let image: ImageRecord = decode("images", id, &bytes)?;
                let mut nt = tx.open_table(NAMES)?;
                for name in image.repo_tags.iter().chain(&image.repo_digests) {
                    nt.remove(name.as_str())?;
                }
                let layers = free_layers(&tx, &it, keep)?;
                Removed { image, layers }
            };
            tx.commit()?;
            Ok(Some(removed))
        })
    }

    /// Drops layer records that no image or container references and that are not in
    /// `keep`: start-up clean-up after a crash between unpacking and committing an image,
    /// and the layers of removed images that a removed container held last.
    pub fn collect_layers(&self, keep: &HashSet<String>) -> Result<Vec<LayerRecord>> {
        super::blocking(|| {
            let tx = self.write()?;
            let freed = {
                let it = tx.open_table(IMAGES)?;
                free_layers(&tx, &it, keep)?
            };
            tx.commit()?;
            Ok(freed)
        })
    }
}

fn merge_names(into: &mut Vec<String>, from: Vec<String>) {
    for n in from {
        if !into.contains(&n) {
            into.push(n);
        }
    }
    into.sort();
}

fn free_layers(
    tx: &WriteTransaction,
    images: &impl ReadableTable<&'static str, &'static [u8]>,
    keep: &HashSet<String>,
) -> Result<Vec<LayerRecord>> {
    let mut used: HashSet<String> = keep.clone();
    used.extend(super::containers::held_layers(tx)?);
    for row in images.iter()? {
        let (k, v) = row?;
        let rec: ImageRecord = decode("images", k.value(), v.value())?;
        used.extend(rec.chain_ids);
    }
    let mut lt = tx.open_table(LAYERS)?;
    let mut unused = Vec::new();
    for row in lt.iter()? {
        let (k, v) = row?;
        if !used.contains(k.value()) {
            unused.push(decode::<LayerRecord>("layers", k.value(), v.value())?);
        }
    }
    for l in &unused {
        lt.remove(l.chain_id.as_str())?;
    }
    Ok(unused)
}
