//! `grpc.health.v1.Health` follows the store: NOT_SERVING while Redis is down, SERVING again when
//! it is back, with no restart.

use crate::harness::{RedisServer, TestService, free_port, settings, wait_for_health};
use c2p_enroll::proto::SERVICE_NAME;
use std::time::Duration;
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test]
async fn health_follows_redis_down_and_up_without_restart() {
    let mut redis = RedisServer::start();
    let service = TestService::start(&settings(&[("C2P_REDIS__URL", &redis.url())])).await;
    let mut health = service.health();
    for name in ["", SERVICE_NAME] {
        wait_for_health(
            &mut health,
            name,
            ServingStatus::Serving,
            Duration::from_secs(5),
        )
        .await;
    }

    redis.stop();
    // The promise: NOT_SERVING within 5 s of Redis going away.
    for name in ["", SERVICE_NAME] {
        wait_for_health(
            &mut health,
            name,
            ServingStatus::NotServing,
            Duration::from_secs(5),
        )
        .await;
    }

    // The liveness name does not follow the store: a Redis outage must not restart pods.
    assert_eq!(
        crate::harness::health_status(&mut health, c2p_enroll::health::LIVENESS).await,
        ServingStatus::Serving
    );

    redis.restart();
    for name in ["", SERVICE_NAME] {
        wait_for_health(
            &mut health,
            name,
            ServingStatus::Serving,
            Duration::from_secs(10),
        )
        .await;
    }
}

#[tokio::test]
async fn service_starts_not_serving_when_redis_is_unreachable() {
    // Nothing listens on this port: the service must still start, and say it cannot serve.
    let url = format!("redis://127.0.0.1:{}/", free_port());
    let service = TestService::start(&settings(&[("C2P_REDIS__URL", &url)])).await;
    let mut health = service.health();
    // Give the probe several rounds to (wrongly) turn SERVING.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for name in ["", SERVICE_NAME] {
        wait_for_health(
            &mut health,
            name,
            ServingStatus::NotServing,
            Duration::from_secs(1),
        )
        .await;
    }
}

#[tokio::test]
async fn memory_store_service_is_serving() {
    let service = TestService::start(&settings(&[])).await;
    let mut health = service.health();
    for name in ["", SERVICE_NAME] {
        wait_for_health(
            &mut health,
            name,
            ServingStatus::Serving,
            Duration::from_secs(5),
        )
        .await;
    }
}
