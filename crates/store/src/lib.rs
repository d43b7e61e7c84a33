//! Byte-level object storage for berth. It owns keys, bytes, atomic visibility and
//! upload sessions; it never learns what a manifest, a tag or an HTTP request is.
//!
//! The traits are small and role-based (a caller that only stats takes an
//! [`ObjectStatter`]); [`Store`] is the sum every backend implements. Backends:
//! [`fs::FsStore`] (the default), [`s3::S3Store`] (S3-compatible buckets, for several
//! replicas) and [`memory::MemoryStore`] (tests). Every backend runs
//! the same [`conformance`] suite; [`faults::FaultyStore`] wraps any of them to make
//! chosen operations fail in tests.

#[cfg(any(test, feature = "test-support"))]
pub mod conformance;
mod direct;
#[cfg(any(test, feature = "test-support"))]
pub mod faults;
pub mod fs;
mod key;
pub mod mapped;
pub mod memory;
pub mod metered;
pub mod s3;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use std::ops::Range;
use std::time::SystemTime;

pub use key::{Key, KeyError, UploadId};

/// A stream of bytes flowing into or out of a store.
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

/// The objects below a prefix as a walk finds them: (path relative to the prefix, meta).
pub type Walk = BoxStream<'static, Result<(String, ObjectMeta)>>;

/// What can go wrong in a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("upload is at offset {current}, not at the requested offset")]
    OffsetMismatch { current: u64 },
    #[error("range {start}..{end} is outside an object of {size} bytes")]
    InvalidRange { start: u64, end: u64, size: u64 },
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// Did the store refuse for lack of space (ENOSPC, or a quota)? The caller can say
    /// so (507) instead of reporting a fault.
    pub fn is_storage_full(&self) -> bool {
        match self {
            StoreError::Io(e) => {
                matches!(
                    e.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) || matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
            }
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// `InvalidRange` unless `range` lies within an object of `size` bytes.
pub fn check_range(range: &Range<u64>, size: u64) -> Result<()> {
    if range.start > range.end || range.end > size {
        return Err(StoreError::InvalidRange {
            start: range.start,
            end: range.end,
            size,
        });
    }
    Ok(())
}

/// Size and modification time of a stored object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub size: u64,
    pub modified: SystemTime,
}

/// One child of a listed prefix.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Entry {
    /// An object directly under the prefix.
    Object(String),
    /// A deeper prefix (a "directory").
    Prefix(String),
}

impl Entry {
    pub fn name(&self) -> &str {
        match self {
            Entry::Object(n) | Entry::Prefix(n) => n,
        }
    }
}

/// Answers "is it there, and how big is it".
#[async_trait]
pub trait ObjectStatter: Send + Sync {
    /// Size and mtime of the object at `key`, or `None` when it does not exist.
    async fn stat(&self, key: &Key) -> Result<Option<ObjectMeta>>;
}

/// Hands out object bytes.
#[async_trait]
pub trait ObjectReader: Send + Sync {
    /// The whole object, for small objects such as links and manifests; `None` when absent.
    async fn get(&self, key: &Key) -> Result<Option<Bytes>>;
    /// Several small objects (tags, links, manifests, small blobs) at once, in the order
    /// asked, `None` for each one absent: a backend reads them in one go where it can
    /// (fs: one blocking task instead of one per object). The default reads them one by
    /// one.
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            out.push(self.get(k).await?);
        }
        Ok(out)
    }
    /// A stream of the bytes in `range` of the object; `NotFound` when absent,
    /// `InvalidRange` when the range does not fit the object.
    async fn read(&self, key: &Key, range: Range<u64>) -> Result<ByteStream>;
    /// A URL from which anyone holding it may GET the object for `ttl`, where the
    /// backend can hand one out (S3 presigned URLs); `None` otherwise.
    async fn presigned_get(&self, _key: &Key, _ttl: std::time::Duration) -> Result<Option<String>> {
        Ok(None)
    }
}

/// Creates and replaces whole objects atomically.
#[async_trait]
pub trait ObjectWriter: Send + Sync {
    /// Store `bytes` at `key`: readers see the old object or the new one, never a part.
    async fn put(&self, key: &Key, bytes: Bytes) -> Result<()>;
    /// Set the object's modification time to now without changing its bytes; `false`
    /// when it does not exist. Garbage collection reads this time as "last needed".
    async fn touch(&self, key: &Key) -> Result<bool>;
}

/// Removes objects.
#[async_trait]
pub trait ObjectDeleter: Send + Sync {
    /// Delete the object at `key`; `false` when there was nothing to delete.
    async fn delete(&self, key: &Key) -> Result<bool>;
}

/// Lists what lies directly below a prefix.
#[async_trait]
pub trait ObjectLister: Send + Sync {
    /// Children of `prefix`, sorted by name; empty when the prefix does not exist.
    async fn list(&self, prefix: &Key) -> Result<Vec<Entry>>;
    /// Every object at any depth below `prefix`, streamed as (path relative to `prefix`,
    /// meta); empty when the prefix does not exist. For walks over the whole store (gc,
    /// fsck): the backend holds one folder (fs) or one listing page (S3) at a time, so
    /// memory does not grow with the number of objects.
    ///
    /// Order: each folder comes out whole — every object below a folder is yielded
    /// before anything outside it (depth first, or plain key order; both keep this) — so
    /// a caller can group objects by folder without holding the walk. Objects written or
    /// deleted while the walk runs may or may not appear; a meta is a hint to re-check
    /// before acting on it.
    async fn walk(&self, prefix: &Key) -> Result<Walk>;
}

/// The whole of a walk, sorted by path: for small prefixes and tests.
pub async fn walk_sorted(
    store: &dyn ObjectLister,
    prefix: &Key,
) -> Result<Vec<(String, ObjectMeta)>> {
    use futures::TryStreamExt;
    let mut all: Vec<(String, ObjectMeta)> = store.walk(prefix).await?.try_collect().await?;
    all.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(all)
}

/// Upload sessions: bytes appended over several requests, then committed to a key in
/// one atomic step. Until the commit nothing of an upload is visible under any key.
#[async_trait]
pub trait UploadStore: Send + Sync {
    /// Start an empty upload.
    async fn upload_create(&self, id: &UploadId) -> Result<()>;
    /// Bytes received so far and when the upload last changed; `None` when unknown.
    async fn upload_stat(&self, id: &UploadId) -> Result<Option<ObjectMeta>>;
    /// Append `data` at `offset`, which must equal the current size (else
    /// `OffsetMismatch`). All or nothing: if the stream fails, the upload is left at its
    /// previous size. Returns the new size.
    ///
    /// Appends to one upload are serialised by the backend, whichever process sends
    /// them: the offset check and the write happen under one lock (fs: an OS file lock;
    /// S3: a conditional write of the upload's state), so two appends at the same offset
    /// never both succeed, and an upload is append-only (a rollback cuts only the failed
    /// append's own bytes). An append that finds the upload committed or aborted, even
    /// one that began before, fails with `NotFound` and writes nothing.
    async fn upload_append(&self, id: &UploadId, offset: u64, data: ByteStream) -> Result<u64>;
    /// Bytes `range` of what was appended so far (`None`: all of it), to re-hash an
    /// upload whose hash state was lost or to serve a blob while it is still arriving.
    /// `InvalidRange` when the range reaches past what was appended.
    async fn upload_read(&self, id: &UploadId, range: Option<Range<u64>>) -> Result<ByteStream>;
    /// Make the upload's bytes the object at `dest` atomically (and durably, where the
    /// backend is configured so) and forget the upload — only if it holds exactly
    /// `size` bytes (the bytes the caller verified; else `OffsetMismatch`). From the
    /// moment it begins, no append of this upload can change what is published.
    async fn upload_commit(&self, id: &UploadId, dest: &Key, size: u64) -> Result<()>;
    /// Forget an upload and its bytes; `false` when it was unknown.
    async fn upload_abort(&self, id: &UploadId) -> Result<bool>;
    /// Every upload in progress, for garbage collection of abandoned ones.
    async fn upload_list(&self) -> Result<Vec<(UploadId, ObjectMeta)>>;
    /// Store the bytes of `data` as the object at `dest`, all or nothing: the object
    /// appears (replacing any older one) only when the stream ends without an error, and
    /// a stream that fails, or a crash part way, leaves nothing new visible under any
    /// key. Returns the size written. For whole objects whose name is known before their
    /// bytes arrive (a blob pushed with its digest): the caller's stream fails instead of
    /// ending when the bytes turn out wrong.
    ///
    /// The default stages the bytes as an upload and commits it; a backend that can
    /// write the object where it will lie as the bytes arrive (S3: a multipart upload to
    /// `dest`, completed at the end) does that and skips the commit's copy.
    async fn put_stream(&self, dest: &Key, data: ByteStream) -> Result<u64> {
        let id = UploadId::random();
        self.upload_create(&id).await?;
        let written = match self.upload_append(&id, 0, data).await {
            Ok(size) => self.upload_commit(&id, dest, size).await.map(|()| size),
            Err(e) => Err(e),
        };
        if written.is_err() {
            let _ = self.upload_abort(&id).await;
        }
        written
    }
}

/// Time-limited exclusive leases, so that among several processes on one store (replicas,
/// or `berth gc` beside `berth serve`) only one runs a sweep at a time.
#[async_trait]
pub trait Leaser: Send + Sync {
    /// Take lease `name` for `holder` until `ttl` from now, or renew it if `holder` has
    /// it; `false` when another holder's lease has not expired.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool>;
    /// Give up lease `name` if `holder` has it.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<()>;
}

/// A lease as backends record it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct LeaseRecord {
    pub holder: String,
    /// Milliseconds since the Unix epoch when it expires.
    pub until_ms: u64,
}

impl LeaseRecord {
    pub(crate) fn new(holder: &str, ttl: std::time::Duration) -> LeaseRecord {
        LeaseRecord {
            holder: holder.to_owned(),
            until_ms: now_ms().saturating_add(ttl.as_millis() as u64),
        }
    }

    /// May `holder` take this lease over?
    pub(crate) fn yields_to(&self, holder: &str) -> bool {
        self.holder == holder || self.until_ms <= now_ms()
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Everything a backend provides.
pub trait Store:
    ObjectStatter + ObjectReader + ObjectWriter + ObjectDeleter + ObjectLister + UploadStore + Leaser
{
    /// A short name for logs ("fs", "memory").
    fn kind(&self) -> &'static str;

    /// Size and free space of the filesystem holding the store, where that means
    /// something (not for object storage).
    fn space(&self) -> Option<Space> {
        None
    }
}

/// Capacity of the filesystem under a store, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    pub total: u64,
    /// What an unprivileged writer can still use.
    pub available: u64,
}
