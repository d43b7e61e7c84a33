//! The web page's history: every [`HISTORY_INTERVAL`] this process samples its own
//! numbers (requests and server errors answered, and each upstream's cache hits, misses,
//! bytes served from the cache and bytes fetched for it) into a bounded
//! [`web::history::History`], and writes that to the data store under its own name. A
//! restart carries on where it stopped, and every replica's history is in the store for
//! the page to add up. Beside the samples it keeps when each repository was last pulled,
//! so the page's "last pull" survives restarts and covers every replica. It samples and
//! keeps; it never renders (`ui` draws the charts).

use crate::App;
use registry::layout;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use web::history::History;

/// How often the numbers are sampled and the history written: the charts' finest step,
/// and one small write a minute per replica.
pub const HISTORY_INTERVAL: Duration = Duration::from_secs(60);

/// How long a page view reuses the other replicas' histories it read: a view costs at
/// most one listing and one read per replica a minute, however often it is loaded.
const READ_AGAIN_AFTER: Duration = Duration::from_secs(60);

/// A history whose newest sample is older than this belongs to a replica that is gone
/// (a renamed host, a scaled-down deployment): it is deleted, after the month the
/// charts show.
const FORGET_AFTER: Duration = Duration::from_secs(31 * 24 * 3600);

/// Last pulls each replica keeps, the most recent first: a few hundred KiB a write at
/// most, and more repositories than a page of them shows many times over.
const MAX_KEPT_PULLS: usize = 10_000;

/// One writer's object in the store: its samples, and its repositories' last pulls
/// (Unix seconds). Objects written before pulls were kept read with none.
#[derive(Default, serde::Deserialize)]
struct Kept {
    #[serde(flatten)]
    history: History,
    #[serde(default)]
    pulls: BTreeMap<String, u64>,
}

/// [`Kept`] as written, borrowing what it writes.
#[derive(serde::Serialize)]
struct KeptRef<'a> {
    #[serde(flatten)]
    history: &'a History,
    pulls: &'a BTreeMap<String, u64>,
}

/// What a page view last read of the other writers.
#[derive(Default)]
struct Others {
    histories: Vec<History>,
    pulls: std::collections::HashMap<String, u64>,
}

/// Why the history could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history name {0:?} is not a valid store key")]
    Name(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("history object is not readable: {0}")]
    Format(#[from] serde_json::Error),
}

/// This process's history, and what it last read of the others'.
pub struct HistoryBook {
    name: String,
    own: parking_lot::Mutex<History>,
    others: parking_lot::Mutex<Option<(Instant, Arc<Others>)>>,
    /// Held while the others are read again, so concurrent views read them once.
    reading: tokio::sync::Mutex<()>,
    /// When this writer last deleted the histories of writers long gone.
    forgot_at: parking_lot::Mutex<Option<Instant>>,
}

/// How often a writer looks for the histories of writers gone longer than
/// [`FORGET_AFTER`]: one listing an hour; nothing is urgent about it.
const FORGET_EVERY: Duration = Duration::from_secs(3600);

/// This host's name and the port it listens on: the same after a restart, different for
/// every replica (two on one host listen on different ports).
pub fn writer_name(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "berth".to_owned());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{host}-{port}")
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl HistoryBook {
    /// An empty book for writer `name` (see [`writer_name`]).
    pub fn new(name: &str) -> Result<HistoryBook, HistoryError> {
        layout::history(name).map_err(|_| HistoryError::Name(name.to_owned()))?;
        Ok(HistoryBook {
            name: name.to_owned(),
            own: parking_lot::Mutex::default(),
            others: parking_lot::Mutex::default(),
            reading: tokio::sync::Mutex::default(),
            forgot_at: parking_lot::Mutex::default(),
        })
    }

    fn key(&self) -> store::Key {
        // Checked in `new`.
        layout::history(&self.name).unwrap()
    }

    /// Take up this writer's history and last pulls where the store has them (after a
    /// restart).
    pub async fn load(&self, app: &App) -> Result<(), HistoryError> {
        if let Some(bytes) = app.registry.store().get(&self.key()).await? {
            let kept: Kept = serde_json::from_slice(&bytes)?;
            app.metrics.seed_pulls(&kept.pulls);
            *self.own.lock() = kept.history;
        }
        Ok(())
    }

    /// Sample this process's numbers at `now` and write the history, with the last
    /// pulls, to the store.
    pub async fn run_once(&self, app: &App, now: SystemTime) -> Result<(), HistoryError> {
        let values = sample(app);
        let pulls = app.metrics.newest_pulls(MAX_KEPT_PULLS);
        let bytes = {
            let mut own = self.own.lock();
            own.record(unix(now), values);
            serde_json::to_vec(&KeptRef {
                history: &own,
                pulls: &pulls,
            })?
        };
        app.registry
            .store()
            .put(&self.key(), bytes::Bytes::from(bytes))
            .await?;
        let due = self
            .forgot_at
            .lock()
            .is_none_or(|at| at.elapsed() >= FORGET_EVERY);
        if due {
            *self.forgot_at.lock() = Some(Instant::now());
            self.forget_gone(app, now).await;
        }
        Ok(())
    }

    /// Delete the histories whose newest sample is older than [`FORGET_AFTER`] at `now`:
    /// the background job's work, never a page view's.
    async fn forget_gone(&self, app: &App, now: SystemTime) {
        for (name, key, kept) in read_all(app).await {
            if gone(&kept, unix(now)) {
                tracing::info!(writer = %name, "deleting the page history of a replica gone for a month");
                let _ = app.registry.store().delete(&key).await;
            }
        }
    }

    /// Every writer's history: this one's as it stands, the others' as last read from
    /// the store (read again once [`READ_AGAIN_AFTER`] has passed), leaving out writers
    /// gone longer than [`FORGET_AFTER`]. Reads only.
    pub async fn all(&self, app: &App) -> Vec<History> {
        let others = self.others(app).await;
        let mut all = vec![self.own.lock().clone()];
        all.extend(others.histories.iter().cloned());
        all
    }

    /// When `repo` (its name in the store) was last pulled through any replica: this
    /// process's own record, or the others' as last read (see [`Self::all`]).
    pub async fn last_pulls(&self, app: &App) -> LastPulls {
        LastPulls {
            others: self.others(app).await,
        }
    }

    async fn others(&self, app: &App) -> Arc<Others> {
        let cached = || {
            self.others
                .lock()
                .clone()
                .filter(|(at, _)| at.elapsed() < READ_AGAIN_AFTER)
                .map(|(_, h)| h)
        };
        if let Some(h) = cached() {
            return h;
        }
        let _reading = self.reading.lock().await;
        // Another view may have read them while this one waited.
        if let Some(h) = cached() {
            return h;
        }
        let read = Arc::new(self.read_others(app).await);
        *self.others.lock() = Some((Instant::now(), read.clone()));
        read
    }

    async fn read_others(&self, app: &App) -> Others {
        let mut out = Others::default();
        let now = unix(SystemTime::now());
        for (name, _, kept) in read_all(app).await {
            // Left out: this writer, and a writer gone this long (the background job
            // deletes it).
            if name == self.name || gone(&kept, now) {
                continue;
            }
            for (repo, at) in kept.pulls {
                let e = out.pulls.entry(repo).or_insert(at);
                *e = (*e).max(at);
            }
            out.histories.push(kept.history);
        }
        out
    }
}

/// Every writer's object that reads, with its name and key; an unreadable one is
/// skipped (a page or a job carries on without it).
async fn read_all(app: &App) -> Vec<(String, store::Key, Kept)> {
    let store = app.registry.store();
    let mut out = Vec::new();
    let Ok(folder) = layout::history_folder() else {
        return out;
    };
    let Ok(entries) = store.list(&folder).await else {
        return out;
    };
    for e in entries {
        let store::Entry::Object(name) = e else {
            continue;
        };
        let Ok(key) = layout::history(&name) else {
            continue;
        };
        let Ok(Some(bytes)) = store.get(&key).await else {
            continue;
        };
        if let Ok(kept) = serde_json::from_slice::<Kept>(&bytes) {
            out.push((name, key, kept));
        }
    }
    out
}

/// Whether `kept`'s writer has written nothing for [`FORGET_AFTER`] before `now`.
fn gone(kept: &Kept, now: u64) -> bool {
    let newest = kept.history.latest().map_or(0, |s| s.at);
    now.saturating_sub(newest) > FORGET_AFTER.as_secs()
}

/// Last pulls over every replica, for one page view.
pub struct LastPulls {
    others: Arc<Others>,
}

impl LastPulls {
    /// When `repo` (its name in the store) was last pulled, by this process or another.
    pub fn of(&self, app: &App, repo: &str) -> Option<SystemTime> {
        let other = self
            .others
            .pulls
            .get(repo)
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(*s));
        app.metrics.last_pull(repo).max(other)
    }
}

/// This process's numbers now, by the names the charts look for.
fn sample(app: &App) -> BTreeMap<String, f64> {
    let mut v = BTreeMap::new();
    let (requests, errors) = app.metrics.request_totals();
    v.insert(names::REQUESTS.to_owned(), requests as f64);
    v.insert(names::SERVER_ERRORS.to_owned(), errors as f64);
    for up in app.cache.upstreams() {
        let s = &up.stats;
        for (what, n) in [
            (names::HITS, s.hits.get()),
            (names::MISSES, s.misses.get()),
            (names::SERVED, s.served_bytes.get()),
            (names::FETCHED, s.fetched_bytes.get()),
        ] {
            v.insert(names::of_upstream(what, &up.name), n as f64);
        }
    }
    // What the newest collection found kept, by source; the same until the next one.
    if let Some(gc) = app.upkeep.gc.lock().last.as_ref().filter(|r| !r.dry_run) {
        for (source, bytes) in &gc.stored_bytes {
            v.insert(names::of_upstream(names::STORED, source), *bytes as f64);
        }
    }
    v
}

/// The names of the sampled numbers, shared with the page that charts them.
pub mod names {
    /// Requests answered (a counter).
    pub const REQUESTS: &str = "requests";
    /// Requests answered with a 5xx status (a counter).
    pub const SERVER_ERRORS: &str = "server_errors";
    /// Per upstream: cache hits, misses, bytes served from the cache, bytes fetched.
    pub const HITS: &str = "hits";
    pub const MISSES: &str = "misses";
    pub const SERVED: &str = "served_bytes";
    pub const FETCHED: &str = "fetched_bytes";
    /// Per source (`hosted` or an upstream's key): bytes the newest garbage collection
    /// kept (a gauge).
    pub const STORED: &str = "stored_bytes";

    /// The name of `what` for upstream (or source) `name`.
    pub fn of_upstream(what: &str, name: &str) -> String {
        format!("{what}.{name}")
    }
}

/// Load this writer's history, then sample and write it every [`HISTORY_INTERVAL`]
/// until the task is dropped. A failed write is logged and retried at the next tick.
pub fn spawn(app: App, book: Arc<HistoryBook>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = book.load(&app).await {
            tracing::warn!(error = %e, "cannot read this replica's page history; starting a new one");
        }
        let mut tick = tokio::time::interval(HISTORY_INTERVAL);
        loop {
            tick.tick().await;
            if let Err(e) = book.run_once(&app, SystemTime::now()).await {
                tracing::warn!(error = %e, "cannot write the page history");
            }
        }
    })
}
