//! Samples and their order statistics (nearest-rank percentiles, no interpolation).

use std::time::Duration;

/// Order statistics of one sample set, in the unit the samples were taken in.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub p25: f64,
    pub median: f64,
    pub p75: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// Values of one measurement (latencies in microseconds, sizes in kB, ...).
#[derive(Debug, Clone, Default)]
pub struct Samples {
    values: Vec<f64>,
}

/// Nearest-rank percentile of sorted values: the smallest value with at least `q` of the
/// samples at or below it.
fn rank(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let n = sorted.len();
    // n is at most a few hundred thousand: exact in f64.
    let idx = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
    sorted.get(idx).copied().unwrap_or(f64::NAN)
}

impl Samples {
    pub fn new() -> Self {
        Samples::default()
    }

    pub fn with_capacity(n: usize) -> Self {
        Samples {
            values: Vec::with_capacity(n),
        }
    }

    #[cfg(test)]
    pub fn push(&mut self, v: f64) {
        self.values.push(v);
    }

    /// A duration as microseconds.
    pub fn push_us(&mut self, d: Duration) {
        self.values.push(d.as_secs_f64() * 1e6);
    }

    pub fn summary(&self) -> Summary {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let mean = if n == 0 {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / n as f64
        };
        Summary {
            n,
            min: v.first().copied().unwrap_or(f64::NAN),
            p25: rank(&v, 0.25),
            median: rank(&v, 0.5),
            p75: rank(&v, 0.75),
            p99: rank(&v, 0.99),
            p999: rank(&v, 0.999),
            max: v.last().copied().unwrap_or(f64::NAN),
            mean,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut s = Samples::new();
        for i in 1..=1000 {
            s.push(f64::from(i));
        }
        let m = s.summary();
        assert_eq!(m.n, 1000);
        assert_eq!(m.median, 500.0);
        assert_eq!(m.p99, 990.0);
        assert_eq!(m.p999, 999.0);
        assert_eq!(m.min, 1.0);
        assert_eq!(m.max, 1000.0);
        assert!(Samples::new().summary().median.is_nan());
    }
}
