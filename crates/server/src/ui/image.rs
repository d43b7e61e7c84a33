//! The image page (one tag or digest of a repository): the platforms of an index with
//! their sizes, an image's layers and config (created, entrypoint and command,
//! environment, labels, exposed ports), the referrers (signatures, SBOMs, attestations)
//! with their artifact types, the digests, and pull commands for docker, podman,
//! containerd and skopeo. Also the size summary the repository page shows per tag. It
//! reads the manifests it shows and at most one config blob, never more.

use super::{Rendered, View, esc, href, human_bytes};
use crate::App;
use oci::{Descriptor, Digest, ManifestKind, ParsedManifest, Reference, RepoName};
use std::collections::HashSet;
use std::fmt::Write as _;

/// The largest image config the page reads: real ones are a few KiB; anything larger
/// is shown by digest and size only.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Children of an index whose sizes a summary reads: indexes name a handful of
/// platforms (and attestations); an index of thousands is summed only this far.
const MAX_CHILDREN_READ: usize = 64;

/// Referrers an image page lists (the first by digest); beyond them it says how many
/// more there are. Anyone who may push can attach referrers, so the page reads only
/// this many, however many there are.
const MAX_REFERRERS_SHOWN: usize = 100;

/// What the repository page shows of one tag's manifest.
pub(super) struct Summary {
    pub kind: ManifestKind,
    pub artifact_type: Option<String>,
    /// Platforms an index names (0 for an image).
    pub platforms: usize,
    /// Bytes of it the repository holds: the manifest, its config and layers as the
    /// manifest declares them, and for an index each child the repository holds (a
    /// cache holds only those clients asked for) with its config and layers, every blob
    /// counted once. `None` when the manifest itself could not be read.
    pub size: Option<u64>,
}

/// The summary of manifest `digest` in `repo`: the manifest and, for an index with
/// `children` set, its children (up to [`MAX_CHILDREN_READ`], one level: an index's
/// child index counts as its own bytes) are read, through the registry's cache.
pub(super) async fn summary(
    app: &App,
    repo: &RepoName,
    digest: &Digest,
    children: bool,
) -> Option<Summary> {
    let stored = app.registry.manifest_by_digest(repo, digest).await.ok()?;
    let parsed = ParsedManifest::parse(&stored.bytes, Some(&stored.media_type)).ok()?;
    let mut seen: HashSet<Digest> = HashSet::new();
    // Declared sizes are the client's word (up to i64::MAX each): added without wrapping.
    let add = |seen: &mut HashSet<Digest>, p: &ParsedManifest| {
        p.config
            .iter()
            .chain(p.layers.iter())
            .filter(|b| seen.insert(b.digest.clone()))
            .fold(0u64, |t, b| t.saturating_add(b.size))
    };
    let mut total = (stored.bytes.len() as u64).saturating_add(add(&mut seen, &parsed));
    let wanted = if children { MAX_CHILDREN_READ } else { 0 };
    for child in parsed.manifests.iter().take(wanted) {
        if !seen.insert(child.digest.clone()) {
            continue;
        }
        let Ok(c) = app.registry.manifest_by_digest(repo, &child.digest).await else {
            continue;
        };
        if let Ok(p) = ParsedManifest::parse(&c.bytes, Some(&c.media_type)) {
            total = total
                .saturating_add(c.bytes.len() as u64)
                .saturating_add(add(&mut seen, &p));
        }
    }
    Some(Summary {
        kind: parsed.kind,
        artifact_type: parsed.artifact_kind(),
        platforms: parsed
            .manifests
            .iter()
            .filter(|m| m.platform_name().is_some())
            .count(),
        size: Some(total),
    })
}

/// The image page: `?repo=<name>&ref=<tag or digest>`.
pub(super) async fn render(view: &View<'_>) -> Rendered {
    let repo = view.visible_repo("repo").await?;
    let reference: Reference = view.param("ref")?.parse().ok()?;
    let app = view.app;
    let m = app.registry.get_manifest(&repo, &reference).await.ok()?;
    let parsed = ParsedManifest::parse(&m.stored.bytes, Some(&m.stored.media_type)).ok()?;
    let shown = match &reference {
        Reference::Tag(t) => format!("{repo}:{t}"),
        Reference::Digest(d) => format!("{repo}@{d}"),
    };
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<h2>{}</h2><p><a href=\"{}\">{}</a> · {}</p><dl><dt>digest</dt><dd><code>{}</code></dd>\
         <dt>media type</dt><dd><code>{}</code></dd>",
        esc(&shown),
        href("/ui/repository", &[("name", repo.as_str())]),
        esc(repo.as_str()),
        match view.upstream_of(&repo) {
            Some(u) => format!("cached from {}", esc(&u.name)),
            None => "hosted".to_owned(),
        },
        esc(&m.digest.to_string()),
        esc(&m.stored.media_type),
    );
    if let Some(a) = parsed.artifact_kind() {
        let _ = write!(h, "<dt>artifact type</dt><dd><code>{}</code></dd>", esc(&a));
    }
    if let Some(s) = summary(app, &repo, &m.digest, true)
        .await
        .and_then(|s| s.size)
    {
        let _ = write!(h, "<dt>size</dt><dd>{}</dd>", human_bytes(s));
    }
    if let Reference::Tag(t) = &reference
        && let Ok(Some(at)) = app.registry.tag_written_at(&repo, t).await
    {
        let _ = write!(
            h,
            "<dt>pushed</dt><dd>{}</dd>",
            super::ago(Some(at), view.now)
        );
    }
    if let Some(subject) = &parsed.subject {
        let _ = write!(
            h,
            "<dt>refers to</dt><dd><a href=\"{}\"><code>{}</code></a></dd>",
            href(
                "/ui/image",
                &[
                    ("repo", repo.as_str()),
                    ("ref", &subject.digest.to_string())
                ]
            ),
            esc(&subject.digest.to_string())
        );
    }
    h.push_str("</dl>");
    pull_commands(view, &repo, &reference, &mut h);
    match parsed.kind {
        ManifestKind::Index => platforms(view, &repo, &parsed, &mut h).await,
        ManifestKind::Image => {
            config(view, &repo, parsed.config.as_ref(), &mut h).await;
            layers(&parsed.layers, &mut h);
        }
    }
    annotations(parsed.annotations.as_ref(), &mut h);
    referrers(view, &repo, &m.digest, &mut h).await;
    Some((format!("{shown} · berth"), h))
}

/// Commands that pull this image through berth, to copy.
fn pull_commands(view: &View<'_>, repo: &RepoName, reference: &Reference, h: &mut String) {
    let suffix = match reference {
        Reference::Tag(t) => format!(":{t}"),
        Reference::Digest(d) => format!("@{d}"),
    };
    let here = format!("{}/{repo}{suffix}", view.host);
    let local_name = repo.as_str().rsplit('/').next().unwrap_or("image");
    let mut cmds = vec![
        ("docker", format!("docker pull {here}")),
        ("podman", format!("podman pull {here}")),
    ];
    match view.upstream_of(repo) {
        // Through the mirror: containerd asks berth for the upstream's own name (see
        // `berth hosts-toml`).
        Some(u) => {
            let rest = repo
                .as_str()
                .strip_prefix(&format!("{}/", u.key))
                .unwrap_or(repo.as_str());
            cmds.push((
                "containerd (ctr), through the mirror",
                format!(
                    "ctr images pull --hosts-dir /etc/containerd/certs.d {}/{rest}{suffix}",
                    u.name
                ),
            ));
        }
        None => cmds.push(("containerd (ctr)", format!("ctr images pull {here}"))),
    }
    cmds.push((
        "skopeo",
        format!(
            "skopeo copy docker://{here} oci:{local_name}{}",
            match reference {
                Reference::Tag(t) => format!(":{t}"),
                Reference::Digest(_) => String::new(),
            }
        ),
    ));
    h.push_str("<h2>Pull</h2><table>");
    for (client, cmd) in cmds {
        let _ = write!(
            h,
            "<tr><th>{}</th><td><code class=\"cmd\">{}</code></td></tr>",
            esc(client),
            esc(&cmd)
        );
    }
    h.push_str(
        "</table><p class=\"muted\">Over plain HTTP, add <code>--plain-http</code> to ctr and \
         <code>--tls-verify=false</code> to podman and skopeo; docker needs the address in \
         <code>insecure-registries</code>. containerd's mirror files come from \
         <code>berth hosts-toml</code>.</p>",
    );
}

async fn platforms(view: &View<'_>, repo: &RepoName, parsed: &ParsedManifest, h: &mut String) {
    let _ = write!(
        h,
        "<h2>Platforms ({})</h2><table><tr><th>platform</th><th>digest</th><th>size</th><th>media type</th></tr>",
        parsed.manifests.len()
    );
    for (i, child) in parsed.manifests.iter().enumerate() {
        let name = child
            .platform_name()
            .or_else(|| child.artifact_type.clone())
            .or_else(|| {
                child
                    .annotations
                    .as_ref()?
                    .get("vnd.docker.reference.type")?
                    .as_str()
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "—".to_owned());
        let size = if i < MAX_CHILDREN_READ {
            summary(view.app, repo, &child.digest, false).await
        } else {
            None
        };
        let size = match size.and_then(|s| s.size) {
            Some(s) => human_bytes(s),
            None if view.upstream_of(repo).is_some() => {
                "<span class=\"muted\">not cached yet</span>".to_owned()
            }
            None => "?".to_owned(),
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td><a href=\"{}\"><code>{}</code></a></td><td class=\"n\">{size}</td><td><code>{}</code></td></tr>",
            esc(&name),
            href(
                "/ui/image",
                &[("repo", repo.as_str()), ("ref", &child.digest.to_string())]
            ),
            esc(&child.digest.to_string()),
            esc(&child.media_type),
        );
    }
    h.push_str("</table>");
}

fn layers(layers: &[Descriptor], h: &mut String) {
    // Each distinct layer once, as the sizes elsewhere count them.
    let mut seen = HashSet::new();
    let total = layers
        .iter()
        .filter(|l| seen.insert(&l.digest))
        .fold(0u64, |t, l| t.saturating_add(l.size));
    let _ = write!(
        h,
        "<h2>Layers ({}, {})</h2><table><tr><th>#</th><th>digest</th><th>size</th><th>media type</th></tr>",
        layers.len(),
        human_bytes(total)
    );
    for (i, l) in layers.iter().enumerate() {
        let _ = write!(
            h,
            "<tr><td class=\"n\">{}</td><td><code>{}</code></td><td class=\"n\">{}</td><td><code>{}</code></td></tr>",
            i + 1,
            esc(&l.digest.to_string()),
            human_bytes(l.size),
            esc(&l.media_type)
        );
    }
    h.push_str("</table>");
}

/// The parts of an image config people look for (the image spec's `config` object).
async fn config(view: &View<'_>, repo: &RepoName, desc: Option<&Descriptor>, h: &mut String) {
    let Some(desc) = desc else {
        return;
    };
    let _ = write!(
        h,
        "<h2>Config</h2><dl><dt>digest</dt><dd><code>{}</code> ({})</dd>",
        esc(&desc.digest.to_string()),
        human_bytes(desc.size)
    );
    let bytes = view
        .app
        .registry
        .peek_blob(repo, &desc.digest, MAX_CONFIG_BYTES)
        .await
        .ok()
        .flatten();
    let Some(json) = bytes.and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    else {
        h.push_str("<dt>contents</dt><dd class=\"muted\">not stored here (yet), or not an image config</dd></dl>");
        return;
    };
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    for key in ["created", "author"] {
        if let Some(v) = json.get(key) {
            let _ = write!(h, "<dt>{key}</dt><dd>{}</dd>", esc(&text(v)));
        }
    }
    let field = |k: &str| json.get(k).and_then(|v| v.as_str()).unwrap_or("");
    if !field("os").is_empty() || !field("architecture").is_empty() {
        let _ = write!(
            h,
            "<dt>platform</dt><dd>{}/{}</dd>",
            esc(field("os")),
            esc(field("architecture"))
        );
    }
    let c = json.get("config").cloned().unwrap_or_default();
    let list = |v: Option<&serde_json::Value>| -> Option<String> {
        let items = v?.as_array()?;
        Some(
            items
                .iter()
                .map(|i| format!("<code>{}</code>", esc(&text(i))))
                .collect::<Vec<_>>()
                .join(" "),
        )
    };
    for (label, key) in [("entrypoint", "Entrypoint"), ("command", "Cmd")] {
        if let Some(l) = list(c.get(key)) {
            let _ = write!(h, "<dt>{label}</dt><dd>{l}</dd>");
        }
    }
    for (label, key) in [("working directory", "WorkingDir"), ("user", "User")] {
        if let Some(v) = c
            .get(key)
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
        {
            let _ = write!(h, "<dt>{label}</dt><dd><code>{}</code></dd>", esc(v));
        }
    }
    if let Some(ports) = c.get("ExposedPorts").and_then(|v| v.as_object()) {
        let ports: Vec<String> = ports
            .keys()
            .map(|p| format!("<code>{}</code>", esc(p)))
            .collect();
        let _ = write!(h, "<dt>exposed ports</dt><dd>{}</dd>", ports.join(" "));
    }
    if let Some(env) = c.get("Env").and_then(|v| v.as_array()) {
        let _ = write!(h, "<dt>environment</dt><dd><ul>");
        for e in env {
            let _ = write!(h, "<li><code>{}</code></li>", esc(&text(e)));
        }
        h.push_str("</ul></dd>");
    }
    if let Some(labels) = c.get("Labels").and_then(|v| v.as_object()) {
        h.push_str("<dt>labels</dt><dd><ul>");
        for (k, v) in labels {
            let _ = write!(
                h,
                "<li><code>{}</code> = <code>{}</code></li>",
                esc(k),
                esc(&text(v))
            );
        }
        h.push_str("</ul></dd>");
    }
    h.push_str("</dl>");
}

fn annotations(a: Option<&serde_json::Map<String, serde_json::Value>>, h: &mut String) {
    let Some(a) = a.filter(|a| !a.is_empty()) else {
        return;
    };
    h.push_str("<h2>Annotations</h2><table>");
    for (k, v) in a {
        let v = v
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string());
        let _ = write!(
            h,
            "<tr><th><code>{}</code></th><td>{}</td></tr>",
            esc(k),
            esc(&v)
        );
    }
    h.push_str("</table>");
}

async fn referrers(view: &View<'_>, repo: &RepoName, digest: &Digest, h: &mut String) {
    let (found, links) = view
        .app
        .registry
        .first_referrers(repo, digest, None, MAX_REFERRERS_SHOWN)
        .await
        .unwrap_or_default();
    if found.len() < MAX_REFERRERS_SHOWN {
        let _ = write!(h, "<h2>Referrers ({})</h2>", found.len());
    } else {
        let _ = write!(
            h,
            "<h2>Referrers (the first {} of up to {links})</h2>",
            found.len()
        );
    }
    if found.is_empty() {
        h.push_str(
            "<p class=\"muted\">No signatures, SBOMs or attestations refer to this manifest.</p>",
        );
        return;
    }
    h.push_str(
        "<table><tr><th>artifact type</th><th>digest</th><th>size</th><th>created</th></tr>",
    );
    for r in &found {
        let created = r
            .annotations
            .as_ref()
            .and_then(|a| a.get("org.opencontainers.image.created"))
            .and_then(|v| v.as_str())
            .unwrap_or("—");
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td><a href=\"{}\"><code>{}</code></a></td><td class=\"n\">{}</td><td>{}</td></tr>",
            esc(r.artifact_type.as_deref().unwrap_or(&r.media_type)),
            href(
                "/ui/image",
                &[("repo", repo.as_str()), ("ref", &r.digest.to_string())]
            ),
            esc(&r.digest.to_string()),
            human_bytes(r.size),
            esc(created),
        );
    }
    h.push_str("</table>");
}
