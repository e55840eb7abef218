//! `calculator-v0`: tool use. Prompts ask for a product too large to do in the head
//! (`compute 347*28.`); a policy turn containing `calc(A*B)` (also `+`, `-`) is a tool call, and the
//! env answers as the tool (`= 9716`, or an error message for a call that does not parse); a turn
//! without a call is the final answer and ends the episode. Gold reward: 1 − 0.05 per call for the
//! exact product, else 0. The SFT corpus mixes good calls, calls with a wrong operand, redundant
//! second calls and guesses without the tool.

use super::pick;
use crate::chat::{assistant_turns, transcript, Message, Role, END_OF_TURN};
use crate::reward::Rule;
use crate::task::{Feedback, PromptSplit, Split, Task};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

/// Policy turns before truncation.
pub const MAX_TURNS: usize = 4;
const CALL: &str = "calc(";

/// The two operands of a prompt `compute A*B.`.
pub fn operands(prompt: &str) -> Option<(i64, i64)> {
    let body = prompt.strip_prefix("compute ")?.strip_suffix('.')?;
    let (a, b) = body.split_once('*')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// A tool call in a turn: `None` without one, else its result or why it does not parse.
pub fn tool_call(turn: &str) -> Option<Result<i64, String>> {
    let start = turn.find(CALL)? + CALL.len();
    let rest = &turn[start..];
    let Some(end) = rest.find(')') else {
        return Some(Err("missing `)`".into()));
    };
    let expr: String = rest[..end].chars().filter(|c| !c.is_whitespace()).collect();
    let Some(op_at) = expr
        .char_indices()
        .skip(1)
        .find(|(_, c)| matches!(c, '+' | '-' | '*'))
        .map(|(i, _)| i)
    else {
        return Some(Err(format!("`{expr}` is not A+B, A-B or A*B")));
    };
    let (a, b) = (&expr[..op_at], &expr[op_at + 1..]);
    let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>()) else {
        return Some(Err(format!("`{expr}` is not A+B, A-B or A*B")));
    };
    Some(
        match &expr[op_at..op_at + 1] {
            "+" => a.checked_add(b),
            "-" => a.checked_sub(b),
            _ => a.checked_mul(b),
        }
        .ok_or_else(|| "overflow".to_string()),
    )
}

/// The first (optionally negative) integer in a turn.
fn number(turn: &str) -> Option<i64> {
    let start = turn.find(|c: char| c.is_ascii_digit())?;
    let neg = turn[..start].ends_with('-');
    let digits: String = turn[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse::<i64>().ok().map(|n| if neg { -n } else { n })
}

/// The gold reward: the exact product in the first turn without a call, 1 − 0.05 per call.
#[derive(Debug, Clone, Copy, Default)]
pub struct CalculatorGold;

impl Rule for CalculatorGold {
    fn name(&self) -> String {
        "calculator".into()
    }
    fn range(&self) -> (f32, f32) {
        (0.0, 1.0)
    }
    fn score(&self, prompt: &str, completion: &str) -> f32 {
        let Some((a, b)) = operands(prompt) else {
            return 0.0;
        };
        let turns = assistant_turns(completion);
        let Some(k) = turns.iter().position(|t| tool_call(t).is_none()) else {
            return 0.0;
        };
        if number(turns[k]) == Some(a * b) {
            1.0 - 0.05 * k as f32
        } else {
            0.0
        }
    }
}

/// The calculator task.
pub struct CalculatorTask {
    prompts: PromptSplit,
}

impl CalculatorTask {
    /// The task with its fixed prompt pool (A in 100..1000, B in 10..100).
    pub fn new() -> Self {
        let mut rng = StdRng::seed_from_u64(0xca1c);
        let pool = (0..2400)
            .map(|_| {
                format!(
                    "compute {}*{}.",
                    rng.random_range(100..1000),
                    rng.random_range(10..100)
                )
            })
            .collect();
        Self {
            prompts: PromptSplit::from_pool(pool, 8),
        }
    }
}

impl Default for CalculatorTask {
    fn default() -> Self {
        Self::new()
    }
}

fn tool_reply(turn: &str) -> Option<Message> {
    tool_call(turn).map(|r| {
        Message::new(
            Role::Tool,
            match r {
                Ok(v) => format!("= {v}"),
                Err(e) => format!("error: {e}; write calc(A*B)"),
            },
        )
    })
}

/// One corpus transcript on `prompt`, with end-of-turn marks.
fn play(prompt: &str, rng: &mut StdRng) -> String {
    let Some((a, b)) = operands(prompt) else {
        return prompt.to_string();
    };
    let mut turns: Vec<String> = Vec::new();
    match rng.random_range(0..6) {
        // Call the tool with the right operands, then answer (twice as common as the rest).
        0 | 1 => turns.extend([format!(" calc({a}*{b})"), String::new()]),
        // A redundant second call.
        2 => turns.extend([
            format!(" calc({a}*{b})"),
            format!(" calc({a}*{b})"),
            String::new(),
        ]),
        // A wrong operand: the answer follows the tool, so it is wrong.
        3 => turns.extend([
            format!(" calc({a}*{})", b + rng.random_range(1..4)),
            String::new(),
        ]),
        // Guess: roughly right, rarely exact.
        _ => {
            let off = rng.random_range(-40i64..40) * 10;
            turns.push(format!(" {}", a * b + off));
        }
    }
    let mut out = prompt.to_string();
    let mut last = None;
    for t in turns {
        let t = if t.is_empty() {
            format!(" {}", last.unwrap_or(a * b))
        } else {
            t
        };
        out.push_str(&t);
        out.push_str(END_OF_TURN);
        if let Some(r) = tool_reply(&t) {
            if let Some(Ok(v)) = tool_call(&t) {
                last = Some(v);
            }
            out.push_str(&transcript(&[r]));
        }
    }
    out
}

impl Task for CalculatorTask {
    fn id(&self) -> &str {
        "calculator-v0"
    }
    fn description(&self) -> &str {
        "multiply large numbers, calling a calculator tool with calc(A*B) (multi-turn)"
    }
    fn reward_kind(&self) -> &str {
        "rule: exact answer, minus 0.05 per tool call"
    }
    fn feedback(&self) -> Feedback {
        Feedback::Reward
    }
    fn corpus(&self, n: usize, seed: u64) -> Vec<String> {
        let mut rng = StdRng::seed_from_u64(seed);
        let prompts = self.prompts.get(Split::Train);
        (0..n)
            .map(|_| {
                let p = pick(&mut rng, prompts).clone();
                play(&p, &mut rng)
            })
            .collect()
    }
    fn prompts(&self, split: Split) -> &[String] {
        self.prompts.get(split)
    }
    fn gold(&self) -> Arc<dyn Rule> {
        Arc::new(CalculatorGold)
    }
    fn max_new_tokens(&self) -> usize {
        12
    }
    fn sft_steps(&self) -> usize {
        1500
    }
    fn reply(&self, _prompt: &str, turns: &[Message]) -> Option<Message> {
        tool_reply(&turns.last()?.content)
    }
    fn max_turns(&self) -> usize {
        MAX_TURNS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::check_chat_env;

    #[test]
    fn tool_calls_replies_and_gold() {
        assert_eq!(tool_call(" calc(347 * 28)"), Some(Ok(9716)));
        assert_eq!(tool_call(" calc(-3+5)"), Some(Ok(2)));
        assert_eq!(tool_call(" 9716"), None);
        assert!(tool_call(" calc(347*28").unwrap().is_err());
        assert!(tool_call(" calc(three*4)").unwrap().is_err());
        assert!(tool_call(" calc(99999999999*99999999999)")
            .unwrap()
            .is_err());
        let t = CalculatorTask::new();
        let p = "compute 347*28.";
        assert_eq!(
            t.reply(p, &[Message::assistant(" calc(347*28)")]),
            Some(Message::new(Role::Tool, "= 9716"))
        );
        let bad = t.reply(p, &[Message::assistant(" calc(oops)")]).unwrap();
        assert!(bad.content.starts_with("error:"), "{}", bad.content);
        assert_eq!(t.reply(p, &[Message::assistant(" 9716")]), None);
        let g = t.gold();
        assert_eq!(g.score(p, " 9716"), 1.0);
        assert_eq!(g.score(p, " 9715"), 0.0);
        let tr = transcript(&[
            Message::assistant(" calc(347*28)"),
            Message::new(Role::Tool, "= 9716"),
            Message::assistant(" 9716"),
        ]);
        assert!((g.score(p, &tr) - 0.95).abs() < 1e-6);
        // The corpus has room to improve: some transcripts are right, some wrong.
        let scores: Vec<f32> = t
            .corpus(300, 0)
            .iter()
            .map(|l| {
                let p = &l[..l.find('.').unwrap() + 1];
                g.score(p, &l[p.len()..].replace(END_OF_TURN, ""))
            })
            .collect();
        let mean = scores.iter().sum::<f32>() / 300.0;
        assert!(mean > 0.3 && mean < 0.8, "{mean}");
        check_chat_env(Arc::new(CalculatorTask::new())).unwrap();
    }
}
