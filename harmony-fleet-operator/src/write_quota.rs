//! How many `device-state` keys a device may write for deployments it does not have.
//!
//! A device's credential lets it write `state.<itself>.*`: the deployment part is free, so
//! NATS alone cannot bound how many keys one device stores (its value size and the bucket's
//! byte limit are bounded; the share one device takes of that limit is not). The operator
//! removes such stray keys as it sees them, and counts them here: a device that writes more
//! distinct stray keys within a window than any honest agent can (one per deployment just
//! taken from it) is flooding, and the operator blacklists it, which revokes its credential
//! and closes its connection (adr/0016).
//!
//! Pure bookkeeping: time is passed in, nothing is awaited.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use harmony_fleet_contracts::DeviceId;
use harmony_fleet_contracts::buckets::MAX_DEPLOYMENTS_PER_DEVICE;

/// Distinct stray keys allowed per window by default: a device can have held at most
/// [`MAX_DEPLOYMENTS_PER_DEVICE`] deployments, so at most that many reports can be left over
/// when they are all taken from it at once.
pub const DEFAULT_STRAY_KEY_LIMIT: u32 = MAX_DEPLOYMENTS_PER_DEVICE;

/// The window over which stray keys are counted.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// What one stray write means for its device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit (or the same key again).
    Within,
    /// This write crossed the limit: blacklist the device. Returned once per device until
    /// [`StrayWrites::release`].
    Exceeded {
        /// Distinct stray keys seen in the window, this one included.
        keys: u32,
    },
    /// The device already crossed the limit; nothing more to do.
    AlreadyExceeded,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    keys: HashSet<String>,
}

/// Stray-key counts per device.
#[derive(Debug)]
pub struct StrayWrites {
    limit: u32,
    window: Duration,
    open: HashMap<DeviceId, Window>,
    exceeded: HashSet<DeviceId>,
}

impl StrayWrites {
    /// At most `limit` distinct stray keys per device within `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            open: HashMap::new(),
            exceeded: HashSet::new(),
        }
    }

    /// The limit, for messages.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The window, for messages.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Records that `device` wrote the stray key `key` at `now`.
    pub fn record(&mut self, device: &DeviceId, key: &str, now: Instant) -> Verdict {
        if self.exceeded.contains(device) {
            return Verdict::AlreadyExceeded;
        }
        let window = self.window;
        let open = self.open.entry(device.clone()).or_insert_with(|| Window {
            started: now,
            keys: HashSet::new(),
        });
        if now.saturating_duration_since(open.started) > window {
            open.started = now;
            open.keys.clear();
        }
        if !open.keys.insert(key.to_owned()) {
            return Verdict::Within;
        }
        let keys = u32::try_from(open.keys.len()).unwrap_or(u32::MAX);
        if keys <= self.limit {
            return Verdict::Within;
        }
        self.open.remove(device);
        self.exceeded.insert(device.clone());
        Verdict::Exceeded { keys }
    }

    /// Forgets `device`'s count, e.g. once an admin lifted its blacklist.
    pub fn release(&mut self, device: &DeviceId) {
        self.open.remove(device);
        self.exceeded.remove(device);
    }

    /// Drops windows that ended before `now`, so devices that wrote one stray key long ago
    /// hold no memory.
    pub fn expire(&mut self, now: Instant) {
        let window = self.window;
        self.open
            .retain(|_, w| now.saturating_duration_since(w.started) <= window);
    }

    /// Devices with an open window (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.open.len()
    }
}

impl Default for StrayWrites {
    fn default() -> Self {
        Self::new(DEFAULT_STRAY_KEY_LIMIT, DEFAULT_WINDOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(name: &str) -> DeviceId {
        name.parse().expect("device id")
    }

    #[test]
    fn a_device_is_flagged_once_when_it_crosses_the_limit() {
        let mut quota = StrayWrites::new(3, DEFAULT_WINDOW);
        let (a, t) = (device("pi-a"), Instant::now());
        for i in 0..3 {
            assert_eq!(
                quota.record(&a, &format!("state.pi-a.x{i}"), t),
                Verdict::Within
            );
        }
        assert_eq!(
            quota.record(&a, "state.pi-a.x3", t),
            Verdict::Exceeded { keys: 4 }
        );
        assert_eq!(
            quota.record(&a, "state.pi-a.x4", t),
            Verdict::AlreadyExceeded
        );
    }

    #[test]
    fn the_same_key_again_counts_once() {
        let mut quota = StrayWrites::new(1, DEFAULT_WINDOW);
        let (a, t) = (device("pi-a"), Instant::now());
        for _ in 0..10 {
            assert_eq!(quota.record(&a, "state.pi-a.gone", t), Verdict::Within);
        }
    }

    #[test]
    fn devices_are_counted_apart() {
        let mut quota = StrayWrites::new(1, DEFAULT_WINDOW);
        let t = Instant::now();
        let (a, b) = (device("pi-a"), device("pi-b"));
        assert_eq!(quota.record(&a, "state.pi-a.x", t), Verdict::Within);
        assert_eq!(quota.record(&b, "state.pi-b.x", t), Verdict::Within);
        assert_eq!(
            quota.record(&a, "state.pi-a.y", t),
            Verdict::Exceeded { keys: 2 }
        );
        assert_eq!(quota.record(&b, "state.pi-b.x", t), Verdict::Within);
    }

    #[test]
    fn a_new_window_starts_the_count_again() {
        let mut quota = StrayWrites::new(1, Duration::from_secs(60));
        let (a, t) = (device("pi-a"), Instant::now());
        assert_eq!(quota.record(&a, "state.pi-a.x", t), Verdict::Within);
        let later = t + Duration::from_secs(61);
        assert_eq!(quota.record(&a, "state.pi-a.y", later), Verdict::Within);
        quota.expire(later + Duration::from_secs(61));
        assert_eq!(quota.tracked(), 0);
    }

    #[test]
    fn release_lets_a_device_start_over() {
        let mut quota = StrayWrites::new(0, DEFAULT_WINDOW);
        let (a, t) = (device("pi-a"), Instant::now());
        assert_eq!(
            quota.record(&a, "state.pi-a.x", t),
            Verdict::Exceeded { keys: 1 }
        );
        quota.release(&a);
        assert_eq!(
            quota.record(&a, "state.pi-a.x", t),
            Verdict::Exceeded { keys: 1 }
        );
    }
}
