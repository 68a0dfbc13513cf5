//! Domain types: the enrollment record, notifications and how they merge. No I/O, no transport
//! types.

/// The name of the program used when a request names none (stored as the empty program).
pub const DEFAULT_PROGRAM: &str = "default";

mod enrollment;
mod idempotency;
mod lifecycle;
mod notification;
mod shared_record;

pub use enrollment::{
    CardContractId, EnrollmentRecord, EnrollmentState, Failure, MaskedCard, RETIRED_TOKENS,
    STORE_INTEGER_LIMIT, Token, TokenStatus, TokenizationDecision, Version, is_storable_time,
    last_four, merge_tokens, next_revision, now_ms,
};
pub use idempotency::{Begin, IdempotencyRecord, Phase, StoredOutcome};
pub use lifecycle::{
    OptOut, Removal, RemovalReason, card_subject, consumer_subject, follow_token, latest_status,
    removed_by_token,
};
pub use notification::{
    CLICK_TO_PAY_TOKEN_REQUESTOR_ID, CLICK_TO_PAY_WALLET_NAME, Merge, TokenEvent, TokenEventKind,
    merge,
};
pub use shared_record::SharedRecord;
