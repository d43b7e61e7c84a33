//! One walk of `repos/` turned into what each repository holds: tags, manifest links,
//! blob links, referrer links and upload markers, with their modification times. GC and
//! fsck both start from it; it reads names and times only, never object contents.

use crate::Result;
use oci::{Digest, RepoName, Tag};
use registry::layout;
use std::collections::{BTreeMap, HashMap};
use store::{Key, ObjectLister, ObjectMeta, ObjectReader};

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

/// The index of `repo`, made on first sight.
fn at(repos: &mut BTreeMap<RepoName, RepoIndex>, repo: RepoName) -> &mut RepoIndex {
    repos
        .entry(repo.clone())
        .or_insert_with(|| RepoIndex::new(repo))
}

/// Walk every repository. Entries that do not parse (a stray file) are skipped with a
/// log line; they are never deleted, because they are not ours to judge. Paths are read
/// back by [`layout::parse`], the one reader of the layout.
pub async fn scan(store: &dyn ObjectLister) -> Result<BTreeMap<RepoName, RepoIndex>> {
    let mut repos: BTreeMap<RepoName, RepoIndex> = BTreeMap::new();
    for (path, meta) in store.walk(&Key::new(layout::REPOS)?).await? {
        let Some(entry) = layout::parse(&format!("{}/{path}", layout::REPOS)) else {
            tracing::warn!(path, "unexpected object under repos/ ignored");
            continue;
        };
        match entry {
            layout::Entry::Tag { repo, tag } => {
                at(&mut repos, repo).tags.push((tag, meta));
            }
            layout::Entry::ManifestLink { repo, digest } => {
                at(&mut repos, repo).manifests.insert(digest, meta);
            }
            layout::Entry::BlobLink { repo, digest } => {
                at(&mut repos, repo).blobs.insert(digest, meta);
            }
            layout::Entry::Referrer {
                repo,
                subject,
                referrer,
            } => {
                at(&mut repos, repo)
                    .referrers
                    .entry(subject)
                    .or_default()
                    .push((referrer, meta));
            }
            layout::Entry::Upload { repo, id } => {
                at(&mut repos, repo).uploads.push((id, meta));
            }
            layout::Entry::Blob(_) => {
                tracing::warn!(path, "unexpected object under repos/ ignored");
            }
        }
    }
    Ok(repos)
}

/// Every stored content object (`blobs/<algo>/<xx>/<hex>`) with its meta.
pub async fn scan_blobs(store: &dyn ObjectLister) -> Result<Vec<(Digest, ObjectMeta)>> {
    let mut out = Vec::new();
    for (path, meta) in store.walk(&Key::new("blobs")?).await? {
        match layout::parse(&format!("blobs/{path}")) {
            Some(layout::Entry::Blob(d)) => out.push((d, meta)),
            _ => tracing::warn!(path, "unexpected object under blobs/ ignored"),
        }
    }
    Ok(out)
}

/// What a manifest points at, read from its stored bytes.
#[derive(Debug, Default)]
pub struct Refs {
    /// Child manifests (an index's `manifests`).
    pub children: Vec<Digest>,
    /// Config and layers.
    pub blobs: Vec<Digest>,
}

/// Read and parse the stored manifest `digest`: `Ok(None)` when its bytes are missing or
/// not a manifest (fsck reports those; GC just cannot follow them).
pub async fn read_refs(store: &dyn ObjectReader, digest: &Digest) -> Result<Option<Refs>> {
    let Some(bytes) = store.get(&layout::blob(digest)?).await? else {
        return Ok(None);
    };
    Ok(parse_refs(&bytes))
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
