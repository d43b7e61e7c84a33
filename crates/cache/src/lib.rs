//! The pull-through cache: repositories named `<upstream key>/<path>` are served from the
//! store when they can be, and filled from their upstream when they cannot. Manifests by
//! digest are immutable and never re-fetched; tags are revalidated with a HEAD after the
//! upstream's `tag_ttl`, and a cached tag is served ("stale") when the upstream fails.
//! A blob miss starts exactly one upstream fetch per digest; every client asking for it
//! streams the bytes as they are stored, and the blob becomes visible only once its digest
//! matches. This crate never sees HTTP requests: the server routes to it.

mod evict;
mod fill;
pub mod gate;
pub mod prefetch;
#[cfg(test)]
mod tests;

use distribution::{Client, ClientError, ClientOptions};
use fill::Fill;
pub use fill::{FillError, FillReader, Started};
pub use gate::{Circuit, Gate, GateStats, Limits, Refused};
use oci::{Digest, Reference, RepoName, Tag};
use parking_lot::Mutex;
pub use prefetch::{PrefetchMode, PrefetchReport, PrefetchRule, TagFilter, spawn_prefetch};
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
    /// The upstream repositories clients may ask for (as the upstream names them:
    /// `library/nginx`); empty for all.
    pub repositories: Vec<oci::RepoPattern>,
    pub limits: Limits,
    /// Images kept cached and fresh without a client asking.
    pub prefetch: Vec<PrefetchRule>,
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
    /// When a tag was last served stale (see [`Stats::served_stale`]).
    pub last_stale_serve: Mutex<Option<SystemTime>>,
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
    /// Requests refused by the allow-list (`repositories`), never sent upstream.
    pub denied: meter::Counter,
    /// What the upstream's gate refused and saw (limits, 429s, the circuit breaker).
    pub gate: Arc<GateStats>,
    /// Prefetch runs finished.
    pub prefetch_runs: meter::Counter,
    /// Tags a prefetch run could not bring in.
    pub prefetch_failures: meter::Counter,
    /// Cache misses prefetch runs caused (manifests and blobs fetched upstream).
    pub prefetch_downloads: meter::Counter,
    /// Tags each prefetch rule's last run matched, by the rule's number.
    pub prefetch_tags: Mutex<std::collections::BTreeMap<usize, u64>>,
}

impl Stats {
    /// Tags the upstream's prefetch rules keep, as their last runs matched them.
    pub fn prefetched_tags(&self) -> u64 {
        self.prefetch_tags.lock().values().sum()
    }

    /// A tag was served from the store because the upstream failed, just now.
    pub fn served_stale(&self) {
        self.stale_serves.inc();
        *self.last_stale_serve.lock() = Some(SystemTime::now());
    }
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
    /// The allow-list: upstream repositories clients may ask for; empty for all.
    pub repositories: Vec<oci::RepoPattern>,
    /// Counters, kept across reconfigurations.
    pub stats: Arc<Stats>,
    /// Admission of requests to the upstream (rebuilt with the configuration; its
    /// counters live in `stats`).
    pub gate: Arc<Gate>,
    /// The `[[upstream.prefetch]]` rules; eviction never takes what they cover.
    pub prefetch: Arc<Vec<PrefetchRule>>,
    client: Client,
    /// When clients last used each cached root manifest, by (store repository, digest):
    /// a cache of recent use for eviction, rebuilt from write times after a restart.
    access: Arc<Mutex<HashMap<(RepoName, Digest), SystemTime>>>,
}

impl CachedUpstream {
    /// Whether clients may ask for `repo` (an upstream name) through this cache: the
    /// allow-list, checked before anything is looked up or sent.
    pub fn allows(&self, repo: &RepoName) -> bool {
        self.repositories.is_empty() || self.repositories.iter().any(|p| p.matches(repo.as_str()))
    }

    /// [`CachedUpstream::allows`], as the error the client gets (counted).
    pub fn check_allowed(&self, repo: &RepoName) -> Result<(), CacheError> {
        if self.allows(repo) {
            return Ok(());
        }
        self.stats.denied.inc();
        Err(CacheError::Denied {
            upstream: self.name.clone(),
            repo: repo.to_string(),
            allowed: self
                .repositories
                .iter()
                .map(|p| p.as_str().to_owned())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// Send one request upstream through the gate: refused at once when the limits,
    /// a 429 or the circuit breaker say so; the answer recorded for the breaker.
    async fn ask<T>(
        &self,
        request: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, Asked> {
        let pass = self.gate.admit().await.map_err(Asked::Refused)?;
        let answer = timed(&self.stats.upstream_latency, request).await;
        self.gate.record(&pass, &answer);
        answer.map_err(Asked::Client)
    }

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

/// Why a request was not answered by the upstream: refused before it was sent, or the
/// upstream's error.
#[derive(Debug)]
enum Asked {
    Refused(Refused),
    Client(ClientError),
}

/// Why a cached request failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("not found in the cache nor upstream")]
    NotFound,
    #[error("upstream {upstream} unavailable and nothing cached: {message}")]
    Unavailable { upstream: String, message: String },
    /// The allow-list of the upstream does not name the repository.
    #[error(
        "repository {repo} is not in the allow-list of upstream {upstream} ([[upstream]] repositories = [{allowed}])"
    )]
    Denied {
        upstream: String,
        repo: String,
        allowed: String,
    },
    /// Not sent upstream (limits, rate limit in force, circuit open) and not cached.
    #[error("upstream {upstream}: {refused}; nothing cached to serve")]
    Refused { upstream: String, refused: Refused },
    /// The upstream answered 429 and nothing is cached.
    #[error("upstream {upstream} is rate-limiting berth and nothing is cached")]
    RateLimited {
        upstream: String,
        retry_after: Option<Duration>,
    },
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
            let stats: Arc<Stats> = previous.map(|p| p.stats.clone()).unwrap_or_default();
            let up = CachedUpstream {
                key: key_for(&spec.name),
                name: spec.name.clone(),
                tag_ttl: spec.tag_ttl,
                repositories: spec.repositories,
                stats: stats.clone(),
                // The same gate while the limits stay (its slots are in use); for new
                // limits a new one that still knows a down or rate-limiting upstream.
                gate: match previous {
                    Some(p) if *p.gate.limits() == spec.limits => p.gate.clone(),
                    Some(p) => Arc::new(Gate::succeeding(&p.gate, spec.limits)),
                    None => Arc::new(Gate::new(spec.limits, stats.gate.clone())),
                },
                prefetch: {
                    // Counts of rules a reload removed go with them.
                    let rules = spec.prefetch.len();
                    stats.prefetch_tags.lock().retain(|n, _| *n <= rules);
                    Arc::new(spec.prefetch)
                },
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

    /// The client's error for a request the upstream did not answer, with nothing
    /// cached to serve instead.
    fn failed(&self, up: &CachedUpstream, e: Asked) -> CacheError {
        match e {
            Asked::Client(ClientError::NotFound) => CacheError::NotFound,
            Asked::Client(ClientError::RateLimited { retry_after }) => {
                tracing::warn!(upstream = %up.name, "upstream rate limit (429)");
                CacheError::RateLimited {
                    upstream: up.name.clone(),
                    retry_after,
                }
            }
            Asked::Client(e) => self.unavailable(up, e),
            Asked::Refused(refused) => CacheError::Refused {
                upstream: up.name.clone(),
                refused,
            },
        }
    }

    /// A manifest of an upstream repository, by tag or digest.
    pub async fn get_manifest(
        &self,
        up: &CachedUpstream,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Manifest, CacheError> {
        up.check_allowed(repo)?;
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
            up.ask(up.client.head_manifest(repo.as_str(), tag.as_str()))
                .await,
            cached,
        ) {
            (Ok(head), Some(m)) if head.digest == m.digest => {
                self.registry.set_tag(local, tag, &m.digest).await?;
                up.stats.hits.inc();
                Ok(m)
            }
            (Ok(head), cached) => {
                up.stats.misses.inc();
                if let Ok(stored) = self.registry.manifest_by_digest(local, &head.digest).await {
                    // Moved back to a manifest we already hold.
                    self.registry.set_tag(local, tag, &head.digest).await?;
                    return Ok(Manifest {
                        digest: head.digest,
                        stored,
                    });
                }
                match (
                    self.fetch_manifest(up, repo, local, Some(tag), &head.digest.to_string())
                        .await,
                    cached,
                ) {
                    (Ok(m), _) => Ok(m),
                    // The tag moved but the new manifest cannot be had now (a 429 on
                    // the GET that the HEAD was spared, an outage): the image it was.
                    (Err(CacheError::NotFound), _) => Err(CacheError::NotFound),
                    (Err(CacheError::Registry(e)), _) => Err(CacheError::Registry(e)),
                    (Err(e), Some(m)) => {
                        up.stats.served_stale();
                        tracing::info!(upstream = %up.name, repo = %repo, tag = %tag, error = %e, "serving the cached image of a moved tag while its new manifest cannot be fetched");
                        Ok(m)
                    }
                    (Err(e), None) => Err(e),
                }
            }
            (Err(Asked::Client(ClientError::NotFound)), _) => Err(CacheError::NotFound),
            (Err(e), Some(m)) => {
                match &e {
                    Asked::Client(e) => self.outage(up, e),
                    Asked::Refused(r) => {
                        tracing::debug!(upstream = %up.name, reason = %r, "not asking the upstream")
                    }
                }
                up.stats.served_stale();
                tracing::info!(upstream = %up.name, repo = %repo, tag = %tag, "serving cached tag while the upstream fails");
                Ok(m)
            }
            (Err(e), None) => Err(self.failed(up, e)),
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
        let fetched = up
            .ask(up.client.get_manifest(repo.as_str(), reference, max))
            .await
            .map_err(|e| self.failed(up, e))?;
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
        up.check_allowed(repo)?;
        let local = up.local(repo)?;
        if let Some(blob) = self.local_hit(up, &local, digest).await? {
            return Ok(BlobSize::Local(blob));
        }
        up.ask(up.client.head_blob(repo.as_str(), digest))
            .await
            .map(BlobSize::Upstream)
            .map_err(|e| self.failed(up, e))
    }

    /// A blob of an upstream repository: from the store, or from a fill (started now or
    /// joined if one is under way).
    pub async fn blob(
        &self,
        up: &Arc<CachedUpstream>,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<BlobSource, CacheError> {
        up.check_allowed(repo)?;
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
            match up.ask(up.client.head_blob(repo.as_str(), digest)).await {
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
                Err(e) => return Err(self.failed(up, e)),
            }
        }
        let key = (local.clone(), digest.clone());
        let joined = self.fills.lock().get(&key).cloned();
        if let Some(f) = joined {
            up.stats.joins.inc();
            return Ok(BlobSource::Filling(f.reader(self.registry.clone(), local)));
        }
        // A new download needs the gate's leave, held until it ends.
        let pass = up
            .gate
            .admit()
            .await
            .map_err(|refused| CacheError::Refused {
                upstream: up.name.clone(),
                refused,
            })?;
        let fill = {
            let mut fills = self.fills.lock();
            match fills.get(&key) {
                // Started by another client while this one waited: join it.
                Some(f) => {
                    up.stats.joins.inc();
                    f.clone()
                }
                None => {
                    up.stats.misses.inc();
                    let f = Fill::start(fill::FillJob {
                        pass,
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
