//! Break-glass tarballs: `berth export` writes an image (or a whole index) as an OCI
//! image-layout tar that `skopeo copy oci-archive:` reads, and `berth import` pushes one
//! back, also accepting the archives `docker save` writes. Archives are written to a
//! temporary name and renamed, so a reader never sees half of one; extraction refuses
//! paths that leave the extraction directory. It moves images through [`crate::copy`].

use crate::copy::{self, CopyOptions, CopyProgress, ImageSink, ImageSource, Layout};
use anyhow::Context;
use oci::Digest;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A scratch directory beside `path` (same filesystem, so the final rename is atomic),
/// removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn beside(path: &Path, what: &str) -> anyhow::Result<Scratch> {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("archive");
        let dir = parent.join(format!(".{name}.{what}.{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Tar the layout in `dir` into `out`, atomically.
fn tar_layout(dir: &Path, out: &Path) -> anyhow::Result<()> {
    let tmp = out.with_file_name(format!(
        ".{}.tmp",
        out.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("archive")
    ));
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    let mut t = tar::Builder::new(std::io::BufWriter::new(file));
    t.mode(tar::HeaderMode::Deterministic);
    for name in ["oci-layout", "index.json"] {
        t.append_path_with_name(dir.join(name), name)?;
    }
    t.append_dir_all("blobs", dir.join("blobs"))?;
    let file = t
        .into_inner()?
        .into_inner()
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
    file.sync_all()?;
    std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}

/// Export `reference` of `src` to the OCI-layout tar `out`, tagged `tag` inside.
pub async fn export(
    src: &dyn ImageSource,
    reference: &str,
    tag: Option<&str>,
    out: &Path,
    opts: &CopyOptions,
    progress: Arc<dyn CopyProgress>,
) -> anyhow::Result<copy::CopyReport> {
    let scratch = Scratch::beside(out, "layout")?;
    let layout = Layout::new(&scratch.0);
    let report = copy::copy(src, reference, &layout, tag, opts, progress).await?;
    if tag.is_none() {
        // An untagged image is still listed in index.json, without a name.
        let m = src.manifest(&report.digest).await?;
        layout.add_to_index(&m, None)?;
    }
    let (dir, out) = (scratch.0.clone(), out.to_owned());
    tokio::task::spawn_blocking(move || tar_layout(&dir, &out)).await??;
    Ok(report)
}

/// Extract `tar` into `dir`, refusing entries that would land outside it.
fn untar(tar_path: &Path, dir: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(tar_path)
        .with_context(|| format!("cannot read {}", tar_path.display()))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if path.is_absolute()
            || path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            anyhow::bail!(
                "{}: entry {} leaves the archive",
                tar_path.display(),
                path.display()
            );
        }
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Directory => {}
            // docker save links a layer saved twice to its first copy: allowed when the
            // link, resolved where it stands, stays inside the archive (so nothing read
            // or written through it later can reach outside the extraction directory).
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry.link_name()?.ok_or_else(|| {
                    anyhow::anyhow!(
                        "{}: link {} has no target",
                        tar_path.display(),
                        path.display()
                    )
                })?;
                let from = if entry.header().entry_type() == tar::EntryType::Symlink {
                    path.parent().unwrap_or(Path::new("")).to_owned()
                } else {
                    std::path::PathBuf::new()
                };
                if !stays_inside(&from, &target) {
                    anyhow::bail!(
                        "{}: link {} -> {} leaves the archive",
                        tar_path.display(),
                        path.display(),
                        target.display()
                    );
                }
            }
            other => anyhow::bail!(
                "{}: entry {} is a {other:?}, which an image archive never holds",
                tar_path.display(),
                path.display()
            ),
        }
        if !entry.unpack_in(dir)? {
            anyhow::bail!(
                "{}: entry {} leaves the archive",
                tar_path.display(),
                path.display()
            );
        }
    }
    Ok(())
}

/// Does `target`, taken relative to the archive folder `from`, name something inside the
/// archive? Judged on the names alone: absolute targets and `..` past the top are out.
fn stays_inside(from: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth = from
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .count() as isize;
    for c in target.components() {
        match c {
            std::path::Component::ParentDir => depth -= 1,
            std::path::Component::Normal(_) => depth += 1,
            std::path::Component::CurDir => {}
            _ => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

/// One image of a `docker save` archive's `manifest.json`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaved {
    config: String,
    #[serde(default)]
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// Turn an extracted `docker save` archive into an OCI layout in the same directory,
/// with the image tagged `tag`. Layers stay uncompressed tars, so their digests are the
/// diff IDs the config already names.
fn docker_to_layout(dir: &Path, tag: &str) -> anyhow::Result<()> {
    let saved: Vec<DockerSaved> =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json"))?)
            .context("manifest.json of the docker archive")?;
    let image = match saved.as_slice() {
        [one] => one,
        [] => anyhow::bail!("the docker archive holds no image"),
        many => {
            let tags: Vec<_> = many.iter().flat_map(|m| m.repo_tags.clone()).collect();
            anyhow::bail!(
                "the docker archive holds {} images ({}); import takes one",
                many.len(),
                tags.join(", ")
            )
        }
    };
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    // Store a file as a blob; its descriptor.
    let store = |rel: &str, media_type: &str| -> anyhow::Result<serde_json::Value> {
        let rel_path = Path::new(rel);
        if rel_path.is_absolute()
            || rel_path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            anyhow::bail!("docker archive names {rel}, outside the archive");
        }
        let bytes = std::fs::read(dir.join(rel_path))
            .with_context(|| format!("docker archive entry {rel}"))?;
        let d = Digest::sha256_of(&bytes);
        let target = blobs.join(d.hex());
        if !target.exists() {
            std::fs::write(&target, &bytes)?;
        }
        Ok(
            serde_json::json!({ "mediaType": media_type, "digest": d.to_string(), "size": bytes.len() }),
        )
    };
    let config = store(&image.config, "application/vnd.oci.image.config.v1+json")?;
    let layers: Vec<_> = image
        .layers
        .iter()
        .map(|l| store(l, "application/vnd.oci.image.layer.v1.tar"))
        .collect::<anyhow::Result<_>>()?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci::media::OCI_MANIFEST,
        "config": config,
        "layers": layers,
    }))?;
    let d = Digest::sha256_of(&manifest);
    std::fs::write(blobs.join(d.hex()), &manifest)?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": oci::media::OCI_INDEX,
            "manifests": [{
                "mediaType": oci::media::OCI_MANIFEST,
                "digest": d.to_string(),
                "size": manifest.len(),
                "annotations": { "org.opencontainers.image.ref.name": tag },
            }],
        }))?,
    )?;
    Ok(())
}

/// The tag to read from an extracted OCI layout: `want` if the layout has it, else the
/// only image it holds.
fn layout_tag(dir: &Path, want: Option<&str>) -> anyhow::Result<String> {
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)
        .context("index.json of the archive")?;
    let names: Vec<String> = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| m["digest"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    if let Some(w) = want
        && names.iter().any(|n| n == w)
    {
        return Ok(w.to_owned());
    }
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => anyhow::bail!("the archive holds no image"),
        many => anyhow::bail!(
            "the archive holds {} images ({}); name one with the destination tag",
            many.len(),
            many.join(", ")
        ),
    }
}

/// Import the archive `tar` (OCI layout or `docker save`) into `dst`, under `tag`.
pub async fn import(
    tar_path: &Path,
    dst: &dyn ImageSink,
    tag: Option<&str>,
    progress: Arc<dyn CopyProgress>,
) -> anyhow::Result<copy::CopyReport> {
    let scratch = Scratch::beside(&std::env::temp_dir().join("berth-import"), "extract")?;
    let (t, d) = (tar_path.to_owned(), scratch.0.clone());
    tokio::task::spawn_blocking(move || untar(&t, &d)).await??;
    let dir = scratch.0.clone();
    let reference = if dir.join("index.json").exists() && dir.join("oci-layout").exists() {
        layout_tag(&dir, tag)?
    } else if dir.join("manifest.json").exists() {
        let name = tag.unwrap_or("latest").to_owned();
        let (d, n) = (dir.clone(), name.clone());
        tokio::task::spawn_blocking(move || docker_to_layout(&d, &n)).await??;
        name
    } else {
        anyhow::bail!(
            "{} is neither an OCI image layout nor a docker save archive",
            tar_path.display()
        );
    };
    let src = Layout::new(&dir);
    // Every image of an index comes along: an archive is imported whole.
    let opts = CopyOptions {
        all: true,
        platform: None,
    };
    copy::copy(&src, &reference, dst, tag, &opts, progress).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar holding one link `name -> target` (a symlink, or a hard link).
    fn tar_with_link(name: &str, target: &str, kind: tar::EntryType) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut b = tar::Builder::new(file.reopen().unwrap());
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o755);
        dir.set_size(0);
        b.append_data(&mut dir, "sub", std::io::empty()).unwrap();
        let mut data = tar::Header::new_gnu();
        data.set_size(2);
        data.set_mode(0o644);
        b.append_data(&mut data, "sub/real", &b"hi"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, name, target).unwrap();
        b.finish().unwrap();
        file
    }

    #[test]
    fn links_that_leave_the_archive_are_refused_and_inner_ones_kept() {
        for (name, target, kind) in [
            ("oci-layout", "../../escaped", tar::EntryType::Symlink),
            ("sub/x", "../../escaped", tar::EntryType::Symlink),
            ("oci-layout", "/etc/shadow", tar::EntryType::Symlink),
            ("blobs", "/", tar::EntryType::Symlink),
            ("oci-layout", "../escaped", tar::EntryType::Link),
        ] {
            let tar = tar_with_link(name, target, kind);
            let out = tempfile::tempdir().unwrap();
            let dir = out.path().join("x");
            std::fs::create_dir(&dir).unwrap();
            let err = untar(tar.path(), &dir).unwrap_err().to_string();
            assert!(
                err.contains("leaves the archive"),
                "{name} -> {target}: {err}"
            );
            let beside: Vec<_> = std::fs::read_dir(out.path()).unwrap().collect();
            assert_eq!(
                beside.len(),
                1,
                "nothing written beside the extraction directory"
            );
        }
        // docker save's own kind of link: a layer pointing at another inside.
        let tar = tar_with_link("sub/again", "real", tar::EntryType::Symlink);
        let out = tempfile::tempdir().unwrap();
        untar(tar.path(), out.path()).unwrap();
        assert_eq!(std::fs::read(out.path().join("sub/again")).unwrap(), b"hi");
        assert!(stays_inside(Path::new("a/b"), Path::new("../../c")));
        assert!(!stays_inside(Path::new("a/b"), Path::new("../../../c")));
    }
}
