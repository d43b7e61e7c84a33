//! Parsing `/v2/...` paths into routes. Repository names contain slashes, so routes are
//! recognised from the right: the last one or two components name the endpoint and the
//! rest is the repository, validated against the spec's grammar.

use oci::{Digest, NameError, Reference, RepoName};
use store::UploadId;

/// An endpoint of the distribution API, with its validated parameters.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags(RepoName),
    /// `/v2/<name>/manifests/<reference>`
    Manifest(RepoName, Reference),
    /// `/v2/<name>/blobs/<digest>`
    Blob(RepoName, Digest),
    /// `/v2/<name>/blobs/uploads/`
    UploadStart(RepoName),
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload(RepoName, UploadId),
    /// `/v2/<name>/referrers/<digest>`
    Referrers(RepoName, Digest),
}

impl Route {
    /// A short class for logs and metrics ("manifest", "blob", ...).
    pub fn class(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Catalog => "catalog",
            Route::Tags(_) => "tags",
            Route::Manifest(..) => "manifest",
            Route::Blob(..) => "blob",
            Route::UploadStart(_) | Route::Upload(..) => "upload",
            Route::Referrers(..) => "referrers",
        }
    }
}

/// Why a path is not a route.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    /// Not an endpoint of the API at all.
    NotFound,
    /// The endpoint is known, a parameter is not valid.
    Invalid(NameError),
    /// The upload id is malformed (treated as an unknown upload).
    BadUploadId,
}

impl From<NameError> for RouteError {
    fn from(e: NameError) -> Self {
        RouteError::Invalid(e)
    }
}

/// Parse the path of a request (without query string).
pub fn parse(path: &str) -> Result<Route, RouteError> {
    let rest = path.strip_prefix("/v2/").ok_or(RouteError::NotFound)?;
    if rest.is_empty() {
        return Ok(Route::Base);
    }
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok(Route::Tags(name.parse()?));
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Ok(Route::UploadStart(name.parse()?));
    }
    let parts: Vec<&str> = rest.rsplitn(4, '/').collect();
    if parts.len() == 4 && parts[1] == "uploads" && parts[2] == "blobs" {
        let name = parts[3].parse()?;
        let id = UploadId::parse(parts[0]).map_err(|_| RouteError::BadUploadId)?;
        return Ok(Route::Upload(name, id));
    }
    let parts: Vec<&str> = rest.rsplitn(3, '/').collect();
    if parts.len() == 3 {
        let (last, kind, name) = (parts[0], parts[1], parts[2]);
        match kind {
            "manifests" => return Ok(Route::Manifest(name.parse()?, last.parse()?)),
            "blobs" => {
                return Ok(Route::Blob(
                    name.parse()?,
                    last.parse()
                        .map_err(|e| RouteError::Invalid(NameError::Digest(e)))?,
                ));
            }
            "referrers" => {
                return Ok(Route::Referrers(
                    name.parse()?,
                    last.parse()
                        .map_err(|e| RouteError::Invalid(NameError::Digest(e)))?,
                ));
            }
            _ => {}
        }
    }
    Err(RouteError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn routes() {
        assert_eq!(parse("/v2/"), Ok(Route::Base));
        assert_eq!(parse("/v2/_catalog"), Ok(Route::Catalog));
        assert!(matches!(parse("/v2/a/b/tags/list"), Ok(Route::Tags(n)) if n.as_str() == "a/b"));
        assert!(
            matches!(parse("/v2/a/b/manifests/latest"), Ok(Route::Manifest(n, Reference::Tag(_))) if n.as_str() == "a/b")
        );
        assert!(matches!(
            parse(&format!("/v2/a/manifests/{D}")),
            Ok(Route::Manifest(_, Reference::Digest(_)))
        ));
        assert!(matches!(
            parse(&format!("/v2/a/blobs/{D}")),
            Ok(Route::Blob(..))
        ));
        assert!(matches!(
            parse("/v2/a/blobs/uploads/"),
            Ok(Route::UploadStart(_))
        ));
        assert!(
            matches!(parse("/v2/a/b/blobs/uploads/abc-123"), Ok(Route::Upload(n, _)) if n.as_str() == "a/b")
        );
        assert!(
            matches!(parse(&format!("/v2/x/blobs/uploads/blobs/{D}")), Ok(Route::Blob(n, _)) if n.as_str() == "x/blobs/uploads")
        );
        assert!(matches!(
            parse(&format!("/v2/a/referrers/{D}")),
            Ok(Route::Referrers(..))
        ));
        // repositories may be named like endpoints
        assert!(
            matches!(parse("/v2/manifests/manifests/x"), Ok(Route::Manifest(n, _)) if n.as_str() == "manifests")
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(parse("/v1/"), Err(RouteError::NotFound));
        assert_eq!(parse("/v2/a/unknown/x"), Err(RouteError::NotFound));
        assert!(matches!(
            parse("/v2/../x/manifests/latest"),
            Err(RouteError::Invalid(_))
        ));
        assert!(matches!(
            parse("/v2/A/manifests/latest"),
            Err(RouteError::Invalid(_))
        ));
        assert!(matches!(
            parse("/v2/a/manifests/.."),
            Err(RouteError::Invalid(_))
        ));
        assert!(matches!(
            parse("/v2/a/blobs/sha256:zz"),
            Err(RouteError::Invalid(_))
        ));
        assert_eq!(
            parse("/v2/a/blobs/uploads/../../x"),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            parse("/v2/a/blobs/uploads/a.b"),
            Err(RouteError::BadUploadId)
        );
    }
}
