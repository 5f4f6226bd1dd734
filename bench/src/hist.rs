//! A log-linear latency histogram in microseconds: exact below 128 µs, then
//! 64 buckets per power of two (under 1.6% error), mergeable across worker
//! processes and small enough to send as JSON.

use serde::{Deserialize, Serialize};

const LINEAR: u64 = 128;
const SUB_BITS: u32 = 6;
const BUCKETS: usize = 128 + 58 * 64;

#[derive(Clone, Debug)]
pub struct Hist {
    counts: Vec<u64>,
    total: u64,
    max: u64,
    sum: u128,
}

impl Default for Hist {
    fn default() -> Self {
        Hist {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
            sum: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= 7
    let sub = (v >> (e - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    (LINEAR + u64::from(e - 7) * 64 + sub) as usize
}

/// Smallest value that falls in bucket `i`.
fn lower(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let e = (i - LINEAR) / 64 + 7;
    let sub = (i - LINEAR) % 64;
    (1u64 << e) + (sub << (e - u64::from(SUB_BITS)))
}

impl Hist {
    pub fn record(&mut self, micros: u64) {
        self.counts[index(micros).min(BUCKETS - 1)] += 1;
        self.total += 1;
        self.max = self.max.max(micros);
        self.sum += u128::from(micros);
    }

    pub fn merge(&mut self, other: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at quantile `q` (0..=1): the upper edge of its bucket,
    /// capped at the largest value seen.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let upper = if i + 1 < BUCKETS {
                    lower(i + 1).saturating_sub(1)
                } else {
                    self.max
                };
                return upper.min(self.max);
            }
        }
        self.max
    }

    pub fn summary(&self) -> Latency {
        Latency {
            count: self.total,
            p50_us: self.quantile(0.50),
            p99_us: self.quantile(0.99),
            max_us: self.max,
            mean_us: (self.mean() * 10.0).round() / 10.0,
        }
    }

    pub fn to_wire(&self) -> WireHist {
        WireHist {
            buckets: self
                .counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| (i as u32, *c))
                .collect(),
            max: self.max,
            sum: self.sum as f64,
        }
    }

    pub fn from_wire(w: &WireHist) -> Hist {
        let mut h = Hist::default();
        for (i, c) in &w.buckets {
            if let Some(slot) = h.counts.get_mut(*i as usize) {
                *slot += c;
                h.total += c;
            }
        }
        h.max = w.max;
        h.sum = w.sum as u128;
        h
    }
}

/// A histogram as it crosses from a worker process to the coordinator.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct WireHist {
    pub buckets: Vec<(u32, u64)>,
    pub max: u64,
    pub sum: f64,
}

/// The figures a report quotes.
#[derive(Serialize, Clone, Copy, Debug, Default)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {} p99 {} max {} (n={})",
            fmt_us(self.p50_us),
            fmt_us(self.p99_us),
            fmt_us(self.max_us),
            self.count
        )
    }
}

pub fn fmt_us(us: u64) -> String {
    if us < 1000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.2} ms", us as f64 / 1000.0)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_two_percent_and_merge() {
        let mut h = Hist::default();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 - 5000.0).abs() / 5000.0 < 0.02, "{p50}");
        assert!((p99 - 9900.0).abs() / 9900.0 < 0.02, "{p99}");
        assert_eq!(h.max(), 10_000);
        let back = Hist::from_wire(&h.to_wire());
        assert_eq!(back.count(), 10_000);
        let mut m = Hist::default();
        m.merge(&back);
        m.merge(&h);
        assert_eq!(m.count(), 20_000);
        assert_eq!(m.quantile(0.5), h.quantile(0.5));
        for v in [0, 1, 127, 128, 129, 1000, u64::MAX / 2] {
            let i = index(v);
            assert!(lower(i) <= v, "{v}");
        }
    }
}
