//! `aligngym claims`: every claim sweep of `src/sweeps/` (each with its decision rule), the shared
//! stages built once for all of them, and one report — a verdict table first (claim × task), then
//! a section per claim with its figures — as `report.md`, a self-contained `report.html` and a tidy
//! `verdicts.csv`. Resumes like a sweep.

use crate::sweep::{run_sweep, Part, SweepOptions, SweepSpec};
use crate::verdict::{self, ClaimVerdict};
use aligngym_agents::{AgentError, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The claim specs, embedded so the command runs from any directory: (file name, text).
pub const CLAIM_SPECS: &[(&str, &str)] = &[
    ("dpo-cheaper.toml", include_str!("sweeps/dpo-cheaper.toml")),
    (
        "ppo-aligns-better.toml",
        include_str!("sweeps/ppo-aligns-better.toml"),
    ),
    (
        "dpo-distribution-shift.toml",
        include_str!("sweeps/dpo-distribution-shift.toml"),
    ),
    (
        "ppo-hyperparameter-sensitivity.toml",
        include_str!("sweeps/ppo-hyperparameter-sensitivity.toml"),
    ),
    (
        "ppo-reward-quality.toml",
        include_str!("sweeps/ppo-reward-quality.toml"),
    ),
    (
        "ppo-long-horizon.toml",
        include_str!("sweeps/ppo-long-horizon.toml"),
    ),
    (
        "dpo-frontier.toml",
        include_str!("sweeps/dpo-frontier.toml"),
    ),
    (
        "lora-matches-full.toml",
        include_str!("sweeps/lora-matches-full.toml"),
    ),
];

/// How `aligngym claims` runs.
#[derive(Debug, Clone)]
pub struct ClaimsOptions {
    /// Multiplies every spec's scale (updates, SFT steps, preference pairs).
    pub scale: f64,
    /// Seeds 0..N instead of each spec's.
    pub seeds: Option<u64>,
    /// These envs instead of each spec's (a quick look, or a test).
    pub envs: Option<Vec<String>>,
    /// Only the claims with these names (all when empty).
    pub only: Vec<String>,
    /// Runs at once.
    pub jobs: usize,
    /// Device of every stage and run.
    pub device: aligngym_agents::DeviceChoice,
    /// `run.dtype` of every run.
    pub dtype: String,
    /// No progress output.
    pub quiet: bool,
}

/// The claim specs with the options applied, validated.
pub fn claim_specs(o: &ClaimsOptions) -> Result<Vec<SweepSpec>> {
    let mut out = Vec::new();
    for (file, text) in CLAIM_SPECS {
        let mut s = SweepSpec::parse(text, Path::new(&format!("src/sweeps/{file}")))?;
        if !o.only.is_empty() && !o.only.contains(&s.name) {
            continue;
        }
        s.scale *= o.scale;
        if let Some(n) = o.seeds {
            s.seeds = (0..n.max(1)).collect();
        }
        if let Some(e) = &o.envs {
            s.envs = e.clone();
        }
        for a in &mut s.agents {
            a.set.insert("run.dtype".into(), o.dtype.clone().into());
        }
        s.validate()
            .map_err(|e| AgentError::Data(format!("src/sweeps/{file}: {e}")))?;
        out.push(s);
    }
    for n in &o.only {
        if !out.iter().any(|s| &s.name == n) {
            return Err(AgentError::config(
                "--only",
                format!(
                    "no claim named `{n}`; the claims are {}",
                    CLAIM_SPECS
                        .iter()
                        .map(|(f, _)| f.trim_end_matches(".toml"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    Ok(out)
}

/// A claim's sweep folder, its `stages` a link to the claims folder's own so that stages with
/// equal configs (the SFT policy of an env, the on-policy pairs and their reward model) are built
/// once for every claim.
fn claim_dir(out: &Path, name: &str) -> Result<PathBuf> {
    let dir = out.join(name);
    std::fs::create_dir_all(&dir).map_err(|e| AgentError::io(&dir, e))?;
    std::fs::create_dir_all(out.join("stages")).map_err(|e| AgentError::io(out, e))?;
    let link = dir.join("stages");
    if std::fs::symlink_metadata(&link).is_err() {
        #[cfg(unix)]
        std::os::unix::fs::symlink("../stages", &link).map_err(|e| AgentError::io(&link, e))?;
        #[cfg(not(unix))]
        std::fs::create_dir_all(&link).map_err(|e| AgentError::io(&link, e))?;
    }
    Ok(dir)
}

/// What `run_claims` did.
pub struct ClaimsOutcome {
    /// The verdicts of every claim that has results.
    pub verdicts: Vec<ClaimVerdict>,
    /// Claims some of whose runs failed, with the error.
    pub failed: Vec<(String, String)>,
}

/// Run every claim sweep into `out/<claim>/` and write `out/report.md`, `out/report.html` and
/// `out/verdicts.csv`.
pub fn run_claims(out: &Path, o: &ClaimsOptions, command: &str) -> Result<ClaimsOutcome> {
    let specs = claim_specs(o)?;
    let t0 = Instant::now();
    let mut failed = Vec::new();
    let total_runs: usize = specs.iter().map(|s| s.runs().len()).sum();
    if !o.quiet {
        eprintln!(
            "aligngym claims: {} claim(s), {total_runs} runs in all, into {}",
            specs.len(),
            out.display()
        );
    }
    for (i, s) in specs.iter().enumerate() {
        let dir = claim_dir(out, &s.name)?;
        if !o.quiet {
            eprintln!(
                "claim {}/{} {}: {} runs on {} (elapsed {})",
                i + 1,
                specs.len(),
                s.name,
                s.runs().len(),
                s.envs.join(", "),
                crate::commands::hms(t0.elapsed().as_secs_f64())
            );
        }
        let r = run_sweep(
            s,
            &dir,
            &SweepOptions {
                jobs: o.jobs,
                shard: None,
                device: o.device,
                threads: None,
                part: Part::All,
                quiet: o.quiet,
            },
        );
        if let Err(e) = r {
            // The runs that finished still answer; the report says which claims are incomplete.
            eprintln!("claim {}: {e}", s.name);
            failed.push((s.name.clone(), e.to_string()));
        }
        if dir.join("metrics.csv").exists() {
            if let Err(e) = crate::plot::plot_sweep(&dir) {
                eprintln!("claim {}: {e}", s.name);
            }
            crate::report::write_report(&dir)?;
        }
    }
    let mut verdicts = Vec::new();
    let mut collapses = Vec::new();
    for s in &specs {
        let dir = out.join(&s.name);
        if !dir.join("metrics.csv").exists() {
            continue;
        }
        let metrics = crate::plot::read_sweep_metrics(&dir)?;
        // The claim's rule, then any further ones (the tuned pair's beside the untuned).
        for v in verdict::evaluate_all(s, &metrics) {
            collapses.extend(collapsed_sides(s, &v, &metrics));
            verdicts.push(v);
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let summary = Summary {
        command: command.to_string(),
        wall_seconds: wall,
        failed: failed.clone(),
        shared_collapses: shared_collapses(&collapses),
    };
    let md = report_md(out, &specs, &verdicts, &summary)?;
    crate::commands::write_atomic(&out.join("report.md"), &md)?;
    let html = crate::html::report_html(&md, out, "aligngym claims")?;
    crate::commands::write_atomic(&out.join("report.html"), &html)?;
    crate::commands::write_atomic(&out.join("verdicts.csv"), &verdicts_csv(&verdicts))?;
    Ok(ClaimsOutcome { verdicts, failed })
}

/// How the report was made.
struct Summary {
    command: String,
    wall_seconds: f64,
    failed: Vec<(String, String)>,
    /// One sentence per agent whose collapse on a task decided verdicts in several claims.
    shared_collapses: Vec<String>,
}

/// A side of a decided verdict whose series collapsed: which claim, task and agent, and how many
/// of its runs.
#[derive(Debug, Clone, PartialEq)]
struct CollapsedSide {
    claim: String,
    env: String,
    agent: String,
    collapsed: usize,
    runs: usize,
}

/// The sides of `v`'s decided verdicts (holds or refuted) with collapsed runs (see
/// [`crate::convergence`]; each grid point of an agent is a series of its own).
fn collapsed_sides(
    spec: &SweepSpec,
    v: &ClaimVerdict,
    metrics: &std::collections::BTreeMap<String, Vec<crate::metrics::MetricRow>>,
) -> Vec<CollapsedSide> {
    let mut out = Vec::new();
    for t in v
        .tasks
        .iter()
        .filter(|t| t.verdict != verdict::Verdict::Inconclusive)
    {
        for agent in [&v.rule.a, &v.rule.b] {
            let (collapsed, runs) = verdict::series_health(spec, metrics, &t.env, agent)
                .iter()
                .fold((0, 0), |(c, n), h| (c + h.collapsed, n + h.runs));
            if collapsed > 0 {
                out.push(CollapsedSide {
                    claim: v.name.clone(),
                    env: t.env.clone(),
                    agent: agent.clone(),
                    collapsed,
                    runs,
                });
            }
        }
    }
    out
}

/// A sentence for each agent and task whose collapsed runs decided verdicts in more than one
/// claim: one failure read as several findings.
fn shared_collapses(sides: &[CollapsedSide]) -> Vec<String> {
    let mut by: std::collections::BTreeMap<(&str, &str), Vec<&CollapsedSide>> = Default::default();
    for s in sides {
        by.entry((s.agent.as_str(), s.env.as_str()))
            .or_default()
            .push(s);
    }
    by.into_iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|((agent, env), v)| {
            let claims: Vec<String> = v
                .iter()
                .map(|s| format!("{} ({} of {} runs)", s.claim, s.collapsed, s.runs))
                .collect();
            format!(
                "`{agent}` collapsed on {env} in {} claims, and its collapse decides each of their verdicts there: {}. Read them as one failure of `{agent}` on {env}, not {} findings.",
                v.len(),
                claims.join(", "),
                v.len()
            )
        })
        .collect()
}

/// The combined markdown: verdicts first, then each claim's own report with its figure paths made
/// relative to `out`.
fn report_md(
    out: &Path,
    specs: &[SweepSpec],
    verdicts: &[ClaimVerdict],
    s: &Summary,
) -> Result<String> {
    let mut md = String::from("# Claims, as measured\n\n");
    md.push_str(&format!(
        "`{}` — this call took {} (finished runs are reused on resume).\n\n",
        s.command,
        crate::commands::hms(s.wall_seconds)
    ));
    md.push_str("## Verdicts\n\n");
    md.push_str("Each claim's decision rule is fixed in its spec (`src/sweeps/`) before the runs. **holds**: the interval clears the margin in the claimed direction; **refuted**: it lies below the margin; **inconclusive**: neither. One-sided tests at (1 − confidence)/2, Holm-corrected over each claim's tasks; the interval is the unadjusted two-sided one; p is that of the verdict's test (of \"no effect beyond the margin\", or for a refutation of \"the claimed effect\"). Effects are a − b (rewards) or a / b (costs, spreads).\n\n");
    md.push_str(&verdict::markdown_table(verdicts));
    md.push('\n');
    for v in verdicts {
        for t in &v.tasks {
            if !t.detail.is_empty() {
                md.push_str(&format!("- {} on {}: {}.\n", v.name, t.env, t.detail));
            }
        }
    }
    for line in &s.shared_collapses {
        md.push_str(&format!("\n**One collapse, several verdicts.** {line}\n"));
    }
    if !s.failed.is_empty() {
        md.push_str("\n**Incomplete:**\n\n");
        for (n, e) in &s.failed {
            md.push_str(&format!("- {n}: {e}\n"));
        }
    }
    md.push('\n');
    for spec in specs {
        let p = out.join(&spec.name).join("report.md");
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        // Demote the claim's headings one level and point its figures into its folder.
        for line in text.lines() {
            let line = if line.starts_with('#') {
                format!("#{line}")
            } else {
                line.replace("](plots/", &format!("]({}/plots/", spec.name))
            };
            md.push_str(&line);
            md.push('\n');
        }
        md.push('\n');
    }
    Ok(md)
}

/// One row per claim × task.
/// The verdicts a `verdicts.csv` holds (as [`verdicts_csv`] writes them), for `claims --table`:
/// consecutive rows of one claim and rule make one verdict. Errors name the file and the line.
pub fn read_verdicts_csv(path: &Path) -> Result<Vec<ClaimVerdict>> {
    let bad =
        |line: usize, msg: String| AgentError::Data(format!("{}:{line}: {msg}", path.display()));
    let mut r = csv::Reader::from_path(path).map_err(|e| bad(0, e.to_string()))?;
    let header = r.headers().map_err(|e| bad(1, e.to_string()))?.clone();
    let mut out: Vec<ClaimVerdict> = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|e| bad(line, e.to_string()))?;
        let get = |name: &str| -> Result<&str> {
            header
                .iter()
                .position(|h| h == name)
                .and_then(|k| rec.get(k))
                .ok_or_else(|| bad(line, format!("no column `{name}`")))
        };
        // A spec word (`holds`, `gold_at_kl`, …) as its enum.
        fn word<T: serde::de::DeserializeOwned>(s: &str) -> Option<T> {
            serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
        }
        let parse = |name: &str| -> Result<f64> {
            get(name)?
                .parse()
                .map_err(|_| bad(line, format!("column `{name}`: expected a number")))
        };
        let rule = verdict::DecisionRule {
            quantity: word(get("quantity")?)
                .ok_or_else(|| bad(line, "column `quantity`: not a quantity".into()))?,
            a: get("a")?.to_string(),
            b: get("b")?.to_string(),
            direction: word(get("direction")?)
                .ok_or_else(|| bad(line, "column `direction`: expected greater or less".into()))?,
            statistic: word(get("statistic")?)
                .ok_or_else(|| bad(line, "column `statistic`: not a statistic".into()))?,
            confidence: parse("confidence")?,
            margin: parse("margin")?,
        };
        let effect = if get("effect")?.is_empty() {
            None
        } else {
            Some(verdict::Effect {
                value: parse("effect")?,
                lo: parse("lo")?,
                hi: parse("hi")?,
                p_holds: parse("p_holds_holm")?,
                p_refuted: parse("p_refuted_holm")?,
                rank_biserial: None,
                medians: (parse("median_a")?, parse("median_b")?),
            })
        };
        let count = |name: &str| -> Result<usize> {
            get(name)?
                .parse()
                .map_err(|_| bad(line, format!("column `{name}`: expected a count")))
        };
        let verdict_of = |name: &str| -> Result<Option<verdict::Verdict>> {
            match get(name)? {
                "" => Ok(None),
                v => word(v).map(Some).ok_or_else(|| {
                    bad(
                        line,
                        format!("column `{name}`: expected holds, refuted or inconclusive"),
                    )
                }),
            }
        };
        let task = verdict::TaskVerdict {
            env: get("env")?.to_string(),
            verdict: verdict_of("verdict")?
                .ok_or_else(|| bad(line, "column `verdict`: empty".into()))?,
            effect,
            seeds: (count("seeds_a")?, count("seeds_b")?),
            detail: get("detail")?.to_string(),
            not_converged: get("not_converged")?
                .split_whitespace()
                .map(String::from)
                .collect(),
            at_half_budget: verdict_of("at_half_budget")?,
        };
        let name = get("claim")?;
        match out.last_mut() {
            Some(v) if v.name == name && v.rule == rule => v.tasks.push(task),
            _ => out.push(ClaimVerdict {
                name: name.to_string(),
                claim: String::new(),
                rule,
                tasks: vec![task],
            }),
        }
    }
    Ok(out)
}

fn verdicts_csv(verdicts: &[ClaimVerdict]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record([
        "claim",
        "env",
        "verdict",
        "quantity",
        "a",
        "b",
        "direction",
        "statistic",
        "confidence",
        "margin",
        "effect",
        "lo",
        "hi",
        "p_holds_holm",
        "p_refuted_holm",
        "median_a",
        "median_b",
        "seeds_a",
        "seeds_b",
        "detail",
        "not_converged",
        "at_half_budget",
    ]);
    let f = |x: f64| x.to_string();
    for v in verdicts {
        let r = &v.rule;
        for t in &v.tasks {
            let e = t.effect.as_ref();
            let g =
                |pick: &dyn Fn(&verdict::Effect) -> f64| e.map_or(String::new(), |e| f(pick(e)));
            let _ = w.write_record([
                v.name.clone(),
                t.env.clone(),
                t.verdict.to_string(),
                verdict::spec_name(r.quantity),
                r.a.clone(),
                r.b.clone(),
                verdict::spec_name(r.direction),
                verdict::spec_name(r.statistic),
                f(r.confidence),
                f(r.margin),
                g(&|e| e.value),
                g(&|e| e.lo),
                g(&|e| e.hi),
                g(&|e| e.p_holds),
                g(&|e| e.p_refuted),
                g(&|e| e.medians.0),
                g(&|e| e.medians.1),
                t.seeds.0.to_string(),
                t.seeds.1.to_string(),
                t.detail.clone(),
                t.not_converged.join(" "),
                t.at_half_budget.map_or(String::new(), |v| v.to_string()),
            ]);
        }
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::MetricRow;
    use crate::verdict::{Direction, Quantity, Statistic};

    /// A run whose gold reward goes from 0.4 to `end` over three evaluations.
    fn run(end: f64) -> Vec<MetricRow> {
        [(0u64, 0.4), (10, (0.4 + end) / 2.0), (20, end)]
            .into_iter()
            .map(|(step, value)| MetricRow {
                step,
                metric: aligngym_agents::metric::EVAL_GOLD_REWARD.into(),
                value,
            })
            .collect()
    }

    #[test]
    fn one_collapse_deciding_several_claims_is_named_once() {
        let env = "arithmetic-v0";
        let mut spec = crate::sweep::compare_spec(env, 3, 1.0).unwrap();
        spec.rule = Some(crate::verdict::DecisionRule {
            quantity: Quantity::FinalGold,
            a: "ppo-rm".into(),
            b: "dpo".into(),
            direction: Direction::Greater,
            statistic: Statistic::Bootstrap,
            confidence: 0.95,
            margin: 0.0,
        });
        // ppo-rm: two runs end just under their start (0.38), one falls to 0: a drop of 0.4, more
        // than the spread of the finals (0.38), so that run collapsed; dpo rises.
        let mut metrics = std::collections::BTreeMap::new();
        for r in spec.runs() {
            let end = match (r.agent.name.as_str(), r.seed) {
                ("ppo-rm", 0) => 0.0,
                ("ppo-rm", _) => 0.38,
                _ => 0.6,
            };
            metrics.insert(r.id.clone(), run(end));
        }
        let decided = |name: &str, verdict| ClaimVerdict {
            name: name.into(),
            claim: String::new(),
            rule: spec.rule.clone().unwrap(),
            tasks: vec![crate::verdict::TaskVerdict {
                env: env.into(),
                verdict,
                effect: None,
                seeds: (3, 3),
                detail: String::new(),
                not_converged: Vec::new(),
                at_half_budget: None,
            }],
        };
        let mut sides = Vec::new();
        for name in ["ppo-aligns-better", "dpo-cheaper"] {
            sides.extend(collapsed_sides(
                &spec,
                &decided(name, crate::verdict::Verdict::Refuted),
                &metrics,
            ));
        }
        // An undecided verdict is driven by nothing.
        let undecided = decided("ppo-long-horizon", crate::verdict::Verdict::Inconclusive);
        assert!(collapsed_sides(&spec, &undecided, &metrics).is_empty());
        assert_eq!(sides.len(), 2, "{sides:?}");
        assert!(sides
            .iter()
            .all(|s| s.agent == "ppo-rm" && s.collapsed == 1 && s.runs == 3));
        let lines = shared_collapses(&sides);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("`ppo-rm` collapsed on arithmetic-v0 in 2 claims")
                && lines[0].contains("ppo-aligns-better (1 of 3 runs), dpo-cheaper (1 of 3 runs)"),
            "{}",
            lines[0]
        );
        // In one claim only, it is that claim's own finding.
        assert!(shared_collapses(&sides[..1]).is_empty());
    }

    #[test]
    fn a_verdicts_csv_reads_back_and_a_bad_row_names_its_line() {
        let dir = std::env::temp_dir().join(format!("aligngym-verdicts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let head = "claim,env,verdict,quantity,a,b,direction,statistic,confidence,margin,effect,lo,hi,p_holds_holm,p_refuted_holm,median_a,median_b,seeds_a,seeds_b,detail,not_converged,at_half_budget\n";
        let good = "c,e1,holds,final_gold,x,y,greater,bootstrap,0.95,0,0.25,0.1,0.4,0.001,1,0.5,0.25,5,5,,,\n\
                    c,e2,inconclusive,final_gold,x,y,greater,bootstrap,0.95,0,,,,,,,,2,2,too few,x,holds\n";
        let p = dir.join("v.csv");
        std::fs::write(&p, format!("{head}{good}")).unwrap();
        let v = read_verdicts_csv(&p).unwrap();
        assert_eq!(v.len(), 1, "one claim and rule, two tasks");
        let t = &v[0].tasks;
        assert_eq!(
            (t[0].verdict, t[0].effect.as_ref().unwrap().value),
            (verdict::Verdict::Holds, 0.25)
        );
        assert!(t[1].effect.is_none());
        assert_eq!(t[1].not_converged, vec!["x".to_string()]);
        assert_eq!(t[1].at_half_budget, Some(verdict::Verdict::Holds));
        std::fs::write(
            &p,
            format!(
                "{head}{}",
                good.replace("holds,final_gold", "maybe,final_gold")
            ),
        )
        .unwrap();
        let e = read_verdicts_csv(&p).unwrap_err().to_string();
        assert!(e.contains("v.csv:2: column `verdict`"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_claim_spec_parses_with_a_rule_on_enough_tasks_and_seeds() {
        let o = ClaimsOptions {
            scale: 1.0,
            seeds: None,
            envs: None,
            only: vec![],
            jobs: 1,
            device: aligngym_agents::DeviceChoice::Cpu,
            dtype: "fp32".into(),
            quiet: true,
        };
        let specs = claim_specs(&o).unwrap();
        assert_eq!(specs.len(), CLAIM_SPECS.len());
        for s in &specs {
            assert!(s.rule.is_some(), "{} has no rule", s.name);
            assert!(s.seeds.len() >= 5, "{}: {} seeds", s.name, s.seeds.len());
            // The frontier is the DPO paper's sentiment task; every other claim mixes ≥ 3 tasks,
            // a rule-reward one and an oracle-only one among them.
            if s.name != "dpo-frontier" {
                assert!(s.envs.len() >= 3, "{}", s.name);
            }
        }
        // Issue 35's equal tuning: "PPO aligns better" is also decided tuned against tuned.
        let pab = specs
            .iter()
            .find(|s| s.name == "ppo-aligns-better")
            .unwrap();
        let tuned = |n: &str| {
            pab.agents
                .iter()
                .find(|a| a.name == n)
                .unwrap()
                .configurations()
        };
        assert!(
            pab.rules
                .iter()
                .any(|r| tuned(&r.a) > 1 && tuned(&r.a) == tuned(&r.b)),
            "{:?}",
            pab.rules
        );
        let only = ClaimsOptions {
            only: vec!["no-such-claim".into()],
            ..o
        };
        let e = claim_specs(&only).err().unwrap().to_string();
        assert!(e.contains("dpo-cheaper"), "{e}");
    }
}
