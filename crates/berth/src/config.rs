//! The configuration file: one TOML document, parsed strictly (unknown keys and bad
//! values are refused with the key named), plus the embedded default. It only describes
//! settings; it never opens stores or sockets.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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

/// `[[export]]`: after each push of a matching tag, write the image (every platform of an
/// index) as an OCI-layout tarball, keeping the newest `keep`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// Repository pattern (`team/**`).
    pub repositories: String,
    /// Tag pattern (`v*`, `release-*`); default every tag.
    #[serde(default = "default_export_tags")]
    pub tags: String,
    /// Where tarballs go, as `DIRECTORY/<repository>/<tag>/<UTC time>.tar`.
    pub directory: PathBuf,
    /// How many tarballs to keep per repository and tag.
    #[serde(default = "default_export_keep")]
    pub keep: usize,
}

fn default_export_tags() -> String {
    "*".into()
}

fn default_export_keep() -> usize {
    3
}

/// `[auth]`: where users come from.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// htpasswd file with bcrypt entries (`htpasswd -B`); re-read when it changes.
    pub htpasswd: Option<PathBuf>,
    /// File holding the bearer-token signing key (64 hex digits); default `token.key` in
    /// the storage directory, created on first start.
    pub token_key: Option<PathBuf>,
    /// Groups access rules can name as `@group`: `admins = ["alice"]`.
    #[serde(default)]
    pub groups: std::collections::HashMap<String, Vec<String>>,
}

/// `[[access]]`: what some users may do to some repositories.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// Repository glob: `*` within one component, `**` across (`"team/**"`, `"**"`).
    pub repositories: String,
    /// `"anonymous"` (everyone), `"authenticated"`, user names, or `"@group"`.
    pub users: Vec<String>,
    /// Any of `"pull"`, `"push"`, `"delete"`.
    pub allow: Vec<String>,
}

impl AccessConfig {
    fn compile(&self) -> Result<auth::AccessRule, String> {
        let principals = self
            .users
            .iter()
            .map(|u| u.parse())
            .collect::<Result<Vec<auth::Principal>, _>>()?;
        let actions = self
            .allow
            .iter()
            .map(|a| a.parse())
            .collect::<Result<Vec<auth::Action>, _>>()?;
        auth::AccessRule::new(
            &self.repositories,
            principals,
            auth::ActionSet::of(&actions),
        )
    }
}

/// `[gc]`: garbage collection.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GcConfig {
    /// How often `serve` collects; `"0s"` turns the schedule off (`berth gc` still works).
    #[serde(default = "default_gc_interval", deserialize_with = "de_duration")]
    pub interval: std::time::Duration,
    /// Content written or needed more recently than this is never deleted.
    #[serde(default = "default_gc_grace", deserialize_with = "de_duration")]
    pub grace: std::time::Duration,
    /// Collect manifests of hosted repositories that no tag reaches (never an index's
    /// children nor a live subject's referrers; cached repositories are left to eviction).
    #[serde(default = "default_true")]
    pub delete_untagged: bool,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval: default_gc_interval(),
            grace: default_gc_grace(),
            delete_untagged: true,
        }
    }
}

fn default_gc_interval() -> std::time::Duration {
    upkeep::gc::DEFAULT_INTERVAL
}

fn default_gc_grace() -> std::time::Duration {
    upkeep::gc::DEFAULT_GRACE
}

/// `[retention]`: when rules run, and the rules (`[[retention.rule]]`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// How often `serve` applies the rules; `"0s"` turns the schedule off.
    #[serde(
        default = "default_retention_interval",
        deserialize_with = "de_duration"
    )]
    pub interval: std::time::Duration,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RetentionRuleConfig>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            interval: default_retention_interval(),
            rules: Vec::new(),
        }
    }
}

fn default_retention_interval() -> std::time::Duration {
    upkeep::retention::DEFAULT_INTERVAL
}

/// `[[retention.rule]]`: which tags of matching repositories to keep.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetentionRuleConfig {
    /// Repository glob: `*` within one path component, `**` across (`"team/**"`).
    pub repositories: String,
    /// Keep the N most recently pushed tags (of those `keep_tags` does not protect).
    pub keep_last: Option<usize>,
    /// Tags whose name matches this regex are always kept (`"^v[0-9]"`).
    pub keep_tags: Option<String>,
    /// Keep tags pushed more recently than this (`"30d"`).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub max_age: Option<std::time::Duration>,
}

impl RetentionRuleConfig {
    /// The compiled rule.
    pub fn compile(&self) -> Result<upkeep::retention::RetentionRule, String> {
        upkeep::retention::RetentionRule::new(
            &self.repositories,
            self.keep_last,
            self.keep_tags.as_deref(),
            self.max_age,
        )
    }
}

/// `[scrub]`: the integrity check `serve` runs in the background.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScrubConfig {
    /// How often; `"0s"` turns it off.
    #[serde(default = "default_scrub_interval", deserialize_with = "de_duration")]
    pub interval: std::time::Duration,
    /// Re-hash every blob (reads all stored bytes each time).
    #[serde(default)]
    pub deep: bool,
    /// Most bytes per second a deep scrub reads (`"64MiB"`).
    #[serde(default = "default_scrub_rate", deserialize_with = "de_size")]
    pub rate: u64,
}

impl Default for ScrubConfig {
    fn default() -> Self {
        ScrubConfig {
            interval: default_scrub_interval(),
            deep: false,
            rate: default_scrub_rate(),
        }
    }
}

fn default_scrub_interval() -> std::time::Duration {
    upkeep::fsck::DEFAULT_SCRUB_INTERVAL
}

fn default_scrub_rate() -> u64 {
    upkeep::fsck::DEFAULT_SCRUB_RATE
}

fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = String::deserialize(d)?;
    parse_size(&s).map_err(serde::de::Error::custom)
}

/// `[dns]`: the DNS servers upstream names are resolved with (the system resolver when
/// `servers` is empty).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Primary servers, `"IP"` or `"IP:PORT"`.
    #[serde(default, deserialize_with = "de_servers")]
    pub servers: Vec<SocketAddr>,
    /// Asked when the primary servers time out, refuse or fail.
    #[serde(default, deserialize_with = "de_servers")]
    pub fallback: Vec<SocketAddr>,
}

fn de_servers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .map(|s| {
            s.parse::<SocketAddr>()
                .or_else(|_| {
                    s.parse::<std::net::IpAddr>()
                        .map(|ip| SocketAddr::new(ip, 53))
                })
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "invalid DNS server {s:?}: expected an IP address, optionally with :port"
                    ))
                })
        })
        .collect()
}

/// `[[upstream]]`: one registry berth is a pull-through cache for.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The registry host as users write it: `docker.io`, `ghcr.io`, `127.0.0.1:5000`.
    pub name: String,
    /// Base URL: `https://registry-1.docker.io`, or `http://...` for plain HTTP.
    pub url: String,
    pub username: Option<String>,
    /// File holding the password (a trailing newline is ignored).
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// How long a cached tag is served before it is revalidated upstream.
    #[serde(default = "default_tag_ttl", deserialize_with = "de_duration")]
    pub tag_ttl: std::time::Duration,
    /// A dedicated listener on which every repository belongs to this upstream.
    pub listen: Option<SocketAddr>,
    /// Bytes this upstream's cached content may take (`"50GiB"`); least recently used
    /// content is evicted beyond it.
    #[serde(default, deserialize_with = "de_opt_size")]
    pub max_size: Option<u64>,
    /// Cached content unused this long is evicted (`"30d"`).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub max_idle: Option<std::time::Duration>,
    /// Tags never evicted, as `repo:tag` patterns with `*` (`"library/nginx:*"`).
    #[serde(default)]
    pub pinned: Vec<String>,
}

/// Parse `512MiB`, `50GiB`, `1TB`, `1000` (bytes). Binary (KiB, MiB, GiB, TiB) and
/// decimal (KB, MB, GB, TB) units.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid size {s:?}: expected a number with a unit, like \"50GiB\"")
    })?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "invalid size unit {other:?} in {s:?}: use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

fn de_opt_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let s = String::deserialize(d)?;
    parse_size(&s).map(Some).map_err(serde::de::Error::custom)
}

fn de_opt_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::time::Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn default_tag_ttl() -> std::time::Duration {
    cache::DEFAULT_TAG_TTL
}

/// Parse `90s`, `5m`, `2h`, `7d` (or a plain number of seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid duration {s:?}: expected a number with s, m, h or d, like \"5m\"")
    })?;
    let mult: u64 = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {s:?}: use s, m, h or d"
            ));
        }
    };
    // Found by the config fuzz target: `13350170495401940308m` overflowed the multiply.
    let secs = n
        .checked_mul(mult)
        .ok_or_else(|| format!("duration {s:?} is too long"))?;
    Ok(std::time::Duration::from_secs(secs))
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

impl UpstreamConfig {
    /// Check what serde cannot: the name's form, the URL's scheme, credentials.
    fn validate(&self) -> Result<(), String> {
        let n = &self.name;
        let (host, port) = match n.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (n.as_str(), None),
        };
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            && !host.starts_with(['.', '-'])
            && !host.ends_with(['.', '-']);
        let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok());
        if !host_ok
            || !port_ok
            || format!("{}/x", cache::key_for(n))
                .parse::<oci::RepoName>()
                .is_err()
        {
            return Err(format!(
                "upstream name {n:?} is not a registry host (lowercase host name or address, optional :port)"
            ));
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!(
                "upstream {n}: url {:?} must start with http:// or https://",
                self.url
            ));
        }
        if self.password_file.is_some() && self.password_env.is_some() {
            return Err(format!(
                "upstream {n}: set password_file or password_env, not both"
            ));
        }
        let has_password = self.password_file.is_some() || self.password_env.is_some();
        if has_password != self.username.is_some() {
            return Err(format!(
                "upstream {n}: username and a password (password_file or password_env) go together"
            ));
        }
        Ok(())
    }

    /// The credentials, reading the password file or variable now.
    pub fn credentials(&self) -> anyhow::Result<Option<upstream::Credentials>> {
        let Some(username) = &self.username else {
            return Ok(None);
        };
        let password = match (&self.password_file, &self.password_env) {
            (Some(f), _) => std::fs::read_to_string(f)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "upstream {}: cannot read password_file {}: {e}",
                        self.name,
                        f.display()
                    )
                })?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
            (None, Some(v)) => std::env::var(v).map_err(|_| {
                anyhow::anyhow!(
                    "upstream {}: environment variable {v} (password_env) is not set",
                    self.name
                )
            })?,
            (None, None) => unreachable!("validated: a username comes with a password"),
        };
        Ok(Some(upstream::Credentials {
            username: username.clone(),
            password,
        }))
    }
}

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
    pub fn tls_files(&self) -> Result<Option<server::TlsFiles>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(server::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            })),
            (None, None) => Ok(None),
            (Some(_), None) => Err("[server] tls_cert needs tls_key".into()),
            (None, Some(_)) => Err("[server] tls_key needs tls_cert".into()),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5000))
}

/// Which storage backend.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    Fs,
    S3,
}

/// `[storage]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(default = "default_kind")]
    pub kind: StorageKind,
    /// Directory of the filesystem store (relative paths are relative to the working
    /// directory).
    #[serde(default = "default_path")]
    pub path: PathBuf,
    /// fsync data and directories before acknowledging a write.
    #[serde(default = "default_true")]
    pub fsync: bool,
    /// S3: the bucket.
    pub bucket: Option<String>,
    /// S3: the endpoint URL (`http://127.0.0.1:8333`); AWS when absent.
    pub endpoint: Option<String>,
    /// S3: the region (`us-east-1` when absent and not in the environment).
    pub region: Option<String>,
    /// S3: keys live under this prefix of the bucket.
    pub prefix: Option<String>,
    /// S3: access key; otherwise `AWS_ACCESS_KEY_ID` and the usual AWS chain.
    pub access_key_id: Option<String>,
    /// S3: secret key; otherwise `AWS_SECRET_ACCESS_KEY` and the usual AWS chain.
    pub secret_access_key: Option<String>,
    /// S3: put the bucket in the path instead of the host name. Unset: path style
    /// whenever `endpoint` is set (every self-hosted server takes it), virtual-host
    /// style for AWS without one.
    #[serde(default)]
    pub path_style: Option<bool>,
    /// S3: answer blob GETs with a 307 to a presigned URL, so bytes flow from the bucket
    /// to clients without passing through berth (clients must reach the endpoint).
    #[serde(default)]
    pub redirect: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            kind: default_kind(),
            path: default_path(),
            fsync: true,
            bucket: None,
            endpoint: None,
            region: None,
            prefix: None,
            access_key_id: None,
            secret_access_key: None,
            path_style: None,
            redirect: false,
        }
    }
}

impl StorageConfig {
    /// The S3 options, for `kind = "s3"`.
    pub fn s3(&self) -> Result<store::s3::S3Options, String> {
        let bucket = self
            .bucket
            .clone()
            .filter(|b| !b.is_empty())
            .ok_or("[storage] kind = \"s3\" needs bucket")?;
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err("[storage] access_key_id and secret_access_key go together".into());
        }
        Ok(store::s3::S3Options {
            bucket,
            endpoint: self.endpoint.clone(),
            region: self.region.clone().or_else(|| Some("us-east-1".into())),
            prefix: self.prefix.clone(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            path_style: self.path_style.unwrap_or(self.endpoint.is_some()),
        })
    }
}

fn default_kind() -> StorageKind {
    StorageKind::Fs
}

fn default_path() -> PathBuf {
    PathBuf::from("./berth-data")
}

fn default_true() -> bool {
    true
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[log]`
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
}

/// The rules in force when the file has no `[[access]]`: everyone may pull (hosted and
/// cached repositories); users from `[auth] htpasswd` may also push. Deleting needs an
/// explicit rule. Without users nobody can push: configure users, or a rule such as
/// `{ repositories = "**", users = ["anonymous"], allow = ["pull", "push"] }` on a
/// trusted network.
pub const DEFAULT_ACCESS: [(&str, &str, &[&str]); 2] = [
    ("**", "authenticated", &["pull", "push"]),
    ("**", "anonymous", &["pull"]),
];

/// The rules when there are neither `[[access]]` tables nor users (`[auth] htpasswd`):
/// anyone may pull and push, as distribution and zot do out of the box, so a first run
/// works with any client; deleting still needs a rule. `serve` warns when such a
/// listener is reachable from other hosts.
pub const DEFAULT_ACCESS_WITHOUT_USERS: [(&str, &str, &[&str]); 1] =
    [("**", "anonymous", &["pull", "push"])];

impl GcConfig {
    /// How old needed content may get before an operation renews it: a quarter of the
    /// grace period, so content a client checked stays protected for at least three
    /// quarters of it.
    pub fn touch_after(&self) -> std::time::Duration {
        self.grace / 4
    }
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
            auth::Users::load(h).map_err(|e| format!("[auth] htpasswd: {e}"))?;
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

    /// The access rules in force: the `[[access]]` tables, or [`DEFAULT_ACCESS`] (with
    /// users) or [`DEFAULT_ACCESS_WITHOUT_USERS`] (without).
    pub fn access_rules(&self) -> Result<auth::AccessRules, String> {
        let defaults: Vec<AccessConfig>;
        let tables = if self.access.is_empty() {
            let chosen: &[(&str, &str, &[&str])] = if self.auth.htpasswd.is_none() {
                &DEFAULT_ACCESS_WITHOUT_USERS
            } else {
                &DEFAULT_ACCESS
            };
            defaults = chosen
                .iter()
                .map(|(r, u, a)| AccessConfig {
                    repositories: (*r).to_owned(),
                    users: vec![(*u).to_owned()],
                    allow: a.iter().map(|s| (*s).to_owned()).collect(),
                })
                .collect();
            &defaults
        } else {
            &self.access
        };
        let rules = tables
            .iter()
            .enumerate()
            .map(|(i, a)| {
                a.compile()
                    .map_err(|e| format!("[[access]] #{}: {e}", i + 1))
            })
            .collect::<Result<Vec<_>, _>>()?;
        auth::AccessRules::new(rules, self.auth.groups.clone())
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

    #[test]
    fn without_users_anyone_may_push_and_an_exposed_listener_is_warned_about() {
        let repo: oci::RepoName = "team/app".parse().unwrap();
        let mut c = Config::load(None).unwrap();
        let open = c
            .access_rules()
            .unwrap()
            .allowed(&auth::Subject::Anonymous, &repo);
        assert!(open.contains(auth::Action::Pull) && open.contains(auth::Action::Push));
        assert!(
            !open.contains(auth::Action::Delete),
            "deleting still needs a rule"
        );
        assert_eq!(crate::open_registry_warning(&c), None, "loopback only");
        c.server.listen = "0.0.0.0:5000".parse().unwrap();
        let warning = crate::open_registry_warning(&c).unwrap();
        assert!(warning.contains("0.0.0.0:5000") && warning.contains("[auth] htpasswd"));
        // Once users exist, pushing needs one.
        c.auth.htpasswd = Some(PathBuf::from("/etc/berth/htpasswd"));
        let anon = c
            .access_rules()
            .unwrap()
            .allowed(&auth::Subject::Anonymous, &repo);
        assert!(anon.contains(auth::Action::Pull) && !anon.contains(auth::Action::Push));
        assert_eq!(crate::open_registry_warning(&c), None);
    }

    #[test]
    fn durations_and_sizes_too_large_for_a_u64_are_refused() {
        assert!(
            parse_duration("13350170495401940308m")
                .unwrap_err()
                .contains("too long")
        );
        assert_eq!(
            parse_duration("2h").unwrap(),
            std::time::Duration::from_secs(7200)
        );
        assert!(
            parse_size("18446744073709551615KiB")
                .unwrap_err()
                .contains("too large")
        );
    }

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
            include_str!("../../../config/berth.example.toml"),
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

    #[test]
    fn gc_retention_and_scrub_are_validated() {
        let c = Config::load(None).unwrap();
        assert_eq!(c.gc.grace.as_secs(), 3600);
        assert!(c.gc.delete_untagged);
        assert_eq!(c.scrub.interval.as_secs(), 900);
        let c = Config::parse(
            "[retention]\ninterval = \"10m\"\n[[retention.rule]]\nrepositories = \"team/**\"\nkeep_last = 3\nkeep_tags = \"^v\"\nmax_age = \"30d\"\n",
            "t",
        )
        .unwrap();
        let rule = c.retention.rules[0].compile().unwrap();
        assert_eq!(rule.keep_last, Some(3));
        for (text, named) in [
            ("[[retention]]\nrepositories = \"a\"\n", "retention.rule"),
            (
                "[[retention.rule]]\nrepositories = \"a\"\nkeep_tags = \"(\"\nkeep_last = 1\n",
                "keep_tags",
            ),
            (
                "[[retention.rule]]\nrepositories = \"a/[\"\nkeep_last = 1\n",
                "repositories",
            ),
            (
                "[[retention.rule]]\nrepositories = \"a\"\nkeep_tags = \"^v\"\n",
                "keep_last or max_age",
            ),
            (
                "[[retention.rule]]\nrepositories = \"a\"\nkeep_last = -1\n",
                "keep_last",
            ),
            ("[gc]\ngrace = \"soon\"\n", "grace"),
            ("[gc]\ndelete_untagged = \"yes\"\n", "delete_untagged"),
            ("[scrub]\nrate = \"0\"\n", "rate"),
            ("[scrub]\nspeed = 1\n", "speed"),
        ] {
            let e = Config::parse(text, "t").unwrap_err().to_string();
            assert!(e.contains(named), "{text}: {e}");
        }
    }

    #[test]
    fn upstream_entries_are_validated() {
        let base = "[[upstream]]\nname = \"NAME\"\nurl = \"URL\"\n";
        let ok = |name: &str, url: &str| {
            Config::parse(&base.replace("NAME", name).replace("URL", url), "t")
        };
        assert!(ok("reg.kyverno.io", "https://reg.kyverno.io").is_ok());
        assert!(ok("127.0.0.1:5000", "http://127.0.0.1:5000").is_ok());
        for (name, url) in [
            ("Docker.io", "https://x"),
            ("a/b", "https://x"),
            ("x:notaport", "https://x"),
            ("ok.io", "ftp://x"),
        ] {
            let e = ok(name, url).unwrap_err().to_string();
            assert!(e.contains(name) || e.contains(url), "{e}");
        }
        let twice = format!(
            "{}{}",
            base.replace("NAME", "a.io").replace("URL", "https://a"),
            base.replace("NAME", "a.io").replace("URL", "https://b")
        );
        assert!(
            Config::parse(&twice, "t")
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        let e = Config::parse(
            &format!(
                "{}username = \"u\"\n",
                base.replace("NAME", "a.io").replace("URL", "https://a")
            ),
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("password"), "{e}");
        let e = Config::parse(
            &format!(
                "{}tag_ttl = \"5 weeks\"\n",
                base.replace("NAME", "a.io").replace("URL", "https://a")
            ),
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("tag_ttl") || e.contains("duration"), "{e}");
        assert_eq!(parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(parse_size("50GiB").unwrap(), 50 << 30);
        assert_eq!(parse_size("1TB").unwrap(), 1_000_000_000_000);
        assert!(parse_size("5 parsecs").is_err());
        let e = Config::parse(
            &format!(
                "{}max_size = \"lots\"\n",
                base.replace("NAME", "a.io").replace("URL", "https://a")
            ),
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("max_size") || e.contains("lots"), "{e}");
        assert_eq!(parse_duration("2h").unwrap().as_secs(), 7200);
    }
}
