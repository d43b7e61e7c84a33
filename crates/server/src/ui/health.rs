//! The health strip at the top of the overview: one tile per upstream (up, serving
//! stale, down, with its last error and since when), the last scrub and garbage
//! collection with their findings, the probes, and the disk, worst first. Each state is
//! a word and a symbol as well as a colour, so it reads without colour. It reads only
//! in-memory state and one `statvfs`.

use super::{View, ago, esc, human_bytes};
use std::fmt::Write as _;

/// How a tile reads, worst first (the strip's order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Bad,
    Warn,
    Info,
    Ok,
}

impl Level {
    fn class(self) -> &'static str {
        match self {
            Level::Bad => "bad",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Ok => "ok",
        }
    }

    /// The symbol and word that say the state without colour.
    fn mark(self) -> &'static str {
        match self {
            Level::Bad => "✖ problem",
            Level::Warn => "▲ attention",
            Level::Info => "● note",
            Level::Ok => "✔ ok",
        }
    }
}

struct Tile {
    level: Level,
    /// What the tile is about (`upstream docker.io`).
    subject: String,
    /// Its state in a few words (`down`, `serving stale`).
    state: String,
    /// HTML: the details (already escaped).
    detail: String,
}

/// Free space below this share of the disk is a problem: uploads and fills start to
/// fail soon after, and GC needs room to run.
const DISK_BAD_BELOW: f64 = 0.05;
/// Free space below this share deserves a look before it becomes a problem.
const DISK_WARN_BELOW: f64 = 0.15;

/// Write the strip into `h`.
pub(super) fn strip(view: &View<'_>, h: &mut String) {
    let mut tiles = Vec::new();
    upstream_tiles(view, &mut tiles);
    upkeep_tiles(view, &mut tiles);
    probe_tiles(view, &mut tiles);
    disk_tile(view, &mut tiles);
    // Worst first; the order they were added within a level.
    tiles.sort_by_key(|t| t.level);
    let worst = tiles.first().map_or(Level::Ok, |t| t.level);
    let _ = write!(
        h,
        "<h2>Health: <span class=\"{}\">{}</span></h2><ul class=\"health\" aria-label=\"health\">",
        worst.class(),
        match worst {
            Level::Bad => "✖ something needs fixing",
            Level::Warn => "▲ something needs a look",
            Level::Info | Level::Ok => "✔ all good",
        }
    );
    for t in &tiles {
        let _ = write!(
            h,
            "<li class=\"{}\" data-level=\"{}\"><b>{} <span class=\"{}\">{}: {}</span></b><span class=\"detail\">{}</span></li>",
            t.level.class(),
            t.level.class(),
            esc(&t.subject),
            t.level.class(),
            t.level.mark(),
            esc(&t.state),
            t.detail,
        );
    }
    h.push_str("</ul>");
}

fn upstream_tiles(view: &View<'_>, tiles: &mut Vec<Tile>) {
    for up in view.app.cache.upstreams() {
        let trouble = up.gate.trouble();
        let last_stale = *up.stats.last_stale_serve.lock();
        let failing_for = trouble.as_ref().map(|t| {
            format!(
                "failing since {}: {}",
                ago(Some(t.since), view.now),
                esc(&t.last_error)
            )
        });
        let stale_meanwhile = matches!((&trouble, last_stale), (Some(t), Some(s)) if s >= t.since);
        let (level, state, detail) = match up.gate.circuit() {
            _ if up.gate.rate_limited() => (
                Level::Warn,
                "rate-limited".to_owned(),
                format!(
                    "the upstream asked berth to wait; cached content is served meanwhile{}",
                    failing_for.map(|f| format!("; {f}")).unwrap_or_default()
                ),
            ),
            cache::Circuit::Up { failures: 0 } => {
                let s = &up.stats;
                let (hits, misses) = (s.hits.get(), s.misses.get());
                let rate = if hits + misses == 0 {
                    "no traffic yet".to_owned()
                } else {
                    format!(
                        "{:.0}% of requests served from the cache",
                        100.0 * hits as f64 / (hits + misses) as f64
                    )
                };
                (Level::Ok, "up".to_owned(), rate)
            }
            cache::Circuit::Up { failures } => (
                Level::Warn,
                format!("failing ({failures} in a row)"),
                failing_for.unwrap_or_default(),
            ),
            cache::Circuit::Down { .. } | cache::Circuit::Probing if stale_meanwhile => (
                Level::Warn,
                "down, serving stale".to_owned(),
                format!(
                    "cached tags are served as they were; {}",
                    failing_for.unwrap_or_default()
                ),
            ),
            cache::Circuit::Down { .. } | cache::Circuit::Probing => (
                Level::Bad,
                "down".to_owned(),
                failing_for.unwrap_or_else(|| "not answering".to_owned()),
            ),
        };
        tiles.push(Tile {
            level,
            subject: format!("upstream {}", up.name),
            state,
            detail,
        });
    }
}

fn upkeep_tiles(view: &View<'_>, tiles: &mut Vec<Tile>) {
    let now = view.now;
    let scrub = view.app.upkeep.scrub.lock().clone();
    let open = scrub
        .last
        .as_ref()
        .map(|r| r.problems.iter().filter(|p| p.repaired.is_none()).count());
    let (level, state, detail) = match (&scrub.last_error, open, scrub.last_success_at) {
        // Its message may name repositories: the log has it.
        (Some(_), _, at) => (
            Level::Bad,
            "last run failed".to_owned(),
            format!("berth's log has the error; last success {}", ago(at, now)),
        ),
        (None, Some(n), at) if n > 0 => (
            Level::Bad,
            format!("{n} problems"),
            format!("found {}; see below", ago(at, now)),
        ),
        (None, Some(_), at) => {
            let r = scrub.last.as_ref();
            (
                Level::Ok,
                "no problems".to_owned(),
                format!(
                    "{} manifests and {} blobs checked {}",
                    r.map_or(0, |r| r.manifests_checked),
                    r.map_or(0, |r| r.blobs_checked),
                    ago(at, now)
                ),
            )
        }
        (None, None, _) => (Level::Info, "not run yet".to_owned(), String::new()),
    };
    tiles.push(Tile {
        level,
        subject: "scrub".to_owned(),
        state,
        detail,
    });
    let gc = view.app.upkeep.gc.lock().clone();
    let (level, state, detail) = match (&gc.last_error, &gc.last) {
        (Some(_), _) => (
            Level::Bad,
            "last run failed".to_owned(),
            format!(
                "berth's log has the error; last success {}",
                ago(gc.last_success_at, now)
            ),
        ),
        (None, Some(r)) => (
            Level::Ok,
            "ran".to_owned(),
            format!(
                "{} freed, {} blobs deleted, {}",
                human_bytes(r.bytes_freed),
                r.blobs_deleted,
                ago(gc.last_success_at, now)
            ),
        ),
        (None, None) => (Level::Info, "not run yet".to_owned(), String::new()),
    };
    tiles.push(Tile {
        level,
        subject: "garbage collection".to_owned(),
        state,
        detail,
    });
}

fn probe_tiles(view: &View<'_>, tiles: &mut Vec<Tile>) {
    for p in view.app.probes.all() {
        let failed = p.failed();
        let (level, state, detail) = match (&p.catalog_error, failed, p.runs) {
            (_, _, 0) => (Level::Info, "not run yet".to_owned(), String::new()),
            (Some(e), _, _) => (Level::Bad, "catalog fails".to_owned(), esc(e)),
            (None, 0, _) => (
                Level::Ok,
                "all images pull".to_owned(),
                format!("{} images, {}", p.images.len(), ago(p.last_run, view.now)),
            ),
            (None, n, _) => (
                Level::Bad,
                format!("{n} of {} images do not pull", p.images.len()),
                p.images
                    .iter()
                    .filter(|i| !i.ok)
                    .take(3)
                    .map(|i| esc(&i.image))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        };
        tiles.push(Tile {
            level,
            subject: format!("probe {}", p.registry),
            state,
            detail,
        });
    }
}

fn disk_tile(view: &View<'_>, tiles: &mut Vec<Tile>) {
    let store = view.app.registry.store();
    let Some(space) = store.space() else {
        tiles.push(Tile {
            level: Level::Info,
            subject: "storage".to_owned(),
            state: format!("{} store", store.kind()),
            detail: "no fixed capacity to report".to_owned(),
        });
        return;
    };
    let share = if space.total == 0 {
        1.0
    } else {
        space.available as f64 / space.total as f64
    };
    let level = if share < DISK_BAD_BELOW {
        Level::Bad
    } else if share < DISK_WARN_BELOW {
        Level::Warn
    } else {
        Level::Ok
    };
    tiles.push(Tile {
        level,
        subject: "disk".to_owned(),
        state: format!("{:.0}% free", share * 100.0),
        detail: format!(
            "{} free of {}",
            human_bytes(space.available),
            human_bytes(space.total)
        ),
    });
}
