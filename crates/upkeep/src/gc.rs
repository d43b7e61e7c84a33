//! Online mark-and-sweep garbage collection.
//!
//! **Mark**, per repository. Roots: every tag; every manifest younger than the grace
//! period; with `delete_untagged = false`, and always in cached repositories (whose
//! lifetime eviction decides), every manifest. From each marked manifest mark its index
//! children (any depth), config and layers, and the referrers whose subject it is.
//!
//! **Sweep.** Unmarked manifest links, blob links and referrer links, then stored bytes
//! that no surviving link or marked manifest needs, each only when its modification time
//! is older than the grace period, checked again just before the delete while holding
//! the registry's deletion permit. Operations that make content needed (HEAD, mount,
//! upload, manifest PUT) renew that time under the shared permit, so content a client has
//! just checked survives until the grace period passes (ARCHITECTURE.md gives the
//! argument). Abandoned uploads go too. Nothing here ever deletes a tag.

use crate::index::{self, Refs, RepoIndex};
use crate::{JobContext, Progress, Result, UpkeepError};
use futures::StreamExt;
use oci::{Digest, DigestTableBuilder, RepoName};
use registry::{Registry, layout};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use store::{Key, UploadId};

/// How long content stays after it was last written or needed before GC may delete it.
/// An hour covers the slowest push between checking or uploading a blob and putting the
/// manifest that references it (a multi-GiB layer over a slow link), and clock skew
/// between replicas sharing a store.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60 * 60);

/// How often `serve` collects unless configured. Daily keeps the store tidy without
/// walking it often; retention and cache eviction do the frequent work.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// An upload idle this long is abandoned and its bytes are deleted. A day lets a client
/// resume an interrupted push the next morning.
pub const ABANDONED_UPLOAD: Duration = Duration::from_secs(24 * 60 * 60);

/// Deletions per hold of the deletion permit. Pushes wait while it is held, so holds are
/// kept to a few milliseconds.
const DELETE_BATCH: usize = 64;

/// Of those, checked and deleted at once (each a `stat`, then a delete).
const DELETES_AT_ONCE: usize = 8;

/// How a collection runs.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Content modified (or renewed) more recently than this is never deleted.
    pub grace: Duration,
    /// How stale needed content may get before the registry renews it
    /// (`RegistryOptions::touch_after`). GC waits this much longer than `grace`, so
    /// content needed at time t is kept until at least t + grace.
    pub renewal_slack: Duration,
    /// Whether manifests that no tag reaches are collected in hosted repositories.
    pub delete_untagged: bool,
    /// Count what would go, delete nothing.
    pub dry_run: bool,
    /// First path components of cached repositories (the upstream keys).
    pub cached: Vec<String>,
    /// Uploads idle longer than this are deleted.
    pub abandoned_upload: Duration,
    /// How long the run's lease lasts unrenewed: how long a process that died mid-run
    /// keeps every other from collecting ([`crate::LEASE_TTL`] unless configured). The
    /// run renews it four times as often.
    pub lease_ttl: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: DEFAULT_GRACE,
            renewal_slack: registry::DEFAULT_TOUCH_AFTER,
            delete_untagged: true,
            dry_run: false,
            cached: Vec::new(),
            abandoned_upload: ABANDONED_UPLOAD,
            lease_ttl: crate::LEASE_TTL,
        }
    }
}

/// What a collection did (or, in a dry run, would do).
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Seconds since the Unix epoch when it started.
    pub started_at: u64,
    pub duration_seconds: f64,
    pub repositories: u64,
    pub manifests_marked: u64,
    pub blobs_marked: u64,
    pub manifests_deleted: u64,
    pub blob_links_deleted: u64,
    pub referrer_links_deleted: u64,
    pub blobs_deleted: u64,
    pub bytes_freed: u64,
    pub uploads_deleted: u64,
    /// Candidates kept because they were renewed after the mark (in use right now).
    pub kept_in_use: u64,
    /// Bytes of content (blobs and manifests) kept, by where the repositories that hold
    /// them come from: `hosted`, or an upstream's key. Content two sources share counts
    /// in both; see `stored_bytes_total` for the distinct sum.
    pub stored_bytes: std::collections::BTreeMap<String, u64>,
    /// Bytes of content kept, each blob counted once.
    pub stored_bytes_total: u64,
}

/// The sources a collection tells apart in `stored_bytes`: bit 0 for hosted
/// repositories, bit `i + 1` for the `i`th cached upstream (the last bit holds the rest,
/// beyond 62 upstreams).
fn source_bit(repo: &RepoName, cached: &[String]) -> u64 {
    let first = repo.as_str().split('/').next().unwrap_or_default();
    match cached.iter().position(|c| c == first) {
        None => 1,
        Some(i) => 1 << (i + 1).min(63),
    }
}

/// The name of source bit `bit` (see [`source_bit`]).
fn source_name(bit: u32, cached: &[String]) -> String {
    match bit {
        0 => "hosted".to_owned(),
        63 if cached.len() > 63 => "other upstreams".to_owned(),
        b => cached
            .get(b as usize - 1)
            .cloned()
            .unwrap_or_else(|| "?".to_owned()),
    }
}

/// What the mark found in one repository.
struct Marked {
    manifests: HashSet<Digest>,
    blobs: HashSet<Digest>,
}

fn is_cached(repo: &RepoName, cached: &[String]) -> bool {
    let first = repo.as_str().split('/').next().unwrap_or_default();
    cached.iter().any(|c| c == first)
}

/// Manifests whose references stay cached between repositories. Images shared by many
/// repositories (a base image's index, a mirrored tag) are read once per run while they
/// are in use; 4,096 entries are a few MiB whatever the store's size.
const REF_CACHE_ENTRIES: usize = 4096;

/// Repositories marked at once: their reads of tags and manifests overlap each other
/// (on fs, on the blocking threads) whenever the run waits for the next mark. Sweeps
/// run one repository at a time, in walk order.
const MARK_AHEAD: usize = 4;

/// Tags or manifests of one repository read per `get_many` while marking: on fs one
/// blocking task for the lot, instead of a thread hand-off each (which cost more than
/// the reads), and few enough that a repository's manifests are never all in memory.
const READ_BATCH: usize = 256;

/// Manifest references, read once per digest while they stay in the bounded cache;
/// shared by the repositories being marked at once.
struct RefCache<'a> {
    registry: &'a Registry,
    refs: parking_lot::Mutex<HashMap<Digest, Option<Arc<Refs>>>>,
}

impl RefCache<'_> {
    /// The references of each of `ds` (`None`: bytes missing, or not a manifest).
    async fn get_many(&self, ds: &[Digest]) -> Result<Vec<Option<Arc<Refs>>>> {
        let mut out: Vec<Option<Option<Arc<Refs>>>> = {
            let refs = self.refs.lock();
            ds.iter().map(|d| refs.get(d).cloned()).collect()
        };
        let missing: Vec<usize> = (0..ds.len()).filter(|i| out[*i].is_none()).collect();
        for chunk in missing.chunks(READ_BATCH) {
            let keys = chunk
                .iter()
                .map(|i| layout::blob(&ds[*i]))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let bodies = self.registry.store().get_many(&keys).await?;
            let mut refs = self.refs.lock();
            for (i, body) in chunk.iter().zip(bodies) {
                let r = body.as_deref().and_then(index::parse_refs).map(Arc::new);
                if refs.len() >= REF_CACHE_ENTRIES {
                    refs.clear();
                }
                refs.insert(ds[*i].clone(), r.clone());
                out[*i] = Some(r);
            }
        }
        Ok(out.into_iter().map(Option::flatten).collect())
    }
}

/// The digest each tag of `repo` names; unreadable tags are logged and left out (their
/// targets are not marked by them).
async fn tag_targets(registry: &Registry, repo: &RepoIndex) -> Result<Vec<Digest>> {
    let mut out = Vec::new();
    for chunk in repo.tags.chunks(READ_BATCH) {
        let keys = chunk
            .iter()
            .map(|(tag, _)| layout::tag(&repo.name, tag))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let raws = registry.store().get_many(&keys).await?;
        for ((tag, _), raw) in chunk.iter().zip(raws) {
            let Some(raw) = raw else {
                continue; // deleted since the walk
            };
            match std::str::from_utf8(&raw)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                Some(d) => out.push(d),
                None => {
                    tracing::warn!(repo = %repo.name, tag = %tag, "unreadable tag; its target is not marked")
                }
            }
        }
    }
    Ok(out)
}

async fn mark(
    registry: &Registry,
    repo: &RepoIndex,
    opts: &GcOptions,
    cutoff: SystemTime,
    refs: &RefCache<'_>,
) -> Result<Marked> {
    let mut level: Vec<Digest> = tag_targets(registry, repo).await?;
    let all_roots = !opts.delete_untagged || is_cached(&repo.name, &opts.cached);
    for (d, meta) in &repo.manifests {
        if all_roots || meta.modified >= cutoff {
            level.push(d.clone());
        }
    }
    let mut marked = Marked {
        manifests: HashSet::new(),
        blobs: HashSet::new(),
    };
    // Level by level: roots, then their children and referrers, then theirs.
    while !level.is_empty() {
        level.retain(|d| marked.manifests.insert(d.clone()));
        let mut next = Vec::new();
        for (d, r) in level.iter().zip(refs.get_many(&level).await?) {
            if let Some(r) = r {
                next.extend(r.children.iter().cloned());
                marked.blobs.extend(r.blobs.iter().cloned());
            }
            next.extend(repo.referrers_of(d).cloned());
        }
        level = next;
    }
    Ok(marked)
}

/// An object the sweep may delete, with what to count when it goes.
enum Doomed {
    ManifestLink(RepoName, Digest),
    BlobLink(RepoName, Digest),
    ReferrerLink(RepoName, Digest, Digest),
    Blob(Digest),
}

impl Doomed {
    fn key(&self) -> Result<Key> {
        Ok(match self {
            Doomed::ManifestLink(r, d) => layout::manifest_link(r, d)?,
            Doomed::BlobLink(r, d) => layout::blob_link(r, d)?,
            Doomed::ReferrerLink(r, s, d) => layout::referrer(r, s, d)?,
            Doomed::Blob(d) => layout::blob(d)?,
        })
    }
}

/// Delete each doomed object still older than `cutoff`, in short holds of the deletion
/// permit. Returns what was kept (renewed since the walk).
async fn sweep(
    registry: &Registry,
    doomed: Vec<Doomed>,
    cutoff: SystemTime,
    report: &mut GcReport,
    renewer: &mut Renewer<'_>,
) -> Result<Vec<Doomed>> {
    let store = registry.store();
    let mut kept = Vec::new();
    let mut it = doomed.into_iter().peekable();
    while it.peek().is_some() {
        renewer.renew().await?;
        let _permit = registry.deletion_permit().await;
        let batch: Vec<Doomed> = it.by_ref().take(DELETE_BATCH).collect();
        // Each item's fresh stat and delete, a few at once: the hold stays short, and
        // on fs the unlinks overlap on the blocking threads.
        let dry_run = report.dry_run;
        let checked = futures::stream::iter(batch)
            .map(move |item| async move {
                let key = item.key()?;
                let Some(meta) = store.stat(&key).await? else {
                    return Ok::<_, UpkeepError>((item, key, None)); // someone else deleted it
                };
                if meta.modified >= cutoff {
                    return Ok((item, key, Some((meta, false))));
                }
                let gone = dry_run || store.delete(&key).await?;
                Ok((item, key, gone.then_some((meta, true))))
            })
            .buffered(DELETES_AT_ONCE);
        // Every check and delete of the batch ends before the permit is let go, even
        // when one of them fails.
        let results: Vec<_> = checked.collect().await;
        for result in results {
            let (item, key, outcome) = result?;
            let meta = match outcome {
                None => continue,
                Some((_, false)) => {
                    report.kept_in_use += 1;
                    kept.push(item);
                    continue;
                }
                Some((meta, true)) => meta,
            };
            match &item {
                Doomed::ManifestLink(r, d) => {
                    registry.forget_manifest(r, d);
                    report.manifests_deleted += 1;
                }
                Doomed::BlobLink(..) => report.blob_links_deleted += 1,
                Doomed::ReferrerLink(..) => report.referrer_links_deleted += 1,
                Doomed::Blob(_) => {
                    report.blobs_deleted += 1;
                    report.bytes_freed += meta.size;
                }
            }
            tracing::debug!(key = %key, dry_run = report.dry_run, "collected");
        }
        // Let waiting pushes in between holds.
        tokio::task::yield_now().await;
    }
    Ok(kept)
}

/// Run one collection.
pub async fn run_once(
    registry: &Registry,
    opts: &GcOptions,
    progress: &dyn Progress,
) -> Result<GcReport> {
    let started = Instant::now();
    let now = SystemTime::now();
    let cutoff = now
        .checked_sub(opts.grace + opts.renewal_slack)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut report = GcReport {
        dry_run: opts.dry_run,
        started_at: now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        ..GcReport::default()
    };
    let store = registry.store().clone();
    // One sweeper per store: replicas (and `berth gc` beside `berth serve`) take turns.
    let ttl = opts.lease_ttl.max(crate::LEASE_TTL_MIN);
    crate::lease_for(store.as_ref(), "gc", ttl).await?;
    let result = collect(registry, opts, progress, &store, cutoff, &mut report).await;
    let _ = store.release_lease("gc", crate::lease_holder()).await;
    result?;
    report.duration_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Collect every `interval` while `serve` runs (the first run one interval after the
/// start; none when `interval` is zero), logging each run and recording it in
/// `ctx.status.gc`, until the handle is aborted.
pub fn spawn_gc(
    ctx: &JobContext,
    interval: Duration,
    mut opts: GcOptions,
) -> Option<tokio::task::JoinHandle<()>> {
    // Reads renew on the registry's schedule, fixed at start; a reloaded [gc] grace must
    // not shrink the slack below it.
    opts.renewal_slack = opts.renewal_slack.max(ctx.registry.options().touch_after);
    let ctx = ctx.clone();
    crate::schedule::every(interval, move || {
        let (ctx, opts) = (ctx.clone(), opts.clone());
        async move { run_recorded(&ctx, &opts).await }
    })
}

/// One scheduled collection: [`run_once`], logged and recorded. A run skipped because
/// another process holds the lease is logged but not recorded.
async fn run_recorded(ctx: &JobContext, opts: &GcOptions) {
    let started = Instant::now();
    let result = run_once(&ctx.registry, opts, &crate::Quiet).await;
    let mut record = ctx.status.gc.lock();
    match result {
        Ok(r) => {
            tracing::info!(
                manifests_deleted = r.manifests_deleted,
                blobs_deleted = r.blobs_deleted,
                bytes_freed = r.bytes_freed,
                uploads_deleted = r.uploads_deleted,
                seconds = r.duration_seconds,
                "garbage collection done"
            );
            let removed = r.manifests_deleted
                + r.blob_links_deleted
                + r.referrer_links_deleted
                + r.blobs_deleted
                + r.uploads_deleted;
            let freed = r.bytes_freed;
            record.succeeded(r, started.elapsed(), removed, freed);
        }
        Err(UpkeepError::Busy(_)) => {
            tracing::info!("garbage collection skipped: another berth on this store is collecting");
        }
        Err(e) => {
            tracing::error!(error = %e, "garbage collection failed");
            record.failed(e.to_string(), started.elapsed());
        }
    }
}

/// How often a long run renews its lease at most: well inside [`crate::LEASE_TTL`], so
/// a run that walks for an hour keeps it, and a lease renewed this often costs nothing.
/// A shorter configured lease is renewed at a quarter of its length.
const LEASE_RENEW: Duration = Duration::from_secs(60);

/// Renews the run's lease every [`LEASE_RENEW`] (or quarter lease).
struct Renewer<'a> {
    store: &'a dyn store::Store,
    ttl: Duration,
    last: Instant,
}

impl Renewer<'_> {
    async fn renew(&mut self) -> Result<()> {
        if self.last.elapsed() >= LEASE_RENEW.min(self.ttl / 4) {
            self.now().await?;
        }
        Ok(())
    }

    async fn now(&mut self) -> Result<()> {
        match crate::lease_for(self.store, "gc", self.ttl).await {
            // Taken over while this run went on (it outlived its lease): a failure, not
            // a skipped run.
            Err(UpkeepError::Busy(name)) => return Err(UpkeepError::LeaseLost(name)),
            other => other?,
        }
        self.last = Instant::now();
        Ok(())
    }
}

/// The run in two streaming passes, memory independent of the store's size but for the
/// mark set (32 bytes per needed digest):
/// 1. repository by repository: mark, delete the links nobody needs, and add what must
///    stay (marked content, surviving links) to the mark set;
/// 2. every stored blob: delete the bytes the mark set does not hold.
async fn collect(
    registry: &Registry,
    opts: &GcOptions,
    progress: &dyn Progress,
    store: &std::sync::Arc<dyn store::Store>,
    cutoff: SystemTime,
    report: &mut GcReport,
) -> Result<()> {
    let now = SystemTime::now();
    let mut renewer = Renewer {
        store: store.as_ref(),
        ttl: opts.lease_ttl.max(crate::LEASE_TTL_MIN),
        last: Instant::now(),
    };
    // Uploads in progress: a handful, whatever the store's size.
    let uploads: HashMap<String, store::ObjectMeta> = store
        .upload_list()
        .await?
        .into_iter()
        .map(|(id, m)| (id.as_str().to_owned(), m))
        .collect();
    let abandoned_before = now
        .checked_sub(opts.abandoned_upload)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut upload_markers: HashSet<String> = HashSet::new();
    let mut uploads_doomed: Vec<(RepoName, String)> = Vec::new();

    progress.phase("marking and sweeping links", 0);
    let refs = RefCache {
        registry,
        refs: parking_lot::Mutex::new(HashMap::new()),
    };
    // Digests whose bytes stay: what marked manifests need, whether or not their links
    // survive (bytes a live image references are never deleted, even when a link is
    // missing: fsck reports that; --repair can re-link), and every surviving link.
    // Each digest with the sources whose repositories keep it (see `source_bit`).
    let mut needed = DigestTableBuilder::<u64>::merging(|a, b| a | b);
    let repos = index::Repos::open(store.as_ref()).await?.into_stream();
    let (refs, cutoff_at) = (&refs, cutoff);
    let marks = repos
        .map(move |repo| async move {
            let repo = repo?;
            let marked = mark(registry, &repo, opts, cutoff_at, refs).await?;
            Ok::<_, UpkeepError>((repo, marked))
        })
        .buffered(MARK_AHEAD);
    let mut marks = std::pin::pin!(marks);
    while let Some(item) = marks.next().await {
        let (repo, marked) = item?;
        let bit = source_bit(&repo.name, &opts.cached);
        renewer.renew().await?;
        report.repositories += 1;
        report.manifests_marked += marked.manifests.len() as u64;
        report.blobs_marked += marked.blobs.len() as u64;
        progress.advance(1);
        let mut doomed = Vec::new();
        for (d, meta) in &repo.manifests {
            if !marked.manifests.contains(d) && meta.modified < cutoff {
                doomed.push(Doomed::ManifestLink(repo.name.clone(), d.clone()));
            } else {
                needed.insert(d, bit);
            }
        }
        for (s, r, meta) in repo
            .referrers
            .iter()
            .flat_map(|(s, rs)| rs.iter().map(move |(r, m)| (s, r, m)))
        {
            let referrer_goes = !marked.manifests.contains(r)
                && repo.manifests.get(r).is_none_or(|m| m.modified < cutoff);
            if referrer_goes && meta.modified < cutoff {
                doomed.push(Doomed::ReferrerLink(
                    repo.name.clone(),
                    s.clone(),
                    r.clone(),
                ));
            }
        }
        for (d, meta) in &repo.blobs {
            if !marked.blobs.contains(d) && meta.modified < cutoff {
                doomed.push(Doomed::BlobLink(repo.name.clone(), d.clone()));
            } else {
                needed.insert(d, bit);
            }
        }
        for (id, marker) in &repo.uploads {
            upload_markers.insert(id.clone());
            let last = uploads.get(id).map_or(marker.modified, |m| m.modified);
            if last < abandoned_before && marker.modified < abandoned_before {
                uploads_doomed.push((repo.name.clone(), id.clone()));
            }
        }
        for d in marked.manifests.iter().chain(marked.blobs.iter()) {
            needed.insert(d, bit);
        }
        // Links renewed since the walk stay, and so do their bytes.
        for k in sweep(registry, doomed, cutoff, report, &mut renewer).await? {
            if let Doomed::ManifestLink(_, d) | Doomed::BlobLink(_, d) = k {
                needed.insert(&d, bit);
            }
        }
    }
    refs.refs.lock().clear();
    let needed = needed.build();

    renewer.renew().await?;
    progress.phase("sweeping blobs", 0);
    let mut blobs = std::pin::pin!(index::blobs(store.as_ref()).await?);
    let mut batch = Vec::with_capacity(DELETE_BATCH);
    let mut by_source = [0u64; 64];
    while let Some(item) = blobs.next().await {
        let (d, meta) = item?;
        progress.advance(1);
        renewer.renew().await?;
        let sources = needed.get(&d);
        // Kept: needed, or too young to go.
        if sources.is_some() || meta.modified >= cutoff {
            report.stored_bytes_total += meta.size;
        }
        if let Some(mut bits) = sources {
            while bits != 0 {
                let b = bits.trailing_zeros();
                by_source[b as usize] += meta.size;
                bits &= bits - 1;
            }
        }
        if meta.modified < cutoff && sources.is_none() {
            batch.push(Doomed::Blob(d));
            if batch.len() == DELETE_BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(DELETE_BATCH));
                sweep(registry, full, cutoff, report, &mut renewer).await?;
            }
        }
    }
    sweep(registry, batch, cutoff, report, &mut renewer).await?;
    for (b, bytes) in by_source.iter().enumerate() {
        if *bytes > 0 {
            report
                .stored_bytes
                .insert(source_name(b as u32, &opts.cached), *bytes);
        }
    }

    renewer.now().await?;
    progress.phase("uploads", 0);
    for (repo, id) in uploads_doomed {
        report.uploads_deleted += 1;
        if opts.dry_run {
            continue;
        }
        if let Ok(id) = UploadId::parse(&id) {
            store.upload_abort(&id).await?;
            store.delete(&layout::upload(&repo, &id)?).await?;
        }
    }
    // Upload bytes with no marker: left by a crash between creating the two.
    for (id, meta) in &uploads {
        if !upload_markers.contains(id) && meta.modified < abandoned_before {
            report.uploads_deleted += 1;
            if !opts.dry_run
                && let Ok(id) = UploadId::parse(id)
            {
                store.upload_abort(&id).await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod mark_tests {
    //! The mark at the crate's boundary, on the in-memory store: from each tag through an
    //! index to its children, their configs and layers, and to the referrers of what is
    //! marked; nothing within the grace period goes, and nothing renewed while the
    //! collection runs.

    use super::*;
    use bytes::Bytes;
    use futures::StreamExt;
    use oci::{Digest, Reference, RepoName, media};
    use registry::PutManifest;
    use std::sync::Arc;

    async fn blob(r: &Registry, repo: &RepoName, bytes: &'static [u8]) -> Digest {
        let d = Digest::sha256_of(bytes);
        let body = futures::stream::iter([Ok(Bytes::from_static(bytes))]).boxed();
        r.put_blob(repo, &d, Some(bytes.len() as u64), body)
            .await
            .unwrap();
        d
    }

    fn desc(media_type: &str, d: &Digest, size: usize) -> serde_json::Value {
        serde_json::json!({"mediaType": media_type, "digest": d.to_string(), "size": size})
    }

    async fn manifest(
        r: &Registry,
        repo: &RepoName,
        reference: &str,
        media_type: &str,
        body: serde_json::Value,
    ) -> Digest {
        let bytes = Bytes::from(serde_json::to_vec(&body).unwrap());
        let d = Digest::sha256_of(&bytes);
        let reference: Reference = if reference.is_empty() {
            Reference::Digest(d.clone())
        } else {
            reference.parse().unwrap()
        };
        r.put_manifest(PutManifest {
            repo,
            reference: &reference,
            content_type: Some(media_type),
            bytes,
        })
        .await
        .unwrap();
        d
    }

    async fn image(
        r: &Registry,
        repo: &RepoName,
        tag: &str,
        config: &'static [u8],
        layer: &'static [u8],
        subject: Option<&Digest>,
    ) -> Digest {
        let c = blob(r, repo, config).await;
        let l = blob(r, repo, layer).await;
        let mut body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": desc("application/vnd.oci.image.config.v1+json", &c, config.len()),
            "layers": [desc("application/vnd.oci.image.layer.v1.tar", &l, layer.len())],
        });
        if let Some(s) = subject {
            body["subject"] = desc(media::OCI_INDEX, s, 1);
            body["artifactType"] = "application/example.signature".into();
        }
        manifest(r, repo, tag, media::OCI_MANIFEST, body).await
    }

    async fn stored_size(r: &Registry, d: &Digest) -> u64 {
        let key = registry::layout::blob(d).unwrap();
        r.store().stat(&key).await.unwrap().unwrap().size
    }

    async fn present(r: &Registry, key: store::Key) -> bool {
        r.store().stat(&key).await.unwrap().is_some()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_collection_reports_the_bytes_each_source_keeps() {
        let r = Registry::new(
            Arc::new(store::memory::MemoryStore::new()),
            registry::RegistryOptions::default(),
        );
        let hosted: RepoName = "team/app".parse().unwrap();
        let cached: RepoName = "mirror.test/library/redis".parse().unwrap();
        // The same config and layer in both; one more layer only in the cache.
        let a = image(&r, &hosted, "v1", b"{\"shared\":1}", b"shared layer", None).await;
        let b = image(&r, &cached, "7", b"{\"shared\":1}", b"shared layer", None).await;
        let extra = image(&r, &cached, "8", b"{\"x\":1}", b"only cached", None).await;
        let opts = GcOptions {
            grace: Duration::ZERO,
            renewal_slack: Duration::ZERO,
            cached: vec!["upstream.other".to_owned(), "mirror.test".to_owned()],
            ..GcOptions::default()
        };
        let report = run_once(&r, &opts, &crate::Quiet).await.unwrap();
        let shared = (b"{\"shared\":1}".len() + b"shared layer".len()) as u64;
        let only_cached = (b"{\"x\":1}".len() + b"only cached".len()) as u64;
        let want_hosted = shared + stored_size(&r, &a).await;
        // `a` and `b` are the same manifest: the same bytes, stored once.
        assert_eq!(a, b);
        let want_cached =
            shared + stored_size(&r, &b).await + only_cached + stored_size(&r, &extra).await;
        assert_eq!(report.stored_bytes.get("hosted"), Some(&want_hosted));
        assert_eq!(report.stored_bytes.get("mirror.test"), Some(&want_cached));
        assert_eq!(report.stored_bytes.len(), 2, "{:?}", report.stored_bytes);
        assert_eq!(report.stored_bytes_total, want_cached, "shared bytes once");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_mark_follows_tags_through_indexes_children_and_referrers() {
        let r = Registry::new(
            Arc::new(store::memory::MemoryStore::new()),
            registry::RegistryOptions::default(),
        );
        let repo: RepoName = "team/app".parse().unwrap();
        // A tagged index over one child image, which only the index reaches.
        let child = image(&r, &repo, "", b"{\"c\":1}", b"child layer", None).await;
        let index = manifest(
            &r,
            &repo,
            "multi",
            media::OCI_INDEX,
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": media::OCI_INDEX,
                "manifests": [desc(media::OCI_MANIFEST, &child, 1)],
            }),
        )
        .await;
        // A signature of the index: reached only as a referrer.
        let signature = image(&r, &repo, "", b"{\"s\":1}", b"signature", Some(&index)).await;
        // An untagged image and a blob nothing references.
        let orphan = image(&r, &repo, "", b"{\"o\":1}", b"orphan layer", None).await;
        let loose = blob(&r, &repo, b"loose").await;

        // Within the grace period nothing goes.
        let within = GcOptions {
            grace: Duration::from_secs(3600),
            renewal_slack: Duration::ZERO,
            ..GcOptions::default()
        };
        let report = run_once(&r, &within, &crate::Quiet).await.unwrap();
        assert_eq!((report.manifests_deleted, report.blobs_deleted), (0, 0));
        assert!(present(&r, registry::layout::blob(&orphan).unwrap()).await);

        let now = GcOptions {
            grace: Duration::ZERO,
            renewal_slack: Duration::ZERO,
            ..GcOptions::default()
        };
        let report = run_once(&r, &now, &crate::Quiet).await.unwrap();
        for d in [&index, &child, &signature] {
            assert!(
                present(&r, registry::layout::manifest_link(&repo, d).unwrap()).await,
                "{d} is reachable and was kept"
            );
            assert!(present(&r, registry::layout::blob(d).unwrap()).await);
        }
        for bytes in [
            &b"child layer"[..],
            b"signature",
            b"{\"c\":1}",
            b"{\"s\":1}",
        ] {
            let d = Digest::sha256_of(bytes);
            assert!(
                present(&r, registry::layout::blob(&d).unwrap()).await,
                "{d}"
            );
        }
        assert!(!present(&r, registry::layout::manifest_link(&repo, &orphan).unwrap()).await);
        assert!(!present(&r, registry::layout::blob(&orphan).unwrap()).await);
        assert!(!present(&r, registry::layout::blob(&loose).unwrap()).await);
        let orphan_layer = Digest::sha256_of(b"orphan layer");
        assert!(!present(&r, registry::layout::blob(&orphan_layer).unwrap()).await);
        assert_eq!(report.manifests_deleted, 1, "{report:?}");
        // The tag still pulls whole.
        let got = r
            .get_manifest(&repo, &"multi".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(got.digest, index);
    }

    /// A [`Progress`] that pushes `bytes` again into `repo` at the first step of phase
    /// `at`: a client renewing content after the walk saw it old (the first step of the
    /// link phase is a repository marked, its links not yet swept; of the blob phase, a
    /// blob listed, not yet swept).
    struct PushAtPhase {
        registry: Registry,
        repo: RepoName,
        bytes: &'static [u8],
        at: &'static str,
        armed: std::sync::atomic::AtomicBool,
    }

    impl Progress for PushAtPhase {
        fn phase(&self, name: &str, _: u64) {
            self.armed
                .store(name == self.at, std::sync::atomic::Ordering::SeqCst);
        }
        fn advance(&self, _: u64) {
            if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
                tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current().block_on(blob(
                        &self.registry,
                        &self.repo,
                        self.bytes,
                    ))
                });
            }
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn content_renewed_during_the_sweep_is_kept() {
        let r = Registry::new(
            Arc::new(store::memory::MemoryStore::new()),
            registry::RegistryOptions::default(),
        );
        let repo: RepoName = "team/app".parse().unwrap();
        let now = GcOptions {
            grace: Duration::ZERO,
            renewal_slack: Duration::ZERO,
            ..GcOptions::default()
        };
        // Nothing references either blob, so the mark dooms both and their links.
        let renewed = blob(&r, &repo, b"pushed again mid-sweep").await;
        let dropped = blob(&r, &repo, b"left alone").await;
        let progress = PushAtPhase {
            registry: r.clone(),
            repo: repo.clone(),
            bytes: b"pushed again mid-sweep",
            at: "sweeping blobs",
            armed: false.into(),
        };
        let report = run_once(&r, &now, &progress).await.unwrap();
        // The links went in the link sweep; the push put its link back and renewed the
        // bytes, which the blob sweep then found newer than the cut-off.
        assert_eq!(report.kept_in_use, 1, "{report:?}");
        assert_eq!(report.blobs_deleted, 1, "{report:?}");
        assert!(present(&r, registry::layout::blob(&renewed).unwrap()).await);
        assert!(present(&r, registry::layout::blob_link(&repo, &renewed).unwrap()).await);
        assert!(!present(&r, registry::layout::blob(&dropped).unwrap()).await);
        let open = r.open_blob(&repo, &renewed).await.unwrap();
        assert_eq!(open.size, b"pushed again mid-sweep".len() as u64);

        // Renewed before the link sweep: the link is kept, and with it the bytes, which
        // are then not even candidates.
        let progress = PushAtPhase {
            at: "marking and sweeping links",
            armed: false.into(),
            ..progress
        };
        let again = blob(&r, &repo, b"left alone").await;
        let report = run_once(&r, &now, &progress).await.unwrap();
        assert!(report.kept_in_use >= 1, "{report:?}");
        assert!(present(&r, registry::layout::blob(&renewed).unwrap()).await);
        assert!(!present(&r, registry::layout::blob(&again).unwrap()).await);
    }
}
