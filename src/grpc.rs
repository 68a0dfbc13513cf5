//! The gRPC layer: the `EnrollmentService` implementation (proto ⇄ domain, the one error map).

pub mod auth;
pub mod codec;
pub mod convert;
mod deadline;
pub mod envelope;
mod ingest;
pub mod policy;
#[cfg(test)]
mod reasons;
mod service;
pub mod status;
pub mod streams;
pub mod trace;
mod watch;

pub use service::EnrollmentApi;
