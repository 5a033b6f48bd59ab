//! Small statistics and `/proc` readers: percentiles, medians, process CPU and RSS.

use std::time::Instant;

/// The `p`-th percentile (0–100) of `xs` by nearest rank; 0 for an empty slice.
pub fn percentile(xs: &[f64], p: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// The median of `xs`.
pub fn median(xs: &[f64]) -> f64 {
    percentile(xs, 50.0)
}

/// A process's CPU time so far (user + system), in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the ')'.
    // /proc reports in USER_HZ, which is 100 on every Linux ABI.
    (ticks(11) + ticks(12)) / 100.0
}

/// A process's resident set (VmRSS) in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The anonymous part of a process's resident set (RssAnon) in KiB: its heap and stacks,
/// without file pages it maps (SQLite's `mmap`'d database counts in VmRSS, not here).
pub fn rss_anon_kib(pid: u32) -> u64 {
    status_kib(pid, "RssAnon:")
}

/// A `/proc/PID/status` line's KiB figure (0 when the process or the line is gone).
fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Measures a process's CPU use between `start()` and `finish()`, as a share of one core.
#[derive(Debug)]
pub struct CpuMeter {
    pid: u32,
    cpu0: f64,
    t0: Instant,
}

impl CpuMeter {
    /// Starts measuring `pid`.
    pub fn start(pid: u32) -> Self {
        Self { pid, cpu0: cpu_secs(pid), t0: Instant::now() }
    }

    /// CPU seconds used per wall second since `start` (1.0 = one core busy).
    pub fn finish(&self) -> f64 {
        let wall = self.t0.elapsed().as_secs_f64();
        if wall <= 0.0 { 0.0 } else { (cpu_secs(self.pid) - self.cpu0) / wall }
    }
}

/// The 1-minute load average, to note how busy the shared machine was.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert!((percentile(&xs, 99.0) - 99.0).abs() < f64::EPSILON);
        assert!((percentile(&xs, 50.0) - 50.0).abs() < f64::EPSILON);
        assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < f64::EPSILON);
        assert!(percentile(&[], 99.0).abs() < f64::EPSILON);
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid) > 0);
        assert!((1..=rss_kib(pid)).contains(&rss_anon_kib(pid)), "the anonymous part is part of the whole");
        assert!(cpu_secs(pid) >= 0.0);
    }
}
