//! After the enrollment, end to end on real parts (the service over real gRPC, a real Redis, the
//! simulator over HTTP with both lifecycle families): enroll, read the profile, update the
//! consumer and the billing address, remove the card, watch every step; opt-out and its
//! withdrawal; RemoveCard replays by key and succeeds on a card already gone; a refresh and the
//! reconciler notice a card Click to Pay no longer holds; faults on the lifecycle routes.

use crate::flows::{eventually, lose_the_next_post_cards_answer, reason, request};
use crate::harness::{RedisServer, TestService, settings};
use c2p_enroll::proto::v1::{
    Address, Consumer, Enrollment, EnrollmentState, GetClickToPayProfileRequest,
    GetEnrollmentStatusRequest, OptOutRequest, RemovalReason, RemoveCardRequest, TokenStatus,
    UpdateBillingAddressRequest, UpdateConsumerRequest, WatchEnrollmentRequest,
    WithdrawOptOutRequest, enrollment_service_client::EnrollmentServiceClient,
};
use c2p_enroll::sandbox::CardDeletion;
use c2p_enroll::sandbox::faults::{ErrorFault, Route, RouteFault};
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

type Client = EnrollmentServiceClient<Channel>;

fn remove(key: &str, card: i64, why: RemovalReason) -> RemoveCardRequest {
    RemoveCardRequest {
        idempotency_key: key.into(),
        card_contract_id: card,
        reason: why as i32,
    }
}

async fn status(client: &mut Client, card: i64, refresh: bool) -> Enrollment {
    client
        .get_enrollment_status(GetEnrollmentStatusRequest {
            card_contract_id: card,
            refresh,
        })
        .await
        .unwrap()
        .into_inner()
        .enrollment
        .unwrap()
}

fn removal_reason(e: &Enrollment) -> RemovalReason {
    e.removal
        .as_ref()
        .map_or(RemovalReason::Unspecified, |r| r.reason())
}

fn service_settings(redis: &RedisServer, extra: &[(&str, &str)]) -> c2p_enroll::config::Settings {
    let url = redis.url();
    let mut env = vec![("C2P_REDIS__URL", url.as_str())];
    env.extend_from_slice(extra);
    settings(&env)
}

/// The whole lifecycle of card 70001 under `program`, watched from before the enrollment.
async fn the_lifecycle_of_a_card(program: &str) {
    let redis = RedisServer::start();
    let service = TestService::start(&service_settings(&redis, &[])).await;
    let mut client = service.client();
    let mut watch = client
        .watch_enrollment(WatchEnrollmentRequest {
            card_contract_id: 70001,
            start_after_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();

    let mut enroll = request("k-enroll", 70001);
    enroll.program = program.into();
    let enrolled = client
        .enroll_card(enroll)
        .await
        .unwrap()
        .into_inner()
        .enrollment
        .unwrap();
    assert_eq!(enrolled.state(), EnrollmentState::Enrolled);
    assert_eq!(enrolled.external_credential_id, "70001");
    assert_eq!(enrolled.external_consumer_id.len(), 64);

    let profile = client
        .get_click_to_pay_profile(GetClickToPayProfileRequest {
            card_contract_id: 70001,
        })
        .await
        .unwrap()
        .into_inner()
        .profile
        .unwrap();
    assert_eq!(profile.masked_email, "j***@e***.com", "{profile:?}");
    assert_eq!(profile.country_code, "US");
    assert_eq!(profile.cards.len(), 1, "{profile:?}");
    let card = &profile.cards[0];
    assert_eq!(card.card_contract_id, 70001, "the requested card is named");
    assert_eq!(card.masked_card.as_ref().unwrap().pan_last_four, "9726");
    if program == "directory" {
        assert_eq!(profile.external_consumer_id, enrolled.external_consumer_id);
        assert_eq!(card.external_credential_id, "70001");
    } else {
        assert_eq!(profile.src_consumer_id, enrolled.src_consumer_id);
        assert_eq!(card.src_digital_card_id, enrolled.src_digital_card_id);
    }

    let updated = client
        .update_consumer(UpdateConsumerRequest {
            card_contract_id: 70001,
            consumer: Some(Consumer {
                email: "mary.major@bank.example".into(),
                mobile_number: None,
                first_name: "Mary".into(),
                last_name: "Major".into(),
                country_code: "GB".into(),
                language_code: "en_GB".into(),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .enrollment
        .unwrap();
    assert!(updated.consumer_update_time.is_some());
    assert!(updated.revision > enrolled.revision);

    let billed = client
        .update_billing_address(UpdateBillingAddressRequest {
            card_contract_id: 70001,
            billing_address: Some(Address {
                line1: "1 Main St".into(),
                city: "Springfield".into(),
                state: "IL".into(),
                zip: "62701".into(),
                country_code: "US".into(),
                ..Address::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .enrollment
        .unwrap();
    assert!(billed.billing_address_update_time.is_some());
    assert!(billed.revision > updated.revision);

    // Click to Pay holds both changes, masked.
    let profile = client
        .get_click_to_pay_profile(GetClickToPayProfileRequest {
            card_contract_id: 70001,
        })
        .await
        .unwrap()
        .into_inner()
        .profile
        .unwrap();
    assert_eq!(profile.masked_email, "m***@b***.example");
    assert_eq!(profile.country_code, "GB");
    let address = profile.cards[0].masked_billing_address.clone().unwrap();
    assert_eq!(
        (address.city.as_str(), address.line1.as_str()),
        ("Springfield", "1 M***")
    );

    let removed = client
        .remove_card(remove("k-remove", 70001, RemovalReason::CardClosed))
        .await
        .unwrap()
        .into_inner();
    assert!(!removed.replayed);
    let removed = removed.enrollment.unwrap();
    assert_eq!(removed.state(), EnrollmentState::Removed);
    assert_eq!(removal_reason(&removed), RemovalReason::CardClosed);
    // The delete deactivated the token; its TokenStatusChanged reaches the record.
    let gone = eventually(&mut client, 70001, "DEACTIVATED", |e| {
        e.token
            .as_ref()
            .is_some_and(|t| t.status() == TokenStatus::Deactivated)
    })
    .await;
    assert_eq!(gone.state(), EnrollmentState::Removed);
    assert_eq!(
        removal_reason(&gone),
        RemovalReason::CardClosed,
        "the caller's reason stays"
    );
    assert!(
        service
            .sandbox
            .profiles()
            .iter()
            .all(|p| p.cards.is_empty())
    );

    // The watcher saw each step, in revision order: enrolled, consumer updated, billing
    // address updated, removed (then the token's deactivation).
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = watch.message().await.unwrap() {
            let Some(e) = m.into_enrollment() else {
                continue;
            };
            let done = e.revision == gone.revision;
            seen.push(e);
            if done {
                break;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the watch never got revision {}: {seen:?}", gone.revision));
    assert!(
        seen.windows(2).all(|w| w[0].revision < w[1].revision),
        "{seen:?}"
    );
    let step = |what: &str, check: &dyn Fn(&Enrollment) -> bool| {
        assert!(
            seen.iter().any(check),
            "the watch never showed {what}: {seen:?}"
        );
    };
    step("NOT_ENROLLED first", &|e| {
        e.state() == EnrollmentState::NotEnrolled
    });
    step("ENROLLED", &|e| e.state() == EnrollmentState::Enrolled);
    step("the consumer update", &|e| {
        e.state() == EnrollmentState::Enrolled
            && e.consumer_update_time.is_some()
            && e.billing_address_update_time.is_none()
    });
    step("the billing address update", &|e| {
        e.state() == EnrollmentState::Enrolled && e.billing_address_update_time.is_some()
    });
    step("REMOVED", &|e| e.state() == EnrollmentState::Removed);
}

#[tokio::test]
async fn enroll_profile_updates_and_removal_legacy_apis() {
    the_lifecycle_of_a_card("").await;
}

#[tokio::test]
async fn enroll_profile_updates_and_removal_credential_directory() {
    the_lifecycle_of_a_card("directory").await;
}

#[tokio::test]
async fn an_opt_out_blocks_enrollment_until_it_is_withdrawn() {
    let redis = RedisServer::start();
    let service = TestService::start(&service_settings(&redis, &[])).await;
    let mut client = service.client();
    let first = client
        .enroll_card(request("k-1", 70001))
        .await
        .unwrap()
        .into_inner()
        .enrollment
        .unwrap();

    let opted = client
        .opt_out(OptOutRequest {
            card_contract_id: 70001,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(opted.opt_out_time.is_some());
    let record = opted.enrollment.unwrap();
    assert_eq!(record.state(), EnrollmentState::Removed);
    assert_eq!(removal_reason(&record), RemovalReason::ConsumerOptedOut);
    assert!(
        service.sandbox.profiles().is_empty(),
        "the profile is deleted"
    );
    // Idempotent: the same opt-out time.
    let again = client
        .opt_out(OptOutRequest {
            card_contract_id: 70001,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.opt_out_time, opted.opt_out_time);

    let refused = client.enroll_card(request("k-2", 70001)).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(reason(&refused), "CONSUMER_OPTED_OUT");
    assert_eq!(service.sandbox.count(Route::EnrollCards), 1, "nothing sent");

    let withdrawn = client
        .withdraw_opt_out(WithdrawOptOutRequest {
            card_contract_id: 70001,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(withdrawn.withdrawn);
    // The refused key was not spent: a new enrollment, a new profile.
    let second = client
        .enroll_card(request("k-2", 70001))
        .await
        .unwrap()
        .into_inner()
        .enrollment
        .unwrap();
    assert_eq!(second.state(), EnrollmentState::Enrolled);
    assert!(second.removal.is_none());
    assert_ne!(second.src_correlation_id, first.src_correlation_id);
    assert_ne!(second.src_consumer_id, first.src_consumer_id);
}

/// Two cards of one cardholder (70001 and 70005, one e-mail address) share a Click to Pay
/// profile: an opt-out given through one deletes the profile, both cards end REMOVED (the other
/// through the token deactivation the deletion causes), neither can be enrolled, and a
/// withdrawal through the other card lifts it for both.
#[tokio::test]
async fn an_opt_out_covers_every_card_of_the_cardholders_profile() {
    let redis = RedisServer::start();
    let service = TestService::start(&service_settings(&redis, &[])).await;
    let mut client = service.client();
    for (key, card) in [("k-1", 70001), ("k-5", 70005)] {
        let enrolled = client
            .enroll_card(request(key, card))
            .await
            .unwrap()
            .into_inner()
            .enrollment
            .unwrap();
        assert_eq!(enrolled.state(), EnrollmentState::Enrolled, "{card}");
    }
    let profile = client
        .get_click_to_pay_profile(GetClickToPayProfileRequest {
            card_contract_id: 70005,
        })
        .await
        .unwrap()
        .into_inner()
        .profile
        .unwrap();
    assert_eq!(
        profile.cards.len(),
        2,
        "one profile, both cards: {profile:?}"
    );
    assert!(profile.cards.iter().any(|c| c.card_contract_id == 70005));
    let held = service.sandbox.profiles();
    assert_eq!(held.len(), 1, "{held:?}");

    client
        .opt_out(OptOutRequest {
            card_contract_id: 70001,
        })
        .await
        .unwrap();
    assert!(
        service.sandbox.profiles().is_empty(),
        "the profile is deleted"
    );
    eventually(
        &mut client,
        70005,
        "REMOVED by its token's deactivation",
        |e| e.state() == EnrollmentState::Removed,
    )
    .await;
    for (key, card) in [("k-1b", 70001), ("k-5b", 70005)] {
        let refused = client.enroll_card(request(key, card)).await.unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{card}");
        assert_eq!(reason(&refused), "CONSUMER_OPTED_OUT", "{card}");
    }
    assert_eq!(service.sandbox.count(Route::EnrollCards), 2, "nothing sent");

    let withdrawn = client
        .withdraw_opt_out(WithdrawOptOutRequest {
            card_contract_id: 70005,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(withdrawn.withdrawn);
    for (key, card) in [("k-1b", 70001), ("k-5b", 70005)] {
        let again = client
            .enroll_card(request(key, card))
            .await
            .unwrap()
            .into_inner()
            .enrollment
            .unwrap();
        assert_eq!(again.state(), EnrollmentState::Enrolled, "{card}");
    }
    assert_eq!(service.sandbox.profiles().len(), 1, "a new profile");
}

/// An OptOut through card A while card B of the same cardholder waits for its POST /cards:
/// B is taken out of Click to Pay again (no profile is left), and answers CONSUMER_OPTED_OUT.
#[tokio::test]
async fn an_opt_out_during_another_cards_enrollment_leaves_no_profile() {
    let redis = RedisServer::start();
    let service = TestService::start(&service_settings(&redis, &[])).await;
    let mut client = service.client();
    client.enroll_card(request("k-1", 70001)).await.unwrap();
    service.sandbox.set_fault(
        Route::EnrollCards,
        RouteFault {
            // Long enough for A's OptOut to finish inside it on a loaded machine.
            latency: Some(Duration::from_secs(3)),
            times: Some(1),
            ..RouteFault::default()
        },
    );
    let enroll_b = tokio::spawn({
        let mut client = service.client();
        async move { client.enroll_card(request("k-5", 70005)).await }
    });
    // B's record says IN_PROGRESS once its POST /cards is about to go out.
    eventually(&mut client, 70005, "IN_PROGRESS", |e| {
        e.state() == EnrollmentState::InProgress
    })
    .await;
    client
        .opt_out(OptOutRequest {
            card_contract_id: 70001,
        })
        .await
        .unwrap();
    let refused = enroll_b.await.unwrap().unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(reason(&refused), "CONSUMER_OPTED_OUT");
    assert!(
        service.sandbox.profiles().is_empty(),
        "no profile left: {:?}",
        service.sandbox.profiles()
    );
    let b = status(&mut client, 70005, false).await;
    assert_eq!(b.state(), EnrollmentState::Removed);
    assert_eq!(removal_reason(&b), RemovalReason::ConsumerOptedOut);
}

#[tokio::test]
async fn remove_card_twice_with_one_key_replays() {
    let redis = RedisServer::start();
    let service = TestService::start(&service_settings(&redis, &[])).await;
    let mut client = service.client();
    client.enroll_card(request("k-1", 70001)).await.unwrap();
    let first = client
        .remove_card(remove("k-remove", 70001, RemovalReason::Fraud))
        .await
        .unwrap()
        .into_inner();
    let second = client
        .remove_card(remove("k-remove", 70001, RemovalReason::Fraud))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.replayed && second.replayed);
    assert_eq!(second.enrollment, first.enrollment);
    assert_eq!(
        service.sandbox.count(Route::LifecycleCards),
        1,
        "one delete"
    );
    let reused = client
        .remove_card(remove("k-remove", 70001, RemovalReason::Other))
        .await
        .unwrap_err();
    assert_eq!(reason(&reused), "IDEMPOTENCY_KEY_REUSED");
}

#[tokio::test]
async fn remove_card_on_a_card_already_gone_succeeds() {
    let redis = RedisServer::start();
    let service = TestService::start(&service_settings(&redis, &[])).await;
    let mut client = service.client();
    for (card_key, how) in [
        // No news reached the service: the record is ENROLLED, the delete answers 404.
        ("k-a", CardDeletion::Unnotified),
        // The TokenStatusChanged came: the record is REMOVED (token deactivated) already.
        ("k-b", CardDeletion::Notified),
    ] {
        let enrolled = client.enroll_card(request(card_key, 70001)).await.unwrap();
        assert_eq!(
            enrolled.into_inner().enrollment.unwrap().state(),
            EnrollmentState::Enrolled
        );
        assert!(
            service
                .sandbox
                .delete_card_in_click_to_pay(70001, how)
                .await
        );
        if how == CardDeletion::Notified {
            let e = eventually(&mut client, 70001, "REMOVED", |e| {
                e.state() == EnrollmentState::Removed
            })
            .await;
            assert_eq!(removal_reason(&e), RemovalReason::TokenDeactivated);
        }
        let removed = client
            .remove_card(remove(
                &format!("{card_key}-remove"),
                70001,
                RemovalReason::CardClosed,
            ))
            .await
            .unwrap()
            .into_inner()
            .enrollment
            .unwrap();
        assert_eq!(removed.state(), EnrollmentState::Removed, "{how:?}");
        assert_eq!(removal_reason(&removed), RemovalReason::CardClosed);
    }
}

#[tokio::test]
async fn a_refresh_and_the_reconciler_notice_a_card_click_to_pay_no_longer_holds() {
    let redis = RedisServer::start();
    let service = TestService::start(&service_settings(
        &redis,
        &[
            ("C2P_ENROLL__RECONCILE_INTERVAL", "200ms"),
            ("C2P_ENROLL__LIFECYCLE_CHECK_INTERVAL", "1s"),
        ],
    ))
    .await;
    let mut client = service.client();

    // Refresh: the token stays active (the token list sees nothing), only the card look-up
    // finds it gone.
    client.enroll_card(request("k-1", 70001)).await.unwrap();
    assert!(
        service
            .sandbox
            .delete_card_in_click_to_pay(70001, CardDeletion::TokenKept)
            .await
    );
    let refreshed = status(&mut client, 70001, true).await;
    assert_eq!(refreshed.state(), EnrollmentState::Removed);
    assert_eq!(removal_reason(&refreshed), RemovalReason::NotInClickToPay);

    // The reconciler, with nobody asking.
    client.enroll_card(request("k-2", 70001)).await.unwrap();
    assert!(
        service
            .sandbox
            .delete_card_in_click_to_pay(70001, CardDeletion::TokenKept)
            .await
    );
    let found = eventually(&mut client, 70001, "REMOVED by the reconciler", |e| {
        e.state() == EnrollmentState::Removed
    })
    .await;
    assert_eq!(removal_reason(&found), RemovalReason::NotInClickToPay);
}

#[tokio::test]
async fn faults_on_the_lifecycle_routes_are_retried_or_answered_unavailable() {
    let redis = RedisServer::start();
    let service = TestService::start(&service_settings(&redis, &[])).await;
    let mut client = service.client();
    client.enroll_card(request("k-1", 70001)).await.unwrap();

    // A 503 on a read (GET /profiles) is retried: one call, two requests. (Every lifecycle
    // call is retried so, deletes and updates included: repeating one changes nothing more.)
    let fault = |status: u16| RouteFault {
        error: Some(ErrorFault {
            status,
            reason_code: "SERVICE_UNAVAILABLE".into(),
        }),
        times: Some(1),
        ..RouteFault::default()
    };
    service
        .sandbox
        .set_fault(Route::LifecycleProfiles, fault(503));
    client
        .get_click_to_pay_profile(GetClickToPayProfileRequest {
            card_contract_id: 70001,
        })
        .await
        .unwrap();
    assert_eq!(service.sandbox.count(Route::LifecycleProfiles), 2);

    // A 500 is not retried: UNAVAILABLE, and the same key resumes.
    service.sandbox.set_fault(Route::LifecycleCards, fault(500));
    let failed = client
        .remove_card(remove("k-remove", 70001, RemovalReason::CardClosed))
        .await
        .unwrap_err();
    assert_eq!(failed.code(), Code::Unavailable);
    assert_eq!(reason(&failed), "UPSTREAM_UNAVAILABLE");
    assert_eq!(
        status(&mut client, 70001, false).await.state(),
        EnrollmentState::Enrolled
    );
    let removed = client
        .remove_card(remove("k-remove", 70001, RemovalReason::CardClosed))
        .await
        .unwrap()
        .into_inner();
    assert!(!removed.replayed);
    assert_eq!(
        removed.enrollment.unwrap().state(),
        EnrollmentState::Removed
    );
}

#[tokio::test]
async fn calls_on_a_card_never_enrolled_are_refused_with_card_not_enrolled() {
    let service = TestService::start(&settings(&[])).await;
    let mut client = service.client();
    let refused = client
        .remove_card(remove("k", 70001, RemovalReason::CardClosed))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(reason(&refused), "CARD_NOT_ENROLLED");
    let refused = client
        .get_click_to_pay_profile(GetClickToPayProfileRequest {
            card_contract_id: 70001,
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "CARD_NOT_ENROLLED");
    // A reason only the service gives is not a caller's.
    let invalid = client
        .remove_card(remove("k", 70001, RemovalReason::TokenDeactivated))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert_eq!(service.sandbox.count(Route::LifecycleCards), 0);
}

#[tokio::test]
async fn a_card_enrolled_without_click_to_pay_ids_is_refused_precisely_until_removed_there() {
    use tonic_types::StatusExt as _;
    let redis = RedisServer::start();
    let service = TestService::start(&service_settings(
        &redis,
        &[
            ("C2P_ENROLL__LEASE", "1s"),
            ("C2P_ENROLL__RECONCILE_AFTER", "2s"),
            ("C2P_ENROLL__RECONCILE_INTERVAL", "200ms"),
        ],
    ))
    .await;
    let mut client = service.client();
    // Mastercard processes POST /cards but its answer (with srcDigitalCardId and srcConsumerId)
    // never arrives; the caller gives up; the record is finished without those ids.
    service.sandbox.set_fault(
        Route::EnrollCards,
        RouteFault {
            drop_response: true,
            ..RouteFault::default()
        },
    );
    let mut call = tonic::Request::new(request("k-enroll", 70001));
    call.set_timeout(Duration::from_millis(1500));
    client.enroll_card(call).await.unwrap_err();
    service
        .sandbox
        .set_fault(Route::EnrollCards, RouteFault::default());
    let enrolled = eventually(
        &mut client,
        70001,
        "ENROLLED without POST /cards' answer",
        |e| e.state() == EnrollmentState::Enrolled,
    )
    .await;
    assert!(
        enrolled.src_digital_card_id.is_empty() && enrolled.src_consumer_id.is_empty(),
        "{enrolled:?}"
    );

    // RemoveCard: a precise refusal, not stored as the key's answer (the same key gets it
    // again, never as a replay); OptOut likewise (its opt-out is kept).
    for _ in 0..2 {
        let refused = client
            .remove_card(remove("k-remove", 70001, RemovalReason::CardClosed))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert_eq!(reason(&refused), "CLICK_TO_PAY_IDS_UNKNOWN");
        let info = refused.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.metadata["missingId"], "srcDigitalCardId");
        assert_eq!(info.metadata["cardContractId"], "70001");
        assert!(!info.metadata.contains_key("replayed"), "{info:?}");
    }
    let refused = client
        .opt_out(OptOutRequest {
            card_contract_id: 70001,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(reason(&refused), "CLICK_TO_PAY_IDS_UNKNOWN");
    let info = refused.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.metadata["missingId"], "srcConsumerId");
    assert_eq!(service.sandbox.count(Route::LifecycleCards), 0);
    assert_eq!(service.sandbox.count(Route::LifecycleProfiles), 0);
    assert_eq!(
        status(&mut client, 70001, false).await.state(),
        EnrollmentState::Enrolled
    );

    // The manual procedure: Click to Pay deletes the card (Mastercard, asked by hand); its
    // token's deactivation makes the record REMOVED; the same key then removes.
    assert!(
        service
            .sandbox
            .delete_card_in_click_to_pay(70001, CardDeletion::Notified)
            .await
    );
    eventually(
        &mut client,
        70001,
        "REMOVED by the token's deactivation",
        |e| e.state() == EnrollmentState::Removed,
    )
    .await;
    let removed = client
        .remove_card(remove("k-remove", 70001, RemovalReason::CardClosed))
        .await
        .unwrap()
        .into_inner();
    assert!(!removed.replayed);
    let removed = removed.enrollment.unwrap();
    assert_eq!(removed.state(), EnrollmentState::Removed);
    assert_eq!(removal_reason(&removed), RemovalReason::CardClosed);
}

/// The enrollment EnrollCard answers for card 70001 under `key` (OK).
async fn answer_of(client: &mut EnrollmentServiceClient<Channel>, key: &str) -> Enrollment {
    client
        .enroll_card(request(key, 70001))
        .await
        .unwrap()
        .into_inner()
        .enrollment
        .unwrap()
}

/// Card 70001 enrolled under key "k" on a new service whose `POST /cards` answer was lost, then
/// deleted in Click to Pay without a notification: a refresh finds its token deactivated and
/// answers REMOVED (`TOKEN_DEACTIVATED`). Returns the service, a client and that answer.
async fn lost_then_deleted_in_click_to_pay(
    redis: &RedisServer,
) -> (TestService, EnrollmentServiceClient<Channel>, Enrollment) {
    // The lost answer is waited for this long.
    let service = TestService::start(&service_settings(
        redis,
        &[("C2P_MASTERCARD__ENROLL__ATTEMPT_TIMEOUT", "500ms")],
    ))
    .await;
    let mut client = service.client();
    lose_the_next_post_cards_answer(&service);
    let lost = client.enroll_card(request("k", 70001)).await.unwrap_err();
    assert_eq!(reason(&lost), "UPSTREAM_UNAVAILABLE", "{lost:?}");
    assert!(
        service
            .sandbox
            .delete_card_in_click_to_pay(70001, CardDeletion::Unnotified)
            .await
    );
    // The token list is dated by its `Date` header, whole seconds, and a notification of the
    // same second wins over it: the enrollment's TCN (ACTIVE) came within this one.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let read = status(&mut client, 70001, true).await;
    assert_eq!(read.state(), EnrollmentState::Removed, "{read:?}");
    assert_eq!(removal_reason(&read), RemovalReason::TokenDeactivated);
    (service, client, read)
}

/// An enrollment whose `POST /cards` answer was lost, whose card then left Click to Pay (its
/// token deactivated, no notification sent): it went through and left, so a refresh shows it
/// REMOVED (`TOKEN_DEACTIVATED`), not ENROLLED with the dead token, the key's retry answers that
/// (nothing sent again), and a new key enrolls the card again.
#[tokio::test]
async fn an_unfinished_enrollment_whose_card_left_click_to_pay_is_removed_and_a_new_key_enrolls_it()
{
    let redis = RedisServer::start();
    let (service, mut client, read) = lost_then_deleted_in_click_to_pay(&redis).await;

    let retried = answer_of(&mut client, "k").await;
    assert_eq!(retried.state(), EnrollmentState::Removed);
    assert_eq!(removal_reason(&retried), RemovalReason::TokenDeactivated);
    assert_eq!(
        service.sandbox.count(Route::EnrollCards),
        1,
        "nothing sent again"
    );

    let again = answer_of(&mut client, "k2").await;
    assert_eq!(again.state(), EnrollmentState::Enrolled);
    assert_eq!(service.sandbox.count(Route::EnrollCards), 2);
    // A new enrollment in Click to Pay, not the removed one answered again (the simulator
    // replays a srcCorrelationId it saw): its own ids and a new, active token.
    assert_ne!(again.src_correlation_id, read.src_correlation_id);
    assert_ne!(again.src_digital_card_id, read.src_digital_card_id);
    let (old, new) = (read.token.unwrap(), again.token.unwrap());
    assert_ne!(new.token_unique_reference, old.token_unique_reference);
    assert_eq!(new.status(), TokenStatus::Active);
}

/// A key whose answer was lost and whose card left Click to Pay (deleted there, unnotified: a
/// refresh finds its token deactivated), the card enrolled again under another key and removed
/// with RemoveCard: the first key's late retry answers the card's removal and sends nothing.
/// Sent again, its srcCorrelationId would be answered as its removed enrollment (the simulator
/// replays one it saw): ENROLLED with the deleted card's ids.
#[tokio::test]
async fn a_late_retry_of_a_key_removed_two_enrollments_ago_sends_nothing() {
    let redis = RedisServer::start();
    let (service, mut client, first) = lost_then_deleted_in_click_to_pay(&redis).await;

    let again = answer_of(&mut client, "k2").await;
    assert_eq!(again.state(), EnrollmentState::Enrolled);
    assert_ne!(again.src_correlation_id, first.src_correlation_id);
    let removed = client
        .remove_card(remove("r", 70001, RemovalReason::CardholderRequest))
        .await
        .unwrap()
        .into_inner()
        .enrollment
        .unwrap();
    assert_eq!(removed.state(), EnrollmentState::Removed);
    assert_eq!(service.sandbox.count(Route::EnrollCards), 2);

    let retried = answer_of(&mut client, "k").await;
    assert_eq!(retried.state(), EnrollmentState::Removed, "{retried:?}");
    assert_eq!(retried, removed, "the card's latest removal");
    assert_eq!(
        service.sandbox.count(Route::EnrollCards),
        2,
        "nothing sent again"
    );
}
