//! Users from an htpasswd file with bcrypt entries (`htpasswd -B`). The file is re-read
//! when it changes on disk; a broken new version is refused with a log line and the
//! users already loaded stay. Password checks run on a blocking thread (bcrypt is slow
//! on purpose) and take as long for an unknown user as for a known one.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How often the file's size and time are looked at for changes: often enough that an
/// added user can log in a second later, rarely enough that a burst of logins costs one
/// `stat`.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// A bcrypt hash of a random password, checked for unknown users so that a login's
/// duration does not tell whether the user exists (cost 10, bcrypt's usual default).
const DUMMY_HASH: &str = "$2y$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";

/// Why an htpasswd file was refused.
#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    #[error("cannot read htpasswd file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("htpasswd file {path}, line {line}: {reason}")]
    Line {
        path: String,
        line: usize,
        reason: String,
    },
}

/// Parse htpasswd text: `user:$2y$...` lines; blank lines and `#` comments are skipped.
pub fn parse(text: &str, origin: &str) -> Result<HashMap<String, String>, HtpasswdError> {
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |reason: String| HtpasswdError::Line {
            path: origin.to_owned(),
            line: i + 1,
            reason,
        };
        let Some((user, hash)) = line.split_once(':') else {
            return Err(err("expected user:hash".into()));
        };
        if user.is_empty() {
            return Err(err("empty user name".into()));
        }
        let kind =
            if hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$") {
                None
            } else if hash.starts_with("$apr1$") {
                Some("an MD5 ($apr1$) hash")
            } else if hash.starts_with("{SHA}") {
                Some("a SHA-1 ({SHA}) hash")
            } else if hash.starts_with("$5$") || hash.starts_with("$6$") {
                Some("a SHA-crypt hash")
            } else {
                Some("a crypt or plain-text password")
            };
        if let Some(kind) = kind {
            return Err(err(format!(
                "user {user:?} has {kind}; only bcrypt is accepted: recreate it with `htpasswd -B`"
            )));
        }
        if hash.parse::<bcrypt::HashParts>().is_err() {
            return Err(err(format!("user {user:?} has a malformed bcrypt hash")));
        }
        out.insert(user.to_owned(), hash.to_owned());
    }
    Ok(out)
}

struct Loaded {
    users: Arc<HashMap<String, String>>,
    /// Size and time of the file as loaded.
    stamp: Option<(u64, SystemTime)>,
    checked: Instant,
}

/// The users of one htpasswd file.
pub struct Users {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

fn stamp_of(path: &Path) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

fn read(path: &Path) -> Result<HashMap<String, String>, HtpasswdError> {
    let text = std::fs::read_to_string(path).map_err(|source| HtpasswdError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

impl Users {
    /// Load `path`; an unreadable or invalid file is an error at start-up.
    pub fn load(path: &Path) -> Result<Users, HtpasswdError> {
        let stamp = stamp_of(path);
        let users = read(path)?;
        Ok(Users {
            path: path.to_owned(),
            loaded: Mutex::new(Loaded {
                users: Arc::new(users),
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// The current users, re-reading the file if it changed since it was loaded.
    fn current(&self) -> Arc<HashMap<String, String>> {
        let mut l = self.loaded.lock();
        if l.checked.elapsed() >= RELOAD_CHECK {
            l.checked = Instant::now();
            let stamp = stamp_of(&self.path);
            if stamp != l.stamp {
                match read(&self.path) {
                    Ok(users) => {
                        tracing::info!(path = %self.path.display(), users = users.len(), "htpasswd file reloaded");
                        l.users = Arc::new(users);
                        l.stamp = stamp;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "htpasswd file changed but is invalid; keeping the users loaded before");
                        l.stamp = stamp;
                    }
                }
            }
        }
        l.users.clone()
    }

    /// Force the next check to look at the file (tests; SIGHUP).
    pub fn recheck(&self) {
        let mut l = self.loaded.lock();
        l.checked = Instant::now() - RELOAD_CHECK;
    }

    /// How many users are loaded.
    pub fn len(&self) -> usize {
        self.current().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Is `password` right for `user`? Runs bcrypt on a blocking thread; unknown users
    /// cost the same bcrypt work as known ones.
    pub async fn verify(&self, user: &str, password: &str) -> bool {
        let users = self.current();
        let (hash, known) = match users.get(user) {
            Some(h) => (h.clone(), true),
            None => (DUMMY_HASH.to_owned(), false),
        };
        let password = password.to_owned();
        let ok =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        ok && known
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bcrypt_entries_are_accepted_with_the_line_named() {
        let good = bcrypt::hash("pw", 4).unwrap();
        let users = parse(&format!("# comment\n\nalice:{good}\n"), "f").unwrap();
        assert!(users.contains_key("alice"));
        for (line, says) in [
            ("bob:$apr1$abc$def", "MD5"),
            ("bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "SHA-1"),
            ("bob:plain", "plain"),
            ("bob", "user:hash"),
            ("bob:$2y$10$short", "malformed"),
        ] {
            let e = parse(&format!("alice:{good}\n{line}\n"), "f")
                .unwrap_err()
                .to_string();
            assert!(e.contains("line 2") && e.contains(says), "{line}: {e}");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn passwords_are_checked_and_the_file_is_reloaded_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(
            &path,
            format!("alice:{}\n", bcrypt::hash("a-pw", 4).unwrap()),
        )
        .unwrap();
        let users = Users::load(&path).unwrap();
        assert!(users.verify("alice", "a-pw").await);
        assert!(!users.verify("alice", "wrong").await);
        assert!(!users.verify("nobody", "a-pw").await);

        // bob is added on disk: he can log in without a restart.
        std::fs::write(
            &path,
            format!(
                "alice:{}\nbob:{}\n",
                bcrypt::hash("a-pw", 4).unwrap(),
                bcrypt::hash("b-pw", 4).unwrap()
            ),
        )
        .unwrap();
        users.recheck();
        assert!(users.verify("bob", "b-pw").await);

        // A broken edit is refused; the users loaded before stay.
        std::fs::write(&path, "alice:$apr1$x$y\nbob:plain-text-and-longer\n").unwrap();
        users.recheck();
        assert!(users.verify("bob", "b-pw").await);
        assert_eq!(users.len(), 2);
    }
}
