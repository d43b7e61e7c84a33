//! A fault-injecting wrapper for tests: any backend, with chosen operations failing the
//! way real disks and buckets fail (no space, I/O errors, a write cut short, a slow
//! write). Tests arm a fault for the n-th matching call, run a request, and check that
//! nothing partial became visible and that the next request after the fault works.
//! Never used in production configurations.

use crate::{
    ByteStream, Entry, Key, Leaser, ObjectDeleter, ObjectLister, ObjectMeta, ObjectReader,
    ObjectStatter, ObjectWriter, Result, Space, Store, StoreError, UploadId, UploadStore,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// The store operations a fault can be armed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Put,
    Touch,
    Delete,
    UploadCreate,
    UploadAppend,
    UploadCommit,
    UploadAbort,
}

/// How an armed operation fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// ENOSPC before anything is written.
    NoSpace,
    /// EIO before anything is written.
    Io,
    /// For appends: half of the body reaches the backend, then EIO (the backend's
    /// all-or-nothing rollback must undo the half). Other operations fail as `Io`.
    ShortWrite,
    /// The operation succeeds after this delay.
    Slow(Duration),
}

#[derive(Clone, Debug)]
struct Armed {
    op: Op,
    /// Only keys (or, for uploads, destination keys) starting with this.
    prefix: Option<String>,
    /// Matching calls to let through before failing.
    skip: u32,
    fault: Fault,
}

/// A store whose operations fail on demand.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    armed: Mutex<Vec<Armed>>,
    /// Calls made per operation, matching or not, for tests that count steps.
    calls: Mutex<std::collections::HashMap<Op, u32>>,
}

fn no_space() -> StoreError {
    StoreError::Io(std::io::Error::from_raw_os_error(libc::ENOSPC))
}

fn eio() -> StoreError {
    StoreError::Io(std::io::Error::from_raw_os_error(libc::EIO))
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn Store>) -> FaultyStore {
        FaultyStore {
            inner,
            armed: Mutex::default(),
            calls: Mutex::default(),
        }
    }

    /// Make the matching call after `skip` others fail with `fault` (once).
    pub fn arm(&self, op: Op, prefix: Option<&str>, skip: u32, fault: Fault) {
        self.armed.lock().push(Armed {
            op,
            prefix: prefix.map(str::to_owned),
            skip,
            fault,
        });
    }

    /// Disarm every fault not yet fired.
    pub fn clear(&self) {
        self.armed.lock().clear();
    }

    /// Faults armed but not yet fired.
    pub fn pending(&self) -> usize {
        self.armed.lock().len()
    }

    /// Calls of `op` so far.
    pub fn calls(&self, op: Op) -> u32 {
        *self.calls.lock().get(&op).unwrap_or(&0)
    }

    /// The fault this call of `op` on `key` meets, if one fires now.
    fn fire(&self, op: Op, key: &str) -> Option<Fault> {
        *self.calls.lock().entry(op).or_default() += 1;
        let mut armed = self.armed.lock();
        let i = armed
            .iter()
            .position(|a| a.op == op && a.prefix.as_deref().is_none_or(|p| key.starts_with(p)))?;
        if armed[i].skip > 0 {
            armed[i].skip -= 1;
            return None;
        }
        Some(armed.remove(i).fault)
    }

    /// Apply a fault that fails or delays the call before it reaches the backend.
    async fn before(&self, op: Op, key: &str) -> Result<Option<Fault>> {
        match self.fire(op, key) {
            None => Ok(None),
            Some(Fault::NoSpace) => Err(no_space()),
            Some(Fault::Io) => Err(eio()),
            Some(Fault::Slow(d)) => {
                tokio::time::sleep(d).await;
                Ok(None)
            }
            Some(Fault::ShortWrite) if op == Op::UploadAppend => Ok(Some(Fault::ShortWrite)),
            Some(Fault::ShortWrite) => Err(eio()),
        }
    }
}

#[async_trait]
impl ObjectStatter for FaultyStore {
    async fn stat(&self, key: &Key) -> Result<Option<ObjectMeta>> {
        self.inner.stat(key).await
    }
}

#[async_trait]
impl ObjectReader for FaultyStore {
    async fn get(&self, key: &Key) -> Result<Option<Bytes>> {
        self.inner.get(key).await
    }

    async fn read(&self, key: &Key, range: Range<u64>) -> Result<ByteStream> {
        self.inner.read(key, range).await
    }

    async fn presigned_get(&self, key: &Key, ttl: Duration) -> Result<Option<String>> {
        self.inner.presigned_get(key, ttl).await
    }
}

#[async_trait]
impl ObjectWriter for FaultyStore {
    async fn put(&self, key: &Key, bytes: Bytes) -> Result<()> {
        self.before(Op::Put, key.as_str()).await?;
        self.inner.put(key, bytes).await
    }

    async fn touch(&self, key: &Key) -> Result<bool> {
        self.before(Op::Touch, key.as_str()).await?;
        self.inner.touch(key).await
    }
}

#[async_trait]
impl ObjectDeleter for FaultyStore {
    async fn delete(&self, key: &Key) -> Result<bool> {
        self.before(Op::Delete, key.as_str()).await?;
        self.inner.delete(key).await
    }
}

#[async_trait]
impl ObjectLister for FaultyStore {
    async fn list(&self, prefix: &Key) -> Result<Vec<Entry>> {
        self.inner.list(prefix).await
    }

    async fn walk(&self, prefix: &Key) -> Result<crate::Walk> {
        self.inner.walk(prefix).await
    }
}

/// `data` cut after `keep` bytes, ending in EIO: a write that stopped part way.
fn cut_short(data: ByteStream, keep: u64) -> ByteStream {
    futures::stream::unfold(
        (data, 0u64, false),
        move |(mut data, sent, done)| async move {
            if done {
                return None;
            }
            match data.next().await {
                Some(Ok(chunk)) if sent + chunk.len() as u64 >= keep => {
                    let part = chunk.slice(..(keep - sent) as usize);
                    if part.is_empty() {
                        Some((
                            Err(std::io::Error::from_raw_os_error(libc::EIO)),
                            (data, sent, true),
                        ))
                    } else {
                        Some((Ok(part), (data, keep, false)))
                    }
                }
                Some(Ok(chunk)) => {
                    let n = chunk.len() as u64;
                    Some((Ok(chunk), (data, sent + n, false)))
                }
                Some(Err(e)) => Some((Err(e), (data, sent, true))),
                None => Some((
                    Err(std::io::Error::from_raw_os_error(libc::EIO)),
                    (data, sent, true),
                )),
            }
        },
    )
    .boxed()
}

#[async_trait]
impl UploadStore for FaultyStore {
    async fn upload_create(&self, id: &UploadId) -> Result<()> {
        self.before(Op::UploadCreate, id.as_str()).await?;
        self.inner.upload_create(id).await
    }

    async fn upload_stat(&self, id: &UploadId) -> Result<Option<ObjectMeta>> {
        self.inner.upload_stat(id).await
    }

    async fn upload_append(&self, id: &UploadId, offset: u64, data: ByteStream) -> Result<u64> {
        match self.before(Op::UploadAppend, id.as_str()).await? {
            Some(Fault::ShortWrite) => {
                // Half of a typical chunk: the backend sees some bytes, then the error.
                let r = self
                    .inner
                    .upload_append(id, offset, cut_short(data, 4096))
                    .await;
                match r {
                    Ok(_) => Err(StoreError::Io(std::io::Error::other(
                        "backend accepted a body that ended in an error",
                    ))),
                    Err(e) => Err(e),
                }
            }
            _ => self.inner.upload_append(id, offset, data).await,
        }
    }

    async fn upload_read(&self, id: &UploadId, range: Option<Range<u64>>) -> Result<ByteStream> {
        self.inner.upload_read(id, range).await
    }

    async fn upload_commit(&self, id: &UploadId, dest: &Key, size: u64) -> Result<()> {
        self.before(Op::UploadCommit, dest.as_str()).await?;
        self.inner.upload_commit(id, dest, size).await
    }

    async fn upload_abort(&self, id: &UploadId) -> Result<bool> {
        self.before(Op::UploadAbort, id.as_str()).await?;
        self.inner.upload_abort(id).await
    }

    async fn upload_list(&self) -> Result<Vec<(UploadId, ObjectMeta)>> {
        self.inner.upload_list().await
    }

    // `put_stream` is not forwarded: the trait's default runs it through this wrapper's
    // own upload calls, so faults armed on appends and commits reach it too.
}

#[async_trait]
impl Leaser for FaultyStore {
    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        self.inner.acquire_lease(name, holder, ttl).await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        self.inner.release_lease(name, holder).await
    }
}

impl Store for FaultyStore {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn space(&self) -> Option<Space> {
        self.inner.space()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn armed_faults_fire_once_on_the_matching_call_and_the_wrapper_conforms() {
        let s = FaultyStore::new(Arc::new(crate::memory::MemoryStore::new()));
        let k = Key::new("a/b").unwrap();
        s.arm(Op::Put, Some("a/"), 1, Fault::NoSpace);
        s.put(&k, Bytes::from_static(b"1")).await.unwrap();
        let e = s.put(&k, Bytes::from_static(b"2")).await.unwrap_err();
        assert!(e.is_storage_full());
        s.put(&k, Bytes::from_static(b"3")).await.unwrap();
        assert_eq!(s.calls(Op::Put), 3);
        assert_eq!(s.pending(), 0);

        let id = UploadId::random();
        s.upload_create(&id).await.unwrap();
        s.arm(Op::UploadAppend, None, 0, Fault::ShortWrite);
        let body = futures::stream::iter(vec![Ok(Bytes::from(vec![7u8; 10_000]))]).boxed();
        assert!(s.upload_append(&id, 0, body).await.is_err());
        assert_eq!(s.upload_stat(&id).await.unwrap().unwrap().size, 0);
        // Unarmed, it is just the backend.
        crate::conformance::run_all(&FaultyStore::new(Arc::new(
            crate::memory::MemoryStore::new(),
        )))
        .await;
    }
}
