//! The S3-compatible object-storage backend (AWS S3, MinIO, Ceph RGW, SeaweedFS, Garage)
//! on `object_store`'s AWS client. Keys are objects under an optional prefix; berth's own
//! bookkeeping lives under `.berth/`, a name no [`Key`] can take. Every piece of state is
//! in the bucket, so several replicas can share it.
//!
//! Uploads: each append is staged as readable objects of at most [`PART_SIZE`] bytes
//! under `.berth/uploads/<id>/`, listed in a small state object that is replaced with a
//! conditional write (If-Match), so appends of one upload may come from different
//! replicas and a lost race is refused, never merged. Commit turns the staged bytes into
//! the destination object in one atomic step, by the server wherever S3 allows: a
//! server-side copy for a single part; a multipart upload whose parts are the staged
//! objects copied in place (UploadPartCopy, which `object_store` cannot send, so it is
//! signed with its signer and sent here) when every part but the last has S3's minimum
//! part size; else, for many small appends, a multipart upload of [`PART_SIZE`] parts
//! streamed from the staged objects. A whole object whose key is known before its bytes
//! (`put_stream`: a blob pushed with its digest) skips staging: it is sent as a multipart
//! upload to its own key, completed only when the stream ends well, so every byte is
//! written once. Memory per upload is bounded by [`PARALLEL_PARTS`] parts in flight. `touch` rewrites small objects and, for large ones
//! (blobs), writes a marker under `.berth/touch/` whose time `stat` and `walk` take into
//! account. It never learns what the objects mean.

use crate::{
    ByteStream, Entry, Key, ObjectDeleter, ObjectLister, ObjectMeta, ObjectReader, ObjectStatter,
    ObjectWriter, Result, Store, StoreError, UploadId, UploadStore, check_range,
};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion,
};
use std::ops::Range;
use std::time::SystemTime;

/// Staged parts and multipart parts are at most this big: S3 needs 5 MiB parts (all but
/// the last), and 8 MiB keeps memory per upload small while requests stay few.
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// Objects up to this size are touched by rewriting them (links, manifests, tags);
/// bigger ones get a marker object instead of being copied.
const TOUCH_REWRITE_MAX: u64 = 1024 * 1024;

/// Parts sent to the bucket at once by one upload (appends and commits): hides round
/// trips while keeping memory per upload at `PARALLEL_PARTS × PART_SIZE` (32 MiB).
pub const PARALLEL_PARTS: usize = 4;

/// Small objects fetched at once by `get_many`.
const GETS_AT_ONCE: usize = 16;

/// Prefixes checked for content at once when listing (see [`S3Store::list`]).
const PREFIX_CHECKS: usize = 16;

/// Where berth's bookkeeping lives in the bucket (below the prefix).
const INTERNAL: &str = ".berth";

/// How to reach the bucket.
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    pub bucket: String,
    /// `https://s3.eu-west-1.amazonaws.com`, `http://127.0.0.1:8333`; `None` for AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Keys live under this prefix (`"berth"`), or at the bucket's root.
    pub prefix: Option<String>,
    /// Explicit credentials; otherwise the usual AWS environment and chain.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// `bucket` in the path (`https://host/bucket/key`) instead of the host name; most
    /// self-hosted servers want this.
    pub path_style: bool,
}

/// A store in an S3 bucket.
pub struct S3Store {
    s3: AmazonS3,
    prefix: String,
    direct: Direct,
}

/// Staged parts at least this big become parts of the committed object by server-side
/// copy (UploadPartCopy): S3's smallest part but the last.
const COPY_PART_MIN: u64 = 5 * 1024 * 1024;

/// Part copies asked of the server at once. They move no bytes through berth, so more
/// than [`PARALLEL_PARTS`] costs nothing here and hides the server's per-part latency.
const COPY_PARALLEL: usize = 8;

/// Attempts of one part copy before the commit falls back to streaming the parts.
const COPY_ATTEMPTS: u32 = 3;

/// Limits of one part-copy request: a part is at most [`PART_SIZE`], which a working
/// server copies in well under a second; a stalled one must not hold the commit.
const COPY_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const COPY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The requests `object_store` cannot make (UploadPartCopy), sent with the same
/// credentials and signed with its SigV4 signer.
struct Direct {
    http: reqwest::Client,
    /// The bucket's URL: `http://127.0.0.1:8333/berth` (path style) or
    /// `https://berth.s3.eu-west-1.amazonaws.com`.
    base: String,
    bucket: String,
    region: String,
}

impl Direct {
    fn new(o: &S3Options) -> Result<Direct> {
        let region = o.region.clone().unwrap_or_else(|| "us-east-1".into());
        let endpoint = o
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let endpoint = endpoint.trim_end_matches('/');
        let base = if o.path_style {
            format!("{endpoint}/{}", o.bucket)
        } else if o.endpoint.is_some() {
            // Virtual-hosted with an endpoint: object_store takes the endpoint as the
            // bucket's own address (the bucket already in the host name).
            endpoint.to_owned()
        } else {
            format!("https://{}.s3.{region}.amazonaws.com", o.bucket)
        };
        let mut http = reqwest::Client::builder();
        // The CA bundle the AWS tools (and object_store) honour.
        if let Ok(path) = std::env::var("AWS_CA_BUNDLE")
            && let Ok(pem) = std::fs::read(&path)
        {
            for cert in reqwest::Certificate::from_pem_bundle(&pem).unwrap_or_default() {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http
            .connect_timeout(COPY_CONNECT_TIMEOUT)
            .timeout(COPY_TIMEOUT)
            .build()
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
        Ok(Direct {
            http,
            base,
            bucket: o.bucket.clone(),
            region,
        })
    }
}

/// `path` with every byte outside the unreserved set and `/` percent-encoded, as S3
/// signs and reads object names.
fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The ETag of an UploadPartCopy answer: `<CopyPartResult><ETag>"…"</ETag>…`. S3 can
/// answer 200 with an error document instead, which has none.
fn copy_part_etag(body: &str) -> Option<String> {
    let start = body.find("<ETag>")? + "<ETag>".len();
    let end = start + body[start..].find("</ETag>")?;
    Some(
        body[start..end]
            .replace("&quot;", "\"")
            .replace("&#34;", "\""),
    )
}

/// Can the staged parts become the object's parts as they are?
fn copyable(parts: &[(String, u64)]) -> bool {
    parts.len() > 1
        && parts.len() <= 10_000
        && parts[..parts.len() - 1]
            .iter()
            .all(|(_, n)| *n >= COPY_PART_MIN)
}

fn io(e: object_store::Error) -> StoreError {
    match e {
        object_store::Error::NotFound { .. } => StoreError::NotFound,
        e => StoreError::Io(std::io::Error::other(e.to_string())),
    }
}

fn time(t: chrono::DateTime<chrono::Utc>) -> SystemTime {
    t.into()
}

/// The staged state of one upload.
#[derive(serde::Serialize, serde::Deserialize, Default, Clone)]
struct UploadState {
    /// Staged objects, in order: (name under the upload's folder, size).
    parts: Vec<(String, u64)>,
    /// When a commit began (milliseconds since the Unix epoch), set by a conditional
    /// write: from then on no append may change the upload, and no other commit may run,
    /// whichever replica sends it.
    #[serde(default)]
    sealed_at_ms: Option<u64>,
}

/// How long a commit's seal keeps other commits of the same upload out. A commit that
/// died after sealing (its replica was killed) leaves the upload sealed; after this a
/// retried commit takes it over. Long enough for the slowest commit (a multipart copy of
/// a large blob), short enough that a client retrying after a crash soon succeeds.
const COMMIT_SEAL_TTL: std::time::Duration = std::time::Duration::from_secs(10 * 60);

impl UploadState {
    fn size(&self) -> u64 {
        self.parts.iter().map(|(_, n)| n).sum()
    }
}

/// How long the start-up check waits for the bucket's answer: enough for a slow
/// endpoint's first TLS handshake, short enough that a wrong address is reported while
/// the operator is still watching the start.
pub const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why the bucket cannot be used, as [`S3Store::check`] found it.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("the bucket does not exist (NoSuchBucket)")]
    NoSuchBucket,
    #[error("access denied: check the access key and secret key ({0})")]
    Denied(String),
    #[error("no answer: is the endpoint right and reachable? ({0})")]
    Unreachable(String),
    #[error("{0}")]
    Other(String),
}

fn builder(o: &S3Options) -> AmazonS3Builder {
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(&o.bucket)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_virtual_hosted_style_request(!o.path_style);
    if let Some(e) = &o.endpoint {
        b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
    }
    if let Some(r) = &o.region {
        b = b.with_region(r);
    }
    if let (Some(k), Some(s)) = (&o.access_key_id, &o.secret_access_key) {
        b = b.with_access_key_id(k).with_secret_access_key(s);
    }
    b
}

impl S3Store {
    /// Connect to the bucket (nothing is sent until the first request).
    pub fn open(o: &S3Options) -> Result<S3Store> {
        let s3 = builder(o)
            .build()
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
        let prefix = o
            .prefix
            .as_deref()
            .map(|p| p.trim_matches('/'))
            .filter(|p| !p.is_empty())
            .map(|p| format!("{p}/"))
            .unwrap_or_default();
        let direct = Direct::new(o)?;
        Ok(S3Store { s3, prefix, direct })
    }

    /// One cheap authenticated request, without retries: a listing of a folder that is
    /// empty, which proves the endpoint answers, the bucket exists and the credentials
    /// are accepted (a HEAD could not tell a missing bucket from a missing key).
    pub async fn check(o: &S3Options) -> std::result::Result<(), CheckError> {
        let s3 = builder(o)
            .with_retry(object_store::RetryConfig {
                max_retries: 0,
                ..Default::default()
            })
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_allow_http(
                        o.endpoint
                            .as_deref()
                            .is_some_and(|e| e.starts_with("http://")),
                    )
                    .with_timeout(CHECK_TIMEOUT)
                    .with_connect_timeout(CHECK_TIMEOUT),
            )
            .build()
            .map_err(|e| CheckError::Other(e.to_string()))?;
        let probe = Path::from(format!(
            "{}{INTERNAL}/startup-check",
            o.prefix
                .as_deref()
                .map(|p| p.trim_matches('/'))
                .filter(|p| !p.is_empty())
                .map(|p| format!("{p}/"))
                .unwrap_or_default()
        ));
        match s3.list_with_delimiter(Some(&probe)).await {
            Ok(_) => Ok(()),
            Err(e) => Err(classify(&e)),
        }
    }

    fn path(&self, key: &str) -> Path {
        Path::from(format!("{}{key}", self.prefix))
    }

    /// Commit by server-side part copies of the staged objects (see [`copyable`]).
    async fn commit_by_copy(
        &self,
        dir: &str,
        parts: &[(String, u64)],
        target: &Path,
    ) -> Result<()> {
        let target = target.clone();
        // Every staged part becomes a part of the object where it lies: the
        // server copies, no byte passes through berth again.
        let mp = self.s3.create_multipart(&target).await.map_err(io)?;
        let result: Result<()> = async {
            let sources: Vec<(usize, Path)> = parts
                .iter()
                .enumerate()
                .map(|(i, (name, _))| (i + 1, self.path(&format!("{dir}/{name}"))))
                .collect();
            let (target, mp) = (&target, &mp);
            let ids: Vec<_> =
                futures::stream::iter(sources)
                    .map(|(number, source)| async move {
                        self.copy_part(&source, target, mp, number).await
                    })
                    .buffered(COPY_PARALLEL)
                    .try_collect()
                    .await?;
            self.s3
                .complete_multipart(target, mp, ids)
                .await
                .map_err(io)?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = self.s3.abort_multipart(&target, &mp).await;
            return Err(e);
        }
        Ok(())
    }

    /// Commit by streaming the staged objects into a multipart upload of
    /// [`PART_SIZE`] parts: for small staged parts (a client's many little PATCHes).
    async fn commit_by_stream(
        &self,
        id: &UploadId,
        state: &UploadState,
        target: &Path,
    ) -> Result<()> {
        let staged = self.staged(id, state, 0..state.size());
        self.write_parts(BytesMut::new(), staged, target)
            .await
            .map(drop)
    }

    /// `first` then the bytes of `rest` as the object at `target`, by one multipart
    /// upload of [`PART_SIZE`] parts, [`PARALLEL_PARTS`] in flight: the object appears
    /// whole when the upload completes, and not at all if `rest` fails (the upload is
    /// aborted; one cut off by a crash stays invisible, its parts left for the bucket's
    /// lifecycle rule to reclaim). Returns the size written.
    async fn write_parts(
        &self,
        first: BytesMut,
        mut rest: ByteStream,
        target: &Path,
    ) -> Result<u64> {
        let mp = self.s3.create_multipart(target).await.map_err(io)?;
        let result: Result<u64> = async {
            let mut size = first.len() as u64;
            let mut buf = first;
            let mut sent = Vec::new();
            let mut inflight = futures::stream::FuturesUnordered::new();
            let put = |idx: usize, part: Bytes| {
                let (s3, mp) = (&self.s3, &mp);
                async move {
                    s3.put_part(target, mp, idx, PutPayload::from(part))
                        .await
                        .map(|id| (idx, id))
                        .map_err(io)
                }
            };
            let mut next_idx = 0;
            loop {
                let next = rest.next().await.transpose().map_err(StoreError::Io)?;
                if let Some(c) = &next {
                    size += c.len() as u64;
                    buf.extend_from_slice(c);
                }
                while buf.len() >= PART_SIZE || (next.is_none() && !buf.is_empty()) {
                    let n = buf.len().min(PART_SIZE);
                    inflight.push(put(next_idx, buf.split_to(n).freeze()));
                    next_idx += 1;
                    if inflight.len() >= PARALLEL_PARTS
                        && let Some(r) = inflight.next().await
                    {
                        sent.push(r?);
                    }
                }
                if next.is_none() {
                    break;
                }
            }
            while let Some(r) = inflight.next().await {
                sent.push(r?);
            }
            sent.sort_by_key(|(idx, _)| *idx);
            let parts: Vec<_> = sent.into_iter().map(|(_, id)| id).collect();
            self.s3
                .complete_multipart(target, &mp, parts)
                .await
                .map_err(io)?;
            Ok(size)
        }
        .await;
        if result.is_err() {
            let _ = self.s3.abort_multipart(target, &mp).await;
        }
        result
    }

    /// Part `number` (from 1) of multipart upload `upload` of `target`: the whole of
    /// object `source`, copied by the server (UploadPartCopy).
    async fn copy_part(
        &self,
        source: &Path,
        target: &Path,
        upload: &str,
        number: usize,
    ) -> Result<object_store::multipart::PartId> {
        let fail = |what: String| StoreError::Io(std::io::Error::other(what));
        let url = format!(
            "{}/{}?partNumber={number}&uploadId={}",
            self.direct.base,
            encode_path(target.as_ref()),
            encode_path(upload).replace('/', "%2F")
        );
        let copy_source = format!("/{}/{}", self.direct.bucket, encode_path(source.as_ref()));
        let mut last_error = String::new();
        for attempt in 0..COPY_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
            }
            let credential = self.s3.credentials().get_credential().await.map_err(io)?;
            let mut request = http::Request::builder()
                .method(http::Method::PUT)
                .uri(&url)
                .header("x-amz-copy-source", &copy_source)
                .body(object_store::client::HttpRequestBody::empty())
                .map_err(|e| fail(e.to_string()))?;
            object_store::aws::AwsAuthorizer::new(&credential, "s3", &self.direct.region)
                .authorize(&mut request, None);
            let sent = self
                .direct
                .http
                .put(&url)
                .headers(request.headers().clone())
                .send()
                .await;
            let response = match sent {
                Ok(r) => r,
                Err(e) => {
                    last_error = e.to_string();
                    continue;
                }
            };
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            match (status.is_success(), copy_part_etag(&body)) {
                (true, Some(etag)) => {
                    return Ok(object_store::multipart::PartId { content_id: etag });
                }
                _ if status.is_client_error() => {
                    return Err(fail(format!("UploadPartCopy refused ({status}): {body}")));
                }
                _ => last_error = format!("UploadPartCopy failed ({status}): {body}"),
            }
        }
        Err(fail(last_error))
    }

    fn marker(&self, key: &str) -> Path {
        self.path(&format!("{INTERNAL}/touch/{key}"))
    }

    fn upload_dir(&self, id: &UploadId) -> String {
        format!("{INTERNAL}/uploads/{}", id.as_str())
    }

    fn state_path(&self, id: &UploadId) -> Path {
        self.path(&format!("{}/state", self.upload_dir(id)))
    }

    /// The state of an upload and the version to replace it conditionally.
    async fn state(
        &self,
        id: &UploadId,
    ) -> Result<Option<(UploadState, UpdateVersion, SystemTime)>> {
        let got = match self.s3.get(&self.state_path(id)).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let version = UpdateVersion {
            e_tag: got.meta.e_tag.clone(),
            version: got.meta.version.clone(),
        };
        let modified = time(got.meta.last_modified);
        let bytes = got.bytes().await.map_err(io)?;
        let state: UploadState = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Io(std::io::Error::other(format!("upload state: {e}"))))?;
        Ok(Some((state, version, modified)))
    }

    /// Replace an upload's state only if it is still `version`: the one step that
    /// orders appends and commits of one upload across replicas.
    async fn replace_state(
        &self,
        id: &UploadId,
        state: &UploadState,
        version: UpdateVersion,
    ) -> object_store::Result<object_store::PutResult> {
        let body = serde_json::to_vec(state).unwrap_or_default();
        let opts = PutOptions {
            mode: PutMode::Update(version),
            ..PutOptions::default()
        };
        self.s3
            .put_opts(&self.state_path(id), PutPayload::from(body), opts)
            .await
    }

    /// The error for a conditional state write that lost: where the upload is now
    /// (`OffsetMismatch`), or `NotFound` when a commit sealed or ended it.
    async fn lost_race(&self, id: &UploadId) -> StoreError {
        match self.state(id).await {
            Ok(Some((s, _, _))) if s.sealed_at_ms.is_none() => {
                StoreError::OffsetMismatch { current: s.size() }
            }
            Ok(_) => StoreError::NotFound,
            Err(e) => e,
        }
    }

    /// The staged bytes of an upload in `range`, part after part.
    fn staged(&self, id: &UploadId, state: &UploadState, range: Range<u64>) -> ByteStream {
        let mut pieces = Vec::new();
        let mut at = 0u64;
        for (name, size) in &state.parts {
            let (start, end) = (at, at + size);
            at = end;
            if end <= range.start || start >= range.end || *size == 0 {
                continue;
            }
            let from = range.start.max(start) - start;
            let to = range.end.min(end) - start;
            pieces.push((
                self.path(&format!("{}/{name}", self.upload_dir(id))),
                from..to,
            ));
        }
        let s3 = self.s3.clone();
        futures::stream::iter(pieces)
            .then(move |(path, r)| {
                let s3 = s3.clone();
                async move {
                    let opts = GetOptions {
                        range: Some(GetRange::Bounded(r)),
                        ..GetOptions::default()
                    };
                    s3.get_opts(&path, opts)
                        .await
                        .map(|g| {
                            g.into_stream()
                                .map_err(|e| std::io::Error::other(e.to_string()))
                        })
                        .map_err(|e| std::io::Error::other(e.to_string()))
                }
            })
            .try_flatten()
            .boxed()
    }

    /// Delete everything staged for an upload.
    async fn clear_upload(&self, id: &UploadId) -> Result<()> {
        let dir = self.path(&self.upload_dir(id));
        let all: Vec<Path> = self
            .s3
            .list(Some(&dir))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(io)?;
        for p in all {
            match self.s3.delete(&p).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(io(e)),
            }
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStatter for S3Store {
    async fn stat(&self, key: &Key) -> Result<Option<ObjectMeta>> {
        let meta = match self.s3.head(&self.path(key.as_str())).await {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let mut modified = time(meta.last_modified);
        if meta.size > TOUCH_REWRITE_MAX
            && let Ok(m) = self.s3.head(&self.marker(key.as_str())).await
        {
            modified = modified.max(time(m.last_modified));
        }
        Ok(Some(ObjectMeta {
            size: meta.size,
            modified,
        }))
    }
}

#[async_trait]
impl ObjectReader for S3Store {
    async fn get(&self, key: &Key) -> Result<Option<Bytes>> {
        match self.s3.get(&self.path(key.as_str())).await {
            Ok(g) => Ok(Some(g.bytes().await.map_err(io)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>> {
        // Round trips overlapped: a bucket answers many GETs at once.
        futures::stream::iter(keys.to_vec())
            .map(move |k| async move { self.get(&k).await })
            .buffered(GETS_AT_ONCE)
            .try_collect()
            .await
    }

    async fn read(&self, key: &Key, range: Range<u64>) -> Result<ByteStream> {
        let path = self.path(key.as_str());
        let size = self.s3.head(&path).await.map_err(io)?.size;
        check_range(&range, size)?;
        if range.is_empty() {
            return Ok(futures::stream::empty().boxed());
        }
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range)),
            ..GetOptions::default()
        };
        let got = self.s3.get_opts(&path, opts).await.map_err(io)?;
        Ok(got
            .into_stream()
            .map_err(|e| std::io::Error::other(e.to_string()))
            .boxed())
    }

    async fn presigned_get(&self, key: &Key, ttl: std::time::Duration) -> Result<Option<String>> {
        use object_store::signer::Signer;
        let url = self
            .s3
            .signed_url(http::Method::GET, &self.path(key.as_str()), ttl)
            .await
            .map_err(io)?;
        Ok(Some(url.to_string()))
    }
}

#[async_trait]
impl ObjectWriter for S3Store {
    async fn put(&self, key: &Key, bytes: Bytes) -> Result<()> {
        self.s3
            .put(&self.path(key.as_str()), PutPayload::from(bytes))
            .await
            .map_err(io)?;
        Ok(())
    }

    async fn touch(&self, key: &Key) -> Result<bool> {
        let path = self.path(key.as_str());
        let meta = match self.s3.head(&path).await {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(io(e)),
        };
        if meta.size > TOUCH_REWRITE_MAX {
            self.s3
                .put(&self.marker(key.as_str()), PutPayload::default())
                .await
                .map_err(io)?;
            return Ok(true);
        }
        let bytes = match self.s3.get(&path).await {
            Ok(g) => g.bytes().await.map_err(io)?,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(io(e)),
        };
        // Only if nobody replaced it meanwhile (then it is fresh anyway).
        let opts = PutOptions {
            mode: PutMode::Update(UpdateVersion {
                e_tag: meta.e_tag,
                version: meta.version,
            }),
            ..PutOptions::default()
        };
        match self.s3.put_opts(&path, PutPayload::from(bytes), opts).await {
            Ok(_) | Err(object_store::Error::Precondition { .. }) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(io(e)),
        }
    }
}

#[async_trait]
impl ObjectDeleter for S3Store {
    async fn delete(&self, key: &Key) -> Result<bool> {
        let path = self.path(key.as_str());
        let existed = match self.s3.head(&path).await {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => return Err(io(e)),
        };
        if existed {
            self.s3.delete(&path).await.map_err(io)?;
            let _ = self.s3.delete(&self.marker(key.as_str())).await;
        }
        Ok(existed)
    }
}

#[async_trait]
impl ObjectLister for S3Store {
    async fn list(&self, prefix: &Key) -> Result<Vec<Entry>> {
        let base = self.path(prefix.as_str());
        let listed = self.s3.list_with_delimiter(Some(&base)).await.map_err(io)?;
        let name = |p: &Path| p.filename().map(str::to_owned);
        // Some servers (SeaweedFS) keep a folder after its last object is deleted; a
        // prefix counts only while something lives below it.
        let live: Vec<Path> = futures::stream::iter(listed.common_prefixes)
            .map(|p| async move {
                match self.s3.list(Some(&p)).next().await {
                    Some(Ok(_)) => Ok(Some(p)),
                    None => Ok(None),
                    Some(Err(e)) => Err(io(e)),
                }
            })
            .buffered(PREFIX_CHECKS)
            .try_filter_map(|p| async move { Ok(p) })
            .try_collect()
            .await?;
        let mut out: Vec<Entry> = listed
            .objects
            .iter()
            .filter_map(|m| name(&m.location).map(Entry::Object))
            .chain(live.iter().filter_map(|p| name(p).map(Entry::Prefix)))
            .collect();
        out.sort();
        Ok(out)
    }

    async fn walk(&self, prefix: &Key) -> Result<crate::Walk> {
        let base = self.path(prefix.as_str());
        let strip = format!("{base}/");
        let objects = self
            .s3
            .list(Some(&base))
            .map(move |r| {
                r.map_err(io).map(|m| {
                    let rel = m.location.as_ref().strip_prefix(&strip).unwrap_or_default();
                    let meta = ObjectMeta {
                        size: m.size,
                        modified: time(m.last_modified),
                    };
                    (rel.to_owned(), meta)
                })
            })
            .boxed();
        // Touch markers of large objects count as their modification time. Both listings
        // come in key order, so they are merged as they arrive; a marker missed by a
        // server that orders differently only makes the walk report an older time, which
        // a sweep re-checks with `stat` before it deletes anything.
        let marker_base = self.marker(prefix.as_str());
        let marker_strip = format!("{marker_base}/");
        let markers = self
            .s3
            .list(Some(&marker_base))
            .map(move |r| {
                r.map_err(io).map(|m| {
                    let rel = m
                        .location
                        .as_ref()
                        .strip_prefix(&marker_strip)
                        .unwrap_or_default();
                    (rel.to_owned(), time(m.last_modified))
                })
            })
            .boxed();
        let merge = MarkerMerge {
            markers,
            pending: None,
            markers_done: false,
        };
        Ok(
            futures::stream::unfold((objects, merge), |(mut objects, mut merge)| async move {
                let item = match objects.next().await? {
                    Ok((rel, mut meta)) => match merge.time_of(&rel).await {
                        Ok(Some(t)) => {
                            meta.modified = meta.modified.max(t);
                            Ok((rel, meta))
                        }
                        Ok(None) => Ok((rel, meta)),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                };
                Some((item, (objects, merge)))
            })
            .fuse()
            .boxed(),
        )
    }
}

/// The touch markers of a walk, consumed in step with its objects.
struct MarkerMerge {
    markers: futures::stream::BoxStream<'static, Result<(String, SystemTime)>>,
    pending: Option<(String, SystemTime)>,
    markers_done: bool,
}

impl MarkerMerge {
    /// The marker time of object `rel`, skipping markers of objects before it (and of
    /// objects that are gone).
    async fn time_of(&mut self, rel: &str) -> Result<Option<SystemTime>> {
        loop {
            if let Some((name, t)) = &self.pending {
                match name.as_str().cmp(rel) {
                    std::cmp::Ordering::Less => self.pending = None,
                    std::cmp::Ordering::Equal => return Ok(Some(*t)),
                    std::cmp::Ordering::Greater => return Ok(None),
                }
            }
            if self.markers_done {
                return Ok(None);
            }
            match self.markers.next().await {
                Some(m) => self.pending = Some(m?),
                None => self.markers_done = true,
            }
        }
    }
}

#[async_trait]
impl UploadStore for S3Store {
    async fn upload_create(&self, id: &UploadId) -> Result<()> {
        let body = serde_json::to_vec(&UploadState::default()).unwrap_or_default();
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        self.s3
            .put_opts(&self.state_path(id), PutPayload::from(body), opts)
            .await
            .map_err(io)?;
        Ok(())
    }

    async fn upload_stat(&self, id: &UploadId) -> Result<Option<ObjectMeta>> {
        Ok(self.state(id).await?.map(|(s, _, modified)| ObjectMeta {
            size: s.size(),
            modified,
        }))
    }

    async fn upload_append(&self, id: &UploadId, offset: u64, mut data: ByteStream) -> Result<u64> {
        let (mut state, version, _) = self.state(id).await?.ok_or(StoreError::NotFound)?;
        if state.sealed_at_ms.is_some() {
            return Err(StoreError::NotFound);
        }
        let current = state.size();
        if offset != current {
            return Err(StoreError::OffsetMismatch { current });
        }
        // Stage the bytes in parts of at most PART_SIZE, under fresh names: until the
        // state is replaced they belong to nobody, so a failure changes nothing.
        let dir = self.upload_dir(id);
        let mut buf = BytesMut::new();
        let mut staged = Vec::new();
        // Up to PARALLEL_PARTS parts are in flight at once; their names are fixed in
        // order before they are sent.
        let stage = |buf: Bytes, staged: &mut Vec<(String, u64)>| {
            let name = format!("p-{}", uuid::Uuid::new_v4());
            staged.push((name.clone(), buf.len() as u64));
            let path = self.path(&format!("{dir}/{name}"));
            async move {
                self.s3
                    .put(&path, PutPayload::from(buf))
                    .await
                    .map_err(io)?;
                Ok::<_, StoreError>(())
            }
        };
        let mut inflight = futures::stream::FuturesUnordered::new();
        let mut failure: Option<StoreError> = None;
        while let Some(chunk) = data.next().await {
            match chunk {
                Ok(c) => {
                    buf.extend_from_slice(&c);
                    while buf.len() >= PART_SIZE {
                        let part = buf.split_to(PART_SIZE).freeze();
                        inflight.push(stage(part, &mut staged));
                        if inflight.len() >= PARALLEL_PARTS
                            && let Some(Err(e)) = inflight.next().await
                        {
                            failure = Some(e);
                        }
                    }
                }
                Err(e) => failure = Some(StoreError::Io(e)),
            }
            if failure.is_some() {
                break;
            }
        }
        if failure.is_none() && !buf.is_empty() {
            inflight.push(stage(buf.freeze(), &mut staged));
        }
        while let Some(r) = inflight.next().await {
            if let Err(e) = r {
                failure.get_or_insert(e);
            }
        }
        let discard = |staged: Vec<(String, u64)>| async move {
            for (name, _) in staged {
                let _ = self.s3.delete(&self.path(&format!("{dir}/{name}"))).await;
            }
        };
        if let Some(e) = failure {
            discard(staged).await;
            return Err(e);
        }
        state.parts.extend(staged.iter().cloned());
        match self.replace_state(id, &state, version).await {
            Ok(_) => Ok(state.size()),
            Err(object_store::Error::Precondition { .. }) => {
                // Another append or a commit won the race.
                discard(staged).await;
                Err(self.lost_race(id).await)
            }
            Err(e) => {
                discard(staged).await;
                Err(io(e))
            }
        }
    }

    async fn upload_read(&self, id: &UploadId, range: Option<Range<u64>>) -> Result<ByteStream> {
        let (state, _, _) = self.state(id).await?.ok_or(StoreError::NotFound)?;
        let size = state.size();
        let range = range.unwrap_or(0..size);
        check_range(&range, size)?;
        Ok(self.staged(id, &state, range))
    }

    async fn upload_commit(&self, id: &UploadId, dest: &Key, size: u64) -> Result<()> {
        let (mut state, version, _) = self.state(id).await?.ok_or(StoreError::NotFound)?;
        if state.size() != size {
            return Err(StoreError::OffsetMismatch {
                current: state.size(),
            });
        }
        // Seal first, conditionally: an append that read the state before this finds
        // its own conditional write refused, so nothing changes what the caller
        // verified; and a second commit of the same upload (another replica, a retry)
        // finds the seal and is told the upload is over. Only a seal older than
        // COMMIT_SEAL_TTL (its commit died) is taken over.
        if let Some(at) = state.sealed_at_ms
            && crate::now_ms().saturating_sub(at) < COMMIT_SEAL_TTL.as_millis() as u64
        {
            return Err(StoreError::NotFound);
        }
        state.sealed_at_ms = Some(crate::now_ms());
        match self.replace_state(id, &state, version).await {
            Ok(_) => {}
            Err(object_store::Error::Precondition { .. }) => return Err(self.lost_race(id).await),
            Err(e) => return Err(io(e)),
        }
        let target = self.path(dest.as_str());
        let dir = self.upload_dir(id);
        match state.parts.as_slice() {
            [] => {
                self.s3
                    .put(&target, PutPayload::default())
                    .await
                    .map_err(io)?;
            }
            [(name, _)] => {
                self.s3
                    .copy(&self.path(&format!("{dir}/{name}")), &target)
                    .await
                    .map_err(io)?;
            }
            parts if copyable(parts) => {
                // Every staged part becomes a part of the object where it lies: the
                // server copies, no byte passes through berth again. A server that
                // cannot (no UploadPartCopy, a failing copy) gets the parts streamed.
                if let Err(e) = self.commit_by_copy(&dir, parts, &target).await {
                    tracing::warn!(error = %e, "server-side part copy failed; streaming the parts instead");
                    self.commit_by_stream(id, &state, &target).await?;
                }
            }
            _ => self.commit_by_stream(id, &state, &target).await?,
        }
        // A new object replaces any touch marker an older one under the same key had.
        let _ = self.s3.delete(&self.marker(dest.as_str())).await;
        self.clear_upload(id).await
    }

    async fn upload_abort(&self, id: &UploadId) -> Result<bool> {
        let existed = self.state(id).await?.is_some();
        self.clear_upload(id).await?;
        Ok(existed)
    }

    async fn put_stream(&self, dest: &Key, mut data: ByteStream) -> Result<u64> {
        // Written where it will lie as the bytes arrive; nothing is staged or copied.
        // Up to one part: a single PUT once the stream has ended. More: a multipart
        // upload to `dest`, completed only after the stream's end.
        let target = self.path(dest.as_str());
        let mut first = BytesMut::new();
        let written = loop {
            match data.next().await.transpose().map_err(StoreError::Io)? {
                Some(c) => {
                    first.extend_from_slice(&c);
                    if first.len() >= PART_SIZE {
                        break self.write_parts(first, data, &target).await?;
                    }
                }
                None => {
                    let size = first.len() as u64;
                    self.s3
                        .put(&target, PutPayload::from(first.freeze()))
                        .await
                        .map_err(io)?;
                    break size;
                }
            }
        };
        // A new object replaces any touch marker an older one under the same key had.
        let _ = self.s3.delete(&self.marker(dest.as_str())).await;
        Ok(written)
    }

    async fn upload_list(&self) -> Result<Vec<(UploadId, ObjectMeta)>> {
        let base = self.path(&format!("{INTERNAL}/uploads"));
        let listed = self.s3.list_with_delimiter(Some(&base)).await.map_err(io)?;
        let mut out = Vec::new();
        for p in listed.common_prefixes {
            let Some(name) = p.filename() else { continue };
            let Ok(id) = UploadId::parse(name) else {
                continue;
            };
            if let Some((s, _, modified)) = self.state(&id).await? {
                out.push((
                    id,
                    ObjectMeta {
                        size: s.size(),
                        modified,
                    },
                ));
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl crate::Leaser for S3Store {
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool> {
        let path = self.path(&format!("{INTERNAL}/leases/{name}"));
        let body = serde_json::to_vec(&crate::LeaseRecord::new(holder, ttl)).unwrap_or_default();
        // Create it, or replace exactly the version that yields to us: of two replicas
        // racing for an expired lease, the conditional write lets one win.
        let mode = match self.s3.get(&path).await {
            Err(object_store::Error::NotFound { .. }) => PutMode::Create,
            Err(e) => return Err(io(e)),
            Ok(g) => {
                let version = UpdateVersion {
                    e_tag: g.meta.e_tag.clone(),
                    version: g.meta.version.clone(),
                };
                let bytes = g.bytes().await.map_err(io)?;
                let held: Option<crate::LeaseRecord> = serde_json::from_slice(&bytes).ok();
                if held.is_some_and(|l| !l.yields_to(holder)) {
                    return Ok(false);
                }
                PutMode::Update(version)
            }
        };
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match self.s3.put_opts(&path, PutPayload::from(body), opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(io(e)),
        }
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        let path = self.path(&format!("{INTERNAL}/leases/{name}"));
        if let Ok(g) = self.s3.get(&path).await
            && let Ok(bytes) = g.bytes().await
            && serde_json::from_slice::<crate::LeaseRecord>(&bytes)
                .is_ok_and(|l| l.holder == holder)
        {
            let _ = self.s3.delete(&path).await;
        }
        Ok(())
    }
}

impl Store for S3Store {
    fn kind(&self) -> &'static str {
        "s3"
    }
}

/// What a failed check means, from the S3 error code in the answer (or its absence).
fn classify(e: &object_store::Error) -> CheckError {
    let text = e.to_string();
    let has = |code: &str| text.contains(code);
    if has("NoSuchBucket") {
        CheckError::NoSuchBucket
    } else if has("AccessDenied")
        || has("SignatureDoesNotMatch")
        || has("InvalidAccessKeyId")
        || has("403 Forbidden")
    {
        CheckError::Denied(text)
    } else if has("error sending request") || has("connect") || has("timed out") || has("dns error")
    {
        CheckError::Unreachable(text)
    } else {
        CheckError::Other(text)
    }
}

#[cfg(any(test, feature = "test-support"))]
/// The S3 server the test setup started (`scripts/test` starts SeaweedFS), from
/// `BERTH_TEST_S3_ENDPOINT`, `_BUCKET`, `_ACCESS_KEY`, `_SECRET_KEY`, under a fresh
/// prefix so runs never see each other's objects.
pub fn test_options() -> S3Options {
    let var = |n: &str| std::env::var(format!("BERTH_TEST_S3_{n}")).ok();
    let endpoint = var("ENDPOINT").unwrap_or_else(|| {
        panic!("BERTH_TEST_S3_ENDPOINT is not set: run scripts/test, which starts SeaweedFS")
    });
    S3Options {
        bucket: var("BUCKET").unwrap_or_else(|| "berth".into()),
        endpoint: Some(endpoint),
        region: Some("us-east-1".into()),
        prefix: Some(format!("test-{}", uuid::Uuid::new_v4())),
        access_key_id: var("ACCESS_KEY"),
        secret_access_key: var("SECRET_KEY"),
        path_style: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn the_start_up_check_names_what_is_wrong() {
        let good = test_options();
        S3Store::check(&good).await.unwrap();
        let bucket = S3Options {
            bucket: "no-such-bucket-here".into(),
            ..good.clone()
        };
        assert!(matches!(
            S3Store::check(&bucket).await,
            Err(CheckError::NoSuchBucket)
        ));
        let secret = S3Options {
            secret_access_key: Some("wrong".into()),
            ..good.clone()
        };
        let e = S3Store::check(&secret).await.unwrap_err();
        assert!(
            matches!(&e, CheckError::Denied(m) if m.contains("SignatureDoesNotMatch")),
            "{e}"
        );
        let nobody = S3Options {
            endpoint: Some("http://127.0.0.1:1".into()),
            ..good.clone()
        };
        let started = std::time::Instant::now();
        let e = S3Store::check(&nobody).await.unwrap_err();
        assert!(matches!(e, CheckError::Unreachable(_)), "{e}");
        assert!(
            started.elapsed() < CHECK_TIMEOUT,
            "refused at once, not retried"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn conformance_s3() {
        let store = S3Store::open(&test_options()).unwrap();
        crate::conformance::run_all(&store).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_chunked_upload_moves_between_replicas_and_large_commits_use_parts() {
        let options = test_options();
        let (a, b) = (
            S3Store::open(&options).unwrap(),
            S3Store::open(&options).unwrap(),
        );
        let id = UploadId::random();
        a.upload_create(&id).await.unwrap();
        // 20 MiB in 3 MiB appends, alternating between the two stores.
        let data: Vec<u8> = (0..20u32 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
        let mut offset = 0u64;
        for (i, chunk) in data.chunks(3 * 1024 * 1024).enumerate() {
            let s = if i % 2 == 0 { &a } else { &b };
            let body = futures::stream::iter(vec![Ok(Bytes::copy_from_slice(chunk))]).boxed();
            offset = s.upload_append(&id, offset, body).await.unwrap();
        }
        assert_eq!(offset, data.len() as u64);
        // A stale append (the offset another replica already passed) is refused.
        let stale = futures::stream::iter(vec![Ok(Bytes::from_static(b"x"))]).boxed();
        assert!(matches!(
            a.upload_append(&id, 3, stale).await,
            Err(StoreError::OffsetMismatch { current }) if current == offset
        ));
        let dest = Key::new("blobs/big").unwrap();
        b.upload_commit(&id, &dest, offset).await.unwrap();
        let mut got = Vec::new();
        let mut s = a.read(&dest, 0..offset).await.unwrap();
        while let Some(c) = s.next().await {
            got.extend_from_slice(&c.unwrap());
        }
        assert!(got == data);
        assert!(a.upload_stat(&id).await.unwrap().is_none());
    }

    /// Staged parts of S3's minimum part size become the object by server-side part
    /// copies: one 20 MiB append (parts of 8, 8 and 4 MiB), then appends of 6 and 1 MiB
    /// (parts of 6 and 1), each committed byte-exact; an upload whose first part is
    /// small takes the streaming path and is as exact.
    #[tokio::test]
    async fn large_staged_parts_commit_by_server_side_copy() {
        let s = S3Store::open(&test_options()).unwrap();
        let mib = 1024 * 1024;
        let pattern = |n: usize, seed: u32| -> Vec<u8> {
            (0..n as u32)
                .map(|i| ((i * 7 + seed) % 251) as u8)
                .collect()
        };
        for (name, appends) in [
            ("one", vec![20 * mib]),
            ("two", vec![6 * mib, mib]),
            ("small-first", vec![mib, 6 * mib]),
        ] {
            let id = UploadId::random();
            s.upload_create(&id).await.unwrap();
            let mut data = Vec::new();
            for (i, n) in appends.iter().enumerate() {
                let chunk = pattern(*n, i as u32);
                let body = futures::stream::iter(vec![Ok(Bytes::from(chunk.clone()))]).boxed();
                s.upload_append(&id, data.len() as u64, body).await.unwrap();
                data.extend_from_slice(&chunk);
            }
            let state = s.state(&id).await.unwrap().unwrap().0;
            assert_eq!(
                copyable(&state.parts),
                name != "small-first",
                "{name}: {:?}",
                state.parts
            );
            let dest = Key::new(format!("blobs/copied-{name}")).unwrap();
            s.upload_commit(&id, &dest, data.len() as u64)
                .await
                .unwrap();
            let got = s.get(&dest).await.unwrap().unwrap();
            assert_eq!(got.len(), data.len(), "{name}");
            assert!(got == data, "{name}: bytes differ");
            assert!(s.upload_stat(&id).await.unwrap().is_none());
        }
    }

    #[test]
    fn part_copy_answers_and_urls_are_read_as_s3_writes_them() {
        let ok = "<?xml version=\"1.0\"?><CopyPartResult><LastModified>2026-12-01T00:00:00Z</LastModified><ETag>&quot;abc123&quot;</ETag></CopyPartResult>";
        assert_eq!(copy_part_etag(ok).as_deref(), Some("\"abc123\""));
        let error = "<Error><Code>InternalError</Code></Error>";
        assert_eq!(copy_part_etag(error), None);
        assert_eq!(
            encode_path("p/.berth/uploads/a b+c"),
            "p/.berth/uploads/a%20b%2Bc"
        );
        let mib = 1024 * 1024;
        assert!(
            !copyable(&[("0".into(), 8 * mib)]),
            "one part is a plain copy"
        );
        assert!(copyable(&[("0".into(), 5 * mib), ("1".into(), 1)]));
        assert!(!copyable(&[
            ("0".into(), 5 * mib - 1),
            ("1".into(), 5 * mib)
        ]));
    }
}
