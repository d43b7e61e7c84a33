//! The configuration file: one TOML document, parsed strictly (unknown keys and bad
//! values are refused with the key named), plus the embedded default. This module holds
//! the whole document ([`Config`]), loading and the checks that span sections; each
//! section is a module of its own, re-exported here. It only describes settings; it
//! never opens stores or sockets.

mod auth;
mod error;
mod export;
mod log;
mod parse;
mod probe;
mod server;
mod storage;
mod upkeep;
mod upstream;

pub use auth::{AccessConfig, AuthConfig, DEFAULT_ACCESS, DEFAULT_ACCESS_WITHOUT_USERS};
pub use error::{ConfigError, Invalid, ValueError};
pub use export::ExportConfig;
pub use log::{LogConfig, LogFormat};
pub use parse::{parse_duration, parse_size};
pub use probe::{DEFAULT_PROBE_INTERVAL, ProbeConfig};
pub use server::{MetricsConfig, ServerConfig};
pub use storage::{StorageConfig, StorageKind};
pub use upkeep::{GcConfig, RetentionConfig, RetentionRuleConfig, ScrubConfig};
pub use upstream::{DEFAULT_PREFETCH_INTERVAL, DnsConfig, PrefetchConfig, UpstreamConfig};

use serde::Deserialize;
use std::path::Path;

/// The configuration `berth serve` runs with when no file is given.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// The default's listen line, which [`container_default`] opens to every address.
const DEFAULT_LISTEN_LINE: &str = "listen = \"127.0.0.1:5000\"";
/// The default's data directory line, which [`container_default`] moves to the volume.
const DEFAULT_PATH_LINE: &str = "path = \"./berth-data\"";

/// The configuration of the container image (`berth default-config --container`, at
/// `/etc/berth/berth.toml` in the image): the embedded default, listening on
/// `0.0.0.0:5000` (a container's loopback is its own) and storing in the
/// `/var/lib/berth` volume. Derived from [`DEFAULT_TOML`] so the two cannot drift.
pub fn container_default() -> String {
    DEFAULT_TOML
        .replacen(DEFAULT_LISTEN_LINE, "listen = \"0.0.0.0:5000\"", 1)
        .replacen(DEFAULT_PATH_LINE, "path = \"/var/lib/berth\"", 1)
        .replacen(
            "# berth's embedded default configuration: what `berth serve` runs with no --config.",
            "# berth's container configuration (`berth default-config --container`): the embedded\n\
             # default, listening on every address and storing in the /var/lib/berth volume.",
            1,
        )
}

/// Whether loading also reads the files the configuration names (`[auth] htpasswd`).
/// Commands that never use them (`berth hosts-toml` on a node that mounts only
/// berth.toml) skip that; `serve`, `check-config` and the store tools read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileChecks {
    Read,
    Skip,
}

/// Only the `[server]` table of a file, every other table ignored unchecked: what
/// `berth health` needs to find the listener, so that a file berth would refuse (and
/// keeps serving the old one instead of) does not fail the probe.
#[derive(Deserialize)]
struct ServerOnly {
    #[serde(default)]
    server: ServerConfig,
}

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
    /// `[[probe]]` entries: other registries checked on a schedule.
    #[serde(default, rename = "probe")]
    pub probes: Vec<ProbeConfig>,
}

impl Config {
    /// Parse a configuration document; `origin` names it in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Config::parse_unchecked(text, origin)?.validated(origin, FileChecks::Read)
    }

    /// The document as serde reads it (keys and value forms), before the checks that
    /// span sections.
    fn parse_unchecked(text: &str, origin: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|error| {
            let msg = error.to_string();
            let hint = if msg.contains("retention") && msg.contains("invalid type") {
                "\nhint: write the schedule as [retention] interval = \"1h\" and each rule as a [[retention.rule]] table"
            } else {
                ""
            };
            ConfigError::Syntax {
                origin: origin.to_owned(),
                error: Box::new(error),
                hint,
            }
        })
    }

    fn validated(self, origin: &str, files: FileChecks) -> Result<Config, ConfigError> {
        self.validate(files)
            .map_err(|invalid| ConfigError::Invalid {
                origin: origin.to_owned(),
                invalid,
            })?;
        Ok(self)
    }

    fn validate(&self, files: FileChecks) -> Result<(), Invalid> {
        self.server.tls_files()?;
        if self.storage.redirect && self.storage.kind != StorageKind::S3 {
            return Err(Invalid::RedirectNeedsS3);
        }
        if self.storage.kind == StorageKind::S3 {
            self.storage.s3()?;
            if self.auth.htpasswd.is_some() && self.auth.token_key.is_none() {
                return Err(Invalid::S3WithoutTokenKey);
            }
        }
        for (number, e) in (1..).zip(&self.exports) {
            let pattern = |field, text| {
                oci::RepoPattern::new(text).map_err(|error| Invalid::ExportPattern {
                    number,
                    field,
                    error,
                })
            };
            pattern("", &e.repositories)?;
            pattern("tags: ", &e.tags)?;
            if e.keep == 0 {
                return Err(Invalid::ExportKeepZero { number });
            }
        }
        if self.metrics.listen == Some(self.server.listen) {
            return Err(Invalid::MetricsOnMainListener(self.server.listen));
        }
        if self.server.client_timeout.is_zero() {
            return Err(Invalid::ClientTimeoutZero);
        }
        if self.dns.servers.is_empty() && !self.dns.fallback.is_empty() {
            return Err(Invalid::DnsFallbackWithoutServers);
        }
        for (number, r) in (1..).zip(&self.retention.rules) {
            r.compile()
                .map_err(|error| Invalid::RetentionRule { number, error })?;
            if r.keep_last.is_none() && r.max_age.is_none() {
                return Err(Invalid::RetentionDropsNothing {
                    number,
                    repositories: r.repositories.clone(),
                });
            }
        }
        self.access_rules()?;
        if let (Some(h), FileChecks::Read) = (&self.auth.htpasswd, files) {
            ::auth::Users::load(h).map_err(Invalid::Htpasswd)?;
        }
        if self.scrub.rate == 0 {
            return Err(Invalid::ScrubRateZero);
        }
        if self.gc.lease_ttl < ::upkeep::LEASE_TTL_MIN {
            return Err(Invalid::GcLeaseTooShort);
        }
        let mut probed = std::collections::HashSet::new();
        for p in &self.probes {
            p.validate()?;
            if !probed.insert(p.identity()) {
                return Err(Invalid::Probe {
                    url: p.url.clone(),
                    why: "this registry is probed twice; one [[probe]] per registry".into(),
                });
            }
        }
        let mut names = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        for u in &self.upstreams {
            u.validate()?;
            if !names.insert(u.name.as_str()) || !keys.insert(cache::key_for(&u.name)) {
                return Err(Invalid::UpstreamTwice(u.name.clone()));
            }
            if u.listen == Some(self.server.listen) {
                return Err(Invalid::UpstreamOnMainListener {
                    upstream: u.name.clone(),
                    listen: self.server.listen,
                });
            }
        }
        Ok(())
    }

    /// Load from a file, or the embedded default when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_with(path, FileChecks::Read)
    }

    /// [`Config::load`], reading the files it names or not.
    pub fn load_with(path: Option<&Path>, files: FileChecks) -> Result<Config, ConfigError> {
        let (text, origin) = read(path)?;
        let config = Config::parse_unchecked(&text, &origin)?;
        config.validated(&origin, files)
    }

    /// The `[server]` table of a file (or of the embedded default), the rest unread.
    pub fn load_server(path: Option<&Path>) -> Result<ServerConfig, ConfigError> {
        let (text, origin) = read(path)?;
        let only: ServerOnly = toml::from_str(&text).map_err(|error| ConfigError::Syntax {
            origin: origin.clone(),
            error: Box::new(error),
            hint: "",
        })?;
        only.server
            .tls_files()
            .map_err(|invalid| ConfigError::Invalid { origin, invalid })?;
        Ok(only.server)
    }
}

/// The text of `path`, or of the embedded default, and its name for messages.
fn read(path: Option<&Path>) -> Result<(String, String), ConfigError> {
    match path {
        None => Ok((
            DEFAULT_TOML.to_owned(),
            "the embedded default configuration".to_owned(),
        )),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|error| ConfigError::Read {
                path: p.to_owned(),
                error,
            })?;
            Ok((text, p.display().to_string()))
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
    fn the_container_default_is_the_default_on_every_address_and_the_volume() {
        assert!(DEFAULT_TOML.contains(DEFAULT_LISTEN_LINE));
        assert!(DEFAULT_TOML.contains(DEFAULT_PATH_LINE));
        let text = container_default();
        let c = Config::parse(&text, "container").unwrap();
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:5000");
        assert_eq!(c.storage.path, PathBuf::from("/var/lib/berth"));
        let mut d = Config::load(None).unwrap();
        d.server.listen = c.server.listen;
        d.storage.path = c.storage.path.clone();
        assert_eq!(c, d, "nothing else differs");
    }

    #[test]
    fn health_reads_only_the_server_table_and_hosts_toml_skips_the_users_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("berth.toml");
        // A file berth would refuse: an unknown [gc] key and an htpasswd that is not there.
        std::fs::write(
            &file,
            "[server]\nlisten = \"0.0.0.0:5050\"\n[gc]\nnope = 1\n[auth]\nhtpasswd = \"/nonexistent/htpasswd\"\n",
        )
        .unwrap();
        assert!(Config::load(Some(&file)).is_err());
        let server = Config::load_server(Some(&file)).unwrap();
        assert_eq!(server.listen.to_string(), "0.0.0.0:5050");
        // Without the unknown key: only the users file is missing, which hosts-toml
        // (on a node that mounts berth.toml alone) does not read.
        std::fs::write(
            &file,
            "[auth]\nhtpasswd = \"/nonexistent/htpasswd\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\n",
        )
        .unwrap();
        let e = Config::load(Some(&file)).unwrap_err();
        assert!(
            matches!(
                &e,
                ConfigError::Invalid {
                    invalid: Invalid::Htpasswd(_),
                    ..
                }
            ),
            "{e:?}"
        );
        let c = Config::load_with(Some(&file), FileChecks::Skip).unwrap();
        assert_eq!(c.upstreams.len(), 1);
        // A broken [server] still fails the probe's parse, naming the key.
        std::fs::write(&file, "[server]\ntls_cert = \"/x.pem\"\n").unwrap();
        let e = Config::load_server(Some(&file)).unwrap_err().to_string();
        assert!(e.contains("tls_cert needs tls_key"), "{e}");
    }

    #[test]
    fn errors_are_typed_and_name_their_origin() {
        let e = Config::parse("[server]\nclient_timeout = \"0s\"\n", "mine.toml").unwrap_err();
        assert!(
            matches!(&e, ConfigError::Invalid { origin, invalid: Invalid::ClientTimeoutZero } if origin == "mine.toml"),
            "{e:?}"
        );
        let e = Config::parse(
            "[[access]]\nrepositories = \"**\"\nusers = [\"anonymous\"]\nallow = [\"fly\"]\n",
            "t",
        )
        .unwrap_err();
        assert!(
            matches!(
                &e,
                ConfigError::Invalid {
                    invalid: Invalid::Access { number: 1, error: ::auth::RuleError::UnknownAction(a) },
                    ..
                } if a == "fly"
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "invalid configuration in t: [[access]] #1: unknown action \"fly\": use \"pull\", \"push\" or \"delete\""
        );
        let e = Config::parse("[gc]\ngrace = \"5M\"\n", "t").unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e:?}");
        assert!(e.to_string().contains("\"5M\""), "{e}");
        let e = Config::load(Some(Path::new("/nonexistent/berth.toml"))).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
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
