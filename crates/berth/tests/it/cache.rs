//! The pull-through cache against a real upstream: Debian's `docker-registry` (CNCF
//! distribution 2.8), filled with skopeo, pulled through berth by all three routes
//! (`?ns=`, path prefix, dedicated listener), with and without upstream credentials.

use crate::common::*;
use crate::skopeo::{build_multi_layout, p, require_tools, skopeo};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A `docker-registry` process on a free port, killed on drop.
pub(crate) struct Distribution {
    pub(crate) addr: String,
    _child: KillOnDrop,
    _dir: tempfile::TempDir,
}

impl Distribution {
    /// Where the bytes of blob `digest` live in its filesystem store.
    pub(crate) fn blob_file(&self, digest: &str) -> std::path::PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self._dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Start distribution; with `user`, behind htpasswd Basic auth for that user.
    pub(crate) async fn start(user: Option<(&str, &str)>) -> Distribution {
        require_tool("docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            p(&dir.path().join("data"))
        );
        if let Some((u, pw)) = user {
            let file = dir.path().join("htpasswd");
            write_htpasswd(&file, &[(u, pw)]);
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                p(&file)
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let d = Distribution {
            addr,
            _child: KillOnDrop(child),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client().get(format!("http://{}/v2/", d.addr)).send().await
                && (r.status() == 200 || r.status() == 401)
            {
                break;
            }
            assert!(Instant::now() < deadline, "docker-registry did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        d
    }
}

/// Push the multi-platform layout to `dest` (a docker:// reference) with skopeo.
async fn push_multi(src: &Path, dest: &str, creds: Option<&str>) {
    let mut args = vec!["copy", "--all", "--dest-tls-verify=false"];
    if let Some(c) = creds {
        args.extend(["--dest-creds", c]);
    }
    let from = format!("oci:{}:multi", p(src));
    args.extend([from.as_str(), dest]);
    skopeo(&args).await;
}

/// Pull `reference` (docker://...) with `--all` into a fresh layout; the index digest.
async fn pull_multi(reference: &str, out: &Path) -> String {
    let to = format!("oci:{}:pulled", p(out));
    skopeo(&["copy", "--all", "--src-tls-verify=false", reference, &to]).await;
    let index: Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"].as_str().unwrap().to_owned()
}

/// Walk an image through `?ns=` with plain HTTP: index, children, configs and layers,
/// checking every digest. Returns the number of distinct blobs.
async fn walk_with_ns(
    s: &TestServer,
    ns: &str,
    repo: &str,
    tag: &str,
    index_digest: &str,
) -> usize {
    let url = |path: String| s.url(&format!("{path}?ns={ns}"));
    let r = client()
        .get(url(format!("/v2/{repo}/manifests/{tag}")))
        .header("accept", oci::media::OCI_INDEX)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], index_digest);
    let index = r.bytes().await.unwrap();
    assert_eq!(digest_of(&index).to_string(), index_digest);
    let index: Value = serde_json::from_slice(&index).unwrap();
    let mut blobs = std::collections::BTreeSet::new();
    for child in index["manifests"].as_array().unwrap() {
        let d = child["digest"].as_str().unwrap();
        let m = get_bytes(&url(format!("/v2/{repo}/manifests/{d}"))).await;
        assert_eq!(digest_of(&m).to_string(), d);
        let m: Value = serde_json::from_slice(&m).unwrap();
        let mut descs = vec![m["config"].clone()];
        descs.extend(m["layers"].as_array().unwrap().iter().cloned());
        for desc in descs {
            let bd = desc["digest"].as_str().unwrap().to_owned();
            let bytes = get_bytes(&url(format!("/v2/{repo}/blobs/{bd}"))).await;
            assert_eq!(digest_of(&bytes).to_string(), bd);
            assert_eq!(bytes.len() as u64, desc["size"].as_u64().unwrap());
            blobs.insert(bd);
        }
    }
    blobs.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn pulls_through_ns_prefix_and_dedicated_listener_from_distribution() {
    require_tools();
    let upstream = Distribution::start(None).await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let (_index, index_digest, children) = build_multi_layout(&src).await;
    push_multi(
        &src,
        &format!("docker://{}/team/multi:v1", upstream.addr),
        None,
    )
    .await;

    let name = upstream.addr.clone();
    let key = name.replace(':', "-");
    let s = TestServer::start_with(|c| {
        c.upstreams.push(upstream_config(
            &name,
            &format!("http://{name}"),
            Duration::from_secs(60),
        ))
    })
    .await;

    // 1. containerd's mirror parameter, cold: every blob comes from upstream once
    let blobs = walk_with_ns(&s, &name, "team/multi", "v1", &index_digest).await;
    let up = stats(&s, &name);
    assert_eq!(up.stats.upstream_blob_gets.get(), blobs as u64);

    // Range requests on a cached blob
    let index: Value = serde_json::from_slice(
        &get_bytes(&s.url(&format!("/v2/team/multi/manifests/v1?ns={name}"))).await,
    )
    .unwrap();
    let child = index["manifests"][0]["digest"].as_str().unwrap();
    let m: Value = serde_json::from_slice(
        &get_bytes(&s.url(&format!("/v2/team/multi/manifests/{child}?ns={name}"))).await,
    )
    .unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap();
    let whole = get_bytes(&s.url(&format!("/v2/team/multi/blobs/{layer}?ns={name}"))).await;
    let r = client()
        .get(s.url(&format!("/v2/team/multi/blobs/{layer}?ns={name}")))
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), whole.slice(10..20));

    // 2. path prefix (the store key, since a port's ':' cannot appear in a reference)
    let out = tmp.path().join("via-prefix");
    let got = pull_multi(&format!("docker://{}/{key}/team/multi:v1", s.addr), &out).await;
    assert_eq!(got, index_digest);
    for child in &children {
        let hex = child.strip_prefix("sha256:").unwrap();
        assert!(
            out.join("blobs/sha256").join(hex).exists(),
            "child {child} missing"
        );
    }

    // 3. a dedicated listener: repositories are named as on the upstream
    let dedicated = dedicated_listener(&s, &name).await;
    let out = tmp.path().join("via-listener");
    let got = pull_multi(&format!("docker://{dedicated}/team/multi:v1"), &out).await;
    assert_eq!(got, index_digest);

    // warm pulls never went upstream for blobs again
    assert_eq!(up.stats.upstream_blob_gets.get(), blobs as u64);
    assert!(up.stats.hits.get() > 0);

    // the cache lives in the shared store under the upstream's key
    let catalog = get_json(&s.url("/v2/_catalog")).await;
    assert_eq!(
        catalog["repositories"],
        serde_json::json!([format!("{key}/team/multi")])
    );

    // hosted repositories work beside the cache; nobody can push into the cache's names
    push_image(&s, "hosted/app", "v1", "hosted").await;
    let r = put_manifest(
        &s,
        &format!("{key}/team/multi"),
        "evil",
        oci::media::OCI_MANIFEST,
        b"{}",
    )
    .await;
    assert_eq!(r.status(), 405);
    let r = client()
        .post(s.url(&format!("/v2/{key}/team/multi/blobs/uploads/")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);

    // an ns= naming no configured upstream is refused, never proxied
    let r = client()
        .get(s.url("/v2/team/multi/manifests/v1?ns=registry.example.com"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_hub_single_names_get_library_prefix() {
    // docker.io is in the embedded default; nothing is fetched, only routing is checked:
    // the cached name for `nginx` is `docker.io/library/nginx`.
    let s = TestServer::start().await;
    let up = stats(&s, "docker.io");
    assert_eq!(
        up.normalize("nginx".parse().unwrap()).as_str(),
        "library/nginx"
    );
    assert_eq!(
        up.normalize("bitnami/redis".parse().unwrap()).as_str(),
        "bitnami/redis"
    );
    assert_eq!(
        up.local(&"library/nginx".parse().unwrap())
            .unwrap()
            .as_str(),
        "docker.io/library/nginx"
    );
    let q = stats(&s, "quay.io");
    assert_eq!(q.normalize("nginx".parse().unwrap()).as_str(), "nginx");
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_credentials_for_a_protected_upstream() {
    require_tools();
    let upstream = Distribution::start(Some(("puller", "s3cret"))).await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let (_index, index_digest, _children) = build_multi_layout(&src).await;
    push_multi(
        &src,
        &format!("docker://{}/private/multi:v1", upstream.addr),
        Some("puller:s3cret"),
    )
    .await;
    let name = upstream.addr.clone();

    // without credentials the upstream refuses, and berth says so (nothing cached)
    let anonymous = TestServer::start_with(|c| {
        c.upstreams.push(upstream_config(
            &name,
            &format!("http://{name}"),
            Duration::from_secs(60),
        ))
    })
    .await;
    let r = client()
        .get(anonymous.url(&format!("/v2/private/multi/manifests/v1?ns={name}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);

    let password = tmp.path().join("password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let s = TestServer::start_with(|c| {
        let mut u = upstream_config(&name, &format!("http://{name}"), Duration::from_secs(60));
        u.username = Some("puller".into());
        u.password_file = Some(password.clone());
        c.upstreams.push(u);
    })
    .await;
    walk_with_ns(&s, &name, "private/multi", "v1", &index_digest).await;
}
