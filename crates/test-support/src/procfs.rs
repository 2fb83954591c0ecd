//! What `/proc` says about a process the benchmarks measure.

/// utime + stime of `pid`, in clock ticks (100 per second on Linux); 0 when it is gone.
pub fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else { return 0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// The share of one core `pid` used between two [`cpu_ticks`] readings `elapsed` apart, in %.
pub fn cpu_percent(ticks_before: u64, ticks_after: u64, elapsed: std::time::Duration) -> f64 {
    ticks_after.saturating_sub(ticks_before) as f64 / 100.0 / elapsed.as_secs_f64().max(1e-9) * 100.0
}

/// The resident set of `pid` in bytes (`VmRSS`), or `None` when it is gone.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}
