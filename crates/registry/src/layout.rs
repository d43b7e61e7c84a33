//! Where the registry keeps things in the store. This is the whole on-disk format:
//!
//! ```text
//! blobs/<algo>/<2 hex>/<hex>                          blob and manifest bytes
//! repos/<name>/_blobs/<algo>/<hex>                    blob link: the repo has this blob
//! repos/<name>/_manifests/<algo>/<hex>                manifest link; content: media type
//! repos/<name>/_tags/<tag>                            tag; content: manifest digest
//! repos/<name>/_referrers/<algo>/<hex>/<algo>-<hex>   subject -> referrer; content: descriptor JSON
//! repos/<name>/_uploads/<id>                          upload session owned by this repo
//! state/history/<writer>                              a replica's page history (JSON)
//! ```
//!
//! Repository names never have a component starting with `_`, so the `_` folders can not
//! collide with a nested repository. [`parse`] is the one reader of these paths: walks
//! (gc, fsck) and listings turn keys back into typed [`Entry`]s through it, never with
//! string literals of their own.

use crate::error::Result;
use oci::{Digest, RepoName, Tag};
use store::{Key, UploadId};

pub const REPOS: &str = "repos";

/// Where each replica keeps the web page's history of its numbers: beside the
/// registry's content, never inside `repos/` or `blobs/`, so collection and checks
/// never see it.
pub fn history_folder() -> Result<Key> {
    Ok(Key::new("state/history")?)
}

/// The page history of writer `name` (a host name and port).
pub fn history(name: &str) -> Result<Key> {
    Ok(history_folder()?.join(name)?)
}

pub fn blob(d: &Digest) -> Result<Key> {
    Ok(Key::new(format!(
        "blobs/{}/{}/{}",
        d.algorithm().as_str(),
        &d.hex()[..2],
        d.hex()
    ))?)
}

pub fn repo(r: &RepoName) -> Result<Key> {
    Ok(Key::new(format!("{REPOS}/{r}"))?)
}

pub fn blob_link(r: &RepoName, d: &Digest) -> Result<Key> {
    Ok(Key::new(format!(
        "{REPOS}/{r}/_blobs/{}/{}",
        d.algorithm().as_str(),
        d.hex()
    ))?)
}

pub fn manifest_link(r: &RepoName, d: &Digest) -> Result<Key> {
    Ok(Key::new(format!(
        "{REPOS}/{r}/_manifests/{}/{}",
        d.algorithm().as_str(),
        d.hex()
    ))?)
}

pub fn tags(r: &RepoName) -> Result<Key> {
    Ok(Key::new(format!("{REPOS}/{r}/_tags"))?)
}

pub fn tag(r: &RepoName, t: &Tag) -> Result<Key> {
    Ok(Key::new(format!("{REPOS}/{r}/_tags/{t}"))?)
}

pub fn referrers(r: &RepoName, subject: &Digest) -> Result<Key> {
    Ok(Key::new(format!(
        "{REPOS}/{r}/_referrers/{}/{}",
        subject.algorithm().as_str(),
        subject.hex()
    ))?)
}

pub fn referrer(r: &RepoName, subject: &Digest, referrer: &Digest) -> Result<Key> {
    Ok(referrers(r, subject)?.join(&referrer_name(referrer))?)
}

/// `sha256:abc` as a single key component: `sha256-abc`.
pub fn referrer_name(d: &Digest) -> String {
    format!("{}-{}", d.algorithm().as_str(), d.hex())
}

pub fn upload(r: &RepoName, id: &UploadId) -> Result<Key> {
    Ok(Key::new(format!("{REPOS}/{r}/_uploads/{id}"))?)
}

/// The metadata folders that mark a folder under `repos/` as a repository.
pub const REPO_MARKERS: [&str; 3] = ["_manifests", "_tags", "_blobs"];

/// The algorithms whose digests the layout holds, in listing order.
pub const ALGORITHMS: [oci::Algorithm; 2] = [oci::Algorithm::Sha256, oci::Algorithm::Sha512];

/// The two kinds of link folder a repository has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Links {
    /// `_manifests/<algo>/<hex>`
    Manifests,
    /// `_blobs/<algo>/<hex>`
    Blobs,
}

impl Links {
    fn folder(self) -> &'static str {
        match self {
            Links::Manifests => "_manifests",
            Links::Blobs => "_blobs",
        }
    }
}

/// The folder holding `repo`'s links of `kind` for `algo` (its children are hex names,
/// read back with [`link_digest`]).
pub fn links(repo: &RepoName, kind: Links, algo: oci::Algorithm) -> Result<Key> {
    Ok(Key::new(format!(
        "{REPOS}/{repo}/{}/{}",
        kind.folder(),
        algo.as_str()
    ))?)
}

/// The digest a link named `name` in a [`links`] folder of `algo` stands for.
pub fn link_digest(algo: oci::Algorithm, name: &str) -> Option<Digest> {
    digest(algo.as_str(), name)
}

/// A key of the layout, read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// `blobs/<algo>/<2 hex>/<hex>`
    Blob(Digest),
    /// `repos/<name>/_blobs/<algo>/<hex>`
    BlobLink { repo: RepoName, digest: Digest },
    /// `repos/<name>/_manifests/<algo>/<hex>`
    ManifestLink { repo: RepoName, digest: Digest },
    /// `repos/<name>/_tags/<tag>`
    Tag { repo: RepoName, tag: Tag },
    /// `repos/<name>/_referrers/<algo>/<hex>/<algo>-<hex>`
    Referrer {
        repo: RepoName,
        subject: Digest,
        referrer: Digest,
    },
    /// `repos/<name>/_uploads/<id>`
    Upload { repo: RepoName, id: String },
}

fn digest(algo: &str, hex: &str) -> Option<Digest> {
    format!("{algo}:{hex}").parse().ok()
}

/// What the key at `path` (relative to the store's root) is; `None` for anything the
/// layout does not build: a stray file, an invalid name or digest, a blob under the
/// wrong fan-out folder.
pub fn parse(path: &str) -> Option<Entry> {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["blobs", algo, fan, hex] => {
            let d = digest(algo, hex)?;
            (d.hex().get(..2) == Some(*fan)).then_some(Entry::Blob(d))
        }
        [REPOS, rest @ ..] => {
            let at = rest.iter().position(|p| p.starts_with('_'))?;
            let repo: RepoName = rest[..at].join("/").parse().ok()?;
            Some(match &rest[at..] {
                ["_tags", t] => Entry::Tag {
                    repo,
                    tag: t.parse().ok()?,
                },
                ["_manifests", algo, hex] => Entry::ManifestLink {
                    repo,
                    digest: digest(algo, hex)?,
                },
                ["_blobs", algo, hex] => Entry::BlobLink {
                    repo,
                    digest: digest(algo, hex)?,
                },
                ["_referrers", algo, hex, r] => {
                    let (ra, rh) = r.split_once('-')?;
                    Entry::Referrer {
                        repo,
                        subject: digest(algo, hex)?,
                        referrer: digest(ra, rh)?,
                    }
                }
                ["_uploads", id] => Entry::Upload {
                    repo,
                    id: (*id).to_owned(),
                },
                _ => return None,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key the builders make parses back to what it was built from.
    #[test]
    fn parse_reads_back_what_the_builders_write() {
        let repo: RepoName = "team/app".parse().unwrap();
        let d: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        let r: Digest = format!("sha512:{}", "cd".repeat(64)).parse().unwrap();
        let tag: Tag = "v1.0".parse().unwrap();
        let id = UploadId::random();
        for (key, entry) in [
            (blob(&d).unwrap(), Entry::Blob(d.clone())),
            (
                blob_link(&repo, &d).unwrap(),
                Entry::BlobLink {
                    repo: repo.clone(),
                    digest: d.clone(),
                },
            ),
            (
                manifest_link(&repo, &d).unwrap(),
                Entry::ManifestLink {
                    repo: repo.clone(),
                    digest: d.clone(),
                },
            ),
            (
                self::tag(&repo, &tag).unwrap(),
                Entry::Tag {
                    repo: repo.clone(),
                    tag: tag.clone(),
                },
            ),
            (
                referrer(&repo, &d, &r).unwrap(),
                Entry::Referrer {
                    repo: repo.clone(),
                    subject: d.clone(),
                    referrer: r.clone(),
                },
            ),
            (
                upload(&repo, &id).unwrap(),
                Entry::Upload {
                    repo: repo.clone(),
                    id: id.to_string(),
                },
            ),
        ] {
            assert_eq!(parse(key.as_str()), Some(entry), "{key:?}");
        }
        let folder = links(&repo, Links::Blobs, oci::Algorithm::Sha256).unwrap();
        let name = blob_link(&repo, &d).unwrap();
        let hex = name
            .as_str()
            .strip_prefix(&format!("{}/", folder.as_str()))
            .unwrap();
        assert_eq!(link_digest(oci::Algorithm::Sha256, hex), Some(d.clone()));
    }

    #[test]
    fn parse_refuses_what_the_layout_never_builds() {
        let hex = "ab".repeat(32);
        for path in [
            format!("blobs/sha256/zz/{hex}"),
            format!("blobs/sha256/{hex}"),
            "repos/team/app/_tags".to_owned(),
            "repos/team/app/stray".to_owned(),
            "repos/Team/_tags/v1".to_owned(),
            "repos/team/_manifests/sha256/xyz".to_owned(),
            "repos/team/_other/a".to_owned(),
            "repos/team/_referrers/sha256/ab/notadigest".to_owned(),
            "elsewhere/x".to_owned(),
        ] {
            assert_eq!(parse(&path), None, "{path}");
        }
    }
}
