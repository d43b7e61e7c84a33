//! The registry core: repositories, manifests, tags, blob links, uploads and referrers,
//! kept in a [`store::Store`]. It enforces the OCI rules (digests verified before
//! anything is visible, manifests checked against their references, names validated)
//! and keeps small in-memory caches that are never the source of truth.
//!
//! It never sees HTTP: callers hand it validated names, byte streams and options, and
//! map its [`RegistryError`] codes onto responses.

mod blobs;
mod error;
mod hashing;
pub mod layout;
mod listing;
mod manifests;
#[cfg(test)]
mod tests;
mod upload_lock;

pub use blobs::{BlobRead, OpenBlob, UploadState};
pub use error::{RegistryError, Result};
pub use listing::{Page, RepoNames};
pub use manifests::{Manifest, PutManifest, PutOutcome, Stored};

use bytes::Bytes;
use oci::{Algorithm, Digest, RepoName, Tag};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{Store, UploadId};

/// The largest manifest accepted, in bytes. Manifests are held in memory whole; real
/// ones are a few KiB, so 4 MiB (distribution's limit too) only stops abuse.
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

/// How long a tag resolution or manifest lookup may be answered from memory. It bounds
/// how long a change made by another process on the same store (`berth gc`, another
/// replica) can go unseen; changes made through this process invalidate at once.
pub const METADATA_CACHE_TTL: Duration = Duration::from_secs(2);

/// How old a link's or blob's modification time may be before an operation that needs
/// it (HEAD, mount, upload, manifest PUT) renews it. Garbage collection deletes nothing
/// modified within its grace period, so renewing is what protects content a client has
/// just checked; renewing only when older than this keeps reads from turning into
/// writes. Must stay well below the GC grace period (berth sets it to a quarter of it).
pub const DEFAULT_TOUCH_AFTER: Duration = Duration::from_secs(15 * 60);

/// Entries kept in each metadata cache; a manifest entry holds its bytes, so this
/// bounds the cache at a few hundred MiB only for pathological manifests.
const METADATA_CACHE_ENTRIES: usize = 16 * 1024;

/// Options for [`Registry`].
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Largest manifest accepted, in bytes.
    pub max_manifest_bytes: u64,
    /// How long metadata may be served from memory.
    pub cache_ttl: Duration,
    /// Renew the modification time of needed content older than this.
    pub touch_after: Duration,
    /// Largest blob an upload may grow to, in bytes; `None` for no limit.
    pub max_blob_bytes: Option<u64>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            max_manifest_bytes: MAX_MANIFEST_BYTES,
            cache_ttl: METADATA_CACHE_TTL,
            touch_after: DEFAULT_TOUCH_AFTER,
            max_blob_bytes: None,
        }
    }
}

type Timed<T> = (T, Instant);
type TimedCache<K, V> = Arc<quick_cache::sync::Cache<K, Timed<V>>>;

/// A registry on top of a store. Cheap to clone; clones share caches.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
    store_ops: Arc<store::metered::OpCounts>,
    options: RegistryOptions,
    tags: TimedCache<(RepoName, Tag), Digest>,
    manifests: TimedCache<(RepoName, Digest), Arc<Stored>>,
    /// Hashing threads of uploads in progress, by id: a cache, rebuilt from the bytes
    /// when lost.
    hashers: Arc<Mutex<HashMap<UploadId, (Algorithm, hashing::HashWorker)>>>,
    /// Requests of one upload run one at a time in this process.
    upload_locks: Arc<upload_lock::UploadLocks>,
    /// Shared by every operation that makes stored content needed (renewing its
    /// modification time, then linking or referencing it); held exclusively by garbage
    /// collection around each "check the time again, then delete". So in this process a
    /// deletion never falls between an operation's renewal and its use.
    deletion: Arc<tokio::sync::RwLock<()>>,
    /// Tagged pushes, for whoever listens (break-glass exports).
    pushes: tokio::sync::broadcast::Sender<Pushed>,
}

/// A manifest pushed under a tag of a hosted repository.
#[derive(Clone, Debug)]
pub struct Pushed {
    pub repo: RepoName,
    pub tag: Tag,
    pub digest: Digest,
}

/// Push events kept for a slow listener before it starts missing some (it is told how
/// many it missed).
const PUSH_EVENTS: usize = 1024;

impl Registry {
    pub fn new(store: Arc<dyn Store>, options: RegistryOptions) -> Registry {
        // Every operation on the backend is counted (`berth_store_operations_total`).
        let metered = store::metered::Metered::new(store);
        let store_ops = metered.counts();
        Registry {
            store: Arc::new(metered),
            store_ops,
            options,
            tags: Arc::new(quick_cache::sync::Cache::new(METADATA_CACHE_ENTRIES)),
            manifests: Arc::new(quick_cache::sync::Cache::new(METADATA_CACHE_ENTRIES)),
            hashers: Arc::default(),
            upload_locks: Arc::default(),
            deletion: Arc::default(),
            pushes: tokio::sync::broadcast::channel(PUSH_EVENTS).0,
        }
    }

    /// Hear about every tagged manifest push from now on.
    pub fn subscribe_pushes(&self) -> tokio::sync::broadcast::Receiver<Pushed> {
        self.pushes.subscribe()
    }

    /// Exclusive permission to delete content: held by garbage collection while it
    /// re-checks an object's modification time and deletes it (see
    /// [`DEFAULT_TOUCH_AFTER`]). Hold it briefly; every push waits for it.
    pub async fn deletion_permit(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.deletion.clone().write_owned().await
    }

    /// Shared permission to make content needed (see [`Registry::deletion_permit`]).
    async fn use_permit(&self) -> tokio::sync::OwnedRwLockReadGuard<()> {
        self.deletion.clone().read_owned().await
    }

    /// Renew `key`'s modification time if `meta` says it is older than `touch_after`.
    /// `false` when the object is gone. Call with a use permit held.
    async fn renew(&self, key: &store::Key, meta: store::ObjectMeta) -> Result<bool> {
        if !self.needs_renewal(meta) {
            return Ok(true);
        }
        Ok(self.store.touch(key).await?)
    }

    /// Is `meta`'s modification time older than `touch_after`? Content that is not can
    /// not be collected before its next renewal (GC's grace is longer), so reading it
    /// needs no permit.
    fn needs_renewal(&self, meta: store::ObjectMeta) -> bool {
        std::time::SystemTime::now()
            .duration_since(meta.modified)
            .is_ok_and(|age| age >= self.options.touch_after)
    }

    /// Forget cached metadata of a manifest (garbage collection deleted its link).
    pub fn forget_manifest(&self, repo: &RepoName, digest: &Digest) {
        self.manifests.remove(&(repo.clone(), digest.clone()));
    }

    /// The store underneath, for tools that walk it (gc, fsck).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Operations made on the store so far, by kind (requests, jobs and tools alike).
    pub fn store_ops(&self) -> &store::metered::OpCounts {
        &self.store_ops
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.options
    }

    fn fresh<T: Clone>(&self, v: Option<Timed<T>>) -> Option<T> {
        v.filter(|(_, at)| at.elapsed() < self.options.cache_ttl)
            .map(|(v, _)| v)
    }

    async fn put_small(&self, key: &store::Key, bytes: impl Into<Bytes>) -> Result<()> {
        Ok(self.store.put(key, bytes.into()).await?)
    }

    /// Does the repository exist (has any manifest, tag or blob)?
    pub async fn repo_exists(&self, repo: &RepoName) -> Result<bool> {
        let entries = self.store.list(&layout::repo(repo)?).await?;
        Ok(entries.iter().any(
            |e| matches!(e, store::Entry::Prefix(n) if layout::REPO_MARKERS.contains(&n.as_str())),
        ))
    }
}
