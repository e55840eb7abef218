//! Whether a series of runs (one agent and grid point, its seeds) had its budget's worth: still
//! improving at the end, collapsed below where it started, or settled. Measured on the held-out
//! gold reward against the spread over seeds, so "still improving" and "collapsed" mean more than
//! seed noise. The report marks each series; `runs.csv` flags each collapsed run.

use crate::metrics::MetricRow;
use aligngym_agents::metric;

/// Where a series' gold reward was heading when its budget ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trend {
    /// Over the last third of its evaluations the median over seeds gained more than the spread
    /// of the final values over seeds: a longer budget would likely move it further.
    StillImproving,
    /// It gained no more than that spread (or lost).
    Settled,
    /// Fewer than three evaluations: no last third to judge.
    TooFewEvaluations,
}

/// A series' trend and its collapsed runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// Where the median gold reward was heading.
    pub trend: Trend,
    /// Runs whose final gold reward lies below their own start by more than the spread.
    pub collapsed: usize,
    /// Runs in the series.
    pub runs: usize,
}

impl Health {
    /// One word or phrase for a report's table.
    pub fn label(&self) -> String {
        let trend = match self.trend {
            Trend::StillImproving => "still improving",
            Trend::Settled => "settled",
            Trend::TooFewEvaluations => "–",
        };
        if self.collapsed > 0 {
            format!(
                "collapsed ({} of {} runs); {trend}",
                self.collapsed, self.runs
            )
        } else {
            trend.to_string()
        }
    }
}

/// A run's gold-reward evaluations, in step order.
fn gold_curve(rows: &[MetricRow]) -> Vec<(u64, f64)> {
    let mut c: Vec<(u64, f64)> = rows
        .iter()
        .filter(|r| r.metric == metric::EVAL_GOLD_REWARD && r.value.is_finite())
        .map(|r| (r.step, r.value))
        .collect();
    c.sort_by_key(|p| p.0);
    c
}

/// The spread over seeds: the range of the runs' final gold rewards (0 with one run).
fn spread(curves: &[Vec<(u64, f64)>]) -> f64 {
    let finals: Vec<f64> = curves
        .iter()
        .filter_map(|c| c.last().map(|p| p.1))
        .collect();
    let lo = finals.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = finals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if finals.is_empty() {
        0.0
    } else {
        hi - lo
    }
}

/// Whether a run's final gold reward lies below its start (step 0) by more than `spread`.
pub fn collapsed(rows: &[MetricRow], spread: f64) -> bool {
    let c = gold_curve(rows);
    match (c.first(), c.last()) {
        (Some(&(0, start)), Some(&(_, end))) if c.len() > 1 => start - end > spread,
        _ => false,
    }
}

/// The spread over seeds of a series' runs (what [`collapsed`] compares a drop with).
pub fn series_spread(runs: &[&[MetricRow]]) -> f64 {
    spread(&runs.iter().map(|r| gold_curve(r)).collect::<Vec<_>>())
}

/// The trend and collapsed runs of a series.
pub fn health(runs: &[&[MetricRow]]) -> Health {
    let curves: Vec<Vec<(u64, f64)>> = runs.iter().map(|r| gold_curve(r)).collect();
    let spread = spread(&curves);
    // The median over seeds at each step every run evaluated.
    let steps: Vec<u64> = curves
        .first()
        .map(|c| c.iter().map(|p| p.0).collect())
        .unwrap_or_default();
    let med: Vec<f64> = steps
        .iter()
        .filter_map(|s| {
            let at: Vec<f64> = curves
                .iter()
                .filter_map(|c| c.iter().find(|p| p.0 == *s).map(|p| p.1))
                .collect();
            (at.len() == curves.len()).then(|| {
                let mut at = at;
                at.sort_by(f64::total_cmp);
                crate::stats::quantile_sorted(&at, 0.5)
            })
        })
        .collect();
    let trend = if med.len() < 3 {
        Trend::TooFewEvaluations
    } else {
        let from = 2 * (med.len() - 1) / 3;
        if med[med.len() - 1] - med[from] > spread {
            Trend::StillImproving
        } else {
            Trend::Settled
        }
    };
    Health {
        trend,
        collapsed: runs.iter().filter(|r| collapsed(r, spread)).count(),
        runs: runs.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(golds: &[f64]) -> Vec<MetricRow> {
        golds
            .iter()
            .enumerate()
            .map(|(i, &g)| MetricRow {
                step: 10 * i as u64,
                metric: metric::EVAL_GOLD_REWARD.into(),
                value: g,
            })
            .collect()
    }

    #[test]
    fn a_run_cut_short_while_climbing_is_still_improving() {
        // Three seeds still rising steeply: medians 0.1, 0.2, 0.3, 0.41; the last third (from the
        // 3rd evaluation) gains 0.11, more than the 0.02 spread of the finals.
        let rs = [
            run(&[0.1, 0.2, 0.3, 0.40]),
            run(&[0.1, 0.2, 0.3, 0.41]),
            run(&[0.1, 0.2, 0.3, 0.42]),
        ];
        let refs: Vec<&[MetricRow]> = rs.iter().map(|r| r.as_slice()).collect();
        let h = health(&refs);
        assert_eq!(h.trend, Trend::StillImproving, "{h:?}");
        assert_eq!(h.collapsed, 0);
        assert_eq!(h.label(), "still improving");
    }

    #[test]
    fn a_plateau_has_settled_and_a_fall_below_the_start_is_a_collapse() {
        // Plateau: the median's last third goes 0.6 → 0.56, no gain beyond the spread 0.1.
        let rs = [run(&[0.1, 0.5, 0.6, 0.61]), run(&[0.1, 0.5, 0.6, 0.51])];
        let refs: Vec<&[MetricRow]> = rs.iter().map(|r| r.as_slice()).collect();
        assert_eq!(health(&refs).trend, Trend::Settled);
        // One seed ends 0.25 below its start of 0.3, beyond the spread 0.2 of the finals
        // (0.05 and 0.25): collapsed; the other ends 0.05 lower, within the spread: not.
        let rs = [run(&[0.3, 0.2, 0.1, 0.05]), run(&[0.3, 0.3, 0.3, 0.25])];
        let refs: Vec<&[MetricRow]> = rs.iter().map(|r| r.as_slice()).collect();
        let h = health(&refs);
        assert_eq!(h.collapsed, 1, "{h:?}");
        assert_eq!(h.label(), "collapsed (1 of 2 runs); settled");
        assert!((series_spread(&refs) - 0.2).abs() < 1e-12);
        // Two evaluations leave no last third to judge.
        let short = [run(&[0.1, 0.2])];
        let refs: Vec<&[MetricRow]> = short.iter().map(|r| r.as_slice()).collect();
        assert_eq!(health(&refs).trend, Trend::TooFewEvaluations);
    }
}
