//! The v1 contract's edges over real gRPC: resumable watches (revisions, heartbeats, another
//! replica), drains that end streams UNAVAILABLE, matchable and coded ingest acks, honest
//! timestamps and states, `validate_only`, replays and the normalised fingerprint.

use crate::flows::{reason, tar};
use crate::harness::{RedisServer, TestService, settings, start_sandbox, t0};
use c2p_enroll::proto::v1::{
    Enrollment, EnrollmentSource, EnrollmentState, GetEnrollmentStatusRequest,
    NotificationIngestRequest, NotificationIngestResponse, NotificationOutcome,
    NotificationRejectReason, TokenStatus, TokenStatusChanged, WatchEnrollmentRequest,
    WatchEnrollmentResponse, enrollment_service_client::EnrollmentServiceClient,
    notification_ingest_request::Event, watch_enrollment_response,
};
use c2p_enroll::sandbox::faults::Route;
use prost::Message as _;
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

type Client = EnrollmentServiceClient<Channel>;

async fn get(client: &mut Client, card: i64, refresh: bool) -> Result<Enrollment, tonic::Status> {
    client
        .get_enrollment_status(GetEnrollmentStatusRequest {
            card_contract_id: card,
            refresh,
        })
        .await
        .map(|r| r.into_inner().enrollment.unwrap())
}

async fn watch(
    client: &mut Client,
    card: i64,
    start_after_revision: i64,
) -> tonic::Streaming<WatchEnrollmentResponse> {
    client
        .watch_enrollment(WatchEnrollmentRequest {
            card_contract_id: card,
            start_after_revision,
        })
        .await
        .unwrap()
        .into_inner()
}

/// The next message within 10 s.
async fn next(stream: &mut tonic::Streaming<WatchEnrollmentResponse>) -> WatchEnrollmentResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a message within 10 s")
        .unwrap()
        .expect("the stream is open")
}

/// A token status change of the test token, for `card`.
pub(crate) fn status_change(
    id: &str,
    card: i64,
    at_s: i64,
    status: TokenStatus,
) -> NotificationIngestRequest {
    NotificationIngestRequest {
        notification_id: id.into(),
        sequence: 0,
        event_time: Some(prost_types::Timestamp {
            seconds: at_s,
            nanos: 0,
        }),
        event: Some(Event::TokenStatusChanged(TokenStatusChanged {
            card_contract_id: card,
            token_unique_reference: "DM4MMC0000000042".into(),
            token_requestor_id: "50123197928".into(),
            wallet_name: "MDES for Merchants".into(),
            status: status as i32,
            reason: String::new(),
        })),
    }
}

/// Sends `messages` on one stream and returns every answer and how the stream ended.
async fn ingest(
    client: &mut Client,
    messages: Vec<NotificationIngestRequest>,
) -> (Vec<NotificationIngestResponse>, Result<(), tonic::Status>) {
    let mut stream = client
        .notification_ingest(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    let mut answers = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(a)) => answers.push(a),
            Ok(None) => return (answers, Ok(())),
            Err(e) => return (answers, Err(e)),
        }
    }
}

pub(crate) async fn ingest_one(
    client: &mut Client,
    message: NotificationIngestRequest,
) -> NotificationOutcome {
    let (answers, end) = ingest(client, vec![message]).await;
    end.unwrap();
    answers[0].outcome()
}

#[tokio::test]
async fn a_watcher_resumes_on_another_replica_from_its_revision_and_never_goes_back() {
    let redis = RedisServer::start();
    let sandbox = start_sandbox().await;
    let s = settings(&[
        ("C2P_REDIS__URL", &redis.url()),
        ("C2P_GRPC__LIMITS__WATCH_HEARTBEAT_INTERVAL", "1s"),
    ]);
    let a = TestService::start_with(&s, sandbox.clone()).await;
    let b = TestService::start_with(&s, sandbox.clone()).await;
    let (mut ca, mut cb) = (a.client(), b.client());
    let card = 70003;
    let mut seen: Vec<i64> = Vec::new();

    // The first message is the stored record (looked up upstream: NOT_ENROLLED), with a revision.
    let mut w = watch(&mut ca, card, 0).await;
    let first = next(&mut w).await.into_enrollment().unwrap();
    assert_eq!(first.state(), EnrollmentState::NotEnrolled);
    assert!(first.revision > 0 && first.create_time.is_some());
    seen.push(first.revision);
    // A change applied through B reaches the watcher on A.
    let t = t0();
    assert_eq!(
        ingest_one(&mut cb, tar("r-1", card, t, "50123197928")).await,
        NotificationOutcome::Applied
    );
    let second = loop {
        if let Some(e) = next(&mut w).await.into_enrollment() {
            break e;
        }
    };
    assert_eq!(second.state(), EnrollmentState::TokenizedElsewhere);
    seen.push(second.revision);
    drop(w);

    // Changes while the watcher is away.
    for (id, at, status) in [
        ("r-2", t + 1, TokenStatus::Active),
        ("r-3", t + 2, TokenStatus::Suspended),
    ] {
        assert_eq!(
            ingest_one(&mut cb, status_change(id, card, at, status)).await,
            NotificationOutcome::Applied
        );
    }
    let stored = get(&mut cb, card, false).await.unwrap();

    // Back, on the other replica, from the last revision received: the latest state first
    // (the one in between may be merged away), nothing older.
    let mut w = watch(&mut cb, card, second.revision).await;
    let resumed = next(&mut w).await.into_enrollment().unwrap();
    assert_eq!(resumed, stored);
    assert_eq!(
        resumed.token.as_ref().unwrap().status(),
        TokenStatus::Suspended
    );
    seen.push(resumed.revision);
    // Idle: a heartbeat naming the revision the watcher has.
    let WatchEnrollmentResponse {
        event: Some(watch_enrollment_response::Event::Heartbeat(beat)),
    } = next(&mut w).await
    else {
        panic!("a heartbeat on an idle watch")
    };
    assert_eq!(beat.revision, resumed.revision);
    assert!(beat.send_time.is_some());
    drop(w);

    // Resuming with the newest revision sends no enrollment, only heartbeats, until a change.
    let mut w = watch(&mut ca, card, resumed.revision).await;
    let quiet = next(&mut w).await;
    assert!(quiet.clone().into_enrollment().is_none(), "{quiet:?}");
    assert_eq!(
        ingest_one(
            &mut cb,
            status_change("r-4", card, t + 3, TokenStatus::Active)
        )
        .await,
        NotificationOutcome::Applied
    );
    let last = loop {
        if let Some(e) = next(&mut w).await.into_enrollment() {
            break e;
        }
    };
    seen.push(last.revision);
    assert!(
        seen.windows(2).all(|p| p[0] < p[1]),
        "revisions only grow: {seen:?}"
    );
    assert_eq!(last, get(&mut ca, card, false).await.unwrap());
    println!("CONTRACT watch revisions across two replicas: {seen:?}");
}

#[tokio::test]
async fn watch_and_get_agree_on_a_card_mastercard_does_not_know() {
    let service = TestService::start(&settings(&[])).await;
    let mut client = service.client();
    let get_err = get(&mut client, 99_999, false).await.unwrap_err();
    let watch_err = client
        .watch_enrollment(WatchEnrollmentRequest {
            card_contract_id: 99_999,
            start_after_revision: 0,
        })
        .await
        .unwrap_err();
    for err in [&get_err, &watch_err] {
        assert_eq!(
            (err.code(), reason(err).as_str()),
            (Code::NotFound, "CARD_CONTRACT_NOT_FOUND")
        );
    }
    // Nothing was invented for it.
    assert_eq!(
        service
            .running
            .store()
            .get(c2p_enroll::domain::CardContractId::new(99_999).unwrap())
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn every_ingest_ack_is_matchable_and_every_rejection_has_a_reason() {
    let service = TestService::start(&settings(&[])).await;
    let mut client = service.client();
    let t = t0();
    let now = t + 3600;
    let with = |seq: u64, mut m: NotificationIngestRequest| {
        m.sequence = seq;
        m
    };
    // Applied first, alone, so that what follows is about a known id.
    let (answers, end) = ingest(
        &mut client,
        vec![with(1, tar("m-1", 70002, t, "50123197928"))],
    )
    .await;
    end.unwrap();
    assert_eq!(
        (answers[0].sequence, answers[0].outcome()),
        (1, NotificationOutcome::Applied)
    );
    let mut bad = tar("m-bad", 70002, t, "50123197928");
    if let Some(Event::TokenizationAuthorization(e)) = &mut bad.event {
        e.token_unique_reference = "not a reference!".into();
        e.decision = 0;
    }
    let mut no_event = tar("m-none", 70002, t, "50123197928");
    no_event.event = None;
    let messages = vec![
        with(2, tar("m-1", 70002, t, "50123197928")),
        with(3, tar("m-1", 70002, t, "50123197928")),
        with(4, tar("m-1", 70002, t + 1, "50123197928")),
        with(5, tar("", 70002, t, "50123197928")),
        with(6, tar("m-future", 70002, now + 3600, "50123197928")),
        with(7, tar("m-old", 70002, now - 40 * 86_400, "50123197928")),
        with(8, no_event),
        with(9, bad),
        with(10, tar("", 70002, t, "50123197928")),
    ];
    let (answers, end) = ingest(&mut client, messages).await;
    end.unwrap();
    let by_seq: BTreeMap<u64, &NotificationIngestResponse> =
        answers.iter().map(|a| (a.sequence, a)).collect();
    assert_eq!(answers.len(), 9, "one answer per message");
    assert_eq!(
        by_seq.keys().copied().collect::<Vec<_>>(),
        (2..=10).collect::<Vec<_>>(),
        "each sequence answered exactly once"
    );
    let outcome = |s: u64| (by_seq[&s].outcome(), by_seq[&s].reject_reason());
    use NotificationOutcome::{Duplicate, Rejected};
    use NotificationRejectReason as R;
    assert_eq!(outcome(2), (Duplicate, R::Unspecified));
    assert_eq!(outcome(3), (Duplicate, R::Unspecified));
    assert_eq!(outcome(4), (Rejected, R::IdReusedWithDifferentContent));
    assert_eq!(outcome(5), (Rejected, R::InvalidField));
    assert_eq!(by_seq[&5].field_violations[0].field, "notification_id");
    assert_eq!(outcome(6), (Rejected, R::EventTimeInFuture));
    assert_eq!(outcome(7), (Rejected, R::EventTimeTooOld));
    assert_eq!(outcome(8), (Rejected, R::UnsupportedEvent));
    assert_eq!(outcome(9), (Rejected, R::InvalidField));
    let fields: Vec<&str> = by_seq[&9]
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "tokenization_authorization.decision",
            "tokenization_authorization.token_unique_reference"
        ]
    );
    // Two empty ids, told apart by their sequence.
    assert_eq!(outcome(10), (Rejected, R::InvalidField));
    for a in &answers {
        if a.outcome() == Rejected {
            assert_ne!(a.reject_reason(), R::Unspecified, "{a:?}");
            assert!(!a.message.is_empty(), "{a:?}");
        }
    }
    // The reused id changed nothing: the record still holds the first content.
    let record = get(&mut client, 70002, false).await.unwrap();
    assert_eq!(
        record.token.unwrap().event_time.unwrap().seconds,
        t,
        "the reused id's later time did not apply"
    );
}

#[tokio::test]
async fn an_event_this_server_does_not_know_is_rejected_and_not_remembered() {
    let service = TestService::start(&settings(&[])).await;
    let addr = service.running.local_addr();
    // A message from a newer gateway: a oneof member (field 15) this server has never heard of.
    let mut future = tar("m-new-kind", 70002, t0(), "50123197928");
    future.event = None;
    future.sequence = 1;
    let mut bytes = future.encode_to_vec();
    bytes.extend([(15 << 3) | 2, 3, 0x08, 0x96, 0x01]);
    let (answers, end) = crate::wire::raw_ingest(addr, crate::wire::frame(&bytes)).await;
    assert_eq!(end, "0");
    assert_eq!(
        (answers[0].sequence, answers[0].reject_reason()),
        (1, NotificationRejectReason::UnsupportedEvent)
    );
    // Not remembered: once the gateway sends it in a form this server knows, it applies.
    let mut client = service.client();
    assert_eq!(
        ingest_one(&mut client, tar("m-new-kind", 70002, t0(), "50123197928")).await,
        NotificationOutcome::Applied
    );
}

#[tokio::test]
async fn a_drain_ends_an_ingest_stream_unavailable_after_answering_what_it_read() {
    let service = TestService::start(&settings(&[])).await;
    let mut client = service.client();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut answers = client
        .notification_ingest(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for (i, card) in [70001, 70002].into_iter().enumerate() {
        let mut m = tar(&format!("d-{i}"), card, t0(), "50123197928");
        m.sequence = i as u64 + 1;
        tx.send(m).await.unwrap();
    }
    for _ in 0..2 {
        assert_eq!(
            answers.message().await.unwrap().unwrap().outcome(),
            NotificationOutcome::Applied
        );
    }
    let drained = tokio::spawn(service.running.shutdown());
    let end = tokio::time::timeout(Duration::from_secs(5), answers.message())
        .await
        .expect("the stream ended");
    let status = end.expect_err("a drained ingest stream never ends OK");
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::Unavailable, "SERVER_DRAINING")
    );
    assert!(status.get_error_details().retry_info().is_some());
    drop(tx);
    drained.await.unwrap();
}

#[tokio::test]
async fn create_time_holds_and_update_time_is_the_services_clock() {
    let service = TestService::start(&settings(&[])).await;
    let mut client = service.client();
    let now = t0() + 3600;
    assert_eq!(
        ingest_one(&mut client, tar("c-1", 70002, now - 60, "50123197928")).await,
        NotificationOutcome::Applied
    );
    let first = get(&mut client, 70002, false).await.unwrap();
    // Not enrolled here: a token made elsewhere.
    assert_eq!(first.state(), EnrollmentState::TokenizedElsewhere);
    let created = first.create_time.unwrap();
    assert!(
        (created.seconds - now).abs() < 60,
        "the store's clock: {created:?}"
    );
    // Backdated by 10 days, then dated 4 minutes ahead (within the allowed skew).
    for (id, at, status) in [
        ("c-2", now - 10 * 86_400, TokenStatus::Pending),
        ("c-3", now + 240, TokenStatus::Suspended),
    ] {
        let outcome = ingest_one(&mut client, status_change(id, 70002, at, status)).await;
        assert!(
            matches!(
                outcome,
                NotificationOutcome::Applied | NotificationOutcome::Stale
            ),
            "{id}: {outcome:?}"
        );
    }
    let later = get(&mut client, 70002, false).await.unwrap();
    assert_eq!(later.create_time.unwrap(), created);
    let updated = later.update_time.unwrap();
    assert!(
        updated.seconds < now + 120,
        "update_time is not the event's future time: {updated:?}"
    );
    assert_eq!(later.token.unwrap().event_time.unwrap().seconds, now + 240);
    assert!(later.revision > first.revision);
}

#[tokio::test]
async fn validate_only_checks_and_does_nothing() {
    let service = TestService::start(&settings(&[])).await;
    let mut client = service.client();
    let before: Vec<usize> = [Route::Searches, Route::CardTokens, Route::EnrollCards]
        .into_iter()
        .map(|r| service.sandbox.count(r))
        .collect();
    let mut check = crate::wire::request("v-1", 70001);
    check.validate_only = true;
    let answer = client
        .enroll_card(check.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.enrollment, None);
    assert!(!answer.replayed);
    // Invalid is still invalid.
    let mut invalid = check.clone();
    invalid.consumer.as_mut().unwrap().country_code = "usa".into();
    let err = client.enroll_card(invalid).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let after: Vec<usize> = [Route::Searches, Route::CardTokens, Route::EnrollCards]
        .into_iter()
        .map(|r| service.sandbox.count(r))
        .collect();
    assert_eq!(before, after, "no upstream call");
    let card = c2p_enroll::domain::CardContractId::new(70001).unwrap();
    assert_eq!(service.running.store().get(card).await.unwrap(), None);
    // The key was not used: a real call with it and another request is not refused.
    let mut real = crate::wire::request("v-1", 70001);
    real.cardholder_full_name = "Jane Q. Doe".into();
    let enrolled = client.enroll_card(real).await.unwrap().into_inner();
    assert_eq!(
        enrolled.enrollment.unwrap().state(),
        EnrollmentState::Enrolled
    );
}

#[tokio::test]
async fn the_same_request_after_normalisation_is_a_replay_and_says_so() {
    let service = TestService::start(&settings(&[])).await;
    let mut client = service.client();
    let mut first = crate::wire::request("n-1", 70001);
    first.program = "default".into();
    first.consumer.as_mut().unwrap().email = "Jane.Doe@Example.com".into();
    let a = client.enroll_card(first).await.unwrap().into_inner();
    assert!(!a.replayed);
    assert_eq!(a.enrollment.as_ref().unwrap().program, "");
    let mut again = crate::wire::request("n-1", 70001);
    again.consumer.as_mut().unwrap().email = "jane.doe@example.com".into();
    let b = client.enroll_card(again).await.unwrap().into_inner();
    assert!(b.replayed, "a replay of the first answer");
    assert_eq!(a.enrollment, b.enrollment);
    assert_eq!(service.sandbox.count(Route::EnrollCards), 1);
    // A refresh that finds nothing to change answers the stored record, labelled so.
    let refreshed = get(&mut client, 70001, true).await.unwrap();
    assert_eq!(refreshed.source(), EnrollmentSource::Store);
    assert_eq!(
        refreshed.revision,
        get(&mut client, 70001, false).await.unwrap().revision
    );
}
