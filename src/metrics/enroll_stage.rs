//! Where an EnrollCard's own time goes: each step of the flow timed, less the Mastercard waits
//! inside it (HTTP exchanges and the waits before a retry: the account of
//! [`super::own_time`]), so that a slow call can be traced to the Redis round trip, the signing
//! or the search that held it. Recorded only inside such an account (the gRPC handler's
//! enrollment task), for every call that ran the step whatever its result: a replayed key runs
//! `begin` only, a busy card `begin` and `lock`. For a new enrollment the steps add up to most
//! of `c2p_enroll_own_duration_seconds{result="new"}`; outside them lie the handler's decoding,
//! validation and answer, and the key's release when a call stops early. A step cut off (the
//! call's lease lost) is not recorded.

use metrics::histogram;
use std::future::Future;
use std::time::{Duration, Instant};

/// The histogram's name.
pub const ENROLL_STAGE: &str = "c2p_enroll_stage_duration_seconds";

/// The steps of an enrollment, in the order they run. Each Redis step is one round trip (its
/// commands are sent together), but `settle` for an enrollment that ended ENROLLED: its
/// IN_PROGRESS note goes before the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollStage {
    /// The idempotency key's lease taken, beside the early opt-out check.
    Begin,
    /// The card lock taken, with the card's record and the decisive opt-out check read under it
    /// (one round trip).
    Lock,
    /// The token list asked after an interrupted POST /cards (resumed calls only).
    Recover,
    /// `/cards/searches`: signing, sealing and decoding; the HTTP exchange is Mastercard's. The
    /// card's note for the reconciler is written during the exchange.
    Search,
    /// The IN_PROGRESS record and the phase "enroll sent".
    Write,
    /// `POST /cards`: signing, sealing and decoding; the HTTP exchange is Mastercard's.
    Enroll,
    /// The final record, and the ENROLLED index beside it.
    Record,
    /// The card lock released (for an enrollment that ended ENROLLED, after its IN_PROGRESS
    /// note) and the key's answer stored beside it.
    Settle,
}

impl EnrollStage {
    /// The label value.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Begin => "begin",
            Self::Lock => "lock",
            Self::Recover => "recover",
            Self::Search => "search",
            Self::Write => "write",
            Self::Enroll => "enroll",
            Self::Record => "record",
            Self::Settle => "settle",
        }
    }

    /// Every step, in order.
    pub const ALL: [Self; 8] = [
        Self::Begin,
        Self::Lock,
        Self::Recover,
        Self::Search,
        Self::Write,
        Self::Enroll,
        Self::Record,
        Self::Settle,
    ];
}

/// Runs one step and records its time less the Mastercard waits it held; outside an account
/// of those waits nothing is recorded (the waits could not be told apart).
pub async fn enroll_stage<F: Future>(stage: EnrollStage, step: F) -> F::Output {
    let started = Instant::now();
    let Some(waited_before) = super::own_time::waited_so_far() else {
        return step.await;
    };
    let out = step.await;
    let waited = super::own_time::waited_so_far()
        .unwrap_or(waited_before)
        .saturating_sub(waited_before);
    record(stage, started.elapsed(), waited);
    out
}

fn record(stage: EnrollStage, took: Duration, upstream: Duration) {
    histogram!(ENROLL_STAGE, "stage" => stage.name())
        .record(took.saturating_sub(upstream).as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stage_has_its_own_name() {
        let names: std::collections::BTreeSet<_> =
            EnrollStage::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names.len(), EnrollStage::ALL.len());
    }

    /// Runs `body` under a Prometheus recorder of its own; returns the text page.
    fn rendered(body: impl FnOnce()) -> String {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(&[0.001, 1.0])
            .unwrap()
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, body);
        handle.render()
    }

    /// The `stage` series' sum of seconds and count.
    fn sum_and_count(page: &str, stage: &str) -> (f64, u64) {
        let value = |suffix: &str| {
            let prefix = format!("{ENROLL_STAGE}_{suffix}{{stage=\"{stage}\"}} ");
            page.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no {prefix} in {page}"))
                .to_owned()
        };
        (
            value("sum").parse().unwrap(),
            value("count").parse().unwrap(),
        )
    }

    #[test]
    fn the_mastercard_waits_inside_a_step_are_not_its_own() {
        let page = rendered(|| {
            // The recorder is this thread's only while the closure runs: driven here.
            futures::executor::block_on(super::super::accounting_upstream_wait(async {
                // An hour "waited" inside a step that takes microseconds: nothing is its own.
                enroll_stage(EnrollStage::Search, async {
                    super::super::upstream_waited(Duration::from_secs(3600));
                })
                .await;
                // A wait before a step is not taken off it: it slept 2 ms of its own.
                enroll_stage(EnrollStage::Record, async {
                    std::thread::sleep(Duration::from_millis(2));
                })
                .await;
            }));
        });
        assert_eq!(sum_and_count(&page, "search"), (0.0, 1));
        let (record, calls) = sum_and_count(&page, "record");
        assert_eq!(calls, 1);
        assert!((0.002..3600.0).contains(&record), "{record}");
    }

    #[test]
    fn a_step_cut_off_or_outside_an_account_is_not_recorded() {
        let page = rendered(|| {
            // No account of Mastercard waits: the step runs, nothing is recorded.
            let ran = futures::executor::block_on(enroll_stage(EnrollStage::Lock, async { 7 }));
            assert_eq!(ran, 7);
            // Polled once, then dropped mid-way (a call whose lease was lost).
            futures::executor::block_on(super::super::accounting_upstream_wait(async {
                let mut step = Box::pin(enroll_stage(
                    EnrollStage::Enroll,
                    std::future::pending::<()>(),
                ));
                assert!(futures::poll!(step.as_mut()).is_pending());
            }));
        });
        assert!(!page.contains(ENROLL_STAGE), "{page}");
    }
}
