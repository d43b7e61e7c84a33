//! One walk of `repos/` turned into what each repository holds: tags, manifest links,
//! blob links, referrer links and upload markers, with their modification times. GC and
//! fsck both start from it; it reads names and times only, never object contents.

use crate::Result;
use oci::{Digest, RepoName, Tag};
use registry::layout;
use std::collections::{BTreeMap, HashMap};
use store::{Key, ObjectMeta, Store};

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

fn digest(algo: &str, hex: &str) -> Option<Digest> {
    format!("{algo}:{hex}").parse().ok()
}

/// Walk every repository. Entries that do not parse (a stray file) are skipped with a
/// log line; they are never deleted, because they are not ours to judge.
pub async fn scan(store: &dyn Store) -> Result<BTreeMap<RepoName, RepoIndex>> {
    let mut repos: BTreeMap<RepoName, RepoIndex> = BTreeMap::new();
    for (path, meta) in store.walk(&Key::new(layout::REPOS)?).await? {
        let parts: Vec<&str> = path.split('/').collect();
        let Some(at) = parts.iter().position(|p| p.starts_with('_')) else {
            tracing::warn!(path, "unexpected object under repos/ ignored");
            continue;
        };
        let Ok(name) = parts[..at].join("/").parse::<RepoName>() else {
            tracing::warn!(path, "object under an invalid repository name ignored");
            continue;
        };
        let rest = &parts[at..];
        let repo = repos
            .entry(name.clone())
            .or_insert_with(|| RepoIndex::new(name));
        let ok = match rest {
            ["_tags", t] => t.parse().map(|t| repo.tags.push((t, meta))).is_ok(),
            ["_manifests", algo, hex] => digest(algo, hex)
                .map(|d| repo.manifests.insert(d, meta))
                .is_some(),
            ["_blobs", algo, hex] => digest(algo, hex)
                .map(|d| repo.blobs.insert(d, meta))
                .is_some(),
            ["_referrers", algo, hex, r] => match (digest(algo, hex), r.split_once('-')) {
                (Some(s), Some((ra, rh))) => digest(ra, rh)
                    .map(|r| repo.referrers.entry(s).or_default().push((r, meta)))
                    .is_some(),
                _ => false,
            },
            ["_uploads", id] => {
                repo.uploads.push(((*id).to_owned(), meta));
                true
            }
            _ => false,
        };
        if !ok {
            tracing::warn!(path, "unexpected object under repos/ ignored");
        }
    }
    Ok(repos)
}

/// Every stored content object (`blobs/<algo>/<xx>/<hex>`) with its meta.
pub async fn scan_blobs(store: &dyn Store) -> Result<Vec<(Digest, ObjectMeta)>> {
    let mut out = Vec::new();
    for (path, meta) in store.walk(&Key::new("blobs")?).await? {
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            [algo, _, hex] => match digest(algo, hex) {
                Some(d) => out.push((d, meta)),
                None => tracing::warn!(path, "unexpected object under blobs/ ignored"),
            },
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
pub async fn read_refs(store: &dyn Store, digest: &Digest) -> Result<Option<Refs>> {
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
