//! Code generated from `proto/` by `build.rs`, and the descriptor set served by reflection.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

mod status_response;

/// `c2p.enrollment.v1`: the service contract.
pub mod v1 {
    tonic::include_proto!("c2p.enrollment.v1");
    // Written by hand (it can carry an answer already encoded); `build.rs` maps it here.
    pub use super::status_response::GetEnrollmentStatusResponse;
}

/// The encoded `FileDescriptorSet` of the contract (for gRPC server reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/c2p_descriptor.bin"));

/// The fully qualified gRPC name of the service, as health checks and reflection name it.
pub const SERVICE_NAME: &str = "c2p.enrollment.v1.EnrollmentService";

impl v1::WatchEnrollmentResponse {
    /// The enrollment this message carries, or `None` for a heartbeat.
    pub fn into_enrollment(self) -> Option<v1::Enrollment> {
        match self.event {
            Some(v1::watch_enrollment_response::Event::Enrollment(e)) => Some(e),
            _ => None,
        }
    }
}
