//! Domain types: the enrollment record and its parts. No I/O, no transport types.

mod enrollment;

pub use enrollment::{
    CardContractId, EnrollmentRecord, EnrollmentState, Failure, MaskedCard, Token, TokenStatus,
    TokenizationDecision,
};
