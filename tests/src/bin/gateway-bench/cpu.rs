//! CPU time a process tree has used (user + system, from /proc/PID/stat), to put a cost on
//! each request that does not move with the machine's load the way requests/s does.

/// User + system CPU seconds of `pid` and all its descendants (nginx: master and workers; the
/// gateway and haproxy: every thread, which /proc/PID/stat already adds up).
pub fn tree_cpu_seconds(pid: u32) -> f64 {
    tree_ticks(pid) as f64 / ticks_per_second()
}

fn tree_ticks(pid: u32) -> u64 {
    let children = crate::peers::children(pid);
    own_ticks(pid).unwrap_or(0) + children.into_iter().map(tree_ticks).sum::<u64>()
}

/// utime + stime of one process, in clock ticks.
fn own_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces, so count fields after its ")".
    // utime and stime are fields 14 and 15, the 12th and 13th after comm.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        ticks if ticks > 0 => ticks as f64,
        _ => 100.0,
    }
}

/// CPU seconds `pid`'s tree uses while `work` runs, with what `work` returned.
pub fn while_running<T>(pid: u32, work: impl FnOnce() -> T) -> (T, f64) {
    let before = tree_cpu_seconds(pid);
    let result = work();
    (result, (tree_cpu_seconds(pid) - before).max(0.0))
}
