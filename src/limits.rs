//! Per-socket rate limits (SPEC §8.4): a token bucket for joins and one for
//! inbound messages, each a single number (GCRA's "theoretical arrival
//! time"), so a socket pays eight bytes per limit instead of a limiter
//! object. A bucket of rate `r` and burst `b` lets `b` requests through at
//! once and then one every `1/r` seconds.

use std::sync::LazyLock;
use std::time::Instant;

static BASE: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Microseconds since the first call in this process (a shared base, so a
/// bucket needs no timestamp of its own).
pub fn now_us() -> u64 {
    BASE.elapsed().as_micros() as u64
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Bucket {
    /// When the bucket would be empty again if nothing more arrived.
    tat: u64,
}

impl Bucket {
    /// Takes one request at `now` (µs); false when it is over the limit.
    /// A refused request takes nothing.
    pub fn take(&mut self, now: u64, rate: u32, burst: u32) -> bool {
        let interval = 1_000_000 / u64::from(rate.max(1));
        let next = self.tat.max(now) + interval;
        if next - now > interval * u64::from(burst.max(1)) {
            return false;
        }
        self.tat = next;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::Bucket;

    #[test]
    fn a_burst_then_the_rate() {
        let mut b = Bucket::default();
        let t0 = 10_000_000;
        let taken = (0..60).filter(|_| b.take(t0, 20, 50)).count();
        assert_eq!(taken, 50, "the burst");
        assert!(!b.take(t0 + 10_000, 20, 50), "10 ms later: nothing yet");
        assert!(b.take(t0 + 50_000, 20, 50), "one every 50 ms");
        assert!(!b.take(t0 + 60_000, 20, 50));
        // A second of quiet gives 20 back.
        let later = t0 + 1_050_000;
        assert_eq!((0..30).filter(|_| b.take(later, 20, 50)).count(), 20);
    }

    #[test]
    fn a_steady_rate_at_the_limit_is_never_refused() {
        let mut b = Bucket::default();
        for i in 0..1000u64 {
            assert!(b.take(i * 10_000, 100, 1), "request {i}");
        }
    }
}
