//! Container records, and the unique-name index (per pod: name and attempt).

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{Db, Result, decode, encode};
use crate::container::config::ContainerConfig;

const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");
const CONTAINER_NAMES: TableDefinition<&str, &str> = TableDefinition::new("container_names");

pub(super) fn create_tables(tx: &WriteTransaction) -> Result<()> {
    tx.open_table(CONTAINERS)?;
    tx.open_table(CONTAINER_NAMES)?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    /// Being set up; found in this state at start-up it is torn down.
    Creating,
    Created,
    Running,
    Exited,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    pub config: ContainerConfig,
    /// The image as the CRI request named it, and what it resolved to.
    pub image_name: String,
    pub image_id: String,
    /// A repo digest of the image, if it has one (ContainerStatus.image_ref).
    pub image_ref: String,
    pub state: ContainerState,
    /// Unix nanoseconds; 0 when not yet.
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub pid: u32,
    /// The full path of the CRI log file (pod log directory + log_path), or empty.
    pub log_path: String,
    /// Signal number that stops it (config, else image, else SIGTERM).
    pub stop_signal: i32,
    /// uid, gid and groups it runs as (ContainerStatus.user).
    pub uid: i64,
    pub gid: i64,
    pub supplemental_groups: Vec<i64>,
    /// Relative cgroup path (for stats and updates).
    pub cgroup: String,
    /// The image layers its rootfs stacks: kept while the container exists, even if its
    /// image is removed.
    pub chain_ids: Vec<String>,
}

/// Chain IDs that containers hold (read inside a write transaction of the image store).
pub(super) fn held_layers(tx: &WriteTransaction) -> Result<std::collections::HashSet<String>> {
    let t = tx.open_table(CONTAINERS)?;
    let mut out = std::collections::HashSet::new();
    for row in t.iter()? {
        let (k, v) = row?;
        let c: ContainerRecord = decode("containers", k.value(), v.value())?;
        out.extend(c.chain_ids);
    }
    Ok(out)
}

impl ContainerRecord {
    pub fn name_key(&self) -> String {
        name_key(
            &self.pod_id,
            &self.config.metadata.name,
            self.config.metadata.attempt,
        )
    }
}

pub fn name_key(pod_id: &str, name: &str, attempt: u32) -> String {
    format!("{pod_id}/{name}/{attempt}")
}

impl Db {
    /// Inserts a new container unless its name is taken in its pod; returns the holder.
    pub fn insert_container(&self, c: &ContainerRecord) -> Result<Option<String>> {
        super::blocking(|| {
            let tx = self.write()?;
            {
                let mut names = tx.open_table(CONTAINER_NAMES)?;
                let key = c.name_key();
                if let Some(existing) = names.get(key.as_str())? {
                    return Ok(Some(existing.value().to_string()));
                }
                names.insert(key.as_str(), c.id.as_str())?;
                tx.open_table(CONTAINERS)?
                    .insert(c.id.as_str(), encode(c).as_slice())?;
            }
            tx.commit()?;
            Ok(None)
        })
    }

    pub fn update_container(&self, c: &ContainerRecord) -> Result<()> {
        super::blocking(|| {
            let tx = self.write()?;
            tx.open_table(CONTAINERS)?
                .insert(c.id.as_str(), encode(c).as_slice())?;
            tx.commit()?;
            Ok(())
        })
    }

    /// As [`Db::update_container`], but not flushed to disk until the next durable commit:
    /// for state the shim can tell again after a crash (a started container's Running).
    pub fn update_container_lazily(&self, c: &ContainerRecord) -> Result<()> {
        super::blocking(|| {
            let tx = self.write_lazily()?;
            tx.open_table(CONTAINERS)?
                .insert(c.id.as_str(), encode(c).as_slice())?;
            tx.commit()?;
            Ok(())
        })
    }

    pub fn container(&self, id: &str) -> Result<Option<ContainerRecord>> {
        let tx = self.read()?;
        let t = tx.open_table(CONTAINERS)?;
        match t.get(id)? {
            Some(v) => Ok(Some(decode("containers", id, v.value())?)),
            None => Ok(None),
        }
    }

    pub fn containers(&self) -> Result<Vec<ContainerRecord>> {
        let tx = self.read()?;
        let t = tx.open_table(CONTAINERS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push(decode("containers", k.value(), v.value())?);
        }
        Ok(out)
    }

    pub fn delete_container(&self, id: &str) -> Result<()> {
        super::blocking(|| {
            let tx = self.write()?;
            {
                let mut t = tx.open_table(CONTAINERS)?;
                let old = t.remove(id)?.map(|v| v.value().to_vec());
                if let Some(bytes) = old {
                    let c: ContainerRecord = decode("containers", id, &bytes)?;
                    let mut names = tx.open_table(CONTAINER_NAMES)?;
                    let key = c.name_key();
                    let owned = names.get(key.as_str())?.is_some_and(|v| v.value() == id);
                    if owned {
                        names.remove(key.as_str())?;
                    }
                }
            }
            tx.commit()?;
            Ok(())
        })
    }
}
