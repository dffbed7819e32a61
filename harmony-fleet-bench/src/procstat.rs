//! CPU seconds and memory of a process, read from `/proc/<pid>/stat` and `/proc/<pid>/status`.
//! Parsing is pure and tested on captured text; only [`sample`] touches `/proc`.

use crate::error::{Error, Result};

/// Clock ticks per second of `utime`/`stime` (`USER_HZ`, fixed at 100 in the Linux ABI).
const USER_HZ: f64 = 100.0;

/// One reading of a process's resource use.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcSample {
    /// User + system CPU time since the process started, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size now, in bytes (`VmRSS`).
    pub rss_bytes: u64,
    /// Peak resident set size, in bytes (`VmHWM`).
    pub peak_rss_bytes: u64,
}

impl ProcSample {
    /// `rss_bytes` in MiB.
    pub fn rss_mib(&self) -> f64 {
        self.rss_bytes as f64 / (1024.0 * 1024.0)
    }

    /// `peak_rss_bytes` in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.peak_rss_bytes as f64 / (1024.0 * 1024.0)
    }
}

/// Reads `/proc/<pid>` now.
pub fn sample(pid: u32) -> Result<ProcSample> {
    let read = |file: &str| {
        let path = format!("/proc/{pid}/{file}");
        std::fs::read_to_string(&path).map_err(|e| Error::io(format!("reading {path}"), e))
    };
    let cpu_seconds = parse_cpu_seconds(&read("stat")?)
        .ok_or_else(|| Error::Config(format!("/proc/{pid}/stat has no utime/stime fields")))?;
    let status = read("status")?;
    Ok(ProcSample {
        cpu_seconds,
        rss_bytes: parse_status_kib(&status, "VmRSS").unwrap_or(0) * 1024,
        peak_rss_bytes: parse_status_kib(&status, "VmHWM").unwrap_or(0) * 1024,
    })
}

/// The sum over `pids` (CPU seconds, RSS and peak RSS each added up): what a group of servers
/// (a NATS cluster, etcd + kube-apiserver) costs together.
pub fn sample_all(pids: &[u32]) -> Result<ProcSample> {
    pids.iter().try_fold(ProcSample::default(), |sum, &pid| {
        let s = sample(pid)?;
        Ok(ProcSample {
            cpu_seconds: sum.cpu_seconds + s.cpu_seconds,
            rss_bytes: sum.rss_bytes + s.rss_bytes,
            peak_rss_bytes: sum.peak_rss_bytes + s.peak_rss_bytes,
        })
    })
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line, in seconds. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: field 3 (state) is index 0, so utime (14) is index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// The value in KiB of line `key:` of `/proc/<pid>/status` (e.g. `VmHWM:   1234 kB`).
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == key).then(|| v.split_whitespace().next()?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_count_fields_after_the_command_name() {
        let stat = "4242 (nats server) S 1 4242 4242 0 -1 4194560 5000 0 0 0 250 130 0 0 20 0 12 0 100 0 0";
        assert_eq!(parse_cpu_seconds(stat), Some(3.8));
        assert_eq!(parse_cpu_seconds("garbage"), None);
    }

    #[test]
    fn status_lines_are_read_in_kib() {
        let status = "Name:\tnats-server\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(10240));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0 && s.peak_rss_bytes >= s.rss_bytes);
    }
}
