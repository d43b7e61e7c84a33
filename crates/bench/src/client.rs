//! The registry operations the benchmark times, over reqwest: monolithic and chunked blob
//! pushes, whole-blob GETs, the small image push, and the timed GETs of the cache rows
//! (time to first byte, then the whole body). Every answer is checked (status and
//! length); a wrong one is an error naming the request, never a number.

use crate::blob::{Blob, Image, OCI_MANIFEST};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION};
use reqwest::{Client, Response, StatusCode, Url};
use sha2::{Digest as _, Sha256};
use std::time::{Duration, Instant};

const OCTET_STREAM: &str = "application/octet-stream";
/// Characters of an unexpected answer's body quoted in the error.
const BODY_QUOTE_CHARS: usize = 500;

/// One server's API, as seen from one shared client.
#[derive(Clone)]
pub struct Api {
    client: Client,
    base: Url,
}

impl Api {
    pub fn new(client: Client, base: Url) -> Api {
        Api { client, base }
    }

    fn url(&self, path: &str) -> Result<Url> {
        Ok(self.base.join(path)?)
    }

    /// `POST /v2/<repo>/blobs/uploads/`; the upload's absolute URL.
    pub async fn start_upload(&self, repo: &str) -> Result<Url> {
        let resp = self
            .client
            .post(self.url(&format!("v2/{repo}/blobs/uploads/"))?)
            .body(Bytes::new())
            .send()
            .await?;
        let resp = expect(resp, StatusCode::ACCEPTED, "POST blobs/uploads/").await?;
        self.location(&resp)
    }

    /// The response's Location resolved against the base URL (it may be relative).
    fn location(&self, resp: &Response) -> Result<Url> {
        let loc = resp
            .headers()
            .get(LOCATION)
            .context("upload answer has no Location header")?
            .to_str()
            .context("Location header is not text")?;
        self.base
            .join(loc)
            .with_context(|| format!("bad Location {loc:?}"))
    }

    /// POST, then one PUT `?digest=` with the whole blob.
    pub async fn push_monolithic(&self, repo: &str, blob: &Blob) -> Result<()> {
        let upload = self.start_upload(repo).await?;
        let resp = self
            .client
            .put(with_digest(upload, &blob.digest))
            .header(CONTENT_TYPE, OCTET_STREAM)
            .header(CONTENT_LENGTH, blob.len())
            .body(blob.bytes.clone())
            .send()
            .await?;
        expect(resp, StatusCode::CREATED, "monolithic PUT ?digest=").await?;
        Ok(())
    }

    /// POST, one PATCH per `chunk` bytes (following each Location), then PUT `?digest=`
    /// with an empty body.
    pub async fn push_chunked(&self, repo: &str, blob: &Blob, chunk: usize) -> Result<()> {
        let mut upload = self.start_upload(repo).await?;
        let len = blob.bytes.len();
        for start in (0..len).step_by(chunk) {
            let end = (start + chunk).min(len);
            let resp = self
                .client
                .patch(upload)
                .header(CONTENT_TYPE, OCTET_STREAM)
                .header(CONTENT_RANGE, format!("{start}-{}", end - 1))
                .header(CONTENT_LENGTH, end - start)
                .body(blob.bytes.slice(start..end))
                .send()
                .await?;
            let what = format!("PATCH bytes {start}-{}", end - 1);
            let resp = expect(resp, StatusCode::ACCEPTED, &what).await?;
            upload = self.location(&resp)?;
        }
        let resp = self
            .client
            .put(with_digest(upload, &blob.digest))
            .body(Bytes::new())
            .send()
            .await?;
        expect(resp, StatusCode::CREATED, "closing PUT ?digest=").await?;
        Ok(())
    }

    /// One PATCH of the whole blob into `upload`; the next Location.
    pub async fn patch_whole(&self, upload: Url, blob: &Blob) -> Result<Url> {
        let resp = self
            .client
            .patch(upload)
            .header(CONTENT_TYPE, OCTET_STREAM)
            .header(CONTENT_LENGTH, blob.len())
            .body(blob.bytes.clone())
            .send()
            .await?;
        let resp = expect(resp, StatusCode::ACCEPTED, "PATCH").await?;
        self.location(&resp)
    }

    /// The closing `PUT ?digest=` of `upload`, with an empty body.
    pub async fn close_upload(&self, upload: Url, blob: &Blob) -> Result<()> {
        let resp = self
            .client
            .put(with_digest(upload, &blob.digest))
            .body(Bytes::new())
            .send()
            .await?;
        expect(resp, StatusCode::CREATED, "closing PUT ?digest=").await?;
        Ok(())
    }

    /// `GET` of a manifest by tag; its length.
    pub async fn get_manifest(&self, repo: &str, tag: &str) -> Result<u64> {
        let url = self.url(&format!("v2/{repo}/manifests/{tag}"))?;
        let resp = self
            .client
            .get(url)
            .header(
                reqwest::header::ACCEPT,
                "application/vnd.oci.image.manifest.v1+json",
            )
            .send()
            .await?;
        let resp = expect(resp, StatusCode::OK, "GET manifest").await?;
        Ok(resp.bytes().await?.len() as u64)
    }

    /// GET the whole blob, counting (not keeping) its bytes; an error unless exactly
    /// `blob.len()` arrive.
    pub async fn get_blob(&self, repo: &str, blob: &Blob) -> Result<u64> {
        let url = self.url(&format!("v2/{repo}/blobs/{}", blob.digest))?;
        let resp = self.client.get(url).send().await?;
        let mut resp = expect(resp, StatusCode::OK, "GET blob").await?;
        let mut received = 0u64;
        while let Some(chunk) = resp.chunk().await.context("blob body broke off")? {
            received += chunk.len() as u64;
        }
        if received != blob.len() {
            bail!(
                "GET blob returned {received} bytes, expected {}",
                blob.len()
            );
        }
        Ok(received)
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with `bytes` of `media_type`.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<()> {
        let resp = self
            .client
            .put(self.url(&format!("v2/{repo}/manifests/{reference}"))?)
            .header(CONTENT_TYPE, media_type)
            .body(bytes)
            .send()
            .await?;
        expect(resp, StatusCode::CREATED, "PUT manifest").await?;
        Ok(())
    }

    /// `DELETE /v2/<repo>/manifests/<digest>`.
    pub async fn delete_manifest(&self, repo: &str, digest: &str) -> Result<()> {
        let resp = self
            .client
            .delete(self.url(&format!("v2/{repo}/manifests/{digest}"))?)
            .send()
            .await?;
        expect(resp, StatusCode::ACCEPTED, "DELETE manifest").await?;
        Ok(())
    }

    /// Push `image`'s two blobs and its manifest as `repo:tag`.
    pub async fn push_image(&self, repo: &str, tag: &str, image: &Image) -> Result<()> {
        self.push_monolithic(repo, &image.config).await?;
        self.push_monolithic(repo, &image.layer).await?;
        self.put_manifest(repo, tag, OCI_MANIFEST, image.manifest.clone())
            .await
    }

    /// The manifest URL the load hammers, after checking once that it serves `expected`.
    pub async fn checked_manifest_url(
        &self,
        repo: &str,
        tag: &str,
        expected: &Bytes,
    ) -> Result<Url> {
        let url = self.url(&format!("v2/{repo}/manifests/{tag}"))?;
        let resp = self
            .client
            .get(url.clone())
            .header(ACCEPT, OCI_MANIFEST)
            .send()
            .await?;
        let resp = expect(resp, StatusCode::OK, "GET manifest").await?;
        let body = resp.bytes().await?;
        if body != *expected {
            bail!(
                "GET manifest returned {} bytes that differ from the pushed manifest",
                body.len()
            );
        }
        Ok(url)
    }
}

/// What one client saw of a whole-blob GET.
#[derive(Clone, Copy, Debug)]
pub struct Fetched {
    /// From just before the request was sent to the first body bytes.
    pub ttfb: Duration,
    /// When the last byte arrived (and the body was checked).
    pub finished: Instant,
}

/// How much of a received body is checked against the blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The length only (as the hosted GET rows do).
    Length,
    /// The length and the sha256 of the bytes, hashed as they arrive.
    Digest,
}

/// A failed timed GET: a short text for the table cell and the whole story for the log.
#[derive(Clone, Debug)]
pub struct GetError {
    pub short: String,
    pub detail: String,
}

impl GetError {
    fn new(short: impl Into<String>, detail: impl Into<String>) -> GetError {
        GetError {
            short: short.into(),
            detail: detail.into(),
        }
    }
}

/// GET `url` (a blob of `blob`'s content) and read the whole body, timing the first
/// byte; a failure for any status but 200, a broken body or a body that is not `blob`.
pub async fn timed_get(
    client: &Client,
    url: Url,
    blob: &Blob,
    check: Check,
) -> Result<Fetched, GetError> {
    let started = Instant::now();
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| GetError::new("no answer", format!("{e:#}")))?;
    if resp.status() != StatusCode::OK {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let body: String = body.chars().take(BODY_QUOTE_CHARS).collect();
        return Err(GetError::new(
            status.as_u16().to_string(),
            format!("expected 200, got {status}: {body}"),
        ));
    }
    let mut resp = resp;
    let mut ttfb = None;
    let mut received = 0u64;
    let mut hasher = (check == Check::Digest).then(Sha256::new);
    loop {
        let chunk = resp.chunk().await.map_err(|e| {
            GetError::new(
                "broken body",
                format!("body broke off after {received} bytes: {e:#}"),
            )
        })?;
        let Some(chunk) = chunk else { break };
        if chunk.is_empty() {
            continue;
        }
        ttfb.get_or_insert_with(|| started.elapsed());
        received += chunk.len() as u64;
        if let Some(h) = hasher.as_mut() {
            h.update(&chunk);
        }
    }
    if received != blob.len() {
        return Err(GetError::new(
            "wrong length",
            format!("{received} bytes, expected {}", blob.len()),
        ));
    }
    if let Some(h) = hasher {
        let digest = format!("sha256:{}", hex::encode(h.finalize()));
        if digest != blob.digest {
            return Err(GetError::new(
                "wrong digest",
                format!("body hashes to {digest}, expected {}", blob.digest),
            ));
        }
    }
    Ok(Fetched {
        ttfb: ttfb.unwrap_or_else(|| started.elapsed()),
        finished: Instant::now(),
    })
}

/// Time from sending `GET url` to its first body bytes; the rest of the body is not read
/// (the connection is dropped).
pub async fn first_byte(client: &Client, url: Url) -> Result<Duration> {
    let started = Instant::now();
    let resp = client.get(url).send().await?;
    let mut resp = expect(resp, StatusCode::OK, "GET blob").await?;
    while let Some(chunk) = resp.chunk().await.context("blob body broke off")? {
        if !chunk.is_empty() {
            return Ok(started.elapsed());
        }
    }
    bail!("GET blob: empty body")
}

/// `url` with `digest=<digest>` added to its query (keeping any `_state` parameter).
fn with_digest(mut url: Url, digest: &str) -> Url {
    url.query_pairs_mut().append_pair("digest", digest);
    url
}

/// `resp` if its status is `want`, else an error quoting the status and body.
async fn expect(resp: Response, want: StatusCode, what: &str) -> Result<Response> {
    if resp.status() == want {
        return Ok(resp);
    }
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.chars().take(BODY_QUOTE_CHARS).collect();
    bail!("{what}: expected {want}, got {status}: {body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_added_beside_existing_query() {
        let url = Url::parse("http://h/v2/r/blobs/uploads/u?_state=abc").unwrap();
        assert_eq!(
            with_digest(url, "sha256:00").as_str(),
            "http://h/v2/r/blobs/uploads/u?_state=abc&digest=sha256%3A00"
        );
        let url = Url::parse("http://h/v2/r/blobs/uploads/u").unwrap();
        assert_eq!(
            with_digest(url, "sha256:00").query(),
            Some("digest=sha256%3A00")
        );
    }
}
