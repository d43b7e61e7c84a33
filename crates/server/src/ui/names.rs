//! The name index the repository filter searches: every repository name, as last listed
//! from the store, held for [`NAMES_FRESH_FOR`] and listed again in the background once
//! stale, so a filter typed letter by letter costs a scan of names in memory, not a walk
//! of the store per keystroke. Beside it, the opaque cursors a list hands out when it
//! stops reading at a name the visitor may not see. It holds names only; it never reads
//! manifests or tags.

use oci::RepoName;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one listing of every name serves filters before it is listed again (in the
/// background, the old one serving meanwhile): a repository created since shows up in
/// a filtered list at most about this late; the unfiltered list reads the store and
/// shows it at once.
pub const NAMES_FRESH_FOR: Duration = Duration::from_secs(30);

/// Names the index holds at most (some 50 bytes each, 10 MB in all): a store with more
/// repositories is filtered a page of names at a time from the store instead.
pub const MAX_INDEXED_NAMES: usize = 200_000;

/// How long a store found too large to index (or that failed to list) is left before
/// trying again: a walk of 200,000 names is seconds of I/O, not to be repeated per view.
pub const NO_INDEX_RETRY: Duration = Duration::from_secs(600);

/// Cursors kept at once (the oldest goes first): far more than people paging at once.
const MAX_CURSORS: usize = 4096;

struct Listed {
    at: Instant,
    /// `None`: the store has more than [`MAX_INDEXED_NAMES`], or could not be listed.
    names: Option<Arc<Vec<RepoName>>>,
}

impl Listed {
    fn fresh(&self) -> bool {
        let fresh_for = if self.names.is_some() {
            NAMES_FRESH_FOR
        } else {
            NO_INDEX_RETRY
        };
        self.at.elapsed() < fresh_for
    }
}

/// Every repository name, sorted, as last listed. Shared by every page view of one
/// process.
#[derive(Default)]
pub struct NameIndex {
    listed: Arc<parking_lot::Mutex<Option<Listed>>>,
    /// Held by whoever is listing, so one listing runs at a time.
    listing: Arc<tokio::sync::Mutex<()>>,
    /// Opaque cursor → the name a list stopped at, oldest first.
    cursors: parking_lot::Mutex<std::collections::VecDeque<(String, String)>>,
}

impl NameIndex {
    /// Start listing the names in the background unless they are listed or being
    /// listed: any page view does this, so a filter typed after it rarely waits.
    pub fn warm(&self, registry: &registry::Registry) {
        if self.listed.lock().is_some() {
            return;
        }
        if let Ok(guard) = self.listing.clone().try_lock_owned() {
            self.spawn_listing(registry, guard);
        }
    }

    fn spawn_listing(
        &self,
        registry: &registry::Registry,
        guard: tokio::sync::OwnedMutexGuard<()>,
    ) {
        let (listed, registry) = (self.listed.clone(), registry.clone());
        tokio::spawn(async move {
            let l = list(&registry).await;
            *listed.lock() = Some(l);
            drop(guard);
        });
    }

    /// The names, sorted; `None` when the store has too many to hold or cannot be
    /// listed. The first call lists them (and waits); a stale index is returned as it
    /// is while a fresh listing runs in the background.
    pub async fn names(&self, registry: &registry::Registry) -> Option<Arc<Vec<RepoName>>> {
        let stale = match &*self.listed.lock() {
            Some(l) if l.fresh() => return l.names.clone(),
            Some(l) => Some(l.names.clone()),
            None => None,
        };
        if let Some(names) = stale {
            if let Ok(guard) = self.listing.clone().try_lock_owned() {
                self.spawn_listing(registry, guard);
            }
            return names;
        }
        let _guard = self.listing.lock().await;
        // Someone else may have listed while this view waited.
        if let Some(l) = &*self.listed.lock() {
            return l.names.clone();
        }
        let l = list(registry).await;
        let names = l.names.clone();
        *self.listed.lock() = Some(l);
        names
    }

    /// A cursor that stands for `name` without showing it: where a list goes on when it
    /// stopped at a name the visitor may not see.
    pub fn cursor(&self, name: &str) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut cursors = self.cursors.lock();
        if cursors.len() >= MAX_CURSORS {
            cursors.pop_front();
        }
        cursors.push_back((id.clone(), name.to_owned()));
        id
    }

    /// The name cursor `id` stands for, while it is kept.
    pub fn resolve(&self, id: &str) -> Option<String> {
        self.cursors
            .lock()
            .iter()
            .find(|(c, _)| c == id)
            .map(|(_, n)| n.clone())
    }
}

/// Every name, or `None` names when there are too many or the store fails (both kept
/// for [`NO_INDEX_RETRY`]).
async fn list(registry: &registry::Registry) -> Listed {
    let at = Instant::now();
    let mut it = registry.repositories_after(None);
    let mut names = Vec::new();
    loop {
        match it.next().await {
            Ok(Some(r)) if names.len() < MAX_INDEXED_NAMES => names.push(r),
            Ok(Some(_)) => {
                tracing::info!(
                    max = MAX_INDEXED_NAMES,
                    "more repositories than the web page's filter indexes; it reads the store a page at a time"
                );
                return Listed { at, names: None };
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list repositories for the web page's filter");
                return Listed { at, names: None };
            }
        }
    }
    Listed {
        at,
        names: Some(Arc::new(names)),
    }
}
