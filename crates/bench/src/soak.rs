//! The soak (`--soak DURATION`): one berth, hosted and a cache of a distribution upstream
//! at once, under mixed concurrent load for a bounded time — pushes (monolithic and
//! chunked), pulls of hosted and cached images, manifest deletes, with garbage
//! collection, retention and the scrub on short schedules. It owns judging the run:
//! every answer must be an expected status, every acknowledged push in the kept
//! repositories must pull back byte-exact at the end, `berth fsck --deep` must be clean,
//! and resident memory is sampled over the whole run and reported. It never times
//! anything against a target; the figures are printed.

use crate::blob::{Blob, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, descriptor};
use crate::client::Api;
use crate::progress;
use crate::pull::Upstream;
use crate::server::{Kind, Role, Server};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use parking_lot::Mutex;
use reqwest::{Client, StatusCode};
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Concurrent clients of the soak: enough to keep two cores busy and make requests on
/// the same repositories interleave.
const CLIENTS: usize = 8;
/// How often resident memory is sampled.
const RSS_EVERY: Duration = Duration::from_secs(10);
/// Repositories whose pushes must all survive: no retention rule applies to them.
const KEPT_REPOS: usize = 4;
/// Repositories retention trims to their last few tags while pushes go on.
const TRIMMED_REPOS: usize = 2;
/// Images on the upstream, pulled through the cache.
const UPSTREAM_IMAGES: u64 = 4;
/// Largest layer a soak push sends; sizes vary below it, the larger ones in chunks. Small,
/// so that ten minutes of pushes (all kept) fit in a few GiB of disk: the soak is about
/// interleaving and memory over time, not throughput.
const MAX_LAYER: usize = 256 * 1024;
/// Tags each client cycles through in the kept repositories: a re-push moves the tag and
/// leaves the old image to garbage collection, so the store stays the same size however
/// long the soak runs, and memory over time measures berth, not the store's growth.
const TAGS_PER_CLIENT: u64 = 25;
/// Chunk size of the chunked pushes.
const CHUNK: usize = 64 * 1024;
/// The soak stops (as a failure of the machine, not of berth) when the disk under its
/// data directory has less than this left.
const MIN_FREE_DISK: u64 = 2 * 1024 * 1024 * 1024;
/// Unexpected answers quoted in the report.
const QUOTED_FAILURES: usize = 10;

/// The schedules the soak runs berth with: everything the issue names, often enough to
/// happen many times in a ten-minute run. GC's grace stays long enough for the slowest
/// push of the soak to finish its manifest PUT.
pub fn config(upstream: SocketAddr) -> String {
    format!(
        "\n[[upstream]]\nname = \"{upstream}\"\nurl = \"http://{upstream}\"\ntag_ttl = \"5s\"\n\n\
         [gc]\ninterval = \"20s\"\ngrace = \"30s\"\n\n\
         [retention]\ninterval = \"15s\"\n\n\
         [[retention.rule]]\nrepositories = \"soak/trimmed/**\"\nkeep_last = 3\n\n\
         [scrub]\ninterval = \"20s\"\n"
    )
}

/// A small image whose layer size and content vary with `seed`.
struct SoakImage {
    config: Blob,
    layer: Blob,
    manifest: Blob,
}

impl SoakImage {
    fn new(seed: u64) -> SoakImage {
        let config = Blob::new(Bytes::from(
            serde_json::json!({
                "architecture": "amd64", "os": "linux",
                "rootfs": { "type": "layers", "diff_ids": [] },
                "config": { "Labels": { "soak": seed.to_string() } },
            })
            .to_string(),
        ));
        let len = 1024 + (seed.wrapping_mul(2_654_435_761) as usize % MAX_LAYER);
        let layer = Blob::random(len, seed);
        let manifest = Blob::new(Bytes::from(
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": descriptor(OCI_CONFIG, &config),
                "layers": [descriptor(OCI_LAYER, &layer)],
            })
            .to_string(),
        ));
        SoakImage {
            config,
            layer,
            manifest,
        }
    }
}

/// An acknowledged push: where, and the digests to check.
#[derive(Clone)]
struct Pushed {
    repo: String,
    tag: String,
    manifest: String,
    blobs: Vec<String>,
}

#[derive(Default)]
struct Tally {
    /// Requests by kind of operation.
    ops: BTreeMap<&'static str, u64>,
    /// Answers no correct registry gives, quoted.
    failures: Vec<String>,
    failure_count: u64,
    /// The last acknowledged push of each (repository, tag) in the kept repositories.
    kept: BTreeMap<(String, String), Pushed>,
    /// Pushes acknowledged in the kept repositories, re-pushes of a tag included.
    acked_pushes: u64,
}

impl Tally {
    fn fail(&mut self, what: String) {
        self.failure_count += 1;
        if self.failures.len() < QUOTED_FAILURES {
            self.failures.push(what);
        }
    }
}

/// Run the soak for `duration` and print its report; an error when any check failed.
pub async fn run(
    berth: &Path,
    distribution: &Path,
    client: &Client,
    duration: Duration,
) -> Result<()> {
    let upstream = Upstream::start(distribution, client).await?;
    let up_api = upstream.api();
    let mut upstream_images = Vec::new();
    for i in 0..UPSTREAM_IMAGES {
        let image = SoakImage::new(1_000_000 + i);
        push(up_api, "soak/upstream", &format!("v{i}"), &image, false).await?;
        upstream_images.push(image);
    }
    let ns = upstream.cache_facing_addr();
    let server = Server::start(
        Kind::Berth { fsync: true },
        Role::Soak { upstream: ns },
        berth,
        client,
    )
    .await?;
    progress(
        &server.label,
        format!(
            "listening on {} (pid {}); soaking for {duration:?}",
            server.addr,
            server.pid()
        ),
    );
    let api = Arc::new(Api::new(client.clone(), server.base.clone()));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let upstream_images = Arc::new(upstream_images);
    let started = Instant::now();
    let deadline = started + duration;

    let mut rss = vec![(Duration::ZERO, server.rss_bytes()?)];
    let workers: Vec<_> = (0..CLIENTS)
        .map(|w| {
            let (api, tally, images, client) = (
                api.clone(),
                tally.clone(),
                upstream_images.clone(),
                client.clone(),
            );
            let base = server.base.clone();
            tokio::spawn(async move {
                worker(
                    w as u64, &api, &client, &base, ns, &images, &tally, deadline,
                )
                .await
            })
        })
        .collect();
    while Instant::now() < deadline {
        tokio::time::sleep(RSS_EVERY.min(deadline.saturating_duration_since(Instant::now()))).await;
        rss.push((started.elapsed(), server.rss_bytes()?));
        let free = free_disk(&server.config)?;
        if free < MIN_FREE_DISK {
            bail!(
                "only {} MiB of disk left under {}; stopping the soak before the disk fills",
                free >> 20,
                server.config.display()
            );
        }
        let t = tally.lock();
        progress(
            "soak",
            format!(
                "{:>4}s: {} requests, {} unexpected, RSS {:.1} MiB",
                started.elapsed().as_secs(),
                t.ops.values().sum::<u64>(),
                t.failure_count,
                rss.last().map_or(0.0, |r| r.1 as f64 / 1048576.0)
            ),
        );
    }
    for w in workers {
        w.await.context("a soak client panicked")?;
    }

    // Every acknowledged push in the kept repositories pulls back byte-exact.
    let kept: Vec<Pushed> = tally.lock().kept.values().cloned().collect();
    let mut verified = 0;
    for p in &kept {
        match pull(client, &server.base, &p.repo, &p.tag, None).await {
            Ok(digests) if digests.0 == p.manifest && digests.1 == p.blobs => verified += 1,
            Ok(_) => tally.lock().fail(format!(
                "{}:{} pulled other content than was pushed",
                p.repo, p.tag
            )),
            Err(e) => tally
                .lock()
                .fail(format!("{}:{} no longer pulls: {e:#}", p.repo, p.tag)),
        }
    }
    rss.push((started.elapsed(), server.rss_bytes()?));

    // The store is clean, re-hashing every blob.
    let fsck = std::process::Command::new(berth)
        .args(["fsck", "--deep", "--config"])
        .arg(&server.config)
        .output()
        .context("cannot run berth fsck")?;
    let fsck_clean = fsck.status.success();
    let fsck_out = String::from_utf8_lossy(&fsck.stdout).into_owned();

    let t = tally.lock();
    print!(
        "{}",
        report(
            duration,
            &t,
            verified,
            kept.len(),
            fsck_clean,
            &fsck_out,
            &rss
        )
    );
    for line in server.log_errors(QUOTED_FAILURES) {
        println!("server log: {line}");
    }
    if t.failure_count > 0 || !fsck_clean || verified != kept.len() {
        bail!("the soak found problems (see the table)");
    }
    Ok(())
}

/// Bytes an unprivileged writer can still use on the filesystem holding `path`.
fn free_disk(path: &Path) -> Result<u64> {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .context("cannot run df")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .context("df printed no number")
}

fn report(
    duration: Duration,
    t: &Tally,
    verified: usize,
    kept: usize,
    fsck_clean: bool,
    fsck_out: &str,
    rss: &[(Duration, u64)],
) -> String {
    let mib = |b: u64| b as f64 / 1048576.0;
    let mut out = String::new();
    out.push_str(&format!(
        "\n## Soak: {} s, {CLIENTS} clients\n\n",
        duration.as_secs()
    ));
    out.push_str("| check | result |\n|---|---:|\n");
    for (op, n) in &t.ops {
        out.push_str(&format!("| {op} requests | {n} |\n"));
    }
    out.push_str(&format!("| unexpected answers | {} |\n", t.failure_count));
    out.push_str(&format!(
        "| acknowledged pushes in the kept repositories | {} |\n",
        t.acked_pushes
    ));
    out.push_str(&format!(
        "| their tags at the end, pulled byte-exact (last push of each) | {verified} / {kept} |\n"
    ));
    out.push_str(&format!(
        "| `berth fsck --deep` | {} |\n",
        if fsck_clean { "clean" } else { "PROBLEMS" }
    ));
    let quarter = |q: usize| {
        let i = (rss.len() - 1) * q / 4;
        mib(rss[i].1)
    };
    out.push_str(&format!(
        "| RSS MiB at 0 / ¼ / ½ / ¾ / end | {:.1} / {:.1} / {:.1} / {:.1} / {:.1} |\n",
        quarter(0),
        quarter(1),
        quarter(2),
        quarter(3),
        quarter(4)
    ));
    let max = rss.iter().map(|r| r.1).max().unwrap_or(0);
    out.push_str(&format!("| RSS MiB, highest sample | {:.1} |\n", mib(max)));
    for f in &t.failures {
        out.push_str(&format!("\n- unexpected: {f}"));
    }
    if !fsck_clean {
        out.push_str(&format!("\n\nfsck said:\n```\n{fsck_out}```\n"));
    }
    out.push_str("\nRSS over time (s, MiB):");
    for (at, b) in rss {
        out.push_str(&format!(" {}:{:.0}", at.as_secs(), mib(*b)));
    }
    out.push('\n');
    out
}

/// Push `image` as `repo:tag`, its layer in chunks when `chunked`.
async fn push(api: &Api, repo: &str, tag: &str, image: &SoakImage, chunked: bool) -> Result<()> {
    api.push_monolithic(repo, &image.config).await?;
    if chunked {
        api.push_chunked(repo, &image.layer, CHUNK).await?;
    } else {
        api.push_monolithic(repo, &image.layer).await?;
    }
    api.put_manifest(repo, tag, OCI_MANIFEST, image.manifest.bytes.clone())
        .await
}

/// Pull `repo:tag` (through `?ns=` when given): the manifest digest and the blob digests
/// as computed from the bytes received.
async fn pull(
    client: &Client,
    base: &reqwest::Url,
    repo: &str,
    tag: &str,
    ns: Option<SocketAddr>,
) -> Result<(String, Vec<String>)> {
    let q = ns.map(|n| format!("?ns={n}")).unwrap_or_default();
    let get = |path: String| {
        let url = base.join(&format!("{path}{q}"));
        async move {
            let r = client
                .get(url?)
                .header("accept", OCI_MANIFEST)
                .send()
                .await?;
            if r.status() != StatusCode::OK {
                bail!("GET {path} answered {}", r.status());
            }
            Ok::<_, anyhow::Error>(r.bytes().await?)
        }
    };
    let manifest = get(format!("v2/{repo}/manifests/{tag}")).await?;
    let parsed: serde_json::Value = serde_json::from_slice(&manifest)?;
    let mut blobs = Vec::new();
    let descs =
        std::iter::once(&parsed["config"]).chain(parsed["layers"].as_array().into_iter().flatten());
    for d in descs {
        let digest = d["digest"].as_str().context("descriptor without digest")?;
        let bytes = get(format!("v2/{repo}/blobs/{digest}")).await?;
        let got = crate::blob::sha256_digest(&bytes);
        if got != digest {
            bail!("blob {digest} arrived as {got}");
        }
        blobs.push(got);
    }
    Ok((
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&manifest))),
        blobs,
    ))
}

#[allow(clippy::too_many_arguments)] // reason: one worker's whole context, spelled out once
async fn worker(
    w: u64,
    api: &Api,
    client: &Client,
    base: &reqwest::Url,
    ns: SocketAddr,
    upstream_images: &[SoakImage],
    tally: &Mutex<Tally>,
    deadline: Instant,
) {
    let mut dice = w * 0x9E37_79B9 + 1;
    let mut roll = |n: u64| {
        dice ^= dice << 13;
        dice ^= dice >> 7;
        dice ^= dice << 17;
        dice % n
    };
    let mut n = 0u64;
    let lock = || tally.lock();
    while Instant::now() < deadline {
        n += 1;
        let seed = w * 1_000_000_000 + n;
        let choice = roll(100);
        if choice < 35 {
            let repo = format!("soak/kept/r{}", roll(KEPT_REPOS as u64));
            let tag = format!("w{w}-{}", n % TAGS_PER_CLIENT);
            let image = SoakImage::new(seed);
            *lock().ops.entry("push").or_default() += 1;
            match push(api, &repo, &tag, &image, image.layer.bytes.len() > CHUNK).await {
                Ok(()) => {
                    let mut t = lock();
                    t.acked_pushes += 1;
                    let pushed = Pushed {
                        repo: repo.clone(),
                        tag: tag.clone(),
                        manifest: image.manifest.digest.clone(),
                        blobs: vec![image.config.digest.clone(), image.layer.digest.clone()],
                    };
                    t.kept.insert((repo, tag), pushed);
                }
                Err(e) => lock().fail(format!("push {repo}:{tag}: {e:#}")),
            }
        } else if choice < 45 {
            let repo = format!("soak/trimmed/r{}", roll(TRIMMED_REPOS as u64));
            *lock().ops.entry("push (trimmed by retention)").or_default() += 1;
            if let Err(e) = push(
                api,
                &repo,
                &format!("w{w}-{n}"),
                &SoakImage::new(seed),
                false,
            )
            .await
            {
                lock().fail(format!("push {repo}: {e:#}"));
            }
        } else if choice < 70 {
            // One of this client's own tags: nobody else moves them, so what it pulls
            // must be exactly what it last pushed there.
            let pick = {
                let t = lock();
                let own: Vec<&Pushed> = t
                    .kept
                    .values()
                    .filter(|p| p.tag.starts_with(&format!("w{w}-")))
                    .collect();
                (!own.is_empty()).then(|| own[roll(own.len() as u64) as usize].clone())
            };
            let Some(p) = pick else { continue };
            *lock().ops.entry("pull (hosted)").or_default() += 1;
            match pull(client, base, &p.repo, &p.tag, None).await {
                Ok(d) if d.0 == p.manifest && d.1 == p.blobs => {}
                Ok(_) => lock().fail(format!("{}:{} pulled other content", p.repo, p.tag)),
                Err(e) => lock().fail(format!("pull {}:{}: {e:#}", p.repo, p.tag)),
            }
        } else if choice < 90 {
            let i = roll(upstream_images.len() as u64) as usize;
            *lock().ops.entry("pull (cached)").or_default() += 1;
            let want = &upstream_images[i];
            match pull(client, base, "soak/upstream", &format!("v{i}"), Some(ns)).await {
                Ok(d) if d.0 == want.manifest.digest => {}
                Ok(_) => lock().fail(format!("cached v{i} pulled other content")),
                Err(e) => lock().fail(format!("cached pull v{i}: {e:#}")),
            }
        } else {
            // Push, then delete by digest: the manifest is gone, nothing else is.
            let repo = "soak/deleted";
            let image = SoakImage::new(seed);
            *lock().ops.entry("push + delete").or_default() += 1;
            let deleted = async {
                push(api, repo, &format!("w{w}-{n}"), &image, false).await?;
                api.delete_manifest(repo, &image.manifest.digest).await?;
                let url = base.join(&format!("v2/{repo}/manifests/{}", image.manifest.digest))?;
                let r = client.get(url).send().await?;
                if r.status() != StatusCode::NOT_FOUND {
                    bail!("a deleted manifest answered {}", r.status());
                }
                Ok::<_, anyhow::Error>(())
            }
            .await;
            if let Err(e) = deleted {
                lock().fail(format!("push + delete: {e:#}"));
            }
        }
    }
}
