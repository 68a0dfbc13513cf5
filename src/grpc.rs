//! The gRPC layer: the `EnrollmentService` implementation (proto ⇄ domain, the one error map).

pub mod auth;
pub mod codec;
pub mod convert;
mod deadline;
/// The contract's field annotations against this validation (a test).
#[cfg(test)]
mod field_rules;
mod ingest;
pub mod policy;
mod service;
pub mod status;
pub mod streams;
pub mod trace;
mod watch;

pub use service::EnrollmentApi;
