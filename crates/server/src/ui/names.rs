//! The name index the repository filter searches: every repository name, as last listed
//! from the store, held for [`NAMES_FRESH_FOR`] and listed again in the background once
//! stale, so a filter typed letter by letter costs a scan of names in memory, not a walk
//! of the store per keystroke. It holds names only; it never reads manifests or tags.

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

struct Listed {
    at: Instant,
    /// `None`: the store has more than [`MAX_INDEXED_NAMES`].
    names: Option<Arc<Vec<RepoName>>>,
}

/// Every repository name, sorted, as last listed. Shared by every page view of one
/// process.
#[derive(Default)]
pub struct NameIndex {
    listed: Arc<parking_lot::Mutex<Option<Listed>>>,
    /// Held by whoever is listing, so one listing runs at a time.
    listing: Arc<tokio::sync::Mutex<()>>,
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
            if let Some(l) = list(&registry).await {
                *listed.lock() = Some(l);
            }
            drop(guard);
        });
    }

    /// The names, sorted; `None` when the store has too many to hold or cannot be
    /// listed. The first call lists them (and waits); a stale index is returned as it
    /// is while a fresh listing runs in the background.
    pub async fn names(&self, registry: &registry::Registry) -> Option<Arc<Vec<RepoName>>> {
        let stale = match &*self.listed.lock() {
            Some(l) if l.at.elapsed() < NAMES_FRESH_FOR => return l.names.clone(),
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
        let l = list(registry).await?;
        let names = l.names.clone();
        *self.listed.lock() = Some(l);
        names
    }
}

async fn list(registry: &registry::Registry) -> Option<Listed> {
    let at = Instant::now();
    let mut it = registry.repositories_after(None);
    let mut names = Vec::new();
    loop {
        match it.next().await {
            Ok(Some(r)) if names.len() < MAX_INDEXED_NAMES => names.push(r),
            Ok(Some(_)) => return Some(Listed { at, names: None }),
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list repositories for the web page's filter");
                return None;
            }
        }
    }
    Some(Listed {
        at,
        names: Some(Arc::new(names)),
    })
}
