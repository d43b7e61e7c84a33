//! The upkeep rows: garbage collection and integrity checking of one generated store (see
//! `corpus`) by `berth gc`, `berth fsck`, `berth fsck --deep` and distribution's
//! `garbage-collect --delete-untagged`. Each runs as a child process, timed from spawn to
//! exit by a small helper process that reads its peak memory and CPU time from `wait4`;
//! what it printed and what it left on disk are checked; the results make the second
//! markdown table (see docs/bench.md).

use crate::corpus::{Corpus, Expected, Fate, Layout, Shape};
use crate::headline::Headline;
use crate::report::{Spread, push_line, ratio};
use crate::{progress, server};
use anyhow::{Context, Result, bail, ensure};
use std::fs::{self, File};
use std::io;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// berth's `[gc] grace` for the runs: its default, as a deployment runs it.
const GRACE: &str = "1h";
/// How far back the berth store's files are dated: past `GRACE`, so the grace protects
/// none of the garbage (as in a store whose garbage has waited since the last collection).
const AGE: Duration = Duration::from_secs(2 * 60 * 60);
/// The time targets of one collection, one check and one deep check, on the 2-core
/// reference machine: issue 12's for the store of 100,000 blobs, issue 19's for
/// 1,000,000 (ten times the store in less than ten times the time).
const TARGET_SECONDS_100K: [f64; 3] = [30.0, 30.0, 30.0];
const TARGET_SECONDS_1M: [f64; 3] = [25.0, 20.0, 60.0];
/// Issue 19's peak memory target for any of them at any scale, in MiB: memory must not
/// grow with the store.
const TARGET_PEAK_MIB: f64 = 150.0;
/// The store size the targets name; a run at another size shows no target.
const SCALES_WITH_TARGETS: [usize; 2] = [100_000, 1_000_000];
/// A child running this long is hung, not slow (20× the time target): it is killed and
/// the run fails.
const CHILD_TIMEOUT: Duration = Duration::from_secs(600);
/// Pause between checks for a child's exit. Wall times run late by at most this much:
/// noise next to runs of a second or more, and 500 cheap syscalls a second.
const REAP_POLL: Duration = Duration::from_millis(2);
/// Bytes of a child's output quoted in an error about it.
const OUTPUT_TAIL_BYTES: usize = 4000;
/// Memory is shown in binary mebibytes, as the server rows show it.
const MIB: f64 = 1024.0 * 1024.0;

/// Labels of the progress lines of each column.
const BERTH: &str = "berth upkeep";
const DISTRIBUTION: &str = "distribution upkeep";

/// What to run: the binaries of the columns measured (`None`: column left out).
pub struct Plan {
    pub berth: Option<PathBuf>,
    pub distribution: Option<PathBuf>,
    pub rounds: usize,
    /// Live blobs of each store measured (`--scale`), one table each.
    pub scales: Vec<usize>,
}

/// One child process run to its end.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    /// From just before the spawn until it was reaped.
    pub wall_seconds: f64,
    /// User plus system CPU time, all its threads.
    pub cpu_seconds: f64,
    /// `ru_maxrss`: the high-water mark of its resident memory, mapped file pages
    /// included (what VmHWM shows for a running process). It is never below the
    /// measuring helper's own size, about 3 MiB (see [`helper_main`]).
    pub peak_rss_bytes: u64,
}

/// One round against berth: a collection of the fresh store, then both checks of the
/// collected store.
#[derive(Clone, Copy, Debug)]
pub struct BerthRound {
    pub gc: Measured,
    pub fsck: Measured,
    pub fsck_deep: Measured,
    /// `berth serve` on the collected store: from spawn until `GET /v2/` answers.
    pub serve_ready_seconds: f64,
    /// Then one catalog page (`?n=100`) and one tag page of a repository.
    pub catalog_page_seconds: f64,
    pub tags_page_seconds: f64,
    /// Then each of [`WEB_PAGES`] (the median of [`WEB_PAGE_FETCHES`] fetches).
    pub web_page_seconds: [f64; WEB_PAGES.len()],
}

/// The web pages each round times on the collected store, by what they show.
pub const WEB_PAGES: [&str; 6] = [
    "overview",
    "repositories, first page",
    "first search after the start (lists every name once)",
    "search by name (name index)",
    "one repository's tags",
    "one image",
];

/// Which of [`WEB_PAGES`] is timed on its first fetch alone: what it measures happens
/// once (the name index is listed on the first search).
const FIRST_FETCH_ONLY: usize = 2;

/// Fetches of each web page per round: the median of three steps over a stray slow one.
const WEB_PAGE_FETCHES: usize = 3;

/// The paths of [`WEB_PAGES`] on the corpus of `repositories` repositories, with the
/// name each search must find.
fn web_paths(repositories: usize) -> [(String, Option<String>); WEB_PAGES.len()] {
    let first = "upkeep/r00000";
    let search = |i: usize| {
        let name = format!("r{:05}", i.min(repositories.saturating_sub(1)));
        (
            format!("/ui/repositories?q={name}"),
            Some(format!("{name}<")),
        )
    };
    [
        ("/ui".to_owned(), None),
        ("/ui/repositories".to_owned(), None),
        search(repositories / 2),
        search(repositories / 2 + 1),
        (format!("/ui/repository?name={first}"), None),
        (format!("/ui/image?repo={first}&ref=v1"), None),
    ]
}

/// Every round of both columns; an empty column was not measured.
#[derive(Clone, Debug, Default)]
pub struct Results {
    pub berth: Vec<BerthRound>,
    /// distribution's `garbage-collect --delete-untagged`, per round.
    pub distribution: Vec<Measured>,
}

/// Generate the store, run every round of the planned columns, and return the line that
/// says what was measured followed by the table.
pub fn run(plan: &Plan) -> Result<(String, Vec<Headline>)> {
    let mut out = String::new();
    let mut all = Vec::new();
    for &blobs in &plan.scales {
        let shape = Shape::with_blobs(blobs);
        let results = run_scale(plan, shape)?;
        out.push_str(&results.0);
        out.push('\n');
        all.push((shape, results.1));
    }
    if all.len() > 1 {
        out.push_str(&format!(
            "\nberth across store sizes (medians, ranges in brackets):\n\n{}",
            across(&all)
        ));
    }
    Ok((out, headlines(&all)))
}

/// The upkeep part's headline rows at each store size: every job's wall time and peak
/// memory against its target (garbage collection beside distribution's where it ran),
/// and how soon `berth serve` answers on the collected store and what a page costs.
pub fn headlines(all: &[(Shape, Results)]) -> Vec<Headline> {
    let mut rows = Vec::new();
    for (shape, r) in all {
        let at = format!("{} blobs", shape.blobs());
        for (j, job) in JOBS.iter().enumerate() {
            for metric in METRICS
                .iter()
                .filter(|m| !matches!(m.measure, Measure::Cpu))
            {
                let values = |m: &[Measured]| -> Vec<f64> {
                    m.iter().map(|m| (metric.value)(m) / metric.unit).collect()
                };
                let ours: Vec<Measured> = r.berth.iter().map(job.berth).collect();
                let theirs = if job.distribution {
                    values(&r.distribution)
                } else {
                    Vec::new()
                };
                rows.push(Headline {
                    measurement: format!("{}, {} at {at}", job.name, metric.label),
                    berth: values(&ours),
                    beside: (
                        if theirs.is_empty() {
                            ""
                        } else {
                            "distribution"
                        },
                        theirs,
                    ),
                    unit: 1.0,
                    decimals: metric.decimals,
                    target: target(j, metric.measure, shape.blobs())
                        .map_or(String::new(), |(_, t)| t),
                });
            }
        }
        let each = |f: fn(&BerthRound) -> f64| r.berth.iter().map(|b| f(b) * 1e3).collect();
        rows.push(Headline::alone(
            format!("`berth serve` answering after start at {at} (ms)"),
            each(|b| b.serve_ready_seconds),
            0,
            "≤ 1000 ms",
        ));
        rows.push(Headline::alone(
            format!("catalog page of 100 at {at} (ms)"),
            each(|b| b.catalog_page_seconds),
            1,
            "per page, not per store",
        ));
        rows.push(Headline::alone(
            format!("tag page of 100 at {at} (ms)"),
            each(|b| b.tags_page_seconds),
            1,
            "per page, not per store",
        ));
        for (i, page) in WEB_PAGES.iter().enumerate() {
            rows.push(Headline::alone(
                format!("web page: {page}, at {at} (ms)"),
                r.berth
                    .iter()
                    .map(|b| b.web_page_seconds[i] * 1e3)
                    .collect(),
                1,
                "≪ 100 ms at 10,000 tags",
            ));
        }
    }
    rows
}

/// Every round at one store size: the summary with its table, and the results.
fn run_scale(plan: &Plan, shape: Shape) -> Result<(String, Results)> {
    let started = Instant::now();
    let corpus = Corpus::generate(shape);
    let expected = corpus.expected();
    progress(
        "upkeep",
        format!(
            "generated {} manifests and {} blobs in {} repositories, garbage {} manifests and \
             {} blobs, in {:.1} s",
            expected.manifests,
            expected.blobs,
            expected.repositories,
            expected.garbage_manifests,
            expected.garbage_blob_links,
            started.elapsed().as_secs_f64()
        ),
    );
    let mut results = Results::default();
    for round in 0..plan.rounds {
        let of = format!("round {} of {}", round + 1, plan.rounds);
        if let Some(berth) = &plan.berth {
            progress(BERTH, &of);
            results.berth.push(berth_round(berth, &corpus, &expected)?);
        }
        if let Some(distribution) = &plan.distribution {
            progress(DISTRIBUTION, &of);
            results
                .distribution
                .push(distribution_round(distribution, &corpus, &expected)?);
        }
    }
    Ok((summary(&results, shape, &expected), results))
}

/// berth's medians at each store size side by side: a row per job and metric.
fn across(all: &[(Shape, Results)]) -> String {
    let mut out = String::new();
    let mut header = vec!["measurement".to_owned()];
    header.extend(all.iter().map(|(s, _)| {
        format!(
            "{} blobs, {} manifests",
            s.blobs(),
            s.repositories * s.tags_per_repository
        )
    }));
    let mut rule = vec!["---".to_owned()];
    rule.resize(header.len(), "---:".to_owned());
    push_line(&mut out, &header);
    push_line(&mut out, &rule);
    for job in JOBS {
        for metric in METRICS {
            let mut cells = vec![format!("{}, {}", job.name, metric.label)];
            for (_, r) in all {
                let v: Vec<f64> = r
                    .berth
                    .iter()
                    .map(|round| (metric.value)(&(job.berth)(round)) / metric.unit)
                    .collect();
                cells.push(Spread::of(v).cell(metric.decimals));
            }
            push_line(&mut out, &cells);
        }
    }
    out
}

/// The store of about `blobs` blobs written into `dir` in berth's layout (files dated
/// now: on S3 every object's time is its upload), for the S3 rows; its expected counts.
pub fn write_for_upload(dir: &Path, blobs: usize) -> Result<Expected> {
    let corpus = Corpus::generate(Shape::with_blobs(blobs));
    corpus.write(Layout::Berth, dir, None)?;
    Ok(corpus.expected())
}

/// One upkeep job run on S3: how long it took, its peak memory, its store operations.
pub struct S3Job {
    pub name: &'static str,
    pub measured: Measured,
    pub store_operations: Option<u64>,
}

/// `berth gc`, then `berth fsck`, with `config` (a store on S3), checked like the
/// filesystem rounds: the collection deletes the garbage, the check is clean.
pub fn s3_jobs(binary: &Path, config: &Path, dir: &Path, e: &Expected) -> Result<Vec<S3Job>> {
    let berth = |args: &[&str]| {
        let mut cmd = Command::new(binary);
        cmd.args(args).arg("--config").arg(config);
        cmd
    };
    let gc = Finished::run("berth upkeep (s3)", "gc", dir, berth(&["gc"]))?;
    gc.require_success()?;
    gc.expect_count("deleted", "manifests", e.garbage_manifests)?;
    gc.expect_count("deleted", "blobs", e.garbage_objects)?;
    let fsck = Finished::run("berth upkeep (s3)", "fsck", dir, berth(&["fsck"]))?;
    fsck.require_success()?;
    fsck.expect_count("manifests", "blobs", e.blobs)?;
    Ok([("gc", gc), ("fsck", fsck)]
        .into_iter()
        .map(|(name, f)| S3Job {
            name,
            measured: f.measured,
            store_operations: count(&f.stdout, "store operations", ""),
        })
        .collect())
}

/// Write the store of `blobs` blobs into `dir` in berth's layout (`--write-store`).
pub fn write_only(dir: &Path, blobs: usize) -> Result<()> {
    let corpus = Corpus::generate(Shape::with_blobs(blobs));
    write_store(BERTH, &corpus, Layout::Berth, dir)
}

/// A fresh directory for one round's store, its configuration and the children's output.
fn round_dir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("berth-bench-upkeep-")
        .tempdir()
        .context("cannot create a temporary directory")
}

fn write_store(label: &str, corpus: &Corpus, layout: Layout, root: &Path) -> Result<()> {
    let started = Instant::now();
    let modified = match layout {
        Layout::Berth => Some(SystemTime::now() - AGE),
        // Its collection looks at no file times.
        Layout::Distribution => None,
    };
    corpus.write(layout, root, modified)?;
    progress(
        label,
        format!(
            "store written in {:.1} s; syncing",
            started.elapsed().as_secs_f64()
        ),
    );
    // Not one measured run waits on writing back what the generator wrote.
    server::sync_disks()
}

/// `berth gc`, then `berth fsck` and `berth fsck --deep`, on a fresh store.
fn berth_round(binary: &Path, corpus: &Corpus, expected: &Expected) -> Result<BerthRound> {
    let dir = round_dir()?;
    let data = dir.path().join("data");
    write_store(BERTH, corpus, Layout::Berth, &data)?;
    let config = dir.path().join("config.toml");
    // No `[[upstream]]`: every repository is hosted. fsync changes nothing here, as
    // neither job fsyncs (a collection only deletes, a check only reads).
    fs::write(
        &config,
        format!(
            "[storage]\npath = \"{}\"\nfsync = false\n\n[gc]\ngrace = \"{GRACE}\"\n",
            data.display()
        ),
    )?;
    let berth = |args: &[&str]| {
        let mut cmd = Command::new(binary);
        cmd.args(args).arg("--config").arg(&config);
        cmd
    };

    let gc = Finished::run(BERTH, "gc", dir.path(), berth(&["gc"]))?;
    gc.require_success()?;
    let e = expected;
    for (before, after, want) in [
        ("marked", "manifests", e.manifests),
        ("manifests and", "blobs", e.blobs),
        ("deleted", "manifests", e.garbage_manifests),
        ("deleted", "blob links", e.garbage_blob_links),
        ("deleted", "blobs", e.garbage_objects),
    ] {
        gc.expect_count(before, after, want)?;
    }
    check_files(BERTH, corpus, Layout::Berth, &data)?;

    // Both checks exit 0 only when the store is clean.
    let mut checks = Vec::new();
    for (name, args) in [
        ("fsck", &["fsck"][..]),
        ("fsck --deep", &["fsck", "--deep"][..]),
    ] {
        let fsck = Finished::run(BERTH, name, dir.path(), berth(args))?;
        fsck.require_success()?;
        for (before, after, want) in [
            ("checked", "repositories", e.repositories),
            ("repositories", "tags", e.manifests),
            ("tags", "manifests", e.manifests),
            ("manifests", "blobs", e.blobs),
        ] {
            fsck.expect_count(before, after, want)?;
        }
        checks.push(fsck.measured);
    }
    let served = serve_timings(binary, &data, e.repositories as usize)?;
    progress(
        BERTH,
        format!(
            "serve: answering after {:.3} s; catalog page {:.1} ms, tag page {:.1} ms; web pages {}",
            served.ready,
            served.catalog * 1e3,
            served.tags * 1e3,
            WEB_PAGES
                .iter()
                .zip(served.web)
                .map(|(p, s)| format!("{p} {:.1} ms", s * 1e3))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    Ok(BerthRound {
        gc: gc.measured,
        fsck: checks[0],
        fsck_deep: checks[1],
        serve_ready_seconds: served.ready,
        catalog_page_seconds: served.catalog,
        tags_page_seconds: served.tags,
        web_page_seconds: served.web,
    })
}

/// What [`serve_timings`] measured, in seconds.
struct Served {
    ready: f64,
    catalog: f64,
    tags: f64,
    web: [f64; WEB_PAGES.len()],
}

/// How long `berth serve` on the store at `data` takes to answer `GET /v2/`, then the
/// time of one catalog page of 100, one tag page of the first repository listed, and
/// each of [`WEB_PAGES`].
fn serve_timings(binary: &Path, data: &Path, repositories: usize) -> Result<Served> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let dir = round_dir()?;
    let config = dir.path().join("serve.toml");
    fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{addr}\"\n\n[storage]\npath = \"{}\"\nfsync = false\n\n\
             [[access]]\nrepositories = \"**\"\nusers = [\"anonymous\"]\nallow = [\"pull\"]\n",
            data.display()
        ),
    )?;
    let started = Instant::now();
    let mut child = Command::new(binary)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(dir.path().join("serve.log"))?)
        .spawn()
        .context("cannot start berth serve")?;
    let result = (|| {
        let deadline = started + SERVE_READY_TIMEOUT;
        let ready = loop {
            if let Ok((200, _)) = http_get(addr, "/v2/") {
                break started.elapsed().as_secs_f64();
            }
            if let Some(status) = child.try_wait()? {
                bail!("berth serve exited ({status}) before answering");
            }
            ensure!(
                Instant::now() < deadline,
                "berth serve did not answer within {SERVE_READY_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let at = Instant::now();
        let (status, body) = http_get(addr, "/v2/_catalog?n=100")?;
        let catalog = at.elapsed().as_secs_f64();
        ensure!(status == 200, "catalog page: HTTP {status}");
        let listed: serde_json::Value = serde_json::from_str(&body)?;
        let first = listed["repositories"][0]
            .as_str()
            .context("the catalog page lists no repository")?
            .to_owned();
        let at = Instant::now();
        let (status, _) = http_get(addr, &format!("/v2/{first}/tags/list?n=100"))?;
        let tags = at.elapsed().as_secs_f64();
        ensure!(status == 200, "tag page of {first}: HTTP {status}");
        let mut web = [0.0; WEB_PAGES.len()];
        for (i, (path, finds)) in web_paths(repositories).iter().enumerate() {
            let fetches = if i == FIRST_FETCH_ONLY {
                1
            } else {
                WEB_PAGE_FETCHES
            };
            let mut times = Vec::with_capacity(fetches);
            for _ in 0..fetches {
                let at = Instant::now();
                let (status, body) = http_get(addr, path)?;
                times.push(at.elapsed().as_secs_f64());
                ensure!(status == 200, "web page {path}: HTTP {status}");
                if let Some(name) = finds {
                    ensure!(
                        body.contains(name.as_str()),
                        "the search {path} does not find its repository"
                    );
                }
            }
            times.sort_by(f64::total_cmp);
            web[i] = times[fetches / 2];
        }
        Ok(Served {
            ready,
            catalog,
            tags,
            web,
        })
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// How long `berth serve` may take to answer before the round fails.
const SERVE_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One HTTP/1.0 GET (no keep-alive, no chunked body): its status and body.
fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut conn = std::net::TcpStream::connect(addr)?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status line")?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_owned()))
}

/// distribution's `garbage-collect --delete-untagged` on a fresh store.
fn distribution_round(binary: &Path, corpus: &Corpus, expected: &Expected) -> Result<Measured> {
    let dir = round_dir()?;
    let data = dir.path().join("data");
    write_store(DISTRIBUTION, corpus, Layout::Distribution, &data)?;
    let config = dir.path().join("config.yml");
    fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n",
            data.display()
        ),
    )?;
    let mut cmd = Command::new(binary);
    cmd.args(["garbage-collect", "--delete-untagged"])
        .arg(&config);
    let gc = Finished::run(DISTRIBUTION, "garbage-collect", dir.path(), cmd)?;
    gc.require_success()?;
    // "110000 blobs marked, 2400 blobs and 200 manifests eligible for deletion": it marks
    // manifests as blobs, and its blobs to delete include the manifests' bytes.
    let e = expected;
    for (before, after, want) in [
        ("", "blobs marked", e.manifests + e.blobs),
        ("marked", "blobs and", e.garbage_objects),
        ("and", "manifests eligible", e.garbage_manifests),
    ] {
        gc.expect_count(before, after, want)?;
    }
    check_files(DISTRIBUTION, corpus, Layout::Distribution, &data)?;
    Ok(gc.measured)
}

/// Every garbage file the collection must remove is gone, and every file of a tagged
/// image is still there.
fn check_files(label: &str, corpus: &Corpus, layout: Layout, root: &Path) -> Result<()> {
    let garbage = corpus.paths(layout, root, Fate::Collected);
    let left: Vec<&PathBuf> = garbage.iter().filter(|p| p.exists()).collect();
    if let Some(first) = left.first() {
        bail!(
            "{label}: {} of {} garbage files are still there after the collection, such as {}",
            left.len(),
            garbage.len(),
            first.display()
        );
    }
    let kept = corpus.paths(layout, root, Fate::Kept);
    let lost: Vec<&PathBuf> = kept.iter().filter(|p| !p.exists()).collect();
    if let Some(first) = lost.first() {
        bail!(
            "{label}: the collection deleted {} of the {} files of tagged images, such as {}",
            lost.len(),
            kept.len(),
            first.display()
        );
    }
    progress(
        label,
        format!(
            "checked: {} garbage files gone, {} files of tagged images kept",
            garbage.len(),
            kept.len()
        ),
    );
    Ok(())
}

/// A child process that ran to its end, with its measurements and what it printed.
struct Finished {
    label: &'static str,
    name: &'static str,
    status: ExitStatus,
    measured: Measured,
    stdout: String,
    stderr_path: PathBuf,
}

impl Finished {
    /// Run `cmd` (named `name` in progress lines and errors) through the measuring helper
    /// (see [`helper_main`]), with its output in files in `dir`, after a `sync`.
    fn run(label: &'static str, name: &'static str, dir: &Path, cmd: Command) -> Result<Self> {
        let file = name.replace(' ', "");
        let stdout_path = dir.join(format!("{file}.out"));
        let stderr_path = dir.join(format!("{file}.err"));
        let stats_path = dir.join(format!("{file}.rusage"));
        let mut helper = Command::new(std::env::current_exe()?);
        helper
            .arg(HELPER_ARG)
            .arg(&stats_path)
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path)?)
            .stderr(File::create(&stderr_path)?);
        server::sync_disks()?;
        let helped = helper
            .status()
            .with_context(|| format!("{label}: cannot start the helper for {name}"))?;
        let stdout = String::from_utf8_lossy(&fs::read(&stdout_path)?).into_owned();
        let stats = fs::read_to_string(&stats_path).unwrap_or_default();
        let Some((status, measured)) = parse_stats(&stats) else {
            let stderr = fs::read(&stderr_path).unwrap_or_default();
            bail!(
                "{label}: measuring {name} failed ({helped}){}",
                tail(&String::from_utf8_lossy(&stderr))
            );
        };
        progress(
            label,
            format!(
                "{name}: {:.2} s, CPU {:.2} s, peak RSS {:.1} MiB, {status}",
                measured.wall_seconds,
                measured.cpu_seconds,
                measured.peak_rss_bytes as f64 / MIB
            ),
        );
        Ok(Finished {
            label,
            name,
            status,
            measured,
            stdout,
            stderr_path,
        })
    }

    fn require_success(&self) -> Result<()> {
        ensure!(
            self.status.success(),
            "{}: {} failed ({}){}",
            self.label,
            self.name,
            self.status,
            self.output_tail()
        );
        Ok(())
    }

    /// Its output says `before N after` with N = `want`.
    fn expect_count(&self, before: &str, after: &str, want: u64) -> Result<()> {
        match count(&self.stdout, before, after) {
            Some(n) if n == want => Ok(()),
            Some(n) => bail!(
                "{}: {} printed `{before} {n} {after}`, expected {want}{}",
                self.label,
                self.name,
                self.output_tail()
            ),
            None => bail!(
                "{}: {} printed no `{before} N {after}`{}",
                self.label,
                self.name,
                self.output_tail()
            ),
        }
    }

    fn output_tail(&self) -> String {
        let stderr = fs::read(&self.stderr_path).unwrap_or_default();
        format!(
            "\n--- stdout ---\n{}\n--- stderr ---\n{}",
            tail(&self.stdout),
            tail(&String::from_utf8_lossy(&stderr))
        )
    }
}

fn tail(text: &str) -> &str {
    let start = text.len().saturating_sub(OUTPUT_TAIL_BYTES);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    &text[start..]
}

/// The first argument that makes the bench binary the measuring helper.
const HELPER_ARG: &str = "__upkeep-measure";

/// When the process was started as `bench __upkeep-measure STATS PROGRAM ARGS...`: run
/// PROGRAM with this process's stdio, write its measurements to the file STATS, and
/// return the helper's exit code; otherwise `None`. Called first thing in `main`.
///
/// The helper exists for the peak memory. Linux keeps a process's RSS high-water mark
/// across `exec`, taken from the memory it had before, so a child spawned straight from
/// the harness (which holds the generated store, over 100 MiB) would report at least the
/// harness's size. Spawned from this small, fresh process instead, it reports at least
/// the helper's size, a few MiB.
pub fn helper_main() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != HELPER_ARG {
        return None;
    }
    let helped = (|| -> Result<()> {
        let stats = PathBuf::from(args.next().context("no statistics file")?);
        let mut cmd = Command::new(args.next().context("no program")?);
        cmd.args(args);
        let (status, m) = run_and_reap(cmd)?;
        fs::write(
            stats,
            format!(
                "{} {} {} {}\n",
                status.into_raw(),
                m.wall_seconds,
                m.cpu_seconds,
                m.peak_rss_bytes
            ),
        )?;
        Ok(())
    })();
    Some(match helped {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench measuring helper: {e:#}");
            ExitCode::FAILURE
        }
    })
}

/// What the helper wrote: the raw wait status, then the measurements.
fn parse_stats(text: &str) -> Option<(ExitStatus, Measured)> {
    let mut fields = text.split_whitespace();
    let status = ExitStatus::from_raw(fields.next()?.parse().ok()?);
    let measured = Measured {
        wall_seconds: fields.next()?.parse().ok()?,
        cpu_seconds: fields.next()?.parse().ok()?,
        peak_rss_bytes: fields.next()?.parse().ok()?,
    };
    Some((status, measured))
}

/// Spawn `cmd` and wait for it, at most `CHILD_TIMEOUT`: its exit status and its wall
/// time, CPU time and peak RSS from `wait4`.
fn run_and_reap(mut cmd: Command) -> Result<(ExitStatus, Measured)> {
    let started = Instant::now();
    let child = cmd.spawn().context("cannot start it")?;
    let pid = libc::pid_t::try_from(child.id())?;
    let (status, usage) = loop {
        if let Some(done) = reap(pid, libc::WNOHANG)? {
            break done;
        }
        if started.elapsed() > CHILD_TIMEOUT {
            // Not reaped yet, so the pid is still this child's.
            let mut child = child;
            let _ = child.kill();
            reap(pid, 0)?;
            bail!("still running after {CHILD_TIMEOUT:?}; killed");
        }
        std::thread::sleep(REAP_POLL);
    };
    let wall_seconds = started.elapsed().as_secs_f64();
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    Ok((
        status,
        Measured {
            wall_seconds,
            cpu_seconds: seconds(usage.ru_utime) + seconds(usage.ru_stime),
            // Linux reports it in KiB.
            peak_rss_bytes: u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024,
        },
    ))
}

/// Wait for child `pid` (`flags`: `WNOHANG` or 0), returning its exit status and its
/// resource usage once it has exited; `None` while it runs with `WNOHANG`.
#[allow(unsafe_code)] // reason: std's Child::wait drops the child's rusage and nothing safe gives it for one pid; both out-pointers are locals and pid is our own unreaped child
fn reap(pid: libc::pid_t, flags: libc::c_int) -> io::Result<Option<(ExitStatus, libc::rusage)>> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is a struct of integers, for which all-zero bytes are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid for writes for the whole call.
        let r = unsafe { libc::wait4(pid, &mut status, flags, &mut usage) };
        if r == pid {
            return Ok(Some((ExitStatus::from_raw(status), usage)));
        }
        if r == 0 {
            return Ok(None);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The number N of the first `before N after` in `text`, compared word by word without
/// the punctuation that ends a word (an empty `before` matches anything before N).
fn count(text: &str, before: &str, after: &str) -> Option<u64> {
    let words = |s: &str| -> Vec<String> {
        s.split_whitespace()
            .map(|w| w.trim_end_matches([',', ':', ';']).to_owned())
            .collect()
    };
    let (before, after) = (words(before), words(after));
    text.lines().find_map(|line| {
        let words = words(line);
        (0..words.len()).find_map(|i| {
            let n = words[i].parse().ok()?;
            let fits = words[..i].ends_with(&before) && words[i + 1..].starts_with(&after);
            fits.then_some(n)
        })
    })
}

/// One job of the table and how each column ran it.
struct Job {
    name: &'static str,
    berth: fn(&BerthRound) -> Measured,
    /// Whether distribution has the job (it has no fsck).
    distribution: bool,
}

const JOBS: &[Job] = &[
    Job {
        name: "garbage collection",
        berth: |r| r.gc,
        distribution: true,
    },
    Job {
        name: "fsck",
        berth: |r| r.fsck,
        distribution: false,
    },
    Job {
        name: "fsck --deep (re-hash every blob)",
        berth: |r| r.fsck_deep,
        distribution: false,
    },
];

/// What a metric measures, which decides its target.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Measure {
    Wall,
    Peak,
    Cpu,
}

/// One measurement of a job: its label, how to read it, its unit.
struct Metric {
    label: &'static str,
    value: fn(&Measured) -> f64,
    unit: f64,
    decimals: usize,
    measure: Measure,
}

const METRICS: &[Metric] = &[
    Metric {
        label: "wall time (s)",
        value: |m| m.wall_seconds,
        unit: 1.0,
        decimals: 2,
        measure: Measure::Wall,
    },
    Metric {
        label: "peak RSS, ru_maxrss (MiB)",
        value: |m| m.peak_rss_bytes as f64,
        unit: MIB,
        decimals: 1,
        measure: Measure::Peak,
    },
    Metric {
        label: "CPU time, user + system (s)",
        value: |m| m.cpu_seconds,
        unit: 1.0,
        decimals: 2,
        measure: Measure::Cpu,
    },
];

/// The target of job number `job` for `metric` on a store of `blobs` blobs, in the
/// metric's unit, and how the table shows it; `None` where the issues set none.
fn target(job: usize, metric: Measure, blobs: usize) -> Option<(f64, String)> {
    match metric {
        Measure::Peak => Some((TARGET_PEAK_MIB, format!("≤ {TARGET_PEAK_MIB} MiB"))),
        Measure::Cpu => None,
        Measure::Wall => {
            let seconds = match blobs {
                b if b == SCALES_WITH_TARGETS[0] => TARGET_SECONDS_100K[job],
                b if b == SCALES_WITH_TARGETS[1] => TARGET_SECONDS_1M[job],
                _ => return None,
            };
            Some((seconds, format!("≤ {seconds} s")))
        }
    }
}

/// The line saying what was measured and how, then the table.
fn summary(results: &Results, shape: Shape, e: &Expected) -> String {
    let rounds = results.berth.len().max(results.distribution.len());
    format!(
        "Upkeep: one generated store, written fresh for every round and tool: {} repositories \
         × {} tagged OCI images of 1 config + {} layers ({}–{} random bytes each) = {} \
         manifests and {} blobs, plus garbage in 1 repository in {}: {} untagged images and \
         {} unreferenced blob links ({} stored objects, {:.1} KiB). Median of {rounds} \
         round(s); each job is a child process on a synced store with a warm page cache, \
         timed from spawn to exit by a small helper process that takes its peak RSS \
         (ru_maxrss) and CPU time from wait4. berth: `berth gc`, \
         then `berth fsck` and `berth fsck --deep` of the collected store, `[gc] grace = \
         \"{GRACE}\"`, files dated {} h back. distribution: `garbage-collect \
         --delete-untagged`. Checked every round: each collection deleted {} manifests and \
         {} stored objects and no file of a tagged image{}.\n\n{}",
        shape.repositories,
        shape.tags_per_repository,
        shape.layers_per_image,
        crate::corpus::BLOB_MIN_BYTES,
        crate::corpus::BLOB_MAX_BYTES,
        e.manifests,
        e.blobs,
        shape.garbage_every,
        e.garbage_manifests,
        e.stray_blobs,
        e.garbage_objects,
        e.garbage_bytes as f64 / 1024.0,
        AGE.as_secs() / 3600,
        e.garbage_manifests,
        e.garbage_objects,
        if results.berth.is_empty() {
            ""
        } else {
            ", and both of berth's checks were clean"
        },
        table(results, shape.blobs())
    )
}

/// The markdown table: a row per job and metric; a column for each tool measured, then
/// `berth / distribution` of the medians when both were, the target, and whether every
/// berth round met it.
pub fn table(results: &Results, blobs: usize) -> String {
    let (berth, distribution) = (!results.berth.is_empty(), !results.distribution.is_empty());
    let mut header = vec!["measurement".to_owned()];
    if berth {
        header.push("berth".to_owned());
    }
    if distribution {
        header.push("distribution".to_owned());
    }
    if berth && distribution {
        header.push("berth / distribution".to_owned());
    }
    header.push("target".to_owned());
    if berth {
        header.push("berth within target (every round)".to_owned());
    }
    let mut rule = vec!["---".to_owned()];
    rule.resize(header.len(), "---:".to_owned());
    let mut out = String::new();
    push_line(&mut out, &header);
    push_line(&mut out, &rule);
    for (j, job) in JOBS.iter().enumerate() {
        for metric in METRICS {
            let goal = target(j, metric.measure, blobs);
            let values = |measured: Vec<Measured>| -> Vec<f64> {
                measured
                    .iter()
                    .map(|m| (metric.value)(m) / metric.unit)
                    .collect()
            };
            let b = values(results.berth.iter().map(job.berth).collect());
            let d = values(if job.distribution {
                results.distribution.clone()
            } else {
                Vec::new()
            });
            let mut cells = vec![format!("{}, {}", job.name, metric.label)];
            if berth {
                cells.push(Spread::of(b.clone()).cell(metric.decimals));
            }
            if distribution {
                cells.push(if job.distribution {
                    Spread::of(d.clone()).cell(metric.decimals)
                } else {
                    "n/a".to_owned()
                });
            }
            if berth && distribution {
                cells.push(ratio(Spread::of(b.clone()).median, Spread::of(d).median));
            }
            cells.push(
                goal.as_ref()
                    .map_or("–".to_owned(), |(_, text)| text.clone()),
            );
            if berth {
                cells.push(match goal {
                    None => "–".to_owned(),
                    Some((target, _)) => {
                        let over = b.iter().filter(|v| **v > target).count();
                        if over == 0 {
                            "yes".to_owned()
                        } else {
                            format!("no ({over} of {} over)", b.len())
                        }
                    }
                });
            }
            push_line(&mut out, &cells);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_word_by_word() {
        let gc = "garbage collection over 2000 repositories (grace 3600s): marked 10000 manifests and 100000 blobs\n  deleted 200 manifests\n  deleted 2200 blob links\n  deleted 2400 blobs (617.2 KiB)\n";
        assert_eq!(count(gc, "marked", "manifests"), Some(10_000));
        assert_eq!(count(gc, "manifests and", "blobs"), Some(100_000));
        assert_eq!(count(gc, "deleted", "blob links"), Some(2200));
        assert_eq!(count(gc, "deleted", "blobs"), Some(2400));
        assert_eq!(count(gc, "deleted", "referrer links"), None);
        let dist = "x: marking blob sha256:ab\n\n110000 blobs marked, 2400 blobs and 200 manifests eligible for deletion\n";
        assert_eq!(count(dist, "", "blobs marked"), Some(110_000));
        assert_eq!(count(dist, "marked", "blobs and"), Some(2400));
        assert_eq!(count(dist, "and", "manifests eligible"), Some(200));
        let deep = "checked 2000 repositories, 10000 tags, 10000 manifests, 100000 blobs (21.4 MiB re-hashed): clean\n";
        assert_eq!(count(deep, "checked", "repositories"), Some(2000));
        assert_eq!(count(deep, "tags", "manifests"), Some(10_000));
        assert_eq!(count(deep, "manifests", "blobs"), Some(100_000));
        let shallow =
            "checked 2000 repositories, 10000 tags, 10000 manifests, 100000 blobs: clean\n";
        assert_eq!(count(shallow, "manifests", "blobs"), Some(100_000));
    }

    fn measured(seconds: f64, mib: f64) -> Measured {
        Measured {
            wall_seconds: seconds,
            cpu_seconds: seconds / 2.0,
            peak_rss_bytes: (mib * MIB) as u64,
        }
    }

    #[test]
    fn table_sets_the_tools_side_by_side_with_targets() {
        let round = |s: f64| BerthRound {
            gc: measured(s, 50.0),
            fsck: measured(s / 2.0, 40.0),
            fsck_deep: measured(40.0, 250.0),
            serve_ready_seconds: 0.05,
            catalog_page_seconds: 0.02,
            tags_page_seconds: 0.001,
            web_page_seconds: [0.01; WEB_PAGES.len()],
        };
        let t = table(
            &Results {
                berth: vec![round(2.0), round(4.0), round(3.0)],
                distribution: vec![measured(6.0, 100.0)],
            },
            1_000_000,
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2 + JOBS.len() * METRICS.len());
        assert_eq!(
            lines[0],
            "| measurement | berth | distribution | berth / distribution | target | berth within target (every round) |"
        );
        assert_eq!(
            lines[2],
            "| garbage collection, wall time (s) | 3.00 (2.00–4.00) | 6.00 | 0.50× | ≤ 25 s | yes |"
        );
        assert_eq!(
            lines[3],
            "| garbage collection, peak RSS, ru_maxrss (MiB) | 50.0 | 100.0 | 0.50× | ≤ 150 MiB | yes |"
        );
        assert!(
            t.contains("| fsck, wall time (s) | 1.50 (1.00–2.00) | n/a | n/a | ≤ 20 s | yes |")
        );
        assert!(t.contains(
            "| fsck --deep (re-hash every blob), peak RSS, ru_maxrss (MiB) | 250.0 | n/a | n/a | ≤ 150 MiB | no (3 of 3 over) |"
        ));
        assert!(t.contains(
            "| fsck, CPU time, user + system (s) | 0.75 (0.50–1.00) | n/a | n/a | – | – |"
        ));
    }

    #[test]
    fn table_of_one_tool_has_only_its_column() {
        let t = table(
            &Results {
                berth: Vec::new(),
                distribution: vec![measured(6.0, 100.0)],
            },
            100_000,
        );
        assert!(t.starts_with("| measurement | distribution | target |\n"));
        assert!(t.contains("| fsck, wall time (s) | n/a | ≤ 30 s |"));
        // A size the issues name no target for shows none.
        let t = table(&Results::default(), 5_000);
        assert!(t.contains("| fsck, wall time (s) | – |"), "{t}");
    }

    #[test]
    fn reap_reports_exit_status_and_usage() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exit 3"]);
        let (status, m) = run_and_reap(cmd).unwrap();
        assert_eq!(status.code(), Some(3));
        assert!(m.peak_rss_bytes > 0 && m.wall_seconds > 0.0);
        let line = format!(
            "{} {} {} {}\n",
            status.into_raw(),
            m.wall_seconds,
            m.cpu_seconds,
            m.peak_rss_bytes
        );
        let (back, n) = parse_stats(&line).unwrap();
        assert_eq!((back, n.peak_rss_bytes), (status, m.peak_rss_bytes));
        assert!(parse_stats("").is_none());
    }
}
