//! What the device is: hostname, architecture, OS, CPU count, memory, boot time — read from
//! `/proc` and `/etc/os-release` with no extra dependency, for the `device-info` report.

use harmony_fleet_contracts::device::Inventory;
use jiff::Timestamp;

/// Read the inventory of this host. Missing files give empty or zero fields, never an error:
/// a report with a blank field beats no report.
pub fn read_inventory() -> Inventory {
    Inventory {
        hostname: read_trimmed("/proc/sys/kernel/hostname").unwrap_or_default(),
        arch: std::env::consts::ARCH.to_owned(),
        os: std::env::consts::OS.to_owned(),
        os_release: std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|text| pretty_name(&text)),
        kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
        cpu_count: std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1),
        memory_bytes: std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| mem_total_bytes(&text))
            .unwrap_or(0),
    }
}

/// When the host booted, from `btime` in `/proc/stat`.
pub fn boot_time() -> Option<Timestamp> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let seconds = text
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse::<i64>()
        .ok()?;
    Timestamp::from_second(seconds).ok()
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn pretty_name(os_release: &str) -> Option<String> {
    os_release
        .lines()
        .find_map(|line| line.strip_prefix("PRETTY_NAME="))
        .map(|value| value.trim().trim_matches('"').to_owned())
        .filter(|value| !value.is_empty())
}

fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib = line.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mem_total_in_kib() {
        let meminfo = "MemTotal:       24684032 kB\nMemFree:        20000000 kB\n";
        assert_eq!(mem_total_bytes(meminfo), Some(24_684_032 * 1024));
        assert_eq!(mem_total_bytes("garbage"), None);
    }

    #[test]
    fn parses_pretty_name_without_quotes() {
        let text = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            pretty_name(text).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
    }

    #[test]
    fn reads_this_hosts_inventory() {
        let inventory = read_inventory();
        assert!(inventory.cpu_count >= 1);
        assert!(!inventory.arch.is_empty());
        assert!(inventory.memory_bytes > 0);
    }
}
