//! The Grafana dashboard and the alert rules against what the service really exports: a
//! sandbox service (the in-process simulator, a real `redis-server`) serves two rounds of
//! enrollments with every outcome (enrolled, replayed, already enrolled, declined TARs, an
//! unknown card, an invalid request, Mastercard answering 503 to every search attempt, status
//! reads, a refreshed read, watches up to their limit and one refused), a real Prometheus
//! scrapes it every second, and then:
//!
//! - every panel query of `helm/c2p-enroll/files/grafana/c2p-enroll.json`, with Grafana's
//!   variables substituted (`$job`, `$instance` = All, `$__rate_interval` and `$__range` = 1m),
//!   must evaluate through `/api/v1/query` to a non-empty result with a finite value, and every
//!   metric it names must be one the service exported (so `... or vector(0)` cannot hide a
//!   wrong name);
//! - the template variables' `label_values` queries must find the scrape's job and instance;
//! - every rule of `helm/c2p-enroll/files/prometheus/rules.yaml`, loaded by that Prometheus,
//!   must evaluate without error, name only exported metrics, and every recording rule must
//!   yield a series.

use crate::harness::{RedisServer, TestService, settings};
use crate::prometheus::{self, JOB, Prometheus};
use crate::wire::request;
use c2p_enroll::proto::v1::enrollment_service_client::EnrollmentServiceClient;
use c2p_enroll::proto::v1::{GetEnrollmentStatusRequest, WatchEnrollmentRequest};
use c2p_enroll::sandbox::faults::{ErrorFault, Route, RouteFault};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::transport::Channel;

/// What Grafana's range variables become: every sample of the test lies within a minute.
const WINDOW: &str = "1m";

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Every panel's queries, rows' panels included: (panel title, expression).
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_default();
                assert!(!expr.is_empty(), "panel {title:?}: a target without expr");
                out.push((title.clone(), expr.to_owned()));
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The expression as Grafana would send it: the template variables substituted; no `$` left.
fn substitute(expr: &str) -> String {
    let out = expr
        .replace("$__rate_interval", WINDOW)
        .replace("$__range", WINDOW)
        .replace("${job}", JOB)
        .replace("$job", JOB)
        .replace("${instance}", ".*")
        .replace("$instance", ".*");
    assert!(
        !out.contains('$'),
        "a variable the test does not know: {expr}"
    );
    out
}

/// The service's metric names an expression refers to (recording rule names, with a `:`, are
/// not the service's).
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| (t.starts_with("c2p_") || t.starts_with("process_")) && !t.contains(':'))
        .map(str::to_owned)
        .collect()
}

/// Why a query's result is not acceptable: an unknown metric name, an error, an empty result,
/// or no finite value.
async fn judge(
    prometheus: &Prometheus,
    exported: &BTreeSet<String>,
    expr: &str,
) -> Result<usize, String> {
    let unknown: Vec<String> = metric_names(expr)
        .into_iter()
        .filter(|n| !exported.contains(n))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "names metrics the service does not export: {unknown:?}"
        ));
    }
    let data = prometheus.query(expr).await?;
    let values: Vec<&Value> = match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .map(|r| r.iter().map(|s| &s["value"][1]).collect())
            .unwrap_or_default(),
        Some("scalar") => vec![&data["result"][1]],
        other => return Err(format!("result type {other:?}: {data}")),
    };
    if values.is_empty() {
        return Err("empty result".into());
    }
    let finite = values
        .iter()
        .filter_map(|v| v.as_str()?.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .count();
    if finite == 0 {
        return Err(format!("no finite value: {}", data["result"]));
    }
    Ok(values.len())
}

/// EnrollCard with `key` for `card`, which must answer `want`.
async fn enroll(client: &mut EnrollmentServiceClient<Channel>, key: &str, card: i64, want: Code) {
    let got = match client.enroll_card(request(key, card)).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    };
    assert_eq!(got, want, "EnrollCard {card} with key {key}");
}

/// Round `n` of traffic; the EnrollCard calls it made.
async fn round(
    service: &TestService,
    client: &mut EnrollmentServiceClient<Channel>,
    n: u32,
) -> u32 {
    // Enrolled (round 1), then replayed; already enrolled under another key (round 2).
    enroll(client, "ok-1", 70001, Code::Ok).await;
    let mut calls = 1;
    if n > 1 {
        enroll(client, &format!("ok-{n}"), 70001, Code::AlreadyExists).await;
        calls += 1;
    }
    // Declined TARs (blocked, expired, not eligible), an unknown card.
    for card in [70002, 70003, 70004] {
        enroll(
            client,
            &format!("declined-{card}-{n}"),
            card,
            Code::FailedPrecondition,
        )
        .await;
    }
    enroll(client, &format!("unknown-{n}"), 79_999, Code::NotFound).await;
    // An invalid request.
    let mut bad = request(&format!("bad-{n}"), 70001);
    bad.consumer.as_mut().unwrap().email = "not-an-email".into();
    let invalid = client.enroll_card(bad).await.unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    calls += 5;
    // Mastercard answers 503 to every search attempt of one call (retried, then UNAVAILABLE).
    service.sandbox.set_fault(
        Route::Searches,
        RouteFault {
            error: Some(ErrorFault {
                status: 503,
                reason_code: "SERVICE_UNAVAILABLE".into(),
            }),
            times: Some(3),
            ..RouteFault::default()
        },
    );
    enroll(client, &format!("down-{n}"), 70003, Code::Unavailable).await;
    calls += 1;
    // Status reads: from Redis, then the record cache; one refreshed from the token list.
    for refresh in [false, false, true] {
        client
            .get_enrollment_status(GetEnrollmentStatusRequest {
                card_contract_id: 70001,
                refresh,
            })
            .await
            .unwrap();
    }
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_and_rule_evaluates_on_the_services_metrics_in_a_real_prometheus() {
    let version = prometheus::require();
    let started = Instant::now();
    let redis = RedisServer::start();
    let service = TestService::start(&settings(&[
        ("C2P_REDIS__URL", &redis.url()),
        // The IN_PROGRESS gauges are read every interval.
        ("C2P_ENROLL__RECONCILE_INTERVAL", "1s"),
        // Two watches fill it: a third is refused.
        ("C2P_GRPC__LIMITS__MAX_WATCH_STREAMS", "2"),
    ]))
    .await;
    let metrics = service.running.metrics_addr().expect("metrics listener");
    let rules_file = repo("helm/c2p-enroll/files/prometheus/rules.yaml");
    let prometheus = Prometheus::start(metrics, &rules_file).await;
    let mut client = service.client();

    // Two rounds, each seen by a scrape, so that rates and histogram quantiles have an increase.
    let mut enroll_calls = 0;
    let mut watches = Vec::new();
    for n in 1..=2 {
        enroll_calls += round(&service, &mut client, n).await;
        if n == 1 {
            for _ in 0..2 {
                let watch = client
                    .watch_enrollment(WatchEnrollmentRequest {
                        card_contract_id: 70001,
                        start_after_revision: 0,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                watches.push(watch);
            }
            let refused = client
                .watch_enrollment(WatchEnrollmentRequest {
                    card_contract_id: 70001,
                    start_after_revision: 0,
                })
                .await
                .unwrap_err();
            assert_eq!(refused.code(), Code::ResourceExhausted);
        }
        let seen = format!("sum(c2p_grpc_requests_total{{job=\"{JOB}\", rpc=\"EnrollCard\"}})");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = prometheus
                .query(&seen)
                .await
                .ok()
                .and_then(|d| d["result"][0]["value"][1].as_str()?.parse::<f64>().ok());
            if got == Some(f64::from(enroll_calls)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no scrape saw round {n}'s {enroll_calls} EnrollCard calls (last: {got:?}):\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("helm/c2p-enroll/files/grafana/c2p-enroll.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let queries = panel_queries(&dashboard);
    let panels = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
        .count();
    assert!(
        queries.len() >= panels,
        "{panels} panels, {} queries",
        queries.len()
    );

    // The checks must be able to fail: an unknown name is refused even when `or vector(0)`
    // would make the result non-empty, and an empty result is refused.
    let exported = prometheus.metric_names().await;
    assert!(
        judge(
            &prometheus,
            &exported,
            "sum(rate(c2p_grpc_requestz_total[1m])) or vector(0)"
        )
        .await
        .is_err()
    );
    assert!(
        judge(
            &prometheus,
            &exported,
            "c2p_grpc_requests_total{rpc=\"NoSuchRpc\"}"
        )
        .await
        .is_err()
    );

    // Every panel query, retried while the last gauges and scrapes come in (at most 20 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut failures: Vec<String>;
    let mut series;
    let mut names_checked = BTreeSet::new();
    loop {
        let exported = prometheus.metric_names().await;
        failures = Vec::new();
        series = 0;
        for (title, expr) in &queries {
            let expr = substitute(expr);
            names_checked.extend(metric_names(&expr));
            match judge(&prometheus, &exported, &expr).await {
                Ok(n) => series += n,
                Err(why) => failures.push(format!("panel {title:?}: {expr}\n    {why}")),
            }
        }
        if failures.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        failures.is_empty(),
        "{} of {} dashboard queries failed:\n{}",
        failures.len(),
        queries.len(),
        failures.join("\n")
    );

    // The template variables find the scrape's job and instance.
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let mut variable_queries = 0;
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        let query = variable["query"]["query"].as_str().unwrap();
        let (selector, label) = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
            .unwrap_or_else(|| panic!("not label_values(selector, label): {query}"));
        let values = prometheus
            .label_values(label.trim(), &substitute(selector.trim()))
            .await
            .unwrap();
        let want = if label.trim() == "job" {
            JOB.to_owned()
        } else {
            metrics.to_string()
        };
        assert!(values.contains(&want), "{query}: {values:?} lacks {want}");
        variable_queries += 1;
    }

    // The rules: all evaluated without error, on exported metrics; recording rules yield series.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut rules, mut recorded, mut recording, mut unhealthy);
    loop {
        let exported = prometheus.metric_names().await;
        (rules, recorded, recording, unhealthy) = (0, 0, 0, Vec::new());
        for group in prometheus.rules().await["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                rules += 1;
                let name = rule["name"].as_str().unwrap();
                let query = rule["query"].as_str().unwrap();
                if rule["health"] != "ok" {
                    unhealthy.push(format!(
                        "{name}: health {} {}",
                        rule["health"], rule["lastError"]
                    ));
                }
                let unknown: Vec<_> = metric_names(query)
                    .into_iter()
                    .filter(|n| !exported.contains(n))
                    .collect();
                if !unknown.is_empty() {
                    unhealthy.push(format!("{name}: names metrics not exported: {unknown:?}"));
                }
                if rule["type"] == "recording" {
                    recording += 1;
                    match judge(&prometheus, &exported, name).await {
                        Ok(_) => recorded += 1,
                        Err(why) => unhealthy.push(format!("{name}: {why}")),
                    }
                }
            }
        }
        if unhealthy.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        unhealthy.is_empty() && rules > 0,
        "rules:\n{}\n{}",
        unhealthy.join("\n"),
        prometheus.log()
    );
    // The traffic above breaks three objectives at once: they must be pending (their `for`
    // outlasts the test), evaluated on the service's own series.
    let expected = [
        "C2pEnrollCardAvailabilityBurnFast",
        "C2pMastercardErrorRatioHigh",
        "C2pStreamsNearLimit",
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    let alerts = loop {
        let alerts: BTreeSet<String> = prometheus.query("ALERTS").await.unwrap()["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                format!(
                    "{} ({})",
                    a["metric"]["alertname"].as_str().unwrap_or("?"),
                    a["metric"]["alertstate"].as_str().unwrap_or("?")
                )
            })
            .collect();
        let all = expected
            .iter()
            .all(|name| alerts.iter().any(|a| a.starts_with(&format!("{name} ("))));
        if all || Instant::now() >= deadline {
            assert!(all, "alerts {alerts:?} lack one of {expected:?}");
            break alerts;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    drop(watches);
    let exported = prometheus.metric_names().await;
    println!(
        "OPS dashboard on {version}: {panels} panels, {} queries evaluated, {} non-empty ({series} series), {} metric names checked against the {} names Prometheus holds, {variable_queries} variable queries; rules: {rules} evaluated healthy, {recorded}/{recording} recording rules non-empty; alerts pending or firing: {alerts:?}; {:.1} s",
        queries.len(),
        queries.len() - failures.len(),
        names_checked.len(),
        exported.len(),
        started.elapsed().as_secs_f64()
    );
}
