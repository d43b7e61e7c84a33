//! Manifest media types and a parser that extracts what a registry must check and
//! link: the config, the layers, the child manifests of an index, the subject and the
//! artifact type. The bytes are never re-serialised; their digest is over what was sent.

use crate::digest::Digest;
use serde::{Deserialize, Serialize};

/// Manifest and index media types berth knows by name.
pub mod media {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
    /// The configs of runnable images (OCI and Docker).
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

    /// Is this a manifest type (as opposed to a blob type)?
    pub fn is_manifest(media_type: &str) -> bool {
        matches!(
            media_type,
            OCI_MANIFEST | OCI_INDEX | DOCKER_MANIFEST | DOCKER_LIST
        )
    }
}

/// An OCI content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    /// An int64 in the image spec: sizes above `i64::MAX` are refused when parsed.
    #[serde(deserialize_with = "int64_size")]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

impl Descriptor {
    /// The platform as `os/arch[/variant]`, when the descriptor names one.
    pub fn platform_name(&self) -> Option<String> {
        let p = self.platform.as_ref()?;
        let os = p.get("os")?.as_str()?;
        let arch = p.get("architecture")?.as_str()?;
        Some(match p.get("variant").and_then(|v| v.as_str()) {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        })
    }

    /// Non-distributable ("foreign") layers live elsewhere and are never required to
    /// be present in the registry.
    pub fn is_foreign(&self) -> bool {
        !self.urls.is_empty()
            || self.media_type.contains("nondistributable")
            || self.media_type.contains(".foreign.")
    }
}

/// Whether a manifest is a single image (config + layers) or an index of manifests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestKind {
    Image,
    Index,
}

/// A descriptor size as the image spec defines it (int64, never negative): a larger
/// value would wrap sums and offsets downstream, so it is refused at the boundary.
fn int64_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let size = u64::deserialize(d)?;
    if size > i64::MAX as u64 {
        return Err(serde::de::Error::custom(format!(
            "descriptor size {size} exceeds the int64 maximum"
        )));
    }
    Ok(size)
}

/// Why manifest bytes were refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("manifest has schemaVersion {0}; only schemaVersion 2 is supported")]
    SchemaVersion(i64),
    #[error("manifest mediaType {body:?} does not match the Content-Type {header:?}")]
    MediaTypeMismatch { body: String, header: String },
    #[error("manifest has no mediaType field and no Content-Type was given")]
    NoMediaType,
    #[error("manifest of type {0:?} is missing its {1}")]
    Missing(String, &'static str),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

/// What a registry needs to know about a manifest.
#[derive(Clone, Debug)]
pub struct ParsedManifest {
    pub media_type: String,
    pub kind: ManifestKind,
    pub artifact_type: Option<String>,
    pub config: Option<Descriptor>,
    pub layers: Vec<Descriptor>,
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ParsedManifest {
    /// Parse manifest bytes. `content_type` is the Content-Type the client sent, if any;
    /// when the body names a mediaType the two must agree.
    pub fn parse(
        bytes: &[u8],
        content_type: Option<&str>,
    ) -> Result<ParsedManifest, ManifestError> {
        let raw: Raw = serde_json::from_slice(bytes)?;
        if let Some(v) = raw.schema_version
            && v != 2
        {
            return Err(ManifestError::SchemaVersion(v));
        }
        let header = content_type
            .map(|c| c.split(';').next().unwrap_or_default().trim().to_owned())
            .filter(|c| !c.is_empty() && c != "application/octet-stream");
        let media_type = match (raw.media_type, header) {
            (Some(body), Some(header)) if body != header => {
                return Err(ManifestError::MediaTypeMismatch { body, header });
            }
            (Some(body), _) => body,
            (None, Some(header)) => header,
            (None, None) => {
                // An OCI manifest may omit mediaType; infer it from the shape.
                if raw.manifests.is_some() {
                    media::OCI_INDEX.to_owned()
                } else if raw.config.is_some() {
                    media::OCI_MANIFEST.to_owned()
                } else {
                    return Err(ManifestError::NoMediaType);
                }
            }
        };
        let kind = match media_type.as_str() {
            media::OCI_INDEX | media::DOCKER_LIST => ManifestKind::Index,
            media::OCI_MANIFEST | media::DOCKER_MANIFEST => ManifestKind::Image,
            _ if raw.manifests.is_some() => ManifestKind::Index,
            _ => ManifestKind::Image,
        };
        match kind {
            ManifestKind::Index if raw.manifests.is_none() => {
                return Err(ManifestError::Missing(media_type, "manifests array"));
            }
            ManifestKind::Image if raw.config.is_none() && media::is_manifest(&media_type) => {
                return Err(ManifestError::Missing(media_type, "config descriptor"));
            }
            _ => {}
        }
        Ok(ParsedManifest {
            media_type,
            kind,
            // An empty artifactType counts as absent (OCI 1.1).
            artifact_type: raw.artifact_type.filter(|t| !t.is_empty()),
            config: raw.config,
            layers: raw.layers.unwrap_or_default(),
            manifests: raw.manifests.unwrap_or_default(),
            subject: raw.subject,
            annotations: raw.annotations,
        })
    }

    /// The artifact type a referrers listing shows: the manifest's own `artifactType`,
    /// else its config's media type (OCI 1.1 rules).
    pub fn effective_artifact_type(&self) -> Option<String> {
        self.artifact_type.clone().or_else(|| match self.kind {
            ManifestKind::Image => self.config.as_ref().map(|c| c.media_type.clone()),
            ManifestKind::Index => None,
        })
    }

    /// What kind of artifact this is, when it is not a runnable image (a signature, an
    /// SBOM, a Helm chart): its `artifactType`, or a config media type other than an
    /// image config's. `None` for images and for indexes without an `artifactType`.
    pub fn artifact_kind(&self) -> Option<String> {
        self.effective_artifact_type()
            .filter(|t| t != media::OCI_CONFIG && t != media::DOCKER_CONFIG)
    }

    /// Every blob this manifest requires to be present (config and distributable layers).
    pub fn required_blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config
            .iter()
            .chain(self.layers.iter())
            .filter(|d| !d.is_foreign())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
      "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},
      "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},
                {"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0,"urls":["https://x"]}]}"#;

    #[test]
    fn parses_image() {
        let m = ParsedManifest::parse(IMAGE.as_bytes(), Some(media::OCI_MANIFEST)).unwrap();
        assert_eq!(m.kind, ManifestKind::Image);
        assert_eq!(m.required_blobs().count(), 2);
        assert_eq!(
            m.effective_artifact_type().as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        assert_eq!(m.artifact_kind(), None, "a runnable image is no artifact");
        let helm = IMAGE.replace(
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.cncf.helm.config.v1+json",
        );
        let m = ParsedManifest::parse(helm.as_bytes(), None).unwrap();
        assert_eq!(
            m.artifact_kind().as_deref(),
            Some("application/vnd.cncf.helm.config.v1+json")
        );
    }

    #[test]
    fn refuses_mismatch_and_garbage() {
        assert!(matches!(
            ParsedManifest::parse(IMAGE.as_bytes(), Some(media::DOCKER_MANIFEST)),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
        assert!(ParsedManifest::parse(b"{not json", None).is_err());
        assert!(ParsedManifest::parse(br#"{"schemaVersion":1}"#, None).is_err());
        assert!(
            ParsedManifest::parse(
                br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#,
                None
            )
            .is_err()
        );
        // a digest with a path trick inside a descriptor is a JSON error, not a path
        assert!(
            ParsedManifest::parse(
                br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:../../etc","size":1}}"#,
                None
            )
            .is_err()
        );
    }

    #[test]
    fn descriptor_sizes_are_int64() {
        let with_size = |size: &str| {
            format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"x","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":{size}}},"layers":[]}}"#
            )
        };
        for bad in ["18446744073709551615", "9223372036854775808", "-1"] {
            assert!(
                ParsedManifest::parse(with_size(bad).as_bytes(), None).is_err(),
                "{bad}"
            );
        }
        let max = ParsedManifest::parse(with_size("9223372036854775807").as_bytes(), None).unwrap();
        assert_eq!(max.config.unwrap().size, i64::MAX as u64);
    }

    #[test]
    fn infers_index() {
        let m = ParsedManifest::parse(br#"{"schemaVersion":2,"manifests":[]}"#, None).unwrap();
        assert_eq!(m.kind, ManifestKind::Index);
        assert_eq!(m.media_type, media::OCI_INDEX);
    }
}
