//! Filling one blob from upstream: a single background task per digest downloads it into
//! an upload session and publishes how many bytes are stored; each client reads the
//! stored bytes as they arrive. The upload is committed (and so the blob visible) only
//! when the digest matches; a truncated, oversized or mismatched body is discarded and
//! every reader's stream ends in an error so its client retries.

use crate::CachedUpstream;
use bytes::Bytes;
use futures::StreamExt;
use oci::{Digest, RepoName};
use registry::Registry;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use store::{ByteStream, UploadId};
use tokio::sync::watch;

/// Upstream chunks buffered between the download and the store: keeps the upstream
/// connection flowing while a batch is written, and bounds memory per fill.
const FILL_QUEUE: usize = 64;
/// Most bytes appended to the store in one step. Bytes already downloaded are appended
/// together; readers see them when the step completes.
const FILL_BATCH: usize = 8 * 1024 * 1024;
/// Chunks a reader prepares ahead of its client.
const READER_QUEUE: usize = 4;

/// A blob as clients stream it.
pub type BlobStream = ByteStream;

#[derive(Clone, Debug)]
pub(crate) enum Progress {
    Starting,
    Running {
        id: UploadId,
        written: u64,
        total: Option<u64>,
    },
    Done {
        size: u64,
    },
    Failed {
        not_found: bool,
        message: String,
    },
}

/// Everything a fill task needs.
pub(crate) struct FillJob {
    pub registry: Registry,
    pub upstream: Arc<CachedUpstream>,
    pub upstream_repo: RepoName,
    pub repo: RepoName,
    pub digest: Digest,
    pub fills: Arc<Mutex<HashMap<Digest, Arc<Fill>>>>,
}

/// One blob download in progress.
pub(crate) struct Fill {
    repo: RepoName,
    digest: Digest,
    progress: watch::Receiver<Progress>,
}

impl Fill {
    /// Start the download task.
    pub fn start(job: FillJob) -> Arc<Fill> {
        let (tx, rx) = watch::channel(Progress::Starting);
        let fill = Arc::new(Fill {
            repo: job.repo.clone(),
            digest: job.digest.clone(),
            progress: rx,
        });
        tokio::spawn(async move {
            let outcome = run(&job, &tx).await;
            // Forget the fill before announcing the end: a request arriving later finds
            // the blob in the store (or starts afresh after a failure).
            job.fills
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&job.digest);
            match outcome {
                Ok(size) => {
                    let _ = tx.send(Progress::Done { size });
                }
                Err((not_found, message)) => {
                    if !not_found {
                        job.upstream
                            .stats
                            .upstream_errors
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::warn!(upstream = %job.upstream.name, digest = %job.digest, %message, "blob fill failed");
                    let _ = tx.send(Progress::Failed { not_found, message });
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
        }
    }
}

async fn run(job: &FillJob, tx: &watch::Sender<Progress>) -> Result<u64, (bool, String)> {
    let up = &job.upstream;
    // A fill that finished between the caller's look in the store and its look in the
    // map of fills leaves the blob stored: use it instead of fetching it again.
    let stored = job
        .registry
        .mount_blob(&job.repo, &job.digest, None, &|_| true)
        .await
        .map_err(|e| (false, e.to_string()))?;
    if stored {
        let size = job
            .registry
            .content_size(&job.digest)
            .await
            .ok()
            .flatten()
            .unwrap_or(0);
        return Ok(size);
    }
    up.stats.upstream_blob_gets.fetch_add(1, Ordering::Relaxed);
    let fetch = crate::timed(
        &up.stats.upstream_latency,
        up.client.get_blob(job.upstream_repo.as_str(), &job.digest),
    )
    .await
    .map_err(|e| {
        (
            matches!(e, upstream::UpstreamError::NotFound),
            e.to_string(),
        )
    })?;
    let id = job
        .registry
        .start_upload(&job.repo)
        .await
        .map_err(|e| (false, e.to_string()))?;
    let total = fetch.size;
    let _ = tx.send(Progress::Running {
        id: id.clone(),
        written: 0,
        total,
    });
    let result = download(job, &id, total, fetch.body, tx).await;
    match result {
        Ok(written) => match job
            .registry
            .finish_upload(&job.repo, &id, &job.digest, None)
            .await
        {
            Ok(()) => {
                up.stats.fetched_bytes.fetch_add(written, Ordering::Relaxed);
                Ok(written)
            }
            // finish_upload discards the upload on a mismatch.
            Err(e) => Err((false, format!("upstream blob rejected: {e}"))),
        },
        Err(message) => {
            let _ = job.registry.cancel_upload(&job.repo, &id).await;
            Err((false, message))
        }
    }
}

async fn download(
    job: &FillJob,
    id: &UploadId,
    total: Option<u64>,
    body: ByteStream,
    tx: &watch::Sender<Progress>,
) -> Result<u64, String> {
    let (chunks_tx, mut chunks) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(FILL_QUEUE);
    let pump = tokio::spawn(async move {
        let mut body = body;
        while let Some(c) = body.next().await {
            let failed = c.is_err();
            if chunks_tx.send(c).await.is_err() || failed {
                break;
            }
        }
    });
    let mut written = 0u64;
    let outcome = async {
        while let Some(first) = chunks.recv().await {
            let mut batch = vec![first.map_err(|e| e.to_string())?];
            let mut len = batch[0].len();
            while len < FILL_BATCH {
                match chunks.try_recv() {
                    Ok(c) => {
                        let c = c.map_err(|e| e.to_string())?;
                        len += c.len();
                        batch.push(c);
                    }
                    Err(_) => break,
                }
            }
            if total.is_some_and(|t| written + len as u64 > t) {
                return Err("upstream sent more bytes than it announced".to_owned());
            }
            let body = futures::stream::iter(batch.into_iter().map(Ok)).boxed();
            let state = job
                .registry
                .append_upload(&job.repo, id, Some(written), Some(len as u64), body)
                .await
                .map_err(|e| e.to_string())?;
            written = state.size;
            tx.send_modify(|p| {
                if let Progress::Running { written: w, .. } = p {
                    *w = written;
                }
            });
        }
        if let Some(t) = total
            && written != t
        {
            return Err(format!("upstream body ended after {written} of {t} bytes"));
        }
        Ok(written)
    }
    .await;
    pump.abort();
    outcome
}

/// A client's view of a fill.
pub struct FillReader {
    registry: Registry,
    fill_repo: RepoName,
    my_repo: RepoName,
    digest: Digest,
    progress: watch::Receiver<Progress>,
}

/// How a fill began, as a reader sees it.
pub enum Started {
    /// Bytes are coming; the size if the upstream announced it.
    Streaming(Option<u64>),
    /// The upstream does not have the blob.
    NotFound,
    /// The fill failed.
    Failed(String),
}

impl FillReader {
    /// Wait until the upstream has answered.
    pub async fn started(&mut self) -> Started {
        loop {
            let p = self.progress.borrow_and_update().clone();
            match p {
                Progress::Starting => {
                    if self.progress.changed().await.is_err() {
                        return Started::Failed("fill task ended".into());
                    }
                }
                Progress::Running { total, .. } => return Started::Streaming(total),
                Progress::Done { size } => return Started::Streaming(Some(size)),
                Progress::Failed {
                    not_found: true, ..
                } => return Started::NotFound,
                Progress::Failed { message, .. } => return Started::Failed(message),
            }
        }
    }

    /// Wait for the whole blob to be stored and linked into the reader's repository;
    /// its size, or why it failed.
    pub async fn finished(mut self) -> Result<u64, String> {
        loop {
            let p = self.progress.borrow_and_update().clone();
            match p {
                Progress::Done { size } => {
                    self.link().await?;
                    return Ok(size);
                }
                Progress::Failed { message, .. } => return Err(message),
                _ => {
                    if self.progress.changed().await.is_err() {
                        return Err("fill task ended".into());
                    }
                }
            }
        }
    }

    async fn link(&self) -> Result<(), String> {
        if self.my_repo != self.fill_repo {
            self.registry
                .mount_blob(&self.my_repo, &self.digest, Some(&self.fill_repo), &|_| {
                    true
                })
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Stream the blob from the start as it is stored. The stream ends in an error if the
    /// fill fails, so the client sees a broken download, never wrong bytes.
    pub fn stream(self) -> BlobStream {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(READER_QUEUE);
        tokio::spawn(async move {
            if let Err(e) = self.follow(&tx).await {
                let _ = tx.send(Err(std::io::Error::other(e))).await;
            }
        });
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    }

    async fn forward(
        &self,
        s: ByteStream,
        pos: &mut u64,
        tx: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    ) -> Result<bool, String> {
        let mut s = s;
        while let Some(c) = s.next().await {
            let c = c.map_err(|e| e.to_string())?;
            *pos += c.len() as u64;
            if tx.send(Ok(c)).await.is_err() {
                return Ok(false); // the client went away; the fill goes on without it
            }
        }
        Ok(true)
    }

    async fn follow(
        mut self,
        tx: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    ) -> Result<(), String> {
        let mut pos = 0u64;
        loop {
            let p = self.progress.borrow_and_update().clone();
            match p {
                // The last byte is held back until the digest is verified: a client must
                // never receive a complete body that turns out to be wrong.
                Progress::Running { id, written, total } if hold_last(written, total) > pos => {
                    let range: Range<u64> = pos..hold_last(written, total);
                    match self.registry.read_upload(&self.fill_repo, &id, range).await {
                        Ok(s) => {
                            if !self.forward(s, &mut pos, tx).await? {
                                return Ok(());
                            }
                        }
                        // Committed (renamed) meanwhile: wait for the news.
                        Err(_) => {
                            if self.progress.changed().await.is_err() {
                                return Err("fill task ended".into());
                            }
                        }
                    }
                }
                Progress::Starting | Progress::Running { .. } => {
                    if self.progress.changed().await.is_err() {
                        return Err("fill task ended".into());
                    }
                }
                Progress::Done { size } => {
                    self.link().await?;
                    if pos < size {
                        let read = self
                            .registry
                            .read_blob(&self.my_repo, &self.digest, Some(pos..size))
                            .await
                            .map_err(|e| e.to_string())?;
                        self.forward(read.body, &mut pos, tx).await?;
                    }
                    return Ok(());
                }
                Progress::Failed { message, .. } => return Err(message),
            }
        }
    }
}

/// How far a reader may go while a fill with `written` of `total` bytes is running.
fn hold_last(written: u64, total: Option<u64>) -> u64 {
    match total {
        Some(t) => written.min(t.saturating_sub(1)),
        None => written,
    }
}
