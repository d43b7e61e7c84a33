//! `[gc]`, `[retention]` (with its `[[retention.rule]]` tables) and `[scrub]`: the
//! schedules and settings of the store's upkeep jobs, defaulting to the `upkeep` crate's
//! constants. It only describes them; the jobs run in `upkeep`.

use super::parse::{de_duration, de_opt_duration, de_size, default_true};
use serde::Deserialize;

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
    /// How long a collection's lease on the store lasts unrenewed: how long a process
    /// killed mid-collection keeps the others (replicas, `berth gc`) from collecting.
    #[serde(default = "default_gc_lease_ttl", deserialize_with = "de_duration")]
    pub lease_ttl: std::time::Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval: default_gc_interval(),
            grace: default_gc_grace(),
            delete_untagged: true,
            lease_ttl: default_gc_lease_ttl(),
        }
    }
}

fn default_gc_lease_ttl() -> std::time::Duration {
    upkeep::LEASE_TTL
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
    pub fn compile(
        &self,
    ) -> Result<upkeep::retention::RetentionRule, upkeep::retention::RetentionRuleError> {
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

impl GcConfig {
    /// How old needed content may get before an operation renews it: a quarter of the
    /// grace period, so content a client checked stays protected for at least three
    /// quarters of it.
    pub fn touch_after(&self) -> std::time::Duration {
        self.grace / 4
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

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
}
