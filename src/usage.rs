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

/// The CPU this process runs on, as its kernels see it: latency ratios and int8 results
/// depend on the instruction sets ONNX Runtime picks (AVX2, AVX-512, VNNI on x86; dot-product
/// and i8mm on ARM), so a report names them beside its figures.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cpu {
    /// `model name` from `/proc/cpuinfo` (the architecture where there is none).
    pub model: String,
    pub logical_cpus: usize,
    /// The instruction-set features detected at run time (CPUID on x86, so a masked CPU
    /// reports what it is masked to), among those that choose ONNX Runtime's kernels.
    pub features: Vec<&'static str>,
}

/// This host's CPU (see [`Cpu`]).
pub fn cpu() -> Cpu {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    Cpu {
        model,
        logical_cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        features: cpu_features(),
    }
}

#[cfg(target_arch = "x86_64")]
fn cpu_features() -> Vec<&'static str> {
    let mut f = Vec::new();
    macro_rules! probe {
        ($($name:tt),*) => {
            $(if std::arch::is_x86_feature_detected!($name) { f.push($name); })*
        };
    }
    probe!(
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512vnni",
        "avxvnni"
    );
    f
}

#[cfg(target_arch = "aarch64")]
fn cpu_features() -> Vec<&'static str> {
    let mut f = Vec::new();
    macro_rules! probe {
        ($($name:tt),*) => {
            $(if std::arch::is_aarch64_feature_detected!($name) { f.push($name); })*
        };
    }
    probe!("neon", "dotprod", "i8mm", "fp16", "sve");
    f
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn cpu_features() -> Vec<&'static str> {
    Vec::new()
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

    #[test]
    fn the_cpu_is_named_with_its_features() {
        let c = cpu();
        assert!(!c.model.is_empty());
        assert!(c.logical_cpus >= 1);
        #[cfg(target_arch = "x86_64")]
        assert!(
            c.features.contains(&"avx2") || !std::arch::is_x86_feature_detected!("avx2"),
            "{c:?}"
        );
    }
}
