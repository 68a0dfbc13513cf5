//! c2p-enroll: enables a PAN-less issuer's cards for Mastercard Click to Pay over gRPC.

pub mod app;
pub mod config;
pub mod devcerts;
pub mod digest;
pub mod domain;
pub mod grpc;
pub mod health;
pub mod mastercard;
pub mod metrics;
pub mod proto;
pub mod run;
pub mod sandbox;
pub mod secret_file;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod transport;

/// Makes ring the process-wide rustls `CryptoProvider` (rustls needs one for Redis over TLS).
/// The binary calls it at start; the library calls it again before building TLS clients, for
/// callers that use it directly. A provider already installed is kept.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
