//! The idempotency record of one `EnrollCard` key: which request it belongs to, how far the call
//! got, the `srcCorrelationId` it uses, who holds it now (a lease), and the final answer.

use super::EnrollmentRecord;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How far an enrollment call got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Accepted, nothing sent yet.
    Started,
    /// `/cards/searches` answered. No longer written (a resume searches again from either
    /// `Started` or this, so the write decided nothing): read from keys an earlier version
    /// stored, and resumed as `Started` is.
    Searched,
    /// `POST /cards` is about to be, or was, sent: a resume re-sends it with the same
    /// `srcCorrelationId`.
    EnrollSent,
    /// Finished; `outcome` holds the answer.
    Done,
}

/// A final answer kept for replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StoredOutcome {
    /// The enrollment returned.
    Success {
        /// The record as returned.
        enrollment: EnrollmentRecord,
    },
    /// A terminal error, replayed as the same status (the gRPC layer picks the code from the
    /// reason, as for a fresh error).
    Failure {
        /// Stable reason (an `ErrorReason` name).
        reason: String,
        /// Message (no card data).
        message: String,
        /// `ErrorInfo` metadata.
        metadata: BTreeMap<String, String>,
        /// The enrollment carried in the details, if any.
        enrollment: Option<EnrollmentRecord>,
    },
}

/// The record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// SHA-256 of the request's canonical form.
    pub fingerprint: String,
    /// How far the call got.
    pub phase: Phase,
    /// The `srcCorrelationId` every attempt of this key uses.
    pub src_correlation_id: String,
    /// `src_correlation_id` is another key's unfinished enrollment's, taken over, and this key's
    /// own `IN_PROGRESS` write of it has not landed yet (it sends it right after): its resume
    /// asks the token list before sending it, and a removal found there is that enrollment's,
    /// not this key's answer. Not set when the key's own enrollment was one the card's record
    /// retired: the one it takes over then stands in for its own. Absent (false) in keys stored
    /// before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
    /// The instance/attempt holding the lease.
    pub owner: String,
    /// The lease end, Unix milliseconds; a later call may take over after it.
    pub lease_until_ms: i64,
    /// The answer once `Done`.
    pub outcome: Option<StoredOutcome>,
}

/// What starting a call with a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// A new key: the proposal was stored.
    New(IdempotencyRecord),
    /// An earlier call with this key stopped (its lease ran out): continue from its phase.
    Resume(IdempotencyRecord),
    /// The call finished before: replay its answer.
    Replay(IdempotencyRecord),
    /// Another call with this key holds the lease for this many more milliseconds.
    InFlight(i64),
    /// The key belongs to a different request.
    Reused,
}
