//! Listings of a remote registry: its catalog and a repository's tags, read page by page
//! as the registry cuts them (`?n=`, then each `Link: <…>; rel="next"` until there is
//! none), with the same authentication as every other request. Read-only.

use crate::{Client, ClientError, Result, check, header_str};
use std::collections::HashSet;

/// Entries asked for per page; a registry may send fewer, with a `Link` to the rest.
const LIST_PAGE: usize = 100;

impl Client {
    /// Every repository name of the registry's catalog (`GET /v2/_catalog`), in the
    /// registry's order. Registries that keep their catalog closed (Docker Hub) answer
    /// with an error.
    pub async fn catalog(&self) -> Result<Vec<String>> {
        let first = format!("{}/v2/_catalog?n={LIST_PAGE}", self.base);
        self.list("registry:catalog:*", first, "repositories").await
    }

    /// Every tag of `repo` (`GET /v2/<repo>/tags/list`); none for a repository without
    /// tags.
    pub async fn tags(&self, repo: &str) -> Result<Vec<String>> {
        let first = format!("{}/v2/{repo}/tags/list?n={LIST_PAGE}", self.base);
        self.list(&Self::scope(repo), first, "tags").await
    }

    /// The strings of `field` over every page, starting at `url`.
    async fn list(&self, scope: &str, mut url: String, field: &str) -> Result<Vec<String>> {
        let mut visited = HashSet::new();
        let mut out = Vec::new();
        loop {
            if !visited.insert(url.clone()) {
                return Err(ClientError::Invalid(format!(
                    "the {field} pages lead back to {url}"
                )));
            }
            let resp = check(self.send(scope, || self.http.get(&url)).await?).await?;
            let next = header_str(&resp, "link").and_then(next_link);
            let page: serde_json::Value = resp
                .json()
                .await
                .map_err(|e| ClientError::Invalid(format!("{field} page: {e}")))?;
            match &page[field] {
                serde_json::Value::Null => {}
                serde_json::Value::Array(items) => {
                    for item in items {
                        let s = item.as_str().ok_or_else(|| {
                            ClientError::Invalid(format!("{field} entry {item} is not a string"))
                        })?;
                        out.push(s.to_owned());
                    }
                }
                other => {
                    return Err(ClientError::Invalid(format!(
                        "{field} is not a list: {other}"
                    )));
                }
            }
            match next {
                Some(n) => url = self.absolute(&n),
                None => return Ok(out),
            }
        }
    }
}

/// The target of the `rel="next"` link of a `Link` header, if there is one.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|link| {
        let (target, params) = link.trim().strip_prefix('<')?.split_once('>')?;
        params
            .split(';')
            .any(|p| {
                let p = p.trim().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            })
            .then(|| target.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClientOptions;
    use axum::extract::{Path, Query};
    use axum::http::header;
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use std::collections::HashMap;

    #[test]
    fn the_next_link_is_found_among_others() {
        assert_eq!(
            next_link(r#"</v2/_catalog?last=b&n=2>; rel="next""#).as_deref(),
            Some("/v2/_catalog?last=b&n=2")
        );
        assert_eq!(
            next_link(r#"<https://r/prev>; rel="prev", <https://r/next?x=1>;rel=next"#).as_deref(),
            Some("https://r/next?x=1")
        );
        assert_eq!(next_link(r#"<https://r/prev>; rel="prev""#), None);
        assert_eq!(next_link("garbage"), None);
    }

    /// Pages of at most two entries of `all` after `last`, with a relative `Link` to
    /// the rest, the way distribution cuts them (whatever `n` the client asked for).
    fn page(all: &[&str], path: &str, field: &str, q: &HashMap<String, String>) -> Response {
        let start = match q.get("last") {
            Some(l) => all.iter().position(|x| x == l).unwrap() + 1,
            None => 0,
        };
        let items: Vec<&str> = all.iter().skip(start).take(2).copied().collect();
        let mut resp = axum::Json(serde_json::json!({ field: items })).into_response();
        if start + 2 < all.len() {
            let link = format!("<{path}?last={}&n=2>; rel=\"next\"", items[1]);
            resp.headers_mut()
                .insert(header::LINK, link.parse().unwrap());
        }
        resp
    }

    const REPOS: [&str; 5] = ["a/one", "a/two", "b/three", "c/four", "c/five"];
    const TAGS: [&str; 3] = ["1.0", "1.1", "latest"];

    async fn catalog(Query(q): Query<HashMap<String, String>>) -> Response {
        page(&REPOS, "/v2/_catalog", "repositories", &q)
    }

    async fn tags(
        Path((ns, name)): Path<(String, String)>,
        Query(q): Query<HashMap<String, String>>,
    ) -> Response {
        match (ns.as_str(), name.as_str()) {
            ("a", "one") => page(&TAGS, "/v2/a/one/tags/list", "tags", &q),
            // distribution's answer for a repository whose tags were all deleted
            ("a", "two") => {
                axum::Json(serde_json::json!({"name": "a/two", "tags": null})).into_response()
            }
            // a registry whose Link points at the page it came from
            ("b", "three") => {
                let mut resp = axum::Json(serde_json::json!({"tags": ["x"]})).into_response();
                resp.headers_mut().insert(
                    header::LINK,
                    "</v2/b/three/tags/list?n=100>; rel=\"next\""
                        .parse()
                        .unwrap(),
                );
                resp
            }
            _ => axum::http::StatusCode::NOT_FOUND.into_response(),
        }
    }

    #[tokio::test]
    async fn the_catalog_and_tags_are_read_page_by_page() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/v2/_catalog", get(catalog))
            .route("/v2/{ns}/{name}/tags/list", get(tags));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let up = Client::new(ClientOptions::new(base)).unwrap();
        assert_eq!(up.catalog().await.unwrap(), REPOS);
        assert_eq!(up.tags("a/one").await.unwrap(), TAGS);
        assert!(up.tags("a/two").await.unwrap().is_empty());
        assert!(matches!(
            up.tags("b/three").await,
            Err(ClientError::Invalid(m)) if m.contains("lead back")
        ));
        assert!(matches!(
            up.tags("c/four").await,
            Err(ClientError::NotFound)
        ));
    }
}
