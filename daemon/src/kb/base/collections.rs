//! Creating, listing and deleting collections.

use std::sync::{Arc, Mutex, RwLock};

use redb::ReadableTable;

use super::documents::delete_doc_rows;
use super::index::{doc_ids, info_of, CollIndex};
use super::{
    check_collection_name, encode_json, not_found, unix_now, Coll, CollectionInfo, KbError,
    KnowledgeBase,
};
use crate::kb::store::{CollectionRecord, COLLECTIONS, DOC_NAMES};
use crate::util::{read, write};

impl KnowledgeBase {
    pub fn create_collection(&self, name: &str) -> Result<CollectionInfo, KbError> {
        check_collection_name(name)?;
        let mut colls = write(&self.inner.colls);
        let tx = self.inner.store.begin_write()?;
        let record = CollectionRecord {
            created: unix_now(),
            model_id: self.inner.embed.model_id(),
            dim: self.inner.embed.dim(),
        };
        {
            let mut t = tx.open_table(COLLECTIONS)?;
            if t.get(name)?.is_some() {
                return Err(KbError::Conflict(format!(
                    "collection `{name}` already exists"
                )));
            }
            t.insert(name, encode_json(name, &record)?.as_slice())?;
        }
        tx.commit()?;
        let idx = CollIndex::new(record, true);
        let info = info_of(name, &idx);
        colls.insert(
            name.to_string(),
            Arc::new(Coll {
                name: name.to_string(),
                gate: Mutex::new(()),
                idx: RwLock::new(idx),
            }),
        );
        Ok(info)
    }

    /// Every collection, by name.
    pub fn list_collections(&self) -> Vec<CollectionInfo> {
        let colls: Vec<Arc<Coll>> = read(&self.inner.colls).values().cloned().collect();
        colls
            .iter()
            .map(|c| info_of(&c.name, &read(&c.idx)))
            .collect()
    }

    pub fn collection(&self, name: &str) -> Result<CollectionInfo, KbError> {
        let c = self.coll(name)?;
        let idx = read(&c.idx);
        Ok(info_of(name, &idx))
    }

    /// Delete a collection and everything in it, in one transaction.
    pub fn delete_collection(&self, name: &str) -> Result<(), KbError> {
        let coll = self.coll(name)?;
        let _gate = self.gate(&coll)?;
        let tx = self.inner.store.begin_write()?;
        {
            let mut t = tx.open_table(COLLECTIONS)?;
            if t.remove(name)?.is_none() {
                return Err(not_found(format!("collection `{name}`")));
            }
        }
        let ids = doc_ids(&tx.open_table(DOC_NAMES)?, name)?;
        for id in &ids {
            delete_doc_rows(&tx, id)?;
        }
        {
            let mut idx = write(&coll.idx);
            tx.commit()?;
            idx.deleted = true;
            // Free the memory now; searches holding the Arc see `deleted`.
            *idx = CollIndex {
                deleted: true,
                ..CollIndex::new(idx.record.clone(), false)
            };
        }
        let mut colls = write(&self.inner.colls);
        // Only this collection: the name may already belong to a new one.
        if colls.get(name).is_some_and(|c| Arc::ptr_eq(c, &coll)) {
            colls.remove(name);
        }
        Ok(())
    }
}
