//! The registry's invariants at its own boundary, on the in-memory store (and the
//! fault-injecting wrapper over it): what a manifest PUT checks before anything is
//! written, the order it writes in (bytes, then link, then tag: a tag never names a
//! manifest the repository lacks), and what a refused or failed write leaves (nothing).

use crate::{PutManifest, Registry, RegistryError, RegistryOptions, layout};
use bytes::Bytes;
use futures::StreamExt;
use oci::{Digest, Reference, RepoName, media};
use std::sync::Arc;
use store::Store;
use store::faults::{Fault, FaultyStore, Op};
use store::memory::MemoryStore;

fn repo() -> RepoName {
    "team/app".parse().unwrap()
}

async fn push_blob(r: &Registry, repo: &RepoName, bytes: &'static [u8]) -> Digest {
    let d = Digest::sha256_of(bytes);
    let body = futures::stream::iter([Ok(Bytes::from_static(bytes))]).boxed();
    r.put_blob(repo, &d, Some(bytes.len() as u64), body)
        .await
        .unwrap();
    d
}

fn descriptor(media_type: &str, d: &Digest, size: usize) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": d.to_string(), "size": size})
}

fn image(config: &Digest, layer: &Digest) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", config, 2),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", layer, 5)],
        }))
        .unwrap(),
    )
}

async fn put(
    r: &Registry,
    repo: &RepoName,
    reference: &str,
    bytes: Bytes,
) -> crate::Result<Digest> {
    let reference: Reference = reference.parse().unwrap();
    r.put_manifest(PutManifest {
        repo,
        reference: &reference,
        content_type: Some(media::OCI_MANIFEST),
        bytes,
    })
    .await
    .map(|o| o.digest)
}

async fn exists(store: &dyn Store, key: store::Key) -> bool {
    store.stat(&key).await.unwrap().is_some()
}

#[tokio::test]
async fn a_manifest_naming_a_missing_blob_is_refused_and_writes_nothing() {
    let r = Registry::new(Arc::new(MemoryStore::new()), RegistryOptions::default());
    let repo = repo();
    let config = push_blob(&r, &repo, b"{}").await;
    let missing = Digest::sha256_of(b"never pushed");
    let bytes = image(&config, &missing);
    let digest = Digest::sha256_of(&bytes);
    let e = put(&r, &repo, "v1", bytes).await.unwrap_err();
    assert!(
        matches!(&e, RegistryError::ManifestBlobUnknown(d) if *d == missing),
        "{e}"
    );
    let store = r.store().as_ref();
    assert!(!exists(store, layout::manifest_link(&repo, &digest).unwrap()).await);
    assert!(!exists(store, layout::blob(&digest).unwrap()).await);
    assert!(!exists(store, layout::tag(&repo, &"v1".parse().unwrap()).unwrap()).await);
    // A blob linked only in another repository does not count either.
    let other: RepoName = "other/app".parse().unwrap();
    let elsewhere = push_blob(&r, &other, b"layer").await;
    let e = put(&r, &repo, "v1", image(&config, &elsewhere))
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::ManifestBlobUnknown(_)), "{e}");
}

#[tokio::test]
async fn an_index_naming_a_missing_child_is_refused() {
    let r = Registry::new(Arc::new(MemoryStore::new()), RegistryOptions::default());
    let repo = repo();
    let child = Digest::sha256_of(b"no such manifest");
    let index = Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": [descriptor(media::OCI_MANIFEST, &child, 100)],
        }))
        .unwrap(),
    );
    let reference: Reference = "multi".parse().unwrap();
    let e = r
        .put_manifest(PutManifest {
            repo: &repo,
            reference: &reference,
            content_type: Some(media::OCI_INDEX),
            bytes: index,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&e, RegistryError::ManifestChildUnknown(d) if *d == child),
        "{e}"
    );
}

#[tokio::test]
async fn a_manifest_put_by_digest_must_hash_to_it() {
    let r = Registry::new(Arc::new(MemoryStore::new()), RegistryOptions::default());
    let repo = repo();
    let config = push_blob(&r, &repo, b"{}").await;
    let layer = push_blob(&r, &repo, b"layer").await;
    let wrong = Digest::sha256_of(b"something else");
    let e = put(&r, &repo, &wrong.to_string(), image(&config, &layer))
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::DigestInvalid), "{e}");
    assert!(
        !exists(
            r.store().as_ref(),
            layout::manifest_link(&repo, &wrong).unwrap()
        )
        .await
    );
}

/// Bytes, then link, then tag: when the tag's write fails the manifest is whole and
/// reachable by digest; when the link's write fails there is no tag naming it.
#[tokio::test]
async fn a_manifest_put_writes_bytes_then_link_then_tag() {
    let faulty = Arc::new(FaultyStore::new(Arc::new(MemoryStore::new())));
    let r = Registry::new(faulty.clone(), RegistryOptions::default());
    let repo = repo();
    let config = push_blob(&r, &repo, b"{}").await;
    let layer = push_blob(&r, &repo, b"layer").await;
    let bytes = image(&config, &layer);
    let digest = Digest::sha256_of(&bytes);

    faulty.arm(Op::Put, Some("repos/team/app/_tags/"), 0, Fault::Io);
    assert!(put(&r, &repo, "v1", bytes.clone()).await.is_err());
    assert_eq!(faulty.pending(), 0, "the tag write was reached");
    let by_digest = r
        .get_manifest(&repo, &Reference::Digest(digest.clone()))
        .await
        .unwrap();
    assert_eq!(
        by_digest.stored.bytes, bytes,
        "the manifest is whole without its tag"
    );
    assert!(matches!(
        r.get_manifest(&repo, &"v1".parse().unwrap()).await,
        Err(RegistryError::ManifestUnknown)
    ));

    let repo2: RepoName = "team/two".parse().unwrap();
    let config = push_blob(&r, &repo2, b"{}").await;
    let layer = push_blob(&r, &repo2, b"layer").await;
    faulty.arm(Op::Put, Some("repos/team/two/_manifests/"), 0, Fault::Io);
    assert!(put(&r, &repo2, "v1", image(&config, &layer)).await.is_err());
    assert_eq!(faulty.pending(), 0, "the link write was reached");
    let store = r.store().as_ref();
    assert!(!exists(store, layout::tag(&repo2, &"v1".parse().unwrap()).unwrap()).await);
    // The same PUT again succeeds: nothing half-written stands in the way.
    put(&r, &repo2, "v1", image(&config, &layer)).await.unwrap();
    assert_eq!(
        r.resolve_tag(&repo2, &"v1".parse().unwrap()).await.unwrap(),
        digest
    );
}

#[tokio::test]
async fn an_upload_with_the_wrong_digest_publishes_nothing() {
    let r = Registry::new(Arc::new(MemoryStore::new()), RegistryOptions::default());
    let repo = repo();
    let claimed = Digest::sha256_of(b"what the client claims");
    let body = futures::stream::iter([Ok(Bytes::from_static(b"what it sends"))]).boxed();
    let e = r.put_blob(&repo, &claimed, None, body).await.unwrap_err();
    assert!(matches!(e, RegistryError::DigestInvalid), "{e}");
    let store = r.store().as_ref();
    assert!(!exists(store, layout::blob(&claimed).unwrap()).await);
    assert!(
        !exists(
            store,
            layout::blob(&Digest::sha256_of(b"what it sends")).unwrap()
        )
        .await
    );
    assert!(matches!(
        r.open_blob(&repo, &claimed).await,
        Err(RegistryError::BlobUnknown)
    ));
}

/// A whole blob pushed under the digest of a blob the store already holds (another
/// repository's) is linked only when its own bytes hash to that digest: naming a digest
/// is not a way into someone else's blob. A body shorter than announced is refused the
/// same way, and the stored blob is left as it was.
#[tokio::test]
async fn a_known_digest_with_the_wrong_bytes_links_nothing() {
    let r = Registry::new(Arc::new(MemoryStore::new()), RegistryOptions::default());
    let theirs: RepoName = "them/secret".parse().unwrap();
    let d = push_blob(&r, &theirs, b"their private layer").await;
    let mine = repo();
    let guess = futures::stream::iter([Ok(Bytes::from_static(b"anything at all"))]).boxed();
    let e = r.put_blob(&mine, &d, None, guess).await.unwrap_err();
    assert!(matches!(e, RegistryError::DigestInvalid), "{e}");
    let short = futures::stream::iter([Ok(Bytes::from_static(b"their private"))]).boxed();
    let e = r.put_blob(&mine, &d, Some(19), short).await.unwrap_err();
    assert!(matches!(e, RegistryError::SizeInvalid), "{e}");
    assert!(matches!(
        r.open_blob(&mine, &d).await,
        Err(RegistryError::BlobUnknown)
    ));
    assert_eq!(r.stat_blob(&theirs, &d).await.unwrap(), 19);
    // With the right bytes it is linked, and the stored blob is not written again.
    push_blob(&r, &mine, b"their private layer").await;
    assert_eq!(r.stat_blob(&mine, &d).await.unwrap(), 19);
}

/// The cache's fill appends without the registry hashing (it hashes the bytes itself as
/// they arrive) and publishes with the digest it found: the registry still checks that
/// the upload holds exactly the bytes the caller says, so an upload another writer moved
/// meanwhile publishes nothing.
#[tokio::test]
async fn a_prehashed_upload_publishes_only_the_size_its_caller_saw() {
    let r = Registry::new(Arc::new(MemoryStore::new()), RegistryOptions::default());
    let repo = repo();
    let body = |b: &'static [u8]| futures::stream::iter([Ok(Bytes::from_static(b))]).boxed();
    let id = r.start_upload(&repo).await.unwrap();
    r.append_unhashed(&repo, &id, 0, Some(5), body(b"first"))
        .await
        .unwrap();
    let e = r
        .append_unhashed(&repo, &id, 0, Some(5), body(b"again"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::RangeInvalid { current: 5 }),
        "{e}"
    );
    // Another writer adds bytes the caller never saw.
    r.append_upload(&repo, &id, Some(5), Some(4), body(b"more"))
        .await
        .unwrap();
    let d = Digest::sha256_of(b"first");
    let e = r
        .finish_prehashed_upload(&repo, &id, &d, 5)
        .await
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::RangeInvalid { current: 9 }),
        "{e}"
    );
    assert!(matches!(
        r.open_blob(&repo, &d).await,
        Err(RegistryError::BlobUnknown)
    ));
    let d = Digest::sha256_of(b"firstmore");
    r.finish_prehashed_upload(&repo, &id, &d, 9).await.unwrap();
    assert_eq!(r.stat_blob(&repo, &d).await.unwrap(), 9);
}

/// The catalog comes in byte order however names nest (`a-b` and `a.c` sort between `a`
/// and `a/b`), page by page from any `last`, each name once.
#[tokio::test]
async fn the_catalog_pages_in_byte_order_from_any_point() {
    let r = Registry::new(
        Arc::new(MemoryStore::new()),
        crate::RegistryOptions::default(),
    );
    let names = [
        "a", "a-b", "a/b", "a/b/c", "a.c", "a0", "b", "b/a-x", "b/a/y", "c_d/e",
    ];
    for n in names {
        let repo: RepoName = n.parse().unwrap();
        push_blob(&r, &repo, b"catalog").await;
    }
    let mut sorted: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    sorted.sort();
    let all: Vec<String> = r
        .all_repositories()
        .await
        .unwrap()
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(all, sorted);
    // One name a page, each page starting after the last one's name.
    let mut paged = Vec::new();
    let mut last = None;
    loop {
        let page = crate::Page {
            n: Some(1),
            last: last.clone(),
        };
        let (got, more) = r.catalog(&page).await.unwrap();
        paged.extend(got.clone());
        if !more {
            break;
        }
        last = got.last().cloned();
    }
    assert_eq!(paged, sorted);
    // From a `last` that names no repository.
    let page = crate::Page {
        n: Some(3),
        last: Some("a/a".into()),
    };
    assert_eq!(
        r.catalog(&page).await.unwrap(),
        (vec!["a/b".into(), "a/b/c".into(), "a0".into()], true)
    );
}
