//! `berth health`: the probe a container health check, a Kubernetes exec probe or a
//! monitoring script runs. It asks `GET /v2/` of the configured main listener (on
//! loopback when it listens on every address) and is healthy when berth answers 200, or
//! 401 (a registry that wants credentials is up). It reads only the `[server]` table of
//! the configuration and opens no store.

use crate::config::ServerConfig;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// How long the probe waits for an answer: container runtimes and kubelet default to
/// timeouts of a few seconds, and a healthy berth answers `/v2/` in milliseconds.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What to probe.
#[derive(Clone, Debug)]
pub struct HealthOptions {
    /// Probe this URL instead of the one derived from the configuration.
    pub url: Option<String>,
    pub timeout: Duration,
}

/// The outcome, as printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub url: String,
    pub healthy: bool,
    /// `HTTP 200`, `HTTP 503`, or why no answer came.
    pub detail: String,
}

/// The `/v2/` URL of the main listener: `https` when TLS is configured, and loopback in
/// place of an unspecified address. For `[::]` that is 127.0.0.1 too: a dual-stack
/// listener serves IPv4, and a container often has no IPv6 loopback at all.
pub fn probe_url(server: &ServerConfig) -> String {
    let listen = server.listen;
    let ip = match listen.ip() {
        ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if server.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{}/v2/", SocketAddr::new(ip, listen.port()))
}

/// Probe once.
pub async fn check(server: &ServerConfig, opts: &HealthOptions) -> anyhow::Result<Health> {
    let derived = opts.url.is_none();
    let url = opts.url.clone().unwrap_or_else(|| probe_url(server));
    let http = reqwest::Client::builder()
        .timeout(opts.timeout)
        // Straight to the listener: an HTTP(S)_PROXY of the environment (common beside
        // a pull-through cache) must not stand between a probe and loopback.
        .no_proxy()
        // The probe derived from the configuration goes to loopback, which the
        // certificate does not name; it checks liveness, not identity.
        .danger_accept_invalid_certs(derived)
        .build()?;
    let (healthy, detail) = match http.get(&url).send().await {
        Ok(r) => {
            let s = r.status();
            (s == 200 || s == 401, format!("HTTP {}", s.as_u16()))
        }
        Err(e) => {
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                why = format!("{why}: {s}");
                source = s.source();
            }
            (false, format!("no answer: {why}"))
        }
    };
    Ok(Health {
        url,
        healthy,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_goes_to_loopback_for_unspecified_addresses_and_https_with_tls() {
        let mut server = crate::config::Config::load(None).unwrap().server;
        for (listen, want) in [
            ("127.0.0.1:5000", "http://127.0.0.1:5000/v2/"),
            ("0.0.0.0:5050", "http://127.0.0.1:5050/v2/"),
            ("[::]:5000", "http://127.0.0.1:5000/v2/"),
            ("[::1]:5001", "http://[::1]:5001/v2/"),
            ("10.1.2.3:443", "http://10.1.2.3:443/v2/"),
        ] {
            server.listen = listen.parse().unwrap();
            assert_eq!(probe_url(&server), want, "{listen}");
        }
        server.tls_cert = Some("/etc/berth/tls.crt".into());
        assert_eq!(probe_url(&server), "https://10.1.2.3:443/v2/");
    }
}
