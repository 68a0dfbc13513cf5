//! The integrator material of `integration/` and `examples/`, run against the real service
//! (issue 12, item 8): the gRPC service config under an independent gRPC implementation
//! (grpcio), the reference NotificationIngest gateway across drains, restarts and cut
//! connections, and the reference EnrollCard client's retries (issue 15). Its own test target,
//! sharing nothing with `tests/it`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod enroll_client;
mod gateway;
mod own_time;
mod service_config;
mod support;
