//! Image references as users type them (`registry.lan:5000/team/app:v1`,
//! `nginx@sha256:…`) and clients for the registries they name, for the client commands
//! (`verify`, `copy`, `mirror`, `export`, `import`). It parses and connects; it never
//! walks or copies images.

use anyhow::Context;
use oci::{Digest, RepoName, Tag};
use std::path::Path;

/// Where Docker Hub's API lives for the name `docker.io`.
const DOCKER_HUB_API: &str = "https://registry-1.docker.io";

/// A tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefTarget {
    Tag(Tag),
    Digest(Digest),
}

impl std::fmt::Display for RefTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefTarget::Tag(t) => write!(f, "{t}"),
            RefTarget::Digest(d) => write!(f, "{d}"),
        }
    }
}

/// `[registry/]repository[:tag|@digest]`, with Docker's defaults: no registry means
/// `docker.io`, a one-part name there means `library/<name>`, no tag means `latest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// `host[:port]` as written.
    pub registry: String,
    pub repo: RepoName,
    pub target: RefTarget,
}

impl std::str::FromStr for ImageRef {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<ImageRef> {
        let s = s.strip_prefix("docker://").unwrap_or(s);
        let (first, rest) = s.split_once('/').unwrap_or(("", s));
        let is_registry = first.contains('.') || first.contains(':') || first == "localhost";
        let (registry, path) = if is_registry {
            (first.to_owned(), rest.to_owned())
        } else {
            ("docker.io".to_owned(), s.to_owned())
        };
        if registry.is_empty() || path.is_empty() {
            anyhow::bail!("{s:?} is not an image reference ([registry/]repository[:tag|@digest])");
        }
        let (name, target) = if let Some((name, digest)) = path.split_once('@') {
            let d: Digest = digest
                .parse()
                .with_context(|| format!("bad digest in {s:?}"))?;
            (name.to_owned(), RefTarget::Digest(d))
        } else {
            match path.rsplit_once(':') {
                Some((name, tag)) if !tag.contains('/') => {
                    let t: Tag = tag.parse().with_context(|| format!("bad tag in {s:?}"))?;
                    (name.to_owned(), RefTarget::Tag(t))
                }
                _ => (path.clone(), RefTarget::Tag("latest".parse()?)),
            }
        };
        let repo = repo_name(&registry, &name).with_context(|| format!("in {s:?}"))?;
        Ok(ImageRef {
            registry,
            repo,
            target,
        })
    }
}

/// Repository `name` of `registry` as Docker names it: a one-part name on `docker.io`
/// means `library/<name>`.
pub fn repo_name(registry: &str, name: &str) -> anyhow::Result<RepoName> {
    let name = if registry == "docker.io" && !name.contains('/') {
        format!("library/{name}")
    } else {
        name.to_owned()
    };
    name.parse()
        .with_context(|| format!("bad repository name {name:?}"))
}

impl ImageRef {
    /// The tag, when the reference names one rather than a digest.
    pub fn tag(&self) -> Option<&Tag> {
        match &self.target {
            RefTarget::Tag(t) => Some(t),
            RefTarget::Digest(_) => None,
        }
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            RefTarget::Tag(t) => write!(f, "{}/{}:{t}", self.registry, self.repo),
            RefTarget::Digest(d) => write!(f, "{}/{}@{d}", self.registry, self.repo),
        }
    }
}

/// How to reach a registry from the command line.
#[derive(Clone, Debug, Default)]
pub struct Connect {
    /// Use `http://` instead of `https://`.
    pub plain_http: bool,
    /// `USER:PASS`.
    pub creds: Option<String>,
    /// A file holding `USER:PASS` (first line).
    pub creds_file: Option<std::path::PathBuf>,
}

fn split_creds(s: &str, from: &str) -> anyhow::Result<distribution::Credentials> {
    let (u, p) = s
        .trim_end_matches(['\r', '\n'])
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("{from} must be USER:PASS"))?;
    Ok(distribution::Credentials {
        username: u.to_owned(),
        password: p.to_owned(),
    })
}

fn read_creds(path: &Path) -> anyhow::Result<distribution::Credentials> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    split_creds(
        text.lines().next().unwrap_or_default(),
        &path.display().to_string(),
    )
}

impl Connect {
    /// A client for the registry `image` names.
    pub fn client(&self, image: &ImageRef) -> anyhow::Result<distribution::Client> {
        self.registry_client(&image.registry)
    }

    /// A client for `registry` (`host[:port]`; `docker.io` is Docker Hub's API).
    pub fn registry_client(&self, registry: &str) -> anyhow::Result<distribution::Client> {
        let url = if registry == "docker.io" {
            DOCKER_HUB_API.to_owned()
        } else if self.plain_http {
            format!("http://{registry}")
        } else {
            format!("https://{registry}")
        };
        let credentials = match (&self.creds, &self.creds_file) {
            (Some(_), Some(_)) => anyhow::bail!("give --creds or --creds-file, not both"),
            (Some(c), None) => Some(split_creds(c, "--creds")?),
            (None, Some(f)) => Some(read_creds(f)?),
            (None, None) => None,
        };
        distribution::Client::new(distribution::ClientOptions {
            credentials,
            ..distribution::ClientOptions::new(url)
        })
        .map_err(|e| anyhow::anyhow!("cannot set up a client for {registry}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> String {
        s.parse::<ImageRef>().unwrap().to_string()
    }

    #[test]
    fn references_with_docker_defaults() {
        assert_eq!(r("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(r("bitnami/redis:7"), "docker.io/bitnami/redis:7");
        assert_eq!(r("localhost:5000/a/b"), "localhost:5000/a/b:latest");
        assert_eq!(r("ghcr.io/o/app:v1.2"), "ghcr.io/o/app:v1.2");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            r(&format!("docker://127.0.0.1:5000/x@{d}")),
            format!("127.0.0.1:5000/x@{d}")
        );
        for bad in [
            "",
            "ghcr.io/",
            "x:BAD TAG",
            "a@sha256:zz",
            "Upper/case",
            "a/../b",
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad:?}");
        }
    }
}
