//! The store the upkeep rows work on: a deterministic set of repositories of small tagged
//! images plus some garbage, made once in memory and written straight as files in
//! berth's or in distribution's on-disk layout (pushing 110,000 objects over HTTP would
//! take far longer than anything measured), and which of those files a garbage
//! collection must keep or remove.

use crate::blob::{Blob, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, descriptor};
use anyhow::{Context, Result};
use bytes::Bytes;
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::iter;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Smallest generated blob. Blobs are small so the runs measure walking the store and
/// its bookkeeping, not disk bandwidth (a deep fsck still reads and hashes every byte).
pub const BLOB_MIN_BYTES: usize = 100;
/// Largest generated blob.
pub const BLOB_MAX_BYTES: usize = 300;

/// How many of what the store holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub repositories: usize,
    /// Tagged images per repository, one tag each (`v1`, `v2`, ...).
    pub tags_per_repository: usize,
    /// Layers per image; each image also has a config blob.
    pub layers_per_image: usize,
    /// Every this many repositories (the first, then every `garbage_every`th) also holds
    /// garbage: one untagged image whose manifest, config and layers nothing else shares,
    /// and one blob linked into the repository that no manifest references (a push whose
    /// manifest never came).
    pub garbage_every: usize,
}

impl Shape {
    /// The store of the issue: 2,000 repositories × 5 tagged images = 10,000 manifests,
    /// each with 1 config + 9 layers = 100,000 blobs, all distinct. Garbage in 1
    /// repository in 10 makes 200 untagged images (200 manifests, 2,000 blobs) and 200
    /// stray blobs: 2% of the store, enough that the sweep has work to show in the times
    /// without making it a different job than marking a big live set.
    pub const ISSUE: Shape = Shape {
        repositories: 2_000,
        tags_per_repository: 5,
        layers_per_image: 9,
        garbage_every: 10,
    };

    /// The issue's store grown or shrunk to about `blobs` live blobs: the same images,
    /// more or fewer repositories (`--scale 1000000`: 20,000 repositories, 100,000
    /// manifests, 1,000,000 blobs).
    pub fn with_blobs(blobs: usize) -> Shape {
        let per_repository = Self::ISSUE.tags_per_repository * (Self::ISSUE.layers_per_image + 1);
        Shape {
            repositories: (blobs / per_repository).max(1),
            ..Self::ISSUE
        }
    }

    /// Live blobs (configs and layers of tagged images).
    pub fn blobs(&self) -> usize {
        self.repositories * self.tags_per_repository * (self.layers_per_image + 1)
    }
}

/// One image: its manifest (the bytes and their digest), its config and its layers.
pub struct Image {
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

impl Image {
    /// The config, then the layers.
    fn blobs(&self) -> impl Iterator<Item = &Blob> {
        iter::once(&self.config).chain(&self.layers)
    }

    fn bytes(&self) -> u64 {
        self.manifest.len() + self.blobs().map(Blob::len).sum::<u64>()
    }
}

pub struct Repository {
    pub name: String,
    pub tagged: Vec<(String, Image)>,
    /// Images no tag reaches: garbage.
    pub untagged: Vec<Image>,
    /// Blobs linked into the repository that no manifest references: garbage.
    pub stray: Vec<Blob>,
}

/// What a garbage collection must do with a file of the generated store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Part of a tagged image: it must survive.
    Kept,
    /// Garbage: it must be gone afterwards.
    Collected,
    /// Garbage the tool may leave: distribution never removes a repository's
    /// `_layers` links, only the blobs they name.
    Either,
}

/// The two on-disk layouts, each a function of the storage root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// berth's fs store (crates/registry/src/layout.rs), under `[storage] path`.
    Berth,
    /// distribution 2.8's filesystem driver, under `rootdirectory`.
    Distribution,
}

/// Where distribution's filesystem driver keeps everything below its `rootdirectory`.
const DISTRIBUTION_PREFIX: &str = "docker/registry/v2";

fn hex(b: &Blob) -> &str {
    b.digest.strip_prefix("sha256:").unwrap_or(&b.digest)
}

impl Layout {
    fn base(self, root: &Path) -> PathBuf {
        match self {
            Layout::Berth => root.to_owned(),
            Layout::Distribution => root.join(DISTRIBUTION_PREFIX),
        }
    }

    /// The stored bytes of a blob or manifest.
    fn blob(self, root: &Path, b: &Blob) -> PathBuf {
        let h = hex(b);
        let dir = self.base(root).join("blobs/sha256").join(&h[..2]).join(h);
        match self {
            Layout::Berth => dir,
            Layout::Distribution => dir.join("data"),
        }
    }

    /// The link that puts blob `b` into repository `repo`.
    fn blob_link(self, root: &Path, repo: &str, b: &Blob) -> PathBuf {
        match self {
            Layout::Berth => root
                .join("repos")
                .join(repo)
                .join("_blobs/sha256")
                .join(hex(b)),
            Layout::Distribution => self
                .base(root)
                .join("repositories")
                .join(repo)
                .join("_layers/sha256")
                .join(hex(b))
                .join("link"),
        }
    }

    /// The link that puts manifest `m` into `repo`, and what the link holds.
    fn manifest_link<'a>(self, root: &Path, repo: &str, m: &'a Blob) -> (PathBuf, &'a [u8]) {
        match self {
            Layout::Berth => (
                root.join("repos")
                    .join(repo)
                    .join("_manifests/sha256")
                    .join(hex(m)),
                OCI_MANIFEST.as_bytes(),
            ),
            Layout::Distribution => (
                self.base(root)
                    .join("repositories")
                    .join(repo)
                    .join("_manifests/revisions/sha256")
                    .join(hex(m))
                    .join("link"),
                m.digest.as_bytes(),
            ),
        }
    }

    /// The files that make `tag` point at manifest `m`; each holds the digest.
    fn tag_files(self, root: &Path, repo: &str, tag: &str, m: &Blob) -> Vec<PathBuf> {
        match self {
            Layout::Berth => vec![root.join("repos").join(repo).join("_tags").join(tag)],
            Layout::Distribution => {
                let dir = self
                    .base(root)
                    .join("repositories")
                    .join(repo)
                    .join("_manifests/tags")
                    .join(tag);
                vec![
                    dir.join("current/link"),
                    dir.join("index/sha256").join(hex(m)).join("link"),
                ]
            }
        }
    }
}

/// The generated content, the same for both layouts.
pub struct Corpus {
    pub repositories: Vec<Repository>,
}

/// What a collection of the generated store must find and delete, and what a check of the
/// collected store must count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    pub repositories: u64,
    /// Tagged manifests (one tag each).
    pub manifests: u64,
    /// Configs and layers of the tagged images.
    pub blobs: u64,
    pub garbage_manifests: u64,
    /// Blobs linked into a repository that no manifest references.
    pub stray_blobs: u64,
    /// Blob links to delete: the untagged images' configs and layers, and the strays.
    pub garbage_blob_links: u64,
    /// Stored objects to delete: the untagged manifests' bytes and every garbage blob.
    pub garbage_objects: u64,
    pub garbage_bytes: u64,
}

/// SplitMix64: spreads consecutive counters over the whole range (used for lengths).
fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Makes the blobs: each from its own xorshift seed, so all differ.
struct Maker {
    made: u64,
}

impl Maker {
    fn blob(&mut self) -> Blob {
        let n = self.made;
        self.made += 1;
        let span = (BLOB_MAX_BYTES - BLOB_MIN_BYTES + 1) as u64;
        let len = BLOB_MIN_BYTES + (mix(n) % span) as usize;
        // Odd seeds: `Blob::random` sets the low bit, so 2n + 1 keeps every seed distinct.
        Blob::random(len, 2 * n + 1)
    }

    fn image(&mut self, layers: usize) -> Image {
        let config = self.blob();
        let layers: Vec<Blob> = (0..layers).map(|_| self.blob()).collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, &config),
            "layers": layers.iter().map(|l| descriptor(OCI_LAYER, l)).collect::<Vec<_>>(),
        });
        Image {
            manifest: Blob::new(Bytes::from(manifest.to_string())),
            config,
            layers,
        }
    }
}

impl Corpus {
    /// The store of `shape`, the same on every call.
    pub fn generate(shape: Shape) -> Corpus {
        let mut maker = Maker { made: 0 };
        let repositories = (0..shape.repositories)
            .map(|r| {
                let tagged = (1..=shape.tags_per_repository)
                    .map(|t| (format!("v{t}"), maker.image(shape.layers_per_image)))
                    .collect();
                let garbage = shape.garbage_every > 0 && r % shape.garbage_every == 0;
                let (untagged, stray) = if garbage {
                    (
                        vec![maker.image(shape.layers_per_image)],
                        vec![maker.blob()],
                    )
                } else {
                    (Vec::new(), Vec::new())
                };
                Repository {
                    name: format!("upkeep/r{r:05}"),
                    tagged,
                    untagged,
                    stray,
                }
            })
            .collect();
        Corpus { repositories }
    }

    pub fn expected(&self) -> Expected {
        let repos = &self.repositories;
        let untagged = || repos.iter().flat_map(|r| &r.untagged);
        let stray = || repos.iter().flat_map(|r| &r.stray);
        let garbage_manifests = untagged().count() as u64;
        let stray_blobs = stray().count() as u64;
        let garbage_blob_links =
            untagged().map(|i| i.blobs().count() as u64).sum::<u64>() + stray_blobs;
        Expected {
            repositories: repos.len() as u64,
            manifests: repos.iter().map(|r| r.tagged.len() as u64).sum(),
            blobs: repos
                .iter()
                .flat_map(|r| &r.tagged)
                .map(|(_, i)| i.blobs().count() as u64)
                .sum(),
            garbage_manifests,
            stray_blobs,
            garbage_blob_links,
            garbage_objects: garbage_manifests + garbage_blob_links,
            garbage_bytes: untagged().map(Image::bytes).sum::<u64>()
                + stray().map(Blob::len).sum::<u64>(),
        }
    }

    /// Every file of `repo` in `layout` under `root`: its path, its content and its fate.
    fn files_of(
        repo: &Repository,
        layout: Layout,
        root: &Path,
        mut visit: impl FnMut(PathBuf, &[u8], Fate) -> io::Result<()>,
    ) -> io::Result<()> {
        let name = repo.name.as_str();
        let link_fate = match layout {
            Layout::Berth => Fate::Collected,
            Layout::Distribution => Fate::Either,
        };
        let images = repo
            .tagged
            .iter()
            .map(|(_, i)| (i, Fate::Kept))
            .chain(repo.untagged.iter().map(|i| (i, Fate::Collected)));
        for (image, fate) in images {
            visit(
                layout.blob(root, &image.manifest),
                &image.manifest.bytes,
                fate,
            )?;
            let (link, content) = layout.manifest_link(root, name, &image.manifest);
            visit(link, content, fate)?;
            for b in image.blobs() {
                visit(layout.blob(root, b), &b.bytes, fate)?;
                let fate = if fate == Fate::Kept { fate } else { link_fate };
                visit(layout.blob_link(root, name, b), b.digest.as_bytes(), fate)?;
            }
        }
        for (tag, image) in &repo.tagged {
            for path in layout.tag_files(root, name, tag, &image.manifest) {
                visit(path, image.manifest.digest.as_bytes(), Fate::Kept)?;
            }
        }
        for b in &repo.stray {
            visit(layout.blob(root, b), &b.bytes, Fate::Collected)?;
            visit(
                layout.blob_link(root, name, b),
                b.digest.as_bytes(),
                link_fate,
            )?;
        }
        Ok(())
    }

    /// Write the store in `layout` under `root`, one thread per core, setting every
    /// file's modification time to `modified` when given.
    pub fn write(&self, layout: Layout, root: &Path, modified: Option<SystemTime>) -> Result<()> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_thread = self.repositories.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let writers: Vec<_> = self
                .repositories
                .chunks(per_thread)
                .map(|repos| {
                    scope.spawn(move || -> Result<()> {
                        for repo in repos {
                            Corpus::files_of(repo, layout, root, |path, bytes, _| {
                                write_file(&path, bytes, modified).map_err(|e| {
                                    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
                                })
                            })
                            .context("cannot write the generated store")?;
                        }
                        Ok(())
                    })
                })
                .collect();
            writers
                .into_iter()
                .try_for_each(|w| w.join().expect("store writer panicked"))
        })
    }

    /// The paths of every file with `fate` in `layout` under `root`.
    pub fn paths(&self, layout: Layout, root: &Path, fate: Fate) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for repo in &self.repositories {
            let _ = Corpus::files_of(repo, layout, root, |path, _, f| {
                if f == fate {
                    out.push(path);
                }
                Ok(())
            });
        }
        out
    }
}

/// Create `path` with `bytes`, and its folders when they are missing (tried only after
/// the create fails, as most files go into folders that exist).
fn write_file(path: &Path, bytes: &[u8], modified: Option<SystemTime>) -> io::Result<()> {
    let mut file = match File::create(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            File::create(path)?
        }
        Err(e) => return Err(e),
    };
    file.write_all(bytes)?;
    if let Some(t) = modified {
        file.set_modified(t)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::sha256_digest;
    use std::collections::HashSet;

    const SMALL: Shape = Shape {
        repositories: 4,
        tags_per_repository: 2,
        layers_per_image: 3,
        garbage_every: 3,
    };

    #[test]
    fn the_issue_shape_has_10k_manifests_and_100k_blobs() {
        let s = Shape::ISSUE;
        assert_eq!(s.repositories * s.tags_per_repository, 10_000);
        assert_eq!(
            s.repositories * s.tags_per_repository * (1 + s.layers_per_image),
            100_000
        );
    }

    #[test]
    fn counts_and_digests_hold() {
        let c = Corpus::generate(SMALL);
        let e = c.expected();
        // Garbage in repositories 0 and 3.
        assert_eq!(
            e,
            Expected {
                repositories: 4,
                manifests: 8,
                blobs: 32,
                garbage_manifests: 2,
                stray_blobs: 2,
                garbage_blob_links: 2 * 4 + 2,
                garbage_objects: 2 + 10,
                garbage_bytes: e.garbage_bytes,
            }
        );
        let mut digests = HashSet::new();
        for repo in &c.repositories {
            for image in repo.tagged.iter().map(|(_, i)| i).chain(&repo.untagged) {
                let m = &image.manifest;
                assert_eq!(m.digest, sha256_digest(&m.bytes));
                let parsed: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap();
                assert_eq!(parsed["mediaType"], OCI_MANIFEST);
                assert_eq!(
                    parsed["config"]["digest"].as_str(),
                    Some(&*image.config.digest)
                );
                assert_eq!(parsed["layers"].as_array().unwrap().len(), 3);
                for b in image.blobs() {
                    assert!((BLOB_MIN_BYTES..=BLOB_MAX_BYTES).contains(&b.bytes.len()));
                    assert_eq!(b.digest, sha256_digest(&b.bytes));
                }
                digests.extend(iter::once(m).chain(image.blobs()).map(|b| b.digest.clone()));
            }
            digests.extend(repo.stray.iter().map(|b| b.digest.clone()));
        }
        // Nothing is shared: every manifest and blob is its own.
        assert_eq!(digests.len() as u64, 8 + 32 + e.garbage_objects);
        // Deterministic.
        assert_eq!(
            Corpus::generate(SMALL).repositories[3].stray[0].digest,
            c.repositories[3].stray[0].digest
        );
    }

    #[test]
    fn written_stores_hold_every_file_with_its_age() {
        let c = Corpus::generate(SMALL);
        let e = c.expected();
        let dir = tempfile::tempdir().unwrap();
        let old = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        let berth = dir.path().join("berth");
        c.write(Layout::Berth, &berth, Some(old)).unwrap();
        let kept = c.paths(Layout::Berth, &berth, Fate::Kept);
        // Manifest bytes, manifest links, blob bytes, blob links, tags.
        assert_eq!(
            kept.len() as u64,
            2 * e.manifests + 2 * e.blobs + e.manifests
        );
        let garbage = c.paths(Layout::Berth, &berth, Fate::Collected);
        assert_eq!(
            garbage.len() as u64,
            e.garbage_objects + e.garbage_manifests + e.garbage_blob_links
        );
        for p in kept.iter().chain(&garbage) {
            assert_eq!(fs::metadata(p).unwrap().modified().unwrap(), old, "{p:?}");
        }
        let tag = berth.join("repos/upkeep/r00001/_tags/v2");
        let m = &c.repositories[1].tagged[1].1.manifest;
        assert_eq!(fs::read(tag).unwrap(), m.digest.as_bytes());
        assert_eq!(fs::read(Layout::Berth.blob(&berth, m)).unwrap(), m.bytes);

        let dist = dir.path().join("distribution");
        c.write(Layout::Distribution, &dist, None).unwrap();
        // Tags are two files there.
        assert_eq!(
            c.paths(Layout::Distribution, &dist, Fate::Kept).len() as u64,
            2 * e.manifests + 2 * e.blobs + 2 * e.manifests
        );
        let current = dist.join(format!(
            "{DISTRIBUTION_PREFIX}/repositories/upkeep/r00001/_manifests/tags/v2/current/link"
        ));
        assert_eq!(fs::read(current).unwrap(), m.digest.as_bytes());
        assert!(
            c.paths(Layout::Distribution, &dist, Fate::Either)
                .iter()
                .all(|p| p.ends_with("link") && p.exists())
        );
    }
}
