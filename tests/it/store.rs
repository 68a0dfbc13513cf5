//! One suite for the `EnrollmentStore` port, run against the in-memory adapter, a standalone
//! Redis and a 3-master Redis Cluster: records, merging, notification dedup and ordering,
//! idempotency leases, change events, TTLs and the key layout.

use crate::harness::{RedisCluster, RedisServer, settings};
use c2p_enroll::domain::{
    Begin, CardContractId, EnrollmentRecord, EnrollmentState, IdempotencyRecord, MaskedCard, Phase,
    StoredOutcome, TokenEvent, TokenEventKind, TokenStatus, TokenizationDecision, now_ms,
};
use c2p_enroll::store::{self, EnrollmentStore, NotificationEffect, NotificationResult, PutMode};
use redis::Commands;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::StreamExt as _;

const TTL: Duration = Duration::from_secs(3600);

fn card(id: i64) -> CardContractId {
    CardContractId::new(id).unwrap()
}

fn enrolled(id: i64) -> EnrollmentRecord {
    let mut r = EnrollmentRecord::new(
        card(id),
        "default".into(),
        EnrollmentState::Enrolled,
        1_800_000_000_000,
    );
    r.src_digital_card_id = Some("d1b4f0a2-0000-4000-8000-000000000001".into());
    r.masked_card = Some(MaskedCard {
        pan_last_four: "9726".into(),
        pan_expiration_month: "12".into(),
        pan_expiration_year: "2030".into(),
        payment_card_descriptor: Some("Mastercard".into()),
        payment_card_type: Some("CREDIT".into()),
        digital_card_status: Some("ACTIVE".into()),
    });
    r
}

fn event(id: &str, at_ms: i64, card_id: i64, kind: TokenEventKind) -> TokenEvent {
    TokenEvent {
        notification_id: id.into(),
        event_at_ms: at_ms,
        card_contract_id: card(card_id),
        token_unique_reference: "DM4MMC0000000001".into(),
        token_requestor_id: "50123197928".into(),
        wallet_name: "MDES for Merchants".into(),
        kind,
    }
}

fn proposal(owner: &str, fingerprint: &str, lease_until_ms: i64) -> IdempotencyRecord {
    IdempotencyRecord {
        fingerprint: fingerprint.into(),
        phase: Phase::Started,
        src_correlation_id: "0b9a3c2e-1f4d-4a6b-8c7d-9e0f1a2b3c4d".into(),
        adopted: false,
        owner: owner.into(),
        lease_until_ms,
        outcome: None,
    }
}

/// What every adapter must do.
pub(crate) async fn suite(store: Arc<dyn EnrollmentStore>) {
    store.ping().await.unwrap();
    assert_eq!(store.get(card(70001)).await.unwrap(), None);

    // Records: written, read back, cards independent.
    let first = store
        .put_enrollment(&enrolled(70001), PutMode::Merge, TTL)
        .await
        .unwrap();
    assert_eq!(store.get(card(70001)).await.unwrap(), Some(first.clone()));
    assert_eq!(store.get(card(70002)).await.unwrap(), None);
    // IfAbsent keeps what is there.
    let mut other = enrolled(70001);
    other.state = EnrollmentState::NotEnrolled;
    assert_eq!(
        store
            .put_enrollment(&other, PutMode::IfAbsent, TTL)
            .await
            .unwrap(),
        first
    );

    // Notifications: applied, duplicate, stale; a later enrollment write keeps the token.
    let tar = event(
        "n-tar",
        1_800_000_001_000,
        70001,
        TokenEventKind::Authorization(TokenizationDecision::Approved),
    );
    let tcn = event("n-tcn", 1_800_000_002_000, 70001, TokenEventKind::Complete);
    let NotificationResult::Applied(r) = store.apply_notification(&tcn).await.unwrap() else {
        panic!()
    };
    assert_eq!(r.token.as_ref().unwrap().status, Some(TokenStatus::Active));
    assert_eq!(
        store.apply_notification(&tcn).await.unwrap(),
        NotificationResult::Duplicate
    );
    assert!(matches!(
        store.apply_notification(&tar).await.unwrap(),
        NotificationResult::Applied(_)
    ));
    let older = event(
        "n-old",
        1_800_000_000_500,
        70001,
        TokenEventKind::StatusChanged(TokenStatus::Suspended),
    );
    assert_eq!(
        store.apply_notification(&older).await.unwrap(),
        NotificationResult::Stale
    );
    let rewritten = store
        .put_enrollment(&enrolled(70001), PutMode::Merge, TTL)
        .await
        .unwrap();
    let token = rewritten.token.unwrap();
    assert_eq!(
        (token.status, token.decision),
        (
            Some(TokenStatus::Active),
            Some(TokenizationDecision::Approved)
        )
    );

    // A notification before any record creates one, TOKENIZED_ELSEWHERE (a token this service
    // did not enroll, so far), that the enrollment merges into.
    let early = event(
        "n-early",
        1_800_000_003_000,
        70002,
        TokenEventKind::Complete,
    );
    let NotificationResult::Applied(r) = store.apply_notification(&early).await.unwrap() else {
        panic!()
    };
    assert_eq!(r.state, EnrollmentState::TokenizedElsewhere);
    let merged = store
        .put_enrollment(&enrolled(70002), PutMode::Merge, TTL)
        .await
        .unwrap();
    assert_eq!(merged.state, EnrollmentState::Enrolled);
    assert_eq!(merged.token.unwrap().status, Some(TokenStatus::Active));

    stamps(&store).await;

    // Idempotency: new, in flight, reused, resumed after the lease, fenced, replayed. Real
    // time: Redis measures leases on its own clock, not the caller's `now`. A long lease while
    // A must be in flight (a loaded machine may take a while between the calls), then a short
    // one to run out.
    let lease = 10_000;
    let short_lease = 400;
    let scope = "caller-a\u{0}key-1";
    let now = now_ms();
    assert!(matches!(
        store
            .idempotency_begin(scope, &proposal("A", "fp1", now + lease), now)
            .await
            .unwrap(),
        Begin::New(_)
    ));
    let now = now_ms();
    match store
        .idempotency_begin(scope, &proposal("B", "fp1", now + lease), now)
        .await
        .unwrap()
    {
        Begin::InFlight(ms) => assert!(ms > 0 && ms <= lease, "{ms} ms left"),
        other => panic!("A's lease runs: {other:?}"),
    }
    assert_eq!(
        store
            .idempotency_begin(scope, &proposal("B", "fp2", now + lease), now)
            .await
            .unwrap(),
        Begin::Reused
    );
    let mut a = proposal("A", "fp1", now_ms() + short_lease);
    a.phase = Phase::EnrollSent;
    a.adopted = true;
    assert!(store.idempotency_update(scope, &a).await.unwrap());
    // Past A's lease.
    tokio::time::sleep(Duration::from_millis(short_lease as u64 + 150)).await;
    let now = now_ms();
    let Begin::Resume(resumed) = store
        .idempotency_begin(scope, &proposal("B", "fp1", now + 10_000), now)
        .await
        .unwrap()
    else {
        panic!("the lease ran out: B resumes")
    };
    assert_eq!(
        (resumed.phase, resumed.owner.as_str()),
        (Phase::EnrollSent, "B")
    );
    assert_eq!(resumed.src_correlation_id, a.src_correlation_id);
    assert!(
        resumed.adopted,
        "the flag goes with the key's srcCorrelationId"
    );
    assert!(
        !store.idempotency_update(scope, &a).await.unwrap(),
        "A was fenced off"
    );
    let mut done = resumed.clone();
    done.phase = Phase::Done;
    done.lease_until_ms = 0;
    done.outcome = Some(StoredOutcome::Success {
        enrollment: enrolled(70001),
    });
    assert!(store.idempotency_update(scope, &done).await.unwrap());
    let now = now_ms();
    assert_eq!(
        store
            .idempotency_begin(scope, &proposal("C", "fp1", now), now)
            .await
            .unwrap(),
        Begin::Replay(done)
    );
    // Scopes are independent (same key, other caller).
    assert!(matches!(
        store
            .idempotency_begin("caller-b\u{0}key-1", &proposal("D", "fp9", now), now)
            .await
            .unwrap(),
        Begin::New(_)
    ));

    // The card lock: one holder at a time, renewable, released only by its holder.
    let lease = Duration::from_secs(30);
    assert!(store.lock_card(card(70005), "A", lease).await.unwrap());
    assert!(!store.lock_card(card(70005), "B", lease).await.unwrap());
    assert!(
        store.lock_card(card(70005), "A", lease).await.unwrap(),
        "renewal"
    );
    assert!(
        !store.unlock_card(card(70005), "B").await.unwrap(),
        "not B's to release"
    );
    assert!(!store.lock_card(card(70005), "B", lease).await.unwrap());
    assert!(store.unlock_card(card(70005), "A").await.unwrap());
    assert!(
        !store.unlock_card(card(70005), "A").await.unwrap(),
        "released already"
    );
    assert!(store.lock_card(card(70005), "B", lease).await.unwrap());
    assert!(
        store
            .lock_card(card(70006), "A", Duration::from_millis(200))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !store.unlock_card(card(70006), "A").await.unwrap(),
        "an expired lock is no longer A's to release"
    );
    assert!(
        store.lock_card(card(70006), "B", lease).await.unwrap(),
        "an expired lock is free"
    );

    // Change events: every write of the card, nothing of other cards.
    let mut changes = store.watch(card(70003)).await.unwrap();
    store
        .put_enrollment(&enrolled(70004), PutMode::Merge, TTL)
        .await
        .unwrap();
    let written = store
        .put_enrollment(&enrolled(70003), PutMode::Merge, TTL)
        .await
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), changes.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, written);
    let NotificationResult::Applied(applied) = store
        .apply_notification(&event(
            "n-70003",
            1_800_000_005_000,
            70003,
            TokenEventKind::Complete,
        ))
        .await
        .unwrap()
    else {
        panic!()
    };
    let seen = tokio::time::timeout(Duration::from_secs(5), changes.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, applied);
    fenced_writes(store).await;
}

/// An attempt's write goes through only while it holds the card lock.
async fn fenced_writes(store: Arc<dyn EnrollmentStore>) {
    let ttl = Duration::from_secs(60);
    let record = enrolled(70020);
    // No one holds the lock: fenced out.
    assert_eq!(
        store
            .put_enrollment_fenced(&record, ttl, "a")
            .await
            .unwrap(),
        None
    );
    assert!(store.lock_card(card(70020), "b", ttl).await.unwrap());
    // "a" stalled and "b" took over: a's write is refused, b's goes through.
    assert_eq!(
        store
            .put_enrollment_fenced(&record, ttl, "a")
            .await
            .unwrap(),
        None
    );
    assert!(store.get(card(70020)).await.unwrap().is_none());
    let written = store
        .put_enrollment_fenced(&record, ttl, "b")
        .await
        .unwrap()
        .expect("the holder writes");
    assert_eq!(store.get(card(70020)).await.unwrap(), Some(written));
    fresh_after_removal(store.clone()).await;
    stale_copies_follow_the_merged_token(store.clone()).await;
    retired_tokens_keep_the_most_recent(store.clone()).await;
    retired_ids_by_spelling_and_from_the_record(store).await;
}

/// A write of another spelling of the stored srcCorrelationId (the same UUID) retires nothing;
/// a write of another id over a record that retired none keeps the retired ids the written
/// record brings and adds the replaced one, in every store.
async fn retired_ids_by_spelling_and_from_the_record(store: Arc<dyn EnrollmentStore>) {
    let ttl = Duration::from_secs(60);
    let owner = "spelling-owner";
    let id = "0b9a3c2e-1f4d-4a6b-8c7d-9e0f1a2b3caa";
    assert!(store.lock_card(card(70152), owner, ttl).await.unwrap());
    let mut record = enrolled(70152);
    record.src_correlation_id = Some(id.into());
    store
        .put_enrollment_fenced(&record, ttl, owner)
        .await
        .unwrap()
        .unwrap();
    record.src_correlation_id = Some(id.to_uppercase());
    let respelled = store
        .put_enrollment_fenced(&record, ttl, owner)
        .await
        .unwrap()
        .unwrap();
    assert!(respelled.retired_correlations.is_empty(), "{respelled:?}");
    record.src_correlation_id = Some("0b9a3c2e-1f4d-4a6b-8c7d-9e0f1a2b3cbb".into());
    record.retired_correlations = vec!["0b9a3c2e-1f4d-4a6b-8c7d-9e0f1a2b3ccc".into()];
    let replaced = store
        .put_enrollment_fenced(&record, ttl, owner)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        replaced.retired_correlations,
        [
            "0b9a3c2e-1f4d-4a6b-8c7d-9e0f1a2b3ccc".to_owned(),
            id.to_uppercase()
        ]
    );
}

/// Ten enrollments of one card, each with its srcCorrelationId and its token (the fourth with
/// two: the record may keep the one it replaced as superseded): each new one retires the tokens
/// and the srcCorrelationIds before it, the most recent `RETIRED_TOKENS` (8) kept in order, the
/// same in every store (the Lua and Rust twins); a later write of the enrollment keeps them, and
/// a fenced write of another enrollment retires the id it replaces.
async fn retired_tokens_keep_the_most_recent(store: Arc<dyn EnrollmentStore>) {
    let ttl = Duration::from_secs(60);
    let owner = "retiring-owner";
    let at = 1_800_000_000_000;
    assert!(store.lock_card(card(70151), owner, ttl).await.unwrap());
    let mut retired: Vec<String> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    for i in 0..10 {
        // A new enrollment's record, as the flow makes it: no token, nothing retired.
        let mut record = enrolled(70151);
        record.src_correlation_id = Some(format!("0b9a3c2e-1f4d-4a6b-8c7d-9e0f1a2b3c{i:02}"));
        let fresh = store
            .put_fresh_enrollment_fenced(&record, ttl, owner)
            .await
            .unwrap()
            .unwrap();
        let want: Vec<&String> = retired.iter().rev().take(8).rev().collect();
        assert_eq!(fresh.retired_tokens.iter().collect::<Vec<_>>(), want, "{i}");
        let want: Vec<&String> = ids.iter().rev().take(8).rev().collect();
        assert_eq!(
            fresh.retired_correlations.iter().collect::<Vec<_>>(),
            want,
            "{i}"
        );
        assert!(fresh.token.is_none());
        let kept = store
            .put_enrollment_fenced(&record, ttl, owner)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kept.retired_correlations, fresh.retired_correlations, "{i}");
        ids.extend(record.src_correlation_id.clone());
        // This enrollment's token; the fourth one's replaced by another of the same card.
        let tokens: Vec<String> = if i == 3 {
            vec![format!("TOKEN-{i}"), format!("TOKEN-{i}-NEXT")]
        } else {
            vec![format!("TOKEN-{i}")]
        };
        for (n, tur) in tokens.iter().enumerate() {
            let mut tcn = event(
                &format!("n-{i}-{n}"),
                at + i * 10 + n as i64,
                70151,
                TokenEventKind::Complete,
            );
            tcn.token_unique_reference = tur.clone();
            assert!(matches!(
                store.apply_notification(&tcn).await.unwrap(),
                NotificationResult::Applied(_)
            ));
        }
        let record = store.get(card(70151)).await.unwrap().unwrap();
        // The next enrollment retires both: the token shown, then the one it superseded.
        let token = record.token.as_ref().unwrap();
        let dropped = std::iter::once(token).chain(token.superseded.as_deref());
        let dropped: Vec<String> = dropped.map(|t| t.token_unique_reference.clone()).collect();
        retired.extend(dropped);
    }
    // A later enrollment written over the record by a fenced write (over a FAILED one, say)
    // retires the id it replaces too.
    let mut later = enrolled(70151);
    later.src_correlation_id = Some("0b9a3c2e-1f4d-4a6b-8c7d-9e0f1a2b3c99".into());
    let replaced = store
        .put_enrollment_fenced(&later, ttl, owner)
        .await
        .unwrap()
        .unwrap();
    let want: Vec<&String> = ids.iter().rev().take(8).rev().collect();
    assert_eq!(
        replaced.retired_correlations.iter().collect::<Vec<_>>(),
        want
    );
}

/// A write that carries the record's token (an update's copy, read before a notification
/// moved that token on) gets the state the merged token gives: a stale ENROLLED copy over a
/// deactivation is REMOVED (TOKEN_DEACTIVATED), a stale REMOVED copy over a reactivation
/// ENROLLED. A write without the token (an enrollment's own) keeps its state.
async fn stale_copies_follow_the_merged_token(store: Arc<dyn EnrollmentStore>) {
    use c2p_enroll::domain::RemovalReason;
    let ttl = Duration::from_secs(60);
    store
        .put_enrollment(&enrolled(70170), PutMode::Merge, ttl)
        .await
        .unwrap();
    let active = event(
        "n-active",
        1_800_000_000_100,
        70170,
        TokenEventKind::StatusChanged(TokenStatus::Active),
    );
    let NotificationResult::Applied(read) = store.apply_notification(&active).await.unwrap() else {
        panic!("not applied")
    };
    assert_eq!(read.state, EnrollmentState::Enrolled);
    let deactivated = event(
        "n-deactivated-70170",
        1_800_000_000_200,
        70170,
        TokenEventKind::StatusChanged(TokenStatus::Deactivated),
    );
    store.apply_notification(&deactivated).await.unwrap();
    let mut stale = read.clone();
    stale.consumer_update_time_ms = Some(1_800_000_000_300);
    let written = store
        .put_enrollment(&stale, PutMode::Merge, ttl)
        .await
        .unwrap();
    assert_eq!(written.state, EnrollmentState::Removed);
    assert_eq!(
        written.removal.as_ref().map(|r| r.reason),
        Some(RemovalReason::TokenDeactivated)
    );
    assert_eq!(written.consumer_update_time_ms, Some(1_800_000_000_300));
    assert_eq!(store.get(card(70170)).await.unwrap(), Some(written.clone()));

    // Active again; the REMOVED copy read before it is ENROLLED once written.
    let reactivated = event(
        "n-reactivated-70170",
        1_800_000_000_400,
        70170,
        TokenEventKind::StatusChanged(TokenStatus::Active),
    );
    store.apply_notification(&reactivated).await.unwrap();
    let mut stale_removed = written;
    stale_removed.billing_address_update_time_ms = Some(1_800_000_000_500);
    let written = store
        .put_enrollment(&stale_removed, PutMode::Merge, ttl)
        .await
        .unwrap();
    assert_eq!(written.state, EnrollmentState::Enrolled);
    assert_eq!(written.removal, None);

    // A newer token of the card deactivated meanwhile: the copy read with the first one follows
    // the token the merge keeps (the newer one) too.
    let d = 70171;
    store
        .put_enrollment(&enrolled(d), PutMode::Merge, ttl)
        .await
        .unwrap();
    let first = event(
        "n-first-70171",
        1_800_000_000_100,
        d,
        TokenEventKind::StatusChanged(TokenStatus::Active),
    );
    let NotificationResult::Applied(read_first) = store.apply_notification(&first).await.unwrap()
    else {
        panic!("not applied")
    };
    let mut second = event(
        "n-second-70171",
        1_800_000_000_200,
        d,
        TokenEventKind::StatusChanged(TokenStatus::Deactivated),
    );
    second.token_unique_reference = "DM4MMC0000000002".into();
    let NotificationResult::Applied(shown) = store.apply_notification(&second).await.unwrap()
    else {
        panic!("not applied")
    };
    assert_eq!(
        (
            shown.state,
            shown
                .token
                .as_ref()
                .map(|t| t.token_unique_reference.as_str())
        ),
        (EnrollmentState::Removed, Some("DM4MMC0000000002"))
    );
    let mut stale = read_first;
    stale.consumer_update_time_ms = Some(1_800_000_000_300);
    let written = store
        .put_enrollment(&stale, PutMode::Merge, ttl)
        .await
        .unwrap();
    assert_eq!(
        (
            written.state,
            written
                .token
                .as_ref()
                .map(|t| t.token_unique_reference.as_str())
        ),
        (EnrollmentState::Removed, Some("DM4MMC0000000002"))
    );

    // A TAR about another token after the deactivation (in either order) shows that token but
    // does not hide the deactivation: the card stays REMOVED, at the deactivation's time.
    for (e, order) in [(70172, [0, 1]), (70173, [1, 0])] {
        store
            .put_enrollment(&enrolled(e), PutMode::Merge, ttl)
            .await
            .unwrap();
        let deactivated = event(
            &format!("n-deactivated-{e}"),
            1_800_000_000_100,
            e,
            TokenEventKind::StatusChanged(TokenStatus::Deactivated),
        );
        let mut tar = event(
            &format!("n-tar-{e}"),
            1_800_000_000_200,
            e,
            TokenEventKind::Authorization(TokenizationDecision::Declined),
        );
        tar.token_unique_reference = "DM4MMC0000000002".into();
        let events = [deactivated, tar];
        for i in order {
            store.apply_notification(&events[i]).await.unwrap();
        }
        let r = store.get(card(e)).await.unwrap().unwrap();
        assert_eq!(
            (
                r.state,
                r.removal.map(|x| x.time_ms),
                r.token.map(|t| t.token_unique_reference)
            ),
            (
                EnrollmentState::Removed,
                Some(1_800_000_000_100),
                Some("DM4MMC0000000002".to_owned())
            ),
            "order {order:?}"
        );
    }

    // Deactivated once more: a write without the token keeps the state it writes.
    let again = event(
        "n-deactivated-again-70170",
        1_800_000_000_600,
        70170,
        TokenEventKind::StatusChanged(TokenStatus::Deactivated),
    );
    store.apply_notification(&again).await.unwrap();
    let written = store
        .put_enrollment(&enrolled(70170), PutMode::Merge, ttl)
        .await
        .unwrap();
    assert_eq!(written.state, EnrollmentState::Enrolled);
    assert_eq!(
        written.token.map(|t| t.status),
        Some(Some(TokenStatus::Deactivated))
    );
}

/// The lifecycle's records in the store: a DEACTIVATED token makes an ENROLLED record REMOVED;
/// the first write of a new enrollment after it does not keep the old token (a fenced write
/// does), and opt-outs are kept under each subject until withdrawn.
async fn fresh_after_removal(store: Arc<dyn EnrollmentStore>) {
    use c2p_enroll::domain::{OptOut, RemovalReason};
    let ttl = Duration::from_secs(60);
    let owner = "lifecycle-owner";
    store
        .put_enrollment(&enrolled(70121), PutMode::Merge, ttl)
        .await
        .unwrap();
    let deactivated = event(
        "n-deactivated",
        1_800_000_000_500,
        70121,
        TokenEventKind::StatusChanged(TokenStatus::Deactivated),
    );
    let NotificationResult::Applied(removed) =
        store.apply_notification(&deactivated).await.unwrap()
    else {
        panic!("not applied")
    };
    assert_eq!(removed.state, EnrollmentState::Removed);
    let removal = removed.removal.clone().unwrap();
    assert_eq!(
        (removal.reason, removal.time_ms),
        (RemovalReason::TokenDeactivated, 1_800_000_000_500)
    );
    assert!(store.lock_card(card(70121), owner, ttl).await.unwrap());
    let mut again =
        EnrollmentRecord::new(card(70121), String::new(), EnrollmentState::InProgress, 0);
    again.src_correlation_id = Some("0b9a3c2e-1f4d-4a6b-8c7d-9e0f1a2b3c4e".into());
    let merged = store
        .put_enrollment_fenced(&again, ttl, owner)
        .await
        .unwrap()
        .unwrap();
    assert!(merged.token.is_some(), "a fenced write keeps the token");
    let fresh = store
        .put_fresh_enrollment_fenced(&again, ttl, owner)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (fresh.state, fresh.token),
        (EnrollmentState::InProgress, None)
    );
    assert!(fresh.revision > merged.revision);
    // The dropped token is retired: late news about it (its deactivation again, under another
    // id, one at a time or in a batch) changes nothing, through the new enrollment's later
    // writes too; a new token's news applies.
    assert_eq!(fresh.retired_tokens, ["DM4MMC0000000001"]);
    let late = event(
        "n-late-deactivated",
        1_800_000_000_900,
        70121,
        TokenEventKind::StatusChanged(TokenStatus::Deactivated),
    );
    assert!(matches!(
        store.apply_notification(&late).await.unwrap(),
        NotificationResult::Stale
    ));
    let mut enrolled_again = again.clone();
    enrolled_again.state = EnrollmentState::Enrolled;
    let written = store
        .put_enrollment_fenced(&enrolled_again, ttl, owner)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (written.state, &written.token, &written.retired_tokens[..]),
        (
            EnrollmentState::Enrolled,
            &None,
            &["DM4MMC0000000001".to_owned()][..]
        )
    );
    let late_tcn = event(
        "n-late-tcn",
        1_800_000_001_000,
        70121,
        TokenEventKind::Complete,
    );
    let mut new_tcn = event(
        "n-new-tcn",
        1_800_000_001_000,
        70121,
        TokenEventKind::Complete,
    );
    new_tcn.token_unique_reference = "DM4MMC0000000002".into();
    let batch = store.apply_notifications(&[late_tcn, new_tcn]).await;
    assert!(
        matches!(
            batch[..],
            [
                Ok(NotificationEffect::Stale),
                Ok(NotificationEffect::Applied)
            ]
        ),
        "{batch:?}"
    );
    let now = store.get(card(70121)).await.unwrap().unwrap();
    assert_eq!(now.state, EnrollmentState::Enrolled);
    assert_eq!(
        now.token
            .as_ref()
            .map(|t| t.token_unique_reference.as_str()),
        Some("DM4MMC0000000002")
    );
    assert_eq!(
        store
            .put_fresh_enrollment_fenced(&again, ttl, "not-the-owner")
            .await
            .unwrap(),
        None
    );

    let subjects = vec!["card:70121".to_owned(), "consumer:abc".to_owned()];
    let opt_out = OptOut {
        since_ms: 1_800_000_000_000,
        subjects: subjects.clone(),
        // Kept and read back as given (the withdrawal's program check reads it).
        program: Some("default".into()),
        linked: Vec::new(),
        rev: None,
    };
    keep_opt_out(&store, &opt_out).await;
    for subject in &subjects {
        assert_eq!(
            store
                .get_opt_out(std::slice::from_ref(subject))
                .await
                .unwrap(),
            Some(opt_out.clone())
        );
    }
    assert!(
        store
            .get_opt_out(&["card:70122".into()])
            .await
            .unwrap()
            .is_none()
    );
    // A write or a deletion applies only to the opt-out read: one kept there since (another
    // card's OptOut, a withdrawal) is not overwritten or forgotten.
    let (read, stamp) = store.read_opt_out("consumer:abc").await.unwrap().unwrap();
    assert_eq!(read, opt_out);
    let by_another_card = OptOut {
        since_ms: 1_800_000_000_009,
        subjects: vec!["card:70129".to_owned(), "consumer:abc".to_owned()],
        program: Some("default".into()),
        linked: vec!["card:70121".to_owned()],
        rev: None,
    };
    assert!(
        !store
            .swap_opt_out("consumer:abc", None, Some(&by_another_card))
            .await
            .unwrap(),
        "one is kept there"
    );
    assert!(
        store
            .swap_opt_out("consumer:abc", Some(&stamp), Some(&by_another_card))
            .await
            .unwrap()
    );
    let (now, newer) = store.read_opt_out("consumer:abc").await.unwrap().unwrap();
    assert_eq!(now, by_another_card);
    assert_ne!(newer, stamp);
    assert!(
        !store
            .swap_opt_out("consumer:abc", Some(&stamp), None)
            .await
            .unwrap(),
        "what was read is no longer there"
    );
    assert!(
        !store
            .swap_opt_out("card:70122", Some(&stamp), None)
            .await
            .unwrap(),
        "nothing is kept there"
    );
    // The same opt-out written again in the same words is the one read.
    assert!(
        store
            .swap_opt_out("consumer:abc", Some(&newer), Some(&by_another_card))
            .await
            .unwrap()
    );
    assert!(
        store
            .swap_opt_out("consumer:abc", Some(&newer), None)
            .await
            .unwrap()
    );
    assert!(store.read_opt_out("consumer:abc").await.unwrap().is_none());
    let (_, card_stamp) = store.read_opt_out("card:70121").await.unwrap().unwrap();
    assert!(
        store
            .swap_opt_out("card:70121", Some(&card_stamp), None)
            .await
            .unwrap()
    );
    assert!(store.get_opt_out(&subjects).await.unwrap().is_none());

    // Two opt-outs, each under its own subject: the first subject asked for that holds one
    // answers, whatever the order of the reads behind it.
    let by_card = OptOut {
        since_ms: 1_800_000_000_001,
        subjects: vec!["card:70123".to_owned()],
        program: None,
        linked: Vec::new(),
        rev: None,
    };
    let by_consumer = OptOut {
        since_ms: 1_800_000_000_002,
        subjects: vec!["consumer:def".to_owned()],
        program: None,
        linked: Vec::new(),
        rev: None,
    };
    keep_opt_out(&store, &by_card).await;
    keep_opt_out(&store, &by_consumer).await;
    let both = |first: &str, second: &str| vec![first.to_owned(), second.to_owned()];
    for (asked, expected) in [
        (both("card:70123", "consumer:def"), &by_card),
        (both("consumer:def", "card:70123"), &by_consumer),
        (both("card:70124", "consumer:def"), &by_consumer),
        (both("consumer:none", "card:70123"), &by_card),
    ] {
        assert_eq!(
            store.get_opt_out(&asked).await.unwrap().as_ref(),
            Some(expected),
            "{asked:?}"
        );
    }
}

/// Keeps `opt_out` under each of its subjects, whatever they held.
async fn keep_opt_out(store: &Arc<dyn EnrollmentStore>, opt_out: &c2p_enroll::domain::OptOut) {
    for subject in &opt_out.subjects {
        let kept = store.read_opt_out(subject).await.unwrap().map(|(_, s)| s);
        assert!(
            store
                .swap_opt_out(subject, kept.as_ref(), Some(opt_out))
                .await
                .unwrap()
        );
    }
}

/// `lock_and_read`: the lock as `lock_card` takes it and, only for its holder, the card's record
/// and the opt-out kept under the card's own subject (an opt-out under a consumer alone is not
/// read: the caller reads it beside the lock).
async fn lock_and_read(store: Arc<dyn EnrollmentStore>) {
    use c2p_enroll::domain::OptOut;
    let lease = Duration::from_secs(30);
    let c = card(70130);
    let first = store
        .lock_and_read(c, "A", lease)
        .await
        .unwrap()
        .expect("a free lock is taken");
    assert_eq!(first.record.unwrap(), None);
    assert_eq!(first.opt_out.unwrap(), None);
    assert!(store.lock_and_read(c, "B", lease).await.unwrap().is_none());
    assert!(!store.lock_card(c, "B", lease).await.unwrap(), "A holds it");

    let stored = store
        .put_enrollment(&enrolled(70130), PutMode::Merge, TTL)
        .await
        .unwrap();
    let by_consumer = OptOut {
        since_ms: 1_800_000_000_003,
        subjects: vec!["consumer:lock-and-read".to_owned()],
        program: None,
        linked: Vec::new(),
        rev: None,
    };
    keep_opt_out(&store, &by_consumer).await;
    let renewed = store
        .lock_and_read(c, "A", lease)
        .await
        .unwrap()
        .expect("its holder renews it");
    assert_eq!(renewed.record.unwrap(), Some(stored.clone()));
    assert_eq!(renewed.opt_out.unwrap(), None, "not the card's opt-out");

    let by_card = OptOut {
        since_ms: 1_800_000_000_004,
        subjects: vec!["card:70130".to_owned(), "consumer:lock-and-read".to_owned()],
        program: None,
        linked: Vec::new(),
        rev: None,
    };
    keep_opt_out(&store, &by_card).await;
    store.unlock_card(c, "A").await.unwrap();
    let taken = store
        .lock_and_read(c, "B", lease)
        .await
        .unwrap()
        .expect("released, B takes it");
    assert_eq!(taken.record.unwrap(), Some(stored));
    assert_eq!(taken.opt_out.unwrap(), Some(by_card));
    assert!(store.lock_and_read(c, "A", lease).await.unwrap().is_none());

    // A lock that expired is taken by another owner, as lock_card takes it.
    let d = card(70131);
    let short = Duration::from_millis(200);
    assert!(store.lock_and_read(d, "A", short).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(store.lock_and_read(d, "B", lease).await.unwrap().is_some());
    assert!(!store.renew_card(d, "A", lease).await.unwrap());
    assert!(
        !store.unlock_card(d, "A").await.unwrap(),
        "A's lock ran out and is B's now"
    );
    assert!(store.renew_card(d, "B", lease).await.unwrap(), "B keeps it");
    store.unlock_card(c, "B").await.unwrap();
    store.unlock_card(d, "B").await.unwrap();
}

/// Records vanish after their TTL.
async fn expiry(store: Arc<dyn EnrollmentStore>) {
    store
        .put_enrollment(&enrolled(70009), PutMode::Merge, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(store.get(card(70009)).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(store.get(card(70009)).await.unwrap(), None);
}

/// The store stamps records on its own clock: `create_time` is set once and never moves (not
/// by backdated or future-dated notifications, not by later writes), `update_time` is when the
/// store changed the record, the revision grows with every change and only then; a stale
/// notification, a duplicate, an id reused with other content and a write that changes nothing
/// leave the record as it was, revision included.
async fn stamps(store: &Arc<dyn EnrollmentStore>) {
    let c = 70040;
    let before = now_ms();
    let NotificationResult::Applied(first) = store
        .apply_notification(&event(
            "s-1",
            1_800_000_001_000,
            c,
            TokenEventKind::Complete,
        ))
        .await
        .unwrap()
    else {
        panic!("applied")
    };
    let after = now_ms();
    // Redis' clock and ours are the same machine's here; a little slack for rounding.
    assert!(
        (before - 5..=after + 5).contains(&first.create_time_ms),
        "{first:?}"
    );
    assert_eq!(first.create_time_ms, first.update_time_ms);
    assert!(first.revision >= first.create_time_ms);
    let mut last = first.clone();
    // A backdated and a far-future-dated notification change the token, not create_time.
    // (The TAR is the first write of the decision register, so its old time still applies.)
    for (id, at, kind) in [
        (
            "s-2",
            1_000,
            TokenEventKind::Authorization(TokenizationDecision::Approved),
        ),
        (
            "s-3",
            99_999_999_999_000,
            TokenEventKind::StatusChanged(TokenStatus::Inactive),
        ),
    ] {
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        let NotificationResult::Applied(r) = store
            .apply_notification(&event(id, at, c, kind))
            .await
            .unwrap()
        else {
            panic!("{id} applied")
        };
        assert_eq!(r.create_time_ms, first.create_time_ms, "{id}");
        assert!(r.update_time_ms > last.update_time_ms, "{id}");
        assert!(
            r.update_time_ms < 99_999_999_999_000,
            "{id}: the event time leaked"
        );
        assert!(r.revision > last.revision, "{id}");
        last = r;
    }
    // Nothing changes: stale, duplicate, reused id, a write of the same content.
    assert_eq!(
        store
            .apply_notification(&event(
                "s-4",
                1_800_000_000_000,
                c,
                TokenEventKind::StatusChanged(TokenStatus::Active)
            ))
            .await
            .unwrap(),
        NotificationResult::Stale
    );
    assert_eq!(
        store
            .apply_notification(&event(
                "s-1",
                1_800_000_001_000,
                c,
                TokenEventKind::Complete
            ))
            .await
            .unwrap(),
        NotificationResult::Duplicate
    );
    assert_eq!(
        store
            .apply_notification(&event(
                "s-1",
                1_800_000_001_001,
                c,
                TokenEventKind::Complete
            ))
            .await
            .unwrap(),
        NotificationResult::Conflict
    );
    assert_eq!(store.get(card(c)).await.unwrap().as_ref(), Some(&last));
    let mut same = last.clone();
    same.create_time_ms = 1;
    same.update_time_ms = 2;
    same.revision = 3;
    let unchanged = store
        .put_enrollment(&same, PutMode::Merge, TTL)
        .await
        .unwrap();
    assert_eq!(unchanged, last);
    // An enrollment write changes the record: same create_time, a new revision.
    let enrolled = store
        .put_enrollment(&enrolled(c), PutMode::Merge, TTL)
        .await
        .unwrap();
    assert_eq!(enrolled.create_time_ms, first.create_time_ms);
    assert!(enrolled.revision > last.revision);
    assert_eq!(enrolled.state, EnrollmentState::Enrolled);
}

/// The largest event time the store keeps (5138-11-16T09:46:39.999Z) is written and read back
/// to the millisecond; a later one is refused and leaves the record readable (Redis's Lua JSON
/// used to write `1e+14`, a record that no longer read).
/// The IN_PROGRESS index the reconciler and the operator's gauges read: noted once (the first
/// time wins), counted whole and before a time (strictly), forgotten.
async fn in_progress_index(store: Arc<dyn EnrollmentStore>) {
    assert_eq!(store.count_in_progress(i64::MAX).await.unwrap(), (0, 0));
    for (id, since) in [(72001, 1_000), (72002, 2_000), (72003, 3_000)] {
        store.track_in_progress(card(id), since).await.unwrap();
    }
    // Noted again later: the first time stays.
    store.track_in_progress(card(72001), 9_000).await.unwrap();
    assert_eq!(store.count_in_progress(2_500).await.unwrap(), (3, 2));
    assert_eq!(store.count_in_progress(2_000).await.unwrap(), (3, 1));
    assert_eq!(store.count_in_progress(1_000).await.unwrap(), (3, 0));
    assert_eq!(
        store.in_progress_before(2_500, 10).await.unwrap(),
        vec![card(72001), card(72002)]
    );
    // A requeue moves a note that is there, and adds none.
    store.requeue_in_progress(card(72002), 8_000).await.unwrap();
    store.requeue_in_progress(card(72009), 500).await.unwrap();
    assert_eq!(
        store.in_progress_before(i64::MAX, 10).await.unwrap(),
        vec![card(72001), card(72003), card(72002)]
    );
    store.untrack_in_progress(card(72001)).await.unwrap();
    assert_eq!(store.count_in_progress(2_500).await.unwrap(), (2, 0));
    for id in [72002, 72003] {
        store.untrack_in_progress(card(id)).await.unwrap();
    }
    assert_eq!(store.count_in_progress(i64::MAX).await.unwrap(), (0, 0));

    // The ENROLLED index: a conditional removal takes a card only while it is still due.
    store.track_enrolled(card(72101), 1_000).await.unwrap();
    assert!(
        !store
            .untrack_enrolled_due(card(72101), 1_000)
            .await
            .unwrap()
    );
    assert!(
        !store
            .untrack_enrolled_due(card(72102), 5_000)
            .await
            .unwrap()
    );
    assert_eq!(
        store.enrolled_due(i64::MAX, 10).await.unwrap(),
        vec![card(72101)]
    );
    assert!(
        store
            .untrack_enrolled_due(card(72101), 1_001)
            .await
            .unwrap()
    );
    assert!(store.enrolled_due(i64::MAX, 10).await.unwrap().is_empty());
    // At real times (ms since 1970), as Redis writes the score and the script reads it back.
    store
        .track_enrolled(card(72103), 1_764_000_000_123)
        .await
        .unwrap();
    assert!(
        !store
            .untrack_enrolled_due(card(72103), 1_764_000_000_123)
            .await
            .unwrap()
    );
    assert!(
        store
            .untrack_enrolled_due(card(72103), 1_764_000_000_124)
            .await
            .unwrap()
    );
}

async fn large_event_times_read_back_exactly(store: Arc<dyn EnrollmentStore>) {
    let last = c2p_enroll::domain::STORE_INTEGER_LIMIT - 1;
    let NotificationResult::Applied(applied) = store
        .apply_notification(&event("n-last", last, 70020, TokenEventKind::Complete))
        .await
        .unwrap()
    else {
        panic!("the last storable time is applied")
    };
    let read = store.get(card(70020)).await.unwrap().unwrap();
    assert_eq!(read, applied);
    let version = read.token.as_ref().unwrap().status_version.clone().unwrap();
    assert_eq!(version.at_ms, last);
    // The record's own times are the store's clock, not the event's.
    assert!(read.update_time_ms < last && read.create_time_ms <= read.update_time_ms);
    // A later time on the same card is refused; the record still reads, unchanged.
    for far in [
        c2p_enroll::domain::STORE_INTEGER_LIMIT,
        200_000_000_000_123,
        i64::MAX,
        -1,
    ] {
        let err = store
            .apply_notification(&event(
                &format!("n-far-{far}"),
                far,
                70020,
                TokenEventKind::StatusChanged(TokenStatus::Suspended),
            ))
            .await
            .unwrap_err();
        assert!(
            matches!(err, store::StoreError::Refused(_)),
            "{far}: {err:?}"
        );
        assert_eq!(store.get(card(70020)).await.unwrap().as_ref(), Some(&read));
    }
    // An enrollment write keeps the large time; a record holding a later one is refused.
    let merged = store
        .put_enrollment(&enrolled(70020), PutMode::Merge, TTL)
        .await
        .unwrap();
    assert_eq!(merged.token, read.token);
    assert_eq!(store.get(card(70020)).await.unwrap(), Some(merged));
    let mut far = enrolled(70021);
    far.update_time_ms = c2p_enroll::domain::STORE_INTEGER_LIMIT;
    let err = store
        .put_enrollment(&far, PutMode::Merge, TTL)
        .await
        .unwrap_err();
    assert!(matches!(err, store::StoreError::Refused(_)), "{err:?}");
    assert_eq!(store.get(card(70021)).await.unwrap(), None);
}

/// Every order of these notifications, each delivered twice, ends in the same record.
async fn permutations_converge(store: Arc<dyn EnrollmentStore>, card_base: i64) {
    let kinds = [
        TokenEventKind::Authorization(TokenizationDecision::Approved),
        TokenEventKind::Complete,
        TokenEventKind::StatusChanged(TokenStatus::Suspended),
        TokenEventKind::StatusChanged(TokenStatus::Active),
    ];
    let mut finals = Vec::new();
    for (n, order) in permutations(4).into_iter().enumerate() {
        let card_id = card_base + n as i64;
        let events: Vec<TokenEvent> = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| {
                event(
                    &format!("n{i}"),
                    1_800_000_000_000 + i as i64 * 1000,
                    card_id,
                    *k,
                )
            })
            .collect();
        for i in order.iter().chain(order.iter().rev()) {
            store.apply_notification(&events[*i]).await.unwrap();
        }
        let mut record = store.get(card(card_id)).await.unwrap().unwrap();
        record.card_contract_id = card(card_base);
        // The store's stamps differ per card (its clock); the content must not.
        (
            record.create_time_ms,
            record.update_time_ms,
            record.revision,
        ) = (0, 0, 0);
        finals.push(record);
    }
    assert_eq!(finals.len(), 24);
    let token = finals[0].token.clone().unwrap();
    assert_eq!(
        (token.status, token.decision),
        (
            Some(TokenStatus::Active),
            Some(TokenizationDecision::Approved)
        )
    );
    for f in &finals {
        assert_eq!(f, &finals[0]);
    }
}

/// A notification about token `reference` (the suite's other events are about one token).
fn event_for(
    id: &str,
    at_ms: i64,
    card_id: i64,
    reference: &str,
    kind: TokenEventKind,
) -> TokenEvent {
    TokenEvent {
        token_unique_reference: reference.into(),
        ..event(id, at_ms, card_id, kind)
    }
}

/// Notification sets whose order used to show: equal event times (two tokens, two statuses,
/// two decisions), a stale notification that is also the earliest, and a token replaced and
/// then written again. Every order of each set ends in the same record; returns one record per
/// set (card ids from `card_base`), for comparing adapters.
pub(crate) async fn ties_converge(
    store: Arc<dyn EnrollmentStore>,
    card_base: i64,
) -> Vec<EnrollmentRecord> {
    const T: i64 = 1_800_000_000_000;
    let (a, b) = ("DM4MMC000000000A", "DM4MMC000000000B");
    let suspended = TokenEventKind::StatusChanged(TokenStatus::Suspended);
    let approved = TokenEventKind::Authorization(TokenizationDecision::Approved);
    let declined = TokenEventKind::Authorization(TokenizationDecision::Declined);
    let sets: Vec<Vec<Note>> = vec![
        // Two TCNs for two tokens at the same time.
        vec![
            ("n-1", T, a, TokenEventKind::Complete),
            ("n-2", T, b, TokenEventKind::Complete),
        ],
        // Two statuses and two decisions of one token at the same time.
        vec![
            ("n-1", T, a, suspended),
            ("n-2", T, a, TokenEventKind::Complete),
            ("n-3", T, a, approved),
            ("n-4", T, a, declined),
        ],
        // Ids that sort differently byte-wise and in a natural-language collation.
        vec![
            ("n-a", T, a, suspended),
            ("n-B", T, a, suspended),
            ("n-c", T, b, approved),
            ("n-D", T, b, approved),
        ],
        // The earliest notification is stale when it comes last.
        vec![
            ("n-1", T + 3_000, a, suspended),
            ("n-2", T + 2_000, a, TokenEventKind::Complete),
        ],
        // A is replaced by B, then written again: A's earlier write must not depend on order.
        vec![
            ("n-1", T + 1_000, a, TokenEventKind::Complete),
            ("n-2", T + 2_000, b, approved),
            ("n-3", T + 3_000, a, approved),
        ],
    ];
    let mut per_set = Vec::new();
    for (s, set) in sets.iter().enumerate() {
        per_set.push(converge_set(&store, card_base + (s as i64) * 100, set).await);
    }
    per_set
}

/// One notification: id, event time, token reference, what happened.
type Note<'a> = (&'a str, i64, &'a str, TokenEventKind);

/// Applies `set` in every order (each notification twice, forward then backward), one card per
/// order from `card_base`; asserts that every order ends in the same record and returns it
/// (with the card id `card_base`).
async fn converge_set(
    store: &Arc<dyn EnrollmentStore>,
    card_base: i64,
    set: &[Note<'_>],
) -> EnrollmentRecord {
    let orders = permutations(set.len());
    let mut first: Option<EnrollmentRecord> = None;
    for (n, order) in orders.iter().enumerate() {
        let card_id = card_base + n as i64;
        for i in order.iter().chain(order.iter().rev()) {
            let (id, at, reference, kind) = set[*i];
            store
                .apply_notification(&event_for(id, at, card_id, reference, kind))
                .await
                .unwrap();
        }
        let mut record = store.get(card(card_id)).await.unwrap().unwrap();
        record.card_contract_id = card(card_base);
        // The store's stamps differ per card (its clock); the content must not.
        (
            record.create_time_ms,
            record.update_time_ms,
            record.revision,
        ) = (0, 0, 0);
        match &first {
            None => first = Some(record),
            Some(first) => assert_eq!(
                &record, first,
                "order {order:?} gave another record than order {:?}",
                orders[0]
            ),
        }
    }
    first.unwrap()
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for i in 0..=p.len() {
            let mut q = p.clone();
            q.insert(i, n - 1);
            out.push(q);
        }
    }
    out
}

#[tokio::test]
async fn memory_store_passes_the_suite() {
    let store = c2p_enroll::server::open_store(&settings(&[])).unwrap();
    assert_eq!(store.kind(), "memory");
    suite(store.clone()).await;
    expiry(store.clone()).await;
    permutations_converge(store.clone(), 80_000).await;
    ties_converge(store.clone(), 81_000).await;
    in_progress_index(store.clone()).await;
    lock_and_read(store.clone()).await;
    large_event_times_read_back_exactly(store).await;
}

#[tokio::test]
async fn redis_store_passes_the_suite() {
    let redis = RedisServer::start();
    let store =
        c2p_enroll::server::open_store(&settings(&[("C2P_REDIS__URL", &redis.url())])).unwrap();
    assert_eq!(store.kind(), "redis");
    suite(store.clone()).await;
    expiry(store.clone()).await;
    permutations_converge(store.clone(), 80_000).await;
    ties_converge(store.clone(), 81_000).await;
    in_progress_index(store.clone()).await;
    lock_and_read(store.clone()).await;
    large_event_times_read_back_exactly(store).await;
}

#[tokio::test]
async fn redis_cluster_store_passes_the_suite() {
    let cluster = RedisCluster::start();
    let store = c2p_enroll::server::open_store(&settings(&[
        ("C2P_REDIS__URL", &cluster.urls()),
        ("C2P_REDIS__CLUSTER", "true"),
    ]))
    .unwrap();
    suite(store.clone()).await;
    expiry(store.clone()).await;
    permutations_converge(store.clone(), 80_000).await;
    ties_converge(store.clone(), 81_000).await;
    in_progress_index(store.clone()).await;
    lock_and_read(store.clone()).await;
    large_event_times_read_back_exactly(store).await;
}

/// A second watch of a card opened while the first one's subscription is on its way waits for
/// a subscription of its own: a change written right after it opened reaches it.
#[tokio::test]
async fn redis_a_second_watch_opened_while_the_first_subscribes_sees_the_next_change() {
    let redis = RedisServer::start();
    let store =
        c2p_enroll::server::open_store(&settings(&[("C2P_REDIS__URL", &redis.url())])).unwrap();
    // The store's own connection is up, so that the write below is quick.
    store
        .put_enrollment(&enrolled(70191), PutMode::Merge, TTL)
        .await
        .unwrap();
    let first = tokio::spawn({
        let store = store.clone();
        async move { store.watch(card(70190)).await }
    });
    // The first watch has asked for its subscription (the feed connects now).
    tokio::task::yield_now().await;
    let mut second = store.watch(card(70190)).await.unwrap();
    let written = store
        .put_enrollment(&enrolled(70190), PutMode::Merge, TTL)
        .await
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), second.next())
        .await
        .expect("the change, not silence")
        .expect("the stream goes on");
    assert_eq!(seen, written);
    drop(first.await.unwrap().unwrap());
}

/// A watch of card `id`, past its first change: the record written for it.
async fn watching_a_record(
    store: &Arc<dyn EnrollmentStore>,
    id: i64,
) -> (store::ChangeStream, EnrollmentRecord) {
    let mut changes = store.watch(card(id)).await.unwrap();
    let written = store
        .put_enrollment(&enrolled(id), PutMode::Merge, TTL)
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), changes.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.revision, written.revision);
    (changes, written)
}

/// A change published in a form this process cannot read (another version's record) makes the
/// card's watchers read the record again: they were left on the state before it, with
/// heartbeats saying nothing changed, until the next change this version could read.
#[tokio::test]
async fn redis_a_change_published_unreadable_is_read_again_by_the_watchers() {
    let redis = RedisServer::start();
    let store =
        c2p_enroll::server::open_store(&settings(&[("C2P_REDIS__URL", &redis.url())])).unwrap();
    let mut conn = redis.connection();
    let id = 70190;
    let (mut changes, written) = watching_a_record(&store, id).await;
    // Another version's writer changes the record and publishes what this one cannot parse.
    let key = format!("c2p:{{card:{id}}}:enrollment");
    let raw: String = conn.get(&key).unwrap();
    let mut newer: serde_json::Value = serde_json::from_str(&raw).unwrap();
    newer["revision"] = serde_json::json!(written.revision + 1);
    newer["src_correlation_id"] = serde_json::json!("from-a-newer-version");
    let _: () = conn.set(&key, newer.to_string()).unwrap();
    let _: i64 = conn
        .publish(
            format!("c2p:changes:{{card:{id}}}"),
            r#"{"state":"A_STATE_OF_A_NEWER_VERSION"}"#,
        )
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), changes.next())
        .await
        .expect("the watcher reads the record again")
        .unwrap();
    assert_eq!(next.revision, written.revision + 1);
    assert_eq!(
        next.src_correlation_id.as_deref(),
        Some("from-a-newer-version")
    );
}

/// Writes card `id`'s record `times` times (each a change), then waits for the feed to deliver
/// them: a watcher that read none of them has fallen behind.
async fn change_unread(store: &Arc<dyn EnrollmentStore>, id: i64, times: usize) {
    for i in 0..times {
        let mut record = enrolled(id);
        record.src_correlation_id = Some(format!("correlation-{i}"));
        store
            .put_enrollment(&record, PutMode::Merge, TTL)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Stops `redis` (SIGSTOP) and waits up to `limit` for `changes` to end: how long that took,
/// `None` if it did not; `redis` runs again after.
async fn ends_while_frozen(
    redis: &RedisServer,
    changes: &mut store::ChangeStream,
    limit: Duration,
) -> Option<Duration> {
    redis.freeze();
    let began = std::time::Instant::now();
    let ended =
        tokio::time::timeout(limit, async { while changes.next().await.is_some() {} }).await;
    let took = began.elapsed();
    redis.thaw();
    ended.ok().map(|()| took)
}

/// A watcher that must read its record again while Redis hangs ends within the README's 10 s,
/// however long each read waits: counted in attempts, 20 reads of `redis.response_timeout`
/// (3 s here) and a pause each took 70 s.
#[tokio::test]
async fn redis_a_resync_while_redis_hangs_gives_up_within_10_s() {
    let redis = RedisServer::start();
    let store = c2p_enroll::server::open_store(&settings(&[
        ("C2P_REDIS__URL", &redis.url()),
        ("C2P_REDIS__RESPONSE_TIMEOUT", "3s"),
    ]))
    .unwrap();
    let id = 70191;
    let mut changes = store.watch(card(id)).await.unwrap();
    // The watcher reads nothing while its card changes: it falls behind, and must re-read.
    change_unread(&store, id, 10).await;
    let took = ends_while_frozen(&redis, &mut changes, Duration::from_secs(90))
        .await
        .expect("the watch did not end in 90 s");
    println!("the re-read gave up after {took:?}");
    assert!(
        took < Duration::from_secs(13),
        "the re-read gave up after {took:?}"
    );
}

/// A watch whose feed has lost Redis ends once the feed has been without a connection for 10 s
/// (`OUTAGE_ENDS_WATCHES`), so that its client learns it and watches again: it stayed open,
/// its heartbeats saying nothing changed, for as long as the outage lasted.
#[tokio::test]
async fn redis_a_watch_ends_when_its_feed_stays_without_redis() {
    let redis = RedisServer::start();
    let store =
        c2p_enroll::server::open_store(&settings(&[("C2P_REDIS__URL", &redis.url())])).unwrap();
    let id = 70192;
    let (mut changes, _) = watching_a_record(&store, id).await;
    let took = ends_while_frozen(&redis, &mut changes, Duration::from_secs(40))
        .await
        .expect("the watch was still open 40 s into the outage");
    println!("the watch ended {took:?} into the outage");
    assert!(
        took >= Duration::from_secs(10),
        "ended before the outage lasted 10 s: {took:?}"
    );
}

/// A watch opened while the feed has no connection, and confirmed once Redis is back, follows
/// its card: the word that ended the watches of the outage, given while it waited, ended it at
/// once too (every client watching again as told, to have its new watch ended).
#[tokio::test]
async fn redis_a_watch_opened_during_an_outage_follows_its_card_once_redis_is_back() {
    let redis = RedisServer::start();
    // Attempts of 3 s (on a stopped node, each waits that long), a new watch waiting 9 s.
    let store = c2p_enroll::server::open_store(&settings(&[
        ("C2P_REDIS__URL", &redis.url()),
        ("C2P_REDIS__CONNECT_TIMEOUT", "3s"),
    ]))
    .unwrap();
    let mut before = store.watch(card(70193)).await.unwrap();
    redis.freeze();
    tokio::time::timeout(Duration::from_secs(40), async {
        while before.next().await.is_some() {}
    })
    .await
    .expect("the outage ends the watch");
    // A client watching again, as told, while Redis is still out.
    let opening = {
        let store = store.clone();
        tokio::spawn(async move { store.watch(card(70194)).await })
    };
    // At least one more attempt fails (and ends the outage's watches) while it waits.
    tokio::time::sleep(Duration::from_secs(4)).await;
    redis.thaw();
    let mut after = opening
        .await
        .unwrap()
        .expect("the watch opens once Redis is back");
    let written = store
        .put_enrollment(&enrolled(70194), PutMode::Merge, TTL)
        .await
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), after.next())
        .await
        .expect("the new watch follows its card")
        .expect("the new watch is open");
    assert_eq!(seen.revision, written.revision);
}

/// A watcher whose feed must read its record again (it fell behind) and cannot (the record is
/// unreadable) is ended, so that its client watches again, rather than left open and silent
/// while the changes it missed are never shown.
#[tokio::test]
async fn redis_a_watch_whose_record_cannot_be_read_again_ends() {
    let redis = RedisServer::start();
    let store =
        c2p_enroll::server::open_store(&settings(&[("C2P_REDIS__URL", &redis.url())])).unwrap();
    let mut conn = redis.connection();
    // Unreadable as JSON, and a value of another Redis type: neither is retried.
    for (id, hash) in [(70180, false), (70181, true)] {
        let mut changes = store.watch(card(id)).await.unwrap();
        change_unread(&store, id, 50).await;
        let key = format!("c2p:{{card:{id}}}:enrollment");
        if hash {
            let _: () = conn.del(&key).unwrap();
            let _: () = conn.hset(&key, "field", "value").unwrap();
        } else {
            let _: () = conn.set(&key, "{not json").unwrap();
        }
        let mut sent = 0;
        loop {
            let next = tokio::time::timeout(Duration::from_secs(5), changes.next())
                .await
                .expect("the stream ends, not silence");
            match next {
                Some(record) => {
                    assert_eq!(record.card_contract_id, card(id));
                    sent += 1;
                    assert!(sent < 50, "the backlog is not replayed");
                }
                None => break,
            }
        }
    }
}

/// A watcher that reads nothing while its card changes many times holds only a few of the
/// changes (each watched card's buffer is small: `store/feed.rs`, `CARD_BUFFER`), and when it
/// reads it is not left behind: it gets the record as it is now, read again, before anything
/// older; every change it is given is of its card.
#[tokio::test]
async fn redis_a_watcher_that_lags_gets_the_final_state_not_the_backlog() {
    const CHANGES: usize = 50;
    let redis = RedisServer::start();
    let store =
        c2p_enroll::server::open_store(&settings(&[("C2P_REDIS__URL", &redis.url())])).unwrap();
    let mut changes = store.watch(card(70101)).await.unwrap();
    let mut last = None;
    for i in 0..CHANGES {
        let mut record = enrolled(70101);
        record.src_correlation_id = Some(format!("correlation-{i}"));
        last = Some(
            store
                .put_enrollment(&record, PutMode::Merge, TTL)
                .await
                .unwrap(),
        );
        // Another card's changes go elsewhere.
        store
            .put_enrollment(&enrolled(70102 + i as i64), PutMode::Merge, TTL)
            .await
            .unwrap();
    }
    let last = last.unwrap();
    // Let the feed take in every published change before the watcher reads.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut seen = Vec::new();
    while seen.last() != Some(&last) {
        let record = tokio::time::timeout(Duration::from_secs(5), changes.next())
            .await
            .expect("the final state, not silence")
            .expect("the stream goes on");
        assert_eq!(record.card_contract_id, card(70101));
        seen.push(record);
    }
    assert_eq!(
        seen.len(),
        1,
        "the record read again comes first, not the backlog: revisions {:?}",
        seen.iter().map(|r| r.revision).collect::<Vec<_>>()
    );
}

/// Watches opened all at once (their subscriptions go to Redis in batches) each get their own
/// card's changes, and leave no subscription behind when dropped.
#[tokio::test]
async fn redis_watches_opened_at_once_each_follow_their_card_and_leave_nothing_behind() {
    const WATCHES: i64 = 300;
    let redis = RedisServer::start();
    let store = c2p_enroll::server::open_store(&settings(&[
        ("C2P_REDIS__URL", &redis.url()),
        // The record cache subscribes cards of its own; off, so that what is left is the watches'.
        ("C2P_STORE__CACHE_SIZE", "0"),
    ]))
    .unwrap();
    let opened =
        futures::future::join_all((0..WATCHES).map(|i| store.watch(card(70_200 + i)))).await;
    let mut watches: Vec<_> = opened.into_iter().map(Result::unwrap).collect();
    for i in (0..WATCHES).rev() {
        store
            .put_enrollment(&enrolled(70_200 + i), PutMode::Merge, TTL)
            .await
            .unwrap();
    }
    for (i, changes) in watches.iter_mut().enumerate() {
        let seen = tokio::time::timeout(Duration::from_secs(5), changes.next())
            .await
            .expect("each watch gets its card's change")
            .unwrap();
        assert_eq!(seen.card_contract_id, card(70_200 + i as i64));
    }
    drop(watches);
    let mut conn = redis.connection();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let channels: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .query(&mut conn)
            .unwrap();
        if channels.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} channel(s) left subscribed",
            channels.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn redis_keys_carry_the_prefix_and_the_card_hash_tag_and_no_card_number() {
    let redis = RedisServer::start();
    let s = settings(&[
        ("C2P_REDIS__URL", &redis.url()),
        ("C2P_REDIS__KEY_PREFIX", "bank7:"),
    ]);
    let store = c2p_enroll::server::open_store(&s).unwrap();
    store
        .put_enrollment(&enrolled(70001), PutMode::Merge, TTL)
        .await
        .unwrap();
    store
        .apply_notification(&event(
            "n-1",
            1_800_000_001_000,
            70001,
            TokenEventKind::Complete,
        ))
        .await
        .unwrap();

    let mut conn = redis.connection();
    let mut keys: Vec<String> = conn.keys("*").unwrap();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "bank7:{card:70001}:enrollment".to_string(),
            "bank7:{card:70001}:notification:n-1".to_string()
        ]
    );
    let ttl: i64 = conn.pttl("bank7:{card:70001}:enrollment").unwrap();
    assert!(ttl > 0, "the record has no TTL ({ttl})");
    let dedup_ttl: i64 = conn.pttl("bank7:{card:70001}:notification:n-1").unwrap();
    assert!(
        dedup_ttl > 71 * 3600 * 1000,
        "dedup markers are kept at least 72 h ({dedup_ttl} ms)"
    );
    let value: String = conn.get("bank7:{card:70001}:enrollment").unwrap();
    assert!(value.contains("\"pan_last_four\":\"9726\""), "{value}");
    assert!(!value.contains("5186001700009726"));
}

/// Calls of each command Redis has run so far (`INFO commandstats`; a script's own calls count
/// under their names too).
fn command_calls(conn: &mut redis::Connection) -> std::collections::HashMap<String, u64> {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

/// A notification alone (an enrollment's TAR or TCN) is merged by the script in one round trip;
/// a batch is read first (TIME and MGET) and written with one compare-and-set script call.
#[tokio::test]
async fn redis_a_lone_notification_is_one_script_call_a_batch_is_read_first() {
    let redis = RedisServer::start();
    let store =
        c2p_enroll::server::open_store(&settings(&[("C2P_REDIS__URL", &redis.url())])).unwrap();
    let mut conn = redis.connection();
    let both_applied = |b: &[Result<NotificationEffect, store::StoreError>]| {
        matches!(
            b,
            [
                Ok(NotificationEffect::Applied),
                Ok(NotificationEffect::Applied)
            ]
        )
    };
    let delta = |before: &std::collections::HashMap<String, u64>,
                 after: &std::collections::HashMap<String, u64>,
                 name: &str| {
        after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0)
    };

    // Each script is loaded by its first call (NOSCRIPT, SCRIPT LOAD, again): both first.
    for (i, n) in [1_i64, 2].into_iter().enumerate() {
        let warm: Vec<TokenEvent> = (0..n)
            .map(|k| {
                let id = format!("warm-{i}-{k}");
                event(&id, 1_800_000_001_000, 70020 + k, TokenEventKind::Complete)
            })
            .collect();
        store.apply_notifications(&warm).await;
    }

    let before = command_calls(&mut conn);
    let lone = store
        .apply_notifications(&[event(
            "n-1",
            1_800_000_001_000,
            70011,
            TokenEventKind::Complete,
        )])
        .await;
    let after = command_calls(&mut conn);
    assert!(
        matches!(lone.as_slice(), [Ok(NotificationEffect::Applied)]),
        "{lone:?}"
    );
    assert_eq!(delta(&before, &after, "evalsha"), 1);
    assert_eq!(delta(&before, &after, "mget"), 0);

    let before = command_calls(&mut conn);
    let batch = store
        .apply_notifications(&[
            event("n-2", 1_800_000_001_000, 70012, TokenEventKind::Complete),
            event("n-3", 1_800_000_001_000, 70013, TokenEventKind::Complete),
        ])
        .await;
    let after = command_calls(&mut conn);
    assert!(both_applied(&batch), "{batch:?}");
    assert_eq!(delta(&before, &after, "mget"), 1);
    assert_eq!(delta(&before, &after, "evalsha"), 1);

    // A record key of another type reads as absent in the plan's MGET: the write script's
    // compare fails on it and leaves it to the Lua merge, which sets it aside; the batch's
    // other card is written as usual.
    let _: () = redis::cmd("HSET")
        .arg("c2p:{card:70014}:enrollment")
        .arg("state")
        .arg("enrolled")
        .query(&mut conn)
        .unwrap();
    let batch = store
        .apply_notifications(&[
            event("n-4", 1_800_000_001_000, 70014, TokenEventKind::Complete),
            event("n-5", 1_800_000_001_000, 70015, TokenEventKind::Complete),
        ])
        .await;
    assert!(both_applied(&batch), "{batch:?}");
    let aside: Vec<String> = redis::cmd("KEYS")
        .arg("c2p:{card:70014}:enrollment:quarantined:*")
        .query(&mut conn)
        .unwrap();
    assert_eq!(aside.len(), 1, "the hash is kept aside for inspection");
    assert!(store.get(card(70014)).await.unwrap().is_some());

    // Records set aside one after another, many within one millisecond: each is kept (the
    // name was the millisecond alone, and a rename onto it lost the one before).
    for i in 0..100 {
        let _: () = redis::cmd("SET")
            .arg("c2p:{card:70016}:enrollment")
            .arg(format!("{{not json {i}"))
            .query(&mut conn)
            .unwrap();
        assert!(store.get(card(70016)).await.unwrap().is_none());
    }
    let aside: Vec<String> = redis::cmd("KEYS")
        .arg("c2p:{card:70016}:enrollment:quarantined:*")
        .query(&mut conn)
        .unwrap();
    assert_eq!(aside.len(), 100, "every record set aside is kept");
}

/// EnrollCard's lock and the reads under it are one command of the client (the script; Redis'
/// slow log, at a threshold of 0, lists every command, a script's own under the client `?:0`), and
/// what the script cannot read is handled as the plain reads handle it: an unreadable record is
/// set aside and reads as absent, an opt-out key of another type is an error.
#[tokio::test]
async fn redis_lock_and_read_is_one_command_and_sets_an_unreadable_record_aside() {
    let redis = RedisServer::start();
    let store =
        c2p_enroll::server::open_store(&settings(&[("C2P_REDIS__URL", &redis.url())])).unwrap();
    let mut conn = redis.connection();
    let lease = Duration::from_secs(30);
    let stored = store
        .put_enrollment(&enrolled(70140), PutMode::Merge, TTL)
        .await
        .unwrap();
    // Loaded once, so that the command counted below is the call itself (not SCRIPT LOAD).
    let warm = store.lock_and_read(card(70141), "A", lease).await.unwrap();
    assert!(warm.is_some());

    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg("0")
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("SLOWLOG").arg("RESET").query(&mut conn).unwrap();
    let locked = store
        .lock_and_read(card(70140), "A", lease)
        .await
        .unwrap()
        .expect("free");
    let log: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg("100")
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg("10000")
        .query(&mut conn)
        .unwrap();
    assert_eq!(locked.record.unwrap(), Some(stored));
    let commands: Vec<String> = log
        .iter()
        .filter_map(|entry| {
            let redis::Value::Array(fields) = entry else {
                return None;
            };
            let (Some(redis::Value::Array(args)), Some(client)) = (fields.get(3), fields.get(4))
            else {
                return None;
            };
            if matches!(client, redis::Value::BulkString(c) if c.as_slice() == b"?:0") {
                return None;
            }
            match args.first() {
                Some(redis::Value::BulkString(name)) => {
                    Some(String::from_utf8_lossy(name).to_uppercase())
                }
                _ => None,
            }
        })
        .filter(|name| name != "SLOWLOG")
        .collect();
    assert_eq!(commands, ["EVALSHA"], "{commands:?}");

    // A record that is not JSON, and one of another Redis type: set aside, read as absent.
    let _: () = conn
        .set("c2p:{card:70142}:enrollment", "{not json")
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("c2p:{card:70143}:enrollment")
        .arg("state")
        .arg("enrolled")
        .query(&mut conn)
        .unwrap();
    for id in [70142, 70143] {
        let locked = store
            .lock_and_read(card(id), "A", lease)
            .await
            .unwrap()
            .expect("free");
        assert_eq!(locked.record.unwrap(), None, "card {id}");
        assert_eq!(locked.opt_out.unwrap(), None, "card {id}");
        let aside: Vec<String> = redis::cmd("KEYS")
            .arg(format!("c2p:{{card:{id}}}:enrollment:quarantined:*"))
            .query(&mut conn)
            .unwrap();
        assert_eq!(aside.len(), 1, "card {id}: kept aside for inspection");
    }

    // The card's opt-out key of another type: an error of that read alone, the lock held.
    let _: () = redis::cmd("HSET")
        .arg("c2p:optout:{card:70144}")
        .arg("since_ms")
        .arg("1")
        .query(&mut conn)
        .unwrap();
    let locked = store
        .lock_and_read(card(70144), "A", lease)
        .await
        .unwrap()
        .expect("free");
    assert!(
        matches!(locked.opt_out, Err(store::StoreError::Corrupt(_))),
        "{:?}",
        locked.opt_out
    );
    assert!(!store.lock_card(card(70144), "B", lease).await.unwrap());
}

/// An opt-out key that holds another Redis type is unreadable (`Corrupt`, as a record is), for
/// the reads and for the compare-and-set alike: not a store that a retry finds back.
#[tokio::test]
async fn redis_an_opt_out_key_of_another_type_is_unreadable_not_unavailable() {
    let redis = RedisServer::start();
    let store =
        c2p_enroll::server::open_store(&settings(&[("C2P_REDIS__URL", &redis.url())])).unwrap();
    let mut conn = redis.connection();
    let _: () = conn
        .hset("c2p:optout:{card:70160}", "field", "value")
        .unwrap();
    let subject = "card:70160";
    let read = store.read_opt_out(subject).await;
    assert!(
        matches!(read, Err(store::StoreError::Corrupt(_))),
        "{read:?}"
    );
    let got = store.get_opt_out(&[subject.to_owned()]).await;
    assert!(matches!(got, Err(store::StoreError::Corrupt(_))), "{got:?}");
    let swapped = store.swap_opt_out(subject, None, None).await;
    assert!(
        matches!(swapped, Err(store::StoreError::Corrupt(_))),
        "{swapped:?}"
    );
}

#[tokio::test]
async fn redis_store_reports_unavailable_then_recovers() {
    let mut redis = RedisServer::start();
    let store =
        c2p_enroll::server::open_store(&settings(&[("C2P_REDIS__URL", &redis.url())])).unwrap();
    store.ping().await.unwrap();
    redis.stop();
    let err = store.get(card(70001)).await.unwrap_err();
    assert!(matches!(err, store::StoreError::Unavailable(_)), "{err:?}");
    let err = store
        .apply_notification(&event(
            "n-down",
            1_800_000_001_000,
            70001,
            TokenEventKind::Complete,
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, store::StoreError::Unavailable(_)), "{err:?}");
    redis.restart();
    // The connection manager reconnects by itself within a few attempts.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.ping().await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "no reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.get(card(70001)).await.unwrap(), None);
}

/// The scripts' backstop: a number cjson would round is refused (`Refused`), not written as
/// `1e+14`. The Rust side refuses such times before the scripts run; an idempotency lease is
/// not checked there, so it shows the script's own guard.
#[tokio::test]
async fn redis_scripts_refuse_numbers_cjson_would_round() {
    let redis = RedisServer::start();
    let store =
        c2p_enroll::server::open_store(&settings(&[("C2P_REDIS__URL", &redis.url())])).unwrap();
    let far = c2p_enroll::domain::STORE_INTEGER_LIMIT;
    let scope = "caller-a\u{0}key-far";
    assert!(matches!(
        store
            .idempotency_begin(scope, &proposal("A", "fp1", 1), 0)
            .await
            .unwrap(),
        Begin::New(_)
    ));
    // A's 1 ms lease runs out.
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The lease ran out: B resumes, and the script would write B's lease, past 10^14.
    let err = store
        .idempotency_begin(scope, &proposal("B", "fp1", far + 5), 2_000)
        .await
        .unwrap_err();
    assert!(matches!(err, store::StoreError::Refused(_)), "{err:?}");
    // A's record is still there as A wrote it.
    let mut conn = redis.connection();
    let keys: Vec<String> = conn.keys("*idempotency*").unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let raw: String = conn.get(&keys[0]).unwrap();
    assert!(raw.contains("\"owner\":\"A\""), "{raw}");
}

/// A Redis whose C library collates as American English (`a` < `B`; bytes say `B` < `a`) merges
/// as Rust does: its scripts compare bytes, not with Lua's `<` (which follows LC_COLLATE).
#[tokio::test]
async fn redis_in_a_natural_language_locale_merges_as_rust_does() {
    let redis = RedisServer::start_in_collating_locale();
    let in_locale =
        c2p_enroll::server::open_store(&settings(&[("C2P_REDIS__URL", &redis.url())])).unwrap();
    let memory = c2p_enroll::server::open_store(&settings(&[])).unwrap();
    const T: i64 = 1_800_000_000_000;
    let suspended = TokenEventKind::StatusChanged(TokenStatus::Suspended);
    let approved = TokenEventKind::Authorization(TokenizationDecision::Approved);
    // Only the byte order of the ids decides: same time, token and value.
    let ids: Vec<Note> = vec![
        ("n-a", T, "DM4MMC000000000A", suspended),
        ("n-B", T, "DM4MMC000000000A", suspended),
        ("n-c", T, "DM4MMC000000000A", approved),
        ("n-D", T, "DM4MMC000000000A", approved),
    ];
    // Only the byte order of the token references decides.
    let references: Vec<Note> = vec![
        ("n-1", T, "DM4MMC000000000a", suspended),
        ("n-2", T, "DM4MMC000000000B", suspended),
    ];
    for (base, set) in [(82_000, &ids), (82_100, &references)] {
        let expected = converge_set(&memory, base, set).await;
        let got = converge_set(&in_locale, base, set).await;
        assert_eq!(
            serde_json::to_string(&got).unwrap(),
            serde_json::to_string(&expected).unwrap()
        );
    }
    // Whole tie sets too, byte for byte.
    let expected = ties_converge(memory, 83_000).await;
    let got = ties_converge(in_locale, 83_000).await;
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(
            serde_json::to_string(g).unwrap(),
            serde_json::to_string(e).unwrap()
        );
    }
}

/// Leases end by Redis' clock: a replica whose clock is an hour off can neither take over a
/// live lease early nor hold one for an hour.
#[tokio::test]
async fn leases_are_measured_on_the_redis_clock_not_the_replicas() {
    let redis = RedisServer::start();
    let store =
        c2p_enroll::server::open_store(&settings(&[("C2P_REDIS__URL", &redis.url())])).unwrap();
    let lease = 15_000;
    for (name, skew) in [("slow", -3_600_000i64), ("fast", 3_600_000)] {
        let scope = format!("caller\u{0}key-{name}");
        let a_now = now_ms() + skew;
        let a = proposal("a", "fp", a_now + lease);
        assert!(matches!(
            store.idempotency_begin(&scope, &a, a_now).await.unwrap(),
            Begin::New(_)
        ));
        // Replica B, with a right clock, a moment later: A's lease is still running, for at
        // most its 15 s.
        let b_now = now_ms();
        let b = proposal("b", "fp", b_now + lease);
        match store.idempotency_begin(&scope, &b, b_now).await.unwrap() {
            Begin::InFlight(ms) => assert!(ms > 0 && ms <= lease, "{name}: {ms} ms left"),
            other => panic!("{name} clock: B got {other:?} while A's lease runs"),
        }
    }
}
