//! Blobs: stat, ranged read, delete, cross-repository mount, and upload sessions whose
//! bytes are hashed as they arrive and committed only when the digest matches.

use crate::error::{RegistryError, Result};
use crate::{Registry, layout};
use bytes::Bytes;
use futures::StreamExt;
use oci::{Algorithm, Digest, Hasher, RepoName};
use std::ops::Range;
use std::sync::atomic::Ordering;
use store::{ByteStream, StoreError, UploadId};

/// Chunks queued for the hashing thread; it runs beside the writer so that hashing and
/// writing use both cores, and the bound keeps memory per upload small.
const HASH_QUEUE: usize = 16;

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

impl Registry {
    /// Size of blob `digest` if the repository links it.
    pub async fn stat_blob(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        if self
            .store
            .stat(&layout::blob_link(repo, digest)?)
            .await?
            .is_none()
        {
            return Err(RegistryError::BlobUnknown);
        }
        match self.store.stat(&layout::blob(digest)?).await? {
            Some(m) => Ok(m.size),
            None => Err(RegistryError::BlobUnknown),
        }
    }

    /// Bytes `range` of a blob the repository links (the caller has checked the range
    /// against [`Registry::stat_blob`]).
    pub async fn read_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<BlobRead> {
        let size = self.stat_blob(repo, digest).await?;
        let range = range.unwrap_or(0..size);
        match self.store.read(&layout::blob(digest)?, range).await {
            Ok(body) => Ok(BlobRead { size, body }),
            Err(StoreError::NotFound) => Err(RegistryError::BlobUnknown),
            Err(e) => Err(e.into()),
        }
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
        if self.store.stat(&layout::blob(digest)?).await?.is_none() {
            return Ok(false);
        }
        let source = match from {
            Some(from) => may_read(from) && self.links_blob(from, digest).await?,
            None => self.find_linking_repo(digest, may_read).await?.is_some(),
        };
        if !source {
            return Ok(false);
        }
        self.link_blob(repo, digest).await?;
        Ok(true)
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

    /// The hash state for an upload at `size` bytes: from the cache when it is there and
    /// current, else by re-reading what was stored (after a restart, or on a replica that
    /// did not see the earlier chunks).
    async fn hasher_at(&self, id: &UploadId, size: u64, algorithm: Algorithm) -> Result<Hasher> {
        let cached = self
            .hashers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if let Some((at, h)) = cached
            && at == size
            && h.algorithm() == algorithm
        {
            return Ok(h);
        }
        let mut h = Hasher::new(algorithm);
        let mut s = self.store.upload_read(id).await?;
        while let Some(chunk) = s.next().await {
            h.update(&chunk.map_err(StoreError::from)?);
        }
        Ok(h)
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
        let state = self.upload_status(repo, id).await?;
        if let Some(start) = start
            && start != state.size
        {
            return Err(RegistryError::RangeInvalid {
                current: state.size,
            });
        }
        let hasher = self.hasher_at(id, state.size, Algorithm::Sha256).await?;
        let (size, hasher) = self
            .append_hashed(id, state.size, hasher, len, body)
            .await?;
        self.hashers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), (size, hasher));
        Ok(UploadState { size })
    }

    /// Append while hashing on a separate thread. On failure the store rolls the upload
    /// back, and the hasher state from before is what stays valid (the caller drops the
    /// new one).
    async fn append_hashed(
        &self,
        id: &UploadId,
        offset: u64,
        mut hasher: Hasher,
        len: Option<u64>,
        body: ByteStream,
    ) -> Result<(u64, Hasher)> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(HASH_QUEUE);
        let hashing = tokio::task::spawn_blocking(move || {
            while let Some(chunk) = rx.blocking_recv() {
                hasher.update(&chunk);
            }
            hasher
        });
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = seen.clone();
        let limited = body.then(move |chunk| {
            let tx = tx.clone();
            let counter = counter.clone();
            async move {
                let chunk = chunk?;
                let total =
                    counter.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
                if len.is_some_and(|len| total > len) {
                    return Err(short_or_long("body longer than announced"));
                }
                tx.send(chunk.clone())
                    .await
                    .map_err(|_| std::io::Error::other("hashing stopped"))?;
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
        let limited = limited.chain(end_check);
        let appended = self.store.upload_append(id, offset, limited.boxed()).await;
        let hasher = hashing
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
        let size = match appended {
            Ok(size) => size,
            Err(StoreError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(RegistryError::SizeInvalid);
            }
            Err(StoreError::OffsetMismatch { current }) => {
                return Err(RegistryError::RangeInvalid { current });
            }
            Err(e) => return Err(e.into()),
        };
        Ok((size, hasher))
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
        let mut state = self.upload_status(repo, id).await?;
        let mut hasher = None;
        if let Some((start, len, body)) = last_chunk {
            if let Some(start) = start
                && start != state.size
            {
                return Err(RegistryError::RangeInvalid {
                    current: state.size,
                });
            }
            let h = self.hasher_at(id, state.size, digest.algorithm()).await?;
            let (size, h) = self.append_hashed(id, state.size, h, len, body).await?;
            state.size = size;
            hasher = Some(h);
        }
        let hasher = match hasher {
            Some(h) => h,
            None => self.hasher_at(id, state.size, digest.algorithm()).await?,
        };
        self.hashers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if hasher.finish() != *digest {
            self.discard_upload(repo, id).await?;
            return Err(RegistryError::DigestInvalid);
        }
        self.store.upload_commit(id, &layout::blob(digest)?).await?;
        self.link_blob(repo, digest).await?;
        self.store.delete(&layout::upload(repo, id)?).await?;
        Ok(())
    }

    async fn discard_upload(&self, repo: &RepoName, id: &UploadId) -> Result<()> {
        self.hashers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.store.upload_abort(id).await?;
        self.store.delete(&layout::upload(repo, id)?).await?;
        Ok(())
    }

    /// Cancel an upload and drop its bytes.
    pub async fn cancel_upload(&self, repo: &RepoName, id: &UploadId) -> Result<()> {
        self.check_owner(repo, id).await?;
        self.discard_upload(repo, id).await
    }

    /// A whole blob in one request (POST with `digest`, or a test helper).
    pub async fn put_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        len: Option<u64>,
        body: ByteStream,
    ) -> Result<()> {
        let id = self.start_upload(repo).await?;
        let r = self
            .finish_upload(repo, &id, digest, Some((None, len, body)))
            .await;
        if r.is_err() {
            let _ = self.discard_upload(repo, &id).await;
        }
        r
    }
}

/// The error that marks a body whose length disagrees with what the client announced.
fn short_or_long(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}
