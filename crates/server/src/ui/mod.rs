//! `/ui`: read-only, server-rendered pages. The overview (health at a glance, charts,
//! each upstream's cache and the upkeep jobs), the repositories with a filter, one
//! repository's tags, and one image. Every page shows only what the caller may pull (the
//! API's access rules): a repository one may not pull looks exactly like one that does
//! not exist. A page reads a bounded amount of the store (one page of names, the
//! manifests of the tags it shows) and never writes.

mod browse;
mod health;
mod image;
mod names;
mod overview;

pub use names::NameIndex;

use crate::App;
use crate::access::Caller;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use oci::RepoName;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Instant, SystemTime};
use web::esc;

/// `1.5 GiB`, `312 KiB`, `17 B`.
pub fn human_bytes(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

/// `3 min ago`, `2 h ago`, `5 d ago`; `—` when never.
fn ago(t: Option<SystemTime>, now: SystemTime) -> String {
    let Some(t) = t else {
        return "—".to_owned();
    };
    let s = now.duration_since(t).map(|d| d.as_secs()).unwrap_or(0);
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86400 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86400),
    }
}

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d2330;background:#fafbfc}\
h1{font-size:22px;margin:0 0 4px}h1 a{color:inherit;text-decoration:none}h2{font-size:17px;margin:28px 0 8px}\
a{color:#1f5fbf}.muted{color:#6a7280}table{border-collapse:collapse;background:#fff;min-width:60%}\
th,td{border:1px solid #dde1e6;padding:4px 10px;text-align:left;vertical-align:top}\
th{background:#eef1f4}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.ok{color:#11763a;font-weight:600}.bad{color:#b3261e;font-weight:600}.warn{color:#8a5a00;font-weight:600}\
code{font-size:12px;word-break:break-all}ul{margin:4px 0;padding-left:18px}\
nav{margin:6px 0 0}nav a{margin-right:14px}form.search{margin:10px 0}\
form.search input{font:inherit;padding:3px 6px;width:22em}\
.health{display:flex;flex-wrap:wrap;gap:8px;list-style:none;padding:0;margin:14px 0}\
.health li{background:#fff;border:1px solid #dde1e6;border-left:6px solid #11763a;padding:6px 10px;max-width:26em}\
.health li.bad{border-left-color:#b3261e}.health li.warn{border-left-color:#d49a00}.health li.info{border-left-color:#8a94a3}\
.health li b{display:block}.health li span.detail{font-weight:400;color:#1d2330}\
pre{background:#fff;border:1px solid #dde1e6;padding:6px 10px;margin:4px 0;white-space:pre-wrap;word-break:break-all}\
dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px;margin:4px 0}dt{color:#6a7280}dd{margin:0}\
.pager{margin:8px 0}\
.charts{display:flex;flex-wrap:wrap;gap:12px}.chart{background:#fff;border:1px solid #dde1e6}";

/// What every page knows of the request it answers.
pub(crate) struct View<'a> {
    app: &'a App,
    caller: Caller,
    access: std::sync::Arc<crate::Access>,
    query: HashMap<String, String>,
    /// The registry's address as the client reached it (for pull commands).
    host: String,
    now: SystemTime,
}

impl View<'_> {
    /// The query parameter `name`, when given and not empty.
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Whether the caller may pull `repo`: the only repositories any page names.
    fn may_pull(&self, repo: &RepoName) -> bool {
        self.access
            .allowed(&self.caller, repo)
            .contains(auth::Action::Pull)
    }

    /// The repository named by parameter `name`, if it exists and the caller may pull
    /// it; any other case reads the same, so a page never tells a hidden repository
    /// from a missing one.
    async fn visible_repo(&self, name: &str) -> Option<RepoName> {
        let repo: RepoName = self.param(name)?.parse().ok()?;
        if !self.may_pull(&repo) {
            return None;
        }
        self.app
            .registry
            .repo_exists(&repo)
            .await
            .ok()?
            .then_some(repo)
    }

    /// Where `repo` comes from: `None` when hosted, else the upstream it caches.
    fn upstream_of(&self, repo: &RepoName) -> Option<std::sync::Arc<cache::CachedUpstream>> {
        let first = repo.as_str().split('/').next()?;
        self.app
            .cache
            .upstreams()
            .into_iter()
            .find(|u| u.key == first)
    }
}

/// A link to `path` with query `pairs`, escaped for an HTML attribute.
fn href(path: &str, pairs: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    let q = q.finish();
    if q.is_empty() {
        esc(path)
    } else {
        esc(&format!("{path}?{q}"))
    }
}

/// A page's title and body, or "not found".
type Rendered = Option<(String, String)>;

/// `GET /ui` and `/ui/<page>`; `?login` asks a browser for credentials.
pub(crate) async fn page(
    app: &App,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    client: std::net::IpAddr,
) -> Response {
    let started = Instant::now();
    let access = app.access();
    let caller = match access.caller(headers, Some(client)).await {
        Ok(c) => c,
        Err(_) => return login_prompt(),
    };
    let who = caller.subject();
    let query: HashMap<String, String> =
        form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    if query.contains_key("login") && matches!(who, auth::Subject::Anonymous) {
        return login_prompt();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.parse::<axum::http::uri::Authority>().is_ok())
        .unwrap_or("localhost")
        .to_owned();
    app.names.warm(&app.registry);
    let view = View {
        app,
        caller,
        access,
        query,
        host,
        now: SystemTime::now(),
    };
    let rendered = match uri.path().trim_end_matches('/') {
        "/ui" => Some(("berth".to_owned(), overview::render(&view).await)),
        "/ui/repositories" => Some((
            "Repositories · berth".to_owned(),
            browse::repositories(&view).await,
        )),
        "/ui/repository" => browse::repository(&view).await,
        "/ui/image" => image::render(&view).await,
        _ => None,
    };
    let (status, title, body) = match rendered {
        Some((title, body)) => (StatusCode::OK, title, body),
        None => (
            StatusCode::NOT_FOUND,
            "Not found · berth".to_owned(),
            "<h2>Not found</h2><p>There is no such page, or no repository by that name \
             that you may pull.</p>"
                .to_owned(),
        ),
    };
    let mut h = String::with_capacity(body.len() + 4096);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{}</title><style>{STYLE}</style></head><body>\
         <h1><a href=\"/ui\">berth</a></h1><div class=\"muted\">version {} · signed in as {} · \
         <a href=\"/ui?login\">log in</a>{}</div>\
         <nav><a href=\"/ui\">Overview</a><a href=\"/ui/repositories\">Repositories</a></nav>",
        esc(&title),
        env!("CARGO_PKG_VERSION"),
        esc(&match &who {
            auth::Subject::Anonymous => "anonymous".to_owned(),
            auth::Subject::User(u) => u.clone(),
        }),
        if app.metrics_at == crate::MetricsAt::Api {
            " · <a href=\"/metrics\">metrics</a>"
        } else {
            ""
        },
    );
    h.push_str(&body);
    h.push_str("</body></html>");
    let server_timing = format!("render;dur={:.1}", started.elapsed().as_secs_f64() * 1e3);
    let mut r = (status, h).into_response();
    let hs = r.headers_mut();
    hs.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    hs.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&server_timing) {
        hs.insert("server-timing", v);
    }
    r
}

/// A Basic challenge, so a browser asks for a user name and password.
fn login_prompt() -> Response {
    let mut r = (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<!doctype html><title>berth</title><p>Sign in to see more of this registry.</p>",
    )
        .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"berth\", charset=\"UTF-8\""),
    );
    r
}
