//! One version of a stored enrollment record, shared read-only between a store's in-process copy
//! (the in-memory store, the Redis store's record cache) and the calls that read it: a status
//! hit hands out a pointer, not a copy of the record's strings.

use super::EnrollmentRecord;
use std::sync::{Arc, OnceLock};

/// A record as a store holds it for readers. A write makes a new one; this one never changes,
/// so what is derived from it once stays true for as long as it lives.
pub struct SharedRecord {
    record: EnrollmentRecord,
    /// One serialised form of this version, made on the first read that asks: the gRPC
    /// layer's encoded `GetEnrollmentStatus` answer with source STORE
    /// (`grpc::convert::status_answer`, its only maker; later hits send it as it is). It lives
    /// and dies with the version, so it can never be an answer about another one. One slot, one
    /// kind of memo: a second kind would need a slot of its own. It costs the answer's size
    /// (~250-400 bytes) per version read at least once, as long as the store keeps the version.
    memo: OnceLock<bytes::Bytes>,
}

impl SharedRecord {
    /// `record`, shared.
    pub fn new(record: EnrollmentRecord) -> Arc<Self> {
        Arc::new(Self {
            record,
            memo: OnceLock::new(),
        })
    }

    /// The record.
    pub fn record(&self) -> &EnrollmentRecord {
        &self.record
    }

    /// The record, moved out when this is the only pointer to it, else copied.
    pub fn into_record(self: Arc<Self>) -> EnrollmentRecord {
        Arc::try_unwrap(self).map_or_else(|shared| shared.record.clone(), |own| own.record)
    }

    /// The memo, made by `make` from the record on the first call (and by nobody after; see the
    /// field for its one maker).
    pub fn memo(&self, make: impl FnOnce(&EnrollmentRecord) -> bytes::Bytes) -> bytes::Bytes {
        self.memo.get_or_init(|| make(&self.record)).clone()
    }
}

// Read through: a shared record reads as the record it is.
impl std::ops::Deref for SharedRecord {
    type Target = EnrollmentRecord;

    fn deref(&self) -> &EnrollmentRecord {
        &self.record
    }
}

// Equal when the records are (the memo is made from the record).
impl PartialEq for SharedRecord {
    fn eq(&self, other: &Self) -> bool {
        self.record == other.record
    }
}

// Which version, not its content (the masked card stays out of anything printed).
impl std::fmt::Debug for SharedRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRecord")
            .field("card_contract_id", &self.record.card_contract_id)
            .field("revision", &self.record.revision)
            .field("memo_bytes", &self.memo.get().map(bytes::Bytes::len))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::domain::{CardContractId, EnrollmentState};

    fn record() -> EnrollmentRecord {
        let card = CardContractId::new(7).unwrap();
        EnrollmentRecord::new(card, "p".into(), EnrollmentState::NotEnrolled, 1)
    }

    #[test]
    fn the_memo_is_made_once_per_version() {
        let shared = SharedRecord::new(record());
        let mut made = 0;
        for _ in 0..3 {
            let bytes = shared.memo(|r| {
                made += 1;
                bytes::Bytes::from(r.program.clone().into_bytes())
            });
            assert_eq!(&bytes[..], b"p");
        }
        assert_eq!(made, 1);
        // A new version starts without one.
        assert!(SharedRecord::new(record()).memo.get().is_none());
    }

    #[test]
    fn into_record_moves_out_an_only_pointer_and_copies_a_shared_one() {
        let shared = SharedRecord::new(record());
        let other = shared.clone();
        assert_eq!(shared.into_record(), record());
        assert_eq!(other.into_record(), record());
    }
}
