//! Break-glass exports while serving: after each push of a tag an `[[export]]` entry
//! matches, the image (every platform of an index) is written as an OCI-layout tarball
//! `DIRECTORY/<repository>/<tag>/<UTC time>.tar` (`20261124T031500.123Z.tar`), atomically, and only the newest `keep`
//! are kept. It reads the registry directly; a failed export is logged and never
//! affects the push.

use crate::config::ExportConfig;
use client::archive;
use client::copy::{CopyOptions, ImageSource, RawManifest, Silent};
use futures::StreamExt;
use futures::stream::BoxStream;
use oci::{Digest, RepoName, RepoPattern};
use registry::{Pushed, Registry};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One compiled `[[export]]` entry.
#[derive(Clone, Debug)]
pub struct ExportRule {
    repositories: RepoPattern,
    tags: RepoPattern,
    directory: PathBuf,
    keep: usize,
}

impl ExportRule {
    /// Compile an entry (the configuration was validated).
    pub fn new(c: &ExportConfig) -> Result<ExportRule, oci::PatternError> {
        Ok(ExportRule {
            repositories: RepoPattern::new(&c.repositories)?,
            tags: RepoPattern::new(&c.tags)?,
            directory: c.directory.clone(),
            keep: c.keep.max(1),
        })
    }

    fn matches(&self, p: &Pushed) -> bool {
        self.repositories.matches(p.repo.as_str()) && self.tags.matches(p.tag.as_str())
    }
}

/// A repository of the local registry as an image source.
pub struct Local {
    pub registry: Registry,
    pub repo: RepoName,
}

#[async_trait::async_trait]
impl ImageSource for Local {
    async fn manifest(&self, reference: &str) -> anyhow::Result<RawManifest> {
        let r: oci::Reference = reference.parse()?;
        let m = self.registry.get_manifest(&self.repo, &r).await?;
        Ok(RawManifest {
            digest: m.digest,
            media_type: m.stored.media_type.clone(),
            bytes: m.stored.bytes.clone(),
        })
    }

    async fn blob(
        &self,
        digest: &Digest,
    ) -> anyhow::Result<BoxStream<'static, std::io::Result<bytes::Bytes>>> {
        Ok(self
            .registry
            .read_blob(&self.repo, digest, None)
            .await?
            .body
            .boxed())
    }

    fn registry_repo(&self) -> Option<(String, String)> {
        None
    }
}

/// `20261124T031500.123Z`: sorts by time, and is safe in a file name.
fn stamp(t: std::time::SystemTime) -> String {
    let since = t
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let base = server::access::rfc3339(since.as_secs()).replace(['-', ':'], "");
    format!(
        "{}.{:03}Z",
        base.trim_end_matches('Z'),
        since.subsec_millis()
    )
}

/// Remove all but the newest `keep` tarballs in `dir`.
fn prune(dir: &Path, keep: usize) -> std::io::Result<()> {
    let mut tars: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    tars.sort();
    let extra = tars.len().saturating_sub(keep);
    for old in &tars[..extra] {
        std::fs::remove_file(old)?;
    }
    Ok(())
}

/// Write one export for `pushed` under `rule`; the tarball's path.
pub async fn export_one(
    registry: &Registry,
    rule: &ExportRule,
    pushed: &Pushed,
) -> anyhow::Result<PathBuf> {
    let dir = rule
        .directory
        .join(pushed.repo.as_str())
        .join(pushed.tag.as_str());
    std::fs::create_dir_all(&dir)?;
    // Names sort by time; two exports within one millisecond wait for the next.
    let mut path = dir.join(format!("{}.tar", stamp(std::time::SystemTime::now())));
    while path.exists() {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        path = dir.join(format!("{}.tar", stamp(std::time::SystemTime::now())));
    }
    let src = Local {
        registry: registry.clone(),
        repo: pushed.repo.clone(),
    };
    // By digest: a tag pushed again meanwhile does not change what this export holds.
    let opts = CopyOptions {
        all: true,
        platform: None,
    };
    archive::export(
        &src,
        &pushed.digest.to_string(),
        Some(pushed.tag.as_str()),
        &path,
        &opts,
        Arc::new(Silent),
    )
    .await?;
    prune(&dir, rule.keep)?;
    Ok(path)
}

/// Export after every matching push until dropped.
pub fn spawn_exports(registry: Registry, rules: Vec<ExportRule>) -> tokio::task::JoinHandle<()> {
    let mut pushes = registry.subscribe_pushes();
    tokio::spawn(async move {
        loop {
            let pushed = match pushes.recv().await {
                Ok(p) => p,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "pushes came faster than exports; some were not exported"
                    );
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            for rule in rules.iter().filter(|r| r.matches(&pushed)) {
                match export_one(&registry, rule, &pushed).await {
                    Ok(path) => tracing::info!(
                        repository = %pushed.repo,
                        tag = %pushed.tag,
                        file = %path.display(),
                        "break-glass export written"
                    ),
                    Err(e) => tracing::error!(
                        repository = %pushed.repo,
                        tag = %pushed.tag,
                        error = %format!("{e:#}"),
                        "break-glass export failed"
                    ),
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_time_and_prune_keeps_the_newest() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_795_487_400_007);
        assert_eq!(stamp(t), "20261124T023000.007Z");
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "20261124T023000.007Z.tar",
            "20261124T023000.010Z.tar",
            "20261124T023001.000Z.tar",
        ];
        for n in names {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        prune(dir.path(), 2).unwrap();
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, vec![names[1], names[2], "notes.txt"]);
    }
}
