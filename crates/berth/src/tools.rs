//! The store-care subcommands (`berth gc`, `berth retention`, `berth fsck`): open the
//! configured store, run one upkeep job, print what it did; and the quiet logging every
//! one-shot command starts with ([`tool_config`]). The jobs themselves live in the
//! `upkeep` crate; this module only formats and decides exit status.

use crate::config::{Config, FileChecks};
use std::io::Write;

/// The phase bar of [`client::progress`] as an upkeep job's [`upkeep::Progress`].
#[derive(Default)]
pub struct Bar(client::progress::PhaseBar);

impl Bar {
    pub fn new() -> Bar {
        Bar(client::progress::PhaseBar::new())
    }

    fn finish(&self) {
        self.0.finish();
    }
}

impl upkeep::Progress for Bar {
    fn phase(&self, name: &str, total: u64) {
        self.0.phase(name, total);
    }

    fn advance(&self, n: u64) {
        self.0.advance(n);
    }
}

pub use server::human_bytes;

/// Load a config for a one-shot tool, logging only errors on stderr (the tool prints its
/// findings itself) unless BERTH_LOG asks for more.
pub fn tool_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    tool_config_with(path, FileChecks::Read)
}

/// [`tool_config`], reading the files the configuration names or not.
pub fn tool_config_with(
    path: Option<&std::path::Path>,
    files: FileChecks,
) -> anyhow::Result<Config> {
    let config = Config::load_with(path, files)?;
    if std::env::var_os("BERTH_LOG").is_none() {
        let filter = tracing_subscriber::EnvFilter::new("error");
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init();
    } else {
        crate::init_logging(config.log.format);
    }
    Ok(config)
}

/// `berth prefetch`: every rule of every upstream once; `Ok(false)` when a tag failed.
pub async fn prefetch(config: &Config, dry_run: bool, out: &mut dyn Write) -> anyhow::Result<bool> {
    let app = crate::build_app(config).await?;
    let mode = if dry_run {
        cache::PrefetchMode::DryRun
    } else {
        cache::PrefetchMode::Fetch
    };
    let mut ok = true;
    let mut rules = 0;
    for up in app.cache.upstreams() {
        for (i, rule) in up.prefetch.iter().enumerate() {
            rules += 1;
            let r = app.cache.prefetch_once(&up, rule, mode).await;
            let (verb, done) = if dry_run {
                ("would fetch", "cached")
            } else {
                ("fetched", "fresh")
            };
            writeln!(
                out,
                "{} rule #{}: {} tags matched, {} {done}, {} {verb}{}",
                up.name,
                i + 1,
                r.matched.len(),
                r.fresh,
                r.fetched.len(),
                if dry_run {
                    String::new()
                } else {
                    format!(" ({} downloads)", r.downloads)
                }
            )?;
            for t in &r.fetched {
                writeln!(out, "  {verb} {t}")?;
            }
            for f in &r.failures {
                writeln!(out, "  failed {f}")?;
                ok = false;
            }
        }
    }
    if rules == 0 {
        writeln!(out, "no [[upstream.prefetch]] rules configured")?;
    }
    Ok(ok)
}

/// `berth gc`.
pub async fn gc(config: &Config, dry_run: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let app = crate::build_app(config).await?;
    let bar = Bar::new();
    let r = upkeep::gc::run_once(&app.registry, &crate::gc_options(config, dry_run), &bar).await;
    bar.finish();
    let r = r?;
    let verb = if dry_run { "would delete" } else { "deleted" };
    writeln!(
        out,
        "garbage collection{} over {} repositories (grace {}s): marked {} manifests and {} blobs",
        if dry_run { " (dry run)" } else { "" },
        r.repositories,
        config.gc.grace.as_secs(),
        r.manifests_marked,
        r.blobs_marked
    )?;
    writeln!(out, "  {verb} {} manifests", r.manifests_deleted)?;
    writeln!(out, "  {verb} {} blob links", r.blob_links_deleted)?;
    writeln!(out, "  {verb} {} referrer links", r.referrer_links_deleted)?;
    writeln!(
        out,
        "  {verb} {} blobs ({})",
        r.blobs_deleted,
        human_bytes(r.bytes_freed)
    )?;
    writeln!(out, "  {verb} {} abandoned uploads", r.uploads_deleted)?;
    if r.kept_in_use > 0 {
        writeln!(
            out,
            "  kept {} candidates renewed while it ran (in use)",
            r.kept_in_use
        )?;
    }
    writeln!(out, "  took {:.2}s", r.duration_seconds)?;
    writeln!(out, "  {}", store_operations(&app.registry))?;
    Ok(())
}

/// How many store operations a run made (on S3 most are one request; a walk is one
/// LIST per 1,000 objects), for the cost of a run on object storage.
fn store_operations(registry: &registry::Registry) -> String {
    let ops = registry.store_ops();
    format!("store operations: {}", ops.total())
}

/// `berth retention`.
pub async fn retention(config: &Config, apply: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let rules = crate::retention_rules(config)?;
    if rules.is_empty() {
        writeln!(
            out,
            "no [[retention.rule]] in the configuration: nothing to do"
        )?;
        return Ok(());
    }
    let app = crate::build_app(config).await?;
    let bar = Bar::new();
    let plan = upkeep::retention::plan(&app.registry, &rules, &bar).await;
    bar.finish();
    let plan = plan?;
    for d in &plan.drops {
        writeln!(
            out,
            "{} {}:{}  ({}; rule {})",
            if apply { "drop" } else { "would drop" },
            d.repository,
            d.tag,
            d.reason,
            d.rule
        )?;
    }
    if apply {
        let r = upkeep::retention::apply(&app.registry, &plan).await?;
        writeln!(
            out,
            "retention: {} repositories, {} tags seen, {} dropped{}; their content goes at the next garbage collection",
            r.repositories,
            r.tags_seen,
            r.tags_deleted,
            if r.skipped_changed > 0 {
                format!(", {} skipped (pushed again meanwhile)", r.skipped_changed)
            } else {
                String::new()
            }
        )?;
    } else {
        writeln!(
            out,
            "retention plan: {} repositories, {} tags seen, {} to drop; run with --apply to drop them",
            plan.repositories,
            plan.tags_seen,
            plan.drops.len()
        )?;
    }
    Ok(())
}

/// How `berth fsck` runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct FsckArgs {
    pub deep: bool,
    pub repair: bool,
    pub json: bool,
}

/// `berth fsck`; `Ok(false)` when problems remain.
pub async fn fsck(config: &Config, args: FsckArgs, out: &mut dyn Write) -> anyhow::Result<bool> {
    let app = crate::build_app(config).await?;
    let opts = upkeep::fsck::FsckOptions {
        deep: args.deep,
        repair: args.repair,
        cache: Some(app.cache.clone()),
        cached: crate::cached_keys(config),
        rate: None,
    };
    let bar = Bar::new();
    let r = upkeep::fsck::run_once(&app.registry, &opts, &bar).await;
    bar.finish();
    let r = r?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &r)?;
        writeln!(out)?;
        return Ok(r.is_clean());
    }
    let mut last_repo = "";
    for p in &r.problems {
        if p.repository != last_repo {
            writeln!(out, "{}", p.repository)?;
            last_repo = &p.repository;
        }
        let at = p
            .tag
            .as_deref()
            .map_or("(untagged)".to_owned(), |t| format!("tag {t}"));
        writeln!(
            out,
            "  {at}: {} {}: {}",
            p.kind.as_str(),
            p.digest,
            p.detail
        )?;
        if let Some(fix) = &p.repaired {
            writeln!(out, "    repaired: {fix}")?;
        }
    }
    let open = r.problems.iter().filter(|p| p.repaired.is_none()).count();
    writeln!(
        out,
        "checked {} repositories, {} tags, {} manifests, {} blobs{}: {}",
        r.repositories,
        r.tags,
        r.manifests_checked,
        r.blobs_checked,
        if r.deep {
            format!(" ({} re-hashed)", human_bytes(r.bytes_hashed))
        } else {
            String::new()
        },
        if r.problems.is_empty() {
            "clean".to_owned()
        } else {
            format!(
                "{} problems, {} repaired, {open} remaining",
                r.problems.len(),
                r.problems.len() - open
            )
        }
    )?;
    writeln!(out, "  {}", store_operations(&app.registry))?;
    Ok(r.is_clean())
}
