//! The gRPC layer: the `EnrollmentService` implementation (proto ⇄ domain, error mapping).

mod service;

pub use service::EnrollmentApi;
