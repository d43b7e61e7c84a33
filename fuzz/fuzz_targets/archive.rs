//! Fuzzes `client::archive::import` on arbitrary bytes written as a tar file, importing
//! into an in-memory registry: it never panics, never writes outside the temporary
//! directory it extracts in (the directory around it gains no entries, and the
//! extraction directory is gone afterwards), and succeeds only for a well-formed
//! archive, whose image then is in the registry under the tag with all it references.
//!
//! `import` extracts beside `std::env::temp_dir()`, so `init` points `TMPDIR` at a
//! directory of its own, `<base>/tmp`; `<base>` must never hold anything but `tmp`.
//! With `BERTH_FUZZ_VERBOSE` set, each input's outcome is printed.
#![no_main]

use client::copy::{ImageSink, RawManifest, Silent};
use bytes::Bytes;
use futures::stream::BoxStream;
use libfuzzer_sys::fuzz_target;
use oci::{Digest, ManifestKind, ParsedManifest, Reference, RepoName, Tag};
use registry::{PutManifest, Registry, RegistryError, RegistryOptions};
use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// The tag the archive is imported under.
const TAG: &str = "latest";
/// The repository it is imported into.
const REPO: &str = "fuzz/import";

/// `<base>`: the directory around the temporary directory.
static BASE: OnceLock<PathBuf> = OnceLock::new();
static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// Removes `<base>` when libFuzzer exits normally (a crash keeps it for inspection).
extern "C" fn remove_base() {
    if let Some(b) = BASE.get() {
        let _ = std::fs::remove_dir_all(b);
    }
}

/// A repository of a `registry::Registry` as the destination of an import.
struct Sink {
    registry: Registry,
    repo: RepoName,
}

#[async_trait::async_trait]
impl ImageSink for Sink {
    async fn has_blob(&self, digest: &Digest, size: u64) -> anyhow::Result<bool> {
        match self.registry.stat_blob(&self.repo, digest).await {
            Ok(n) => Ok(n == size),
            Err(RegistryError::BlobUnknown) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn mount(&self, _: &Digest, _: &str) -> anyhow::Result<bool> {
        Ok(false)
    }

    async fn put_blob(
        &self,
        digest: &Digest,
        size: u64,
        body: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> anyhow::Result<()> {
        Ok(self
            .registry
            .put_blob(&self.repo, digest, Some(size), body)
            .await?)
    }

    async fn put_manifest(&self, m: &RawManifest, tag: Option<&str>) -> anyhow::Result<()> {
        let reference = match tag {
            Some(t) => Reference::Tag(t.parse()?),
            None => Reference::Digest(m.digest.clone()),
        };
        self.registry
            .put_manifest(PutManifest {
                repo: &self.repo,
                reference: &reference,
                content_type: Some(&m.media_type),
                bytes: m.bytes.clone(),
            })
            .await?;
        Ok(())
    }

    fn registry_repo(&self) -> Option<(String, String)> {
        None
    }
}

fn entries(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// The names of the archive's entries (without `./`), or `None` if the tar crate cannot
/// read it to the end.
fn tar_names(data: &[u8]) -> Option<BTreeSet<PathBuf>> {
    let mut archive = tar::Archive::new(data);
    let mut names = BTreeSet::new();
    for entry in archive.entries().ok()? {
        let entry = entry.ok()?;
        let path = entry.path().ok()?;
        let path: PathBuf = path
            .components()
            .filter(|c| !matches!(c, Component::CurDir))
            .collect();
        names.insert(path);
    }
    Some(names)
}

/// After a successful import: the tag names the reported manifest, whose bytes hash to
/// it and which has everything it references in the repository.
async fn check_imported(registry: &Registry, repo: &RepoName, reported: &str) {
    let digest: Digest = reported
        .parse()
        .unwrap_or_else(|e| panic!("import reported digest {reported:?}: {e}"));
    let tag: Tag = TAG.parse().unwrap();
    let m = registry
        .get_manifest(repo, &Reference::Tag(tag))
        .await
        .expect("an import that succeeded left no tagged manifest");
    assert_eq!(
        m.digest, digest,
        "the tag names another manifest than reported"
    );
    assert_eq!(digest.same_algorithm_of(&m.stored.bytes), digest);
    let parsed = ParsedManifest::parse(&m.stored.bytes, Some(&m.stored.media_type))
        .expect("the imported manifest does not parse");
    match parsed.kind {
        ManifestKind::Image => {
            for d in parsed.required_blobs() {
                let size = registry
                    .stat_blob(repo, &d.digest)
                    .await
                    .unwrap_or_else(|e| panic!("imported image lacks blob {}: {e}", d.digest));
                assert_eq!(size, d.size, "blob {} has the wrong size", d.digest);
            }
        }
        ManifestKind::Index => {
            for c in &parsed.manifests {
                registry
                    .get_manifest(repo, &Reference::Digest(c.digest.clone()))
                    .await
                    .unwrap_or_else(|e| panic!("imported index lacks child {}: {e}", c.digest));
            }
        }
    }
}

fuzz_target!(
    init: {
        let base = tempfile::Builder::new()
            .prefix("berth-fuzz-archive-")
            .tempdir()
            .unwrap()
            .keep();
        let tmp = base.join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        // SAFETY: this runs once, on libFuzzer's thread, before the target has started
        // any thread of its own; libFuzzer's own helper thread never reads the
        // environment.
        unsafe { std::env::set_var("TMPDIR", &tmp) };
        assert_eq!(std::env::temp_dir(), tmp);
        BASE.set(base).unwrap();
        // SAFETY: registering a plain `extern "C"` function without arguments.
        unsafe { libc::atexit(remove_base) };
        RUNTIME
            .set(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap(),
            )
            .unwrap();
    },
    |data: &[u8]| {
        let base = BASE.get().unwrap();
        let tmp = base.join("tmp");
        let input = tmp.join("input.tar");
        std::fs::write(&input, data).unwrap();
        let expected_tmp: BTreeSet<String> = ["input.tar".to_owned()].into();
        let expected_base: BTreeSet<String> = ["tmp".to_owned()].into();

        let registry = Registry::new(
            Arc::new(store::memory::MemoryStore::new()),
            RegistryOptions::default(),
        );
        let repo: RepoName = REPO.parse().unwrap();
        let sink = Sink {
            registry: registry.clone(),
            repo: repo.clone(),
        };
        let rt = RUNTIME.get().unwrap();
        let result = rt.block_on(client::archive::import(
            &input,
            &sink,
            Some(TAG),
            Arc::new(Silent),
        ));
        if std::env::var_os("BERTH_FUZZ_VERBOSE").is_some() {
            eprintln!("import: {:?}", result.as_ref().map_err(|e| format!("{e:#}")));
        }

        assert_eq!(
            entries(base),
            expected_base,
            "the import wrote beside the temporary directory ({:?})",
            result.as_ref().map(|r| &r.digest).map_err(|e| format!("{e:#}"))
        );
        let left = entries(&tmp);
        if left != expected_tmp {
            // Tidy up so that the next input starts clean, then fail.
            for name in left.difference(&expected_tmp) {
                let p = tmp.join(name);
                let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
            }
            panic!(
                "the import left {:?} in the temporary directory ({:?})",
                left.difference(&expected_tmp).collect::<Vec<_>>(),
                result.as_ref().map(|r| &r.digest).map_err(|e| format!("{e:#}"))
            );
        }

        let Ok(report) = result else {
            return;
        };
        let names = tar_names(data).expect("import accepted a tar the tar crate cannot read");
        let oci = names.contains(Path::new("index.json")) && names.contains(Path::new("oci-layout"));
        let docker = names.contains(Path::new("manifest.json"));
        assert!(oci || docker, "import accepted an archive with neither layout: {names:?}");
        rt.block_on(check_imported(&registry, &repo, &report.digest));
    }
);
