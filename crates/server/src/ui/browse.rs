//! Browsing: the repositories page (filtered by name and by source, hosted or one
//! upstream's cache, a page at a time with no fixed cap) and one repository's page (its
//! tags a page at a time, each with its size, kind and push time). A view reads one page
//! of names, and the tags and manifests of that page, never the whole store.

use super::{Rendered, View, ago, esc, href, human_bytes};
use oci::{ManifestKind, RepoName};
use std::fmt::Write as _;

/// Repositories on one page.
const REPOSITORIES_PER_PAGE: usize = 50;

/// Tags on one page of a repository.
const TAGS_PER_PAGE: usize = 50;

/// Names one view of a filtered list reads at most before it stops and offers to go on
/// from there: a filter that matches little costs pages of names, never the whole store
/// in one view.
const MAX_NAMES_READ: usize = 5_000;

/// Filter as you type: fetch the page for the form's current values and swap in its
/// results (the form works the same without it).
const FILTER_SCRIPT: &str = "<script>(()=>{const f=document.querySelector('form.search');\
if(!f||!window.fetch||!window.DOMParser)return;let t;f.addEventListener('input',()=>{clearTimeout(t);\
t=setTimeout(async()=>{const u='/ui/repositories?'+new URLSearchParams(new FormData(f));\
const r=await fetch(u);if(!r.ok)return;const d=new DOMParser().parseFromString(await r.text(),'text/html');\
const n=d.getElementById('results'),o=document.getElementById('results');\
if(n&&o){o.replaceWith(n);history.replaceState(null,'',u);}},200);});})();</script>";

/// The filter form (name and source), on the overview and the repositories page.
pub(super) fn search_form(view: &View<'_>, h: &mut String) {
    let q = view.param("q").unwrap_or("");
    let source = view.param("source").unwrap_or("");
    let _ = write!(
        h,
        "<form class=\"search\" action=\"/ui/repositories\" method=\"get\" role=\"search\">\
         <label>Repositories named <input type=\"search\" name=\"q\" value=\"{}\" \
         placeholder=\"part of a name\" autocomplete=\"off\"></label> \
         <label>from <select name=\"source\"><option value=\"\">anywhere</option>\
         <option value=\"hosted\"{}>hosted here</option>",
        esc(q),
        if source == "hosted" { " selected" } else { "" },
    );
    for u in view.app.cache.upstreams() {
        let _ = write!(
            h,
            "<option value=\"{}\"{}>cache of {}</option>",
            esc(&u.key),
            if source == u.key { " selected" } else { "" },
            esc(&u.name)
        );
    }
    h.push_str("</select></label> <button type=\"submit\">Search</button></form>");
}

/// Names in catalog order: from the name index, or read from the store as they come.
enum Names {
    Indexed(std::sync::Arc<Vec<RepoName>>, usize),
    Store(registry::RepoNames),
}

impl Names {
    async fn next(&mut self) -> registry::Result<Option<RepoName>> {
        match self {
            Names::Indexed(all, at) => {
                let next = all.get(*at).cloned();
                *at += 1;
                Ok(next)
            }
            Names::Store(names) => names.next().await,
        }
    }
}

/// Where a repository comes from, as the list says it.
fn source_label(view: &View<'_>, repo: &RepoName) -> String {
    match view.upstream_of(repo) {
        Some(u) => format!("cache of {}", esc(&u.name)),
        None => "hosted".to_owned(),
    }
}

/// `/ui/repositories?q=&source=&after=`.
pub(super) async fn repositories(view: &View<'_>) -> String {
    let app = view.app;
    let q = view.param("q").map(str::to_lowercase);
    let source = view.param("source");
    let upstream_keys: Vec<String> = app
        .cache
        .upstreams()
        .iter()
        .map(|u| u.key.clone())
        .collect();
    // One upstream's cache is one run of names: start where it starts, stop after it.
    let prefix = source
        .filter(|s| *s != "hosted" && upstream_keys.iter().any(|k| k == s))
        .map(|s| format!("{s}/"));
    // Where this page starts: after a name the visitor may pull (the last one the page
    // before showed), or at an opaque cursor (where a page stopped reading at a name the
    // visitor may not see). Any other start is not taken, so no start can be used to
    // probe for hidden names. An expired cursor starts again from the top.
    let mut after: Option<String> = match (view.param("from"), view.param("after")) {
        (Some(id), _) => app.names.resolve(id),
        (None, Some(a)) => a
            .parse::<RepoName>()
            .ok()
            .filter(|r| view.may_pull(r))
            .map(|r| r.to_string()),
        (None, None) => None,
    };
    // Every name of the cache sorts after `<key>/` and before the first name past it.
    if let Some(p) = &prefix
        && after.as_deref().is_none_or(|a| a < p.as_str())
    {
        after = Some(p.clone());
    }
    // A filter searches the name index; the plain list reads the store, so a new
    // repository shows at once.
    let index = if q.is_some() || source.is_some() {
        view.app.names.names(&app.registry).await
    } else {
        None
    };
    let read_limit = if index.is_some() {
        usize::MAX
    } else {
        MAX_NAMES_READ
    };
    let mut names = match index {
        Some(all) => {
            let from = after
                .as_deref()
                .map_or(0, |a| all.partition_point(|r| r.as_str() <= a));
            Names::Indexed(all, from)
        }
        None => Names::Store(app.registry.repositories_after(after.as_deref())),
    };
    let mut shown: Vec<RepoName> = Vec::new();
    let mut read = 0usize;
    let mut last_read: Option<String> = None;
    let mut more = false;
    let mut error = None;
    loop {
        if read >= read_limit {
            more = true;
            break;
        }
        let repo = match names.next().await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                // The message may name paths and repositories: it goes to the log.
                tracing::warn!(error = %e, "the web page cannot list repositories");
                error = Some(());
                break;
            }
        };
        if let Some(p) = &prefix
            && !repo.as_str().starts_with(p.as_str())
        {
            break;
        }
        read += 1;
        let hosted = view.upstream_of(&repo).is_none();
        let wanted = match source {
            Some("hosted") => hosted,
            Some(_) if prefix.is_some() => true,
            // An unknown source matches nothing rather than everything.
            Some(_) => false,
            None => true,
        } && q
            .as_deref()
            .is_none_or(|q| repo.as_str().to_lowercase().contains(q))
            && view.may_pull(&repo);
        if wanted {
            if shown.len() == REPOSITORIES_PER_PAGE {
                more = true;
                break;
            }
            shown.push(repo.clone());
        }
        last_read = Some(repo.to_string());
    }
    let mut h = String::with_capacity(16 * 1024);
    h.push_str("<h2>Repositories</h2>");
    search_form(view, &mut h);
    h.push_str("<div id=\"results\">");
    if error.is_some() {
        h.push_str("<p class=\"bad\">✖ cannot list repositories: the store failed (berth's log has the error).</p>");
    }
    if shown.is_empty() {
        h.push_str("<p class=\"muted\">No repositories you may pull match.</p>");
    } else {
        h.push_str(
            "<table><tr><th>repository</th><th>source</th><th>tags</th><th>last pull</th></tr>",
        );
        let pulls = app.history.last_pulls(app).await;
        for repo in &shown {
            let tags = app.registry.all_tags(repo).await.map(|t| t.len());
            let _ = write!(
                h,
                "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                href("/ui/repository", &[("name", repo.as_str())]),
                esc(repo.as_str()),
                source_label(view, repo),
                tags.map_or_else(|_| "?".to_owned(), |n| n.to_string()),
                ago(pulls.of(app, repo.as_str()), view.now),
            );
        }
        h.push_str("</table>");
    }
    // The filters, kept from page to page.
    let filters: Vec<(&str, &str)> = [("q", view.param("q")), ("source", source)]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect();
    let mut pager = Vec::new();
    if view.param("after").is_some() || view.param("from").is_some() {
        pager.push(format!(
            "<a href=\"{}\">← first page</a>",
            href("/ui/repositories", &filters)
        ));
    }
    if more {
        // On from the last name shown; or, when the read limit stopped the scan first,
        // from an opaque cursor for the last name read (which may be hidden).
        let next = if shown.len() == REPOSITORIES_PER_PAGE {
            shown.last().map(|r| ("after", r.to_string()))
        } else {
            last_read.map(|n| ("from", app.names.cursor(&n)))
        };
        if let Some((key, value)) = next {
            let mut pairs = vec![(key, value.as_str())];
            pairs.extend(&filters);
            pager.push(format!(
                "<a href=\"{}\" rel=\"next\">next page →</a>",
                href("/ui/repositories", &pairs),
            ));
        }
    }
    if !pager.is_empty() {
        let _ = write!(h, "<p class=\"pager\">{}</p>", pager.join(" · "));
    }
    h.push_str("</div>");
    h.push_str(FILTER_SCRIPT);
    h
}

/// `/ui/repository?name=&after=`: one repository's tags, a page at a time.
pub(super) async fn repository(view: &View<'_>) -> Rendered {
    let repo = view.visible_repo("name").await?;
    let app = view.app;
    let mut tags = app.registry.all_tags(&repo).await.ok()?;
    tags.sort();
    let after = view.param("after");
    let total = tags.len();
    let rest: Vec<_> = tags
        .into_iter()
        .filter(|t| after.is_none_or(|a| t.as_str() > a))
        .collect();
    let more = rest.len() > TAGS_PER_PAGE;
    let page = &rest[..rest.len().min(TAGS_PER_PAGE)];
    let pulls = app.history.last_pulls(app).await;
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<h2>{}</h2><p>{} · {total} {} · last pull {}</p>",
        esc(repo.as_str()),
        source_label(view, &repo),
        if total == 1 { "tag" } else { "tags" },
        ago(pulls.of(app, repo.as_str()), view.now),
    );
    if page.is_empty() {
        h.push_str("<p class=\"muted\">No tags here.</p>");
    } else {
        h.push_str(
            "<table><tr><th>tag</th><th>kind</th><th>size</th><th>pushed</th><th>digest</th></tr>",
        );
    }
    for tag in page {
        let digest = app.registry.resolve_tag(&repo, tag).await.ok();
        let summary = match &digest {
            Some(d) => super::image::summary(app, &repo, d, true).await,
            None => None,
        };
        let kind = match &summary {
            None => "?".to_owned(),
            Some(s) => match (&s.kind, &s.artifact_type) {
                (_, Some(a)) => format!("artifact <code>{}</code>", esc(a)),
                (ManifestKind::Index, None) => format!("index, {} platforms", s.platforms),
                (ManifestKind::Image, None) => "image".to_owned(),
            },
        };
        let pushed = app.registry.tag_written_at(&repo, tag).await.ok().flatten();
        let _ = write!(
            h,
            "<tr><td><a href=\"{}\">{}</a></td><td>{kind}</td><td class=\"n\">{}</td><td>{}</td><td><code>{}</code></td></tr>",
            href(
                "/ui/image",
                &[("repo", repo.as_str()), ("ref", tag.as_str())]
            ),
            esc(tag.as_str()),
            summary
                .and_then(|s| s.size)
                .map_or_else(|| "?".to_owned(), human_bytes),
            ago(pushed, view.now),
            digest.map(|d| esc(&d.to_string())).unwrap_or_default(),
        );
    }
    if !page.is_empty() {
        h.push_str("</table>");
    }
    let mut pager = Vec::new();
    if after.is_some() {
        pager.push(format!(
            "<a href=\"{}\">← first page</a>",
            href("/ui/repository", &[("name", repo.as_str())])
        ));
    }
    if more && let Some(last) = page.last() {
        pager.push(format!(
            "<a href=\"{}\" rel=\"next\">next page →</a>",
            href(
                "/ui/repository",
                &[("name", repo.as_str()), ("after", last.as_str())]
            )
        ));
    }
    if !pager.is_empty() {
        let _ = write!(h, "<p class=\"pager\">{}</p>", pager.join(" · "));
    }
    Some((format!("{repo} · berth"), h))
}
