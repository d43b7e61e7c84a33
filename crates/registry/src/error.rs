//! The registry's error type: one variant per OCI error code plus storage failures.
//! Status codes are the HTTP layer's business; this module only names the code.

use oci::{DigestError, ManifestError, NameError};
use store::StoreError;

/// Everything a registry operation can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("blob unknown to registry")]
    BlobUnknown,
    #[error("blob upload unknown to registry")]
    BlobUploadUnknown,
    #[error("blob upload invalid: {0}")]
    BlobUploadInvalid(String),
    #[error("provided digest did not match uploaded content")]
    DigestInvalid,
    #[error("invalid digest: {0}")]
    DigestParse(#[from] DigestError),
    #[error("manifest references unknown blob {0}")]
    ManifestBlobUnknown(oci::Digest),
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    #[error("manifest unknown to registry")]
    ManifestUnknown,
    #[error("index references child manifest {0}, which is unknown to the repository")]
    ManifestChildUnknown(oci::Digest),
    #[error("manifest of {size} bytes exceeds the limit of {limit} bytes")]
    ManifestTooLarge { size: u64, limit: u64 },
    #[error("{0}")]
    NameInvalid(#[from] NameError),
    #[error("repository name not known to registry")]
    NameUnknown,
    #[error("requested range is outside the upload: it is at offset {current}")]
    RangeInvalid { current: u64 },
    #[error("provided length did not match content length")]
    SizeInvalid,
    #[error("blob exceeds the limit of {limit} bytes")]
    BlobTooLarge { limit: u64 },
    #[error("request body interrupted: {0}")]
    BodyInterrupted(std::io::Error),
    #[error("{0}")]
    Unsupported(String),
    #[error("storage error: {0}")]
    Storage(StoreError),
}

impl RegistryError {
    /// The OCI distribution error code.
    pub fn code(&self) -> &'static str {
        use RegistryError::*;
        match self {
            BlobUnknown => "BLOB_UNKNOWN",
            BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            BlobUploadInvalid(_) | RangeInvalid { .. } => "BLOB_UPLOAD_INVALID",
            DigestInvalid => "DIGEST_INVALID",
            DigestParse(DigestError::UnsupportedAlgorithm(_)) => "UNSUPPORTED",
            DigestParse(_) => "DIGEST_INVALID",
            ManifestBlobUnknown(_) => "MANIFEST_BLOB_UNKNOWN",
            ManifestInvalid(_) | ManifestTooLarge { .. } => "MANIFEST_INVALID",
            ManifestUnknown => "MANIFEST_UNKNOWN",
            // The spec names one code for any missing reference of a pushed manifest.
            ManifestChildUnknown(_) => "MANIFEST_BLOB_UNKNOWN",
            NameInvalid(NameError::Digest(_)) => "DIGEST_INVALID",
            NameInvalid(NameError::Tag(_)) => "TAG_INVALID",
            NameInvalid(NameError::Name(_)) => "NAME_INVALID",
            NameUnknown => "NAME_UNKNOWN",
            SizeInvalid | BlobTooLarge { .. } => "SIZE_INVALID",
            BodyInterrupted(_) => "BLOB_UPLOAD_INVALID",
            Unsupported(_) => "UNSUPPORTED",
            Storage(_) => "INTERNAL_ERROR",
        }
    }
}

impl RegistryError {
    /// The digest the error is about, for the `detail` of the error body.
    pub fn digest(&self) -> Option<&oci::Digest> {
        match self {
            RegistryError::ManifestBlobUnknown(d) | RegistryError::ManifestChildUnknown(d) => {
                Some(d)
            }
            _ => None,
        }
    }
}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        RegistryError::Storage(e)
    }
}

impl From<ManifestError> for RegistryError {
    fn from(e: ManifestError) -> Self {
        RegistryError::ManifestInvalid(e.to_string())
    }
}

impl From<store::KeyError> for RegistryError {
    fn from(e: store::KeyError) -> Self {
        // Keys are built from validated names; a refusal here is a bug, not bad input.
        RegistryError::Storage(StoreError::Io(std::io::Error::other(e.to_string())))
    }
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
