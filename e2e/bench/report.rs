//! The aligned text table every figure reports into, and helpers shared by the figures.

use anyhow::Result;
use serde_json::{Value, json};

use super::stats::Summary;
use super::targets::{Stat, Target};
use super::{Run, Runtime, measured};

/// Footnote of the MB/s column.
pub const RATE_NOTE: &str = "¹ MB/s = image size as the runtime's ImageStatus reports it \
(manifests + config + compressed layers, not the unpacked size; 1 MB = 10^6 bytes) / p50 time.";

/// One line of the table: one figure on one runtime.
#[derive(Debug, Clone)]
pub struct Row {
    /// The figure as the table names it, e.g. "pull (cold)".
    pub figure: String,
    pub runtime: String,
    /// Unit of the statistics: "ms" or "MB".
    pub unit: String,
    pub summary: Summary,
    /// MB/s at p50, for figures with a throughput.
    pub rate: Option<f64>,
    /// The DESIGN.md target, or (on the vs row) how the endpoint compares.
    pub target: String,
}

/// What a figure reports: its table rows, footnotes, and its JSON (every sample).
#[derive(Debug, Clone)]
pub struct FigureReport {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub json: Value,
}

/// The measured times (ms) of a runtime's runs and their summary.
pub fn summarize(runs: &[Run]) -> anyhow::Result<Summary> {
    let ms: Vec<f64> = measured(runs).map(|r| r.sample.ms).collect();
    super::stats::Summary::of(&ms)?.ok_or_else(|| anyhow::anyhow!("no measured runs"))
}

/// How the ratio texts name the two runtimes: their runtime names, or "endpoint" and
/// "vs" when those are equal or empty.
pub fn short_names(rts: &[Runtime]) -> (String, String) {
    let name = |rt: &Runtime| {
        if rt.version.runtime_name.is_empty()
            || rts[0].version.runtime_name == rts[1].version.runtime_name
        {
            format!("{:?}", rt.role).to_lowercase()
        } else {
            rt.version.runtime_name.clone()
        }
    };
    (name(&rts[0]), name(&rts[1]))
}

/// "berth/containerd = 1.62× (target ≥ 1.5×: met)" — `ratio` is "how many times better
/// the endpoint is" in the figure's own sense (throughput ratio, or speed-up).
pub fn ratio_text(rts: &[Runtime], ratio: f64, min: f64) -> String {
    let (a, b) = short_names(rts);
    format!(
        "{a}/{b} = {ratio:.2}× ({})",
        if ratio >= min { "met" } else { "missed" }
    )
}

/// One row per runtime for one quantity (lower is better: times, memory). The endpoint's
/// row carries the DESIGN target (met or missed); with `--vs`, the vs row says how many
/// times better the endpoint is, on the target's statistic (p50 when it has none).
/// `better` words the ratio: "faster", "smaller".
pub fn rows(
    label: &str,
    unit: &str,
    rts: &[Runtime],
    samples: &[Vec<f64>],
    target: Option<&Target>,
    better: &str,
) -> Result<(Vec<Row>, Vec<Summary>)> {
    let mut rows = Vec::new();
    let mut sums = Vec::new();
    for (rt, xs) in rts.iter().zip(samples) {
        let s = Summary::of(xs)?
            .ok_or_else(|| anyhow::anyhow!("{label}: no measured samples on {}", rt.label))?;
        rows.push(Row {
            figure: label.to_string(),
            runtime: rt.label.clone(),
            unit: unit.to_string(),
            summary: s,
            rate: None,
            target: String::new(),
        });
        sums.push(s);
    }
    if let Some(t) = target {
        rows[0].target = t.text(&sums[0]);
    }
    if rts.len() == 2 {
        let stat = target.and_then(|t| t.bound).map_or(Stat::P50, |(s, _)| s);
        let (a, b) = short_names(rts);
        let (ea, eb) = (stat.of(&sums[0]), stat.of(&sums[1]));
        let ratio = if ea > 0.0 { eb / ea } else { f64::INFINITY };
        rows[1].target = match target {
            Some(t) => t.ratio_text(&a, &b, ratio, better, stat),
            None => format!("{a} {ratio:.2}× {better} than {b} at {}", stat.name()),
        };
    }
    Ok((rows, sums))
}

/// The report of a figure that times one thing per run: one row per runtime over the
/// measured runs' `ms`, JSON with every run.
pub fn time_figure(
    name: &str,
    label: &str,
    what: &str,
    rts: &[Runtime],
    runs: &super::Runs,
    target: Option<&Target>,
    notes: Vec<String>,
) -> Result<FigureReport> {
    let samples: Vec<Vec<f64>> = runs
        .iter()
        .map(|r| measured(r).map(|r| r.sample.ms).collect())
        .collect();
    let (rows, sums) = rows(label, "ms", rts, &samples, target, "faster")?;
    let per_rt: Vec<Value> = rts
        .iter()
        .zip(runs)
        .zip(&sums)
        .map(|((rt, runs), s)| runtime_json(rt, s, runs, json!({})))
        .collect();
    Ok(FigureReport {
        rows,
        notes,
        json: json!({
            "name": name,
            "label": label,
            "what": what,
            "unit": "ms",
            "target": target.map(|t| t.design),
            "target_what": target.map(|t| t.what),
            "containerd_here": target.map(|t| t.containerd_here),
            "per_runtime": per_rt,
        }),
    })
}

/// JSON of a summary row with its runs.
pub fn runtime_json(rt: &Runtime, summary: &Summary, runs: &[Run], extra: Value) -> Value {
    let mut v = json!({
        "runtime": rt.label,
        "role": rt.role,
        "endpoint": rt.endpoint,
        "summary_ms": summary,
        "runs": runs,
    });
    if let (Value::Object(m), Value::Object(e)) = (&mut v, extra) {
        m.extend(e);
    }
    v
}

/// The aligned table of every figure's rows, then the footnotes.
pub fn table(reports: &[FigureReport], runtimes: usize) -> String {
    let header = [
        "figure", "runtime", "n", "unit", "p50", "p95", "p99", "min", "max", "MB/s¹", "target",
    ];
    // numeric columns are right-aligned
    let right = [
        false, false, true, false, true, true, true, true, true, true, false,
    ];
    let mut lines: Vec<[String; 11]> = vec![header.map(String::from)];
    for r in reports.iter().flat_map(|r| &r.rows) {
        let s = &r.summary;
        let f = |x: f64| format!("{x:.1}");
        lines.push([
            r.figure.clone(),
            r.runtime.clone(),
            s.n.to_string(),
            r.unit.clone(),
            f(s.p50),
            f(s.p95),
            f(s.p99),
            f(s.min),
            f(s.max),
            r.rate.map(f).unwrap_or_else(|| "-".into()),
            r.target.clone(),
        ]);
    }
    let mut width = [0usize; 11];
    for l in &lines {
        for (w, c) in width.iter_mut().zip(l) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for l in &lines {
        let mut line = String::new();
        for (i, c) in l.iter().enumerate() {
            let pad = " ".repeat(width[i] - c.chars().count());
            if i > 0 {
                line.push_str("  ");
            }
            if right[i] {
                line.push_str(&pad);
                line.push_str(c);
            } else {
                line.push_str(c);
                line.push_str(&pad);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(
        "\nPercentiles by nearest rank over n measured samples (warm-up runs discarded); \
         1 MB = 10^6 bytes",
    );
    out.push_str(if runtimes > 1 {
        "; the runtimes alternated run by run.\n"
    } else {
        ".\n"
    });
    out.push_str(RATE_NOTE);
    out.push('\n');
    let mut seen = Vec::new();
    for n in reports.iter().flat_map(|r| &r.notes) {
        if !seen.contains(&n) {
            out.push_str(n);
            out.push('\n');
            seen.push(n);
        }
    }
    out.trim_end().to_string()
}
