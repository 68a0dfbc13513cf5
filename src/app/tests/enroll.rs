//! Every branch of `EnrollCard`.

use super::fakes::{
    CRASHED, Fault, Op, THIEF, World, c2p_token, card, command, context, enrolled_card, jwe_of,
    masked_card, observed, wallet_token, world, world_with_lease,
};
use crate::app::ports::UpstreamFailure;
use crate::app::{AppError, Step};
use crate::domain::{
    DEFAULT_PROGRAM, EnrollmentRecord, EnrollmentState, Phase, StoredOutcome, TokenStatus, now_ms,
};
use crate::store::EnrollmentStore as _;
use std::time::Duration;
use tokio::time::Instant;

fn unavailable(api: &'static str, secs: u64) -> UpstreamFailure {
    UpstreamFailure::Unavailable {
        retry_after: Duration::from_secs(secs),
        context: context(api),
    }
}

/// A deadline that has passed.
fn past() -> Option<Instant> {
    Some(Instant::now())
}

fn in_progress(card_id: i64, correlation: &str) -> EnrollmentRecord {
    let mut record =
        EnrollmentRecord::new(card(card_id), String::new(), EnrollmentState::InProgress, 0);
    record.src_correlation_id = Some(correlation.into());
    record
}

fn reason(e: &AppError) -> String {
    e.parts().reason.to_string()
}

/// The key's record is unfinished, released (lease 0) and at `phase`.
fn assert_released(w: &World, cmd: &crate::app::EnrollCommand, phase: Phase) {
    let key = w.key_of(cmd).unwrap();
    assert_eq!(key.phase, phase);
    assert_eq!(key.lease_until_ms, 0, "the key is given back");
    assert!(key.outcome.is_none());
}

// --- A new key ----------------------------------------------------------------------------------

#[tokio::test]
async fn a_new_key_searches_once_enrolls_once_and_records_the_enrollment() {
    let w = world();
    let cmd = command("k1", 1001);
    let done = w.app.enroll(cmd.clone(), None).await.unwrap();

    assert!(!done.replayed);
    let r = &done.record;
    assert_eq!(r.card_contract_id, card(1001));
    assert_eq!(r.state, EnrollmentState::Enrolled);
    assert_eq!(r.program, "");
    assert_eq!(r.masked_card, Some(masked_card()));
    assert_eq!(r.src_digital_card_id.as_deref(), Some("src-digital-card-1"));
    assert_eq!(r.src_consumer_id.as_deref(), Some("src-consumer-1"));
    assert!(r.failure.is_none());
    assert!(r.revision > 0, "the stored record, stamped");

    let calls = w.mc.calls();
    assert_eq!(calls.counts(), (1, 1, 0));
    assert_eq!(calls.searches[0].card, card(1001));
    assert_eq!(
        calls.searches[0].cardholder_full_name.as_deref(),
        Some("Jane Doe")
    );
    let sent = &calls.enrolls[0];
    assert_eq!(sent.card, jwe_of(card(1001)), "the search's card object");
    assert_eq!(sent.email.as_deref(), Some("jane.doe@example.com"));
    assert_eq!(
        r.src_correlation_id.as_deref(),
        Some(&*sent.src_correlation_id)
    );

    assert_eq!(w.record(card(1001)).await.as_ref(), Some(r));
    assert!(w.in_progress().await.is_empty(), "untracked when done");
    assert_eq!(
        w.store.enrolled_due(i64::MAX, 100).await.unwrap(),
        [card(1001)],
        "due for the lifecycle check"
    );
    let key = w.key_of(&cmd).unwrap();
    assert_eq!(key.phase, Phase::Done);
    assert_eq!(key.src_correlation_id, sent.src_correlation_id);
    assert_eq!(
        key.outcome,
        Some(StoredOutcome::Success {
            enrollment: r.clone()
        })
    );
    // The card lock is free again.
    assert!(w.thief_locks(1001).await);
}

#[tokio::test]
async fn a_callers_src_correlation_id_is_sent_as_given() {
    let w = world();
    let mut cmd = command("k1", 1002);
    cmd.src_correlation_id = Some("D03D5F0D-4AC1-46DE-946A-82AD388A30E9".into());
    let done = w.app.enroll(cmd, None).await.unwrap();
    assert_eq!(
        w.mc.calls().correlations(),
        ["D03D5F0D-4AC1-46DE-946A-82AD388A30E9"]
    );
    assert_eq!(
        done.record.src_correlation_id.as_deref(),
        Some("D03D5F0D-4AC1-46DE-946A-82AD388A30E9")
    );
}

#[tokio::test]
async fn a_named_program_is_searched_enrolled_and_recorded() {
    let w = world();
    let mut cmd = command("k1", 1003);
    cmd.program = "premium".into();
    let done = w.app.enroll(cmd, None).await.unwrap();
    let calls = w.mc.calls();
    assert_eq!(calls.searches[0].program, "premium");
    assert_eq!(calls.enrolls[0].program, "premium");
    assert_eq!(done.record.program, "premium");
}

#[tokio::test]
async fn a_program_that_is_no_longer_configured_is_internal_and_calls_nothing() {
    let w = world();
    let mut cmd = command("k1", 1004);
    cmd.program = "retired".into();
    let e = w.app.enroll(cmd.clone(), None).await.unwrap_err();
    assert!(
        matches!(e, AppError::Internal(ref m) if m.contains("retired")),
        "{e:?}"
    );
    assert_eq!(w.mc.calls().counts(), (0, 0, 0));
    assert!(w.record(card(1004)).await.is_none());
    // Terminal: the key keeps the answer.
    let again = w.app.enroll(cmd, None).await.unwrap_err();
    assert_eq!(reason(&again), "INTERNAL");
    assert!(matches!(again, AppError::Replayed(_)));
}

// --- Replays and reuse --------------------------------------------------------------------------

#[tokio::test]
async fn a_stored_success_is_replayed_without_calling_mastercard() {
    let w = world();
    let cmd = command("k1", 1101);
    let first = w.app.enroll(cmd.clone(), None).await.unwrap();
    let again = w.app.enroll(cmd, None).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.record, first.record);
    assert_eq!(w.mc.calls().counts(), (1, 1, 0));
}

#[tokio::test]
async fn a_stored_failure_is_replayed_as_it_was_and_says_so() {
    let w = world();
    let cmd = command("k1", 1102);
    w.mc.enroll(Err(UpstreamFailure::Declined {
        reason: "CARD_BLOCKED".into(),
        context: context("enroll"),
    }));
    let first = w.app.enroll(cmd.clone(), None).await.unwrap_err();
    assert_eq!(reason(&first), "CARD_NOT_ELIGIBLE");

    let again = w.app.enroll(cmd, None).await.unwrap_err();
    let AppError::Replayed(StoredOutcome::Failure { .. }) = &again else {
        panic!("a replayed failure: {again:?}")
    };
    let (p, q) = (first.parts(), again.parts());
    assert_eq!(q.reason, "CARD_NOT_ELIGIBLE");
    assert_eq!(q.message, p.message);
    assert_eq!(q.metadata["replayed"], "true");
    assert_eq!(q.metadata["declineReason"], "CARD_BLOCKED");
    let mut without = q.metadata.clone();
    without.remove("replayed");
    assert_eq!(without, p.metadata, "the stored metadata, replayed");
    assert_eq!(q.retry_after, None);
    assert!(!again.is_transient());
    assert_eq!(w.mc.calls().counts(), (1, 1, 0), "nothing called on replay");
}

#[tokio::test]
async fn the_same_key_for_a_different_request_is_refused_as_reused() {
    let w = world();
    let cmd = command("k1", 1103);
    w.app.enroll(cmd.clone(), None).await.unwrap();

    let mut other_name = cmd.clone();
    other_name.consumer.first_name = Some("Janet".into());
    let mut other_card = cmd.clone();
    other_card.card_contract_id = card(1104);
    let mut other_program = cmd.clone();
    other_program.program = "premium".into();
    let mut other_correlation = cmd.clone();
    other_correlation.src_correlation_id = Some("corr-other".into());
    for changed in [other_name, other_card, other_program, other_correlation] {
        let e = w.app.enroll(changed.clone(), None).await.unwrap_err();
        let AppError::IdempotencyKeyReused { card: c, key } = &e else {
            panic!("reused: {e:?}")
        };
        assert_eq!(*c, changed.card_contract_id, "this request's card");
        assert_eq!(key, "k1");
        let p = e.parts();
        assert_eq!(p.reason, "IDEMPOTENCY_KEY_REUSED");
        assert_eq!(
            p.metadata["cardContractId"],
            changed.card_contract_id.to_string()
        );
        assert_eq!(p.metadata["idempotencyKey"], "k1");
    }
    assert_eq!(w.mc.calls().counts(), (1, 1, 0));
}

#[tokio::test]
async fn requests_that_differ_only_before_normalisation_are_the_same_request() {
    let w = world();
    let cmd = command("k1", 1105);
    let first = w.app.enroll(cmd.clone(), None).await.unwrap();

    let mut same = cmd.clone();
    same.program = DEFAULT_PROGRAM.into();
    same.consumer.email = Some("Jane.Doe@EXAMPLE.com".into());
    let again = w.app.enroll(same, None).await.unwrap();
    assert!(again.replayed, "not IDEMPOTENCY_KEY_REUSED");
    assert_eq!(again.record, first.record);
    assert_eq!(w.mc.calls().counts(), (1, 1, 0));
}

#[tokio::test]
async fn keys_are_scoped_per_caller() {
    let w = world();
    w.app.enroll(command("k1", 1106), None).await.unwrap();
    let mut theirs = command("k1", 1107);
    theirs.caller = "spiffe://bank.example/ns/other/sa/app".into();
    let done = w.app.enroll(theirs, None).await.unwrap();
    assert!(!done.replayed);
    assert_eq!(done.record.card_contract_id, card(1107));
    assert_eq!(w.mc.calls().counts(), (2, 2, 0));
}

// --- Concurrency: the lease and the card lock ---------------------------------------------------

#[tokio::test]
async fn a_key_whose_call_is_running_is_request_in_progress() {
    let w = world();
    let cmd = command("k1", 1201);
    let gate = w.mc.gated_enroll(Ok(enrolled_card()));
    let running = tokio::spawn({
        let (app, cmd) = (w.app.clone(), cmd.clone());
        async move { app.enroll(cmd, None).await }
    });
    gate.entered().await;

    let e = w.app.enroll(cmd.clone(), None).await.unwrap_err();
    let AppError::RequestInFlight { retry_after } = e else {
        panic!("in flight: {e:?}")
    };
    assert!(
        (Duration::from_millis(50)..=Duration::from_secs(5)).contains(&retry_after),
        "{retry_after:?}"
    );
    assert_eq!(reason(&e), "REQUEST_IN_PROGRESS");
    assert!(e.is_transient());

    gate.open();
    let first = running.await.unwrap().unwrap();
    assert!(!first.replayed);
    let third = w.app.enroll(cmd, None).await.unwrap();
    assert!(third.replayed);
    assert_eq!(w.mc.calls().counts(), (1, 1, 0));
}

#[tokio::test]
async fn a_live_lease_of_another_process_is_request_in_progress_capped_at_five_seconds() {
    let w = world();
    let cmd = command("k1", 1202);
    w.seed_key(&cmd, Phase::EnrollSent, "corr-live", now_ms() + 60_000)
        .await;
    let e = w.app.enroll(cmd, None).await.unwrap_err();
    assert!(
        matches!(e, AppError::RequestInFlight { retry_after } if retry_after == Duration::from_secs(5)),
        "{e:?}"
    );
    assert_eq!(w.mc.calls().counts(), (0, 0, 0));
}

#[tokio::test]
async fn a_card_locked_by_another_owner_is_enrollment_in_progress_and_the_key_is_given_back() {
    let w = world();
    let cmd = command("k1", 1203);
    assert!(w.thief_locks(1203).await);

    let e = w.app.enroll(cmd.clone(), None).await.unwrap_err();
    let AppError::CardBusy {
        card: c,
        retry_after,
    } = &e
    else {
        panic!("busy: {e:?}")
    };
    assert_eq!((*c, *retry_after), (card(1203), Duration::from_secs(1)));
    let p = e.parts();
    assert_eq!(p.reason, "ENROLLMENT_IN_PROGRESS");
    assert_eq!(p.metadata["cardContractId"], "1203");
    assert_eq!(w.mc.calls().counts(), (0, 0, 0));
    assert_released(&w, &cmd, Phase::Started);

    // Once the other enrollment is over, the same key goes on at once.
    w.store.inner.unlock_card(card(1203), THIEF).await.unwrap();
    let done = w.app.enroll(cmd, None).await.unwrap();
    assert!(!done.replayed);
    assert_eq!(w.mc.calls().counts(), (1, 1, 0));
}

#[tokio::test]
async fn another_keys_running_enrollment_of_the_card_is_enrollment_in_progress() {
    let w = world();
    let gate = w.mc.gated_enroll(Ok(enrolled_card()));
    let running = tokio::spawn({
        let app = w.app.clone();
        async move { app.enroll(command("k1", 1204), None).await }
    });
    gate.entered().await;

    let e = w.app.enroll(command("k2", 1204), None).await.unwrap_err();
    assert_eq!(reason(&e), "ENROLLMENT_IN_PROGRESS");
    gate.open();
    running.await.unwrap().unwrap();
    // Now the card is enrolled (under k1): k2 is told so.
    let e = w.app.enroll(command("k2", 1204), None).await.unwrap_err();
    assert_eq!(reason(&e), "CARD_ALREADY_ENROLLED");
    assert_eq!(w.mc.calls().counts(), (1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn the_heartbeat_keeps_the_card_lock_of_a_call_longer_than_the_lease() {
    let w = world_with_lease(Duration::from_secs(3));
    let gate = w.mc.gated_enroll(Ok(enrolled_card()));
    let running = tokio::spawn({
        let app = w.app.clone();
        async move { app.enroll(command("k1", 1205), None).await }
    });
    gate.entered().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    // Without renewals the lock would be free by now.
    assert!(!w.thief_locks(1205).await);
    gate.open();
    let done = running.await.unwrap().unwrap();
    assert_eq!(done.record.state, EnrollmentState::Enrolled);
    assert!(w.store.calls(Op::RenewCard) >= 3);
}

#[tokio::test(start_paused = true)]
async fn an_attempt_that_loses_its_card_lock_stops_and_writes_nothing_more() {
    let w = world_with_lease(Duration::from_secs(3));
    let cmd = command("k1", 1206);
    let _stalled = w.mc.gated_enroll(Ok(enrolled_card()));
    // The first renewal finds the lock someone else's (the process stalled past it).
    w.store.fault(Op::RenewCard, 1, Fault::StealLock);

    let e = w.app.enroll(cmd.clone(), None).await.unwrap_err();
    assert!(matches!(e, AppError::RequestInFlight { .. }), "{e:?}");
    let record = w.record(card(1206)).await.unwrap();
    assert_eq!(
        record.state,
        EnrollmentState::InProgress,
        "nothing written after"
    );
    assert_released(&w, &cmd, Phase::EnrollSent);
    // The new owner still holds the card.
    let e = w.app.enroll(cmd, None).await.unwrap_err();
    assert_eq!(reason(&e), "ENROLLMENT_IN_PROGRESS");
    assert_eq!(w.mc.calls().counts(), (1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn an_attempt_whose_key_was_taken_over_stops() {
    let w = world_with_lease(Duration::from_secs(3));
    let _stalled = w.mc.gated_enroll(Ok(enrolled_card()));
    // advance(EnrollSent), then the heartbeat's renewal: refused.
    w.store.fault(Op::IdempotencyUpdate, 2, Fault::Refused);
    let e = w.app.enroll(command("k1", 1207), None).await.unwrap_err();
    assert!(matches!(e, AppError::RequestInFlight { .. }), "{e:?}");
    assert_eq!(
        w.record(card(1207)).await.unwrap().state,
        EnrollmentState::InProgress
    );
}

#[tokio::test]
async fn a_lost_lease_before_the_phase_enroll_sent_is_saved_stops_before_enrolling() {
    let w = world();
    // The first update of the key after the search: advance(EnrollSent).
    w.store.fault(Op::IdempotencyUpdate, 1, Fault::Refused);
    let e = w.app.enroll(command("k1", 1208), None).await.unwrap_err();
    assert!(matches!(e, AppError::RequestInFlight { .. }), "{e:?}");
    assert_eq!(w.mc.calls().counts(), (1, 0, 0), "no POST /cards");
    // The IN_PROGRESS record written beside it keeps its note: the reconciler finishes it if
    // the attempt that took the key over never does.
    assert_eq!(
        w.record(card(1208)).await.unwrap().state,
        EnrollmentState::InProgress
    );
    assert_eq!(w.in_progress().await, [card(1208)]);
}

#[tokio::test]
async fn a_fenced_write_refused_after_enrolling_leaves_the_record_to_the_new_owner() {
    let w = world();
    let cmd = command("k1", 1209);
    // 1: IN_PROGRESS, 2: ENROLLED — the lock is taken just before the second.
    w.store.fault(Op::PutFenced, 2, Fault::StealLock);
    let e = w.app.enroll(cmd.clone(), None).await.unwrap_err();
    assert!(matches!(e, AppError::RequestInFlight { .. }), "{e:?}");
    assert_eq!(
        w.record(card(1209)).await.unwrap().state,
        EnrollmentState::InProgress,
        "not written over the new owner"
    );
    assert_released(&w, &cmd, Phase::EnrollSent);
}

// --- Already enrolled ---------------------------------------------------------------------------

#[tokio::test]
async fn a_card_enrolled_under_another_key_is_card_already_enrolled_for_good() {
    let w = world();
    let first = w.app.enroll(command("k1", 1301), None).await.unwrap();
    let cmd = command("k2", 1301);
    let e = w.app.enroll(cmd.clone(), None).await.unwrap_err();
    let AppError::CardAlreadyEnrolled(record) = &e else {
        panic!("already enrolled: {e:?}")
    };
    assert_eq!(**record, first.record);
    let p = e.parts();
    assert_eq!(p.reason, "CARD_ALREADY_ENROLLED");
    assert_eq!(p.enrollment.as_ref(), Some(&first.record));
    assert_eq!(p.metadata["cardContractId"], "1301");

    // Terminal: replayed, with the record.
    let again = w.app.enroll(cmd, None).await.unwrap_err();
    assert!(matches!(again, AppError::Replayed(_)), "{again:?}");
    let q = again.parts();
    assert_eq!(q.reason, "CARD_ALREADY_ENROLLED");
    assert_eq!(q.enrollment.as_ref(), Some(&first.record));
    assert_eq!(q.metadata["replayed"], "true");
    assert_eq!(w.mc.calls().counts(), (1, 1, 0));
}

#[tokio::test]
async fn our_own_earlier_attempts_enrolled_record_is_our_success() {
    let w = world();
    let cmd = command("k1", 1302);
    // The attempt wrote ENROLLED and stopped before it stored the answer of its key.
    w.seed_crashed_key(&cmd, Phase::EnrollSent, "corr-1302")
        .await;
    let mut enrolled = in_progress(1302, "corr-1302");
    enrolled.state = EnrollmentState::Enrolled;
    enrolled.masked_card = Some(masked_card());
    let stored = w.seed_record(&enrolled).await;

    let done = w.app.enroll(cmd.clone(), None).await.unwrap();
    assert!(!done.replayed);
    assert_eq!(done.record, stored);
    assert_eq!(w.mc.calls().counts(), (0, 0, 0));
    assert_eq!(w.key_of(&cmd).unwrap().phase, Phase::Done);
    assert!(w.app.enroll(cmd, None).await.unwrap().replayed);
}

// --- Resume per phase ---------------------------------------------------------------------------

#[tokio::test]
async fn a_key_stopped_after_it_started_resumes_with_its_correlation() {
    let w = world();
    let cmd = command("k1", 1401);
    w.seed_crashed_key(&cmd, Phase::Started, "corr-1401").await;
    let done = w.app.enroll(cmd.clone(), None).await.unwrap();
    assert!(!done.replayed);
    assert_eq!(
        w.mc.calls().counts(),
        (1, 1, 0),
        "no token list before a send"
    );
    assert_eq!(w.mc.calls().correlations(), ["corr-1401"]);
    assert_eq!(done.record.src_correlation_id.as_deref(), Some("corr-1401"));
    assert_ne!(w.key_of(&cmd).unwrap().owner, CRASHED, "taken over");
}

#[tokio::test]
async fn a_key_stopped_after_the_search_searches_again_and_enrolls_once() {
    let w = world();
    let cmd = command("k1", 1402);
    // The phase an earlier version wrote after the search (no longer written): resumed as a key
    // that is only started.
    w.seed_crashed_key(&cmd, Phase::Searched, "corr-1402").await;
    let done = w.app.enroll(cmd, None).await.unwrap();
    assert_eq!(w.mc.calls().counts(), (1, 1, 0));
    assert_eq!(w.mc.calls().correlations(), ["corr-1402"]);
    assert_eq!(done.record.state, EnrollmentState::Enrolled);
}

#[tokio::test]
async fn a_key_stopped_after_sending_finishes_from_the_token_list_without_a_second_enroll() {
    let w = world();
    let cmd = command("k1", 1403);
    w.seed_crashed_key(&cmd, Phase::EnrollSent, "corr-1403")
        .await;
    w.seed_record(&in_progress(1403, "corr-1403")).await;
    w.mc.tokens(Ok(observed(vec![
        wallet_token("DWSPKOTHER"),
        c2p_token("DM4MMC1403", TokenStatus::Active, "2030-01-01T00:00:00Z"),
    ])));

    let done = w.app.enroll(cmd.clone(), None).await.unwrap();
    assert!(!done.replayed);
    let r = &done.record;
    assert_eq!(r.state, EnrollmentState::Enrolled);
    assert_eq!(r.src_correlation_id.as_deref(), Some("corr-1403"));
    assert_eq!(
        w.store.enrolled_due(i64::MAX, 100).await.unwrap(),
        [card(1403)],
        "due for the lifecycle check"
    );
    let token = r.token.as_ref().unwrap();
    assert_eq!(token.token_unique_reference, "DM4MMC1403");
    assert_eq!(token.status, Some(TokenStatus::Active));
    assert_eq!(
        w.mc.calls().counts(),
        (0, 0, 1),
        "the token list first, only"
    );
    assert_eq!(w.record(card(1403)).await.as_ref(), Some(r));
    assert_eq!(w.key_of(&cmd).unwrap().phase, Phase::Done);
}

#[tokio::test]
async fn a_key_stopped_after_sending_without_a_token_sends_again_with_the_same_correlation() {
    let w = world();
    let cmd = command("k1", 1404);
    w.seed_crashed_key(&cmd, Phase::EnrollSent, "corr-1404")
        .await;
    w.seed_record(&in_progress(1404, "corr-1404")).await;
    w.mc.tokens(Ok(observed(vec![wallet_token("DWSPKOTHER")])));

    let done = w.app.enroll(cmd, None).await.unwrap();
    assert_eq!(done.record.state, EnrollmentState::Enrolled);
    assert_eq!(w.mc.calls().counts(), (1, 1, 1));
    assert_eq!(w.mc.calls().correlations(), ["corr-1404"]);
    assert_eq!(done.record.src_correlation_id.as_deref(), Some("corr-1404"));
    assert!(w.in_progress().await.is_empty());
}

/// The record IN_PROGRESS and the phase "enroll sent" are written together: a crash may leave
/// the phase without the record. Nothing was sent then; the resumed call asks the token list,
/// then sends once, with the key's correlation id.
#[tokio::test]
async fn a_key_stopped_with_the_phase_sent_but_no_record_asks_the_token_list_and_sends_once() {
    let w = world();
    let cmd = command("k1", 1406);
    w.seed_crashed_key(&cmd, Phase::EnrollSent, "corr-1406")
        .await;
    w.mc.tokens(Ok(observed(vec![wallet_token("DWSPKOTHER")])));

    let done = w.app.enroll(cmd.clone(), None).await.unwrap();
    assert_eq!(done.record.state, EnrollmentState::Enrolled);
    assert_eq!(w.mc.calls().counts(), (1, 1, 1));
    assert_eq!(w.mc.calls().correlations(), ["corr-1406"]);
    assert_eq!(done.record.src_correlation_id.as_deref(), Some("corr-1406"));
    assert_eq!(w.key_of(&cmd).unwrap().phase, Phase::Done);
    assert!(w.in_progress().await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_crashed_attempts_card_lock_runs_out_and_its_key_resumes() {
    let w = world();
    let cmd = command("k1", 1405);
    w.seed_crashed_key(&cmd, Phase::EnrollSent, "corr-1405")
        .await;
    w.seed_record(&in_progress(1405, "corr-1405")).await;
    assert!(
        w.store
            .inner
            .lock_card(card(1405), CRASHED, Duration::from_secs(15))
            .await
            .unwrap()
    );
    let e = w.app.enroll(cmd.clone(), None).await.unwrap_err();
    assert_eq!(reason(&e), "ENROLLMENT_IN_PROGRESS");

    tokio::time::advance(Duration::from_secs(16)).await;
    let done = w.app.enroll(cmd, None).await.unwrap();
    assert_eq!(w.mc.calls().correlations(), ["corr-1405"]);
    assert_eq!(done.record.state, EnrollmentState::Enrolled);
}

// --- Another key's unfinished enrollment --------------------------------------------------------

#[tokio::test]
async fn another_keys_unfinished_enrollment_is_continued_with_its_correlation() {
    let w = world();
    let (a, b) = (command("kA", 1501), command("kB", 1501));
    w.mc.enroll(Err(unavailable("enroll", 2)));
    let e = w.app.enroll(a.clone(), None).await.unwrap_err();
    assert_eq!(reason(&e), "UPSTREAM_UNAVAILABLE");
    let corr_a = w.mc.calls().correlations()[0].clone();

    let done = w.app.enroll(b.clone(), None).await.unwrap();
    assert!(!done.replayed);
    assert_eq!(
        w.mc.calls().correlations(),
        [corr_a.clone(), corr_a.clone()]
    );
    assert_eq!(
        w.mc.calls().counts(),
        (2, 2, 1),
        "asked the token list first"
    );
    assert_eq!(w.key_of(&b).unwrap().src_correlation_id, corr_a, "adopted");
    assert_eq!(done.record.src_correlation_id.as_deref(), Some(&*corr_a));

    // A's retry finds the enrollment done with its own correlation: its success.
    let a_done = w.app.enroll(a, None).await.unwrap();
    assert!(!a_done.replayed);
    assert_eq!(a_done.record, done.record);
    assert_eq!(w.mc.calls().counts(), (2, 2, 1));
}

#[tokio::test]
async fn another_keys_unfinished_enrollment_that_went_through_finishes_from_the_token_list() {
    let w = world();
    w.mc.enroll(Err(UpstreamFailure::InvalidAnswer(context("enroll"))));
    let e = w.app.enroll(command("kA", 1502), None).await.unwrap_err();
    assert_eq!(reason(&e), "UPSTREAM_INVALID_RESPONSE");

    w.mc.tokens(Ok(observed(vec![c2p_token(
        "DM4MMC1502",
        TokenStatus::Active,
        "2030-01-01T00:00:00Z",
    )])));
    let done = w.app.enroll(command("kB", 1502), None).await.unwrap();
    assert_eq!(done.record.state, EnrollmentState::Enrolled);
    assert_eq!(
        w.mc.calls().counts(),
        (1, 1, 1),
        "no second search or enroll"
    );
}

// --- Mastercard failures on the search ----------------------------------------------------------

/// Runs `cmd` with the search answering `failure` (and `deadline`): the error, after checking
/// that nothing was enrolled or written.
async fn failing_search(
    w: &World,
    cmd: &crate::app::EnrollCommand,
    failure: UpstreamFailure,
    deadline: Option<Instant>,
) -> AppError {
    w.mc.search(Err(failure));
    let e = w.app.enroll(cmd.clone(), deadline).await.unwrap_err();
    assert_eq!(w.mc.calls().counts(), (1, 0, 0));
    assert!(w.record(cmd.card_contract_id).await.is_none());
    e
}

/// The key of `cmd` keeps `e` as its answer.
async fn assert_terminal(w: &World, cmd: &crate::app::EnrollCommand, e: &AppError) {
    assert!(!e.is_transient());
    let key = w.key_of(cmd).unwrap();
    assert_eq!(key.phase, Phase::Done);
    assert_eq!(key.outcome, Some(e.to_stored()));
    let before = w.mc.calls().counts();
    let again = w.app.enroll(cmd.clone(), None).await.unwrap_err();
    assert!(matches!(again, AppError::Replayed(_)), "{again:?}");
    assert_eq!(again.parts().reason, e.parts().reason);
    assert_eq!(w.mc.calls().counts(), before);
}

/// The card is noted for the reconciler while the search runs; a search that fails takes the
/// note back (under the card lock), unless an earlier attempt's record says IN_PROGRESS: that
/// one still needs the reconciler.
#[tokio::test]
async fn a_failed_search_takes_its_note_back_but_not_an_earlier_attempts() {
    let w = world();
    let declined = || UpstreamFailure::Declined {
        reason: "CARD_BLOCKED".into(),
        context: context("search"),
    };
    let e = failing_search(&w, &command("k1", 1190), declined(), None).await;
    assert_eq!(reason(&e), "CARD_NOT_ELIGIBLE");
    assert!(w.in_progress().await.is_empty());

    let cmd = command("k2", 1191);
    w.seed_crashed_key(&cmd, Phase::Started, "corr-1191").await;
    w.seed_record(&in_progress(1191, "corr-1191")).await;
    w.store.track_in_progress(card(1191), 1).await.unwrap();
    w.mc.search(Err(declined()));
    let e = w.app.enroll(cmd, None).await.unwrap_err();
    assert_eq!(reason(&e), "CARD_NOT_ELIGIBLE");
    assert_eq!(w.in_progress().await, [card(1191)]);
}

/// A failed search takes its note back only while its attempt still holds the card lock: once
/// the lock is someone else's, the note may be theirs.
#[tokio::test]
async fn a_failed_search_leaves_the_note_when_its_lock_was_lost() {
    let w = world();
    w.mc.search(Err(unavailable("processing", 1)));
    // The lock taken by another attempt just before this one renews it to take its note back.
    w.store.fault(Op::RenewCard, 1, Fault::StealLock);
    let e = w.app.enroll(command("k1", 1193), None).await.unwrap_err();
    assert_eq!(reason(&e), "UPSTREAM_UNAVAILABLE");
    assert_eq!(w.in_progress().await, [card(1193)]);
}

/// A POST /cards that failed for good takes its note out only while the lock is still its own:
/// a FAILED record does not stop a later attempt, whose note it would otherwise take (the
/// removal was unconditional, after the fenced write).
#[tokio::test]
async fn a_failed_enrollment_leaves_the_note_when_its_lock_was_lost() {
    let w = world();
    // The lock taken by another attempt just before this one renews it to take its note out.
    w.store.fault(Op::RenewCard, 1, Fault::StealLock);
    let e = failing_enroll(
        &w,
        &command("k1", 1198),
        UpstreamFailure::Rejected(context("enroll")),
        None,
    )
    .await;
    assert_eq!(reason(&e), "UPSTREAM_REJECTED");
    assert_eq!(w.in_progress().await, [card(1198)]);
}

/// An enrollment that ended ENROLLED takes its note out without renewing the lock first; when
/// the lock turns out at its release to have been taken meanwhile (here just before the
/// removal), the note it took may have been the new holder's, and the card is noted again. It
/// was left in neither index before: the new holder's IN_PROGRESS record, had that attempt
/// stopped, in no index the reconciler reads.
#[tokio::test]
async fn an_enrollment_that_finds_its_lock_taken_at_the_release_notes_the_card_again() {
    let w = world();
    w.store.fault(Op::UntrackInProgress, 1, Fault::StealLock);
    let done = w.app.enroll(command("k1", 1207), None).await.unwrap();
    assert_eq!(done.record.state, EnrollmentState::Enrolled);
    assert_eq!(w.in_progress().await, [card(1207)]);
    // The new holder keeps its lock; the reconciler prunes the note once it is free.
    assert!(
        w.store
            .inner
            .renew_card(card(1207), THIEF, Duration::from_secs(60))
            .await
            .unwrap(),
        "the release took the new holder's lock"
    );
    w.store.inner.unlock_card(card(1207), THIEF).await.unwrap();
    // Noted at the release's time: moved back so that this pass, which takes notes older than
    // its start, sees it.
    w.store.requeue_in_progress(card(1207), 1).await.unwrap();
    let report = w.app.reconcile_once(Duration::ZERO, 100).await.unwrap();
    assert_eq!((report.checked, report.pruned), (1, 1), "{report:?}");
    assert!(w.in_progress().await.is_empty());
    assert_eq!(
        w.record(card(1207)).await.unwrap().state,
        EnrollmentState::Enrolled
    );
    assert_eq!(
        w.store.enrolled_due(i64::MAX, 10).await.unwrap(),
        [card(1207)],
        "in the ENROLLED index"
    );
}

/// A release whose unlock fails cannot tell whether the lock was still its own (the script may
/// have run): the card is noted again too, and the call still answers its enrollment.
#[tokio::test]
async fn an_enrollment_whose_release_fails_notes_the_card_again() {
    let w = world();
    w.store.fault(Op::UnlockCard, 1, Fault::Unavailable);
    let done = w.app.enroll(command("k1", 1209), None).await.unwrap();
    assert_eq!(done.record.state, EnrollmentState::Enrolled);
    assert_eq!(w.in_progress().await, [card(1209)]);
}

/// Without a lost lock the release notes nothing again (the usual path: the note out, the lock
/// released, in two round trips).
#[tokio::test]
async fn an_enrollment_that_still_holds_its_lock_at_the_release_leaves_no_note() {
    let w = world();
    w.app.enroll(command("k1", 1208), None).await.unwrap();
    assert!(w.in_progress().await.is_empty());
    assert_eq!(
        w.store.calls(Op::TrackInProgress),
        1,
        "the search's note only"
    );
}

/// An EnrollCard whose lock script ran with its answer lost gives the lock back with the key:
/// its retry resumes at once instead of meeting CARD_BUSY until the lease runs out.
#[tokio::test]
async fn an_enrollment_whose_lock_answer_was_lost_gives_the_lock_back() {
    let w = world();
    w.store.fault(Op::LockCard, 1, Fault::AnswerLost);
    let e = w.app.enroll(command("k1", 1199), None).await.unwrap_err();
    assert_eq!(reason(&e), "STORE_UNAVAILABLE");
    assert!(
        w.store
            .inner
            .lock_card(card(1199), "next-attempt", Duration::from_secs(60))
            .await
            .unwrap(),
        "the failed call still holds the card lock"
    );
}

/// A card whose reconciliation failed goes to the back of the index in one step: when that
/// step fails, the note stays where it was (a removal then a new note lost it when the second
/// failed, and the IN_PROGRESS record was in no index).
#[tokio::test]
async fn a_failed_requeue_keeps_the_note() {
    let w = world();
    w.seed_record(&in_progress(1194, "corr-1194")).await;
    w.store.track_in_progress(card(1194), 1).await.unwrap();
    w.mc.tokens(Err(unavailable("processing", 4)));
    w.store.fault(Op::TrackInProgress, 1, Fault::Unavailable);
    w.store.fault(Op::RequeueInProgress, 1, Fault::Unavailable);
    let report = w.app.reconcile_once(Duration::ZERO, 100).await.unwrap();
    assert_eq!((report.checked, report.pending), (1, 1));
    assert_eq!(w.in_progress().await, [card(1194)]);
    // Requeued when the store answers: still noted, now at the back.
    w.mc.tokens(Err(unavailable("processing", 4)));
    let report = w.app.reconcile_once(Duration::ZERO, 100).await.unwrap();
    assert_eq!(report.pending, 1);
    assert_eq!(w.in_progress().await, [card(1194)]);
    assert!(
        w.store.in_progress_before(2, 10).await.unwrap().is_empty(),
        "moved from its first time"
    );
}

/// A reconciler whose lock script ran with its answer lost gives the lock back at once: the
/// card's next EnrollCard or pass need not wait for the lease to run out.
#[tokio::test]
async fn a_reconciler_whose_lock_answer_was_lost_gives_the_lock_back() {
    let w = world();
    w.seed_record(&in_progress(1196, "corr-1196")).await;
    w.store.track_in_progress(card(1196), 1).await.unwrap();
    w.store.fault(Op::LockCard, 1, Fault::AnswerLost);
    let report = w.app.reconcile_once(Duration::ZERO, 100).await.unwrap();
    // Left for a later pass, still noted.
    assert_eq!((report.checked, report.pending), (1, 1));
    assert_eq!(w.in_progress().await, [card(1196)]);
    assert!(
        w.store
            .inner
            .lock_card(card(1196), "next-attempt", Duration::from_secs(60))
            .await
            .unwrap(),
        "the reconciler still holds the card lock"
    );
}

/// A reconciler that loses the card lock while it asks the token list stops: the ENROLLED
/// record it rebuilt was not stored, so the card keeps its note and its IN_PROGRESS record for
/// the attempt that took the lock (or the next pass). It took the record as the card's state
/// and dropped the note before.
#[tokio::test]
async fn a_reconciler_that_loses_the_lock_leaves_the_card_in_the_index() {
    let w = world();
    w.seed_record(&in_progress(1195, "corr-1195")).await;
    w.store.track_in_progress(card(1195), 1).await.unwrap();
    w.mc.tokens(Ok(observed(vec![c2p_token(
        "DM4MMC1195",
        TokenStatus::Active,
        "2030-01-01T00:00:00Z",
    )])));
    w.store.fault(Op::PutFenced, 1, Fault::StealLock);
    let report = w.app.reconcile_once(Duration::ZERO, 100).await.unwrap();
    assert_eq!((report.checked, report.enrolled, report.pending), (1, 0, 1));
    assert_eq!(w.in_progress().await, [card(1195)]);
    assert_eq!(
        w.record(card(1195)).await.unwrap().state,
        EnrollmentState::InProgress
    );
}

/// A card leaves the IN_PROGRESS index only for the ENROLLED one when its record is ENROLLED:
/// finished by the reconciler from the token list, pruned after an attempt whose ENROLLED note
/// did not land, or made ENROLLED by a status refresh.
#[tokio::test]
async fn a_card_found_enrolled_joins_the_enrolled_index() {
    let w = world();
    let token = || {
        Ok(observed(vec![c2p_token(
            "DM4MMC1196",
            TokenStatus::Active,
            "2030-01-01T00:00:00Z",
        )]))
    };
    // Finished by the reconciler.
    w.seed_record(&in_progress(1196, "corr-1196")).await;
    w.store.track_in_progress(card(1196), 1).await.unwrap();
    w.mc.tokens(token());
    let report = w.app.reconcile_once(Duration::ZERO, 100).await.unwrap();
    assert_eq!(report.enrolled, 1);
    // Pruned: ENROLLED already, its ENROLLED note missing.
    let mut enrolled = in_progress(1197, "corr-1197");
    enrolled.state = EnrollmentState::Enrolled;
    w.seed_record(&enrolled).await;
    w.store.track_in_progress(card(1197), 1).await.unwrap();
    let report = w.app.reconcile_once(Duration::ZERO, 100).await.unwrap();
    assert_eq!(report.pruned, 1);
    assert!(w.in_progress().await.is_empty());
    // Refreshed from the token list.
    w.seed_record(&in_progress(1198, "corr-1198")).await;
    w.mc.tokens(token());
    let (refreshed, _) = w
        .app
        .status(card(1198), true, &|_| true, None)
        .await
        .unwrap();
    assert_eq!(refreshed.state, EnrollmentState::Enrolled);

    let mut due = w.store.enrolled_due(i64::MAX, 100).await.unwrap();
    due.sort_by_key(|c| c.get());
    assert_eq!(due, [card(1196), card(1197), card(1198)]);
}

/// A notification that changes an IN_PROGRESS record while the reconciler asks the token list
/// does not make it write FAILED "no Click to Pay token" over a card the token list showed
/// tokenized: the card is left for the next pass, which reads it again. It wrote FAILED before.
#[tokio::test]
async fn a_record_changed_during_the_reconcilers_token_list_call_is_left_for_the_next_pass() {
    let w = std::sync::Arc::new(world());
    w.seed_record(&in_progress(1199, "corr-1199")).await;
    w.store.track_in_progress(card(1199), 1).await.unwrap();
    let token = c2p_token("DM4MMC1199", TokenStatus::Active, "2030-01-01T00:00:00Z");
    w.mc.tokens(Ok(observed(vec![token.clone()])));
    // The reconciler's reads: the card's record, the token list's base, then the fresh read
    // before its write: the notification lands just before that one.
    let before_write = w.store.pause(Op::Get, 3);
    let pass = tokio::spawn({
        let w = w.clone();
        async move { w.app.reconcile_once(Duration::ZERO, 100).await }
    });
    before_write.entered().await;
    let event = crate::domain::TokenEvent {
        notification_id: "n-tcn-1199".into(),
        event_at_ms: now_ms(),
        card_contract_id: card(1199),
        token_unique_reference: token.token_unique_reference.clone(),
        token_requestor_id: token.token_requestor_id.clone(),
        wallet_name: token.wallet_name.clone(),
        kind: crate::domain::TokenEventKind::Complete,
    };
    w.store.inner.apply_notification(&event).await.unwrap();
    before_write.open();
    let report = pass.await.unwrap().unwrap();
    assert_eq!((report.failed, report.pending), (0, 1), "{report:?}");
    assert_ne!(
        w.record(card(1199)).await.unwrap().state,
        EnrollmentState::Failed
    );
    assert_eq!(w.in_progress().await, [card(1199)]);
    // The next pass reads the record again and finishes it from the token list.
    w.mc.tokens(Ok(observed(vec![token])));
    let report = w.app.reconcile_once(Duration::ZERO, 100).await.unwrap();
    assert_eq!(report.enrolled, 1, "{report:?}");
    assert_eq!(
        w.record(card(1199)).await.unwrap().state,
        EnrollmentState::Enrolled
    );
    assert!(w.in_progress().await.is_empty());
}

/// The lifecycle check drops a card it found not ENROLLED from the ENROLLED index only while
/// the card is still due: a new enrollment that noted it again (due an interval later) between
/// the check's read and its removal keeps its note. It was removed before.
#[tokio::test]
async fn the_lifecycle_check_keeps_a_note_written_after_its_read() {
    let w = std::sync::Arc::new(world());
    let mut removed = in_progress(1189, "corr-1189");
    removed.state = EnrollmentState::Removed;
    w.seed_record(&removed).await;
    w.store.track_enrolled(card(1189), 1).await.unwrap();
    // The check's read of the record (its first `get`): a new enrollment notes the card then.
    let at_read = w.store.pause(Op::Get, 1);
    let pass = tokio::spawn({
        let w = w.clone();
        async move { w.app.reconcile_once(Duration::from_secs(3600), 100).await }
    });
    at_read.entered().await;
    let later = now_ms() + 3_600_000;
    w.store.track_enrolled(card(1189), later).await.unwrap();
    at_read.open();
    pass.await.unwrap().unwrap();
    assert_eq!(
        w.store.enrolled_due(i64::MAX, 10).await.unwrap(),
        [card(1189)]
    );
    assert!(w.store.enrolled_due(later, 10).await.unwrap().is_empty());
}

/// The reconciler prunes a note only under the card lock: a note left from before (its time
/// kept, as notes keep the first) may be the running attempt's, which holds the lock from before
/// its search until it settles.
#[tokio::test]
async fn the_reconciler_leaves_the_note_of_a_card_an_attempt_holds() {
    let w = world();
    w.store.track_in_progress(card(1192), 1).await.unwrap();
    assert!(w.thief_locks(1192).await);
    let report = w.app.reconcile_once(Duration::ZERO, 100).await.unwrap();
    assert_eq!((report.checked, report.pending, report.pruned), (1, 1, 0));
    assert_eq!(w.in_progress().await, [card(1192)]);

    w.store.inner.unlock_card(card(1192), THIEF).await.unwrap();
    let report = w.app.reconcile_once(Duration::ZERO, 100).await.unwrap();
    assert_eq!((report.checked, report.pruned), (1, 1));
    assert!(w.in_progress().await.is_empty());
}

/// The reconciler takes a note out only while the card lock is still its own (renewed first):
/// once it ran out, an attempt may hold the card and keep the note as its own. Each of its
/// three removals (a prune, a card found ENROLLED, one written FAILED) leaves the note when the
/// lock was taken just before; they removed it unconditionally before.
#[tokio::test]
async fn the_reconciler_leaves_the_note_when_its_lock_was_lost_before_the_removal() {
    let w = world();
    // A prune: the record is final already.
    let mut failed = in_progress(1181, "corr-1181");
    failed.state = EnrollmentState::Failed;
    w.seed_record(&failed).await;
    // Found ENROLLED in the token list.
    w.seed_record(&in_progress(1182, "corr-1182")).await;
    // Written FAILED: no Click to Pay token.
    w.seed_record(&in_progress(1183, "corr-1183")).await;
    for (n, id) in [(1, 1181), (2, 1182), (3, 1183)] {
        w.store.track_in_progress(card(id), n).await.unwrap();
    }
    w.mc.tokens(Ok(observed(vec![c2p_token(
        "DM4MMC1182",
        TokenStatus::Active,
        "2030-01-01T00:00:00Z",
    )])));
    w.mc.tokens(Ok(observed(vec![])));
    for n in 1..=3 {
        w.store.fault(Op::RenewCard, n, Fault::StealLock);
    }
    let report = w.app.reconcile_once(Duration::ZERO, 100).await.unwrap();
    assert_eq!((report.checked, report.pending), (3, 3), "{report:?}");
    assert_eq!(w.in_progress().await, [card(1181), card(1182), card(1183)]);
}

#[tokio::test]
async fn search_contract_not_found_is_card_contract_not_found() {
    let w = world();
    let cmd = command("k1", 1601);
    let e = failing_search(
        &w,
        &cmd,
        UpstreamFailure::ContractNotFound(context("processing")),
        None,
    )
    .await;
    assert!(
        matches!(e, AppError::CardContractNotFound { ref upstream, .. } if *upstream == context("processing"))
    );
    let p = e.parts();
    assert_eq!(p.reason, "CARD_CONTRACT_NOT_FOUND");
    assert_eq!(p.metadata["step"], "search");
    assert_eq!(p.metadata["api"], "processing");
    assert_eq!(p.metadata["upstreamReason"], "SOME_REASON");
    assert_eq!(p.metadata["mastercardCorrelationId"], "mc-correlation-1");
    assert_terminal(&w, &cmd, &e).await;
}

#[tokio::test]
async fn search_rejected_is_upstream_rejected() {
    let w = world();
    let cmd = command("k1", 1602);
    let e = failing_search(
        &w,
        &cmd,
        UpstreamFailure::Rejected(context("processing")),
        None,
    )
    .await;
    assert!(
        matches!(e, AppError::UpstreamRejected(Step::Search, _)),
        "{e:?}"
    );
    assert_eq!(e.parts().metadata["step"], "search");
    assert_terminal(&w, &cmd, &e).await;
}

#[tokio::test]
async fn search_invalid_answer_is_terminal() {
    let w = world();
    let cmd = command("k1", 1603);
    let e = failing_search(
        &w,
        &cmd,
        UpstreamFailure::InvalidAnswer(context("processing")),
        None,
    )
    .await;
    assert!(
        matches!(e, AppError::UpstreamInvalid(Step::Search, _)),
        "{e:?}"
    );
    assert_eq!(reason(&e), "UPSTREAM_INVALID_RESPONSE");
    assert_terminal(&w, &cmd, &e).await;
}

#[tokio::test]
async fn search_request_not_built_is_internal() {
    let w = world();
    let cmd = command("k1", 1604);
    let e = failing_search(
        &w,
        &cmd,
        UpstreamFailure::RequestNotBuilt(context("processing")),
        None,
    )
    .await;
    assert!(
        matches!(e, AppError::Internal(ref m) if m == "processing said no"),
        "{e:?}"
    );
    assert_terminal(&w, &cmd, &e).await;
}

#[tokio::test]
async fn search_unavailable_gives_the_key_back_and_a_retry_resumes() {
    let w = world();
    let cmd = command("k1", 1605);
    let e = failing_search(&w, &cmd, unavailable("processing", 7), None).await;
    let AppError::UpstreamUnavailable {
        step, retry_after, ..
    } = &e
    else {
        panic!("unavailable: {e:?}")
    };
    assert_eq!(
        (*step, *retry_after),
        (Step::Search, Duration::from_secs(7))
    );
    assert_eq!(e.parts().retry_after, Some(Duration::from_secs(7)));
    assert!(e.is_transient());
    assert_released(&w, &cmd, Phase::Started);

    let done = w.app.enroll(cmd, None).await.unwrap();
    assert!(!done.replayed);
    assert_eq!(w.mc.calls().counts(), (2, 1, 0));
}

#[tokio::test]
async fn search_unavailable_past_the_deadline_is_deadline_exceeded() {
    let w = world();
    let cmd = command("k1", 1606);
    let e = failing_search(&w, &cmd, unavailable("processing", 7), past()).await;
    assert!(
        matches!(e, AppError::DeadlineExceeded(Step::Search)),
        "{e:?}"
    );
    assert_eq!(e.parts().metadata["step"], "search");
    assert!(e.is_transient());
    assert_released(&w, &cmd, Phase::Started);
}

// --- Mastercard failures on the enrollment ------------------------------------------------------

/// Runs `cmd` with the enroll answering `failure`.
async fn failing_enroll(
    w: &World,
    cmd: &crate::app::EnrollCommand,
    failure: UpstreamFailure,
    deadline: Option<Instant>,
) -> AppError {
    w.mc.enroll(Err(failure));
    let e = w.app.enroll(cmd.clone(), deadline).await.unwrap_err();
    assert_eq!(w.mc.calls().counts(), (1, 1, 0));
    e
}

/// The card's record is FAILED with `e`'s reason and metadata, not retryable.
async fn assert_failed_record(w: &World, cmd: &crate::app::EnrollCommand, e: &AppError) {
    let record = w.record(cmd.card_contract_id).await.unwrap();
    assert_eq!(record.state, EnrollmentState::Failed);
    let failure = record.failure.as_ref().unwrap();
    let p = e.parts();
    assert_eq!(failure.reason, p.reason);
    assert_eq!(failure.metadata, p.metadata);
    assert!(!failure.retryable);
    assert_eq!(
        record.src_correlation_id.as_deref(),
        Some(&*w.mc.calls().correlations()[0])
    );
    // A final record: its IN_PROGRESS note went with it, not left for the reconciler.
    assert!(
        w.in_progress().await.is_empty(),
        "{:?}",
        w.in_progress().await
    );
}

#[tokio::test]
async fn enroll_declined_is_card_not_eligible_with_a_failed_record() {
    let w = world();
    let cmd = command("k1", 1701);
    let e = failing_enroll(
        &w,
        &cmd,
        UpstreamFailure::Declined {
            reason: "CARD_BLOCKED".into(),
            context: context("enroll"),
        },
        None,
    )
    .await;
    let AppError::CardNotEligible { reason: why, .. } = &e else {
        panic!("not eligible: {e:?}")
    };
    assert_eq!(why, "CARD_BLOCKED");
    let p = e.parts();
    assert_eq!(p.reason, "CARD_NOT_ELIGIBLE");
    assert_eq!(p.metadata["declineReason"], "CARD_BLOCKED");
    assert_eq!(p.metadata["step"], "enroll");
    assert_failed_record(&w, &cmd, &e).await;
    assert_eq!(
        w.record(card(1701))
            .await
            .unwrap()
            .failure
            .unwrap()
            .metadata["declineReason"],
        "CARD_BLOCKED"
    );
    assert_terminal(&w, &cmd, &e).await;
}

#[tokio::test]
async fn enroll_rejected_is_upstream_rejected_with_a_failed_record() {
    let w = world();
    let cmd = command("k1", 1702);
    let e = failing_enroll(&w, &cmd, UpstreamFailure::Rejected(context("enroll")), None).await;
    assert!(
        matches!(e, AppError::UpstreamRejected(Step::Enroll, _)),
        "{e:?}"
    );
    assert_eq!(e.parts().metadata["step"], "enroll");
    assert_failed_record(&w, &cmd, &e).await;
    assert_terminal(&w, &cmd, &e).await;
}

#[tokio::test]
async fn enroll_contract_not_found_is_card_contract_not_found_with_a_failed_record() {
    let w = world();
    let cmd = command("k1", 1703);
    let e = failing_enroll(
        &w,
        &cmd,
        UpstreamFailure::ContractNotFound(context("enroll")),
        None,
    )
    .await;
    assert!(matches!(e, AppError::CardContractNotFound { .. }), "{e:?}");
    assert_failed_record(&w, &cmd, &e).await;
    assert_terminal(&w, &cmd, &e).await;
}

#[tokio::test]
async fn enroll_request_not_built_is_internal_with_a_failed_record() {
    let w = world();
    let cmd = command("k1", 1704);
    let e = failing_enroll(
        &w,
        &cmd,
        UpstreamFailure::RequestNotBuilt(context("enroll")),
        None,
    )
    .await;
    assert!(matches!(e, AppError::Internal(_)), "{e:?}");
    assert_failed_record(&w, &cmd, &e).await;
    assert_terminal(&w, &cmd, &e).await;
}

#[tokio::test]
async fn enroll_unavailable_keeps_the_enrollment_in_progress_and_a_retry_resends_it() {
    let w = world();
    let cmd = command("k1", 1705);
    let e = failing_enroll(&w, &cmd, unavailable("enroll", 3), None).await;
    assert!(
        matches!(e, AppError::UpstreamUnavailable { step: Step::Enroll, retry_after, .. } if retry_after == Duration::from_secs(3)),
        "{e:?}"
    );
    assert_eq!(e.parts().retry_after, Some(Duration::from_secs(3)));
    assert_eq!(
        w.record(card(1705)).await.unwrap().state,
        EnrollmentState::InProgress
    );
    assert_eq!(w.in_progress().await, [card(1705)], "for the reconciler");
    assert_released(&w, &cmd, Phase::EnrollSent);

    let done = w.app.enroll(cmd, None).await.unwrap();
    assert_eq!(done.record.state, EnrollmentState::Enrolled);
    assert_eq!(
        w.mc.calls().counts(),
        (2, 2, 1),
        "token list, search, enroll"
    );
    let correlations = w.mc.calls().correlations();
    assert_eq!(correlations[0], correlations[1]);
    assert!(w.in_progress().await.is_empty());
}

#[tokio::test]
async fn enroll_unavailable_past_the_deadline_is_deadline_exceeded_and_resumable() {
    let w = world();
    let cmd = command("k1", 1706);
    let e = failing_enroll(&w, &cmd, unavailable("enroll", 3), past()).await;
    assert!(
        matches!(e, AppError::DeadlineExceeded(Step::Enroll)),
        "{e:?}"
    );
    assert_eq!(e.parts().metadata["step"], "enroll");
    assert_eq!(
        w.record(card(1706)).await.unwrap().state,
        EnrollmentState::InProgress
    );
    assert_released(&w, &cmd, Phase::EnrollSent);
}

#[tokio::test]
async fn enroll_invalid_answer_is_transient_and_a_retry_finishes_from_the_token_list() {
    let w = world();
    let cmd = command("k1", 1707);
    let e = failing_enroll(
        &w,
        &cmd,
        UpstreamFailure::InvalidAnswer(context("enroll")),
        None,
    )
    .await;
    assert!(
        matches!(e, AppError::UpstreamInvalid(Step::Enroll, _)),
        "{e:?}"
    );
    assert!(e.is_transient(), "may hide a done enrollment");
    assert_eq!(
        w.record(card(1707)).await.unwrap().state,
        EnrollmentState::InProgress,
        "no FAILED record"
    );
    assert_released(&w, &cmd, Phase::EnrollSent);

    w.mc.tokens(Ok(observed(vec![c2p_token(
        "DM4MMC1707",
        TokenStatus::Active,
        "2030-01-01T00:00:00Z",
    )])));
    let done = w.app.enroll(cmd, None).await.unwrap();
    assert_eq!(done.record.state, EnrollmentState::Enrolled);
    assert_eq!(w.mc.calls().counts(), (1, 1, 1), "no second enroll");
}

#[tokio::test]
async fn a_token_list_failure_on_resume_is_transient_and_sends_nothing() {
    let w = world();
    let cmd = command("k1", 1708);
    w.seed_crashed_key(&cmd, Phase::EnrollSent, "corr-1708")
        .await;
    w.mc.tokens(Err(unavailable("processing", 4)));
    let e = w.app.enroll(cmd.clone(), None).await.unwrap_err();
    assert!(
        matches!(
            e,
            AppError::UpstreamUnavailable {
                step: Step::Tokens,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.parts().metadata["step"], "tokens");
    assert_eq!(w.mc.calls().counts(), (0, 0, 1));
    assert_released(&w, &cmd, Phase::EnrollSent);
}

/// A token list that refuses or answers what cannot be read, on resume, leaves the outcome
/// unknown: the key resumes (it was stored as the key's final answer and replayed, though the
/// POST /cards it decides on may have gone through), and finishes from the token list once it
/// answers.
#[tokio::test]
async fn a_token_list_refusal_on_resume_is_transient_and_the_key_finishes_later() {
    for (i, failure) in [
        UpstreamFailure::Rejected(context("processing")),
        UpstreamFailure::InvalidAnswer(context("processing")),
    ]
    .into_iter()
    .enumerate()
    {
        let w = world();
        let id = 1709 + i as i64;
        let cmd = command("k1", id);
        w.seed_crashed_key(&cmd, Phase::EnrollSent, &format!("corr-{id}"))
            .await;
        w.mc.tokens(Err(failure));
        let e = w.app.enroll(cmd.clone(), None).await.unwrap_err();
        assert!(
            matches!(
                e,
                AppError::UpstreamUnavailable {
                    step: Step::Tokens,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.is_transient());
        assert_released(&w, &cmd, Phase::EnrollSent);
        w.mc.tokens(Ok(observed(vec![c2p_token(
            &format!("DM4MMC{id}"),
            TokenStatus::Active,
            "2030-01-01T00:00:00Z",
        )])));
        let done = w.app.enroll(cmd, None).await.unwrap();
        assert_eq!(done.record.state, EnrollmentState::Enrolled);
        assert!(!done.replayed);
        // No record of the card: the token list's token is not this key's, which then
        // enrolls (as a_key_stopped_with_the_phase_sent_but_no_record_... does).
        assert_eq!(w.mc.calls().counts(), (1, 1, 2));
    }
}

// --- The store ----------------------------------------------------------------------------------

#[tokio::test]
async fn a_store_down_at_the_start_is_store_unavailable() {
    let w = world();
    w.store.fault(Op::IdempotencyBegin, 1, Fault::Unavailable);
    let e = w.app.enroll(command("k1", 1801), None).await.unwrap_err();
    assert!(matches!(e, AppError::StoreUnavailable(_)), "{e:?}");
    let p = e.parts();
    assert_eq!(p.reason, "STORE_UNAVAILABLE");
    assert_eq!(p.retry_after, Some(Duration::from_secs(1)));
    assert!(e.is_transient());
    assert_eq!(w.mc.calls().counts(), (0, 0, 0));
}

#[tokio::test]
async fn a_store_error_mid_flow_gives_the_key_and_the_card_back() {
    let w = world();
    let cmd = command("k1", 1802);
    w.store.fault(Op::Get, 1, Fault::Unavailable);
    let e = w.app.enroll(cmd.clone(), None).await.unwrap_err();
    assert_eq!(reason(&e), "STORE_UNAVAILABLE");
    assert_released(&w, &cmd, Phase::Started);
    let done = w.app.enroll(cmd, None).await.unwrap();
    assert_eq!(done.record.state, EnrollmentState::Enrolled);
    assert_eq!(w.mc.calls().counts(), (1, 1, 0));
}

#[tokio::test]
async fn a_store_error_after_the_search_resumes_from_the_search() {
    let w = world();
    let cmd = command("k1", 1803);
    // The note for the reconciler, written during the search: the call stops after the search,
    // before anything else is written, and gives the key back (a retry searches again).
    w.store.fault(Op::TrackInProgress, 1, Fault::Unavailable);
    let e = w.app.enroll(cmd.clone(), None).await.unwrap_err();
    assert_eq!(reason(&e), "STORE_UNAVAILABLE");
    assert_released(&w, &cmd, Phase::Started);
    assert!(
        w.record(card(1803)).await.is_none(),
        "nothing sent, nothing written"
    );
    w.app.enroll(cmd, None).await.unwrap();
    assert_eq!(w.mc.calls().counts(), (2, 1, 0));
}

#[tokio::test]
async fn a_store_error_on_the_card_lock_gives_the_key_back() {
    let w = world();
    let cmd = command("k1", 1804);
    w.store.fault(Op::LockCard, 1, Fault::Unavailable);
    let e = w.app.enroll(cmd.clone(), None).await.unwrap_err();
    assert_eq!(reason(&e), "STORE_UNAVAILABLE");
    assert_released(&w, &cmd, Phase::Started);
    // A retry after the advised second goes on, rather than REQUEST_IN_PROGRESS for a lease.
    let done = w.app.enroll(cmd, None).await.unwrap();
    assert!(!done.replayed);
}

#[tokio::test]
async fn a_store_error_storing_the_answer_gives_the_key_back_with_the_answer() {
    let w = world();
    let cmd = command("k1", 1805);
    // advance(EnrollSent), finish: the second fails, the release saves it.
    w.store.fault(Op::IdempotencyUpdate, 2, Fault::Unavailable);
    let e = w.app.enroll(cmd.clone(), None).await.unwrap_err();
    assert_eq!(reason(&e), "STORE_UNAVAILABLE");
    assert!(e.is_transient());
    let enrolled = w.record(card(1805)).await.unwrap();
    assert_eq!(enrolled.state, EnrollmentState::Enrolled);
    let key = w.key_of(&cmd).unwrap();
    assert_eq!(key.lease_until_ms, 0, "not held until the lease runs out");

    // The retry (after the advised second) gets the enrollment, not REQUEST_IN_PROGRESS.
    let done = w.app.enroll(cmd, None).await.unwrap();
    assert_eq!(done.record, enrolled);
    assert_eq!(w.mc.calls().counts(), (1, 1, 0), "not sent again");
}

#[tokio::test]
async fn a_store_error_storing_a_terminal_failure_gives_the_key_back_with_the_failure() {
    let w = world();
    let cmd = command("k1", 1806);
    w.mc.enroll(Err(UpstreamFailure::Declined {
        reason: "CARD_BLOCKED".into(),
        context: context("enroll"),
    }));
    // advance(EnrollSent), finish: the second fails.
    w.store.fault(Op::IdempotencyUpdate, 2, Fault::Unavailable);
    let e = w.app.enroll(cmd.clone(), None).await.unwrap_err();
    assert_eq!(reason(&e), "STORE_UNAVAILABLE");
    assert_eq!(w.key_of(&cmd).unwrap().lease_until_ms, 0);

    let again = w.app.enroll(cmd, None).await.unwrap_err();
    assert_eq!(reason(&again), "CARD_NOT_ELIGIBLE");
    assert_eq!(w.mc.calls().counts(), (1, 1, 0));
}
