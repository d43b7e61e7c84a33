//! Where the registry keeps things in the store. This is the whole on-disk format:
//!
//! ```text
//! blobs/<algo>/<2 hex>/<hex>                          blob and manifest bytes
//! repos/<name>/_blobs/<algo>/<hex>                    blob link: the repo has this blob
//! repos/<name>/_manifests/<algo>/<hex>                manifest link; content: media type
//! repos/<name>/_tags/<tag>                            tag; content: manifest digest
//! repos/<name>/_referrers/<algo>/<hex>/<algo>-<hex>   subject -> referrer; content: descriptor JSON
//! repos/<name>/_uploads/<id>                          upload session owned by this repo
//! ```
//!
//! Repository names never have a component starting with `_`, so the `_` folders can not
//! collide with a nested repository.

use crate::error::Result;
use oci::{Digest, RepoName, Tag};
use store::{Key, UploadId};

pub const REPOS: &str = "repos";

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
