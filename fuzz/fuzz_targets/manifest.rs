//! Fuzzes `oci::ParsedManifest::parse` on arbitrary bytes under every kind of
//! Content-Type: it never panics, every descriptor size it returns fits in an `i64`, and
//! what it accepts agrees with the Content-Type and with its own kind.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci::{Descriptor, ManifestKind, ParsedManifest, media};

/// Content-Types a client may send with a manifest PUT.
const CONTENT_TYPES: &[Option<&str>] = &[
    None,
    Some(media::OCI_MANIFEST),
    Some(media::OCI_INDEX),
    Some(media::DOCKER_MANIFEST),
    Some(media::DOCKER_LIST),
    Some("application/octet-stream"),
    Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
    Some("application/vnd.example.artifact+json"),
    Some(""),
];

fn check_descriptor(d: &Descriptor, what: &str) {
    assert!(
        d.size <= i64::MAX as u64,
        "{what} descriptor {} has size {} > i64::MAX",
        d.digest,
        d.size
    );
    assert_eq!(
        d.digest.to_string().parse::<oci::Digest>().as_ref(),
        Ok(&d.digest)
    );
    let _ = d.platform_name();
    let _ = d.is_foreign();
}

fuzz_target!(|data: &[u8]| {
    for &ct in CONTENT_TYPES {
        let Ok(m) = ParsedManifest::parse(data, ct) else {
            continue;
        };
        for d in m.config.iter() {
            check_descriptor(d, "config");
        }
        for d in &m.layers {
            check_descriptor(d, "layer");
        }
        for d in &m.manifests {
            check_descriptor(d, "child manifest");
        }
        for d in m.subject.iter() {
            check_descriptor(d, "subject");
        }

        // The Content-Type, when it says something, is the media type in force.
        let header = ct
            .map(|c| c.split(';').next().unwrap_or_default().trim())
            .filter(|c| !c.is_empty() && *c != "application/octet-stream");
        if let Some(h) = header {
            assert_eq!(m.media_type, h, "media type against Content-Type {ct:?}");
        }
        match m.kind {
            ManifestKind::Index => {
                assert!(
                    m.media_type != media::OCI_MANIFEST && m.media_type != media::DOCKER_MANIFEST,
                    "an index of type {}",
                    m.media_type
                );
            }
            ManifestKind::Image => {
                assert!(
                    m.media_type != media::OCI_INDEX && m.media_type != media::DOCKER_LIST,
                    "an image of type {}",
                    m.media_type
                );
                if media::is_manifest(&m.media_type) {
                    assert!(m.config.is_some(), "an image manifest without config");
                }
            }
        }
        assert!(
            m.artifact_type.as_deref() != Some(""),
            "empty artifactType kept"
        );
        for d in m.required_blobs() {
            assert!(!d.is_foreign(), "a foreign layer is required");
        }
        let required = m.required_blobs().count();
        assert!(required <= m.layers.len() + usize::from(m.config.is_some()));
        let _ = m.effective_artifact_type();
    }
});
