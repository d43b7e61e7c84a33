//! A probe of another registry, the integrity check users run against the registries
//! they push to: list its catalog, then walk every matching image the way `berth
//! verify` does (HEAD requests, or full downloads with `deep`) and report, per image,
//! whether it pulls and else the first node that does not. It only reads from the
//! registry it probes and keeps nothing between runs (the caller keeps the reports).

use crate::remote::{ImageRef, RefTarget};
use crate::verify::{VerifyOptions, verify};
use oci::{RepoName, RepoPattern};
use serde::Serialize;

/// What to probe.
pub struct ProbeTarget {
    /// `host[:port]` of the registry: how reports and metrics name it.
    pub registry: String,
    pub client: distribution::Client,
    /// Repositories to check; empty for every one of the catalog.
    pub repositories: Vec<RepoPattern>,
    /// Tags to check (patterns: `*`, `v*`); empty for all.
    pub tags: Vec<RepoPattern>,
    /// Download every blob and check its digest (default: HEAD).
    pub deep: bool,
}

/// One image's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImageProbe {
    /// `repo:tag`.
    pub image: String,
    pub ok: bool,
    /// The first node that does not pull: `layer sha256:… (in manifest sha256:…):
    /// missing`; or why the image could not be walked.
    pub failing: Option<String>,
}

/// One run's outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProbeReport {
    /// Why the catalog could not be listed, when it could not.
    pub catalog_error: Option<String>,
    pub images: Vec<ImageProbe>,
}

impl ProbeReport {
    /// Images that do not pull.
    pub fn failed(&self) -> usize {
        self.images.iter().filter(|i| !i.ok).count()
    }
}

impl ProbeTarget {
    fn wants_repo(&self, repo: &str) -> bool {
        self.repositories.is_empty() || self.repositories.iter().any(|p| p.matches(repo))
    }

    fn wants_tag(&self, tag: &str) -> bool {
        self.tags.is_empty() || self.tags.iter().any(|p| p.matches(tag))
    }
}

/// Probe `target` once.
pub async fn probe_once(target: &ProbeTarget) -> ProbeReport {
    let mut report = ProbeReport::default();
    // The catalog is listed every run unless every repository is named (registries
    // with a closed catalog, like Docker Hub and GHCR, are probed that way): a catalog
    // that stops answering is worth an alert of its own.
    let all_named = !target.repositories.is_empty()
        && target
            .repositories
            .iter()
            .all(|p| !p.as_str().contains('*'));
    let listed = if all_named {
        Vec::new()
    } else {
        match target.client.catalog().await {
            Ok(names) => names,
            Err(e) => {
                report.catalog_error = Some(e.to_string());
                Vec::new()
            }
        }
    };
    let mut repos: Vec<String> = listed
        .into_iter()
        .filter(|n| target.wants_repo(n))
        .collect();
    // Names written without a wildcard are probed even when the catalog is closed.
    for p in &target.repositories {
        let name = p.as_str();
        if !name.contains('*') && !repos.iter().any(|r| r == name) {
            repos.push(name.to_owned());
        }
    }
    repos.sort();
    for repo in repos {
        let Ok(name) = repo.parse::<RepoName>() else {
            report.images.push(ImageProbe {
                image: repo.clone(),
                ok: false,
                failing: Some("not a repository name".into()),
            });
            continue;
        };
        let tags = match target.client.tags(&repo).await {
            Ok(tags) => tags,
            Err(e) => {
                report.images.push(ImageProbe {
                    image: repo.clone(),
                    ok: false,
                    failing: Some(format!("tag list: {e}")),
                });
                continue;
            }
        };
        for tag in tags.iter().filter(|t| target.wants_tag(t)) {
            let image = format!("{repo}:{tag}");
            let Ok(t) = tag.parse() else {
                continue;
            };
            let at = ImageRef {
                registry: target.registry.clone(),
                repo: name.clone(),
                target: RefTarget::Tag(t),
            };
            let opts = VerifyOptions {
                deep: target.deep,
                referrers: false,
            };
            let walked = verify(&target.client, &at, opts).await;
            let failing = walked.nodes.iter().find(|n| n.error.is_some()).map(|n| {
                let within = n
                    .parent
                    .as_deref()
                    .map(|p| format!(" (in {p})"))
                    .unwrap_or_default();
                format!(
                    "{} {}{within}: {}",
                    n.kind,
                    n.digest,
                    n.error.as_deref().unwrap_or_default()
                )
            });
            report.images.push(ImageProbe {
                image,
                ok: walked.is_ok(),
                failing: failing.or_else(|| (!walked.is_ok()).then(|| "nothing to walk".into())),
            });
        }
    }
    report
}
