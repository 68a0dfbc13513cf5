//! The RPCs the load generator sends, their requests (cards, idempotency keys) and how an answer
//! or an error is named in the report.

use c2p_enroll::mastercard::processing::types::{
    CLICK_TO_PAY_TOKEN_REQUESTOR_ID, CLICK_TO_PAY_WALLET_NAME,
};
use c2p_enroll::proto::v1::{
    Consumer, EnrollCardRequest, EnrollmentSource, GetEnrollmentStatusRequest,
    NotificationIngestRequest, NotificationOutcome, TokenStatus, TokenStatusChanged,
    enrollment_service_client::EnrollmentServiceClient, notification_ingest_request::Event,
};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_types::StatusExt as _;

/// An RPC the load generator can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rpc {
    EnrollCard,
    GetEnrollmentStatus,
    NotificationIngest,
    WatchEnrollment,
    Health,
}

impl Rpc {
    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Rpc::EnrollCard => "EnrollCard",
            Rpc::GetEnrollmentStatus => "GetEnrollmentStatus",
            Rpc::NotificationIngest => "NotificationIngest",
            Rpc::WatchEnrollment => "WatchEnrollment",
            Rpc::Health => "Health/Check",
        }
    }

    /// Whether it is one request, one answer (and so can be mixed with others).
    pub fn is_unary(self) -> bool {
        matches!(
            self,
            Rpc::EnrollCard | Rpc::GetEnrollmentStatus | Rpc::Health
        )
    }
}

impl FromStr for Rpc {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let key: String = s
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        Ok(match key.as_str() {
            "enrollcard" | "enroll" => Rpc::EnrollCard,
            "getenrollmentstatus" | "status" => Rpc::GetEnrollmentStatus,
            "notificationingest" | "ingest" => Rpc::NotificationIngest,
            "watchenrollment" | "watch" => Rpc::WatchEnrollment,
            "healthcheck" | "health" => Rpc::Health,
            _ => {
                return Err(format!(
                    "unknown RPC {s:?}: EnrollCard, GetEnrollmentStatus, NotificationIngest, WatchEnrollment or Health/Check"
                ));
            }
        })
    }
}

/// Unary RPCs by weight: `GetEnrollmentStatus=9,EnrollCard=1`. Request `i` gets the RPC whose
/// share of the weights `i mod total` falls in, so the mix is exact and needs no randomness.
#[derive(Debug, Clone)]
pub struct Mix(pub Vec<(Rpc, u32)>);

impl Mix {
    pub fn single(rpc: Rpc) -> Self {
        Mix(vec![(rpc, 1)])
    }

    pub fn pick(&self, i: u64) -> Rpc {
        let total: u64 = self.0.iter().map(|(_, w)| u64::from(*w)).sum();
        let mut at = i % total.max(1);
        for (rpc, w) in &self.0 {
            if at < u64::from(*w) {
                return *rpc;
            }
            at -= u64::from(*w);
        }
        self.0.first().map_or(Rpc::Health, |(r, _)| *r)
    }

    pub fn rpcs(&self) -> Vec<Rpc> {
        self.0.iter().map(|(r, _)| *r).collect()
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        for item in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = item.split_once('=').unwrap_or((item, "1"));
            let rpc: Rpc = name.trim().parse()?;
            if !rpc.is_unary() {
                return Err(format!(
                    "{}: only unary RPCs mix (EnrollCard, GetEnrollmentStatus, Health/Check)",
                    rpc.name()
                ));
            }
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("{item}: the weight must be a whole number"))?;
            if weight > 0 {
                parts.push((rpc, weight));
            }
        }
        if parts.is_empty() {
            return Err("an empty mix".into());
        }
        Ok(Mix(parts))
    }
}

/// A range of card contract ids, `A-B` (inclusive) or one id.
#[derive(Debug, Clone, Copy)]
pub struct CardRange {
    pub first: i64,
    pub last: i64,
}

impl CardRange {
    pub fn len(&self) -> u64 {
        u64::try_from(self.last - self.first + 1).unwrap_or(1)
    }

    /// The `i`-th card, wrapping around.
    pub fn nth(&self, i: u64) -> i64 {
        self.first + i64::try_from(i % self.len()).unwrap_or(0)
    }
}

impl FromStr for CardRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let parse = |v: &str| {
            v.trim()
                .parse::<i64>()
                .map_err(|_| format!("{s}: a card range is A-B or one id"))
        };
        let (first, last) = (parse(a)?, parse(b)?);
        if first < 1 || last < first {
            return Err(format!("{s}: ids start at 1 and A <= B"));
        }
        Ok(CardRange { first, last })
    }
}

/// How cards are drawn from the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CardOrder {
    /// Request i takes the i-th card (each card once before any repeats).
    Sequential,
    /// Uniformly at random.
    Random,
}

/// Idempotency keys of `EnrollCard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Keys {
    /// A new key per request (new enrollments: every card once, or the later ones fail
    /// `CARD_ALREADY_ENROLLED`).
    Unique,
    /// One key per card: after the first call, calls replay its stored answer.
    Repeated,
}

/// What a request needs besides its RPC.
pub struct Requests {
    pub cards: CardRange,
    pub order: CardOrder,
    pub keys: Keys,
    pub key_prefix: String,
    pub refresh: bool,
}

impl Requests {
    pub fn new(
        cards: CardRange,
        order: CardOrder,
        keys: Keys,
        key_prefix: String,
        refresh: bool,
    ) -> Self {
        Self {
            cards,
            order,
            keys,
            key_prefix,
            refresh,
        }
    }

    pub fn card(&self, i: u64) -> i64 {
        match self.order {
            CardOrder::Sequential => self.cards.nth(i),
            CardOrder::Random => self.cards.nth(rand::random::<u64>()),
        }
    }

    pub fn enroll(&self, i: u64) -> EnrollCardRequest {
        let card = self.card(i);
        let idempotency_key = match self.keys {
            Keys::Unique => format!("{}-{i}", self.key_prefix),
            Keys::Repeated => format!("{}-card-{card}", self.key_prefix),
        };
        EnrollCardRequest {
            idempotency_key,
            card_contract_id: card,
            consumer: Some(Consumer {
                email: "bench.user@example.com".into(),
                country_code: "US".into(),
                language_code: "en_US".into(),
                ..Consumer::default()
            }),
            cardholder_full_name: "Bench User".into(),
            ..EnrollCardRequest::default()
        }
    }

    pub fn status(&self, i: u64) -> GetEnrollmentStatusRequest {
        GetEnrollmentStatusRequest {
            card_contract_id: self.card(i),
            refresh: self.refresh,
        }
    }

    /// A Click to Pay token status change for the `i`-th card, stamped now.
    pub fn notification(&self, i: u64, sequence: u64) -> NotificationIngestRequest {
        let card = self.card(i);
        // The real time: a card's next message (one pass over the range later) is newer. A
        // clock of its own would drift ahead of the server's and be refused as future-dated.
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        NotificationIngestRequest {
            notification_id: format!("{}-n{i}", self.key_prefix),
            event_time: Some(prost_types::Timestamp {
                seconds: i64::try_from(at.as_secs()).unwrap_or(0),
                nanos: i32::try_from(at.subsec_nanos()).unwrap_or(0),
            }),
            sequence,
            event: Some(Event::TokenStatusChanged(TokenStatusChanged {
                card_contract_id: card,
                token_unique_reference: format!("DM4MMCBENCH{card:014}"),
                token_requestor_id: CLICK_TO_PAY_TOKEN_REQUESTOR_ID.into(),
                wallet_name: CLICK_TO_PAY_WALLET_NAME.into(),
                // Every pass over the range flips the status: each message changes its card.
                status: if (i / self.cards.len()).is_multiple_of(2) {
                    TokenStatus::Active
                } else {
                    TokenStatus::Suspended
                } as i32,
                reason: String::new(),
            })),
        }
    }
}

/// The clients of one connection.
#[derive(Clone)]
pub struct Clients {
    pub service: EnrollmentServiceClient<Channel>,
    pub health: HealthClient<Channel>,
    /// For [`super::probe::status_source`].
    pub channel: Channel,
}

impl Clients {
    pub fn new(channel: Channel) -> Self {
        Self {
            service: EnrollmentServiceClient::new(channel.clone())
                .max_decoding_message_size(4 * 1024 * 1024),
            health: HealthClient::new(channel.clone()),
            channel,
        }
    }
}

/// `CODE reason`: the gRPC code in the proto's spelling, and the `ErrorInfo` reason if any.
pub fn error_key(status: &tonic::Status) -> String {
    let code = screaming(&format!("{:?}", status.code()));
    match status.get_details_error_info() {
        Some(info) if !info.reason.is_empty() => format!("{code} {}", info.reason),
        _ => code,
    }
}

/// `FailedPrecondition` → `FAILED_PRECONDITION`.
fn screaming(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Sends one unary call; `Ok(outcome)` names what the answer said.
pub async fn unary(
    clients: &Clients,
    rpc: Rpc,
    requests: &Requests,
    i: u64,
    timeout: Duration,
) -> Result<String, String> {
    let call = async {
        match rpc {
            Rpc::EnrollCard => {
                let mut c = clients.service.clone();
                c.enroll_card(with_timeout(requests.enroll(i), timeout))
                    .await
                    .map(|r| {
                        if r.into_inner().replayed {
                            "replayed".to_owned()
                        } else {
                            "new".to_owned()
                        }
                    })
            }
            Rpc::GetEnrollmentStatus => super::probe::status_source(
                &clients.channel,
                with_timeout(requests.status(i), timeout),
            )
            .await
            .map(|source| {
                EnrollmentSource::try_from(source).map_or_else(
                    |_| format!("source {source}"),
                    |s| s.as_str_name().to_owned(),
                )
            }),
            Rpc::Health => {
                let mut c = clients.health.clone();
                c.check(with_timeout(
                    HealthCheckRequest {
                        service: String::new(),
                    },
                    timeout,
                ))
                .await
                .map(|r| match r.into_inner().status {
                    1 => "SERVING".to_owned(),
                    s => format!("status {s}"),
                })
            }
            Rpc::NotificationIngest | Rpc::WatchEnrollment => {
                Err(tonic::Status::internal("not a unary RPC"))
            }
        }
    };
    // The deadline travels as grpc-timeout; this bound only stops a call the server never ends.
    match tokio::time::timeout(timeout + Duration::from_secs(2), call).await {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(status)) => Err(error_key(&status)),
        Err(_) => Err("DEADLINE_EXCEEDED (client)".into()),
    }
}

/// How an ingest answer is named, and whether it counts as an acknowledgement.
pub fn ingest_outcome(outcome: i32) -> (String, bool) {
    match NotificationOutcome::try_from(outcome) {
        Ok(o) => {
            let acked = matches!(
                o,
                NotificationOutcome::Applied
                    | NotificationOutcome::Duplicate
                    | NotificationOutcome::Stale
                    | NotificationOutcome::Ignored
            );
            (o.as_str_name().to_owned(), acked)
        }
        Err(_) => (format!("outcome {outcome}"), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_names_and_mixes() {
        assert_eq!("Health/Check".parse::<Rpc>().unwrap(), Rpc::Health);
        assert_eq!("status".parse::<Rpc>().unwrap(), Rpc::GetEnrollmentStatus);
        let mix: Mix = "GetEnrollmentStatus=3,EnrollCard=1".parse().unwrap();
        let picked: Vec<Rpc> = (0..8).map(|i| mix.pick(i)).collect();
        assert_eq!(picked.iter().filter(|r| **r == Rpc::EnrollCard).count(), 2);
        assert!("WatchEnrollment=1".parse::<Mix>().is_err());
    }

    #[test]
    fn card_ranges() {
        let r: CardRange = "100-102".parse().unwrap();
        assert_eq!((r.nth(0), r.nth(2), r.nth(3)), (100, 102, 100));
        let one: CardRange = "70001".parse().unwrap();
        assert_eq!(one.len(), 1);
        assert!("5-4".parse::<CardRange>().is_err());
    }

    #[test]
    fn codes_in_the_protos_spelling() {
        assert_eq!(screaming("FailedPrecondition"), "FAILED_PRECONDITION");
        assert_eq!(error_key(&tonic::Status::unavailable("x")), "UNAVAILABLE");
    }

    #[test]
    fn each_pass_over_the_range_changes_every_card() {
        let r = Requests::new(
            "1-10".parse().unwrap(),
            CardOrder::Sequential,
            Keys::Unique,
            "k".into(),
            false,
        );
        let status = |n: &NotificationIngestRequest| match &n.event {
            Some(Event::TokenStatusChanged(t)) => (t.card_contract_id, t.status),
            _ => unreachable!(),
        };
        let (first, second) = (r.notification(3, 1), r.notification(13, 2));
        assert_eq!(status(&first).0, status(&second).0);
        assert_ne!(status(&first).1, status(&second).1);
        assert_ne!(first.notification_id, second.notification_id);
    }
}
