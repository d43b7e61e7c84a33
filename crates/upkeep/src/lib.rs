//! Upkeep of a store over time: garbage collection ([`gc`]), retention policies
//! ([`retention`]) and integrity scrubbing ([`fsck`]), each a `run_once` plus, for
//! `berth serve`, a `spawn_*` that runs it on a schedule ([`schedule`]) and records each
//! run in a [`Status`]. It reads the store through the registry's layout and changes it
//! only through the registry's deletion rules; it never sees HTTP, and it reaches an
//! upstream only through the cache, to repair cached content.

pub mod fsck;
pub mod gc;
mod index;
pub mod retention;
pub mod schedule;

pub use fsck::spawn_scrub;
pub use gc::spawn_gc;
pub use index::RepoIndex;
pub use retention::spawn_retention;
pub use schedule::JobContext;

use parking_lot::Mutex;
use std::time::{Duration, SystemTime};

/// Told how far a long job has come; the CLI draws a progress bar with it.
pub trait Progress: Send + Sync {
    /// A new phase starts with `total` steps (0: unknown).
    fn phase(&self, name: &str, total: u64);
    /// `n` more steps of the current phase are done.
    fn advance(&self, n: u64);
}

/// A [`Progress`] that shows nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn phase(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
}

/// The record of each background job, for logs, metrics and the web page.
#[derive(Default)]
pub struct Status {
    pub gc: Mutex<JobRecord<gc::GcReport>>,
    pub retention: Mutex<JobRecord<retention::RetentionReport>>,
    pub scrub: Mutex<JobRecord<fsck::FsckReport>>,
}

impl Status {
    /// The last scrub's report, if one ran.
    pub fn last_scrub(&self) -> Option<fsck::FsckReport> {
        self.scrub.lock().last.clone()
    }
}

/// What one background job has done since the process started.
#[derive(Clone, Debug)]
pub struct JobRecord<R> {
    /// The report of the last run that succeeded.
    pub last: Option<R>,
    /// When the last run that succeeded ended.
    pub last_success_at: Option<SystemTime>,
    /// How long the last run took, successful or not.
    pub last_duration: Duration,
    /// The error of the last run, when it failed.
    pub last_error: Option<String>,
    pub successes: u64,
    pub failures: u64,
    /// Objects removed over all runs (deleted manifests, blobs, links, uploads or tags).
    pub removed: u64,
    /// Bytes freed over all runs.
    pub freed_bytes: u64,
}

impl<R> Default for JobRecord<R> {
    fn default() -> Self {
        JobRecord {
            last: None,
            last_success_at: None,
            last_duration: Duration::ZERO,
            last_error: None,
            successes: 0,
            failures: 0,
            removed: 0,
            freed_bytes: 0,
        }
    }
}

impl<R> JobRecord<R> {
    /// A run that succeeded with `report`, having removed `removed` objects and freed
    /// `freed_bytes` bytes.
    pub fn succeeded(&mut self, report: R, took: Duration, removed: u64, freed_bytes: u64) {
        self.last = Some(report);
        self.last_success_at = Some(SystemTime::now());
        self.last_duration = took;
        self.last_error = None;
        self.successes += 1;
        self.removed += removed;
        self.freed_bytes += freed_bytes;
    }

    /// A run that failed.
    pub fn failed(&mut self, error: String, took: Duration) {
        self.last_duration = took;
        self.last_error = Some(error);
        self.failures += 1;
    }
}

/// What went wrong in an upkeep job.
#[derive(Debug, thiserror::Error)]
pub enum UpkeepError {
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Key(#[from] store::KeyError),
    /// Another process on the same store holds the job's lease (a replica, or `berth gc`
    /// beside `berth serve`); the run was skipped.
    #[error("another berth process is running {0} on this store; skipped")]
    Busy(&'static str),
    /// The run's lease ran out while it went on and another process took it: the run
    /// stopped part way (the other one finishes the job).
    #[error("lost the {0} lease to another berth process part way; stopped")]
    LeaseLost(&'static str),
    /// The store's walk returned a repository's entries in two places (a backend that
    /// breaks the walk's order); the run stopped before acting on half a repository.
    #[error("the store's walk returned repository {0} in two places; stopped")]
    WalkOrder(String),
}

/// How long a sweep's lease lasts. It is renewed at every phase of the run, so this only
/// bounds how long a process that died mid-sweep keeps others from sweeping; phases of
/// a run on a large store take a few minutes at most.
pub const LEASE_TTL: Duration = Duration::from_secs(10 * 60);

/// This process's name on leases.
pub fn lease_holder() -> &'static str {
    static HOLDER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOLDER.get_or_init(|| format!("berth-{}-{}", std::process::id(), uuid::Uuid::new_v4()))
}

/// Take (or renew) lease `name` for [`LEASE_TTL`], or `Busy`.
pub(crate) async fn lease(store: &dyn store::Leaser, name: &'static str) -> Result<()> {
    lease_for(store, name, LEASE_TTL).await
}

/// Take (or renew) lease `name` for `ttl`, or `Busy`.
pub(crate) async fn lease_for(
    store: &dyn store::Leaser,
    name: &'static str,
    ttl: Duration,
) -> Result<()> {
    if store.acquire_lease(name, lease_holder(), ttl).await? {
        Ok(())
    } else {
        Err(UpkeepError::Busy(name))
    }
}

/// The shortest lease a run may take: it renews at a quarter of its lease, and a
/// renewal must not fall behind a slow store's round trip.
pub const LEASE_TTL_MIN: Duration = Duration::from_secs(1);

pub type Result<T, E = UpkeepError> = std::result::Result<T, E>;
