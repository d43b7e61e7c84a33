//! Upkeep of a store over time: garbage collection ([`gc`]), retention policies
//! ([`retention`]) and integrity scrubbing ([`fsck`]), each a `run_once` plus a loop for
//! `berth serve`. It reads the store through the registry's layout and changes it only
//! through the registry's deletion rules; it never sees HTTP, and it reaches an upstream
//! only through the cache, to repair cached content.

pub mod fsck;
pub mod gc;
mod index;
pub mod retention;

pub use index::RepoIndex;

use std::sync::Mutex;

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

/// The last result of each background job, for logs, metrics and the web page.
#[derive(Default)]
pub struct Status {
    pub gc: Mutex<Option<gc::GcReport>>,
    pub retention: Mutex<Option<retention::RetentionReport>>,
    pub scrub: Mutex<Option<fsck::FsckReport>>,
}

impl Status {
    /// The last scrub's report, if one ran.
    pub fn last_scrub(&self) -> Option<fsck::FsckReport> {
        self.scrub.lock().unwrap_or_else(|p| p.into_inner()).clone()
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
}

pub type Result<T, E = UpkeepError> = std::result::Result<T, E>;
