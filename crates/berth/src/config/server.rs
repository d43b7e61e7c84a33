//! `[server]` and `[metrics]`: the listeners' addresses, TLS files, client timeouts and
//! limits, trusted proxies and the external URL. It only describes them; it never binds
//! a socket or loads a certificate.

use super::Invalid;
use super::parse::{de_duration, de_opt_size, de_size};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// `[metrics]`
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics` only on this address (plain HTTP) instead of beside the API.
    pub listen: Option<SocketAddr>,
}

/// `[server]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and port of the registry listener.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// PEM certificate chain; with `tls_key`, every listener serves HTTPS (HTTP/2 and
    /// HTTP/1.1). Reloaded when the files change and on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// How long a client may stay silent while it owes bytes (TLS handshake, request
    /// headers, each gap in a request body); also closes idle keep-alive connections.
    #[serde(default = "default_client_timeout", deserialize_with = "de_duration")]
    pub client_timeout: std::time::Duration,
    /// Largest blob a client may upload (`"20GiB"`); no limit when absent.
    #[serde(default, deserialize_with = "de_opt_size")]
    pub max_blob_size: Option<u64>,
    /// Slowest a request body may arrive, per second, over each `client_timeout`
    /// window (`"1KiB"`; `"0"` turns it off): ends uploads dripped a byte at a time.
    #[serde(default = "default_min_body_rate", deserialize_with = "de_size")]
    pub min_body_rate: u64,
    /// Reverse proxies (CIDRs, `"10.0.0.0/8"`, `"::1/128"`) whose `X-Forwarded-For`
    /// and `X-Forwarded-Proto` are believed; none by default, so those headers from
    /// anyone else are ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The URL clients reach the main listener by (`"https://registry.example.com"`),
    /// when a proxy is in front: token realms and `Location` headers use it instead of
    /// the request's `Host`.
    #[serde(default, deserialize_with = "de_external_url")]
    pub external_url: Option<server::transport::ExternalUrl>,
}

fn de_external_url<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<server::transport::ExternalUrl>, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            tls_cert: None,
            tls_key: None,
            client_timeout: default_client_timeout(),
            max_blob_size: None,
            min_body_rate: default_min_body_rate(),
            trusted_proxies: Vec::new(),
            external_url: None,
        }
    }
}

fn default_min_body_rate() -> u64 {
    server::transport::MIN_BODY_RATE
}

fn default_client_timeout() -> std::time::Duration {
    server::CLIENT_TIMEOUT
}

impl ServerConfig {
    /// The TLS files, when both are configured.
    pub fn tls_files(&self) -> Result<Option<server::TlsFiles>, Invalid> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(server::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            })),
            (None, None) => Ok(None),
            (Some(_), None) => Err(Invalid::TlsCertWithoutKey),
            (None, Some(_)) => Err(Invalid::TlsKeyWithoutCert),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5000))
}
