//! Progress of image transfers (`copy`, and later `export` / `import`): per-blob and
//! overall bars with bytes, rate and ETA on a terminal, plain log lines elsewhere. It
//! only displays; it never moves bytes.

use crate::copy::CopyProgress;
use oci::Digest;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

/// Bars on stderr when it is a terminal, else one line per blob on stderr.
pub struct TransferProgress {
    bars: Option<Bars>,
}

struct Bars {
    multi: indicatif::MultiProgress,
    overall: indicatif::ProgressBar,
    blobs: Mutex<HashMap<Digest, indicatif::ProgressBar>>,
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
            indicatif::ProgressStyle::with_template(
                "{msg:>19} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        overall.set_message("total");
        TransferProgress {
            bars: Some(Bars {
                multi,
                overall,
                blobs: Mutex::default(),
            }),
        }
    }

    /// Clear the bars.
    pub fn finish(&self) {
        if let Some(b) = &self.bars {
            b.overall.finish_and_clear();
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
            eprintln!("copying {digest} ({})", server::human_bytes(size));
            return;
        };
        b.overall.inc_length(size);
        let bar = b.multi.add(indicatif::ProgressBar::new(size));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>19} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(short(digest));
        b.blobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest.clone(), bar);
    }

    fn blob_bytes(&self, digest: &Digest, n: u64) {
        let Some(b) = &self.bars else { return };
        b.overall.inc(n);
        if let Some(bar) = b
            .blobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
        {
            bar.inc(n);
        }
    }

    fn blob_done(&self, digest: &Digest, how: &str) {
        let Some(b) = &self.bars else {
            eprintln!("{how:>8} {digest}");
            return;
        };
        if let Some(bar) = b
            .blobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(digest)
        {
            bar.finish_and_clear();
        }
    }
}
