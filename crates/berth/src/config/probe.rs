//! `[[probe]]`: registries berth checks on a schedule, as the integrity probe users ran
//! as a CronJob: which registry (URL and credentials), which repositories and tags, how
//! often and how deep. It checks entries and reads password files when asked; it never
//! connects.

use super::Invalid;
use super::parse::de_duration;
use serde::Deserialize;
use std::path::PathBuf;

/// How often a probe runs unless configured: the seed stack's CronJob ran every 15
/// minutes, a HEAD walk of a few hundred images takes seconds.
pub const DEFAULT_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15 * 60);

fn default_probe_interval() -> std::time::Duration {
    DEFAULT_PROBE_INTERVAL
}

/// `[[probe]]`: one registry to check.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// The registry: `https://registry.example.com`, or `http://...` for plain HTTP.
    pub url: String,
    pub username: Option<String>,
    /// File holding the password (a trailing newline is ignored).
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// Repositories to check (patterns; a name without `*` is checked even when the
    /// catalog is closed); empty for the whole catalog.
    #[serde(default)]
    pub repositories: Vec<String>,
    /// Tags to check (patterns: `"v*"`); empty for all.
    #[serde(default)]
    pub tags: Vec<String>,
    /// How often.
    #[serde(default = "default_probe_interval", deserialize_with = "de_duration")]
    pub interval: std::time::Duration,
    /// Download every blob and check its digest (default: HEAD requests).
    #[serde(default)]
    pub deep: bool,
}

impl ProbeConfig {
    /// The registry's `host[:port]`, the probe's name in metrics and on the web page.
    pub fn registry(&self) -> &str {
        self.url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, rest)| rest)
            .trim_end_matches('/')
    }

    /// The registry as the duplicate check compares it: lowercase, default port off.
    pub(super) fn identity(&self) -> String {
        let host = self.registry().to_ascii_lowercase();
        let default = if self.url.starts_with("https://") {
            ":443"
        } else {
            ":80"
        };
        host.strip_suffix(default)
            .map(str::to_owned)
            .unwrap_or(host)
    }

    fn invalid(&self, why: String) -> Invalid {
        Invalid::Probe {
            url: self.url.clone(),
            why,
        }
    }

    pub(super) fn validate(&self) -> Result<(), Invalid> {
        let host = self.registry();
        if !(self.url.starts_with("http://") || self.url.starts_with("https://"))
            || host.is_empty()
            || host.contains('/')
        {
            return Err(self.invalid(
                "url must be http:// or https:// and a registry's address, without a path".into(),
            ));
        }
        // The host names the probe on /metrics and the web page: credentials go in
        // username and a password, never in the URL.
        if host.contains(['@', '?', '#']) {
            return Err(self.invalid(
                "url must not hold credentials, a query or a fragment (use username and password_file)".into(),
            ));
        }
        if self.password_file.is_some() && self.password_env.is_some() {
            return Err(self.invalid("set password_file or password_env, not both".into()));
        }
        if self.username.is_some() != (self.password_file.is_some() || self.password_env.is_some())
        {
            return Err(self.invalid(
                "username and a password (password_file or password_env) go together".into(),
            ));
        }
        self.patterns()?;
        if self.interval.is_zero() {
            return Err(self.invalid("interval must be above zero".into()));
        }
        Ok(())
    }

    /// The compiled repository and tag patterns.
    pub fn patterns(&self) -> Result<(Vec<oci::RepoPattern>, Vec<oci::RepoPattern>), Invalid> {
        let compile = |key: &str, list: &[String]| {
            list.iter()
                .map(|p| oci::RepoPattern::new(p).map_err(|e| self.invalid(format!("{key}: {e}"))))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok((
            compile("repositories", &self.repositories)?,
            compile("tags", &self.tags)?,
        ))
    }

    /// The credentials, reading the password file or variable now.
    pub fn credentials(&self) -> anyhow::Result<Option<distribution::Credentials>> {
        super::upstream::read_credentials(
            &format!("probe {}", self.url),
            self.username.as_deref(),
            self.password_file.as_deref(),
            self.password_env.as_deref(),
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn probes_are_validated_with_the_url_named() {
        let with = |extra: &str| Config::parse(&format!("[[probe]]\n{extra}"), "t");
        let c = with("url = \"https://reg.example.com/\"\nrepositories = [\"team/**\"]\ntags = [\"v*\"]\ninterval = \"5m\"\ndeep = true\n").unwrap();
        assert_eq!(c.probes[0].registry(), "reg.example.com");
        assert_eq!(c.probes[0].interval.as_secs(), 300);
        let d = with("url = \"http://127.0.0.1:5000\"\n").unwrap();
        assert_eq!(d.probes[0].interval, super::DEFAULT_PROBE_INTERVAL);
        for (extra, says) in [
            ("url = \"ftp://x\"\n", "url must be"),
            ("url = \"https://x/some/path\"\n", "without a path"),
            ("url = \"https://x\"\nusername = \"u\"\n", "go together"),
            (
                "url = \"https://x\"\nrepositories = [\"a/[\"]\n",
                "repositories",
            ),
            ("url = \"https://x\"\ninterval = \"0s\"\n", "interval"),
            ("url = \"https://x\"\nnope = 1\n", "nope"),
        ] {
            let e = with(extra).unwrap_err().to_string();
            assert!(e.contains(says), "{extra}: {e}");
        }
        let twice = "[[probe]]\nurl = \"https://x\"\n[[probe]]\nurl = \"http://x/\"\n";
        let e = Config::parse(twice, "t").unwrap_err().to_string();
        assert!(e.contains("probed twice"), "{e}");
    }
}
