//! `berth mirror`: every matching repository and tag of one registry copied into
//! another. It lists the source (its catalog, or the names of a list file, then each
//! repository's tags), filters them, and for each tag compares the two registries with
//! one manifest HEAD each: a tag whose destination digest already equals the source's is
//! up to date, any other is copied by [`copy::copy`] (the whole index unless one platform
//! is asked for; blobs the destination has are skipped, blobs another repository of the
//! destination received in this run are mounted) and every copied or up-to-date tag is
//! then walked at the destination by [`verify::verify`] (HEAD). It never deletes
//! anything, never touches a destination tag the source does not have, never writes to
//! the source, and draws nothing itself (it tells a [`MirrorProgress`]).

use crate::copy::{self, BlobHomes, CopyOptions, CopyProgress, CopyReport};
use crate::remote::{ImageRef, RefTarget};
use crate::verify::{self, VerifyOptions};
use anyhow::Context;
use distribution::ClientError;
use futures::StreamExt;
use oci::{Digest, ParsedManifest, RepoName, RepoPattern, Tag};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Tags copied at once unless told otherwise.
pub const DEFAULT_JOBS: usize = 4;

/// One end of a mirror: a registry as it was named, and a client for it.
pub struct Remote {
    /// `host[:port]`.
    pub name: String,
    pub client: Arc<distribution::Client>,
}

/// Where the names of the repositories to mirror come from.
#[derive(Clone, Debug)]
pub enum Repositories {
    /// The source's catalog (`/v2/_catalog`).
    Catalog,
    /// These names (`--list FILE`), for registries whose catalog is closed.
    Named(Vec<RepoName>),
}

/// What a mirror copies, and how.
#[derive(Clone, Debug)]
pub struct MirrorOptions {
    pub repositories: Repositories,
    /// Only repositories matching one of these; none means all.
    pub patterns: Vec<RepoPattern>,
    /// Only tags this matches (anywhere in the tag unless anchored); none means all.
    pub tags: Option<regex::Regex>,
    /// Only this platform's image of each index (`os/arch[/variant]`), written under
    /// the tag; none means the whole index with every platform.
    pub platform: Option<String>,
    /// Tags copied at once (at least one).
    pub jobs: usize,
    /// Find out what would be copied; write nothing.
    pub dry_run: bool,
}

/// Why a mirror could not start.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("{0:?} is not a registry: give host[:port], without a repository")]
    NotARegistry(String),
    #[error(transparent)]
    Pattern(#[from] oci::PatternError),
    /// The regex error's text is in the message (so it is not also a `source`).
    #[error("invalid --tags regex {regex:?}: {error}")]
    TagsRegex { regex: String, error: regex::Error },
    #[error("cannot read the repository list {}: {error}", .path.display())]
    ReadList {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}:{line}: {error:#}", .path.display())]
    ListEntry {
        path: PathBuf,
        line: usize,
        error: anyhow::Error,
    },
    #[error(
        "cannot list the catalog of {registry}: {error} (where the catalog is closed, name the repositories with --list FILE)"
    )]
    Catalog {
        registry: String,
        error: ClientError,
    },
}

/// `host[:port]` as typed for SRC or DST (`docker://` and a final `/` are allowed).
pub fn parse_registry(s: &str) -> Result<String, MirrorError> {
    let host = s
        .strip_prefix("docker://")
        .unwrap_or(s)
        .trim_end_matches('/');
    let looks_like_host = host.contains('.') || host.contains(':') || host == "localhost";
    if !looks_like_host || host.contains(['/', '@']) || host.contains(char::is_whitespace) {
        return Err(MirrorError::NotARegistry(s.to_owned()));
    }
    Ok(host.to_owned())
}

/// The `--tags` regex.
pub fn tags_regex(s: &str) -> Result<regex::Regex, MirrorError> {
    regex::Regex::new(s).map_err(|error| MirrorError::TagsRegex {
        regex: s.to_owned(),
        error,
    })
}

/// The repositories a list file names for `registry`: one a line, blank lines and
/// `#` comments skipped, a one-part name on `docker.io` meaning `library/<name>`.
pub fn read_list(path: &Path, registry: &str) -> Result<Vec<RepoName>, MirrorError> {
    let text = std::fs::read_to_string(path).map_err(|error| MirrorError::ReadList {
        path: path.to_owned(),
        error,
    })?;
    let mut names = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let name = line.split('#').next().unwrap_or_default().trim();
        if name.is_empty() {
            continue;
        }
        let repo =
            crate::remote::repo_name(registry, name).map_err(|error| MirrorError::ListEntry {
                path: path.to_owned(),
                line: i + 1,
                error,
            })?;
        if !names.contains(&repo) {
            names.push(repo);
        }
    }
    Ok(names)
}

/// Told what a mirror is doing, beside each copy's blob transfers.
pub trait MirrorProgress: CopyProgress {
    /// `n` tags are to be looked at.
    fn tags_found(&self, n: u64);
    /// One tag is done; `line` says how, as the report does.
    fn tag_done(&self, line: &str);
}

impl MirrorProgress for copy::Silent {
    fn tags_found(&self, _: u64) {}
    fn tag_done(&self, _: &str) {}
}

/// What became of one tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Copied, and verified at the destination.
    Copied,
    /// The destination already had the source's digest, and it verified.
    UpToDate,
    /// A dry run found it differs.
    WouldCopy,
    /// It could not be compared, copied or verified; `error` says why.
    Failed,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Copied => "copied",
            Outcome::UpToDate => "up to date",
            Outcome::WouldCopy => "would copy",
            Outcome::Failed => "FAILED",
        }
    }
}

/// One tag of the report.
#[derive(Debug, Serialize)]
pub struct TagReport {
    pub repository: String,
    pub tag: String,
    pub outcome: Outcome,
    /// The digest the destination tag has (or is to have): the source's, or with a
    /// platform that image's; `None` when the source could not be read.
    pub digest: Option<String>,
    /// What the copy did, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy: Option<CopyReport>,
    /// The destination walk found every node (`None`: not walked).
    pub verified: Option<bool>,
    pub error: Option<String>,
}

impl TagReport {
    /// The report's line for this tag.
    pub fn line(&self) -> String {
        let mut line = format!(
            "{:<10}  {}:{}",
            self.outcome.label(),
            self.repository,
            self.tag
        );
        if let Some(d) = &self.digest {
            line.push_str(&format!("  {d}"));
        }
        if let Some(c) = &self.copy {
            line.push_str(&format!(
                "  {} manifests; blobs: {} copied ({}), {} already there, {} mounted",
                c.manifests,
                c.blobs_copied,
                crate::human_bytes(c.bytes_copied),
                c.blobs_existing,
                c.blobs_mounted
            ));
        }
        if let Some(e) = &self.error {
            line.push_str(&format!("\n      {e}"));
        }
        line
    }
}

/// A repository that could not be mirrored at all (its name is invalid, or its tags
/// could not be listed).
#[derive(Debug, Serialize)]
pub struct RepositoryFailure {
    pub repository: String,
    pub error: String,
}

/// The outcome of one mirror.
#[derive(Debug, Serialize)]
pub struct MirrorReport {
    pub source: String,
    pub destination: String,
    pub dry_run: bool,
    /// Repositories that matched the patterns.
    pub repositories: usize,
    pub copied: usize,
    pub up_to_date: usize,
    pub would_copy: usize,
    pub failed: usize,
    /// Blob bytes uploaded to the destination.
    pub bytes_copied: u64,
    /// Every matching tag, by repository and tag.
    pub tags: Vec<TagReport>,
    pub repository_failures: Vec<RepositoryFailure>,
}

impl MirrorReport {
    /// Every tag copied or up to date, and verified; every repository listed.
    pub fn is_ok(&self) -> bool {
        self.failed == 0 && self.repository_failures.is_empty()
    }
}

/// The report as people read it: one line per tag (failures with the reason), then a
/// summary.
pub fn render(report: &MirrorReport) -> String {
    let mut out = String::new();
    for f in &report.repository_failures {
        out.push_str(&format!(
            "{:<10}  {}: {}\n",
            Outcome::Failed.label(),
            f.repository,
            f.error
        ));
    }
    for t in &report.tags {
        out.push_str(&t.line());
        out.push('\n');
    }
    let copied = if report.dry_run {
        format!("{} would copy", report.would_copy)
    } else {
        format!(
            "{} copied ({})",
            report.copied,
            crate::human_bytes(report.bytes_copied)
        )
    };
    let listing = if report.repository_failures.is_empty() {
        String::new()
    } else {
        format!("; {} repositories FAILED", report.repository_failures.len())
    };
    out.push_str(&format!(
        "{}{} to {}: {} repositories, {} tags: {copied}, {} up to date, {} failed{listing}{}\n",
        if report.dry_run { "dry run, " } else { "" },
        report.source,
        report.destination,
        report.repositories,
        report.tags.len(),
        report.up_to_date,
        report.failed,
        if report.dry_run || !report.is_ok() {
            ""
        } else {
            "; every tag verified"
        }
    ));
    out
}

/// Largest manifest read.
const MAX_MANIFEST: u64 = registry::MAX_MANIFEST_BYTES;

/// Mirror the repositories and tags `opts` selects from `src` into `dst`.
pub async fn mirror(
    src: &Remote,
    dst: &Remote,
    opts: &MirrorOptions,
    progress: Arc<dyn MirrorProgress>,
) -> Result<MirrorReport, MirrorError> {
    let jobs = opts.jobs.max(1);
    let mut repository_failures = Vec::new();
    let names = match &opts.repositories {
        Repositories::Named(names) => names.clone(),
        Repositories::Catalog => {
            let listed = src
                .client
                .catalog()
                .await
                .map_err(|error| MirrorError::Catalog {
                    registry: src.name.clone(),
                    error,
                })?;
            let mut names = Vec::with_capacity(listed.len());
            for name in listed {
                match name.parse::<RepoName>() {
                    Ok(n) => names.push(n),
                    Err(e) => repository_failures.push(RepositoryFailure {
                        repository: name,
                        error: format!("not a repository name: {e}"),
                    }),
                }
            }
            names
        }
    };
    let repos: Vec<RepoName> = names
        .into_iter()
        .filter(|r| opts.patterns.is_empty() || opts.patterns.iter().any(|p| p.matches(r.as_str())))
        .collect();
    let listed: Vec<_> = futures::stream::iter(repos.iter())
        .map(|repo| async move { (repo, src.client.tags(repo.as_str()).await) })
        .buffered(jobs)
        .collect()
        .await;
    let mut work = Vec::new();
    for (repo, tags) in listed {
        let tags = match tags {
            Ok(t) => t,
            Err(e) => {
                repository_failures.push(RepositoryFailure {
                    repository: repo.to_string(),
                    error: format!("cannot list its tags: {e}"),
                });
                continue;
            }
        };
        for tag in tags {
            if opts.tags.as_ref().is_some_and(|re| !re.is_match(&tag)) {
                continue;
            }
            work.push((repo.clone(), tag));
        }
    }
    progress.tags_found(work.len() as u64);
    let job = Job {
        src,
        dst,
        opts,
        progress,
        homes: Arc::new(BlobHomes::default()),
    };
    let mut tags: Vec<TagReport> = futures::stream::iter(work)
        .map(|(repo, tag)| job.tag(repo, tag))
        .buffer_unordered(jobs)
        .collect()
        .await;
    tags.sort_by(|a, b| (&a.repository, &a.tag).cmp(&(&b.repository, &b.tag)));
    let count = |o: Outcome| tags.iter().filter(|t| t.outcome == o).count();
    Ok(MirrorReport {
        source: src.name.clone(),
        destination: dst.name.clone(),
        dry_run: opts.dry_run,
        repositories: repos.len(),
        copied: count(Outcome::Copied),
        up_to_date: count(Outcome::UpToDate),
        would_copy: count(Outcome::WouldCopy),
        failed: count(Outcome::Failed),
        bytes_copied: tags
            .iter()
            .filter_map(|t| t.copy.as_ref())
            .map(|c| c.bytes_copied)
            .sum(),
        tags,
        repository_failures,
    })
}

/// What every tag of one mirror shares.
struct Job<'a> {
    src: &'a Remote,
    dst: &'a Remote,
    opts: &'a MirrorOptions,
    progress: Arc<dyn MirrorProgress>,
    /// Where each blob copied in this run lives at the destination, to mount from.
    homes: Arc<BlobHomes>,
}

impl Job<'_> {
    /// Mirror one tag and say how it went.
    async fn tag(&self, repo: RepoName, tag: String) -> TagReport {
        let mut report = TagReport {
            repository: repo.to_string(),
            tag: tag.clone(),
            outcome: Outcome::Failed,
            digest: None,
            copy: None,
            verified: None,
            error: None,
        };
        let done = match tag.parse::<Tag>() {
            Ok(t) => self.mirror_tag(&repo, &t, &mut report).await,
            Err(e) => Err(anyhow::anyhow!("not a valid tag: {e}")),
        };
        if let Err(e) = done {
            report.outcome = Outcome::Failed;
            report.error = Some(format!("{e:#}"));
        }
        self.progress.tag_done(&report.line());
        report
    }

    async fn mirror_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
        report: &mut TagReport,
    ) -> anyhow::Result<()> {
        let source = self
            .src
            .client
            .head_manifest(repo.as_str(), tag.as_str())
            .await
            .context("at the source")?;
        let want = self.wanted(repo, &source.digest).await?;
        report.digest = Some(want.to_string());
        let present = match self
            .dst
            .client
            .head_manifest(repo.as_str(), tag.as_str())
            .await
        {
            Ok(head) => Some(head.digest),
            Err(ClientError::NotFound) => None,
            Err(e) => return Err(e).context("at the destination"),
        };
        if present.as_ref() == Some(&want) {
            report.outcome = Outcome::UpToDate;
        } else if self.opts.dry_run {
            report.outcome = Outcome::WouldCopy;
        } else {
            let from = copy::Registry::new(self.src.client.clone(), &self.src.name, repo, None);
            let to = copy::Registry::new(
                self.dst.client.clone(),
                &self.dst.name,
                repo,
                Some(self.homes.clone()),
            );
            // By digest: what is copied is what the HEAD saw, even if the tag moves.
            let copied = copy::copy(
                &from,
                &want.to_string(),
                &to,
                Some(tag.as_str()),
                &CopyOptions {
                    all: true,
                    platform: None,
                },
                self.progress.clone(),
            )
            .await?;
            report.outcome = Outcome::Copied;
            report.copy = Some(copied);
        }
        if self.opts.dry_run {
            return Ok(());
        }
        let verified = self.verify(repo, tag, &want).await;
        report.verified = Some(verified.is_ok());
        verified
    }

    /// The digest the destination tag is to have: the source's, or with a platform the
    /// digest of that platform's image in the source's index.
    async fn wanted(&self, repo: &RepoName, root: &Digest) -> anyhow::Result<Digest> {
        let Some(platform) = &self.opts.platform else {
            return Ok(root.clone());
        };
        let m = self
            .src
            .client
            .get_manifest(repo.as_str(), &root.to_string(), MAX_MANIFEST)
            .await
            .context("at the source")?;
        let parsed = ParsedManifest::parse(&m.bytes, Some(&m.media_type))?;
        if parsed.manifests.is_empty() {
            return Ok(root.clone());
        }
        parsed
            .manifests
            .iter()
            .find(|d| copy::matches_platform(d, platform))
            .map(|d| d.digest.clone())
            .ok_or_else(|| anyhow::anyhow!("{root} has no image for {platform}"))
    }

    /// Walk the tag at the destination with HEADs: every node there, and the tag on
    /// `want`.
    async fn verify(&self, repo: &RepoName, tag: &Tag, want: &Digest) -> anyhow::Result<()> {
        let image = ImageRef {
            registry: self.dst.name.clone(),
            repo: repo.clone(),
            target: RefTarget::Tag(tag.clone()),
        };
        let walk = verify::verify(&self.dst.client, &image, VerifyOptions::default()).await;
        let broken: Vec<_> = walk.nodes.iter().filter(|n| n.error.is_some()).collect();
        if let Some(first) = broken.first() {
            anyhow::bail!(
                "verify at the destination: {} of {} nodes broken, first {} {}{}: {}",
                broken.len(),
                walk.nodes.len(),
                first.kind,
                first.digest,
                first
                    .parent
                    .as_ref()
                    .map(|p| format!(" in {p}"))
                    .unwrap_or_default(),
                first.error.as_deref().unwrap_or_default()
            );
        }
        let got = walk.digest.unwrap_or_default();
        if got != want.to_string() {
            anyhow::bail!("verify at the destination: the tag names {got}, not {want}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_are_hosts_without_a_repository() {
        assert_eq!(parse_registry("127.0.0.1:5000").unwrap(), "127.0.0.1:5000");
        assert_eq!(
            parse_registry("docker://registry.lan/").unwrap(),
            "registry.lan"
        );
        assert_eq!(parse_registry("localhost").unwrap(), "localhost");
        for bad in ["", "nginx", "registry.lan/team", "host:5000/a/b", "a b.c"] {
            assert!(
                matches!(parse_registry(bad), Err(MirrorError::NotARegistry(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn list_files_name_repositories_with_docker_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repos.txt");
        std::fs::write(
            &path,
            "# Docker Hub\nnginx\n\nbitnami/redis  # cache\nnginx\n",
        )
        .unwrap();
        let names = read_list(&path, "docker.io").unwrap();
        let names: Vec<&str> = names.iter().map(RepoName::as_str).collect();
        assert_eq!(names, ["library/nginx", "bitnami/redis"]);
        let names = read_list(&path, "registry.lan").unwrap();
        assert_eq!(names[0].as_str(), "nginx");
        std::fs::write(&path, "ok/name\nBad/Name\n").unwrap();
        let err = read_list(&path, "registry.lan").unwrap_err().to_string();
        assert!(
            err.contains("repos.txt:2: ") && err.contains("Bad/Name"),
            "{err}"
        );
        let err = read_list(&dir.path().join("none"), "r.lan").unwrap_err();
        assert!(matches!(err, MirrorError::ReadList { .. }), "{err}");
        assert!(matches!(
            tags_regex("v[").unwrap_err(),
            MirrorError::TagsRegex { .. }
        ));
    }
}
