//! Retention policies: which tags to drop, by repository pattern, push time and name.
//! A run deletes tags through the registry's metadata only; the bytes they held go later,
//! by garbage collection, after its grace period.
//!
//! A rule keeps a tag when any of its conditions keeps it: the name matches `keep_tags`,
//! it is among the `keep_last` most recently pushed of the tags `keep_tags` does not
//! protect, or it is younger than `max_age`. A tag no condition keeps is dropped, so a
//! rule with neither `keep_last` nor `max_age` drops nothing. The first rule whose pattern
//! matches a repository is the one that applies to it.

use crate::{JobContext, Progress, Result, UpkeepError};
use oci::{Digest, Reference, RepoName, Tag};
use registry::Registry;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How often `serve` applies retention unless configured.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// One retention rule.
#[derive(Clone, Debug)]
pub struct RetentionRule {
    /// The glob as written (`team/**`), for messages.
    pub repositories: String,
    /// Compiled from `repositories`: `*` stays within one path component, `**` crosses.
    pub matcher: oci::RepoPattern,
    pub keep_last: Option<usize>,
    pub keep_tags: Option<regex::Regex>,
    pub max_age: Option<Duration>,
}

/// Why a retention rule does not compile.
#[derive(Debug, thiserror::Error)]
pub enum RetentionRuleError {
    #[error(transparent)]
    Pattern(#[from] oci::PatternError),
    /// The regex error's text is in the message (so it is not also a `source`).
    #[error("invalid keep_tags regex {regex:?}: {error}")]
    KeepTags { regex: String, error: regex::Error },
}

impl RetentionRule {
    /// Compile a rule; the error names what is wrong with the pattern.
    pub fn new(
        repositories: &str,
        keep_last: Option<usize>,
        keep_tags: Option<&str>,
        max_age: Option<Duration>,
    ) -> Result<RetentionRule, RetentionRuleError> {
        let matcher = oci::RepoPattern::new(repositories)?;
        let keep_tags = keep_tags
            .map(|t| {
                regex::Regex::new(t).map_err(|error| RetentionRuleError::KeepTags {
                    regex: t.to_owned(),
                    error,
                })
            })
            .transpose()?;
        Ok(RetentionRule {
            repositories: repositories.to_owned(),
            matcher,
            keep_last,
            keep_tags,
            max_age,
        })
    }

    fn matches(&self, repo: &RepoName) -> bool {
        self.matcher.matches(repo.as_str())
    }
}

/// A tag a plan drops.
#[derive(Clone, Debug, Serialize)]
pub struct Drop {
    pub repository: String,
    pub tag: String,
    pub digest: Option<String>,
    /// Seconds since the Unix epoch of the tag's last push.
    pub pushed_at: u64,
    /// Why no condition of the rule keeps it.
    pub reason: String,
    pub rule: String,
    #[serde(skip)]
    written: SystemTime,
}

/// What a run would drop, and how much it looked at.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RetentionPlan {
    pub repositories: u64,
    pub tags_seen: u64,
    pub drops: Vec<Drop>,
}

/// What a run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RetentionReport {
    pub applied: bool,
    pub repositories: u64,
    pub tags_seen: u64,
    pub tags_deleted: u64,
    /// Planned drops skipped because the tag was pushed again meanwhile.
    pub skipped_changed: u64,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Work out what `rules` drop now.
pub async fn plan(
    registry: &Registry,
    rules: &[RetentionRule],
    progress: &dyn Progress,
) -> Result<RetentionPlan> {
    let now = SystemTime::now();
    let mut out = RetentionPlan::default();
    if rules.is_empty() {
        return Ok(out);
    }
    let repos = registry.all_repositories().await?;
    progress.phase("planning retention", repos.len() as u64);
    for repo in repos {
        progress.advance(1);
        let Some(rule) = rules.iter().find(|r| r.matches(&repo)) else {
            continue;
        };
        out.repositories += 1;
        let mut tags: Vec<(Tag, SystemTime)> = Vec::new();
        for t in registry.all_tags(&repo).await? {
            if let Some(w) = registry.tag_written_at(&repo, &t).await? {
                tags.push((t, w));
            }
        }
        out.tags_seen += tags.len() as u64;
        // Newest first; ties broken by name so plans are stable.
        tags.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.as_str().cmp(b.0.as_str())));
        let mut rank = 0usize;
        for (tag, written) in tags {
            if rule
                .keep_tags
                .as_ref()
                .is_some_and(|re| re.is_match(tag.as_str()))
            {
                continue;
            }
            let within_last = rule.keep_last.is_some_and(|n| rank < n);
            rank += 1;
            let age = now.duration_since(written).unwrap_or_default();
            let young = rule.max_age.is_some_and(|m| age <= m);
            if within_last || young || (rule.keep_last.is_none() && rule.max_age.is_none()) {
                continue;
            }
            let mut why = Vec::new();
            if let Some(n) = rule.keep_last {
                why.push(format!("not among the {n} newest"));
            }
            if let Some(m) = rule.max_age {
                why.push(format!(
                    "older than {}s ({}s old)",
                    m.as_secs(),
                    age.as_secs()
                ));
            }
            let digest = registry
                .resolve_tag(&repo, &tag)
                .await
                .ok()
                .map(|d: Digest| d.to_string());
            out.drops.push(Drop {
                repository: repo.to_string(),
                tag: tag.to_string(),
                digest,
                pushed_at: unix(written),
                reason: why.join(" and "),
                rule: rule.repositories.clone(),
                written,
            });
        }
    }
    Ok(out)
}

/// Delete the tags of `plan`, skipping any pushed again since it was made.
pub async fn apply(registry: &Registry, plan: &RetentionPlan) -> Result<RetentionReport> {
    let mut report = RetentionReport {
        applied: true,
        repositories: plan.repositories,
        tags_seen: plan.tags_seen,
        ..RetentionReport::default()
    };
    // One process applies retention at a time (replicas share the store).
    let store = registry.store().clone();
    crate::lease(store.as_ref(), "retention").await?;
    let result = drop_tags(registry, plan, &mut report).await;
    let _ = store
        .release_lease("retention", crate::lease_holder())
        .await;
    result.map(|()| report)
}

async fn drop_tags(
    registry: &Registry,
    plan: &RetentionPlan,
    report: &mut RetentionReport,
) -> Result<()> {
    for d in &plan.drops {
        let (Ok(repo), Ok(tag)) = (d.repository.parse::<RepoName>(), d.tag.parse::<Tag>()) else {
            continue;
        };
        if registry.tag_written_at(&repo, &tag).await? != Some(d.written) {
            report.skipped_changed += 1;
            continue;
        }
        match registry
            .delete_manifest(&repo, &Reference::Tag(tag.clone()))
            .await
        {
            Ok(()) => {
                report.tags_deleted += 1;
                tracing::info!(repo = %repo, tag = %tag, reason = %d.reason, rule = %d.rule, "retention dropped tag");
            }
            Err(registry::RegistryError::ManifestUnknown) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Apply `rules` every `interval` while `serve` runs (the first run one interval after
/// the start; none when `interval` is zero or there are no rules), logging each run and
/// recording it in `ctx.status.retention`, until the handle is aborted.
pub fn spawn_retention(
    ctx: &JobContext,
    interval: Duration,
    rules: Vec<RetentionRule>,
) -> Option<tokio::task::JoinHandle<()>> {
    if rules.is_empty() {
        return None;
    }
    let (ctx, rules) = (ctx.clone(), Arc::new(rules));
    crate::schedule::every(interval, move || {
        let (ctx, rules) = (ctx.clone(), rules.clone());
        async move { run_recorded(&ctx, &rules).await }
    })
}

/// One scheduled retention run: [`plan`], then [`apply`], logged and recorded. A run
/// skipped because another process holds the lease is logged but not recorded.
async fn run_recorded(ctx: &JobContext, rules: &[RetentionRule]) {
    let started = Instant::now();
    let done = async {
        let plan = plan(&ctx.registry, rules, &crate::Quiet).await?;
        apply(&ctx.registry, &plan).await
    }
    .await;
    let mut record = ctx.status.retention.lock();
    match done {
        Ok(r) => {
            tracing::info!(tags_deleted = r.tags_deleted, "retention done");
            let removed = r.tags_deleted;
            record.succeeded(r, started.elapsed(), removed, 0);
        }
        Err(UpkeepError::Busy(_)) => {
            tracing::info!("retention skipped: another berth on this store is applying it");
        }
        Err(e) => {
            tracing::error!(error = %e, "retention failed");
            record.failed(e.to_string(), started.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const DAY: Duration = Duration::from_secs(86_400);

    async fn tag(r: &Registry, root: &std::path::Path, repo: &str, t: &str, age: Duration) {
        let repo: RepoName = repo.parse().unwrap();
        let t: Tag = t.parse().unwrap();
        let d = Digest::sha256_of(t.as_str().as_bytes());
        r.set_tag(&repo, &t, &d).await.unwrap();
        let f = std::fs::File::options()
            .write(true)
            .open(root.join(format!("repos/{repo}/_tags/{t}")))
            .unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn any_condition_keeps_a_tag_and_the_first_matching_rule_applies() {
        let dir = tempfile::tempdir().unwrap();
        let store = store::fs::FsStore::open(store::fs::FsOptions {
            root: dir.path().to_owned(),
            fsync: false,
            direct_io: false,
        })
        .await
        .unwrap();
        let r = Registry::new(Arc::new(store), registry::RegistryOptions::default());
        for (t, days) in [
            ("v1", 40),
            ("v2", 35),
            ("dev1", 20),
            ("dev2", 10),
            ("dev3", 1),
        ] {
            tag(&r, dir.path(), "team/a", t, DAY * days).await;
        }
        tag(&r, dir.path(), "team/deep/b", "old", DAY * 90).await;
        tag(&r, dir.path(), "other/x", "old", DAY * 90).await;
        let rules = [
            RetentionRule::new("team/*", Some(1), Some("^v"), Some(DAY * 15)).unwrap(),
            // Never reached for team/a: the first matching rule wins.
            RetentionRule::new("team/**", Some(0), None, None).unwrap(),
        ];
        let plan = plan(&r, &rules, &crate::Quiet).await.unwrap();
        let mut drops: Vec<(&str, &str)> = plan
            .drops
            .iter()
            .map(|d| (d.repository.as_str(), d.tag.as_str()))
            .collect();
        drops.sort();
        // v1, v2: keep_tags; dev3: the newest unprotected; dev2: younger than max_age.
        // team/deep/b: `*` does not cross a slash, so the second rule drops everything.
        assert_eq!(drops, [("team/a", "dev1"), ("team/deep/b", "old")]);
        assert_eq!(plan.repositories, 2, "other/x matches no rule");

        // A tag pushed again after the plan is kept.
        tag(&r, dir.path(), "team/a", "dev1", Duration::ZERO).await;
        let report = apply(&r, &plan).await.unwrap();
        assert_eq!((report.tags_deleted, report.skipped_changed), (1, 1));
        let left: Vec<String> = r
            .all_tags(&"team/a".parse().unwrap())
            .await
            .unwrap()
            .iter()
            .map(|t| t.to_string())
            .collect();
        assert_eq!(left, ["dev1", "dev2", "dev3", "v1", "v2"]);
    }
}
