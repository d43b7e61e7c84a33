//! An in-memory backend for tests: the same semantics as the filesystem backend, kept in
//! maps behind one mutex. Never used in production configs.

use crate::{
    ByteStream, Entry, Key, ObjectDeleter, ObjectLister, ObjectMeta, ObjectReader, ObjectStatter,
    ObjectWriter, Result, Store, StoreError, UploadId, UploadStore,
};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::ops::Range;
use std::time::SystemTime;

#[derive(Default)]
struct State {
    objects: BTreeMap<String, (Bytes, SystemTime)>,
    uploads: BTreeMap<UploadId, (BytesMut, SystemTime)>,
    leases: BTreeMap<String, crate::LeaseRecord>,
}

/// A store that lives in memory and dies with the process.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }
}

fn meta(b: &Bytes, t: SystemTime) -> ObjectMeta {
    ObjectMeta {
        size: b.len() as u64,
        modified: t,
    }
}

#[async_trait]
impl ObjectStatter for MemoryStore {
    async fn stat(&self, key: &Key) -> Result<Option<ObjectMeta>> {
        Ok(self
            .lock()
            .objects
            .get(key.as_str())
            .map(|(b, t)| meta(b, *t)))
    }
}

#[async_trait]
impl ObjectReader for MemoryStore {
    async fn get(&self, key: &Key) -> Result<Option<Bytes>> {
        Ok(self
            .lock()
            .objects
            .get(key.as_str())
            .map(|(b, _)| b.clone()))
    }

    async fn read(&self, key: &Key, range: Range<u64>) -> Result<ByteStream> {
        let bytes = self.get(key).await?.ok_or(StoreError::NotFound)?;
        let size = bytes.len() as u64;
        crate::check_range(&range, size)?;
        Ok(slice_stream(&bytes, range))
    }
}

#[async_trait]
impl ObjectWriter for MemoryStore {
    async fn put(&self, key: &Key, bytes: Bytes) -> Result<()> {
        self.lock()
            .objects
            .insert(key.as_str().to_owned(), (bytes, SystemTime::now()));
        Ok(())
    }

    async fn touch(&self, key: &Key) -> Result<bool> {
        Ok(match self.lock().objects.get_mut(key.as_str()) {
            Some((_, t)) => {
                *t = SystemTime::now();
                true
            }
            None => false,
        })
    }
}

#[async_trait]
impl ObjectDeleter for MemoryStore {
    async fn delete(&self, key: &Key) -> Result<bool> {
        Ok(self.lock().objects.remove(key.as_str()).is_some())
    }
}

#[async_trait]
impl ObjectLister for MemoryStore {
    async fn list(&self, prefix: &Key) -> Result<Vec<Entry>> {
        let p = format!("{}/", prefix.as_str());
        let state = self.lock();
        let mut out: Vec<Entry> = Vec::new();
        for k in state
            .objects
            .range(p.clone()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(&p))
        {
            let rest = &k[p.len()..];
            let entry = match rest.split_once('/') {
                Some((dir, _)) => Entry::Prefix(dir.to_owned()),
                None => Entry::Object(rest.to_owned()),
            };
            if out.last() != Some(&entry) {
                out.push(entry);
            }
        }
        out.sort_by(|a, b| a.name().cmp(b.name()));
        out.dedup();
        Ok(out)
    }

    async fn walk(&self, prefix: &Key) -> Result<crate::Walk> {
        let p = format!("{}/", prefix.as_str());
        // A snapshot: the in-memory store serves tests, whose stores are small.
        let all: Vec<Result<(String, ObjectMeta)>> = self
            .lock()
            .objects
            .range(p.clone()..)
            .take_while(|(k, _)| k.starts_with(&p))
            .map(|(k, (b, t))| Ok((k[p.len()..].to_owned(), meta(b, *t))))
            .collect();
        Ok(futures::stream::iter(all).boxed())
    }
}

#[async_trait]
impl UploadStore for MemoryStore {
    async fn upload_create(&self, id: &UploadId) -> Result<()> {
        self.lock()
            .uploads
            .insert(id.clone(), (BytesMut::new(), SystemTime::now()));
        Ok(())
    }

    async fn upload_stat(&self, id: &UploadId) -> Result<Option<ObjectMeta>> {
        Ok(self.lock().uploads.get(id).map(|(b, t)| ObjectMeta {
            size: b.len() as u64,
            modified: *t,
        }))
    }

    async fn upload_append(&self, id: &UploadId, offset: u64, mut data: ByteStream) -> Result<u64> {
        let current = self
            .upload_stat(id)
            .await?
            .ok_or(StoreError::NotFound)?
            .size;
        if current != offset {
            return Err(StoreError::OffsetMismatch { current });
        }
        // Collect first so a failing stream leaves the upload untouched.
        let mut staged = BytesMut::new();
        while let Some(chunk) = data.next().await {
            staged.extend_from_slice(&chunk?);
        }
        let mut state = self.lock();
        let (buf, t) = state.uploads.get_mut(id).ok_or(StoreError::NotFound)?;
        if buf.len() as u64 != offset {
            return Err(StoreError::OffsetMismatch {
                current: buf.len() as u64,
            });
        }
        buf.extend_from_slice(&staged);
        *t = SystemTime::now();
        Ok(buf.len() as u64)
    }

    async fn upload_read(&self, id: &UploadId, range: Option<Range<u64>>) -> Result<ByteStream> {
        let bytes = self
            .lock()
            .uploads
            .get(id)
            .map(|(b, _)| Bytes::copy_from_slice(b))
            .ok_or(StoreError::NotFound)?;
        let size = bytes.len() as u64;
        let range = range.unwrap_or(0..size);
        crate::check_range(&range, size)?;
        Ok(slice_stream(&bytes, range))
    }

    async fn upload_commit(&self, id: &UploadId, dest: &Key, size: u64) -> Result<()> {
        let mut state = self.lock();
        let current = state.uploads.get(id).ok_or(StoreError::NotFound)?.0.len() as u64;
        if current != size {
            return Err(StoreError::OffsetMismatch { current });
        }
        let (buf, _) = state.uploads.remove(id).ok_or(StoreError::NotFound)?;
        state
            .objects
            .insert(dest.as_str().to_owned(), (buf.freeze(), SystemTime::now()));
        Ok(())
    }

    async fn upload_abort(&self, id: &UploadId) -> Result<bool> {
        Ok(self.lock().uploads.remove(id).is_some())
    }

    async fn upload_list(&self) -> Result<Vec<(UploadId, ObjectMeta)>> {
        Ok(self
            .lock()
            .uploads
            .iter()
            .map(|(id, (b, t))| {
                (
                    id.clone(),
                    ObjectMeta {
                        size: b.len() as u64,
                        modified: *t,
                    },
                )
            })
            .collect())
    }
}

#[async_trait]
impl crate::Leaser for MemoryStore {
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool> {
        let mut st = self.lock();
        if st.leases.get(name).is_some_and(|l| !l.yields_to(holder)) {
            return Ok(false);
        }
        st.leases
            .insert(name.to_owned(), crate::LeaseRecord::new(holder, ttl));
        Ok(true)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        let mut st = self.lock();
        if st.leases.get(name).is_some_and(|l| l.holder == holder) {
            st.leases.remove(name);
        }
        Ok(())
    }
}

impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }
}

/// A one-chunk stream of `range` of `bytes` (already checked).
fn slice_stream(bytes: &Bytes, range: Range<u64>) -> ByteStream {
    let part = bytes.slice(range.start as usize..range.end as usize);
    futures::stream::iter([Ok(part)]).boxed()
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn conformance_memory() {
        crate::conformance::run_all(&super::MemoryStore::new()).await;
    }
}
