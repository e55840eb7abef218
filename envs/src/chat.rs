//! Conversations: messages with roles, and the built-in plain-text rendering that rule rewards read.
//!
//! An episode of a multi-turn task is a conversation: the first user message is the prompt, then the
//! policy's turns (assistant) and the env's replies (user, tool) alternate. Rewards read the
//! *transcript*, the text after the prompt: assistant turns as they are, every other message as
//! `"\n{role}: {content}\n"`. A single-turn transcript is therefore just the completion, as before.

use serde::{Deserialize, Serialize};

/// The end-of-turn mark of the built-in chat format: models trained here end each policy turn of a
/// multi-turn conversation with this special token (distinct from EOS and PAD). Corpus transcripts
/// carry it after every assistant turn; the transcript that rewards read does not.
pub const END_OF_TURN: &str = "<|eot|>";

/// Who said a message (the roles of the common chat formats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions before the conversation.
    System,
    /// The human side (in simulations: the env).
    User,
    /// The policy.
    Assistant,
    /// A tool's output (e.g. a calculator's result).
    Tool,
}

impl Role {
    /// The lowercase name used in JSONL and in the transcript.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: String,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
    /// An assistant (policy) message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
}

/// The text of an env message as it follows a policy turn: `"\n{role}: {content}\n"`.
pub fn render_reply(m: &Message) -> String {
    format!("\n{}: {}\n", m.role.as_str(), m.content)
}

/// The transcript of the turns after the prompt (what rule rewards score).
pub fn transcript(turns: &[Message]) -> String {
    let mut out = String::new();
    for m in turns {
        match m.role {
            Role::Assistant => out.push_str(&m.content),
            _ => out.push_str(&render_reply(m)),
        }
    }
    out
}

/// The policy turns of a transcript (lines that are not env messages), in order.
pub fn assistant_turns(transcript: &str) -> Vec<&str> {
    transcript
        .split('\n')
        .filter(|l| {
            !l.is_empty()
                && ![Role::User, Role::Tool, Role::System].iter().any(|r| {
                    l.strip_prefix(r.as_str())
                        .is_some_and(|x| x.starts_with(": "))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn transcript_round_trips_assistant_turns() {
        let turns = vec![
            Message::assistant(" 8"),
            Message::user("higher"),
            Message::assistant(" 12"),
            Message::new(Role::Tool, "= 3"),
            Message::assistant(" 10"),
        ];
        let t = transcript(&turns);
        assert_eq!(t, " 8\nuser: higher\n 12\ntool: = 3\n 10");
        assert_eq!(assistant_turns(&t), vec![" 8", " 12", " 10"]);
        assert_eq!(transcript(&turns[..1]), " 8");
        let json = serde_json::to_string(&turns[1]).unwrap();
        assert_eq!(json, r#"{"role":"user","content":"higher"}"#);
    }
}
