//! Listings: tags of a repository, the catalog of repositories, and referrers of a subject.

use crate::error::{RegistryError, Result};
use crate::{Registry, layout};
use oci::{Descriptor, Digest, RepoName, Tag};
use store::{Entry, Key};

/// Pagination of a listing: at most `n` entries after `last` (both optional).
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub n: Option<usize>,
    pub last: Option<String>,
}

impl Page {
    /// Cut a sorted list to this page; the flag says whether more entries follow.
    pub fn apply(&self, sorted: Vec<String>) -> (Vec<String>, bool) {
        let mut items: Vec<String> = match &self.last {
            Some(last) => sorted
                .into_iter()
                .filter(|s| s.as_str() > last.as_str())
                .collect(),
            None => sorted,
        };
        match self.n {
            Some(n) if items.len() > n => {
                items.truncate(n);
                (items, true)
            }
            _ => (items, false),
        }
    }
}

impl Registry {
    /// Every tag of a repository, sorted.
    pub async fn all_tags(&self, repo: &RepoName) -> Result<Vec<Tag>> {
        let entries = self.store.list(&layout::tags(repo)?).await?;
        Ok(entries
            .into_iter()
            .filter_map(|e| match e {
                Entry::Object(n) => n.parse().ok(),
                Entry::Prefix(_) => None,
            })
            .collect())
    }

    /// A page of a repository's tags; `NameUnknown` if the repository does not exist.
    pub async fn list_tags(&self, repo: &RepoName, page: &Page) -> Result<(Vec<String>, bool)> {
        if !self.repo_exists(repo).await? {
            return Err(RegistryError::NameUnknown);
        }
        let mut tags: Vec<String> = self
            .all_tags(repo)
            .await?
            .into_iter()
            .map(|t| t.to_string())
            .collect();
        tags.sort();
        Ok(page.apply(tags))
    }

    /// Every repository name, sorted.
    pub async fn all_repositories(&self) -> Result<Vec<RepoName>> {
        let mut names = self.repositories_after(None);
        let mut out = Vec::new();
        while let Some(r) = names.next().await? {
            out.push(r);
        }
        Ok(out)
    }

    /// Repository names after `after` (all when `None`), in the catalog's order, read as
    /// they are asked for: a page costs the folders it reaches, not the whole store.
    pub fn repositories_after(&self, after: Option<&str>) -> RepoNames {
        let mut heap = std::collections::BinaryHeap::new();
        heap.push(std::cmp::Reverse(Pending::Folder(String::new())));
        RepoNames {
            registry: self.clone(),
            after: after.map(str::to_owned),
            heap,
        }
    }

    /// A page of the catalog.
    pub async fn catalog(&self, page: &Page) -> Result<(Vec<String>, bool)> {
        let mut names = self.repositories_after(page.last.as_deref());
        let mut out = Vec::new();
        while let Some(r) = names.next().await? {
            if page.n.is_some_and(|n| out.len() == n) {
                return Ok((out, true));
            }
            out.push(r.to_string());
        }
        Ok((out, false))
    }

    /// Manifests in `repo` whose `subject` is `subject`, optionally only those of one
    /// artifact type. Sorted by digest so listings are stable.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>> {
        Ok(self
            .first_referrers(repo, subject, artifact_type, usize::MAX)
            .await?
            .0)
    }

    /// Like [`Registry::referrers`], but reads only until `max` are found (the first by
    /// digest): a page that shows a few costs a few reads however many there are. Also
    /// returns how many referrer links the subject has (an upper bound on the count).
    pub async fn first_referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
        max: usize,
    ) -> Result<(Vec<Descriptor>, usize)> {
        let dir = layout::referrers(repo, subject)?;
        let mut names: Vec<String> = self
            .store
            .list(&dir)
            .await?
            .into_iter()
            .filter_map(|e| match e {
                Entry::Object(name) => Some(name),
                Entry::Prefix(_) => None,
            })
            .collect();
        // Named `<algo>-<hex>` after the referrer: in digest order once sorted.
        names.sort();
        let links = names.len();
        let mut out = Vec::new();
        for name in names {
            if out.len() == max {
                break;
            }
            let Some(bytes) = self.store.get(&dir.join(&name)?).await? else {
                continue;
            };
            let Ok(desc) = serde_json::from_slice::<Descriptor>(&bytes) else {
                tracing::warn!(repo = %repo, entry = %name, "unreadable referrer link skipped");
                continue;
            };
            // A referrer whose manifest was deleted is not listed.
            if self
                .store
                .stat(&layout::manifest_link(repo, &desc.digest)?)
                .await?
                .is_none()
            {
                continue;
            }
            if artifact_type.is_none_or(|t| desc.artifact_type.as_deref() == Some(t)) {
                out.push(desc);
            }
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok((out, links))
    }
}

impl Registry {
    async fn linked(&self, repo: &RepoName, kind: layout::Links) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for algo in layout::ALGORITHMS {
            let dir = layout::links(repo, kind, algo)?;
            out.extend(
                self.store
                    .list(&dir)
                    .await?
                    .into_iter()
                    .filter_map(|e| match e {
                        Entry::Object(name) => layout::link_digest(algo, &name),
                        Entry::Prefix(_) => None,
                    }),
            );
        }
        Ok(out)
    }

    /// Digests of every manifest the repository holds.
    pub async fn manifest_digests(&self, repo: &RepoName) -> Result<Vec<Digest>> {
        self.linked(repo, layout::Links::Manifests).await
    }

    /// Digests of every blob the repository links.
    pub async fn blob_digests(&self, repo: &RepoName) -> Result<Vec<Digest>> {
        self.linked(repo, layout::Links::Blobs).await
    }

    /// Size of the stored bytes of `digest` (blob or manifest), if present.
    pub async fn content_size(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self
            .store
            .stat(&layout::blob(digest)?)
            .await?
            .map(|m| m.size))
    }

    /// Delete the stored bytes of `digest` unless they were written or renewed at or
    /// after `unless_modified_since` (someone needed them meanwhile: a mount, a HEAD, a
    /// push). Only for callers that have established that no repository links it any
    /// more (cache eviction). Holds the deletion permit for the check and the delete.
    pub async fn purge_content(
        &self,
        digest: &Digest,
        unless_modified_since: std::time::SystemTime,
    ) -> Result<bool> {
        let _permit = self.deletion_permit().await;
        let key = layout::blob(digest)?;
        match self.store.stat(&key).await? {
            Some(m) if m.modified < unless_modified_since => Ok(self.store.delete(&key).await?),
            _ => Ok(false),
        }
    }
}

/// Something the catalog's walk has yet to hand out: a repository name, or a folder of
/// `repos/` not yet listed. Ordered by the smallest name each can produce — a folder
/// `a/b` holds `a/b` and `a/b/…`, all at least `a/b` — so a min-heap of them yields
/// names in byte order even where `a-b` sorts between `a` and `a/b`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pending {
    Name(String),
    Folder(String),
}

impl Pending {
    fn key(&self) -> &str {
        match self {
            Pending::Name(k) | Pending::Folder(k) => k,
        }
    }
}

impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // A folder and the name it holds share a key: the name goes first (expanding
        // the folder again would only produce it once more).
        let rank = |p: &Pending| matches!(p, Pending::Folder(_));
        self.key()
            .cmp(other.key())
            .then_with(|| rank(self).cmp(&rank(other)))
    }
}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Repository names in byte order, listed folder by folder as they are asked for (see
/// [`Registry::repositories_after`]).
pub struct RepoNames {
    registry: Registry,
    after: Option<String>,
    heap: std::collections::BinaryHeap<std::cmp::Reverse<Pending>>,
}

impl RepoNames {
    /// Could folder `f` hold a name after `self.after`? Its names are `f` and `f/…`.
    fn worth_listing(&self, f: &str) -> bool {
        let Some(after) = &self.after else {
            return true;
        };
        if f.is_empty() || after.as_str() < f {
            return true;
        }
        let inside = format!("{f}/");
        after.starts_with(&inside) || after.as_str() == f || after.as_str() < inside.as_str()
    }

    /// The next name, or `None` after the last.
    pub async fn next(&mut self) -> Result<Option<RepoName>> {
        while let Some(std::cmp::Reverse(p)) = self.heap.pop() {
            match p {
                Pending::Name(n) => {
                    if self.after.as_deref().is_some_and(|a| n.as_str() <= a) {
                        continue;
                    }
                    if let Ok(r) = n.parse() {
                        return Ok(Some(r));
                    }
                }
                Pending::Folder(f) => {
                    if !self.worth_listing(&f) {
                        continue;
                    }
                    let dir = if f.is_empty() {
                        Key::new(layout::REPOS)?
                    } else {
                        Key::new(format!("{}/{f}", layout::REPOS))?
                    };
                    let mut is_repo = false;
                    for e in self.registry.store.list(&dir).await? {
                        let Entry::Prefix(c) = e else { continue };
                        if layout::REPO_MARKERS.contains(&c.as_str()) {
                            is_repo = !f.is_empty();
                        } else if !c.starts_with('_') {
                            let child = if f.is_empty() { c } else { format!("{f}/{c}") };
                            self.heap.push(std::cmp::Reverse(Pending::Folder(child)));
                        }
                    }
                    if is_repo {
                        self.heap.push(std::cmp::Reverse(Pending::Name(f)));
                    }
                }
            }
        }
        Ok(None)
    }
}
