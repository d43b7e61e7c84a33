//! Readiness for the service manager: when systemd starts `berth serve` as a
//! `Type=notify` unit it passes `NOTIFY_SOCKET`, and berth says `READY=1` once every
//! listener serves, `RELOADING=1` then `READY=1` around each configuration reload, and
//! `STOPPING=1` when it begins to shut down (the sd_notify protocol, through the
//! `sd-notify` crate). Without `NOTIFY_SOCKET` each call does nothing. It never decides
//! anything; it only reports.

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// Every listener is serving.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A configuration reload starts; [`reloaded`] follows whatever its outcome.
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    // Type=notify-reload (systemd 253+) wants the time the reload began.
    if let Ok(t) = NotifyState::monotonic_usec_now() {
        states.push(t);
    }
    send(&states);
}

/// A reload is over: applied, or refused with the running configuration kept.
pub fn reloaded(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Shutdown began: in-flight requests finish, nothing new is accepted.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}
