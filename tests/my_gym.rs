// A user's own aligngym: a multi-turn task registered next to the built-ins, and the whole command
// line for it (`my_gym check-env countdown-v0`, `my_gym sft --env countdown-v0 …`, `train`, `sweep` …).
use aligngym::envs::{register, Feedback, Message, PromptSplit, Rule, Split, Task};
use std::sync::Arc;

/// Gold reward: the fraction of the countdown said right, turn by turn, from the prompt's number to 0.
struct CountedDown;
impl Rule for CountedDown {
    fn name(&self) -> String {
        "counted_down".into()
    }
    fn range(&self) -> (f32, f32) {
        (0.0, 1.0)
    }
    fn score(&self, prompt: &str, transcript: &str) -> f32 {
        let start: u32 = prompt
            .trim_end_matches('.')
            .rsplit(' ')
            .next()
            .unwrap_or("0")
            .parse()
            .unwrap_or(0);
        let said = aligngym::envs::chat::assistant_turns(transcript);
        let right = (0..=start)
            .rev()
            .zip(&said)
            .take_while(|(n, s)| s.trim() == n.to_string())
            .count();
        right as f32 / (start + 1) as f32
    }
}

/// The policy counts down one number per turn; the user says "next" until it reaches 0.
struct Countdown {
    prompts: PromptSplit,
}
impl Task for Countdown {
    fn id(&self) -> &str {
        "countdown-v0"
    }
    fn description(&self) -> &str {
        "count down to zero, one number per turn (multi-turn)"
    }
    fn reward_kind(&self) -> &str {
        "rule: fraction counted right"
    }
    fn feedback(&self) -> Feedback {
        Feedback::Reward
    }
    fn corpus(&self, n: usize, _seed: u64) -> Vec<String> {
        // Transcripts in the built-in chat format: each policy turn ends with <|eot|>, each user
        // reply is "\nuser: …\n". Every third one skips a number, to leave room to improve.
        (0..n)
            .map(|i| {
                let start = 2 + i % 4;
                let mut line = format!("count down from {start}.");
                for k in (0..=start).rev().filter(|k| i % 3 != 0 || *k != 1) {
                    line += &format!(" {k}<|eot|>");
                    if k > 0 {
                        line += "\nuser: next\n";
                    }
                }
                line
            })
            .collect()
    }
    fn prompts(&self, split: Split) -> &[String] {
        self.prompts.get(split)
    }
    fn gold(&self) -> Arc<dyn Rule> {
        Arc::new(CountedDown)
    }
    fn max_new_tokens(&self) -> usize {
        4
    }
    // The one method a multi-turn task adds: the env's reply to the policy's latest turn (`None`
    // ends the episode).
    fn reply(&self, _prompt: &str, turns: &[Message]) -> Option<Message> {
        let last = turns.last()?.content.trim();
        (last != "0" && !last.is_empty()).then(|| Message::user("next"))
    }
    fn max_turns(&self) -> usize {
        7
    }
}

fn main() -> std::process::ExitCode {
    let pool = (2..=5)
        .flat_map(|n| (0..4).map(move |_| format!("count down from {n}.")))
        .collect();
    let task = Countdown {
        prompts: PromptSplit::from_pool(pool, 4),
    };
    if let Err(e) = register(Arc::new(task)) {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    aligngym::cli::main()
}
