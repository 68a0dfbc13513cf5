//! The Mastercard adapter layer: request signing, payload encryption, key material, and the
//! clients of Processing Digital, the Click to Pay Enroll API and Click to Pay's lifecycle APIs.

pub mod breaker;
pub mod enroll;
pub mod error;
pub mod http;
pub mod jwe;
pub mod keys;
pub mod lifecycle;
pub mod oauth1;
pub mod offload;
pub mod ports;
pub mod processing;
pub mod settings;
pub mod setup;
