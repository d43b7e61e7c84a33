//! Access rules: `[[access]]` entries tried in order; the first rule whose pattern matches
//! the repository *and* whose users include the caller decides, and no match means no
//! access. So `**` for `authenticated` (pull, push) followed by `**` for `anonymous`
//! (pull) gives users push and everyone else pull, as a firewall's rule list would.

use crate::Subject;
use oci::RepoName;
use std::collections::HashMap;
use std::fmt;

/// One thing a client may do to a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Action::Pull => 1,
            Action::Push => 2,
            Action::Delete => 4,
        }
    }
}

impl std::str::FromStr for Action {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Action, RuleError> {
        match s {
            "pull" => Ok(Action::Pull),
            "push" => Ok(Action::Push),
            "delete" => Ok(Action::Delete),
            other => Err(RuleError::UnknownAction(other.to_owned())),
        }
    }
}

/// Why an access rule does not compile; each message names the offending part.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("unknown action {0:?}: use \"pull\", \"push\" or \"delete\"")]
    UnknownAction(String),
    #[error("empty user name in an access rule")]
    EmptyUser,
    #[error("invalid user name {0:?} in an access rule")]
    InvalidUser(String),
    #[error(transparent)]
    Pattern(#[from] oci::PatternError),
    #[error("the access rule for {repositories:?} names no users")]
    NoUsers { repositories: String },
    #[error(
        "the access rule for {repositories:?} names group @{group}, which [auth.groups] does not define"
    )]
    UndefinedGroup { repositories: String, group: String },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of actions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActionSet(u8);

impl ActionSet {
    pub const NONE: ActionSet = ActionSet(0);

    pub fn of(actions: &[Action]) -> ActionSet {
        ActionSet(actions.iter().fold(0, |acc, a| acc | a.bit()))
    }

    pub fn contains(self, a: Action) -> bool {
        self.0 & a.bit() != 0
    }

    /// The actions of either set.
    pub fn union(self, other: ActionSet) -> ActionSet {
        ActionSet(self.0 | other.0)
    }

    /// The actions of both sets.
    pub fn intersect(self, other: ActionSet) -> ActionSet {
        ActionSet(self.0 & other.0)
    }

    /// The actions in the set, in a fixed order (pull, push, delete).
    pub fn iter(self) -> impl Iterator<Item = Action> {
        [Action::Pull, Action::Push, Action::Delete]
            .into_iter()
            .filter(move |a| self.contains(*a))
    }
}

/// Whom a rule grants to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// Clients without credentials (and, since they could drop them, everyone).
    Anonymous,
    /// Any user with verified credentials.
    Authenticated,
    /// One named user.
    User(String),
    /// Every member of a group defined in `[auth.groups]`.
    Group(String),
}

impl std::str::FromStr for Principal {
    type Err = RuleError;
    /// `anonymous`, `authenticated`, `@group`, or a user name.
    fn from_str(s: &str) -> Result<Principal, RuleError> {
        match s {
            "" => Err(RuleError::EmptyUser),
            "anonymous" => Ok(Principal::Anonymous),
            "authenticated" => Ok(Principal::Authenticated),
            g if g.starts_with('@') && g.len() > 1 => Ok(Principal::Group(g[1..].to_owned())),
            u if u.contains(':') || u.chars().any(char::is_whitespace) => {
                Err(RuleError::InvalidUser(u.to_owned()))
            }
            u => Ok(Principal::User(u.to_owned())),
        }
    }
}

/// One `[[access]]` entry.
#[derive(Clone, Debug)]
pub struct AccessRule {
    /// The pattern as written, for messages.
    pub repositories: String,
    matcher: oci::RepoPattern,
    pub principals: Vec<Principal>,
    pub allow: ActionSet,
}

impl AccessRule {
    /// Compile a rule; the error says what is wrong.
    pub fn new(
        repositories: &str,
        principals: Vec<Principal>,
        allow: ActionSet,
    ) -> Result<AccessRule, RuleError> {
        let matcher = oci::RepoPattern::new(repositories)?;
        if principals.is_empty() {
            return Err(RuleError::NoUsers {
                repositories: repositories.to_owned(),
            });
        }
        Ok(AccessRule {
            repositories: repositories.to_owned(),
            matcher,
            principals,
            allow,
        })
    }

    fn matches(&self, repo: &str) -> bool {
        self.matcher.matches(repo)
    }
}

/// The ordered rules and the groups they may name.
#[derive(Clone, Debug, Default)]
pub struct AccessRules {
    rules: Vec<AccessRule>,
    groups: HashMap<String, Vec<String>>,
}

impl AccessRules {
    /// Rules in order of precedence; every group a rule names must be in `groups`.
    pub fn new(
        rules: Vec<AccessRule>,
        groups: HashMap<String, Vec<String>>,
    ) -> Result<AccessRules, RuleError> {
        for r in &rules {
            for p in &r.principals {
                if let Principal::Group(g) = p
                    && !groups.contains_key(g)
                {
                    return Err(RuleError::UndefinedGroup {
                        repositories: r.repositories.clone(),
                        group: g.clone(),
                    });
                }
            }
        }
        Ok(AccessRules { rules, groups })
    }

    fn applies_to(&self, p: &Principal, who: &Subject) -> bool {
        match (p, who) {
            (Principal::Anonymous, _) => true,
            (Principal::Authenticated, Subject::User(_)) => true,
            (Principal::User(u), Subject::User(name)) => u == name,
            (Principal::Group(g), Subject::User(name)) => self
                .groups
                .get(g)
                .is_some_and(|members| members.iter().any(|m| m == name)),
            _ => false,
        }
    }

    /// What `who` may do to `repo`: the grants of the first rule that matches both, or
    /// nothing when none does.
    pub fn allowed(&self, who: &Subject, repo: &RepoName) -> ActionSet {
        self.rules
            .iter()
            .find(|r| {
                r.matches(repo.as_str()) && r.principals.iter().any(|p| self.applies_to(p, who))
            })
            .map_or(ActionSet::NONE, |r| r.allow)
    }

    /// May `who` do `action` to `repo`?
    pub fn permits(&self, who: &Subject, repo: &RepoName, action: Action) -> bool {
        self.allowed(who, repo).contains(action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str, users: &[&str], allow: &[Action]) -> AccessRule {
        AccessRule::new(
            pattern,
            users.iter().map(|u| u.parse().unwrap()).collect(),
            ActionSet::of(allow),
        )
        .unwrap()
    }

    fn repo(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    #[test]
    fn first_matching_rule_decides_and_no_match_means_nothing() {
        use Action::*;
        let groups = HashMap::from([("admins".to_owned(), vec!["root".to_owned()])]);
        let rules = AccessRules::new(
            vec![
                rule("team/**", &["alice", "@admins"], &[Pull, Push]),
                rule("docker.io/**", &["anonymous"], &[Pull]),
                rule("**", &["authenticated"], &[Pull]),
            ],
            groups,
        )
        .unwrap();
        let alice = Subject::User("alice".into());
        let bob = Subject::User("bob".into());
        let root = Subject::User("root".into());
        let anon = Subject::Anonymous;
        assert_eq!(
            rules.allowed(&alice, &repo("team/app")),
            ActionSet::of(&[Pull, Push])
        );
        assert_eq!(
            rules.allowed(&root, &repo("team/a/b")),
            ActionSet::of(&[Pull, Push])
        );
        // bob is not among the first rule's users: the later `**` decides for him.
        assert_eq!(
            rules.allowed(&bob, &repo("team/app")),
            ActionSet::of(&[Pull])
        );
        // An earlier rule wins over a later, broader one for the same caller.
        let ordered = AccessRules::new(
            vec![
                rule("team/secret", &["authenticated"], &[]),
                rule("team/**", &["authenticated"], &[Pull]),
            ],
            HashMap::new(),
        )
        .unwrap();
        assert_eq!(ordered.allowed(&bob, &repo("team/secret")), ActionSet::NONE);
        assert!(ordered.permits(&bob, &repo("team/open"), Pull));
        assert!(rules.permits(&anon, &repo("docker.io/library/nginx"), Pull));
        assert!(!rules.permits(&anon, &repo("docker.io/library/nginx"), Push));
        assert!(!rules.permits(&anon, &repo("other/x"), Pull));
        assert!(rules.permits(&bob, &repo("other/x"), Pull));
        assert!(!rules.permits(&alice, &repo("other/x"), Push));
        // `*` stays within one component.
        let one =
            AccessRules::new(vec![rule("team/*", &["alice"], &[Pull])], HashMap::new()).unwrap();
        assert!(one.permits(&alice, &repo("team/app"), Pull));
        assert!(!one.permits(&alice, &repo("team/a/b"), Pull));
        assert_eq!(
            AccessRules::default().allowed(&alice, &repo("x")),
            ActionSet::NONE
        );
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        let e = "push!".parse::<Action>().unwrap_err();
        assert_eq!(e, RuleError::UnknownAction("push!".into()));
        assert!(e.to_string().contains("\"push!\""), "{e}");
        assert_eq!(
            "a:b".parse::<Principal>(),
            Err(RuleError::InvalidUser("a:b".into()))
        );
        assert!(matches!(
            AccessRule::new("a/[", vec![Principal::Anonymous], ActionSet::NONE),
            Err(RuleError::Pattern(_))
        ));
        let e = AccessRule::new("a/**", vec![], ActionSet::NONE).unwrap_err();
        assert!(e.to_string().contains("names no users"), "{e}");
        let e = AccessRules::new(
            vec![rule("**", &["@ghosts"], &[Action::Pull])],
            HashMap::new(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("@ghosts"), "{e}");
    }
}
