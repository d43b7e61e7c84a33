//! `berth mirror` as a user runs it (the real binary, `--plain-http`): twenty
//! repositories of two-platform indexes pushed into CNCF distribution, mirrored into an
//! in-process berth with every digest kept; dry runs and filters that write nothing
//! beyond what they select, a rerun that writes nothing at all, a tag moved at the source
//! followed, and a source blob deleted behind distribution's back failing the run.

use crate::cache::Distribution;
use crate::common::*;
use serde_json::{Value, json};

/// `berth mirror --plain-http SRC DST ARGS... --json`: exit code and the report.
async fn mirror_json(src: &str, dst: &str, args: &[&str]) -> (i32, Value, String) {
    let mut all = vec!["mirror", "--plain-http", src, dst, "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = run_berth(&all).await;
    let report = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{out}\n{err}"));
    (code, report, err)
}

/// A registry the test pushes to and reads from, over one pooled HTTP client.
pub(crate) struct Registry {
    addr: String,
    http: reqwest::Client,
}

/// An image pushed: the index digest, and for each platform the child manifest digest
/// and the digests of its config and layer.
pub(crate) struct Pushed {
    pub(crate) index: String,
    pub(crate) children: Vec<(String, Vec<String>)>,
}

/// The layer every amd64 image shares (a base layer: mounted, not sent again, at the
/// destination once one repository has it).
fn base_layer() -> Vec<u8> {
    pseudo_random(7, 3000)
}

impl Registry {
    pub(crate) fn new(addr: &str) -> Registry {
        Registry {
            addr: addr.to_owned(),
            http: client(),
        }
    }

    /// Push `bytes` as a blob of `repo` (POST, then PUT).
    async fn push_blob(&self, repo: &str, bytes: &[u8]) -> (String, usize) {
        let (addr, d) = (&self.addr, digest_of(bytes).to_string());
        let r = self
            .http
            .post(format!("http://{addr}/v2/{repo}/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{addr}: start upload");
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        let location = if location.starts_with('/') {
            format!("http://{addr}{location}")
        } else {
            location
        };
        let r = self
            .http
            .put(with_query(&location, &format!("digest={d}")))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{addr}: finish upload of {d}");
        (d, bytes.len())
    }

    /// PUT manifest `bytes` of `media_type` as `repo:reference`.
    async fn push_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
        let r = self
            .http
            .put(format!(
                "http://{}/v2/{repo}/manifests/{reference}",
                self.addr
            ))
            .header("content-type", media_type)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}: {repo}:{reference}", self.addr);
    }

    /// Push a two-platform OCI index tagged `tags` to `repo`: per platform a config and
    /// one layer (amd64 the shared base, arm64 one of this repo and `generation`).
    pub(crate) async fn push_index(&self, repo: &str, generation: u64, tags: &[&str]) -> Pushed {
        let mut descriptors = Vec::new();
        let mut children = Vec::new();
        for arch in ["amd64", "arm64"] {
            let config = serde_json::to_vec(&json!({
                "architecture": arch, "os": "linux", "repo": repo, "generation": generation,
                "rootfs": {"type": "layers", "diff_ids": []},
            }))
            .unwrap();
            let layer = if arch == "amd64" {
                base_layer()
            } else {
                let mut l = pseudo_random(generation, 1500);
                l.extend_from_slice(repo.as_bytes());
                l
            };
            let (c, cn) = self.push_blob(repo, &config).await;
            let (l, ln) = self.push_blob(repo, &layer).await;
            let (cd, ld): (oci::Digest, oci::Digest) = (c.parse().unwrap(), l.parse().unwrap());
            let manifest = image_manifest((&cd, cn), &[(&ld, ln)]);
            let m = digest_of(&manifest).to_string();
            self.push_manifest(repo, &m, oci::media::OCI_MANIFEST, &manifest)
                .await;
            descriptors.push(json!({
                "mediaType": oci::media::OCI_MANIFEST, "digest": m, "size": manifest.len(),
                "platform": {"os": "linux", "architecture": arch},
            }));
            children.push((m, vec![c, l]));
        }
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": oci::media::OCI_INDEX, "manifests": descriptors,
        }))
        .unwrap();
        for tag in tags {
            self.push_manifest(repo, tag, oci::media::OCI_INDEX, &index)
                .await;
        }
        Pushed {
            index: digest_of(&index).to_string(),
            children,
        }
    }

    /// GET `/v2/{path}`: (status, the bytes); manifests of either kind.
    async fn get(&self, path: &str) -> (u16, Vec<u8>) {
        let r = self
            .http
            .get(format!("http://{}/v2/{path}", self.addr))
            .header(
                "accept",
                format!("{}, {}", oci::media::OCI_INDEX, oci::media::OCI_MANIFEST),
            )
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
    }

    /// The digest of manifest `repo:reference`, and its bytes.
    async fn manifest(&self, repo: &str, reference: &str) -> (String, Vec<u8>) {
        let (status, bytes) = self.get(&format!("{repo}/manifests/{reference}")).await;
        assert_eq!(status, 200, "{}: {repo}:{reference}", self.addr);
        (digest_of(&bytes).to_string(), bytes)
    }

    /// `path`'s JSON (catalog, tag lists).
    async fn json(&self, path: &str) -> Value {
        let (status, bytes) = self.get(path).await;
        assert_eq!(status, 200, "{}: {path}", self.addr);
        serde_json::from_slice(&bytes).unwrap()
    }
}

/// Writes berth has answered so far: PUT, POST and PATCH requests of any route.
fn writes(s: &TestServer) -> u64 {
    server::metrics::render(&s.app)
        .lines()
        .filter(|l| l.starts_with("berth_http_requests_total{"))
        .filter(|l| {
            ["PUT", "POST", "PATCH"]
                .iter()
                .any(|m| l.contains(&format!("method=\"{m}\"")))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}

/// The repositories of a registry's catalog.
async fn catalog(r: &Registry) -> Vec<String> {
    let v = r.json("_catalog").await;
    v["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect()
}

/// The report's entry for `repo:tag`.
fn entry<'a>(report: &'a Value, repo: &str, tag: &str) -> &'a Value {
    report["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["repository"] == repo && t["tag"] == tag)
        .unwrap_or_else(|| panic!("no {repo}:{tag} in {report:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mirror_copies_a_registry_keeps_digests_resumes_follows_changes_and_fails_on_loss() {
    let d = Distribution::start(None).await;
    let b = TestServer::start().await;
    let (src, dst) = (Registry::new(&d.addr), Registry::new(&b.addr.to_string()));
    let (s, t) = (src.addr.as_str(), dst.addr.as_str());

    // Twenty repositories, sixteen under team/ and four two levels down under other/,
    // each with v1 and dev on one two-platform index.
    let mut repos: Vec<String> = (0..16).map(|i| format!("team/app{i:02}")).collect();
    repos.extend((0..4).map(|i| format!("other/deep/svc{i}")));
    let pushes = repos.iter().map(|r| src.push_index(r, 1, &["v1", "dev"]));
    let pushed: std::collections::HashMap<&str, Pushed> = repos
        .iter()
        .map(String::as_str)
        .zip(futures::future::join_all(pushes).await)
        .collect();

    // A dry run lists all forty tags and writes nothing.
    let (code, report, err) = mirror_json(s, t, &["--dry-run"]).await;
    assert_eq!(code, 0, "{report:#}\n{err}");
    assert_eq!(report["repositories"], 20);
    assert_eq!(report["tags"].as_array().unwrap().len(), 40);
    assert_eq!(report["would_copy"], 40, "{report:#}");
    assert_eq!(report["copied"], 0);
    assert_eq!(
        entry(&report, "team/app05", "v1")["digest"],
        pushed["team/app05"].index.as_str()
    );
    assert!(catalog(&dst).await.is_empty());
    assert_eq!(writes(&b), 0, "a dry run wrote to the destination");
    // Patterns: `*` stays within a component (other/* matches none of other/deep/...),
    // and --repositories can be given again.
    let patterns = ["--repositories", "team/app0*", "--repositories", "other/*"];
    let (code, report, _) = mirror_json(s, t, &[&["--dry-run"][..], &patterns].concat()).await;
    assert_eq!(code, 0);
    assert_eq!(report["repositories"], 10, "{report:#}");
    assert_eq!(report["would_copy"], 20);

    // Filtered: only other/** and only tags starting with v.
    let (code, report, err) =
        mirror_json(s, t, &["--repositories", "other/**", "--tags", "^v"]).await;
    assert_eq!(code, 0, "{report:#}\n{err}");
    assert_eq!(report["copied"], 4, "{report:#}");
    assert_eq!(report["failed"], 0);
    let mut got = catalog(&dst).await;
    got.sort();
    assert_eq!(got, repos[16..]);
    for repo in &repos[16..] {
        let tags = dst.json(&format!("{repo}/tags/list")).await;
        assert_eq!(tags["tags"], json!(["v1"]));
    }

    // Everything: the 36 tags not there yet are copied, the 4 that are stay.
    let (code, report, err) = mirror_json(s, t, &["--jobs", "3"]).await;
    assert_eq!(code, 0, "{report:#}\n{err}");
    assert_eq!(
        (&report["copied"], &report["up_to_date"], &report["failed"]),
        (&json!(36), &json!(4), &json!(0)),
        "{report:#}"
    );
    let tags = report["tags"].as_array().unwrap();
    assert!(tags.iter().all(|t| t["verified"] == true), "{report:#}");
    // Not a terminal: one line per tag on stderr.
    assert_eq!(
        err.lines().filter(|l| l.starts_with("copied ")).count(),
        36,
        "{err}"
    );
    // The shared base layer went over a few times at most; the other repositories
    // mounted it from one that had it.
    let mounted: u64 = tags
        .iter()
        .filter_map(|t| t["copy"]["blobs_mounted"].as_u64())
        .sum();
    assert!(mounted >= 10, "{mounted} mounts: {report:#}");
    // Every tag at the destination is the source's index, byte for byte, and every
    // child manifest and blob is there under its digest.
    let checks = repos.iter().map(|repo| {
        let (src, dst, p) = (&src, &dst, &pushed[repo.as_str()]);
        async move {
            for tag in ["v1", "dev"] {
                let (digest, there) = dst.manifest(repo, tag).await;
                assert_eq!(digest, p.index, "{repo}:{tag}");
                assert!(there == src.manifest(repo, tag).await.1, "{repo}:{tag}");
            }
            for (child, blobs) in &p.children {
                assert_eq!(dst.manifest(repo, child).await.0, *child, "{repo}");
                for blob in blobs {
                    let (status, bytes) = dst.get(&format!("{repo}/blobs/{blob}")).await;
                    assert_eq!(status, 200, "{repo}: {blob}");
                    assert_eq!(digest_of(&bytes).to_string(), *blob, "{repo}: {blob}");
                }
            }
        }
    });
    futures::future::join_all(checks).await;

    // A rerun copies nothing and writes nothing.
    let before = writes(&b);
    let (code, out, err) = run_berth(&["mirror", "--plain-http", s, t]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains(&format!(
            "{s} to {t}: 20 repositories, 40 tags: 0 copied (0 B), 40 up to date, 0 failed; every tag verified"
        )),
        "{out}"
    );
    assert_eq!(out.matches("up to date  ").count(), 40, "{out}");
    assert_eq!(writes(&b), before, "the rerun wrote to the destination");

    // A tag moved at the source is followed; its sibling tag stays where it was.
    let moved = src.push_index("team/app03", 2, &["v1"]).await;
    let (code, report, err) = mirror_json(s, t, &[]).await;
    assert_eq!(code, 0, "{report:#}\n{err}");
    assert_eq!(
        (&report["copied"], &report["up_to_date"]),
        (&json!(1), &json!(39))
    );
    let e = entry(&report, "team/app03", "v1");
    assert_eq!(e["outcome"], "copied");
    assert_eq!(e["digest"], moved.index.as_str());
    assert_eq!(
        e["copy"]["blobs_copied"], 3,
        "new configs, new arm64 layer: {e:#}"
    );
    assert_eq!(dst.manifest("team/app03", "v1").await.0, moved.index);
    assert_eq!(
        dst.manifest("team/app03", "dev").await.0,
        pushed["team/app03"].index
    );

    // A list file names the repositories instead of the catalog; a name the source
    // does not have fails the run.
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("repos.txt");
    std::fs::write(
        &list,
        "# three of them\nteam/app00\nother/deep/svc0\nteam/none\n",
    )
    .unwrap();
    let (code, report, _) =
        mirror_json(s, t, &["--dry-run", "--list", list.to_str().unwrap()]).await;
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["repositories"], 3);
    assert_eq!(report["up_to_date"], 4, "{report:#}");
    let failures = report["repository_failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{report:#}");
    assert_eq!(failures[0]["repository"], "team/none");

    // A layer gone from the source's storage: that tag fails (exit status 1), named
    // with the reason, and the destination does not get the tag.
    let broken = src.push_index("team/broken", 3, &["v1"]).await;
    let lost = broken.children[1].1[1].clone();
    std::fs::remove_file(d.blob_file(&lost)).unwrap();
    let (code, out, err) = run_berth(&["mirror", "--plain-http", s, t]).await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("FAILED      team/broken:v1"), "{out}");
    assert!(out.contains(&lost), "the report names the lost blob: {out}");
    assert!(out.contains("21 repositories, 41 tags: 0 copied"), "{out}");
    assert!(out.contains("40 up to date, 1 failed"), "{out}");
    assert_eq!(dst.get("team/broken/manifests/v1").await.0, 404);

    // --platform: that image of each index, itself under the tag (over team/app00's).
    let one = ["--platform", "linux/arm64", "--repositories", "team/app00"];
    let (code, report, err) = mirror_json(s, t, &one).await;
    assert_eq!(code, 0, "{report:#}\n{err}");
    assert_eq!(report["copied"], 2, "{report:#}");
    let arm64 = &pushed["team/app00"].children[1].0;
    for tag in ["v1", "dev"] {
        assert_eq!(entry(&report, "team/app00", tag)["verified"], true);
        assert_eq!(dst.manifest("team/app00", tag).await.0, *arm64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_refuses_what_is_not_a_registry_and_names_a_closed_catalog() {
    let (code, _, err) = run_berth(&["mirror", "registry.lan/team", "127.0.0.1:1"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("is not a registry"), "{err}");
    let (code, _, err) = run_berth(&["mirror", "a.lan", "b.lan", "--tags", "v["]).await;
    assert_eq!(code, 1);
    assert!(err.contains("invalid --tags regex"), "{err}");
    let (code, _, err) = run_berth(&["mirror", "a.lan", "b.lan", "--repositories", "x/["]).await;
    assert_eq!(code, 1);
    assert!(err.contains("invalid repositories pattern"), "{err}");
    // A registry whose catalog is closed to the caller: the error says what to do;
    // with the credentials it opens.
    let d = Distribution::start(Some(("alice", "alice-pw"))).await;
    let (code, _, err) = run_berth(&["mirror", "--plain-http", &d.addr, "b.lan:1"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot list the catalog") && err.contains("--list FILE"),
        "{err}"
    );
    let (code, out, err) = run_berth(&[
        "mirror",
        "--plain-http",
        "--src-creds",
        "alice:alice-pw",
        "--dry-run",
        &d.addr,
        "b.lan:1",
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("0 repositories, 0 tags"), "{out}");
}
