//! Pod sandbox records, and the unique-name index.

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::{Db, Result, decode, encode};
use crate::sandbox::spec::PodRecord;

const PODS: TableDefinition<&str, &[u8]> = TableDefinition::new("pods");
const POD_NAMES: TableDefinition<&str, &str> = TableDefinition::new("pod_names");
/// cgroup directories berth created (a parent may outlive the pod that created it).
const CGROUPS: TableDefinition<&str, ()> = TableDefinition::new("cgroups_created");

pub(super) fn create_tables(tx: &WriteTransaction) -> Result<()> {
    tx.open_table(PODS)?;
    tx.open_table(POD_NAMES)?;
    tx.open_table(CGROUPS)?;
    Ok(())
}

impl Db {
    /// Inserts a new pod unless its name is taken; returns the id holding the name then.
    pub fn insert_pod(&self, pod: &PodRecord) -> Result<Option<String>> {
        super::blocking(|| {
            let tx = self.write()?;
            {
                let mut names = tx.open_table(POD_NAMES)?;
                let key = pod.name_key();
                if let Some(existing) = names.get(key.as_str())? {
                    return Ok(Some(existing.value().to_string()));
                }
                names.insert(key.as_str(), pod.id.as_str())?;
                tx.open_table(PODS)?
                    .insert(pod.id.as_str(), encode(pod).as_slice())?;
            }
            tx.commit()?;
            Ok(None)
        })
    }

    pub fn update_pod(&self, pod: &PodRecord) -> Result<()> {
        super::blocking(|| {
            let tx = self.write()?;
            tx.open_table(PODS)?
                .insert(pod.id.as_str(), encode(pod).as_slice())?;
            tx.commit()?;
            Ok(())
        })
    }

    /// As [`Db::update_pod`], but not flushed to disk until the next durable commit: for a
    /// stopped pod, whose stop is repeated (idempotently) if a crash loses it.
    pub fn update_pod_lazily(&self, pod: &PodRecord) -> Result<()> {
        super::blocking(|| {
            let tx = self.write_lazily()?;
            tx.open_table(PODS)?
                .insert(pod.id.as_str(), encode(pod).as_slice())?;
            tx.commit()?;
            Ok(())
        })
    }

    pub fn pod(&self, id: &str) -> Result<Option<PodRecord>> {
        let tx = self.read()?;
        let t = tx.open_table(PODS)?;
        match t.get(id)? {
            Some(v) => Ok(Some(decode("pods", id, v.value())?)),
            None => Ok(None),
        }
    }

    pub fn pods(&self) -> Result<Vec<PodRecord>> {
        let tx = self.read()?;
        let t = tx.open_table(PODS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push(decode("pods", k.value(), v.value())?);
        }
        Ok(out)
    }

    pub fn add_cgroups(&self, dirs: &[String]) -> Result<()> {
        super::blocking(|| {
            let tx = self.write()?;
            {
                let mut t = tx.open_table(CGROUPS)?;
                for d in dirs {
                    t.insert(d.as_str(), ())?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    pub fn cgroups_created(&self) -> Result<Vec<String>> {
        let tx = self.read()?;
        let t = tx.open_table(CGROUPS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            out.push(row?.0.value().to_string());
        }
        Ok(out)
    }

    pub fn forget_cgroups(&self, dirs: &[String]) -> Result<()> {
        super::blocking(|| {
            let tx = self.write()?;
            {
                let mut t = tx.open_table(CGROUPS)?;
                for d in dirs {
                    t.remove(d.as_str())?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    pub fn delete_pod(&self, id: &str) -> Result<()> {
        super::blocking(|| {
            let tx = self.write()?;
            {
                let mut pods = tx.open_table(PODS)?;
                let old = pods.remove(id)?.map(|v| v.value().to_vec());
                if let Some(bytes) = old {
                    let pod: PodRecord = decode("pods", id, &bytes)?;
                    let mut names = tx.open_table(POD_NAMES)?;
                    let key = pod.name_key();
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
