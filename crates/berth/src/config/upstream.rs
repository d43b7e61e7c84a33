//! `[[upstream]]` and `[dns]`: the registries berth caches (name, URL, credentials, tag
//! TTL, dedicated listener, eviction limits) and the DNS servers their names are resolved
//! with. It checks entries and reads password files when asked; it never connects.

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
}

fn default_tag_ttl() -> std::time::Duration {
    cache::DEFAULT_TAG_TTL
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

    /// The credentials, reading the password file or variable now.
    pub fn credentials(&self) -> anyhow::Result<Option<distribution::Credentials>> {
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
        Ok(Some(distribution::Credentials {
            username: username.clone(),
            password,
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, parse_duration, parse_size};

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
