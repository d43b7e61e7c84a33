//! Prefetch: images an upstream's `[[upstream.prefetch]]` rules name are kept cached and
//! fresh without a client asking. Each run lists what the rules match (literal names as
//! they are, patterns through the upstream's catalog; tags as listed, or through the
//! repository's tag list for a regex or a semver range), pulls each tag through the cache
//! (a HEAD revalidates a cached tag once its TTL has passed, sparing rate limits; a new or
//! moved tag is fetched), then every child manifest of an index for the wanted platforms,
//! and their configs and layers. Eviction never takes what a rule covers. This module
//! reads the upstream only through the cache's own paths; it never writes the store
//! directly.

use crate::{BlobSource, Cache, CacheError, CachedUpstream};
use oci::{Digest, ManifestKind, ParsedManifest, Reference, RepoName, Tag};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// Which tags of a repository a rule wants.
#[derive(Clone, Debug)]
pub enum TagFilter {
    /// These tags.
    List(Vec<Tag>),
    /// Every tag of the upstream's list matching the regex (anchored as written).
    Regex(regex::Regex),
    /// Every tag that reads as a version (`1.27`, `v1.27.3`) inside the range.
    Semver(semver::VersionReq),
}

impl TagFilter {
    /// Does the filter take `tag`?
    pub fn matches(&self, tag: &str) -> bool {
        match self {
            TagFilter::List(tags) => tags.iter().any(|t| t.as_str() == tag),
            TagFilter::Regex(r) => r.is_match(tag),
            TagFilter::Semver(req) => version_of(tag).is_some_and(|v| req.matches(&v)),
        }
    }
}

/// A tag as a version: an optional `v`, then one to three numbers (missing ones are 0),
/// then an optional pre-release or build part as semver has them. `latest` is none.
pub fn version_of(tag: &str) -> Option<semver::Version> {
    let t = tag.strip_prefix('v').unwrap_or(tag);
    let split = t.find(['-', '+']).unwrap_or(t.len());
    let (core, rest) = t.split_at(split);
    let mut parts = core.split('.');
    let mut next = || -> Option<u64> {
        match parts.next() {
            None => Some(0),
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok(),
            Some(_) => None,
        }
    };
    let (major, minor, patch) = (next()?, next()?, next()?);
    if parts.next().is_some() || core.is_empty() {
        return None;
    }
    semver::Version::parse(&format!("{major}.{minor}.{patch}{rest}")).ok()
}

/// One `[[upstream.prefetch]]` rule.
#[derive(Clone, Debug)]
pub struct PrefetchRule {
    /// Its place among the upstream's rules, from 1 (how logs and counts name it).
    pub number: usize,
    /// Upstream repositories (`library/nginx`, `kyverno/*`): a name with no `*` is
    /// taken as it is; a pattern is matched against the upstream's catalog.
    pub repositories: Vec<oci::RepoPattern>,
    pub tags: TagFilter,
    /// `os/arch[/variant]` of the index children to fetch; empty for all.
    pub platforms: Vec<String>,
    pub interval: Duration,
}

impl PrefetchRule {
    /// Does the rule keep `repo:tag` (upstream names)? Eviction asks this.
    pub fn covers(&self, repo: &str, tag: &str) -> bool {
        self.repositories.iter().any(|p| p.matches(repo)) && self.tags.matches(tag)
    }

    fn wants_platform(&self, d: &oci::Descriptor) -> bool {
        self.platforms.is_empty()
            || d.platform_name()
                .is_some_and(|p| self.platforms.contains(&p))
    }
}

/// Whether a run fetches or only says what it would fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefetchMode {
    Fetch,
    DryRun,
}

/// What one run did (or, dry, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PrefetchReport {
    /// Tags the rule matched, as `repo:tag`.
    pub matched: Vec<String>,
    /// Tags already cached and fresh (or revalidated unchanged).
    pub fresh: u64,
    /// Tags that were (or would be) fetched: new, moved, or not yet cached whole.
    pub fetched: Vec<String>,
    /// Manifests and blobs downloaded from the upstream.
    pub downloads: u64,
    /// What failed, as `repo:tag: reason`.
    pub failures: Vec<String>,
}

impl Cache {
    /// The repositories and tags `rule` names now (asking the upstream for a catalog or
    /// tag list where a pattern needs one).
    async fn prefetch_targets(
        &self,
        up: &CachedUpstream,
        rule: &PrefetchRule,
        report: &mut PrefetchReport,
    ) -> Vec<(RepoName, Tag)> {
        let mut repos: BTreeSet<RepoName> = BTreeSet::new();
        for p in &rule.repositories {
            if !p.as_str().contains('*') {
                match p.as_str().parse::<RepoName>() {
                    Ok(r) => {
                        repos.insert(up.normalize(r));
                    }
                    Err(e) => report.failures.push(format!("{}: {e}", p.as_str())),
                }
                continue;
            }
            match up.ask(up.client.catalog()).await {
                Ok(names) => repos.extend(
                    names
                        .iter()
                        .filter(|n| p.matches(n))
                        .filter_map(|n| n.parse().ok()),
                ),
                Err(e) => report.failures.push(format!(
                    "{}: the upstream's catalog: {}",
                    p.as_str(),
                    self.failed(up, e)
                )),
            }
        }
        let mut targets = Vec::new();
        for repo in repos {
            if !up.allows(&repo) {
                report
                    .failures
                    .push(format!("{repo}: not in the upstream's allow-list"));
                continue;
            }
            let tags: Vec<Tag> = match &rule.tags {
                TagFilter::List(tags) => tags.clone(),
                filter => match up.ask(up.client.tags(repo.as_str())).await {
                    Ok(all) => all
                        .iter()
                        .filter(|t| filter.matches(t))
                        .filter_map(|t| t.parse().ok())
                        .collect(),
                    Err(e) => {
                        report
                            .failures
                            .push(format!("{repo}: tag list: {}", self.failed(up, e)));
                        continue;
                    }
                },
            };
            targets.extend(tags.into_iter().map(|t| (repo.clone(), t)));
        }
        targets
    }

    /// Run `rule` of upstream `up` once.
    pub async fn prefetch_once(
        &self,
        up: &Arc<CachedUpstream>,
        rule: &PrefetchRule,
        mode: PrefetchMode,
    ) -> PrefetchReport {
        let mut report = PrefetchReport::default();
        for (repo, tag) in self.prefetch_targets(up, rule, &mut report).await {
            let name = format!("{repo}:{tag}");
            report.matched.push(name.clone());
            let result = match mode {
                PrefetchMode::DryRun => self.prefetch_plan(up, &repo, &tag).await,
                PrefetchMode::Fetch => self.prefetch_image(up, rule, &repo, &tag).await,
            };
            match result {
                Ok(0) => report.fresh += 1,
                Ok(n) => {
                    report.fetched.push(name);
                    report.downloads += n;
                }
                Err(e) => report.failures.push(format!("{name}: {e}")),
            }
        }
        up.stats.prefetch_runs.inc();
        if !report.failures.is_empty() {
            up.stats.prefetch_failures.add(report.failures.len() as u64);
        }
        up.stats.prefetch_downloads.add(report.downloads);
        up.stats
            .prefetch_tags
            .lock()
            .insert(rule.number, report.matched.len() as u64);
        report
    }

    /// For a dry run: 1 when `repo:tag` is not cached (it would be fetched), else 0.
    async fn prefetch_plan(
        &self,
        up: &CachedUpstream,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<u64, CacheError> {
        let local = up.local(repo)?;
        match self
            .registry
            .get_manifest(&local, &Reference::Tag(tag.clone()))
            .await
        {
            Ok(_) => Ok(0),
            Err(registry::RegistryError::ManifestUnknown) => Ok(1),
            Err(e) => Err(e.into()),
        }
    }

    /// Pull `repo:tag` whole through the cache; how many manifests and blobs came from
    /// the upstream.
    async fn prefetch_image(
        &self,
        up: &Arc<CachedUpstream>,
        rule: &PrefetchRule,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<u64, CacheError> {
        let before = up.stats.misses.get();
        let root = self
            .get_manifest(up, repo, &Reference::Tag(tag.clone()))
            .await?;
        let mut manifests = vec![root];
        let mut blobs: BTreeSet<Digest> = BTreeSet::new();
        while let Some(m) = manifests.pop() {
            let parsed = ParsedManifest::parse(&m.stored.bytes, Some(&m.stored.media_type))
                .map_err(|e| CacheError::Unavailable {
                    upstream: up.name.clone(),
                    message: format!("manifest {}: {e}", m.digest),
                })?;
            if parsed.kind == ManifestKind::Index {
                for child in parsed.manifests.iter().filter(|c| rule.wants_platform(c)) {
                    let r = Reference::Digest(child.digest.clone());
                    manifests.push(self.get_manifest(up, repo, &r).await?);
                }
            }
            blobs.extend(parsed.required_blobs().map(|b| b.digest.clone()));
        }
        for d in blobs {
            if let BlobSource::Filling(reader) = self.blob(up, repo, &d).await? {
                reader
                    .finished()
                    .await
                    .map_err(|e| CacheError::Unavailable {
                        upstream: up.name.clone(),
                        message: format!("blob {d}: {e}"),
                    })?;
            }
        }
        Ok(up.stats.misses.get() - before)
    }
}

/// Run every prefetch rule of every upstream on its own interval until the handle is
/// dropped or aborted. Each rule's first run comes right away: the images should be
/// there before the first client needs them.
pub fn spawn_prefetch(cache: Arc<Cache>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for up in cache.upstreams() {
        for rule in up.prefetch.iter() {
            let (cache, name, rule) = (cache.clone(), up.name.clone(), rule.clone());
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(rule.interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    // The upstream as configured now (a reload swaps it).
                    let Some(up) = cache.upstream(&name) else {
                        return;
                    };
                    let r = cache.prefetch_once(&up, &rule, PrefetchMode::Fetch).await;
                    if r.failures.is_empty() {
                        tracing::info!(upstream = %name, rule = rule.number, matched = r.matched.len(), fetched = r.fetched.len(), downloads = r.downloads, "prefetch");
                    } else {
                        tracing::warn!(upstream = %name, rule = rule.number, matched = r.matched.len(), fetched = r.fetched.len(), failures = %r.failures.join("; "), "prefetch had failures");
                    }
                }
            }));
        }
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_read_as_versions_the_way_people_write_them() {
        let req = semver::VersionReq::parse(">=1.27, <2").unwrap();
        let f = TagFilter::Semver(req);
        for yes in ["1.27", "v1.27.3", "1.30.0", "1.99"] {
            assert!(f.matches(yes), "{yes}");
        }
        for no in [
            "latest",
            "1.26.9",
            "2.0",
            "v2",
            "1.27-alpine",
            "1.x",
            "",
            "1.2.3.4",
        ] {
            assert!(!f.matches(no), "{no}");
        }
        assert_eq!(version_of("v1").unwrap().to_string(), "1.0.0");
        let list = TagFilter::List(vec!["1.27".parse().unwrap(), "latest".parse().unwrap()]);
        assert!(list.matches("latest") && !list.matches("1.28"));
        let rule = PrefetchRule {
            number: 1,
            repositories: vec![oci::RepoPattern::new("library/*").unwrap()],
            tags: TagFilter::Regex(regex::Regex::new("^1\\.2[0-9]$").unwrap()),
            platforms: Vec::new(),
            interval: Duration::from_secs(60),
        };
        assert!(rule.covers("library/nginx", "1.27"));
        assert!(!rule.covers("library/nginx", "1.3"));
        assert!(!rule.covers("bitnami/nginx", "1.27"));
    }
}
