//! Who is calling and whether they may: credentials from the `Authorization` header
//! (Basic, checked against the htpasswd users, or a Bearer token from `GET /token`), and
//! the access rules asked for every repository operation. Refusals are the spec's
//! `UNAUTHORIZED` (401, with a challenge naming the scope needed) for callers without
//! credentials or with a token that lacks the scope, and `DENIED` (403) for users who
//! lack the right.

#![allow(clippy::result_large_err)] // reason: a refusal is the HTTP response itself, built once per refused request

use crate::error::ApiError;
use auth::{Action, Subject};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use oci::RepoName;
use std::sync::Arc;

/// A repository as access control sees it.
#[derive(Clone, Copy)]
pub struct Named<'a> {
    /// Its name in the store: the one name rules and tokens refer to, whichever route
    /// reached it (`docker.io/library/nginx`).
    pub stored: &'a RepoName,
    /// The name a token request on the same listener carries for it: the name its
    /// clients use (`library/nginx` on a dedicated listener), named in challenges.
    pub asked: &'a RepoName,
}

/// Users and rules of one server.
pub struct Access {
    /// `None`: no users are configured; every caller is anonymous.
    pub users: Option<auth::Users>,
    pub rules: auth::AccessRules,
    /// Signs and checks bearer tokens; `None` turns the token flow off (Basic only).
    pub tokens: Option<auth::TokenSigner>,
    /// Failed logins per client address; kept across configuration reloads.
    pub failed: Arc<FailedLogins>,
}

/// Failed logins one client address may make per [`LOGIN_WINDOW`] before further
/// attempts are refused unchecked: plenty for a person mistyping, far too few to guess
/// a password (and it caps the bcrypt work an attacker can make us do).
pub const MAX_FAILED_LOGINS: u32 = 10;
/// The window over which failed logins are counted.
pub const LOGIN_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Failed logins per client address in the current window.
#[derive(Default)]
pub struct FailedLogins {
    /// Refused credentials and tokens, by reason (for metrics).
    pub refusals: meter::Family<(&'static str,), meter::Counter>,
    by_addr:
        parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, (u32, std::time::Instant)>>,
}

impl FailedLogins {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut std::collections::HashMap<std::net::IpAddr, (u32, std::time::Instant)>) -> T,
    ) -> T {
        let mut m = self.by_addr.lock();
        // Forget old windows so the map can not grow without bound.
        if m.len() > 10_000 {
            m.retain(|_, (_, at)| at.elapsed() < LOGIN_WINDOW);
        }
        f(&mut m)
    }

    /// Is `addr` over its limit right now?
    pub fn blocked(&self, addr: std::net::IpAddr) -> bool {
        self.with(|m| {
            m.get(&addr)
                .is_some_and(|(n, at)| at.elapsed() < LOGIN_WINDOW && *n >= MAX_FAILED_LOGINS)
        })
    }

    /// Count a failed login from `addr`.
    pub fn failed(&self, addr: std::net::IpAddr) {
        self.with(|m| {
            let e = m.entry(addr).or_insert((0, std::time::Instant::now()));
            if e.1.elapsed() >= LOGIN_WINDOW {
                *e = (0, std::time::Instant::now());
            }
            e.0 += 1;
        });
    }
}

/// The `service` named in challenges and expected at `/token`.
pub const SERVICE: &str = "berth";

/// A caller as the request identifies it.
#[derive(Clone, Debug)]
pub enum Caller {
    /// Anonymous or a Basic-authenticated user: the rules decide.
    Subject(Subject),
    /// A bearer token: its granted scopes decide.
    Token(auth::Claims),
}

impl Caller {
    /// The subject the rules know (a token's user).
    pub fn subject(&self) -> Subject {
        match self {
            Caller::Subject(s) => s.clone(),
            Caller::Token(c) if c.subject.is_empty() => Subject::Anonymous,
            Caller::Token(c) => Subject::User(c.subject.clone()),
        }
    }
}

impl Access {
    /// The caller named by `headers`: anonymous without credentials; a 401 for
    /// credentials or tokens that do not verify (never logged).
    pub async fn caller(
        &self,
        headers: &HeaderMap,
        client: Option<std::net::IpAddr>,
    ) -> Result<Caller, Response> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(Caller::Subject(Subject::Anonymous));
        };
        if let (Some(signer), Some(token)) = (&self.tokens, bearer_token(value)) {
            return match signer.verify(token, std::time::SystemTime::now()) {
                Ok(claims) => Ok(Caller::Token(claims)),
                Err(e) => {
                    self.failed.refusals.get(&("token",)).inc();
                    Err(self.challenge(headers, None, &format!("{e}"), false))
                }
            };
        }
        Ok(Caller::Subject(self.basic_subject(headers, client).await?))
    }

    /// The subject of Basic credentials (anonymous without any), or a 401.
    pub async fn basic_subject(
        &self,
        headers: &HeaderMap,
        client: Option<std::net::IpAddr>,
    ) -> Result<Subject, Response> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(Subject::Anonymous);
        };
        let Some((user, password)) = basic_credentials(value) else {
            self.failed.refusals.get(&("malformed",)).inc();
            return Err(self.challenge(
                headers,
                None,
                "unsupported or malformed Authorization header",
                false,
            ));
        };
        if let Some(addr) = client
            && self.failed.blocked(addr)
        {
            tracing::warn!(client = %addr, "too many failed logins; refused unchecked");
            self.failed.refusals.get(&("rate_limited",)).inc();
            let mut r = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
                "too many failed logins from this address; try again later",
            )
            .into_response();
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(LOGIN_WINDOW.as_secs()),
            );
            return Err(r);
        }
        match &self.users {
            Some(users) if users.verify(&user, &password).await => Ok(Subject::User(user)),
            _ => {
                if let Some(addr) = client {
                    self.failed.failed(addr);
                }
                self.failed.refusals.get(&("credentials",)).inc();
                // The user name only: passwords and headers are never logged.
                tracing::info!(user = %user, client = ?client, "login failed");
                Err(self.challenge(headers, None, "invalid username or password", false))
            }
        }
    }

    /// A 401 asking for credentials: a Bearer challenge naming the token endpoint and
    /// `scope` when tokens are on, else Basic.
    pub fn challenge(
        &self,
        headers: &HeaderMap,
        scope: Option<&auth::Scope>,
        message: &str,
        insufficient: bool,
    ) -> Response {
        let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message.to_owned())
            .into_response();
        let value = if self.tokens.is_some() {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .filter(|h| h.chars().all(|c| c.is_ascii_graphic() && c != '"'))
                .unwrap_or("localhost");
            let scheme = if headers
                .get("x-forwarded-proto")
                .is_some_and(|p| p.as_bytes() == b"https")
            {
                "https"
            } else {
                "http"
            };
            let mut v = format!("Bearer realm=\"{scheme}://{host}/token\",service=\"{SERVICE}\"");
            if let Some(s) = scope {
                v.push_str(&format!(",scope=\"{s}\""));
            }
            if insufficient {
                v.push_str(",error=\"insufficient_scope\"");
            }
            v
        } else {
            "Basic realm=\"berth\"".to_owned()
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        r
    }

    /// Does a caller without credentials have to log in before `/v2/` answers? Only when
    /// users exist: then `docker login` must see its credentials checked.
    pub fn login_required(&self, who: &Caller) -> bool {
        matches!(who, Caller::Subject(Subject::Anonymous))
            && self.users.as_ref().is_some_and(|u| !u.is_empty())
    }

    /// What `who` may do to `repo`.
    pub fn allowed(&self, who: &Caller, repo: &RepoName) -> auth::ActionSet {
        match who {
            Caller::Subject(s) => self.rules.allowed(s, repo),
            Caller::Token(c) => c.granted(repo),
        }
    }

    /// Allow `action` on `repo`, or the refusal to send.
    pub fn check(
        &self,
        headers: &HeaderMap,
        who: &Caller,
        repo: Named<'_>,
        action: Action,
    ) -> Result<(), Response> {
        if self.allowed(who, repo.stored).contains(action) {
            return Ok(());
        }
        let message = format!("{action} access to {} is not granted", repo.stored);
        let scope = auth::Scope {
            resource: auth::token::Resource::Repository(repo.asked.clone()),
            actions: auth::ActionSet::of(&[action]),
        };
        Err(match who {
            Caller::Subject(Subject::Anonymous) => {
                self.challenge(headers, Some(&scope), &message, false)
            }
            Caller::Token(_) => self.challenge(headers, Some(&scope), &message, true),
            Caller::Subject(Subject::User(_)) => {
                ApiError::new(StatusCode::FORBIDDEN, "DENIED", message).into_response()
            }
        })
    }

    /// `GET /token`: a token for the subset of the requested scopes the caller is
    /// granted (none requested or none granted: a token granting nothing, as clients
    /// expect for anonymous pulls of public content). `stored` turns a repository name
    /// as the listener's clients write it into its name in the store, the one name rules
    /// and tokens know (`None`: a name no repository can have there; never granted).
    pub async fn token(
        &self,
        headers: &HeaderMap,
        client: Option<std::net::IpAddr>,
        scopes: &[String],
        stored: impl Fn(&RepoName) -> Option<RepoName>,
    ) -> Response {
        let Some(signer) = &self.tokens else {
            return ApiError::new(
                StatusCode::NOT_FOUND,
                "UNSUPPORTED",
                "the token flow is not enabled",
            )
            .into_response();
        };
        let who = match self.basic_subject(headers, client).await {
            Ok(w) => w,
            Err(r) => return r,
        };
        let mut granted = Vec::new();
        for raw in scopes
            .iter()
            .flat_map(|s| s.split(' '))
            .filter(|s| !s.is_empty())
        {
            let scope: auth::Scope = match raw.parse() {
                Ok(s) => s,
                Err(e) => {
                    return ApiError::new(StatusCode::BAD_REQUEST, "UNSUPPORTED", e)
                        .into_response();
                }
            };
            let (resource, allowed) = match scope.resource {
                auth::token::Resource::Repository(r) => match stored(&r) {
                    Some(r) => {
                        let allowed = self.rules.allowed(&who, &r).intersect(scope.actions);
                        (auth::token::Resource::Repository(r), allowed)
                    }
                    None => continue,
                },
                auth::token::Resource::Catalog => (auth::token::Resource::Catalog, scope.actions),
            };
            if allowed != auth::ActionSet::NONE {
                granted.push(auth::Scope {
                    resource,
                    actions: allowed,
                });
            }
        }
        let now = std::time::SystemTime::now();
        let (token, claims) = signer.issue(
            who.user().unwrap_or_default(),
            &granted,
            now,
            auth::token::TOKEN_TTL,
        );
        let body = serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": claims.expires_at - claims.issued_at,
            "issued_at": rfc3339(claims.issued_at),
        });
        (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_vec(&body).unwrap_or_default(),
        )
            .into_response()
    }
}

/// `Bearer <token>`.
fn bearer_token(value: &HeaderValue) -> Option<&str> {
    let v = value.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// `secs` since the Unix epoch as RFC 3339 UTC (`2026-11-24T02:30:00Z`).
pub fn rfc3339(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
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

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_487_400), "2026-11-24T02:30:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
