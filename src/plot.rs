//! Figures from a sweep folder (PNG and SVG): learning curves (gold reward against updates, samples
//! and wall seconds: median over seeds with a min–max band), the gold-reward-vs-KL frontier (the DPO
//! paper's figure), and proxy vs gold reward against √KL (over-optimisation, Gao et al. 2022).

use crate::metrics::MetricRow;
use crate::sweep::{load_sweep_dir, SweepSpec};
use aligngym_agents::metric;
use aligngym_agents::{AgentError, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Rows of a sweep's long `metrics.csv`, grouped by run id.
pub fn read_sweep_metrics(dir: &Path) -> Result<BTreeMap<String, Vec<MetricRow>>> {
    let path = dir.join("metrics.csv");
    let mut r = csv::Reader::from_path(&path)
        .map_err(|e| AgentError::Data(format!("{}: {e}", path.display())))?;
    let mut out: BTreeMap<String, Vec<MetricRow>> = BTreeMap::new();
    for (i, rec) in r.records().enumerate() {
        let rec =
            rec.map_err(|e| AgentError::Data(format!("{}:{}: {e}", path.display(), i + 2)))?;
        let bad = |f: &str| AgentError::Data(format!("{}:{}: bad `{f}`", path.display(), i + 2));
        let step: u64 = rec
            .get(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("step"))?;
        let value: f64 = rec
            .get(3)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("value"))?;
        out.entry(rec.get(0).unwrap_or("").to_string())
            .or_default()
            .push(MetricRow {
                step,
                metric: rec.get(2).unwrap_or("").to_string(),
                value,
            });
    }
    Ok(out)
}

/// A run's series key: its id without the seed, so seeds of one configuration pool together.
pub fn series_key(run_id: &str) -> String {
    match run_id.rfind(".s") {
        Some(i) if run_id[i + 2..].chars().all(|c| c.is_ascii_digit()) => run_id[..i].to_string(),
        _ => run_id.to_string(),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// One point of a series: where it is, and the band drawn around it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CurvePoint {
    /// The x value (the median over the runs).
    x: f64,
    /// The line's y value (the median over the runs).
    y: f64,
    /// The band's lower edge (the least y, or a lower quantile).
    lo: f64,
    /// The band's upper edge.
    hi: f64,
}

/// The median of `y_metric` against `x_metric` over the runs of a series at the eval steps,
/// banded by its least and greatest value.
fn curve(runs: &[&Vec<MetricRow>], x_metric: &str, y_metric: &str) -> Vec<CurvePoint> {
    let mut by_step: BTreeMap<u64, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for rows in runs {
        let xs: BTreeMap<u64, f64> = rows
            .iter()
            .filter(|r| r.metric == x_metric)
            .map(|r| (r.step, r.value))
            .collect();
        for r in rows.iter().filter(|r| r.metric == y_metric) {
            let x = if x_metric == "step" {
                Some(r.step as f64)
            } else {
                xs.get(&r.step).copied()
            };
            if let Some(x) = x {
                let e = by_step.entry(r.step).or_default();
                e.0.push(x);
                e.1.push(r.value);
            }
        }
    }
    by_step
        .into_values()
        .map(|(mut xs, mut ys)| {
            let lo = ys.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = ys.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            CurvePoint {
                x: median(&mut xs),
                y: median(&mut ys),
                lo,
                hi,
            }
        })
        .collect()
}

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Embedded so plots render on machines without system fonts.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

type Series = Vec<(String, Vec<CurvePoint>)>;

/// One panel of a figure.
struct Panel {
    /// Caption.
    title: String,
    /// x-axis label, with its unit.
    xlabel: String,
    /// y-axis label.
    ylabel: String,
    /// Named series of (x, median, low, high).
    series: Series,
    /// Shade each series' low–high band.
    band: bool,
    /// Lines through the points (else points only).
    lines: bool,
    /// Named point sets drawn as crosses (e.g. each run's peak).
    markers: Vec<(String, Vec<(f64, f64)>)>,
}

/// Okabe–Ito's colour-blind-safe palette (black last), then plotters' own.
fn colour(i: usize) -> RGBAColor {
    const OKABE_ITO: [(u8, u8, u8); 8] = [
        (0, 114, 178),
        (213, 94, 0),
        (0, 158, 115),
        (204, 121, 167),
        (230, 159, 0),
        (86, 180, 233),
        (240, 228, 66),
        (0, 0, 0),
    ];
    match OKABE_ITO.get(i) {
        Some(&(r, g, b)) => RGBColor(r, g, b).to_rgba(),
        None => Palette99::pick(i).to_rgba(),
    }
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, p: &Panel) -> Result<()> {
    let (title, xlabel, ylabel, series, band, lines) =
        (&p.title, &p.xlabel, &p.ylabel, &p.series, p.band, p.lines);
    let err = |e: String| AgentError::Data(format!("plot: {e}"));
    let pts = series
        .iter()
        .flat_map(|(_, s)| s.iter())
        .filter(|p| p.x.is_finite() && p.y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for p in pts {
        x0 = x0.min(p.x);
        x1 = x1.max(p.x);
        y0 = y0.min(if band { p.lo } else { p.y });
        y1 = y1.max(if band { p.hi } else { p.y });
    }
    for (x, y) in p.markers.iter().flat_map(|(_, m)| m.iter()) {
        if x.is_finite() && y.is_finite() {
            (x0, x1, y0, y1) = (x0.min(*x), x1.max(*x), y0.min(*y), y1.max(*y));
        }
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let pad = |a: f64, b: f64| {
        if (b - a).abs() < 1e-9 {
            (a - 0.5, b + 0.5)
        } else {
            (a - 0.05 * (b - a), b + 0.05 * (b - a))
        }
    };
    let ((x0, x1), (y0, y1)) = (pad(x0, x1), pad(y0, y1));
    let mut chart = ChartBuilder::on(area)
        .caption(title.as_str(), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc(xlabel.as_str())
        .y_desc(ylabel.as_str())
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (i, (name, s)) in series.iter().enumerate() {
        let color = colour(i);
        if band && s.len() > 1 {
            let mut poly: Vec<(f64, f64)> = s.iter().map(|p| (p.x, p.hi)).collect();
            poly.extend(s.iter().rev().map(|p| (p.x, p.lo)));
            chart
                .draw_series(std::iter::once(Polygon::new(
                    poly,
                    color.mix(0.15).filled(),
                )))
                .map_err(|e| err(e.to_string()))?;
        }
        let line: Vec<(f64, f64)> = s.iter().map(|p| (p.x, p.y)).collect();
        let drawn = if lines {
            chart
                .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
                .map_err(|e| err(e.to_string()))?
        } else {
            chart
                .draw_series(
                    line.iter()
                        .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
                )
                .map_err(|e| err(e.to_string()))?
        };
        drawn.label(name.clone()).legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
        });
        if lines {
            chart
                .draw_series(
                    line.iter()
                        .map(|&(x, y)| Circle::new((x, y), 2, color.filled())),
                )
                .map_err(|e| err(e.to_string()))?;
        }
    }
    for (i, (name, pts)) in p.markers.iter().enumerate() {
        let color = colour(series.len() + i);
        chart
            .draw_series(
                pts.iter()
                    .filter(|(x, y)| x.is_finite() && y.is_finite())
                    .map(|&(x, y)| Cross::new((x, y), 5, color.stroke_width(2))),
            )
            .map_err(|e| err(e.to_string()))?
            .label(name.clone())
            .legend(move |(x, y)| Cross::new((x + 8, y), 4, color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// One figure: panels side by side, written as `<stem>.png` and `<stem>.svg`.
fn figure(stem: &Path, panels: &[Panel]) -> Result<Vec<PathBuf>> {
    register_font();
    // A lone panel gets room for its legend.
    let w = if panels.len() == 1 {
        760
    } else {
        520 * panels.len() as u32
    };
    let (png, svg) = (stem.with_extension("png"), stem.with_extension("svg"));
    let err = |e: String| AgentError::Data(format!("plot {}: {e}", stem.display()));
    {
        let root = BitMapBackend::new(&png, (w, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        for (a, p) in root.split_evenly((1, panels.len())).iter().zip(panels) {
            draw_panel(a, p)?;
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    {
        let root = SVGBackend::new(&svg, (w, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        for (a, p) in root.split_evenly((1, panels.len())).iter().zip(panels) {
            draw_panel(a, p)?;
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(vec![png, svg])
}

/// Write every figure of the sweep in `dir` into `dir/plots`; returns the files.
pub fn plot_sweep(dir: &Path) -> Result<Vec<PathBuf>> {
    let spec: SweepSpec = load_sweep_dir(dir)?;
    let metrics = read_sweep_metrics(dir)?;
    if metrics.is_empty() {
        return Err(AgentError::Data(format!(
            "{}: no finished runs to plot",
            dir.display()
        )));
    }
    let out = dir.join("plots");
    std::fs::create_dir_all(&out).map_err(|e| AgentError::io(&out, e))?;
    let mut files = Vec::new();
    for env in &spec.envs {
        let mut groups: BTreeMap<String, Vec<&Vec<MetricRow>>> = BTreeMap::new();
        for (id, rows) in &metrics {
            if id.starts_with(&format!("{}.", crate::sweep::sanitize(env))) {
                groups
                    .entry(
                        series_key(id)
                            .trim_start_matches(&format!("{}.", crate::sweep::sanitize(env)))
                            .to_string(),
                    )
                    .or_default()
                    .push(rows);
            }
        }
        if groups.is_empty() {
            continue;
        }
        let ser = |x: &str, y: &str| -> Series {
            groups
                .iter()
                .map(|(k, runs)| (k.clone(), curve(runs, x, y)))
                .filter(|(_, c)| !c.is_empty())
                .collect()
        };
        let g = metric::EVAL_GOLD_REWARD;
        let panel =
            |title: String, xlabel: &str, ylabel: &str, series: Series, band, lines| Panel {
                title,
                xlabel: xlabel.into(),
                ylabel: ylabel.into(),
                series,
                band,
                lines,
                markers: vec![],
            };
        files.extend(figure(
            &out.join(format!("{}-curves", crate::sweep::sanitize(env))),
            &[
                panel(
                    format!("{env}: gold reward vs updates"),
                    "updates",
                    "gold reward (median, min–max over seeds)",
                    ser("step", g),
                    true,
                    true,
                ),
                panel(
                    format!("{env}: gold reward vs samples"),
                    "samples (episodes)",
                    "gold reward",
                    ser(metric::BUDGET_SAMPLES, g),
                    true,
                    true,
                ),
                panel(
                    format!("{env}: gold reward vs wall time"),
                    "wall time (s)",
                    "gold reward",
                    ser(metric::BUDGET_WALL_SECONDS, g),
                    true,
                    true,
                ),
            ],
        )?);
        files.extend(figure(
            &out.join(format!("{}-frontier", crate::sweep::sanitize(env))),
            &[panel(
                format!("{env}: gold reward vs KL(π‖π_ref)"),
                "KL(π‖π_ref) (nats)",
                "gold reward (median over seeds)",
                ser(metric::EVAL_KL_TO_REF, g),
                false,
                true,
            )],
        )?);
        // The frontier over each agent's grid, with its spread over seeds (the DPO paper's
        // figure), when some agent sweeps a knob.
        if spec.agents.iter().any(|a| !a.grid.is_empty()) {
            let (grid, bands) = crate::verdict::frontier_bands(&spec, &metrics, env, 16);
            let series: Series = bands
                .into_iter()
                .map(|(name, b)| {
                    let pts = grid
                        .iter()
                        .zip(b)
                        .filter_map(|(&k, q)| {
                            q.map(|q| CurvePoint {
                                x: k,
                                y: q.median,
                                lo: q.q25,
                                hi: q.q75,
                            })
                        })
                        .collect();
                    (name, pts)
                })
                .filter(|(_, p): &(String, Vec<_>)| !p.is_empty())
                .collect();
            if !series.is_empty() {
                files.extend(figure(
                    &out.join(format!("{}-frontier-bands", crate::sweep::sanitize(env))),
                    &[panel(
                        format!("{env}: best gold reward at each KL over each agent's grid"),
                        "KL(π‖π_ref) (nats)",
                        "gold reward (median and IQR over seeds)",
                        series,
                        true,
                        true,
                    )],
                )?);
            }
        }
        // Over-optimisation: proxy and gold against √KL for the agents that optimise a learned
        // reward, with each run's gold-reward peak marked. An RL agent is a curve over its
        // evaluations; best-of-n one curve over its grid of n (each run's final evaluation).
        let mut over: Series = Vec::new();
        let mut peaks: Vec<(f64, f64)> = Vec::new();
        let sq = |c: Vec<CurvePoint>| {
            c.into_iter()
                .map(|p| CurvePoint {
                    x: p.x.max(0.0).sqrt(),
                    ..p
                })
                .collect::<Vec<_>>()
        };
        let all_runs = spec.runs();
        for a in spec
            .agents
            .iter()
            .filter(|a| a.reward == crate::sweep::SweepReward::Rm)
        {
            let mut by_point: BTreeMap<String, Vec<&Vec<MetricRow>>> = BTreeMap::new();
            for r in all_runs
                .iter()
                .filter(|r| &r.env == env && r.agent.name == a.name)
            {
                if let Some(rows) = metrics.get(&r.id) {
                    let label: Vec<String> =
                        r.point.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    by_point.entry(label.join(",")).or_default().push(rows);
                }
            }
            if by_point.is_empty() {
                continue;
            }
            let runs: Vec<&Vec<MetricRow>> = by_point.values().flatten().copied().collect();
            if !a.agent.trains() {
                // Per n: the median over seeds of the final (KL, reward).
                let last_of = |m: &str| -> Vec<CurvePoint> {
                    let mut pts: Vec<CurvePoint> = by_point
                        .values()
                        .filter_map(|rs| curve(rs, metric::EVAL_KL_TO_REF, m).last().copied())
                        .collect();
                    pts.sort_by(|a, b| a.x.total_cmp(&b.x));
                    sq(pts)
                };
                over.push((
                    format!("{} proxy", a.name),
                    last_of(metric::EVAL_PROXY_REWARD),
                ));
                over.push((format!("{} gold", a.name), last_of(g)));
            } else {
                for (point, rs) in &by_point {
                    let name = if by_point.len() > 1 {
                        format!("{} {point}", a.name)
                    } else {
                        a.name.clone()
                    };
                    over.push((
                        format!("{name} proxy"),
                        sq(curve(rs, metric::EVAL_KL_TO_REF, metric::EVAL_PROXY_REWARD)),
                    ));
                    over.push((
                        format!("{name} gold"),
                        sq(curve(rs, metric::EVAL_KL_TO_REF, g)),
                    ));
                }
            }
            peaks.extend(runs.iter().filter_map(|r| {
                crate::verdict::kl_gold_curve(r)
                    .into_iter()
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .map(|(kl, gold)| (kl.max(0.0).sqrt(), gold))
            }));
        }
        over.retain(|(_, pts)| !pts.is_empty());
        if !over.is_empty() {
            let mut p = panel(
                format!("{env}: proxy and gold reward vs √KL"),
                "√KL(π‖π_ref) (√nats)",
                "reward (median over seeds)",
                over,
                false,
                true,
            );
            p.markers = vec![("gold peak of each run".into(), peaks)];
            files.extend(figure(
                &out.join(format!("{}-overoptimisation", crate::sweep::sanitize(env))),
                &[p],
            )?);
        }
    }
    Ok(files)
}
