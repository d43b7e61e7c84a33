//! Validated store keys and upload ids: relative, `/`-separated, with no component that
//! could climb out of a backend's root or hide among its temporary files.

use std::fmt;

/// Why a key or upload id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("invalid store key {0:?}")]
    Key(String),
    #[error("invalid upload id {0:?}")]
    UploadId(String),
}

/// A relative object key such as `blobs/sha256/ab/ab12...`. Components are non-empty,
/// made of `[A-Za-z0-9._-]`, and never start with `.` (so never `.` or `..`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

fn valid_component(c: &str) -> bool {
    !c.is_empty()
        && !c.starts_with('.')
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Key {
    /// Validate `s` as a key.
    pub fn new(s: impl Into<String>) -> Result<Key, KeyError> {
        let s = s.into();
        if s.len() > 1024 || !s.split('/').all(valid_component) {
            return Err(KeyError::Key(s));
        }
        Ok(Key(s))
    }

    /// This key with one more component.
    pub fn join(&self, component: &str) -> Result<Key, KeyError> {
        Key::new(format!("{}/{}", self.0, component))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// An upload session id: 1 to 64 characters of `[A-Za-z0-9-]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UploadId(String);

impl UploadId {
    /// A fresh random id.
    pub fn random() -> UploadId {
        UploadId(uuid::Uuid::new_v4().to_string())
    }

    pub fn parse(s: &str) -> Result<UploadId, KeyError> {
        if s.is_empty()
            || s.len() > 64
            || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(KeyError::UploadId(s.to_owned()));
        }
        Ok(UploadId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(Key::new("blobs/sha256/ab/abcd").is_ok());
        assert!(Key::new("repos/a/_tags/v1.0").is_ok());
        for bad in [
            "", "/a", "a/", "a//b", "..", "a/../b", "a/.tmp", "a b", "a\\b", "a:b",
        ] {
            assert!(Key::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(UploadId::parse("../x").is_err());
        assert!(UploadId::parse(UploadId::random().as_str()).is_ok());
    }
}
