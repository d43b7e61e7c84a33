//! `[auth]` and `[[access]]`: where users come from, the token signing key, groups, and
//! the access rules in force (the tables, or the defaults when there are none). It
//! compiles rules with the `auth` crate; it never reads requests or checks passwords.

use super::Config;
use super::Invalid;
use serde::Deserialize;
use std::path::PathBuf;

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
    fn compile(&self) -> Result<auth::AccessRule, auth::RuleError> {
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

impl Config {
    /// The access rules in force: the `[[access]]` tables, or [`DEFAULT_ACCESS`] (with
    /// users) or [`DEFAULT_ACCESS_WITHOUT_USERS`] (without).
    pub fn access_rules(&self) -> Result<auth::AccessRules, Invalid> {
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
                a.compile().map_err(|error| Invalid::Access {
                    number: i + 1,
                    error,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        auth::AccessRules::new(rules, self.auth.groups.clone()).map_err(Invalid::AccessRules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

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
}
