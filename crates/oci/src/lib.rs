//! OCI types shared by every layer of berth: validated [`Digest`], [`RepoName`],
//! [`Tag`] and [`Reference`] newtypes, the manifest media types, and a parser that
//! pulls the references (config, layers, child manifests, subject) out of manifest
//! bytes without re-serialising them.
//!
//! This crate never touches storage, the network or HTTP: it only validates and parses.

mod digest;
mod digest_set;
mod manifest;
mod name;
mod pattern;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use digest_set::{
    DigestKey, DigestSet, DigestSetBuilder, DigestTable, DigestTableBuilder, digest_key,
};
pub use manifest::{Descriptor, ManifestError, ManifestKind, ParsedManifest, media};
pub use name::{NameError, Reference, RepoName, Tag};
pub use pattern::{PatternError, RepoPattern};
