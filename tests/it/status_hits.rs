//! A status hit is sent as the encoding kept with the record's version (`SharedRecord::memo`):
//! the same answer for as long as the record stays, the new one as soon as it changes, on the
//! in-memory store and on Redis (whose record cache serves hits from the third read on).

use crate::contract::{ingest_one, status_change};
use crate::flows::{eventually, status_of, tar};
use crate::harness::{RedisServer, TestService, settings, t0};
use c2p_enroll::proto::v1::{
    EnrollmentSource, EnrollmentState, NotificationOutcome, TokenStatus, TokenizationDecision,
};

async fn answers_follow_the_record(env: &[(&str, &str)]) {
    let service = TestService::start(&settings(env)).await;
    let mut client = service.client();
    let card = 70_020;
    let tar = tar("hit-tar", card, t0() + 10, "50123197928");
    assert_eq!(
        ingest_one(&mut client, tar).await,
        NotificationOutcome::Applied
    );
    let first = status_of(&mut client, card, false).await.unwrap();
    assert_eq!(
        (first.state(), first.source()),
        (EnrollmentState::TokenizedElsewhere, EnrollmentSource::Store)
    );
    let token = first.token.clone().unwrap();
    assert_eq!(token.decision(), TokenizationDecision::Approved);
    assert_eq!(token.status(), TokenStatus::Unspecified);
    for read in 2..=5 {
        assert_eq!(
            status_of(&mut client, card, false).await.unwrap(),
            first,
            "read {read}"
        );
    }

    let change = status_change("hit-active", card, t0() + 20, TokenStatus::Active);
    assert_eq!(
        ingest_one(&mut client, change).await,
        NotificationOutcome::Applied
    );
    let active = |e: &c2p_enroll::proto::v1::Enrollment| {
        e.token
            .as_ref()
            .is_some_and(|t| t.status() == TokenStatus::Active)
    };
    let after = eventually(&mut client, card, "the ACTIVE token", active).await;
    assert!(after.revision > first.revision, "{after:?}");
    assert_eq!(
        after.token.as_ref().unwrap().decision(),
        TokenizationDecision::Approved
    );
    for read in 1..=4 {
        assert_eq!(
            status_of(&mut client, card, false).await.unwrap(),
            after,
            "read {read} after the change"
        );
    }
}

#[tokio::test]
async fn a_hit_answers_the_current_record_on_the_memory_store() {
    answers_follow_the_record(&[]).await;
}

#[tokio::test]
async fn a_hit_answers_the_current_record_on_redis() {
    let redis = RedisServer::start();
    answers_follow_the_record(&[("C2P_REDIS__URL", &redis.url())]).await;
}
