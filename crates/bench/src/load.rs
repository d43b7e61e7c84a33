//! The manifest GET load: many keep-alive connections asking for one manifest as fast as
//! they can for a fixed time. `wrk` when it is installed (it is written in C and leaves
//! the server more of a 2-core machine), else a lean in-process hyper HTTP/1 client.

use crate::blob::OCI_MANIFEST;
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::header::{ACCEPT, HOST};
use hyper_util::rt::TokioIo;
use reqwest::Url;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Keep-alive connections held open during the manifest load.
pub const CONNECTIONS: usize = 64;

/// Which load generator the command line asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Choice {
    /// wrk if it is on PATH, else the built-in client.
    Auto,
    Wrk,
    Builtin,
}

/// The load generator in use.
#[derive(Clone, Debug)]
pub enum Generator {
    Wrk(PathBuf),
    Builtin,
}

impl Generator {
    pub fn choose(choice: Choice) -> Result<Generator> {
        match (choice, find_on_path("wrk")) {
            (Choice::Builtin, _) | (Choice::Auto, None) => Ok(Generator::Builtin),
            (_, Some(wrk)) => Ok(Generator::Wrk(wrk)),
            (Choice::Wrk, None) => {
                bail!("--generator wrk: wrk is not on PATH (apt-get install wrk)")
            }
        }
    }

    pub fn describe(&self, duration: Duration) -> String {
        let secs = duration.as_secs_f64();
        match self {
            Generator::Wrk(path) => format!(
                "wrk ({}, {} threads, {CONNECTIONS} connections, {secs} s)",
                path.display(),
                wrk_threads()
            ),
            Generator::Builtin => {
                format!("built-in hyper HTTP/1 client ({CONNECTIONS} connections, {secs} s)")
            }
        }
    }

    /// Requests per second that `url` sustained, every answer a 200 of `expected_len`
    /// bytes (wrk checks the status only).
    pub async fn run(
        &self,
        addr: SocketAddr,
        url: &Url,
        expected_len: usize,
        duration: Duration,
    ) -> Result<f64> {
        match self {
            Generator::Wrk(path) => run_wrk(path, url, duration).await,
            Generator::Builtin => run_builtin(addr, url, expected_len, duration).await,
        }
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// One wrk thread per core: each runs its own event loop over a share of the connections.
fn wrk_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

async fn run_wrk(wrk: &PathBuf, url: &Url, duration: Duration) -> Result<f64> {
    let out = tokio::process::Command::new(wrk)
        .arg(format!("--threads={}", wrk_threads()))
        .arg(format!("--connections={CONNECTIONS}"))
        .arg(format!("--duration={}s", duration.as_secs().max(1)))
        .arg("--timeout=10s")
        .arg(format!("--header=Accept: {OCI_MANIFEST}"))
        .arg(url.as_str())
        .output()
        .await
        .context("cannot run wrk")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(&stdout)
}

/// Requests/sec from wrk's report; an error if any answer was not 2xx/3xx or any socket
/// error happened.
fn parse_wrk(report: &str) -> Result<f64> {
    for bad in ["Non-2xx or 3xx responses:", "Socket errors:"] {
        if let Some(line) = report.lines().find(|l| l.trim_start().starts_with(bad)) {
            bail!("wrk saw failures: {}\n{report}", line.trim());
        }
    }
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's report:\n{report}"))
}

async fn run_builtin(
    addr: SocketAddr,
    url: &Url,
    expected_len: usize,
    duration: Duration,
) -> Result<f64> {
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|_| tokio::spawn(connection_loop(addr, url.clone(), expected_len, deadline)))
        .collect();
    let mut requests = 0u64;
    for worker in workers {
        requests += worker.await.context("load task panicked")??;
    }
    Ok(requests as f64 / started.elapsed().as_secs_f64())
}

/// One keep-alive connection sending GETs back to back until `deadline`; the count.
async fn connection_loop(
    addr: SocketAddr,
    url: Url,
    expected_len: usize,
    deadline: Instant,
) -> Result<u64> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let host = format!("{addr}");
    let path = url.path().to_owned();
    let mut done = 0u64;
    while Instant::now() < deadline {
        let req = Request::get(path.as_str())
            .header(HOST, host.as_str())
            .header(ACCEPT, OCI_MANIFEST)
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        if resp.status() != hyper::StatusCode::OK {
            bail!(
                "GET manifest under load: expected 200, got {}",
                resp.status()
            );
        }
        let body = resp.into_body().collect().await?.to_bytes();
        if body.len() != expected_len {
            bail!(
                "GET manifest under load: {} bytes, expected {expected_len}",
                body.len()
            );
        }
        done += 1;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK_OK: &str = "Running 2s test @ http://127.0.0.1:1/v2/r/manifests/t
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.00ms  200.00us   5.00ms   90.00%
  40000 requests in 2.00s, 20.00MB read
Requests/sec:  20000.50
Transfer/sec:     10.00MB
";

    #[test]
    fn wrk_rate_is_read() {
        assert_eq!(parse_wrk(WRK_OK).unwrap(), 20000.5);
    }

    #[test]
    fn wrk_failures_are_errors() {
        let report = WRK_OK.replace(
            "Requests/sec",
            "  Non-2xx or 3xx responses: 7\nRequests/sec",
        );
        assert!(parse_wrk(&report).is_err());
        let report = WRK_OK.replace(
            "Requests/sec",
            "  Socket errors: connect 0, read 1, write 0, timeout 0\nRequests/sec",
        );
        assert!(parse_wrk(&report).is_err());
    }
}
