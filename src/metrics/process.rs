//! The process's own figures under the names Prometheus' client libraries give them
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...), read from `/proc/self`
//! when `/metrics` is scraped: nothing runs between scrapes. Where there is no `/proc` (not
//! Linux) nothing is rendered.

use std::fmt::Write as _;

/// `/proc/<pid>/stat` counts CPU time in ticks of `USER_HZ`, which Linux fixes at 100 for user
/// space on every architecture (Prometheus' Go client assumes the same).
const USER_HZ: f64 = 100.0;

/// One reading.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Figures {
    cpu_seconds: f64,
    start_time_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    threads: u64,
    open_fds: u64,
    /// The soft limit; `None` when unlimited.
    max_fds: Option<u64>,
}

/// The exposition text of the process metrics, or nothing when `/proc` cannot be read.
pub(super) fn render() -> String {
    read().map(|f| text(&f)).unwrap_or_default()
}

fn read() -> Option<Figures> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kernel = std::fs::read_to_string("/proc/stat").ok()?;
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let (cpu_ticks, start_ticks) = stat_ticks(&stat)?;
    Some(Figures {
        cpu_seconds: cpu_ticks as f64 / USER_HZ,
        start_time_seconds: boot_time(&kernel)? as f64 + start_ticks as f64 / USER_HZ,
        resident_bytes: status_value(&status, "VmRSS:")?.saturating_mul(1024),
        virtual_bytes: status_value(&status, "VmSize:")?.saturating_mul(1024),
        threads: status_value(&status, "Threads:")?,
        open_fds,
        max_fds: max_open_files(&limits),
    })
}

/// (utime + stime, starttime) in ticks from a `/proc/<pid>/stat` line. The command name
/// (field 2) is in parentheses and may hold spaces and parentheses: fields are counted after
/// the last `)`.
fn stat_ticks(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime, stime and starttime are fields 14, 15 and 22.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((field(14)?.checked_add(field(15)?)?, field(22)?))
}

/// `btime` of `/proc/stat`: the boot time in seconds since the epoch.
fn boot_time(kernel: &str) -> Option<u64> {
    kernel
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The first number after `key` in `/proc/<pid>/status` (kB for the `Vm*` lines).
fn status_value(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The soft limit of `Max open files` in `/proc/<pid>/limits` (`None` when unlimited).
fn max_open_files(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn text(f: &Figures) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    };
    metric(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        f.cpu_seconds.to_string(),
    );
    metric(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        f.start_time_seconds.to_string(),
    );
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        f.resident_bytes.to_string(),
    );
    metric(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        f.virtual_bytes.to_string(),
    );
    metric(
        "process_threads",
        "gauge",
        "Number of OS threads in the process.",
        f.threads.to_string(),
    );
    metric(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        f.open_fds.to_string(),
    );
    if let Some(max) = f.max_fds {
        metric(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max.to_string(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        // A command name with spaces and parentheses; utime 1234, stime 566, starttime 98765.
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 1234 566 0 0 20 0 9 0 98765 123456789 4000 18446744073709551615";
        assert_eq!(stat_ticks(stat), Some((1800, 98765)));
        assert_eq!(stat_ticks("4242 (short) S 1"), None);
    }

    #[test]
    fn status_limits_and_boot_time_are_read() {
        let status = "Name:\tc2p-enroll\nVmSize:\t  812345 kB\nVmRSS:\t   20480 kB\nThreads:\t9\n";
        assert_eq!(status_value(status, "VmRSS:"), Some(20480));
        assert_eq!(status_value(status, "VmSize:"), Some(812_345));
        assert_eq!(status_value(status, "Threads:"), Some(9));
        assert_eq!(status_value(status, "VmHWM:"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(max_open_files(unlimited), None);
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1764259200\nprocesses 9\n"),
            Some(1_764_259_200)
        );
    }

    #[test]
    fn the_text_is_prometheus_exposition_with_one_sample_per_metric() {
        let text = text(&Figures {
            cpu_seconds: 12.34,
            start_time_seconds: 1_764_259_300.5,
            resident_bytes: 20_971_520,
            virtual_bytes: 831_841_280,
            threads: 9,
            open_fds: 17,
            max_fds: Some(1024),
        });
        for line in [
            "# TYPE process_cpu_seconds_total counter",
            "process_cpu_seconds_total 12.34",
            "process_start_time_seconds 1764259300.5",
            "process_resident_memory_bytes 20971520",
            "process_virtual_memory_bytes 831841280",
            "process_threads 9",
            "process_open_fds 17",
            "process_max_fds 1024",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_read_from_proc() {
        let f = read().expect("/proc/self is readable on Linux");
        assert!(
            f.resident_bytes > 0 && f.virtual_bytes >= f.resident_bytes,
            "{f:?}"
        );
        assert!(f.threads >= 1 && f.open_fds >= 3, "{f:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        // Started in the past, and not before 2020.
        assert!(
            f.start_time_seconds <= now + 1.0 && f.start_time_seconds > 1_577_836_800.0,
            "{f:?}"
        );
    }
}
