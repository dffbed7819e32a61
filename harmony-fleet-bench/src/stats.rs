//! Percentiles of latency samples.

use std::time::Duration;

/// Count, percentiles and maximum of a set of durations.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest sample.
    pub max: Duration,
}

impl Summary {
    /// Summarises `samples` (any order). All zero when empty.
    pub fn of(samples: &[Duration]) -> Self {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        Self {
            count: sorted.len(),
            p50: percentile(&sorted, 50.0),
            p99: percentile(&sorted, 99.0),
            max: sorted.last().copied().unwrap_or_default(),
        }
    }
}

/// Nearest-rank percentile `p` (0–100] of sorted samples; zero when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).rev().map(ms).collect();
        let s = Summary::of(&samples);
        assert_eq!(
            (s.count, s.p50, s.p99, s.max),
            (100, ms(50), ms(99), ms(100))
        );
        assert_eq!(Summary::of(&[]).p99, Duration::ZERO);
        assert_eq!(Summary::of(&[ms(7)]).p50, ms(7));
    }
}
