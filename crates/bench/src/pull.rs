//! The pull-through cache measurements. One upstream (a hosted distribution) serves both
//! caches through the counting proxy; each cache server (distribution's proxy mode or
//! berth with an `[[upstream]]`) is started fresh per column. A cold pull pushes a blob
//! the cache has never seen to the upstream, then starts its clients together and times
//! the wall until the last has the whole body, each client's time to first byte, and
//! the upstream blob GETs the counting proxy saw. A failed pull is a result (its cell
//! says why), not the end of the run: distribution's proxy mode is allowed to fail.

use crate::blob::Blob;
use crate::client::{self, Api, Check, Fetched, GetError};
use crate::progress;
use crate::proxy::CountingProxy;
use crate::report::{ColdPull, Outcome, PullStats};
use crate::server::{self, Kind, Role, Server};
use anyhow::{Context, Result};
use hyper::Method;
use reqwest::{Client, Url};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Concurrent clients of the many-client cold pull, as in the issue: enough for a node
/// pool rolling out one image at once.
pub const COLD_CLIENTS: usize = 16;
/// Repository of the blobs pushed to the upstream and pulled through the caches.
const REPO_CACHED: &str = "bench/cached";
/// How long a cache may go on downloading after its clients are served (distribution
/// finishes its own copy in the background) before the counts are read anyway.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a warm pull waits for the cache to hold the blob (distribution commits its
/// background copy, with an fsync, after the download ends) before it goes ahead anyway.
const CACHED_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between HEADs asking whether the cache holds the blob yet.
const CACHED_POLL: Duration = Duration::from_millis(20);

/// How many times, 100 ms apart, a cold pull looks for berth's fill log line: its commit
/// (an fsync of the whole blob) may end a while after the client has the last byte.
const FILL_LOG_WAIT_STEPS: usize = 100;

/// The registry the caches pull from, and the counting proxy in front of it.
pub struct Upstream {
    server: Server,
    proxy: CountingProxy,
    api: Api,
}

impl Upstream {
    /// Start distribution (`binary`) as the upstream, and the counting proxy before it.
    pub async fn start(binary: &Path, client: &Client) -> Result<Upstream> {
        let server = Server::start(Kind::Distribution, Role::Upstream, binary, client).await?;
        let proxy = CountingProxy::start(server.addr).await?;
        progress(
            &server.label,
            format!(
                "listening on {} (pid {}), counting proxy on {}",
                server.addr,
                server.pid(),
                proxy.addr
            ),
        );
        let api = Api::new(client.clone(), server.base.clone());
        Ok(Upstream { server, proxy, api })
    }

    /// Fail if the upstream has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.server.ensure_running()
    }

    /// A client of the upstream itself (not through the counting proxy).
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// The address the caches are configured with: the counting proxy's.
    pub fn cache_facing_addr(&self) -> SocketAddr {
        self.proxy.addr
    }

    fn direct_url(&self, blob: &Blob) -> Result<Url> {
        Ok(self
            .server
            .base
            .join(&format!("v2/{REPO_CACHED}/blobs/{}", blob.digest))?)
    }

    fn proxied_url(&self, blob: &Blob) -> Result<Url> {
        Ok(Url::parse(&format!(
            "http://{}/v2/{REPO_CACHED}/blobs/{}",
            self.proxy.addr, blob.digest
        ))?)
    }

    /// Upstream blob GETs of `digest` so far, and HEADs (for the progress line).
    fn counts(&self, digest: &str) -> (u64, u64) {
        (
            self.proxy.blob_requests(&Method::GET, digest),
            self.proxy.blob_requests(&Method::HEAD, digest),
        )
    }
}

/// One cache server under test.
pub struct CacheServer<'a> {
    pub server: Server,
    upstream: &'a Upstream,
    client: Client,
    ticks_per_second: f64,
}

impl<'a> CacheServer<'a> {
    /// Start `binary` as a `kind` cache of `upstream`.
    pub async fn start(
        kind: Kind,
        binary: &Path,
        upstream: &'a Upstream,
        client: &Client,
        ticks_per_second: f64,
    ) -> Result<CacheServer<'a>> {
        server::sync_disks()?;
        let role = Role::Cache {
            upstream: upstream.cache_facing_addr(),
        };
        let server = Server::start(kind, role, binary, client).await?;
        progress(
            &server.label,
            format!("listening on {} (pid {})", server.addr, server.pid()),
        );
        Ok(CacheServer {
            server,
            upstream,
            client: client.clone(),
            ticks_per_second,
        })
    }

    /// The URL clients pull `blob` from: distribution's proxy serves the upstream's
    /// repositories as its own; berth is told the upstream with containerd's `?ns=`.
    fn blob_url(&self, blob: &Blob) -> Result<Url> {
        let mut url = self
            .server
            .base
            .join(&format!("v2/{REPO_CACHED}/blobs/{}", blob.digest))?;
        if let (true, Role::Cache { upstream }) = (self.server.kind.is_berth(), self.server.role) {
            url.query_pairs_mut()
                .append_pair("ns", &upstream.to_string());
        }
        Ok(url)
    }

    /// Wait until the upstream has no answer streaming, saying so if it takes too long.
    async fn settle(&self) {
        if !self.upstream.proxy.wait_idle(SETTLE_TIMEOUT).await {
            progress(
                &self.server.label,
                format!(
                    "upstream downloads still running after {} s; counting anyway",
                    SETTLE_TIMEOUT.as_secs()
                ),
            );
        }
    }

    /// Push `blob` to the upstream, measure the upstream's own time to first byte (and a
    /// whole GET through the counting proxy), then pull it through the cache with
    /// `clients` concurrent clients.
    pub async fn cold(&mut self, blob: &Blob, clients: usize) -> Result<ColdPull> {
        let label = self.server.label.clone();
        self.upstream
            .api
            .push_monolithic(REPO_CACHED, blob)
            .await
            .with_context(|| format!("{label}: push to the upstream"))?;
        server::sync_disks()?;
        let upstream_ttfb = client::first_byte(&self.client, self.upstream.direct_url(blob)?)
            .await
            .with_context(|| format!("{label}: GET straight from the upstream"))?;
        // A whole GET through the proxy: the fastest a cold pull can go here.
        let proxy_started = Instant::now();
        let via_proxy = client::timed_get(
            &self.client,
            self.upstream.proxied_url(blob)?,
            blob,
            Check::Length,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{label}: GET through the counting proxy: {}", e.detail))?;
        let proxy_seconds = via_proxy
            .finished
            .duration_since(proxy_started)
            .as_secs_f64();
        self.settle().await;
        let (gets_before, heads_before) = self.upstream.counts(&blob.digest);
        let cpu_before = self.server.cpu_ticks()?;
        let pull = self.pull(blob, clients, Check::Digest).await?;
        let cpu_seconds = (self.server.cpu_ticks()? - cpu_before) as f64 / self.ticks_per_second;
        self.settle().await;
        let (gets, heads) = self.upstream.counts(&blob.digest);
        let (gets, heads) = (gets - gets_before, heads - heads_before);
        let outcome = match &pull {
            Ok(p) => format!(
                "wall {:.2} s, TTFB median {:.1} ms",
                p.wall_seconds,
                p.ttfb_median_seconds * 1e3
            ),
            Err(e) => format!("FAILED ({e})"),
        };
        progress(
            &label,
            format!(
                "cold pull x{clients}: {outcome} (upstream TTFB {:.1} ms, via proxy {:.1} ms, \
                 whole GET via proxy {:.2} s); upstream blob GETs {gets}, HEADs {heads}; \
                 cache CPU {cpu_seconds:.2} s (during the pull)",
                upstream_ttfb.as_secs_f64() * 1e3,
                via_proxy.ttfb.as_secs_f64() * 1e3,
                proxy_seconds,
            ),
        );
        self.server.ensure_running()?;
        // berth logs the fill once it has committed, which may be after the client is
        // done (the client gets the last byte once it verifies; an fsync follows).
        let mut fill = None;
        for _ in 0..FILL_LOG_WAIT_STEPS {
            if !self.server.kind.is_berth() {
                break;
            }
            fill = crate::report::FillTimes::from_log(&self.server.log_text(), &blob.digest);
            if fill.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Some(f) = fill {
            progress(
                &label,
                format!(
                    "fill {:.2} s: upstream read {:.2} s, hash {:.2} s, store write {:.2} s \
                     (beside the read), commit {:.2} s",
                    f.seconds, f.upstream_read, f.hash, f.store_write, f.commit
                ),
            );
        }
        Ok(ColdPull {
            upstream_ttfb_seconds: upstream_ttfb.as_secs_f64(),
            proxy_ttfb_seconds: via_proxy.ttfb.as_secs_f64(),
            proxy_bytes_per_second: blob.len() as f64 / proxy_seconds,
            pull,
            upstream_gets: gets,
            fill,
        })
    }

    /// Another pull of `blob` by `clients` clients once the cache holds it (a cold pull
    /// has fetched it): the pull and the upstream blob GETs it caused. Upstream GETs the
    /// readiness probe causes (distribution answers a HEAD like a GET, fetching the blob
    /// again if it has not committed its copy yet) are logged, not counted.
    /// Also the store operations the pull cost per client, where the server counts them.
    pub async fn warm(
        &mut self,
        blob: &Blob,
        clients: usize,
    ) -> Result<(Outcome<PullStats>, u64, Option<f64>)> {
        self.settle().await;
        let (before_probe, _) = self.upstream.counts(&blob.digest);
        let cached_after = self.wait_cached(blob).await?;
        let (before, _) = self.upstream.counts(&blob.digest);
        let cpu_before = self.server.cpu_ticks()?;
        let ops_before = self.server.store_ops(&self.client).await;
        let pull = self.pull(blob, clients, Check::Length).await?;
        let ops = match (ops_before, self.server.store_ops(&self.client).await) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / clients as f64),
            _ => None,
        };
        let cpu_seconds = (self.server.cpu_ticks()? - cpu_before) as f64 / self.ticks_per_second;
        self.settle().await;
        let gets = self.upstream.counts(&blob.digest).0 - before;
        let outcome = match &pull {
            Ok(p) => format!(
                "wall {:.2} s, {}",
                p.wall_seconds,
                crate::mb_per_s(p.bytes as f64 / p.wall_seconds)
            ),
            Err(e) => format!("FAILED ({e})"),
        };
        let cached = match cached_after {
            Some(t) => format!(
                "held it {:.0} ms after the upstream went idle",
                t.as_secs_f64() * 1e3
            ),
            None => format!("did not hold it after {} s", CACHED_TIMEOUT.as_secs()),
        };
        progress(
            &self.server.label,
            format!(
                "warm pull x{clients}: {outcome}; upstream blob GETs {gets}; cache CPU \
                 {cpu_seconds:.2} s; the cache {cached} (upstream blob GETs caused by the \
                 probe: {})",
                before - before_probe
            ),
        );
        self.server.ensure_running()?;
        Ok((pull, gets, ops))
    }

    /// Wait until the cache answers a HEAD for `blob` without asking the upstream (the
    /// counting proxy sees no HEAD or GET for it): how long that took, or None if it
    /// did not happen within `CACHED_TIMEOUT`.
    async fn wait_cached(&self, blob: &Blob) -> Result<Option<Duration>> {
        let url = self.blob_url(blob)?;
        let started = Instant::now();
        while started.elapsed() < CACHED_TIMEOUT {
            let before = self.upstream.counts(&blob.digest);
            let status = self.client.head(url.clone()).send().await?.status();
            self.settle().await;
            if status == reqwest::StatusCode::OK && self.upstream.counts(&blob.digest) == before {
                return Ok(Some(started.elapsed()));
            }
            tokio::time::sleep(CACHED_POLL).await;
        }
        Ok(None)
    }

    /// `clients` GETs of `blob` started together; the first client checks the digest
    /// if `check` says so, the others the length. An error only if a task panicked.
    async fn pull(&self, blob: &Blob, clients: usize, check: Check) -> Result<Outcome<PullStats>> {
        let url = self.blob_url(blob)?;
        let start = Arc::new(tokio::sync::Barrier::new(clients + 1));
        let tasks: Vec<_> = (0..clients)
            .map(|i| {
                let (client, url, blob, start) = (
                    self.client.clone(),
                    url.clone(),
                    blob.clone(),
                    start.clone(),
                );
                let check = if i == 0 { check } else { Check::Length };
                tokio::spawn(async move {
                    start.wait().await;
                    client::timed_get(&client, url, &blob, check).await
                })
            })
            .collect();
        start.wait().await;
        let started = Instant::now();
        let mut fetched: Vec<Fetched> = Vec::with_capacity(clients);
        let mut failed: Vec<GetError> = Vec::new();
        for task in tasks {
            match task.await.context("pull task panicked")? {
                Ok(f) => fetched.push(f),
                Err(e) => failed.push(e),
            }
        }
        if !failed.is_empty() {
            return Ok(Err(self.describe_failures(&failed, clients)));
        }
        let last = fetched.iter().map(|f| f.finished).max().unwrap_or(started);
        let mut ttfbs: Vec<Duration> = fetched.iter().map(|f| f.ttfb).collect();
        ttfbs.sort_unstable();
        Ok(Ok(PullStats {
            wall_seconds: last.duration_since(started).as_secs_f64(),
            ttfb_median_seconds: median(&ttfbs).as_secs_f64(),
            bytes: blob.len() * clients as u64,
        }))
    }

    /// The cell text for failed GETs (`500`, or `3 of 16: 500, broken body`), after
    /// logging each distinct failure in full.
    fn describe_failures(&self, failed: &[GetError], clients: usize) -> String {
        let mut details: Vec<&str> = failed.iter().map(|e| e.detail.as_str()).collect();
        details.sort_unstable();
        details.dedup();
        for detail in details {
            progress(&self.server.label, format!("GET failed: {detail}"));
        }
        let mut short: Vec<&str> = failed.iter().map(|e| e.short.as_str()).collect();
        short.sort_unstable();
        short.dedup();
        let short = short.join(", ");
        if failed.len() == clients {
            short
        } else {
            format!("{} of {clients}: {short}", failed.len())
        }
    }
}

/// The middle of sorted `values` (the mean of the middle two for an even count).
fn median(sorted: &[Duration]) -> Duration {
    match sorted.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[ms(1), ms(2), ms(9)]), ms(2));
        assert_eq!(median(&[ms(1), ms(3)]), ms(2));
        assert_eq!(median(&[]), Duration::ZERO);
    }
}
