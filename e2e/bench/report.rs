//! The aligned text table every figure reports into, and helpers shared by the figures.

use serde_json::{Value, json};

use super::stats::Summary;
use super::{Run, Runtime, measured};

/// Footnote of the MB/s column.
pub const RATE_NOTE: &str = "¹ MB/s = image size as the runtime's ImageStatus reports it \
(manifests + config + compressed layers, not the unpacked size; 1 MB = 10^6 bytes) / p50 time.";

/// One line of the table: one figure on one runtime.
#[derive(Debug, Clone)]
pub struct Row {
    /// Figure and unit, e.g. "pull (ms)".
    pub figure: String,
    pub runtime: String,
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

/// "berth/containerd = 1.62× (target ≥ 1.5×: met)" — `ratio` is "how many times better
/// the endpoint is" in the figure's own sense (throughput ratio, or speed-up).
pub fn ratio_text(rts: &[Runtime], ratio: f64, min: f64) -> String {
    let name = |rt: &Runtime| {
        if rt.version.runtime_name.is_empty()
            || rts[0].version.runtime_name == rts[1].version.runtime_name
        {
            format!("{:?}", rt.role).to_lowercase()
        } else {
            rt.version.runtime_name.clone()
        }
    };
    format!(
        "{}/{} = {ratio:.2}× ({})",
        name(&rts[0]),
        name(&rts[1]),
        if ratio >= min { "met" } else { "missed" }
    )
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
        "figure", "runtime", "n", "p50", "p95", "p99", "min", "max", "MB/s¹", "target",
    ];
    // numeric columns are right-aligned
    let right = [
        false, false, true, true, true, true, true, true, true, false,
    ];
    let mut lines: Vec<[String; 10]> = vec![header.map(String::from)];
    for r in reports.iter().flat_map(|r| &r.rows) {
        let s = &r.summary;
        let f = |x: f64| format!("{x:.1}");
        lines.push([
            r.figure.clone(),
            r.runtime.clone(),
            s.n.to_string(),
            f(s.p50),
            f(s.p95),
            f(s.p99),
            f(s.min),
            f(s.max),
            r.rate.map(f).unwrap_or_else(|| "-".into()),
            r.target.clone(),
        ]);
    }
    let mut width = [0usize; 10];
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
        "\nTimes in ms; percentiles by nearest rank over n measured runs (warm-up runs \
         discarded)",
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
