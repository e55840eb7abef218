//! Rule rewards: scores computed from the text alone, with documented ranges.

use crate::reward::Rule;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// Lower-cased words of `text`: runs of letters, digits and apostrophes.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

/// A VADER-style lexicon sentiment scorer (Hutto & Gilbert 2014): word valences in [−4, 4], boosted
/// by intensifiers, flipped by negations within three words, re-weighted around "but", nudged by
/// exclamation marks, and squashed with `s / √(s² + 15)` into [−1, 1].
///
/// ```
/// use aligngym_envs::rules::Sentiment;
/// use aligngym_envs::Rule;
/// let s = Sentiment::default();
/// assert_eq!(s.score("", "the plot was a film"), 0.0);            // no sentiment words
/// assert!((s.score("", "great") - 0.6249).abs() < 1e-3);         // 3.1 / √(3.1² + 15)
/// assert!((s.score("", "not great") + 0.5096).abs() < 1e-3);     // −0.74 · 3.1 = −2.294
/// assert!(s.score("", "a truly wonderful movie!") > s.score("", "a wonderful movie"));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Sentiment;

const NEGATIONS: &[&str] = &[
    "not", "no", "never", "n't", "isn't", "wasn't", "didn't", "don't", "doesn't", "hardly",
    "without", "nothing", "neither", "nor", "can't", "cannot", "won't", "aren't", "weren't",
];
const BOOST: f32 = 0.293;
const NEGATE: f32 = -0.74;

fn boosters() -> &'static HashMap<&'static str, f32> {
    static B: OnceLock<HashMap<&'static str, f32>> = OnceLock::new();
    B.get_or_init(|| {
        let up = [
            "very",
            "really",
            "extremely",
            "so",
            "truly",
            "incredibly",
            "absolutely",
            "totally",
            "deeply",
            "most",
        ];
        let down = [
            "slightly", "barely", "somewhat", "kind", "sort", "fairly", "a bit", "mildly",
        ];
        up.iter()
            .map(|w| (*w, BOOST))
            .chain(down.iter().map(|w| (*w, -BOOST)))
            .collect()
    })
}

/// The valence lexicon: word → valence in [−4, 4] (values in the spirit of VADER's list).
pub fn lexicon() -> &'static HashMap<&'static str, f32> {
    static L: OnceLock<HashMap<&'static str, f32>> = OnceLock::new();
    L.get_or_init(|| {
        [
            ("good", 1.9),
            ("great", 3.1),
            ("excellent", 2.7),
            ("wonderful", 2.7),
            ("amazing", 2.8),
            ("superb", 3.1),
            ("brilliant", 2.8),
            ("beautiful", 2.9),
            ("love", 3.2),
            ("loved", 2.9),
            ("enjoy", 2.2),
            ("enjoyed", 2.3),
            ("fun", 2.3),
            ("funny", 1.9),
            ("best", 3.2),
            ("perfect", 2.7),
            ("fantastic", 2.6),
            ("charming", 2.1),
            ("moving", 1.7),
            ("touching", 1.6),
            ("delightful", 2.8),
            ("masterpiece", 3.0),
            ("fresh", 1.3),
            ("clever", 1.8),
            ("smart", 1.7),
            ("happy", 2.7),
            ("like", 1.5),
            ("liked", 1.8),
            ("nice", 1.8),
            ("strong", 1.3),
            ("recommend", 1.5),
            ("gripping", 1.8),
            ("stunning", 2.6),
            ("warm", 0.9),
            ("solid", 1.2),
            ("bad", -2.5),
            ("terrible", -2.1),
            ("awful", -2.0),
            ("horrible", -2.5),
            ("boring", -1.3),
            ("worst", -3.1),
            ("hate", -2.7),
            ("hated", -3.2),
            ("dull", -1.7),
            ("poor", -2.1),
            ("waste", -1.8),
            ("stupid", -2.4),
            ("weak", -1.9),
            ("mess", -1.5),
            ("disappointing", -2.2),
            ("disappointed", -1.9),
            ("annoying", -1.7),
            ("painful", -1.9),
            ("ugly", -2.3),
            ("sad", -2.1),
            ("bland", -1.4),
            ("predictable", -1.1),
            ("slow", -0.9),
            ("silly", -0.8),
            ("lazy", -1.4),
            ("pointless", -1.9),
            ("tedious", -1.8),
            ("flat", -1.1),
            ("wooden", -1.0),
            ("forgettable", -1.5),
            ("harm", -2.2),
            ("hurt", -2.4),
            ("steal", -2.2),
            ("kill", -3.7),
            ("attack", -2.1),
            ("dangerous", -2.1),
            ("illegal", -2.6),
            ("weapon", -1.9),
            ("sorry", -0.3),
            ("help", 1.7),
            ("safe", 1.9),
            ("kind", 1.3),
            ("thanks", 1.9),
            ("please", 1.3),
            ("easy", 1.9),
        ]
        .into_iter()
        .collect()
    })
}

impl Sentiment {
    /// The VADER-style compound score of `text` in [−1, 1].
    pub fn compound(text: &str) -> f32 {
        let ws = words(text);
        let lex = lexicon();
        let boost = boosters();
        let mut vals: Vec<f32> = vec![0.0; ws.len()];
        for (i, w) in ws.iter().enumerate() {
            let Some(&v0) = lex.get(w.as_str()) else {
                continue;
            };
            let mut v = v0;
            for back in 1..=3usize {
                if i < back {
                    break;
                }
                let prev = ws[i - back].as_str();
                if back == 1 {
                    if let Some(&b) = boost.get(prev) {
                        v += b * v.signum();
                    }
                }
                if NEGATIONS.contains(&prev) || prev.ends_with("n't") {
                    v *= NEGATE;
                    break;
                }
            }
            vals[i] = v;
        }
        if let Some(but) = ws.iter().position(|w| w == "but") {
            for (i, v) in vals.iter_mut().enumerate() {
                *v *= if i < but { 0.5 } else { 1.5 };
            }
        }
        let mut sum: f32 = vals.iter().sum();
        if sum != 0.0 {
            let bangs = text.matches('!').count().min(4) as f32;
            sum += sum.signum() * 0.292 * bangs;
        }
        sum / (sum * sum + 15.0).sqrt()
    }
}

impl Rule for Sentiment {
    fn name(&self) -> String {
        "sentiment".into()
    }
    fn range(&self) -> (f32, f32) {
        (-1.0, 1.0)
    }
    fn score(&self, _prompt: &str, completion: &str) -> f32 {
        Self::compound(completion)
    }
}

/// Rewards a completion for having about `target` words: `max(0, 1 − |n − target| / tolerance)`.
///
/// ```
/// use aligngym_envs::rules::LengthTarget;
/// use aligngym_envs::Rule;
/// let r = LengthTarget::words(4, 4.0);
/// assert_eq!(r.score("", "one two three four"), 1.0);
/// assert_eq!(r.score("", "one two"), 0.5);
/// assert_eq!(r.score("", "a b c d e f g h i j"), 0.0);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct LengthTarget {
    target: usize,
    tolerance: f32,
}

impl LengthTarget {
    /// Target `target` words; the score falls to 0 at `tolerance` words away.
    pub fn words(target: usize, tolerance: f32) -> Self {
        Self {
            target,
            tolerance: tolerance.max(1e-6),
        }
    }
}

impl Rule for LengthTarget {
    fn name(&self) -> String {
        format!("length_target({})", self.target)
    }
    fn range(&self) -> (f32, f32) {
        (0.0, 1.0)
    }
    fn score(&self, _prompt: &str, completion: &str) -> f32 {
        let n = words(completion).len() as f32;
        (1.0 - (n - self.target as f32).abs() / self.tolerance).max(0.0)
    }
}

/// 1 when the completion matches a regular expression (searched, not anchored), else 0.
///
/// ```
/// use aligngym_envs::rules::RegexMatch;
/// use aligngym_envs::Rule;
/// let r = RegexMatch::new(r"\?\s*$").unwrap();
/// assert_eq!(r.score("", "is it?"), 1.0);
/// assert_eq!(r.score("", "it is."), 0.0);
/// ```
#[derive(Debug, Clone)]
pub struct RegexMatch {
    re: regex::Regex,
}

impl RegexMatch {
    /// Compile `pattern`; an invalid pattern is an error naming it.
    pub fn new(pattern: &str) -> crate::Result<Self> {
        regex::Regex::new(pattern)
            .map(|re| Self { re })
            .map_err(|e| crate::EnvError::InvalidConfig {
                field: "pattern",
                msg: e.to_string(),
            })
    }
}

impl Rule for RegexMatch {
    fn name(&self) -> String {
        format!("regex({})", self.re.as_str())
    }
    fn range(&self) -> (f32, f32) {
        (0.0, 1.0)
    }
    fn score(&self, _prompt: &str, completion: &str) -> f32 {
        if self.re.is_match(completion) {
            1.0
        } else {
            0.0
        }
    }
}

/// Whole-word keyword reward: the fraction of `include` words present minus the fraction of `avoid`
/// words present (case-insensitive), in [−1, 1].
///
/// ```
/// use aligngym_envs::rules::KeywordReward;
/// use aligngym_envs::Rule;
/// let r = KeywordReward::new(&["red", "blue"], &["green"]);
/// assert_eq!(r.score("", "Red and blue"), 1.0);
/// assert_eq!(r.score("", "red and green"), -0.5);
/// assert_eq!(r.score("", "bored"), 0.0); // whole words only
/// ```
#[derive(Debug, Clone)]
pub struct KeywordReward {
    include: Vec<String>,
    avoid: Vec<String>,
}

impl KeywordReward {
    /// Reward words in `include`, penalise words in `avoid`.
    pub fn new(include: &[&str], avoid: &[&str]) -> Self {
        let low = |v: &[&str]| v.iter().map(|s| s.to_lowercase()).collect();
        Self {
            include: low(include),
            avoid: low(avoid),
        }
    }
    /// Only reward words in `include`.
    pub fn include(include: &[&str]) -> Self {
        Self::new(include, &[])
    }
    /// Only penalise words in `avoid`.
    pub fn avoid(avoid: &[&str]) -> Self {
        Self::new(&[], avoid)
    }
}

impl Rule for KeywordReward {
    fn name(&self) -> String {
        "keywords".into()
    }
    fn range(&self) -> (f32, f32) {
        (
            if self.avoid.is_empty() { 0.0 } else { -1.0 },
            if self.include.is_empty() { 0.0 } else { 1.0 },
        )
    }
    fn score(&self, _prompt: &str, completion: &str) -> f32 {
        let ws = words(completion);
        let frac = |set: &[String]| {
            if set.is_empty() {
                0.0
            } else {
                set.iter().filter(|k| ws.iter().any(|w| w == *k)).count() as f32 / set.len() as f32
            }
        };
        frac(&self.include) - frac(&self.avoid)
    }
}

/// The expected answer of a prompt, if the prompt has one.
pub type AnswerFn = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// 1 when the trimmed completion equals the prompt's answer, else 0 (also 0 when the prompt has no
/// answer).
///
/// ```
/// use aligngym_envs::rules::ExactAnswer;
/// use aligngym_envs::Rule;
/// use std::sync::Arc;
/// let r = ExactAnswer::new(Arc::new(|p: &str| Some(p.len().to_string())));
/// assert_eq!(r.score("abc", " 3 "), 1.0);
/// assert_eq!(r.score("abc", "4"), 0.0);
/// assert_eq!(r.score("abc", "3 4"), 0.0);
/// ```
#[derive(Clone)]
pub struct ExactAnswer {
    answer: AnswerFn,
}

impl ExactAnswer {
    /// Compare completions to `answer(prompt)`.
    pub fn new(answer: AnswerFn) -> Self {
        Self { answer }
    }
}

impl Rule for ExactAnswer {
    fn name(&self) -> String {
        "exact_answer".into()
    }
    fn range(&self) -> (f32, f32) {
        (0.0, 1.0)
    }
    fn score(&self, prompt: &str, completion: &str) -> f32 {
        match (self.answer)(prompt) {
            Some(a) if completion.trim() == a.trim() => 1.0,
            _ => 0.0,
        }
    }
}
