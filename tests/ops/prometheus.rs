//! A Prometheus server of one test: Debian's binary on a free loopback port, a temp config and
//! storage, scraping one target every second and evaluating the given rule files; killed on
//! drop. Its HTTP API answers the test's queries.

use crate::harness::free_port;
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The scrape job's name: the `job` label of every series.
pub const JOB: &str = "c2p-enroll";

pub struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
    base: String,
    http: reqwest::Client,
}

/// Fails, never skips, when there is no `prometheus` binary.
pub fn require() -> String {
    match Command::new("prometheus").arg("--version").output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
        other => panic!(
            "`prometheus` is needed by this test but cannot be run ({other:?}); install Debian's \
             package with `scripts/debian-deps prometheus` (scripts/test and .ci/run do)"
        ),
    }
}

impl Prometheus {
    /// Starts it scraping `target`'s `/metrics` every second, with `rules` loaded, and waits
    /// until it is ready.
    pub async fn start(target: SocketAddr, rules: &Path) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: [\"{target}\"]\n        labels:\n          namespace: ops-test\n",
                rules = rules.display(),
            ),
        )
        .expect("write prometheus.yml");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        for _ in 0..5 {
            let port = free_port();
            let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
            let mut child = Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("spawn prometheus");
            let base = format!("http://127.0.0.1:{port}");
            if ready(&http, &base, &mut child, dir.path()).await {
                return Prometheus {
                    child,
                    dir,
                    base,
                    http,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("prometheus did not start on any of 5 free ports");
    }

    /// What it logged (warnings and errors).
    pub fn log(&self) -> String {
        log_of(self.dir.path())
    }

    async fn get(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .query(params)
            .send()
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        let text = response
            .text()
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        let body: Value = serde_json::from_str(&text)
            .map_err(|e| format!("GET {path}: not JSON: {e}: {text}"))?;
        if body["status"] != "success" {
            return Err(format!("GET {path} {params:?}: {body}"));
        }
        Ok(body["data"].clone())
    }

    /// `/api/v1/query` at the current time: the data (`resultType`, `result`).
    pub async fn query(&self, expr: &str) -> Result<Value, String> {
        self.get("/api/v1/query", &[("query", expr)]).await
    }

    /// `/api/v1/label/<label>/values`, of the series `matcher` selects.
    pub async fn label_values(&self, label: &str, matcher: &str) -> Result<Vec<String>, String> {
        let data = self
            .get(
                &format!("/api/v1/label/{label}/values"),
                &[("match[]", matcher)],
            )
            .await?;
        Ok(data
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Every metric name it holds series of.
    pub async fn metric_names(&self) -> BTreeSet<String> {
        self.get("/api/v1/label/__name__/values", &[])
            .await
            .expect("metric names")
            .as_array()
            .expect("a list")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    }

    /// `/api/v1/rules`: the rule groups with each rule's health.
    pub async fn rules(&self) -> Value {
        self.get("/api/v1/rules", &[]).await.expect("rules")
    }
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
}

/// Waits until `/-/ready` answers; false when the process exited first (most likely its port
/// was taken meanwhile).
async fn ready(http: &reqwest::Client, base: &str, child: &mut Child, dir: &Path) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let answer = http.get(format!("{base}/-/ready")).send().await;
        if answer.is_ok_and(|r| r.status().is_success()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("prometheus not ready within 30 s:\n{}", log_of(dir));
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
