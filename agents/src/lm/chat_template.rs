//! Chat templates: the Jinja template a checkpoint stores in `tokenizer_config.json`
//! (`chat_template`, as Hugging Face checkpoints carry it), rendered with minijinja. The rollout
//! collector and DPO turn an env's message into tokens by rendering the conversation with and
//! without it and encoding the difference, so a template must be *append-only*: adding a message
//! may only append text. One that rewrites earlier text (drops a separator at an assistant → tool
//! boundary, say) is refused at that message with a clear error, instead of silently training on
//! sequences that differ from the ones sampled.

use crate::{AgentError, Result};
use aligngym_envs::Message;
use std::sync::Arc;

/// The built-in format of models trained here: the first message as it is (the prompt, after
/// BOS), each assistant turn followed by `<|eot|>`, every other message as `"\n{role}: {content}\n"`
/// — the same text the rewards' transcripts use, plus the end-of-turn token.
pub const BUILTIN: &str = "{%- for m in messages -%}\
{%- if m.role == 'assistant' -%}{{ m.content }}<|eot|>\
{%- elif loop.first -%}{{ m.content }}\
{%- else -%}{{ '\\n' ~ m.role ~ ': ' ~ m.content ~ '\\n' }}\
{%- endif -%}\
{%- endfor -%}";

/// A compiled chat template.
#[derive(Clone)]
pub struct ChatTemplate {
    source: String,
    env: Arc<minijinja::Environment<'static>>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChatTemplate({} bytes)", self.source.len())
    }
}

impl ChatTemplate {
    /// Compile `source`; a template that does not parse is an error naming the problem.
    pub fn new(source: &str) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| AgentError::Tokenizer(format!("chat_template: {e}")))?;
        Ok(Self {
            source: source.to_string(),
            env: Arc::new(env),
        })
    }

    /// The built-in template.
    pub fn builtin() -> Self {
        Self::new(BUILTIN).expect("the built-in chat template parses")
    }

    /// The Jinja source (what `tokenizer_config.json` stores).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Render `messages` (`add_generation_prompt` as Hugging Face templates read it).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        bos: &str,
        eos: &str,
    ) -> Result<String> {
        let t = self
            .env
            .get_template("chat")
            .map_err(|e| AgentError::Tokenizer(format!("chat_template: {e}")))?;
        t.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos,
            eos_token => eos,
        })
        .map_err(|e| AgentError::Tokenizer(format!("chat_template: {e}")))
    }

    /// The text `message` adds after `before` (the conversation so far, prompt first): the
    /// rendering with it minus the rendering without it. Refused when the template is not
    /// append-only there.
    pub fn appended(
        &self,
        before: &[Message],
        message: &Message,
        bos: &str,
        eos: &str,
    ) -> Result<String> {
        let head = self.render(before, false, bos, eos)?;
        let mut all = before.to_vec();
        all.push(message.clone());
        let whole = self.render(&all, false, bos, eos)?;
        whole.strip_prefix(head.as_str()).map(str::to_string).ok_or_else(|| {
            AgentError::Tokenizer(format!(
                "chat_template is not append-only: adding a {} message after {} message(s) changes the text before it",
                message.role.as_str(),
                before.len()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aligngym_envs::chat::{render_reply, transcript};
    use aligngym_envs::Role;

    #[test]
    fn builtin_renders_the_transcript_format_and_is_append_only() {
        let t = ChatTemplate::builtin();
        let conv = vec![
            Message::user("game 1: guess my number from 1 to 8."),
            Message::assistant(" 4"),
            Message::user("higher"),
            Message::assistant(" 6"),
            Message::new(Role::Tool, "= 6"),
        ];
        let whole = t.render(&conv, false, "", "").unwrap();
        assert_eq!(
            whole,
            "game 1: guess my number from 1 to 8. 4<|eot|>\nuser: higher\n 6<|eot|>\ntool: = 6\n"
        );
        // Turn by turn gives the whole, and each env message adds its transcript text.
        let mut acc = t.render(&conv[..1], false, "", "").unwrap();
        for k in 1..conv.len() {
            let add = t.appended(&conv[..k], &conv[k], "", "").unwrap();
            if conv[k].role != Role::Assistant {
                assert_eq!(add, render_reply(&conv[k]));
            }
            acc.push_str(&add);
        }
        assert_eq!(acc, whole);
        assert_eq!(
            whole.replace("<|eot|>", ""),
            format!("{}{}", conv[0].content, transcript(&conv[1..]))
        );
    }

    #[test]
    fn a_template_that_rewrites_history_is_refused() {
        // Shows only the last message: adding one replaces the text before it.
        let t = ChatTemplate::new("{{ messages[-1].content }}").unwrap();
        let e = t
            .appended(&[Message::user("a")], &Message::assistant("b"), "", "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not append-only"), "{e}");
        assert!(ChatTemplate::new("{% for %}").is_err());
    }
}
