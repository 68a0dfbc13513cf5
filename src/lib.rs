//! c2p-enroll: enables a PAN-less issuer's cards for Mastercard Click to Pay over gRPC.

pub mod app;
pub mod config;
pub mod devcerts;
pub mod domain;
pub mod grpc;
pub mod health;
pub mod mastercard;
pub mod metrics;
pub mod proto;
pub mod run;
pub mod sandbox;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod transport;
