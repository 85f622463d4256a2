//! DESIGN.md's Targets table, as data: what each figure is compared with in the table.
//!
//! Keep this in step with ../shared/DESIGN.md "Targets". Each entry names the statistic
//! the target is about and its bound in the figure's own unit, so the table can say "met"
//! or "missed"; nothing here is asserted (a benchmark reports, it does not fail on a time).

use super::stats::Summary;

/// Which statistic of a figure a target bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    P50,
    P99,
}

impl Stat {
    pub fn of(self, s: &Summary) -> f64 {
        match self {
            Stat::P50 => s.p50,
            Stat::P99 => s.p99,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Stat::P50 => "p50",
            Stat::P99 => "p99",
        }
    }
}

/// One row of DESIGN.md's Targets table.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// Key used by the figures.
    pub key: &'static str,
    /// DESIGN.md's "what" column.
    pub what: &'static str,
    /// DESIGN.md's "containerd here" column (containerd 1.7.29 + runc 1.1.5 on this VM).
    pub containerd_here: &'static str,
    /// DESIGN.md's "berth target" column, verbatim.
    pub design: &'static str,
    /// The statistic and bound (in the figure's unit) that "met" is judged on, if any.
    pub bound: Option<(Stat, f64)>,
    /// Unit of `bound`.
    pub unit: &'static str,
    /// Side by side: the endpoint must be at least this many times better than `--vs`.
    pub min_ratio: Option<f64>,
}

/// DESIGN.md "Targets", row by row.
pub const TARGETS: &[Target] = &[
    Target {
        key: "runp",
        what: "RunPodSandbox with CNI bridge, p50",
        containerd_here: "114 ms (crictl runp 128 ms)",
        design: "≤ 40 ms, and ≥ 3× faster side by side",
        bound: Some((Stat::P50, 40.0)),
        unit: "ms",
        min_ratio: Some(3.0),
    },
    Target {
        key: "stop",
        what: "StopPodSandbox, p50",
        containerd_here: "130 ms",
        design: "≤ 30 ms",
        bound: Some((Stat::P50, 30.0)),
        unit: "ms",
        min_ratio: None,
    },
    Target {
        key: "create-start",
        what: "CreateContainer + StartContainer (busybox), p50",
        containerd_here: "8.5 + 64 ms",
        design: "≤ 15 ms",
        bound: Some((Stat::P50, 15.0)),
        unit: "ms",
        min_ratio: None,
    },
    Target {
        key: "full-pod",
        what: "full pod: sandbox + 1 container running, p99 over 100 pods",
        containerd_here: "—",
        design: "≤ 100 ms",
        bound: Some((Stat::P99, 100.0)),
        unit: "ms",
        min_ratio: None,
    },
    Target {
        key: "exec",
        what: "ExecSync `true`, p50",
        containerd_here: "≈ 33 ms (crictl exec -s 53 ms)",
        design: "≤ 5 ms",
        bound: Some((Stat::P50, 5.0)),
        unit: "ms",
        min_ratio: None,
    },
    Target {
        key: "daemon-rss-idle",
        what: "daemon RSS idle",
        containerd_here: "55 MB",
        design: "— (the target is at 100 pods)",
        bound: None,
        unit: "MB",
        min_ratio: None,
    },
    Target {
        key: "daemon-rss",
        what: "daemon RSS at 100 pods",
        containerd_here: "68 MB at 20 pods",
        design: "≤ 40 MB at 100 pods",
        bound: Some((Stat::P50, 40.0)),
        unit: "MB",
        min_ratio: None,
    },
    Target {
        key: "shim-rss",
        what: "per-pod shim RSS (1 container)",
        containerd_here: "15.3 MB (containerd-shim-runc-v2)",
        design: "≤ 2 MB",
        bound: Some((Stat::P50, 2.0)),
        unit: "MB",
        min_ratio: None,
    },
    Target {
        key: "pull",
        what: "pull + unpack from a local registry",
        containerd_here: "busybox cold pull 87 ms p50",
        design: "≥ 1.5× containerd's throughput",
        bound: None,
        unit: "MB/s",
        min_ratio: Some(1.5),
    },
    Target {
        key: "density",
        what: "pods per node",
        containerd_here: "—",
        design: "500 pods on this VM with flat latency",
        bound: None,
        unit: "pods",
        min_ratio: None,
    },
];

/// The target with this key (a programming error if there is none).
pub fn get(key: &str) -> &'static Target {
    TARGETS
        .iter()
        .find(|t| t.key == key)
        .unwrap_or_else(|| panic!("no DESIGN target {key:?}"))
}

impl Target {
    /// "p50 ≤ 40 ms: met (containerd here 114 ms …)" for the endpoint's row.
    pub fn text(&self, s: &Summary) -> String {
        let judged = match self.bound {
            Some((stat, bound)) => {
                let v = stat.of(s);
                // one sample (a single reading): no statistic to name
                let stat_name = if s.n == 1 {
                    String::new()
                } else {
                    format!("{} ", stat.name())
                };
                format!(
                    "{stat_name}≤ {} {}: {}",
                    fmt_num(bound),
                    self.unit,
                    if v <= bound { "met" } else { "missed" }
                )
            }
            None => self.design.to_string(),
        };
        let ratio = match self.min_ratio {
            Some(r) if self.bound.is_some() => format!("; ≥ {}× vs containerd (--vs)", fmt_num(r)),
            _ => String::new(),
        };
        if self.containerd_here == "—" {
            format!("{judged}{ratio}")
        } else {
            format!("{judged}{ratio} · containerd here {}", self.containerd_here)
        }
    }

    /// For the `--vs` row: how many times better the endpoint is (`ratio` > 1: better),
    /// judged against `min_ratio` when the target has one.
    pub fn ratio_text(
        &self,
        endpoint: &str,
        vs: &str,
        ratio: f64,
        better: &str,
        stat: Stat,
    ) -> String {
        let judged = match self.min_ratio {
            Some(min) => format!(
                " (target ≥ {}×: {})",
                fmt_num(min),
                if ratio >= min { "met" } else { "missed" }
            ),
            None => String::new(),
        };
        // a ratio just under the bound would print as the bound (2.994 → "3.00"): then
        // one more decimal, so that "missed" is not contradicted by the number beside it
        let shown = match self.min_ratio {
            Some(min) if ratio < min && format!("{ratio:.2}") == format!("{min:.2}") => {
                format!("{ratio:.3}")
            }
            _ => format!("{ratio:.2}"),
        };
        format!(
            "{endpoint} {shown}× {better} than {vs} at {}{judged}",
            stat.name()
        )
    }
}

fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(p50: f64, p99: f64) -> Summary {
        Summary {
            n: 10,
            p50,
            p95: p99,
            p99,
            min: p50,
            max: p99,
        }
    }

    #[test]
    fn every_key_is_unique_and_found() {
        for t in TARGETS {
            assert_eq!(TARGETS.iter().filter(|u| u.key == t.key).count(), 1);
            assert_eq!(get(t.key).key, t.key);
        }
    }

    #[test]
    fn a_single_reading_names_no_statistic() {
        let one = Summary::of(&[41.0]).unwrap().unwrap();
        assert!(get("daemon-rss").text(&one).starts_with("≤ 40 MB: missed"));
    }

    #[test]
    fn met_and_missed() {
        let t = get("runp");
        assert!(
            t.text(&summary(39.0, 200.0))
                .starts_with("p50 ≤ 40 ms: met")
        );
        assert!(
            t.text(&summary(41.0, 41.0))
                .starts_with("p50 ≤ 40 ms: missed")
        );
        assert!(
            t.text(&summary(1.0, 1.0))
                .contains("containerd here 114 ms")
        );
        let f = get("full-pod");
        assert_eq!(f.text(&summary(10.0, 100.0)), "p99 ≤ 100 ms: met");
        assert_eq!(f.text(&summary(10.0, 100.5)), "p99 ≤ 100 ms: missed");
        assert!(
            t.ratio_text("berth", "containerd", 3.2, "faster", Stat::P50)
                .ends_with("at p50 (target ≥ 3×: met)")
        );
        assert_eq!(
            get("exec").ratio_text("berth", "containerd", 2.0, "faster", Stat::P50),
            "berth 2.00× faster than containerd at p50"
        );
        assert_eq!(
            t.ratio_text("berth", "containerd", 2.9961, "faster", Stat::P50),
            "berth 2.996× faster than containerd at p50 (target ≥ 3×: missed)"
        );
    }
}
