//! A circuit breaker per API with Resilience4j's semantics and defaults: a count-based sliding
//! window of outcomes, OPEN when the failure rate reaches the threshold (once the minimum number
//! of calls was seen), HALF_OPEN after the open period with a fixed number of probe calls, whose
//! failure rate decides between CLOSED and OPEN again.
//!
//! Hand-written: the crates available implement other policies (EMA success rates, unlimited
//! half-open traffic), not this one.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Breaker settings (Resilience4j defaults in [`BreakerConfig::default`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Failure rate in percent at which the breaker opens (default 50).
    pub failure_rate_threshold: f64,
    /// Outcomes kept in the sliding window (default 100).
    pub window_size: usize,
    /// Outcomes needed before the rate is evaluated (default 100).
    pub minimum_calls: usize,
    /// How long the breaker stays open (default 60 s).
    pub open_duration: Duration,
    /// Probe calls permitted while half-open (default 10).
    pub half_open_calls: usize,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_rate_threshold: 50.0,
            window_size: 100,
            minimum_calls: 100,
            open_duration: Duration::from_secs(60),
            half_open_calls: 10,
        }
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow; outcomes are counted.
    Closed,
    /// Calls are refused until the open period ends.
    Open,
    /// A limited number of probe calls flow.
    HalfOpen,
}

impl BreakerState {
    /// The metrics' name of this state.
    pub fn gauge(self) -> crate::metrics::BreakerGauge {
        match self {
            BreakerState::Closed => crate::metrics::BreakerGauge::Closed,
            BreakerState::HalfOpen => crate::metrics::BreakerGauge::HalfOpen,
            BreakerState::Open => crate::metrics::BreakerGauge::Open,
        }
    }

    /// `closed`, `open` or `half_open` (span attribute, metric label).
    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    window: VecDeque<bool>,
    opened_at: Instant,
    probes_issued: usize,
    probe_results: Vec<bool>,
}

/// A circuit breaker; clone the `Arc` to share it.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

/// Permission for one call; report its outcome with [`Permit::record`]. Dropped unrecorded (the
/// call was cancelled), it frees its half-open probe slot without counting.
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<CircuitBreaker>,
    probe: bool,
    recorded: bool,
}

impl Permit {
    /// Records the call's outcome (`failure` = counted against the API).
    pub fn record(mut self, failure: bool) {
        self.recorded = true;
        self.breaker.on_result(self.probe, failure, Instant::now());
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.recorded && self.probe {
            let mut inner = self.breaker.lock();
            inner.probes_issued = inner.probes_issued.saturating_sub(1);
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker. More minimum calls than the window holds could never be reached (the
    /// breaker would never open): capped at the window, as Resilience4j's count-based window
    /// does.
    pub fn new(mut config: BreakerConfig) -> Arc<Self> {
        config.minimum_calls = config.minimum_calls.min(config.window_size);
        Arc::new(Self {
            config,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                window: VecDeque::new(),
                opened_at: Instant::now(),
                probes_issued: 0,
                probe_results: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every critical section leaves Inner consistent, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state now (an expired open period reads as half-open).
    pub fn state(&self) -> BreakerState {
        let mut inner = self.lock();
        self.advance(&mut inner, Instant::now());
        inner.state
    }

    /// How long until an open breaker lets a probe through (zero unless open).
    pub fn closes_in(&self) -> std::time::Duration {
        let mut inner = self.lock();
        let now = Instant::now();
        self.advance(&mut inner, now);
        match inner.state {
            BreakerState::Open => self
                .config
                .open_duration
                .saturating_sub(now.duration_since(inner.opened_at)),
            BreakerState::Closed | BreakerState::HalfOpen => std::time::Duration::ZERO,
        }
    }

    /// A permit for one call, or `None` while open (or while half-open probes are all out).
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let mut inner = self.lock();
        self.advance(&mut inner, Instant::now());
        let probe = match inner.state {
            BreakerState::Closed => false,
            BreakerState::Open => return None,
            BreakerState::HalfOpen => {
                if inner.probes_issued >= self.config.half_open_calls {
                    return None;
                }
                inner.probes_issued += 1;
                true
            }
        };
        Some(Permit {
            breaker: self.clone(),
            probe,
            recorded: false,
        })
    }

    fn advance(&self, inner: &mut Inner, now: Instant) {
        if inner.state == BreakerState::Open
            && now.duration_since(inner.opened_at) >= self.config.open_duration
        {
            inner.state = BreakerState::HalfOpen;
            inner.probes_issued = 0;
            inner.probe_results.clear();
            tracing::info!("circuit breaker half-open: probing");
        }
    }

    fn rate_reached(&self, failures: usize, calls: usize) -> bool {
        calls > 0
            && (failures as f64) * 100.0 / (calls as f64) >= self.config.failure_rate_threshold
    }

    fn on_result(&self, probe: bool, failure: bool, now: Instant) {
        let mut inner = self.lock();
        match inner.state {
            BreakerState::HalfOpen if probe => {
                inner.probe_results.push(failure);
                if inner.probe_results.len() >= self.config.half_open_calls {
                    let failures = inner.probe_results.iter().filter(|f| **f).count();
                    if self.rate_reached(failures, inner.probe_results.len()) {
                        self.open(&mut inner, now);
                    } else {
                        inner.state = BreakerState::Closed;
                        inner.window.clear();
                        tracing::info!("circuit breaker closed");
                    }
                }
            }
            BreakerState::Closed if !probe => {
                inner.window.push_back(failure);
                while inner.window.len() > self.config.window_size {
                    inner.window.pop_front();
                }
                let calls = inner.window.len();
                let failures = inner.window.iter().filter(|f| **f).count();
                if calls >= self.config.minimum_calls && self.rate_reached(failures, calls) {
                    self.open(&mut inner, now);
                }
            }
            // A late result from before the last transition says nothing about the state now.
            _ => {}
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        inner.state = BreakerState::Open;
        inner.opened_at = now;
        inner.window.clear();
        inner.probe_results.clear();
        tracing::warn!(open_for = ?self.config.open_duration, "circuit breaker open");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Arc<CircuitBreaker> {
        CircuitBreaker::new(BreakerConfig {
            failure_rate_threshold: 50.0,
            window_size: 4,
            minimum_calls: 4,
            open_duration: Duration::from_secs(5),
            half_open_calls: 2,
        })
    }

    fn call(b: &Arc<CircuitBreaker>, failure: bool) {
        b.try_acquire().expect("permitted").record(failure);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_at_the_failure_rate_after_the_minimum_calls() {
        let b = small();
        call(&b, true);
        call(&b, true);
        call(&b, true);
        assert_eq!(b.state(), BreakerState::Closed, "3 calls < minimum 4");
        call(&b, false);
        assert_eq!(b.state(), BreakerState::Open, "3 of 4 failed");
        assert!(b.try_acquire().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn minimum_calls_beyond_the_window_are_capped_at_it() {
        let b = CircuitBreaker::new(BreakerConfig {
            window_size: 10,
            minimum_calls: 20,
            ..BreakerConfig::default()
        });
        for _ in 0..9 {
            call(&b, true);
        }
        assert_eq!(b.state(), BreakerState::Closed, "9 calls < the window's 10");
        call(&b, true);
        assert_eq!(b.state(), BreakerState::Open, "10 of 10 failed");
    }

    #[tokio::test(start_paused = true)]
    async fn stays_closed_below_the_threshold_in_a_sliding_window() {
        let b = small();
        for failure in [true, false, false, false, true, false, false] {
            call(&b, failure);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_opens_after_the_open_period_with_limited_probes_then_closes() {
        let b = small();
        for _ in 0..4 {
            call(&b, true);
        }
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let p1 = b.try_acquire().unwrap();
        let p2 = b.try_acquire().unwrap();
        assert!(b.try_acquire().is_none(), "only 2 probes");
        p1.record(false);
        p2.record(false);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probes_reopen() {
        let b = small();
        for _ in 0..4 {
            call(&b, true);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        call(&b, true);
        call(&b, false);
        assert_eq!(b.state(), BreakerState::Open, "1 of 2 probes failed = 50 %");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_frees_its_slot() {
        let b = small();
        for _ in 0..4 {
            call(&b, true);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        let p1 = b.try_acquire().unwrap();
        let _p2 = b.try_acquire().unwrap();
        drop(p1);
        assert!(b.try_acquire().is_some());
    }
}
