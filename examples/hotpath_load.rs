//! A small closed-loop load loop for the hot paths (issue 14, P1/P2/P5), for quick before/after
//! figures while the full `bench` tool is elsewhere. Not a benchmark harness: no open-loop rate,
//! latencies sorted in memory.
//!
//! ```sh
//! cargo run --release --example hotpath_load -- ADDR MODE CONCURRENCY SECONDS [PID] [CARD_FROM CARD_TO]
//! ```
//! MODE: `health`, `status` (GetEnrollmentStatus of the cards CARD_FROM..=CARD_TO in turn),
//! `enroll` (EnrollCard with unique keys, each card of the range once, or until SECONDS), or
//! `mixed` (enroll at CONCURRENCY plus one status call of card 70001 every 2 ms, whose latencies
//! are reported apart).
//! With PID, the service's CPU time (utime + stime from /proc) per call is printed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use c2p_enroll::proto::v1::enrollment_service_client::EnrollmentServiceClient;
use c2p_enroll::proto::v1::{Consumer, EnrollCardRequest, GetEnrollmentStatusRequest};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime: fields 14 and 15 of stat, 12 and 13 after the command.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn enroll_request(key: String, card: i64) -> EnrollCardRequest {
    EnrollCardRequest {
        idempotency_key: key,
        card_contract_id: card,
        program: String::new(),
        consumer: Some(Consumer {
            email: "jane.doe@example.com".into(),
            mobile_number: None,
            first_name: "Jane".into(),
            last_name: "Doe".into(),
            country_code: "US".into(),
            language_code: "en_US".into(),
        }),
        cardholder_full_name: "Jane Doe".into(),
        billing_address: None,
        src_correlation_id: String::new(),
        validate_only: false,
    }
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn report(name: &str, mut lat: Vec<u64>, errors: u64, elapsed: Duration) {
    lat.sort_unstable();
    println!(
        "{name}: {} ok, {errors} errors, {:.0} req/s, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        pct(&lat, 0.5),
        pct(&lat, 0.9),
        pct(&lat, 0.99),
        pct(&lat, 1.0),
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args.first().cloned().unwrap_or("127.0.0.1:50051".into());
    let mode = args.get(1).cloned().unwrap_or("health".into());
    let concurrency: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(16);
    let seconds: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10);
    let pid: Option<u32> = args.get(4).and_then(|s| s.parse().ok()).filter(|p| *p != 0);
    let card_from: i64 = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(70001);
    let card_to: i64 = args
        .get(6)
        .and_then(|s| s.parse().ok())
        .unwrap_or(card_from);
    let cards = (card_to - card_from + 1).max(1);

    // A few connections, as several clients would open.
    let mut channels: Vec<Channel> = Vec::new();
    for _ in 0..4 {
        channels.push(
            Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    let end = Instant::now() + Duration::from_secs(seconds);
    let counter = Arc::new(AtomicU64::new(0));
    let run_id = std::process::id();
    let cpu_before = pid.and_then(cpu_ticks);
    let started = Instant::now();

    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let channel = channels[i % channels.len()].clone();
        let mode = mode.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut health = HealthClient::new(channel.clone());
            let mut api = EnrollmentServiceClient::new(channel);
            while Instant::now() < end {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                // Each card is enrolled once: the run ends with the range.
                if mode != "status" && mode != "health" && n as i64 >= cards {
                    break;
                }
                let card = card_from + (n as i64 % cards);
                let t = Instant::now();
                let ok = match mode.as_str() {
                    "health" => health
                        .check(HealthCheckRequest {
                            service: String::new(),
                        })
                        .await
                        .is_ok(),
                    "status" => api
                        .get_enrollment_status(GetEnrollmentStatusRequest {
                            card_contract_id: card,
                            refresh: false,
                        })
                        .await
                        .is_ok(),
                    _ => api
                        .enroll_card(enroll_request(format!("load-{run_id}-{n}"), card))
                        .await
                        .is_ok(),
                };
                if ok {
                    lat.push(t.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    // P5: a status probe at a fixed rate on one card while the others load the service.
    let probe = (mode == "mixed").then(|| {
        let mut api = EnrollmentServiceClient::new(channels[0].clone());
        tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            while Instant::now() < end {
                tick.tick().await;
                let t = Instant::now();
                match api
                    .get_enrollment_status(GetEnrollmentStatusRequest {
                        card_contract_id: 70001,
                        refresh: false,
                    })
                    .await
                {
                    Ok(_) => lat.push(t.elapsed().as_micros() as u64),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        })
    });
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.unwrap();
        all.extend(lat);
        errors += e;
    }
    let elapsed = started.elapsed();
    let cpu_after = pid.and_then(cpu_ticks);
    let calls = all.len() as f64;
    report(&mode, all, errors, elapsed);
    if let Some(probe) = probe {
        let (lat, e) = probe.await.unwrap();
        report("status probe during enroll load", lat, e, elapsed);
    }
    if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
        // Clock ticks of 10 ms (USER_HZ 100).
        let cpu_ms = (b - a) as f64 * 10.0;
        println!(
            "service CPU: {:.0} ms over {:.1} s = {:.3} ms per call ({:.2} cores)",
            cpu_ms,
            elapsed.as_secs_f64(),
            cpu_ms / calls.max(1.0),
            cpu_ms / 1000.0 / elapsed.as_secs_f64()
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average: {}", load.trim());
}
