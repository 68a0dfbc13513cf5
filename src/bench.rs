//! `c2p-enroll bench`: a gRPC load generator for the service (issue 14). One RPC or a mix of
//! unary ones, closed loop (N callers) or open loop (a fixed rate, latency counted from each
//! request's scheduled time), a warm-up, then a measured window: throughput, latency percentiles
//! (HDR histogram), errors by gRPC code and reason, and, given the service's pid, its CPU time
//! and RSS from `/proc`. A table, or JSON with `--json`. Loopback targets only.

mod load;
mod pacer;
mod probe;
mod procfs;
mod rpc;
mod stats;

use rpc::{CardOrder, CardRange, Clients, Keys, Mix, Requests, Rpc};
use stats::{ProcFigures, RunInfo, Stats, WatchFigures, Window};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// HTTP/2 streams a connection carries before the load generator opens another (the server's
/// default `grpc.limits.max_concurrent_streams` is 100).
const STREAMS_PER_CONNECTION: usize = 90;

/// `c2p-enroll bench` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The service's plaintext gRPC address, on this machine (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// The RPC: EnrollCard, GetEnrollmentStatus, NotificationIngest, WatchEnrollment or
    /// Health/Check (short names: enroll, status, ingest, watch, health).
    #[arg(long, required_unless_present = "mix", conflicts_with = "mix")]
    rpc: Option<Rpc>,
    /// Unary RPCs mixed by weight instead of one RPC: `GetEnrollmentStatus=9,EnrollCard=1`.
    #[arg(long)]
    mix: Option<Mix>,
    /// Closed loop: callers. Open loop: most requests in flight. NotificationIngest: messages
    /// in flight per stream. WatchEnrollment: watches held open.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// HTTP/2 connections (default: one per 90 requests or watches in flight).
    #[arg(long)]
    connections: Option<usize>,
    /// Open loop: requests per second, sent at fixed intervals whatever the answers do
    /// (latency counts from the scheduled time). Without it: closed loop, as fast as answered.
    #[arg(long)]
    rate: Option<f64>,
    /// The measured window (WatchEnrollment: how long the watches are held open).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Load before the window, not measured.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Stop after this many requests (warm-up included).
    #[arg(long)]
    requests: Option<u64>,
    /// Card contract ids, `A-B` or one id.
    #[arg(long, default_value = "70001")]
    cards: CardRange,
    /// How cards are drawn from the range.
    #[arg(long, value_enum, default_value_t = CardOrder::Sequential)]
    card_order: CardOrder,
    /// EnrollCard idempotency keys: a new one per request, or one per card (replays).
    #[arg(long, value_enum, default_value_t = Keys::Unique)]
    keys: Keys,
    /// Prefix of idempotency keys and notification ids (default: `bench-` and a random tag, so
    /// that runs never share keys).
    #[arg(long)]
    key_prefix: Option<String>,
    /// GetEnrollmentStatus with `refresh` (reads Mastercard's token list).
    #[arg(long)]
    refresh: bool,
    /// NotificationIngest: streams, each with `--concurrency` messages in flight.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Deadline of each call (sent as grpc-timeout).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// The service's process id: its CPU time and RSS over the window, from /proc.
    #[arg(long)]
    pid: Option<u32>,
    /// Another process whose CPU time over the window is reported beside the target's
    /// (`simulator=1234`; repeatable): where the rest of the machine went.
    #[arg(long, value_name = "NAME=PID", value_parser = parse_other_pid)]
    other_pid: Vec<(String, u32)>,
    /// First wait until Health/Check answers SERVING, for at most this long.
    #[arg(long, value_parser = humantime::parse_duration)]
    wait_ready: Option<Duration>,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// A name for the run in the report.
    #[arg(long)]
    label: Option<String>,
    /// Also write every call of the window to this CSV file (`rpc,scheduled_ms,latency_ms,
    /// result`): when the slow calls happened, not only how many there were.
    #[arg(long, value_name = "FILE")]
    timeline: Option<std::path::PathBuf>,
}

fn parse_other_pid(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("{s}: NAME=PID expected"))?;
    let pid = pid
        .trim()
        .parse()
        .map_err(|_| format!("{s}: the pid must be a number"))?;
    Ok((name.trim().to_owned(), pid))
}

fn sample_others(others: &[(String, u32)], ticks: u64) -> Vec<Option<Duration>> {
    others
        .iter()
        .map(|(_, pid)| procfs::sample(&pid.to_string(), ticks).ok().map(|s| s.cpu))
        .collect()
}

/// Runs the benchmark on its own runtime.
pub fn run(args: &BenchArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("c2p-enroll bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench(args)) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("c2p-enroll bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `http://host:port` for a target given with or without its scheme, refused unless the host
/// is a loopback address: the load generator never sends traffic off this machine.
fn loopback_target(target: &str) -> Result<String, String> {
    let with_scheme = if target.contains("://") {
        target.to_owned()
    } else {
        format!("http://{target}")
    };
    let url = url::Url::parse(&with_scheme).map_err(|e| format!("--target {target}: {e}"))?;
    if url.scheme() != "http" {
        return Err(format!(
            "--target {target}: plaintext http:// only (the load generator speaks no TLS)"
        ));
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    };
    if !loopback {
        return Err(format!(
            "--target {target}: only loopback addresses (127.0.0.0/8, ::1, localhost) are load-tested"
        ));
    }
    Ok(with_scheme.trim_end_matches('/').to_owned())
}

async fn connect(target: &str, timeout: Duration) -> Result<tonic::transport::Channel, String> {
    tonic::transport::Endpoint::from_shared(target.to_owned())
        .map_err(|e| format!("{target}: {e}"))?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {target}: {e}"))
}

async fn wait_ready(target: &str, within: Duration) -> Result<(), String> {
    let until = Instant::now() + within;
    let mut last = String::from("no answer");
    while Instant::now() < until {
        if let Ok(channel) = connect(target, Duration::from_secs(1)).await {
            let clients = Clients::new(channel);
            let requests = Requests::new(
                CardRange { first: 1, last: 1 },
                CardOrder::Sequential,
                Keys::Unique,
                String::new(),
                false,
            );
            match rpc::unary(&clients, Rpc::Health, &requests, 0, Duration::from_secs(1)).await {
                Ok(s) if s == "SERVING" => return Ok(()),
                Ok(s) => last = s,
                Err(e) => last = e,
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{target} not SERVING after {within:?} ({last})"))
}

fn sample(pid: Option<u32>, ticks: u64) -> Option<Result<procfs::ProcSample, String>> {
    pid.map(|p| procfs::sample(&p.to_string(), ticks))
}

async fn bench(args: &BenchArgs) -> Result<String, String> {
    let target = loopback_target(&args.target)?;
    if let Some(within) = args.wait_ready {
        wait_ready(&target, within).await?;
    }
    let mix = match (&args.mix, args.rpc) {
        (Some(mix), _) => mix.clone(),
        (None, Some(rpc)) => Mix::single(rpc),
        (None, None) => return Err("--rpc or --mix is required".into()),
    };
    let single = args.rpc;
    let streams = (single == Some(Rpc::NotificationIngest)).then_some(args.streams.max(1));
    let in_flight = match single {
        Some(Rpc::NotificationIngest) => streams.unwrap_or(1),
        _ => args.concurrency,
    };
    let connections = args
        .connections
        .unwrap_or_else(|| in_flight.div_ceil(STREAMS_PER_CONNECTION))
        .max(1);
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(Clients::new(
            connect(&target, Duration::from_secs(5)).await?,
        ));
    }
    if args.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err("--rate must be a positive number".into());
    }
    let watch = single == Some(Rpc::WatchEnrollment);
    if watch && args.rate.is_some() {
        return Err("WatchEnrollment opens its watches at once: --rate does not apply".into());
    }
    let key_prefix = args
        .key_prefix
        .clone()
        .unwrap_or_else(|| format!("bench-{:08x}", rand::random::<u32>()));
    let warmup = if watch { Duration::ZERO } else { args.warmup };
    let t0 = Instant::now();
    let window = Window {
        start: (t0 + warmup).into_std(),
        end: (t0 + warmup + args.duration).into_std(),
    };
    let names: Vec<&'static str> = mix.rpcs().into_iter().map(Rpc::name).collect();
    let ctx = Arc::new(load::Ctx {
        clients,
        requests: Requests::new(
            args.cards,
            args.card_order,
            args.keys,
            key_prefix,
            args.refresh,
        ),
        mix,
        rate: args.rate,
        concurrency: args.concurrency,
        streams: args.streams.max(1),
        t0,
        window,
        max_requests: args.requests,
        timeout: args.timeout,
        seq: AtomicU64::new(0),
        stats: std::sync::Mutex::new({
            let mut stats = Stats::new(window, &names)?;
            if args.timeline.is_some() {
                stats.keep_timeline();
            }
            stats
        }),
        issuing_done: CancellationToken::new(),
    });
    let ticks = procfs::clock_ticks();
    let mut proc = ProcFigures {
        pid: args.pid,
        ..ProcFigures::default()
    };
    let mut watch_figures = None;
    let measured;
    if watch {
        // The target's RSS before the watches open and while they are all open.
        let before = sample(args.pid, ticks).transpose()?;
        let client_before = procfs::sample("self", ticks).ok();
        let hold_for = args.duration;
        let after = Arc::new(std::sync::Mutex::new(None));
        let after_slot = after.clone();
        let pid = args.pid;
        let start = Instant::now();
        let run = load::watch(ctx.clone(), move |_opened| async move {
            tokio::time::sleep(hold_for).await;
            *after_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(sample(pid, ticks));
        })
        .await;
        measured = start.elapsed();
        let after = after
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .flatten()
            .transpose()?;
        if let (Some(b), Some(a)) = (before, after) {
            proc.cpu = Some(a.cpu.saturating_sub(b.cpu));
            proc.rss_start_kb = Some(b.rss_kb);
            proc.rss_end_kb = Some(a.rss_kb);
            proc.rss_peak_kb = Some(a.hwm_kb);
            watch_figures = Some(WatchFigures {
                opened: run.opened,
                rss_before_kb: b.rss_kb,
                rss_after_kb: a.rss_kb,
                messages: run.messages,
            });
        } else {
            watch_figures = Some(WatchFigures {
                opened: run.opened,
                rss_before_kb: 0,
                rss_after_kb: 0,
                messages: run.messages,
            });
        }
        proc.client_cpu = client_before
            .zip(procfs::sample("self", ticks).ok())
            .map(|(b, a)| a.cpu.saturating_sub(b.cpu));
    } else {
        let load = {
            let ctx = ctx.clone();
            if single == Some(Rpc::NotificationIngest) {
                tokio::spawn(load::ingest(ctx))
            } else {
                tokio::spawn(load::unary(ctx))
            }
        };
        let start = Instant::from_std(window.start);
        let end = Instant::from_std(window.end);
        tokio::select! {
            _ = tokio::time::sleep_until(start) => {}
            _ = ctx.issuing_done.cancelled() => {}
        }
        let begin = Instant::now();
        let before = sample(args.pid, ticks);
        let others_before = sample_others(&args.other_pid, ticks);
        let client_before = procfs::sample("self", ticks).ok();
        let machine_before = procfs::machine(ticks);
        tokio::select! {
            _ = tokio::time::sleep_until(end) => {}
            _ = ctx.issuing_done.cancelled() => {}
        }
        let after = sample(args.pid, ticks);
        let others_after = sample_others(&args.other_pid, ticks);
        let client_after = procfs::sample("self", ticks).ok();
        proc.machine = machine_before
            .zip(procfs::machine(ticks))
            .map(|(b, a)| b.until(a));
        proc.others = args
            .other_pid
            .iter()
            .zip(others_before.iter().zip(&others_after))
            .map(|((name, pid), (b, a))| {
                let cpu = b.zip(*a).map(|(b, a)| a.saturating_sub(b));
                (name.clone(), *pid, cpu)
            })
            .collect();
        measured = Instant::now().min(end).saturating_duration_since(begin);
        if load.await.is_err() {
            return Err("the load task failed".into());
        }
        match (before, after) {
            (Some(Ok(b)), Some(Ok(a))) => {
                proc.cpu = Some(a.cpu.saturating_sub(b.cpu));
                proc.rss_start_kb = Some(b.rss_kb);
                proc.rss_end_kb = Some(a.rss_kb);
                proc.rss_peak_kb = Some(a.hwm_kb);
            }
            (Some(Err(e)), _) | (_, Some(Err(e))) => proc.note = Some(e),
            _ => {}
        }
        proc.client_cpu = client_before
            .zip(client_after)
            .map(|(b, a)| a.cpu.saturating_sub(b.cpu));
    }
    let loadavg = procfs::loadavg();
    let info = RunInfo {
        label: args.label.clone().unwrap_or_else(|| {
            args.rpc
                .map_or_else(|| "mix".to_owned(), |r| r.name().to_owned())
        }),
        target,
        mode: if args.rate.is_some() {
            "open"
        } else {
            "closed"
        }
        .to_owned(),
        rate: args.rate,
        concurrency: args.concurrency,
        connections: ctx.clients.len(),
        streams,
        warmup,
        measured,
        watch: watch_figures,
    };
    let stats = ctx.stats.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(path) = &args.timeline {
        let write = std::fs::File::create(path).and_then(|f| {
            let mut out = std::io::BufWriter::new(f);
            stats.write_timeline(&mut out)?;
            std::io::Write::flush(&mut out)
        });
        write.map_err(|e| format!("--timeline {}: {e}", path.display()))?;
    }
    Ok(if args.json {
        stats::to_json(&info, &stats, &proc, loadavg).to_string()
    } else {
        stats::to_table(&info, &stats, &proc, loadavg)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets() {
        assert_eq!(
            loopback_target("127.0.0.1:50051").unwrap(),
            "http://127.0.0.1:50051"
        );
        assert!(loopback_target("http://localhost:1/").is_ok());
        assert!(loopback_target("http://[::1]:50051").is_ok());
        assert!(loopback_target("http://127.3.2.1:9").is_ok());
        assert!(loopback_target("http://10.0.0.1:50051").is_err());
        assert!(loopback_target("http://example.com:50051").is_err());
        assert!(loopback_target("https://127.0.0.1:50051").is_err());
    }
}
