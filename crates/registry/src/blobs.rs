//! Blobs: stat, ranged read, delete, cross-repository mount, and upload sessions whose
//! bytes are hashed as they arrive and committed only when the digest matches.

use crate::error::{RegistryError, Result};
use crate::hashing::HashWorker;
use crate::{Registry, layout};
use futures::StreamExt;
use oci::{Algorithm, Digest, Hasher, RepoName};
use std::ops::Range;
use std::sync::atomic::Ordering;
use store::{ByteStream, StoreError, UploadId};

/// An open blob read.
pub struct BlobRead {
    /// Total size of the blob (not of the range).
    pub size: u64,
    pub body: ByteStream,
}

/// Where an upload stands.
#[derive(Clone, Copy, Debug)]
pub struct UploadState {
    /// Bytes received so far.
    pub size: u64,
}

/// A blob a repository links, looked up once: its size, and the way to its bytes. A
/// request takes one and uses it for every answer it gives (size, range, body, redirect),
/// so the store is asked once per request, not once per step.
pub struct OpenBlob {
    /// Total size of the blob.
    pub size: u64,
    key: store::Key,
    store: std::sync::Arc<dyn store::Store>,
}

impl OpenBlob {
    /// Bytes `range` (`None`: all of it); `InvalidRange` when it does not fit.
    pub async fn read(&self, range: Option<Range<u64>>) -> Result<ByteStream> {
        match self
            .store
            .read(&self.key, range.unwrap_or(0..self.size))
            .await
        {
            Ok(body) => Ok(body),
            // Collected since it was opened (only possible past the renewal window).
            Err(StoreError::NotFound) => Err(RegistryError::BlobUnknown),
            Err(e) => Err(e.into()),
        }
    }

    /// A URL the blob can be fetched from directly for `ttl` (S3 presigned); `None`
    /// when the store has none.
    pub async fn presigned(&self, ttl: std::time::Duration) -> Result<Option<String>> {
        Ok(self.store.presigned_get(&self.key, ttl).await?)
    }
}

impl Registry {
    /// Blob `digest` if the repository links it. A blob found here is needed (a client
    /// about to push a manifest that references it checks it this way), so its link and
    /// bytes are renewed against garbage collection: two stats, and a touch only when
    /// the renewal is due.
    pub async fn open_blob(&self, repo: &RepoName, digest: &Digest) -> Result<OpenBlob> {
        let link_key = layout::blob_link(repo, digest)?;
        let Some(link) = self.store.stat(&link_key).await? else {
            return Err(RegistryError::BlobUnknown);
        };
        let blob_key = layout::blob(digest)?;
        let Some(blob) = self.store.stat(&blob_key).await? else {
            return Err(RegistryError::BlobUnknown);
        };
        if self.needs_renewal(link) || self.needs_renewal(blob) {
            let _permit = self.use_permit().await;
            if !self.renew(&link_key, link).await? || !self.renew(&blob_key, blob).await? {
                return Err(RegistryError::BlobUnknown);
            }
        }
        Ok(OpenBlob {
            size: blob.size,
            key: blob_key,
            store: self.store.clone(),
        })
    }

    /// Size of blob `digest` if the repository links it (see [`Registry::open_blob`]).
    pub async fn stat_blob(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        Ok(self.open_blob(repo, digest).await?.size)
    }

    /// Bytes `range` of a blob the repository links.
    pub async fn read_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<BlobRead> {
        let blob = self.open_blob(repo, digest).await?;
        Ok(BlobRead {
            size: blob.size,
            body: blob.read(range).await?,
        })
    }

    /// The bytes of a small blob the repository links (an image's config, for the web
    /// page), without renewing it: a look changes nothing, not even a write time. `None`
    /// when it is not linked, larger than `max` bytes, or its bytes do not hash to
    /// `digest`.
    pub async fn peek_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        max: u64,
    ) -> Result<Option<bytes::Bytes>> {
        if self
            .store
            .stat(&layout::blob_link(repo, digest)?)
            .await?
            .is_none()
        {
            return Ok(None);
        }
        let key = layout::blob(digest)?;
        match self.store.stat(&key).await? {
            Some(meta) if meta.size <= max => {}
            _ => return Ok(None),
        }
        Ok(self
            .store
            .get(&key)
            .await?
            .filter(|b| digest.same_algorithm_of(b) == *digest))
    }

    /// Remove the repository's link to a blob; the bytes go later, by GC.
    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        if self.store.delete(&layout::blob_link(repo, digest)?).await? {
            Ok(())
        } else {
            Err(RegistryError::BlobUnknown)
        }
    }

    /// Link an existing blob into `repo`. With `from`, only if that repository links it;
    /// without (automatic content discovery), only if some repository accepted by
    /// `may_read` links it — never bytes that no repository holds any more, which are
    /// waiting for garbage collection. `false` when it could not be mounted (the caller
    /// then starts an ordinary upload).
    pub async fn mount_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: Option<&RepoName>,
        may_read: &(dyn Fn(&RepoName) -> bool + Send + Sync),
    ) -> Result<bool> {
        let blob_key = layout::blob(digest)?;
        if self.store.stat(&blob_key).await?.is_none() {
            return Ok(false);
        }
        let source = match from {
            Some(from) => may_read(from) && self.links_blob(from, digest).await?,
            None => self.find_linking_repo(digest, may_read).await?.is_some(),
        };
        if !source {
            return Ok(false);
        }
        let _permit = self.use_permit().await;
        // Re-checked under the permit: the bytes may have been collected meanwhile.
        let Some(blob) = self.store.stat(&blob_key).await? else {
            return Ok(false);
        };
        if !self.renew(&blob_key, blob).await? {
            return Ok(false);
        }
        self.link_blob(repo, digest).await?;
        Ok(true)
    }

    /// Restore `repo`'s link to blob `digest` when its bytes are stored (fsck repair of a
    /// lost link). `false` when the bytes are gone too.
    pub async fn relink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let _permit = self.use_permit().await;
        let key = layout::blob(digest)?;
        match self.store.stat(&key).await? {
            Some(meta) if self.renew(&key, meta).await? => {
                self.link_blob(repo, digest).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn links_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        Ok(self
            .store
            .stat(&layout::blob_link(repo, digest)?)
            .await?
            .is_some())
    }

    /// A repository accepted by `may_read` that links `digest`, if any.
    async fn find_linking_repo(
        &self,
        digest: &Digest,
        may_read: &(dyn Fn(&RepoName) -> bool + Send + Sync),
    ) -> Result<Option<RepoName>> {
        for r in self.all_repositories().await? {
            if may_read(&r) && self.links_blob(&r, digest).await? {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    async fn link_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        self.put_small(&layout::blob_link(repo, digest)?, digest.to_string())
            .await
    }

    /// Start an upload session in `repo`.
    pub async fn start_upload(&self, repo: &RepoName) -> Result<UploadId> {
        let id = UploadId::random();
        self.store.upload_create(&id).await?;
        self.put_small(&layout::upload(repo, &id)?, repo.to_string())
            .await?;
        Ok(id)
    }

    async fn check_owner(&self, repo: &RepoName, id: &UploadId) -> Result<()> {
        if self.store.stat(&layout::upload(repo, id)?).await?.is_none() {
            return Err(RegistryError::BlobUploadUnknown);
        }
        Ok(())
    }

    /// Where an upload stands.
    pub async fn upload_status(&self, repo: &RepoName, id: &UploadId) -> Result<UploadState> {
        self.check_owner(repo, id).await?;
        let meta = self
            .store
            .upload_stat(id)
            .await?
            .ok_or(RegistryError::BlobUploadUnknown)?;
        Ok(UploadState { size: meta.size })
    }

    /// A hashing worker for an upload at `size` bytes: the running one when it is there
    /// and current, else a new one seeded by re-reading what was stored (after a restart,
    /// on a replica that did not see the earlier chunks, or after a failed append).
    async fn worker_at(
        &self,
        id: &UploadId,
        size: u64,
        algorithm: Algorithm,
    ) -> Result<HashWorker> {
        let cached = self.hashers.lock().remove(id);
        if let Some((current, w)) = cached
            && w.usable_at(size, algorithm, current)
        {
            return Ok(w);
        }
        let mut h = Hasher::new(algorithm);
        let mut s = self
            .store
            .upload_read(id, None)
            .await
            .map_err(upload_error)?;
        let mut seen = 0u64;
        while let Some(chunk) = s.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                // Its bytes vanished under the read: committed or cancelled by another
                // replica meanwhile, so the upload is over; anything else is a fault.
                Err(e) => {
                    return Err(match self.store.upload_stat(id).await {
                        Ok(None) => RegistryError::BlobUploadUnknown,
                        _ => StoreError::from(e).into(),
                    });
                }
            };
            seen += chunk.len() as u64;
            h.update(&chunk);
        }
        if seen != size {
            // The upload moved while we read it (a concurrent request); let the client retry.
            return Err(RegistryError::RangeInvalid { current: seen });
        }
        Ok(HashWorker::start(h, size))
    }

    fn keep_worker(&self, id: &UploadId, algorithm: Algorithm, worker: HashWorker) {
        self.hashers.lock().insert(id.clone(), (algorithm, worker));
    }

    /// Append `body` to an upload. `start` is the offset the client says it writes at
    /// (from Content-Range); `len` the length it announced. A mismatch is refused with
    /// `RangeInvalid` and the upload is unchanged.
    pub async fn append_upload(
        &self,
        repo: &RepoName,
        id: &UploadId,
        start: Option<u64>,
        len: Option<u64>,
        body: ByteStream,
    ) -> Result<UploadState> {
        // Checked, appended and hashed under the upload's lock: a request racing this
        // one waits, then finds the offset moved (416) or the upload gone.
        let _turn = self.upload_locks.lock(id).await;
        let state = self.upload_status(repo, id).await?;
        if let Some(start) = start
            && start != state.size
        {
            return Err(RegistryError::RangeInvalid {
                current: state.size,
            });
        }
        let worker = self.worker_at(id, state.size, Algorithm::Sha256).await?;
        let worker = self
            .append_hashed(id, state.size, worker, len, body)
            .await?;
        let size = worker.offset;
        self.keep_worker(id, Algorithm::Sha256, worker);
        Ok(UploadState { size })
    }

    /// Append while the upload's hashing thread hashes the same chunks. On failure the
    /// store rolls the upload back and the worker, which saw bytes that are gone, is
    /// dropped; the next request rebuilds the state from the stored bytes.
    async fn append_hashed(
        &self,
        id: &UploadId,
        offset: u64,
        mut worker: HashWorker,
        len: Option<u64>,
        body: ByteStream,
    ) -> Result<HashWorker> {
        let limited = self.checked_body(offset, len, Some(worker.feeder()), body)?;
        match self.store.upload_append(id, offset, limited).await {
            Ok(size) => {
                worker.offset = size;
                Ok(worker)
            }
            Err(StoreError::Io(e)) => Err(self.body_error(e)),
            Err(e) => Err(upload_error(e)),
        }
    }

    /// `body`, written at `offset` of a blob, with each chunk fed to a hashing worker
    /// through `hash` (if any) as it passes, and failing (so the store keeps none of it) when it runs longer or shorter
    /// than the `len` announced or past the largest blob allowed; see
    /// [`Registry::body_error`] for what each failure tells the client.
    fn checked_body(
        &self,
        offset: u64,
        len: Option<u64>,
        hash: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
        body: ByteStream,
    ) -> Result<ByteStream> {
        let max = self.options.max_blob_bytes;
        if let (Some(max), Some(len)) = (max, len)
            && offset.saturating_add(len) > max
        {
            return Err(RegistryError::BlobTooLarge { limit: max });
        }
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = seen.clone();
        let limited = body.then(move |chunk| {
            let tx = hash.clone();
            let counter = counter.clone();
            async move {
                let chunk = chunk?;
                let total =
                    counter.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
                if len.is_some_and(|len| total > len) {
                    return Err(short_or_long("body longer than announced"));
                }
                if max.is_some_and(|max| offset.saturating_add(total) > max) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::FileTooLarge,
                        "blob too large",
                    ));
                }
                if let Some(tx) = tx {
                    tx.send(chunk.clone())
                        .await
                        .map_err(|_| std::io::Error::other("hashing stopped"))?;
                }
                Ok(chunk)
            }
        });
        // A body shorter than announced fails at its end, so the store rolls it back.
        let end_check = futures::stream::once(async move {
            match len {
                Some(len) if seen.load(Ordering::Relaxed) != len => {
                    Some(Err(short_or_long("body shorter than announced")))
                }
                _ => None,
            }
        })
        .filter_map(futures::future::ready);
        Ok(limited.chain(end_check).boxed())
    }

    /// What a body's failure (from [`Registry::checked_body`] or the client's
    /// connection) tells the client.
    fn body_error(&self, e: std::io::Error) -> RegistryError {
        match e.kind() {
            std::io::ErrorKind::InvalidData => RegistryError::SizeInvalid,
            std::io::ErrorKind::FileTooLarge => RegistryError::BlobTooLarge {
                limit: self.options.max_blob_bytes.unwrap_or(u64::MAX),
            },
            // The client stopped sending (hung up, or went silent past the
            // server's timeout): its bytes are rolled back, nothing is wrong here.
            std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::UnexpectedEof => RegistryError::BodyInterrupted(e),
            _ => RegistryError::Storage(StoreError::Io(e)),
        }
    }

    /// A whole blob whose digest is known before its bytes (POST `?digest=`, or the
    /// closing PUT of an upload that received nothing before it, as containerd and
    /// buildkit push): written where it will lie as it arrives, with no upload staged and
    /// no commit copy (S3: one multipart upload to the blob's key). The body's last chunk
    /// is held back until the whole has hashed to `digest`; bytes that do not, or a body
    /// cut off, fail the store's write, so nothing is published. A blob already stored
    /// is not written again: the body is hashed and dropped, and the blob is linked only
    /// once the client has shown it holds those bytes.
    pub async fn put_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        len: Option<u64>,
        body: ByteStream,
    ) -> Result<()> {
        let key = layout::blob(digest)?;
        let worker = HashWorker::start(Hasher::new(digest.algorithm()), 0);
        let checked = self.checked_body(0, len, Some(worker.feeder()), body)?;
        let mismatch = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let verified = verified(checked, worker, digest.clone(), mismatch.clone());
        let written = if self.store.stat(&key).await?.is_some() {
            drain(verified).await.map_err(StoreError::Io)
        } else {
            self.store.put_stream(&key, verified).await.map(drop)
        };
        match written {
            Ok(()) => {}
            Err(_) if mismatch.load(Ordering::Relaxed) => return Err(RegistryError::DigestInvalid),
            Err(StoreError::Io(e)) => return Err(self.body_error(e)),
            Err(e) => return Err(e.into()),
        }
        let _permit = self.use_permit().await;
        // Fresh bytes are young enough that no collection takes them; a blob that was
        // already there gets its time renewed, and if a collection took it in between,
        // the client is told to push again rather than handed a link to nothing.
        if !self.store.touch(&key).await? {
            return Err(RegistryError::BlobUploadInvalid(
                "the blob was collected while it was being pushed; push it again".into(),
            ));
        }
        self.link_blob(repo, digest).await
    }

    /// Finish an upload: append the optional last chunk, verify the digest, make the blob
    /// visible and link it into the repository. On a digest mismatch the upload is
    /// discarded and nothing becomes visible.
    pub async fn finish_upload(
        &self,
        repo: &RepoName,
        id: &UploadId,
        digest: &Digest,
        last_chunk: Option<(Option<u64>, Option<u64>, ByteStream)>,
    ) -> Result<()> {
        let _turn = self.upload_locks.lock(id).await;
        let state = self.upload_status(repo, id).await?;
        if state.size == 0
            && let Some((None | Some(0), len, body)) = last_chunk
        {
            // The whole blob in this request: written in place, and the empty session
            // dropped once it is in (kept, still empty, for a retry if it fails).
            let r = self.put_blob(repo, digest, len, body).await;
            if matches!(r, Ok(()) | Err(RegistryError::DigestInvalid)) {
                self.discard_upload(repo, id).await?;
            }
            return r;
        }
        let algorithm = digest.algorithm();
        let mut worker = self.worker_at(id, state.size, algorithm).await?;
        if let Some((start, len, body)) = last_chunk {
            if let Some(start) = start
                && start != state.size
            {
                self.keep_worker(id, algorithm, worker);
                return Err(RegistryError::RangeInvalid {
                    current: state.size,
                });
            }
            worker = self
                .append_hashed(id, state.size, worker, len, body)
                .await?;
        }
        let size = worker.offset;
        let hasher = match worker.finish().await {
            Some(h) => h,
            // The thread gave up between requests: hash the stored bytes once more.
            None => match self.worker_at(id, size, algorithm).await?.finish().await {
                Some(h) => h,
                None => return Err(RegistryError::BlobUploadInvalid("hashing failed".into())),
            },
        };
        if hasher.finish() != *digest {
            self.discard_upload(repo, id).await?;
            return Err(RegistryError::DigestInvalid);
        }
        self.publish_upload(repo, id, digest, size).await
    }

    /// Make a verified upload of `size` bytes the blob `digest`, link it, and end the
    /// session.
    async fn publish_upload(
        &self,
        repo: &RepoName,
        id: &UploadId,
        digest: &Digest,
        size: u64,
    ) -> Result<()> {
        {
            let _permit = self.use_permit().await;
            let blob_key = layout::blob(digest)?;
            // Conditional on the size just verified: if another process appended in
            // between, nothing is published and the client is told where it stands.
            self.store
                .upload_commit(id, &blob_key, size)
                .await
                .map_err(upload_error)?;
            // The upload's bytes carry the time of its last append, which may be long ago.
            self.store.touch(&blob_key).await?;
            self.link_blob(repo, digest).await?;
        }
        self.store.delete(&layout::upload(repo, id)?).await?;
        Ok(())
    }

    /// Append `body` at `start` without hashing it: for a caller that hashes the very
    /// bytes it hands over as they pass, and publishes with
    /// [`Registry::finish_prehashed_upload`] — the cache's fill, which hashes each byte
    /// once as it arrives from the upstream instead of twice. Checked like
    /// [`Registry::append_upload`] otherwise.
    pub async fn append_unhashed(
        &self,
        repo: &RepoName,
        id: &UploadId,
        start: u64,
        len: Option<u64>,
        body: ByteStream,
    ) -> Result<UploadState> {
        let _turn = self.upload_locks.lock(id).await;
        let state = self.upload_status(repo, id).await?;
        if start != state.size {
            return Err(RegistryError::RangeInvalid {
                current: state.size,
            });
        }
        // A running hash of earlier appends no longer covers the upload.
        self.hashers.lock().remove(id);
        let limited = self.checked_body(start, len, None, body)?;
        match self.store.upload_append(id, start, limited).await {
            Ok(size) => Ok(UploadState { size }),
            Err(StoreError::Io(e)) => Err(self.body_error(e)),
            Err(e) => Err(upload_error(e)),
        }
    }

    /// Publish an upload whose `size` bytes the caller appended with
    /// [`Registry::append_unhashed`], hashing each as it passed, and found to be
    /// `digest`. The registry takes that hash on trust, so only code that saw every byte
    /// it appended may call this; it checks the size, so an upload that moved meanwhile
    /// (another writer) is refused and nothing is published.
    pub async fn finish_prehashed_upload(
        &self,
        repo: &RepoName,
        id: &UploadId,
        digest: &Digest,
        size: u64,
    ) -> Result<()> {
        let _turn = self.upload_locks.lock(id).await;
        let state = self.upload_status(repo, id).await?;
        if state.size != size {
            return Err(RegistryError::RangeInvalid {
                current: state.size,
            });
        }
        self.publish_upload(repo, id, digest, size).await
    }

    async fn discard_upload(&self, repo: &RepoName, id: &UploadId) -> Result<()> {
        self.hashers.lock().remove(id);
        self.store.upload_abort(id).await?;
        self.store.delete(&layout::upload(repo, id)?).await?;
        Ok(())
    }

    /// Bytes `range` of an upload in progress in `repo` (a cache serves a blob this way
    /// while it is still arriving from upstream).
    pub async fn read_upload(
        &self,
        repo: &RepoName,
        id: &UploadId,
        range: Range<u64>,
    ) -> Result<ByteStream> {
        self.check_owner(repo, id).await?;
        match self.store.upload_read(id, Some(range)).await {
            Err(StoreError::NotFound) => Err(RegistryError::BlobUploadUnknown),
            r => Ok(r?),
        }
    }

    /// Cancel an upload and drop its bytes.
    pub async fn cancel_upload(&self, repo: &RepoName, id: &UploadId) -> Result<()> {
        let _turn = self.upload_locks.lock(id).await;
        self.check_owner(repo, id).await?;
        self.discard_upload(repo, id).await
    }
}

/// `body` with its last chunk held back until `worker`, which every chunk was fed to,
/// has hashed the whole to `digest`: a store writing it sees the stream fail instead of
/// end when the bytes are wrong (and `mismatch` is set), so it publishes nothing.
fn verified(
    body: ByteStream,
    worker: HashWorker,
    digest: Digest,
    mismatch: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> ByteStream {
    struct Verifying {
        body: ByteStream,
        held: Option<bytes::Bytes>,
        worker: Option<HashWorker>,
        digest: Digest,
        mismatch: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }
    let start = Verifying {
        body,
        held: None,
        worker: Some(worker),
        digest,
        mismatch,
    };
    futures::stream::unfold(Some(start), |st| async move {
        let mut st = st?;
        loop {
            match st.body.next().await {
                Some(Ok(chunk)) => {
                    if let Some(ready) = st.held.replace(chunk) {
                        return Some((Ok(ready), Some(st)));
                    }
                }
                Some(Err(e)) => return Some((Err(e), None)),
                None => {
                    let hashed = match st.worker.take() {
                        Some(w) => w.finish().await.map(|h| h.finish()),
                        None => None,
                    };
                    if hashed.as_ref() != Some(&st.digest) {
                        st.mismatch.store(true, Ordering::Relaxed);
                        let e = std::io::Error::other("the bytes do not match the digest");
                        return Some((Err(e), None));
                    }
                    return st.held.take().map(|last| (Ok(last), None));
                }
            }
        }
    })
    .boxed()
}

/// Read `body` to its end, keeping nothing.
async fn drain(mut body: ByteStream) -> std::io::Result<()> {
    while let Some(chunk) = body.next().await {
        chunk?;
    }
    Ok(())
}

/// What a store error on an upload session means for its client: the upload moved on
/// (`RangeInvalid` with where it is now), or it is over — committed or cancelled,
/// perhaps by another replica (`BlobUploadUnknown`); anything else is a storage fault.
fn upload_error(e: StoreError) -> RegistryError {
    match e {
        StoreError::OffsetMismatch { current } => RegistryError::RangeInvalid { current },
        StoreError::NotFound => RegistryError::BlobUploadUnknown,
        e => e.into(),
    }
}

/// The error that marks a body whose length disagrees with what the client announced.
fn short_or_long(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RegistryOptions;
    use futures::StreamExt;
    use std::sync::Arc;

    fn body(b: &'static [u8]) -> ByteStream {
        futures::stream::iter([Ok(bytes::Bytes::from_static(b))]).boxed()
    }

    async fn read_all(r: &Registry, repo: &RepoName, d: &Digest) -> Vec<u8> {
        let mut read = r.read_blob(repo, d, None).await.unwrap();
        let mut out = Vec::new();
        while let Some(c) = read.body.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_upload_continues_on_a_registry_that_never_saw_its_start() {
        let store: Arc<dyn store::Store> = Arc::new(store::memory::MemoryStore::new());
        let a = Registry::new(store.clone(), RegistryOptions::default());
        let b = Registry::new(store, RegistryOptions::default());
        let repo: RepoName = "r".parse().unwrap();
        let id = a.start_upload(&repo).await.unwrap();
        a.append_upload(&repo, &id, Some(0), Some(6), body(b"first "))
            .await
            .unwrap();
        // b has no hash state for this upload: it rebuilds it from the stored bytes
        b.append_upload(&repo, &id, Some(6), Some(6), body(b"second"))
            .await
            .unwrap();
        let d = Digest::sha256_of(b"first second");
        // a's cached state is stale (offset 6): it must notice and rebuild too
        a.finish_upload(&repo, &id, &d, None).await.unwrap();
        assert_eq!(read_all(&b, &repo, &d).await, b"first second");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn requests_of_one_upload_are_serialised_and_a_commit_ends_it() {
        let r = Registry::new(
            Arc::new(store::memory::MemoryStore::new()),
            RegistryOptions::default(),
        );
        let repo: RepoName = "r".parse().unwrap();
        let id = r.start_upload(&repo).await.unwrap();
        let (started, gate) = (
            Arc::new(tokio::sync::Notify::new()),
            Arc::new(tokio::sync::Notify::new()),
        );
        // A is mid-body when B (same range) and a commit of A's bytes arrive.
        let a = r.append_upload(
            &repo,
            &id,
            Some(0),
            Some(8),
            store::conformance::gated(b"aaaa", b"AAAA", started.clone(), gate.clone()),
        );
        let others = async {
            started.notified().await;
            let b = r.append_upload(&repo, &id, Some(0), Some(8), body(b"bbbbbbbb"));
            let d = Digest::sha256_of(b"aaaaAAAA");
            let commit = r.finish_upload(&repo, &id, &d, None);
            let open = async {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                gate.notify_one();
            };
            let (b, c, ()) = futures::join!(b, commit, open);
            (b, c)
        };
        let (a, (b, c)) = futures::join!(a, others);
        assert_eq!(a.unwrap().size, 8, "the first request wins");
        assert!(
            matches!(b, Err(RegistryError::RangeInvalid { current: 8 })),
            "the second PATCH of the range waits, then finds the offset moved"
        );
        c.unwrap();
        assert_eq!(
            read_all(&r, &repo, &Digest::sha256_of(b"aaaaAAAA")).await,
            b"aaaaAAAA"
        );
        // The upload is over for every later request.
        assert!(matches!(
            r.append_upload(&repo, &id, Some(8), Some(1), body(b"x"))
                .await,
            Err(RegistryError::BlobUploadUnknown)
        ));
        assert!(r.upload_locks.len() == 0, "no lock outlives its requests");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn sha512_and_wrong_digests() {
        let r = Registry::new(
            Arc::new(store::memory::MemoryStore::new()),
            RegistryOptions::default(),
        );
        let repo: RepoName = "r".parse().unwrap();
        let mut h = oci::Hasher::new(Algorithm::Sha512);
        h.update(b"payload");
        let d = h.finish();
        r.put_blob(&repo, &d, Some(7), body(b"payload"))
            .await
            .unwrap();
        assert_eq!(read_all(&r, &repo, &d).await, b"payload");

        let wrong = Digest::sha256_of(b"something else");
        let id = r.start_upload(&repo).await.unwrap();
        r.append_upload(&repo, &id, None, None, body(b"payload!"))
            .await
            .unwrap();
        assert!(matches!(
            r.finish_upload(&repo, &id, &wrong, None).await,
            Err(RegistryError::DigestInvalid)
        ));
        assert!(matches!(
            r.stat_blob(&repo, &wrong).await,
            Err(RegistryError::BlobUnknown)
        ));
        assert!(matches!(
            r.upload_status(&repo, &id).await,
            Err(RegistryError::BlobUploadUnknown)
        ));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_body_shorter_or_longer_than_announced_changes_nothing() {
        let r = Registry::new(
            Arc::new(store::memory::MemoryStore::new()),
            RegistryOptions::default(),
        );
        let repo: RepoName = "r".parse().unwrap();
        let id = r.start_upload(&repo).await.unwrap();
        r.append_upload(&repo, &id, None, None, body(b"keep"))
            .await
            .unwrap();
        for (len, b) in [(10, &b"short"[..]), (2, &b"long!"[..])] {
            let res = r
                .append_upload(
                    &repo,
                    &id,
                    Some(4),
                    Some(len),
                    futures::stream::iter([Ok(bytes::Bytes::from_static(b))]).boxed(),
                )
                .await;
            assert!(matches!(res, Err(RegistryError::SizeInvalid)), "{len}");
            assert_eq!(r.upload_status(&repo, &id).await.unwrap().size, 4);
        }
        let d = Digest::sha256_of(b"keep");
        r.finish_upload(&repo, &id, &d, None).await.unwrap();
    }
}
