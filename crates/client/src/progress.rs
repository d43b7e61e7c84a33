//! The progress bars (indicatif) of berth's commands, all drawn on stderr: for image
//! transfers (`copy`, `mirror`, `export`, `import`) per-blob and overall bars with bytes,
//! rate and ETA (for `mirror` also a count of tags) on a terminal and plain log lines
//! elsewhere ([`TransferProgress`]); for long jobs in phases (`gc`, `retention`, `fsck`)
//! one bar per phase on a terminal and nothing elsewhere ([`PhaseBar`]). It only
//! displays; it never moves bytes or runs a job.

use crate::copy::CopyProgress;
use crate::mirror::MirrorProgress;
use oci::Digest;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::IsTerminal;

/// The style of every byte bar: message, bar, bytes done of total, rate, ETA.
const BYTES_TEMPLATE: &str = "{msg:>19} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}";

/// Bars on stderr when it is a terminal, else one line per blob on stderr.
pub struct TransferProgress {
    bars: Option<Bars>,
}

struct Bars {
    multi: indicatif::MultiProgress,
    overall: indicatif::ProgressBar,
    blobs: Mutex<HashMap<Digest, indicatif::ProgressBar>>,
    /// Tags done of those found (`mirror`).
    tags: Mutex<Option<indicatif::ProgressBar>>,
}

fn short(d: &Digest) -> String {
    format!("{}:{}", d.algorithm().as_str(), &d.hex()[..12])
}

impl TransferProgress {
    /// Bars if stderr is a terminal.
    pub fn new() -> TransferProgress {
        if !std::io::stderr().is_terminal() {
            return TransferProgress { bars: None };
        }
        let multi = indicatif::MultiProgress::new();
        let overall = multi.add(indicatif::ProgressBar::new(0));
        overall.set_style(
            indicatif::ProgressStyle::with_template(BYTES_TEMPLATE)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        overall.set_message("total");
        TransferProgress {
            bars: Some(Bars {
                multi,
                overall,
                blobs: Mutex::default(),
                tags: Mutex::default(),
            }),
        }
    }

    /// Clear the bars.
    pub fn finish(&self) {
        if let Some(b) = &self.bars {
            b.overall.finish_and_clear();
            if let Some(t) = b.tags.lock().take() {
                t.finish_and_clear();
            }
        }
    }
}

impl Default for TransferProgress {
    fn default() -> Self {
        TransferProgress::new()
    }
}

impl CopyProgress for TransferProgress {
    fn blob_started(&self, digest: &Digest, size: u64) {
        let Some(b) = &self.bars else {
            eprintln!("copying {digest} ({})", crate::human_bytes(size));
            return;
        };
        b.overall.inc_length(size);
        let bar = b.multi.add(indicatif::ProgressBar::new(size));
        bar.set_style(
            indicatif::ProgressStyle::with_template(BYTES_TEMPLATE)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(short(digest));
        b.blobs.lock().insert(digest.clone(), bar);
    }

    fn blob_bytes(&self, digest: &Digest, n: u64) {
        let Some(b) = &self.bars else { return };
        b.overall.inc(n);
        if let Some(bar) = b.blobs.lock().get(digest) {
            bar.inc(n);
        }
    }

    fn blob_done(&self, digest: &Digest, how: &str) {
        let Some(b) = &self.bars else {
            eprintln!("{how:>8} {digest}");
            return;
        };
        if let Some(bar) = b.blobs.lock().remove(digest) {
            bar.finish_and_clear();
        }
    }
}

impl MirrorProgress for TransferProgress {
    fn tags_found(&self, n: u64) {
        let Some(b) = &self.bars else {
            eprintln!("{n} tags to mirror");
            return;
        };
        let bar = b.multi.insert(0, indicatif::ProgressBar::new(n));
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg:>19} [{bar:30}] {pos}/{len}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message("tags");
        *b.tags.lock() = Some(bar);
    }

    fn tag_done(&self, line: &str) {
        let Some(b) = &self.bars else {
            eprintln!("{line}");
            return;
        };
        if let Some(bar) = b.tags.lock().as_ref() {
            bar.inc(1);
        }
    }
}

/// One bar for the current phase of a long job (a count bar when the phase knows its
/// total, a spinner when not) on stderr when it is a terminal; nothing otherwise.
pub struct PhaseBar {
    bar: Mutex<Option<indicatif::ProgressBar>>,
    enabled: bool,
}

impl PhaseBar {
    /// Bars if stderr is a terminal.
    pub fn new() -> PhaseBar {
        PhaseBar {
            bar: Mutex::new(None),
            enabled: std::io::stderr().is_terminal(),
        }
    }

    /// A new phase `name` of `total` steps (0: unknown) replaces the current one.
    pub fn phase(&self, name: &str, total: u64) {
        if !self.enabled {
            return;
        }
        let mut slot = self.bar.lock();
        if let Some(b) = slot.take() {
            b.finish_and_clear();
        }
        let b = if total > 0 {
            indicatif::ProgressBar::new(total).with_style(
                indicatif::ProgressStyle::with_template("{msg:>22} [{bar:40}] {pos}/{len} {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
            )
        } else {
            indicatif::ProgressBar::new_spinner()
        };
        b.set_message(name.to_owned());
        *slot = Some(b);
    }

    /// `n` more steps of the current phase are done.
    pub fn advance(&self, n: u64) {
        if let Some(b) = self.bar.lock().as_ref() {
            b.inc(n);
        }
    }

    /// Clear the bar.
    pub fn finish(&self) {
        if let Some(b) = self.bar.lock().take() {
            b.finish_and_clear();
        }
    }
}

impl Default for PhaseBar {
    fn default() -> Self {
        PhaseBar::new()
    }
}
