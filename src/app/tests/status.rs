//! Every branch of `GetEnrollmentStatus`.

use super::fakes::{Fault, LEASE, Op, c2p_token, card, context, observed, wallet_token, world};
use crate::app::ports::{TokenObservation, UpstreamFailure};
use crate::app::{AppError, Source, Step};
use crate::domain::{
    EnrollmentRecord, EnrollmentState, Failure, Token, TokenStatus, Version, now_ms,
};
use crate::store::EnrollmentStore as _;
use std::time::Duration;

fn record(card_id: i64, state: EnrollmentState) -> EnrollmentRecord {
    EnrollmentRecord::new(card(card_id), String::new(), state, 0)
}

fn stored_token(tur: &str, status: TokenStatus, at_ms: i64) -> Token {
    Token {
        token_unique_reference: tur.into(),
        token_requestor_id: crate::domain::CLICK_TO_PAY_TOKEN_REQUESTOR_ID.into(),
        status: Some(status),
        status_version: Some(Version {
            at_ms,
            by: "tcn-1".into(),
        }),
        decision: None,
        decision_version: None,
        superseded: None,
    }
}

#[tokio::test]
async fn a_stored_record_is_answered_from_the_store_without_asking_mastercard() {
    let w = world();
    let stored = w.seed_record(&record(2001, EnrollmentState::Failed)).await;
    let (r, source) = w
        .app
        .status(card(2001), false, &|_| true, None)
        .await
        .unwrap();
    assert_eq!((r.into_record(), source), (stored, Source::Store));
    assert_eq!(w.mc.calls().counts(), (0, 0, 0));
}

#[tokio::test]
async fn a_card_without_a_record_or_token_is_not_enrolled_and_cached() {
    let w = world();
    let (r, source) = w
        .app
        .status(card(2002), false, &|_| true, None)
        .await
        .unwrap();
    assert_eq!(source, Source::Upstream);
    assert_eq!(r.state, EnrollmentState::NotEnrolled);
    assert_eq!(r.program, "");
    assert!(r.token.is_none());
    assert_eq!(
        w.record(card(2002)).await.as_ref(),
        Some(r.record()),
        "cached"
    );
    assert_eq!(w.mc.calls().token_lists, [card(2002)]);

    let (again, source) = w
        .app
        .status(card(2002), false, &|_| true, None)
        .await
        .unwrap();
    assert_eq!((again, source), (r, Source::Store));
    assert_eq!(w.mc.calls().counts(), (0, 0, 1));
}

#[tokio::test]
async fn other_wallets_tokens_do_not_count() {
    let w = world();
    w.mc.tokens(Ok(observed(vec![
        wallet_token("DWSPK1"),
        wallet_token("DWSPK2"),
    ])));
    let (r, source) = w
        .app
        .status(card(2003), false, &|_| true, None)
        .await
        .unwrap();
    assert_eq!(
        (r.state, source),
        (EnrollmentState::NotEnrolled, Source::Upstream)
    );
}

#[tokio::test]
async fn a_card_without_a_record_but_with_a_click_to_pay_token_was_tokenized_elsewhere() {
    let w = world();
    let at = now_ms() - 5_000;
    w.mc.tokens(Ok(TokenObservation {
        tokens: vec![
            c2p_token("DM-OLD", TokenStatus::Deactivated, "2029-01-01T00:00:00Z"),
            c2p_token("DM-NEW", TokenStatus::Active, "2030-01-01T00:00:00Z"),
            wallet_token("DWSPK1"),
        ],
        observed_at_ms: Some(at),
    }));
    let (r, source) = w
        .app
        .status(card(2004), false, &|_| true, None)
        .await
        .unwrap();
    assert_eq!(source, Source::Upstream);
    assert_eq!(r.state, EnrollmentState::TokenizedElsewhere);
    let token = r.token.as_ref().unwrap();
    assert_eq!(token.token_unique_reference, "DM-NEW", "the newest");
    assert_eq!(token.status, Some(TokenStatus::Active));
    let version = token.status_version.as_ref().unwrap();
    assert_eq!(version.at_ms, at, "Mastercard's time of the answer");
    assert_eq!(version.by, "upstream:token-list");
    assert_eq!(w.record(card(2004)).await.as_ref(), Some(r.record()));
}

/// Whether another owner gets the card's lock once the tasks spawned meanwhile ran (a lock
/// given back on a drop is given back by a task of its own).
async fn lock_comes_free(w: &super::fakes::World, card_id: i64) -> bool {
    for _ in 0..100 {
        if w.store
            .lock_card(card(card_id), "next", LEASE)
            .await
            .unwrap()
        {
            return true;
        }
        tokio::task::yield_now().await;
    }
    false
}

#[tokio::test]
async fn a_status_read_dropped_while_it_holds_the_card_lock_gives_the_lock_back() {
    let w = world();
    // A card the token list shows tokenized: the read writes its record under the card lock.
    w.mc.tokens(Ok(observed(vec![c2p_token(
        "DM-NEW",
        TokenStatus::Active,
        "2030-01-01T00:00:00Z",
    )])));
    let gate = w.store.pause(Op::PutFenced, 1);
    let app = w.app.clone();
    let read = tokio::spawn(async move { app.status(card(2010), false, &|_| true, None).await });
    gate.entered().await;
    // The caller goes away (its deadline, a cancel) while the lock is held.
    read.abort();
    assert!(read.await.unwrap_err().is_cancelled());
    assert!(
        lock_comes_free(&w, 2010).await,
        "the card stayed locked for its lease"
    );
}

#[tokio::test]
async fn a_status_read_whose_lock_answer_was_lost_gives_the_lock_back() {
    let w = world();
    w.mc.tokens(Ok(observed(vec![c2p_token(
        "DM-NEW",
        TokenStatus::Active,
        "2030-01-01T00:00:00Z",
    )])));
    w.store.fault(Op::LockCard, 1, Fault::AnswerLost);
    w.app
        .status(card(2011), false, &|_| true, None)
        .await
        .unwrap_err();
    assert!(
        lock_comes_free(&w, 2011).await,
        "the card stayed locked for its lease"
    );
}

#[tokio::test]
async fn a_token_list_date_far_from_our_clock_is_replaced_by_ours() {
    let w = world();
    w.mc.tokens(Ok(TokenObservation {
        tokens: vec![c2p_token(
            "DM-1",
            TokenStatus::Active,
            "2030-01-01T00:00:00Z",
        )],
        observed_at_ms: Some(now_ms() - 3_600_000),
    }));
    let before = now_ms();
    let (r, _) = w
        .app
        .status(card(2005), false, &|_| true, None)
        .await
        .unwrap();
    let at = r
        .token
        .as_ref()
        .unwrap()
        .status_version
        .as_ref()
        .unwrap()
        .at_ms;
    assert!(at >= before && at <= now_ms(), "{at} is ours");
}

#[tokio::test]
async fn an_in_progress_record_with_a_token_is_enrolled_on_refresh() {
    let w = world();
    let mut running = record(2006, EnrollmentState::InProgress);
    running.src_correlation_id = Some("corr-2006".into());
    let stored = w.seed_record(&running).await;
    w.mc.tokens(Ok(observed(vec![c2p_token(
        "DM-2006",
        TokenStatus::Active,
        "2030-01-01T00:00:00Z",
    )])));
    // Without refresh, the stored record is the answer.
    let (r, source) = w
        .app
        .status(card(2006), false, &|_| true, None)
        .await
        .unwrap();
    assert_eq!((r.into_record(), source), (stored.clone(), Source::Store));

    let (r, source) = w
        .app
        .status(card(2006), true, &|_| true, None)
        .await
        .unwrap();
    assert_eq!(source, Source::Upstream);
    assert_eq!(r.state, EnrollmentState::Enrolled);
    assert_eq!(r.src_correlation_id.as_deref(), Some("corr-2006"));
    assert_eq!(r.token.as_ref().unwrap().token_unique_reference, "DM-2006");
    assert!(r.revision > stored.revision);
    assert_eq!(w.record(card(2006)).await.as_ref(), Some(r.record()));
}

#[tokio::test]
async fn a_failed_record_with_a_token_is_enrolled_and_its_failure_dropped() {
    let w = world();
    let mut failed = record(2007, EnrollmentState::Failed);
    failed.failure = Some(Failure {
        reason: "ENROLLMENT_NOT_CONFIRMED".into(),
        message: "no token".into(),
        retryable: true,
        metadata: Default::default(),
    });
    w.seed_record(&failed).await;
    w.mc.tokens(Ok(observed(vec![c2p_token(
        "DM-2007",
        TokenStatus::Active,
        "2030-01-01T00:00:00Z",
    )])));
    let (r, source) = w
        .app
        .status(card(2007), true, &|_| true, None)
        .await
        .unwrap();
    assert_eq!(
        (r.state, source),
        (EnrollmentState::Enrolled, Source::Upstream)
    );
    assert!(r.failure.is_none());
}

#[tokio::test]
async fn a_refresh_of_an_enrolled_card_whose_token_changed_is_upstream() {
    let w = world();
    let mut enrolled = record(2008, EnrollmentState::Enrolled);
    enrolled.token = Some(stored_token(
        "DM-2008",
        TokenStatus::Active,
        now_ms() - 60_000,
    ));
    let stored = w.seed_record(&enrolled).await;
    w.mc.tokens(Ok(observed(vec![c2p_token(
        "DM-2008",
        TokenStatus::Suspended,
        "2030-01-01T00:00:00Z",
    )])));
    let (r, source) = w
        .app
        .status(card(2008), true, &|_| true, None)
        .await
        .unwrap();
    assert_eq!(source, Source::Upstream);
    assert_eq!(r.state, EnrollmentState::Enrolled);
    assert_eq!(
        r.token.as_ref().unwrap().status,
        Some(TokenStatus::Suspended)
    );
    assert!(r.revision > stored.revision);
    assert_eq!(
        w.store.calls(Op::ApplyNotification),
        1,
        "merged as a notification"
    );
    assert_eq!(w.record(card(2008)).await.as_ref(), Some(r.record()));
}

#[tokio::test]
async fn a_refresh_of_an_enrolled_card_with_nothing_to_change_is_the_store_and_writes_nothing() {
    let w = world();
    let mut enrolled = record(2009, EnrollmentState::Enrolled);
    enrolled.token = Some(stored_token(
        "DM-2009",
        TokenStatus::Active,
        now_ms() - 60_000,
    ));
    let stored = w.seed_record(&enrolled).await;
    w.mc.tokens(Ok(observed(vec![c2p_token(
        "DM-2009",
        TokenStatus::Active,
        "2030-01-01T00:00:00Z",
    )])));
    let (r, source) = w
        .app
        .status(card(2009), true, &|_| true, None)
        .await
        .unwrap();
    assert_eq!((r.into_record(), source), (stored.clone(), Source::Store));
    assert_eq!(w.store.calls(Op::ApplyNotification), 0);
    assert_eq!(w.record(card(2009)).await, Some(stored));
}

#[tokio::test]
async fn a_refresh_without_a_token_keeps_the_stored_record() {
    let w = world();
    let stored = w
        .seed_record(&record(2010, EnrollmentState::Enrolled))
        .await;
    let (r, source) = w
        .app
        .status(card(2010), true, &|_| true, None)
        .await
        .unwrap();
    assert_eq!((r.into_record(), source), (stored, Source::Store));
    assert_eq!(w.mc.calls().counts(), (0, 0, 1));
}

#[tokio::test]
async fn while_an_enrollment_holds_the_card_the_rebuilt_record_is_answered_not_stored() {
    let w = world();
    assert!(w.thief_locks(2011).await);
    w.mc.tokens(Ok(observed(vec![c2p_token(
        "DM-2011",
        TokenStatus::Active,
        "2030-01-01T00:00:00Z",
    )])));
    let (r, source) = w
        .app
        .status(card(2011), false, &|_| true, None)
        .await
        .unwrap();
    assert_eq!(
        (r.state, source),
        (EnrollmentState::TokenizedElsewhere, Source::Upstream)
    );
    assert!(
        w.record(card(2011)).await.is_none(),
        "not written under its lock"
    );
}

#[tokio::test]
async fn a_token_list_failure_is_mapped_with_the_tokens_step() {
    let w = world();
    w.mc.tokens(Err(UpstreamFailure::Unavailable {
        retry_after: Duration::from_secs(9),
        context: context("processing"),
    }));
    let e = w
        .app
        .status(card(2012), false, &|_| true, None)
        .await
        .unwrap_err();
    assert!(
        matches!(e, AppError::UpstreamUnavailable { step: Step::Tokens, retry_after, .. } if retry_after == Duration::from_secs(9)),
        "{e:?}"
    );
    let p = e.parts();
    assert_eq!(p.metadata["step"], "tokens");
    assert_eq!(p.retry_after, Some(Duration::from_secs(9)));

    w.mc.tokens(Err(UpstreamFailure::ContractNotFound(context(
        "processing",
    ))));
    let e = w
        .app
        .status(card(2012), false, &|_| true, None)
        .await
        .unwrap_err();
    assert_eq!(e.parts().reason, "CARD_CONTRACT_NOT_FOUND");
    assert!(w.record(card(2012)).await.is_none());
}

#[tokio::test]
async fn a_store_down_is_store_unavailable() {
    let w = world();
    w.store.fault(Op::Get, 1, Fault::Unavailable);
    let e = w
        .app
        .status(card(2013), false, &|_| true, None)
        .await
        .unwrap_err();
    assert!(matches!(e, AppError::StoreUnavailable(_)), "{e:?}");
    assert_eq!(w.mc.calls().counts(), (0, 0, 0));
}

// Every call's future is allocated and moved as a whole: a hit must not carry the state of the
// paths that go to Mastercard (7,160 bytes when they were inline).
#[test]
fn a_plain_reads_future_is_small() {
    let w = world();
    let read = w.app.status(card(70_152), false, &|_| true, None);
    let size = std::mem::size_of_val(&read);
    assert!(size <= 256, "GetEnrollmentStatus's future is {size} bytes");
}
