//! Pure: what a replica does with the Lease as it last read it.

use std::time::{Duration, Instant};

/// The Lease as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// `spec.holderIdentity` (`None` or empty: released).
    pub holder: Option<String>,
    /// `spec.leaseDurationSeconds`.
    pub duration: Duration,
    /// `metadata.resourceVersion`: any write changes it.
    pub version: Option<String>,
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// No Lease exists: create it, held by us.
    Create,
    /// The Lease is free or expired: take it (conditional on its version).
    Take,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds it; it expires after `remaining` without a write.
    Follow {
        /// The holder.
        holder: String,
        /// Time left before it may be taken.
        remaining: Duration,
    },
}

/// Decides from the Lease as read (`None`: none exists), when its version was first seen
/// (`unchanged_since`, on this process's clock), who we are and the time now.
pub fn next(
    record: Option<&LeaseRecord>,
    unchanged_since: Instant,
    me: &str,
    now: Instant,
) -> Next {
    let Some(record) = record else {
        return Next::Create;
    };
    match record.holder.as_deref().filter(|h| !h.is_empty()) {
        None => Next::Take,
        Some(holder) if holder == me => Next::Renew,
        Some(holder) => {
            let quiet = now.saturating_duration_since(unchanged_since);
            if quiet >= record.duration {
                Next::Take
            } else {
                Next::Follow {
                    holder: holder.to_owned(),
                    remaining: record.duration - quiet,
                }
            }
        }
    }
}

/// Tracks since when the Lease's version has not changed, on this process's clock.
#[derive(Debug, Default)]
pub struct Observed {
    version: Option<String>,
    since: Option<Instant>,
}

impl Observed {
    /// Records a read at `now`; returns since when this version has been seen.
    pub fn see(&mut self, version: Option<&str>, now: Instant) -> Instant {
        if self.since.is_none() || self.version.as_deref() != version {
            self.version = version.map(str::to_owned);
            self.since = Some(now);
        }
        self.since.unwrap_or(now)
    }
}

/// Whether a leader whose last successful renewal was at `renewed` must give up at `now`.
pub fn lost(renewed: Instant, now: Instant, renew_deadline: Duration) -> bool {
    now.saturating_duration_since(renewed) >= renew_deadline
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(by: Option<&str>, version: &str) -> LeaseRecord {
        LeaseRecord {
            holder: by.map(str::to_owned),
            duration: Duration::from_secs(10),
            version: Some(version.to_owned()),
        }
    }

    #[test]
    fn a_missing_or_released_lease_is_taken_and_our_own_is_renewed() {
        let t = Instant::now();
        assert_eq!(next(None, t, "a", t), Next::Create);
        assert_eq!(next(Some(&held(None, "1")), t, "a", t), Next::Take);
        assert_eq!(next(Some(&held(Some(""), "1")), t, "a", t), Next::Take);
        assert_eq!(next(Some(&held(Some("a"), "1")), t, "a", t), Next::Renew);
    }

    #[test]
    fn another_holder_is_followed_until_its_lease_has_been_quiet_for_its_duration() {
        let t = Instant::now();
        let lease = held(Some("b"), "7");
        assert_eq!(
            next(Some(&lease), t, "a", t + Duration::from_secs(4)),
            Next::Follow {
                holder: "b".into(),
                remaining: Duration::from_secs(6)
            }
        );
        assert_eq!(
            next(Some(&lease), t, "a", t + Duration::from_secs(10)),
            Next::Take
        );
    }

    #[test]
    fn expiry_counts_from_the_last_change_seen_not_the_holders_clock() {
        let t = Instant::now();
        let mut observed = Observed::default();
        assert_eq!(observed.see(Some("7"), t), t);
        // Read again 5 s later, unchanged: still counted from the first sight.
        assert_eq!(observed.see(Some("7"), t + Duration::from_secs(5)), t);
        // Renewed by its holder: the count starts over.
        let later = t + Duration::from_secs(9);
        assert_eq!(observed.see(Some("8"), later), later);
    }

    #[test]
    fn a_leader_gives_up_after_the_renew_deadline_without_renewal() {
        let t = Instant::now();
        let deadline = Duration::from_secs(7);
        assert!(!lost(t, t + Duration::from_secs(6), deadline));
        assert!(lost(t, t + Duration::from_secs(7), deadline));
    }
}
