//! The counting proxy between the caches and their upstream: an HTTP/1 reverse proxy on
//! loopback that forwards every request unchanged to the upstream registry, counts the
//! requests for each blob (`/v2/<repo>/blobs/sha256:<hex>`) by method, and streams bodies
//! both ways frame by frame, so a 512 MiB blob passes through without being held. It also
//! knows how many answers are still streaming, so a measurement can wait until a cache's
//! background downloads have ended before it reads the counts.

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Pause between checks of whether the proxy is idle.
const IDLE_POLL: Duration = Duration::from_millis(10);

type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// A running counting proxy; dropping it stops accepting connections.
pub struct CountingProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

struct Shared {
    upstream: SocketAddr,
    /// Requests per (method, digest) for blob paths.
    blob_requests: Mutex<HashMap<(Method, String), u64>>,
    /// Requests whose answer has not been fully sent (or dropped) yet.
    in_flight: AtomicUsize,
}

impl CountingProxy {
    /// Listen on a free loopback port and forward everything to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<CountingProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("counting proxy: cannot bind")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            blob_requests: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
        });
        let accepting = shared.clone();
        let accept = tokio::spawn(async move {
            loop {
                // An accept error (a connection reset before it was taken) only loses
                // that connection; its client sees the failure.
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = accepting.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| forward(shared.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(CountingProxy {
            addr,
            shared,
            accept,
        })
    }

    /// How many `method` requests for blob `digest` have arrived so far.
    pub fn blob_requests(&self, method: &Method, digest: &str) -> u64 {
        let counts = self.shared.blob_requests.lock();
        counts
            .get(&(method.clone(), digest.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Wait until no answer is streaming (a cache may go on downloading after its
    /// clients are served); false if that has not happened within `timeout`.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let started = Instant::now();
        while self.shared.in_flight.load(Ordering::SeqCst) > 0 {
            if started.elapsed() > timeout {
                return false;
            }
            tokio::time::sleep(IDLE_POLL).await;
        }
        true
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Counts one request as in flight until it is dropped with the answer's body.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn new(shared: &Arc<Shared>) -> InFlight {
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The upstream's answer body, passed on frame by frame, holding the in-flight count.
struct Tracked {
    inner: Incoming,
    _in_flight: InFlight,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Count `req` if it is for a blob, send it upstream on a new connection and pass the
/// answer back; a 502 naming the failure if the upstream cannot be reached.
async fn forward(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let in_flight = InFlight::new(&shared);
    if let Some(digest) = blob_digest(req.uri().path()) {
        let mut counts = shared.blob_requests.lock();
        *counts
            .entry((req.method().clone(), digest.to_owned()))
            .or_default() += 1;
    }
    match send_upstream(shared.upstream, req).await {
        Ok(resp) => Ok(resp.map(|inner| {
            Tracked {
                inner,
                _in_flight: in_flight,
            }
            .boxed_unsync()
        })),
        Err(e) => {
            let mut resp = Response::new(
                Full::new(Bytes::from(format!("counting proxy: {e:#}\n")))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            );
            *resp.status_mut() = StatusCode::BAD_GATEWAY;
            Ok(resp)
        }
    }
}

/// One request on its own upstream connection (loopback connects cost microseconds).
async fn send_upstream(upstream: SocketAddr, req: Request<Incoming>) -> Result<Response<Incoming>> {
    let stream = TcpStream::connect(upstream)
        .await
        .with_context(|| format!("cannot connect to the upstream {upstream}"))?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender.send_request(req).await?)
}

/// The digest of a blob path `/v2/<repo>/blobs/sha256:<hex>`, or None for any other path
/// (upload paths are `/blobs/uploads/...`).
fn blob_digest(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/")?;
    let (repo, digest) = rest.rsplit_once("/blobs/")?;
    (!repo.is_empty() && digest.starts_with("sha256:") && !digest.contains('/')).then_some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Empty;

    #[test]
    fn only_blob_paths_have_a_digest() {
        assert_eq!(
            blob_digest("/v2/a/b/blobs/sha256:00ff"),
            Some("sha256:00ff")
        );
        assert_eq!(blob_digest("/v2/a/blobs/uploads/123"), None);
        assert_eq!(blob_digest("/v2/a/manifests/sha256:00ff"), None);
        assert_eq!(blob_digest("/v2/"), None);
        assert_eq!(blob_digest("/v2//blobs/sha256:00"), None);
    }

    /// A one-route upstream answering every request with `body`.
    async fn fixed_upstream(body: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = service_fn(|_req: Request<Incoming>| async move {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(body))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn forwards_and_counts_blob_gets() {
        let proxy = CountingProxy::start(fixed_upstream(b"hello").await)
            .await
            .unwrap();
        let stream = TcpStream::connect(proxy.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        for path in ["/v2/r/blobs/sha256:aa", "/v2/r/blobs/sha256:aa", "/v2/"] {
            let req = Request::get(path)
                .header(hyper::header::HOST, "x")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"hello");
        }
        assert_eq!(proxy.blob_requests(&Method::GET, "sha256:aa"), 2);
        assert_eq!(proxy.blob_requests(&Method::HEAD, "sha256:aa"), 0);
        assert!(proxy.wait_idle(Duration::from_secs(5)).await);
    }
}
