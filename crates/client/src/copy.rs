//! `berth copy`: move an image (or a whole index) between registries and OCI layout
//! directories without changing a byte: manifests are written exactly as read, so every
//! digest survives. Blobs the destination already has are skipped (so a rerun resumes),
//! same-registry copies mount instead of uploading (as do blobs a sink's [`BlobHomes`]
//! knows another repository of its registry to hold), and blobs travel several at a
//! time. It never changes the source.

use crate::remote::{Connect, ImageRef};
use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use oci::{Descriptor, Digest, ParsedManifest};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Blobs transferred at once.
pub const PARALLEL_BLOBS: usize = 4;

/// Largest manifest read.
const MAX_MANIFEST: u64 = registry::MAX_MANIFEST_BYTES;

/// A manifest as stored: exact bytes and media type.
#[derive(Clone, Debug)]
pub struct RawManifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

/// Where images are read from.
#[async_trait::async_trait]
pub trait ImageSource: Send + Sync {
    /// The manifest `reference` (tag or digest) names, verified against its digest.
    async fn manifest(&self, reference: &str) -> anyhow::Result<RawManifest>;
    /// A blob's bytes, streamed.
    async fn blob(
        &self,
        digest: &Digest,
    ) -> anyhow::Result<BoxStream<'static, std::io::Result<Bytes>>>;
    /// `registry/repository` when this is a registry (to mount from on the same one).
    fn registry_repo(&self) -> Option<(String, String)>;
}

/// Where images are written to.
#[async_trait::async_trait]
pub trait ImageSink: Send + Sync {
    /// Does it already hold blob `digest` of `size` bytes?
    async fn has_blob(&self, digest: &Digest, size: u64) -> anyhow::Result<bool>;
    /// Mount `digest` from repository `from` of the same registry; `false` if it cannot.
    async fn mount(&self, digest: &Digest, from: &str) -> anyhow::Result<bool>;
    /// Store a blob, checking its digest.
    async fn put_blob(
        &self,
        digest: &Digest,
        size: u64,
        body: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> anyhow::Result<()>;
    /// Store a manifest's exact bytes, under `tag` if given (else by digest only).
    async fn put_manifest(&self, m: &RawManifest, tag: Option<&str>) -> anyhow::Result<()>;
    /// `registry/repository` when this is a registry.
    fn registry_repo(&self) -> Option<(String, String)>;
    /// Another repository of the same registry known to hold `digest`, to mount from.
    fn sibling_with(&self, _digest: &Digest) -> Option<String> {
        None
    }
}

/// Which repository of one registry holds which blob, as learnt while copying into it,
/// so that a later copy into another of its repositories mounts the blob rather than
/// uploading it again (`berth mirror`: base layers shared by many repositories).
#[derive(Default)]
pub struct BlobHomes(Mutex<HashMap<Digest, String>>);

/// A repository in a registry.
pub struct Registry {
    client: Arc<distribution::Client>,
    registry: String,
    repo: String,
    homes: Option<Arc<BlobHomes>>,
}

impl Registry {
    /// Repository `repo` of `registry` (`host[:port]`, as typed), through `client`; as a
    /// sink, recording into `homes` (when given) where each blob it holds lives and
    /// mounting from there.
    pub fn new(
        client: Arc<distribution::Client>,
        registry: &str,
        repo: &oci::RepoName,
        homes: Option<Arc<BlobHomes>>,
    ) -> Registry {
        Registry {
            client,
            registry: registry.to_owned(),
            repo: repo.to_string(),
            homes,
        }
    }

    /// Note that this repository holds `digest`.
    fn holds(&self, digest: &Digest) {
        if let Some(h) = &self.homes {
            h.0.lock().insert(digest.clone(), self.repo.clone());
        }
    }
}

#[async_trait::async_trait]
impl ImageSource for Registry {
    async fn manifest(&self, reference: &str) -> anyhow::Result<RawManifest> {
        let m = self
            .client
            .get_manifest(&self.repo, reference, MAX_MANIFEST)
            .await
            .with_context(|| format!("manifest {reference} of {}/{}", self.registry, self.repo))?;
        Ok(RawManifest {
            digest: m.digest,
            media_type: m.media_type,
            bytes: m.bytes,
        })
    }

    async fn blob(
        &self,
        digest: &Digest,
    ) -> anyhow::Result<BoxStream<'static, std::io::Result<Bytes>>> {
        let f = self
            .client
            .get_blob(&self.repo, digest)
            .await
            .with_context(|| format!("blob {digest} of {}/{}", self.registry, self.repo))?;
        Ok(f.body)
    }

    fn registry_repo(&self) -> Option<(String, String)> {
        Some((self.registry.clone(), self.repo.clone()))
    }
}

#[async_trait::async_trait]
impl ImageSink for Registry {
    async fn has_blob(&self, digest: &Digest, size: u64) -> anyhow::Result<bool> {
        match self.client.head_blob(&self.repo, digest).await {
            Ok(n) if n == size => {
                self.holds(digest);
                Ok(true)
            }
            Ok(_) | Err(distribution::ClientError::NotFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn mount(&self, digest: &Digest, from: &str) -> anyhow::Result<bool> {
        let mounted = self.client.mount_blob(&self.repo, digest, from).await?;
        if mounted {
            self.holds(digest);
        }
        Ok(mounted)
    }

    async fn put_blob(
        &self,
        digest: &Digest,
        size: u64,
        body: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> anyhow::Result<()> {
        self.client
            .put_blob(&self.repo, digest, size, body)
            .await
            .with_context(|| format!("upload of {digest} to {}/{}", self.registry, self.repo))?;
        self.holds(digest);
        Ok(())
    }

    async fn put_manifest(&self, m: &RawManifest, tag: Option<&str>) -> anyhow::Result<()> {
        let reference = tag
            .map(str::to_owned)
            .unwrap_or_else(|| m.digest.to_string());
        self.client
            .put_manifest(&self.repo, &reference, &m.media_type, m.bytes.clone())
            .await
            .with_context(|| format!("manifest {reference} to {}/{}", self.registry, self.repo))
    }

    fn registry_repo(&self) -> Option<(String, String)> {
        Some((self.registry.clone(), self.repo.clone()))
    }

    fn sibling_with(&self, digest: &Digest) -> Option<String> {
        let homes = self.homes.as_ref()?.0.lock();
        homes.get(digest).filter(|r| **r != self.repo).cloned()
    }
}

/// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/<alg>/<hex>`).
pub struct Layout {
    dir: PathBuf,
}

/// `org.opencontainers.image.ref.name`: how a layout's index names a tag.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

impl Layout {
    /// The layout at `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Layout {
        Layout { dir: dir.into() }
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    fn index(&self) -> anyhow::Result<serde_json::Value> {
        let path = self.dir.join("index.json");
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| format!("{}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(serde_json::json!({
                "schemaVersion": 2,
                "mediaType": oci::media::OCI_INDEX,
                "manifests": [],
            })),
            Err(e) => Err(e).with_context(|| format!("{}", path.display())),
        }
    }

    /// List `m` in `index.json`, named `tag` (replacing what had that name) or unnamed.
    pub fn add_to_index(&self, m: &RawManifest, tag: Option<&str>) -> anyhow::Result<()> {
        let mut index = self.index()?;
        let entries = index["manifests"]
            .as_array_mut()
            .ok_or_else(|| anyhow::anyhow!("index.json without manifests"))?;
        let digest = m.digest.to_string();
        match tag {
            Some(t) => entries.retain(|e| e["annotations"][REF_NAME] != t),
            None => entries.retain(|e| e["digest"] != digest.as_str()),
        }
        let mut entry = serde_json::json!({
            "mediaType": m.media_type,
            "digest": digest,
            "size": m.bytes.len(),
        });
        if let Some(t) = tag {
            entry["annotations"] = serde_json::json!({ REF_NAME: t });
        }
        entries.push(entry);
        crate::write_atomic(&self.dir.join("index.json"), &serde_json::to_vec(&index)?)?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl ImageSource for Layout {
    async fn manifest(&self, reference: &str) -> anyhow::Result<RawManifest> {
        let digest: Digest = match reference.parse() {
            Ok(d) => d,
            Err(_) => {
                let index = self.index()?;
                let found = index["manifests"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|m| m["annotations"][REF_NAME] == reference)
                    .ok_or_else(|| {
                        anyhow::anyhow!("{} has no image tagged {reference}", self.dir.display())
                    })?;
                found["digest"]
                    .as_str()
                    .unwrap_or_default()
                    .parse()
                    .context("bad digest in index.json")?
            }
        };
        let path = self.blob_path(&digest);
        let bytes = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
        if digest.same_algorithm_of(&bytes) != digest {
            anyhow::bail!("{} does not hash to {digest}", path.display());
        }
        let parsed = ParsedManifest::parse(&bytes, None)
            .with_context(|| format!("{} is not a manifest", path.display()))?;
        Ok(RawManifest {
            digest,
            media_type: parsed.media_type,
            bytes: Bytes::from(bytes),
        })
    }

    async fn blob(
        &self,
        digest: &Digest,
    ) -> anyhow::Result<BoxStream<'static, std::io::Result<Bytes>>> {
        let path = self.blob_path(digest);
        let file = tokio::fs::File::open(&path)
            .await
            .with_context(|| format!("{}", path.display()))?;
        Ok(tokio_util::io::ReaderStream::new(file).boxed())
    }

    fn registry_repo(&self) -> Option<(String, String)> {
        None
    }
}

#[async_trait::async_trait]
impl ImageSink for Layout {
    async fn has_blob(&self, digest: &Digest, size: u64) -> anyhow::Result<bool> {
        Ok(std::fs::metadata(self.blob_path(digest)).is_ok_and(|m| m.len() == size))
    }

    async fn mount(&self, _: &Digest, _: &str) -> anyhow::Result<bool> {
        Ok(false)
    }

    async fn put_blob(
        &self,
        digest: &Digest,
        size: u64,
        mut body: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt;
        let path = self.blob_path(digest);
        let dir = path.parent().unwrap_or(Path::new("."));
        tokio::fs::create_dir_all(dir).await?;
        let tmp = dir.join(format!(".{}.part", digest.hex()));
        let mut f = tokio::fs::File::create(&tmp).await?;
        let mut h = oci::Hasher::new(digest.algorithm());
        let mut n = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            h.update(&chunk);
            n += chunk.len() as u64;
            f.write_all(&chunk).await?;
        }
        f.flush().await?;
        drop(f);
        let got = h.finish();
        if got != *digest || n != size {
            let _ = tokio::fs::remove_file(&tmp).await;
            anyhow::bail!(
                "blob {digest}: received {n} bytes hashing to {got}, expected {size} bytes"
            );
        }
        tokio::fs::rename(&tmp, &path).await?;
        Ok(())
    }

    async fn put_manifest(&self, m: &RawManifest, tag: Option<&str>) -> anyhow::Result<()> {
        crate::write_atomic(&self.blob_path(&m.digest), &m.bytes)?;
        crate::write_atomic(
            &self.dir.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        match tag {
            Some(tag) => self.add_to_index(m, Some(tag)),
            None => Ok(()),
        }
    }

    fn registry_repo(&self) -> Option<(String, String)> {
        None
    }
}

/// A copy endpoint as typed: `oci:DIR[:TAG]` or a registry reference.
pub enum Endpoint {
    Registry(ImageRef),
    Layout { dir: PathBuf, tag: Option<String> },
}

impl std::str::FromStr for Endpoint {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Endpoint> {
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((d, t)) if !t.contains('/') && !d.is_empty() => {
                    let tag: oci::Tag = t.parse().with_context(|| format!("bad tag in {s:?}"))?;
                    (d, Some(tag.to_string()))
                }
                _ => (rest, None),
            };
            return Ok(Endpoint::Layout {
                dir: PathBuf::from(dir),
                tag,
            });
        }
        Ok(Endpoint::Registry(s.parse()?))
    }
}

impl Endpoint {
    /// The reference to read (tag or digest); a layout without a tag needs one.
    fn reference(&self) -> Option<String> {
        match self {
            Endpoint::Registry(r) => Some(r.target.to_string()),
            Endpoint::Layout { tag, .. } => tag.clone(),
        }
    }

    /// The tag to write under, if any.
    fn tag(&self) -> Option<String> {
        match self {
            Endpoint::Registry(r) => r.tag().map(|t| t.to_string()),
            Endpoint::Layout { tag, .. } => tag.clone(),
        }
    }

    fn registry(&self, connect: &Connect, r: &ImageRef) -> anyhow::Result<Registry> {
        let client = Arc::new(connect.client(r)?);
        Ok(Registry::new(client, &r.registry, &r.repo, None))
    }

    /// Open as a source.
    pub fn source(&self, connect: &Connect) -> anyhow::Result<Box<dyn ImageSource>> {
        Ok(match self {
            Endpoint::Registry(r) => Box::new(self.registry(connect, r)?),
            Endpoint::Layout { dir, .. } => Box::new(Layout::new(dir)),
        })
    }

    /// Open as a sink.
    pub fn sink(&self, connect: &Connect) -> anyhow::Result<Box<dyn ImageSink>> {
        Ok(match self {
            Endpoint::Registry(r) => Box::new(self.registry(connect, r)?),
            Endpoint::Layout { dir, .. } => Box::new(Layout::new(dir)),
        })
    }
}

/// Which images of an index to copy.
#[derive(Clone, Debug, Default)]
pub struct CopyOptions {
    /// Every child of an index, and the index itself.
    pub all: bool,
    /// Only this platform's image (`os/arch[/variant]`); default: this machine's.
    pub platform: Option<String>,
}

/// Told what a copy is doing (progress bars on a terminal, log lines elsewhere).
pub trait CopyProgress: Send + Sync {
    /// A blob transfer starts (`size` bytes).
    fn blob_started(&self, digest: &Digest, size: u64);
    /// `n` more bytes of `digest` went through.
    fn blob_bytes(&self, digest: &Digest, n: u64);
    /// A blob is done: `how` is `copied`, `exists` or `mounted`.
    fn blob_done(&self, digest: &Digest, how: &str);
}

/// Progress that shows nothing.
pub struct Silent;

impl CopyProgress for Silent {
    fn blob_started(&self, _: &Digest, _: u64) {}
    fn blob_bytes(&self, _: &Digest, _: u64) {}
    fn blob_done(&self, _: &Digest, _: &str) {}
}

/// What a copy did.
#[derive(Debug, Default, serde::Serialize)]
pub struct CopyReport {
    /// Digest of the manifest written under the destination reference.
    pub digest: String,
    pub manifests: u64,
    pub blobs_copied: u64,
    pub blobs_existing: u64,
    pub blobs_mounted: u64,
    pub bytes_copied: u64,
}

/// This machine's platform in OCI terms.
pub fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    format!("linux/{arch}")
}

/// Does `d` name platform `want` (`os/arch` matches any variant; `os/arch/variant` one)?
pub(crate) fn matches_platform(d: &Descriptor, want: &str) -> bool {
    d.platform_name().is_some_and(|p| {
        p == want || (want.matches('/').count() == 1 && p.starts_with(&format!("{want}/")))
    })
}

struct Copier<'a> {
    src: &'a dyn ImageSource,
    dst: &'a dyn ImageSink,
    progress: Arc<dyn CopyProgress>,
    report: CopyReport,
}

/// One blob to the sink: skipped if there, mounted if the same registry has it (in the
/// source repository, or in a sibling the sink knows of), else streamed across. Returns
/// how.
async fn copy_blob(
    src: &dyn ImageSource,
    dst: &dyn ImageSink,
    progress: Arc<dyn CopyProgress>,
    d: Descriptor,
) -> anyhow::Result<(&'static str, u64)> {
    if dst.has_blob(&d.digest, d.size).await? {
        progress.blob_done(&d.digest, "exists");
        return Ok(("exists", 0));
    }
    let from = match (src.registry_repo(), dst.registry_repo()) {
        (Some((sr, srepo)), Some((dr, drepo))) if sr == dr && srepo != drepo => Some(srepo),
        _ => dst.sibling_with(&d.digest),
    };
    if let Some(from) = from
        && dst.mount(&d.digest, &from).await.unwrap_or(false)
    {
        progress.blob_done(&d.digest, "mounted");
        return Ok(("mounted", 0));
    }
    progress.blob_started(&d.digest, d.size);
    let body = src.blob(&d.digest).await?;
    let (p, digest) = (progress.clone(), d.digest.clone());
    let counted = body
        .inspect(move |chunk| {
            if let Ok(b) = chunk {
                p.blob_bytes(&digest, b.len() as u64);
            }
        })
        .boxed();
    dst.put_blob(&d.digest, d.size, counted).await?;
    progress.blob_done(&d.digest, "copied");
    Ok(("copied", d.size))
}

impl Copier<'_> {
    async fn blobs(&mut self, list: Vec<Descriptor>) -> anyhow::Result<()> {
        let (src, dst) = (self.src, self.dst);
        let mut pending = Vec::with_capacity(list.len());
        for d in list {
            pending.push(copy_blob(src, dst, self.progress.clone(), d));
        }
        let results: Vec<_> = futures::stream::iter(pending)
            .buffer_unordered(PARALLEL_BLOBS)
            .collect()
            .await;
        for r in results {
            let (how, bytes) = r?;
            match how {
                "exists" => self.report.blobs_existing += 1,
                "mounted" => self.report.blobs_mounted += 1,
                _ => {
                    self.report.blobs_copied += 1;
                    self.report.bytes_copied += bytes;
                }
            }
        }
        Ok(())
    }

    /// Copy an image manifest's blobs, then the manifest (by digest, or under `tag`).
    async fn image(&mut self, m: &RawManifest, tag: Option<&str>) -> anyhow::Result<()> {
        let parsed = ParsedManifest::parse(&m.bytes, Some(&m.media_type))?;
        let blobs: Vec<Descriptor> = parsed
            .config
            .iter()
            .chain(parsed.layers.iter())
            .filter(|d| !d.is_foreign())
            .cloned()
            .collect();
        self.blobs(blobs).await?;
        self.dst.put_manifest(m, tag).await?;
        self.report.manifests += 1;
        Ok(())
    }
}

/// Copy `reference` from `src` to `dst` (under `tag`, if given).
pub async fn copy(
    src: &dyn ImageSource,
    reference: &str,
    dst: &dyn ImageSink,
    tag: Option<&str>,
    opts: &CopyOptions,
    progress: Arc<dyn CopyProgress>,
) -> anyhow::Result<CopyReport> {
    let root = src.manifest(reference).await?;
    let parsed = ParsedManifest::parse(&root.bytes, Some(&root.media_type))?;
    let mut c = Copier {
        src,
        dst,
        progress,
        report: CopyReport::default(),
    };
    if parsed.manifests.is_empty() {
        c.image(&root, tag).await?;
        c.report.digest = root.digest.to_string();
        return Ok(c.report);
    }
    if opts.all {
        for child in &parsed.manifests {
            let m = src.manifest(&child.digest.to_string()).await?;
            if ParsedManifest::parse(&m.bytes, Some(&m.media_type))?
                .manifests
                .is_empty()
            {
                c.image(&m, None).await?;
            } else {
                anyhow::bail!("nested index {} is not supported", m.digest);
            }
        }
        dst.put_manifest(&root, tag).await?;
        c.report.manifests += 1;
        c.report.digest = root.digest.to_string();
        return Ok(c.report);
    }
    let want = opts.platform.clone().unwrap_or_else(host_platform);
    let child = parsed
        .manifests
        .iter()
        .find(|d| matches_platform(d, &want))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{} has no image for {want}; use --platform or --all",
                root.digest
            )
        })?;
    let m = src.manifest(&child.digest.to_string()).await?;
    c.image(&m, tag).await?;
    c.report.digest = m.digest.to_string();
    Ok(c.report)
}

/// `berth copy SRC DST`: open both ends and copy.
pub async fn copy_endpoints(
    src: &Endpoint,
    dst: &Endpoint,
    connect_src: &Connect,
    connect_dst: &Connect,
    opts: &CopyOptions,
    progress: Arc<dyn CopyProgress>,
) -> anyhow::Result<CopyReport> {
    let reference = src
        .reference()
        .ok_or_else(|| anyhow::anyhow!("the source layout needs a tag: oci:DIR:TAG"))?;
    let source = src.source(connect_src)?;
    let sink = dst.sink(connect_dst)?;
    let tag = dst.tag().or_else(|| match dst {
        Endpoint::Layout { .. } => src.tag(),
        Endpoint::Registry(_) => None,
    });
    copy(
        source.as_ref(),
        &reference,
        sink.as_ref(),
        tag.as_deref(),
        opts,
        progress,
    )
    .await
}
