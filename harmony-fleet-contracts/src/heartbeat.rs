//! Liveness: [`Heartbeat`] (bucket `device-heartbeat`, key `heartbeat.<device>`).
//!
//! Every agent writes one on an interval, so at fleet scale this is the hottest bucket: the
//! record is kept under [`MAX_SERIALIZED_LEN`] bytes, and the time is an integer (milliseconds
//! since the Unix epoch) rather than an RFC 3339 string — smaller, and cheaper for the
//! operator to parse a million times a minute.

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::device::AgentVersion;

/// Serialized heartbeats are strictly shorter than this (MISSION.md §5: < 96 bytes).
pub const MAX_SERIALIZED_LEN: usize = 96;

/// Value of `device-heartbeat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    /// When the agent sent it, in milliseconds since the Unix epoch (device clock).
    pub timestamp_ms: u64,
    /// Version of the sending agent (at most 32 bytes, so the record stays small).
    pub agent_version: AgentVersion,
}

impl Heartbeat {
    /// A heartbeat sent at `at`. Times before the epoch are recorded as 0.
    pub fn new(at: Timestamp, agent_version: AgentVersion) -> Self {
        Self {
            timestamp_ms: u64::try_from(at.as_millisecond()).unwrap_or(0),
            agent_version,
        }
    }

    /// The send time, or `None` if it is outside the range of [`Timestamp`].
    pub fn timestamp(&self) -> Option<Timestamp> {
        let ms = i64::try_from(self.timestamp_ms).ok()?;
        Timestamp::from_millisecond(ms).ok()
    }

    /// How long before `now` it was sent; zero if it claims to come from the future (clock
    /// skew), `None` if its time is unreadable.
    pub fn age(&self, now: Timestamp) -> Option<Duration> {
        let sent = self.timestamp()?;
        let ms = now.as_millisecond().saturating_sub(sent.as_millisecond());
        Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version() -> AgentVersion {
        AgentVersion::new("0.1.0").unwrap()
    }

    #[test]
    fn round_trips_its_timestamp_to_the_millisecond() {
        let at = Timestamp::from_millisecond(1_764_200_000_123).unwrap();
        let hb = Heartbeat::new(at, version());
        assert_eq!(hb.timestamp(), Some(at));
    }

    #[test]
    fn age_is_zero_for_future_heartbeats_and_none_for_absurd_ones() {
        let now = Timestamp::from_millisecond(10_000).unwrap();
        let later = Heartbeat::new(Timestamp::from_millisecond(20_000).unwrap(), version());
        assert_eq!(later.age(now), Some(Duration::ZERO));
        let earlier = Heartbeat::new(Timestamp::from_millisecond(4_000).unwrap(), version());
        assert_eq!(earlier.age(now), Some(Duration::from_secs(6)));
        let absurd = Heartbeat {
            timestamp_ms: u64::MAX,
            agent_version: version(),
        };
        assert_eq!(absurd.age(now), None);
    }

    #[test]
    fn pre_epoch_time_is_recorded_as_zero() {
        let hb = Heartbeat::new(Timestamp::from_second(-5).unwrap(), version());
        assert_eq!(hb.timestamp_ms, 0);
    }
}
