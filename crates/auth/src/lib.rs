//! Who may do what: users from an htpasswd file ([`users`]), first-match access rules per
//! repository pattern ([`rules`]), and signed bearer tokens ([`token`]). It decides; it
//! never sees HTTP requests or the store. The server turns credentials into a [`Subject`] here and asks
//! [`rules::AccessRules::allowed`] before every repository operation.

pub mod rules;
pub mod token;
pub mod users;

pub use rules::{AccessRule, AccessRules, Action, ActionSet, Principal, RuleError};
pub use token::{Claims, Scope, TokenError, TokenSigner};
pub use users::{HtpasswdError, Users};

/// Who is asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// No credentials.
    Anonymous,
    /// A user whose password was verified.
    User(String),
}

impl Subject {
    /// The user name, if authenticated.
    pub fn user(&self) -> Option<&str> {
        match self {
            Subject::Anonymous => None,
            Subject::User(u) => Some(u),
        }
    }
}
