//! `[[upstream]]` and `[dns]`: the registries berth caches (name, URL, credentials, tag
//! TTL, dedicated listener, eviction limits, allow-list, request limits and circuit
//! breaker) and the DNS servers their names are resolved with. It checks entries and
//! reads password files when asked; it never connects.

use super::Invalid;
use super::parse::{de_duration, de_opt_duration, de_opt_size};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

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
    /// Tags never evicted, as `repo:tag` patterns (`"library/nginx:*"`, `"**:stable"`):
    /// `*` within a path component, `**` across, as in access rules.
    #[serde(default)]
    pub pinned: Vec<String>,
    /// The upstream repositories clients may pull, as the upstream names them
    /// (`"library/*"`, `"kyverno/**"`); empty (the default) for all. Anything else is
    /// refused with 403 DENIED without asking the upstream.
    #[serde(default)]
    pub repositories: Vec<String>,
    /// Upstream requests in flight at once (a blob download counts until it ends);
    /// no limit when absent.
    pub max_concurrent: Option<usize>,
    /// Upstream requests started per second (`0.5` is one every two seconds); no limit
    /// when absent.
    pub max_rate: Option<f64>,
    /// Requests that may wait for `max_concurrent` or `max_rate`; beyond it a request
    /// is answered 503 with Retry-After at once.
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
    /// Failed upstream requests in a row (unreachable, 5xx) after which the upstream is
    /// marked down: cached content is served at once, nothing is sent.
    #[serde(default = "default_down_after")]
    pub down_after: u32,
    /// How long a down upstream is left alone before one request probes it.
    #[serde(default = "default_down_for", deserialize_with = "de_duration")]
    pub down_for: std::time::Duration,
    /// `[[upstream.prefetch]]`: images kept cached and fresh without a client asking.
    #[serde(default)]
    pub prefetch: Vec<PrefetchConfig>,
}

/// `[[upstream.prefetch]]`: one set of images an upstream's cache keeps fresh.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrefetchConfig {
    /// Upstream repositories: names (`"library/nginx"`) or patterns (`"kyverno/*"`,
    /// matched against the upstream's catalog).
    pub repositories: Vec<String>,
    /// These tags; or
    #[serde(default)]
    pub tags: Vec<String>,
    /// every listed tag matching this regex; or
    pub tags_regex: Option<String>,
    /// every tag that reads as a version in this range (`">=1.27, <2"`).
    pub tags_semver: Option<String>,
    /// `os/arch[/variant]` of an index's images to fetch; empty for all.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// How often the rule runs (the first run is at start).
    #[serde(
        default = "default_prefetch_interval",
        deserialize_with = "de_duration"
    )]
    pub interval: std::time::Duration,
}

/// How often a prefetch rule runs unless configured: each run costs a HEAD per tag
/// whose TTL has passed (and a tag list per pattern), which an hour keeps far below any
/// upstream's rate limit while a new release arrives the same hour.
pub const DEFAULT_PREFETCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

fn default_prefetch_interval() -> std::time::Duration {
    DEFAULT_PREFETCH_INTERVAL
}

impl PrefetchConfig {
    /// The compiled rule; the error says what is wrong, for [`Invalid::UpstreamPrefetch`].
    fn rule(&self) -> Result<cache::PrefetchRule, String> {
        if self.repositories.is_empty() {
            return Err("repositories: name at least one repository".into());
        }
        let repositories = self
            .repositories
            .iter()
            .map(|p| oci::RepoPattern::new(p).map_err(|e| format!("repositories: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let tags = match (&self.tags[..], &self.tags_regex, &self.tags_semver) {
            (t, None, None) if !t.is_empty() => cache::TagFilter::List(
                t.iter()
                    .map(|t| {
                        t.parse::<oci::Tag>()
                            .map_err(|e| format!("tags: {t:?}: {e}"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            ([], Some(r), None) => cache::TagFilter::Regex(
                regex::Regex::new(r).map_err(|e| format!("tags_regex {r:?}: {e}"))?,
            ),
            ([], None, Some(v)) => cache::TagFilter::Semver(
                semver::VersionReq::parse(v).map_err(|e| format!("tags_semver {v:?}: {e}"))?,
            ),
            _ => return Err("set exactly one of tags, tags_regex or tags_semver".into()),
        };
        for p in &self.platforms {
            let parts: Vec<&str> = p.split('/').collect();
            if !(2..=3).contains(&parts.len()) || parts.iter().any(|s| s.is_empty()) {
                return Err(format!(
                    "platforms: {p:?} is not os/arch[/variant] (\"linux/amd64\", \"linux/arm/v7\")"
                ));
            }
        }
        if self.interval.is_zero() {
            return Err("interval must be above zero".into());
        }
        Ok(cache::PrefetchRule {
            number: 0,
            repositories,
            tags,
            platforms: self.platforms.clone(),
            interval: self.interval,
        })
    }
}

fn default_tag_ttl() -> std::time::Duration {
    cache::DEFAULT_TAG_TTL
}

fn default_max_queue() -> usize {
    cache::gate::DEFAULT_MAX_QUEUE
}

fn default_down_after() -> u32 {
    cache::gate::DEFAULT_DOWN_AFTER
}

fn default_down_for() -> std::time::Duration {
    cache::gate::DEFAULT_DOWN_FOR
}

impl UpstreamConfig {
    /// Check what serde cannot: the name's form, the URL's scheme, credentials.
    pub(super) fn validate(&self) -> Result<(), Invalid> {
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
            return Err(Invalid::UpstreamName(n.clone()));
        }
        for p in &self.pinned {
            cache::Pin::new(p).map_err(|error| Invalid::UpstreamPin {
                upstream: n.clone(),
                error,
            })?;
        }
        self.repository_patterns()?;
        self.prefetch_rules()?;
        if self.max_concurrent == Some(0) {
            return Err(Invalid::UpstreamLimit {
                upstream: n.clone(),
                key: "max_concurrent",
                why: "must be at least 1 (leave it out for no limit)",
            });
        }
        if self.max_rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            return Err(Invalid::UpstreamLimit {
                upstream: n.clone(),
                key: "max_rate",
                why: "must be a number of requests per second above 0 (leave it out for no limit)",
            });
        }
        if self.down_after == 0 {
            return Err(Invalid::UpstreamLimit {
                upstream: n.clone(),
                key: "down_after",
                why: "must be at least 1 failure",
            });
        }
        if self.down_for.is_zero() {
            return Err(Invalid::UpstreamLimit {
                upstream: n.clone(),
                key: "down_for",
                why: "must be above zero",
            });
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(Invalid::UpstreamUrl {
                upstream: n.clone(),
                url: self.url.clone(),
            });
        }
        if self.password_file.is_some() && self.password_env.is_some() {
            return Err(Invalid::UpstreamTwoPasswords(n.clone()));
        }
        let has_password = self.password_file.is_some() || self.password_env.is_some();
        if has_password != self.username.is_some() {
            return Err(Invalid::UpstreamHalfCredentials(n.clone()));
        }
        Ok(())
    }

    /// A repository name or pattern as the upstream names it: on Docker Hub a
    /// one-component name (`nginx`) is `library/nginx`, as clients pull it.
    fn upstream_name(&self, p: &str) -> String {
        if self.name == "docker.io" && !p.contains('/') && !p.contains('*') {
            format!("library/{p}")
        } else {
            p.to_owned()
        }
    }

    /// The compiled allow-list (`repositories`).
    pub fn repository_patterns(&self) -> Result<Vec<oci::RepoPattern>, Invalid> {
        self.repositories
            .iter()
            .map(|p| {
                oci::RepoPattern::new(&self.upstream_name(p)).map_err(|error| {
                    Invalid::UpstreamRepositories {
                        upstream: self.name.clone(),
                        error,
                    }
                })
            })
            .collect()
    }

    /// The compiled `[[upstream.prefetch]]` rules.
    pub fn prefetch_rules(&self) -> Result<Vec<cache::PrefetchRule>, Invalid> {
        (1..)
            .zip(&self.prefetch)
            .map(|(number, p)| {
                let p = PrefetchConfig {
                    repositories: p
                        .repositories
                        .iter()
                        .map(|r| self.upstream_name(r))
                        .collect(),
                    ..p.clone()
                };
                p.rule()
                    .map(|rule| cache::PrefetchRule { number, ..rule })
                    .map_err(|why| Invalid::UpstreamPrefetch {
                        upstream: self.name.clone(),
                        number,
                        why,
                    })
            })
            .collect()
    }

    /// The request limits and circuit breaker.
    pub fn limits(&self) -> cache::Limits {
        cache::Limits {
            max_concurrent: self.max_concurrent,
            max_rate: self.max_rate,
            max_queue: self.max_queue,
            down_after: self.down_after,
            down_for: self.down_for,
        }
    }

    /// The credentials, reading the password file or variable now.
    pub fn credentials(&self) -> anyhow::Result<Option<distribution::Credentials>> {
        read_credentials(
            &format!("upstream {}", self.name),
            self.username.as_deref(),
            self.password_file.as_deref(),
            self.password_env.as_deref(),
        )
    }
}

/// A username with the password from its file or environment variable, read now; `who`
/// names the table in errors. Validation has made sure a username comes with one.
pub(super) fn read_credentials(
    who: &str,
    username: Option<&str>,
    password_file: Option<&std::path::Path>,
    password_env: Option<&str>,
) -> anyhow::Result<Option<distribution::Credentials>> {
    let Some(username) = username else {
        return Ok(None);
    };
    let password = match (password_file, password_env) {
        (Some(f), _) => std::fs::read_to_string(f)
            .map_err(|e| anyhow::anyhow!("{who}: cannot read password_file {}: {e}", f.display()))?
            .trim_end_matches(['\n', '\r'])
            .to_owned(),
        (None, Some(v)) => std::env::var(v).map_err(|_| {
            anyhow::anyhow!("{who}: environment variable {v} (password_env) is not set")
        })?,
        (None, None) => unreachable!("validated: a username comes with a password"),
    };
    Ok(Some(distribution::Credentials {
        username: username.to_owned(),
        password,
    }))
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, parse_duration, parse_size};

    #[test]
    fn allow_lists_limits_and_the_breaker_are_validated_with_the_key_named() {
        let with = |extra: &str| {
            Config::parse(
                &format!("[[upstream]]\nname = \"a.io\"\nurl = \"https://a\"\n{extra}"),
                "t",
            )
        };
        let c = with("repositories = [\"library/*\"]\nmax_concurrent = 4\nmax_rate = 0.5\nmax_queue = 10\ndown_after = 3\ndown_for = \"10s\"\n").unwrap();
        let u = &c.upstreams[0];
        assert_eq!(u.repository_patterns().unwrap().len(), 1);
        let l = u.limits();
        assert_eq!(
            (
                l.max_concurrent,
                l.max_rate,
                l.max_queue,
                l.down_after,
                l.down_for
            ),
            (
                Some(4),
                Some(0.5),
                10,
                3,
                std::time::Duration::from_secs(10)
            )
        );
        let d = with("").unwrap().upstreams[0].limits();
        assert_eq!(d, cache::Limits::default());
        for (extra, key) in [
            ("max_concurrent = 0\n", "max_concurrent"),
            ("max_rate = 0\n", "max_rate"),
            ("max_rate = -2.5\n", "max_rate"),
            ("down_after = 0\n", "down_after"),
            ("down_for = \"0s\"\n", "down_for"),
            ("repositories = [\"lib/[\"]\n", "repositories"),
            ("max_queue = -1\n", "max_queue"),
        ] {
            let e = with(extra).unwrap_err().to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
    }

    #[test]
    fn docker_hub_one_component_names_are_library_names() {
        let c = Config::parse(
            "[[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\n\
             repositories = [\"nginx\", \"bitnami/*\", \"*\"]\n\
             [[upstream.prefetch]]\nrepositories = [\"redis\"]\ntags = [\"7\"]\n\
             [[upstream]]\nname = \"ghcr.io\"\nurl = \"https://ghcr.io\"\nrepositories = [\"nginx\"]\n",
            "t",
        )
        .unwrap();
        let hub = c.upstreams[0].repository_patterns().unwrap();
        let names: Vec<&str> = hub.iter().map(|p| p.as_str()).collect();
        assert_eq!(names, ["library/nginx", "bitnami/*", "*"]);
        let rules = c.upstreams[0].prefetch_rules().unwrap();
        assert!(rules[0].covers("library/redis", "7"));
        assert_eq!(rules[0].number, 1);
        let ghcr = c.upstreams[1].repository_patterns().unwrap();
        assert_eq!(ghcr[0].as_str(), "nginx", "only Docker Hub has library/");
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
