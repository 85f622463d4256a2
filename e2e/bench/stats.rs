//! Order statistics of a set of samples: nearest-rank percentiles, min and max.

use serde::Serialize;

/// The summary of one figure's samples for one runtime (warm-up runs excluded).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for no samples; an error for a NaN (a sample that was never measured).
    pub fn of(samples: &[f64]) -> anyhow::Result<Option<Summary>> {
        if samples.iter().any(|s| s.is_nan()) {
            anyhow::bail!("a sample is NaN: {samples:?}");
        }
        if samples.is_empty() {
            return Ok(None);
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Ok(Some(Summary {
            n: sorted.len(),
            p50: nearest_rank(&sorted, 50),
            p95: nearest_rank(&sorted, 95),
            p99: nearest_rank(&sorted, 99),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        }))
    }
}

/// The `p`-th percentile (0 < p ≤ 100) of ascending, non-empty `sorted` by the nearest-rank
/// method: the smallest sample such that at least p % of the samples are ≤ it, i.e. the
/// sample of 1-based rank ⌈p·n/100⌉. Always one of the samples (never interpolated).
/// Integer arithmetic, so that e.g. p95 of 20 samples is exactly rank 19.
pub fn nearest_rank(sorted: &[f64], p: u32) -> f64 {
    assert!(!sorted.is_empty(), "percentile of no samples");
    assert!((1..=100).contains(&p), "percentile {p} out of 1..=100");
    let n = sorted.len();
    let rank = (p as usize * n).div_ceil(100).clamp(1, n);
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(n: usize) -> Vec<f64> {
        (1..=n).map(|i| i as f64).collect()
    }

    #[test]
    fn one_sample_is_every_percentile() {
        let s = Summary::of(&[7.5]).unwrap().unwrap();
        assert_eq!(
            s,
            Summary {
                n: 1,
                p50: 7.5,
                p95: 7.5,
                p99: 7.5,
                min: 7.5,
                max: 7.5
            }
        );
    }

    #[test]
    fn ten_samples() {
        // ranks: p50 → ⌈5⌉ = 5, p95 → ⌈9.5⌉ = 10, p99 → ⌈9.9⌉ = 10
        let s = Summary::of(&seq(10)).unwrap().unwrap();
        assert_eq!((s.n, s.p50, s.p95, s.p99), (10, 5.0, 10.0, 10.0));
        assert_eq!((s.min, s.max), (1.0, 10.0));
    }

    #[test]
    fn exact_ranks_are_not_rounded_up() {
        // p95 of 20 is rank 19 exactly, p99 of 100 is rank 99, p50 of 2 is rank 1
        assert_eq!(nearest_rank(&seq(20), 95), 19.0);
        assert_eq!(nearest_rank(&seq(100), 99), 99.0);
        assert_eq!(nearest_rank(&seq(100), 50), 50.0);
        assert_eq!(nearest_rank(&seq(2), 50), 1.0);
        assert_eq!(nearest_rank(&seq(3), 50), 2.0);
        assert_eq!(nearest_rank(&seq(101), 99), 100.0);
        assert_eq!(nearest_rank(&seq(5), 100), 5.0);
        assert_eq!(nearest_rank(&seq(5), 1), 1.0);
    }

    #[test]
    fn input_order_does_not_matter() {
        let a = Summary::of(&[30.0, 10.0, 50.0, 20.0, 40.0])
            .unwrap()
            .unwrap();
        let b = Summary::of(&[10.0, 20.0, 30.0, 40.0, 50.0])
            .unwrap()
            .unwrap();
        assert_eq!(a, b);
        assert_eq!((a.p50, a.p95, a.min, a.max), (30.0, 50.0, 10.0, 50.0));
    }

    #[test]
    fn percentiles_are_samples_not_interpolations() {
        let s = Summary::of(&[1.0, 100.0]).unwrap().unwrap();
        assert_eq!((s.p50, s.p95, s.p99), (1.0, 100.0, 100.0));
    }

    #[test]
    fn empty_and_nan() {
        assert_eq!(Summary::of(&[]).unwrap(), None);
        assert!(Summary::of(&[1.0, f64::NAN]).is_err());
    }
}
