//! Eviction of cached content per upstream: least recently used first, when the
//! upstream's cache is over `max_size` or content has been idle longer than `max_idle`.
//!
//! The unit of eviction is a root manifest of a cached repository (a tagged manifest, or
//! an untagged one no index of the repository refers to) with everything it pulls in:
//! the children of an index, recursively, and their configs and layers. Units go whole, so
//! a cached index never loses its children; what another unit still needs stays. Bytes are
//! deleted only when no repository at all (hosted or cached) links them any more.

use crate::{Cache, CachedUpstream};
use oci::{Digest, ManifestKind, ParsedManifest, Reference, RepoName, Tag};
use registry::RegistryError;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Content used this recently is never evicted, whatever the limits say: a client that
/// just resolved a tag is about to fetch its blobs, and evicting them under it would turn
/// a cache hit into a broken pull.
pub const EVICTION_GRACE: Duration = Duration::from_secs(10 * 60);

/// How often the background job checks the limits. Eviction is not urgent: the limits
/// are soft, and one run walks every cached repository of every limited upstream.
///
/// Memory: the store-wide "still linked" set is an `oci::DigestSet` (32 bytes a digest),
/// but one run holds every unit (root, its manifests and blobs) of the upstream at once,
/// to order them by last use; that grows with the upstream's cached images.
pub const EVICTION_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// Limits of one upstream's cache.
#[derive(Clone, Debug, Default)]
pub struct EvictionLimits {
    /// Bytes the upstream's cached content may take.
    pub max_size: Option<u64>,
    /// Content unused for longer than this is evicted.
    pub max_idle: Option<Duration>,
    /// Tags never evicted, matched against the upstream's names.
    pub pinned: Vec<Pin>,
}

/// What one eviction run did (or, dry, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EvictionReport {
    /// Root manifests evicted, as `repo@digest`.
    pub evicted: Vec<String>,
    /// Bytes of blob and manifest content deleted.
    pub bytes_freed: u64,
    /// The upstream's cached bytes before the run.
    pub size_before: u64,
}

struct Unit {
    repo: RepoName,
    root: Digest,
    tags: Vec<Tag>,
    manifests: BTreeSet<Digest>,
    blobs: BTreeSet<Digest>,
    last_used: SystemTime,
    pinned: bool,
}

/// A pinned tag pattern, `repo:tag`: both sides [`oci::RepoPattern`]s, so `*` stays
/// within one path component and `**` crosses (`library/nginx:*`, `**:stable`), as in
/// access rules, retention and exports.
#[derive(Clone, Debug)]
pub struct Pin {
    repos: oci::RepoPattern,
    tags: oci::RepoPattern,
}

impl Pin {
    /// Compile `repo:tag` (split at the last `:`).
    pub fn new(pattern: &str) -> Result<Pin, oci::PatternError> {
        let Some((repos, tags)) = pattern.rsplit_once(':') else {
            return Err(oci::PatternError {
                pattern: pattern.to_owned(),
                reason: "a pin is repo:tag (library/nginx:*, **:stable)".to_owned(),
            });
        };
        Ok(Pin {
            repos: oci::RepoPattern::new(repos)?,
            tags: oci::RepoPattern::new(tags)?,
        })
    }

    /// Does it pin `tag` of the upstream's repository `repo`?
    pub fn pins(&self, repo: &str, tag: &str) -> bool {
        self.repos.matches(repo) && self.tags.matches(tag)
    }
}

impl Cache {
    /// Record that a client used manifest `digest` of cached repository `local`.
    pub(crate) fn touch(&self, up: &CachedUpstream, local: &RepoName, digest: &Digest) {
        up.access
            .lock()
            .insert((local.clone(), digest.clone()), SystemTime::now());
    }

    /// One eviction pass over upstream `up` under `limits`.
    pub async fn evict_once(
        &self,
        up: &Arc<CachedUpstream>,
        limits: &EvictionLimits,
        now: SystemTime,
    ) -> Result<EvictionReport, RegistryError> {
        let reg = &self.registry;
        let prefix = format!("{}/", up.key);
        let all = reg.all_repositories().await?;
        let mut units = Vec::new();
        for repo in all.iter().filter(|r| r.as_str().starts_with(&prefix)) {
            units.extend(self.units_of(up, repo, limits).await?);
        }
        // How many units need each (repo, blob) and (repo, manifest), and the sizes.
        let mut holders: HashMap<(RepoName, Digest), usize> = HashMap::new();
        let mut sizes: HashMap<Digest, u64> = HashMap::new();
        for u in &units {
            for d in u.blobs.iter().chain(u.manifests.iter()) {
                *holders.entry((u.repo.clone(), d.clone())).or_default() += 1;
                if !sizes.contains_key(d) {
                    let size = reg.content_size(d).await?.unwrap_or(0);
                    sizes.insert(d.clone(), size);
                }
            }
        }
        let mut total: u64 = sizes.values().sum();
        let report_size = total;
        units.sort_by_key(|u| u.last_used);
        let mut evicted = Vec::new();
        for u in units {
            let idle = now.duration_since(u.last_used).unwrap_or_default();
            let too_old = limits.max_idle.is_some_and(|m| idle > m);
            let too_big = limits.max_size.is_some_and(|m| total > m);
            if u.pinned || idle < EVICTION_GRACE || !(too_old || too_big) {
                continue;
            }
            for d in u.blobs.iter().chain(u.manifests.iter()) {
                let key = (u.repo.clone(), d.clone());
                if let Some(n) = holders.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        total = total.saturating_sub(sizes.get(d).copied().unwrap_or(0));
                    }
                }
            }
            evicted.push(u);
        }
        let mut report = EvictionReport {
            size_before: report_size,
            ..EvictionReport::default()
        };
        let mut unlinked: HashSet<Digest> = HashSet::new();
        for u in &evicted {
            for t in &u.tags {
                let _ = reg
                    .delete_manifest(&u.repo, &Reference::Tag(t.clone()))
                    .await;
            }
            for d in &u.manifests {
                if holders.get(&(u.repo.clone(), d.clone())) == Some(&0) {
                    let _ = reg
                        .delete_manifest(&u.repo, &Reference::Digest(d.clone()))
                        .await;
                    unlinked.insert(d.clone());
                }
            }
            for d in &u.blobs {
                if holders.get(&(u.repo.clone(), d.clone())) == Some(&0) {
                    let _ = reg.delete_blob(&u.repo, d).await;
                    unlinked.insert(d.clone());
                }
            }
            report.evicted.push(format!("{}@{}", u.repo, u.root));
            up.access.lock().remove(&(u.repo.clone(), u.root.clone()));
        }
        if unlinked.is_empty() {
            return Ok(report);
        }
        // Bytes go only when nothing links them any more, hosted repositories included.
        // 32 bytes a linked digest (`oci::DigestSet`), not a map of strings.
        let mut still_linked = oci::DigestSetBuilder::new();
        for repo in reg.all_repositories().await? {
            for d in reg.blob_digests(&repo).await? {
                still_linked.insert(&d, ());
            }
            for d in reg.manifest_digests(&repo).await? {
                still_linked.insert(&d, ());
            }
        }
        let still_linked = still_linked.build();
        for d in unlinked {
            if !still_linked.contains(&d) && reg.purge_content(&d, now - EVICTION_GRACE).await? {
                report.bytes_freed += sizes.get(&d).copied().unwrap_or(0);
            }
        }
        tracing::info!(
            upstream = %up.name,
            evicted = report.evicted.len(),
            bytes_freed = report.bytes_freed,
            "cache eviction"
        );
        Ok(report)
    }

    async fn units_of(
        &self,
        up: &CachedUpstream,
        repo: &RepoName,
        limits: &EvictionLimits,
    ) -> Result<Vec<Unit>, RegistryError> {
        let reg = &self.registry;
        let manifests = reg.manifest_digests(repo).await?;
        let mut parsed: HashMap<Digest, ParsedManifest> = HashMap::new();
        for d in &manifests {
            if let Ok(stored) = reg.manifest_by_digest(repo, d).await
                && let Ok(p) = ParsedManifest::parse(&stored.bytes, Some(&stored.media_type))
            {
                parsed.insert(d.clone(), p);
            }
        }
        let children: HashSet<Digest> = parsed
            .values()
            .filter(|p| p.kind == ManifestKind::Index)
            .flat_map(|p| p.manifests.iter().map(|c| c.digest.clone()))
            .collect();
        let mut tags_of: HashMap<Digest, Vec<Tag>> = HashMap::new();
        for t in reg.all_tags(repo).await? {
            if let Ok(d) = reg.resolve_tag(repo, &t).await {
                tags_of.entry(d).or_default().push(t);
            }
        }
        let upstream_repo = repo
            .as_str()
            .strip_prefix(&format!("{}/", up.key))
            .unwrap_or(repo.as_str())
            .to_owned();
        let access = up.access.lock().clone();
        let mut units = Vec::new();
        for root in &manifests {
            let tags = tags_of.get(root).cloned().unwrap_or_default();
            if tags.is_empty() && children.contains(root) {
                continue; // part of an index's unit
            }
            let mut unit_manifests = BTreeSet::new();
            let mut blobs = BTreeSet::new();
            let mut stack = vec![root.clone()];
            while let Some(m) = stack.pop() {
                if !unit_manifests.insert(m.clone()) {
                    continue;
                }
                if let Some(p) = parsed.get(&m) {
                    blobs.extend(p.required_blobs().map(|b| b.digest.clone()));
                    stack.extend(p.manifests.iter().map(|c| c.digest.clone()));
                }
            }
            // Without a recorded use (say, after a restart), the last write stands in:
            // the tag's revalidation or the manifest's caching.
            let mut last_used = access.get(&(repo.clone(), root.clone())).copied();
            for t in &tags {
                if let Some(w) = reg.tag_written_at(repo, t).await? {
                    last_used = Some(last_used.map_or(w, |l| l.max(w)));
                }
            }
            let last_used = last_used.unwrap_or(SystemTime::UNIX_EPOCH);
            let pinned = tags.iter().any(|t| {
                limits
                    .pinned
                    .iter()
                    .any(|p| p.pins(upstream_repo.as_str(), t.as_str()))
                    || up
                        .prefetch
                        .iter()
                        .any(|r| r.covers(upstream_repo.as_str(), t.as_str()))
            });
            units.push(Unit {
                repo: repo.clone(),
                root: root.clone(),
                tags,
                manifests: unit_manifests,
                blobs,
                last_used,
                pinned,
            });
        }
        Ok(units)
    }
}

/// Run eviction for every upstream with limits, every [`EVICTION_INTERVAL`], until the
/// returned handle is dropped or aborted.
pub fn spawn_eviction(
    cache: Arc<Cache>,
    limits: HashMap<String, EvictionLimits>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVICTION_INTERVAL);
        loop {
            tick.tick().await;
            for (name, l) in &limits {
                let Some(up) = cache.upstream(name) else {
                    continue;
                };
                if let Err(e) = cache.evict_once(&up, l, SystemTime::now()).await {
                    tracing::warn!(upstream = %name, error = %e, "cache eviction failed");
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::Pin;

    #[test]
    fn pins_read_patterns_like_access_rules() {
        let pin = |p: &str| Pin::new(p).unwrap();
        assert!(pin("library/nginx:*").pins("library/nginx", "1.25"));
        assert!(!pin("library/nginx:*").pins("library/nginx/extra", "1.25"));
        assert!(pin("**:stable").pins("a/b", "stable"));
        assert!(
            !pin("*:stable").pins("a/b", "stable"),
            "* stays in a component"
        );
        assert!(pin("exact:1").pins("exact", "1") && !pin("exact:1").pins("exact", "12"));
        assert!(Pin::new("no-tag").is_err());
        assert!(Pin::new("team/[:x").is_err());
    }
}

#[cfg(test)]
mod eviction_tests {
    use super::*;
    use crate::UpstreamSpec;
    use bytes::Bytes;
    use futures::StreamExt;
    use oci::media;
    use registry::{Registry, RegistryOptions};

    struct World {
        cache: Cache,
        up: Arc<CachedUpstream>,
        reg: Registry,
    }

    async fn blob(reg: &Registry, repo: &str, content: &[u8]) -> (Digest, usize) {
        let d = Digest::sha256_of(content);
        let body = futures::stream::iter([Ok(Bytes::copy_from_slice(content))]).boxed();
        reg.put_blob(&repo.parse().unwrap(), &d, None, body)
            .await
            .unwrap();
        (d, content.len())
    }

    fn image(config: &(Digest, usize), layers: &[&(Digest, usize)]) -> Vec<u8> {
        let l: Vec<String> = layers
            .iter()
            .map(|(d, n)| format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{n}}}"#))
            .collect();
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{}]}}"#,
            media::OCI_MANIFEST,
            config.0,
            config.1,
            l.join(",")
        )
        .into_bytes()
    }

    async fn cache_manifest(
        reg: &Registry,
        repo: &str,
        tag: Option<&str>,
        bytes: Vec<u8>,
        mt: &str,
    ) -> Digest {
        let d = Digest::sha256_of(&bytes);
        let tag: Option<Tag> = tag.map(|t| t.parse().unwrap());
        reg.cache_manifest(
            &repo.parse().unwrap(),
            tag.as_ref(),
            &d,
            mt,
            Bytes::from(bytes),
        )
        .await
        .unwrap();
        d
    }

    /// up.io/a: `old` (layer shared with hosted/app), `new`, and `multi` (an index of two).
    async fn world() -> (World, HashMap<&'static str, Digest>) {
        let reg = Registry::new(
            Arc::new(store::memory::MemoryStore::new()),
            RegistryOptions::default(),
        );
        let cache = Cache::new(
            reg.clone(),
            vec![UpstreamSpec {
                name: "up.io".into(),
                options: distribution::ClientOptions::new("http://127.0.0.1:9"),
                tag_ttl: Duration::from_secs(60),
                repositories: Vec::new(),
                limits: crate::Limits::default(),
                prefetch: Vec::new(),
            }],
        )
        .unwrap();
        let up = cache.upstream("up.io").unwrap();
        let r = "up.io/a";
        let mut d = HashMap::new();
        let shared = blob(&reg, "hosted/app", b"shared layer").await;
        blob(&reg, r, b"shared layer").await;
        let c_old = blob(&reg, r, b"config old").await;
        let c_new = blob(&reg, r, b"config new").await;
        let l_new = blob(&reg, r, b"layer new").await;
        let c1 = blob(&reg, r, b"config c1").await;
        let c2 = blob(&reg, r, b"config c2").await;
        let l3 = blob(&reg, r, b"layer 3").await;
        d.insert("shared", shared.0.clone());
        d.insert("c_old", c_old.0.clone());
        d.insert("l_new", l_new.0.clone());
        d.insert("l3", l3.0.clone());
        d.insert(
            "old",
            cache_manifest(
                &reg,
                r,
                Some("old"),
                image(&c_old, &[&shared]),
                media::OCI_MANIFEST,
            )
            .await,
        );
        d.insert(
            "new",
            cache_manifest(
                &reg,
                r,
                Some("new"),
                image(&c_new, &[&l_new]),
                media::OCI_MANIFEST,
            )
            .await,
        );
        let m1 = image(&c1, &[&l3]);
        let m2 = image(&c2, &[&l3]);
        let (d1, d2) = (Digest::sha256_of(&m1), Digest::sha256_of(&m2));
        let (n1, n2) = (m1.len(), m2.len());
        d.insert(
            "child1",
            cache_manifest(&reg, r, None, m1, media::OCI_MANIFEST).await,
        );
        cache_manifest(&reg, r, None, m2, media::OCI_MANIFEST).await;
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","digest":"{d1}","size":{n1}}},{{"mediaType":"{}","digest":"{d2}","size":{n2}}}]}}"#,
            media::OCI_INDEX,
            media::OCI_MANIFEST,
            media::OCI_MANIFEST
        );
        d.insert(
            "multi",
            cache_manifest(&reg, r, Some("multi"), index.into_bytes(), media::OCI_INDEX).await,
        );
        (World { cache, up, reg }, d)
    }

    fn later(h: u64) -> SystemTime {
        SystemTime::now() + Duration::from_secs(h * 3600)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn idle_units_go_whole_and_shared_bytes_stay() {
        let (w, d) = world().await;
        let repo: RepoName = "up.io/a".parse().unwrap();
        // `new` was used just now (as seen from two hours on)
        w.up.access
            .lock()
            .insert((repo.clone(), d["new"].clone()), later(2));
        let limits = EvictionLimits {
            max_idle: Some(Duration::from_secs(3600)),
            ..EvictionLimits::default()
        };
        let report = w.cache.evict_once(&w.up, &limits, later(2)).await.unwrap();
        assert_eq!(report.evicted.len(), 2, "{report:?}");
        assert!(report.bytes_freed > 0);
        let get = |r: &str| Reference::Tag(r.parse().unwrap());
        assert!(w.reg.get_manifest(&repo, &get("new")).await.is_ok());
        assert!(w.reg.get_manifest(&repo, &get("old")).await.is_err());
        assert!(w.reg.get_manifest(&repo, &get("multi")).await.is_err());
        // the index went with its children: no orphan child left behind
        assert!(w.reg.manifest_by_digest(&repo, &d["child1"]).await.is_err());
        assert_eq!(w.reg.content_size(&d["l3"]).await.unwrap(), None);
        assert_eq!(w.reg.content_size(&d["c_old"]).await.unwrap(), None);
        // a layer a hosted repository links keeps its bytes
        assert!(w.reg.content_size(&d["shared"]).await.unwrap().is_some());
        assert!(
            w.reg
                .stat_blob(&"hosted/app".parse().unwrap(), &d["shared"])
                .await
                .is_ok()
        );
        // what stayed is intact
        assert!(w.reg.stat_blob(&repo, &d["l_new"]).await.is_ok());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn pinned_and_recent_units_stay_and_size_evicts_least_recent_first() {
        let (w, d) = world().await;
        let repo: RepoName = "up.io/a".parse().unwrap();
        let get = |r: &str| Reference::Tag(r.parse().unwrap());
        // within the grace period nothing goes, however small the limit
        let tiny = EvictionLimits {
            max_size: Some(1),
            ..EvictionLimits::default()
        };
        let report = w
            .cache
            .evict_once(&w.up, &tiny, SystemTime::now())
            .await
            .unwrap();
        assert!(report.evicted.is_empty());
        // later: pin multi; order of use: old (oldest), new
        {
            let mut a = w.up.access.lock();
            a.insert((repo.clone(), d["old"].clone()), later(1));
            a.insert((repo.clone(), d["new"].clone()), later(2));
        }
        let limits = EvictionLimits {
            max_size: Some(report.size_before - 1),
            pinned: vec![Pin::new("a:multi").unwrap()],
            ..EvictionLimits::default()
        };
        let report = w.cache.evict_once(&w.up, &limits, later(3)).await.unwrap();
        assert_eq!(report.evicted, vec![format!("up.io/a@{}", d["old"])]);
        assert!(w.reg.get_manifest(&repo, &get("multi")).await.is_ok());
        assert!(w.reg.get_manifest(&repo, &get("new")).await.is_ok());
    }
}
