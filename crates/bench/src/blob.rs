//! Test content: pseudo-random blobs built once in memory with their digests, and the
//! small image (config + layer + OCI manifest) used for the manifest load.

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

/// OCI image manifest media type, sent as Content-Type on push and as Accept on GET.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A blob held in memory together with its `sha256:<hex>` digest.
#[derive(Clone)]
pub struct Blob {
    pub bytes: Bytes,
    pub digest: String,
}

impl Blob {
    /// A blob of `len` bytes of xorshift output from `seed` (incompressible and cheap
    /// to make: about a second per GiB).
    pub fn random(len: usize, seed: u64) -> Blob {
        Blob::new(Bytes::from(random_bytes(len, seed)))
    }

    pub fn new(bytes: Bytes) -> Blob {
        let digest = sha256_digest(&bytes);
        Blob { bytes, digest }
    }

    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// `count` blobs of `len` bytes with distinct content, all windows of one random
    /// buffer (so they cost `len` bytes of memory, not `count * len`), hashed in parallel.
    pub fn distinct(len: usize, count: usize, seed: u64) -> Vec<Blob> {
        /// Offset between consecutive windows: any shift makes a different digest.
        const WINDOW_STEP: usize = 4096;
        let buffer = Bytes::from(random_bytes(len + count * WINDOW_STEP, seed));
        std::thread::scope(|scope| {
            let hashing: Vec<_> = (0..count)
                .map(|i| {
                    let window = buffer.slice(i * WINDOW_STEP..i * WINDOW_STEP + len);
                    scope.spawn(move || Blob::new(window))
                })
                .collect();
            hashing
                .into_iter()
                .map(|h| h.join().expect("hashing thread panicked"))
                .collect()
        })
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    // xorshift64* never leaves zero, so any non-zero seed works.
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A minimal image: a config blob, one small layer and the OCI manifest naming both.
pub struct Image {
    pub config: Blob,
    pub layer: Blob,
    pub manifest: Bytes,
}

impl Image {
    /// A small image (a 4 KiB layer) whose content varies with `seed`.
    pub fn small(seed: u64) -> Image {
        /// Size of the image's single layer: small, as the load is about manifests.
        const LAYER_BYTES: usize = 4096;
        let config = Blob::new(Bytes::from(
            serde_json::json!({
                "architecture": "amd64",
                "os": "linux",
                "rootfs": { "type": "layers", "diff_ids": [] },
                "config": { "Labels": { "seed": seed.to_string() } },
            })
            .to_string(),
        ));
        let layer = Blob::random(LAYER_BYTES, seed);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, &config),
            "layers": [descriptor(OCI_LAYER, &layer)],
        });
        Image {
            config,
            layer,
            manifest: Bytes::from(manifest.to_string()),
        }
    }
}

/// An OCI descriptor of `blob` with `media_type`.
pub fn descriptor(media_type: &str, blob: &Blob) -> serde_json::Value {
    serde_json::json!({ "mediaType": media_type, "digest": blob.digest, "size": blob.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_blobs_have_the_asked_length_and_differ_by_seed() {
        let a = Blob::random(1001, 1);
        let b = Blob::random(1001, 2);
        assert_eq!(a.len(), 1001);
        assert_ne!(a.digest, b.digest);
        assert_eq!(a.digest, Blob::random(1001, 1).digest);
    }

    #[test]
    fn distinct_blobs_share_a_buffer_but_not_a_digest() {
        let blobs = Blob::distinct(10_000, 3, 7);
        assert_eq!(blobs.len(), 3);
        assert!(blobs.iter().all(|b| b.len() == 10_000));
        assert_ne!(blobs[0].digest, blobs[1].digest);
        assert_ne!(blobs[1].digest, blobs[2].digest);
        assert_eq!(blobs[2].digest, sha256_digest(&blobs[2].bytes));
    }

    #[test]
    fn digest_of_empty_is_the_well_known_one() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
