//! The board of `[[probe]]` results the server shows on `/metrics` and the web page:
//! one entry per configured probe, replaced whole after each run by whoever runs them
//! (`berth`'s probe loop). Plain data; it never probes anything itself.

use parking_lot::RwLock;
use std::time::{Duration, SystemTime};

/// One image as the last runs saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageView {
    /// `repo:tag`.
    pub image: String,
    pub ok: bool,
    /// The first node that does not pull, when the image does not.
    pub failing: Option<String>,
    /// The last run in which it pulled whole.
    pub last_success: Option<SystemTime>,
}

/// One probe target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeView {
    /// `host[:port]` of the probed registry (the `probe` label).
    pub registry: String,
    pub interval: Duration,
    pub runs: u64,
    pub last_run: Option<SystemTime>,
    /// The last run in which the catalog answered and every image pulled.
    pub last_success: Option<SystemTime>,
    /// Why the catalog could not be listed at the last run.
    pub catalog_error: Option<String>,
    pub images: Vec<ImageView>,
}

impl ProbeView {
    /// A probe that has not run yet.
    pub fn new(registry: impl Into<String>, interval: Duration) -> ProbeView {
        ProbeView {
            registry: registry.into(),
            interval,
            runs: 0,
            last_run: None,
            last_success: None,
            catalog_error: None,
            images: Vec::new(),
        }
    }

    /// Images that did not pull at the last run.
    pub fn failed(&self) -> usize {
        self.images.iter().filter(|i| !i.ok).count()
    }
}

/// Every probe's latest view.
#[derive(Debug, Default)]
pub struct ProbeBoard {
    probes: RwLock<Vec<ProbeView>>,
}

impl ProbeBoard {
    /// Put these probes on the board (at start-up and after a reload), keeping what
    /// earlier runs of the same registry found until the next run replaces it.
    pub fn reset(&self, probes: Vec<ProbeView>) {
        let mut board = self.probes.write();
        let old = std::mem::take(&mut *board);
        *board = probes
            .into_iter()
            .map(
                |new| match old.iter().find(|o| o.registry == new.registry) {
                    Some(o) => ProbeView {
                        interval: new.interval,
                        ..o.clone()
                    },
                    None => new,
                },
            )
            .collect();
    }

    /// Replace the entry of `view.registry` (added when it is not there).
    pub fn publish(&self, view: ProbeView) {
        let mut probes = self.probes.write();
        match probes.iter_mut().find(|p| p.registry == view.registry) {
            Some(p) => *p = view,
            None => probes.push(view),
        }
    }

    /// The entry of `registry`, if any.
    pub fn get(&self, registry: &str) -> Option<ProbeView> {
        self.probes
            .read()
            .iter()
            .find(|p| p.registry == registry)
            .cloned()
    }

    /// Every entry, in configuration order.
    pub fn all(&self) -> Vec<ProbeView> {
        self.probes.read().clone()
    }
}
