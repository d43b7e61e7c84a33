//! The configuration file: one TOML document, parsed strictly (unknown keys and bad
//! values are refused with the key named), plus the embedded default. This module holds
//! the whole document ([`Config`]), loading and the checks that span sections; each
//! section is a module of its own, re-exported here. It only describes settings; it
//! never opens stores or sockets.

mod auth;
mod export;
mod log;
mod parse;
mod server;
mod storage;
mod upkeep;
mod upstream;

pub use auth::{AccessConfig, AuthConfig, DEFAULT_ACCESS, DEFAULT_ACCESS_WITHOUT_USERS};
pub use export::ExportConfig;
pub use log::{LogConfig, LogFormat};
pub use parse::{parse_duration, parse_size};
pub use server::{MetricsConfig, ServerConfig};
pub use storage::{StorageConfig, StorageKind};
pub use upkeep::{GcConfig, RetentionConfig, RetentionRuleConfig, ScrubConfig};
pub use upstream::{DnsConfig, UpstreamConfig};

use serde::Deserialize;
use std::path::Path;

/// The configuration `berth serve` runs with when no file is given.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `[[upstream]]` tables: registries berth caches.
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub gc: GcConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    #[serde(default)]
    pub scrub: ScrubConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    /// `[[access]]` rules, tried in order; see [`Config::access_rules`].
    #[serde(default)]
    pub access: Vec<AccessConfig>,
    /// `[[export]]` entries: break-glass tarballs written after matching pushes.
    #[serde(default, rename = "export")]
    pub exports: Vec<ExportConfig>,
}

impl Config {
    /// Parse a configuration document; `origin` names it in error messages.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let mut msg = format!("invalid configuration in {origin}: {e}");
            if msg.contains("retention") && msg.contains("invalid type") {
                msg.push_str("\nhint: write the schedule as [retention] interval = \"1h\" and each rule as a [[retention.rule]] table");
            }
            anyhow::anyhow!(msg)
        })?;
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration in {origin}: {e}"))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        self.server.tls_files()?;
        if self.storage.redirect && self.storage.kind != StorageKind::S3 {
            return Err("[storage] redirect needs kind = \"s3\": only object storage can hand out presigned URLs".into());
        }
        if self.storage.kind == StorageKind::S3 {
            self.storage.s3()?;
            if self.auth.htpasswd.is_some() && self.auth.token_key.is_none() {
                return Err("[auth] token_key is required with [storage] kind = \"s3\": replicas must share the token signing key".into());
            }
        }
        for (i, e) in self.exports.iter().enumerate() {
            oci::RepoPattern::new(&e.repositories)
                .map_err(|m| format!("[[export]] #{}: {m}", i + 1))?;
            oci::RepoPattern::new(&e.tags)
                .map_err(|m| format!("[[export]] #{}: tags: {m}", i + 1))?;
            if e.keep == 0 {
                return Err(format!("[[export]] #{}: keep must be at least 1", i + 1));
            }
        }
        if self.metrics.listen == Some(self.server.listen) {
            return Err(format!(
                "[metrics] listen {} is the main [server] listen address; leave it out to serve /metrics there",
                self.server.listen
            ));
        }
        if self.server.client_timeout.is_zero() {
            return Err("[server] client_timeout must be above zero".into());
        }
        if self.dns.servers.is_empty() && !self.dns.fallback.is_empty() {
            return Err("[dns] fallback needs servers: the fallback is asked only after the primary servers".into());
        }
        for (i, r) in self.retention.rules.iter().enumerate() {
            r.compile()
                .map_err(|e| format!("[[retention.rule]] #{}: {e}", i + 1))?;
            if r.keep_last.is_none() && r.max_age.is_none() {
                return Err(format!(
                    "[[retention.rule]] #{} ({}): set keep_last or max_age, or the rule drops nothing",
                    i + 1,
                    r.repositories
                ));
            }
        }
        self.access_rules()?;
        if let Some(h) = &self.auth.htpasswd {
            ::auth::Users::load(h).map_err(|e| format!("[auth] htpasswd: {e}"))?;
        }
        if self.scrub.rate == 0 {
            return Err("[scrub] rate must be more than 0 bytes per second".into());
        }
        let mut names = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        for u in &self.upstreams {
            u.validate()?;
            if !names.insert(u.name.as_str()) || !keys.insert(cache::key_for(&u.name)) {
                return Err(format!("[[upstream]] name {:?} is defined twice", u.name));
            }
            if u.listen == Some(self.server.listen) {
                return Err(format!(
                    "upstream {}: listen {} is the main [server] listen address",
                    u.name, self.server.listen
                ));
            }
        }
        Ok(())
    }

    /// Load from a file, or the embedded default when `path` is `None`.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        match path {
            None => Config::parse(DEFAULT_TOML, "the embedded default configuration"),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    anyhow::anyhow!("cannot read configuration file {}: {e}", p.display())
                })?;
                Config::parse(&text, &p.display().to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn embedded_default_and_example_parse() {
        let c = Config::load(None).unwrap();
        let names: Vec<&str> = c.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "docker.io",
                "ghcr.io",
                "quay.io",
                "registry.k8s.io",
                "reg.kyverno.io"
            ]
        );
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(c.storage.path, PathBuf::from("./berth-data"));
        assert!(c.storage.fsync);
        Config::parse(
            include_str!("../../../../config/berth.example.toml"),
            "example",
        )
        .unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = Config::parse("[server]\nlisen = \"127.0.0.1:1\"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lisen"), "{e}");
        let e = Config::parse("[server]\nlisten = \"nowhere\"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen"), "{e}");
        let e = Config::parse("[storage]\nkind = \"tape\"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kind") && e.contains("tape"), "{e}");
        let e = Config::parse("[nope]\n", "t").unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
        let e = Config::parse("[dns]\nservers = [\"not-an-ip\"]\n", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not-an-ip"), "{e}");
        let e = Config::parse("[dns]\nfallback = [\"1.1.1.1\"]\n", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fallback"), "{e}");
        let c =
            Config::parse("[dns]\nservers = [\"10.0.0.1\", \"127.0.0.1:5353\"]\n", "t").unwrap();
        assert_eq!(c.dns.servers[0].to_string(), "10.0.0.1:53");
        assert_eq!(c.dns.servers[1].to_string(), "127.0.0.1:5353");
    }
}
