//! What this process has used so far: CPU time and peak resident memory, read from Linux's
//! `/proc/self` (no unsafe code: the crate forbids it, and getrusage has no safe wrapper in
//! the dependency tree). Elsewhere the figures are None.

/// Clock ticks per second of `/proc/<pid>/stat`'s times: USER_HZ, fixed at 100 in the Linux
/// ABI on every architecture kompress runs on (x86-64, arm64).
const USER_HZ: f64 = 100.0;

/// CPU seconds (user + system, every thread) of this process.
pub fn cpu_seconds() -> Option<f64> {
    parse_stat_cpu(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// Peak resident memory of this process, bytes (`VmHWM`).
pub fn peak_memory_bytes() -> Option<u64> {
    parse_status_hwm(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// utime + stime from a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces or ')' itself, so fields are counted after the last ')':
/// there field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
fn parse_stat_cpu(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / USER_HZ)
}

fn parse_status_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_status_lines_parse() {
        let stat = "4242 (kom press) (x) R 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0 100 200 300";
        assert_eq!(parse_stat_cpu(stat), Some(3.0));
        assert_eq!(parse_stat_cpu("garbage"), None);
        let status = "Name:\tkompress\nVmPeak:\t  2000 kB\nVmHWM:\t   1500 kB\nVmRSS:\t 900 kB\n";
        assert_eq!(parse_status_hwm(status), Some(1500 * 1024));
        assert_eq!(parse_status_hwm("Name: x\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_used_some_cpu_and_memory() {
        // Burn a little CPU so the tick counter moves.
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed().as_millis() < 50 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(cpu_seconds().unwrap() > 0.0);
        assert!(peak_memory_bytes().unwrap() > 1 << 20);
    }
}
