//! What a run records per RPC (an HDR histogram of latencies, answers, errors by gRPC code and
//! reason, outcomes) and the report made of it: a table for people, JSON for scripts.

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Latencies are recorded in microseconds, 1 µs to 1 hour, 3 significant digits.
const HIGHEST_US: u64 = 3_600_000_000;

/// The measured window: requests scheduled (open loop) or started (closed loop) inside it are
/// in the histograms; answers that arrive inside it make the throughput.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    pub fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }
}

/// One RPC's figures.
pub struct RpcStats {
    pub latency_us: Histogram<u64>,
    /// Answered OK, scheduled inside the window.
    pub ok: u64,
    /// Failed, scheduled inside the window, by `CODE reason`.
    pub errors: BTreeMap<String, u64>,
    /// What the OK answers said (status source, ingest outcome, …).
    pub outcomes: BTreeMap<String, u64>,
    /// OK answers that arrived inside the window, whenever they were scheduled.
    pub completed_in_window: u64,
}

impl RpcStats {
    pub fn new() -> Result<Self, String> {
        Ok(Self {
            latency_us: Histogram::new_with_bounds(1, HIGHEST_US, 3)
                .map_err(|e| format!("histogram: {e}"))?,
            ok: 0,
            errors: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            completed_in_window: 0,
        })
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn merge(&mut self, other: &RpcStats) {
        // Same bounds on both sides: adding cannot fail; if it did, the latencies are dropped.
        let _ = self.latency_us.add(&other.latency_us);
        self.ok += other.ok;
        self.completed_in_window += other.completed_in_window;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.outcomes {
            *self.outcomes.entry(k.clone()).or_default() += v;
        }
    }
}

/// What one call came to: OK with an outcome label, or an error key (`CODE reason`).
pub type CallResult = Result<String, String>;

/// Every RPC's figures, shared by the load tasks.
pub struct Stats {
    pub window: Window,
    pub rpcs: BTreeMap<&'static str, RpcStats>,
    /// `--timeline`: every call scheduled inside the window, in the order answered (a stall
    /// shows as a run of slow calls at one moment; a queue as a slope).
    pub timeline: Option<Vec<TimelineEntry>>,
}

/// One call of the timeline: when it was scheduled (from the window's start), how long it
/// took, and what it came to.
pub struct TimelineEntry {
    pub rpc: &'static str,
    pub scheduled_us: u64,
    pub latency_us: u64,
    pub result: String,
}

impl Stats {
    pub fn new(window: Window, names: &[&'static str]) -> Result<Self, String> {
        let mut rpcs = BTreeMap::new();
        for n in names {
            rpcs.insert(*n, RpcStats::new()?);
        }
        Ok(Self {
            window,
            rpcs,
            timeline: None,
        })
    }

    /// Keeps every call of the window for [`Stats::write_timeline`].
    pub fn keep_timeline(&mut self) {
        self.timeline = Some(Vec::new());
    }

    /// The timeline as CSV (`rpc,scheduled_ms,latency_ms,result`), calls in the order they
    /// were scheduled.
    pub fn write_timeline(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let Some(entries) = &self.timeline else {
            return Ok(());
        };
        let mut order: Vec<&TimelineEntry> = entries.iter().collect();
        order.sort_by_key(|e| e.scheduled_us);
        writeln!(out, "rpc,scheduled_ms,latency_ms,result")?;
        for e in order {
            // A result is an outcome label or `CODE reason`; a comma in one would shift the
            // columns, so it becomes a semicolon rather than be quoted.
            writeln!(
                out,
                "{},{:.3},{:.3},{}",
                e.rpc,
                e.scheduled_us as f64 / 1e3,
                e.latency_us as f64 / 1e3,
                e.result.replace(',', ";")
            )?;
        }
        Ok(())
    }

    /// Records a call scheduled at `scheduled` and answered at `done`.
    pub fn record(&mut self, rpc: &'static str, scheduled: Instant, done: Instant, r: CallResult) {
        let window = self.window;
        let Some(s) = self.rpcs.get_mut(rpc) else {
            return;
        };
        if r.is_ok() && window.contains(done) {
            s.completed_in_window += 1;
        }
        if !window.contains(scheduled) {
            return;
        }
        let us = u64::try_from(done.saturating_duration_since(scheduled).as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        s.latency_us.saturating_record(us);
        if let Some(timeline) = &mut self.timeline {
            timeline.push(TimelineEntry {
                rpc,
                scheduled_us: u64::try_from(
                    scheduled
                        .saturating_duration_since(window.start)
                        .as_micros(),
                )
                .unwrap_or(u64::MAX),
                latency_us: us,
                result: match &r {
                    Ok(o) if o.is_empty() => "OK".to_owned(),
                    Ok(o) => o.clone(),
                    Err(k) => k.clone(),
                },
            });
        }
        match r {
            Ok(outcome) => {
                s.ok += 1;
                if !outcome.is_empty() {
                    *s.outcomes.entry(outcome).or_default() += 1;
                }
            }
            Err(key) => *s.errors.entry(key).or_default() += 1,
        }
    }

    /// Records a failure that has no latency (a message that never got its answer).
    pub fn record_lost(&mut self, rpc: &'static str, scheduled: Instant, key: &str, n: u64) {
        if !self.window.contains(scheduled) || n == 0 {
            return;
        }
        if let Some(s) = self.rpcs.get_mut(rpc) {
            *s.errors.entry(key.to_owned()).or_default() += n;
        }
    }
}

/// The process readings of a run.
#[derive(Debug, Clone, Default)]
pub struct ProcFigures {
    pub pid: Option<u32>,
    pub cpu: Option<Duration>,
    pub rss_start_kb: Option<u64>,
    pub rss_end_kb: Option<u64>,
    pub rss_peak_kb: Option<u64>,
    pub client_cpu: Option<Duration>,
    pub note: Option<String>,
    /// Other processes (name, pid, CPU time over the window).
    pub others: Vec<(String, u32, Option<Duration>)>,
    /// The whole machine over the window: its cores at work, and the time the hypervisor
    /// stole from them.
    pub machine: Option<super::procfs::MachineTime>,
}

/// What describes a run besides its figures.
pub struct RunInfo {
    pub label: String,
    pub target: String,
    pub mode: String,
    pub rate: Option<f64>,
    pub concurrency: usize,
    pub connections: usize,
    pub streams: Option<usize>,
    pub warmup: Duration,
    /// The measured window as it ran (shorter than asked when `--requests` ran out first).
    pub measured: Duration,
    /// Watches held open, and the target's RSS growth per watch.
    pub watch: Option<WatchFigures>,
}

/// `WatchEnrollment` only.
#[derive(Debug, Clone, Copy)]
pub struct WatchFigures {
    pub opened: u64,
    pub rss_before_kb: u64,
    pub rss_after_kb: u64,
    pub messages: u64,
}

impl WatchFigures {
    pub fn rss_per_watch_bytes(&self) -> Option<f64> {
        (self.opened > 0).then(|| {
            (self.rss_after_kb as f64 - self.rss_before_kb as f64) * 1024.0 / self.opened as f64
        })
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn rpc_json(s: &RpcStats, secs: f64) -> Value {
    let h = &s.latency_us;
    let q = |p: f64| ms(h.value_at_quantile(p));
    json!({
        "ok": s.ok,
        "errors": s.error_count(),
        "throughput": if secs > 0.0 { s.completed_in_window as f64 / secs } else { 0.0 },
        "completed_in_window": s.completed_in_window,
        "latency_ms": {
            "count": h.len(),
            "mean": h.mean() / 1000.0,
            "p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "p999": q(0.999),
            "max": ms(h.max()),
        },
        "errors_by_code": s.errors,
        "outcomes": s.outcomes,
    })
}

/// The run as JSON (what `scripts/bench` reads).
pub fn to_json(info: &RunInfo, stats: &Stats, proc: &ProcFigures, loadavg: [f64; 3]) -> Value {
    let secs = info.measured.as_secs_f64();
    let rpcs: serde_json::Map<String, Value> = stats
        .rpcs
        .iter()
        .map(|(n, s)| ((*n).to_owned(), rpc_json(s, secs)))
        .collect();
    let total = total_of(stats);
    let total_ok_completed = total.as_ref().map_or(0, |t| t.completed_in_window);
    let cpu_s = proc.cpu.map(|c| c.as_secs_f64());
    let per_ok_ms = cpu_s
        .filter(|_| total_ok_completed > 0)
        .map(|c| c * 1000.0 / total_ok_completed as f64);
    json!({
        "label": info.label,
        "target": info.target,
        "mode": info.mode,
        "rate": info.rate,
        "concurrency": info.concurrency,
        "connections": info.connections,
        "streams": info.streams,
        "warmup_s": info.warmup.as_secs_f64(),
        "duration_s": secs,
        "rpcs": rpcs,
        "total": total.as_ref().map(|t| rpc_json(t, secs)),
        "target_process": {
            "pid": proc.pid,
            "cpu_s": cpu_s,
            "cpu_cores": cpu_s.map(|c| if secs > 0.0 { c / secs } else { 0.0 }),
            "cpu_ms_per_ok": per_ok_ms,
            "rss_start_kb": proc.rss_start_kb,
            "rss_end_kb": proc.rss_end_kb,
            "rss_peak_kb": proc.rss_peak_kb,
            "note": proc.note,
        },
        "client_cpu_s": proc.client_cpu.map(|c| c.as_secs_f64()),
        "other_processes": proc.others.iter().map(|(name, pid, cpu)| {
            let cpu_s = cpu.map(|c| c.as_secs_f64());
            (name.clone(), json!({
                "pid": pid,
                "cpu_s": cpu_s,
                "cpu_cores": cpu_s.map(|c| if secs > 0.0 { c / secs } else { 0.0 }),
                "cpu_ms_per_ok": cpu_s
                    .filter(|_| total_ok_completed > 0)
                    .map(|c| c * 1000.0 / total_ok_completed as f64),
            }))
        }).collect::<serde_json::Map<String, Value>>(),
        "watch": info.watch.map(|w| json!({
            "opened": w.opened,
            "messages": w.messages,
            "rss_before_kb": w.rss_before_kb,
            "rss_after_kb": w.rss_after_kb,
            "rss_per_watch_bytes": w.rss_per_watch_bytes(),
        })),
        "machine": proc.machine.map(|m| {
            let cores = |d: Duration| if secs > 0.0 { d.as_secs_f64() / secs } else { 0.0 };
            json!({"busy_cores": cores(m.busy), "steal_cores": cores(m.steal)})
        }),
        "loadavg": loadavg,
    })
}

fn total_of(stats: &Stats) -> Option<RpcStats> {
    let mut total = RpcStats::new().ok()?;
    for s in stats.rpcs.values() {
        total.merge(s);
    }
    Some(total)
}

fn thousands(n: f64) -> String {
    let whole = n.round() as u64;
    let digits = whole.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The run as a table.
pub fn to_table(info: &RunInfo, stats: &Stats, proc: &ProcFigures, loadavg: [f64; 3]) -> String {
    use std::fmt::Write as _;
    let secs = info.measured.as_secs_f64();
    let mut out = String::new();
    let how = match info.rate {
        Some(r) => format!("open loop at {} req/s", thousands(r)),
        None => "closed loop".to_owned(),
    };
    let streams = info
        .streams
        .map(|s| format!(", {s} stream(s)"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "{} → {}: {how}, {} in flight{streams} on {} connection(s), {:.1} s measured after {:.1} s warm-up",
        info.label,
        info.target,
        info.concurrency,
        info.connections,
        secs,
        info.warmup.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "{:<22} {:>9} {:>7} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "rpc", "ok", "errors", "req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    let mut rows: Vec<(&str, &RpcStats)> = stats.rpcs.iter().map(|(n, s)| (*n, s)).collect();
    let total = (stats.rpcs.len() > 1).then(|| total_of(stats)).flatten();
    if let Some(t) = &total {
        rows.push(("all", t));
    }
    for (name, s) in &rows {
        let h = &s.latency_us;
        let rps = if secs > 0.0 {
            s.completed_in_window as f64 / secs
        } else {
            0.0
        };
        let _ = writeln!(
            out,
            "{:<22} {:>9} {:>7} {:>10} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            name,
            s.ok,
            s.error_count(),
            thousands(rps),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max()),
        );
    }
    for (name, s) in stats.rpcs.iter() {
        for (k, v) in &s.errors {
            let _ = writeln!(out, "  {name} error {k}: {v}");
        }
        if !s.outcomes.is_empty() {
            let list: Vec<String> = s.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(out, "  {name} answers: {}", list.join(", "));
        }
    }
    if let Some(w) = &info.watch {
        let _ = writeln!(
            out,
            "watches open: {}, messages {}, target RSS {:.1} MB → {:.1} MB: {} per watch",
            w.opened,
            w.messages,
            w.rss_before_kb as f64 / 1024.0,
            w.rss_after_kb as f64 / 1024.0,
            w.rss_per_watch_bytes()
                .map_or("-".to_owned(), |b| format!("{:.1} KB", b / 1024.0)),
        );
    }
    if let Some(pid) = proc.pid {
        let ok = total.as_ref().map_or_else(
            || stats.rpcs.values().map(|s| s.completed_in_window).sum(),
            |t| t.completed_in_window,
        );
        match proc.cpu {
            Some(cpu) => {
                let c = cpu.as_secs_f64();
                let per = if ok > 0 {
                    format!("{:.3} ms per OK answer", c * 1000.0 / ok as f64)
                } else {
                    "no OK answer".to_owned()
                };
                let _ = writeln!(
                    out,
                    "target pid {pid}: CPU {c:.2} s ({:.2} cores), {per}; RSS {:.1} MB → {:.1} MB (peak {:.1} MB)",
                    if secs > 0.0 { c / secs } else { 0.0 },
                    proc.rss_start_kb.unwrap_or(0) as f64 / 1024.0,
                    proc.rss_end_kb.unwrap_or(0) as f64 / 1024.0,
                    proc.rss_peak_kb.unwrap_or(0) as f64 / 1024.0,
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "target pid {pid}: {}",
                    proc.note.as_deref().unwrap_or("not readable")
                );
            }
        }
    }
    let total_ok: u64 = total.as_ref().map_or_else(
        || stats.rpcs.values().map(|s| s.completed_in_window).sum(),
        |t| t.completed_in_window,
    );
    for (name, pid, cpu) in &proc.others {
        match cpu {
            Some(cpu) => {
                let c = cpu.as_secs_f64();
                let per = if total_ok > 0 {
                    format!(", {:.3} ms per OK answer", c * 1000.0 / total_ok as f64)
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    "{name} pid {pid}: CPU {c:.2} s ({:.2} cores){per}",
                    if secs > 0.0 { c / secs } else { 0.0 }
                );
            }
            None => {
                let _ = writeln!(out, "{name} pid {pid}: not readable");
            }
        }
    }
    let client = proc
        .client_cpu
        .map(|c| format!("load generator CPU {:.2} s; ", c.as_secs_f64()))
        .unwrap_or_default();
    let machine = proc
        .machine
        .filter(|_| secs > 0.0)
        .map(|m| {
            format!(
                "machine busy {:.2} cores, stolen by the hypervisor {:.2}; ",
                m.busy.as_secs_f64() / secs,
                m.steal.as_secs_f64() / secs
            )
        })
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "{client}{machine}load average {:.2} {:.2} {:.2}",
        loadavg[0], loadavg[1], loadavg[2]
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_window_is_recorded() {
        let t0 = Instant::now();
        let window = Window {
            start: t0 + Duration::from_secs(1),
            end: t0 + Duration::from_secs(2),
        };
        let mut s = Stats::new(window, &["X"]).unwrap();
        // Warm-up: not in the histogram, but its answer arrives inside the window.
        s.record("X", t0, t0 + Duration::from_millis(1500), Ok("a".into()));
        s.record(
            "X",
            t0 + Duration::from_millis(1100),
            t0 + Duration::from_millis(1110),
            Ok("a".into()),
        );
        s.record(
            "X",
            t0 + Duration::from_millis(1200),
            t0 + Duration::from_millis(2500),
            Err("UNAVAILABLE".into()),
        );
        let x = &s.rpcs["X"];
        assert_eq!(x.ok, 1);
        assert_eq!(x.completed_in_window, 2);
        assert_eq!(x.errors["UNAVAILABLE"], 1);
        assert_eq!(x.latency_us.len(), 2);
        assert!(x.latency_us.max() >= 1_299_000);
    }

    #[test]
    fn the_timeline_lists_the_window_calls_in_scheduled_order() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let window = Window {
            start: t0 + ms(1000),
            end: t0 + ms(2000),
        };
        let mut s = Stats::new(window, &["X"]).unwrap();
        s.keep_timeline();
        s.record("X", t0, t0 + ms(1500), Ok("a".into())); // warm-up: left out
        s.record("X", t0 + ms(1300), t0 + ms(1302), Ok(String::new()));
        s.record(
            "X",
            t0 + ms(1100),
            t0 + ms(1350),
            Err("UNAVAILABLE x, y".into()),
        );
        let mut out = Vec::new();
        s.write_timeline(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "rpc,scheduled_ms,latency_ms,result\n\
             X,100.000,250.000,UNAVAILABLE x; y\n\
             X,300.000,2.000,OK\n"
        );
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }
}
