//! Repository patterns as configuration writes them (`team/**`, `docker.io/library/*`):
//! `*` matches within one path component, `**` across components. Shared by access
//! rules, retention rules, break-glass exports and eviction pins so they all read
//! patterns alike.

/// A pattern that does not compile, with the pattern quoted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid repositories pattern {pattern:?}: {reason}")]
pub struct PatternError {
    pub pattern: String,
    pub reason: String,
}

/// A compiled repository pattern.
#[derive(Clone, Debug)]
pub struct RepoPattern {
    source: String,
    matcher: globset::GlobMatcher,
}

impl RepoPattern {
    /// Compile `pattern`; the error quotes it.
    pub fn new(pattern: &str) -> Result<RepoPattern, PatternError> {
        let matcher = globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| PatternError {
                pattern: pattern.to_owned(),
                reason: e.kind().to_string(),
            })?
            .compile_matcher();
        Ok(RepoPattern {
            source: pattern.to_owned(),
            matcher,
        })
    }

    /// Does `name` (a repository or, for tag patterns, a tag) match?
    pub fn matches(&self, name: &str) -> bool {
        self.matcher.is_match(name)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_stays_in_a_component_and_double_star_crosses() {
        let p = RepoPattern::new("team/*").unwrap();
        assert!(p.matches("team/app") && !p.matches("team/a/b") && !p.matches("other/app"));
        let p = RepoPattern::new("team/**").unwrap();
        assert!(p.matches("team/a/b") && p.matches("team/app"));
        assert!(RepoPattern::new("**").unwrap().matches("a/b/c"));
        assert!(RepoPattern::new("team/[").is_err());
    }
}
