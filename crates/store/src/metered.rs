//! Counting every store operation by kind: a wrapper over any backend that forwards each
//! call unchanged and adds one to its operation's counter. The registry wraps its store
//! in it, so `/metrics` shows what requests and jobs cost the backend (on S3 each
//! operation is a round trip) and the benchmark reports operations per request. It never
//! changes, delays or reorders a call.

use crate::{
    ByteStream, Entry, Key, Leaser, ObjectDeleter, ObjectLister, ObjectMeta, ObjectReader,
    ObjectStatter, ObjectWriter, Result, Space, Store, UploadId, UploadStore,
};
use async_trait::async_trait;
use bytes::Bytes;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The operations counted, one per trait method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Stat,
    Get,
    Read,
    Presign,
    Put,
    Touch,
    Delete,
    List,
    Walk,
    UploadCreate,
    UploadStat,
    UploadAppend,
    UploadRead,
    UploadCommit,
    UploadAbort,
    UploadList,
    PutStream,
    Lease,
}

impl Op {
    /// Every operation, in the order metrics list them.
    pub const ALL: [Op; 18] = [
        Op::Stat,
        Op::Get,
        Op::Read,
        Op::Presign,
        Op::Put,
        Op::Touch,
        Op::Delete,
        Op::List,
        Op::Walk,
        Op::UploadCreate,
        Op::UploadStat,
        Op::UploadAppend,
        Op::UploadRead,
        Op::UploadCommit,
        Op::UploadAbort,
        Op::UploadList,
        Op::PutStream,
        Op::Lease,
    ];

    /// The label value in metrics (`stat`, `upload_append`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Op::Stat => "stat",
            Op::Get => "get",
            Op::Read => "read",
            Op::Presign => "presign",
            Op::Put => "put",
            Op::Touch => "touch",
            Op::Delete => "delete",
            Op::List => "list",
            Op::Walk => "walk",
            Op::UploadCreate => "upload_create",
            Op::UploadStat => "upload_stat",
            Op::UploadAppend => "upload_append",
            Op::UploadRead => "upload_read",
            Op::UploadCommit => "upload_commit",
            Op::UploadAbort => "upload_abort",
            Op::UploadList => "upload_list",
            Op::PutStream => "put_stream",
            Op::Lease => "lease",
        }
    }
}

/// Calls made so far, per operation.
#[derive(Default, Debug)]
pub struct OpCounts([AtomicU64; Op::ALL.len()]);

impl OpCounts {
    fn add(&self, op: Op) {
        self.0[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Calls of `op` so far.
    pub fn get(&self, op: Op) -> u64 {
        self.0[op as usize].load(Ordering::Relaxed)
    }

    /// Calls of every operation so far.
    pub fn total(&self) -> u64 {
        Op::ALL.iter().map(|op| self.get(*op)).sum()
    }
}

/// A store whose every call is counted.
pub struct Metered {
    inner: Arc<dyn Store>,
    counts: Arc<OpCounts>,
}

impl Metered {
    pub fn new(inner: Arc<dyn Store>) -> Metered {
        Metered {
            inner,
            counts: Arc::default(),
        }
    }

    /// The counters (shared: they outlive clones of the handle).
    pub fn counts(&self) -> Arc<OpCounts> {
        self.counts.clone()
    }

    fn count(&self, op: Op) -> &dyn Store {
        self.counts.add(op);
        self.inner.as_ref()
    }
}

#[async_trait]
impl ObjectStatter for Metered {
    async fn stat(&self, key: &Key) -> Result<Option<ObjectMeta>> {
        self.count(Op::Stat).stat(key).await
    }
}

#[async_trait]
impl ObjectReader for Metered {
    async fn get(&self, key: &Key) -> Result<Option<Bytes>> {
        self.count(Op::Get).get(key).await
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>> {
        for _ in keys {
            self.counts.add(Op::Get);
        }
        self.inner.get_many(keys).await
    }

    async fn read(&self, key: &Key, range: Range<u64>) -> Result<ByteStream> {
        self.count(Op::Read).read(key, range).await
    }

    async fn presigned_get(&self, key: &Key, ttl: Duration) -> Result<Option<String>> {
        self.count(Op::Presign).presigned_get(key, ttl).await
    }
}

#[async_trait]
impl ObjectWriter for Metered {
    async fn put(&self, key: &Key, bytes: Bytes) -> Result<()> {
        self.count(Op::Put).put(key, bytes).await
    }

    async fn touch(&self, key: &Key) -> Result<bool> {
        self.count(Op::Touch).touch(key).await
    }
}

#[async_trait]
impl ObjectDeleter for Metered {
    async fn delete(&self, key: &Key) -> Result<bool> {
        self.count(Op::Delete).delete(key).await
    }
}

#[async_trait]
impl ObjectLister for Metered {
    async fn list(&self, prefix: &Key) -> Result<Vec<Entry>> {
        self.count(Op::List).list(prefix).await
    }

    async fn walk(&self, prefix: &Key) -> Result<crate::Walk> {
        self.count(Op::Walk).walk(prefix).await
    }
}

#[async_trait]
impl UploadStore for Metered {
    async fn upload_create(&self, id: &UploadId) -> Result<()> {
        self.count(Op::UploadCreate).upload_create(id).await
    }

    async fn upload_stat(&self, id: &UploadId) -> Result<Option<ObjectMeta>> {
        self.count(Op::UploadStat).upload_stat(id).await
    }

    async fn upload_append(&self, id: &UploadId, offset: u64, data: ByteStream) -> Result<u64> {
        self.count(Op::UploadAppend)
            .upload_append(id, offset, data)
            .await
    }

    async fn upload_read(&self, id: &UploadId, range: Option<Range<u64>>) -> Result<ByteStream> {
        self.count(Op::UploadRead).upload_read(id, range).await
    }

    async fn upload_commit(&self, id: &UploadId, dest: &Key, size: u64) -> Result<()> {
        self.count(Op::UploadCommit)
            .upload_commit(id, dest, size)
            .await
    }

    async fn upload_abort(&self, id: &UploadId) -> Result<bool> {
        self.count(Op::UploadAbort).upload_abort(id).await
    }

    async fn upload_list(&self) -> Result<Vec<(UploadId, ObjectMeta)>> {
        self.count(Op::UploadList).upload_list().await
    }

    async fn put_stream(&self, dest: &Key, data: ByteStream) -> Result<u64> {
        // Forwarded whole: the backend's own way of writing in place is the point.
        self.count(Op::PutStream).put_stream(dest, data).await
    }
}

#[async_trait]
impl Leaser for Metered {
    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        self.count(Op::Lease).acquire_lease(name, holder, ttl).await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        self.count(Op::Lease).release_lease(name, holder).await
    }
}

impl Store for Metered {
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
    async fn every_call_is_counted_and_forwarded() {
        let m = Metered::new(Arc::new(crate::memory::MemoryStore::new()));
        let counts = m.counts();
        let key = Key::new("a/b").unwrap();
        assert_eq!(m.stat(&key).await.unwrap(), None);
        m.put(&key, Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(
            m.get(&key).await.unwrap().unwrap(),
            Bytes::from_static(b"x")
        );
        assert_eq!(m.kind(), "memory");
        assert_eq!(
            (
                counts.get(Op::Stat),
                counts.get(Op::Put),
                counts.get(Op::Get)
            ),
            (1, 1, 1)
        );
        assert_eq!(counts.total(), 3);
    }
}
