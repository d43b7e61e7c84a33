//! Manifests and tags: put with validation, get by tag or digest, delete.

use crate::error::{RegistryError, Result};
use crate::{Registry, layout};
use bytes::Bytes;
use oci::{Descriptor, Digest, ManifestKind, ParsedManifest, Reference, RepoName};
use std::sync::Arc;
use std::time::Instant;

/// A manifest as stored: its media type and exact bytes.
#[derive(Clone, Debug)]
pub struct Stored {
    pub media_type: String,
    pub bytes: Bytes,
}

/// A manifest found by a lookup.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub digest: Digest,
    pub stored: Arc<Stored>,
}

/// What a manifest PUT carries.
pub struct PutManifest<'a> {
    pub repo: &'a RepoName,
    pub reference: &'a Reference,
    /// The Content-Type the client sent, if any.
    pub content_type: Option<&'a str>,
    pub bytes: Bytes,
}

/// What a successful manifest PUT reports back.
#[derive(Clone, Debug)]
pub struct PutOutcome {
    pub digest: Digest,
    /// The `subject` digest, for the `OCI-Subject` response header.
    pub subject: Option<Digest>,
}

impl Registry {
    /// Resolve a tag to a digest.
    pub async fn resolve_tag(&self, repo: &RepoName, tag: &oci::Tag) -> Result<Digest> {
        let ck = (repo.clone(), tag.clone());
        if let Some(d) = self.fresh(self.tags.get(&ck)) {
            return Ok(d);
        }
        let raw = self
            .store
            .get(&layout::tag(repo, tag)?)
            .await?
            .ok_or(RegistryError::ManifestUnknown)?;
        let digest: Digest = std::str::from_utf8(&raw)
            .map_err(|_| RegistryError::ManifestUnknown)?
            .trim()
            .parse()
            .map_err(|_| RegistryError::ManifestUnknown)?;
        self.tags.insert(ck, (digest.clone(), Instant::now()));
        Ok(digest)
    }

    /// The manifest `digest` if the repository holds it.
    pub async fn manifest_by_digest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Arc<Stored>> {
        let ck = (repo.clone(), digest.clone());
        if let Some(m) = self.fresh(self.manifests.get(&ck)) {
            return Ok(m);
        }
        let link = self
            .store
            .get(&layout::manifest_link(repo, digest)?)
            .await?
            .ok_or(RegistryError::ManifestUnknown)?;
        let bytes = self
            .store
            .get(&layout::blob(digest)?)
            .await?
            .ok_or(RegistryError::ManifestUnknown)?;
        let stored = Arc::new(Stored {
            media_type: String::from_utf8_lossy(&link).trim().to_owned(),
            // Its own allocation, not a slice of a backend's read buffer (see
            // `store_manifest`).
            bytes: Bytes::copy_from_slice(&bytes),
        });
        self.manifests.insert(ck, (stored.clone(), Instant::now()));
        Ok(stored)
    }

    /// GET/HEAD of `/v2/<repo>/manifests/<reference>`.
    pub async fn get_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<Manifest> {
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => self.resolve_tag(repo, t).await?,
        };
        let stored = self.manifest_by_digest(repo, &digest).await?;
        Ok(Manifest { digest, stored })
    }

    /// PUT of a manifest: validate, check every reference is present, then store bytes,
    /// referrer link, manifest link and tag, in that order, so a crash at any point
    /// leaves at worst unreferenced data for GC and never a tag without its manifest.
    pub async fn put_manifest(&self, put: PutManifest<'_>) -> Result<PutOutcome> {
        let PutManifest {
            repo,
            reference,
            content_type,
            bytes,
        } = put;
        let size = bytes.len() as u64;
        if size > self.options.max_manifest_bytes {
            return Err(RegistryError::ManifestTooLarge {
                size,
                limit: self.options.max_manifest_bytes,
            });
        }
        let digest = match reference {
            Reference::Digest(d) => {
                if d.same_algorithm_of(&bytes) != *d {
                    return Err(RegistryError::DigestInvalid);
                }
                d.clone()
            }
            Reference::Tag(_) => Digest::sha256_of(&bytes),
        };
        let parsed = ParsedManifest::parse(&bytes, content_type)?;
        // From the check of the references to the manifest link, no garbage collection
        // in this process may delete what the check found (and renewed).
        let _permit = self.use_permit().await;
        self.check_references(repo, &parsed).await?;
        let tag = match reference {
            Reference::Tag(t) => Some(t),
            Reference::Digest(_) => None,
        };
        self.store_manifest(repo, tag, &digest, &parsed, bytes)
            .await?;
        if let Some(tag) = tag {
            // Nobody listening is fine.
            let _ = self.pushes.send(crate::Pushed {
                repo: repo.clone(),
                tag: tag.clone(),
                digest: digest.clone(),
            });
        }
        Ok(PutOutcome {
            digest,
            subject: parsed.subject.map(|s| s.digest),
        })
    }

    /// Store a manifest fetched from an upstream into a cached repository. The caller
    /// has verified `bytes` against `digest`; references are not checked, because a
    /// cache fetches blobs and children lazily, when clients ask for them.
    pub async fn cache_manifest(
        &self,
        repo: &RepoName,
        tag: Option<&oci::Tag>,
        digest: &Digest,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<()> {
        if digest.same_algorithm_of(&bytes) != *digest {
            return Err(RegistryError::DigestInvalid);
        }
        let parsed = ParsedManifest::parse(&bytes, Some(media_type))?;
        let _permit = self.use_permit().await;
        self.store_manifest(repo, tag, digest, &parsed, bytes).await
    }

    /// Write bytes, referrer link, manifest link and tag, in that order, so a crash at
    /// any point leaves at worst unreferenced data and never a tag without its manifest.
    async fn store_manifest(
        &self,
        repo: &RepoName,
        tag: Option<&oci::Tag>,
        digest: &Digest,
        parsed: &ParsedManifest,
        bytes: Bytes,
    ) -> Result<()> {
        // Bytes taken whole from a request or response are often a slice of the
        // connection's read buffer: kept in the metadata cache, each would pin that whole
        // buffer (hundreds of KiB) for as long as the entry lives. The soak found the
        // cache holding a GiB that way; a copy of at most a few KiB is the cure.
        let bytes = Bytes::copy_from_slice(&bytes);
        let size = bytes.len() as u64;
        let blob_key = layout::blob(digest)?;
        match self.store.stat(&blob_key).await? {
            Some(meta) if self.renew(&blob_key, meta).await? => {}
            _ => self.store.put(&blob_key, bytes.clone()).await?,
        }
        if let Some(subject) = &parsed.subject {
            let desc = Descriptor {
                media_type: parsed.media_type.clone(),
                digest: digest.clone(),
                size,
                artifact_type: parsed.effective_artifact_type(),
                annotations: parsed.annotations.clone(),
                platform: None,
                urls: Vec::new(),
            };
            let json = serde_json::to_vec(&desc)
                .map_err(|e| RegistryError::ManifestInvalid(e.to_string()))?;
            self.put_small(&layout::referrer(repo, &subject.digest, digest)?, json)
                .await?;
        }
        self.put_small(
            &layout::manifest_link(repo, digest)?,
            parsed.media_type.clone(),
        )
        .await?;
        self.manifests.insert(
            (repo.clone(), digest.clone()),
            (
                Arc::new(Stored {
                    media_type: parsed.media_type.clone(),
                    bytes,
                }),
                Instant::now(),
            ),
        );
        if let Some(t) = tag {
            self.put_small(&layout::tag(repo, t)?, digest.to_string())
                .await?;
            self.tags
                .insert((repo.clone(), t.clone()), (digest.clone(), Instant::now()));
        }
        Ok(())
    }

    /// Restore `repo`'s link to manifest `digest` when its bytes are stored and sound
    /// (fsck repair of an index child whose link was lost). `false` otherwise.
    pub async fn relink_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let _permit = self.use_permit().await;
        let key = layout::blob(digest)?;
        let Some(bytes) = self.store.get(&key).await? else {
            return Ok(false);
        };
        if digest.same_algorithm_of(&bytes) != *digest {
            return Ok(false);
        }
        let Ok(parsed) = ParsedManifest::parse(&bytes, None) else {
            return Ok(false);
        };
        if !self.store.touch(&key).await? {
            return Ok(false);
        }
        self.put_small(&layout::manifest_link(repo, digest)?, parsed.media_type)
            .await?;
        Ok(true)
    }

    /// When a tag was last written (pushed, or revalidated by a cache), if it exists.
    pub async fn tag_written_at(
        &self,
        repo: &RepoName,
        tag: &oci::Tag,
    ) -> Result<Option<std::time::SystemTime>> {
        Ok(self
            .store
            .stat(&layout::tag(repo, tag)?)
            .await?
            .map(|m| m.modified))
    }

    /// Point `tag` at `digest` (which the repository must hold), or just renew its write
    /// time when it already does: how a cache records a successful revalidation.
    pub async fn set_tag(&self, repo: &RepoName, tag: &oci::Tag, digest: &Digest) -> Result<()> {
        self.put_small(&layout::tag(repo, tag)?, digest.to_string())
            .await?;
        self.tags.insert(
            (repo.clone(), tag.clone()),
            (digest.clone(), Instant::now()),
        );
        Ok(())
    }

    /// Every blob and child manifest the manifest references must be present; each is
    /// renewed against garbage collection. Call with a use permit held.
    async fn check_references(&self, repo: &RepoName, parsed: &ParsedManifest) -> Result<()> {
        for d in parsed.required_blobs() {
            let link = layout::blob_link(repo, &d.digest)?;
            let blob = layout::blob(&d.digest)?;
            if !self.present_and_renewed(&link).await? || !self.present_and_renewed(&blob).await? {
                return Err(RegistryError::ManifestBlobUnknown(d.digest.clone()));
            }
        }
        if parsed.kind == ManifestKind::Index {
            for child in &parsed.manifests {
                let link = layout::manifest_link(repo, &child.digest)?;
                let bytes = layout::blob(&child.digest)?;
                if !self.present_and_renewed(&link).await?
                    || !self.present_and_renewed(&bytes).await?
                {
                    return Err(RegistryError::ManifestChildUnknown(child.digest.clone()));
                }
            }
        }
        Ok(())
    }

    async fn present_and_renewed(&self, key: &store::Key) -> Result<bool> {
        match self.store.stat(key).await? {
            Some(meta) => self.renew(key, meta).await,
            None => Ok(false),
        }
    }

    /// DELETE of a manifest. By tag: removes the tag only. By digest: removes the
    /// manifest link, every tag pointing at it, and its entry in its subject's referrers.
    /// The bytes stay until garbage collection.
    pub async fn delete_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        match reference {
            Reference::Tag(t) => {
                self.tags.remove(&(repo.clone(), t.clone()));
                if !self.store.delete(&layout::tag(repo, t)?).await? {
                    return Err(RegistryError::ManifestUnknown);
                }
                Ok(())
            }
            Reference::Digest(d) => {
                let stored = self.manifest_by_digest(repo, d).await?;
                if let Ok(parsed) = ParsedManifest::parse(&stored.bytes, Some(&stored.media_type))
                    && let Some(subject) = parsed.subject
                {
                    self.store
                        .delete(&layout::referrer(repo, &subject.digest, d)?)
                        .await?;
                }
                for tag in self.all_tags(repo).await? {
                    if self.resolve_tag(repo, &tag).await.ok().as_ref() == Some(d) {
                        self.tags.remove(&(repo.clone(), tag.clone()));
                        self.store.delete(&layout::tag(repo, &tag)?).await?;
                    }
                }
                self.manifests.remove(&(repo.clone(), d.clone()));
                self.store.delete(&layout::manifest_link(repo, d)?).await?;
                Ok(())
            }
        }
    }
}
