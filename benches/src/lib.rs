//! Shared pieces of the side-by-side benchmarks (`benches/src/bin/*.rs`):
//! statistics and the result table every benchmark prints, with the ratio
//! of b3 stack's number to the established tool's.
//!
//! Benchmarks are run by `benches/run` (release build); they never gate CI.

use std::fmt::Write as _;

/// Median of `samples` (None when empty). NaNs sort last.
pub fn median(samples: &[f64]) -> Option<f64> {
    percentile(samples, 50.0)
}

/// The `p`-th percentile (0–100, nearest rank) of `samples`.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Whether a bigger number is better for a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Throughput-like: ratio = ours / theirs, ≥ 1 is a win.
    Higher,
    /// Latency-like: ratio = theirs / ours, ≥ 1 is a win.
    Lower,
}

/// One measured row: a workload, our number, and the reference tool's.
#[derive(Debug, Clone)]
pub struct Row {
    pub workload: String,
    pub unit: String,
    pub ours: f64,
    pub reference_name: String,
    pub reference: Option<f64>,
    pub better: Better,
    /// The target ratio from the issue (e.g. 2.0 for "≥ 2×"), if any.
    pub target: Option<f64>,
}

impl Row {
    /// Our advantage as a factor (≥ 1 means we win), when both sides ran.
    pub fn ratio(&self) -> Option<f64> {
        let r = self.reference?;
        if r == 0.0 || self.ours == 0.0 {
            return None;
        }
        Some(match self.better {
            Better::Higher => self.ours / r,
            Better::Lower => r / self.ours,
        })
    }
}

/// Renders rows as a fixed-width table with ratios and target verdicts.
pub fn render(title: &str, rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n== {title} ==");
    let _ = writeln!(
        out,
        "{:<38} {:>14} {:>14} {:<12} {:>8} {:>8}",
        "workload", "b3", "reference", "(tool)", "ratio", "target"
    );
    for r in rows {
        let reference = r
            .reference
            .map(|v| format!("{v:.2}"))
            .unwrap_or_else(|| "n/a".into());
        let ratio = r
            .ratio()
            .map(|v| format!("{v:.2}x"))
            .unwrap_or_else(|| "-".into());
        let target = match (r.target, r.ratio()) {
            (Some(t), Some(x)) if x >= t => format!(">={t} ok"),
            (Some(t), Some(_)) => format!(">={t} MISS"),
            (Some(t), None) => format!(">={t} ?"),
            (None, _) => String::new(),
        };
        let _ = writeln!(
            out,
            "{:<38} {:>14} {:>14} {:<12} {:>8} {:>8}",
            format!("{} [{}]", r.workload, r.unit),
            format!("{:.2}", r.ours),
            reference,
            r.reference_name,
            ratio,
            target
        );
    }
    out
}

/// One workload measured on several systems: ours first, then each
/// reference (None = not run or failed), with a per-reference target ratio.
#[derive(Debug, Clone)]
pub struct MatrixRow {
    pub workload: String,
    pub unit: String,
    pub better: Better,
    pub ours: Option<f64>,
    /// One entry per reference column, in the order of the column names.
    pub references: Vec<Option<f64>>,
    /// The target ratio against each reference (same order), if any.
    pub targets: Vec<Option<f64>>,
}

impl MatrixRow {
    /// Our advantage over reference `i` (≥ 1 means we win).
    pub fn ratio(&self, i: usize) -> Option<f64> {
        let (ours, r) = (self.ours?, (*self.references.get(i)?)?);
        if r == 0.0 || ours == 0.0 {
            return None;
        }
        Some(match self.better {
            Better::Higher => ours / r,
            Better::Lower => r / ours,
        })
    }
}

/// Renders a workload × system table: the raw numbers of every system,
/// then our ratio against each reference, marked `!` where it misses the
/// target (and `ok` where it meets one).
pub fn render_matrix(title: &str, ours: &str, references: &[&str], rows: &[MatrixRow]) -> String {
    let num = |v: Option<f64>| match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.2}"),
        None => "n/a".into(),
    };
    let mut out = String::new();
    let _ = writeln!(out, "\n== {title} ==");
    let mut head = format!("{:<30} {:>11}", "workload", ours);
    for r in references {
        let _ = write!(head, " {:>11}", r);
    }
    for r in references {
        let _ = write!(head, " {:>13}", format!("vs {r}"));
    }
    let _ = writeln!(out, "{head}");
    for row in rows {
        let mut line = format!(
            "{:<30} {:>11}",
            format!("{} [{}]", row.workload, row.unit),
            num(row.ours)
        );
        for v in &row.references {
            let _ = write!(line, " {:>11}", num(*v));
        }
        for i in 0..references.len() {
            let target = row.targets.get(i).copied().flatten();
            let cell = match (row.ratio(i), target) {
                (Some(x), Some(t)) if x >= t => format!("{x:.2}x ok"),
                (Some(x), Some(_)) => format!("{x:.2}x !"),
                (Some(x), None) => format!("{x:.2}x"),
                (None, _) => "-".into(),
            };
            let _ = write!(line, " {:>13}", cell);
        }
        let _ = writeln!(out, "{line}");
    }
    let targets: Vec<String> = references
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let ts: Vec<f64> = rows
                .iter()
                .filter_map(|row| row.targets.get(i).copied().flatten())
                .collect();
            let t = ts.first()?;
            let all = ts.len() == rows.len() && ts.iter().all(|x| x == t);
            Some(if all {
                format!("≥ {t}× {r} on every row")
            } else {
                format!("≥ {t}× {r} where marked")
            })
        })
        .collect();
    if !targets.is_empty() {
        let _ = writeln!(
            out,
            "ratio = how many times better {ours} is (throughput: ours/theirs, time: theirs/ours); targets: {}; `!` = below target",
            targets.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let s = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(median(&s), Some(3.0));
        assert_eq!(percentile(&s, 99.0), Some(5.0));
        assert_eq!(percentile(&s, 0.0), Some(1.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn ratio_direction_follows_better() {
        let mut row = Row {
            workload: "x".into(),
            unit: "req/s".into(),
            ours: 200.0,
            reference_name: "nginx".into(),
            reference: Some(100.0),
            better: Better::Higher,
            target: Some(1.0),
        };
        assert_eq!(row.ratio(), Some(2.0));
        assert!(render("t", std::slice::from_ref(&row)).contains("2.00x"));
        row.better = Better::Lower;
        assert_eq!(row.ratio(), Some(0.5));
        assert!(render("t", &[row]).contains("MISS"));
    }

    #[test]
    fn matrix_marks_misses_and_missing_systems() {
        let row = MatrixRow {
            workload: "clone".into(),
            unit: "s".into(),
            better: Better::Lower,
            ours: Some(2.0),
            references: vec![Some(8.0), None, Some(1.0)],
            targets: vec![Some(2.0), Some(2.0), Some(0.5)],
        };
        assert_eq!(row.ratio(0), Some(4.0));
        assert_eq!(row.ratio(1), None);
        assert_eq!(row.ratio(2), Some(0.5));
        let t = render_matrix("t", "b3", &["gluster", "ceph", "bindfs"], &[row]);
        assert!(t.contains("4.00x ok"), "{t}");
        assert!(t.contains("n/a"), "{t}");
        assert!(t.contains("0.50x ok"), "{t}");
    }
}
