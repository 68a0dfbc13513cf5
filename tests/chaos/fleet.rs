//! (a) N cards through 2 service processes sharing one Redis, against one simulator that fails
//! ~20% of requests on both APIs; a client retries each card with the same idempotency key on
//! both processes alternately. Then: no panics, one token per enrolled card, and once the
//! reconciler ran every record agrees with the simulator.

use crate::harness::{RedisServer, connect};
use crate::{Client, Simulator, panics, request, status_of};
use c2p_enroll::proto::v1::EnrollmentState;
use futures::StreamExt as _;
use std::time::{Duration, Instant};
use tonic::Code;

/// Cards: `C2P_CHAOS_CARDS` or 300.
fn cards() -> i64 {
    std::env::var("C2P_CHAOS_CARDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

const FIRST_CARD: i64 = 71_001;
const MAX_TRIES: usize = 40;
const CONCURRENCY: usize = 16;

/// A PAN with a valid Luhn check digit.
fn pan(n: i64) -> String {
    let body = format!("518600180{n:06}");
    let sum: u32 = body
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let dd = d * 2;
                if dd > 9 { dd - 9 } else { dd }
            } else {
                d
            }
        })
        .sum();
    format!("{body}{}", (10 - sum % 10) % 10)
}

/// A CMS of `n` active, tokenizable cards (the sample has only 70001-70004, and the simulator
/// answers NOT_FOUND for any other id).
fn cms(n: i64) -> String {
    (0..n)
        .map(|i| {
            format!(
                "[[card]]\ncard_contract_id = {}\nclient_id = {}\npan = \"{}\"\nexpiry_month = \"12\"\n\
                 expiry_year = \"2030\"\nstatus = \"ACTIVE\"\nproduct = \"MCW World Mastercard\"\n\
                 card_type = \"CREDIT\"\ntokenization_eligible = true\n\n",
                FIRST_CARD + i,
                50_000 + i,
                pan(i)
            )
        })
        .collect()
}

/// How one card's calls ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Enrolled,
    /// A final answer other than ENROLLED (a non-retryable failure).
    Refused,
    /// No final answer within the tries.
    GaveUp,
}

/// Every tenth card's caller gives up after one call with a 300 ms deadline: its enrollment is
/// left to the reconciler.
fn abandoned(card: i64) -> bool {
    card % 10 == 0
}

/// Calls EnrollCard with one key on both processes alternately until a final answer.
async fn enroll(clients: [Client; 2], card: i64) -> (Outcome, usize) {
    let key = format!("chaos-{card}");
    if abandoned(card) {
        let mut call = tonic::Request::new(request(&key, card));
        call.set_timeout(Duration::from_millis(300));
        let mut client = clients[card as usize % 2].clone();
        return match client.enroll_card(call).await {
            Ok(r)
                if r.get_ref().enrollment.as_ref().map(|e| e.state())
                    == Some(EnrollmentState::Enrolled) =>
            {
                (Outcome::Enrolled, 1)
            }
            _ => (Outcome::GaveUp, 1),
        };
    }
    for attempt in 0..MAX_TRIES {
        let mut client = clients[(attempt + card as usize) % 2].clone();
        let mut call = tonic::Request::new(request(&key, card));
        call.set_timeout(Duration::from_secs(15));
        match client.enroll_card(call).await {
            Ok(r) => {
                let e = r.into_inner().enrollment.unwrap_or_default();
                match e.state() {
                    EnrollmentState::Enrolled => return (Outcome::Enrolled, attempt + 1),
                    EnrollmentState::Failed if !e.failure.as_ref().is_some_and(|f| f.retryable) => {
                        return (Outcome::Refused, attempt + 1);
                    }
                    _ => {}
                }
            }
            Err(s)
                if matches!(
                    s.code(),
                    Code::InvalidArgument
                        | Code::NotFound
                        | Code::FailedPrecondition
                        | Code::PermissionDenied
                        | Code::AlreadyExists
                ) =>
            {
                println!("card {card}: final {:?} {}", s.code(), s.message());
                return (Outcome::Refused, attempt + 1);
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100 * (attempt as u64).min(5) + 50)).await;
    }
    (Outcome::GaveUp, MAX_TRIES)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cards_through_two_processes_under_random_faults_enroll_once_and_agree_after_reconciling() {
    let started = Instant::now();
    let n = cards();
    let redis = RedisServer::start();
    let simulator =
        Simulator::start("[chaos]\nrate = 0.2\nlatency = \"300ms\"\n", Some(&cms(n))).await;
    let extra = [
        ("C2P_ENROLL__LEASE", "2s"),
        ("C2P_ENROLL__RECONCILE_AFTER", "2s"),
        ("C2P_ENROLL__RECONCILE_INTERVAL", "300ms"),
        ("C2P_MASTERCARD__PROCESSING__ATTEMPT_TIMEOUT", "2s"),
        ("C2P_MASTERCARD__ENROLL__ATTEMPT_TIMEOUT", "2s"),
        ("C2P_MASTERCARD__PROCESSING__BREAKER__OPEN_DURATION", "2s"),
        ("C2P_MASTERCARD__ENROLL__BREAKER__OPEN_DURATION", "2s"),
    ];
    let mut a = simulator.service(&redis.url(), &extra);
    let mut b = simulator.service(&redis.url(), &extra);
    let clients = [
        Client::new(connect(a.listening_addr().await).await),
        Client::new(connect(b.listening_addr().await).await),
    ];

    let results: Vec<(i64, Outcome, usize)> = futures::stream::iter(FIRST_CARD..FIRST_CARD + n)
        .map(|card| {
            let clients = clients.clone();
            async move {
                let (outcome, tries) = enroll(clients, card).await;
                (card, outcome, tries)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let sent: usize = results.iter().map(|r| r.2).sum();
    let enrolled_acks = results.iter().filter(|r| r.1 == Outcome::Enrolled).count();
    let refused = results.iter().filter(|r| r.1 == Outcome::Refused).count();
    let gave_up = results.iter().filter(|r| r.1 == Outcome::GaveUp).count();
    let calls_done = started.elapsed();
    // The reconciler finishes what the client left IN_PROGRESS (2 s after it was last touched).
    let deadline = Instant::now() + Duration::from_secs(20);
    let records: std::collections::BTreeMap<i64, EnrollmentState> =
        futures::stream::iter(FIRST_CARD..FIRST_CARD + n)
            .map(|card| {
                let mut reader = clients[card as usize % 2].clone();
                async move {
                    loop {
                        match status_of(&mut reader, card).await {
                            Ok(e)
                                if e.state() != EnrollmentState::InProgress
                                    || Instant::now() > deadline =>
                            {
                                return (card, e.state());
                            }
                            Err(e) if Instant::now() > deadline => {
                                panic!("card {card} unreadable: {e:?}")
                            }
                            _ => {}
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
    let upstream = simulator.upstream();
    let tokens: std::collections::BTreeMap<i64, usize> =
        futures::stream::iter(FIRST_CARD..FIRST_CARD + n)
            .map(|card| {
                let (simulator, upstream) = (&simulator, &upstream);
                async move { (card, simulator.tokens_of(upstream, card).await) }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
    let mut duplicates = 0;
    let mut limbo = Vec::new();
    let mut lost = 0;
    let mut tokenized = 0;
    for (card, outcome, _) in &results {
        let tokens = tokens[card];
        if tokens > 1 {
            duplicates += 1;
        }
        if tokens > 0 {
            tokenized += 1;
        }
        let state = records[card];
        if (state == EnrollmentState::Enrolled) != (tokens > 0)
            || state == EnrollmentState::InProgress
        {
            limbo.push((*card, state, tokens));
        }
        if *outcome == Outcome::Enrolled && (tokens == 0 || state != EnrollmentState::Enrolled) {
            lost += 1;
        }
    }
    let injected = simulator
        .process
        .stderr()
        .lines()
        .filter(|l| l.contains("simulator: injected fault"))
        .count();
    let logs = a.stderr() + &b.stderr();
    let reconciled = |what: &str| {
        logs.lines()
            .filter(|l| l.contains("reconciler:") && l.contains(what))
            .count()
    };
    let (reconciled_enrolled, reconciled_failed) = (reconciled("ENROLLED"), reconciled("FAILED"));
    let panic_lines =
        panics(&a.stderr()) + panics(&b.stderr()) + panics(&simulator.process.stderr());
    println!(
        "CHAOS (a) fleet: cards {n}, sent {sent}, acknowledged {} (enrolled {enrolled_acks}, refused {refused}), \
         gave up {gave_up} (abandoned {}; reconciled: ENROLLED {reconciled_enrolled}, FAILED {reconciled_failed}), lost {lost}, duplicates {duplicates}, panics {panic_lines}, cards in limbo {}, \
         tokenized {tokenized}, faults injected {injected}, calls {:.1}s, total {:.1}s",
        enrolled_acks + refused,
        (FIRST_CARD..FIRST_CARD + n)
            .filter(|c| abandoned(*c))
            .count(),
        limbo.len(),
        calls_done.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    if panic_lines > 0 {
        println!("A:\n{}\nB:\n{}", a.stderr(), b.stderr());
    }
    assert_eq!(panic_lines, 0, "panics in the logs");
    assert_eq!(duplicates, 0, "cards with more than one token");
    assert_eq!(lost, 0, "acknowledged ENROLLED but not enrolled");
    assert!(
        limbo.is_empty(),
        "records that disagree with the simulator: {limbo:?}"
    );
    a.signal("TERM");
    b.signal("TERM");
    a.wait(Duration::from_secs(15)).await;
    b.wait(Duration::from_secs(15)).await;
}
