//! The typed errors of the configuration: a file that cannot be read, a document that
//! does not parse, a value form that is wrong, and settings that parse but cannot work
//! together. Each message names the section and key to fix and carries the inner error's
//! text (so none is marked `#[source]`: `berth: {e:#}` would print it twice); this module
//! only describes errors, it never checks anything.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("invalid configuration in {origin}: {error}{hint}")]
    Syntax {
        origin: String,
        error: Box<toml::de::Error>,
        /// A line of advice for a common mistake, or empty.
        hint: &'static str,
    },
    #[error("invalid configuration in {origin}: {invalid}")]
    Invalid { origin: String, invalid: Invalid },
}

/// A value that is not of its form: a size or a duration.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ValueError {
    #[error(
        "invalid size {text:?} ({reason}): expected a number with a unit, like \"50GiB\" \
         (B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)"
    )]
    Size { text: String, reason: String },
    #[error("size {text:?} is too large")]
    SizeTooLarge { text: String },
    #[error("invalid duration unit {unit:?} in {text:?}: use s, m, h or d")]
    DurationUnit { text: String, unit: String },
    #[error("duration {text:?} is too long")]
    DurationTooLong { text: String },
    #[error(
        "invalid duration {text:?} ({error}): expected a number with s, m, h or d, like \"5m\""
    )]
    Duration {
        text: String,
        error: humantime::DurationError,
    },
}

/// Settings that parse but cannot work, alone or together. `number` is the 1-based
/// position of a `[[table]]` in the file.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error("[server] tls_cert needs tls_key")]
    TlsCertWithoutKey,
    #[error("[server] tls_key needs tls_cert")]
    TlsKeyWithoutCert,
    #[error("[server] client_timeout must be above zero")]
    ClientTimeoutZero,
    #[error("[gc] lease_ttl must be at least 1s")]
    GcLeaseTooShort,
    #[error(
        "[metrics] listen {0} is the main [server] listen address; leave it out to serve /metrics there"
    )]
    MetricsOnMainListener(SocketAddr),
    #[error(
        "[storage] redirect needs kind = \"s3\": only object storage can hand out presigned URLs"
    )]
    RedirectNeedsS3,
    #[error("[storage] kind = \"s3\" needs bucket")]
    S3WithoutBucket,
    #[error("[storage] access_key_id and secret_access_key go together")]
    S3HalfAKey,
    #[error(
        "[auth] token_key is required with [storage] kind = \"s3\": replicas must share the token signing key"
    )]
    S3WithoutTokenKey,
    #[error("[auth] htpasswd: {0}")]
    Htpasswd(auth::HtpasswdError),
    #[error("[[access]] #{number}: {error}")]
    Access {
        number: usize,
        error: auth::RuleError,
    },
    #[error("{0}")]
    AccessRules(auth::RuleError),
    #[error("[[export]] #{number}: {field}{error}")]
    ExportPattern {
        number: usize,
        /// `"tags: "` for the tags pattern, empty for repositories.
        field: &'static str,
        error: oci::PatternError,
    },
    #[error("[[export]] #{number}: keep must be at least 1")]
    ExportKeepZero { number: usize },
    #[error("[[retention.rule]] #{number}: {error}")]
    RetentionRule {
        number: usize,
        error: upkeep::retention::RetentionRuleError,
    },
    #[error(
        "[[retention.rule]] #{number} ({repositories}): set keep_last or max_age, or the rule drops nothing"
    )]
    RetentionDropsNothing { number: usize, repositories: String },
    #[error("[scrub] rate must be more than 0 bytes per second")]
    ScrubRateZero,
    #[error("[dns] fallback needs servers: the fallback is asked only after the primary servers")]
    DnsFallbackWithoutServers,
    #[error(
        "upstream name {0:?} is not a registry host (lowercase host name or address, optional :port)"
    )]
    UpstreamName(String),
    #[error("[[upstream]] name {0:?} is defined twice")]
    UpstreamTwice(String),
    #[error("upstream {upstream}: pinned: {error}")]
    UpstreamPin {
        upstream: String,
        error: oci::PatternError,
    },
    #[error("upstream {upstream}: repositories: {error}")]
    UpstreamRepositories {
        upstream: String,
        error: oci::PatternError,
    },
    #[error("upstream {upstream}: [[upstream.prefetch]] #{number}: {why}")]
    UpstreamPrefetch {
        upstream: String,
        number: usize,
        why: String,
    },
    #[error("[[probe]] {url}: {why}")]
    Probe { url: String, why: String },
    #[error("upstream {upstream}: {key} {why}")]
    UpstreamLimit {
        upstream: String,
        key: &'static str,
        why: &'static str,
    },
    #[error("upstream {upstream}: url {url:?} must start with http:// or https://")]
    UpstreamUrl { upstream: String, url: String },
    #[error("upstream {0}: set password_file or password_env, not both")]
    UpstreamTwoPasswords(String),
    #[error("upstream {0}: username and a password (password_file or password_env) go together")]
    UpstreamHalfCredentials(String),
    #[error("upstream {upstream}: listen {listen} is the main [server] listen address")]
    UpstreamOnMainListener {
        upstream: String,
        listen: SocketAddr,
    },
}
