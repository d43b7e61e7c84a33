//! Bearer tokens for the Docker token flow: scopes as clients request them
//! (`repository:<name>:pull,push`, `registry:catalog:*`), and short-lived tokens signed
//! with HMAC-SHA256 in the JWT compact form (`HS256`). Only berth issues and checks them,
//! so a shared-secret signature is enough; the key never leaves the process or its file.

use crate::rules::{Action, ActionSet};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use oci::RepoName;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

type HmacSha256 = Hmac<sha2::Sha256>;

/// How long an issued token is valid: long enough for one push of large layers to get
/// through its requests, short enough that a revoked user is locked out within minutes.
pub const TOKEN_TTL: Duration = Duration::from_secs(5 * 60);

/// Bytes of a signing key.
pub const KEY_BYTES: usize = 32;

/// What a scope is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resource {
    Repository(RepoName),
    /// The catalog (`registry:catalog:*`).
    Catalog,
}

/// One requested or granted scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub resource: Resource,
    pub actions: ActionSet,
}

impl std::str::FromStr for Scope {
    type Err = String;
    /// `repository:<name>:<action>[,<action>...]` (`*` means every action) or
    /// `registry:catalog:*`. Names are validated like any repository name, so no path
    /// tricks pass.
    fn from_str(s: &str) -> Result<Scope, String> {
        let bad = || format!("invalid scope {s:?}");
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        let (name, actions) = rest.rsplit_once(':').ok_or_else(bad)?;
        match kind {
            "registry" if name == "catalog" && actions == "*" => Ok(Scope {
                resource: Resource::Catalog,
                actions: ActionSet::of(&[Action::Pull]),
            }),
            "repository" => {
                let repo: RepoName = name.parse().map_err(|e| format!("{}: {e}", bad()))?;
                let mut set = Vec::new();
                for a in actions.split(',') {
                    if a == "*" {
                        set.extend([Action::Pull, Action::Push, Action::Delete]);
                    } else {
                        set.push(a.parse::<Action>().map_err(|e| format!("{}: {e}", bad()))?);
                    }
                }
                Ok(Scope {
                    resource: Resource::Repository(repo),
                    actions: ActionSet::of(&set),
                })
            }
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.resource {
            Resource::Catalog => f.write_str("registry:catalog:*"),
            Resource::Repository(r) => {
                let actions: Vec<&str> = self.actions.iter().map(Action::as_str).collect();
                write!(f, "repository:{r}:{}", actions.join(","))
            }
        }
    }
}

/// What a token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// The user it was issued to.
    pub subject: String,
    pub scopes: Vec<Scope>,
    pub issued_at: u64,
    pub expires_at: u64,
}

impl Claims {
    /// The actions the token grants on `repo`.
    pub fn granted(&self, repo: &RepoName) -> ActionSet {
        self.scopes
            .iter()
            .filter(|s| s.resource == Resource::Repository(repo.clone()))
            .fold(ActionSet::NONE, |acc, s| acc.union(s.actions))
    }

    /// Does the token grant the catalog?
    pub fn catalog(&self) -> bool {
        self.scopes.iter().any(|s| s.resource == Resource::Catalog)
    }
}

/// The JSON payload on the wire.
#[derive(Serialize, Deserialize)]
struct Wire {
    sub: String,
    iat: u64,
    exp: u64,
    access: Vec<String>,
}

/// Why a token was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Issues and checks tokens with one key.
#[derive(Clone)]
pub struct TokenSigner {
    key: [u8; KEY_BYTES],
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

impl TokenSigner {
    pub fn new(key: [u8; KEY_BYTES]) -> TokenSigner {
        TokenSigner { key }
    }

    /// A fresh random key.
    pub fn generate_key() -> [u8; KEY_BYTES] {
        rand::random()
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length; 32 bytes can not fail.
        HmacSha256::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!())
    }

    /// A token for `subject` granting `scopes`, valid from `now` for `ttl`.
    pub fn issue(
        &self,
        subject: &str,
        scopes: &[Scope],
        now: SystemTime,
        ttl: Duration,
    ) -> (String, Claims) {
        let claims = Claims {
            subject: subject.to_owned(),
            scopes: scopes.to_vec(),
            issued_at: unix(now),
            expires_at: unix(now + ttl),
        };
        let wire = Wire {
            sub: claims.subject.clone(),
            iat: claims.issued_at,
            exp: claims.expires_at,
            access: scopes.iter().map(|s| s.to_string()).collect(),
        };
        let payload = serde_json::to_vec(&wire).unwrap_or_default();
        let signing_input = format!("{}.{}", B64.encode(HEADER), B64.encode(payload));
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let sig = mac.finalize().into_bytes();
        (format!("{signing_input}.{}", B64.encode(sig)), claims)
    }

    /// Check a token's signature (in constant time) and expiry at `now`.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let sig = B64.decode(s).map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(h.as_bytes());
        mac.update(b".");
        mac.update(p.as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        if B64.decode(h).map_err(|_| TokenError::Malformed)? != HEADER.as_bytes() {
            return Err(TokenError::Malformed);
        }
        let wire: Wire = serde_json::from_slice(&B64.decode(p).map_err(|_| TokenError::Malformed)?)
            .map_err(|_| TokenError::Malformed)?;
        if unix(now) >= wire.exp {
            return Err(TokenError::Expired);
        }
        let scopes = wire
            .access
            .iter()
            .map(|s| s.parse())
            .collect::<Result<Vec<Scope>, _>>()
            .map_err(|_| TokenError::Malformed)?;
        Ok(Claims {
            subject: wire.sub,
            scopes,
            issued_at: wire.iat,
            expires_at: wire.exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(s: &str) -> Scope {
        s.parse().unwrap()
    }

    #[test]
    fn scopes_parse_and_refuse_path_tricks() {
        let s = scope("repository:team/app:pull,push");
        assert_eq!(s.actions, ActionSet::of(&[Action::Pull, Action::Push]));
        assert_eq!(s.to_string(), "repository:team/app:pull,push");
        assert_eq!(
            scope("repository:a:*").actions,
            ActionSet::of(&[Action::Pull, Action::Push, Action::Delete])
        );
        assert_eq!(scope("registry:catalog:*").resource, Resource::Catalog);
        for bad in [
            "repository:../etc:pull",
            "repository:team/../x:pull",
            "repository:/abs:pull",
            "repository:Team:pull",
            "repository:a:fly",
            "registry:other:*",
            "nonsense",
            "repository:a",
        ] {
            assert!(bad.parse::<Scope>().is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_verify_only_untampered_unexpired_and_with_their_own_key() {
        let signer = TokenSigner::new(TokenSigner::generate_key());
        let now = SystemTime::now();
        let (t, claims) = signer.issue(
            "alice",
            &[scope("repository:team/app:pull,push")],
            now,
            TOKEN_TTL,
        );
        let got = signer.verify(&t, now).unwrap();
        assert_eq!(got, claims);
        let team: RepoName = "team/app".parse().unwrap();
        let other: RepoName = "other/x".parse().unwrap();
        assert!(got.granted(&team).contains(Action::Push));
        assert_eq!(
            got.granted(&other),
            ActionSet::NONE,
            "a token for one repo is not one for another"
        );
        assert!(!got.catalog());

        assert_eq!(signer.verify(&t, now + TOKEN_TTL), Err(TokenError::Expired));
        let other_key = TokenSigner::new(TokenSigner::generate_key());
        assert_eq!(other_key.verify(&t, now), Err(TokenError::BadSignature));
        // Widen the scope in the payload, keep the signature: refused.
        let parts: Vec<&str> = t.split('.').collect();
        let mut payload: serde_json::Value =
            serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
        payload["access"] = serde_json::json!(["repository:other/x:pull,push,delete"]);
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(payload.to_string()),
            parts[2]
        );
        assert_eq!(signer.verify(&forged, now), Err(TokenError::BadSignature));
        assert_eq!(signer.verify("a.b", now), Err(TokenError::Malformed));
        assert_eq!(signer.verify("", now), Err(TokenError::Malformed));
    }
}
