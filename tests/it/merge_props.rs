//! Property tests of the merge (`domain::merge`, and its Lua twin in `store/scripts.rs`):
//! random notification sets (several tokens, equal event times, duplicates, every status and
//! decision, the extreme times the store accepts, ids and references that sort differently as
//! bytes and as words) delivered in a random order to each store must give byte-identical
//! records: the in-memory store, a standalone Redis, a Redis whose C library collates as
//! `en_US.UTF-8`, a 3-master Redis Cluster, and the pure fold of `domain::merge` in the order
//! generated. Each store gets the deliveries cut into random batches: a batch of one through
//! `apply_notification`, a longer one through `apply_notifications` (Redis: one script call,
//! copies of a notification within it included). The servers start once; each case writes its
//! own card.
//!
//! The card's enrollment record is written before the notifications, after them, or never; it
//! is ENROLLED (which follows its token: a DEACTIVATED token makes it REMOVED, and a later
//! write of the token makes it ENROLLED again) or REMOVED by a caller (which stays). Enough
//! cases must end REMOVED by their token for the derivation to be exercised.
//!
//! `C2P_MERGE_PROP_CASES` sets the number of cases (default 200). The figures and the run's seed
//! are printed (`cargo test --test it merge_props -- --nocapture` shows them);
//! `PROPTEST_RNG_SEED=<seed>` runs the same cases again.

use crate::harness::{RedisCluster, RedisServer, settings};
use c2p_enroll::domain::{
    CardContractId, EnrollmentRecord, EnrollmentState, MaskedCard, Merge, Removal, RemovalReason,
    STORE_INTEGER_LIMIT, TokenEvent, TokenEventKind, TokenStatus, TokenizationDecision, merge,
};
use c2p_enroll::store::{EnrollmentStore, NotificationEffect, PutMode};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const T: i64 = 1_800_000_000_000;
/// Few distinct times, so that many notifications tie; the first and last the store keeps.
const TIMES: &[i64] = &[
    0,
    1_000,
    T,
    T + 1,
    STORE_INTEGER_LIMIT - 2,
    STORE_INTEGER_LIMIT - 1,
];
/// References that sort differently as bytes and in an English collation (`a` < `B`), with
/// the separators the service accepts.
const REFERENCES: &[&str] = &[
    "DM4MMC000000000a",
    "DM4MMC000000000B",
    "DM4MMC000000000b",
    "DM4MMC00000000_1",
    "DM4MMC-00000000A",
];
/// Ids that sort differently as bytes and as words (case, accents, digits); the position in
/// the set is appended, so that ids are unique within a set.
const ID_PREFIXES: &[&str] = &["n-a", "n-B", "N-b", "n-é", "n-z", "ñ-", "n-10-", "n-9-"];
const CLICK_TO_PAY: &str = "50123197928";
const KINDS: &[TokenEventKind] = &[
    TokenEventKind::Authorization(TokenizationDecision::Approved),
    TokenEventKind::Authorization(TokenizationDecision::Declined),
    TokenEventKind::Authorization(TokenizationDecision::RequireAdditionalAuthentication),
    TokenEventKind::Complete,
    TokenEventKind::StatusChanged(TokenStatus::Pending),
    TokenEventKind::StatusChanged(TokenStatus::Active),
    TokenEventKind::StatusChanged(TokenStatus::Suspended),
    TokenEventKind::StatusChanged(TokenStatus::Deactivated),
    TokenEventKind::StatusChanged(TokenStatus::Inactive),
];
/// The stores under test, in the order of `Case::orders`.
const STORES: [&str; 4] = ["memory", "redis", "redis in en_US.UTF-8", "redis cluster"];

/// One notification, without its card (each case has its own).
#[derive(Debug, Clone)]
struct Note {
    id: String,
    at_ms: i64,
    reference: &'static str,
    requestor: &'static str,
    kind: TokenEventKind,
}

impl Note {
    fn event(&self, card: CardContractId) -> TokenEvent {
        TokenEvent {
            notification_id: self.id.clone(),
            event_at_ms: self.at_ms,
            card_contract_id: card,
            token_unique_reference: self.reference.into(),
            token_requestor_id: self.requestor.into(),
            wallet_name: "MDES for Merchants".into(),
            kind: self.kind,
        }
    }
}

/// When the enrollment flow writes the card's record, relative to the notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enrollment {
    Never,
    Before,
    After,
    /// Removed by a caller (RemoveCard) before the notifications: it does not follow its token.
    RemovedBefore,
}

#[derive(Debug, Clone)]
struct Case {
    notes: Vec<Note>,
    /// Per store: the arrival order, as indexes into `notes`, duplicates included.
    orders: Vec<Vec<usize>>,
    /// Per store: the sizes of the batches the arrivals come in (the rest in batches of one).
    batches: Vec<Vec<usize>>,
    enrollment: Enrollment,
}

fn note(position: usize) -> impl Strategy<Value = Note> {
    (
        select(ID_PREFIXES),
        select(TIMES),
        select(REFERENCES),
        // Mostly Click to Pay's requestor; sometimes another, for the requestor tie-break.
        prop_oneof![9 => Just(CLICK_TO_PAY), 1 => Just("50123197929")],
        // Every kind, DEACTIVATED more often: at an even draw only ~2.5% of cases ended REMOVED
        // by their token (0 to 9 of 200 per run, so a run now and then had none and the check
        // below failed by chance).
        prop_oneof![
            3 => select(KINDS),
            1 => Just(TokenEventKind::StatusChanged(TokenStatus::Deactivated)),
        ],
    )
        .prop_map(move |(prefix, at_ms, reference, requestor, kind)| Note {
            id: format!("{prefix}{position}"),
            at_ms,
            reference,
            requestor,
            kind,
        })
}

fn case() -> impl Strategy<Value = Case> {
    (1..=8usize)
        .prop_flat_map(|n| {
            (
                (0..n).map(note).collect::<Vec<_>>(),
                // Each notification is delivered 1 to 3 times.
                vec(1..=3usize, n),
                select(
                    &[
                        Enrollment::Never,
                        Enrollment::Before,
                        Enrollment::After,
                        Enrollment::RemovedBefore,
                    ][..],
                ),
            )
        })
        .prop_flat_map(|(notes, copies, enrollment)| {
            let deliveries: Vec<usize> = copies
                .iter()
                .enumerate()
                .flat_map(|(i, c)| std::iter::repeat_n(i, *c))
                .collect();
            let orders: Vec<_> = STORES
                .iter()
                .map(|_| Just(deliveries.clone()).prop_shuffle())
                .collect();
            let batches: Vec<_> = STORES
                .iter()
                .map(|_| vec(1..=4usize, deliveries.len()))
                .collect();
            (Just(notes), orders, batches, Just(enrollment))
        })
        .prop_map(|(notes, orders, batches, enrollment)| Case {
            notes,
            orders,
            batches,
            enrollment,
        })
}

fn enrolled(card: CardContractId) -> EnrollmentRecord {
    let mut r = EnrollmentRecord::new(card, "default".into(), EnrollmentState::Enrolled, T + 1);
    r.src_digital_card_id = Some("d1b4f0a2-0000-4000-8000-000000000001".into());
    r.masked_card = Some(MaskedCard {
        pan_last_four: "9726".into(),
        pan_expiration_month: "12".into(),
        pan_expiration_year: "2030".into(),
        payment_card_descriptor: Some("Mastercard / débit".into()),
        payment_card_type: Some("CREDIT".into()),
        digital_card_status: Some("ACTIVE".into()),
    });
    r
}

fn removed(card: CardContractId) -> EnrollmentRecord {
    let mut r = enrolled(card);
    r.state = EnrollmentState::Removed;
    r.removal = Some(Removal {
        reason: RemovalReason::CardClosed,
        time_ms: T,
    });
    r
}

/// The record written before the notifications, if any.
fn written_before(case: &Case, card: CardContractId) -> Option<EnrollmentRecord> {
    match case.enrollment {
        Enrollment::Before => Some(enrolled(card)),
        Enrollment::RemovedBefore => Some(removed(card)),
        Enrollment::Never | Enrollment::After => None,
    }
}

/// The record by the domain alone: `merge` over the notifications in the order generated.
fn model(case: &Case, card: CardContractId) -> Option<EnrollmentRecord> {
    let mut record = written_before(case, card);
    for note in &case.notes {
        match merge(record.as_ref(), &note.event(card)) {
            Merge::Applied(r) => record = Some(r),
            Merge::Stale => {}
        }
    }
    if case.enrollment == Enrollment::After {
        record = Some(enrolled(card).with_token_of(record.as_ref()));
    }
    record.map(unstamped)
}

/// The record without what each store's clock sets (times, revision): the part every store
/// and the model must agree on byte for byte.
fn unstamped(mut r: EnrollmentRecord) -> EnrollmentRecord {
    r.create_time_ms = 0;
    r.update_time_ms = 0;
    r.revision = 0;
    r
}

#[derive(Default)]
struct Figures {
    cases: AtomicU64,
    applied: AtomicU64,
    duplicate: AtomicU64,
    stale: AtomicU64,
    mismatches: AtomicU64,
    /// Cases whose record ended REMOVED by its token.
    removed_by_token: AtomicU64,
}

/// Delivers the case to `store` in `order`, in batches of `batches`; returns the record as JSON.
async fn run_on(
    store: &Arc<dyn EnrollmentStore>,
    case: &Case,
    order: &[usize],
    batches: &[usize],
    card: CardContractId,
    figures: &Figures,
) -> Result<String, String> {
    let ttl = Duration::from_secs(3600);
    if let Some(before) = written_before(case, card) {
        store
            .put_enrollment(&before, PutMode::Merge, ttl)
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut rest = order;
    for size in batches.iter().chain(std::iter::repeat(&1)) {
        if rest.is_empty() {
            break;
        }
        let (batch, after) = rest.split_at((*size).min(rest.len()));
        rest = after;
        let events: Vec<TokenEvent> = batch.iter().map(|i| case.notes[*i].event(card)).collect();
        let effects = if let [event] = &events[..] {
            vec![store.apply_notification(event).await.map(|r| r.effect())]
        } else {
            store.apply_notifications(&events).await
        };
        if effects.len() != events.len() {
            return Err(format!(
                "{} effects for {} events",
                effects.len(),
                events.len()
            ));
        }
        for effect in effects {
            let counter = match effect.map_err(|e| e.to_string())? {
                NotificationEffect::Applied => &figures.applied,
                NotificationEffect::Duplicate => &figures.duplicate,
                NotificationEffect::Stale => &figures.stale,
                NotificationEffect::Conflict => {
                    return Err("an id unique in its set conflicted".into());
                }
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
    if case.enrollment == Enrollment::After {
        store
            .put_enrollment(&enrolled(card), PutMode::Merge, ttl)
            .await
            .map_err(|e| e.to_string())?;
    }
    let record = store.get(card).await.map_err(|e| e.to_string())?;
    if let Some(r) = &record {
        // The store's stamps: set, and consistent (its clock, not the events').
        if r.revision <= 0 || r.create_time_ms <= 0 || r.update_time_ms < r.create_time_ms {
            return Err(format!(
                "bad stamps: revision {} create {} update {}",
                r.revision, r.create_time_ms, r.update_time_ms
            ));
        }
    }
    serde_json::to_string(&record.map(unstamped)).map_err(|e| e.to_string())
}

#[test]
fn random_notification_sets_give_byte_identical_records_in_every_store() {
    let cases: u32 = std::env::var("C2P_MERGE_PROP_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let started = Instant::now();
    let redis = RedisServer::start();
    let in_locale = RedisServer::start_in_collating_locale();
    let cluster = RedisCluster::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stores: Vec<Arc<dyn EnrollmentStore>> = rt.block_on(async {
        vec![
            c2p_enroll::server::open_store(&settings(&[])).unwrap(),
            c2p_enroll::server::open_store(&settings(&[("C2P_REDIS__URL", &redis.url())])).unwrap(),
            c2p_enroll::server::open_store(&settings(&[("C2P_REDIS__URL", &in_locale.url())]))
                .unwrap(),
            c2p_enroll::server::open_store(&settings(&[
                ("C2P_REDIS__URL", &cluster.urls()),
                ("C2P_REDIS__CLUSTER", "true"),
            ]))
            .unwrap(),
        ]
    });
    let figures = Figures::default();
    let next_card = AtomicU64::new(0);
    let config = Config {
        cases,
        // The failing case is printed; nothing is written to the source tree.
        failure_persistence: None,
        max_shrink_iters: 500,
        ..Config::default()
    };
    // The run's seed is printed, so that a failure seen once can be run again as it was
    // (`PROPTEST_RNG_SEED`, which `Config::default()` reads): with the same code and case count,
    // the cases depend on it alone (a failure that hangs on timing may still not come back).
    let seed = match config.rng_seed {
        RngSeed::Fixed(seed) => seed,
        RngSeed::Random => rand::random(),
    };
    println!("merge properties: seed {seed} (PROPTEST_RNG_SEED={seed} runs these cases again)");
    let mut runner = TestRunner::new(Config {
        rng_seed: RngSeed::Fixed(seed),
        ..config
    });
    let result = runner.run(&case(), |case| {
        figures.cases.fetch_add(1, Ordering::Relaxed);
        // A card of its own per case (shrinking re-runs cases).
        let n = next_card.fetch_add(1, Ordering::Relaxed);
        let card = CardContractId::new(90_000 + i64::try_from(n).unwrap()).unwrap();
        let modelled = model(&case, card);
        if modelled
            .as_ref()
            .and_then(|r| r.removal.as_ref())
            .is_some_and(|r| r.reason == RemovalReason::TokenDeactivated)
        {
            figures.removed_by_token.fetch_add(1, Ordering::Relaxed);
        }
        let expected = serde_json::to_string(&modelled).unwrap();
        let mut got = Vec::new();
        for ((store, order), batches) in stores.iter().zip(&case.orders).zip(&case.batches) {
            got.push(
                rt.block_on(run_on(store, &case, order, batches, card, &figures))
                    .map_err(TestCaseError::fail)?,
            );
        }
        let differing: Vec<String> = STORES
            .iter()
            .zip(&got)
            .filter(|(_, json)| **json != expected)
            .map(|(name, json)| format!("{name}: {json}"))
            .collect();
        if differing.is_empty() {
            Ok(())
        } else {
            figures.mismatches.fetch_add(1, Ordering::Relaxed);
            Err(TestCaseError::fail(format!(
                "expected (domain::merge in the order generated): {expected}\n{}",
                differing.join("\n")
            )))
        }
    });
    let applied = figures.applied.load(Ordering::Relaxed);
    let duplicate = figures.duplicate.load(Ordering::Relaxed);
    let stale = figures.stale.load(Ordering::Relaxed);
    let removed_by_token = figures.removed_by_token.load(Ordering::Relaxed);
    println!(
        "merge properties: {} cases run ({cases} asked, shrinking included) on {} stores, {} \
         notifications delivered ({applied} applied, {duplicate} duplicate, {stale} stale), \
         {removed_by_token} cases ended REMOVED by their token, {} mismatching cases, {:.1} s",
        figures.cases.load(Ordering::Relaxed),
        STORES.len(),
        applied + duplicate + stale,
        figures.mismatches.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("{e}\n(PROPTEST_RNG_SEED={seed} runs these cases again)");
    }
    if cases >= 100 {
        assert!(
            removed_by_token > 0,
            "no case ended REMOVED by its token: the derivation was not exercised \
             (PROPTEST_RNG_SEED={seed} runs these cases again)"
        );
    }
}
