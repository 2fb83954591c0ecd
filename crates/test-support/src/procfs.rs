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

/// utime + stime of `pid` and of the children it has waited for (cutime + cstime), in clock
/// ticks; 0 when it is gone. A short-lived helper a process runs and reaps (a `ctr` client, a
/// shim's `start`) is counted here and nowhere else once it has exited.
pub fn cpu_ticks_with_children(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else { return 0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    (11..=14).map(field).sum()
}

/// The whole machine's CPU time so far, summed over every core, in clock ticks (`/proc/stat`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineTicks {
    /// Time spent running anything: user, nice, system, irq and softirq.
    pub busy: u64,
    /// Time no task wanted a core: idle and iowait.
    pub idle: u64,
    /// Time the hypervisor ran something else while this machine wanted a core.
    pub steal: u64,
}

impl MachineTicks {
    /// Reads `/proc/stat`'s `cpu` line; all zero when it cannot be read.
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<u64> = stat
            .lines()
            .find_map(|l| l.strip_prefix("cpu "))
            .map(|l| l.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect())
            .unwrap_or_default();
        let field = |i: usize| fields.get(i).copied().unwrap_or(0);
        Self { busy: field(0) + field(1) + field(2) + field(5) + field(6), idle: field(3) + field(4), steal: field(7) }
    }

    /// What passed between `earlier` and this reading.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            busy: self.busy.saturating_sub(earlier.busy),
            idle: self.idle.saturating_sub(earlier.idle),
            steal: self.steal.saturating_sub(earlier.steal),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A child's CPU reaches its parent's count once the parent has waited for it, and the
    /// machine's busy time grows by at least as much.
    #[test]
    fn a_reaped_child_counts_for_its_parent_and_the_machine() {
        let me = std::process::id();
        // What this process's reaped children took (a tick off when its own time ticks between
        // the two reads).
        let reaped = || cpu_ticks_with_children(me).saturating_sub(cpu_ticks(me));
        let (before, machine) = (reaped(), MachineTicks::now());
        // About 0.3 s of shell arithmetic: several ticks at 100 a second.
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .status()
            .expect("sh runs");
        assert!(status.success());
        let children = reaped().saturating_sub(before);
        assert!(children >= 5, "the child's ticks: {children}");
        let passed = MachineTicks::now().since(machine);
        assert!(passed.busy >= children, "{passed:?} against the child's {children}");
    }
}
