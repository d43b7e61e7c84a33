//! Integrity checking (`berth fsck`, and the scrub inside `serve`): walk every tag →
//! manifest → index children → config and layers → referrers, and report what a pull
//! would trip over, per repository and tag. With `deep`, every blob is re-hashed (once
//! per run, however many repositories share it). With `repair`, cached content is
//! re-fetched from its upstream, missing links to bytes that are present are restored,
//! and corrupt bytes are moved to `quarantine/`; hosted content is never deleted.
//!
//! A cached repository fetches children and layers lazily, so content it never fetched is
//! not a problem; only what it holds (links, tags) must be sound.

use crate::index::{self, RepoIndex};
use crate::{JobContext, Progress, Result};
use futures::StreamExt;
use oci::{Digest, DigestSetBuilder, DigestTable, DigestTableBuilder, Hasher, Reference, RepoName};
use registry::{Registry, layout};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use store::{Key, UploadId};

/// How often `serve` scrubs unless configured: the interval the probe scripts users ran
/// before used, so a broken image is noticed within minutes.
pub const DEFAULT_SCRUB_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// Deep-scrub hashing speed inside `serve` unless configured, in bytes per second: a
/// fraction of a disk's bandwidth, so the scrub never starves requests.
pub const DEFAULT_SCRUB_RATE: u64 = 64 * 1024 * 1024;

/// Blobs up to this size are re-hashed from one whole read instead of a stream: for the
/// many tiny configs and layers of a real store, the per-stream setup (a mapping, a
/// channel, thread hand-offs) cost twenty times the hashing (about 95 µs per blob in the
/// benchmark's store of 100,000 small blobs).
const WHOLE_READ_MAX: u64 = 1024 * 1024;

/// Where corrupt bytes are moved by `--repair`.
pub const QUARANTINE: &str = "quarantine";

/// How a check runs.
#[derive(Clone, Default)]
pub struct FsckOptions {
    /// Re-hash every blob.
    pub deep: bool,
    /// Fix what can be fixed (see the module docs).
    pub repair: bool,
    /// The cache, to re-fetch cached content when repairing.
    pub cache: Option<Arc<cache::Cache>>,
    /// First path components of cached repositories (the upstream keys).
    pub cached: Vec<String>,
    /// Hash at most this many bytes per second (`None`: as fast as the disk goes).
    pub rate: Option<u64>,
}

/// What is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A tag whose manifest the repository does not hold, or that does not parse.
    DanglingTag,
    /// A manifest link whose bytes are gone.
    MissingManifest,
    /// Stored manifest bytes that do not hash to their digest.
    ManifestDigestMismatch,
    /// Stored manifest bytes that are not a manifest.
    UnreadableManifest,
    /// A child of an index that the repository does not hold.
    OrphanedIndexChild,
    /// A config or layer that the repository does not hold, or whose bytes are gone.
    MissingBlob,
    /// Blob bytes that do not hash to their digest (found with `deep`).
    BlobDigestMismatch,
    /// A link (manifest or blob) to bytes that are gone, outside any tagged image.
    DanglingLink,
}

impl ProblemKind {
    /// Every kind, for reports that list zero counts too.
    pub const ALL: [ProblemKind; 8] = [
        ProblemKind::DanglingTag,
        ProblemKind::MissingManifest,
        ProblemKind::ManifestDigestMismatch,
        ProblemKind::UnreadableManifest,
        ProblemKind::OrphanedIndexChild,
        ProblemKind::MissingBlob,
        ProblemKind::BlobDigestMismatch,
        ProblemKind::DanglingLink,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::DanglingTag => "dangling_tag",
            ProblemKind::MissingManifest => "missing_manifest",
            ProblemKind::ManifestDigestMismatch => "manifest_digest_mismatch",
            ProblemKind::UnreadableManifest => "unreadable_manifest",
            ProblemKind::OrphanedIndexChild => "orphaned_index_child",
            ProblemKind::MissingBlob => "missing_blob",
            ProblemKind::BlobDigestMismatch => "blob_digest_mismatch",
            ProblemKind::DanglingLink => "dangling_link",
        }
    }
}

/// One problem found.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    pub repository: String,
    /// The tag through which it was reached; `None` for untagged content.
    pub tag: Option<String>,
    pub digest: String,
    pub kind: ProblemKind,
    pub detail: String,
    /// What `--repair` did; `None` when it was not repaired.
    pub repaired: Option<String>,
}

/// What a check found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FsckReport {
    /// Seconds since the Unix epoch when it started.
    pub started_at: u64,
    pub duration_seconds: f64,
    pub deep: bool,
    pub repositories: u64,
    pub tags: u64,
    pub manifests_checked: u64,
    pub blobs_checked: u64,
    pub bytes_hashed: u64,
    /// Blobs in the store (manifests included), and their bytes.
    pub stored_blobs: u64,
    pub stored_bytes: u64,
    /// Distinct manifests linked from any repository.
    pub stored_manifests: u64,
    pub problems: Vec<Problem>,
}

impl FsckReport {
    /// No problem is left unrepaired.
    pub fn is_clean(&self) -> bool {
        self.problems.iter().all(|p| p.repaired.is_some())
    }
}

/// Why a manifest is being checked: it decides what a missing one means.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Tag,
    Child,
    Referrer,
}

struct Checker<'a> {
    registry: &'a Registry,
    opts: &'a FsckOptions,
    /// Stored content found by the walk of `blobs/`, with sizes: 40 bytes a blob.
    stored: DigestTable<u64>,
    /// What changed since that walk, found by a `stat` or done by a repair: `Some(size)`
    /// stored, `None` gone. Small: only content that moved while the check ran.
    changed: HashMap<Digest, Option<u64>>,
    /// With `deep`: stored content whose bytes did not hash to its digest in the first
    /// pass (few; a healthy store has none).
    corrupt: HashSet<Digest>,
    /// Deep-hash verdicts for content the first pass did not hash (it arrived since).
    late: HashMap<Digest, bool>,
    report: FsckReport,
    throttle: Throttle,
}

/// Paces hashing to a byte rate; shared by the hashes running at once.
struct Throttle {
    rate: Option<u64>,
    start: Instant,
    bytes: std::sync::atomic::AtomicU64,
}

impl Throttle {
    async fn account(&self, n: u64) {
        let total = self
            .bytes
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed)
            + n;
        let Some(rate) = self.rate.filter(|r| *r > 0) else {
            return;
        };
        let due = Duration::from_secs_f64(total as f64 / rate as f64);
        let elapsed = self.start.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

/// Blobs listed per batch of the first pass, and batches hashed at once. A batch's small
/// blobs are read in one `get_many` (on fs one blocking task for all of them, instead of
/// a thread hand-off each, which cost more than the reads); two batches at once keep two
/// cores busy without crowding out requests inside `serve` (where the rate limit paces
/// hashing anyway). Measured on the store of 1,000,000 blobs: 16 single reads at once
/// took 91 s, 4 took 62 s.
const HASH_BATCH: usize = 64;
const HASH_PARALLEL: usize = 2;

/// The deep verdict of each of `items`: small blobs read together, large ones streamed.
async fn hash_batch(
    store: &dyn store::Store,
    items: &[(Digest, store::ObjectMeta)],
    throttle: &Throttle,
) -> Result<Vec<Option<(bool, u64)>>> {
    let mut verdicts = vec![None; items.len()];
    let small: Vec<usize> = (0..items.len())
        .filter(|i| items[*i].1.size <= WHOLE_READ_MAX)
        .collect();
    let keys = small
        .iter()
        .map(|i| layout::blob(&items[*i].0))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let bodies = store.get_many(&keys).await?;
    for (i, body) in small.iter().zip(bodies) {
        let d = &items[*i].0;
        verdicts[*i] = Some(match body {
            None => (true, 0), // deleted meanwhile
            Some(bytes) => {
                throttle.account(bytes.len() as u64).await;
                (d.same_algorithm_of(&bytes) == *d, bytes.len() as u64)
            }
        });
    }
    for (i, (d, meta)) in items.iter().enumerate() {
        if verdicts[i].is_none() {
            verdicts[i] = Some(hashes_to_digest(store, d, meta.size, throttle).await?);
        }
    }
    Ok(verdicts)
}

/// Does stored content `d` (of `size` bytes) hash to its digest? `Ok(true)` also when it
/// vanished meanwhile: there is nothing wrong to report.
async fn hashes_to_digest(
    store: &dyn store::Store,
    d: &Digest,
    size: u64,
    throttle: &Throttle,
) -> Result<(bool, u64)> {
    let key = layout::blob(d)?;
    let mut h = Hasher::new(d.algorithm());
    if size <= WHOLE_READ_MAX {
        let Some(bytes) = store.get(&key).await? else {
            return Ok((true, 0));
        };
        h.update(&bytes);
        throttle.account(bytes.len() as u64).await;
        return Ok((h.finish() == *d, bytes.len() as u64));
    }
    let mut hashed = 0u64;
    match store.read(&key, 0..size).await {
        Ok(mut s) => {
            while let Some(c) = s.next().await {
                match c {
                    Ok(c) => {
                        h.update(&c);
                        hashed += c.len() as u64;
                        throttle.account(c.len() as u64).await;
                    }
                    Err(_) => return Ok((false, hashed)),
                }
            }
            Ok((h.finish() == *d, hashed))
        }
        Err(store::StoreError::NotFound) => Ok((true, 0)),
        Err(e) => Err(e.into()),
    }
}

/// Per-repository walk state.
struct RepoWalk<'r> {
    repo: &'r RepoIndex,
    cached: bool,
    seen_manifests: HashSet<Digest>,
    seen_blobs: HashSet<Digest>,
    /// What was read ahead for this repository; each entry is taken once.
    ahead: ReadAhead,
}

/// Repositories read ahead at once (their reads overlap each other whenever the check
/// waits for the next one), and objects per `get_many` (one blocking task on fs), few
/// enough that a repository is never all in memory.
const READ_AHEAD_REPOS: usize = 4;
const READ_BATCH: usize = 256;

/// The bytes of a repository's tags and of the manifests they reach (index children,
/// referrers), read in batches before the repository is checked. The
/// check takes each from here once and reads anything else itself, so a miss costs a
/// read, never a wrong answer.
#[derive(Default)]
struct ReadAhead {
    tags: HashMap<String, Option<bytes::Bytes>>,
    manifests: HashMap<Digest, Option<bytes::Bytes>>,
}

async fn read_ahead(store: &dyn store::Store, repo: &RepoIndex) -> Result<ReadAhead> {
    let mut ahead = ReadAhead::default();
    let mut level = Vec::new();
    for chunk in repo.tags.chunks(READ_BATCH) {
        let keys = chunk
            .iter()
            .map(|(tag, _)| layout::tag(&repo.name, tag))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        for ((tag, _), raw) in chunk.iter().zip(store.get_many(&keys).await?) {
            if let Some(d) = raw
                .as_ref()
                .and_then(|r| std::str::from_utf8(r).ok())
                .and_then(|s| s.trim().parse::<Digest>().ok())
            {
                level.push(d);
            }
            ahead.tags.insert(tag.to_string(), raw);
        }
    }
    while !level.is_empty() {
        // Only what the repository links: the check reads nothing else's bytes.
        level.retain(|d| repo.manifests.contains_key(d) && !ahead.manifests.contains_key(d));
        level.sort();
        level.dedup();
        let mut next = Vec::new();
        for chunk in level.chunks(READ_BATCH) {
            let keys = chunk
                .iter()
                .map(layout::blob)
                .collect::<std::result::Result<Vec<_>, _>>()?;
            for (d, bytes) in chunk.iter().zip(store.get_many(&keys).await?) {
                if let Some(refs) = bytes.as_deref().and_then(index::parse_refs) {
                    next.extend(refs.children);
                }
                next.extend(repo.referrers_of(d).cloned());
                ahead.manifests.insert(d.clone(), bytes);
            }
        }
        level = next;
    }
    Ok(ahead)
}

impl Checker<'_> {
    fn problem(
        &mut self,
        w: &RepoWalk<'_>,
        tag: Option<&str>,
        digest: &Digest,
        kind: ProblemKind,
        detail: String,
    ) -> usize {
        tracing::warn!(repo = %w.repo.name, tag = tag.unwrap_or("-"), digest = %digest, kind = kind.as_str(), "{detail}");
        self.report.problems.push(Problem {
            repository: w.repo.name.to_string(),
            tag: tag.map(str::to_owned),
            digest: digest.to_string(),
            kind,
            detail,
            repaired: None,
        });
        self.report.problems.len() - 1
    }

    /// Is content `d` stored? Confirmed with a stat when the walk did not see it (it may
    /// have arrived since).
    async fn is_stored(&mut self, d: &Digest) -> Result<bool> {
        match self.changed.get(d) {
            Some(Some(_)) => return Ok(true),
            Some(None) => {}
            None if self.stored.contains(d) => return Ok(true),
            None => {}
        }
        let meta = self.registry.store().stat(&layout::blob(d)?).await?;
        self.changed.insert(d.clone(), meta.map(|m| m.size));
        Ok(meta.is_some())
    }

    async fn check_manifest(
        &mut self,
        w: &mut RepoWalk<'_>,
        tag: Option<&str>,
        d: &Digest,
        via: Via,
    ) -> Result<()> {
        if !w.seen_manifests.insert(d.clone()) {
            return Ok(());
        }
        tokio::task::yield_now().await;
        self.report.manifests_checked += 1;
        let store = self.registry.store().clone();
        let linked = w.repo.manifests.contains_key(d)
            || store
                .stat(&layout::manifest_link(&w.repo.name, d)?)
                .await?
                .is_some();
        if !linked {
            match via {
                Via::Tag => {
                    let i = self.problem(
                        w,
                        tag,
                        d,
                        ProblemKind::DanglingTag,
                        "the tag points at a manifest this repository does not hold".into(),
                    );
                    if w.cached && self.opts.repair {
                        self.refetch_manifest(w, d, i).await;
                    }
                }
                Via::Child if !w.cached => {
                    let i = self.problem(
                        w,
                        tag,
                        d,
                        ProblemKind::OrphanedIndexChild,
                        "a child manifest of a tagged index is missing: pulls of this platform fail".into(),
                    );
                    if self.opts.repair {
                        self.relink_manifest(w, d, i).await?;
                    }
                }
                // A cache fetches children when asked; a referrer link without its
                // manifest is simply not listed.
                Via::Child | Via::Referrer => {}
            }
            return Ok(());
        }
        // Read ahead only what was there; an absence is read again (a repair may have
        // brought it back since).
        let read = match w.ahead.manifests.remove(d) {
            Some(Some(bytes)) => Some(bytes),
            _ => store.get(&layout::blob(d)?).await?,
        };
        let Some(bytes) = read else {
            let i = self.problem(
                w,
                tag,
                d,
                ProblemKind::MissingManifest,
                "the manifest is linked but its bytes are gone".into(),
            );
            if w.cached && self.opts.repair {
                self.refetch_manifest(w, d, i).await;
            }
            return Ok(());
        };
        if d.same_algorithm_of(&bytes) != *d {
            let i = self.problem(
                w,
                tag,
                d,
                ProblemKind::ManifestDigestMismatch,
                "the stored manifest bytes do not match their digest".into(),
            );
            if self.opts.repair {
                self.quarantine(w, d, i).await?;
            }
            return Ok(());
        }
        let Some(refs) = index::parse_refs(&bytes) else {
            self.problem(
                w,
                tag,
                d,
                ProblemKind::UnreadableManifest,
                "the stored bytes are not a manifest".into(),
            );
            return Ok(());
        };
        for child in &refs.children {
            Box::pin(self.check_manifest(w, tag, child, Via::Child)).await?;
        }
        for b in &refs.blobs {
            self.check_blob(w, tag, b).await?;
        }
        let referrers: Vec<Digest> = w.repo.referrers_of(d).cloned().collect();
        for r in referrers {
            Box::pin(self.check_manifest(w, tag, &r, Via::Referrer)).await?;
        }
        Ok(())
    }

    async fn check_blob(
        &mut self,
        w: &mut RepoWalk<'_>,
        tag: Option<&str>,
        d: &Digest,
    ) -> Result<()> {
        if !w.seen_blobs.insert(d.clone()) {
            return Ok(());
        }
        self.report.blobs_checked += 1;
        let store = self.registry.store().clone();
        let linked = w.repo.blobs.contains_key(d)
            || store
                .stat(&layout::blob_link(&w.repo.name, d)?)
                .await?
                .is_some();
        if !linked && w.cached {
            return Ok(()); // not fetched yet: the cache fetches it when asked
        }
        if !self.is_stored(d).await? {
            let i = self.problem(
                w,
                tag,
                d,
                ProblemKind::MissingBlob,
                "a config or layer's bytes are gone: pulls fail".into(),
            );
            if w.cached && self.opts.repair {
                self.refetch_blob(w, d, i).await;
            }
            return Ok(());
        }
        if !linked {
            let i = self.problem(
                w,
                tag,
                d,
                ProblemKind::MissingBlob,
                "a config or layer is stored but not linked into this repository: pulls fail"
                    .into(),
            );
            if self.opts.repair {
                self.relink_blob(w, d, i).await?;
            }
            return Ok(());
        }
        if self.opts.deep && !self.hash_ok(d).await? {
            let i = self.problem(
                w,
                tag,
                d,
                ProblemKind::BlobDigestMismatch,
                "the stored bytes do not match their digest".into(),
            );
            if self.opts.repair {
                self.quarantine(w, d, i).await?;
                if w.cached {
                    self.refetch_blob(w, d, i).await;
                }
            }
        }
        Ok(())
    }

    /// Does stored content `d` hash to its digest? The first pass hashed what it found;
    /// content that arrived or changed since is hashed here, once.
    async fn hash_ok(&mut self, d: &Digest) -> Result<bool> {
        if !self.changed.contains_key(d) && self.stored.contains(d) {
            return Ok(!self.corrupt.contains(d));
        }
        if let Some(v) = self.late.get(d) {
            return Ok(*v);
        }
        let size = match self.changed.get(d) {
            Some(Some(size)) => *size,
            _ => self.stored.get(d).unwrap_or(0),
        };
        let store = self.registry.store().clone();
        let (ok, n) = hashes_to_digest(store.as_ref(), d, size, &self.throttle).await?;
        self.report.bytes_hashed += n;
        self.late.insert(d.clone(), ok);
        Ok(ok)
    }

    fn repaired(&mut self, i: usize, what: String) {
        tracing::info!(repo = %self.report.problems[i].repository, digest = %self.report.problems[i].digest, "repaired: {what}");
        self.report.problems[i].repaired = Some(what);
    }

    /// Move corrupt bytes to `quarantine/`, keeping them for inspection.
    async fn quarantine(&mut self, w: &RepoWalk<'_>, d: &Digest, i: usize) -> Result<()> {
        let store = self.registry.store().clone();
        let key = layout::blob(d)?;
        let Some(meta) = store.stat(&key).await? else {
            return Ok(());
        };
        // Checked again just before acting: the verdict may be hours old, and bytes
        // pushed again since then are sound and must stay.
        if hashes_to_digest(store.as_ref(), d, meta.size, &self.throttle)
            .await?
            .0
        {
            self.repaired(
                i,
                "the stored bytes hash to their digest now (written again since)".into(),
            );
            return Ok(());
        }
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|t| t.as_secs())
            .unwrap_or(0);
        let dest = Key::new(format!(
            "{QUARANTINE}/{}-{}-{stamp}",
            d.algorithm().as_str(),
            d.hex()
        ))?;
        let id = UploadId::random();
        store.upload_create(&id).await?;
        let copied = async {
            let body = store.read(&key, 0..meta.size).await?;
            let size = store.upload_append(&id, 0, body).await?;
            store.upload_commit(&id, &dest, size).await
        }
        .await;
        if let Err(e) = copied {
            let _ = store.upload_abort(&id).await;
            return Err(e.into());
        }
        {
            let _permit = self.registry.deletion_permit().await;
            store.delete(&key).await?;
        }
        self.changed.insert(d.clone(), None);
        self.corrupt.remove(d);
        self.late.remove(d);
        self.registry.forget_manifest(&w.repo.name, d);
        let note = if w.cached {
            format!("moved to {dest}")
        } else {
            format!("moved to {dest}; push the image again to restore it")
        };
        // A hosted problem stays unrepaired: the content is still missing.
        if w.cached {
            self.repaired(i, note);
        } else {
            tracing::warn!(repo = %w.repo.name, digest = %d, "corrupt bytes {note}");
            self.report.problems[i]
                .detail
                .push_str(&format!(" ({note})"));
        }
        Ok(())
    }

    fn upstream_of(&self, repo: &RepoName) -> Option<(Arc<cache::CachedUpstream>, RepoName)> {
        let cache = self.opts.cache.as_ref()?;
        let (first, rest) = repo.as_str().split_once('/')?;
        let up = cache.upstreams().into_iter().find(|u| u.key == first)?;
        Some((up, rest.parse().ok()?))
    }

    async fn refetch_blob(&mut self, w: &RepoWalk<'_>, d: &Digest, i: usize) {
        let Some((up, upstream_repo)) = self.upstream_of(&w.repo.name) else {
            return;
        };
        let Some(cache) = self.opts.cache.clone() else {
            return;
        };
        // A link to bytes that are gone would make the cache answer "held".
        let _ = self.registry.delete_blob(&w.repo.name, d).await;
        let fetched = match cache.blob(&up, &upstream_repo, d).await {
            Ok(cache::BlobSource::Local(_)) => Ok(()),
            Ok(cache::BlobSource::Filling(reader)) => reader
                .finished()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match fetched {
            Ok(()) => {
                // Re-read on its next mention.
                self.changed.remove(d);
                self.late.remove(d);
                if let Ok(key) = layout::blob(d)
                    && let Ok(Some(m)) = self.registry.store().stat(&key).await
                {
                    self.changed.insert(d.clone(), Some(m.size));
                }
                let prior = self.report.problems[i].repaired.take();
                let what = match prior {
                    Some(p) => format!("{p}; re-fetched from {}", up.name),
                    None => format!("re-fetched from {}", up.name),
                };
                self.repaired(i, what);
            }
            Err(e) => {
                self.report.problems[i].repaired = None;
                tracing::warn!(repo = %w.repo.name, digest = %d, error = %e, "re-fetch failed");
            }
        }
    }

    async fn refetch_manifest(&mut self, w: &RepoWalk<'_>, d: &Digest, i: usize) {
        let Some((up, upstream_repo)) = self.upstream_of(&w.repo.name) else {
            return;
        };
        let Some(cache) = self.opts.cache.clone() else {
            return;
        };
        self.registry.forget_manifest(&w.repo.name, d);
        match cache
            .get_manifest(&up, &upstream_repo, &Reference::Digest(d.clone()))
            .await
        {
            Ok(_) => self.repaired(i, format!("re-fetched from {}", up.name)),
            Err(e) => {
                tracing::warn!(repo = %w.repo.name, digest = %d, error = %e, "re-fetch failed")
            }
        }
    }

    async fn relink_blob(&mut self, w: &RepoWalk<'_>, d: &Digest, i: usize) -> Result<()> {
        if self.registry.relink_blob(&w.repo.name, d).await? {
            self.repaired(i, "link restored to the stored bytes".into());
        }
        Ok(())
    }

    async fn relink_manifest(&mut self, w: &RepoWalk<'_>, d: &Digest, i: usize) -> Result<()> {
        if self.registry.relink_manifest(&w.repo.name, d).await? {
            self.repaired(i, "link restored to the stored manifest".into());
        }
        Ok(())
    }
}

/// Check every repository, in two streaming passes whose memory does not grow with the
/// store but for the table of stored content (40 bytes a blob):
/// 1. every stored blob, noted with its size and, with `deep`, re-hashed (a few at
///    once, each digest once however many repositories share it);
/// 2. repository by repository, every tag's image and every untagged link.
pub async fn run_once(
    registry: &Registry,
    opts: &FsckOptions,
    progress: &dyn Progress,
) -> Result<FsckReport> {
    let started = Instant::now();
    let store = registry.store().clone();
    let mut report = FsckReport {
        started_at: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        deep: opts.deep,
        ..FsckReport::default()
    };
    let throttle = Throttle {
        rate: opts.rate,
        start: Instant::now(),
        bytes: std::sync::atomic::AtomicU64::new(0),
    };
    progress.phase(
        if opts.deep {
            "hashing stored blobs"
        } else {
            "scanning stored blobs"
        },
        0,
    );
    let mut stored = DigestTableBuilder::new();
    let mut corrupt = HashSet::new();
    {
        let blobs = index::blobs(store.as_ref()).await?;
        let throttle = &throttle;
        let store = &store;
        let deep = opts.deep;
        let mut checked = std::pin::pin!(
            blobs
                .ready_chunks(HASH_BATCH)
                .map(move |chunk| async move {
                    let items: Vec<(Digest, store::ObjectMeta)> =
                        chunk.into_iter().collect::<Result<_>>()?;
                    let verdicts = if deep {
                        hash_batch(store.as_ref(), &items, throttle).await?
                    } else {
                        vec![None; items.len()]
                    };
                    Ok::<_, crate::UpkeepError>(items.into_iter().zip(verdicts))
                })
                .buffer_unordered(if opts.deep { HASH_PARALLEL } else { 1 })
        );
        while let Some(batch) = checked.next().await {
            for ((d, meta), verdict) in batch? {
                progress.advance(1);
                report.stored_blobs += 1;
                report.stored_bytes += meta.size;
                if let Some((ok, hashed)) = verdict {
                    report.bytes_hashed += hashed;
                    if !ok {
                        corrupt.insert(d.clone());
                    }
                }
                stored.insert(&d, meta.size);
            }
        }
    }
    let mut c = Checker {
        registry,
        opts,
        stored: stored.build(),
        changed: HashMap::new(),
        corrupt,
        late: HashMap::new(),
        report,
        throttle,
    };
    let mut linked_manifests = DigestSetBuilder::new();
    progress.phase("checking", 0);
    let reader = store.as_ref();
    let repos = index::Repos::open(reader)
        .await?
        .into_stream()
        .map(move |repo| async move {
            let repo = repo?;
            let ahead = read_ahead(reader, &repo).await?;
            Ok::<_, crate::UpkeepError>((repo, ahead))
        })
        .buffered(READ_AHEAD_REPOS);
    let mut repos = std::pin::pin!(repos);
    while let Some(item) = repos.next().await {
        let (repo, ahead) = item?;
        c.report.repositories += 1;
        for d in repo.manifests.keys() {
            linked_manifests.insert(d, ());
        }
        check_repository(&mut c, &repo, ahead).await?;
        progress.advance(1);
    }
    c.report.stored_manifests = linked_manifests.build().len() as u64;
    c.report.duration_seconds = started.elapsed().as_secs_f64();
    Ok(c.report)
}

/// Every tag of `repo`, then its untagged links.
async fn check_repository(c: &mut Checker<'_>, repo: &RepoIndex, ahead: ReadAhead) -> Result<()> {
    let store = c.registry.store().clone();
    let opts = c.opts;
    let first = repo.name.as_str().split('/').next().unwrap_or_default();
    let mut w = RepoWalk {
        repo,
        cached: opts.cached.iter().any(|k| k == first),
        seen_manifests: HashSet::new(),
        seen_blobs: HashSet::new(),
        ahead,
    };
    let mut tags = repo.tags.clone();
    tags.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    for (tag, _) in &tags {
        c.report.tags += 1;
        let raw = match w.ahead.tags.remove(tag.as_str()) {
            Some(raw) => raw,
            None => store.get(&layout::tag(&repo.name, tag)?).await?,
        };
        let Some(raw) = raw else { continue }; // deleted since the walk
        match std::str::from_utf8(&raw)
            .ok()
            .and_then(|s| s.trim().parse::<Digest>().ok())
        {
            Some(d) => {
                c.check_manifest(&mut w, Some(tag.as_str()), &d, Via::Tag)
                    .await?
            }
            None => {
                let zero = Digest::sha256_of(b"");
                c.problem(
                    &w,
                    Some(tag.as_str()),
                    &zero,
                    ProblemKind::DanglingTag,
                    "the tag file does not hold a digest".into(),
                );
            }
        }
    }
    // Untagged content: links whose bytes are gone.
    let mut untagged: Vec<(&Digest, bool)> = repo
        .manifests
        .keys()
        .filter(|d| !w.seen_manifests.contains(*d))
        .map(|d| (d, true))
        .chain(
            repo.blobs
                .keys()
                .filter(|d| !w.seen_blobs.contains(*d))
                .map(|d| (d, false)),
        )
        .collect();
    untagged.sort();
    for (d, is_manifest) in untagged {
        if c.is_stored(d).await? {
            if !is_manifest && opts.deep && !c.hash_ok(d).await? {
                let i = c.problem(
                    &w,
                    None,
                    d,
                    ProblemKind::BlobDigestMismatch,
                    "the stored bytes do not match their digest".into(),
                );
                if opts.repair {
                    c.quarantine(&w, d, i).await?;
                }
            }
            continue;
        }
        let what = if is_manifest { "manifest" } else { "blob" };
        let i = c.problem(
            &w,
            None,
            d,
            ProblemKind::DanglingLink,
            format!("a {what} link points at bytes that are gone"),
        );
        if w.cached && opts.repair {
            if is_manifest {
                c.refetch_manifest(&w, d, i).await;
            } else {
                c.refetch_blob(&w, d, i).await;
            }
        }
    }
    Ok(())
}

/// Scrub every `interval` while `serve` runs (the first run one interval after the
/// start; none when `interval` is zero), logging what it finds and recording each run in
/// `ctx.status.scrub`, until the handle is aborted. A scrub only reports: pass options
/// without `repair`.
pub fn spawn_scrub(
    ctx: &JobContext,
    interval: Duration,
    opts: FsckOptions,
) -> Option<tokio::task::JoinHandle<()>> {
    let ctx = ctx.clone();
    crate::schedule::every(interval, move || {
        let (ctx, opts) = (ctx.clone(), opts.clone());
        async move { run_recorded(&ctx, &opts).await }
    })
}

/// One scheduled scrub: [`run_once`], its findings logged, the run recorded.
async fn run_recorded(ctx: &JobContext, opts: &FsckOptions) {
    let started = Instant::now();
    let result = run_once(&ctx.registry, opts, &crate::Quiet).await;
    let mut record = ctx.status.scrub.lock();
    match result {
        Ok(r) => {
            let open = r.problems.iter().filter(|p| p.repaired.is_none()).count();
            if open > 0 {
                tracing::error!(
                    problems = open,
                    "scrub found broken content; run `berth fsck` for details"
                );
            } else {
                tracing::info!(
                    manifests = r.manifests_checked,
                    blobs = r.blobs_checked,
                    "scrub clean"
                );
            }
            record.succeeded(r, started.elapsed(), 0, 0);
        }
        Err(e) => {
            tracing::error!(error = %e, "scrub failed");
            record.failed(e.to_string(), started.elapsed());
        }
    }
}
