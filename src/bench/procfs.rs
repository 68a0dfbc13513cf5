//! What `/proc` says about a process (the service under load, and the load generator itself)
//! and about the machine: CPU time, resident memory, load average.

use std::time::Duration;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// User + system CPU time, all threads.
    pub cpu: Duration,
    /// `VmRSS`, KiB.
    pub rss_kb: u64,
    /// `VmHWM` (peak RSS), KiB.
    pub hwm_kb: u64,
}

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`): `getconf CLK_TCK`, else 100 (what
/// Linux reports on every architecture it fixes `USER_HZ` for).
pub fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// Reads `/proc/<pid>` (`"self"` for this process).
pub fn sample(pid: &str, ticks_per_s: u64) -> Result<ProcSample, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    let cpu = cpu_of_stat(&stat, ticks_per_s)
        .ok_or_else(|| format!("/proc/{pid}/stat: unexpected format"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    Ok(ProcSample {
        cpu,
        rss_kb: status_kb(&status, "VmRSS:").unwrap_or(0),
        hwm_kb: status_kb(&status, "VmHWM:").unwrap_or(0),
    })
}

/// utime + stime from a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses
/// and may hold spaces: fields are counted after its closing one.
fn cpu_of_stat(stat: &str, ticks_per_s: u64) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = utime + stime;
    Some(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000) / ticks_per_s.max(1),
    ))
}

fn status_kb(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The whole machine's CPU time, from the first line of `/proc/stat` (every core together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineTime {
    /// user + nice + system + irq + softirq: the cores at work, for any process.
    pub busy: Duration,
    /// steal: time a vCPU was ready to run and the hypervisor ran something else. Inside a
    /// VM it is the one wait the guest's own figures do not show.
    pub steal: Duration,
}

/// One reading of `/proc/stat`'s `cpu` line, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineSample {
    busy_ticks: u64,
    steal_ticks: u64,
    ticks_per_s: u64,
}

impl MachineSample {
    /// What was spent between `self` (earlier) and `later` (ticks subtracted first: the
    /// totals since boot may be past what nanoseconds in a u64 hold).
    pub fn until(self, later: MachineSample) -> MachineTime {
        let time = |t: u64| {
            Duration::from_nanos(t.saturating_mul(1_000_000_000) / self.ticks_per_s.max(1))
        };
        MachineTime {
            busy: time(later.busy_ticks.saturating_sub(self.busy_ticks)),
            steal: time(later.steal_ticks.saturating_sub(self.steal_ticks)),
        }
    }
}

/// Reads `/proc/stat`'s `cpu` line.
pub fn machine(ticks_per_s: u64) -> Option<MachineSample> {
    machine_of_stat(&std::fs::read_to_string("/proc/stat").ok()?, ticks_per_s)
}

fn machine_of_stat(text: &str, ticks_per_s: u64) -> Option<MachineSample> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is inside user)
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    Some(MachineSample {
        busy_ticks: [0, 1, 2, 5, 6].iter().map(|&i| at(i)).sum(),
        steal_ticks: at(7),
        ticks_per_s,
    })
}

/// `/proc/loadavg`: the 1, 5 and 15 minute load averages.
pub fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text
        .split_whitespace()
        .map(|v| v.parse::<f64>().unwrap_or(f64::NAN));
    [
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_the_name() {
        let line = "1234 (tokio (rt) worker) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100 1000 200";
        assert_eq!(cpu_of_stat(line, 100), Some(Duration::from_secs(3)));
    }

    #[test]
    fn machine_time_from_proc_stat() {
        let earlier = "cpu  100 5 50 9000 7 3 2 40 0 0\ncpu0 50 2 25 4500 3 1 1 20 0 0\n";
        let later = "cpu  300 5 70 9100 7 3 2 100 0 0\n";
        let (a, b) = (
            machine_of_stat(earlier, 100).unwrap(),
            machine_of_stat(later, 100).unwrap(),
        );
        let spent = a.until(b);
        assert_eq!(spent.busy, Duration::from_millis(2200));
        assert_eq!(spent.steal, Duration::from_millis(600));
        // Totals past what nanoseconds in a u64 hold still give their difference.
        let huge = format!("cpu  {} 0 0 0 0 0 0 {}\n", u64::MAX / 2, u64::MAX / 2);
        let huger = format!(
            "cpu  {} 0 0 0 0 0 0 {}\n",
            u64::MAX / 2 + 100,
            u64::MAX / 2 + 1
        );
        let spent = machine_of_stat(&huge, 100)
            .unwrap()
            .until(machine_of_stat(&huger, 100).unwrap());
        assert_eq!(spent.busy, Duration::from_secs(1));
        assert_eq!(spent.steal, Duration::from_millis(10));
        assert!(machine(clock_ticks()).is_some());
    }

    #[test]
    fn reads_this_process() {
        let s = sample("self", clock_ticks()).unwrap();
        assert!(s.rss_kb > 0 && s.hwm_kb >= s.rss_kb);
        let l = loadavg();
        assert!(l[0] >= 0.0);
    }
}
