//! `[storage]`: which backend (a directory, or an S3 bucket with its endpoint, keys and
//! prefix) and how it writes. It only describes the store; it never opens it.

use super::Invalid;
use super::parse::default_true;
use serde::Deserialize;
use std::path::PathBuf;

/// Which storage backend.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    Fs,
    S3,
}

/// `[storage]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(default = "default_kind")]
    pub kind: StorageKind,
    /// Directory of the filesystem store (relative paths are relative to the working
    /// directory).
    #[serde(default = "default_path")]
    pub path: PathBuf,
    /// fsync data and directories before acknowledging a write.
    #[serde(default = "default_true")]
    pub fsync: bool,
    /// Write upload data with `O_DIRECT` (bypassing the page cache) where the
    /// filesystem allows it.
    #[serde(default)]
    pub direct_io: bool,
    /// S3: the bucket.
    pub bucket: Option<String>,
    /// S3: the endpoint URL (`http://127.0.0.1:8333`); AWS when absent.
    pub endpoint: Option<String>,
    /// S3: the region (`us-east-1` when absent and not in the environment).
    pub region: Option<String>,
    /// S3: keys live under this prefix of the bucket.
    pub prefix: Option<String>,
    /// S3: access key; otherwise `AWS_ACCESS_KEY_ID` and the usual AWS chain.
    pub access_key_id: Option<String>,
    /// S3: secret key; otherwise `AWS_SECRET_ACCESS_KEY` and the usual AWS chain.
    pub secret_access_key: Option<String>,
    /// S3: put the bucket in the path instead of the host name. Unset: path style
    /// whenever `endpoint` is set (every self-hosted server takes it), virtual-host
    /// style for AWS without one.
    #[serde(default)]
    pub path_style: Option<bool>,
    /// S3: answer blob GETs with a 307 to a presigned URL, so bytes flow from the bucket
    /// to clients without passing through berth (clients must reach the endpoint).
    #[serde(default)]
    pub redirect: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            kind: default_kind(),
            path: default_path(),
            fsync: true,
            direct_io: false,
            bucket: None,
            endpoint: None,
            region: None,
            prefix: None,
            access_key_id: None,
            secret_access_key: None,
            path_style: None,
            redirect: false,
        }
    }
}

impl StorageConfig {
    /// The S3 options, for `kind = "s3"`.
    pub fn s3(&self) -> Result<store::s3::S3Options, Invalid> {
        let bucket = self
            .bucket
            .clone()
            .filter(|b| !b.is_empty())
            .ok_or(Invalid::S3WithoutBucket)?;
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err(Invalid::S3HalfAKey);
        }
        Ok(store::s3::S3Options {
            bucket,
            endpoint: self.endpoint.clone(),
            region: self.region.clone().or_else(|| Some("us-east-1".into())),
            prefix: self.prefix.clone(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            path_style: self.path_style.unwrap_or(self.endpoint.is_some()),
        })
    }
}

fn default_kind() -> StorageKind {
    StorageKind::Fs
}

fn default_path() -> PathBuf {
    PathBuf::from("./berth-data")
}
