//! (c) A process SIGSTOPped past its lease while it holds a card mid-enrollment (its search is
//! slow); the other process takes the card over with the same key and enrolls it; then the first
//! continues: the second's ENROLLED record survives its late writes.

use crate::harness::{RedisServer, connect};
use crate::{Client, Simulator, panics, request, status_of};
use c2p_enroll::proto::v1::EnrollmentState;
use std::time::{Duration, Instant};
use tonic::Code;

const CARD: i64 = 70_001;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_stopped_past_its_lease_does_not_overwrite_the_takeover() {
    let started = Instant::now();
    let redis = RedisServer::start();
    // The first search (A's) takes 4 s.
    let simulator =
        Simulator::start("[routes.searches]\nlatency = \"4s\"\ntimes = 1\n", None).await;
    let extra = [
        ("C2P_ENROLL__LEASE", "1s"),
        ("C2P_LOG__FILTER", "c2p_enroll=debug,info"),
    ];
    let mut a = simulator.service(&redis.url(), &extra);
    let mut b = simulator.service(&redis.url(), &extra);
    let mut client_a = Client::new(connect(a.listening_addr().await).await);
    let mut client_b = Client::new(connect(b.listening_addr().await).await);
    let mut sent = 0;

    let call_a = {
        let mut client = client_a.clone();
        tokio::spawn(async move {
            let mut call = tonic::Request::new(request("k-stalled", CARD));
            call.set_timeout(Duration::from_secs(40));
            client.enroll_card(call).await
        })
    };
    sent += 1;
    // A holds the card (its lock exists): stop it past its 1 s lease.
    let lock = format!("c2p:{{card:{CARD}}}:lock");
    redis.wait_for_key(&lock).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.signal("STOP");
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // B takes over with the same key.
    let deadline = Instant::now() + Duration::from_secs(20);
    let taken_over = loop {
        sent += 1;
        match client_b.enroll_card(request("k-stalled", CARD)).await {
            Ok(r) => break r.into_inner().enrollment.unwrap(),
            Err(e)
                if matches!(e.code(), Code::Aborted | Code::Unavailable)
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("B: {e:?}\n{}", b.stderr()),
        }
    };
    assert_eq!(
        taken_over.state(),
        EnrollmentState::Enrolled,
        "{taken_over:?}"
    );

    // A stays stopped until its search's answer (4 s) waits in its socket: on waking, that
    // answer races its heartbeat's discovery that the lease is gone.
    tokio::time::sleep(Duration::from_millis(4500).saturating_sub(stopped.elapsed())).await;
    a.signal("CONT");
    let a_answer = tokio::time::timeout(Duration::from_secs(30), call_a)
        .await
        .expect("A answers once continued")
        .unwrap();
    let a_answer = match &a_answer {
        Ok(r) => format!("{:?}", r.get_ref().enrollment.as_ref().map(|e| e.state())),
        Err(s) => format!("{:?} {}", s.code(), s.message()),
    };
    // Time for any late write of A's to land.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_b = status_of(&mut client_b, CARD).await.unwrap();
    let after_a = status_of(&mut client_a, CARD).await.unwrap();
    let tokens = simulator.tokens_of(&simulator.upstream(), CARD).await;
    let lost = usize::from(
        after_b.state() != EnrollmentState::Enrolled
            || after_b.src_correlation_id != taken_over.src_correlation_id,
    );
    let limbo = usize::from(after_b.state() == EnrollmentState::InProgress);
    let panic_lines = panics(&a.stderr()) + panics(&b.stderr());
    // Whether A's search answered after it woke (the race this scenario is about), and whether
    // A itself noticed that it lost the card.
    let a_log = a.stderr();
    let a_search_answered = a_log
        .lines()
        .any(|l| l.contains("mastercard call finished") && l.contains("searchCard"));
    let a_stopped_itself = a_log.contains("the lease or the card lock was lost");
    println!(
        "CHAOS (c) stalled past lease: sent {sent}, acknowledged 1 (B: ENROLLED), A answered {a_answer} \
         (its search answered: {a_search_answered}, it saw the lease lost: {a_stopped_itself}), \
         lost {lost} (record now {:?}/{:?} via B/A), duplicates {}, panics {panic_lines}, \
         cards in limbo {limbo}, {:.1}s",
        after_b.state(),
        after_a.state(),
        tokens.saturating_sub(1),
        started.elapsed().as_secs_f64()
    );
    // CHAOS_SHOW_LOGS=1 shows A's log even when the scenario passes.
    if lost > 0 || std::env::var_os("CHAOS_SHOW_LOGS").is_some() {
        println!("A's log:\n{}", a.stderr());
    }
    assert_eq!(tokens, 1, "the simulator holds one token for the card");
    assert_eq!(panic_lines, 0);
    assert_eq!(
        after_b.state(),
        EnrollmentState::Enrolled,
        "A's late writes replaced B's ENROLLED record: {after_b:?}"
    );
    assert_eq!(after_b.src_correlation_id, taken_over.src_correlation_id);
}
