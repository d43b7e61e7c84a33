//! Storage faults injected at every step of a push (`store::faults::FaultyStore` over
//! the filesystem store): each failing write, touch, delete, upload append or commit of
//! a blob upload and a manifest PUT is answered with a clear 5xx (507 when the disk is
//! full), leaves nothing partial visible (a tag resolves to a complete image or to
//! nothing; a blob is absent or hashes to its digest), and the same push succeeds once
//! the fault clears.

use crate::common::*;
use std::sync::Arc;
use store::faults::{Fault, FaultyStore, Op};

/// The blobs and manifest of one small image, unique per `seed`.
struct Image {
    config: Vec<u8>,
    layer: Vec<u8>,
}

impl Image {
    fn new(seed: u64) -> Image {
        Image {
            config: format!("{{\"seed\":{seed}}}").into_bytes(),
            layer: pseudo_random(seed, 40_000),
        }
    }

    fn manifest(&self) -> Vec<u8> {
        image_manifest(
            (&digest_of(&self.config), self.config.len()),
            &[(&digest_of(&self.layer), self.layer.len())],
        )
    }
}

/// Push `image` as `repo:v1`: the config monolithically, the layer as POST, two PATCHes
/// and a PUT, then the manifest. The first status that is not a success, if any.
async fn push(s: &TestServer, repo: &str, image: &Image) -> Result<(), u16> {
    let ok = |r: reqwest::Response, want: u16| {
        if r.status().as_u16() == want {
            Ok(r)
        } else {
            Err(r.status().as_u16())
        }
    };
    let c = digest_of(&image.config);
    ok(
        client()
            .post(s.url(&format!("/v2/{repo}/blobs/uploads/?digest={c}")))
            .header("content-type", "application/octet-stream")
            .body(image.config.clone())
            .send()
            .await
            .unwrap(),
        201,
    )?;
    let r = ok(
        client()
            .post(s.url(&format!("/v2/{repo}/blobs/uploads/")))
            .send()
            .await
            .unwrap(),
        202,
    )?;
    let mut loc = r.headers()["location"].to_str().unwrap().to_owned();
    let half = image.layer.len() / 2;
    for (start, part) in [(0, &image.layer[..half]), (half, &image.layer[half..])] {
        let r = ok(
            client()
                .patch(s.url(&loc))
                .header("content-type", "application/octet-stream")
                .header(
                    "content-range",
                    format!("{start}-{}", start + part.len() - 1),
                )
                .body(part.to_vec())
                .send()
                .await
                .unwrap(),
            202,
        )?;
        loc = r.headers()["location"].to_str().unwrap().to_owned();
    }
    let l = digest_of(&image.layer);
    ok(
        client()
            .put(s.url(&with_query(&loc, &format!("digest={l}"))))
            .send()
            .await
            .unwrap(),
        201,
    )?;
    ok(
        client()
            .put(s.url(&format!("/v2/{repo}/manifests/v1")))
            .header("content-type", oci::media::OCI_MANIFEST)
            .body(image.manifest())
            .send()
            .await
            .unwrap(),
        201,
    )?;
    Ok(())
}

/// What a client pulling `repo` sees is whole or absent: the tag resolves to the
/// complete image or 404s, and each blob is missing or hashes to its digest.
async fn assert_nothing_partial(s: &TestServer, repo: &str, image: &Image, what: &str) {
    for bytes in [&image.config, &image.layer] {
        let d = digest_of(bytes);
        let r = client()
            .get(s.url(&format!("/v2/{repo}/blobs/{d}")))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            404 => {}
            200 => {
                let got = r.bytes().await.unwrap();
                assert_eq!(
                    digest_of(&got),
                    d,
                    "{what}: a visible blob hashes to its name"
                );
            }
            other => panic!("{what}: blob GET answered {other}"),
        }
    }
    let r = client()
        .get(s.url(&format!("/v2/{repo}/manifests/v1")))
        .header("accept", oci::media::OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    match r.status().as_u16() {
        404 => {}
        200 => {
            assert_eq!(r.bytes().await.unwrap(), image.manifest(), "{what}");
            for bytes in [&image.config, &image.layer] {
                let d = digest_of(bytes);
                let got = get_bytes(&s.url(&format!("/v2/{repo}/blobs/{d}"))).await;
                assert_eq!(digest_of(&got), d, "{what}: a tagged image is complete");
            }
        }
        other => panic!("{what}: manifest GET answered {other}"),
    }
}

/// A server on the filesystem store behind a fault injector, and the injector.
async fn faulty_server() -> (TestServer, Arc<FaultyStore>) {
    let mut faulty: Option<Arc<FaultyStore>> = None;
    let s = TestServer::start_wrapped(
        tempfile::tempdir().unwrap(),
        |_| {},
        |inner| {
            let f = Arc::new(FaultyStore::new(inner));
            faulty = Some(f.clone());
            f
        },
    )
    .await;
    (s, faulty.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_failing_step_of_a_push_is_a_clear_error_and_leaves_nothing_partial() {
    let (s, faulty) = faulty_server().await;

    // Count the steps of a clean push.
    let ops = [
        Op::Put,
        Op::Touch,
        Op::Delete,
        Op::UploadCreate,
        Op::UploadAppend,
        Op::UploadCommit,
    ];
    let before: Vec<u32> = ops.iter().map(|op| faulty.calls(*op)).collect();
    push(&s, "faults/clean", &Image::new(0)).await.unwrap();
    let steps: Vec<(Op, u32)> = ops
        .iter()
        .zip(&before)
        .map(|(op, b)| (*op, faulty.calls(*op) - b))
        .collect();
    assert!(
        steps.iter().map(|(_, n)| n).sum::<u32>() >= 10,
        "a push writes in many steps: {steps:?}"
    );

    let mut trials = 0;
    let mut seed = 1;
    for (op, n) in steps {
        for k in 0..n {
            for fault in [Fault::NoSpace, Fault::Io, Fault::ShortWrite] {
                seed += 1;
                let repo = format!("faults/t{seed}");
                let image = Image::new(seed);
                let what = format!("{op:?} #{k} failing with {fault:?}");
                faulty.arm(op, None, k, fault);
                let outcome = push(&s, &repo, &image).await;
                let fired = faulty.pending() == 0;
                faulty.clear();
                if fired {
                    trials += 1;
                    match outcome {
                        Err(507) => assert_eq!(fault, Fault::NoSpace, "{what}: 507 means full"),
                        Err(500) => {
                            assert_ne!(fault, Fault::NoSpace, "{what}: a full disk says so")
                        }
                        // A failing step after the response was decided (a cleanup
                        // delete, say) may go unseen by the client; what is visible
                        // must still be whole.
                        Ok(()) => assert!(
                            matches!(op, Op::Delete | Op::Touch),
                            "{what}: a failed write was acknowledged"
                        ),
                        Err(other) => panic!("{what}: answered {other}"),
                    }
                }
                assert_nothing_partial(&s, &repo, &image, &what).await;
                // Once the fault is gone, the same push works.
                push(&s, &repo, &image)
                    .await
                    .unwrap_or_else(|st| panic!("{what}: retry answered {st}"));
                assert_nothing_partial(&s, &repo, &image, &what).await;
            }
        }
    }
    eprintln!("{trials} faults fired, each at its own step of a push");
    assert!(trials >= 30, "{trials}");
}

/// A slow store (every append delayed) slows the push down but changes nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_store_is_only_slow() {
    let (s, faulty) = faulty_server().await;
    for k in 0..3 {
        faulty.arm(
            Op::UploadAppend,
            None,
            k,
            Fault::Slow(std::time::Duration::from_millis(300)),
        );
    }
    let started = std::time::Instant::now();
    let image = Image::new(99);
    push(&s, "faults/slow", &image).await.unwrap();
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    assert_nothing_partial(&s, "faults/slow", &image, "slow").await;
}
