//! The gRPC layer: the `EnrollmentService` implementation (proto ⇄ domain, the one error map).

pub mod auth;
pub mod codec;
pub mod convert;
mod deadline;
pub mod envelope;
/// The contract's field annotations against this validation (a test).
#[cfg(test)]
mod field_rules;
mod ingest;
mod lifecycle;
pub mod policy;
/// The error vocabulary: the proto's ErrorReason, the README's table and the code (a test).
#[cfg(test)]
mod reasons;
mod service;
pub mod status;
pub mod streams;
pub mod trace;
mod watch;

pub use service::EnrollmentApi;
