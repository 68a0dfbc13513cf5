//! The operators' kit against a real Prometheus (issue 15): Debian's `prometheus` scrapes a
//! sandbox service on loopback while it serves enrollments with every outcome, then every query
//! of the Grafana dashboard and every rule of the alert rules is evaluated through Prometheus'
//! HTTP API. Its own test target, so that the service's metrics (process-wide) are this test's
//! alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../it/harness.rs"]
mod harness;

#[allow(dead_code)]
#[path = "../it/wire.rs"]
mod wire;

mod dashboard;
mod prometheus;
