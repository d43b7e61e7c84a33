//! Connections: the accept loop, TLS handshakes, HTTP/1.1 and HTTP/2, graceful shutdown
//! and the timeouts that keep a slow or silent client from holding resources. It hands
//! each request to the router and never looks inside one.

use crate::tls::TlsCerts;
use axum::Router;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::time::Sleep;
use tower::Service;

/// How long a client may stay silent while it owes the server bytes: the TLS
/// handshake, the request line and headers (which also bounds an idle keep-alive
/// connection), and each gap within a request body. A minute covers a congested link
/// or a client pausing between chunks; a slowloris holding thousands of connections
/// open gets each one closed after it.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The slowest a request body may arrive, in bytes per second, measured over each
/// window of the client timeout: a client dripping a byte a second never trips the
/// idle timeout but holds an upload (and its lock) forever. 1 KiB/s is far below any
/// real link yet ends a drip within one window.
pub const MIN_BODY_RATE: u64 = 1024;

/// How long to back off after `accept` fails (out of file descriptors, usually), so
/// the loop does not spin while connections drain.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How often an HTTP/2 connection is pinged, and how long a ping may go unanswered
/// before the connection is dropped: dead peers are found without waiting for TCP.
const H2_KEEPALIVE: Duration = Duration::from_secs(30);

/// How a listener serves its connections.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Serve TLS with these certificates; plain HTTP when `None`.
    pub tls: Option<Arc<TlsCerts>>,
    /// See [`CLIENT_TIMEOUT`].
    pub client_timeout: Duration,
    /// See [`MIN_BODY_RATE`]; 0 turns the floor off.
    pub min_body_rate: u64,
    /// Peers whose `X-Forwarded-For` and `X-Forwarded-Proto` are believed (reverse
    /// proxies). From anyone else those headers are removed before a handler sees them.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The URL clients use to reach this listener (`https://registry.example.com`), when
    /// it is behind a proxy: token realms and `Location` headers are built from it, never
    /// from the request's `Host` header.
    pub external_url: Option<ExternalUrl>,
}

/// The scheme and authority clients use, from `[server] external_url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalUrl {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// Host and optional port.
    pub authority: http::uri::Authority,
}

impl std::str::FromStr for ExternalUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<ExternalUrl, String> {
        let uri: http::Uri = s
            .parse()
            .map_err(|e| format!("external_url {s:?} is not a URL: {e}"))?;
        let scheme = match uri.scheme_str() {
            Some("https") => "https",
            Some("http") => "http",
            _ => {
                return Err(format!(
                    "external_url {s:?} must start with http:// or https://"
                ));
            }
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "external_url {s:?} must not have a path: OCI clients expect /v2/ at the root"
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("external_url {s:?} has no host"))?;
        Ok(ExternalUrl { scheme, authority })
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            tls: None,
            client_timeout: CLIENT_TIMEOUT,
            min_body_rate: MIN_BODY_RATE,
            trusted_proxies: Vec::new(),
            external_url: None,
        }
    }
}

/// The error a request body gives when its client went silent for longer than the
/// client timeout, or sent slower than the minimum rate over a whole window.
#[derive(Debug)]
pub struct BodyTimedOut(String);

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BodyTimedOut {}

pin_project_lite::pin_project! {
    /// A request body that fails with [`BodyTimedOut`] when no data arrives for the
    /// timeout while it is being read, or when less than `min_rate` bytes a second
    /// arrived over a window of the timeout. Time the reader spends elsewhere (a slow
    /// disk) does not count toward the idle timeout: data already arrived is always
    /// delivered first.
    struct IdleTimeout<B> {
        #[pin]
        body: B,
        #[pin]
        sleep: Option<Sleep>,
        timeout: Duration,
        min_rate: u64,
        // The current rate window: when it began and the bytes received since.
        window: Option<(std::time::Instant, u64)>,
    }
}

impl<B> IdleTimeout<B> {
    fn new(body: B, timeout: Duration, min_rate: u64) -> IdleTimeout<B> {
        IdleTimeout {
            body,
            sleep: None,
            timeout,
            min_rate,
            window: None,
        }
    }
}

/// Count `n` more bytes into `window`; an error when a full window (`timeout` long)
/// brought fewer than `min_rate` bytes a second.
fn check_rate(
    window: &mut Option<(std::time::Instant, u64)>,
    n: u64,
    timeout: Duration,
    min_rate: u64,
) -> Result<(), BodyTimedOut> {
    if min_rate == 0 {
        return Ok(());
    }
    let now = std::time::Instant::now();
    let (start, bytes) = window.get_or_insert((now, 0));
    *bytes += n;
    let elapsed = now.duration_since(*start);
    if elapsed >= timeout {
        let rate = (*bytes as f64 / elapsed.as_secs_f64()) as u64;
        if rate < min_rate {
            return Err(BodyTimedOut(format!(
                "client sent {rate} bytes/s over {elapsed:?}, below the minimum of {min_rate}"
            )));
        }
        *window = Some((now, 0));
    }
    Ok(())
}

impl<B> HttpBody for IdleTimeout<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            this.sleep.set(None);
            if let Some(Ok(f)) = &frame {
                let n = f.data_ref().map_or(0, |d| d.len() as u64);
                if let Err(e) = check_rate(this.window, n, *this.timeout, *this.min_rate) {
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep(*this.timeout)));
        }
        match this.sleep.as_pin_mut().map(|s| s.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Some(Err(BodyTimedOut(format!(
                "client sent nothing for {:?}",
                this.timeout
            ))
            .into()))),
            _ => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Serve `router` on `listener` until `shutdown` completes; then stop accepting, let
/// in-flight requests finish and return.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let tls = options
        .tls
        .as_ref()
        .map(|t| tokio_rustls::TlsAcceptor::from(t.server_config()));
    let options = Arc::new(options);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let router = router.clone();
        let tls = tls.clone();
        let options = options.clone();
        tokio::spawn(async move {
            let timeout = options.client_timeout;
            let conn = async {
                match tls {
                    Some(acceptor) => {
                        let stream = tokio::time::timeout(timeout, acceptor.accept(stream))
                            .await
                            .map_err(|_| "TLS handshake timed out".to_owned())?
                            .map_err(|e| format!("TLS handshake failed: {e}"))?;
                        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                        let protocol = if h2 { Protocol::Http2 } else { Protocol::Http1 };
                        serve_conn(stream, true, protocol, peer, router, &options, watcher).await
                    }
                    // Plain TCP: HTTP/1.1, or HTTP/2 with prior knowledge, told apart by
                    // the preface (hyper-util's auto builder).
                    None => {
                        serve_conn(
                            stream,
                            false,
                            Protocol::Either,
                            peer,
                            router,
                            &options,
                            watcher,
                        )
                        .await
                    }
                }
            };
            let result: Result<(), String> = conn.await;
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Which protocol a connection speaks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
    /// Either, told apart by the client's first bytes.
    Either,
}

/// Make a request look the same whichever protocol carried it: HTTP/2 names the host
/// in `:authority` rather than `Host`, and the scheme comes from the connection (a
/// client cannot claim plain HTTP on a TLS connection). Handlers read both to build
/// absolute URLs such as the token realm.
/// Headers a client could use to pose as a proxy's report about itself.
const FORWARDED_HEADERS: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

/// Make the request say what is true of it before any handler looks: `Host` present,
/// `X-Forwarded-Proto` only from a trusted proxy (or `https` on TLS), the external URL's
/// host and scheme when one is configured. Returns the client's address: the peer's,
/// or for a trusted proxy the last address in `X-Forwarded-For` that is not itself a
/// trusted proxy (addresses further left were written by the client and prove nothing).
fn normalise<B>(
    req: &mut hyper::Request<B>,
    tls: bool,
    peer: SocketAddr,
    options: &ServeOptions,
) -> SocketAddr {
    let trusted = |ip: std::net::IpAddr| options.trusted_proxies.iter().any(|n| n.contains(&ip));
    let mut client = peer;
    if trusted(peer.ip()) {
        let forwarded: Vec<std::net::IpAddr> = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map_while(|a| a.trim().parse().ok())
            .collect();
        if let Some(ip) = forwarded.iter().rev().find(|ip| !trusted(**ip)) {
            client = SocketAddr::new(*ip, peer.port());
        }
    } else {
        for h in FORWARDED_HEADERS {
            req.headers_mut().remove(h);
        }
    }
    if !req.headers().contains_key(http::header::HOST)
        && let Some(authority) = req.uri().authority()
        && let Ok(v) = http::HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(http::header::HOST, v);
    }
    if tls {
        req.headers_mut()
            .insert("x-forwarded-proto", http::HeaderValue::from_static("https"));
    }
    if let Some(url) = &options.external_url {
        if let Ok(v) = http::HeaderValue::from_str(url.authority.as_str()) {
            req.headers_mut().insert(http::header::HOST, v);
        }
        req.headers_mut().insert(
            "x-forwarded-proto",
            http::HeaderValue::from_static(url.scheme),
        );
    }
    client
}

async fn serve_conn<S>(
    stream: S,
    tls: bool,
    protocol: Protocol,
    peer: SocketAddr,
    router: Router,
    options: &ServeOptions,
    watcher: hyper_util::server::graceful::Watcher,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeout = options.client_timeout;
    let min_rate = options.min_body_rate;
    let options = options.clone();
    // Set by the first request: until then the connection has `client_timeout` to say
    // which protocol it speaks and send its first request head (a client that opens a
    // connection and stays silent, or sends half an HTTP/2 preface, is dropped).
    let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let first = started.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        first.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut req =
            req.map(|body| axum::body::Body::new(IdleTimeout::new(body, timeout, min_rate)));
        // Handlers see the client's address (failed-login limits are per address).
        let client = normalise(&mut req, tls, peer, &options);
        req.extensions_mut().insert(ConnectInfo(client));
        if let Some(url) = &options.external_url {
            req.extensions_mut().insert(url.clone());
        }
        router.clone().call(req)
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEPALIVE)
        .keep_alive_timeout(H2_KEEPALIVE);
    let builder = match protocol {
        Protocol::Http1 => builder.http1_only(),
        Protocol::Http2 => builder.http2_only(),
        Protocol::Either => builder,
    };
    let conn = watcher.watch(
        builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned(),
    );
    tokio::pin!(conn);
    tokio::select! {
        r = &mut conn => return r.map_err(|e| e.to_string()),
        () = tokio::time::sleep(timeout) => {}
    }
    if !started.load(std::sync::atomic::Ordering::Relaxed) {
        return Err("no request within the client timeout".into());
    }
    conn.await.map_err(|e| e.to_string())
}
