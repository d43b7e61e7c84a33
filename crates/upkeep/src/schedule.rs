//! The loop behind every background job of `berth serve` ([`crate::spawn_gc`],
//! [`crate::spawn_retention`], [`crate::spawn_scrub`]): a job runs on its interval and
//! records each run in the shared [`Status`]. It only schedules; what a run does lives
//! beside each job's `run_once`, and it never decides intervals (the configuration does).

use crate::Status;
use registry::Registry;
use std::sync::Arc;
use std::time::Duration;

/// Where a background job works and reports: the registry it runs on and the status its
/// runs are recorded in (read by logs, metrics and the web page).
#[derive(Clone)]
pub struct JobContext {
    pub registry: Registry,
    pub status: Arc<Status>,
}

/// Run `job` every `interval` until the handle is aborted. The first run comes one
/// interval after the start, not at once, so a process restarting in a loop does not
/// walk the store each time; a run that overruns delays the next instead of queueing a
/// burst. An interval of zero is a schedule turned off: nothing runs (`None`).
pub(crate) fn every<F, Fut>(interval: Duration, mut job: F) -> Option<tokio::task::JoinHandle<()>>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    if interval.is_zero() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            job().await;
        }
    }))
}
