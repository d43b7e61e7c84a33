//! The OCI Distribution API as a client sees it, written from the spec: pull, push in
//! every style, content discovery (tags, catalog, referrers), content management
//! (deletes), and the refusals of bad input that must change nothing.

use crate::common::*;
use serde_json::{Value, json};

fn location(r: &reqwest::Response) -> String {
    r.headers()["location"].to_str().unwrap().to_owned()
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

async fn head_status(s: &TestServer, path: &str) -> u16 {
    client()
        .head(s.url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn base_endpoint_answers_with_api_version() {
    let s = TestServer::start().await;
    let r = client().get(s.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "docker-distribution-api-version"),
        "registry/2.0"
    );
    let r = client().get(s.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn post_then_put_upload_and_pull_back() {
    let s = TestServer::start().await;
    let blob = b"a blob pushed in two requests".to_vec();
    let d = digest_of(&blob);
    let r = client()
        .post(s.url("/v2/a/b/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = location(&r);
    assert!(loc.starts_with("/v2/a/b/blobs/uploads/"), "{loc}");
    assert!(!header(&r, "docker-upload-uuid").is_empty());
    let r = client()
        .put(s.url(&format!("{loc}?digest={d}")))
        .header("content-type", "application/octet-stream")
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(location(&r), format!("/v2/a/b/blobs/{d}"));
    assert_eq!(header(&r, "docker-content-digest"), d.to_string());

    let r = client()
        .get(s.url(&format!("/v2/a/b/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "docker-content-digest"), d.to_string());
    assert_eq!(r.bytes().await.unwrap(), blob);
    let r = client()
        .head(s.url(&format!("/v2/a/b/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), blob.len().to_string());
    // the blob belongs to a/b only
    assert_eq!(head_status(&s, &format!("/v2/other/blobs/{d}")).await, 404);
}

#[tokio::test]
async fn single_post_monolithic_upload() {
    let s = TestServer::start().await;
    let d = push_blob(&s, "mono", b"one request").await;
    assert_eq!(head_status(&s, &format!("/v2/mono/blobs/{d}")).await, 200);
    // an empty blob is a blob too
    let e = push_blob(&s, "mono", b"").await;
    let r = client()
        .get(s.url(&format!("/v2/mono/blobs/{e}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn chunked_upload_with_content_range_and_416_rules() {
    let s = TestServer::start().await;
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let d = digest_of(&blob);
    let (a, rest) = blob.split_at(100_000);
    let (b, c) = rest.split_at(100_000);
    let r = client()
        .post(s.url("/v2/chunky/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = location(&r);

    let patch = |loc: String, body: Vec<u8>, range: Option<String>| {
        let mut req = client()
            .patch(s.url(&loc))
            .header("content-type", "application/octet-stream")
            .body(body);
        if let Some(range) = range {
            req = req.header("content-range", range);
        }
        req.send()
    };
    let r = patch(loc.clone(), a.to_vec(), Some("0-99999".into()))
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(header(&r, "range"), "0-99999");
    let loc = location(&r);

    // out of order: a chunk that does not start where the upload stands
    let r = patch(loc.clone(), c.to_vec(), Some("200000-299999".into()))
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(header(&r, "range"), "0-99999");
    assert_eq!(location(&r), loc);
    // a Content-Range whose length disagrees with the body length
    let r = patch(loc.clone(), b.to_vec(), Some("100000-100009".into()))
        .await
        .unwrap();
    assert_eq!(r.status(), 416);

    let r = patch(loc.clone(), b.to_vec(), Some("100000-199999".into()))
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = client().get(s.url(&loc)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "range"), "0-199999");

    // last chunk in the closing PUT
    let r = client()
        .put(s.url(&format!("{loc}?digest={d}")))
        .header("content-range", "200000-299999")
        .header("content-type", "application/octet-stream")
        .body(c.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let got = client()
        .get(s.url(&format!("/v2/chunky/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(got.bytes().await.unwrap(), blob);
    // the session is gone
    assert_eq!(
        client().get(s.url(&loc)).send().await.unwrap().status(),
        404
    );
}

#[tokio::test]
async fn streamed_patch_without_content_range() {
    let s = TestServer::start().await;
    let parts: [&[u8]; 2] = [b"streamed chunk one, ", b"streamed chunk two"];
    let whole = parts.concat();
    let d = digest_of(&whole);
    let r = client()
        .post(s.url("/v2/stream/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let mut loc = location(&r);
    let mut sent = 0;
    for part in parts {
        let r = client()
            .patch(s.url(&loc))
            .body(part.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        sent += part.len();
        assert_eq!(header(&r, "range"), format!("0-{}", sent - 1));
        loc = location(&r);
    }
    let r = client()
        .put(s.url(&format!("{loc}?digest={d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let got = client()
        .get(s.url(&format!("/v2/stream/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(got.bytes().await.unwrap(), whole);
}

#[tokio::test]
async fn wrong_digest_is_refused_and_leaves_nothing() {
    let s = TestServer::start().await;
    let claimed = digest_of(b"what the client claims");
    let r = client()
        .post(s.url(&format!("/v2/w/blobs/uploads/?digest={claimed}")))
        .body(b"something else".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    assert_eq!(
        head_status(&s, &format!("/v2/w/blobs/{claimed}")).await,
        404
    );
    let actual = digest_of(b"something else");
    assert_eq!(head_status(&s, &format!("/v2/w/blobs/{actual}")).await, 404);
    // nothing under blobs/ at all
    let blobs = s.dir.path().join("data/blobs");
    let count = walk_files(&blobs).len();
    assert_eq!(count, 0, "a refused blob left files behind");

    // in a session: the session is dropped as well
    let r = client()
        .post(s.url("/v2/w/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = location(&r);
    let r = client()
        .put(s.url(&format!("{loc}?digest={claimed}")))
        .body(b"other bytes".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    assert_eq!(
        client().get(s.url(&loc)).send().await.unwrap().status(),
        404
    );

    for bad in ["sha256:abc", "md5:0123", "sha256:../../../etc/passwd"] {
        let r = client()
            .post(s.url(&format!("/v2/w/blobs/uploads/?digest={bad}")))
            .body(b"x".to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    assert_eq!(walk_files(&blobs).len(), 0);
}

pub fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn cancel_upload() {
    let s = TestServer::start().await;
    let r = client()
        .post(s.url("/v2/c/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = location(&r);
    client()
        .patch(s.url(&loc))
        .body(b"partial".to_vec())
        .send()
        .await
        .unwrap();
    let r = client().delete(s.url(&loc)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = client().get(s.url(&loc)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    // an upload of one repository is unknown in another
    let r = client()
        .post(s.url("/v2/c/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let id = location(&r).rsplit('/').next().unwrap().to_owned();
    let r = client()
        .get(s.url(&format!("/v2/elsewhere/blobs/uploads/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn cross_repository_mount() {
    let s = TestServer::start().await;
    let d = push_blob(&s, "src/repo", b"shared layer").await;
    let r = client()
        .post(s.url(&format!(
            "/v2/dst/repo/blobs/uploads/?mount={d}&from=src/repo"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(location(&r), format!("/v2/dst/repo/blobs/{d}"));
    assert_eq!(
        head_status(&s, &format!("/v2/dst/repo/blobs/{d}")).await,
        200
    );

    // automatic content discovery: no `from`
    let r = client()
        .post(s.url(&format!("/v2/auto/blobs/uploads/?mount={d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // from a repository that does not have it: an ordinary upload session instead
    let missing = digest_of(b"never pushed");
    let r = client()
        .post(s.url(&format!(
            "/v2/dst/repo/blobs/uploads/?mount={missing}&from=src/repo"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(location(&r).contains("/blobs/uploads/"));
    let r = client()
        .post(s.url(&format!(
            "/v2/dst2/blobs/uploads/?mount={d}&from=nothing/here"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

#[tokio::test]
async fn manifests_are_stored_byte_for_byte() {
    let s = TestServer::start().await;
    let c = push_blob(&s, "m", b"{}").await;
    let l = push_blob(&s, "m", b"layer").await;
    // odd whitespace and key order: the digest is over these exact bytes
    let body = format!(
        "{{ \"schemaVersion\" : 2,\n \"mediaType\": \"{}\", \"config\": {{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"{c}\",\"size\":2}},\n\"layers\":[{{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"{l}\",\"size\":5}}]   }}\n",
        oci::media::OCI_MANIFEST
    );
    let d = digest_of(body.as_bytes());
    let r = put_manifest(&s, "m", "v1", oci::media::OCI_MANIFEST, body.as_bytes()).await;
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "docker-content-digest"), d.to_string());
    assert_eq!(location(&r), format!("/v2/m/manifests/{d}"));
    for reference in ["v1".to_owned(), d.to_string()] {
        let r = client()
            .get(s.url(&format!("/v2/m/manifests/{reference}")))
            .header("accept", oci::media::OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-type"), oci::media::OCI_MANIFEST);
        assert_eq!(header(&r, "docker-content-digest"), d.to_string());
        assert_eq!(r.bytes().await.unwrap(), body.as_bytes());
        let r = client()
            .head(s.url(&format!("/v2/m/manifests/{reference}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-length"), body.len().to_string());
    }
    // by digest, the digest must match
    let r = put_manifest(
        &s,
        "m",
        &digest_of(b"x").to_string(),
        oci::media::OCI_MANIFEST,
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let r = put_manifest(
        &s,
        "m",
        &d.to_string(),
        oci::media::OCI_MANIFEST,
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status(), 201);
    assert_eq!(head_status(&s, "/v2/m/manifests/nope").await, 404);
}

#[tokio::test]
async fn docker_schema2_and_manifest_list() {
    let s = TestServer::start().await;
    let c = push_blob(&s, "d", b"{\"architecture\":\"amd64\"}").await;
    let l = push_blob(&s, "d", b"docker layer").await;
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": oci::media::DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": c, "size": 24},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": l, "size": 12}]
    }))
    .unwrap();
    let md = digest_of(&m);
    assert_eq!(
        put_manifest(&s, "d", "amd64", oci::media::DOCKER_MANIFEST, &m)
            .await
            .status(),
        201
    );
    let list = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": oci::media::DOCKER_LIST,
        "manifests": [{"mediaType": oci::media::DOCKER_MANIFEST, "digest": md, "size": m.len(),
                       "platform": {"architecture": "amd64", "os": "linux"}}]
    }))
    .unwrap();
    let r = put_manifest(&s, "d", "latest", oci::media::DOCKER_LIST, &list).await;
    assert_eq!(r.status(), 201);
    let r = client()
        .get(s.url("/v2/d/manifests/latest"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "content-type"), oci::media::DOCKER_LIST);
    assert_eq!(r.bytes().await.unwrap(), list);
}

#[tokio::test]
async fn manifest_refusals_change_nothing() {
    let s = TestServer::start().await;
    let c = push_blob(&s, "r", b"{}").await;
    let missing = digest_of(b"not pushed");
    let bad = image_manifest((&c, 2), &[(&missing, 10)]);
    let r = put_manifest(&s, "r", "t", oci::media::OCI_MANIFEST, &bad).await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");

    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": oci::media::OCI_INDEX,
        "manifests": [{"mediaType": oci::media::OCI_MANIFEST, "digest": missing, "size": 10}]
    }))
    .unwrap();
    let r = put_manifest(&s, "r", "t", oci::media::OCI_INDEX, &index).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(v["errors"][0]["detail"]["digest"], missing.to_string());

    let r = put_manifest(&s, "r", "t", oci::media::OCI_MANIFEST, b"{not json").await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");

    // body mediaType disagreeing with Content-Type
    let good = image_manifest((&c, 2), &[]);
    let r = put_manifest(&s, "r", "t", oci::media::DOCKER_MANIFEST, &good).await;
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");

    let huge = vec![b' '; 4 * 1024 * 1024 + 1];
    let r = put_manifest(&s, "r", "t", oci::media::OCI_MANIFEST, &huge).await;
    assert_eq!(r.status(), 413);

    let r = put_manifest(&s, "r", "bad:tag", oci::media::OCI_MANIFEST, &good).await;
    assert_eq!(r.status(), 400);

    // none of that created a tag
    let r = client().get(s.url("/v2/r/tags/list")).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!([]));
}

#[tokio::test]
async fn index_with_children_present_is_accepted() {
    let s = TestServer::start().await;
    let a = push_image(&s, "multi", "amd64", "a").await;
    let b = push_image(&s, "multi", "arm64", "b").await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": oci::media::OCI_INDEX,
        "manifests": [
            {"mediaType": oci::media::OCI_MANIFEST, "digest": a, "size": 1, "platform": {"os":"linux","architecture":"amd64"}},
            {"mediaType": oci::media::OCI_MANIFEST, "digest": b, "size": 1, "platform": {"os":"linux","architecture":"arm64"}}
        ]
    }))
    .unwrap();
    let r = put_manifest(&s, "multi", "latest", oci::media::OCI_INDEX, &index).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

#[tokio::test]
async fn tags_list_paginates_with_link_header() {
    let s = TestServer::start().await;
    let d = push_image(&s, "p", "a", "seed").await;
    let body = get_bytes(&s.url(&format!("/v2/p/manifests/{d}"))).await;
    for t in ["d", "b", "c", "e"] {
        assert_eq!(
            put_manifest(&s, "p", t, oci::media::OCI_MANIFEST, &body)
                .await
                .status(),
            201
        );
    }
    let r = client().get(s.url("/v2/p/tags/list")).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, json!({"name": "p", "tags": ["a", "b", "c", "d", "e"]}));

    let r = client()
        .get(s.url("/v2/p/tags/list?n=2"))
        .send()
        .await
        .unwrap();
    let link = header(&r, "link");
    assert_eq!(link, "</v2/p/tags/list?n=2&last=b>; rel=\"next\"");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!(["a", "b"]));
    let r = client()
        .get(s.url("/v2/p/tags/list?n=2&last=b"))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!(["c", "d"]));
    let r = client()
        .get(s.url("/v2/p/tags/list?n=2&last=d"))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers().get("link").is_none(),
        "no next page after the last one"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!(["e"]));
    let r = client()
        .get(s.url("/v2/p/tags/list?n=0"))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!([]));

    let r = client()
        .get(s.url("/v2/unknown/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");
    let r = client()
        .get(s.url("/v2/p/tags/list?n=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn catalog_paginates() {
    let s = TestServer::start().await;
    for repo in ["c/one", "a", "b/nested/deep", "b"] {
        push_image(&s, repo, "v1", repo).await;
    }
    let v: Value = get_json(&s.url("/v2/_catalog")).await;
    assert_eq!(
        v["repositories"],
        json!(["a", "b", "b/nested/deep", "c/one"])
    );
    let r = client()
        .get(s.url("/v2/_catalog?n=3"))
        .send()
        .await
        .unwrap();
    assert!(
        header(&r, "link").contains("last=b%2Fnested%2Fdeep"),
        "{}",
        header(&r, "link")
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["repositories"], json!(["a", "b", "b/nested/deep"]));
    let v: Value = get_json(&s.url("/v2/_catalog?n=3&last=b%2Fnested%2Fdeep")).await;
    assert_eq!(v["repositories"], json!(["c/one"]));
}

#[tokio::test]
async fn referrers_api_with_artifact_type_filter() {
    let s = TestServer::start().await;
    let subject = push_image(&s, "ref", "v1", "subject").await;
    let subject_body = get_bytes(&s.url(&format!("/v2/ref/manifests/{subject}"))).await;
    let empty = push_blob(&s, "ref", b"{}").await;
    let mut digests = Vec::new();
    for (i, at) in [
        "application/vnd.example.sbom",
        "application/vnd.example.sig",
    ]
    .iter()
    .enumerate()
    {
        let m = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": oci::media::OCI_MANIFEST, "artifactType": at,
            "config": {"mediaType": oci::media::OCI_EMPTY, "digest": empty, "size": 2},
            "layers": [],
            "subject": {"mediaType": oci::media::OCI_MANIFEST, "digest": subject, "size": subject_body.len()},
            "annotations": {"n": i.to_string()}
        }))
        .unwrap();
        let r = put_manifest(
            &s,
            "ref",
            &digest_of(&m).to_string(),
            oci::media::OCI_MANIFEST,
            &m,
        )
        .await;
        assert_eq!(r.status(), 201);
        assert_eq!(header(&r, "oci-subject"), subject.to_string());
        digests.push(digest_of(&m));
    }
    let r = client()
        .get(s.url(&format!("/v2/ref/referrers/{subject}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), oci::media::OCI_INDEX);
    assert!(r.headers().get("oci-filters-applied").is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["mediaType"], oci::media::OCI_INDEX);
    assert_eq!(v["manifests"].as_array().unwrap().len(), 2);
    assert!(
        v["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["annotations"]["n"] == "1")
    );

    let r = client()
        .get(s.url(&format!(
            "/v2/ref/referrers/{subject}?artifactType=application/vnd.example.sig"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "oci-filters-applied"), "artifactType");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(
        v["manifests"][0]["artifactType"],
        "application/vnd.example.sig"
    );
    assert_eq!(v["manifests"][0]["digest"], digests[1].to_string());

    // unknown subject: an empty index, not a 404
    let r = client()
        .get(s.url(&format!("/v2/ref/referrers/{}", digest_of(b"nothing"))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["manifests"], json!([]));

    // deleting a referrer removes it from the listing
    let r = client()
        .delete(s.url(&format!("/v2/ref/manifests/{}", digests[0])))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let v: Value = get_json(&s.url(&format!("/v2/ref/referrers/{subject}"))).await;
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn deletes_of_tags_manifests_and_blobs() {
    let s = TestServer::start().await;
    let d = push_image(&s, "del", "v1", "x").await;
    let body = get_bytes(&s.url("/v2/del/manifests/v1")).await;
    put_manifest(&s, "del", "v2", oci::media::OCI_MANIFEST, &body).await;

    // delete a tag: the manifest stays
    let r = client()
        .delete(s.url("/v2/del/manifests/v2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(head_status(&s, "/v2/del/manifests/v2").await, 404);
    assert_eq!(
        head_status(&s, &format!("/v2/del/manifests/{d}")).await,
        200
    );
    assert_eq!(
        client()
            .delete(s.url("/v2/del/manifests/v2"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // delete by digest: manifest and tags pointing at it go
    let r = client()
        .delete(s.url(&format!("/v2/del/manifests/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        head_status(&s, &format!("/v2/del/manifests/{d}")).await,
        404
    );
    assert_eq!(head_status(&s, "/v2/del/manifests/v1").await, 404);
    let r = client()
        .delete(s.url(&format!("/v2/del/manifests/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let b = push_blob(&s, "del", b"to delete").await;
    let r = client()
        .delete(s.url(&format!("/v2/del/blobs/{b}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(head_status(&s, &format!("/v2/del/blobs/{b}")).await, 404);
    assert_eq!(
        client()
            .delete(s.url(&format!("/v2/del/blobs/{b}")))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn range_requests_on_blobs() {
    let s = TestServer::start().await;
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
    let d = push_blob(&s, "rg", &data).await;
    let get = |range: &'static str| {
        client()
            .get(s.url(&format!("/v2/rg/blobs/{d}")))
            .header("range", range)
            .send()
    };
    let r = get("bytes=1000-1999999").await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(header(&r, "content-range"), "bytes 1000-1999999/2000000");
    assert_eq!(r.bytes().await.unwrap(), &data[1000..]);
    let r = get("bytes=-10").await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), &data[data.len() - 10..]);
    let r = get("bytes=5-5").await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), &data[5..6]);
    for bad in ["bytes=2000000-", "bytes=9-3", "bytes=0-1,5-6"] {
        let r = get(bad).await.unwrap();
        assert_eq!(r.status(), 416, "{bad}");
        assert_eq!(header(&r, "content-range"), "bytes */2000000");
    }
    // A unit the server does not understand is ignored (RFC 9110 §14.2).
    let r = get("lines=1-2").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), data.len());
}

#[tokio::test]
async fn invalid_names_and_path_tricks_are_refused() {
    let s = TestServer::start().await;
    let d = digest_of(b"x");
    for path in [
        "/v2/UPPER/manifests/latest".to_owned(),
        "/v2/a//b/manifests/latest".to_owned(),
        "/v2/_a/manifests/latest".to_owned(),
        "/v2/a/manifests/..".to_owned(),
        format!("/v2/a/_manifests/blobs/{d}"),
        "/v2/a/blobs/sha256:..%2F..%2Fetc".to_owned(),
    ] {
        let r = client().get(s.url(&path)).send().await.unwrap();
        assert!(
            r.status() == 400 || r.status() == 404,
            "{path}: {}",
            r.status()
        );
    }
    let r = client()
        .get(s.url("/v2/UPPER/manifests/latest"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "NAME_INVALID");
    // dot segments, encoded or not, never reach the store
    let r = client()
        .post(s.url("/v2/a/%2E%2E/%2E%2E/x/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert!(r.status() == 400 || r.status() == 404, "{}", r.status());
    // clients normalise dot segments away, so send raw requests
    for path in [
        "/v2/a/../../x/blobs/uploads/",
        "/v2/a/%2e%2e/x/blobs/uploads/",
        "/v2/../x/manifests/latest",
    ] {
        let status = raw_request(&s, "POST", path).await;
        assert!(
            status == 400 || status == 404 || status == 405,
            "{path}: {status}"
        );
    }
    assert!(!s.dir.path().join("x").exists());
    assert!(!s.dir.path().join("data/x").exists());
    assert!(!s.dir.path().join("x").exists());
    let r = client()
        .patch(s.url("/v2/a/blobs/uploads/..%2F..%2Fx"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn unsupported_methods_get_spec_errors() {
    let s = TestServer::start().await;
    let r = client()
        .post(s.url("/v2/a/manifests/latest"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(error_code(r).await, "UNSUPPORTED");
}

/// Send one request without any client-side path normalisation; returns the status.
async fn raw_request(s: &TestServer, method: &str, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    c.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_reference_that_cannot_be_a_tag_is_an_unknown_manifest() {
    let s = TestServer::start().await;
    push_image(&s, "inv", "v1", "x").await;
    assert_eq!(
        head_status(&s, "/v2/inv/manifests/.INVALID_MANIFEST_NAME").await,
        404
    );
    let r = client()
        .get(s.url("/v2/inv/manifests/.INVALID_MANIFEST_NAME"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    let r = put_manifest(
        &s,
        "inv",
        ".INVALID_MANIFEST_NAME",
        oci::media::OCI_MANIFEST,
        b"{}",
    )
    .await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn discovery_mount_never_resurrects_unlinked_bytes() {
    let s = TestServer::start().await;
    let d = push_blob(&s, "once", b"hello world").await;
    let r = client()
        .delete(s.url(&format!("/v2/once/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // the bytes are still on disk (until GC), but no repository holds them
    let r = client()
        .post(s.url(&format!("/v2/thief/blobs/uploads/?mount={d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(head_status(&s, &format!("/v2/thief/blobs/{d}")).await, 404);
}

#[tokio::test]
async fn empty_artifact_type_falls_back_to_the_config_media_type() {
    let s = TestServer::start().await;
    let subject = push_image(&s, "eat", "v1", "s").await;
    let cfg = push_blob(&s, "eat", b"{}").await;
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": oci::media::OCI_MANIFEST, "artifactType": "",
        "config": {"mediaType": "application/vnd.example.config", "digest": cfg, "size": 2},
        "layers": [],
        "subject": {"mediaType": oci::media::OCI_MANIFEST, "digest": subject, "size": 1}
    }))
    .unwrap();
    let r = put_manifest(
        &s,
        "eat",
        &digest_of(&m).to_string(),
        oci::media::OCI_MANIFEST,
        &m,
    )
    .await;
    assert_eq!(r.status(), 201);
    let v = get_json(&s.url(&format!("/v2/eat/referrers/{subject}"))).await;
    assert_eq!(
        v["manifests"][0]["artifactType"],
        "application/vnd.example.config"
    );
}

#[tokio::test]
async fn an_early_error_on_a_request_with_a_body_closes_the_connection() {
    let s = TestServer::start().await;
    let r = client()
        .post(s.url("/v2/cc/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = location(&r);
    let r = client()
        .patch(s.url(&loc))
        .header("content-range", "10-19")
        .body(vec![0u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(header(&r, "connection"), "close");
}

/// Store operations one request costs, by kind (`stat=2 read=1`), read from the
/// registry's own counters around the request.
async fn ops_of(s: &TestServer, request: reqwest::RequestBuilder) -> (u16, String) {
    use store::metered::Op;
    let counts = s.app.registry.store_ops();
    let before: Vec<u64> = Op::ALL.iter().map(|op| counts.get(*op)).collect();
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    r.bytes().await.unwrap();
    let spent: Vec<String> = Op::ALL
        .iter()
        .zip(before)
        .filter_map(|(op, was)| {
            let n = counts.get(*op) - was;
            (n > 0).then(|| format!("{}={n}", op.name()))
        })
        .collect();
    (status, spent.join(" "))
}

/// Issue 16: a blob is looked up once per request. A hosted blob GET costs the link and
/// blob stats and one read; a HEAD the two stats; a cache hit the same as a hosted GET
/// (it does not go through the hosted handler a second time).
#[tokio::test(flavor = "multi_thread")]
async fn a_blob_request_asks_the_store_once() {
    let s = TestServer::start().await;
    let bytes = pseudo_random(61, 64 * 1024);
    let d = push_blob(&s, "ops/app", &bytes).await;
    let url = s.url(&format!("/v2/ops/app/blobs/{d}"));
    let get = ops_of(&s, client().get(&url)).await;
    let head = ops_of(&s, client().head(&url)).await;
    let range = ops_of(&s, client().get(&url).header("range", "bytes=10-99")).await;
    eprintln!(
        "hosted GET: {}; HEAD: {}; range GET: {}",
        get.1, head.1, range.1
    );
    assert_eq!(get, (200, "stat=2 read=1".to_owned()));
    assert_eq!(head, (200, "stat=2".to_owned()));
    assert_eq!(range, (206, "stat=2 read=1".to_owned()));

    // Through a cache whose upstream is the first server: the miss, then a hit.
    let upstream = s.url("");
    let c = TestServer::start_with(move |c| {
        c.upstreams = vec![upstream_config(
            "up.test",
            &upstream,
            std::time::Duration::from_secs(60),
        )];
    })
    .await;
    let cached = c.url(&format!("/v2/ops/app/blobs/{d}?ns=up.test"));
    let miss = ops_of(&c, client().get(&cached)).await;
    let hit = ops_of(&c, client().get(&cached)).await;
    let hit_head = ops_of(&c, client().head(&cached)).await;
    eprintln!(
        "cache miss: {}; hit: {}; hit HEAD: {}",
        miss.1, hit.1, hit_head.1
    );
    assert_eq!(miss.0, 200);
    assert_eq!(hit, (200, "stat=2 read=1".to_owned()));
    assert_eq!(hit_head, (200, "stat=2".to_owned()));
}
