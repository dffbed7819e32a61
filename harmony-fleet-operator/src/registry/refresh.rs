//! When the registry refreshes an online device's `lastHeartbeat` (pure, adr/0047).
//!
//! A heartbeat never becomes a `Device` write of its own. An online device's `lastHeartbeat` is
//! refreshed every `--last-seen-refresh-secs` (15 s by default, so `LAST SEEN` shows seconds)
//! while the whole fleet's refreshes fit `--device-writes-per-sec`; a larger fleet is refreshed
//! less often, each device every `devices / budget` seconds. The budget also holds through a
//! burst (a restart finding every `lastHeartbeat` old, a partition healing): refreshes over it
//! are skipped, and the device's next heartbeat asks again. Online/offline flips, labels and
//! inventory are not refreshes: they are written at once.

use std::time::{Duration, Instant};

/// How often an online device's `lastHeartbeat` is refreshed in a fleet of `devices`: every
/// `wanted`, or less often when `devices` refreshes in that time would exceed `per_sec`.
pub fn refresh_interval(devices: usize, wanted: Duration, per_sec: u32) -> Duration {
    let spread = Duration::from_secs_f64(devices as f64 / f64::from(per_sec.max(1)));
    wanted.max(spread)
}

/// A token bucket of `lastHeartbeat` refreshes: `per_sec` a second, bursts of one second's
/// worth at most.
#[derive(Clone, Debug)]
pub struct RefreshBudget {
    per_sec: f64,
    tokens: f64,
    at: Instant,
}

impl RefreshBudget {
    /// A full bucket at `now`.
    pub fn new(per_sec: u32, now: Instant) -> Self {
        let per_sec = f64::from(per_sec.max(1));
        Self {
            per_sec,
            tokens: per_sec,
            at: now,
        }
    }

    /// Takes one refresh at `now` if the budget has it.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.per_sec);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WANTED: Duration = Duration::from_secs(15);

    #[test]
    fn small_fleets_are_refreshed_as_wanted_large_ones_within_the_budget() {
        assert_eq!(refresh_interval(1, WANTED, 50), WANTED);
        assert_eq!(refresh_interval(750, WANTED, 50), WANTED);
        // 10k devices over 50 writes/s: each refreshed every 200 s.
        assert_eq!(
            refresh_interval(10_000, WANTED, 50),
            Duration::from_secs(200)
        );
        // 100k: every 2,000 s, whatever is wanted (50 refreshes/s, not 6,667).
        assert_eq!(
            refresh_interval(100_000, WANTED, 50),
            Duration::from_secs(2000)
        );
        // Tests ask for 1 s on a handful of devices.
        assert_eq!(
            refresh_interval(3, Duration::from_secs(1), 50),
            Duration::from_secs(1)
        );
        // A zero budget is read as one write a second, not a division by zero.
        assert_eq!(refresh_interval(100, WANTED, 0), Duration::from_secs(100));
    }

    #[test]
    fn the_budget_holds_through_a_burst_and_refills_over_time() {
        let start = Instant::now();
        let mut budget = RefreshBudget::new(50, start);
        let burst = (0..1000).filter(|_| budget.take(start)).count();
        assert_eq!(burst, 50, "one second's worth at once");
        assert!(!budget.take(start + Duration::from_millis(10)));
        let later = start + Duration::from_millis(100);
        let refilled = (0..1000).filter(|_| budget.take(later)).count();
        assert_eq!(refilled, 5, "50/s for the 100 ms since the burst");
        // A long pause refills one second's worth, not more.
        let much_later = later + Duration::from_secs(3600);
        assert_eq!((0..1000).filter(|_| budget.take(much_later)).count(), 50);
    }
}
