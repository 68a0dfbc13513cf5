//! Which steps of `EnrollCard` each path records (`c2p_enroll_stage_duration_seconds`): every
//! call that ran a step counts it once, whatever its result.

use super::fakes::{World, command, context, world};
use crate::app::ports::{EnrollmentStore as _, UpstreamFailure};
use std::collections::BTreeMap;

/// Runs `calls` on a runtime of this thread under a Prometheus recorder of its own, each call
/// inside an account of Mastercard waits (as the gRPC handler runs it); returns each step's
/// count.
fn steps_of(calls: impl AsyncFnOnce(&World)) -> BTreeMap<String, u64> {
    let w = world();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(crate::metrics::accounting_upstream_wait(calls(&w)))
    });
    let prefix = "c2p_enroll_stage_duration_seconds_count{stage=\"";
    handle
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(step, n)| (step.to_owned(), n.parse().unwrap()))
        .collect()
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(s, n)| ((*s).to_owned(), *n)).collect()
}

/// The steps of a new enrollment, in order (`recover` runs only on a resumed call).
const NEW: [&str; 7] = [
    "begin", "lock", "search", "write", "enroll", "record", "settle",
];

/// Each of `steps` once.
fn once(steps: impl IntoIterator<Item = &'static str>) -> BTreeMap<String, u64> {
    steps.into_iter().map(|s| (s.to_owned(), 1)).collect()
}

#[test]
fn a_new_enrollment_runs_every_step_once_and_its_replay_only_begin() {
    let got = steps_of(async |w| {
        let cmd = command("k1", 1001);
        w.app.enroll(cmd.clone(), None).await.unwrap();
        assert!(w.app.enroll(cmd, None).await.unwrap().replayed);
    });
    let mut want = once(NEW);
    want.insert("begin".into(), 2);
    assert_eq!(got, want);
}

#[test]
fn a_busy_card_runs_begin_and_lock() {
    let got = steps_of(async |w| {
        assert!(w.thief_locks(1203).await);
        w.app.enroll(command("k1", 1203), None).await.unwrap_err();
    });
    assert_eq!(got, counts(&[("begin", 1), ("lock", 1)]));
}

#[test]
fn a_declined_enrollment_records_its_failure_once() {
    let got = steps_of(async |w| {
        w.mc.enroll(Err(UpstreamFailure::Declined {
            reason: "CARD_BLOCKED".into(),
            context: context("enroll"),
        }));
        w.app.enroll(command("k1", 1102), None).await.unwrap_err();
        // The failed record is written; the card does not join the ENROLLED index.
        let due = w.store.enrolled_due(i64::MAX, 100).await.unwrap();
        assert!(!due.contains(&super::fakes::card(1102)), "{due:?}");
    });
    assert_eq!(got, once(NEW));
}
