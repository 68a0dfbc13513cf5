//! The enrollment flows end to end over real gRPC: the service (one or two instances), the
//! simulator over HTTP, and a real Redis (standalone or a 3-master cluster) or the memory store.

use crate::harness::{RedisCluster, RedisServer, TestService, settings, start_sandbox, t0};
use c2p_enroll::proto::v1::{
    Consumer, Enrollment, EnrollmentSource, EnrollmentState, ErrorReason,
    GetEnrollmentStatusRequest, NotificationIngestRequest, NotificationOutcome, TokenStatus,
    TokenizationAuthorization, TokenizationDecision, WatchEnrollmentRequest,
    enrollment_service_client::EnrollmentServiceClient, notification_ingest_request::Event,
};
use c2p_enroll::sandbox::faults::{
    ErrorFault, NotificationFaults, NotificationTiming, Route, RouteFault,
};
use prost::Message as _;
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

type Client = EnrollmentServiceClient<Channel>;

pub use crate::wire::request;

pub(crate) fn reason(status: &tonic::Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

fn metadata(status: &tonic::Status, key: &str) -> Option<String> {
    status
        .get_error_details()
        .error_info()
        .and_then(|i| i.metadata.get(key).cloned())
}

/// The `Enrollment` carried in an error's details.
fn enrollment_detail(status: &tonic::Status) -> Option<Enrollment> {
    let details = tonic_types::pb::Status::decode(status.details()).ok()?;
    details
        .details
        .iter()
        .find(|a| a.type_url.ends_with("c2p.enrollment.v1.Enrollment"))
        .and_then(|a| Enrollment::decode(a.value.as_slice()).ok())
}

pub(crate) async fn status_of(
    client: &mut Client,
    card: i64,
    refresh: bool,
) -> Result<Enrollment, tonic::Status> {
    client
        .get_enrollment_status(GetEnrollmentStatusRequest {
            card_contract_id: card,
            refresh,
        })
        .await
        .map(|r| r.into_inner().enrollment.unwrap())
}

/// Polls the stored status until `check` holds (an error answer is polled again); fails
/// after 10 s with the last answer.
pub(crate) async fn eventually(
    client: &mut Client,
    card: i64,
    what: &str,
    check: impl Fn(&Enrollment) -> bool,
) -> Enrollment {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match status_of(client, card, false).await {
            Ok(e) if check(&e) => return e,
            answer => assert!(
                tokio::time::Instant::now() < deadline,
                "never {what}: {answer:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn active(e: &Enrollment) -> bool {
    e.state() == EnrollmentState::Enrolled
        && e.token.as_ref().is_some_and(|t| {
            t.status() == TokenStatus::Active && t.decision() == TokenizationDecision::Approved
        })
}

async fn happy_paths(extra: &[(&str, &str)]) {
    for (mode, faults) in [
        ("before the 200", NotificationFaults::default()),
        (
            "after the 200",
            NotificationFaults {
                timing: NotificationTiming::AfterResponse,
                ..Default::default()
            },
        ),
        (
            "duplicated and reordered",
            NotificationFaults {
                duplicate: true,
                reorder: true,
                ..Default::default()
            },
        ),
    ] {
        // A fresh key space per mode: the same card is enrolled each time.
        let prefix = format!("{}:", mode.replace(' ', "-"));
        let mut env = extra.to_vec();
        env.push(("C2P_REDIS__KEY_PREFIX", prefix.as_str()));
        let service = TestService::start(&settings(&env)).await;
        service.sandbox.set_notification_faults(faults.clone());
        let mut client = service.client();
        let enrolled = client
            .enroll_card(request("k-happy", 70001))
            .await
            .unwrap()
            .into_inner()
            .enrollment
            .unwrap();
        assert_eq!(enrolled.state(), EnrollmentState::Enrolled, "{mode}");
        let card = enrolled.masked_card.clone().unwrap();
        assert_eq!(
            (
                card.pan_last_four.as_str(),
                card.pan_expiration_month.as_str(),
                card.pan_expiration_year.as_str()
            ),
            ("9726", "12", "2030")
        );
        assert!(!enrolled.src_digital_card_id.is_empty() && !enrolled.src_consumer_id.is_empty());
        assert!(uuid::Uuid::parse_str(&enrolled.src_correlation_id).is_ok());
        if faults.timing == NotificationTiming::BeforeResponse {
            // TAR and TCN were applied while POST /cards ran: the answer already shows the token.
            assert!(active(&enrolled), "{mode}: {enrolled:?}");
        }
        let stored = eventually(&mut client, 70001, "ENROLLED with an active token", active).await;
        assert_eq!(stored.source(), EnrollmentSource::Store);
        assert_eq!(service.sandbox.count(Route::EnrollCards), 1, "{mode}");
    }
}

#[tokio::test]
async fn happy_path_on_the_memory_store() {
    happy_paths(&[]).await;
}

#[tokio::test]
async fn happy_path_on_redis() {
    let redis = RedisServer::start();
    happy_paths(&[("C2P_REDIS__URL", &redis.url())]).await;
}

#[tokio::test]
async fn happy_path_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    happy_paths(&[
        ("C2P_REDIS__URL", &cluster.urls()),
        ("C2P_REDIS__CLUSTER", "true"),
    ])
    .await;
}

#[tokio::test]
async fn ineligible_and_unknown_cards_end_in_their_codes_with_nothing_half_written() {
    let redis = RedisServer::start();
    let service = TestService::start(&settings(&[("C2P_REDIS__URL", &redis.url())])).await;
    let mut client = service.client();
    for (card, why) in [
        (70002, "CARD_BLOCKED"),
        (70003, "CARD_EXPIRED"),
        (70004, "CARD_PRODUCT_NOT_ELIGIBLE"),
    ] {
        let err = client
            .enroll_card(request(&format!("k-{card}"), card))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{card}: {err:?}");
        assert_eq!(reason(&err), "CARD_NOT_ELIGIBLE");
        assert_eq!(metadata(&err, "declineReason").as_deref(), Some(why));
        let record = status_of(&mut client, card, false).await.unwrap();
        assert_eq!(record.state(), EnrollmentState::Failed, "{card}");
        assert_eq!(
            record.failure.unwrap().reason(),
            ErrorReason::CardNotEligible
        );
    }
    let err = client
        .enroll_card(request("k-unknown", 79999))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::NotFound, "CARD_CONTRACT_NOT_FOUND")
    );
    let err = status_of(&mut client, 79999, false).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::NotFound, "CARD_CONTRACT_NOT_FOUND")
    );

    // No record was left IN_PROGRESS, and none exists for the unknown card.
    let mut conn = redis.connection();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("c2p:{card:*}:enrollment")
        .query(&mut conn)
        .unwrap();
    assert_eq!(keys.len(), 3, "{keys:?}");
    for key in keys {
        let value: String = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
        assert!(value.contains("\"state\":\"FAILED\""), "{key}: {value}");
    }
}

#[tokio::test]
async fn every_invalid_field_is_named_at_once() {
    let service = TestService::start(&settings(&[])).await;
    let mut bad = request("", -1);
    bad.program = "nope".into();
    bad.src_correlation_id = "not-a-uuid".into();
    bad.consumer = Some(Consumer {
        email: "not-an-email".into(),
        mobile_number: Some(c2p_enroll::proto::v1::PhoneNumber {
            country_code: "0044".into(),
            phone_number: "12".into(),
        }),
        country_code: "usa".into(),
        language_code: "english".into(),
        ..Default::default()
    });
    bad.billing_address = Some(c2p_enroll::proto::v1::Address {
        zip: "x".repeat(20),
        ..Default::default()
    });
    let err = service.client().enroll_card(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<String> = err
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    for field in [
        "idempotency_key",
        "card_contract_id",
        "program",
        "consumer.email",
        "consumer.mobile_number.country_code",
        "consumer.mobile_number.phone_number",
        "consumer.country_code",
        "consumer.language_code",
        "billing_address.zip",
        "billing_address.country_code",
        "src_correlation_id",
    ] {
        assert!(
            fields.iter().any(|f| f == field),
            "{field} not named in {fields:?}"
        );
    }
    assert_eq!(
        service.sandbox.count(Route::Searches),
        0,
        "nothing was sent upstream"
    );
}

#[tokio::test]
async fn idempotency_replays_refuses_reuse_and_reports_an_enrolled_card() {
    let redis = RedisServer::start();
    let service = TestService::start(&settings(&[("C2P_REDIS__URL", &redis.url())])).await;
    let mut client = service.client();
    let first = client
        .enroll_card(request("k-1", 70001))
        .await
        .unwrap()
        .into_inner();
    let again = client
        .enroll_card(request("k-1", 70001))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        first.enrollment, again.enrollment,
        "the stored answer is replayed"
    );
    assert!(!first.replayed && again.replayed, "and says so");
    assert_eq!(service.sandbox.count(Route::EnrollCards), 1);

    let mut different = request("k-1", 70001);
    different.cardholder_full_name = "Someone Else".into();
    let err = client.enroll_card(different).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::FailedPrecondition, "IDEMPOTENCY_KEY_REUSED")
    );

    let err = client.enroll_card(request("k-2", 70001)).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::AlreadyExists, "CARD_ALREADY_ENROLLED")
    );
    let current = enrollment_detail(&err).expect("the current enrollment in the details");
    assert_eq!(
        (current.state(), current.src_digital_card_id.as_str()),
        (
            EnrollmentState::Enrolled,
            first.enrollment.unwrap().src_digital_card_id.as_str()
        )
    );

    // A failure is replayed too, without a second upstream call.
    let e1 = client.enroll_card(request("k-3", 70002)).await.unwrap_err();
    let e2 = client.enroll_card(request("k-3", 70002)).await.unwrap_err();
    assert_eq!(
        (e1.code(), e1.message(), reason(&e1)),
        (e2.code(), e2.message(), reason(&e2))
    );
    assert_eq!(service.sandbox.count(Route::EnrollCards), 2);
    // After a FAILED enrollment a new key may try again (and fail again here: the card is blocked).
    let e3 = client.enroll_card(request("k-4", 70002)).await.unwrap_err();
    assert_eq!(reason(&e3), "CARD_NOT_ELIGIBLE");
    assert_eq!(service.sandbox.count(Route::EnrollCards), 3);
}

#[tokio::test]
async fn fifty_concurrent_calls_with_one_key_over_two_instances_send_one_post_cards() {
    let redis = RedisServer::start();
    fifty_concurrent_calls(&[("C2P_REDIS__URL", &redis.url())]).await;
}

#[tokio::test]
async fn fifty_concurrent_calls_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    fifty_concurrent_calls(&[
        ("C2P_REDIS__URL", &cluster.urls()),
        ("C2P_REDIS__CLUSTER", "true"),
    ])
    .await;
}

async fn fifty_concurrent_calls(env: &[(&str, &str)]) {
    let s = settings(env);
    let sandbox = start_sandbox().await;
    // Slow the enrollment down so that the calls overlap.
    sandbox.set_fault(
        Route::EnrollCards,
        RouteFault {
            latency: Some(Duration::from_millis(300)),
            ..Default::default()
        },
    );
    let a = TestService::start_with(&s, sandbox.clone()).await;
    let b = TestService::start_with(&s, sandbox.clone()).await;
    a.notify_me();
    let mut calls = Vec::new();
    for i in 0..50 {
        let mut client = if i % 2 == 0 { a.client() } else { b.client() };
        calls.push(tokio::spawn(async move {
            let mut aborted = 0;
            loop {
                match client.enroll_card(request("k-same", 70001)).await {
                    Ok(r) => return (r.into_inner(), aborted),
                    Err(e) if e.code() == Code::Aborted => {
                        aborted += 1;
                        let wait = e
                            .get_details_retry_info()
                            .and_then(|r| r.retry_delay)
                            .unwrap_or(Duration::from_millis(100));
                        tokio::time::sleep(wait.min(Duration::from_millis(200))).await;
                    }
                    Err(e) => panic!("{e:?}"),
                }
            }
        }));
    }
    let mut answers = Vec::new();
    let mut aborted = 0;
    for call in calls {
        let (answer, a) = call.await.unwrap();
        answers.push(answer);
        aborted += a;
    }
    assert!(aborted > 0, "the calls did overlap");
    // One call did the work; every other answer is its replay (or the same record, found
    // by a call that resumed the key): the same enrollment.
    assert!(
        answers
            .iter()
            .all(|a| a.enrollment == answers[0].enrollment),
        "identical answers"
    );
    assert_eq!(
        sandbox.count(Route::EnrollCards),
        1,
        "exactly one POST /cards"
    );
}

#[tokio::test]
async fn a_watcher_on_one_instance_sees_changes_applied_through_another_and_leaves_no_subscription()
{
    let redis = RedisServer::start();
    // The record cache keeps a channel per cached card by design (tests/it/record_cache.rs):
    // off here, so that what is left behind is the watch's alone.
    watcher_across_instances(
        &[
            ("C2P_REDIS__URL", &redis.url()),
            ("C2P_STORE__CACHE_SIZE", "0"),
        ],
        redis.connection(),
    )
    .await;
}

#[tokio::test]
async fn a_watcher_across_instances_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    // The change feed subscribes on the first seed node.
    watcher_across_instances(
        &[
            ("C2P_REDIS__URL", &cluster.urls()),
            ("C2P_REDIS__CLUSTER", "true"),
            // See above: the record cache's channels are not the watch's.
            ("C2P_STORE__CACHE_SIZE", "0"),
        ],
        cluster.first_node_connection(),
    )
    .await;
}

async fn watcher_across_instances(env: &[(&str, &str)], mut conn: redis::Connection) {
    let s = settings(env);
    let sandbox = start_sandbox().await;
    let a = TestService::start_with(&s, sandbox.clone()).await;
    let b = TestService::start_with(&s, sandbox.clone()).await;
    b.notify_me();
    let mut watch = a
        .client()
        .watch_enrollment(WatchEnrollmentRequest {
            card_contract_id: 70001,
            start_after_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch
        .message()
        .await
        .unwrap()
        .unwrap()
        .into_enrollment()
        .unwrap();
    assert_eq!(first.state(), EnrollmentState::NotEnrolled);

    b.client()
        .enroll_card(request("k-watch", 70001))
        .await
        .unwrap();
    let mut states = Vec::new();
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = watch.message().await.unwrap() {
            let Some(e) = m.into_enrollment() else {
                continue;
            };
            states.push(e.state());
            if active(&e) {
                return e;
            }
        }
        panic!("stream ended");
    })
    .await
    .expect("the watcher on A saw B's enrollment");
    assert!(states.contains(&EnrollmentState::InProgress), "{states:?}");
    assert_eq!(seen.masked_card.unwrap().pan_last_four, "9726");

    drop(watch);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, subscribers): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("c2p:changes:{card:70001}")
            .query(&mut conn)
            .unwrap();
        if subscribers == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{subscribers} subscription(s) left behind"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node of `cluster` holding the change feed's subscriber connection (`CLIENT LIST TYPE
/// pubsub` on every running node), if exactly one does.
fn subscribed_node(cluster: &RedisCluster) -> Option<usize> {
    let holding: Vec<usize> = (0..cluster.len())
        .filter(|&i| {
            cluster.node_connection(i).is_some_and(|mut c| {
                redis::cmd("CLIENT")
                    .arg("LIST")
                    .arg("TYPE")
                    .arg("pubsub")
                    .query::<String>(&mut c)
                    .is_ok_and(|list| list.lines().any(|l| !l.contains("sub=0 psub=0")))
            })
        })
        .collect();
    match holding.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// Whether a running node other than `dead` has flagged `dead` as failed and reports
/// `cluster_state:ok` (the failover, if any was needed, is over).
fn failed_over(cluster: &RedisCluster, dead: usize) -> bool {
    let address = cluster.address(dead);
    (0..cluster.len()).filter(|&i| i != dead).any(|i| {
        cluster.node_connection(i).is_some_and(|mut c| {
            let nodes: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query(&mut c)
                .unwrap_or_default();
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(&mut c)
                .unwrap_or_default();
            let flagged = nodes.lines().any(|l| {
                l.contains(&format!(" {address}@"))
                    && l.split(' ')
                        .nth(2)
                        .is_some_and(|flags| flags.split(',').any(|f| f == "fail"))
            });
            flagged && info.contains("cluster_state:ok")
        })
    })
}

/// A watch's first message says where it came from: a card without a record is looked up in
/// Mastercard's token list on that call (UPSTREAM, as GetEnrollmentStatus says of it; it was
/// labelled STORE), a card with one is the store's.
#[tokio::test]
async fn a_watch_labels_its_first_record_by_where_it_came_from() {
    let redis = RedisServer::start();
    let service = TestService::start(&settings(&[("C2P_REDIS__URL", &redis.url())])).await;
    let mut client = service.client();
    let first = |client: &mut Client| {
        let mut client = client.clone();
        async move {
            let mut watch = client
                .watch_enrollment(WatchEnrollmentRequest {
                    card_contract_id: 70001,
                    start_after_revision: 0,
                })
                .await
                .unwrap()
                .into_inner();
            watch
                .message()
                .await
                .unwrap()
                .unwrap()
                .into_enrollment()
                .unwrap()
        }
    };
    let looked_up = first(&mut client).await;
    assert_eq!(looked_up.state(), EnrollmentState::NotEnrolled);
    assert_eq!(looked_up.source(), EnrollmentSource::Upstream);
    let stored = first(&mut client).await;
    assert_eq!(stored.source(), EnrollmentSource::Store);
    assert_eq!(stored.revision, looked_up.revision);
}

/// A service on `cluster` and a watch of card 70001, past its first message (NOT_ENROLLED): the
/// feed has subscribed through one node.
async fn watching_on(
    cluster: &RedisCluster,
) -> (
    TestService,
    Client,
    tonic::Streaming<c2p_enroll::proto::v1::WatchEnrollmentResponse>,
) {
    let service = TestService::start(&settings(&[
        ("C2P_REDIS__URL", &cluster.urls()),
        ("C2P_REDIS__CLUSTER", "true"),
    ]))
    .await;
    let mut client = service.client();
    let mut watch = client
        .watch_enrollment(WatchEnrollmentRequest {
            card_contract_id: 70001,
            start_after_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(
        first.into_enrollment().unwrap().state(),
        EnrollmentState::NotEnrolled
    );
    (service, client, watch)
}

/// Waits until the cluster failed `node` over, 20 s at most from `since`.
async fn wait_for_failover(cluster: &RedisCluster, node: usize, since: std::time::Instant) {
    while !failed_over(cluster, node) {
        assert!(
            since.elapsed() < Duration::from_secs(20),
            "the cluster did not fail over within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Enrolls card 70001 with `key`, trying again on UNAVAILABLE and ABORTED for 20 s (while the
/// service learns the new topology); how many tries timed out on the store.
async fn enroll_retrying(client: &mut Client, key: &str) -> usize {
    let began = std::time::Instant::now();
    let mut timed_out = 0;
    loop {
        match client.enroll_card(request(key, 70001)).await {
            Ok(_) => return timed_out,
            Err(e) if e.code() == Code::Unavailable || e.code() == Code::Aborted => {
                timed_out += usize::from(e.message().contains("timed out"));
                println!(
                    "EnrollCard {:?} after the first try: {:?} {}",
                    began.elapsed(),
                    e.code(),
                    e.message()
                );
                assert!(
                    began.elapsed() < Duration::from_secs(20),
                    "EnrollCard kept failing: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

#[tokio::test]
async fn a_watcher_on_a_redis_cluster_survives_the_loss_of_the_node_its_feed_subscribes_through() {
    let started = std::time::Instant::now();
    let mut cluster = RedisCluster::start_with_replicas();
    let (_service, mut client, mut watch) = watching_on(&cluster).await;

    let dead = subscribed_node(&cluster).expect("one node holds the feed's subscription");
    let role: Vec<redis::Value> = redis::cmd("ROLE")
        .query(&mut cluster.node_connection(dead).unwrap())
        .unwrap();
    let role = match role.first() {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        other => format!("{other:?}"),
    };
    let killed_at = std::time::Instant::now();
    cluster.kill(dead);
    println!(
        "killed node {dead} ({}, a {role}) holding the feed's subscription",
        cluster.address(dead)
    );
    wait_for_failover(&cluster, dead, killed_at).await;
    println!(
        "cluster_state:ok with node {dead} flagged fail after {:?}",
        killed_at.elapsed()
    );

    // A change for the card, through the service (retried while the client learns the new
    // topology).
    let written_at = std::time::Instant::now();
    enroll_retrying(&mut client, "k-failover").await;
    println!(
        "EnrollCard written {:?} after the failover",
        written_at.elapsed()
    );
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(m) = watch.message().await.unwrap() {
            let Some(e) = m.into_enrollment() else {
                continue;
            };
            if active(&e) {
                return e;
            }
        }
        panic!("the watch stream ended");
    })
    .await
    .expect("the watcher saw the enrollment written after the node was lost (20 s)");
    assert_eq!(seen.masked_card.unwrap().pan_last_four, "9726");
    println!(
        "watcher received the ENROLLED update {:?} after the write ({:?} after the kill; \
         test {:?}); feed now on node {:?}",
        written_at.elapsed(),
        killed_at.elapsed(),
        started.elapsed(),
        subscribed_node(&cluster)
    );
}

/// A node that hangs (SIGSTOP: it keeps its connections and answers nothing) while the feed
/// sends it a SUBSCRIBE: the feed gives the node up within its reply timeout and subscribes
/// through another one, so the watch whose SUBSCRIBE went unanswered opens, and the watchers
/// see the changes made meanwhile. Before, the feed waited on the SUBSCRIBE for as long as the
/// node hung (no PING, no delivery, no other watch served).
#[tokio::test]
async fn a_watcher_on_a_redis_cluster_survives_a_node_that_hangs_while_the_feed_subscribes() {
    let cluster = RedisCluster::start_with_replicas();
    let (service, mut client, mut watch) = watching_on(&cluster).await;

    let hung = subscribed_node(&cluster).expect("one node holds the feed's subscription");
    let hung_at = std::time::Instant::now();
    cluster.freeze(hung);
    println!(
        "froze node {hung} ({}) holding the feed's subscription",
        cluster.address(hung)
    );
    // A second watch: its SUBSCRIBE goes to the hung node.
    let second = service.client();
    let open_second = move || {
        let mut second = second.clone();
        async move {
            let mut stream = second
                .watch_enrollment(WatchEnrollmentRequest {
                    card_contract_id: 70002,
                    start_after_revision: 0,
                })
                .await?
                .into_inner();
            stream.message().await
        }
    };
    let opened = tokio::spawn(open_second());

    wait_for_failover(&cluster, hung, hung_at).await;
    let deadline = hung_at + Duration::from_secs(20);
    // Its card's record may live on the hung node until the failover: an UNAVAILABLE answer of
    // the store is tried again. Not its SUBSCRIBE: carried over to the next node, it is
    // confirmed there (before, every try waited on the SUBSCRIBE stuck behind the first).
    let mut opened = opened.await.unwrap();
    while let Err(e) = &opened {
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(
            !e.message().contains("cannot subscribe"),
            "the watch's SUBSCRIBE was not confirmed: {e:?}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the second watch did not open within 20 s of the freeze: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        opened = open_second().await;
    }
    let opened = opened
        .unwrap()
        .expect("the second watch sent the card's record");
    assert_eq!(
        opened.into_enrollment().unwrap().state(),
        EnrollmentState::NotEnrolled
    );
    println!(
        "the second watch opened {:?} after the freeze",
        hung_at.elapsed()
    );

    let written_at = std::time::Instant::now();
    let timed_out = enroll_retrying(&mut client, "k-hung").await;
    // The store's half was put to the test: a command for the hung node's slots timed out
    // after the failover (the slot map still named it), and the next call found the new map.
    assert!(
        timed_out > 0,
        "no EnrollCard met the hung node: the test no longer covers the slot map's refresh"
    );
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(m) = watch.message().await.unwrap() {
            if m.into_enrollment().is_some_and(|e| active(&e)) {
                return;
            }
        }
        panic!("the watch stream ended");
    })
    .await;
    cluster.thaw(hung);
    seen.expect("the first watcher saw the enrollment written while the node hung (20 s)");
    println!(
        "the first watcher saw the enrollment {:?} after the write ({:?} after the freeze)",
        written_at.elapsed(),
        hung_at.elapsed()
    );
}

#[tokio::test]
async fn status_is_rebuilt_from_the_token_list_on_a_miss_and_cached() {
    for redis in [None, Some(RedisServer::start())] {
        let sandbox = start_sandbox().await;
        // Enrolled through one instance with its own (memory) store ...
        let first = TestService::start_with(&settings(&[]), sandbox.clone()).await;
        first
            .client()
            .enroll_card(request("k-cache", 70001))
            .await
            .unwrap();
        // ... read through another whose store has never seen the card.
        let url = redis.as_ref().map(RedisServer::url);
        let s = match &url {
            Some(u) => settings(&[("C2P_REDIS__URL", u.as_str())]),
            None => settings(&[]),
        };
        let other = TestService::start_with(&s, sandbox.clone()).await;
        let mut client = other.client();
        let rebuilt = status_of(&mut client, 70001, false).await.unwrap();
        assert_eq!(rebuilt.source(), EnrollmentSource::Upstream);
        // This instance's store knows of no enrollment: a token made elsewhere, to it.
        assert_eq!(rebuilt.state(), EnrollmentState::TokenizedElsewhere);
        assert_eq!(rebuilt.token.clone().unwrap().status(), TokenStatus::Active);
        let cached = status_of(&mut client, 70001, false).await.unwrap();
        assert_eq!(cached.source(), EnrollmentSource::Store);
        let tokens_before = sandbox.count(Route::CardTokens);
        // The token is suspended upstream; refresh skips the cache and sees it.
        assert!(
            sandbox.set_token_status(&rebuilt.token.unwrap().token_unique_reference, "Suspended")
        );
        let refreshed = status_of(&mut client, 70001, true).await.unwrap();
        assert_eq!(
            (refreshed.source(), refreshed.token.unwrap().status()),
            (EnrollmentSource::Upstream, TokenStatus::Suspended)
        );
        assert_eq!(sandbox.count(Route::CardTokens), tokens_before + 1);
        // No Click to Pay token: NOT_ENROLLED, cached briefly.
        let none = status_of(&mut client, 70002, false).await.unwrap();
        assert_eq!(
            (none.state(), none.source()),
            (EnrollmentState::NotEnrolled, EnrollmentSource::Upstream)
        );
        let none = status_of(&mut client, 70002, false).await.unwrap();
        assert_eq!(none.source(), EnrollmentSource::Store);
    }
}

pub fn tar(id: &str, card: i64, at_s: i64, trid: &str) -> NotificationIngestRequest {
    NotificationIngestRequest {
        notification_id: id.into(),
        sequence: 0,
        event_time: Some(prost_types::Timestamp {
            seconds: at_s,
            nanos: 0,
        }),
        event: Some(Event::TokenizationAuthorization(
            TokenizationAuthorization {
                card_contract_id: card,
                token_unique_reference: "DM4MMC0000000042".into(),
                token_requestor_id: trid.into(),
                wallet_name: "MDES for Merchants".into(),
                decision: TokenizationDecision::Approved as i32,
            },
        )),
    }
}

#[tokio::test]
async fn notification_ingest_acknowledges_each_message_with_its_outcome() {
    let mut redis = RedisServer::start();
    let service = TestService::start(&settings(&[("C2P_REDIS__URL", &redis.url())])).await;
    let mut malformed = tar("n-bad", 0, t0(), "50123197928");
    malformed.event_time = None;
    let messages = vec![
        tar("n-1", 70010, t0() + 10, "50123197928"),
        tar("n-1", 70010, t0() + 10, "50123197928"),
        tar("n-2", 70010, t0() + 5, "50123197928"),
        tar("n-3", 70010, t0() + 20, "99999999999"),
        malformed,
        tar("n-4", 70010, t0() + 30, "50123197928"),
    ];
    let mut responses = service
        .client()
        .notification_ingest(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    let mut outcomes = std::collections::BTreeMap::new();
    let mut order = Vec::new();
    while let Some(r) = responses.message().await.unwrap() {
        order.push(r.notification_id.clone());
        outcomes
            .entry(r.notification_id.clone())
            .or_insert_with(Vec::new)
            .push(r.outcome());
    }
    assert_eq!(
        order.len(),
        6,
        "one answer per message, the stream went on after the malformed one"
    );
    let mut n1 = outcomes["n-1"].clone();
    n1.sort_by_key(|o| *o as i32);
    assert_eq!(
        n1,
        [NotificationOutcome::Applied, NotificationOutcome::Duplicate]
    );
    assert_eq!(outcomes["n-2"], [NotificationOutcome::Stale]);
    assert_eq!(outcomes["n-3"], [NotificationOutcome::Ignored]);
    assert_eq!(outcomes["n-bad"], [NotificationOutcome::Rejected]);
    assert_eq!(outcomes["n-4"], [NotificationOutcome::Applied]);

    // The store is down: an outcome the gateway retries, never a false APPLIED.
    redis.stop();
    let mut responses = service
        .client()
        .notification_ingest(tokio_stream::iter([tar(
            "n-5",
            70010,
            t0() + 40,
            "50123197928",
        )]))
        .await
        .unwrap()
        .into_inner();
    let r = responses.message().await.unwrap().unwrap();
    assert_eq!(r.outcome(), NotificationOutcome::Failed, "{r:?}");
}

/// The last event time the store keeps (5138-11-16T09:46:39.999Z) goes through Redis and reads
/// back to the millisecond; a later one is REJECTED with the bound (it used to be APPLIED as
/// `1e+14`, after which the card's record no longer read).
#[tokio::test]
async fn far_event_times_read_back_exactly_or_are_rejected() {
    let redis = RedisServer::start();
    // The skew bound would refuse these first: widened so that the store's own limit shows.
    let service = TestService::start(&settings(&[
        ("C2P_REDIS__URL", &redis.url()),
        ("C2P_NOTIFICATIONS__MAX_FUTURE_SKEW", "4000years"),
    ]))
    .await;
    let at = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
    let mut last = tar("n-last", 70030, 0, "50123197928");
    last.event_time = Some(at(99_999_999_999, 999_000_000));
    let mut far = tar("n-far", 70030, 0, "50123197928");
    far.event_time = Some(at(200_000_000_000, 0));
    let mut responses = service
        .client()
        .notification_ingest(tokio_stream::iter([last, far]))
        .await
        .unwrap()
        .into_inner();
    // Answers come as each message is done, not in the order sent.
    let mut answers = std::collections::BTreeMap::new();
    while let Some(r) = responses.message().await.unwrap() {
        answers.insert(r.notification_id.clone(), r);
    }
    assert_eq!(answers["n-last"].outcome(), NotificationOutcome::Applied);
    let far = &answers["n-far"];
    assert_eq!(far.outcome(), NotificationOutcome::Rejected, "{far:?}");
    assert!(far.message.contains("5138-11-16"), "{far:?}");
    let mut client = service.client();
    let record = status_of(&mut client, 70030, false).await.unwrap();
    assert_eq!(
        record.token.unwrap().event_time,
        Some(at(99_999_999_999, 999_000_000))
    );
}

#[tokio::test]
async fn upstream_trouble_is_unavailable_with_retry_info_and_the_same_key_resumes() {
    let service = TestService::start(&settings(&[
        ("C2P_MASTERCARD__PROCESSING__MAX_ATTEMPTS", "2"),
        ("C2P_MASTERCARD__PROCESSING__INITIAL_BACKOFF", "10ms"),
    ]))
    .await;
    let mut client = service.client();
    service.sandbox.set_fault(
        Route::Searches,
        RouteFault {
            error: Some(ErrorFault {
                status: 503,
                reason_code: "SERVICE_UNAVAILABLE".into(),
            }),
            ..Default::default()
        },
    );
    let err = client
        .enroll_card(request("k-retry", 70001))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Unavailable, "UPSTREAM_UNAVAILABLE")
    );
    assert!(err.get_details_retry_info().is_some());
    assert_eq!(metadata(&err, "step").as_deref(), Some("search"));
    service
        .sandbox
        .set_fault(Route::Searches, RouteFault::default());
    let ok = client
        .enroll_card(request("k-retry", 70001))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.enrollment.unwrap().state(), EnrollmentState::Enrolled);
}

#[tokio::test]
async fn the_callers_deadline_bounds_upstream_work() {
    let service = TestService::start(&settings(&[])).await;
    service.sandbox.set_fault(
        Route::Searches,
        RouteFault {
            hang: true,
            ..Default::default()
        },
    );
    // Over raw HTTP/2: tonic's client would time the call out itself at the same deadline,
    // racing the service's answer on a loaded machine.
    let err = crate::wire::raw_unary_status(
        service.running.local_addr(),
        "EnrollCard",
        &request("k-deadline", 70001).encode_to_vec(),
        Duration::from_secs(1),
    )
    .await;
    // The service itself stopped the upstream work and answered (a client-side timeout would
    // carry no ErrorInfo).
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::DeadlineExceeded, "DEADLINE_EXCEEDED"),
        "{err:?}"
    );
    assert_eq!(metadata(&err, "step").as_deref(), Some("search"));
}

#[tokio::test]
async fn two_keys_for_one_card_at_once_send_one_post_cards() {
    let redis = RedisServer::start();
    let service = TestService::start(&settings(&[("C2P_REDIS__URL", &redis.url())])).await;
    service.sandbox.set_fault(
        Route::EnrollCards,
        RouteFault {
            latency: Some(Duration::from_secs(2)),
            ..Default::default()
        },
    );
    let (mut c1, mut c2) = (service.client(), service.client());
    let first = tokio::spawn(async move { c1.enroll_card(request("k-one", 70001)).await });
    // The second call comes once the first holds the card (it then waits 2 s on POST /cards).
    redis.wait_for_key("c2p:{card:70001}:lock").await;
    let second = c2.enroll_card(request("k-two", 70001)).await.unwrap_err();
    assert_eq!(
        (second.code(), reason(&second).as_str()),
        (Code::Aborted, "ENROLLMENT_IN_PROGRESS")
    );
    assert!(second.get_details_retry_info().is_some());
    first.await.unwrap().unwrap();
    let mut c3 = service.client();
    let after = c3.enroll_card(request("k-two", 70001)).await.unwrap_err();
    assert_eq!(
        reason(&after),
        "CARD_ALREADY_ENROLLED",
        "the same key, retried, finds the card enrolled"
    );
    assert_eq!(service.sandbox.count(Route::EnrollCards), 1);
}

#[tokio::test]
async fn draining_ends_watch_streams_unavailable_server_draining() {
    let service = TestService::start(&settings(&[])).await;
    let mut watch = service
        .client()
        .watch_enrollment(WatchEnrollmentRequest {
            card_contract_id: 70001,
            start_after_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().unwrap();
    let outcome = service.running.shutdown().await;
    assert_eq!(outcome, c2p_enroll::server::DrainOutcome::Clean);
    let end = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("the stream ended");
    // Never OK: the watcher must know to resume elsewhere.
    let status = end.expect_err("a drained watch ends with an error");
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::Unavailable, "SERVER_DRAINING")
    );
    assert!(
        status.get_error_details().retry_info().is_some(),
        "RetryInfo: {status:?}"
    );
}

/// Click to Pay enrolls the card but the next `POST /cards` answer is lost: the call ends
/// UNAVAILABLE once its attempt timeout passes.
pub fn lose_the_next_post_cards_answer(service: &TestService) {
    service.sandbox.set_fault(
        Route::EnrollCards,
        RouteFault {
            drop_response: true,
            times: Some(1),
            ..Default::default()
        },
    );
}

#[tokio::test]
async fn another_key_continues_an_unfinished_enrollment_with_its_correlation_id() {
    let redis = RedisServer::start();
    let service = TestService::start(&settings(&[
        ("C2P_REDIS__URL", &redis.url()),
        ("C2P_MASTERCARD__ENROLL__ATTEMPT_TIMEOUT", "500ms"),
    ]))
    .await;
    let mut client = service.client();
    lose_the_next_post_cards_answer(&service);
    let lost = client
        .enroll_card(request("k-lost", 70001))
        .await
        .unwrap_err();
    assert_eq!(
        (lost.code(), reason(&lost).as_str()),
        (Code::Unavailable, "UPSTREAM_UNAVAILABLE")
    );
    let unfinished = status_of(&mut client, 70001, false).await.unwrap();
    assert_eq!(unfinished.state(), EnrollmentState::InProgress);
    // Another key must not start a second enrollment: it continues the first one.
    let done = client
        .enroll_card(request("k-other", 70001))
        .await
        .unwrap()
        .into_inner()
        .enrollment
        .unwrap();
    assert_eq!(done.state(), EnrollmentState::Enrolled);
    assert_eq!(done.src_correlation_id, unfinished.src_correlation_id);
    // The first POST /cards went through: the token list says so, and it is not sent again.
    assert_eq!(
        service
            .sandbox
            .count_for_correlation(&done.src_correlation_id),
        1
    );
    assert_eq!(service.sandbox.count(Route::EnrollCards), 1);
}

#[tokio::test]
async fn a_watcher_keeps_following_across_a_redis_restart() {
    let mut redis = RedisServer::start();
    let service = TestService::start(&settings(&[("C2P_REDIS__URL", &redis.url())])).await;
    let mut watch = service
        .client()
        .watch_enrollment(WatchEnrollmentRequest {
            card_contract_id: 70004,
            start_after_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch
            .message()
            .await
            .unwrap()
            .unwrap()
            .into_enrollment()
            .unwrap()
            .state(),
        EnrollmentState::NotEnrolled
    );

    redis.stop();
    redis.restart();
    let mut health = service.health();
    crate::harness::wait_for_health(
        &mut health,
        "",
        tonic_health::pb::health_check_response::ServingStatus::Serving,
        Duration::from_secs(10),
    )
    .await;
    // The feed reconnects and subscribes again by itself; a change applied now reaches the watcher.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    let seen = loop {
        n += 1;
        let mut responses = service
            .client()
            .notification_ingest(tokio_stream::iter([tar(
                &format!("n-restart-{n}"),
                70004,
                t0() + n,
                "50123197928",
            )]))
            .await
            .unwrap()
            .into_inner();
        let outcome = responses.message().await.unwrap().unwrap().outcome();
        if outcome == NotificationOutcome::Applied
            && let Ok(Ok(Some(m))) =
                tokio::time::timeout(Duration::from_secs(1), watch.message()).await
        {
            if let Some(e) = m.into_enrollment() {
                break e;
            }
            continue;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watcher saw nothing after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A card this service never enrolled, now with a Click to Pay token.
    assert_eq!(seen.state(), EnrollmentState::TokenizedElsewhere);
    assert_eq!(
        seen.token.unwrap().decision(),
        TokenizationDecision::Approved
    );
}
