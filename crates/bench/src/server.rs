//! The servers under test: writing each one's configuration (as a hosted registry, as
//! the upstream the caches pull from, or as a pull-through cache of that upstream),
//! starting it on a free loopback port with its own temporary data directory, waiting
//! until it answers, reading its CPU time and peak memory from /proc, and killing it when
//! the guard is dropped.

use anyhow::{Context, Result, bail};
use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a server may take from spawn to answering `GET /v2/` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between readiness probes.
const READY_POLL: Duration = Duration::from_millis(50);
/// Interval between samples of a server's anonymous memory (a read of /proc, so cheap).
const ANON_SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// Bytes of a server's log quoted in an error about it.
const LOG_TAIL_BYTES: usize = 4000;

/// One column of the table: which server, configured how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Distribution,
    Berth {
        fsync: bool,
    },
    /// berth on the S3 bucket the harness started; servers with the same `set` share
    /// one prefix (replicas of one registry). `redirect`: blob GETs answered with a
    /// redirect to a presigned URL (`[storage] redirect = true`), as distribution's
    /// `s3` driver does by default.
    BerthS3 {
        set: u8,
        redirect: bool,
    },
    /// distribution with its `s3` storage driver on the same bucket (its own prefix).
    DistributionS3,
    /// berth as `Berth { fsync: true }` plus `[storage] direct_io = true`: upload data
    /// written with `O_DIRECT` instead of through the page cache.
    BerthDirectIo,
    /// An earlier berth binary (`--baseline`), configured as `Berth { fsync: true }`, to
    /// show a change against the build before it in the same run.
    BerthBaseline,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Distribution => "distribution",
            Kind::Berth { fsync: true } => "berth (fsync)",
            Kind::Berth { fsync: false } => "berth (no fsync)",
            Kind::BerthS3 {
                redirect: false, ..
            } => "berth (s3)",
            Kind::BerthS3 { redirect: true, .. } => "berth (s3, redirect)",
            Kind::DistributionS3 => "distribution (s3)",
            Kind::BerthDirectIo => "berth (direct_io)",
            Kind::BerthBaseline => "baseline (fsync)",
        }
    }

    /// Whether the server is a berth (any build, any store).
    pub fn is_berth(self) -> bool {
        !matches!(self, Kind::Distribution | Kind::DistributionS3)
    }

    /// The configuration file's name and text for a `role` server on `addr` storing in
    /// `data`.
    fn config(self, role: Role, addr: SocketAddr, data: &Path) -> (&'static str, String) {
        if self == Kind::BerthBaseline {
            return Kind::Berth { fsync: true }.config(role, addr, data);
        }
        if self == Kind::BerthDirectIo {
            let (name, text) = Kind::Berth { fsync: true }.config(role, addr, data);
            return (
                name,
                text.replace("fsync = true\n", "fsync = true\ndirect_io = true\n"),
            );
        }
        let data = data.display();
        match self {
            Kind::Distribution => {
                let mut yaml = format!(
                    "version: 0.1\n\
                     log:\n  level: warn\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {data}\n  \
                     delete:\n    enabled: true\n  cache:\n    blobdescriptor: inmemory\n\
                     http:\n  addr: {addr}\n"
                );
                if let Role::Cache { upstream } = role {
                    yaml.push_str(&format!("proxy:\n  remoteurl: http://{upstream}\n"));
                }
                ("config.yml", yaml)
            }
            Kind::DistributionS3 => (
                "config.yml",
                format!(
                    "version: 0.1\n\
                     log:\n  level: warn\n  accesslog:\n    disabled: true\n\
                     storage:\n  s3:\n    accesskey: {}\n    secretkey: {}\n    \
                     region: us-east-1\n    regionendpoint: {}\n    bucket: {}\n    \
                     rootdirectory: /distribution-{}\n    secure: false\n    v4auth: true\n  \
                     delete:\n    enabled: true\n  cache:\n    blobdescriptor: inmemory\n\
                     http:\n  addr: {addr}\n",
                    crate::s3::ACCESS_KEY,
                    crate::s3::SECRET_KEY,
                    crate::s3::ENDPOINT,
                    crate::s3::BUCKET,
                    std::process::id(),
                ),
            ),
            Kind::BerthS3 { set, redirect } => (
                "config.toml",
                format!(
                    "[server]\nlisten = \"{addr}\"\n\n\
                     [storage]\nkind = \"s3\"\nbucket = \"{}\"\nendpoint = \"{}\"\n\
                     prefix = \"bench-{}-{set}\"\naccess_key_id = \"{}\"\n\
                     secret_access_key = \"{}\"\npath_style = true\nredirect = {redirect}\n\n\
                     [[access]]\nrepositories = \"**\"\nusers = [\"anonymous\"]\n\
                     allow = [\"pull\", \"push\", \"delete\"]\n",
                    crate::s3::BUCKET,
                    crate::s3::ENDPOINT,
                    std::process::id(),
                    crate::s3::ACCESS_KEY,
                    crate::s3::SECRET_KEY,
                ),
            ),
            Kind::BerthBaseline | Kind::BerthDirectIo => {
                unreachable!("configured as Berth above")
            }
            Kind::Berth { fsync } => {
                let mut toml = format!(
                    "[server]\nlisten = \"{addr}\"\n\n\
                     [storage]\nkind = \"fs\"\npath = \"{data}\"\nfsync = {fsync}\n\n\
                     [[access]]\nrepositories = \"**\"\nusers = [\"anonymous\"]\n\
                     allow = [\"pull\", \"push\", \"delete\"]\n"
                );
                if let Role::Cache { upstream } = role {
                    toml.push_str(&format!(
                        "\n[[upstream]]\nname = \"{upstream}\"\nurl = \"http://{upstream}\"\n\
                         tag_ttl = \"{CACHE_TAG_TTL}\"\n"
                    ));
                }
                if let Role::Soak { upstream } = role {
                    toml.push_str(&crate::soak::config(upstream));
                }
                ("config.toml", toml)
            }
        }
    }
}

/// How long berth's cache serves a tag before revalidating it. The benchmark pulls blobs
/// by digest only, so any value does; this is the value a deployment would start with.
const CACHE_TAG_TTL: &str = "5m";

/// What a server is started as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A registry clients push to and pull from.
    Hosted,
    /// The registry the caches pull from: a hosted registry under its own label.
    Upstream,
    /// A pull-through cache of the registry reached at `upstream` (distribution's proxy
    /// mode, berth's `[[upstream]]`).
    Cache { upstream: SocketAddr },
    /// berth under the soak: hosted and a cache of `upstream` at once, with garbage
    /// collection, retention and the scrub on short schedules.
    Soak { upstream: SocketAddr },
}

impl Role {
    fn label(self, kind: Kind) -> String {
        match self {
            Role::Hosted => kind.label().to_owned(),
            Role::Upstream => "upstream".to_owned(),
            Role::Cache { .. } => format!("{} cache", kind.label()),
            Role::Soak { .. } => format!("{} soak", kind.label()),
        }
    }
}

/// A running server. Dropping it kills the process and removes its data directory.
pub struct Server {
    pub kind: Kind,
    pub role: Role,
    /// Names the server in progress lines and errors.
    pub label: String,
    pub base: reqwest::Url,
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
    /// Its configuration file (berth tools run on the same store read it).
    pub config: PathBuf,
    // Dropped after `child` is killed (see `Drop`), so the server never sees it vanish.
    dir: Option<TempDir>,
}

impl Server {
    /// Store operations the server has made so far (`berth_store_operations_total`,
    /// every kind summed); `None` for a server without that counter (distribution).
    pub async fn store_ops(&self, client: &reqwest::Client) -> Option<u64> {
        let text = client
            .get(self.base.join("/metrics").ok()?)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let samples: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with("berth_store_operations_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        (!samples.is_empty()).then(|| samples.iter().sum::<f64>() as u64)
    }

    /// Start `binary` as a `kind` server in `role` and wait until `GET /v2/` answers 200.
    pub async fn start(
        kind: Kind,
        role: Role,
        binary: &Path,
        client: &reqwest::Client,
    ) -> Result<Server> {
        let label = role.label(kind);
        if !binary.is_file() {
            bail!("{label} binary not found at {}", binary.display());
        }
        let dir = tempfile::Builder::new()
            .prefix("berth-bench-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let addr = free_port()?;
        let data = dir.path().join("data");
        let (config_name, config_text) = kind.config(role, addr, &data);
        let config = dir.path().join(config_name);
        fs::write(&config, config_text)?;
        let log = dir.path().join("server.log");
        let log_file = File::create(&log)?;
        let mut cmd = Command::new(binary);
        let config = config.clone();
        match kind {
            Kind::Distribution => cmd.arg("serve").arg(&config),
            // Its AWS SDK fails on the machine's AWS_CA_BUNDLE over plain HTTP.
            Kind::DistributionS3 => cmd.env_remove("AWS_CA_BUNDLE").arg("serve").arg(&config),
            Kind::Berth { .. }
            | Kind::BerthS3 { .. }
            | Kind::BerthBaseline
            | Kind::BerthDirectIo => cmd.arg("serve").arg("--config").arg(&config),
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut server = Server {
            kind,
            role,
            label,
            base: reqwest::Url::parse(&format!("http://{addr}/"))?,
            addr,
            child,
            log,
            config,
            dir: Some(dir),
        };
        server.wait_ready(client).await?;
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn wait_ready(&mut self, client: &reqwest::Client) -> Result<()> {
        let url = self.base.join("v2/")?;
        let started = Instant::now();
        loop {
            self.ensure_running()?;
            let probe = client
                .get(url.clone())
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            match probe {
                Ok(r) if r.status() == reqwest::StatusCode::OK => return Ok(()),
                Ok(r) if started.elapsed() > READY_TIMEOUT => {
                    bail!(
                        "{}: GET /v2/ answered {}{}",
                        self.label,
                        r.status(),
                        self.log_tail()
                    )
                }
                Err(e) if started.elapsed() > READY_TIMEOUT => {
                    bail!(
                        "{}: not answering on {}: {e}{}",
                        self.label,
                        self.addr,
                        self.log_tail()
                    )
                }
                _ => tokio::time::sleep(READY_POLL).await,
            }
        }
    }

    /// An error (with the server's log) if the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}){}", self.label, self.log_tail());
        }
        Ok(())
    }

    /// The server's log lines at error level (the last `n`).
    pub fn log_errors(&self, n: usize) -> Vec<String> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let errors: Vec<String> = text
            .lines()
            .filter(|l| l.contains("ERROR"))
            .map(str::to_owned)
            .collect();
        errors[errors.len().saturating_sub(n)..].to_vec()
    }

    /// Everything the server has logged so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let text = self.log_text();
        let start = text.len().saturating_sub(LOG_TAIL_BYTES);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        format!("\n--- {} ---\n{}", self.log.display(), &text[start..])
    }

    /// User plus system CPU time the process has used so far, in clock ticks.
    pub fn cpu_ticks(&self) -> Result<u64> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the parenthesised command name; utime and stime are fields 14
        // and 15 of the whole line, so 12th and 13th after the name.
        let after_name = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .unwrap_or_default();
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let field = |i: usize| -> Result<u64> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .with_context(|| format!("malformed /proc/{}/stat", self.pid()))
        };
        Ok(field(11)? + field(12)?)
    }

    /// Peak resident set size so far (VmHWM), in bytes. It counts file pages the
    /// process has mapped as well as its own memory.
    pub fn peak_rss_bytes(&self) -> Result<u64> {
        status_bytes(self.pid(), "VmHWM")
    }

    /// Resident set size now (VmRSS), in bytes.
    pub fn rss_bytes(&self) -> Result<u64> {
        status_bytes(self.pid(), "VmRSS")
    }

    /// Start sampling the process's anonymous resident memory (RssAnon: heap, stacks,
    /// buffers; not mapped files), which /proc keeps no peak of.
    pub fn sample_anon_rss(&self) -> AnonRssSampler {
        let pid = self.pid();
        let peak = Arc::new(AtomicU64::new(0));
        let seen = peak.clone();
        let task = tokio::spawn(async move {
            while let Ok(bytes) = status_bytes(pid, "RssAnon") {
                seen.fetch_max(bytes, Ordering::Relaxed);
                tokio::time::sleep(ANON_SAMPLE_EVERY).await;
            }
        });
        AnonRssSampler { peak, task }
    }
}

/// The largest RssAnon seen since [`Server::sample_anon_rss`]; sampling stops on drop.
pub struct AnonRssSampler {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl AnonRssSampler {
    pub fn peak_bytes(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for AnonRssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A `kB` field of /proc/PID/status, in bytes.
fn status_bytes(pid: u32, field: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(self.dir.take());
    }
}

/// A loopback address whose port was free a moment ago.
fn free_port() -> Result<SocketAddr> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot find a free port")?;
    Ok(listener.local_addr()?)
}

/// Clock ticks per second, the unit of /proc/PID/stat times (`getconf CLK_TCK`).
pub fn clock_ticks_per_second() -> Result<u64> {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("cannot run getconf")?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("getconf CLK_TCK printed no number")
}

/// Flush dirty pages to disk (`sync`), so one measurement's writeback does not land in
/// the next one's time.
pub fn sync_disks() -> Result<()> {
    let status = Command::new("sync").status().context("cannot run sync")?;
    if !status.success() {
        bail!("sync failed: {status}");
    }
    Ok(())
}
