//! Admission to one upstream: how many requests may be in flight (`max_concurrent`), how
//! fast they may start (`max_rate`), how many may wait for either (`max_queue`, beyond
//! which a request is refused at once), the upstream's own `429 Too Many Requests`
//! (honoured for its `Retry-After`: nothing is sent meanwhile), and a circuit breaker
//! (after `down_after` failures in a row the upstream is down for `down_for`, then one
//! request probes it). A refused request never reaches the upstream; the cache then
//! serves what it holds. This module only decides and counts; it never talks HTTP.

use distribution::ClientError;
use parking_lot::Mutex;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Requests that may wait for a slot or a rate token unless configured: a node pool
/// rolling out asks for a few dozen blobs at once; beyond this, queueing only turns a
/// refusal the client can retry into a timeout it cannot tell from an outage.
pub const DEFAULT_MAX_QUEUE: usize = 256;
/// Failures in a row that mark an upstream down unless configured: one or two are the
/// noise of a busy upstream; five in a row is an outage worth not waiting for.
pub const DEFAULT_DOWN_AFTER: u32 = 5;
/// How long a down upstream is left alone unless configured, before one request probes
/// it: short enough that a recovered upstream is used again within a minute, long
/// enough that clients of cached content stop waiting for timeouts.
pub const DEFAULT_DOWN_FOR: Duration = Duration::from_secs(30);
/// How long to leave an upstream alone after a 429 without a usable `Retry-After`:
/// Docker Hub's windows are hours, but its answers carry the header; a minute keeps an
/// upstream that omits it from being hammered.
pub const DEFAULT_RATE_LIMIT_BACKOFF: Duration = Duration::from_secs(60);
/// The `Retry-After` of a request refused because the queue is full or another request
/// is probing a down upstream: the moment it takes a slot to free up.
pub const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);
/// The longest wait a 429 is honoured for: a day covers every rate-limit window in use,
/// and an absurd `Retry-After` must not silence an upstream for good.
pub const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(24 * 3600);

/// The limits of one upstream, as configured.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Upstream requests in flight at once (a blob download counts until it ends).
    pub max_concurrent: Option<usize>,
    /// Upstream requests started per second.
    pub max_rate: Option<f64>,
    /// Requests that may wait for a slot or a token.
    pub max_queue: usize,
    /// Failures in a row that mark the upstream down.
    pub down_after: u32,
    /// How long it stays down before a probe.
    pub down_for: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_concurrent: None,
            max_rate: None,
            max_queue: DEFAULT_MAX_QUEUE,
            down_after: DEFAULT_DOWN_AFTER,
            down_for: DEFAULT_DOWN_FOR,
        }
    }
}

/// Why a request was not sent upstream.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("too many requests are waiting for the upstream")]
    Busy { retry_after: Duration },
    #[error("the upstream is rate-limiting berth")]
    RateLimited { retry_after: Duration },
    #[error("the upstream is down (failing requests in a row); it is probed again soon")]
    Down { retry_after: Duration },
}

impl Refused {
    /// When the client may try again.
    pub fn retry_after(&self) -> Duration {
        match self {
            Refused::Busy { retry_after }
            | Refused::RateLimited { retry_after }
            | Refused::Down { retry_after } => *retry_after,
        }
    }
}

/// The circuit breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Circuit {
    /// Requests go through; `failures` in a row so far.
    Up { failures: u32 },
    /// Nothing is sent until `until`.
    Down { until: Instant },
    /// One request is testing the upstream; the others are refused until it answers.
    Probing,
}

#[derive(Debug)]
pub(crate) struct State {
    circuit: Circuit,
    /// No request is sent before this (a 429's `Retry-After`).
    limited_until: Option<Instant>,
    /// The failures since the upstream last worked, for people to read.
    trouble: Option<Trouble>,
}

/// Since when an upstream has been failing, and how it failed last: what the web page's
/// health strip says about an upstream that is not up.
#[derive(Clone, Debug, PartialEq)]
pub struct Trouble {
    /// The first failure since the upstream last answered.
    pub since: SystemTime,
    /// The newest failure, as [`ClientError::summary`] says it (no URL, no repository
    /// name: the web page shows it to anyone).
    pub last_error: String,
}

/// Counters of what the gate did, kept across reconfigurations with the cache's stats.
#[derive(Debug, Default)]
pub struct GateStats {
    /// Requests refused because the queue was full.
    pub refused_busy: meter::Counter,
    /// Requests refused while the upstream's rate limit was in force.
    pub refused_rate_limited: meter::Counter,
    /// Requests refused while the upstream was down.
    pub refused_down: meter::Counter,
    /// 429 answers from the upstream.
    pub rate_limited: meter::Counter,
    /// Times the upstream was marked down.
    pub circuit_opened: meter::Counter,
}

/// Admission to one upstream.
pub struct Gate {
    limits: Limits,
    slots: Option<Arc<tokio::sync::Semaphore>>,
    rate: Option<governor::DefaultDirectRateLimiter>,
    waiting: AtomicUsize,
    state: Arc<Mutex<State>>,
    stats: Arc<GateStats>,
}

/// A request allowed through: it holds its slot until dropped (a blob download keeps it
/// to the end) and reports its outcome with [`Gate::record`]. A probe dropped without
/// an outcome (its client went away) lets the next request probe instead.
pub struct Pass {
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The breaker's state, when this request is the probe of a down upstream.
    probe: Option<Arc<Mutex<State>>>,
    recorded: std::sync::atomic::AtomicBool,
}

impl Drop for Pass {
    fn drop(&mut self) {
        if let Some(state) = &self.probe
            && !self.recorded.load(Ordering::SeqCst)
        {
            let mut st = state.lock();
            if st.circuit == Circuit::Probing {
                st.circuit = Circuit::Down {
                    until: Instant::now(),
                };
            }
        }
    }
}

/// Decrements the waiting count however the wait ends (a client that goes away too).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Gate {
    pub fn new(limits: Limits, stats: Arc<GateStats>) -> Gate {
        let state = Arc::new(Mutex::new(State {
            circuit: Circuit::Up { failures: 0 },
            limited_until: None,
            trouble: None,
        }));
        Gate::with_state(limits, stats, state)
    }

    /// A gate for new `limits` that keeps what `old` knows of the upstream (its
    /// circuit and any 429 in force): a reload must not forget that an upstream is
    /// down or rate-limiting berth.
    pub fn succeeding(old: &Gate, limits: Limits) -> Gate {
        Gate::with_state(limits, old.stats.clone(), old.state.clone())
    }

    fn with_state(limits: Limits, stats: Arc<GateStats>, state: Arc<Mutex<State>>) -> Gate {
        let slots = limits
            .max_concurrent
            .map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1))));
        let rate = limits.max_rate.map(|r| {
            // A burst of one second's worth, and a token every 1/r seconds.
            let burst = NonZeroU32::new(r.ceil().clamp(1.0, u32::MAX as f64) as u32)
                .unwrap_or(NonZeroU32::MIN);
            let period = Duration::from_secs_f64(1.0 / r.max(1e-6));
            let quota = governor::Quota::with_period(period)
                .unwrap_or_else(|| governor::Quota::per_second(NonZeroU32::MIN))
                .allow_burst(burst);
            governor::RateLimiter::direct(quota)
        });
        Gate {
            limits,
            slots,
            rate,
            waiting: AtomicUsize::new(0),
            state,
            stats,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The breaker's state now.
    pub fn circuit(&self) -> Circuit {
        self.state.lock().circuit
    }

    /// Whether a 429's `Retry-After` is in force now.
    pub fn rate_limited(&self) -> bool {
        self.state
            .lock()
            .limited_until
            .is_some_and(|t| t > Instant::now())
    }

    /// Since when the upstream has been failing and its last error; `None` while it
    /// works (its last answer was a good one).
    pub fn trouble(&self) -> Option<Trouble> {
        self.state.lock().trouble.clone()
    }

    /// Requests waiting for a slot or a token now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Requests in flight now (those holding a slot; 0 without `max_concurrent`).
    pub fn in_flight(&self) -> usize {
        match (&self.slots, self.limits.max_concurrent) {
            (Some(s), Some(n)) => n.max(1) - s.available_permits(),
            _ => 0,
        }
    }

    /// Refuse at once, without waiting, when nothing may be sent now; else note whether
    /// this request is the probe of a down upstream.
    fn check(&self) -> Result<bool, Refused> {
        let now = Instant::now();
        let mut st = self.state.lock();
        if let Some(until) = st.limited_until {
            if until > now {
                self.stats.refused_rate_limited.inc();
                return Err(Refused::RateLimited {
                    retry_after: until - now,
                });
            }
            st.limited_until = None;
        }
        match st.circuit {
            Circuit::Up { .. } => Ok(false),
            Circuit::Down { until } if until > now => {
                self.stats.refused_down.inc();
                Err(Refused::Down {
                    retry_after: until - now,
                })
            }
            Circuit::Down { .. } => {
                st.circuit = Circuit::Probing;
                Ok(true)
            }
            Circuit::Probing => {
                self.stats.refused_down.inc();
                Err(Refused::Down {
                    retry_after: BUSY_RETRY_AFTER,
                })
            }
        }
    }

    /// Wait for a slot and a rate token, or be refused (at once when the upstream is
    /// rate-limiting or down, or the queue is full).
    pub async fn admit(&self) -> Result<Pass, Refused> {
        let probe = self.check()?;
        // The pass exists from here on, so a probe whose wait ends early (its client
        // went away, the queue was full) lets the next request probe instead.
        let mut pass = Pass {
            _slot: None,
            probe: probe.then(|| self.state.clone()),
            recorded: Default::default(),
        };
        let slot_now = match &self.slots {
            Some(s) => s.clone().try_acquire_owned().ok(),
            None => None,
        };
        let needs_slot = self.slots.is_some() && slot_now.is_none();
        let needs_token = self.rate.as_ref().is_some_and(|r| r.check().is_err());
        pass._slot = slot_now;
        if !needs_slot && !needs_token {
            return Ok(pass);
        }
        // A place in the queue, taken only while there is one.
        if self
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w < self.limits.max_queue).then_some(w + 1)
            })
            .is_err()
        {
            self.stats.refused_busy.inc();
            return Err(Refused::Busy {
                retry_after: BUSY_RETRY_AFTER,
            });
        }
        let waiting = Waiting(&self.waiting);
        if let (true, Some(s)) = (needs_slot, &self.slots) {
            pass._slot = s.clone().acquire_owned().await.ok();
        }
        if let (true, Some(r)) = (needs_token, &self.rate) {
            r.until_ready().await;
        }
        drop(waiting);
        Ok(pass)
    }

    /// The upstream answered, and the whole of the answer arrived: it works.
    pub fn record_success(&self, pass: &Pass) {
        self.note(pass, Outcome::Works, None);
    }

    /// The upstream failed after its first answer (a body cut off, too short or too
    /// long), as `why` says in a few words that name no repository: an outage, like no
    /// answer at all.
    pub fn record_outage(&self, pass: &Pass, why: &str) {
        self.note(pass, Outcome::Outage, Some(why.to_owned()));
    }

    /// What the upstream answered to a request let through with `pass`.
    pub fn record<T>(&self, pass: &Pass, answer: &Result<T, ClientError>) {
        let outcome = match answer {
            Err(ClientError::RateLimited { retry_after }) => Outcome::RateLimited(*retry_after),
            Err(e) if e.is_outage() => Outcome::Outage,
            // An answer about the content (found, not found, refused credentials) is
            // an upstream that works.
            _ => Outcome::Works,
        };
        let why = match (&outcome, answer) {
            (Outcome::Works, _) | (_, Ok(_)) => None,
            (_, Err(e)) => Some(e.summary()),
        };
        self.note(pass, outcome, why);
    }

    fn note(&self, pass: &Pass, outcome: Outcome, why: Option<String>) {
        pass.recorded.store(true, Ordering::SeqCst);
        let mut st = self.state.lock();
        match why {
            None => st.trouble = None,
            Some(last_error) => {
                let since = st
                    .trouble
                    .as_ref()
                    .map_or_else(SystemTime::now, |t| t.since);
                st.trouble = Some(Trouble { since, last_error });
            }
        }
        match outcome {
            Outcome::RateLimited(retry_after) => {
                self.stats.rate_limited.inc();
                let wait = retry_after
                    .unwrap_or(DEFAULT_RATE_LIMIT_BACKOFF)
                    .min(MAX_RATE_LIMIT_WAIT);
                st.limited_until = Instant::now().checked_add(wait);
                // It answered: it is up, only busy.
                st.circuit = Circuit::Up { failures: 0 };
            }
            Outcome::Outage => {
                let failures = match st.circuit {
                    Circuit::Up { failures } => failures + 1,
                    _ => self.limits.down_after,
                };
                if pass.probe.is_some() || failures >= self.limits.down_after.max(1) {
                    if !matches!(st.circuit, Circuit::Down { .. }) {
                        self.stats.circuit_opened.inc();
                    }
                    st.circuit = Circuit::Down {
                        until: Instant::now() + self.limits.down_for,
                    };
                } else {
                    st.circuit = Circuit::Up { failures };
                }
            }
            Outcome::Works => st.circuit = Circuit::Up { failures: 0 },
        }
    }
}

/// What a request through the gate found, as the breaker counts it.
enum Outcome {
    Works,
    Outage,
    RateLimited(Option<Duration>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outage() -> Result<(), ClientError> {
        Err(ClientError::Status {
            status: 503,
            message: "down".into(),
        })
    }

    #[tokio::test]
    async fn trouble_keeps_when_failing_began_and_the_last_error_until_an_answer() {
        let gate = Gate::new(Limits::default(), Arc::default());
        assert_eq!(gate.trouble(), None);
        let p = gate.admit().await.unwrap();
        gate.record(&p, &outage());
        let first = gate.trouble().expect("a failure is trouble");
        assert_eq!(first.last_error, "answered HTTP 503", "no upstream text");
        std::thread::sleep(Duration::from_millis(5));
        let p = gate.admit().await.unwrap();
        gate.record_outage(&p, "body cut off at 12 bytes");
        let second = gate.trouble().unwrap();
        assert_eq!(second.since, first.since, "still the same streak");
        assert_eq!(second.last_error, "body cut off at 12 bytes");
        // An answer about the content is an upstream that works.
        let p = gate.admit().await.unwrap();
        gate.record(&p, &Err::<(), _>(ClientError::NotFound));
        assert_eq!(gate.trouble(), None);
    }

    #[tokio::test]
    async fn the_breaker_opens_after_failures_in_a_row_and_one_probe_closes_it() {
        let gate = Gate::new(
            Limits {
                down_after: 3,
                down_for: Duration::from_millis(200),
                ..Limits::default()
            },
            Arc::default(),
        );
        for _ in 0..2 {
            let p = gate.admit().await.unwrap();
            gate.record(&p, &outage());
        }
        // A success in between starts the count again.
        let p = gate.admit().await.unwrap();
        gate.record(&p, &Ok(()));
        for _ in 0..3 {
            let p = gate.admit().await.unwrap();
            gate.record(&p, &outage());
        }
        assert!(matches!(gate.circuit(), Circuit::Down { .. }));
        assert_eq!(gate.stats.circuit_opened.get(), 1);
        let Err(Refused::Down { retry_after }) = gate.admit().await else {
            panic!("a down upstream is not asked");
        };
        assert!(retry_after <= Duration::from_millis(200));
        tokio::time::sleep(Duration::from_millis(250)).await;
        // After the cool-down one request probes; the others are refused meanwhile.
        let probe = gate.admit().await.unwrap();
        assert_eq!(gate.circuit(), Circuit::Probing);
        assert!(matches!(gate.admit().await, Err(Refused::Down { .. })));
        // A failed probe opens it again at once.
        gate.record(&probe, &outage());
        assert!(matches!(gate.circuit(), Circuit::Down { .. }));
        tokio::time::sleep(Duration::from_millis(250)).await;
        // A probe whose client went away lets the next request probe.
        drop(gate.admit().await.unwrap());
        let probe = gate.admit().await.unwrap();
        gate.record(&probe, &Err::<(), _>(ClientError::NotFound));
        assert_eq!(gate.circuit(), Circuit::Up { failures: 0 });
        assert!(gate.admit().await.is_ok());
    }

    #[tokio::test]
    async fn a_probe_that_stops_waiting_lets_the_next_request_probe() {
        let gate = Arc::new(Gate::new(
            Limits {
                max_concurrent: Some(1),
                down_after: 1,
                down_for: Duration::from_millis(50),
                ..Limits::default()
            },
            Arc::default(),
        ));
        let holder = gate.admit().await.unwrap();
        gate.record(&holder, &outage());
        assert!(matches!(gate.circuit(), Circuit::Down { .. }));
        tokio::time::sleep(Duration::from_millis(80)).await;
        // The probe waits for the slot the holder keeps, and its client goes away.
        let waited = tokio::time::timeout(Duration::from_millis(50), gate.admit()).await;
        assert!(waited.is_err(), "it had to wait");
        assert!(
            matches!(gate.circuit(), Circuit::Down { .. }),
            "not stuck probing"
        );
        drop(holder);
        let next = gate.admit().await.unwrap();
        assert_eq!(gate.circuit(), Circuit::Probing, "the next request probes");
        gate.record(&next, &Ok::<(), ClientError>(()));
        assert_eq!(gate.circuit(), Circuit::Up { failures: 0 });
        drop(next);
        // An absurd Retry-After is capped, not a panic.
        let p = gate.admit().await.unwrap();
        gate.record(
            &p,
            &Err::<(), _>(ClientError::RateLimited {
                retry_after: Some(Duration::from_secs(u64::MAX / 2)),
            }),
        );
        assert!(gate.rate_limited());
    }

    #[tokio::test]
    async fn a_429_is_honoured_for_its_retry_after() {
        let gate = Gate::new(Limits::default(), Arc::default());
        let p = gate.admit().await.unwrap();
        gate.record(
            &p,
            &Err::<(), _>(ClientError::RateLimited {
                retry_after: Some(Duration::from_millis(150)),
            }),
        );
        assert!(gate.rate_limited());
        let Err(Refused::RateLimited { retry_after }) = gate.admit().await else {
            panic!("nothing is sent while rate-limited");
        };
        assert!(retry_after <= Duration::from_millis(150));
        // Rate-limited is not down: the breaker stays closed.
        assert_eq!(gate.circuit(), Circuit::Up { failures: 0 });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(gate.admit().await.is_ok());
        assert_eq!(gate.stats.rate_limited.get(), 1);
        assert_eq!(gate.stats.refused_rate_limited.get(), 1);
    }

    #[tokio::test]
    async fn slots_bound_what_is_in_flight_and_a_full_queue_is_refused() {
        let gate = Arc::new(Gate::new(
            Limits {
                max_concurrent: Some(2),
                max_queue: 1,
                ..Limits::default()
            },
            Arc::default(),
        ));
        let a = gate.admit().await.unwrap();
        let b = gate.admit().await.unwrap();
        assert_eq!(gate.in_flight(), 2);
        // A third waits for a slot.
        let g = gate.clone();
        let third = tokio::spawn(async move { g.admit().await.map(|_| ()) });
        while gate.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        // The queue (of one) is full: a fourth is refused at once.
        assert!(matches!(gate.admit().await, Err(Refused::Busy { .. })));
        assert_eq!(gate.stats.refused_busy.get(), 1);
        drop(a);
        third.await.unwrap().unwrap();
        assert_eq!(gate.waiting(), 0);
        drop(b);
    }

    #[tokio::test]
    async fn the_rate_spaces_requests() {
        let gate = Gate::new(
            Limits {
                max_rate: Some(20.0),
                ..Limits::default()
            },
            Arc::default(),
        );
        let started = Instant::now();
        // A burst of one second's worth (20) goes at once; 10 more take about 0.5 s.
        for _ in 0..30 {
            gate.admit().await.unwrap();
        }
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(400), "{took:?}");
    }
}
