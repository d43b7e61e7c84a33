//! `[[export]]`: which pushes get a break-glass tarball, where it goes and how many are
//! kept. It only describes them; `crate::exports` writes the tarballs.

use serde::Deserialize;
use std::path::PathBuf;

/// `[[export]]`: after each push of a matching tag, write the image (every platform of an
/// index) as an OCI-layout tarball, keeping the newest `keep`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// Repository pattern (`team/**`).
    pub repositories: String,
    /// Tag pattern (`v*`, `release-*`); default every tag.
    #[serde(default = "default_export_tags")]
    pub tags: String,
    /// Where tarballs go, as `DIRECTORY/<repository>/<tag>/<UTC time>.tar`.
    pub directory: PathBuf,
    /// How many tarballs to keep per repository and tag.
    #[serde(default = "default_export_keep")]
    pub keep: usize,
}

fn default_export_tags() -> String {
    "*".into()
}

fn default_export_keep() -> usize {
    3
}
