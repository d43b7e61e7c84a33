//! Who is calling and whether they may: credentials from the `Authorization` header
//! (Basic, checked against the htpasswd users), and the access rules asked for every
//! repository operation. Refusals are the spec's `UNAUTHORIZED` (401, with a challenge)
//! for callers without credentials and `DENIED` (403) for users who lack the right.

#![allow(clippy::result_large_err)] // reason: a refusal is the HTTP response itself, built once per refused request

use crate::error::ApiError;
use auth::{Action, Subject};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use oci::RepoName;

/// Users and rules of one server.
pub struct Access {
    /// `None`: no users are configured; every caller is anonymous.
    pub users: Option<auth::Users>,
    pub rules: auth::AccessRules,
}

impl Access {
    /// Everyone may do everything (tests, and embedding without auth).
    pub fn open() -> Access {
        let all = auth::ActionSet::of(&[Action::Pull, Action::Push, Action::Delete]);
        let rule = auth::AccessRule::new("**", vec![auth::Principal::Anonymous], all)
            .unwrap_or_else(|_| unreachable!("a fixed valid rule"));
        Access {
            users: None,
            rules: auth::AccessRules::new(vec![rule], Default::default())
                .unwrap_or_else(|_| unreachable!("no groups named")),
        }
    }

    /// The caller named by `headers`: anonymous without credentials; a 401 for
    /// credentials that do not verify (never logged).
    pub async fn subject(&self, headers: &HeaderMap) -> Result<Subject, Response> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(Subject::Anonymous);
        };
        let Some((user, password)) = basic_credentials(value) else {
            return Err(self.challenge("unsupported or malformed Authorization header"));
        };
        match &self.users {
            Some(users) if users.verify(&user, &password).await => Ok(Subject::User(user)),
            _ => {
                tracing::info!(user = %user, "login failed");
                Err(self.challenge("invalid username or password"))
            }
        }
    }

    /// A 401 asking for credentials.
    pub fn challenge(&self, message: &str) -> Response {
        let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message.to_owned())
            .into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"berth\""),
        );
        r
    }

    /// Does a caller without credentials have to log in before `/v2/` answers? Only when
    /// users exist: then `docker login` must see its credentials checked.
    pub fn login_required(&self, who: &Subject) -> bool {
        *who == Subject::Anonymous && self.users.as_ref().is_some_and(|u| !u.is_empty())
    }

    /// Allow `action` on `repo`, or the refusal to send.
    pub fn check(&self, who: &Subject, repo: &RepoName, action: Action) -> Result<(), Response> {
        if self.rules.permits(who, repo, action) {
            return Ok(());
        }
        let message = format!("{action} access to {repo} is not granted");
        Err(match who {
            Subject::Anonymous => self.challenge(&message),
            Subject::User(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "DENIED", message).into_response()
            }
        })
    }
}

/// The action a request needs on its repository.
pub fn action_for(method: &Method, is_delete_of_content: bool) -> Action {
    match *method {
        Method::GET | Method::HEAD => Action::Pull,
        Method::DELETE if is_delete_of_content => Action::Delete,
        _ => Action::Push,
    }
}

/// `Basic base64(user:password)`, decoded.
fn basic_credentials(value: &HeaderValue) -> Option<(String, String)> {
    let v = value.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}
