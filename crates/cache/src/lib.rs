//! The pull-through cache: repositories named `<upstream key>/<path>` are served from the
//! store when they can be, and filled from their upstream when they cannot. Manifests by
//! digest are immutable and never re-fetched; tags are revalidated with a HEAD after the
//! upstream's `tag_ttl`, and a cached tag is served ("stale") when the upstream fails.
//! A blob miss starts exactly one upstream fetch per digest; every client asking for it
//! streams the bytes as they are stored, and the blob becomes visible only once its digest
//! matches. This crate never sees HTTP requests: the server routes to it.

mod evict;
mod fill;
#[cfg(test)]
mod tests;

use distribution::{Client, ClientError, ClientOptions};
use fill::Fill;
pub use fill::{FillError, FillReader, Started};
use oci::{Digest, Reference, RepoName, Tag};
use parking_lot::Mutex;
use registry::{Manifest, Registry, RegistryError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use evict::{
    EVICTION_GRACE, EVICTION_INTERVAL, EvictionLimits, EvictionReport, Pin, spawn_eviction,
};
pub use fill::BlobStream;

/// How long a cached tag is served without asking the upstream, unless configured.
/// Short enough that a re-pushed `latest` shows up within minutes, long enough that a
/// burst of pulls (a node pool rolling out) costs one HEAD upstream.
pub const DEFAULT_TAG_TTL: Duration = Duration::from_secs(5 * 60);

/// One upstream as the cache is told about it.
#[derive(Clone, Debug)]
pub struct UpstreamSpec {
    /// The registry host as users write it (`docker.io`, `127.0.0.1:5000`).
    pub name: String,
    pub options: ClientOptions,
    pub tag_ttl: Duration,
}

/// Counters of one upstream's cache traffic.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests answered from the store.
    pub hits: meter::Counter,
    /// Requests that had to go upstream.
    pub misses: meter::Counter,
    /// Tags served from the store because the upstream failed.
    pub stale_serves: meter::Counter,
    /// Clients that joined a blob fetch already under way.
    pub joins: meter::Counter,
    /// Blob GETs sent upstream.
    pub upstream_blob_gets: meter::Counter,
    /// Upstream requests that failed (outage or error answer).
    pub upstream_errors: meter::Counter,
    /// Time until the upstream answered (headers of a blob, whole small manifests).
    pub upstream_latency: meter::Histogram,
    /// Blob bytes downloaded from the upstream into the store.
    pub fetched_bytes: meter::Counter,
    /// Blob bytes sent to clients straight from the store: traffic the upstream was spared.
    pub served_bytes: meter::Counter,
}

/// Await `f`, recording how long it took in `h`.
async fn timed<F: std::future::Future>(h: &meter::Histogram, f: F) -> F::Output {
    let started = std::time::Instant::now();
    let out = f.await;
    h.observe(started.elapsed());
    out
}

/// An upstream with its client, settings and counters.
pub struct CachedUpstream {
    pub name: String,
    /// The first component of its repositories in the store.
    pub key: String,
    pub tag_ttl: Duration,
    /// Counters, kept across reconfigurations.
    pub stats: Arc<Stats>,
    client: Client,
    /// When clients last used each cached root manifest, by (store repository, digest):
    /// a cache of recent use for eviction, rebuilt from write times after a restart.
    access: Arc<Mutex<HashMap<(RepoName, Digest), SystemTime>>>,
}

impl CachedUpstream {
    /// The repository name as the upstream knows it, with Docker Hub's `library/`
    /// prefix added to single-component names.
    pub fn normalize(&self, repo: RepoName) -> RepoName {
        if self.name == "docker.io" && !repo.as_str().contains('/') {
            format!("library/{repo}").parse().unwrap_or(repo)
        } else {
            repo
        }
    }

    /// Where a repository of this upstream lives in the store.
    pub fn local(&self, upstream_repo: &RepoName) -> Result<RepoName, CacheError> {
        format!("{}/{upstream_repo}", self.key)
            .parse()
            .map_err(|e: oci::NameError| CacheError::Registry(e.into()))
    }
}

/// The store component for an upstream name: the name with `:` (a port) turned into `-`.
pub fn key_for(name: &str) -> String {
    name.to_ascii_lowercase().replace(':', "-")
}

/// Why a cached request failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("not found in the cache nor upstream")]
    NotFound,
    #[error("upstream {upstream} unavailable and nothing cached: {message}")]
    Unavailable { upstream: String, message: String },
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Where a blob's bytes come from.
pub enum BlobSource {
    /// In the store, linked into the repository (looked up: serve it from this).
    Local(registry::OpenBlob),
    /// Arriving from upstream; read it as it is stored.
    Filling(FillReader),
}

/// Where a blob's size comes from ([`Cache::blob_size`]).
pub enum BlobSize {
    /// In the store, linked into the repository (looked up: serve it from this).
    Local(registry::OpenBlob),
    /// Not cached; the upstream's HEAD announced it.
    Upstream(u64),
}

/// The pull-through cache over a registry.
pub struct Cache {
    registry: Registry,
    /// Swapped whole by [`Cache::reconfigure`]; requests hold the `Arc` they looked up.
    upstreams: arc_swap::ArcSwap<HashMap<String, Arc<CachedUpstream>>>,
    fills: Arc<Mutex<HashMap<fill::FillKey, Arc<Fill>>>>,
}

impl Cache {
    /// A cache over `registry` for `specs` (names must be distinct).
    pub fn new(registry: Registry, specs: Vec<UpstreamSpec>) -> Result<Cache, ClientError> {
        let cache = Cache {
            registry,
            upstreams: arc_swap::ArcSwap::default(),
            fills: Arc::default(),
        };
        cache.reconfigure(specs)?;
        Ok(cache)
    }

    /// Replace the configured upstreams with `specs`. Counters and recent-use records
    /// carry over by name; clients are built anew (new credentials, URLs and TTLs apply to
    /// the next request). Requests and downloads under way finish with the upstream they
    /// started with. On error nothing changes.
    pub fn reconfigure(&self, specs: Vec<UpstreamSpec>) -> Result<(), ClientError> {
        let old = self.upstreams.load_full();
        let mut upstreams = HashMap::new();
        for spec in specs {
            let previous = old.get(&spec.name);
            let up = CachedUpstream {
                key: key_for(&spec.name),
                name: spec.name.clone(),
                tag_ttl: spec.tag_ttl,
                stats: previous.map(|p| p.stats.clone()).unwrap_or_default(),
                client: Client::new(spec.options)?,
                access: previous.map(|p| p.access.clone()).unwrap_or_default(),
            };
            upstreams.insert(spec.name, Arc::new(up));
        }
        self.upstreams.store(Arc::new(upstreams));
        Ok(())
    }

    fn current(&self) -> Arc<HashMap<String, Arc<CachedUpstream>>> {
        self.upstreams.load_full()
    }

    /// The upstream configured under `name`.
    pub fn upstream(&self, name: &str) -> Option<Arc<CachedUpstream>> {
        self.current().get(name).cloned()
    }

    /// Every configured upstream, by name.
    pub fn upstreams(&self) -> Vec<Arc<CachedUpstream>> {
        let mut all: Vec<_> = self.current().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The upstream whose name or store key is `first` (a path's first component).
    pub fn for_prefix(&self, first: &str) -> Option<Arc<CachedUpstream>> {
        let current = self.current();
        current
            .get(first)
            .or_else(|| current.values().find(|u| u.key == first))
            .cloned()
    }

    /// Is `first` (a repository's first component) reserved for an upstream's cache?
    pub fn is_reserved(&self, first: &str) -> bool {
        self.current().values().any(|u| u.key == first)
    }

    fn outage(&self, up: &CachedUpstream, e: &ClientError) {
        up.stats.upstream_errors.inc();
        tracing::warn!(upstream = %up.name, error = %e, "upstream request failed");
    }

    /// Count and log an upstream failure with nothing cached to fall back on.
    fn unavailable(&self, up: &CachedUpstream, e: ClientError) -> CacheError {
        self.outage(up, &e);
        CacheError::Unavailable {
            upstream: up.name.clone(),
            message: e.to_string(),
        }
    }

    /// A manifest of an upstream repository, by tag or digest.
    pub async fn get_manifest(
        &self,
        up: &CachedUpstream,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Manifest, CacheError> {
        let local = up.local(repo)?;
        let found = self.get_manifest_inner(up, repo, &local, reference).await?;
        self.touch(up, &local, &found.digest);
        Ok(found)
    }

    async fn get_manifest_inner(
        &self,
        up: &CachedUpstream,
        repo: &RepoName,
        local: &RepoName,
        reference: &Reference,
    ) -> Result<Manifest, CacheError> {
        let local = local.clone();
        match reference {
            Reference::Digest(d) => match self.registry.get_manifest(&local, reference).await {
                Ok(m) => {
                    up.stats.hits.inc();
                    Ok(m)
                }
                Err(RegistryError::ManifestUnknown) => {
                    up.stats.misses.inc();
                    self.fetch_manifest(up, repo, &local, None, &d.to_string())
                        .await
                }
                Err(e) => Err(e.into()),
            },
            Reference::Tag(tag) => self.get_tagged(up, repo, &local, tag).await,
        }
    }

    async fn get_tagged(
        &self,
        up: &CachedUpstream,
        repo: &RepoName,
        local: &RepoName,
        tag: &Tag,
    ) -> Result<Manifest, CacheError> {
        let cached = match self
            .registry
            .get_manifest(local, &Reference::Tag(tag.clone()))
            .await
        {
            Ok(m) => Some(m),
            Err(RegistryError::ManifestUnknown) => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(m) = &cached {
            let written = self.registry.tag_written_at(local, tag).await?;
            let age = written.and_then(|w| SystemTime::now().duration_since(w).ok());
            if age.is_some_and(|a| a < up.tag_ttl) {
                up.stats.hits.inc();
                return Ok(m.clone());
            }
        }
        // Revalidate with a HEAD: it does not count against Docker Hub's rate limit.
        match (
            timed(
                &up.stats.upstream_latency,
                up.client.head_manifest(repo.as_str(), tag.as_str()),
            )
            .await,
            cached,
        ) {
            (Ok(head), Some(m)) if head.digest == m.digest => {
                self.registry.set_tag(local, tag, &m.digest).await?;
                up.stats.hits.inc();
                Ok(m)
            }
            (Ok(head), _) => {
                up.stats.misses.inc();
                if let Ok(stored) = self.registry.manifest_by_digest(local, &head.digest).await {
                    // Moved back to a manifest we already hold.
                    self.registry.set_tag(local, tag, &head.digest).await?;
                    return Ok(Manifest {
                        digest: head.digest,
                        stored,
                    });
                }
                self.fetch_manifest(up, repo, local, Some(tag), &head.digest.to_string())
                    .await
            }
            (Err(ClientError::NotFound), _) => Err(CacheError::NotFound),
            (Err(e), Some(m)) => {
                self.outage(up, &e);
                up.stats.stale_serves.inc();
                tracing::info!(upstream = %up.name, repo = %repo, tag = %tag, "serving cached tag while the upstream fails");
                Ok(m)
            }
            (Err(e), None) => {
                self.outage(up, &e);
                Err(CacheError::Unavailable {
                    upstream: up.name.clone(),
                    message: e.to_string(),
                })
            }
        }
    }

    async fn fetch_manifest(
        &self,
        up: &CachedUpstream,
        repo: &RepoName,
        local: &RepoName,
        tag: Option<&Tag>,
        reference: &str,
    ) -> Result<Manifest, CacheError> {
        let max = self.registry.options().max_manifest_bytes;
        let fetched = match timed(
            &up.stats.upstream_latency,
            up.client.get_manifest(repo.as_str(), reference, max),
        )
        .await
        {
            Ok(f) => f,
            Err(ClientError::NotFound) => return Err(CacheError::NotFound),
            Err(e) => return Err(self.unavailable(up, e)),
        };
        self.registry
            .cache_manifest(
                local,
                tag,
                &fetched.digest,
                &fetched.media_type,
                fetched.bytes,
            )
            .await?;
        let stored = self
            .registry
            .manifest_by_digest(local, &fetched.digest)
            .await?;
        Ok(Manifest {
            digest: fetched.digest,
            stored,
        })
    }

    /// `repo`'s copy of blob `digest` in the store, if it has one (counted as a hit).
    async fn local_hit(
        &self,
        up: &CachedUpstream,
        local: &RepoName,
        digest: &Digest,
    ) -> Result<Option<registry::OpenBlob>, CacheError> {
        match self.registry.open_blob(local, digest).await {
            Ok(blob) => {
                up.stats.hits.inc();
                Ok(Some(blob))
            }
            Err(RegistryError::BlobUnknown) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The size of a blob, for a HEAD: from the store when this repository has it, else
    /// the upstream's answer to a HEAD, without downloading anything (a cache in front
    /// of this one must not see a false 404, nor make it fetch what nobody pulls).
    pub async fn blob_size(
        &self,
        up: &Arc<CachedUpstream>,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<BlobSize, CacheError> {
        let local = up.local(repo)?;
        if let Some(blob) = self.local_hit(up, &local, digest).await? {
            return Ok(BlobSize::Local(blob));
        }
        match timed(
            &up.stats.upstream_latency,
            up.client.head_blob(repo.as_str(), digest),
        )
        .await
        {
            Ok(size) => Ok(BlobSize::Upstream(size)),
            Err(ClientError::NotFound) => Err(CacheError::NotFound),
            Err(e) => Err(self.unavailable(up, e)),
        }
    }

    /// A blob of an upstream repository: from the store, or from a fill (started now or
    /// joined if one is under way).
    pub async fn blob(
        &self,
        up: &Arc<CachedUpstream>,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<BlobSource, CacheError> {
        let local = up.local(repo)?;
        if let Some(blob) = self.local_hit(up, &local, digest).await? {
            return Ok(BlobSource::Local(blob));
        }
        // Bytes already in the store for another repository (hosted or cached) are
        // shared only when the upstream confirms the blob for this repository: a
        // cached name serves nothing its upstream would not, so neither a private
        // hosted layer nor bytes pushed elsewhere under an upstream digest leak
        // through it. A HEAD costs no download (and no Docker Hub rate limit).
        if let Some(stored) = self.registry.content_size(digest).await? {
            match timed(
                &up.stats.upstream_latency,
                up.client.head_blob(repo.as_str(), digest),
            )
            .await
            {
                Ok(size) if size == stored => {
                    // Collected between the link and now: download it.
                    if self.registry.relink_blob(&local, digest).await?
                        && let Some(blob) = self.local_hit(up, &local, digest).await?
                    {
                        return Ok(BlobSource::Local(blob));
                    }
                }
                // Another size under the same digest: the download below verifies.
                Ok(_) => {}
                Err(ClientError::NotFound) => return Err(CacheError::NotFound),
                Err(e) => return Err(self.unavailable(up, e)),
            }
        }
        let fill = {
            let mut fills = self.fills.lock();
            let key = (local.clone(), digest.clone());
            match fills.get(&key) {
                Some(f) => {
                    up.stats.joins.inc();
                    f.clone()
                }
                None => {
                    up.stats.misses.inc();
                    let f = Fill::start(fill::FillJob {
                        registry: self.registry.clone(),
                        upstream: up.clone(),
                        upstream_repo: repo.clone(),
                        repo: local.clone(),
                        digest: digest.clone(),
                        fills: self.fills.clone(),
                    });
                    fills.insert(key, f.clone());
                    f
                }
            }
        };
        Ok(BlobSource::Filling(
            fill.reader(self.registry.clone(), local),
        ))
    }

    /// The registry underneath.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}
