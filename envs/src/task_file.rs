//! Tasks as data: a TOML file names a JSONL or Parquet file of prompts with reference answers and the verifiers
//! whose weighted mean is the gold reward. `task:PATH` goes wherever an env id goes (`--env`,
//! sweep specs); the file is read once per process and registered under that id.
//!
//! ```toml
//! description = "grade-school arithmetic word problems"
//! prompts = "problems.jsonl"         # {"prompt": …, "answer": …, "solution"?: …, "split"?: …}
//! corpus = "solution"                # SFT: each training prompt completed by this column
//! [[verifiers]]
//! kind = "final_answer"              # \boxed{…} or "#### …", against `answer`
//! weight = 0.8
//! [[verifiers]]
//! kind = "max_words"
//! n = 60
//! weight = 0.2
//! ```

use crate::chat::Message;
use crate::reward::Rule;
use crate::task::{Feedback, PromptSplit, Split, Task};
use crate::{EnvError, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The prefix that marks an env id as a task file.
pub const TASK_PREFIX: &str = "task:";

/// A task file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskFileSpec {
    /// What a good completion is, for listings. Default: what the verifiers check.
    #[serde(default)]
    description: String,
    /// The prompts: a JSONL file, or a Parquet file (by its `.parquet` extension), relative to
    /// the task file.
    prompts: PathBuf,
    /// The column of the prompts file whose text completes each training prompt in the SFT
    /// corpus (e.g. `solution`, `answer`). None: no corpus; start from a pretrained `--policy`.
    #[serde(default)]
    corpus: Option<String>,
    /// Where the file has no `split` column, every this many prompts one is held out for
    /// evaluation (after a fixed shuffle). Default 5.
    #[serde(default = "default_eval_every")]
    eval_every: usize,
    /// Completion length limit in tokens. Default 32.
    #[serde(default = "default_max_new_tokens")]
    max_new_tokens: usize,
    /// SFT steps for a policy trained from scratch on the corpus. Default 600.
    #[serde(default = "default_sft_steps")]
    sft_steps: usize,
    /// Text between a prompt and its completion in the corpus. Default one space.
    #[serde(default = "default_separator")]
    separator: String,
    /// The gold reward: the verifiers' weighted mean, in [0, 1].
    verifiers: Vec<VerifierSpec>,
}

fn default_eval_every() -> usize {
    5
}
fn default_max_new_tokens() -> usize {
    32
}
fn default_sft_steps() -> usize {
    600
}
fn default_separator() -> String {
    " ".into()
}
fn one() -> f64 {
    1.0
}

/// A built-in check of a completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifierKind {
    /// The completion equals the prompt's `answer` after normalisation (case, surrounding space
    /// and punctuation, runs of spaces).
    ExactMatch,
    /// The completion's last number is within `tolerance` of the numeric `answer`.
    Numeric,
    /// The final answer — the last `\boxed{…}`, else what follows the last `####` — equals the
    /// `answer` (numerically within `tolerance` where both are numbers, else normalised).
    FinalAnswer,
    /// The completion matches `pattern` (a regular expression).
    Regex,
    /// The share of `words` the completion contains (case-insensitive).
    Contains,
    /// 1 when the completion contains none of `words` (case-insensitive), else 0.
    Excludes,
    /// 1 when the completion has at most `n` words, else 0.
    MaxWords,
    /// The completion parses as a JSON object holding every key of `keys`.
    Json,
}

impl VerifierKind {
    /// The name a task file writes.
    pub fn name(self) -> &'static str {
        match self {
            Self::ExactMatch => "exact_match",
            Self::Numeric => "numeric",
            Self::FinalAnswer => "final_answer",
            Self::Regex => "regex",
            Self::Contains => "contains",
            Self::Excludes => "excludes",
            Self::MaxWords => "max_words",
            Self::Json => "json",
        }
    }
}

/// One verifier as written: its kind, its weight and the fields its kind reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifierSpec {
    kind: VerifierKind,
    /// Weight in the mean. Default 1.
    #[serde(default = "one")]
    weight: f64,
    /// `numeric`, `final_answer`: absolute tolerance. Default 1e-6.
    #[serde(default)]
    tolerance: Option<f64>,
    /// `regex`: the pattern.
    #[serde(default)]
    pattern: Option<String>,
    /// `contains`, `excludes`: the words.
    #[serde(default)]
    words: Option<Vec<String>>,
    /// `max_words`: the limit.
    #[serde(default)]
    n: Option<usize>,
    /// `json`: the keys the object must hold.
    #[serde(default)]
    keys: Option<Vec<String>>,
}

/// A verifier ready to score.
#[derive(Debug, Clone)]
enum Check {
    ExactMatch,
    Numeric(f64),
    FinalAnswer(f64),
    Regex(regex::Regex),
    Contains(Vec<String>),
    Excludes(Vec<String>),
    MaxWords(usize),
    Json(Vec<String>),
}

impl Check {
    /// The verifier of `spec`, or what it lacks.
    fn new(spec: &VerifierSpec) -> std::result::Result<Self, String> {
        let need = |what: &str| format!("kind `{}` needs `{what}`", spec.kind.name());
        let words = || {
            spec.words
                .clone()
                .map(|w| w.iter().map(|x| x.to_lowercase()).collect())
                .ok_or_else(|| need("words"))
        };
        let tolerance = spec.tolerance.unwrap_or(1e-6);
        if !(tolerance >= 0.0 && tolerance.is_finite()) {
            return Err("`tolerance` must be a finite value ≥ 0".into());
        }
        Ok(match spec.kind {
            VerifierKind::ExactMatch => Check::ExactMatch,
            VerifierKind::Numeric => Check::Numeric(tolerance),
            VerifierKind::FinalAnswer => Check::FinalAnswer(tolerance),
            VerifierKind::Regex => {
                let p = spec.pattern.as_deref().ok_or_else(|| need("pattern"))?;
                Check::Regex(regex::Regex::new(p).map_err(|e| format!("`pattern`: {e}"))?)
            }
            VerifierKind::Contains => Check::Contains(words()?),
            VerifierKind::Excludes => Check::Excludes(words()?),
            VerifierKind::MaxWords => Check::MaxWords(spec.n.ok_or_else(|| need("n"))?),
            VerifierKind::Json => Check::Json(spec.keys.clone().unwrap_or_default()),
        })
    }

    /// Whether the check compares with the prompt's `answer`.
    fn needs_answer(&self) -> bool {
        matches!(
            self,
            Check::ExactMatch | Check::Numeric(_) | Check::FinalAnswer(_)
        )
    }

    /// The score in [0, 1] of `completion` for a prompt whose answer is `answer`.
    fn score(&self, completion: &str, answer: Option<&str>) -> f64 {
        let hit = |b: bool| if b { 1.0 } else { 0.0 };
        let lower = completion.to_lowercase();
        match self {
            Check::ExactMatch => hit(answer.is_some_and(|a| normalize(completion) == normalize(a))),
            Check::Numeric(tol) => hit(match (last_number(completion), answer.and_then(number)) {
                (Some(x), Some(a)) => (x - a).abs() <= *tol,
                _ => false,
            }),
            Check::FinalAnswer(tol) => hit(match (final_answer(completion), answer) {
                (Some(x), Some(a)) => match (number(x), number(a)) {
                    (Some(x), Some(a)) => (x - a).abs() <= *tol,
                    _ => normalize(x) == normalize(a),
                },
                _ => false,
            }),
            Check::Regex(re) => hit(re.is_match(completion)),
            Check::Contains(words) if words.is_empty() => 1.0,
            Check::Contains(words) => {
                words.iter().filter(|w| lower.contains(w.as_str())).count() as f64
                    / words.len() as f64
            }
            Check::Excludes(words) => hit(!words.iter().any(|w| lower.contains(w.as_str()))),
            Check::MaxWords(n) => hit(completion.split_whitespace().count() <= *n),
            Check::Json(keys) => hit(serde_json::from_str::<serde_json::Value>(completion.trim())
                .ok()
                .and_then(|v| v.as_object().cloned())
                .is_some_and(|o| keys.iter().all(|k| o.contains_key(k)))),
        }
    }
}

/// Lower case, surrounding spaces and `.,;:!?"'` stripped, runs of spaces made one.
pub fn normalize(s: &str) -> String {
    s.to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .trim_matches(|c: char| ".,;:!?\"'".contains(c) || c.is_whitespace())
        .to_string()
}

/// `s` as a number, read as answers are written: thousands commas, a leading `$`, a trailing
/// `%` or `.` allowed.
fn number(s: &str) -> Option<f64> {
    let t: String = s.trim().chars().filter(|c| *c != ',').collect();
    let t = t.trim_start_matches('$').trim_end_matches(['%', '.']);
    t.parse::<f64>().ok().filter(|x| x.is_finite())
}

/// The last number written in `s`.
fn last_number(s: &str) -> Option<f64> {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| regex::Regex::new(r"-?\d[\d,]*(?:\.\d+)?").expect("valid regex"));
    re.find_iter(s).last().and_then(|m| number(m.as_str()))
}

/// The content of the last `\boxed{…}` (braces nested), else the rest of the line after the
/// last `####`.
pub fn final_answer(s: &str) -> Option<&str> {
    if let Some(i) = s.rfind("\\boxed{") {
        let body = &s[i + "\\boxed{".len()..];
        let mut depth = 1;
        for (k, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(body[..k].trim());
                    }
                }
                _ => {}
            }
        }
        return None;
    }
    let i = s.rfind("####")?;
    s[i + 4..].lines().next().map(str::trim)
}

/// The gold reward of a task file.
struct Verifiers {
    name: String,
    checks: Vec<(Check, f64)>,
    answers: Arc<HashMap<String, String>>,
}

impl Rule for Verifiers {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn range(&self) -> (f32, f32) {
        (0.0, 1.0)
    }
    fn score(&self, prompt: &str, completion: &str) -> f32 {
        let answer = self.answers.get(prompt).map(String::as_str);
        let total: f64 = self.checks.iter().map(|c| c.1).sum();
        let s: f64 = self
            .checks
            .iter()
            .map(|(c, w)| w * c.score(completion, answer))
            .sum();
        (s / total) as f32
    }
}

/// A task read from a task file.
pub struct TaskFile {
    id: String,
    description: String,
    reward_kind: String,
    prompts: PromptSplit,
    /// Training prompts with their completions, for the SFT corpus.
    corpus: Vec<String>,
    gold: Arc<Verifiers>,
    max_new_tokens: usize,
    sft_steps: usize,
}

/// One prompt line of the prompts file.
struct PromptRow {
    prompt: String,
    answer: Option<String>,
    completion: Option<String>,
    split: Option<Split>,
    line: usize,
}

impl TaskFile {
    /// Read the task file at `path` (the env id is `task:PATH`); every error names the file, the
    /// line and the field.
    pub fn load(path: &Path) -> Result<Self> {
        let bad = |line: usize, msg: String| EnvError::BadData {
            path: path.to_path_buf(),
            line,
            msg,
        };
        let text = std::fs::read_to_string(path).map_err(|e| EnvError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let spec: TaskFileSpec = toml::from_str(&text).map_err(|e| {
            // The line holding the span's start: the newlines before it, plus one.
            let line = e.span().map_or(0, |s| {
                let before = text.get(..s.start).unwrap_or(&text);
                before.matches('\n').count() + 1
            });
            bad(line, e.message().to_string())
        })?;
        if spec.verifiers.is_empty() {
            return Err(bad(0, "field `verifiers`: expected at least one".into()));
        }
        if spec.eval_every < 2 {
            return Err(bad(0, "field `eval_every`: expected 2 or more".into()));
        }
        // The line of the i-th `[[verifiers]]` table, for errors that name one.
        let table_line = |i: usize| {
            text.lines()
                .enumerate()
                .filter(|(_, l)| l.trim() == "[[verifiers]]")
                .nth(i)
                .map_or(0, |(k, _)| k + 1)
        };
        let mut checks = Vec::new();
        for (i, v) in spec.verifiers.iter().enumerate() {
            if !(v.weight > 0.0 && v.weight.is_finite()) {
                return Err(bad(
                    table_line(i),
                    "field `weight`: expected a finite value > 0".into(),
                ));
            }
            let c = Check::new(v).map_err(|m| bad(table_line(i), format!("verifier: {m}")))?;
            checks.push((c, v.weight));
        }
        let data = path.parent().unwrap_or(Path::new(".")).join(&spec.prompts);
        let rows = read_prompts(&data, spec.corpus.as_deref())?;
        let needs_answer = checks.iter().any(|c| c.0.needs_answer());
        if let Some(r) = rows.iter().find(|r| needs_answer && r.answer.is_none()) {
            return Err(EnvError::BadData {
                path: data.clone(),
                line: r.line,
                msg: "field `answer`: missing, and a verifier compares with it".into(),
            });
        }
        let mut answers = HashMap::new();
        for r in &rows {
            if let Some(a) = &r.answer {
                if let Some(old) = answers.insert(r.prompt.clone(), a.clone()) {
                    if &old != a {
                        return Err(EnvError::BadData {
                            path: data.clone(),
                            line: r.line,
                            msg: format!(
                                "field `answer`: this prompt appeared earlier with answer `{old}`"
                            ),
                        });
                    }
                }
            }
        }
        let prompts = split_prompts(&rows, spec.eval_every);
        if prompts.get(Split::Train).is_empty() || prompts.get(Split::Eval).is_empty() {
            return Err(bad(
                0,
                format!(
                    "{}: needs prompts in both splits (train {}, eval {})",
                    data.display(),
                    prompts.get(Split::Train).len(),
                    prompts.get(Split::Eval).len()
                ),
            ));
        }
        let train: std::collections::HashSet<&str> = prompts
            .get(Split::Train)
            .iter()
            .map(String::as_str)
            .collect();
        let corpus = rows
            .iter()
            .filter(|r| train.contains(r.prompt.as_str()))
            .filter_map(|r| {
                let c = r.completion.as_ref()?;
                Some(format!("{}{}{c}", r.prompt, spec.separator))
            })
            .collect();
        let kinds: Vec<String> = spec
            .verifiers
            .iter()
            .map(|v| v.kind.name().to_string())
            .collect();
        let id = format!("{TASK_PREFIX}{}", path.display());
        Ok(Self {
            description: if spec.description.is_empty() {
                format!("a completion that passes {}", kinds.join(", "))
            } else {
                spec.description
            },
            reward_kind: format!("rule: verifiers ({}) in [0, 1]", kinds.join(" + ")),
            prompts,
            corpus,
            gold: Arc::new(Verifiers {
                name: format!("verifiers of {id}"),
                checks,
                answers: Arc::new(answers),
            }),
            max_new_tokens: spec.max_new_tokens.max(1),
            sft_steps: spec.sft_steps,
            id,
        })
    }
}

/// The rows of a prompts file: `prompt` as text or as messages, `answer`, the corpus column,
/// `split`.
fn read_prompts(path: &Path, corpus: Option<&str>) -> Result<Vec<PromptRow>> {
    let parquet = path.extension().is_some_and(|e| e == "parquet");
    let records = if parquet {
        parquet_records(path)?
    } else {
        jsonl_records(path)?
    };
    let mut rows = Vec::new();
    for (line, v) in records {
        let bad = |msg: String| EnvError::BadData {
            path: path.to_path_buf(),
            line,
            msg,
        };
        let v = v.map_err(bad)?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad("expected a JSON object".into()))?;
        let field = |name: &str| -> std::result::Result<Option<String>, EnvError> {
            match obj.get(name) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
                Some(_) => Err(bad(format!(
                    "field `{name}`: expected a string or a number"
                ))),
            }
        };
        let prompt = match obj.get("prompt") {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(serde_json::Value::Array(ms)) => {
                prompt_of_messages(ms).map_err(|m| bad(format!("field `prompt`: {m}")))?
            }
            Some(_) => {
                return Err(bad(
                    "field `prompt`: expected a non-empty string or a list of messages".into(),
                ))
            }
            None => return Err(bad("field `prompt`: missing".into())),
        };
        let split = match field("split")?.as_deref() {
            None => None,
            Some("train") => Some(Split::Train),
            Some("test" | "eval" | "validation") => Some(Split::Eval),
            Some(other) => {
                return Err(bad(format!(
                    "field `split`: expected train, test, eval or validation, found `{other}`"
                )))
            }
        };
        rows.push(PromptRow {
            prompt,
            answer: field("answer")?,
            completion: match corpus {
                Some(c) => field(c)?,
                None => None,
            },
            split,
            line,
        });
    }
    if rows.is_empty() {
        return Err(EnvError::BadData {
            path: path.to_path_buf(),
            line: 0,
            msg: "no prompts in file".into(),
        });
    }
    Ok(rows)
}

/// The lines of a JSONL file as JSON values, numbered from 1 (blank lines skipped).
fn jsonl_records(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).map_err(|e| EnvError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v = serde_json::from_str(l.trim_start_matches('\u{feff}'))
                .map_err(|e| format!("not JSON: {e}"));
            (i + 1, v)
        })
        .collect())
}

/// The rows of a Parquet file (the Hugging Face datasets layout: one row per example, lists of
/// message structs as lists) as JSON values, numbered from 1.
fn parquet_records(path: &Path) -> Result<Vec<Record>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).map_err(|e| EnvError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let bad = |line: usize, e: parquet::errors::ParquetError| EnvError::BadData {
        path: path.to_path_buf(),
        line,
        msg: format!("not a readable Parquet file: {e}"),
    };
    let reader = SerializedFileReader::new(file).map_err(|e| bad(0, e))?;
    let rows = reader.get_row_iter(None).map_err(|e| bad(0, e))?;
    rows.enumerate()
        .map(|(i, r)| Ok((i + 1, Ok(r.map_err(|e| bad(i + 1, e))?.to_json_value()))))
        .collect()
}

/// A record of a prompts file: its line (JSONL) or row (Parquet) number, and its value or why it
/// has none.
type Record = (usize, std::result::Result<serde_json::Value, String>);

/// The prompt text of a conversational prompt: one user message, after at most one system
/// message (whose text goes first, on a line of its own).
fn prompt_of_messages(ms: &[serde_json::Value]) -> std::result::Result<String, String> {
    let msgs: Vec<Message> = ms
        .iter()
        .map(|m| serde_json::from_value(m.clone()).map_err(|e| format!("a message: {e}")))
        .collect::<std::result::Result<_, _>>()?;
    let role = |m: &Message| m.role.as_str();
    match msgs.as_slice() {
        [u] if role(u) == "user" => Ok(u.content.clone()),
        [s, u] if role(s) == "system" && role(u) == "user" => {
            Ok(format!("{}\n{}", s.content, u.content))
        }
        _ => Err("expected one user message, optionally after one system message (multi-turn prompts are not read from task files yet)".into()),
    }
}

/// Train and eval prompts: the file's `split` column where it has one, else every
/// `eval_every`-th prompt after a fixed shuffle.
fn split_prompts(rows: &[PromptRow], eval_every: usize) -> PromptSplit {
    if rows.iter().any(|r| r.split.is_some()) {
        let pick = |s: Split| -> Vec<String> {
            let mut seen = std::collections::HashSet::new();
            rows.iter()
                .filter(|r| r.split.unwrap_or_default() == s)
                .filter(|r| seen.insert(r.prompt.clone()))
                .map(|r| r.prompt.clone())
                .collect()
        };
        let eval = pick(Split::Eval);
        let held: std::collections::HashSet<&String> = eval.iter().collect();
        let train = pick(Split::Train)
            .into_iter()
            .filter(|p| !held.contains(p))
            .collect();
        return PromptSplit::from_sets(train, eval);
    }
    let pool = rows.iter().map(|r| r.prompt.clone()).collect();
    PromptSplit::shuffled(pool, eval_every, 0x7a5c)
}

impl Task for TaskFile {
    fn id(&self) -> &str {
        &self.id
    }
    fn description(&self) -> &str {
        &self.description
    }
    fn reward_kind(&self) -> &str {
        &self.reward_kind
    }
    fn feedback(&self) -> Feedback {
        Feedback::Reward
    }
    fn corpus(&self, n: usize, seed: u64) -> Vec<String> {
        if self.corpus.is_empty() {
            return Vec::new();
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let mut order = self.corpus.clone();
            order.shuffle(&mut rng);
            out.extend(order.into_iter().take(n - out.len()));
        }
        out
    }
    fn prompts(&self, split: Split) -> &[String] {
        self.prompts.get(split)
    }
    fn gold(&self) -> Arc<dyn Rule> {
        self.gold.clone()
    }
    fn max_new_tokens(&self) -> usize {
        self.max_new_tokens
    }
    fn sft_steps(&self) -> usize {
        self.sft_steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_answers_numbers_and_normal_forms() {
        assert_eq!(
            final_answer("so \\boxed{\\frac{1}{2}} ok"),
            Some("\\frac{1}{2}")
        );
        assert_eq!(final_answer("work\n#### 1,234\nmore"), Some("1,234"));
        assert_eq!(final_answer("\\boxed{3} then #### 4"), Some("3"));
        assert_eq!(final_answer("\\boxed{3"), None);
        assert_eq!(final_answer("no answer"), None);
        assert_eq!(number("$1,234."), Some(1234.0));
        assert_eq!(number("12%"), Some(12.0));
        assert_eq!(number("twelve"), None);
        assert_eq!(last_number("3 apples, then -2.5 and 1,000"), Some(1000.0));
        assert_eq!(normalize("  The  Paris. "), "the paris");
    }

    fn spec(kind: VerifierKind) -> VerifierSpec {
        VerifierSpec {
            kind,
            weight: 1.0,
            tolerance: None,
            pattern: None,
            words: None,
            n: None,
            keys: None,
        }
    }

    fn check(kind: VerifierKind, f: impl FnOnce(&mut VerifierSpec)) -> Check {
        let mut s = spec(kind);
        f(&mut s);
        Check::new(&s).unwrap()
    }

    #[test]
    fn each_verifier_scores_by_hand() {
        let exact = check(VerifierKind::ExactMatch, |_| {});
        assert_eq!(exact.score(" Paris.", Some("paris")), 1.0);
        assert_eq!(exact.score("Paris, France", Some("paris")), 0.0);
        assert_eq!(exact.score("paris", None), 0.0);
        let num = check(VerifierKind::Numeric, |s| s.tolerance = Some(0.01));
        assert_eq!(num.score("it is 3.004", Some("3")), 1.0);
        assert_eq!(num.score("3 or maybe 4", Some("3")), 0.0);
        let fin = check(VerifierKind::FinalAnswer, |_| {});
        assert_eq!(fin.score("2+2 \\boxed{4}", Some("4.0")), 1.0);
        assert_eq!(fin.score("#### Paris", Some("paris")), 1.0);
        assert_eq!(fin.score("4", Some("4")), 0.0);
        let re = check(VerifierKind::Regex, |s| s.pattern = Some("^[A-Z]".into()));
        assert_eq!(re.score("Yes", None), 1.0);
        assert_eq!(re.score("yes", None), 0.0);
        let has = check(VerifierKind::Contains, |s| {
            s.words = Some(vec!["Please".into(), "thanks".into()])
        });
        assert_eq!(has.score("please go", None), 0.5);
        let not = check(VerifierKind::Excludes, |s| {
            s.words = Some(vec!["sorry".into()])
        });
        assert_eq!(not.score("Sorry!", None), 0.0);
        assert_eq!(not.score("fine", None), 1.0);
        let short = check(VerifierKind::MaxWords, |s| s.n = Some(2));
        assert_eq!(short.score("one two", None), 1.0);
        assert_eq!(short.score("one two three", None), 0.0);
        let json = check(VerifierKind::Json, |s| s.keys = Some(vec!["a".into()]));
        assert_eq!(json.score(r#" {"a": 1} "#, None), 1.0);
        assert_eq!(json.score(r#"{"b": 1}"#, None), 0.0);
        assert_eq!(json.score("[1]", None), 0.0);
    }

    #[test]
    fn a_task_file_loads_splits_and_names_the_line_of_a_bad_key() {
        let dir = std::env::temp_dir().join(format!("aligngym-task-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rows: String = (0..20)
            .map(|i| {
                let split = if i < 4 { "test" } else { "train" };
                format!(
                    "{{\"prompt\": \"{i}+1=\", \"answer\": {}, \"split\": \"{split}\"}}\n",
                    i + 1
                )
            })
            .collect();
        std::fs::write(dir.join("p.jsonl"), rows).unwrap();
        let toml = dir.join("t.toml");
        std::fs::write(
            &toml,
            "prompts = \"p.jsonl\"\n[[verifiers]]\nkind = \"numeric\"\n",
        )
        .unwrap();
        let t = TaskFile::load(&toml).unwrap();
        assert_eq!(t.prompts(Split::Eval).len(), 4, "the split column decides");
        assert_eq!(t.prompts(Split::Train).len(), 16);
        assert_eq!(t.gold().score("3+1=", " it is 4"), 1.0);
        assert!(t.corpus(5, 0).is_empty(), "no corpus column named");
        // An unknown key at the start of line 2: the error names line 2.
        std::fs::write(&toml, "prompts = \"p.jsonl\"\npromts = 1\n").unwrap();
        let e = TaskFile::load(&toml).err().unwrap().to_string();
        assert!(e.contains("t.toml:2:"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_kind_without_its_field_is_refused_by_name() {
        let mut s = spec(VerifierKind::Regex);
        assert_eq!(Check::new(&s).unwrap_err(), "kind `regex` needs `pattern`");
        s.pattern = Some("(".into());
        assert!(Check::new(&s).unwrap_err().starts_with("`pattern`:"));
    }
}
