//! Integration tests: the real service, a real `redis-server` and real gRPC, all on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;
mod http_stub;
mod wire;

mod adapter;
mod contract;
mod crash;
mod envelope;
mod flows;
mod health;
mod in_progress_gauges;
mod ingest_pipelined;
mod lifecycle;
mod limits;
mod load_generator;
mod merge_props;
mod observability;
mod oracles;
mod poison;
mod reconcile;
mod record_cache;
mod redis_tls;
mod reflection;
mod security;
mod settings;
mod shutdown;
mod simulator;
mod standalone;
mod status_hits;
mod store;
mod store_batch;
