//! Filling one blob from upstream: a single background task per digest downloads it,
//! hands each arriving segment to every client in memory and, beside that, appends it to
//! an upload session. A client that falls behind the bytes kept in memory reads them
//! back from the upload instead. The download is hashed as it arrives: clients get the
//! last byte once the whole body hashes to the digest (not only after the store's commit
//! and its fsync), and the upload is committed (and so the blob visible) only when the
//! store's own hash agrees; a truncated, oversized or mismatched body is discarded and
//! every reader's stream ends in an error so its client retries.

use crate::CachedUpstream;
use bytes::Bytes;
use futures::StreamExt;
use oci::{Digest, RepoName};
use parking_lot::Mutex;
use registry::Registry;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use store::{ByteStream, UploadId};
use tokio::sync::watch;

/// Bytes of upstream chunks gathered into one segment, when they arrive together (a
/// segment may end a little past it). Upstream chunks (often 16 KiB) are gathered into
/// one buffer, so every client gets few large writes instead of many small
/// ones, at the cost of one copy shared by all of them.
const SEGMENT: usize = 1024 * 1024;
/// Segments downloaded but not yet appended to the store. The download runs this far
/// ahead of a slow disk before it stops reading from the upstream.
const UNWRITTEN_SEGMENTS: usize = 32;
/// Most bytes appended to the store in one step. Segments already downloaded are
/// appended together.
const FILL_BATCH: usize = 8 * 1024 * 1024;
/// Bytes gathered before one append while the download keeps coming. An append costs
/// several thread hops (the session check, opening and locking the upload, its writer
/// thread) whatever its size, so appending each segment as it comes from a fast
/// upstream spent more in those hops than in the write. Clients never wait for it: they
/// are sent the segments from memory.
const FILL_BATCH_MIN: usize = 4 * 1024 * 1024;
/// How long the store waits for more segments before appending fewer than
/// [`FILL_BATCH_MIN`] bytes: a slow upstream's bytes still reach the disk promptly.
const FILL_BATCH_WAIT: std::time::Duration = std::time::Duration::from_millis(10);
/// Segments handed to the hashing thread and not yet hashed: enough that the download
/// never waits for a hash that is briefly descheduled, few enough (they are shared with
/// the segments kept for readers, not copies) to add little memory.
const HASH_QUEUE: usize = 8;
/// Bytes already stored that are still kept in memory for clients a little behind the
/// download (and for those that join).
const KEEP_WRITTEN: u64 = 8 * 1024 * 1024;
/// How far behind the download a following client may be and still be served from
/// memory: what it has not read yet stays kept, stored or not, within this distance.
/// A client further behind reads from the upload. Without it, a client slower than
/// the store (a single client pulling from a fast upstream, usually) fell past
/// [`KEEP_WRITTEN`] early and read nearly the whole blob back from the page cache: a
/// copy, a thread hop per chunk and fresh buffers, on the critical path. With the
/// unwritten segments (at most [`UNWRITTEN_SEGMENTS`] plus one [`FILL_BATCH`] being
/// appended) and [`KEEP_WRITTEN`], a fill's memory stays about 48 MiB however many
/// clients follow it.
const KEEP_FOR_READERS: u64 = 40 * 1024 * 1024;
/// Chunks a reader prepares ahead of its client.
const READER_QUEUE: usize = 4;

/// Fills are per cached repository and digest: a client joins only a download for the
/// repository it asked for, so it never receives bytes its upstream did not give for
/// that name (nor bytes of a repository it may not pull).
pub(crate) type FillKey = (RepoName, Digest);

/// A blob as clients stream it.
pub type BlobStream = ByteStream;

#[derive(Clone, Debug)]
pub(crate) enum Progress {
    Starting,
    Running {
        id: UploadId,
        /// Bytes appended to the upload so far.
        written: u64,
        /// Bytes downloaded so far (in the upload or in [`Segments`]).
        available: u64,
        total: Option<u64>,
        /// The whole body has come and hashes to the digest: readers may have its last
        /// byte now, while the store is still writing and committing it.
        verified: bool,
    },
    Done {
        size: u64,
    },
    Failed(Arc<FillError>),
}

/// Why a fill failed, as every reader of it learns.
#[derive(Debug, thiserror::Error)]
pub enum FillError {
    /// The upstream does not have the blob.
    #[error("not found upstream")]
    NotFound,
    #[error("{0}")]
    Upstream(#[source] distribution::ClientError),
    #[error("{0}")]
    Store(#[source] registry::RegistryError),
    /// The bytes verified as they came, but could not be published (the upload moved
    /// under another writer, or the store failed the commit): nothing was stored.
    #[error("upstream blob rejected: {0}")]
    Rejected(#[source] registry::RegistryError),
    #[error("upstream body: {0}")]
    Body(#[source] std::io::Error),
    #[error("upstream sent more bytes than it announced")]
    Overlong,
    #[error("upstream body ended after {got} of {announced} bytes")]
    Truncated { got: u64, announced: u64 },
    /// The whole body came and does not hash to the digest: nothing was stored.
    #[error("the upstream's bytes do not match the digest")]
    Mismatch,
    #[error("the store stopped taking the blob")]
    StoreStopped,
    /// The thread hashing the download went away (it panicked).
    #[error("hashing the download stopped")]
    HashStopped,
    /// Reading back what the fill stored failed.
    #[error("reading the stored bytes: {0}")]
    Read(#[source] std::io::Error),
    /// The fill's task went away without a word (it panicked or was cancelled).
    #[error("fill task ended")]
    Ended,
}

/// Everything a fill task needs.
pub(crate) struct FillJob {
    pub registry: Registry,
    pub upstream: Arc<CachedUpstream>,
    pub upstream_repo: RepoName,
    pub repo: RepoName,
    pub digest: Digest,
    pub fills: Arc<Mutex<HashMap<FillKey, Arc<Fill>>>>,
    /// The upstream gate's leave for this download, held until it ends.
    pub pass: crate::gate::Pass,
}

impl FillError {
    /// When the upstream answered the download with 429: the wait its `Retry-After`
    /// asked for, if any.
    pub fn rate_limited(&self) -> Option<Option<std::time::Duration>> {
        match self {
            FillError::Upstream(distribution::ClientError::RateLimited { retry_after }) => {
                Some(*retry_after)
            }
            _ => None,
        }
    }
}

/// One blob download in progress.
pub(crate) struct Fill {
    repo: RepoName,
    digest: Digest,
    progress: watch::Receiver<Progress>,
    segments: Arc<Mutex<Segments>>,
}

/// The latest downloaded segments, by their offset in the blob: every segment not yet
/// appended to the upload, and up to [`KEEP_WRITTEN`] bytes of those that are.
#[derive(Default)]
pub(crate) struct Segments {
    list: std::collections::VecDeque<(u64, Bytes)>,
    /// Where each client following the fill stands, by [`Follower`] id.
    readers: HashMap<u64, u64>,
    next_reader: u64,
}

impl Segments {
    fn push(&mut self, start: u64, bytes: Bytes) {
        self.list.push_back((start, bytes));
    }

    /// The end of the last segment held: how far the download has come (trimming
    /// always keeps the last one).
    fn end(&self) -> u64 {
        self.list
            .back()
            .map_or(0, |(start, b)| start + b.len() as u64)
    }

    /// A new client follows the fill from its start.
    fn join(&mut self) -> u64 {
        let id = self.next_reader;
        self.next_reader += 1;
        self.readers.insert(id, 0);
        id
    }

    /// Client `id` has been sent everything before `pos`.
    fn reached(&mut self, id: u64, pos: u64) {
        if let Some(p) = self.readers.get_mut(&id) {
            *p = pos;
        }
    }

    fn leave(&mut self, id: u64) {
        self.readers.remove(&id);
    }

    /// Forget segments that lie wholly more than [`KEEP_WRITTEN`] behind `written` and
    /// that no client still needs, keeping none wholly more than [`KEEP_FOR_READERS`]
    /// behind the download unless it is unwritten.
    fn trim(&mut self, written: u64) {
        let mut keep_from = written.saturating_sub(KEEP_WRITTEN);
        if let Some(&slowest) = self.readers.values().min() {
            keep_from = keep_from.min(slowest.max(self.end().saturating_sub(KEEP_FOR_READERS)));
        }
        while let Some((start, b)) = self.list.front() {
            if start + b.len() as u64 > keep_from {
                break;
            }
            self.list.pop_front();
        }
    }

    /// The bytes from `pos` to the end of the segment holding it, but not past `end`;
    /// `None` when `pos` is not in memory any more (or not yet).
    fn get(&self, pos: u64, end: u64) -> Option<Bytes> {
        let i = self.list.partition_point(|(start, _)| *start <= pos);
        let (start, bytes) = self.list.get(i.checked_sub(1)?)?;
        let from = (pos - start) as usize;
        let to = (end - start).min(bytes.len() as u64) as usize;
        (from < to).then(|| bytes.slice(from..to))
    }
}

fn lock(segments: &Mutex<Segments>) -> parking_lot::MutexGuard<'_, Segments> {
    segments.lock()
}

impl Fill {
    /// Start the download task.
    pub fn start(job: FillJob) -> Arc<Fill> {
        let (tx, rx) = watch::channel(Progress::Starting);
        let segments = Arc::new(Mutex::new(Segments::default()));
        let fill = Arc::new(Fill {
            repo: job.repo.clone(),
            digest: job.digest.clone(),
            progress: rx,
            segments: segments.clone(),
        });
        tokio::spawn(async move {
            let outcome = run(&job, &tx, &segments).await;
            lock(&segments).list.clear();
            // Forget the fill before announcing the end: a request arriving later finds
            // the blob in the store (or starts afresh after a failure).
            job.fills
                .lock()
                .remove(&(job.repo.clone(), job.digest.clone()));
            match outcome {
                Ok(size) => {
                    let _ = tx.send(Progress::Done { size });
                }
                Err(e) => {
                    if !matches!(e, FillError::NotFound) {
                        job.upstream.stats.upstream_errors.inc();
                    }
                    tracing::warn!(upstream = %job.upstream.name, digest = %job.digest, error = %e, "blob fill failed");
                    let _ = tx.send(Progress::Failed(Arc::new(e)));
                }
            }
        });
        fill
    }

    pub fn reader(&self, registry: Registry, my_repo: RepoName) -> FillReader {
        FillReader {
            registry,
            fill_repo: self.repo.clone(),
            my_repo,
            digest: self.digest.clone(),
            progress: self.progress.clone(),
            follower: Follower::join(self.segments.clone()),
        }
    }
}

/// A client's place among the fill's [`Segments`]: kept while the client reads, so
/// trimming keeps what it has not been sent yet; dropped with the reader.
struct Follower {
    segments: Arc<Mutex<Segments>>,
    id: u64,
}

impl Follower {
    fn join(segments: Arc<Mutex<Segments>>) -> Follower {
        let id = lock(&segments).join();
        Follower { segments, id }
    }

    /// The bytes from `pos` the segments hold, up to `end` (see [`Segments::get`]),
    /// noting that this client has reached `pos`.
    fn get(&self, pos: u64, end: u64) -> Option<Bytes> {
        let mut segments = lock(&self.segments);
        segments.reached(self.id, pos);
        segments.get(pos, end)
    }

    fn reached(&self, pos: u64) {
        lock(&self.segments).reached(self.id, pos);
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        lock(&self.segments).leave(self.id);
    }
}

async fn run(
    job: &FillJob,
    tx: &watch::Sender<Progress>,
    segments: &Mutex<Segments>,
) -> Result<u64, FillError> {
    let up = &job.upstream;
    // A fill of this repository that finished between the caller's look in the store
    // and its look in the map of fills leaves the blob linked here: use it instead of
    // fetching it again. (Bytes linked only elsewhere are never taken: the caller has
    // already asked the upstream about those.)
    match job.registry.stat_blob(&job.repo, &job.digest).await {
        Ok(size) => return Ok(size),
        Err(registry::RegistryError::BlobUnknown) => {}
        Err(e) => return Err(FillError::Store(e)),
    }
    up.stats.upstream_blob_gets.inc();
    let answer = crate::timed(
        &up.stats.upstream_latency,
        up.client.get_blob(job.upstream_repo.as_str(), &job.digest),
    )
    .await;
    // An error answer counts now; a good one only once the whole body has come.
    if answer.is_err() {
        up.gate.record(&job.pass, &answer);
    }
    let fetch = answer.map_err(|e| match e {
        distribution::ClientError::NotFound => FillError::NotFound,
        e => FillError::Upstream(e),
    })?;
    let id = job
        .registry
        .start_upload(&job.repo)
        .await
        .map_err(FillError::Store)?;
    let total = fetch.size;
    let _ = tx.send(Progress::Running {
        id: id.clone(),
        written: 0,
        available: 0,
        total,
        verified: false,
    });
    let started = std::time::Instant::now();
    let result = download(job, &id, total, fetch.body, tx, segments).await;
    match result {
        Ok((written, mut times)) => {
            let commit = std::time::Instant::now();
            let finished = job
                .registry
                .finish_prehashed_upload(&job.repo, &id, &job.digest, written)
                .await;
            times.commit = commit.elapsed();
            match finished {
                Ok(()) => {
                    up.gate.record_success(&job.pass);
                    up.stats.fetched_bytes.add(written);
                    tracing::info!(
                        upstream = %up.name,
                        digest = %job.digest,
                        bytes = written,
                        seconds = started.elapsed().as_secs_f64(),
                        upstream_read_s = times.upstream_read.as_secs_f64(),
                        hash_s = times.hash.as_secs_f64(),
                        store_write_s = times.store_write.as_secs_f64(),
                        commit_s = times.commit.as_secs_f64(),
                        segments = times.segments,
                        appends = times.appends,
                        "blob fetched from upstream"
                    );
                    Ok(written)
                }
                // The bytes verified as they came; the store failed to publish them.
                Err(e) => {
                    up.gate.record_success(&job.pass);
                    let _ = job.registry.cancel_upload(&job.repo, &id).await;
                    Err(FillError::Rejected(e))
                }
            }
        }
        Err(e) => {
            // The upstream answered, with the wrong bytes.
            if matches!(e, FillError::Mismatch) {
                up.gate.record_success(&job.pass);
            }
            if matches!(
                e,
                FillError::Body(_) | FillError::Truncated { .. } | FillError::Overlong
            ) {
                let why = match &e {
                    FillError::Overlong => "sent more bytes than it announced",
                    FillError::Truncated { .. } => "the body ended early",
                    _ => "the body broke off",
                };
                up.gate.record_outage(&job.pass, why);
            }
            let _ = job.registry.cancel_upload(&job.repo, &id).await;
            Err(e)
        }
    }
}

/// Where a fill's time went, for its log line. The download's parts overlap (the store
/// writes while the upstream sends), so they need not add up to the whole.
#[derive(Clone, Copy, Debug, Default)]
struct FillTimes {
    /// Waiting for the upstream's next bytes.
    upstream_read: std::time::Duration,
    /// Hashing what arrived (on the hashing thread, beside the read; readers get the last
    /// byte once it is done).
    hash: std::time::Duration,
    /// Appending to the store's upload (beside the download).
    store_write: std::time::Duration,
    /// Verifying and committing the upload once every byte is written.
    commit: std::time::Duration,
    /// Segments the download was gathered into.
    segments: u64,
    /// Appends to the store's upload they took.
    appends: u64,
}

/// Download the body into memory segments (for the readers) and, beside that, append
/// them to the upload; the bytes stored, once the body has ended at its announced size,
/// and where the time went.
async fn download(
    job: &FillJob,
    id: &UploadId,
    total: Option<u64>,
    mut body: ByteStream,
    tx: &watch::Sender<Progress>,
    segments: &Mutex<Segments>,
) -> Result<(u64, FillTimes), FillError> {
    let (unwritten_tx, mut unwritten) = tokio::sync::mpsc::channel::<Bytes>(UNWRITTEN_SEGMENTS);
    let want = job.digest.clone();
    // Hashed as it arrives, on a thread of its own beside the download, so reading the
    // upstream never waits for the hash (nor the hash for the network); readers get the
    // last byte as soon as the body has come and verified, not after the store's commit.
    let (hash_tx, mut hash_rx) = tokio::sync::mpsc::channel::<Bytes>(HASH_QUEUE);
    let algorithm = want.algorithm();
    let hashing = tokio::task::spawn_blocking(move || {
        let mut hasher = oci::Hasher::new(algorithm);
        let mut busy = std::time::Duration::ZERO;
        while let Some(segment) = hash_rx.blocking_recv() {
            let at = std::time::Instant::now();
            hasher.update(&segment);
            busy += at.elapsed();
        }
        (hasher.finish(), busy)
    });
    let receive = async move {
        let mut available = 0u64;
        let mut times = FillTimes::default();
        loop {
            let waited = std::time::Instant::now();
            let Some(segment) = next_segment(&mut body).await? else {
                break;
            };
            times.upstream_read += waited.elapsed();
            times.segments += 1;
            let len = segment.len() as u64;
            if total.is_some_and(|t| available + len > t) {
                return Err(FillError::Overlong);
            }
            if hash_tx.send(segment.clone()).await.is_err() {
                return Err(FillError::HashStopped);
            }
            lock(segments).push(available, segment.clone());
            available += len;
            tx.send_modify(|p| {
                if let Progress::Running { available: a, .. } = p {
                    *a = available;
                }
            });
            if unwritten_tx.send(segment).await.is_err() {
                return Err(FillError::StoreStopped);
            }
        }
        if let Some(t) = total
            && available != t
        {
            return Err(FillError::Truncated {
                got: available,
                announced: t,
            });
        }
        drop(hash_tx);
        let (digest, busy) = hashing.await.map_err(|_| FillError::HashStopped)?;
        times.hash = busy;
        if digest != want {
            return Err(FillError::Mismatch);
        }
        tx.send_modify(|p| {
            if let Progress::Running { verified, .. } = p {
                *verified = true;
            }
        });
        Ok((available, times))
    };
    let store = async {
        let mut written = 0u64;
        let mut store_write = std::time::Duration::ZERO;
        let mut appends = 0u64;
        while let Some(first) = unwritten.recv().await {
            let mut len = first.len();
            let mut batch = vec![first];
            while len < FILL_BATCH {
                let next = match unwritten.try_recv() {
                    Ok(c) => Some(c),
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) if len < FILL_BATCH_MIN => {
                        tokio::time::timeout(FILL_BATCH_WAIT, unwritten.recv())
                            .await
                            .ok()
                            .flatten()
                    }
                    Err(_) => None,
                };
                let Some(c) = next else { break };
                len += c.len();
                batch.push(c);
            }
            let body = futures::stream::iter(batch.into_iter().map(Ok)).boxed();
            let appending = std::time::Instant::now();
            let state = job
                .registry
                .append_unhashed(&job.repo, id, written, Some(len as u64), body)
                .await
                .map_err(FillError::Store)?;
            store_write += appending.elapsed();
            appends += 1;
            written = state.size;
            lock(segments).trim(written);
            tx.send_modify(|p| {
                if let Progress::Running { written: w, .. } = p {
                    *w = written;
                }
            });
        }
        Ok((written, store_write, appends))
    };
    let ((received, mut times), (written, store_write, appends)) =
        tokio::try_join!(receive, store)?;
    debug_assert_eq!(received, written);
    times.store_write = store_write;
    times.appends = appends;
    Ok((written, times))
}

/// The next segment of `body`: what arrives at once, gathered up to [`SEGMENT`] bytes.
/// It does not wait for more once something is there, so the first bytes reach clients
/// as soon as the upstream sends them. The segment is allocated to fit, so a slow
/// upstream's small segments hold no more memory than their bytes.
async fn next_segment(body: &mut ByteStream) -> Result<Option<Bytes>, FillError> {
    let first = match body.next().await {
        None => return Ok(None),
        Some(c) => c.map_err(FillError::Body)?,
    };
    let mut len = first.len();
    let mut chunks = vec![first];
    while len < SEGMENT {
        match futures::FutureExt::now_or_never(body.next()) {
            Some(Some(c)) => {
                let c = c.map_err(FillError::Body)?;
                len += c.len();
                chunks.push(c);
            }
            Some(None) | None => break,
        }
    }
    if chunks.len() == 1 {
        return Ok(chunks.pop());
    }
    let mut segment = bytes::BytesMut::with_capacity(len);
    for c in &chunks {
        segment.extend_from_slice(c);
    }
    Ok(Some(segment.freeze()))
}

/// A client's view of a fill.
pub struct FillReader {
    registry: Registry,
    fill_repo: RepoName,
    my_repo: RepoName,
    digest: Digest,
    progress: watch::Receiver<Progress>,
    follower: Follower,
}

/// How a fill began, as a reader sees it.
pub enum Started {
    /// Bytes are coming; the size if the upstream announced it.
    Streaming(Option<u64>),
    /// The upstream does not have the blob.
    NotFound,
    /// The fill failed.
    Failed(Arc<FillError>),
}

impl FillReader {
    /// Wait until the upstream has answered.
    pub async fn started(&mut self) -> Started {
        loop {
            let p = self.progress.borrow_and_update().clone();
            match p {
                Progress::Starting => {
                    if self.progress.changed().await.is_err() {
                        return Started::Failed(Arc::new(FillError::Ended));
                    }
                }
                Progress::Running { total, .. } => return Started::Streaming(total),
                Progress::Done { size } => return Started::Streaming(Some(size)),
                Progress::Failed(e) if matches!(*e, FillError::NotFound) => {
                    return Started::NotFound;
                }
                Progress::Failed(e) => return Started::Failed(e),
            }
        }
    }

    /// Wait for the whole blob to be stored and linked into the reader's repository;
    /// its size, or why it failed.
    pub async fn finished(mut self) -> Result<u64, Arc<FillError>> {
        loop {
            let p = self.progress.borrow_and_update().clone();
            match p {
                Progress::Done { size } => {
                    self.link().await.map_err(Arc::new)?;
                    return Ok(size);
                }
                Progress::Failed(e) => return Err(e),
                _ => {
                    if self.progress.changed().await.is_err() {
                        return Err(Arc::new(FillError::Ended));
                    }
                }
            }
        }
    }

    async fn link(&self) -> Result<(), FillError> {
        if self.my_repo != self.fill_repo {
            self.registry
                .mount_blob(&self.my_repo, &self.digest, Some(&self.fill_repo), &|_| {
                    true
                })
                .await
                .map_err(FillError::Store)?;
        }
        Ok(())
    }

    /// Stream the blob from the start as it is stored. The stream ends in an error if the
    /// fill fails, so the client sees a broken download, never wrong bytes.
    pub fn stream(self) -> BlobStream {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(READER_QUEUE);
        tokio::spawn(async move {
            if let Err(e) = self.follow(&tx).await {
                let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
            }
        });
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    }

    async fn forward(
        &self,
        s: ByteStream,
        pos: &mut u64,
        tx: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    ) -> Result<bool, Arc<FillError>> {
        let mut s = s;
        while let Some(c) = s.next().await {
            let c = c.map_err(|e| Arc::new(FillError::Read(e)))?;
            *pos += c.len() as u64;
            self.follower.reached(*pos);
            if tx.send(Ok(c)).await.is_err() {
                return Ok(false); // the client went away; the fill goes on without it
            }
        }
        Ok(true)
    }

    async fn follow(
        mut self,
        tx: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    ) -> Result<(), Arc<FillError>> {
        let mut pos = 0u64;
        loop {
            let p = self.progress.borrow_and_update().clone();
            match p {
                // The last byte is held back until the digest is verified: a client must
                // never receive a complete body that turns out to be wrong.
                Progress::Running {
                    id,
                    written,
                    available,
                    total,
                    verified,
                } if reader_limit(available, total, verified) > pos => {
                    let end = reader_limit(available, total, verified);
                    // From memory while the bytes are there, else from the upload.
                    let kept = self.follower.get(pos, end);
                    if let Some(bytes) = kept {
                        pos += bytes.len() as u64;
                        if tx.send(Ok(bytes)).await.is_err() {
                            return Ok(()); // the client went away; the fill goes on
                        }
                        continue;
                    }
                    let range: Range<u64> = pos..end.min(written);
                    if range.is_empty() {
                        // Neither kept nor stored: the segments were cleared because the
                        // fill is ending; wait for the news.
                        if self.progress.changed().await.is_err() {
                            return Err(Arc::new(FillError::Ended));
                        }
                        continue;
                    }
                    match self.registry.read_upload(&self.fill_repo, &id, range).await {
                        Ok(s) => {
                            if !self.forward(s, &mut pos, tx).await? {
                                return Ok(());
                            }
                        }
                        // Committed (renamed) meanwhile: wait for the news.
                        Err(_) => {
                            if self.progress.changed().await.is_err() {
                                return Err(Arc::new(FillError::Ended));
                            }
                        }
                    }
                }
                // All of it sent and verified: the client is done, whether or not the
                // store has committed yet. A reader for another repository still links
                // the blob there once it is stored.
                Progress::Running {
                    verified: true,
                    available,
                    ..
                } if pos >= available => {
                    if self.my_repo != self.fill_repo {
                        tokio::spawn(async move {
                            let _ = self.finished().await;
                        });
                    }
                    return Ok(());
                }
                Progress::Starting | Progress::Running { .. } => {
                    if self.progress.changed().await.is_err() {
                        return Err(Arc::new(FillError::Ended));
                    }
                }
                Progress::Done { size } => {
                    self.link().await.map_err(Arc::new)?;
                    if pos < size {
                        let read = self
                            .registry
                            .read_blob(&self.my_repo, &self.digest, Some(pos..size))
                            .await
                            .map_err(|e| Arc::new(FillError::Store(e)))?;
                        self.forward(read.body, &mut pos, tx).await?;
                    }
                    return Ok(());
                }
                Progress::Failed(e) => return Err(e),
            }
        }
    }
}

/// How far a reader may go while a fill with `available` of `total` bytes is running:
/// all of it once verified, else all but the last byte.
fn reader_limit(available: u64, total: Option<u64>, verified: bool) -> u64 {
    if verified {
        available
    } else {
        hold_last(available, total)
    }
}

/// How far a reader may go while a fill with `available` of `total` bytes is running
/// and not yet verified.
fn hold_last(available: u64, total: Option<u64>) -> u64 {
    match total {
        Some(t) => available.min(t.saturating_sub(1)),
        None => available,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(parts: &[(u64, &'static [u8])]) -> Segments {
        let mut s = Segments::default();
        for (start, b) in parts {
            s.push(*start, Bytes::from_static(b));
        }
        s
    }

    #[test]
    fn segments_hand_out_what_they_hold_up_to_the_limit() {
        let s = segments(&[(100, b"abcd"), (104, b"efgh")]);
        assert_eq!(s.get(100, 200).as_deref(), Some(&b"abcd"[..]));
        assert_eq!(s.get(102, 200).as_deref(), Some(&b"cd"[..]));
        assert_eq!(s.get(104, 106).as_deref(), Some(&b"ef"[..]));
        assert_eq!(s.get(107, 200).as_deref(), Some(&b"h"[..]));
        // Not yet downloaded, already forgotten, or nothing allowed yet.
        assert_eq!(s.get(108, 200), None);
        assert_eq!(s.get(99, 200), None);
        assert_eq!(s.get(104, 104), None);
    }

    #[test]
    fn trimming_keeps_the_unwritten_and_the_recently_written() {
        let mb = KEEP_WRITTEN;
        let mut s = Segments::default();
        for i in 0..4u64 {
            s.push(i * mb, Bytes::from(vec![0u8; mb as usize]));
        }
        s.trim(mb); // nothing lies wholly more than KEEP_WRITTEN behind
        assert_eq!(s.list.len(), 4);
        s.trim(2 * mb + 1);
        assert_eq!(s.list.front().unwrap().0, mb);
        s.trim(4 * mb);
        assert_eq!(
            s.list.len(),
            1,
            "the last segment written stays for followers"
        );
        assert!(s.get(3 * mb, 4 * mb).is_some());
    }

    #[test]
    fn trimming_keeps_what_a_following_client_still_needs_within_a_bound() {
        const MIB: u64 = 1024 * 1024;
        let mut s = Segments::default();
        for i in 0..64u64 {
            s.push(i * MIB, Bytes::from(vec![0u8; MIB as usize]));
        }
        let slow = s.join();
        let fast = s.join();
        s.reached(slow, 20 * MIB);
        s.reached(fast, 63 * MIB);
        // All 64 MiB stored: the slow client's next bytes stay, though far more than
        // KEEP_WRITTEN behind what is written.
        s.trim(64 * MIB);
        assert_eq!(s.list.front().unwrap().0, 24 * MIB, "kept within the bound");
        s.reached(slow, 30 * MIB);
        s.trim(64 * MIB);
        assert_eq!(s.list.front().unwrap().0, 30 * MIB);
        assert!(s.get(30 * MIB, 64 * MIB).is_some());
        // Memory stays bounded however far behind a client is: nothing wholly more than
        // KEEP_FOR_READERS behind the download.
        for i in 64..128u64 {
            s.push(i * MIB, Bytes::from(vec![0u8; MIB as usize]));
        }
        s.trim(128 * MIB);
        assert_eq!(s.list.front().unwrap().0, 128 * MIB - KEEP_FOR_READERS);
        // Once the slow client leaves, only the recently written stay.
        s.leave(slow);
        s.reached(fast, 128 * MIB);
        s.trim(128 * MIB);
        assert_eq!(s.list.front().unwrap().0, 128 * MIB - KEEP_WRITTEN);
        // A client ahead of the store never lets what is unwritten go.
        let mut s = Segments::default();
        for i in 0..64u64 {
            s.push(i * MIB, Bytes::from(vec![0u8; MIB as usize]));
        }
        let ahead = s.join();
        s.reached(ahead, 64 * MIB);
        s.trim(16 * MIB);
        assert_eq!(s.list.front().unwrap().0, 16 * MIB - KEEP_WRITTEN);
    }
}
