//! The use cases after an enrollment: RemoveCard (idempotent by key), the profile and its
//! updates, OptOut and its hold on EnrollCard, WithdrawOptOut, and noticing cards Click to Pay
//! no longer holds (refresh, reconciler).

use super::fakes::{
    Fault, Op, World, c2p_token, card, command, context, enrolled_card, observed, world,
};
use crate::app::ports::{Deleted, Updated, UpstreamFailure};
use crate::app::{AppError, CheckedProgram, RemoveCommand};
use crate::domain::{
    EnrollmentRecord, EnrollmentState, RemovalReason, TokenEvent, TokenEventKind, TokenStatus,
};
use crate::store::EnrollmentStore as _;
use std::time::Duration;

fn remove(key: &str, card_id: i64, reason: RemovalReason) -> RemoveCommand {
    RemoveCommand {
        caller: "spiffe://bank.example/ns/payments/sa/app".into(),
        idempotency_key: key.into(),
        card_contract_id: card(card_id),
        reason,
        checked: CheckedProgram::Unchecked,
    }
}

fn reason(e: &AppError) -> String {
    e.parts().reason.to_string()
}

fn unavailable() -> UpstreamFailure {
    UpstreamFailure::Unavailable {
        retry_after: Duration::from_secs(1),
        context: context("enroll"),
    }
}

async fn enrolled(w: &World, card_id: i64) {
    let done = w
        .app
        .enroll(command(&format!("enroll-{card_id}"), card_id), None)
        .await
        .unwrap();
    assert_eq!(done.record.state, EnrollmentState::Enrolled);
}

/// A notification about Click to Pay token `tur` of `card_id`.
fn c2p_event(card_id: i64, tur: &str, kind: TokenEventKind, at_ms: i64, id: &str) -> TokenEvent {
    TokenEvent {
        notification_id: id.into(),
        event_at_ms: at_ms,
        card_contract_id: card(card_id),
        token_unique_reference: tur.into(),
        token_requestor_id: crate::domain::CLICK_TO_PAY_TOKEN_REQUESTOR_ID.into(),
        wallet_name: crate::domain::CLICK_TO_PAY_WALLET_NAME.into(),
        kind,
    }
}

/// `record` does not show token `tur` (an earlier enrollment's).
fn not_showing(record: &crate::domain::EnrollmentRecord, tur: &str) {
    assert!(
        record
            .token
            .as_ref()
            .is_none_or(|t| t.token_unique_reference != tur),
        "{:?}",
        record.token
    );
}

fn lifecycle_ops(w: &World) -> Vec<&'static str> {
    w.mc.calls().lifecycle.iter().map(|c| c.operation).collect()
}

#[tokio::test]
async fn an_enrollment_records_both_id_sets() {
    let w = world();
    enrolled(&w, 3001).await;
    let r = w.record(card(3001)).await.unwrap();
    assert_eq!(r.src_digital_card_id.as_deref(), Some("src-digital-card-1"));
    assert_eq!(r.external_credential_id.as_deref(), Some("3001"));
    let reference = r.external_consumer_id.clone().unwrap();
    assert_eq!(reference.len(), 64, "a keyed hash, not the e-mail address");
    assert_eq!(r.consumer_ref.as_deref(), Some(reference.as_str()));
}

#[tokio::test]
async fn remove_card_deletes_the_card_records_removed_and_replays_with_its_key() {
    let w = world();
    enrolled(&w, 3002).await;
    let done = w
        .app
        .remove_card(remove("r1", 3002, RemovalReason::CardClosed), None)
        .await
        .unwrap();
    assert!(!done.replayed);
    assert_eq!(done.record.state, EnrollmentState::Removed);
    let removal = done.record.removal.clone().unwrap();
    assert_eq!(removal.reason, RemovalReason::CardClosed);
    assert!(removal.time_ms > 0);
    let calls = w.mc.calls().lifecycle;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].operation, "remove_card");
    assert_eq!(
        calls[0].keys.src_digital_card_id.as_deref(),
        Some("src-digital-card-1")
    );
    assert_eq!(w.record(card(3002)).await.unwrap(), done.record);

    // The same key and request: the stored answer, nothing sent again.
    let again = w
        .app
        .remove_card(remove("r1", 3002, RemovalReason::CardClosed), None)
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.record, done.record);
    assert_eq!(w.mc.calls().lifecycle.len(), 1);

    // The same key for another request (another reason, or an EnrollCard's key).
    let reused = w
        .app
        .remove_card(remove("r1", 3002, RemovalReason::Fraud), None)
        .await
        .unwrap_err();
    assert_eq!(reason(&reused), "IDEMPOTENCY_KEY_REUSED");
    let enroll_key = w
        .app
        .remove_card(remove("enroll-3002", 3002, RemovalReason::CardClosed), None)
        .await
        .unwrap_err();
    assert_eq!(reason(&enroll_key), "IDEMPOTENCY_KEY_REUSED");

    // Another key: removed already by a request, so done without a call.
    let other = w
        .app
        .remove_card(remove("r2", 3002, RemovalReason::Other), None)
        .await
        .unwrap();
    assert_eq!(
        other.record.removal.unwrap().reason,
        RemovalReason::CardClosed
    );
    assert_eq!(w.mc.calls().lifecycle.len(), 1);
}

#[tokio::test]
async fn a_card_click_to_pay_no_longer_holds_is_removed_all_the_same() {
    let w = world();
    enrolled(&w, 3003).await;
    w.mc.remove(Ok(Deleted::AlreadyGone));
    let done = w
        .app
        .remove_card(remove("r1", 3003, RemovalReason::CardReplaced), None)
        .await
        .unwrap();
    assert_eq!(done.record.state, EnrollmentState::Removed);
    assert_eq!(
        done.record.removal.unwrap().reason,
        RemovalReason::CardReplaced
    );
}

#[tokio::test]
async fn a_failed_delete_gives_the_key_back_and_the_retry_removes() {
    let w = world();
    enrolled(&w, 3004).await;
    w.mc.remove(Err(unavailable()));
    let e = w
        .app
        .remove_card(remove("r1", 3004, RemovalReason::Fraud), None)
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "UPSTREAM_UNAVAILABLE");
    assert_eq!(e.parts().metadata["step"], "lifecycle");
    assert_eq!(
        w.record(card(3004)).await.unwrap().state,
        EnrollmentState::Enrolled
    );
    let done = w
        .app
        .remove_card(remove("r1", 3004, RemovalReason::Fraud), None)
        .await
        .unwrap();
    assert!(!done.replayed, "resumed, not replayed");
    assert_eq!(done.record.state, EnrollmentState::Removed);
    assert_eq!(lifecycle_ops(&w), ["remove_card", "remove_card"]);
}

#[tokio::test]
async fn removing_a_card_never_enrolled_is_refused_and_that_answer_is_kept() {
    let w = world();
    let e = w
        .app
        .remove_card(remove("r1", 3005, RemovalReason::CardClosed), None)
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "CARD_NOT_ENROLLED");
    assert_eq!(e.parts().metadata["state"], "NONE");
    let replay = w
        .app
        .remove_card(remove("r1", 3005, RemovalReason::CardClosed), None)
        .await
        .unwrap_err();
    assert_eq!(reason(&replay), "CARD_NOT_ENROLLED");
    assert_eq!(replay.parts().metadata["replayed"], "true");
    assert!(w.mc.calls().lifecycle.is_empty());
}

#[tokio::test]
async fn a_deactivated_token_removes_the_card_and_remove_card_then_succeeds() {
    let w = world();
    enrolled(&w, 3006).await;
    let event = c2p_event(
        3006,
        "DM4MMC1",
        TokenEventKind::StatusChanged(TokenStatus::Deactivated),
        crate::domain::now_ms(),
        "n-deactivated",
    );
    w.store.apply_notification(&event).await.unwrap();
    let r = w.record(card(3006)).await.unwrap();
    assert_eq!(r.state, EnrollmentState::Removed);
    assert_eq!(r.removal.unwrap().reason, RemovalReason::TokenDeactivated);

    // Click to Pay deleted the card with its token: 404 on the delete, success here.
    w.mc.remove(Ok(Deleted::AlreadyGone));
    let done = w
        .app
        .remove_card(remove("r1", 3006, RemovalReason::CardClosed), None)
        .await
        .unwrap();
    assert_eq!(done.record.state, EnrollmentState::Removed);
    assert_eq!(
        done.record.removal.unwrap().reason,
        RemovalReason::CardClosed
    );
}

#[tokio::test]
async fn a_removal_whose_lock_answer_was_lost_gives_the_lock_back() {
    let w = world();
    enrolled(&w, 3009).await;
    w.store.fault(Op::LockCard, 1, Fault::AnswerLost);
    let e = w
        .app
        .remove_card(remove("r1", 3009, RemovalReason::CardClosed), None)
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "STORE_UNAVAILABLE");
    // The retry with the same key goes through at once, not after the lock's lease.
    let done = w
        .app
        .remove_card(remove("r1", 3009, RemovalReason::CardClosed), None)
        .await
        .unwrap();
    assert_eq!(done.record.state, EnrollmentState::Removed);
}

#[tokio::test]
async fn an_opt_out_whose_lock_answer_was_lost_gives_the_lock_back() {
    let w = world();
    enrolled(&w, 3015).await;
    w.store.fault(Op::LockCard, 1, Fault::AnswerLost);
    let e = w
        .app
        .opt_out(card(3015), &CheckedProgram::Unchecked, None)
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "STORE_UNAVAILABLE");
    // Asked again at once, it goes through, not after the lock's lease.
    let done = w
        .app
        .opt_out(card(3015), &CheckedProgram::Unchecked, None)
        .await
        .unwrap();
    assert_eq!(done.record.state, EnrollmentState::Removed);
}

#[tokio::test]
async fn an_enrollment_after_a_removal_is_a_new_one() {
    let w = world();
    enrolled(&w, 3007).await;
    let first = w.record(card(3007)).await.unwrap();
    w.app
        .remove_card(remove("r1", 3007, RemovalReason::CardholderRequest), None)
        .await
        .unwrap();
    let again = w.app.enroll(command("k2", 3007), None).await.unwrap();
    assert_eq!(again.record.state, EnrollmentState::Enrolled);
    assert!(again.record.removal.is_none());
    assert_ne!(again.record.src_correlation_id, first.src_correlation_id);
    assert_eq!(w.mc.calls().enrolls.len(), 2);
}

#[tokio::test]
async fn a_new_enrollment_after_a_deactivated_token_does_not_carry_the_old_token() {
    let w = world();
    enrolled(&w, 3008).await;
    let old_token = |kind, at_ms, id: &str| c2p_event(3008, "DM4MMCOLD", kind, at_ms, id);
    let now = crate::domain::now_ms();
    let deactivated = old_token(
        TokenEventKind::StatusChanged(TokenStatus::Deactivated),
        now - 2_000,
        "n-1",
    );
    w.store.apply_notification(&deactivated).await.unwrap();
    assert_eq!(
        w.record(card(3008)).await.unwrap().state,
        EnrollmentState::Removed
    );
    let again = w.app.enroll(command("k2", 3008), None).await.unwrap();
    assert_eq!(again.record.state, EnrollmentState::Enrolled);
    assert!(again.record.token.is_none(), "{:?}", again.record.token);
    // A late notification about the old token does not remove the new enrollment.
    let late = old_token(
        TokenEventKind::Authorization(crate::domain::TokenizationDecision::Approved),
        now - 3_000,
        "n-late",
    );
    w.store.apply_notification(&late).await.unwrap();
    assert_eq!(
        w.record(card(3008)).await.unwrap().state,
        EnrollmentState::Enrolled
    );
    // Nor its deactivation sent again under another id: the old token is retired.
    let resent = old_token(
        TokenEventKind::StatusChanged(TokenStatus::Deactivated),
        now - 2_000,
        "n-1-resent",
    );
    w.store.apply_notification(&resent).await.unwrap();
    let now_record = w.record(card(3008)).await.unwrap();
    assert_eq!(now_record.state, EnrollmentState::Enrolled);
    assert!(now_record.token.is_none(), "{:?}", now_record.token);
}

#[tokio::test]
async fn the_old_tokens_deactivation_during_a_new_enrollment_is_not_the_new_ones() {
    let w = world();
    enrolled(&w, 3011).await;
    let old_token =
        |kind, id: &str| c2p_event(3011, "DM4MMC-OLD-3011", kind, crate::domain::now_ms(), id);
    // The first enrollment's token, then its removal.
    let tcn = old_token(TokenEventKind::Complete, "n-old-tcn");
    w.store.apply_notification(&tcn).await.unwrap();
    w.app
        .remove_card(remove("r1", 3011, RemovalReason::CardholderRequest), None)
        .await
        .unwrap();
    let gate = w.mc.gated_enroll(Ok(super::fakes::enrolled_card()));
    let again = tokio::spawn({
        let app = w.app.clone();
        async move { app.enroll(command("k2", 3011), None).await }
    });
    gate.entered().await;
    // The removal's deactivation of the old token arrives while POST /cards is out.
    let deactivated = old_token(
        TokenEventKind::StatusChanged(TokenStatus::Deactivated),
        "n-old-deactivated",
    );
    w.store.apply_notification(&deactivated).await.unwrap();
    gate.open();
    let done = again.await.unwrap().unwrap();
    assert_eq!(done.record.state, EnrollmentState::Enrolled);
    assert!(
        done.record.token.is_none(),
        "the new enrollment shows the old token: {:?}",
        done.record.token
    );
}

#[tokio::test]
async fn a_removed_cards_deactivated_token_is_no_proof_that_a_new_enrollment_went_through() {
    let w = world();
    enrolled(&w, 3100).await;
    // The first enrollment's token.
    let tcn = c2p_event(
        3100,
        "DM-OLD",
        TokenEventKind::Complete,
        crate::domain::now_ms(),
        "n-tcn",
    );
    w.store.apply_notification(&tcn).await.unwrap();
    w.app
        .remove_card(remove("r1", 3100, RemovalReason::CardholderRequest), None)
        .await
        .unwrap();
    // The new enrollment's POST /cards fails for now: the key is given back.
    w.mc.enroll(Err(UpstreamFailure::Unavailable {
        retry_after: Duration::from_secs(1),
        context: context("enroll"),
    }));
    w.app.enroll(command("k2", 3100), None).await.unwrap_err();
    // The retry asks the token list whether it went through: only the old token, deactivated.
    w.mc.tokens(Ok(observed(vec![c2p_token(
        "DM-OLD",
        TokenStatus::Deactivated,
        "2029-01-01T00:00:00Z",
    )])));
    let again = w.app.enroll(command("k2", 3100), None).await.unwrap();
    assert_eq!(
        w.mc.calls().enrolls.len(),
        3,
        "the enrollment was not sent again"
    );
    assert_eq!(again.record.state, EnrollmentState::Enrolled);
    not_showing(&again.record, "DM-OLD");
}

#[tokio::test]
async fn an_opt_out_deletes_the_profile_and_holds_enroll_card_until_withdrawn() {
    let w = world();
    enrolled(&w, 3010).await;
    let opted = w
        .app
        .opt_out(card(3010), &CheckedProgram::Unchecked, None)
        .await
        .unwrap();
    assert_eq!(opted.record.state, EnrollmentState::Removed);
    assert_eq!(
        opted.record.removal.as_ref().unwrap().reason,
        RemovalReason::ConsumerOptedOut
    );
    assert_eq!(lifecycle_ops(&w), ["delete_profile"]);

    // Again: idempotent, the first time kept.
    let again = w
        .app
        .opt_out(card(3010), &CheckedProgram::Unchecked, None)
        .await
        .unwrap();
    assert_eq!(again.since_ms, opted.since_ms);

    // The same card, and another card of the same e-mail address: refused before any call.
    let searches = w.mc.calls().searches.len();
    for (key, card_id) in [("k-a", 3010), ("k-b", 3011)] {
        let e = w.app.enroll(command(key, card_id), None).await.unwrap_err();
        assert_eq!(reason(&e), "CONSUMER_OPTED_OUT", "{card_id}");
        assert!(e.parts().metadata.contains_key("optOutTime"));
    }
    assert_eq!(w.mc.calls().searches.len(), searches);
    // Another cardholder is not held.
    let mut other = command("k-c", 3012);
    other.consumer.email = Some("john@example.com".into());
    w.app.enroll(other, None).await.unwrap();

    assert!(w.app.withdraw_opt_out(card(3010)).await.unwrap());
    assert!(!w.app.withdraw_opt_out(card(3010)).await.unwrap());
    // The refused key was not spent: it enrolls now.
    let done = w.app.enroll(command("k-b", 3011), None).await.unwrap();
    assert_eq!(done.record.state, EnrollmentState::Enrolled);
}

#[tokio::test]
async fn a_withdrawal_needs_the_program_of_the_opt_out_as_well_as_the_cards() {
    let w = world();
    // Card A of the default program, card B of another, one cardholder.
    enrolled(&w, 3013).await;
    let mut b = w.record(card(3013)).await.unwrap();
    b.card_contract_id = card(3014);
    b.program = "directory".into();
    w.seed_record(&b).await;
    // Before any opt-out, only B's own program decides about B.
    assert_eq!(
        w.app.plan_withdrawal(card(3014)).await.unwrap().programs,
        ["directory"]
    );
    // The opt-out through A holds B too: lifting it through B needs A's program as well.
    w.app
        .opt_out(card(3013), &CheckedProgram::Unchecked, None)
        .await
        .unwrap();
    assert_eq!(
        w.app.plan_withdrawal(card(3014)).await.unwrap().programs,
        ["directory", ""]
    );
    assert_eq!(
        w.app.plan_withdrawal(card(3013)).await.unwrap().programs,
        [""]
    );
}

#[tokio::test]
async fn a_withdrawal_needs_the_programs_of_every_opt_out_it_forgets() {
    let w = world();
    // Card A of the default program, card B of another, one cardholder: opted out through B,
    // then through A (the consumer's subject then holds A's opt-out, B's card subject B's).
    enrolled(&w, 3017).await;
    let mut b = w.record(card(3017)).await.unwrap();
    b.card_contract_id = card(3018);
    b.program = "directory".into();
    w.seed_record(&b).await;
    w.app
        .opt_out(card(3018), &CheckedProgram::Unchecked, None)
        .await
        .unwrap();
    w.app
        .opt_out(card(3017), &CheckedProgram::Unchecked, None)
        .await
        .unwrap();
    // Withdrawing through B forgets the consumer's opt-out, A's: it needs A's program too.
    assert_eq!(
        w.app.plan_withdrawal(card(3018)).await.unwrap().programs,
        ["directory", ""]
    );
    assert!(w.app.withdraw_opt_out(card(3018)).await.unwrap());
    // Forgotten everywhere: A enrolls again.
    assert!(!w.app.withdraw_opt_out(card(3017)).await.unwrap());
}

/// Card B of card A's cardholder (the same consumer references), both with records.
async fn two_cards_of_one_cardholder(w: &World, a: i64, b: i64) -> EnrollmentRecord {
    enrolled(w, a).await;
    let mut other = w.record(card(a)).await.unwrap();
    other.card_contract_id = card(b);
    w.seed_record(&other).await;
    other
}

/// The opt-out kept under each of `subjects`, read one by one.
async fn kept_under(w: &World, subjects: &[String]) -> Vec<Option<crate::domain::OptOut>> {
    let mut kept = Vec::with_capacity(subjects.len());
    for subject in subjects {
        let read = w.store.get_opt_out(std::slice::from_ref(subject)).await;
        kept.push(read.unwrap());
    }
    kept
}

/// A withdrawal forgets only the opt-outs it read (and checked): one given through another card
/// of the cardholder after its read, kept under the consumer's subject they share, stays whole.
#[tokio::test]
async fn a_withdrawal_leaves_an_opt_out_given_after_its_read() {
    let w = world();
    let b = two_cards_of_one_cardholder(&w, 3220, 3221).await;
    w.app
        .opt_out(card(3220), &CheckedProgram::Unchecked, None)
        .await
        .unwrap();
    // A withdrawal through A has read A's opt-out when B's OptOut comes.
    let plan = w.app.plan_withdrawal(card(3220)).await.unwrap();
    w.app
        .opt_out(card(3221), &CheckedProgram::Unchecked, None)
        .await
        .unwrap();
    assert!(w.app.withdraw(plan).await.unwrap());
    let subjects = crate::app::lifecycle::subjects_of(card(3221), Some(&b));
    assert_eq!(subjects.len(), 2, "the card's and the consumer's");
    for kept in kept_under(&w, &subjects).await {
        assert_eq!(kept.map(|o| o.subjects), Some(subjects.clone()));
    }
    // A withdrawal through B forgets it.
    assert!(w.app.withdraw_opt_out(card(3221)).await.unwrap());
    assert!(w.store.get_opt_out(&subjects).await.unwrap().is_none());
}

/// Two OptOuts of two cards of one cardholder at once: the one whose write of the consumer's
/// subject comes second finds the other's there, reads again and links it, so that a withdrawal
/// through either card forgets both.
#[tokio::test]
async fn two_opt_outs_of_one_cardholder_at_once_link_each_other() {
    let w = std::sync::Arc::new(world());
    let b = two_cards_of_one_cardholder(&w, 3222, 3223).await;
    // A's OptOut has read its subjects (nothing kept there) and stops before its first write.
    let at_write = w.store.pause(Op::SwapOptOut, 1);
    let a = tokio::spawn({
        let w = w.clone();
        async move {
            w.app
                .opt_out(card(3222), &CheckedProgram::Unchecked, None)
                .await
        }
    });
    at_write.entered().await;
    w.app
        .opt_out(card(3223), &CheckedProgram::Unchecked, None)
        .await
        .unwrap();
    at_write.open();
    a.await.unwrap().unwrap();
    let a_subjects = crate::app::lifecycle::subjects_of(card(3222), None);
    let linked = w
        .store
        .get_opt_out(&a_subjects)
        .await
        .unwrap()
        .unwrap()
        .linked;
    assert_eq!(linked, [crate::domain::card_subject(card(3223))]);
    // Withdrawing through A forgets B's opt-out too, under its card as well.
    assert!(w.app.withdraw_opt_out(card(3222)).await.unwrap());
    let b_subjects = crate::app::lifecycle::subjects_of(card(3223), Some(&b));
    assert!(w.store.get_opt_out(&b_subjects).await.unwrap().is_none());
}

/// An OptOut of the card retried while a withdrawal of its opt-out is half done (the consumer's
/// subject forgotten, the card's not yet) writes the same opt-out again, in the same words: the
/// withdrawal does not take it for the one it read, and the opt-out stays whole.
#[tokio::test]
async fn an_opt_out_retried_during_its_withdrawal_stays_whole() {
    let w = std::sync::Arc::new(world());
    let b = two_cards_of_one_cardholder(&w, 3224, 3225).await;
    w.app
        .opt_out(card(3224), &CheckedProgram::Unchecked, None)
        .await
        .unwrap();
    let plan = w.app.plan_withdrawal(card(3224)).await.unwrap();
    // The withdrawal forgets the consumer's subject, then stops before the card's.
    let at_card = w.store.pause(Op::SwapOptOut, 2);
    let withdrawal = tokio::spawn({
        let w = w.clone();
        async move { w.app.withdraw(plan).await }
    });
    at_card.entered().await;
    w.app
        .opt_out(card(3224), &CheckedProgram::Unchecked, None)
        .await
        .unwrap();
    at_card.open();
    assert!(withdrawal.await.unwrap().unwrap());
    let subjects = crate::app::lifecycle::subjects_of(card(3224), Some(&b));
    for kept in kept_under(&w, &subjects).await {
        assert_eq!(kept.map(|o| o.subjects), Some(subjects.clone()));
    }
}

/// A withdrawal whose every opt-out was written again since its read (an OptOut of the card
/// retried) forgets nothing, and still answers that there was one: it came first.
#[tokio::test]
async fn a_withdrawal_overtaken_by_a_retried_opt_out_answers_withdrawn() {
    let w = world();
    let b = two_cards_of_one_cardholder(&w, 3230, 3231).await;
    w.app
        .opt_out(card(3230), &CheckedProgram::Unchecked, None)
        .await
        .unwrap();
    let plan = w.app.plan_withdrawal(card(3230)).await.unwrap();
    w.app
        .opt_out(card(3230), &CheckedProgram::Unchecked, None)
        .await
        .unwrap();
    assert!(w.app.withdraw(plan).await.unwrap());
    let subjects = crate::app::lifecycle::subjects_of(card(3230), Some(&b));
    assert!(kept_under(&w, &subjects).await.iter().all(Option::is_some));
}

/// An OptOut whose write of the consumer's subject finds it forgotten by a withdrawal of
/// another card's opt-out keeps nothing of that opt-out (neither its time nor a link to its
/// card), though its own first pass, cut short, had merged it under its card.
#[tokio::test]
async fn an_opt_out_cut_short_by_a_withdrawal_keeps_nothing_of_the_withdrawn_one() {
    let w = std::sync::Arc::new(world());
    let b = two_cards_of_one_cardholder(&w, 3226, 3227).await;
    let first = w
        .app
        .opt_out(card(3226), &CheckedProgram::Unchecked, None)
        .await
        .unwrap();
    // B's opt-out is then a later one, by the clock too.
    tokio::time::sleep(Duration::from_millis(5)).await;
    // B's OptOut has read A's opt-out under the consumer's subject and stops at its first write.
    let at_write = w.store.pause(Op::SwapOptOut, 1);
    let second = tokio::spawn({
        let w = w.clone();
        async move {
            w.app
                .opt_out(card(3227), &CheckedProgram::Unchecked, None)
                .await
        }
    });
    at_write.entered().await;
    assert!(w.app.withdraw_opt_out(card(3226)).await.unwrap());
    at_write.open();
    let second = second.await.unwrap().unwrap();
    assert!(second.since_ms > first.since_ms);
    let subjects = crate::app::lifecycle::subjects_of(card(3227), Some(&b));
    for kept in kept_under(&w, &subjects).await {
        let kept = kept.unwrap();
        assert_eq!(
            (kept.since_ms, kept.linked),
            (second.since_ms, Vec::<String>::new())
        );
    }
}

/// An OptOut whose every pass meets another call's write answers ABORTED
/// (ENROLLMENT_IN_PROGRESS), and its retry finishes it.
#[tokio::test]
async fn an_opt_out_that_keeps_meeting_other_writes_is_aborted_and_its_retry_finishes_it() {
    let w = std::sync::Arc::new(world());
    let b = two_cards_of_one_cardholder(&w, 3228, 3229).await;
    let consumer = crate::app::lifecycle::subjects_of(card(3229), Some(&b))[1].clone();
    // Before each of its 8 writes of the consumer's subject (every second write: the card's
    // first), another opt-out is kept there.
    let w2 = w.clone();
    let mut gate = w.store.pause(Op::SwapOptOut, 2);
    let meddler = tokio::spawn(async move {
        for pass in 0..8 {
            gate.entered().await;
            w2.store
                .put_opt_out(&crate::domain::OptOut {
                    since_ms: 1,
                    subjects: vec![consumer.clone()],
                    program: Some(String::new()),
                    linked: Vec::new(),
                    rev: Some(format!("other-{pass}")),
                })
                .await
                .unwrap();
            // The next pass's write of the consumer's subject, set before this one goes on.
            let next = (pass < 7).then(|| w2.store.pause(Op::SwapOptOut, 2));
            gate.open();
            let Some(next) = next else { break };
            gate = next;
        }
    });
    let e = w
        .app
        .opt_out(card(3229), &CheckedProgram::Unchecked, None)
        .await
        .unwrap_err();
    meddler.await.unwrap();
    assert_eq!(reason(&e), "ENROLLMENT_IN_PROGRESS");
    assert!(e.is_transient());
    let done = w
        .app
        .opt_out(card(3229), &CheckedProgram::Unchecked, None)
        .await
        .unwrap();
    assert_eq!(done.since_ms, 1, "the earliest opt-out's time");
    // Both subjects hold the retry's opt-out.
    let subjects = crate::app::lifecycle::subjects_of(card(3229), Some(&b));
    let kept = kept_under(&w, &subjects).await;
    assert_eq!(kept[0], kept[1]);
    assert_eq!(kept[0].as_ref().map(|o| &o.subjects), Some(&subjects));
}

/// A call after the enrollment acts only on a record of the program its caller was checked
/// against: a card enrolled (first, or anew under another program) between the gRPC layer's
/// check and the card lock is not acted on (ABORTED, nothing sent, a RemoveCard's key not
/// spent), and the retry, checked again, goes through.
#[tokio::test]
async fn a_call_checked_before_the_card_was_enrolled_under_another_program_does_nothing() {
    let w = world();
    // Checked while the card had no record (the check lets such a call through).
    let before = CheckedProgram::Was(w.app.program_of(card(3232)).await.unwrap());
    assert_eq!(before, CheckedProgram::Was(None));
    enrolled(&w, 3232).await;
    let lifecycle_calls = w.mc.calls().lifecycle.len();
    let e = w.app.opt_out(card(3232), &before, None).await.unwrap_err();
    assert_eq!(reason(&e), "ENROLLMENT_IN_PROGRESS");
    assert!(e.is_transient());
    let mut removal = remove("k-checked", 3232, RemovalReason::CardClosed);
    removal.checked = CheckedProgram::Was(Some("another-program".into()));
    let e = w.app.remove_card(removal.clone(), None).await.unwrap_err();
    assert_eq!(reason(&e), "ENROLLMENT_IN_PROGRESS");
    let e = w
        .app
        .update_consumer(card(3232), command("k", 3232).consumer, &before, None)
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "ENROLLMENT_IN_PROGRESS");
    let e = w
        .app
        .click_to_pay_profile(card(3232), &before, None)
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "ENROLLMENT_IN_PROGRESS");
    assert_eq!(
        w.mc.calls().lifecycle.len(),
        lifecycle_calls,
        "nothing sent"
    );
    assert!(
        w.store
            .get_opt_out(&[crate::domain::card_subject(card(3232))])
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        w.record(card(3232)).await.unwrap().state,
        EnrollmentState::Enrolled
    );
    // Checked again: the record's program. The same key goes through.
    let now = CheckedProgram::Was(w.app.program_of(card(3232)).await.unwrap());
    removal.checked = now;
    let removed = w.app.remove_card(removal, None).await.unwrap();
    assert_eq!(removed.record.state, EnrollmentState::Removed);
}

/// An update whose Mastercard call outlasts the card lock's lease keeps the lock (renewed while
/// it waits): no other call takes the card meanwhile, and the update's write lands.
#[tokio::test]
async fn an_update_slower_than_the_lease_keeps_the_card_lock() {
    let lease = Duration::from_millis(500);
    let w = std::sync::Arc::new(super::fakes::world_with_lease(lease));
    enrolled(&w, 3233).await;
    let at_update = w.mc.gated_update(Ok(Updated::Updated));
    let update = tokio::spawn({
        let w = w.clone();
        async move {
            let consumer = command("k", 3233).consumer;
            w.app
                .update_consumer(card(3233), consumer, &CheckedProgram::Unchecked, None)
                .await
        }
    });
    at_update.entered().await;
    // Three leases long at Mastercard.
    tokio::time::sleep(lease * 3).await;
    assert!(
        !w.store
            .inner
            .lock_card(card(3233), super::fakes::THIEF, lease)
            .await
            .unwrap(),
        "the update still holds the card"
    );
    at_update.open();
    let updated = update.await.unwrap().unwrap();
    assert!(updated.consumer_update_time_ms.is_some());
    // Given back once done.
    assert!(
        w.store
            .inner
            .lock_card(card(3233), super::fakes::THIEF, lease)
            .await
            .unwrap()
    );
}

/// An update whose card lock another call took (a renewal found it gone) runs to its end, and
/// its write is refused: ABORTED, the record unchanged.
#[tokio::test]
async fn an_update_that_lost_its_card_lock_writes_nothing() {
    let lease = Duration::from_millis(300);
    let w = std::sync::Arc::new(super::fakes::world_with_lease(lease));
    enrolled(&w, 3234).await;
    let before = w.record(card(3234)).await.unwrap();
    let at_update = w.mc.gated_update(Ok(Updated::Updated));
    let update = tokio::spawn({
        let w = w.clone();
        async move {
            let consumer = command("k", 3234).consumer;
            w.app
                .update_consumer(card(3234), consumer, &CheckedProgram::Unchecked, None)
                .await
        }
    });
    at_update.entered().await;
    let owner = w.store.holder(card(3234)).unwrap();
    assert!(w.store.inner.unlock_card(card(3234), &owner).await.unwrap());
    assert!(
        w.store
            .inner
            .lock_card(card(3234), super::fakes::THIEF, lease * 10)
            .await
            .unwrap()
    );
    at_update.open();
    let e = update.await.unwrap().unwrap_err();
    assert_eq!(reason(&e), "REQUEST_IN_PROGRESS");
    assert_eq!(w.record(card(3234)).await.unwrap(), before);
}

/// An update whose copy of the record was read before a notification deactivated the card's
/// token (its profile deleted through another card while the update waited on Mastercard) does
/// not write the card back ENROLLED: the record follows its merged token.
#[tokio::test]
async fn an_update_does_not_write_back_enrolled_a_card_whose_token_was_deactivated_meanwhile() {
    let w = std::sync::Arc::new(world());
    enrolled(&w, 3235).await;
    let at = crate::domain::now_ms();
    let active = c2p_event(
        3235,
        "DM4MMC3235",
        TokenEventKind::StatusChanged(TokenStatus::Active),
        at,
        "n-active",
    );
    w.store.apply_notification(&active).await.unwrap();
    let at_update = w.mc.gated_update(Ok(Updated::Updated));
    let update = tokio::spawn({
        let w = w.clone();
        async move {
            let consumer = command("k", 3235).consumer;
            w.app
                .update_consumer(card(3235), consumer, &CheckedProgram::Unchecked, None)
                .await
        }
    });
    at_update.entered().await;
    let deactivated = c2p_event(
        3235,
        "DM4MMC3235",
        TokenEventKind::StatusChanged(TokenStatus::Deactivated),
        at + 1,
        "n-deactivated",
    );
    w.store.apply_notification(&deactivated).await.unwrap();
    at_update.open();
    let updated = update.await.unwrap().unwrap();
    assert!(updated.consumer_update_time_ms.is_some());
    assert_eq!(updated.state, EnrollmentState::Removed);
    assert_eq!(
        updated.removal.map(|r| r.reason),
        Some(RemovalReason::TokenDeactivated)
    );
    assert_eq!(
        w.record(card(3235)).await.unwrap().state,
        EnrollmentState::Removed
    );
}

/// The early opt-out check is read beside the key's lease: a key that answered before the
/// opt-out still replays its answer (the opt-out is never the key's answer, nor does it undo one).
#[tokio::test]
async fn a_key_answered_before_an_opt_out_still_replays_its_answer() {
    let w = world();
    let first = w.app.enroll(command("k-first", 3016), None).await.unwrap();
    w.app
        .opt_out(card(3016), &CheckedProgram::Unchecked, None)
        .await
        .unwrap();
    let again = w.app.enroll(command("k-first", 3016), None).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.record, first.record);
    // A new key is refused.
    let e = w
        .app
        .enroll(command("k-new", 3016), None)
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "CONSUMER_OPTED_OUT");
}

#[tokio::test]
async fn an_opt_out_between_enroll_cards_check_and_its_card_lock_holds_it() {
    use super::fakes::Op;
    let w = std::sync::Arc::new(world());
    enrolled(&w, 3014).await;
    let (searches, enrolls, _) = w.mc.calls().counts();
    // The card was removed, so EnrollCard may enroll it again, unless the cardholder opts out.
    let removed = w
        .app
        .remove_card(remove("k-rm", 3014, RemovalReason::CardClosed), None)
        .await
        .unwrap();
    assert_eq!(removed.record.state, EnrollmentState::Removed);

    // EnrollCard passes its early opt-out check and stops just before it takes the card lock.
    let at_lock = w.store.pause(Op::LockCard, 1);
    let enroll = tokio::spawn({
        let w = w.clone();
        async move { w.app.enroll(command("k-again", 3014), None).await }
    });
    at_lock.entered().await;
    // Meanwhile an OptOut takes the lock, records the opt-out and lets the lock go.
    w.app
        .opt_out(card(3014), &CheckedProgram::Unchecked, None)
        .await
        .unwrap();
    at_lock.open();

    let e = enroll.await.unwrap().unwrap_err();
    assert_eq!(reason(&e), "CONSUMER_OPTED_OUT");
    let calls = w.mc.calls();
    assert_eq!(
        (calls.searches.len(), calls.enrolls.len()),
        (searches, enrolls),
        "no search and no POST /cards after the opt-out"
    );
    let record = w.record(card(3014)).await.unwrap();
    assert_eq!(record.state, EnrollmentState::Removed);
    assert_eq!(
        record.removal.unwrap().reason,
        RemovalReason::CardClosed,
        "the opt-out found the card removed already"
    );
    // The refusal is not the key's answer, and the card lock is free: once the opt-out is
    // withdrawn, the same key enrolls.
    assert!(w.app.withdraw_opt_out(card(3014)).await.unwrap());
    let done = w.app.enroll(command("k-again", 3014), None).await.unwrap();
    assert_eq!(done.record.state, EnrollmentState::Enrolled);
}

/// An OptOut through card A lands while card B of the same cardholder is at its POST /cards
/// (past its opt-out checks, which A's OptOut never waits for: it holds A's lock, not B's).
/// The profile A's OptOut deleted must not come back with B in it: B is taken out again.
#[tokio::test]
async fn an_opt_out_through_another_card_during_an_enrollment_takes_the_card_out_again() {
    let w = std::sync::Arc::new(world());
    enrolled(&w, 3020).await;
    let mut b_card = enrolled_card();
    b_card.src_digital_card_id = Some("src-digital-card-b".into());
    b_card.src_consumer_id = Some("src-consumer-b".into());
    let at_post = w.mc.gated_enroll(Ok(b_card));
    let enroll = tokio::spawn({
        let w = w.clone();
        async move { w.app.enroll(command("k-b", 3021), None).await }
    });
    at_post.entered().await;
    w.app
        .opt_out(card(3020), &CheckedProgram::Unchecked, None)
        .await
        .unwrap();
    at_post.open();

    let e = enroll.await.unwrap().unwrap_err();
    assert_eq!(reason(&e), "CONSUMER_OPTED_OUT");
    let deletions: Vec<_> =
        w.mc.calls()
            .lifecycle
            .iter()
            .filter(|c| c.operation == "delete_profile")
            .map(|c| c.keys.src_digital_card_id.clone())
            .collect();
    assert_eq!(
        deletions,
        [
            Some("src-digital-card-1".to_string()),
            Some("src-digital-card-b".to_string())
        ],
        "A's profile, then the one B's POST /cards made"
    );
    let b = w.record(card(3021)).await.unwrap();
    assert_eq!(b.state, EnrollmentState::Removed);
    assert_eq!(b.removal.unwrap().reason, RemovalReason::ConsumerOptedOut);
    assert!(
        !w.store
            .enrolled_due(i64::MAX, 100)
            .await
            .unwrap()
            .contains(&card(3021)),
        "B left the ENROLLED index"
    );
    assert!(w.in_progress().await.is_empty(), "no IN_PROGRESS note left");
    // B's lock is free and the refusal was not the key's answer: once the opt-out is
    // withdrawn (through B: it reaches A's), the key enrolls B anew (a new srcCorrelationId,
    // no token list taken for proof).
    assert_eq!(
        reason(&w.app.enroll(command("k-b", 3021), None).await.unwrap_err()),
        "CONSUMER_OPTED_OUT"
    );
    assert!(w.app.withdraw_opt_out(card(3021)).await.unwrap());
    let again = w.app.enroll(command("k-b", 3021), None).await.unwrap();
    assert_eq!(again.record.state, EnrollmentState::Enrolled);
    let correlations = w.mc.calls().correlations();
    let last_two = &correlations[correlations.len() - 2..];
    assert_ne!(last_two[0], last_two[1], "a new srcCorrelationId");
}

/// A card REMOVED by its token's deactivation stays in the ENROLLED index through its lifecycle
/// checks (later news of the token may make it ENROLLED again, by whichever path), and once it
/// is back, the check looks it up in Click to Pay again. A card removed for another reason
/// leaves the index.
#[tokio::test]
async fn a_card_removed_by_its_token_stays_due_for_the_lifecycle_check() {
    let w = world();
    for card_id in [3038, 3039] {
        enrolled(&w, card_id).await;
    }
    let tur = w
        .record(card(3038))
        .await
        .unwrap()
        .token
        .map_or_else(|| "DM4MMC3038".to_owned(), |t| t.token_unique_reference);
    let at: i64 = 1_900_000_000_000;
    let status =
        |s, ms: i64, id: &str| c2p_event(3038, &tur, TokenEventKind::StatusChanged(s), at + ms, id);
    w.app.ingest(&status(TokenStatus::Active, 0, "on")).await;
    w.app
        .ingest(&status(TokenStatus::Deactivated, 10, "off"))
        .await;
    assert_eq!(
        w.record(card(3038)).await.unwrap().state,
        EnrollmentState::Removed
    );
    w.app
        .remove_card(remove("k-rm", 3039, RemovalReason::CardClosed), None)
        .await
        .unwrap();
    w.store.track_enrolled(card(3039), 1).await.unwrap();
    w.store.track_enrolled(card(3038), 1).await.unwrap();
    let report = w.app.reconcile_once(Duration::ZERO, 100).await.unwrap();
    assert_eq!(report.lifecycle_checked, 0, "{report:?}");
    assert_eq!(
        w.store.enrolled_due(i64::MAX, 100).await.unwrap(),
        [card(3038)],
        "the card removed by its token stays, the one removed by RemoveCard leaves"
    );
    // Back: the next check looks it up.
    w.app
        .ingest(&status(TokenStatus::Active, 20, "on-again"))
        .await;
    assert_eq!(
        w.record(card(3038)).await.unwrap().state,
        EnrollmentState::Enrolled
    );
    w.store.track_enrolled(card(3038), 1).await.unwrap();
    let report = w.app.reconcile_once(Duration::ZERO, 100).await.unwrap();
    assert_eq!(report.lifecycle_checked, 1, "{report:?}");
}

/// Card `b`'s enrollment under `key` left IN_PROGRESS: its POST /cards answered UNAVAILABLE
/// (it may have gone through).
async fn left_in_progress(w: &World, key: &str, b: i64) {
    w.mc.enroll(Err(unavailable()));
    let e = w.app.enroll(command(key, b), None).await.unwrap_err();
    assert_eq!(reason(&e), "UPSTREAM_UNAVAILABLE");
    assert_eq!(
        w.record(card(b)).await.unwrap().state,
        EnrollmentState::InProgress
    );
}

/// The next token list shows card `b`'s Click to Pay token, active.
fn token_list_shows(w: &World, b: i64) {
    w.mc.tokens(Ok(observed(vec![c2p_token(
        &format!("DM4MMC{b}"),
        TokenStatus::Active,
        "2030-01-01T00:00:00Z",
    )])));
}

/// Card A enrolled and card B of the same cardholder at its POST /cards (held at the gate the
/// fake answers from): what [`an_opt_out_through_another_card_during_an_enrollment_takes_the_card_out_again`]
/// starts from. A's OptOut runs while B waits; `then` queues what the fake answers next.
async fn opt_out_during_enrollment(
    w: &std::sync::Arc<World>,
    a: i64,
    b: i64,
    then: impl FnOnce(&World),
) -> Result<crate::app::Enrolled, AppError> {
    enrolled(w, a).await;
    let at_post = w.mc.gated_enroll(Ok(enrolled_card()));
    let enroll = tokio::spawn({
        let w = w.clone();
        async move { w.app.enroll(command("k-b", b), None).await }
    });
    at_post.entered().await;
    w.app
        .opt_out(card(a), &CheckedProgram::Unchecked, None)
        .await
        .unwrap();
    then(w);
    at_post.open();
    enroll.await.unwrap()
}

/// The taking out fails for a time (Mastercard unavailable): that is the answer, the record
/// stays ENROLLED, and the key resumes: its retry, under the opt-out, takes the card out.
#[tokio::test]
async fn a_taking_out_that_fails_for_a_time_is_finished_by_the_keys_retry() {
    let w = std::sync::Arc::new(world());
    let e = opt_out_during_enrollment(&w, 3022, 3023, |w| w.mc.delete_profile(Err(unavailable())))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "UPSTREAM_UNAVAILABLE");
    assert_eq!(
        w.record(card(3023)).await.unwrap().state,
        EnrollmentState::Enrolled
    );
    let e = w.app.enroll(command("k-b", 3023), None).await.unwrap_err();
    assert_eq!(reason(&e), "CONSUMER_OPTED_OUT");
    let b = w.record(card(3023)).await.unwrap();
    assert_eq!(b.state, EnrollmentState::Removed);
    assert_eq!(b.removal.unwrap().reason, RemovalReason::ConsumerOptedOut);
    assert_eq!(
        lifecycle_ops(&w),
        ["delete_profile", "delete_profile", "delete_profile"],
        "A's profile, B's failed, B's again"
    );
    assert_eq!(w.mc.calls().enrolls.len(), 2, "no POST /cards on the retry");
}

/// Mastercard refuses the taking out: the answer is still CONSUMER_OPTED_OUT (never the
/// deletion's refusal as the key's answer), the record stays ENROLLED, and the key's retry
/// tries the taking out again.
#[tokio::test]
async fn a_taking_out_that_mastercard_refuses_leaves_the_card_enrolled_and_the_key_open() {
    let w = std::sync::Arc::new(world());
    let e = opt_out_during_enrollment(&w, 3031, 3032, |w| {
        w.mc.delete_profile(Err(UpstreamFailure::Rejected(context("delete"))))
    })
    .await
    .unwrap_err();
    assert_eq!(reason(&e), "CONSUMER_OPTED_OUT");
    assert_eq!(
        w.record(card(3032)).await.unwrap().state,
        EnrollmentState::Enrolled
    );
    let e = w.app.enroll(command("k-b", 3032), None).await.unwrap_err();
    assert_eq!(reason(&e), "CONSUMER_OPTED_OUT");
    assert_eq!(
        w.record(card(3032)).await.unwrap().state,
        EnrollmentState::Removed,
        "the retry took it out"
    );
}

/// B's POST /cards went through but its answer was lost; A's OptOut came meanwhile. The key's
/// retry is not refused before it looked: it finds the card in the token list and takes it
/// out again; with no token there, it is refused without sending anything.
#[tokio::test]
async fn a_resumed_key_under_an_opt_out_finishes_what_it_sent_and_sends_nothing_new() {
    let w = world();
    enrolled(&w, 3024).await;
    for b in [3025, 3026] {
        left_in_progress(&w, &format!("k-{b}"), b).await;
    }
    w.app
        .opt_out(card(3024), &CheckedProgram::Unchecked, None)
        .await
        .unwrap();
    for (b, token) in [(3025, true), (3026, false)] {
        if token {
            token_list_shows(&w, b);
        } else {
            w.mc.tokens(Ok(observed(Vec::new())));
        }
        let enrolls = w.mc.calls().enrolls.len();
        let e = w
            .app
            .enroll(command(&format!("k-{b}"), b), None)
            .await
            .unwrap_err();
        assert_eq!(reason(&e), "CONSUMER_OPTED_OUT", "{b}");
        assert_eq!(w.mc.calls().enrolls.len(), enrolls, "{b}: nothing sent");
        let record = w.record(card(b)).await.unwrap();
        if token {
            assert_eq!(record.state, EnrollmentState::Removed);
            assert_eq!(
                record.removal.unwrap().reason,
                RemovalReason::ConsumerOptedOut
            );
        } else {
            assert_eq!(record.state, EnrollmentState::InProgress);
        }
    }
    assert_eq!(
        lifecycle_ops(&w),
        ["delete_profile", "delete_profile"],
        "A's profile, and the one 3025 was found in"
    );
    // A new key is refused before anything, as always.
    let e = w
        .app
        .enroll(command("k-new", 3026), None)
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "CONSUMER_OPTED_OUT");
}

/// The reconciler finishing an enrollment left IN_PROGRESS whose card is tokenized, while its
/// cardholder opted out meanwhile through another card: the card is taken out again.
#[tokio::test]
async fn the_reconciler_takes_out_a_card_it_finds_tokenized_under_an_opt_out() {
    let w = world();
    enrolled(&w, 3027).await;
    left_in_progress(&w, "k-b", 3028).await;
    w.app
        .opt_out(card(3027), &CheckedProgram::Unchecked, None)
        .await
        .unwrap();
    token_list_shows(&w, 3028);
    // Noted in this millisecond: moved back so that this pass, which takes notes older than
    // its start, sees it.
    w.store.requeue_in_progress(card(3028), 1).await.unwrap();
    let report = w.app.reconcile_once(Duration::ZERO, 100).await.unwrap();
    assert_eq!((report.checked, report.removed), (1, 1), "{report:?}");
    let b = w.record(card(3028)).await.unwrap();
    assert_eq!(b.state, EnrollmentState::Removed);
    assert_eq!(b.removal.unwrap().reason, RemovalReason::ConsumerOptedOut);
    assert_eq!(lifecycle_ops(&w), ["delete_profile", "delete_profile"]);
    assert!(w.in_progress().await.is_empty());
    assert!(
        !w.store
            .enrolled_due(i64::MAX, 100)
            .await
            .unwrap()
            .contains(&card(3028))
    );
}

/// A key stopped after sending, whose card another key enrolled since, retried under an
/// opt-out: the answer is the refusal (not stored), not CARD_ALREADY_ENROLLED (stored for good).
#[tokio::test]
async fn a_resumed_key_under_an_opt_out_is_refused_not_answered_already_enrolled() {
    let w = world();
    enrolled(&w, 3037).await;
    let cmd = command("k-stopped", 3037);
    w.seed_crashed_key(&cmd, crate::domain::Phase::EnrollSent, "corr-stopped")
        .await;
    w.store
        .put_opt_out(&crate::domain::OptOut {
            since_ms: 1,
            subjects: vec![crate::domain::card_subject(card(3037))],
            program: Some(String::new()),
            linked: Vec::new(),
            rev: None,
        })
        .await
        .unwrap();
    let e = w.app.enroll(cmd.clone(), None).await.unwrap_err();
    assert_eq!(reason(&e), "CONSUMER_OPTED_OUT");
    assert!(
        w.key_of(&cmd).unwrap().outcome.is_none(),
        "not the key's answer"
    );
}

/// The reconciler's taking out fails for a time: the card, now ENROLLED, keeps its note, and
/// the next pass takes it out.
#[tokio::test]
async fn the_reconcilers_failed_taking_out_is_finished_on_its_next_pass() {
    let w = world();
    enrolled(&w, 3033).await;
    left_in_progress(&w, "k-b", 3034).await;
    w.app
        .opt_out(card(3033), &CheckedProgram::Unchecked, None)
        .await
        .unwrap();
    token_list_shows(&w, 3034);
    w.mc.delete_profile(Err(unavailable()));
    w.store.requeue_in_progress(card(3034), 1).await.unwrap();
    let report = w.app.reconcile_once(Duration::ZERO, 100).await.unwrap();
    assert_eq!((report.pending, report.removed), (1, 0), "{report:?}");
    assert_eq!(
        w.record(card(3034)).await.unwrap().state,
        EnrollmentState::Enrolled
    );
    w.store.requeue_in_progress(card(3034), 1).await.unwrap();
    let report = w.app.reconcile_once(Duration::ZERO, 100).await.unwrap();
    assert_eq!((report.checked, report.removed), (1, 1), "{report:?}");
    let b = w.record(card(3034)).await.unwrap();
    assert_eq!(b.state, EnrollmentState::Removed);
    assert_eq!(b.removal.unwrap().reason, RemovalReason::ConsumerOptedOut);
    assert!(w.in_progress().await.is_empty());
}

/// A's OptOut whose deletion failed, B's OptOut, then A's retried (as its error says): the
/// retry keeps B's opt-out linked, so that a withdrawal through A still reaches B's card.
#[tokio::test]
async fn a_retried_opt_out_keeps_the_opt_outs_it_replaces_linked() {
    let w = world();
    enrolled(&w, 3035).await;
    let mut b = w.record(card(3035)).await.unwrap();
    b.card_contract_id = card(3036);
    w.seed_record(&b).await;
    w.mc.delete_profile(Err(unavailable()));
    w.app
        .opt_out(card(3035), &CheckedProgram::Unchecked, None)
        .await
        .unwrap_err();
    w.app
        .opt_out(card(3036), &CheckedProgram::Unchecked, None)
        .await
        .unwrap();
    w.app
        .opt_out(card(3035), &CheckedProgram::Unchecked, None)
        .await
        .unwrap();
    assert!(w.app.withdraw_opt_out(card(3035)).await.unwrap());
    assert!(
        !w.app.withdraw_opt_out(card(3036)).await.unwrap(),
        "B's opt-out went with A's"
    );
}

/// A withdrawal forgets only the subjects whose opt-outs it read (and whose programs were
/// checked): a chain longer than its bound keeps the rest.
#[tokio::test]
async fn a_withdrawal_forgets_only_the_subjects_it_read() {
    let w = world();
    let subject = |i: i64| format!("card:{}", 9_100_000 + i);
    for i in 0..40 {
        w.store
            .put_opt_out(&crate::domain::OptOut {
                since_ms: 1,
                subjects: vec![subject(i), subject(i + 1)],
                program: Some(String::new()),
                linked: Vec::new(),
                rev: None,
            })
            .await
            .unwrap();
    }
    assert!(w.app.withdraw_opt_out(card(9_100_000)).await.unwrap());
    assert!(
        w.store.get_opt_out(&[subject(32)]).await.unwrap().is_some(),
        "the first subject past the bound was never read: kept"
    );
    assert!(w.store.get_opt_out(&[subject(31)]).await.unwrap().is_none());
}

/// OptOut through B after one through A keeps A's card among its subjects: a withdrawal
/// through B then reaches A's opt-out too (it replaced A's under the consumer's subject).
#[tokio::test]
async fn a_second_opt_out_keeps_the_first_ones_subjects() {
    let w = world();
    enrolled(&w, 3029).await;
    let mut b = w.record(card(3029)).await.unwrap();
    b.card_contract_id = card(3019);
    w.seed_record(&b).await;
    w.app
        .opt_out(card(3029), &CheckedProgram::Unchecked, None)
        .await
        .unwrap();
    w.app
        .opt_out(card(3019), &CheckedProgram::Unchecked, None)
        .await
        .unwrap();
    assert!(w.app.withdraw_opt_out(card(3019)).await.unwrap());
    assert!(
        !w.app.withdraw_opt_out(card(3029)).await.unwrap(),
        "A's opt-out went with B's"
    );
    w.app.enroll(command("k-again", 3029), None).await.unwrap();
}

/// An enrolled card's RemoveCard, held just before it takes the card out of the ENROLLED index
/// (its REMOVED record written), with its card lock run out (let go here).
async fn removal_past_its_lock(
    w: &std::sync::Arc<World>,
    card_id: i64,
) -> (
    tokio::task::JoinHandle<Result<crate::app::CardRemoved, AppError>>,
    super::fakes::Gate,
) {
    enrolled(w, card_id).await;
    let at_untrack = w.store.pause(super::fakes::Op::UntrackEnrolled, 1);
    let removal = tokio::spawn({
        let w = w.clone();
        async move {
            w.app
                .remove_card(remove("k-rm", card_id, RemovalReason::CardClosed), None)
                .await
        }
    });
    at_untrack.entered().await;
    let owner = w.store.holder(card(card_id)).unwrap();
    assert!(
        w.store
            .inner
            .unlock_card(card(card_id), &owner)
            .await
            .unwrap()
    );
    (removal, at_untrack)
}

/// A RemoveCard takes the card out of the ENROLLED index after its REMOVED record without
/// renewing the card lock. When the lock ran out before that and a new enrollment of the card
/// noted it ENROLLED meanwhile, the removal took that note: its release, finding the lock no
/// longer its own, notes the ENROLLED card again. The card stayed out of the index before,
/// never checked by the reconciler again.
#[tokio::test]
async fn a_removal_that_ran_past_its_lock_gives_a_new_enrollment_its_enrolled_note_back() {
    let w = std::sync::Arc::new(world());
    let (removal, at_untrack) = removal_past_its_lock(&w, 3020).await;
    // The card, REMOVED, is enrolled again.
    let again = w.app.enroll(command("k-again", 3020), None).await.unwrap();
    assert_eq!(again.record.state, EnrollmentState::Enrolled);
    assert_eq!(
        w.store.enrolled_due(i64::MAX, 10).await.unwrap(),
        [card(3020)]
    );
    at_untrack.open();

    let removed = removal.await.unwrap().unwrap();
    assert_eq!(removed.record.state, EnrollmentState::Removed);
    assert_eq!(
        w.record(card(3020)).await.unwrap().state,
        EnrollmentState::Enrolled
    );
    assert_eq!(
        w.store.enrolled_due(i64::MAX, 10).await.unwrap(),
        [card(3020)],
        "the new enrollment's card is in the ENROLLED index"
    );
}

/// The same race with the new enrollment's ENROLLED note landing before its record (they are
/// written together): the removal's release reads the record IN_PROGRESS, and notes the card
/// all the same (only an ENROLLED record was noted again at first, and the card ended in no
/// index once that enrollment settled).
#[tokio::test]
async fn a_removal_that_ran_past_its_lock_notes_a_card_being_enrolled_again() {
    use super::fakes::Op;
    let w = std::sync::Arc::new(world());
    let (removal, at_untrack) = removal_past_its_lock(&w, 3021).await;
    // The new enrollment stops at its final record (its second fenced write), its ENROLLED
    // note written beside it.
    let at_record = w.store.pause(Op::PutFenced, 2);
    let again = tokio::spawn({
        let w = w.clone();
        async move { w.app.enroll(command("k-again", 3021), None).await }
    });
    at_record.entered().await;
    while w.store.enrolled_due(i64::MAX, 10).await.unwrap().is_empty() {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        w.record(card(3021)).await.unwrap().state,
        EnrollmentState::InProgress
    );
    at_untrack.open();
    let removed = removal.await.unwrap().unwrap();
    assert_eq!(removed.record.state, EnrollmentState::Removed);
    at_record.open();
    let again = again.await.unwrap().unwrap();
    assert_eq!(again.record.state, EnrollmentState::Enrolled);
    assert_eq!(
        w.store.enrolled_due(i64::MAX, 10).await.unwrap(),
        [card(3021)],
        "the new enrollment's card is in the ENROLLED index"
    );
}

#[tokio::test]
async fn an_opt_out_is_remembered_when_the_profile_delete_fails() {
    let w = world();
    enrolled(&w, 3013).await;
    w.mc.delete_profile(Err(unavailable()));
    let e = w
        .app
        .opt_out(card(3013), &CheckedProgram::Unchecked, None)
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "UPSTREAM_UNAVAILABLE");
    let refused = w.app.enroll(command("k2", 3013), None).await.unwrap_err();
    assert_eq!(reason(&refused), "CONSUMER_OPTED_OUT");
    // The retry finishes the deletion.
    let done = w
        .app
        .opt_out(card(3013), &CheckedProgram::Unchecked, None)
        .await
        .unwrap();
    assert_eq!(done.record.state, EnrollmentState::Removed);
}

#[tokio::test]
async fn updates_note_their_time_and_a_card_gone_is_removed() {
    let w = world();
    enrolled(&w, 3020).await;
    let before = w.record(card(3020)).await.unwrap();
    let mut consumer = command("x", 3020).consumer;
    consumer.email = Some("jane.new@example.com".into());
    let updated = w
        .app
        .update_consumer(card(3020), consumer, &CheckedProgram::Unchecked, None)
        .await
        .unwrap();
    assert!(updated.consumer_update_time_ms.is_some());
    assert_ne!(updated.consumer_ref, before.consumer_ref);
    assert_eq!(
        updated.external_consumer_id, before.external_consumer_id,
        "the directory's id of the profile does not change"
    );
    assert!(updated.revision > before.revision);

    let address = crate::app::ports::Address {
        country_code: Some("US".into()),
        city: Some("Springfield".into()),
        ..Default::default()
    };
    let updated = w
        .app
        .update_billing_address(
            card(3020),
            address.clone(),
            &CheckedProgram::Unchecked,
            None,
        )
        .await
        .unwrap();
    assert!(updated.billing_address_update_time_ms.is_some());

    w.mc.update(Ok(Updated::NotFound(context("enroll"))));
    let e = w
        .app
        .update_billing_address(card(3020), address, &CheckedProgram::Unchecked, None)
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "NOT_IN_CLICK_TO_PAY");
    let r = w.record(card(3020)).await.unwrap();
    assert_eq!(r.state, EnrollmentState::Removed);
    assert_eq!(r.removal.unwrap().reason, RemovalReason::NotInClickToPay);
}

/// `c2p_reconciled_total{result="lookup_failed"}` now (only this module's test makes it move).
fn lookups_failed() -> u64 {
    let page = crate::metrics::handle().unwrap().render();
    page.lines()
        .find_map(|l| l.strip_prefix(r#"c2p_reconciled_total{result="lookup_failed"} "#))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn the_reconcilers_failed_look_ups_are_counted_and_a_card_without_ids_leaves_the_index() {
    let w = world();
    enrolled(&w, 3042).await;
    enrolled(&w, 3043).await;
    let before = lookups_failed();
    w.store.track_enrolled(card(3042), 0).await.unwrap();
    w.store.track_enrolled(card(3043), 1).await.unwrap();
    // 3042's look-up finds Mastercard unavailable; 3043's record lacks the ids to look it up.
    w.mc.holds(Err(unavailable()));
    w.mc.holds(Err(UpstreamFailure::IdsUnknown {
        missing: "srcDigitalCardId",
        context: context("enroll"),
    }));
    let report = w
        .app
        .reconcile_once(Duration::from_secs(3600), 100)
        .await
        .unwrap();
    assert_eq!(
        (
            report.lifecycle_checked,
            report.removed,
            report.lookup_failed
        ),
        (2, 0, 2)
    );
    assert_eq!(lookups_failed() - before, 2);
    for id in [3042, 3043] {
        assert_eq!(
            w.record(card(id)).await.unwrap().state,
            EnrollmentState::Enrolled
        );
    }
    // Both made due again: 3042 is looked up again (and held now); 3043 left the index.
    w.store.track_enrolled(card(3042), 0).await.unwrap();
    let due = w.store.enrolled_due(i64::MAX, 100).await.unwrap();
    assert_eq!(due, [card(3042)]);
    let report = w
        .app
        .reconcile_once(Duration::from_secs(3600), 100)
        .await
        .unwrap();
    assert_eq!((report.lifecycle_checked, report.lookup_failed), (1, 0));
}

#[tokio::test]
async fn lifecycle_calls_on_a_card_never_enrolled_are_refused_without_a_call() {
    let w = world();
    let profile = w
        .app
        .click_to_pay_profile(card(3030), &CheckedProgram::Unchecked, None)
        .await;
    assert_eq!(reason(&profile.unwrap_err()), "CARD_NOT_ENROLLED");
    let opt_out = w
        .app
        .opt_out(card(3030), &CheckedProgram::Unchecked, None)
        .await;
    assert_eq!(reason(&opt_out.unwrap_err()), "CARD_NOT_ENROLLED");
    assert!(w.mc.calls().lifecycle.is_empty());
    assert!(!w.app.withdraw_opt_out(card(3030)).await.unwrap());
}

/// A card REMOVED by its token's deactivation, whose shown token is a later TAR's about another
/// token (the deactivated one kept aside): a refresh whose token list shows that deactivated
/// token has nothing to correct (no write, the removal's time kept).
#[tokio::test]
async fn a_refresh_compares_with_the_latest_status_write_kept_aside() {
    let w = world();
    enrolled(&w, 3237).await;
    let at = crate::domain::now_ms() - 60_000;
    let deactivated = c2p_event(
        3237,
        "DM4MMC3237",
        TokenEventKind::StatusChanged(TokenStatus::Deactivated),
        at,
        "n-deactivated",
    );
    w.store.apply_notification(&deactivated).await.unwrap();
    let tar = c2p_event(
        3237,
        "DM4MMC3237B",
        TokenEventKind::Authorization(crate::domain::TokenizationDecision::Declined),
        at + 1,
        "n-tar",
    );
    w.store.apply_notification(&tar).await.unwrap();
    let before = w.record(card(3237)).await.unwrap();
    assert_eq!(before.state, EnrollmentState::Removed);
    w.mc.tokens(Ok(observed(vec![c2p_token(
        "DM4MMC3237",
        TokenStatus::Deactivated,
        "2030-01-01T00:00:00Z",
    )])));
    let (read, _) = w
        .app
        .status(card(3237), true, &|_| true, None)
        .await
        .unwrap();
    assert_eq!(read.revision, before.revision, "nothing written");
    assert_eq!(read.removal, before.removal);
}

/// A refresh by a caller not granted the card's program asks Click to Pay nothing about it and
/// removes nothing (the gRPC layer then refuses the answer).
#[tokio::test]
async fn a_refresh_of_another_programs_card_does_not_ask_click_to_pay() {
    let w = world();
    enrolled(&w, 3236).await;
    w.mc.holds(Ok(false));
    let lifecycle_calls = w.mc.calls().lifecycle.len();
    let (r, _) = w
        .app
        .status(card(3236), true, &|program| program == "another", None)
        .await
        .unwrap();
    assert_eq!(r.state, EnrollmentState::Enrolled);
    assert_eq!(w.mc.calls().lifecycle.len(), lifecycle_calls);
    assert_eq!(
        w.record(card(3236)).await.unwrap().state,
        EnrollmentState::Enrolled
    );
}

#[tokio::test]
async fn a_refresh_and_the_reconciler_notice_cards_click_to_pay_no_longer_holds() {
    let w = world();
    enrolled(&w, 3040).await;
    enrolled(&w, 3041).await;
    // Held: the refresh keeps the answer.
    let (r, _) = w
        .app
        .status(card(3040), true, &|_| true, None)
        .await
        .unwrap();
    assert_eq!(r.state, EnrollmentState::Enrolled);
    // Not held any more.
    w.mc.holds(Ok(false));
    let (r, source) = w
        .app
        .status(card(3040), true, &|_| true, None)
        .await
        .unwrap();
    assert_eq!(r.state, EnrollmentState::Removed);
    assert_eq!(source, crate::app::Source::Upstream);
    assert_eq!(
        r.removal.as_ref().unwrap().reason,
        RemovalReason::NotInClickToPay
    );
    // A look-up that fails leaves the token list's answer.
    w.mc.holds(Err(unavailable()));
    let (r, _) = w
        .app
        .status(card(3041), true, &|_| true, None)
        .await
        .unwrap();
    assert_eq!(r.state, EnrollmentState::Enrolled);

    // The reconciler: 3041 is due (made due now), Click to Pay no longer holds it.
    w.store.track_enrolled(card(3041), 0).await.unwrap();
    w.mc.holds(Ok(false));
    let report = w
        .app
        .reconcile_once(Duration::from_secs(3600), 100)
        .await
        .unwrap();
    assert_eq!((report.lifecycle_checked, report.removed), (1, 1));
    assert_eq!(
        w.record(card(3041)).await.unwrap().state,
        EnrollmentState::Removed
    );
    // Nothing is due any more: removed cards leave the index, held ones are due later.
    let report = w
        .app
        .reconcile_once(Duration::from_secs(3600), 100)
        .await
        .unwrap();
    assert_eq!(report.lifecycle_checked, 0);
}

/// The next token list shows card `b`'s Click to Pay token (that [`token_list_shows`] shows
/// active) deactivated: the enrollment went through and the card left Click to Pay since.
fn token_list_shows_deactivated(w: &World, b: i64) {
    w.mc.tokens(Ok(observed(vec![c2p_token(
        &format!("DM4MMC{b}"),
        TokenStatus::Deactivated,
        "2030-01-01T00:00:00Z",
    )])));
}

/// `key`'s retry on card `b` answers the card's REMOVED record and sends nothing: `sent`
/// POST /cards in all, as before it.
async fn retry_answers_the_removal(w: &World, key: &str, b: i64, sent: usize) {
    let retried = w.app.enroll(command(key, b), None).await.unwrap();
    assert_eq!(
        retried.record.state,
        EnrollmentState::Removed,
        "{retried:?}"
    );
    assert_eq!(
        w.mc.calls().correlations().len(),
        sent,
        "nothing sent again"
    );
}

/// Card `b`'s earlier enrollment went through and its token shows deactivated now: `key`'s
/// retry enrolls the card anew, under a second srcCorrelationId (not the removed enrollment
/// answered again) and without the old token.
async fn retry_enrolls_anew_after_deactivation(w: &World, key: &str, b: i64) {
    token_list_shows_deactivated(w, b);
    let done = w.app.enroll(command(key, b), None).await.unwrap();
    assert_eq!(done.record.state, EnrollmentState::Enrolled, "{done:?}");
    let sent = w.mc.calls().correlations();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_ne!(sent[0], sent[1], "a new enrollment, not the removed one");
    not_showing(&done.record, &format!("DM4MMC{b}"));
}

/// Card `b`'s enrollment named its Click to Pay token (the one [`token_list_shows`] shows) by
/// its TCN, a few seconds ago: the token is this enrollment's.
async fn tokenized(w: &World, b: i64) {
    let tcn = c2p_event(
        b,
        &format!("DM4MMC{b}"),
        TokenEventKind::Complete,
        crate::domain::now_ms() - 5_000,
        &format!("tcn-{b}"),
    );
    w.store.apply_notification(&tcn).await.unwrap();
}

/// Card `b`'s record is REMOVED because its token was deactivated, and in the ENROLLED index
/// (where such a card stays, so that news of its token can bring it back).
async fn removed_by_its_token(w: &World, b: i64) {
    let record = w.record(card(b)).await.unwrap();
    assert_eq!(record.state, EnrollmentState::Removed, "{record:?}");
    assert_eq!(
        record.removal.unwrap().reason,
        RemovalReason::TokenDeactivated
    );
    assert!(record.failure.is_none());
    assert!(
        w.store
            .enrolled_due(i64::MAX, 100)
            .await
            .unwrap()
            .contains(&card(b))
    );
}

/// An enrollment left IN_PROGRESS whose token the token list shows deactivated went through and
/// left Click to Pay since: a refresh makes it REMOVED, not ENROLLED with a dead token.
#[tokio::test]
async fn a_refresh_of_an_unfinished_enrollment_whose_token_was_deactivated_answers_removed() {
    let w = world();
    left_in_progress(&w, "k", 3200).await;
    tokenized(&w, 3200).await;
    token_list_shows_deactivated(&w, 3200);
    let (read, _) = w
        .app
        .status(card(3200), true, &|_| true, None)
        .await
        .unwrap();
    assert_eq!(read.record().state, EnrollmentState::Removed);
    removed_by_its_token(&w, 3200).await;
}

/// The reconciler finishing such an enrollment: REMOVED (counted as removed), not FAILED over
/// the token it found, and out of the IN_PROGRESS index.
#[tokio::test]
async fn the_reconciler_finds_an_unfinished_enrollments_token_deactivated_and_removes_the_card() {
    let w = world();
    left_in_progress(&w, "k", 3201).await;
    tokenized(&w, 3201).await;
    token_list_shows_deactivated(&w, 3201);
    w.store.requeue_in_progress(card(3201), 1).await.unwrap();
    let report = w.app.reconcile_once(Duration::ZERO, 100).await.unwrap();
    assert_eq!(
        (report.checked, report.removed, report.failed),
        (1, 1, 0),
        "{report:?}"
    );
    removed_by_its_token(&w, 3201).await;
    assert!(w.in_progress().await.is_empty());
}

/// Its retry: what the key sent went through and the card left since, which is its answer
/// (REMOVED, stored: its replay says the same); nothing is sent again. A new key enrolls the
/// card again, under a srcCorrelationId of its own and without the old token.
#[tokio::test]
async fn a_retry_of_an_enrollment_whose_token_was_deactivated_since_answers_removed() {
    let w = world();
    left_in_progress(&w, "k", 3202).await;
    tokenized(&w, 3202).await;
    token_list_shows_deactivated(&w, 3202);
    let retried = w.app.enroll(command("k", 3202), None).await.unwrap();
    assert_eq!(retried.record.state, EnrollmentState::Removed);
    assert_eq!(
        retried.record.removal.as_ref().unwrap().reason,
        RemovalReason::TokenDeactivated
    );
    assert_eq!(w.mc.calls().enrolls.len(), 1, "nothing sent again");
    removed_by_its_token(&w, 3202).await;
    assert!(w.in_progress().await.is_empty(), "finished: its note went");
    let replay = w.app.enroll(command("k", 3202), None).await.unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.record.state, EnrollmentState::Removed);

    let again = w.app.enroll(command("k2", 3202), None).await.unwrap();
    let sent = w.mc.calls().correlations();
    assert_eq!(sent.len(), 2);
    assert_ne!(sent[0], sent[1], "a new enrollment, not the removed one");
    assert_eq!(again.record.src_correlation_id.as_ref(), Some(&sent[1]));
    assert_eq!(again.record.state, EnrollmentState::Enrolled);
    not_showing(&again.record, "DM4MMC3202");
}

/// A card REMOVED by its token that lost its ENROLLED note stays in one index: the reconciler
/// pruning its IN_PROGRESS note notes it again (where news of its token can bring it back).
#[tokio::test]
async fn the_reconciler_keeps_a_card_removed_by_its_token_in_the_enrolled_index() {
    let w = world();
    left_in_progress(&w, "k", 3203).await;
    tokenized(&w, 3203).await;
    token_list_shows_deactivated(&w, 3203);
    w.app
        .status(card(3203), true, &|_| true, None)
        .await
        .unwrap();
    w.store.untrack_enrolled(card(3203)).await.unwrap();
    w.store.requeue_in_progress(card(3203), 1).await.unwrap();
    let report = w.app.reconcile_once(Duration::ZERO, 100).await.unwrap();
    assert_eq!((report.checked, report.pruned), (1, 1), "{report:?}");
    removed_by_its_token(&w, 3203).await;
    assert!(w.in_progress().await.is_empty());
}

/// Card `b` enrolled under key "k1" with the srcCorrelationId `first` and removed, then
/// EnrollCard under "k2" asking for `asked`: its answer, and every srcCorrelationId sent.
async fn removed_then_asked_again(
    w: &World,
    b: i64,
    first: &str,
    asked: &str,
) -> (crate::app::Enrolled, Vec<String>) {
    let mut cmd = command("k1", b);
    cmd.src_correlation_id = Some(first.into());
    w.app.enroll(cmd, None).await.unwrap();
    w.app
        .remove_card(remove("r1", b, RemovalReason::CardholderRequest), None)
        .await
        .unwrap();
    let mut again = command("k2", b);
    again.src_correlation_id = Some(asked.into());
    let done = w.app.enroll(again, None).await.unwrap();
    (done, w.mc.calls().correlations())
}

/// A caller that sends the srcCorrelationId of the card's removed enrollment again, under a new
/// key: Click to Pay would answer it as that enrollment, so the new one takes a new id.
#[tokio::test]
async fn a_removed_enrollments_correlation_id_sent_again_is_not_reused() {
    let w = world();
    let first = "6f1c2a3b-0d4e-4f5a-8b6c-7d8e9f0a1b2c";
    let (done, sent) = removed_then_asked_again(&w, 3204, first, first).await;
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0], first);
    assert_ne!(
        sent[1], first,
        "a new enrollment, not the removed one again"
    );
    assert_eq!(done.record.src_correlation_id.as_ref(), Some(&sent[1]));
}

/// A key stopped after sending, whose enrollment was then finished from the token list and the
/// card removed on purpose: the key's late retry answers the removal, and does not enroll the
/// card again (a new key would).
#[tokio::test]
async fn a_late_retry_of_a_key_whose_card_was_removed_since_does_not_enroll_it_again() {
    let w = world();
    left_in_progress(&w, "k", 3205).await;
    token_list_shows(&w, 3205);
    let (read, _) = w
        .app
        .status(card(3205), true, &|_| true, None)
        .await
        .unwrap();
    assert_eq!(read.record().state, EnrollmentState::Enrolled);
    w.app
        .remove_card(remove("r1", 3205, RemovalReason::CardholderRequest), None)
        .await
        .unwrap();
    let retried = w.app.enroll(command("k", 3205), None).await.unwrap();
    assert_eq!(retried.record.state, EnrollmentState::Removed);
    assert_eq!(
        retried.record.removal.unwrap().reason,
        RemovalReason::CardholderRequest
    );
    assert_eq!(w.mc.calls().enrolls.len(), 1, "nothing sent again");
    assert!(
        w.app
            .enroll(command("k", 3205), None)
            .await
            .unwrap()
            .replayed
    );
    let again = w.app.enroll(command("k2", 3205), None).await.unwrap();
    assert_eq!(again.record.state, EnrollmentState::Enrolled);
    let sent = w.mc.calls().correlations();
    assert_eq!(sent.len(), 2);
    assert_ne!(sent[0], sent[1]);
}

/// A new key that finds another key's enrollment unfinished adopts its srcCorrelationId; when
/// that enrollment went through and its token was deactivated since, the new key's is a new
/// enrollment (a new srcCorrelationId, the old token dropped), not that removal as its answer.
#[tokio::test]
async fn a_new_key_that_adopts_an_enrollment_whose_token_was_deactivated_enrolls_the_card() {
    let w = world();
    left_in_progress(&w, "k", 3206).await;
    tokenized(&w, 3206).await;
    token_list_shows_deactivated(&w, 3206);
    let done = w.app.enroll(command("k2", 3206), None).await.unwrap();
    assert_eq!(done.record.state, EnrollmentState::Enrolled);
    let sent = w.mc.calls().correlations();
    assert_eq!(sent.len(), 2, "k2 sent its own POST /cards");
    assert_ne!(sent[0], sent[1], "a new enrollment, not the removed one");
    assert_eq!(done.record.src_correlation_id.as_ref(), Some(&sent[1]));
    not_showing(&done.record, "DM4MMC3206");
}

/// A deactivated token that the unfinished enrollment never heard of (an earlier enrollment's,
/// whose record expired) is no proof that it went through: the key sends its POST /cards again,
/// with its srcCorrelationId, rather than answer REMOVED for a card it never enrolled.
#[tokio::test]
async fn an_unknown_deactivated_token_is_no_proof_that_an_unfinished_enrollment_went_through() {
    let w = world();
    left_in_progress(&w, "k", 3207).await;
    w.mc.tokens(Ok(observed(vec![c2p_token(
        "DM-EXPIRED",
        TokenStatus::Deactivated,
        "2029-01-01T00:00:00Z",
    )])));
    let done = w.app.enroll(command("k", 3207), None).await.unwrap();
    assert_eq!(done.record.state, EnrollmentState::Enrolled);
    let sent = w.mc.calls().correlations();
    assert_eq!(sent.len(), 2, "sent again");
    assert_eq!(sent[0], sent[1], "with the key's srcCorrelationId");
}

/// The same id in capitals is the same UUID: a new enrollment does not send the removed one's
/// in another case either.
#[tokio::test]
async fn a_removed_enrollments_correlation_id_in_capitals_is_not_reused() {
    let w = world();
    let first = "6f1c2a3b-0d4e-4f5a-8b6c-7d8e9f0a1b2c";
    let (_, sent) = removed_then_asked_again(&w, 3208, first, &first.to_uppercase()).await;
    assert_eq!(sent.len(), 2);
    assert!(
        !sent[1].eq_ignore_ascii_case(first),
        "a new enrollment, not the removed one again: {sent:?}"
    );
}

/// A new key that adopted another key's unfinished enrollment and stopped before it could ask
/// the token list (the look-up failed): its retry asks first all the same, and the adopted
/// enrollment's removal found there is not its answer: it enrolls the card anew.
#[tokio::test]
async fn a_key_that_adopted_an_enrollment_and_stopped_asks_the_token_list_on_its_retry() {
    let w = world();
    left_in_progress(&w, "k", 3209).await;
    tokenized(&w, 3209).await;
    w.mc.tokens(Err(unavailable()));
    let e = w.app.enroll(command("k2", 3209), None).await.unwrap_err();
    assert_eq!(reason(&e), "UPSTREAM_UNAVAILABLE");
    assert_eq!(w.mc.calls().enrolls.len(), 1, "nothing sent yet");
    retry_enrolls_anew_after_deactivation(&w, "k2", 3209).await;
}

/// The same when the adopting key had reached "enroll sent" with its own srcCorrelationId
/// before (its IN_PROGRESS write lost, so nothing of its own went out): the adopted
/// enrollment's removal is not its answer either.
#[tokio::test]
async fn a_key_that_adopted_an_enrollment_after_its_own_write_was_lost_does_not_answer_its_removal()
{
    let w = world();
    left_in_progress(&w, "k", 3210).await;
    tokenized(&w, 3210).await;
    let own = "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e";
    w.seed_crashed_key(&command("k2", 3210), crate::domain::Phase::EnrollSent, own)
        .await;
    w.mc.tokens(Err(unavailable()));
    let e = w.app.enroll(command("k2", 3210), None).await.unwrap_err();
    assert_eq!(reason(&e), "UPSTREAM_UNAVAILABLE");
    retry_enrolls_anew_after_deactivation(&w, "k2", 3210).await;
}

/// A key whose enrollment was removed, and the card enrolled again under another key and
/// removed once more since: the first key's late retry knows its srcCorrelationId from the
/// record's retired ones and answers the removal; it does not send the id again (Click to Pay
/// would answer the first, removed enrollment), nor enroll the card anew.
#[tokio::test]
async fn a_late_retry_of_a_key_whose_enrollment_was_removed_two_enrollments_ago_does_not_send_again()
 {
    let w = world();
    left_in_progress(&w, "k", 3211).await;
    token_list_shows(&w, 3211);
    w.app
        .status(card(3211), true, &|_| true, None)
        .await
        .unwrap();
    w.app
        .remove_card(remove("r1", 3211, RemovalReason::CardholderRequest), None)
        .await
        .unwrap();
    let again = w.app.enroll(command("k2", 3211), None).await.unwrap();
    assert_eq!(again.record.state, EnrollmentState::Enrolled);
    w.app
        .remove_card(remove("r2", 3211, RemovalReason::CardClosed), None)
        .await
        .unwrap();
    let sent = w.mc.calls().correlations();
    assert_eq!(sent.len(), 2);
    let retried = w.app.enroll(command("k", 3211), None).await.unwrap();
    assert_eq!(retried.record.state, EnrollmentState::Removed);
    assert_eq!(
        retried.record.removal.unwrap().reason,
        RemovalReason::CardClosed
    );
    assert_eq!(w.mc.calls().correlations(), sent, "nothing sent again");
    let stored = w.record(card(3211)).await.unwrap();
    assert_eq!(stored.retired_correlations, [sent[0].clone()]);
}

/// A key that adopted another key's unfinished enrollment and reached "enroll sent" while its
/// IN_PROGRESS write failed has sent nothing: the id is still the other key's, and when that
/// enrollment went through and left since, the key's retry enrolls the card anew rather than
/// answer that removal.
#[tokio::test]
async fn an_adopting_key_whose_write_failed_still_knows_the_id_is_another_keys() {
    let w = world();
    left_in_progress(&w, "k", 3212).await;
    tokenized(&w, 3212).await;
    w.store.fault(Op::PutFenced, 1, Fault::Unavailable);
    let e = w.app.enroll(command("k2", 3212), None).await.unwrap_err();
    assert_eq!(reason(&e), "STORE_UNAVAILABLE", "{e:?}");
    let key = w.key_of(&command("k2", 3212)).unwrap();
    assert_eq!(key.phase, crate::domain::Phase::EnrollSent);
    assert_eq!(w.mc.calls().enrolls.len(), 1, "nothing sent by k2");
    retry_enrolls_anew_after_deactivation(&w, "k2", 3212).await;
}

/// A new key whose caller sends the unfinished enrollment's id in capitals takes it over as
/// stored and asks the token list first, as for another id: that enrollment went through, and
/// nothing is sent again under another spelling (Click to Pay may tell spellings apart).
#[tokio::test]
async fn a_new_key_with_the_unfinished_enrollments_id_in_capitals_asks_the_token_list_first() {
    let w = world();
    let id = "6f1c2a3b-0d4e-4f5a-8b6c-7d8e9f0a1b2c";
    let mut first = command("k", 3213);
    first.src_correlation_id = Some(id.into());
    w.mc.enroll(Err(unavailable()));
    w.app.enroll(first, None).await.unwrap_err();
    token_list_shows(&w, 3213);
    let mut again = command("k2", 3213);
    again.src_correlation_id = Some(id.to_uppercase());
    let done = w.app.enroll(again, None).await.unwrap();
    assert_eq!(done.record.state, EnrollmentState::Enrolled);
    assert_eq!(w.mc.calls().correlations(), [id], "found, not sent again");
    assert_eq!(done.record.src_correlation_id.as_deref(), Some(id));
}

/// A late retry of a key whose enrollment was removed, when the card's next enrollment (another
/// key's, after the removal) failed for good: someone asked for the card again, so the retry
/// enrolls it anew, as a new key would, under a new srcCorrelationId: neither the removed
/// enrollment's (Click to Pay would answer that one) nor the failed one's.
#[tokio::test]
async fn a_late_retry_after_the_cards_next_enrollment_failed_enrolls_under_a_new_id() {
    let w = world();
    left_in_progress(&w, "k", 3214).await;
    token_list_shows(&w, 3214);
    w.app
        .status(card(3214), true, &|_| true, None)
        .await
        .unwrap();
    w.app
        .remove_card(remove("r1", 3214, RemovalReason::CardholderRequest), None)
        .await
        .unwrap();
    w.mc.enroll(Err(UpstreamFailure::Rejected(context("enroll"))));
    w.app.enroll(command("k2", 3214), None).await.unwrap_err();
    assert_eq!(
        w.record(card(3214)).await.unwrap().state,
        EnrollmentState::Failed
    );
    let retried = w.app.enroll(command("k", 3214), None).await.unwrap();
    assert_eq!(retried.record.state, EnrollmentState::Enrolled);
    let sent = w.mc.calls().correlations();
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert!(sent[2] != sent[0] && sent[2] != sent[1], "{sent:?}");
    // Both earlier ones are retired: the removed one and the failed one it replaced.
    assert_eq!(retried.record.retired_correlations, sent[..2]);
}

/// Card `b` enrolled under key "k" (its answer lost, finished from the token list), removed,
/// then enrolled under "k2", whose answer was lost too and whose TCN named its token
/// `DM-LATER-<b>`: k's enrollment was replaced by one left unfinished.
async fn replaced_by_an_unfinished_enrollment(w: &World, b: i64) {
    left_in_progress(w, "k", b).await;
    token_list_shows(w, b);
    w.app.status(card(b), true, &|_| true, None).await.unwrap();
    w.app
        .remove_card(remove("r1", b, RemovalReason::CardholderRequest), None)
        .await
        .unwrap();
    left_in_progress(w, "k2", b).await;
    let tcn = c2p_event(
        b,
        &format!("DM-LATER-{b}"),
        TokenEventKind::Complete,
        crate::domain::now_ms() - 5_000,
        &format!("tcn-later-{b}"),
    );
    w.store.apply_notification(&tcn).await.unwrap();
}

/// The next token list shows card `b`'s later enrollment's token deactivated.
fn the_later_token_shows_deactivated(w: &World, b: i64) {
    w.mc.tokens(Ok(observed(vec![c2p_token(
        &format!("DM-LATER-{b}"),
        TokenStatus::Deactivated,
        "2030-01-01T00:00:00Z",
    )])));
}

/// The late retry of a key whose enrollment was replaced by a later one, which it finds
/// unfinished and takes over: when the token list shows that one gone too, the card's removal
/// is the key's answer (as when that removal was recorded before the retry), and nothing is
/// sent; the card is not enrolled again.
#[tokio::test]
async fn a_late_retry_that_takes_over_a_later_enrollment_found_removed_answers_the_removal() {
    let w = world();
    replaced_by_an_unfinished_enrollment(&w, 3215).await;
    the_later_token_shows_deactivated(&w, 3215);
    retry_answers_the_removal(&w, "k", 3215, 2).await;
}

/// The same when that retry stops after taking the later enrollment over (the token list
/// failed for a time): it took it over as its own, its own having been replaced, so its next
/// retry answers that enrollment's removal too rather than enroll the card again.
#[tokio::test]
async fn a_late_retry_that_took_over_a_later_enrollment_and_stopped_answers_its_removal() {
    let w = world();
    replaced_by_an_unfinished_enrollment(&w, 3219).await;
    w.mc.tokens(Err(unavailable()));
    let e = w.app.enroll(command("k", 3219), None).await.unwrap_err();
    assert_eq!(reason(&e), "UPSTREAM_UNAVAILABLE", "{e:?}");
    the_later_token_shows_deactivated(&w, 3219);
    retry_answers_the_removal(&w, "k", 3219, 2).await;
}

/// A key whose enrollment the reconciler could not confirm (FAILED, the key may resume), the
/// card enrolled by another key over that record and removed since: the first key's retry
/// answers the removal and does not send its srcCorrelationId again (retired when the later
/// enrollment replaced it).
#[tokio::test]
async fn a_key_whose_failed_enrollment_was_replaced_answers_the_later_removal() {
    let w = world();
    left_in_progress(&w, "k", 3216).await;
    w.store.requeue_in_progress(card(3216), 1).await.unwrap();
    let report = w.app.reconcile_once(Duration::ZERO, 100).await.unwrap();
    assert_eq!(report.failed, 1, "{report:?}");
    let again = w.app.enroll(command("k2", 3216), None).await.unwrap();
    assert_eq!(again.record.state, EnrollmentState::Enrolled);
    w.app
        .remove_card(remove("r", 3216, RemovalReason::CardClosed), None)
        .await
        .unwrap();
    retry_answers_the_removal(&w, "k", 3216, 2).await;
}

/// An adopting key whose save of "the id is now my own" fails (after its IN_PROGRESS write,
/// before it sends) has sent nothing: its release must not store that either, so its retry
/// still takes the id for another key's and, finding that enrollment gone, enrolls anew.
#[tokio::test]
async fn an_adopting_key_whose_own_id_save_failed_is_released_as_adopted() {
    let w = world();
    left_in_progress(&w, "k", 3217).await;
    tokenized(&w, 3217).await;
    // k2's saves: the adoption, "enroll sent", then the one that fails.
    w.store.fault(Op::IdempotencyUpdate, 3, Fault::Unavailable);
    let e = w.app.enroll(command("k2", 3217), None).await.unwrap_err();
    assert_eq!(reason(&e), "STORE_UNAVAILABLE", "{e:?}");
    assert_eq!(w.mc.calls().enrolls.len(), 1, "nothing sent by k2");
    let key = w.key_of(&command("k2", 3217)).unwrap();
    // The save that failed came after "enroll sent" (stored), and the flag stayed.
    assert_eq!(key.phase, crate::domain::Phase::EnrollSent);
    assert!(key.adopted);
    retry_enrolls_anew_after_deactivation(&w, "k2", 3217).await;
}

/// A new key whose caller sends a failed enrollment's id in other capitals writes over that
/// record under its own spelling: the same UUID, the same enrollment, not retired. When its
/// POST /cards answer is lost, its retry sends that id again, not a new one (which would be a
/// second enrollment of the card).
#[tokio::test]
async fn another_spelling_of_a_failed_enrollments_id_is_not_retired() {
    let w = world();
    let id = "6f1c2a3b-0d4e-4f5a-8b6c-7d8e9f0a1b2c";
    let mut first = command("k", 3218);
    first.src_correlation_id = Some(id.to_uppercase());
    w.mc.enroll(Err(UpstreamFailure::Rejected(context("enroll"))));
    w.app.enroll(first, None).await.unwrap_err();
    let mut again = command("k2", 3218);
    again.src_correlation_id = Some(id.into());
    w.mc.enroll(Err(unavailable()));
    w.app.enroll(again.clone(), None).await.unwrap_err();
    assert!(
        w.record(card(3218))
            .await
            .unwrap()
            .retired_correlations
            .is_empty()
    );
    let done = w.app.enroll(again, None).await.unwrap();
    assert_eq!(done.record.state, EnrollmentState::Enrolled);
    assert_eq!(
        w.mc.calls().correlations(),
        [id.to_uppercase(), id.to_owned(), id.to_owned()]
    );
}
