//! Hostile notifications: event times that would win every later merge, and broken frames on
//! the ingest stream, which must end it with an error after answering what came before.

use crate::flows::tar;
use crate::harness::{TestService, settings, t0};
use crate::wire::{frame, raw_ingest};
use c2p_enroll::proto::v1::NotificationOutcome;
use prost::Message as _;

#[tokio::test]
async fn a_broken_frame_ends_the_stream_with_invalid_argument_after_the_answers_before_it() {
    let service = TestService::start(&settings(&[])).await;
    let addr = service.running.local_addr();
    let valid = |id: &str| frame(&tar(id, 70010, t0(), "50123197928").encode_to_vec());

    // valid, garbage, valid: one answer, then INVALID_ARGUMENT (3); the third is not taken.
    let mut body = valid("n-1");
    body.extend(frame(&[0xff, 0xff, 0xff]));
    body.extend(valid("n-2"));
    let (answers, status) = raw_ingest(addr, body).await;
    println!(
        "valid, garbage, valid: {} answer(s), grpc-status {status}",
        answers.len()
    );
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].notification_id, "n-1");
    assert_eq!(answers[0].outcome(), NotificationOutcome::Applied);
    assert_eq!(status, "3");

    // valid, then a frame that announces 100 bytes and ends after 3.
    let mut body = valid("n-3");
    body.extend([0, 0, 0, 0, 100, 1, 2, 3]);
    let (answers, status) = raw_ingest(addr, body).await;
    println!(
        "valid, partial frame: {} answer(s), grpc-status {status}",
        answers.len()
    );
    assert_eq!(answers.len(), 1);
    assert_eq!(status, "3");

    // A clean stream still ends OK.
    let (answers, status) = raw_ingest(addr, valid("n-4")).await;
    assert_eq!((answers.len(), status.as_str()), (1, "0"));
}

#[tokio::test]
async fn event_times_out_of_bounds_are_rejected_and_change_nothing() {
    let service = TestService::start(&settings(&[])).await;
    let mut client = service.client();
    let now = t0() + 3600;
    let cases = [
        ("n-future-day", now + 86_400),
        ("n-year-5138", 99_999_999_999),
        ("n-60-days-old", now - 60 * 86_400),
        ("n-max", i64::MAX),
    ];
    let messages: Vec<_> = cases
        .iter()
        .map(|(id, at)| {
            let mut n = tar(id, 70011, 0, "50123197928");
            n.event_time = Some(prost_types::Timestamp {
                seconds: *at,
                nanos: 0,
            });
            n
        })
        .collect();
    let mut answers = client
        .notification_ingest(futures::stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    let mut rejected = 0;
    while let Some(a) = answers.message().await.unwrap() {
        assert_eq!(a.outcome(), NotificationOutcome::Rejected, "{a:?}");
        assert!(a.message.contains("event_time"), "{a:?}");
        rejected += 1;
    }
    assert_eq!(rejected, cases.len());
    // The card has no token: a genuine notification now applies.
    let mut answers = client
        .notification_ingest(futures::stream::iter([tar(
            "n-ok",
            70011,
            now - 10,
            "50123197928",
        )]))
        .await
        .unwrap()
        .into_inner();
    let ok = answers.message().await.unwrap().unwrap();
    assert_eq!(ok.outcome(), NotificationOutcome::Applied);
}

#[tokio::test]
async fn an_unreadable_record_is_set_aside_and_the_card_keeps_working() {
    use crate::harness::RedisServer;
    use c2p_enroll::proto::v1::{EnrollmentSource, EnrollmentState, GetEnrollmentStatusRequest};
    let redis = RedisServer::start();
    let service = TestService::start(&settings(&[("C2P_REDIS__URL", &redis.url())])).await;
    let mut conn = redis.connection();
    // What an older version's Lua wrote for an event time in year 5138: JSON it cannot read.
    let garbage = r#"{"card_contract_id":70001,"state":"in_progress","create_time_ms":1e+14"#;
    for card in [70001, 70012] {
        let _: () = redis::cmd("SET")
            .arg(format!("c2p:{{card:{card}}}:enrollment"))
            .arg(garbage)
            .arg("PX")
            .arg(2_592_000_000u64)
            .query(&mut conn)
            .unwrap();
    }
    // A read: answered from the token list, not UNAVAILABLE for 30 days.
    let read = service
        .client()
        .get_enrollment_status(GetEnrollmentStatusRequest {
            card_contract_id: 70001,
            refresh: false,
        })
        .await
        .unwrap()
        .into_inner()
        .enrollment
        .unwrap();
    assert_eq!(read.source(), EnrollmentSource::Upstream);
    assert_eq!(read.state(), EnrollmentState::NotEnrolled);
    let aside: Vec<String> = redis::cmd("KEYS")
        .arg("c2p:{card:70001}:enrollment:quarantined:*")
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        aside.len(),
        1,
        "the unreadable record is kept aside for inspection"
    );
    // A notification first: applied, not FAILED (which the gateway would resend for ever).
    let mut answers = service
        .client()
        .notification_ingest(futures::stream::iter([tar(
            "n-q",
            70012,
            t0(),
            "50123197928",
        )]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    assert_eq!(answer.outcome(), NotificationOutcome::Applied, "{answer:?}");
    // And the card enrolls.
    let enrolled = service
        .client()
        .enroll_card(crate::flows::request("k-q", 70001))
        .await
        .unwrap()
        .into_inner()
        .enrollment
        .unwrap();
    assert_eq!(enrolled.state(), EnrollmentState::Enrolled);
}
