//! `berth verify`: walk an image in any OCI registry the way a pull would (index, every
//! child manifest, config, every layer, and referrers when asked), with HEAD requests or,
//! with `deep`, full downloads checked against their digests, and report every node that
//! is missing or inconsistent. It only reads from the registry.

use crate::remote::ImageRef;
use futures::StreamExt;
use oci::{Descriptor, Digest, ParsedManifest};
use serde::Serialize;
use std::collections::HashSet;

/// Largest manifest fetched (the registry's own limit).
const MAX_MANIFEST: u64 = registry::MAX_MANIFEST_BYTES;

/// Blobs checked at once: enough to hide round trips, few enough not to look like abuse.
const PARALLEL_BLOBS: usize = 8;

/// What `verify` checks.
#[derive(Clone, Copy, Debug, Default)]
pub struct VerifyOptions {
    /// Download every blob and check its digest and size (default: HEAD).
    pub deep: bool,
    /// Follow the referrers (signatures, SBOMs) of every manifest too.
    pub referrers: bool,
}

/// One node of the walk.
#[derive(Clone, Debug, Serialize)]
pub struct Node {
    /// `index`, `manifest`, `config`, `layer` or `referrer`.
    pub kind: &'static str,
    pub digest: String,
    /// The manifest that references it (`None` for the root).
    pub parent: Option<String>,
    /// Platform of a child manifest, as `os/arch[/variant]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Size the reference announces.
    pub size: Option<u64>,
    /// `None` when fine; else what is wrong.
    pub error: Option<String>,
}

/// The outcome of one `verify`.
#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub reference: String,
    /// Digest of the root manifest, when it could be fetched.
    pub digest: Option<String>,
    pub deep: bool,
    pub nodes: Vec<Node>,
}

impl VerifyReport {
    /// Every node is fetchable and consistent.
    pub fn is_ok(&self) -> bool {
        !self.nodes.is_empty() && self.nodes.iter().all(|n| n.error.is_none())
    }
}

struct Walk<'a> {
    client: &'a distribution::Client,
    repo: &'a str,
    opts: VerifyOptions,
    nodes: Vec<Node>,
    seen: HashSet<Digest>,
}

/// Check one blob: HEAD (size must match), or download and hash it.
async fn check_blob(
    client: &distribution::Client,
    repo: &str,
    deep: bool,
    d: &Descriptor,
) -> Result<(), String> {
    if !deep {
        let size = client
            .head_blob(repo, &d.digest)
            .await
            .map_err(|e| e.to_string())?;
        if size != d.size {
            return Err(format!(
                "registry reports {size} bytes, the manifest says {}",
                d.size
            ));
        }
        return Ok(());
    }
    let mut fetch = client
        .get_blob(repo, &d.digest)
        .await
        .map_err(|e| e.to_string())?;
    let mut h = oci::Hasher::new(d.digest.algorithm());
    let mut n = 0u64;
    while let Some(chunk) = fetch.body.next().await {
        let chunk = chunk.map_err(|e| format!("download failed after {n} bytes: {e}"))?;
        n += chunk.len() as u64;
        h.update(&chunk);
    }
    let got = h.finish();
    if got != d.digest {
        return Err(format!("content hashes to {got}"));
    }
    if n != d.size {
        return Err(format!(
            "{n} bytes downloaded, the manifest says {}",
            d.size
        ));
    }
    Ok(())
}

/// The node of one config or layer, checked.
async fn blob_node(
    client: &distribution::Client,
    repo: &str,
    deep: bool,
    kind: &'static str,
    d: Descriptor,
    parent: String,
) -> Node {
    let error = if d.is_foreign() {
        None // foreign layers live elsewhere by design
    } else {
        check_blob(client, repo, deep, &d).await.err()
    };
    Node {
        kind,
        digest: d.digest.to_string(),
        parent: Some(parent),
        platform: None,
        size: Some(d.size),
        error,
    }
}

impl Walk<'_> {
    /// Fetch and check manifest `reference` (found as `kind` under `parent`), then
    /// everything it references. Boxed: indexes recurse.
    fn manifest<'s>(
        &'s mut self,
        reference: String,
        kind: &'static str,
        parent: Option<String>,
        descriptor: Option<&'s Descriptor>,
    ) -> futures::future::BoxFuture<'s, Option<Digest>> {
        Box::pin(async move {
            let mut node = Node {
                kind,
                digest: reference.clone(),
                parent,
                platform: descriptor.and_then(Descriptor::platform_name),
                size: descriptor.map(|d| d.size),
                error: None,
            };
            let fetched = match self
                .client
                .get_manifest(self.repo, &reference, MAX_MANIFEST)
                .await
            {
                Ok(f) => f,
                Err(e) => {
                    node.error = Some(e.to_string());
                    self.nodes.push(node);
                    return None;
                }
            };
            node.digest = fetched.digest.to_string();
            if let Some(d) = descriptor
                && d.size != fetched.bytes.len() as u64
            {
                node.error = Some(format!(
                    "{} bytes, the index says {}",
                    fetched.bytes.len(),
                    d.size
                ));
            }
            let parsed = match ParsedManifest::parse(&fetched.bytes, Some(&fetched.media_type)) {
                Ok(p) => p,
                Err(e) => {
                    node.error = Some(format!("not a manifest: {e}"));
                    self.nodes.push(node);
                    return Some(fetched.digest);
                }
            };
            if kind != "referrer" {
                node.kind = if parsed.manifests.is_empty() && parsed.config.is_some() {
                    "manifest"
                } else if parsed.config.is_none() && !parsed.manifests.is_empty() {
                    "index"
                } else {
                    kind
                };
            }
            self.nodes.push(node);
            if !self.seen.insert(fetched.digest.clone()) {
                return Some(fetched.digest);
            }
            let me = fetched.digest.to_string();
            // Config and layers, several at a time.
            let blobs: Vec<(&'static str, Descriptor)> = parsed
                .config
                .iter()
                .map(|c| ("config", c.clone()))
                .chain(parsed.layers.iter().map(|l| ("layer", l.clone())))
                .filter(|(_, d)| self.seen.insert(d.digest.clone()))
                .collect();
            let (client, repo, deep) = (self.client, self.repo, self.opts.deep);
            let mut pending = Vec::with_capacity(blobs.len());
            for (kind, d) in blobs {
                pending.push(blob_node(client, repo, deep, kind, d, me.clone()));
            }
            let checked: Vec<Node> = futures::stream::iter(pending)
                .buffered(PARALLEL_BLOBS)
                .collect()
                .await;
            self.nodes.extend(checked);
            for child in &parsed.manifests {
                self.manifest(
                    child.digest.to_string(),
                    "manifest",
                    Some(me.clone()),
                    Some(child),
                )
                .await;
            }
            if self.opts.referrers {
                match self.client.referrers(self.repo, &fetched.digest).await {
                    Ok(list) => {
                        for r in &list {
                            self.manifest(
                                r.digest.to_string(),
                                "referrer",
                                Some(me.clone()),
                                Some(r),
                            )
                            .await;
                        }
                    }
                    Err(e) => self.nodes.push(Node {
                        kind: "referrer",
                        digest: "(listing)".into(),
                        parent: Some(me.clone()),
                        platform: None,
                        size: None,
                        error: Some(format!("cannot list referrers: {e}")),
                    }),
                }
            }
            Some(fetched.digest)
        })
    }
}

/// Walk `image` and report every node.
pub async fn verify(
    client: &distribution::Client,
    image: &ImageRef,
    opts: VerifyOptions,
) -> VerifyReport {
    let mut walk = Walk {
        client,
        repo: image.repo.as_str(),
        opts,
        nodes: Vec::new(),
        seen: HashSet::new(),
    };
    let root = walk
        .manifest(image.target.to_string(), "manifest", None, None)
        .await;
    VerifyReport {
        reference: image.to_string(),
        digest: root.map(|d| d.to_string()),
        deep: opts.deep,
        nodes: walk.nodes,
    }
}

/// The report as people read it: one line per node, failures with their reason, and a
/// summary.
pub fn render(report: &VerifyReport) -> String {
    let mut out = String::new();
    for n in &report.nodes {
        let status = if n.error.is_some() { "FAIL" } else { "ok" };
        let mut line = format!("{status:<4}  {:<8}  {}", n.kind, n.digest);
        if let Some(p) = &n.platform {
            line.push_str(&format!("  {p}"));
        }
        if let Some(s) = n.size
            && !matches!(n.kind, "index" | "manifest" | "referrer")
        {
            line.push_str(&format!("  {}", crate::human_bytes(s)));
        }
        if let Some(e) = &n.error {
            match &n.parent {
                Some(p) => line.push_str(&format!("\n      in {p}: {e}")),
                None => line.push_str(&format!("\n      {e}")),
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    let failed = report.nodes.iter().filter(|n| n.error.is_some()).count();
    out.push_str(&format!(
        "{}: {} nodes checked{}, {}\n",
        report.reference,
        report.nodes.len(),
        if report.deep {
            " (downloaded and hashed)"
        } else {
            " (HEAD)"
        },
        if failed == 0 {
            "all consistent".to_owned()
        } else {
            format!("{failed} FAILED")
        }
    ));
    out
}
