//! One walk of `repos/` turned into what each repository holds, one repository at a
//! time: tags, manifest links, blob links, referrer links and upload markers, with their
//! modification times; and the stream of stored content under `blobs/`. GC and fsck
//! both start from it; it reads names and times only, never object contents.

use crate::{Result, UpkeepError};
use futures::StreamExt;
use oci::{Digest, RepoName, Tag};
use registry::layout;
use std::collections::{HashMap, HashSet};
use store::{Key, ObjectLister, ObjectMeta};

/// What one repository holds, as found by a walk.
#[derive(Debug)]
pub struct RepoIndex {
    pub name: RepoName,
    pub tags: Vec<(Tag, ObjectMeta)>,
    pub manifests: HashMap<Digest, ObjectMeta>,
    pub blobs: HashMap<Digest, ObjectMeta>,
    /// Referrer links by subject: (referrer, time of the link).
    pub referrers: HashMap<Digest, Vec<(Digest, ObjectMeta)>>,
    /// Upload ids with a marker in this repository.
    pub uploads: Vec<(String, ObjectMeta)>,
}

impl RepoIndex {
    fn new(name: RepoName) -> RepoIndex {
        RepoIndex {
            name,
            tags: Vec::new(),
            manifests: HashMap::new(),
            blobs: HashMap::new(),
            referrers: HashMap::new(),
            uploads: Vec::new(),
        }
    }

    /// Referrers of `subject` in this repository.
    pub fn referrers_of<'a>(&'a self, subject: &Digest) -> impl Iterator<Item = &'a Digest> {
        self.referrers
            .get(subject)
            .into_iter()
            .flatten()
            .map(|(r, _)| r)
    }
}

/// The repository an entry of `repos/` belongs to.
fn repo_of(entry: &layout::Entry) -> Option<&RepoName> {
    match entry {
        layout::Entry::Tag { repo, .. }
        | layout::Entry::ManifestLink { repo, .. }
        | layout::Entry::BlobLink { repo, .. }
        | layout::Entry::Referrer { repo, .. }
        | layout::Entry::Upload { repo, .. } => Some(repo),
        layout::Entry::Blob(_) => None,
    }
}

impl RepoIndex {
    fn add(&mut self, entry: layout::Entry, meta: ObjectMeta) {
        match entry {
            layout::Entry::Tag { tag, .. } => self.tags.push((tag, meta)),
            layout::Entry::ManifestLink { digest, .. } => {
                self.manifests.insert(digest, meta);
            }
            layout::Entry::BlobLink { digest, .. } => {
                self.blobs.insert(digest, meta);
            }
            layout::Entry::Referrer {
                subject, referrer, ..
            } => self
                .referrers
                .entry(subject)
                .or_default()
                .push((referrer, meta)),
            layout::Entry::Upload { id, .. } => self.uploads.push((id, meta)),
            layout::Entry::Blob(_) => {}
        }
    }
}

/// The repositories of a store, one at a time, from one walk of `repos/`: memory holds
/// one repository's index, whatever the number of repositories. The walk keeps each
/// folder whole, and everything of repository `r` lies under `repos/r/_…` (no name
/// component starts with `_`), so a repository's entries arrive together.
///
/// Entries that do not parse (a stray file) are skipped with a log line; they are never
/// deleted, because they are not ours to judge. Paths are read back by
/// [`layout::parse`], the one reader of the layout.
pub struct Repos {
    walk: store::Walk,
    /// The first entry of the next repository, read while finishing the one before.
    next: Option<(layout::Entry, ObjectMeta)>,
    /// Hashes of the names already handed out: one seen again means the walk broke its
    /// order, and the run stops before acting on half a repository. Keyed per run
    /// (`RandomState`), so nobody can pick two names that collide.
    done: HashSet<u64>,
    keys: std::collections::hash_map::RandomState,
}

fn name_hash(keys: &std::collections::hash_map::RandomState, name: &RepoName) -> u64 {
    use std::hash::BuildHasher;
    keys.hash_one(name)
}

impl Repos {
    pub async fn open(store: &dyn ObjectLister) -> Result<Repos> {
        Ok(Repos {
            // Fused: `next` may ask again after the end.
            walk: store.walk(&Key::new(layout::REPOS)?).await?.fuse().boxed(),
            next: None,
            done: HashSet::new(),
            keys: std::collections::hash_map::RandomState::new(),
        })
    }

    /// The next repository, or `None` after the last.
    pub async fn next(&mut self) -> Result<Option<RepoIndex>> {
        let mut current: Option<RepoIndex> = None;
        loop {
            let item = match self.next.take() {
                Some(item) => Some(item),
                None => self.read().await?,
            };
            let Some((entry, meta)) = item else {
                return Ok(current);
            };
            let Some(repo) = repo_of(&entry) else {
                continue;
            };
            match &mut current {
                Some(c) if c.name == *repo => c.add(entry, meta),
                Some(_) => {
                    self.next = Some((entry, meta));
                    return Ok(current);
                }
                None => {
                    if !self.done.insert(name_hash(&self.keys, repo)) {
                        return Err(UpkeepError::WalkOrder(repo.to_string()));
                    }
                    let mut c = RepoIndex::new(repo.clone());
                    c.add(entry, meta);
                    current = Some(c);
                }
            }
        }
    }

    /// The repositories as a stream, ending after the first error.
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<RepoIndex>> + Send {
        futures::stream::unfold(Some(self), |state| async move {
            let mut repos = state?;
            match repos.next().await {
                Ok(Some(r)) => Some((Ok(r), Some(repos))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
    }

    /// The next entry of the walk that parses.
    async fn read(&mut self) -> Result<Option<(layout::Entry, ObjectMeta)>> {
        while let Some(item) = self.walk.next().await {
            let (path, meta) = item?;
            match layout::parse(&format!("{}/{path}", layout::REPOS)) {
                Some(e) if repo_of(&e).is_some() => {
                    return Ok(Some((e, meta)));
                }
                _ => tracing::warn!(path, "unexpected object under repos/ ignored"),
            }
        }
        Ok(None)
    }
}

/// Every stored content object (`blobs/<algo>/<xx>/<hex>`) with its meta, streamed.
pub async fn blobs(
    store: &dyn ObjectLister,
) -> Result<impl futures::Stream<Item = Result<(Digest, ObjectMeta)>> + Send + use<>> {
    let walk = store.walk(&Key::new("blobs")?).await?;
    Ok(walk.filter_map(|item| async move {
        match item {
            Err(e) => Some(Err(e.into())),
            Ok((path, meta)) => match layout::parse(&format!("blobs/{path}")) {
                Some(layout::Entry::Blob(d)) => Some(Ok((d, meta))),
                _ => {
                    tracing::warn!(path, "unexpected object under blobs/ ignored");
                    None
                }
            },
        }
    }))
}

/// What a manifest points at, read from its stored bytes.
#[derive(Debug, Default)]
pub struct Refs {
    /// Child manifests (an index's `manifests`).
    pub children: Vec<Digest>,
    /// Config and layers.
    pub blobs: Vec<Digest>,
}

/// The references of manifest `bytes`, or `None` when they are not a manifest.
pub fn parse_refs(bytes: &[u8]) -> Option<Refs> {
    let parsed = oci::ParsedManifest::parse(bytes, None).ok()?;
    Some(Refs {
        children: parsed.manifests.iter().map(|d| d.digest.clone()).collect(),
        blobs: parsed
            .config
            .iter()
            .chain(parsed.layers.iter())
            .map(|d| d.digest.clone())
            .collect(),
    })
}
