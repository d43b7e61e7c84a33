//! Listings answered from the store for hosted and cached names alike: the catalog, tag
//! lists and referrers, each paginated and filtered as the spec says.

use crate::App;
use crate::access::Caller;
use crate::error::ApiError;
use crate::headers::query;
use crate::respond::{json_response, link_next, page_of};
use axum::http::{HeaderValue, Uri};
use axum::response::Response;
use oci::{Digest, RepoName, media};

pub(crate) type Result<T, E = ApiError> = std::result::Result<T, E>;

/// `GET /v2/_catalog`: the hosted and cached repositories the caller may pull, or with
/// `within` only that upstream's, named as its clients name them.
pub(crate) async fn catalog(
    app: &App,
    who: &Caller,
    uri: &Uri,
    within: Option<&cache::CachedUpstream>,
) -> Result<Response> {
    let page = page_of(uri)?;
    let prefix = within.map(|up| format!("{}/", up.key));
    // Only what the caller may pull, filtered before the page is cut. A token holder
    // (its token grants the catalog, names no repository) sees what its subject may pull.
    // Names are read as the page needs them, from just after `last` (inside the
    // upstream's folder for `within`), so a page costs its own length, not the store.
    let access = app.access();
    let subject = who.subject();
    let start = match (&prefix, &page.last) {
        (Some(p), Some(l)) => Some(format!("{p}{l}")),
        (Some(p), None) => Some(p.clone()),
        (None, l) => l.clone(),
    };
    let mut names = app.registry.repositories_after(start.as_deref());
    let mut repos: Vec<String> = Vec::new();
    let mut more = false;
    while let Some(r) = names.next().await? {
        let shown = match &prefix {
            Some(p) => match r.as_str().strip_prefix(p.as_str()) {
                Some(rest) => rest.to_owned(),
                None if r.as_str() > p.as_str() => break, // past the upstream's folder
                None => continue,
            },
            None => r.to_string(),
        };
        if !access
            .rules
            .allowed(&subject, &r)
            .contains(auth::Action::Pull)
        {
            continue;
        }
        if page.n.is_some_and(|n| repos.len() == n) {
            more = true;
            break;
        }
        repos.push(shown);
    }
    let link = more
        .then(|| repos.last().map(|l| link_next("/v2/_catalog", page.n, l)))
        .flatten();
    Ok(json_response(
        &serde_json::json!({ "repositories": repos }),
        "application/json",
        link,
    ))
}

pub(crate) async fn tags(app: &App, repo: &RepoName, uri: &Uri) -> Result<Response> {
    let page = page_of(uri)?;
    let (tags, more) = app.registry.list_tags(repo, &page).await?;
    let link = more
        .then(|| {
            tags.last()
                .map(|l| link_next(&format!("/v2/{repo}/tags/list"), page.n, l))
        })
        .flatten();
    Ok(json_response(
        &serde_json::json!({ "name": repo.as_str(), "tags": tags }),
        "application/json",
        link,
    ))
}

pub(crate) async fn referrers(
    app: &App,
    repo: &RepoName,
    subject: &Digest,
    uri: &Uri,
) -> Result<Response> {
    let q = query(uri);
    let filter = q.get("artifactType").filter(|t| !t.is_empty());
    let list = app
        .registry
        .referrers(repo, subject, filter.map(String::as_str))
        .await?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": list,
    });
    let mut resp = json_response(&index, media::OCI_INDEX, None);
    if filter.is_some() {
        resp.headers_mut().insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(resp)
}
